//! Timestamps of transcoded live renditions, checked on the frames the encoder unit puts
//! on the link (over an in-process link).
//!
//! The protocol unit sends each frame at its dts and stamps its RTP packets with its pts,
//! and its RTCP sender reports map that one timeline to the wall clock. So a rendition
//! without B-frames must have pts == dts advancing by exactly one frame duration —
//! across loop points too — or receivers see jitter and frames early or late against the
//! sender reports. A rendition with frame-rate tiers (a `P b B b` B pyramid) has regular
//! dts and pts at or after dts (never presented before it is sent).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use divisor_encoder::chains::ChainFactory;
use divisor_encoder::config::Config;
use divisor_encoder::live::LiveRegistry;
use divisor_encoder::{serve_link_with, Catalog, Library, Services};
use divisor_link::{Frame, FrameFlags, Message};
use tokio::time::timeout;

/// One frame at 25 fps in the 90 kHz clock.
const FRAME: i64 = 3600;

/// A library holding `gop.mp4`: exactly 2 s (50 frames) of 25 fps H.264 with B-frames
/// (so the decoder reorders) and a GOP of 25, plus AAC; looped, it gives a loop point
/// every 2 s.
fn library() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args([
                "-t", "2", "-c:v", "libx264", "-preset", "veryfast", "-bf", "2",
            ])
            .args(["-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac"])
            .arg(root.join("gop.mp4"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (dir, root)
    })
    .1
}

/// The video frames of `rendition` of channel `loop` (gop.mp4 looped) until `loops`
/// loop points have passed and a second more.
async fn video_frames(rendition: &str, tiers: bool, loops: usize) -> Vec<Frame> {
    let config = Config::parse(&format!(
        r#"
        [[rendition]]
        name = "{rendition}"
        width = 160
        height = 120
        bitrate_kbps = 200
        keyint = 25
        tiers = {tiers}
        [[channel]]
        name = "loop"
        source = "loop:gop.mp4"
        renditions = ["{rendition}"]
        "#
    ))
    .unwrap();
    let library = Arc::new(Library::open(library()).unwrap());
    let chains = Arc::new(ChainFactory::new(config.clone(), 1));
    let live = Arc::new(LiveRegistry::new(library.clone(), chains.clone()));
    live.apply(&config.channels).unwrap();
    let services = Services {
        library,
        catalog: Arc::new(Catalog::new()),
        chains,
        live: live.clone(),
    };
    let (encoder_end, protocol_end) = divisor_link::mem_pair();
    tokio::spawn(serve_link_with(encoder_end, services));
    let tx = protocol_end.sender;
    let mut rx = protocol_end.receiver;
    tx.send(Message::Subscribe {
        channel: 1,
        name: "loop".into(),
        rendition: rendition.into(),
    })
    .await
    .unwrap();
    let mut frames: Vec<Frame> = Vec::new();
    let mut after_last_loop = 0;
    while after_last_loop < 25 {
        let msg = timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("frames keep coming")
            .expect("link up");
        match msg {
            Message::Frame(f) if f.codec.is_video() => {
                let loops_seen = frames.iter().filter(|f| is_loop_point(f)).count();
                if loops_seen >= loops {
                    after_last_loop += 1;
                }
                frames.push(f);
            }
            Message::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    live.shutdown();
    frames
}

/// Whether `w[1]` is one frame after `w[0]` in decode order. The timeline aligns a new
/// segment's tracks in microseconds, so a loop point may land one 90 kHz tick (11 µs)
/// off the grid; anything more (a lost frame is 3600 ticks) is an error.
fn steps_one_frame(w: &[Frame]) -> bool {
    let step = w[1].dts - w[0].dts;
    step == FRAME || (is_loop_point(&w[1]) && (step - FRAME).abs() <= 1)
}

fn is_loop_point(f: &Frame) -> bool {
    f.flags.contains(FrameFlags::DISCONTINUITY)
}

fn show(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| format!("({} {} {:?})", f.pts, f.dts, f.flags))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_b_frames_pts_equals_dts_one_frame_apart_across_loop_points() {
    let frames = video_frames("flat", false, 2).await;
    let shown = show(&frames);
    assert!(frames[0].flags.contains(FrameFlags::KEYFRAME), "{shown}");
    assert!(
        frames.iter().all(|f| f.pts == f.dts),
        "pts must equal dts without B-frames: {shown}"
    );
    for w in frames.windows(2) {
        assert!(
            steps_one_frame(w),
            "one frame apart, nothing lost at a loop point: {shown}"
        );
    }
    let loops: Vec<&Frame> = frames.iter().filter(|f| is_loop_point(f)).collect();
    assert_eq!(loops.len(), 2, "each loop point is flagged once: {shown}");
    assert!(
        loops.iter().all(|f| f.flags.contains(FrameFlags::KEYFRAME)),
        "a loop point starts with a keyframe: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tiers_dts_is_regular_and_pts_never_precedes_it() {
    let frames = video_frames("tiers", true, 2).await;
    let shown = show(&frames);
    assert!(frames[0].flags.contains(FrameFlags::KEYFRAME), "{shown}");
    for w in frames.windows(2) {
        assert!(steps_one_frame(w), "dts one frame apart: {shown}");
    }
    assert!(
        frames.iter().all(|f| f.pts >= f.dts),
        "a frame is never sent after its presentation time: {shown}"
    );
    // Presentation order is the same grid: every frame's pts is taken exactly once.
    let mut pts: Vec<i64> = frames.iter().map(|f| f.pts).collect();
    pts.sort_unstable();
    let last_dts = frames.last().map_or(0, |f| f.dts);
    let complete: Vec<&[i64]> = pts.windows(2).filter(|w| w[1] <= last_dts).collect();
    assert!(
        complete.iter().all(|w| (w[1] - w[0] - FRAME).abs() <= 1),
        "pts on the frame grid (one tick of slack at loop points): {shown}"
    );
}
