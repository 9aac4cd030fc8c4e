//! Transcoded renditions of the ladder, played over RTSP by real clients through the split
//! server (and through `divisor-mono`, which must behave the same):
//!
//! - a VoD asset at `?rendition=180p`: ffmpeg decodes every frame of the source at the
//!   rung's size, with no error line;
//! - a live channel fed by the synthetic test source, in both of its renditions: ffprobe
//!   reports each rung's size;
//! - a rung larger than the source and an unknown rendition get a clear RTSP error, and a
//!   session playing meanwhile still decodes every frame.

use std::time::Duration;

use divisor_tests::deploy::Options;
use divisor_tests::media::{self, CLIP_MP4};
use divisor_tests::netns::Node;
use divisor_tests::{Checks, Deployment, Kind, LinkTransport, RtpTransport, RtspConn};
use serde_json::Value;

const CONFIG: &str = r#"
[[rendition]]
name = "180p"
width = 320
height = 180
bitrate_kbps = 300

[[rendition]]
name = "288p"
width = 512
height = 288
bitrate_kbps = 500
tiers = false

[[rendition]]
name = "1080p"
width = 1920
height = 1080
bitrate_kbps = 5000

[vod]
renditions = ["180p", "1080p"]

[[channel]]
name = "pattern"
source = "testsrc"
renditions = ["180p", "288p"]
"#;

fn video_size(v: &Value) -> Option<(u64, u64)> {
    let s = v["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == "video")?;
    Some((s["width"].as_u64()?, s["height"].as_u64()?))
}

fn run(kind: Kind, name: &str) {
    let config = std::env::temp_dir().join(format!("divisor-{name}.toml"));
    std::fs::write(&config, CONFIG).unwrap();
    let options = Options {
        encoder_args: vec!["--config".into(), config.into()],
        protocol_args: vec![],
    };
    let d = Deployment::start_with(name, kind, options).expect("deployment starts");
    let mut c = Checks::new();
    let clip = media::asset(CLIP_MP4).expect("test clip");

    // VoD rendition: every frame, at the rung's size.
    let url = format!("{}?rendition=180p", d.url(CLIP_MP4));
    if let Some(v) = c.ok(
        "ffprobe of the 180p rendition",
        d.ffprobe_json(&url, RtpTransport::Tcp),
    ) {
        c.check(video_size(&v) == Some((320, 180)), || {
            format!("180p rendition announced as {:?}", video_size(&v))
        });
    }
    let big = format!("{}?rendition=1080p", d.url(CLIP_MP4));
    let unknown = format!("{}?rendition=4k", d.url(CLIP_MP4));
    let decode = std::thread::scope(|s| {
        let playing =
            s.spawn(|| d.ffmpeg_decode(&url, RtpTransport::Udp, &[], Duration::from_secs(60)));
        // Bad requests while it plays: a clear status, and the session is undisturbed.
        let mut rtsp = RtspConn::connect(&d, Node::Client, d.rtsp_addr).expect("connect");
        for (what, u, want) in [
            ("a rung above the source", &big, 415),
            ("an unknown rendition", &unknown, 404),
        ] {
            match rtsp.request("DESCRIBE", u, &[("Accept", "application/sdp")]) {
                Ok(r) => {
                    c.check(r.status == want, || {
                        format!(
                            "DESCRIBE of {what}: {} {} (want {want})",
                            r.status, r.reason
                        )
                    });
                }
                Err(e) => {
                    c.check(false, || format!("DESCRIBE of {what}: {e:#}"));
                }
            }
        }
        playing.join().expect("decode thread")
    });
    if let Some(dec) = c.ok("ffmpeg decode of the 180p rendition", decode) {
        eprintln!(
            "{name}: 180p rendition decoded {} frames (source {})",
            dec.frames, clip.video_frames
        );
        c.check(dec.frames == clip.video_frames, || {
            format!(
                "decoded {} frames, the source has {}\n{}",
                dec.frames,
                clip.video_frames,
                dec.report()
            )
        });
        c.check(dec.error_lines.is_empty(), || {
            format!("decode errors:\n{}", dec.report())
        });
    }

    // Live renditions of the test source.
    for (rung, size) in [("180p", (320, 180)), ("288p", (512, 288))] {
        let url = format!("rtsp://{}/live/pattern/{rung}", d.rtsp_addr);
        let mut probe = d.ffprobe_json(&url, RtpTransport::Tcp);
        for _ in 0..3 {
            if probe.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
            probe = d.ffprobe_json(&url, RtpTransport::Tcp);
        }
        if let Some(v) = c.ok(&format!("ffprobe of live rendition {rung}"), probe) {
            eprintln!("{name}: live {rung}: {:?}", video_size(&v));
            c.check(video_size(&v) == Some(size), || {
                format!(
                    "live {rung} announced as {:?}, want {size:?}",
                    video_size(&v)
                )
            });
        }
    }
    c.finish();
}

#[test]
fn renditions_split() {
    run(Kind::Split(LinkTransport::Tcp), "renditions-split");
}

#[test]
fn renditions_mono() {
    run(Kind::Mono, "renditions-mono");
}
