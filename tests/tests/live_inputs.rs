//! Live channels through the split server with real clients: an MPEG-TS over UDP input
//! and an RTP input (both fed by an `ffmpeg -re` sender next to the encoder unit), and a
//! library file looped as a live channel.
//!
//! - ffprobe sees H.264 + AAC at the sender's size on the UDP- and RTP-fed channels;
//! - `ffmpeg -t 15` decodes the looped channel across several loop points without an
//!   error line;
//! - lip sync: the first audio and video packet times ffprobe reads over RTSP agree within
//!   40 ms.

use divisor_tests::deploy::Options;
use divisor_tests::media::{self, CLIP_MP4, HEIGHT, WIDTH};
use divisor_tests::netns::Node;
use divisor_tests::{Checks, Deployment, Kind, LinkTransport, RtpTransport};
use serde_json::Value;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

const TS_PORT: u16 = 5500;
const RTP_VIDEO_PORT: u16 = 5600;
const RTP_AUDIO_PORT: u16 = 5602;

/// `ffmpeg -re` looping `clip` forever, in the encoder's namespace, with `out` arguments.
fn sender(d: &Deployment, name: &str, clip: &Path, out: &[&str]) {
    let mut args: Vec<OsString> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(clip.as_os_str().to_os_string());
    args.extend(out.iter().map(OsString::from));
    d.spawn_in(Node::Encoder, name, "ffmpeg", args)
        .expect("start the ffmpeg sender");
}

fn live_url(d: &Deployment, channel: &str) -> String {
    format!("rtsp://{}/live/{channel}", d.rtsp_addr)
}

fn stream<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == kind)
}

/// ffprobe of a live channel: H.264 at the clip's size and AAC.
fn check_probe(c: &mut Checks, d: &Deployment, channel: &str) {
    let what = format!("ffprobe of live channel {channel}");
    // The sender may need a moment (and a keyframe) before the channel is announced.
    let mut probe = d.ffprobe_json(&live_url(d, channel), RtpTransport::Tcp);
    for _ in 0..3 {
        if probe.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
        probe = d.ffprobe_json(&live_url(d, channel), RtpTransport::Tcp);
    }
    let Some(v) = c.ok(&what, probe) else {
        return;
    };
    eprintln!(
        "{what}: {}",
        v["streams"]
            .as_array()
            .map(|ss| ss
                .iter()
                .map(|s| format!("{} {}x{}", s["codec_name"], s["width"], s["height"]))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    match stream(&v, "video") {
        Some(s) => {
            c.check(s["codec_name"] == "h264", || format!("{what}: video {s}"));
            c.check(s["width"] == WIDTH && s["height"] == HEIGHT, || {
                format!("{what}: size {}x{}", s["width"], s["height"])
            });
        }
        None => {
            c.check(false, || format!("{what}: no video stream: {v}"));
        }
    }
    c.check(
        stream(&v, "audio").is_some_and(|s| s["codec_name"] == "aac"),
        || format!("{what}: no AAC stream: {v}"),
    );
}

/// First packet time of each stream type ffprobe reads in the first seconds.
fn first_pts(d: &Deployment, url: &str) -> anyhow::Result<(f64, f64)> {
    let packets = d.ffprobe_packets(url)?;
    let first = |kind: &str| {
        packets
            .iter()
            .filter(|p| p["codec_type"] == kind)
            .filter_map(|p| media::json_f64(&p["pts_time"]))
            .reduce(f64::min)
    };
    match (first("video"), first("audio")) {
        (Some(v), Some(a)) => Ok((v, a)),
        other => anyhow::bail!("no audio or no video packet: {other:?} in {packets:?}"),
    }
}

#[test]
fn live_inputs_play_through_the_split_server() {
    let clip = media::asset_path(CLIP_MP4).expect("test media");
    let sdp = std::env::temp_dir().join(format!("divisor-live-inputs-{}.sdp", std::process::id()));
    let _ = std::fs::remove_file(&sdp);
    let options = Options {
        encoder_args: [
            "--live".to_string(),
            format!("looped=loop:{CLIP_MP4}"),
            "--live".to_string(),
            format!("ts=udp://127.0.0.1:{TS_PORT}"),
            "--live".to_string(),
            format!("cam=rtp://127.0.0.1:{RTP_VIDEO_PORT},sdp={}", sdp.display()),
        ]
        .into_iter()
        .map(OsString::from)
        .collect(),
        protocol_args: Vec::new(),
    };
    let d = Deployment::start_with("live_inputs", Kind::Split(LinkTransport::Tcp), options)
        .expect("deployment");
    sender(
        &d,
        "sender-ts",
        &clip,
        &[
            "-c",
            "copy",
            "-f",
            "mpegts",
            &format!("udp://127.0.0.1:{TS_PORT}?pkt_size=1316"),
        ],
    );
    let sdp_arg = sdp.display().to_string();
    sender(
        &d,
        "sender-rtp",
        &clip,
        &[
            "-map",
            "0:v",
            "-c",
            "copy",
            "-f",
            "rtp",
            &format!("rtp://127.0.0.1:{RTP_VIDEO_PORT}"),
            "-map",
            "0:a",
            "-c",
            "copy",
            "-f",
            "rtp",
            &format!("rtp://127.0.0.1:{RTP_AUDIO_PORT}"),
            "-sdp_file",
            &sdp_arg,
        ],
    );
    std::thread::sleep(Duration::from_secs(3));

    let mut c = Checks::new();
    check_probe(&mut c, &d, "ts");
    check_probe(&mut c, &d, "cam");

    // The 4 s clip looped: 15 s of decoding crosses three loop points.
    let what = "ffmpeg -t 15 of the looped channel";
    if let Some(r) = c.ok(
        what,
        d.ffmpeg_decode(
            &live_url(&d, "looped"),
            RtpTransport::Tcp,
            &["-t", "15"],
            Duration::from_secs(60),
        ),
    ) {
        eprintln!(
            "{what}: {} frames, {} error lines",
            r.frames,
            r.error_lines.len()
        );
        c.check(r.out.success(), || format!("{what}: {}", r.report()));
        c.check(r.error_lines.is_empty(), || {
            format!("{what}: error lines: {}", r.report())
        });
        c.check(r.frames >= 15 * 25 * 8 / 10, || {
            format!("{what}: only {} frames: {}", r.frames, r.report())
        });
    }

    for channel in ["looped", "ts"] {
        let what = format!("lip sync of live channel {channel}");
        if let Some((v, a)) = c.ok(&what, first_pts(&d, &live_url(&d, channel))) {
            eprintln!("{what}: first video pts {v:.3} s, first audio pts {a:.3} s");
            c.check((v - a).abs() <= 0.040, || {
                format!("{what}: first video pts {v:.3} s, first audio pts {a:.3} s")
            });
        }
    }
    let _ = std::fs::remove_file(&sdp);
    c.finish();
}
