//! A live channel outlives its source going away, and viewers are told when it ends.
//!
//! - The encoder unit is killed with -9 under live viewers (ffmpeg over RTSP/TCP and
//!   RTSP/UDP) and started again 3 s later: `/status` shows the channel stalled, and
//!   after the restart every viewer gets frames again on the session it had, without
//!   reconnecting.
//! - The encoder unit is killed and does not return: once `--live-resume-secs` runs out
//!   every viewer is sent RTCP BYE and its RTSP connection closes, so ffmpeg and
//!   `gst-launch-1.0 rtspsrc` end by themselves instead of waiting for ever.

use divisor_tests::clients::progress_frames;
use divisor_tests::control;
use divisor_tests::deploy::{Kind, Options, ENCODER};
use divisor_tests::{Checks, Deployment, LinkTransport, Node};
use std::thread;
use std::time::{Duration, Instant};

const HTTP_PORT: u16 = 9100;

fn start(test: &str, resume_secs: u64) -> Deployment {
    Deployment::start_with(
        test,
        Kind::Split(LinkTransport::Tcp),
        Options {
            encoder_args: vec!["--live".into(), "x=loop:long.mp4".into()],
            protocol_args: vec![
                "--live-resume-secs".into(),
                resume_secs.to_string().into(),
                "--http-listen".into(),
                format!("0.0.0.0:{HTTP_PORT}").into(),
            ],
        },
    )
    .expect("deployment starts")
}

/// ffmpeg reading the live channel (stream copy: a cheap client) until it ends or for
/// `secs`, with its `-progress` in `<name>.stdout`.
fn spawn_ffmpeg(d: &Deployment, name: &str, transport: &str, secs: u64) {
    let url = format!("rtsp://{}/live/x", d.rtsp_addr);
    let t = secs.to_string();
    let args = [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
        "-timeout",
        "20000000",
        "-rtsp_transport",
        transport,
        "-i",
        &url,
        "-t",
        &t,
        "-map",
        "0",
        "-c",
        "copy",
        "-f",
        "null",
        "-",
        "-progress",
        "pipe:1",
    ];
    d.spawn_in(Node::Client, name, "ffmpeg", args)
        .expect("ffmpeg starts");
}

fn frames(d: &Deployment, name: &str) -> u64 {
    progress_frames(&d.stdout_of(name))
}

fn channel_state(d: &Deployment) -> Option<String> {
    let base = format!("http://{}:{HTTP_PORT}", d.rtsp_addr.ip());
    let v = control::status(d, &base).ok()?;
    v["channels"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "x")
        .and_then(|c| c["state"].as_str().map(str::to_string))
}

/// Polls until `f` holds or `timeout` passes.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(200));
    }
    f()
}

#[test]
fn live_viewers_keep_their_sessions_across_an_encoder_restart() {
    let d = start("live-resume", 30);
    let mut c = Checks::new();
    control::wait_live(&d, "x", &[""], Duration::from_secs(20)).expect("channel x is up");
    // 12 in CI; `DIVISOR_RESUME_VIEWERS=50` for the full run.
    let n: usize = std::env::var("DIVISOR_RESUME_VIEWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let viewers: Vec<String> = (0..n)
        .map(|i| {
            let name = format!("viewer{i}");
            spawn_ffmpeg(&d, &name, if i % 3 == 0 { "udp" } else { "tcp" }, 60);
            name
        })
        .collect();
    let all_playing = wait_until(Duration::from_secs(20), || {
        viewers.iter().all(|v| frames(&d, v) > 50)
    });
    c.check(all_playing, || {
        let f: Vec<u64> = viewers.iter().map(|v| frames(&d, v)).collect();
        format!("not every viewer played before the kill: {f:?}")
    });

    d.kill(ENCODER);
    let stalled = wait_until(Duration::from_secs(3), || {
        channel_state(&d).as_deref() == Some("stalled")
    });
    c.check(stalled, || {
        format!(
            "/status during the outage: {:?}, expected stalled",
            channel_state(&d)
        )
    });
    thread::sleep(Duration::from_secs(3));
    let before: Vec<u64> = viewers.iter().map(|v| frames(&d, v)).collect();
    c.ok("restart the encoder unit", d.restart_encoder("encoder-2"));
    // Frames again on every session: well past what was buffered before the kill.
    let resumed = wait_until(Duration::from_secs(20), || {
        viewers
            .iter()
            .zip(&before)
            .all(|(v, b)| frames(&d, v) > b + 100)
    });
    let after: Vec<u64> = viewers.iter().map(|v| frames(&d, v)).collect();
    c.check(resumed, || {
        format!("frames before the restart {before:?}, after {after:?}")
    });
    c.check(channel_state(&d).as_deref() == Some("live"), || {
        format!("/status after the restart: {:?}", channel_state(&d))
    });
    for v in &viewers {
        c.check(d.is_running(v), || {
            format!("{v} ended (it should have kept its session): {}", d.log(v))
        });
    }
    // Nobody reconnected: the protocol unit created exactly one session per viewer.
    let created = d.log("protocol").matches("live session created").count();
    c.check(created == viewers.len(), || {
        format!(
            "{created} live sessions created for {} viewers",
            viewers.len()
        )
    });
    if !c.failures().is_empty() {
        eprintln!("{}", d.logs_report(40));
    }
    c.finish();
}

#[test]
fn viewers_of_a_channel_whose_source_never_returns_are_told_and_let_go() {
    let d = start("live-end", 2);
    let mut c = Checks::new();
    control::wait_live(&d, "x", &[""], Duration::from_secs(20)).expect("channel x is up");
    spawn_ffmpeg(&d, "ffmpeg-tcp", "tcp", 600);
    spawn_ffmpeg(&d, "ffmpeg-udp", "udp", 600);
    let url = format!("rtsp://{}/live/x", d.rtsp_addr);
    d.spawn_in(
        Node::Client,
        "gst",
        "gst-launch-1.0",
        [
            "-q",
            "rtspsrc",
            &format!("location={url}"),
            "protocols=tcp",
            "!",
            "fakesink",
        ],
    )
    .expect("gst-launch starts");
    let playing = wait_until(Duration::from_secs(20), || {
        frames(&d, "ffmpeg-tcp") > 50 && frames(&d, "ffmpeg-udp") > 50
    });
    c.check(playing, || "the viewers did not start playing".into());
    c.check(d.is_running("gst"), || {
        format!("gst-launch ended early: {}", d.log("gst"))
    });

    d.kill(ENCODER);
    let killed = Instant::now();
    // 2 s of resume, then BYE and a closed connection: each client ends on its own.
    for v in ["ffmpeg-tcp", "ffmpeg-udp", "gst"] {
        let gone = wait_until(Duration::from_secs(15), || !d.is_running(v));
        c.check(gone, || {
            format!(
                "{v} still waits {:?} after its channel ended: {}",
                killed.elapsed(),
                d.log(v)
            )
        });
    }
    let log = d.log("protocol");
    c.check(log.contains("BYE sent to every client"), || {
        "the protocol unit did not log the BYEs".into()
    });
    c.check(log.contains("closing the RTSP connection"), || {
        "the protocol unit did not close the connections".into()
    });
    if !c.failures().is_empty() {
        eprintln!("{}", d.logs_report(40));
    }
    c.finish();
}
