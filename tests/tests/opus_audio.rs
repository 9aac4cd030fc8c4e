//! Renditions for WebRTC clients, played over RTSP by ffprobe / ffmpeg through the split
//! server, with the test configuration of the WebRTC work (docs: README, `audio` and
//! `profile` keys):
//!
//! - live channel `cam` (test source), rendition `web`: the SDP offers `opus/48000/2` and
//!   H.264 `profile-level-id=42e01f`; ffprobe sees an Opus 48 kHz stream and Constrained
//!   Baseline video; ffmpeg decodes both with no error line; the first audio and video
//!   times agree within 40 ms (lip sync survives the audio transcode);
//! - rendition `av1` of the same channel carries Opus too;
//! - a stored asset at `?rendition=web`: Opus audio, Constrained Baseline, every video
//!   frame decodes with no error line.

use std::time::Duration;

use divisor_tests::deploy::Options;
use divisor_tests::media::{self, CLIP_MP4};
use divisor_tests::netns::Node;
use divisor_tests::{Checks, Deployment, Kind, LinkTransport, RtpTransport, RtspConn};
use serde_json::Value;

fn stream<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == kind)
}

/// Opus at 48 kHz and (when `video` is given) H.264 Constrained Baseline, as ffprobe
/// reports them.
fn check_streams(c: &mut Checks, what: &str, v: &Value, h264: bool) {
    let audio = stream(v, "audio");
    eprintln!(
        "{what}: audio {:?} {:?} Hz {:?} ch",
        audio.map(|a| &a["codec_name"]),
        audio.map(|a| &a["sample_rate"]),
        audio.map(|a| &a["channels"])
    );
    c.check(
        audio.is_some_and(|a| a["codec_name"] == "opus" && a["sample_rate"] == "48000"),
        || format!("{what}: no Opus 48000 Hz audio stream: {v}"),
    );
    if h264 {
        let video = stream(v, "video");
        eprintln!(
            "{what}: video {:?} {:?}",
            video.map(|s| &s["codec_name"]),
            video.map(|s| &s["profile"])
        );
        c.check(
            video.is_some_and(|s| {
                s["codec_name"] == "h264" && s["profile"] == "Constrained Baseline"
            }),
            || format!("{what}: no H.264 Constrained Baseline video stream: {v}"),
        );
    }
}

fn probe(d: &Deployment, url: &str) -> anyhow::Result<Value> {
    // A live rendition starts when first asked for: give it a few tries.
    let mut last = d.ffprobe_json(url, RtpTransport::Tcp);
    for _ in 0..3 {
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
        last = d.ffprobe_json(url, RtpTransport::Tcp);
    }
    last
}

/// First presentation time of video and audio packets ffprobe reads in 4 s. ffmpeg's RTP
/// demuxer gives the very first video packet (the keyframe a live subscriber starts at)
/// no timestamp; its time is that of the first stamped video packet less one frame per
/// unstamped packet before it (the rendition is baseline H.264 at the test source's
/// 25 fps: no reordering, constant frame rate).
fn first_pts(d: &Deployment, url: &str) -> anyhow::Result<(f64, f64)> {
    let packets = d.ffprobe_packets(url)?;
    let of = |kind: &str| {
        packets
            .iter()
            .filter(|p| p["codec_type"] == kind)
            .map(|p| media::json_f64(&p["pts_time"]))
            .collect::<Vec<Option<f64>>>()
    };
    let video = of("video");
    let frame = 1.0 / f64::from(media::FPS);
    let first_video = video
        .iter()
        .position(Option::is_some)
        .and_then(|i| video[i].map(|pts| pts - i as f64 * frame));
    let first_audio = of("audio").into_iter().flatten().reduce(f64::min);
    match (first_video, first_audio) {
        (Some(v), Some(a)) => Ok((v, a)),
        other => anyhow::bail!("no audio or no video packet: {other:?} in {packets:?}"),
    }
}

#[test]
fn opus_renditions_split() {
    let name = "opus-audio";
    let config = std::env::temp_dir().join(format!("divisor-{name}.toml"));
    std::fs::write(&config, media::WEBRTC_CONFIG).unwrap();
    let options = Options {
        encoder_args: vec!["--config".into(), config.into()],
        protocol_args: vec![],
    };
    let d = Deployment::start_with(name, Kind::Split(LinkTransport::Tcp), options)
        .expect("deployment starts");
    let mut c = Checks::new();
    let web = format!("rtsp://{}/live/cam/web", d.rtsp_addr);

    // The SDP a WebRTC gateway or RTSP client gets.
    if let Some(v) = c.ok("ffprobe of live cam/web", probe(&d, &web)) {
        check_streams(&mut c, "live cam/web", &v, true);
    }
    let describe = RtspConn::connect(&d, Node::Client, d.rtsp_addr)
        .and_then(|mut rtsp| rtsp.request("DESCRIBE", &web, &[("Accept", "application/sdp")]));
    if let Some(r) = c.ok("DESCRIBE of live cam/web", describe) {
        let sdp = String::from_utf8_lossy(&r.body).to_string();
        eprintln!("{name}: SDP of cam/web:\n{sdp}");
        c.check(r.status == 200 && sdp.contains(" opus/48000/2"), || {
            format!(
                "no opus/48000/2 in the SDP: {} {}\n{sdp}",
                r.status, r.reason
            )
        });
        c.check(sdp.contains("profile-level-id=42e01f"), || {
            format!("H.264 is not announced as profile-level-id=42e01f:\n{sdp}")
        });
    }

    // Both tracks decode.
    let decode = d.ffmpeg_decode(
        &web,
        RtpTransport::Tcp,
        &["-t", "8"],
        Duration::from_secs(60),
    );
    if let Some(dec) = c.ok("ffmpeg decode of live cam/web", decode) {
        eprintln!(
            "{name}: live cam/web decoded {} video frames in 8 s, {} error lines",
            dec.frames,
            dec.error_lines.len()
        );
        c.check(dec.out.success() && dec.error_lines.is_empty(), || {
            format!("live cam/web decode: {}", dec.report())
        });
        c.check(dec.frames >= 8 * 25 * 8 / 10, || {
            format!("live cam/web: only {} frames: {}", dec.frames, dec.report())
        });
    }

    // Lip sync through the Opus transcode.
    let what = "lip sync of live cam/web";
    if let Some((v, a)) = c.ok(what, first_pts(&d, &web)) {
        eprintln!("{what}: first video pts {v:.3} s, first audio pts {a:.3} s");
        c.check((v - a).abs() <= 0.040, || {
            format!("{what}: first video pts {v:.3} s, first audio pts {a:.3} s")
        });
    }

    // The AV1 rung carries Opus too (ffmpeg here cannot depacketise AV1 video).
    let av1 = format!("rtsp://{}/live/cam/av1", d.rtsp_addr);
    if let Some(v) = c.ok("ffprobe of live cam/av1", probe(&d, &av1)) {
        check_streams(&mut c, "live cam/av1", &v, false);
    }

    // A stored asset in the web rendition.
    let clip = media::asset(CLIP_MP4).expect("test clip");
    let vod = format!("{}?rendition=web", d.url(CLIP_MP4));
    if let Some(v) = c.ok("ffprobe of VoD ?rendition=web", probe(&d, &vod)) {
        check_streams(&mut c, "VoD ?rendition=web", &v, true);
    }
    let decode = d.ffmpeg_decode(&vod, RtpTransport::Udp, &[], Duration::from_secs(60));
    if let Some(dec) = c.ok("ffmpeg decode of VoD ?rendition=web", decode) {
        eprintln!(
            "{name}: VoD web decoded {} frames (source {}), {} error lines",
            dec.frames,
            clip.video_frames,
            dec.error_lines.len()
        );
        c.check(dec.frames == clip.video_frames, || {
            format!(
                "VoD web: decoded {} frames, the source has {}\n{}",
                dec.frames,
                clip.video_frames,
                dec.report()
            )
        });
        c.check(dec.out.success() && dec.error_lines.is_empty(), || {
            format!("VoD web decode: {}", dec.report())
        });
    }
    c.finish();
}
