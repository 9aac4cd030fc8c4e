//! The controller's client-facing front ends: every client asks the controller first and
//! is sent on to the best public reflector for its channel.
//!
//! - [`rtsp`]: an RTSP listener answering `OPTIONS` itself and everything else on
//!   `rtsp://…/live/CH` with a `302` to the chosen reflector.
//! - [`http`]: `/play/CH` and WHEP (`POST /whep/CH`) redirects with `307`, the tree as
//!   JSON (`/tree`), the controller's metrics (`/metrics`) and a live tree page (`/`).
//!
//! Neither front end knows the placement policy: both ask a [`Directory`], which the
//! controller implements. Redirecting (rather than proxying) keeps the controller off the
//! media path, so it only ever handles one small request per viewer.

pub mod http;
pub mod rtsp;

use std::net::IpAddr;

use serde::Serialize;

pub use self::http::{router, serve_http};
pub use self::rtsp::{serve_rtsp, serve_rtsp_with, RtspFrontOptions};

/// Where a client goes. Implemented by the controller (shared behind `Arc`, internally
/// locked), so every method takes `&self` and must be quick: the front ends call it on
/// their async tasks.
pub trait Directory: Send + Sync + 'static {
    /// The public reflector a viewer of `channel` at `client` should use; `region` is
    /// the client's hint (`?region=eu`), if it gave one.
    fn redirect(
        &self,
        channel: &str,
        client: IpAddr,
        region: Option<&str>,
    ) -> Result<Target, NoTarget>;
    /// A snapshot of the tree, for `/tree` and the page.
    fn tree(&self) -> TreeView;
    /// Prometheus text exposition, served as is at `/metrics`.
    fn metrics_text(&self) -> String;
}

/// A public reflector chosen for a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The reflector's node id (for logs).
    pub node: String,
    /// Its RTSP front end, `host:port`.
    pub rtsp: String,
    /// Its HTTP front end (`/play`, WHEP), `host:port`, if it runs one.
    pub http: Option<String>,
}

/// Why no reflector could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoTarget {
    #[error("no public reflector is up")]
    NoneUp,
    #[error("every public reflector is full")]
    AllFull,
    #[error("no channel named {0}")]
    UnknownChannel(String),
}

/// The tree as the page draws it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TreeView {
    pub nodes: Vec<NodeView>,
    pub links: Vec<LinkView>,
    pub aggregate: Vec<AggregateView>,
    /// When the snapshot was taken (ms since the Unix epoch).
    pub generated_ms: u64,
}

/// One reflector in the tree.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: String,
    pub role: crate::role::Role,
    /// `"up"`, `"dead"`, `"draining"` or `"planned"`.
    pub state: String,
    /// Share of capacity in use, 0..1.
    pub load: f64,
    pub viewers: u64,
    pub max_viewers: u32,
    pub parent: Option<String>,
    pub region: String,
    /// 0 for a master, growing towards the edge.
    pub depth: usize,
}

/// A parent–child link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkView {
    pub parent: String,
    pub child: String,
    /// `"active"` (media flows) or `"spare"` (a standby parent).
    pub kind: String,
}

/// What a master's subtree adds up to.
#[derive(Debug, Clone, Serialize)]
pub struct AggregateView {
    pub master: String,
    pub descendants: u32,
    pub cpu_load: f64,
    pub viewers: u64,
    pub egress_bps: u64,
    pub channels: Vec<AggregateChannel>,
}

/// One channel of a master's subtree.
#[derive(Debug, Clone, Serialize)]
pub struct AggregateChannel {
    pub id: String,
    pub viewers: u64,
    pub jitter_ms: f64,
    pub cum_lost: u64,
}

/// A request path under a redirecting prefix (`/live/`, `/play/`, `/whep/`), split into
/// the channel (percent-decoded, for the directory) and the raw tail (the channel and
/// anything after it, as sent, so the redirect preserves it byte for byte).
#[derive(Debug, PartialEq, Eq)]
struct ChannelPath<'a> {
    channel: String,
    tail: &'a str,
}

/// Splits `path` (no query) after `prefix`; `None` if it is not under `prefix`, the
/// channel is empty or does not decode.
fn channel_path<'a>(path: &'a str, prefix: &str) -> Option<ChannelPath<'a>> {
    let tail = path.strip_prefix(prefix)?;
    let raw = tail.split('/').next().unwrap_or_default();
    let channel = percent_decode(raw)?;
    (!channel.is_empty()).then_some(ChannelPath { channel, tail })
}

/// The `region` parameter of a query string, if present and non-empty. Region names
/// are short codes, so they are taken literally rather than percent-decoded.
fn region_of(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|kv| kv.strip_prefix("region="))
        .find(|v| !v.is_empty())
}

/// Decodes `%XX` escapes; `None` on a broken escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Checked by hand: `from_str_radix` would also take a sign (`%+1`).
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
pub(crate) mod testing {
    //! A directory with fixed answers, shared by the RTSP and HTTP tests.

    use std::net::IpAddr;
    use std::sync::Mutex;

    use super::*;
    use crate::role::Role;

    /// `ch1` → `pub-1` with both ports; `nohttp` → a reflector without HTTP; `down` →
    /// none up; `full` → all full; anything else is unknown. Remembers the last ask.
    #[derive(Default)]
    pub struct FakeDirectory {
        pub last: Mutex<Option<(String, IpAddr, Option<String>)>>,
    }

    impl Directory for FakeDirectory {
        fn redirect(
            &self,
            channel: &str,
            client: IpAddr,
            region: Option<&str>,
        ) -> Result<Target, NoTarget> {
            *self.last.lock().unwrap() =
                Some((channel.to_string(), client, region.map(str::to_string)));
            let target = |http: Option<&str>| Target {
                node: "pub-1".into(),
                rtsp: "10.0.0.5:8554".into(),
                http: http.map(str::to_string),
            };
            match channel {
                "ch1" => Ok(target(Some("10.0.0.5:8080"))),
                "nohttp" => Ok(target(None)),
                "down" => Err(NoTarget::NoneUp),
                "full" => Err(NoTarget::AllFull),
                other => Err(NoTarget::UnknownChannel(other.to_string())),
            }
        }

        fn tree(&self) -> TreeView {
            let node = |id: &str, role, parent: Option<&str>, depth| NodeView {
                id: id.into(),
                role,
                state: "up".into(),
                load: 0.25,
                viewers: 3,
                max_viewers: 100,
                parent: parent.map(str::to_string),
                region: "eu".into(),
                depth,
            };
            TreeView {
                nodes: vec![
                    node("m1", Role::Master, None, 0),
                    node("pub-1", Role::Public, Some("m1"), 1),
                ],
                links: vec![LinkView {
                    parent: "m1".into(),
                    child: "pub-1".into(),
                    kind: "active".into(),
                }],
                aggregate: vec![],
                generated_ms: 1,
            }
        }

        fn metrics_text(&self) -> String {
            "# TYPE divisor_controller_up gauge\ndivisor_controller_up 1\n# EOF\n".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_paths_split_and_decode() {
        let p = channel_path("/live/ch1/trackID=0", "/live/").unwrap();
        assert_eq!(p.channel, "ch1");
        assert_eq!(p.tail, "ch1/trackID=0");
        assert_eq!(
            channel_path("/live/a%20b", "/live/").unwrap().channel,
            "a b"
        );
        assert_eq!(channel_path("/live/", "/live/"), None);
        assert_eq!(channel_path("/live//x", "/live/"), None);
        assert_eq!(channel_path("/vod/ch1", "/live/"), None);
        assert_eq!(channel_path("/live/%zz", "/live/"), None);
        assert_eq!(channel_path("/live/%e", "/live/"), None);
        assert_eq!(channel_path("/live/%ff", "/live/"), None);
        assert_eq!(channel_path("/live/%+1", "/live/"), None);
    }

    #[test]
    fn region_comes_from_the_query() {
        assert_eq!(region_of(Some("a=1&region=eu")), Some("eu"));
        assert_eq!(region_of(Some("region=")), None);
        assert_eq!(region_of(Some("xregion=eu")), None);
        assert_eq!(region_of(None), None);
    }
}
