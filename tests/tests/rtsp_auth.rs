//! RTSP Digest authentication with real clients: ffmpeg (credentials in the URL) and
//! `gst-launch-1.0 rtspsrc` (`user-id`/`user-pw`) play with the right password, get 401
//! with a wrong one, and 403 for a path their user may not read. OPTIONS stays open, a
//! request without credentials is challenged, and failures are counted in `/metrics`.

use divisor_tests::clients::gst_rtspsrc_args;
use divisor_tests::deploy::{Kind, Options};
use divisor_tests::media::{self, CLIP_MP4};
use divisor_tests::{control, Checks, Deployment, LinkTransport, Node, RtpTransport, RtspConn};
use std::time::Duration;

const HTTP_PORT: u16 = 9100;

#[test]
fn digest_authentication_lets_the_right_users_in_and_no_one_else() {
    let users = std::env::temp_dir().join("divisor-rtsp-auth-users.txt");
    std::fs::write(
        &users,
        "# user:password:path-prefixes\nalice:s3cret:/vod/\nbob:hunter2:/live/\n",
    )
    .unwrap();
    let d = Deployment::start_with(
        "rtsp-auth",
        Kind::Split(LinkTransport::Tcp),
        Options {
            encoder_args: vec![],
            protocol_args: vec![
                "--rtsp-users-file".into(),
                users.clone().into(),
                "--http-listen".into(),
                format!("0.0.0.0:{HTTP_PORT}").into(),
            ],
        },
    );
    // The harness's readiness probe (an unauthenticated DESCRIBE) takes the 401 as an
    // answer; the link's state comes from /status.
    let d = d.expect("deployment starts");
    let base = format!("http://{}:{HTTP_PORT}", d.rtsp_addr.ip());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while control::status(&d, &base).map_or(true, |v| v["link"]["state"] != "up") {
        assert!(
            std::time::Instant::now() < deadline,
            "the link did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let clip = media::asset(CLIP_MP4).unwrap();
    let mut c = Checks::new();
    let host = d.rtsp_addr;
    let plain = d.url(CLIP_MP4);

    // Without credentials: OPTIONS is answered, DESCRIBE is challenged.
    let mut conn = RtspConn::connect(&d, Node::Client, host).unwrap();
    let r = conn.request("OPTIONS", &plain, &[]).unwrap();
    c.check(r.status == 200, || format!("OPTIONS: {}", r.status));
    let r = conn
        .request("DESCRIBE", &plain, &[("Accept", "application/sdp")])
        .unwrap();
    let challenge = r.header("WWW-Authenticate").unwrap_or("").to_string();
    c.check(
        r.status == 401 && challenge.starts_with("Digest ") && challenge.contains("nonce="),
        || format!("DESCRIBE without credentials: {} {challenge:?}", r.status),
    );

    // ffmpeg with the right password plays every frame.
    let good = format!("rtsp://alice:s3cret@{host}/vod/{CLIP_MP4}");
    let timeout = Duration::from_secs_f64(clip.duration + 20.0);
    if let Some(r) = c.ok(
        "ffmpeg as alice",
        d.ffmpeg_decode(&good, RtpTransport::Tcp, &[], timeout),
    ) {
        c.check(r.out.success() && r.frames == clip.video_frames, || {
            format!(
                "alice: {} of {} frames: {}",
                r.frames,
                clip.video_frames,
                r.report()
            )
        });
    }
    // A wrong password: 401, nothing played.
    let wrong = format!("rtsp://alice:guess@{host}/vod/{CLIP_MP4}");
    if let Some(r) = c.ok(
        "ffmpeg with a wrong password",
        d.ffmpeg_decode(&wrong, RtpTransport::Tcp, &[], timeout),
    ) {
        c.check(
            !r.out.success() && r.frames == 0 && r.out.stderr.contains("401"),
            || format!("wrong password: {}", r.report()),
        );
    }
    // bob may read /live/ only: 403 for the VoD asset.
    let other = format!("rtsp://bob:hunter2@{host}/vod/{CLIP_MP4}");
    if let Some(r) = c.ok(
        "ffmpeg as bob on a VoD path",
        d.ffmpeg_decode(&other, RtpTransport::Tcp, &[], timeout),
    ) {
        c.check(
            !r.out.success() && r.frames == 0 && r.out.stderr.contains("403"),
            || format!("bob on /vod/: {}", r.report()),
        );
    }

    // GStreamer: user-id / user-pw.
    let gst = |user: &str, pw: &str| {
        let mut args = gst_rtspsrc_args(&plain, RtpTransport::Tcp);
        args.insert(3, format!("user-id={user}"));
        args.insert(4, format!("user-pw={pw}"));
        d.run_in(Node::Client, "gst-launch-1.0", args, timeout)
    };
    if let Some(out) = c.ok("rtspsrc as alice", gst("alice", "s3cret")) {
        c.check(out.success(), || {
            format!("rtspsrc as alice: {}", out.failure_report())
        });
    }
    if let Some(out) = c.ok("rtspsrc with a wrong password", gst("alice", "nope")) {
        c.check(
            !out.success() && out.stderr.contains("Unauthorized"),
            || format!("rtspsrc wrong password: {}", out.failure_report()),
        );
    }

    let (_, metrics) = control::http(&d, "GET", &format!("{base}/metrics"), None, None).unwrap();
    let count = |reason: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "divisor_auth_failures_total{{reason=\"{reason}\"}} "
                ))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    c.check(
        count("credentials") >= 2.0 && count("forbidden") >= 1.0,
        || {
            format!(
                "auth failures in /metrics: credentials {} forbidden {}",
                count("credentials"),
                count("forbidden")
            )
        },
    );
    c.check(
        d.log("protocol").contains("RTSP authentication failed"),
        || "failures are not logged".into(),
    );
    if !c.failures().is_empty() {
        eprintln!("{}", d.logs_report(30));
    }
    c.finish();
}
