//! WebRTC playback through WHEP (issue 6), split deployment in namespaces:
//!
//! - headless Chromium (Debian's `chromium`, driven by `tests/browser/play.mjs`) opens
//!   `/play/cam/web` and `/play/cam/av1`: `getStats()` shows `framesDecoded` growing with
//!   the codec `video/H264`, resp. `video/AV1`, and Opus audio packets arriving; the
//!   screenshots are kept in `target/test-logs/whep/`;
//! - 50 concurrent webrtc-rs viewers (`divisor-bench webrtc`) on `cam/web` receive with
//!   under 0.5% RTP loss;
//! - bad input: garbage SDP (400 with a reason), an offer with no codec in common (406
//!   naming the codecs), a wrong content type (415), an unknown channel (404), DELETE of an
//!   unknown resource (404), a viewer that vanishes without DELETE (its session leaves
//!   `/status`), while a Chromium viewer keeps playing throughout.

use divisor_tests::browser::{self, Playback};
use divisor_tests::control::{http, metric, status, wait_live};
use divisor_tests::deploy::Options;
use divisor_tests::media;
use divisor_tests::paths::bin;
use divisor_tests::{Checks, Deployment, Kind, LinkTransport, Node};
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

const HTTP_PORT: u16 = 8080;

/// Seconds a vanished viewer may take to be freed (the server is started with a 5 s
/// timeout; the rest is slack for a loaded CI machine).
const VANISH_BOUND: Duration = Duration::from_secs(60);

/// Ids of the WebRTC sessions `/status` lists.
fn webrtc_ids(d: &Deployment, base: &str) -> anyhow::Result<HashSet<String>> {
    let v = status(d, base)?;
    Ok(v["webrtc_sessions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// `divisor-bench webrtc ARGS --json` from the client namespace: its JSON report.
fn bench_webrtc(d: &Deployment, args: &[&str], timeout: Duration) -> anyhow::Result<Value> {
    let mut all = vec!["webrtc", "--json"];
    all.extend_from_slice(args);
    let out = d.run_in(Node::Client, bin("divisor-bench")?, &all, timeout)?;
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no JSON report:\n{}", out.failure_report()))?;
    Ok(serde_json::from_str(&line)?)
}

/// The playback checks shared by both renditions.
fn check_playback(c: &mut Checks, what: &str, p: &Playback, codec: &str) {
    eprintln!(
        "{what}: {} {:?} frames {} -> {} ({}x{}), audio {:?} {} packets, POST to first \
         frame {:?} ms",
        p.connection_state().unwrap_or("?"),
        p.video_mime(),
        p.frames_first(),
        p.frames_last(),
        p.frame_size().0,
        p.frame_size().1,
        p.audio_mime(),
        p.audio_packets(),
        p.post_to_first_frame_ms()
    );
    c.check(p.connection_state() == Some("connected"), || {
        format!(
            "{what}: connection state {:?}: {}",
            p.connection_state(),
            p.raw
        )
    });
    c.check(p.video_mime() == Some(codec), || {
        format!(
            "{what}: video codec {:?}, not {codec}: {}",
            p.video_mime(),
            p.raw
        )
    });
    // Growing: decoding went on for the whole poll, not one frame and a stall.
    let series = p.frames_series();
    let half = series.get(series.len() / 2).copied().unwrap_or(0);
    c.check(
        p.frames_last() > p.frames_first() + 10 && p.frames_last() > half,
        || format!("{what}: framesDecoded does not grow: {series:?}"),
    );
    c.check(
        p.audio_packets() > 0 && p.audio_mime() == Some("audio/opus"),
        || {
            format!(
                "{what}: audio {:?} with {} packets: {}",
                p.audio_mime(),
                p.audio_packets(),
                p.raw
            )
        },
    );
    // The server offers only AES-CM + HMAC-SHA1-80 (webrtc-srtp's AES-GCM path costs far
    // more CPU per packet); a browser that ends up on another profile means that choice
    // was lost.
    c.check(
        p.srtp_cipher() == Some("SRTP_AES128_CM_HMAC_SHA1_80"),
        || format!("{what}: SRTP profile {:?}", p.srtp_cipher()),
    );
    c.check(p.page_errors().is_empty(), || {
        format!("{what}: page errors {:?}", p.page_errors())
    });
}

#[test]
fn whep_browsers_many_viewers_and_bad_input() {
    let config = std::env::temp_dir().join(format!("divisor-whep-{}.toml", std::process::id()));
    std::fs::write(&config, media::WEBRTC_CONFIG).unwrap();
    let d = Deployment::start_with(
        "whep",
        Kind::Split(LinkTransport::Tcp),
        Options {
            encoder_args: vec!["--config".into(), config.clone().into()],
            protocol_args: vec![
                "--http-listen".into(),
                format!("0.0.0.0:{HTTP_PORT}").into(),
                "--webrtc-timeout-secs".into(),
                "5".into(),
            ],
        },
    )
    .expect("deployment starts");
    let _ = std::fs::copy(&config, d.log_dir.join("encoder.toml"));
    let http_addr = SocketAddr::from((d.rtsp_ip, HTTP_PORT));
    let base = format!("http://{http_addr}");
    d.wait_tcp(Node::Client, http_addr, Duration::from_secs(20))
        .expect("HTTP port reachable");
    wait_live(&d, "cam", &["web", "av1"], Duration::from_secs(60)).expect("channel cam goes live");
    let mut c = Checks::new();

    // (a), (b): Chromium plays both renditions.
    for (rendition, codec) in [("web", "video/H264"), ("av1", "video/AV1")] {
        let shot = d.log_dir.join(format!("play-{rendition}.png"));
        let url = format!("{base}/play/cam/{rendition}");
        match browser::play(&d, Node::Client, &url, 8, &shot) {
            Ok(p) => {
                check_playback(&mut c, &format!("chromium {url}"), &p, codec);
                c.check(shot.is_file(), || {
                    format!("no screenshot at {}", shot.display())
                });
            }
            Err(e) => {
                c.check(false, || format!("chromium {url}: {e:#}"));
            }
        }
    }

    // Chromium reports its receive-side bandwidth estimate in REMB (the answer offers
    // `goog-remb` and not `transport-cc`): what rendition adaptation decides on.
    match metric(&d, &base, "divisor_webrtc_remb_total") {
        Ok(n) => {
            eprintln!("REMB packets from the Chromium viewers: {n}");
            c.check(n > 0.0, || {
                "Chromium sent no REMB: divisor_webrtc_remb_total is 0".to_string()
            });
        }
        Err(e) => {
            c.check(false, || format!("REMB count: {e:#}"));
        }
    }

    // (c): 50 webrtc-rs viewers on cam/web.
    let whep_web = format!("{base}/whep/cam/web");
    match bench_webrtc(
        &d,
        &[
            "--url",
            &whep_web,
            "--viewers",
            "50",
            "--seconds",
            "10",
            "--video",
            "h264",
        ],
        Duration::from_secs(180),
    ) {
        Ok(r) => {
            let _ = std::fs::write(d.log_dir.join("viewers-50.json"), r.to_string());
            let ok = r["ok"].as_u64().unwrap_or(0);
            let loss = r["loss_pct"].as_f64().unwrap_or(100.0);
            eprintln!(
                "50 viewers: {ok} ok, {} packets, {} lost of {} ({loss:.3}%), first keyframe \
                 median {} ms p95 {} ms",
                r["packets"],
                r["lost"],
                r["expected"],
                r["first_keyframe_ms_median"],
                r["first_keyframe_ms_p95"]
            );
            let errors: Vec<&Value> = r["per_viewer"]
                .as_array()
                .map(|a| a.iter().filter(|v| !v["error"].is_null()).collect())
                .unwrap_or_default();
            c.check(ok == 50, || {
                format!("{ok} of 50 viewers received; errors: {errors:?}")
            });
            c.check(loss < 0.5, || {
                format!("RTP loss {loss:.3}% over 50 viewers")
            });
            // Every viewer got both tracks.
            let partial: Vec<u64> = r["per_viewer"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|v| {
                            let mimes: Vec<&str> = v["tracks"]
                                .as_array()
                                .map(|t| {
                                    t.iter()
                                        .filter(|t| t["packets"].as_u64().unwrap_or(0) > 0)
                                        .filter_map(|t| t["mime_type"].as_str())
                                        .collect()
                                })
                                .unwrap_or_default();
                            !(mimes.contains(&"video/H264") && mimes.contains(&"audio/opus"))
                        })
                        .filter_map(|v| v["id"].as_u64())
                        .collect()
                })
                .unwrap_or_default();
            c.check(partial.is_empty(), || {
                format!("viewers without both H.264 video and Opus audio: {partial:?}")
            });
            // WHEP resources: a Location under /whep/resource/, and DELETE ends it (200).
            let bad_resource: Vec<String> = r["per_viewer"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|v| {
                            !v["location"]
                                .as_str()
                                .is_some_and(|l| l.contains("/whep/resource/"))
                                || v["delete_status"].as_u64() != Some(200)
                                || v["answer_content_type"].as_str() != Some("application/sdp")
                        })
                        .map(|v| {
                            format!(
                                "{} {} {} {}",
                                v["id"],
                                v["location"],
                                v["delete_status"],
                                v["answer_content_type"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            c.check(bad_resource.is_empty(), || {
                format!(
                    "viewers without a /whep/resource/ Location, an application/sdp answer and DELETE 200: {bad_resource:?}"
                )
            });
        }
        Err(e) => {
            c.check(false, || format!("50 viewers: {e:#}"));
        }
    }

    // (d): bad input while a Chromium viewer keeps playing.
    let watch_url = format!("{base}/play/cam/web");
    let watch_shot = d.log_dir.join("play-web-during-bad-input.png");
    let (watch, bad) = thread::scope(|s| {
        let watcher = s.spawn(|| browser::play(&d, Node::Client, &watch_url, 40, &watch_shot));
        // Let the watcher start playing first.
        thread::sleep(Duration::from_secs(8));
        let mut bad = Checks::new();
        bad_input(&d, &base, &whep_web, &mut bad);
        (watcher.join().unwrap(), bad)
    });
    c.merge(bad);
    match watch {
        Ok(p) => {
            check_playback(&mut c, "chromium during bad input", &p, "video/H264");
            // No stall anywhere: every quarter of the poll decoded frames.
            let series = p.frames_series();
            let q = (series.len() / 4).max(1);
            let stalls: Vec<usize> = (0..series.len().saturating_sub(q))
                .step_by(q)
                .filter(|&i| series[(i + q).min(series.len() - 1)] <= series[i])
                .collect();
            c.check(series.len() >= 8 && stalls.is_empty(), || {
                format!("watcher stalled (quarters starting at polls {stalls:?}): {series:?}")
            });
        }
        Err(e) => {
            c.check(false, || format!("watcher: {e:#}"));
        }
    }
    if !c.failures().is_empty() {
        eprintln!("{}", d.logs_report(40));
    }
    c.finish();
}

/// The bad-input cases of issue 6, each checked with a real HTTP client (curl) or our
/// webrtc-rs client.
fn bad_input(d: &Deployment, base: &str, whep_web: &str, c: &mut Checks) {
    // Garbage SDP: 400 with a reason.
    match http(
        d,
        "POST",
        whep_web,
        Some("application/sdp"),
        Some("this is not an SDP offer\r\n"),
    ) {
        Ok((code, body)) => {
            eprintln!("garbage SDP -> {code}: {}", body.trim());
            c.check(code == 400 && !body.trim().is_empty(), || {
                format!("garbage SDP -> {code} {body:?}, not 400 with a reason")
            });
        }
        Err(e) => {
            c.check(false, || format!("garbage SDP: {e:#}"));
        }
    }
    // Wrong content type: 415.
    match http(d, "POST", whep_web, Some("text/plain"), Some("v=0\r\n")) {
        Ok((code, body)) => {
            eprintln!("text/plain offer -> {code}: {}", body.trim());
            c.check(code == 415, || {
                format!("text/plain offer -> {code} {body:?}, not 415")
            });
        }
        Err(e) => {
            c.check(false, || format!("wrong content type: {e:#}"));
        }
    }
    // Unknown channel: 404, checked with a well-formed offer of our client.
    match bench_webrtc(
        d,
        &[
            "--url",
            &format!("{base}/whep/nosuchchannel"),
            "--seconds",
            "1",
            "--join-timeout",
            "10",
        ],
        Duration::from_secs(60),
    ) {
        Ok(r) => {
            let v = &r["per_viewer"][0];
            eprintln!("unknown channel -> {} {}", v["http_status"], v["error"]);
            c.check(v["http_status"].as_u64() == Some(404), || {
                format!("unknown channel -> {v}, not 404")
            });
        }
        Err(e) => {
            c.check(false, || format!("unknown channel: {e:#}"));
        }
    }
    // No codec in common: a well-formed offer with only VP8 video and no audio.
    match bench_webrtc(
        d,
        &[
            "--url",
            whep_web,
            "--seconds",
            "1",
            "--video",
            "vp8",
            "--no-audio",
            "--join-timeout",
            "10",
        ],
        Duration::from_secs(60),
    ) {
        Ok(r) => {
            let v = &r["per_viewer"][0];
            let err = v["error"].as_str().unwrap_or("");
            eprintln!("VP8-only offer -> {}: {err}", v["http_status"]);
            let status = v["http_status"].as_u64().unwrap_or(0);
            c.check(
                (400..500).contains(&status) && err.contains("VP8") && err.contains("H264"),
                || format!("VP8-only offer -> {v}: not a 4xx naming VP8 and H264"),
            );
        }
        Err(e) => {
            c.check(false, || format!("VP8-only offer: {e:#}"));
        }
    }
    // DELETE of an unknown resource: 404.
    match http(
        d,
        "DELETE",
        &format!("{base}/whep/resource/no-such-session-0123456789"),
        None,
        None,
    ) {
        Ok((code, body)) => {
            eprintln!("DELETE unknown -> {code}: {}", body.trim());
            c.check(code == 404, || {
                format!("DELETE of an unknown resource -> {code} {body:?}, not 404")
            });
        }
        Err(e) => {
            c.check(false, || format!("DELETE unknown: {e:#}"));
        }
    }
    // A viewer that vanishes: our client receives for 3 s and exits without DELETE and
    // without closing its connection. Its session must appear, then leave /status.
    let before = webrtc_ids(d, base).unwrap_or_default();
    let vanished = thread::scope(|s| {
        let h = s.spawn(|| {
            bench_webrtc(
                d,
                &[
                    "--url",
                    whep_web,
                    "--seconds",
                    "3",
                    "--video",
                    "h264",
                    "--vanish",
                ],
                Duration::from_secs(60),
            )
        });
        let mut seen = HashSet::new();
        while !h.is_finished() {
            if let Ok(ids) = webrtc_ids(d, base) {
                seen.extend(ids.difference(&before).cloned());
            }
            thread::sleep(Duration::from_millis(300));
        }
        (h.join().unwrap(), seen)
    });
    match vanished {
        (Ok(r), seen) => {
            let v = &r["per_viewer"][0];
            let loc = v["location"].as_str().unwrap_or("").to_string();
            let id = loc.rsplit('/').next().unwrap_or("").to_string();
            c.check(v["error"].is_null() && !id.is_empty(), || {
                format!("the vanishing viewer did not play: {v}")
            });
            c.check(seen.contains(&id), || {
                format!("session {id} never showed in /status (new ids seen: {seen:?})")
            });
            let deadline = Instant::now() + VANISH_BOUND;
            let freed_at = loop {
                match webrtc_ids(d, base) {
                    Ok(ids) if !ids.contains(&id) => break Some(Instant::now()),
                    _ if Instant::now() > deadline => break None,
                    _ => thread::sleep(Duration::from_millis(500)),
                }
            };
            let log = d.log("protocol");
            eprintln!(
                "vanished viewer {id}: freed {}",
                if freed_at.is_some() { "yes" } else { "no" }
            );
            c.check(freed_at.is_some(), || {
                format!("vanished viewer's session {id} still in /status after {VANISH_BOUND:?}")
            });
            c.check(log.contains(&id), || {
                format!("protocol log never mentions the vanished session {id}")
            });
        }
        (Err(e), _) => {
            c.check(false, || format!("vanishing viewer: {e:#}"));
        }
    }
}
