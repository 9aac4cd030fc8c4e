//! Rendition adaptation end to end, in process: a fake encoder unit serves channel "cam"
//! in two renditions whose frames say which they are (every payload byte is `b'H'` or
//! `b'L'`); a webrtc-rs client views `POST /whep/cam` (no rendition: adapted) and sends
//! REMB packets through its own RTCP path. What the client receives must move from one
//! rendition to the other on the estimate, with its RTP sequence numbers and timestamps
//! running on as if nothing happened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use divisor_link::{Codec, ErrorCode, Frame, FrameFlags, Link, Message, TrackInfo};
use tokio::sync::mpsc;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;

use super::tests::{body, client, curl, post, server_with_link};
use super::{adapt, Whep, WhepConfig};

/// SPS of a 42e01f stream (only its first bytes matter here), and a PPS.
const SPS: &[u8] = &[0x67, 0x42, 0xe0, 0x1f, 0x8c, 0x8d, 0x40];
const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

/// The two renditions: name, announced bitrate, the byte their frames are made of.
const HIGH: (&str, u32, u8) = ("high", 1_500_000, b'H');
const LOW: (&str, u32, u8) = ("low", 250_000, b'L');

fn rendition(name: &str) -> Option<(&'static str, u32, u8)> {
    match name {
        // The channel's default rendition is the high one.
        "high" | "" => Some(HIGH),
        "low" => Some(LOW),
        _ => None,
    }
}

/// What the fake encoder was asked, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Asked {
    Subscribe(&'static str),
    Keyframe(&'static str),
}

/// One live subscription of the fake encoder.
struct Sub {
    rendition: &'static str,
    marker: u8,
    /// Bytes of every frame: the announced bitrate at 25 fps, so the viewer is really sent
    /// what the rendition announces (the adapter compares estimates with it).
    frame_bytes: usize,
    /// Frames sent; the next one is a keyframe when this is a multiple of 25 or asked for.
    sent: u64,
    force_key: bool,
}

fn frame(channel: u32, pts: i64, key: bool, marker: u8, bytes: usize) -> Frame {
    let mut data = Vec::new();
    if key {
        for p in [SPS, PPS] {
            data.extend_from_slice(&[0, 0, 0, 1]);
            data.extend_from_slice(p);
        }
    }
    data.extend_from_slice(&[0, 0, 0, 1, if key { 0x65 } else { 0x41 }]);
    data.extend(std::iter::repeat_n(marker, bytes));
    Frame {
        channel,
        track: 0,
        codec: Codec::H264,
        flags: if key {
            FrameFlags::KEYFRAME
        } else {
            FrameFlags::empty()
        },
        pts,
        dts: pts,
        duration: 3600,
        data: Bytes::from(data),
    }
}

/// The encoder side of the link: channel "cam" in renditions "high" (also the default)
/// and "low", 25 fps on one shared timeline (as a real ladder from one source), a
/// keyframe every second and on request. Reports what it is asked on `asked`.
async fn ladder_encoder(link: Link, asked: mpsc::UnboundedSender<Asked>) {
    let Link {
        sender,
        mut receiver,
        ..
    } = link;
    let mut subs: HashMap<u32, Sub> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let mut clock = 0i64;
    loop {
        tokio::select! {
            m = receiver.recv() => match m {
                Ok(Message::Subscribe { channel, name, rendition: r }) => match rendition(&r) {
                    Some((rendition, bitrate, marker)) if name == "cam" => {
                        let _ = asked.send(Asked::Subscribe(rendition));
                        subs.insert(channel, Sub { rendition, marker, frame_bytes: (bitrate / 8 / 25) as usize, sent: 0, force_key: false });
                        let track = TrackInfo {
                            track: 0,
                            codec: Codec::H264,
                            clock_rate: 90_000,
                            width: if marker == b'H' { 1280 } else { 320 },
                            height: if marker == b'H' { 720 } else { 180 },
                            sample_rate: 0,
                            channels: 0,
                            bitrate,
                            params: vec![Bytes::from_static(SPS), Bytes::from_static(PPS)],
                        };
                        let _ = sender.send(Message::Announce { channel, duration_ms: None, tracks: vec![track] }).await;
                    }
                    _ => {
                        let _ = sender.send(Message::Error { channel, code: ErrorCode::NoSuchRendition, message: format!("no {name}/{r}") }).await;
                    }
                },
                Ok(Message::KeyframeRequest { channel, .. }) => {
                    if let Some(s) = subs.get_mut(&channel) {
                        s.force_key = true;
                        let _ = asked.send(Asked::Keyframe(s.rendition));
                    }
                }
                Ok(Message::Close { channel }) => {
                    subs.remove(&channel);
                }
                Ok(_) => {}
                Err(_) => return,
            },
            _ = tick.tick() => {
                for (&ch, s) in subs.iter_mut() {
                    let key = s.sent % 25 == 0 || std::mem::take(&mut s.force_key);
                    let _ = sender.send(Message::Frame(frame(ch, clock * 3600, key, s.marker, s.frame_bytes))).await;
                    s.sent += 1;
                }
                clock += 1;
            }
        }
    }
}

/// One RTP packet as the client got it.
#[derive(Clone, Copy, Debug)]
struct Got {
    seq: u16,
    ts: u32,
    ssrc: u32,
    /// `b'H'`, `b'L'`, or 0 for a packet with only parameter sets.
    marker: u8,
    at: Instant,
}

/// Which rendition a packet's payload came from: its last byte (frames end in marker
/// bytes whatever the packetisation: single NAL, STAP-A ending in the slice, FU-A).
fn marker(payload: &[u8]) -> u8 {
    match payload.last() {
        Some(&b) if b == b'H' || b == b'L' => b,
        _ => 0,
    }
}

/// A viewer: the server, the client's connection, what it received so far, and the REMB
/// estimate it keeps sending (0 = none).
struct Viewer {
    whep: Arc<Whep>,
    addr: std::net::SocketAddr,
    pc: Arc<RTCPeerConnection>,
    got: Arc<Mutex<Vec<Got>>>,
    remb: Arc<AtomicU64>,
    asked: mpsc::UnboundedReceiver<Asked>,
}

impl Viewer {
    async fn start(policy: adapt::Policy) -> Viewer {
        let (addr, whep, link) = server_with_link(WhepConfig {
            adapt_renditions: vec!["high".into(), "low".into()],
            adapt: policy,
            ..Default::default()
        })
        .await;
        let (asked_tx, asked) = mpsc::unbounded_channel();
        tokio::spawn(ladder_encoder(link, asked_tx));
        let (pc, offer, mut packets) = client().await;
        let (code, response) =
            post(format!("http://{addr}/whep/cam"), "application/sdp", offer).await;
        assert_eq!(code, 201, "{response}");
        pc.set_remote_description(RTCSessionDescription::answer(body(&response).into()).unwrap())
            .await
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        tokio::spawn(async move {
            while let Some(p) = packets.recv().await {
                g.lock().unwrap().push(Got {
                    seq: p.header.sequence_number,
                    ts: p.header.timestamp,
                    ssrc: p.header.ssrc,
                    marker: marker(&p.payload),
                    at: Instant::now(),
                });
            }
        });
        let remb = Arc::new(AtomicU64::new(0));
        // The estimate goes out every 100 ms through the client's RTCP path (SRTCP),
        // naming the video stream it received, as a browser's REMB does.
        let (r, g, pc2) = (remb.clone(), got.clone(), pc.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let bitrate = r.load(Ordering::Relaxed);
                let ssrc = g.lock().unwrap().first().map(|p| p.ssrc);
                let (Some(ssrc), true) = (ssrc, bitrate > 0) else {
                    continue;
                };
                let remb = ReceiverEstimatedMaximumBitrate {
                    sender_ssrc: 1,
                    bitrate: bitrate as f32,
                    ssrcs: vec![ssrc],
                };
                if pc2.write_rtcp(&[Box::new(remb)]).await.is_err() {
                    return;
                }
            }
        });
        Viewer {
            whep,
            addr,
            pc,
            got,
            remb,
            asked,
        }
    }

    fn packets(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` packets of rendition `m` arrived after packet index `from`;
    /// returns the index of the first of them.
    async fn wait_for(&self, m: u8, from: usize, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let got = self.packets();
            let of: Vec<usize> = (from..got.len()).filter(|&i| got[i].marker == m).collect();
            if of.len() >= n {
                return of[0];
            }
            assert!(
                Instant::now() < deadline,
                "{} packets of rendition {:?} after packet {from} within {within:?} (got {} packets, renditions {})",
                of.len(),
                m as char,
                got.len(),
                runs(&got)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The one session's `/status` entry.
    async fn status(&self) -> serde_json::Value {
        assert_eq!(self.whep.len(), 1, "one session held");
        let (code, r) = curl(vec![format!("http://{}/status", self.addr)]).await;
        assert_eq!(code, 200, "{r}");
        let v: serde_json::Value = serde_json::from_str(body(&r)).expect("status JSON");
        let sessions = v["webrtc_sessions"].as_array().cloned().unwrap_or_default();
        assert_eq!(sessions.len(), 1, "{v}");
        sessions[0].clone()
    }

    async fn metrics(&self) -> String {
        let (code, r) = curl(vec![format!("http://{}/metrics", self.addr)]).await;
        assert_eq!(code, 200, "{r}");
        body(&r).to_string()
    }

    /// Waits for the ladder to be ready: the encoder was asked for the low rendition too
    /// (the session subscribes to the others once the viewer is connected).
    async fn wait_ladder(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, self.asked.recv()).await {
                Ok(Some(Asked::Subscribe("low"))) => break,
                Ok(Some(_)) => {}
                _ => panic!("the low rendition was never subscribed (no ladder)"),
            }
        }
        // Announce, engine feed and adapter set up take a moment after the subscribe.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// "H x 120, L x 80, ..." : the runs of renditions received, for messages.
fn runs(got: &[Got]) -> String {
    let mut out: Vec<(u8, usize)> = Vec::new();
    for g in got.iter().filter(|g| g.marker != 0) {
        match out.last_mut() {
            Some((m, n)) if *m == g.marker => *n += 1,
            _ => out.push((g.marker, 1)),
        }
    }
    out.iter()
        .map(|(m, n)| format!("{} x {n}", *m as char))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How far the media timeline runs ahead of the wall clock at packet `i`, in ms, relative
/// to packet `base` (a receiver plays by timestamps: what runs ahead is added latency).
fn ahead_ms(got: &[Got], base: usize, i: usize) -> i64 {
    let mut ticks = 0i64;
    for w in got[base..=i].windows(2) {
        ticks += i64::from(w[1].ts.wrapping_sub(w[0].ts) as i32);
    }
    let wall = got[i].at.duration_since(got[base].at).as_millis() as i64;
    ticks / 90 - wall
}

/// Every packet follows the previous one: sequence number + 1, timestamp not backwards
/// and less than `max_ts_step` ticks on; one SSRC. Returns the largest timestamp step.
fn check_continuous(got: &[Got], max_ts_step: u32) -> u32 {
    let mut largest = 0;
    for w in got.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(b.ssrc, a.ssrc, "SSRC changed: {a:?} -> {b:?}");
        assert_eq!(
            b.seq,
            a.seq.wrapping_add(1),
            "sequence number jump {} -> {} ({:?} -> {:?}); renditions {}",
            a.seq,
            b.seq,
            a.marker as char,
            b.marker as char,
            runs(got)
        );
        let step = b.ts.wrapping_sub(a.ts);
        assert!(
            step < max_ts_step,
            "timestamp jump {} -> {} ({} ticks, {:?} -> {:?})",
            a.ts,
            b.ts,
            step as i32,
            a.marker as char,
            b.marker as char
        );
        largest = largest.max(step);
    }
    largest
}

fn quick() -> adapt::Policy {
    adapt::Policy {
        down_after: Duration::from_millis(300),
        up_after: Duration::from_millis(500),
        up_margin: 1.3,
        min_interval: Duration::from_millis(500),
        ..adapt::Policy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remb_moves_the_viewer_down_and_back_up_seamlessly() {
    let mut v = Viewer::start(quick()).await;
    // It starts on the first rendition listed: high.
    let first_h = v.wait_for(b'H', 0, 30, Duration::from_secs(15)).await;
    v.wait_ladder().await;
    let s = v.status().await;
    assert_eq!(s["rendition"], "high", "{s}");
    assert_eq!(s["switches"], 0, "{s}");

    // A low estimate: below high (1.5 Mb/s) and below low (250 kb/s) too -> low.
    let from = v.packets().len();
    let t_down = Instant::now();
    v.remb.store(100_000, Ordering::Relaxed);
    let first_l = v.wait_for(b'L', from, 50, Duration::from_secs(10)).await;
    let down_ms = v.packets()[first_l].at.duration_since(t_down).as_millis();
    let s = v.status().await;
    assert_eq!(s["rendition"], "low", "{s}");
    assert_eq!(s["switches"], 1, "{s}");
    assert_eq!(s["estimate_bps"], 100_000, "{s}");
    assert!(s["remb_packets"].as_u64().unwrap_or(0) > 0, "{s}");
    let m = v.metrics().await;
    assert!(
        m.contains("divisor_webrtc_rendition_switches_total 1"),
        "{m}"
    );
    // Staying low while the estimate stays low.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(v.status().await["switches"], 1);

    // Plenty: above high x 1.3 -> back up.
    let from = v.packets().len();
    let t_up = Instant::now();
    v.remb.store(5_000_000, Ordering::Relaxed);
    let second_h = v.wait_for(b'H', from, 50, Duration::from_secs(10)).await;
    let up_ms = v.packets()[second_h].at.duration_since(t_up).as_millis();
    let s = v.status().await;
    assert_eq!(s["rendition"], "high", "{s}");
    assert_eq!(s["switches"], 2, "{s}");
    v.remb.store(0, Ordering::Relaxed);

    let got = v.packets();
    // Exactly H, then L, then H: the old feed stops where the new one starts.
    let seq: Vec<u8> = got[first_h..]
        .iter()
        .map(|g| g.marker)
        .filter(|&m| m != 0)
        .fold(Vec::new(), |mut acc, m| {
            if acc.last() != Some(&m) {
                acc.push(m);
            }
            acc
        });
    assert_eq!(seq, b"HLH", "renditions received: {}", runs(&got));
    // Continuous across both switches: seq + 1 each packet, no timestamp backwards nor
    // further than 2 s ahead.
    let largest = check_continuous(&got, 2 * 90_000);
    let m = v.metrics().await;
    let remb_total = m
        .lines()
        .find_map(|l| l.strip_prefix("divisor_webrtc_remb_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(remb_total > 0, "{m}");
    assert!(
        m.contains("divisor_webrtc_rendition_switches_total 2"),
        "{m}"
    );
    // Media ahead of the wall clock is latency a receiver playing by timestamps adds: the
    // switches' GOP bursts must not pile up there (unsqueezed, both bursts added ~1.2 s).
    let (before, after) = (
        ahead_ms(&got, first_h, first_l - 1),
        ahead_ms(&got, first_h, got.len() - 1),
    );
    assert!(
        after - before < 300,
        "media runs {after} ms ahead of the wall clock after the switches ({before} ms before)"
    );
    // The cut: the last packet of the old feed and the first of the new one.
    let at_cut = |first_new: usize| {
        let old = got[first_new].marker ^ b'H' ^ b'L';
        let i = (0..first_new)
            .rev()
            .find(|&i| got[i].marker == old)
            .unwrap()
            + 1;
        let (a, b) = (got[i - 1], got[i]);
        format!(
            "seq {}->{} ts +{} ({} ms wall)",
            a.seq,
            b.seq,
            b.ts.wrapping_sub(a.ts),
            b.at.duration_since(a.at).as_millis()
        )
    };
    eprintln!(
        "adaptation: {} packets ({}); down: first L packet {down_ms} ms after the low \
         REMB began, cut {}; up: first H {up_ms} ms after the high REMB began, cut {}; \
         largest ts step {largest} ticks; {remb_total} REMB packets taken; media ahead of \
         the wall clock: {} ms before the first switch, {} ms at the end",
        got.len(),
        runs(&got),
        at_cut(first_l),
        at_cut(second_h),
        before,
        after,
    );
    let asked: Vec<Asked> = std::iter::from_fn(|| v.asked.try_recv().ok()).collect();
    eprintln!("encoder asked after the ladder: {asked:?}");
    let _ = v.pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_remb_the_viewer_stays_put() {
    let mut v = Viewer::start(quick()).await;
    v.wait_for(b'H', 0, 30, Duration::from_secs(15)).await;
    v.wait_ladder().await;
    // Many times the policy's hold times, with no estimate at all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = v.packets();
    assert!(
        got.iter().all(|g| g.marker != b'L'),
        "renditions received: {}",
        runs(&got)
    );
    check_continuous(&got, 2 * 90_000);
    let s = v.status().await;
    assert_eq!(s["rendition"], "high", "{s}");
    assert_eq!(s["switches"], 0, "{s}");
    assert!(s["estimate_bps"].is_null(), "{s}");
    assert!(v
        .metrics()
        .await
        .contains("divisor_webrtc_rendition_switches_total 0"));
    let _ = v.pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_estimate_between_the_renditions_keeps_the_viewer_where_it_is() {
    // On high, an estimate above high's bitrate: no reason to move. Then one above low
    // but far below high: down. Then one above high but under the 1.3 margin: stays low.
    let mut v = Viewer::start(quick()).await;
    v.wait_for(b'H', 0, 30, Duration::from_secs(15)).await;
    v.wait_ladder().await;
    v.remb.store(2_000_000, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(v.status().await["switches"], 0);
    let from = v.packets().len();
    v.remb.store(600_000, Ordering::Relaxed);
    v.wait_for(b'L', from, 20, Duration::from_secs(10)).await;
    v.remb.store(1_700_000, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = v.status().await;
    assert_eq!(s["rendition"], "low", "{s}");
    assert_eq!(s["switches"], 1, "{s}");
    let got = v.packets();
    assert!(
        got.last().is_some_and(|g| g.marker == b'L'),
        "renditions received: {}",
        runs(&got)
    );
    check_continuous(&got, 2 * 90_000);
    let _ = v.pc.close().await;
}
