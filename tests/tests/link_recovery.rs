//! The link survives the encoder unit going away: the protocol unit answers 503 while it
//! is gone, redials with backoff, and serves again (every frame) once it is back, without
//! being restarted itself.

use divisor_tests::deploy::ENCODER;
use divisor_tests::media::{self, CLIP_MP4};
use divisor_tests::{Checks, Deployment, LinkTransport, Node, RtpTransport, RtspConn};
use std::thread;
use std::time::{Duration, Instant};

fn describe_status(d: &Deployment) -> Option<u16> {
    RtspConn::connect(d, Node::Client, d.rtsp_addr)
        .and_then(|mut c| {
            c.request(
                "DESCRIBE",
                &d.url(CLIP_MP4),
                &[("Accept", "application/sdp")],
            )
        })
        .ok()
        .map(|r| r.status)
}

#[test]
fn protocol_unit_redials_after_the_encoder_restarts() {
    let d = Deployment::split("link-recovery", LinkTransport::Tcp).expect("deployment starts");
    let clip = media::asset(CLIP_MP4).unwrap();
    let mut c = Checks::new();

    d.stop(ENCODER);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = describe_status(&d);
    while status != Some(503) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        status = describe_status(&d);
    }
    c.check(status == Some(503), || {
        format!("DESCRIBE with the encoder unit gone: {status:?}, expected 503")
    });

    c.ok("restart the encoder unit", d.restart_encoder("encoder-2"));
    // Backoff tops out at 5 s, so the protocol unit must be back well within 20 s.
    c.ok(
        "protocol unit serves again",
        d.wait_ready(Duration::from_secs(20)),
    );
    let timeout = Duration::from_secs_f64(clip.duration + 25.0);
    if let Some(r) = c.ok(
        "ffmpeg after the restart",
        d.ffmpeg_decode(&d.url(CLIP_MP4), RtpTransport::Tcp, &[], timeout),
    ) {
        c.check(r.out.success() && r.frames == clip.video_frames, || {
            format!(
                "after the restart: {} of {} frames: {}",
                r.frames,
                clip.video_frames,
                r.report()
            )
        });
    }
    c.check(d.is_running("protocol"), || {
        "the protocol unit exited instead of redialling".into()
    });
    if !c.failures().is_empty() {
        eprintln!("{}", d.logs_report(40));
    }
    c.finish();
}
