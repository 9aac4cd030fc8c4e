//! RTSP Digest authentication (RFC 2617's MD5 form, which ffmpeg and GStreamer send; the
//! `qop=auth` variant of RFC 7616 is accepted too) against a users file with per-path
//! read rights.
//!
//! The users file (`--rtsp-users-file`) has one `user:password:prefix[,prefix...]` a line;
//! `#` starts a comment. A prefix is a request path (`/live/cam`, `/vod/`); `/` is
//! everything. A user may read a path equal to one of its prefixes or below it
//! (`/live/cam` covers `/live/cam/trackID=0` and `/live/cam/low`, not `/live/camera`).
//!
//! Nonces are stateless: the time they were made and a MAC over it under a key made at
//! start, so a nonce cannot be forged, is refused after [`NONCE_TTL`] (answered with
//! `stale=true`, and clients retry without asking the user), and a restart invalidates
//! them all. This module is pure: the caller passes `now` and does the I/O.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;

/// How long a nonce is good for.
pub const NONCE_TTL: Duration = Duration::from_secs(300);
/// The realm clients see (and hash into their answer).
pub const REALM: &str = "Divisor";
/// Failures from one address within [`FAILURE_WINDOW`] before its answers are slowed.
const FREE_FAILURES: u32 = 3;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The slow-down per failure beyond the free ones, and its ceiling.
const PENALTY_STEP: Duration = Duration::from_millis(500);
const PENALTY_MAX: Duration = Duration::from_secs(5);
/// Addresses remembered for the slow-down (the oldest are forgotten beyond this).
const MAX_TRACKED: usize = 10_000;

/// Why a users file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {why} (want user:password:/path-prefix[,/path-prefix...])")]
    Line { line: usize, why: String },
    #[error("no users in the file")]
    Empty,
}

#[derive(Debug, Clone)]
struct User {
    password: String,
    prefixes: Vec<String>,
}

/// The users and what each may read.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: HashMap<String, User>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Users::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Users, UsersFileError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| UsersFileError::Line {
                line: i + 1,
                why: why.to_string(),
            };
            let mut parts = line.splitn(3, ':');
            let (Some(user), Some(password), Some(paths)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("three fields separated by ':' expected"));
            };
            if user.is_empty() || user.contains('"') {
                return Err(bad("empty user name, or one with a quote"));
            }
            if password.is_empty() {
                return Err(bad("empty password"));
            }
            let prefixes: Vec<String> = paths
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            if prefixes.is_empty() || prefixes.iter().any(|p| !p.starts_with('/')) {
                return Err(bad("path prefixes must start with '/'"));
            }
            if users.contains_key(user) {
                return Err(bad(&format!("user {user:?} appears twice")));
            }
            users.insert(
                user.to_string(),
                User {
                    password: password.to_string(),
                    prefixes,
                },
            );
        }
        if users.is_empty() {
            return Err(UsersFileError::Empty);
        }
        Ok(Users { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Whether `path` is `prefix` or below it.
fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path.strip_prefix(prefix).is_some_and(|rest| {
            prefix.ends_with('/') || rest.starts_with('/') || rest.starts_with('?')
        })
}

/// The outcome of checking one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated, and the user may read the path.
    Allowed { user: String },
    /// No credentials (a client's first try): 401 with a challenge, not a failure.
    Challenge,
    /// A nonce past its time: 401 with `stale=true`, not a failure.
    Stale,
    /// Wrong user, password or nonce, or a malformed header: 401, counted.
    Failed { why: String },
    /// The user is known but may not read this path: 403.
    Forbidden { user: String },
}

/// Digest authentication for one front-end.
pub struct DigestAuth {
    users: Users,
    key: [u8; 32],
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl DigestAuth {
    pub fn new(users: Users) -> DigestAuth {
        DigestAuth {
            users,
            key: rand::random(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The `WWW-Authenticate` value of a 401.
    pub fn challenge(&self, now: SystemTime, stale: bool) -> String {
        let mut v = format!(
            "Digest realm=\"{REALM}\", nonce=\"{}\", algorithm=MD5",
            self.nonce(unix_secs(now))
        );
        if stale {
            v.push_str(", stale=true");
        }
        v
    }

    fn nonce(&self, secs: u64) -> String {
        format!("{secs:x}.{}", self.mac(secs))
    }

    fn mac(&self, secs: u64) -> String {
        // HMAC accepts keys of any length.
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        m.update(&secs.to_be_bytes());
        hex(&m.finalize().into_bytes()[..12])
    }

    /// Check a request: `method` and `path` as requested, `header` the Authorization value.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        header: Option<&str>,
        now: SystemTime,
    ) -> Verdict {
        let Some(header) = header else {
            return Verdict::Challenge;
        };
        let Some(params) = header
            .trim_start()
            .strip_prefix("Digest ")
            .or_else(|| header.trim_start().strip_prefix("digest "))
        else {
            return Verdict::Failed {
                why: "not a Digest authorization".into(),
            };
        };
        let p = match parse_params(params) {
            Ok(p) => p,
            Err(why) => return Verdict::Failed { why },
        };
        let get = |k: &str| p.get(k).map(String::as_str);
        let (Some(user), Some(nonce), Some(uri), Some(response)) =
            (get("username"), get("nonce"), get("uri"), get("response"))
        else {
            return Verdict::Failed {
                why: "username, nonce, uri or response missing".into(),
            };
        };
        if get("realm") != Some(REALM) {
            return Verdict::Failed {
                why: format!("realm {:?}", get("realm").unwrap_or("")),
            };
        }
        if get("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("MD5")) {
            return Verdict::Failed {
                why: "only algorithm MD5 is served".into(),
            };
        }
        // The nonce must be ours; then its age decides.
        let Some((secs_hex, mac)) = nonce.split_once('.') else {
            return Verdict::Failed {
                why: "not our nonce".into(),
            };
        };
        let Ok(secs) = u64::from_str_radix(secs_hex, 16) else {
            return Verdict::Failed {
                why: "not our nonce".into(),
            };
        };
        if !constant_time_eq(mac.as_bytes(), self.mac(secs).as_bytes()) {
            return Verdict::Failed {
                why: "not our nonce".into(),
            };
        }
        let Some(known) = self.users.users.get(user) else {
            return Verdict::Failed {
                why: format!("unknown user {user:?}"),
            };
        };
        let ha1 = md5_hex(&format!("{user}:{REALM}:{}", known.password));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let expected = match get("qop") {
            None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
            Some("auth") => {
                let (Some(nc), Some(cnonce)) = (get("nc"), get("cnonce")) else {
                    return Verdict::Failed {
                        why: "qop=auth without nc or cnonce".into(),
                    };
                };
                md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
            }
            Some(other) => {
                return Verdict::Failed {
                    why: format!("qop {other:?} is not served"),
                }
            }
        };
        if !constant_time_eq(
            expected.as_bytes(),
            response.to_ascii_lowercase().as_bytes(),
        ) {
            return Verdict::Failed {
                why: format!("wrong password for {user:?}"),
            };
        }
        if unix_secs(now).saturating_sub(secs) > NONCE_TTL.as_secs() {
            return Verdict::Stale;
        }
        if known.prefixes.iter().any(|pre| covers(pre, path)) {
            Verdict::Allowed {
                user: user.to_string(),
            }
        } else {
            Verdict::Forbidden {
                user: user.to_string(),
            }
        }
    }

    /// Note a failure from `ip`; returns how long to hold its answer back. The first few
    /// in a minute cost nothing (a user mistyping), then each costs more, up to a cap.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() >= MAX_TRACKED && !f.contains_key(&ip) {
            f.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
            if f.len() >= MAX_TRACKED {
                f.clear();
            }
        }
        let e = f.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= FAILURE_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        let over = e.1.saturating_sub(FREE_FAILURES);
        (PENALTY_STEP * over).min(PENALTY_MAX)
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn md5_hex(s: &str) -> String {
    hex(&Md5::digest(s.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Equal bytes, in a time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `key=value` pairs separated by commas; values may be quoted (with `\` escapes).
fn parse_params(s: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            return Err(format!("no '=' in {rest:?}"));
        };
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let Some(end) = end else {
                return Err(format!("unterminated quote after {key}"));
            };
            (value, &q[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        if out.len() >= 32 {
            return Err("too many parameters".into());
        }
        out.insert(key, value);
        rest = tail.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> DigestAuth {
        DigestAuth::new(Users::parse("alice:secret:/live/cam,/vod/\n# c\nbob:pw:/\n").unwrap())
    }

    /// What a client computes (RFC 2617, no qop), as ffmpeg and GStreamer do.
    fn answer(a: &DigestAuth, user: &str, pass: &str, method: &str, uri: &str) -> String {
        let ch = a.challenge(SystemTime::now(), false);
        let nonce = ch
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let ha1 = md5_hex(&format!("{user}:{REALM}:{pass}"));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let r = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        format!("Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{r}\"")
    }

    #[test]
    fn the_right_password_reads_its_paths_only() {
        let a = auth();
        let now = SystemTime::now();
        let uri = "rtsp://h/live/cam/trackID=0";
        let h = answer(&a, "alice", "secret", "SETUP", uri);
        assert_eq!(
            a.check("SETUP", "/live/cam/trackID=0", Some(&h), now),
            Verdict::Allowed {
                user: "alice".into()
            }
        );
        let h = answer(&a, "alice", "secret", "DESCRIBE", "rtsp://h/live/camera");
        assert_eq!(
            a.check("DESCRIBE", "/live/camera", Some(&h), now),
            Verdict::Forbidden {
                user: "alice".into()
            }
        );
        let h = answer(&a, "bob", "pw", "DESCRIBE", "rtsp://h/live/camera");
        assert!(matches!(
            a.check("DESCRIBE", "/live/camera", Some(&h), now),
            Verdict::Allowed { .. }
        ));
    }

    #[test]
    fn wrong_passwords_forged_nonces_and_garbage_fail() {
        let a = auth();
        let now = SystemTime::now();
        assert_eq!(a.check("DESCRIBE", "/vod/x", None, now), Verdict::Challenge);
        let h = answer(&a, "alice", "wrong", "DESCRIBE", "rtsp://h/vod/x");
        assert!(matches!(
            a.check("DESCRIBE", "/vod/x", Some(&h), now),
            Verdict::Failed { .. }
        ));
        let forged = answer(&a, "alice", "secret", "DESCRIBE", "rtsp://h/vod/x")
            .replace("nonce=\"", "nonce=\"1");
        assert!(matches!(
            a.check("DESCRIBE", "/vod/x", Some(&forged), now),
            Verdict::Failed { .. }
        ));
        for junk in [
            "Basic YWxpY2U6c2VjcmV0",
            "Digest ",
            "Digest username=\"a",
            "Digest ,,,=,",
        ] {
            assert!(matches!(
                a.check("DESCRIBE", "/vod/x", Some(junk), now),
                Verdict::Failed { .. }
            ));
        }
    }

    #[test]
    fn an_old_nonce_is_stale_and_qop_auth_is_accepted() {
        let a = auth();
        let then = SystemTime::now() - NONCE_TTL - Duration::from_secs(5);
        let nonce = a.nonce(unix_secs(then));
        let ha1 = md5_hex(&format!("alice:{REALM}:secret"));
        let ha2 = md5_hex("PLAY:rtsp://h/vod/x");
        let r = md5_hex(&format!("{ha1}:{nonce}:00000001:abc:auth:{ha2}"));
        let h = format!("Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"rtsp://h/vod/x\", qop=auth, nc=00000001, cnonce=\"abc\", response=\"{r}\"");
        assert_eq!(
            a.check("PLAY", "/vod/x", Some(&h), SystemTime::now()),
            Verdict::Stale
        );
        assert!(matches!(
            a.check("PLAY", "/vod/x", Some(&h), then),
            Verdict::Allowed { .. }
        ));
    }

    #[test]
    fn the_users_file_errors_name_the_line() {
        for (text, line) in [
            ("alice:pw\n", 1),
            ("# x\nalice::/vod\n", 2),
            ("alice:pw:vod\n", 1),
            ("a:p:/\na:q:/\n", 2),
        ] {
            match Users::parse(text) {
                Err(UsersFileError::Line { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            Users::parse("# none\n"),
            Err(UsersFileError::Empty)
        ));
        // A password may hold ':' only in the last field's absence: the split is 3-way.
        let u = Users::parse("carol:p:/a,/b\n").unwrap();
        assert_eq!(u.len(), 1);
    }

    #[test]
    fn repeated_failures_from_one_address_are_slowed_down() {
        let a = auth();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = Instant::now();
        let waits: Vec<Duration> = (0..6).map(|_| a.failed(ip, t)).collect();
        assert_eq!(waits[..3], [Duration::ZERO; 3]);
        assert_eq!(waits[3], PENALTY_STEP);
        assert!(waits[5] > waits[4]);
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(a.failed(other, t), Duration::ZERO);
        assert_eq!(a.failed(ip, t + FAILURE_WINDOW), Duration::ZERO);
    }

    #[test]
    fn prefixes_cover_their_subtree_only() {
        assert!(covers("/live/cam", "/live/cam"));
        assert!(covers("/live/cam", "/live/cam/trackID=1"));
        assert!(!covers("/live/cam", "/live/camera"));
        assert!(covers("/vod/", "/vod/a.mp4"));
        assert!(covers("/", "/anything"));
    }
}
