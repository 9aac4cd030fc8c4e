//! Video on demand with real clients, on the split server (link over TCP and over
//! io_uring) and on the monolithic server: what ffprobe, ffmpeg and GStreamer see must
//! match the file in the library exactly.

use divisor_tests::media::{self, AssetInfo, BFRAMES_MP4, CLIP_MKV, CLIP_MP4, CLIP_TS};
use divisor_tests::{kind_label, Checks, Deployment, Kind, LinkTransport, RtpTransport};
use serde_json::Value;
use std::thread;
use std::time::Duration;

const TRANSPORTS: [RtpTransport; 2] = [RtpTransport::Udp, RtpTransport::Tcp];

/// Streams, codecs, size and duration reported by ffprobe over RTSP match the file.
fn check_probe(c: &mut Checks, d: &Deployment, a: &AssetInfo, tr: RtpTransport) {
    let what = format!("ffprobe {} over {tr:?}", a.name);
    let Some(v) = c.ok(&what, d.ffprobe_json(&d.url(&a.name), tr)) else {
        return;
    };
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let (video, audio) = (stream_of(&v, "video"), stream_of(&v, "audio"));
    c.check(streams.len() == 2, || {
        format!("{what}: {} streams, expected 2: {v}", streams.len())
    });
    match video {
        Some(s) => {
            c.check(s["codec_name"] == a.video_codec.as_str(), || {
                format!(
                    "{what}: video codec {}, expected {}",
                    s["codec_name"], a.video_codec
                )
            });
            c.check(s["width"] == a.width && s["height"] == a.height, || {
                format!(
                    "{what}: size {}x{}, expected {}x{}",
                    s["width"], s["height"], a.width, a.height
                )
            });
        }
        None => {
            c.check(false, || format!("{what}: no video stream: {v}"));
        }
    }
    match audio {
        Some(s) => {
            c.check(s["codec_name"] == a.audio_codec.as_str(), || {
                format!(
                    "{what}: audio codec {}, expected {}",
                    s["codec_name"], a.audio_codec
                )
            });
            let rate = media::json_f64(&s["sample_rate"]).unwrap_or(0.0) as u64;
            c.check(rate == a.sample_rate, || {
                format!("{what}: sample rate {rate}, expected {}", a.sample_rate)
            });
        }
        None => {
            c.check(false, || format!("{what}: no audio stream: {v}"));
        }
    }
    let dur = media::json_f64(&v["format"]["duration"]);
    c.check(dur.is_some_and(|x| (x - a.duration).abs() <= 0.5), || {
        format!(
            "{what}: duration {dur:?}, expected {:.3} +- 0.5 s",
            a.duration
        )
    });
}

/// ffmpeg decodes every frame of the file, with no error or loss report.
fn check_decode(c: &mut Checks, d: &Deployment, a: &AssetInfo, tr: RtpTransport) {
    let what = format!("ffmpeg decode of {} over {tr:?}", a.name);
    let timeout = Duration::from_secs_f64(a.duration + 25.0);
    let Some(r) = c.ok(&what, d.ffmpeg_decode(&d.url(&a.name), tr, &[], timeout)) else {
        return;
    };
    c.check(r.out.success(), || {
        format!("{what}: ffmpeg failed: {}", r.report())
    });
    c.check(r.frames == a.video_frames, || {
        format!(
            "{what}: {} frames decoded, the file has {}: {}",
            r.frames,
            a.video_frames,
            r.report()
        )
    });
    c.check(r.error_lines.is_empty(), || {
        format!("{what}: decoder/transport trouble: {:?}", r.error_lines)
    });
}

/// GStreamer's rtspsrc plays to the end (EOS after RTCP BYE) and exits 0.
fn check_gst(c: &mut Checks, d: &Deployment, a: &AssetInfo, tr: RtpTransport) {
    let what = format!("gst-launch rtspsrc {} over {tr:?}", a.name);
    let timeout = Duration::from_secs_f64(a.duration + 20.0);
    if let Some(out) = c.ok(&what, d.gst_play(&d.url(&a.name), tr, timeout)) {
        c.check(out.success(), || {
            format!("{what}: {}", out.failure_report())
        });
        c.check(
            out.stdout.contains("EOS") || out.stderr.contains("EOS"),
            || {
                format!(
                    "{what}: no end-of-stream reported: {}",
                    out.failure_report()
                )
            },
        );
    }
}

fn vod(kind: Kind) {
    let label = kind_label(kind);
    let d = Deployment::start(&format!("vod-{label}"), kind).expect("deployment starts");
    let clip = media::asset(CLIP_MP4).unwrap();
    let bframes = media::asset(BFRAMES_MP4).unwrap();
    let mkv = media::asset(CLIP_MKV).unwrap();
    let ts = media::asset(CLIP_TS).unwrap();

    let mut all = Checks::new();
    // Probes are short; run them one after the other.
    for a in [&clip, &bframes, &mkv, &ts] {
        for tr in TRANSPORTS {
            check_probe(&mut all, &d, a, tr);
        }
    }
    // Playbacks take the asset's duration in real time: run them concurrently, which also
    // checks that simultaneous sessions do not disturb one another.
    let jobs: Vec<(&AssetInfo, RtpTransport, bool)> = vec![
        (&clip, RtpTransport::Udp, false),
        (&clip, RtpTransport::Tcp, false),
        (&bframes, RtpTransport::Udp, false),
        (&bframes, RtpTransport::Tcp, false),
        (&clip, RtpTransport::Udp, true),
        (&clip, RtpTransport::Tcp, true),
    ];
    let results: Vec<Checks> = thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|&(a, tr, gst)| {
                let d = &d;
                s.spawn(move || {
                    let mut c = Checks::new();
                    if gst {
                        check_gst(&mut c, d, a, tr);
                    } else {
                        check_decode(&mut c, d, a, tr);
                    }
                    c
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        all.merge(r);
    }
    all.check(d.check_alive().is_ok(), || format!("{:?}", d.check_alive()));
    if !all.failures().is_empty() {
        eprintln!("{}", d.logs_report(40));
    }
    all.finish();
}

#[test]
fn vod_split_tcp_link() {
    vod(Kind::Split(LinkTransport::Tcp));
}

#[test]
fn vod_split_uring_link() {
    vod(Kind::Split(LinkTransport::Uring));
}

#[test]
fn vod_mono() {
    vod(Kind::Mono);
}

fn stream_of(v: &Value, kind: &str) -> Option<Value> {
    v["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == kind)
        .cloned()
}
