//! `--http-listen` and admission control through the split server, with real clients:
//!
//! - `--max-clients 3`: three ffmpeg clients play (two VoD over UDP, one live); a fourth
//!   session's SETUP gets `453 Not Enough Bandwidth` with a reason, and the three admitted
//!   clients decode every frame without an error line; once the VoD clients have ended,
//!   their shares are back and a new session is admitted;
//! - `curl /metrics` from the client namespace while they play: RTCP receiver reports from
//!   the ffmpeg clients are counted and the RR histograms and send lateness are filled;
//!   the refusal is counted;
//! - `curl /status`: the live channel is `live` while its `ffmpeg -re` sender runs and
//!   `stalled` once the sender is killed.

use divisor_tests::deploy::Options;
use divisor_tests::media::{self, CLIP_MP4, LONG_MP4};
use divisor_tests::netns::Node;
use divisor_tests::rtsp::RtspConn;
use divisor_tests::{Checks, Deployment, Kind, LinkTransport, RtpTransport};
use serde_json::Value;
use std::ffi::OsString;
use std::time::{Duration, Instant};

const TS_PORT: u16 = 5510;
const HTTP_PORT: u16 = 9100;
const MAX_CLIENTS: usize = 3;

fn curl(d: &Deployment, path: &str) -> anyhow::Result<String> {
    let url = format!("http://{}:{HTTP_PORT}{path}", d.rtsp_addr.ip());
    let out = d
        .run_in(
            Node::Client,
            "curl",
            ["-sS", "--fail", "--max-time", "10", url.as_str()],
            Duration::from_secs(15),
        )?
        .check()?;
    Ok(out.stdout)
}

/// The samples of a Prometheus/OpenMetrics text exposition; an error unless it ends with
/// `# EOF` and every sample value is a number.
/// A new session's first SETUP of `url` (UDP, client ports `port`-`port+1`) from the
/// client namespace: the status code and status line.
fn setup(d: &Deployment, url: &str, port: u16) -> anyhow::Result<(u16, String)> {
    let mut conn = RtspConn::connect(d, Node::Client, d.rtsp_addr)?;
    let control = conn.first_track(url)?;
    let transport = format!("RTP/AVP;unicast;client_port={port}-{}", port + 1);
    let r = conn.request("SETUP", &control, &[("Transport", transport.as_str())])?;
    Ok((r.status, r.status_line))
}

fn parse_exposition(text: &str) -> Result<Vec<(String, f64)>, String> {
    if text.lines().last() != Some("# EOF") {
        return Err("no # EOF".into());
    }
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').ok_or(format!("bad line {l}"))?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().map_err(|_| format!("bad value in {l}"))?,
            };
            Ok((series.to_string(), value))
        })
        .collect()
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .unwrap_or(-1.0)
}

/// State of live channel `name` (any rendition) in `/status`.
fn channel_state(d: &Deployment, name: &str) -> anyhow::Result<String> {
    let v: Value = serde_json::from_str(&curl(d, "/status")?)?;
    let state = v["channels"]
        .as_array()
        .and_then(|cs| {
            cs.iter().find(|c| {
                c["name"]
                    .as_str()
                    .is_some_and(|n| n.split('/').next() == Some(name))
            })
        })
        .map(|c| c["state"].as_str().unwrap_or("").to_string());
    state.ok_or_else(|| anyhow::anyhow!("channel {name} not in /status: {v}"))
}

#[test]
fn metrics_status_and_admission() {
    let options = Options {
        encoder_args: vec![
            OsString::from("--live"),
            OsString::from(format!("ts=udp://127.0.0.1:{TS_PORT}")),
        ],
        protocol_args: [
            "--http-listen".to_string(),
            format!("0.0.0.0:{HTTP_PORT}"),
            "--max-clients".to_string(),
            MAX_CLIENTS.to_string(),
            // Keep the live channel subscribed after its viewer, to see its state change.
            "--live-linger".to_string(),
            "600".to_string(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect(),
    };
    let d = Deployment::start_with(
        "metrics_admission",
        Kind::Split(LinkTransport::Tcp),
        options,
    )
    .expect("deployment");
    let clip = media::asset_path(CLIP_MP4).expect("test media");
    let mut sender_args: Vec<OsString> = [
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
    sender_args.push(clip.into_os_string());
    for a in [
        "-c",
        "copy",
        "-f",
        "mpegts",
        &format!("udp://127.0.0.1:{TS_PORT}?pkt_size=1316"),
    ] {
        sender_args.push(a.into());
    }
    d.spawn_in(Node::Encoder, "sender-ts", "ffmpeg", sender_args)
        .expect("start the ffmpeg sender");
    std::thread::sleep(Duration::from_secs(3));

    let long = media::asset(LONG_MP4).expect("probe long.mp4");
    let vod_url = d.url(LONG_MP4);
    let live_url = format!("rtsp://{}/live/ts", d.rtsp_addr);
    let mut c = Checks::new();

    std::thread::scope(|s| {
        let vod: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    d.ffmpeg_decode(&vod_url, RtpTransport::Udp, &[], Duration::from_secs(60))
                })
            })
            .collect();
        let live = s.spawn(|| {
            d.ffmpeg_decode(
                &live_url,
                RtpTransport::Udp,
                &["-t", "8"],
                Duration::from_secs(60),
            )
        });

        // Wait until all three are admitted and playing.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut clients = 0.0;
        while Instant::now() < deadline {
            if let Ok(text) = curl(&d, "/metrics") {
                if let Ok(samples) = parse_exposition(&text) {
                    clients = sample(&samples, "divisor_clients");
                    if clients >= MAX_CLIENTS as f64 {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        c.check(clients == MAX_CLIENTS as f64, || {
            format!("{MAX_CLIENTS} clients never showed in /metrics (last {clients})")
        });

        // Client N+1: 453 with a reason, at its first SETUP.
        if let Some((status, line)) = c.ok("SETUP of client N+1", setup(&d, &vod_url, 40000)) {
            eprintln!("client N+1: {line}");
            c.check(status == 453, || format!("client N+1 got {line}, not 453"));
        }
        // A real client sees the refusal too.
        if let Some(r) = c.ok(
            "ffmpeg as client N+1",
            d.ffmpeg_decode(&vod_url, RtpTransport::Udp, &[], Duration::from_secs(30)),
        ) {
            c.check(!r.out.success() && r.out.stderr.contains("453"), || {
                format!("ffmpeg N+1 was not refused with 453: {}", r.report())
            });
        }

        // RRs from the ffmpeg clients while they play.
        std::thread::sleep(Duration::from_secs(5));
        if let Some(text) = c.ok("curl /metrics", curl(&d, "/metrics")) {
            match parse_exposition(&text) {
                Ok(samples) => {
                    let g = |n: &str| sample(&samples, n);
                    eprintln!(
                        "/metrics: clients={} packets={} bytes={} rr={} rr_loss_n={} \
                         jitter_n={} rtt_n={} lateness_n={} refusals={} late={} drops={}",
                        g("divisor_clients"),
                        g("divisor_packets_sent_total"),
                        g("divisor_bytes_sent_total"),
                        g("divisor_rtcp_receiver_reports_total"),
                        g("divisor_rtcp_fraction_lost_count"),
                        g("divisor_rtcp_jitter_seconds_count"),
                        g("divisor_rtcp_rtt_seconds_count"),
                        g("divisor_send_lateness_seconds_count"),
                        g("divisor_admission_refusals_total{reason=\"clients\"}"),
                        g("divisor_late_packets_total"),
                        g("divisor_send_drops_total"),
                    );
                    c.check(g("divisor_packets_sent_total") > 0.0, || text.clone());
                    c.check(g("divisor_rtcp_receiver_reports_total") > 0.0, || {
                        format!("no RTCP RR counted:\n{text}")
                    });
                    c.check(g("divisor_rtcp_fraction_lost_count") >= 1.0, || {
                        format!("no RR in the loss histogram:\n{text}")
                    });
                    c.check(g("divisor_rtcp_jitter_seconds_count") >= 1.0, || {
                        format!("no RR jitter:\n{text}")
                    });
                    c.check(g("divisor_send_lateness_seconds_count") > 0.0, || {
                        format!("no send lateness samples:\n{text}")
                    });
                    c.check(
                        g("divisor_admission_refusals_total{reason=\"clients\"}") >= 2.0,
                        || format!("refusals not counted:\n{text}"),
                    );
                }
                Err(e) => {
                    c.check(false, || format!("bad exposition: {e}\n{text}"));
                }
            }
        }
        if let Some(state) = c.ok("live channel state", channel_state(&d, "ts")) {
            c.check(state == "live", || {
                format!("channel ts is {state} while fed")
            });
        }

        for (i, h) in vod.into_iter().enumerate() {
            let what = format!("admitted VoD client {i}");
            if let Some(r) = c.ok(&what, h.join().expect("join")) {
                eprintln!("{what}: {} of {} frames", r.frames, long.video_frames);
                c.check(r.out.success() && r.error_lines.is_empty(), || {
                    format!("{what}: {}", r.report())
                });
                c.check(r.frames == long.video_frames, || {
                    format!("{what}: {} of {} frames", r.frames, long.video_frames)
                });
            }
        }

        // The finished VoD sessions gave their shares back: a new session is admitted
        // (the live client still holds one of the three).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut after = (0, String::new());
        while Instant::now() < deadline {
            if let Ok(answer) = setup(&d, &vod_url, 40002) {
                after = answer;
                if after.0 == 200 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("SETUP after the VoD clients ended: {}", after.1);
        c.check(after.0 == 200, || {
            format!(
                "no session admitted after the VoD clients ended: {}",
                after.1
            )
        });

        // The live input stops: the channel shows as stalled.
        d.stop("sender-ts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut state = String::new();
        while Instant::now() < deadline {
            if let Ok(s) = channel_state(&d, "ts") {
                state = s;
                if state == "stalled" {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("channel ts after its sender was killed: {state}");
        c.check(state == "stalled", || {
            format!("channel ts is {state:?}, not stalled, after its input stopped")
        });
        if let Ok(status) = curl(&d, "/status") {
            eprintln!("/status: {status}");
        }
        // The live viewer ends (ffmpeg's own timeout); what matters is that it decoded.
        if let Some(r) = c.ok("admitted live client", live.join().expect("join")) {
            eprintln!("admitted live client: {} frames", r.frames);
            c.check(r.frames > 25, || {
                format!("live client decoded {} frames: {}", r.frames, r.report())
            });
        }
    });
    c.finish();
}
