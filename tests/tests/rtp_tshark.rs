//! RTP on the wire, as tshark sees it in the client namespace while ffmpeg plays over UDP:
//! no loss, no sequence errors, timestamps running at the advertised clock rates
//! (90 kHz video, the audio sample rate), paced at media time.

use divisor_tests::media::{self, CLIP_MP4};
use divisor_tests::tshark::{rtp_packets, rtp_streams, sdp_lines};
use divisor_tests::{Checks, Deployment, LinkTransport, Node, RtpTransport};
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn rtp_over_udp_is_lossless_and_clocked() {
    let d = Deployment::split("rtp-tshark", LinkTransport::Tcp).expect("deployment starts");
    let a = media::asset(CLIP_MP4).unwrap();
    let cap = d
        .start_capture(Node::Client, &d.client_if.clone(), "client-capture")
        .unwrap();
    let r = d
        .ffmpeg_decode(
            &d.url(CLIP_MP4),
            RtpTransport::Udp,
            &[],
            Duration::from_secs(30),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let file = cap.stop();

    let mut c = Checks::new();
    c.check(r.out.success() && r.frames == a.video_frames, || {
        format!(
            "ffmpeg decoded {} of {} frames: {}",
            r.frames,
            a.video_frames,
            r.report()
        )
    });

    // Clock rates the server advertised in its SDP, by payload type.
    let sdp = sdp_lines(&file).unwrap();
    let mut clock: BTreeMap<u8, (String, f64)> = BTreeMap::new();
    for l in &sdp {
        // e.g. "rtpmap:96 H264/90000"
        if let Some(m) = l.strip_prefix("rtpmap:") {
            if let Some((pt, enc)) = m.split_once(' ') {
                let mut p = enc.split('/');
                let name = p.next().unwrap_or("").to_ascii_uppercase();
                let rate = p.next().and_then(|r| r.parse().ok()).unwrap_or(0.0);
                if let Ok(pt) = pt.parse() {
                    clock.insert(pt, (name, rate));
                }
            }
        }
    }
    let video_pt = clock
        .iter()
        .find(|(_, (n, _))| n == "H264")
        .map(|(pt, _)| *pt);
    let audio_pt = clock
        .iter()
        .find(|(_, (n, _))| n == "MPEG4-GENERIC" || n == "MP4A-LATM")
        .map(|(pt, _)| *pt);
    c.check(video_pt.is_some_and(|pt| clock[&pt].1 == 90_000.0), || {
        format!("SDP must map H264 at 90000 Hz: {clock:?} (attributes {sdp:?})")
    });
    c.check(
        audio_pt.is_some_and(|pt| clock[&pt].1 == a.sample_rate as f64),
        || format!("SDP must map AAC at {} Hz: {clock:?}", a.sample_rate),
    );

    // tshark's own per-stream analysis.
    let (streams, table) = rtp_streams(&file).unwrap();
    let server: Vec<_> = streams
        .iter()
        .filter(|s| s.src.starts_with(&format!("{}:", d.rtsp_ip)) && s.packets > 5)
        .collect();
    c.check(server.len() == 2, || {
        format!("expected 2 RTP streams from the server, tshark found:\n{table}")
    });
    for s in &server {
        c.check(s.lost == 0, || {
            format!("stream lost {} packets: {}", s.lost, s.line)
        });
        c.check(!s.problem, || {
            format!("tshark flags a problem (sequence/timestamp): {}", s.line)
        });
        c.check(s.max_delta_ms < 500.0, || {
            format!("stall of {} ms: {}", s.max_delta_ms, s.line)
        });
        c.check(s.max_jitter_ms < 50.0, || {
            format!("jitter {} ms: {}", s.max_jitter_ms, s.line)
        });
    }

    // Our own check of sequence numbers and timestamp rate per stream.
    let pkts = rtp_packets(&file).unwrap();
    let mut by_ssrc: BTreeMap<u32, Vec<_>> = BTreeMap::new();
    for p in pkts {
        by_ssrc.entry(p.ssrc).or_default().push(p);
    }
    let mut seen_pts = Vec::new();
    for (ssrc, ps) in &by_ssrc {
        if ps.len() <= 5 {
            continue;
        }
        let pt = ps[0].payload_type;
        seen_pts.push(pt);
        let Some((name, rate)) = clock.get(&pt).cloned() else {
            c.check(false, || {
                format!("SSRC {ssrc:#x}: payload type {pt} not in the SDP {clock:?}")
            });
            continue;
        };
        let mut gaps = 0;
        for w in ps.windows(2) {
            if w[1].seq != w[0].seq.wrapping_add(1) {
                gaps += 1;
            }
        }
        c.check(gaps == 0, || {
            format!("{name}: {gaps} sequence discontinuities")
        });
        // Timestamp rate against arrival time, skipping the first second (a paced sender
        // may run a bounded window ahead at the start).
        let t0 = ps[0].time + 1.0;
        let s = ps.iter().find(|p| p.time >= t0);
        let e = ps.last().unwrap();
        if let Some(s) = s {
            let wall = e.time - s.time;
            let media = e.timestamp.wrapping_sub(s.timestamp) as f64 / rate;
            let ratio = media / wall;
            c.check(wall > 1.5 && (0.9..1.1).contains(&ratio), || {
                format!(
                    "{name}: RTP timestamps advance {media:.3} s at {rate} Hz over {wall:.3} s \
                     of arrivals (ratio {ratio:.3}): wrong clock rate or not paced at media time"
                )
            });
        } else {
            c.check(false, || format!("{name}: stream shorter than 1 s"));
        }
    }
    c.check(
        video_pt.is_some_and(|v| seen_pts.contains(&v))
            && audio_pt.is_some_and(|a| seen_pts.contains(&a)),
        || format!("RTP payload types on the wire {seen_pts:?}, SDP {clock:?}"),
    );
    if !c.failures().is_empty() {
        eprintln!("capture kept at {}", file.display());
    }
    c.finish();
}
