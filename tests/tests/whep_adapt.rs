//! WebRTC rendition adaptation with a real browser on a slow link (issue 6, feedback):
//! split deployment in namespaces, channel `cam` with a ladder of two H.264 renditions
//! (`web` 640x360 at 800 kbit/s, `low` 320x180 at 200 kbit/s, both with Opus), the
//! protocol unit started with `--webrtc-adapt-renditions web,low`, and the link from the
//! protocol unit to the client capped at 450 kbit/s by a `tbf` qdisc.
//!
//! Headless Chromium opens `/play/cam` (no rendition: the adaptive viewer starts on
//! `web`) and plays for [`PLAY_SECS`]:
//!
//! 1. free link until [`CAP_AT`]: the viewer must stay on `web` (an estimate still ramping
//!    up, or a stream running under its announced rate, is not congestion);
//! 2. capped until [`UNCAP_AT`]: Chromium's receive-side estimate, sent as REMB, falls
//!    below what `web` needs, and the server must move the viewer to `low`;
//! 3. free again: the estimate stays near what `low` sends, so only a probe (after 20 s
//!    of calm estimates) can bring the viewer back, and it must: it ends on `web` again,
//!    and Chromium ends up decoding 640x360 frames.
//!
//! `/status` is read every second (every sample is kept in the test log as
//! `adapt-status.jsonl`). Playback must be smooth at the end: over the last third of the
//! run Chromium decodes at least 60 % of the 25 frames a second and never stalls for over
//! a second. That failed while webrtc-rs's own NACK responder answered every NACK in full
//! (Chromium decoded ~7 frames a second after the switch down, NACKed more packets than
//! we sent, and the connection went `disconnected`); `whep/nack.rs` bounds the resends.

use std::fmt::Write as _;
use std::thread;
use std::time::Duration;

use divisor_tests::browser;
use divisor_tests::control::{metric, status, wait_live};
use divisor_tests::deploy::Options;
use divisor_tests::{Checks, Deployment, Kind, LinkTransport, Node};

const HTTP_PORT: u16 = 8080;

/// The encoder unit's ladder: `web` does not fit through the cap, `low` does.
const LADDER_CONFIG: &str = r#"
[[rendition]]
name = "web"
codec = "h264"
profile = "baseline"
width = 640
height = 360
bitrate_kbps = 800
keyint = 50
audio = "opus"

[[rendition]]
name = "low"
codec = "h264"
profile = "baseline"
width = 320
height = 180
bitrate_kbps = 200
keyint = 50
audio = "opus"

[vod]
renditions = ["web"]

[[channel]]
name = "cam"
source = "testsrc"
renditions = ["web", "low"]
"#;

/// Egress cap on the protocol unit's client-facing veth: under `web` (~870 kbit/s with
/// audio and headers), over `low` (~270 kbit/s).
const CAP: &str = "450kbit";

/// How long Chromium plays.
const PLAY_SECS: u64 = 70;
/// When the cap goes on and comes off, seconds into the play.
const CAP_AT: u64 = 14;
const UNCAP_AT: u64 = 26;

#[test]
fn whep_viewer_on_a_slow_link_is_moved_down_the_ladder() {
    let config = std::env::temp_dir().join(format!("divisor-adapt-{}.toml", std::process::id()));
    std::fs::write(&config, LADDER_CONFIG).unwrap();
    let d = Deployment::start_with(
        "whep-adapt",
        Kind::Split(LinkTransport::Tcp),
        Options {
            encoder_args: vec!["--config".into(), config.clone().into()],
            protocol_args: vec![
                "--http-listen".into(),
                format!("0.0.0.0:{HTTP_PORT}").into(),
                "--webrtc-adapt-renditions".into(),
                "web,low".into(),
            ],
        },
    )
    .expect("deployment starts");
    let _ = std::fs::copy(&config, d.log_dir.join("encoder.toml"));
    let base = format!("http://{}:{HTTP_PORT}", d.rtsp_ip);
    wait_live(&d, "cam", &["web", "low"], Duration::from_secs(60)).expect("channel cam goes live");
    let mut c = Checks::new();

    // Chromium plays on a thread; meanwhile the session's rendition is read from /status.
    let shot = d.log_dir.join("play-adapt.png");
    let url = format!("{base}/play/cam");
    // The protocol unit's end of the client veth (the client's end is `client_if`).
    let proto_if = format!("{}pc", d.client_if.trim_end_matches("cp"));
    let played = thread::scope(|s| {
        let player = s.spawn(|| browser::play(&d, Node::Client, &url, PLAY_SECS, &shot));
        let mut seen = Vec::new();
        let mut full = String::new();
        let (mut capped_at, mut uncapped_at) = (None, None);
        for k in 0..PLAY_SECS {
            thread::sleep(Duration::from_secs(1));
            if k == UNCAP_AT && capped_at.is_some() {
                let del = d
                    .run_in(
                        Node::Protocol,
                        "tc",
                        ["qdisc", "del", "dev", &proto_if, "root"],
                        Duration::from_secs(10),
                    )
                    .and_then(|o| o.check());
                if let Err(e) = del {
                    eprintln!("CHECK FAILED: lifting the cap: {e:#}");
                    break;
                }
                uncapped_at = Some(seen.len());
            }
            if k == CAP_AT {
                let tbf = d
                    .run_in(
                        Node::Protocol,
                        "tc",
                        [
                            "qdisc", "add", "dev", &proto_if, "root", "tbf", "rate", CAP, "burst",
                            "16kb", "latency", "200ms",
                        ],
                        Duration::from_secs(10),
                    )
                    .and_then(|o| o.check());
                if let Err(e) = tbf {
                    eprintln!("CHECK FAILED: tbf bandwidth cap on the client veth: {e:#}");
                    break;
                }
                capped_at = Some(seen.len());
            }
            if let Ok(v) = status(&d, &base) {
                // Every /status kept for whoever reads the log (loss, NACKs, drops).
                let _ = writeln!(full, "{v}");
                if let Some(sess) = v["webrtc_sessions"].as_array().and_then(|a| a.first()) {
                    seen.push((
                        sess["rendition"].as_str().unwrap_or("?").to_string(),
                        sess["estimate_bps"].as_u64(),
                        sess["switches"].as_u64().unwrap_or(0),
                    ));
                }
            }
        }
        let _ = std::fs::write(d.log_dir.join("adapt-status.jsonl"), full);
        (player.join(), seen, capped_at, uncapped_at)
    });
    let (player, seen, capped_at, uncapped_at) = played;
    eprintln!("session over time (rendition, REMB estimate, switches): {seen:?}");
    let _ = std::fs::write(d.log_dir.join("adapt-status.txt"), format!("{seen:?}\n"));

    let (Some(capped_at), Some(uncapped_at)) = (capped_at, uncapped_at) else {
        panic!(
            "the bandwidth cap could not be set or lifted:\n{}",
            d.logs_report(20)
        );
    };
    let (free, rest) = seen.split_at(capped_at.min(seen.len()));
    let (capped, freed) = rest.split_at((uncapped_at - capped_at).min(rest.len()));
    c.check(
        free.len() > 5 && free.iter().all(|s| s.0 == "web" && s.2 == 0),
        || format!("the viewer left web on a free link: {free:?}"),
    );
    c.check(capped.iter().any(|s| s.0 == "low" && s.2 >= 1), || {
        format!("the viewer was never moved to low under a {CAP} cap: {capped:?}")
    });
    c.check(
        capped.iter().any(|s| s.1.is_some_and(|e| e < 800_000)),
        || format!("no REMB estimate under web's bitrate reached the server: {capped:?}"),
    );
    c.check(
        freed.last().is_some_and(|s| s.0 == "web" && s.2 >= 2),
        || format!("the viewer was not probed back up to web once the cap was lifted: {freed:?}"),
    );
    match metric(&d, &base, "divisor_webrtc_rendition_switches_total") {
        Ok(n) => {
            c.check(n >= 1.0, || format!("rendition switches metric is {n}"));
        }
        Err(e) => {
            c.check(false, || format!("switch metric: {e:#}"));
        }
    }

    match player {
        Ok(Ok(p)) => {
            let (w, h) = p.frame_size();
            let series = p.frames_series();
            eprintln!(
                "chromium {url}: {} frames {} -> {} ({w}x{h}), series {series:?}",
                p.connection_state().unwrap_or("?"),
                p.frames_first(),
                p.frames_last()
            );
            c.check(p.connection_state() == Some("connected"), || {
                format!("chromium: connection state {:?}", p.connection_state())
            });
            c.check((w, h) == (640, 360), || {
                format!("chromium decodes {w}x{h} at the end, not web's 640x360")
            });
            // Smooth again after the switch: the last third of the run decodes at 60 %
            // of the frame rate or better.
            let tail = series.get(series.len() * 2 / 3).copied().unwrap_or(0);
            let want = (0.6 * 25.0 * PLAY_SECS as f64 / 3.0) as u64;
            c.check(p.frames_last() >= tail + want, || {
                format!(
                    "playback not smooth after the switch: {} frames in the last third, want \
                     {want}: {series:?}",
                    p.frames_last().saturating_sub(tail)
                )
            });
            // And steady: no stall over a second (with the unbounded responder Chromium
            // decoded in GOP-sized jumps two seconds apart).
            let poll = PLAY_SECS as f64 / series.len().max(1) as f64;
            let last_third = &series[series.len() * 2 / 3..];
            let longest_flat = last_third
                .windows(2)
                .fold((0usize, 0usize), |(run, best), w| {
                    let run = if w[1] == w[0] { run + 1 } else { 0 };
                    (run, best.max(run))
                })
                .1;
            c.check(longest_flat as f64 * poll <= 1.0, || {
                format!(
                    "decoding stalled for {:.1} s in the last third: {series:?}",
                    longest_flat as f64 * poll
                )
            });
            c.check(shot.is_file(), || {
                format!("no screenshot at {}", shot.display())
            });
        }
        Ok(Err(e)) => {
            c.check(false, || format!("chromium {url}: {e:#}"));
        }
        Err(_) => {
            c.check(false, || "the chromium thread panicked".to_string());
        }
    }
    let _ = std::fs::remove_file(&config);
    if !c.failures().is_empty() {
        eprintln!("{}", d.logs_report(40));
    }
    c.finish();
}
