//! `divisor-bench webrtc`: many WHEP viewers built on webrtc-rs in one process, each
//! counting what it receives, for the 50-viewer test of issue 6 and the viewers-per-core
//! bench.
//!
//! Each viewer is a receive-only `RTCPeerConnection` with webrtc-rs's default
//! interceptors (NACK generator, receiver reports, transport-wide CC feedback), as a
//! browser would be. It offers H.264 (constrained baseline, baseline, high; packetization
//! mode 1) and/or AV1 plus Opus, waits for ICE gathering (no trickle), POSTs the offer to
//! the WHEP URL, applies the `201` answer, and counts every RTP packet per track:
//! sequence-number gaps as they arrive, and at the end the loss — packets of the covered
//! sequence range that never arrived, after NACK retransmissions had their chance.
//! Join figures are measured from the POST: answer received, ICE/DTLS connected, first
//! RTP packet, first keyframe (H.264 IDR or SPS; AV1 packet with the N bit, the start of
//! a coded video sequence).
//!
//! At the end each viewer ends its session with `DELETE` on the `Location` resource,
//! unless `--vanish`: then the process exits without DELETE and without closing its peer
//! connections, as a viewer whose machine went away (the server must time it out).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_remote::TrackRemote;

use crate::janus::JanusSession;
use crate::stats::percentile;

#[derive(clap::Args, Clone)]
pub struct WebrtcArgs {
    /// WHEP endpoint: http://HOST:PORT/whep/CHANNEL[/RENDITION].
    #[arg(long)]
    url: String,
    /// Concurrent viewers, all in this process.
    #[arg(long, default_value_t = 1)]
    viewers: usize,
    /// How long every viewer receives after it joined.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Video codecs to offer.
    #[arg(long, value_enum, default_value_t = VideoOffer::Both)]
    video: VideoOffer,
    /// Offer no audio section.
    #[arg(long)]
    no_audio: bool,
    /// Pause between two viewers' POSTs, in milliseconds (0: all at once).
    #[arg(long, default_value_t = 20)]
    stagger_ms: u64,
    /// Exit without DELETE and without closing the peer connections (a vanished viewer).
    #[arg(long)]
    vanish: bool,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Give up on a viewer whose answer, connection or first packet takes longer (seconds).
    #[arg(long, default_value_t = 15.0)]
    join_timeout: f64,
    /// The server: Divisor's WHEP endpoint, or Janus's streaming plugin (then --url is
    /// Janus's HTTP API, http://HOST:8088/janus, and --mountpoint the stream to watch).
    #[arg(long, value_enum, default_value_t = Peer::Whep)]
    peer: Peer,
    /// Janus streaming mountpoint id (--peer janus).
    #[arg(long, default_value_t = 1)]
    mountpoint: u64,
}

/// Which server the viewers talk to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Whep,
    Janus,
}

/// Which video codecs the offer carries.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoOffer {
    H264,
    Av1,
    Both,
    /// Only VP8: a codec Divisor never sends (for the "no codec in common" check).
    Vp8,
    /// No video section.
    None,
}

/// Per-track sequence accounting (sans-IO): extends 16-bit sequence numbers, counts
/// arrival gaps, duplicates (NACK retransmissions of packets that did arrive) and, over
/// the covered range, the packets that never arrived.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    first: Option<u64>,
    highest: u64,
    last: Option<u64>,
    /// Distinct sequence numbers seen, above `pruned_below`.
    seen: BTreeSet<u64>,
    pruned_below: u64,
    /// Distinct packets received (duplicates excluded).
    pub unique: u64,
    pub packets: u64,
    pub duplicates: u64,
    /// Arrivals whose sequence number is not the previous one plus one.
    pub gaps: u64,
}

/// How far back duplicates are recognised (packets older than this are counted once at
/// most anyway, since they were below the window when they first came or not at all).
const SEQ_WINDOW: u64 = 8192;

impl SeqTracker {
    /// Records one packet with sequence number `seq`.
    pub fn push(&mut self, seq: u16) {
        self.packets += 1;
        let ext = match self.last {
            None => (1u64 << 16) + seq as u64,
            Some(last) => extend_seq(last, seq),
        };
        if let Some(last) = self.last {
            if ext != last + 1 {
                self.gaps += 1;
            }
        }
        self.last = Some(ext);
        if self.first.is_none_or(|f| ext < f) {
            self.first = Some(ext);
        }
        self.highest = self.highest.max(ext);
        if ext < self.pruned_below || !self.seen.insert(ext) {
            self.duplicates += 1;
            return;
        }
        self.unique += 1;
        if self.highest > SEQ_WINDOW * 2 && self.seen.len() as u64 > SEQ_WINDOW * 2 {
            let keep = self.seen.split_off(&(self.highest - SEQ_WINDOW));
            self.pruned_below = self.highest - SEQ_WINDOW;
            self.seen = keep;
        }
    }

    /// Packets the sender numbered between the first and the highest seen.
    pub fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.highest - f + 1)
    }

    /// Packets of [`SeqTracker::expected`] that never arrived.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique)
    }
}

/// The extended sequence number of `seq` closest to `last` (RFC 3550 A.1 style). The
/// first packet is placed at `1 << 16 + seq`, so stepping back one cycle never underflows.
fn extend_seq(last: u64, seq: u16) -> u64 {
    let c = (last & !0xffff) | seq as u64;
    if c + 0x8000 < last {
        c + 0x1_0000
    } else if c > last + 0x8000 && c >= 0x1_0000 {
        c - 0x1_0000
    } else {
        c
    }
}

/// Whether an RTP payload of codec `mime` starts or carries a keyframe.
pub fn is_keyframe(mime: &str, payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    if mime.eq_ignore_ascii_case(MIME_TYPE_H264) {
        let idr_or_sps = |t: u8| t == 5 || t == 7;
        match first & 0x1f {
            // STAP-A: 16-bit sizes then NAL units.
            24 => {
                let mut rest = &payload[1..];
                while rest.len() >= 3 {
                    let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    if idr_or_sps(rest[2] & 0x1f) {
                        return true;
                    }
                    rest = rest.get(2 + n..).unwrap_or(&[]);
                }
                false
            }
            // FU-A: start bit and the fragmented NAL's type.
            28 => payload
                .get(1)
                .is_some_and(|h| h & 0x80 != 0 && idr_or_sps(h & 0x1f)),
            t => idr_or_sps(t),
        }
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_AV1) {
        // Aggregation header Z Y W W N - - -: N marks a new coded video sequence.
        first & 0x08 != 0
    } else {
        false
    }
}

/// What one track of one viewer received.
#[derive(Debug, Clone, Serialize)]
pub struct TrackReport {
    pub kind: String,
    pub mime_type: String,
    pub ssrc: u32,
    pub packets: u64,
    pub expected: u64,
    pub lost: u64,
    pub gaps: u64,
    pub duplicates: u64,
    /// Packets that start or carry a keyframe (IDR/SPS NAL units, AV1 N bit).
    pub keyframe_packets: u64,
}

/// What one viewer saw; times are milliseconds from its POST.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ViewerReport {
    pub id: usize,
    pub error: Option<String>,
    pub http_status: Option<u16>,
    pub location: Option<String>,
    /// `Content-Type` of the answer.
    pub answer_content_type: Option<String>,
    pub answer_ms: Option<f64>,
    pub connected_ms: Option<f64>,
    pub first_packet_ms: Option<f64>,
    pub first_keyframe_ms: Option<f64>,
    pub final_state: String,
    pub delete_status: Option<u16>,
    pub tracks: Vec<TrackReport>,
}

impl ViewerReport {
    fn packets(&self) -> u64 {
        self.tracks.iter().map(|t| t.packets).sum()
    }
    fn expected(&self) -> u64 {
        self.tracks.iter().map(|t| t.expected).sum()
    }
    fn lost(&self) -> u64 {
        self.tracks.iter().map(|t| t.lost).sum()
    }
}

/// Live counters of one track, shared with its reader task.
struct TrackState {
    kind: String,
    mime_type: String,
    ssrc: u32,
    seq: SeqTracker,
    keyframes: u64,
}

#[derive(Default)]
struct Shared {
    tracks: Vec<TrackState>,
    first_packet: Option<Instant>,
    first_keyframe: Option<Instant>,
    connected: Option<Instant>,
    state: String,
}

/// The webrtc-rs API object every viewer's peer connection comes from.
pub fn build_api(video: VideoOffer, audio: bool) -> Result<API> {
    let mut m = MediaEngine::default();
    let video_codec = |mime: &str, fmtp: &str, pt: u8| RTCRtpCodecParameters {
        capability: RTCRtpCodecCapability {
            mime_type: mime.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
        ..Default::default()
    };
    let mut videos = Vec::new();
    if matches!(video, VideoOffer::H264 | VideoOffer::Both) {
        for (profile, pt) in [("42e01f", 102), ("42001f", 104), ("640c1f", 106)] {
            videos.push(video_codec(
                MIME_TYPE_H264,
                &format!(
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
                ),
                pt,
            ));
        }
    }
    if matches!(video, VideoOffer::Av1 | VideoOffer::Both) {
        videos.push(video_codec(MIME_TYPE_AV1, "", 45));
    }
    if video == VideoOffer::Vp8 {
        videos.push(video_codec("video/VP8", "", 96));
    }
    for c in videos {
        m.register_codec(c, RTPCodecType::Video)?;
    }
    if audio {
        m.register_codec(
            RTCRtpCodecParameters {
                capability: RTCRtpCodecCapability {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48_000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![],
                },
                payload_type: 111,
                ..Default::default()
            },
            RTPCodecType::Audio,
        )?;
    }
    let registry = register_default_interceptors(Registry::new(), &mut m)?;
    let mut s = SettingEngine::default();
    // Many peer connections in one process: no mDNS sockets, IPv4 UDP host candidates.
    s.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    s.set_network_types(vec![NetworkType::Udp4]);
    Ok(APIBuilder::new()
        .with_media_engine(m)
        .with_interceptor_registry(registry)
        .with_setting_engine(s)
        .build())
}

/// One viewer: offer, POST, answer, receive for `seconds`, report (DELETE unless
/// `vanish`). Returns the report and, when vanishing, the peer connection to keep alive.
pub async fn run_viewer(
    api: &API,
    id: usize,
    args: &WebrtcArgs,
) -> (ViewerReport, Option<Arc<RTCPeerConnection>>) {
    let mut report = ViewerReport {
        id,
        ..Default::default()
    };
    let shared = Arc::new(Mutex::new(Shared::default()));
    let opened = match args.peer {
        Peer::Whep => open(api, args, &shared, &mut report)
            .await
            .map(|pc| (pc, None)),
        Peer::Janus => open_janus(api, args, &shared, &mut report)
            .await
            .map(|(pc, j)| (pc, Some(j))),
    };
    let (pc, janus) = match opened {
        Ok(v) => v,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return (report, None);
        }
    };
    // `open` returns once the answer is applied; the clock starts at the POST.
    let post = report.answer_ms.map(|ms| Instant::now() - ms_dur(ms));
    let join_deadline = Instant::now() + Duration::from_secs_f64(args.join_timeout);
    loop {
        let got = shared.lock().unwrap().first_packet.is_some();
        if got {
            break;
        }
        if Instant::now() > join_deadline {
            report.error = Some(format!(
                "no RTP packet within {}s (connection {})",
                args.join_timeout,
                pc.connection_state()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if report.error.is_none() {
        tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    }
    {
        let s = shared.lock().unwrap();
        let since = |t: Option<Instant>| {
            t.zip(post)
                .map(|(t, p)| t.saturating_duration_since(p).as_secs_f64() * 1000.0)
        };
        report.connected_ms = since(s.connected);
        report.first_packet_ms = since(s.first_packet);
        report.first_keyframe_ms = since(s.first_keyframe);
        report.final_state = s.state.clone();
        report.tracks = s
            .tracks
            .iter()
            .map(|t| TrackReport {
                kind: t.kind.clone(),
                mime_type: t.mime_type.clone(),
                ssrc: t.ssrc,
                packets: t.seq.packets,
                expected: t.seq.expected(),
                lost: t.seq.lost(),
                gaps: t.seq.gaps,
                duplicates: t.seq.duplicates,
                keyframe_packets: t.keyframes,
            })
            .collect();
    }
    if args.vanish {
        return (report, Some(pc));
    }
    if let Some(j) = &janus {
        match j.destroy().await {
            Ok(st) => report.delete_status = Some(st),
            Err(e) => {
                report.error.get_or_insert(format!("destroy: {e:#}"));
            }
        }
    } else if let Some(loc) = &report.location {
        match resolve(&args.url, loc) {
            Ok(u) => match http_request("DELETE", &u, None, Bytes::new()).await {
                Ok(r) => report.delete_status = Some(r.status),
                Err(e) => {
                    report.error.get_or_insert(format!("DELETE {u}: {e:#}"));
                }
            },
            Err(e) => {
                report.error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let _ = pc.close().await;
    (report, None)
}

fn ms_dur(ms: f64) -> Duration {
    Duration::from_secs_f64(ms / 1000.0)
}

/// Creates the peer connection, POSTs the offer and applies the answer.
async fn open(
    api: &API,
    args: &WebrtcArgs,
    shared: &Arc<Mutex<Shared>>,
    report: &mut ViewerReport,
) -> Result<Arc<RTCPeerConnection>> {
    let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await?);
    let recvonly = || RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Recvonly,
        send_encodings: vec![],
    };
    if args.video != VideoOffer::None {
        pc.add_transceiver_from_kind(RTPCodecType::Video, Some(recvonly()))
            .await?;
    }
    if !args.no_audio {
        pc.add_transceiver_from_kind(RTPCodecType::Audio, Some(recvonly()))
            .await?;
    }
    watch_pc(&pc, shared);
    let offer = pc.create_offer(None).await?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
    let local = pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description"))?;
    let post = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs_f64(args.join_timeout),
        http_request(
            "POST",
            &args.url,
            Some("application/sdp"),
            Bytes::from(local.sdp),
        ),
    )
    .await
    .map_err(|_| anyhow!("POST {}: no answer within {}s", args.url, args.join_timeout))??;
    report.http_status = Some(r.status);
    report.answer_ms = Some(post.elapsed().as_secs_f64() * 1000.0);
    if r.status != 201 {
        let _ = pc.close().await;
        bail!("POST {} -> {}: {}", args.url, r.status, r.body.trim());
    }
    report.location = r.location.clone();
    report.answer_content_type = r.content_type.clone();
    let answer = RTCSessionDescription::answer(r.body).context("answer SDP")?;
    pc.set_remote_description(answer)
        .await
        .context("applying the answer")?;
    Ok(pc)
}

/// Shared by both peers: state changes and track readers.
fn watch_pc(pc: &RTCPeerConnection, shared: &Arc<Mutex<Shared>>) {
    let s = shared.clone();
    pc.on_peer_connection_state_change(Box::new(move |st: RTCPeerConnectionState| {
        let mut s = s.lock().unwrap();
        s.state = st.to_string();
        if st == RTCPeerConnectionState::Connected && s.connected.is_none() {
            s.connected = Some(Instant::now());
        }
        Box::pin(async {})
    }));
    let s = shared.clone();
    pc.on_track(Box::new(move |track: Arc<TrackRemote>, _, _| {
        let s = s.clone();
        Box::pin(async move {
            tokio::spawn(read_track(track, s));
        })
    }));
}

/// Janus: session, attach, watch (Janus offers), answer. `answer_ms` is watch to start.
async fn open_janus(
    api: &API,
    args: &WebrtcArgs,
    shared: &Arc<Mutex<Shared>>,
    report: &mut ViewerReport,
) -> Result<(Arc<RTCPeerConnection>, JanusSession)> {
    let timeout = Duration::from_secs_f64(args.join_timeout);
    let j = JanusSession::open(&args.url).await?;
    report.location = Some(j.session_url.clone());
    let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await?);
    watch_pc(&pc, shared);
    let post = Instant::now();
    let offer = j.watch(args.mountpoint, timeout).await?;
    pc.set_remote_description(RTCSessionDescription::offer(offer).context("Janus offer")?)
        .await
        .context("applying Janus's offer")?;
    let answer = pc.create_answer(None).await?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
    let local = pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description"))?;
    j.start(&local.sdp).await?;
    report.http_status = Some(200);
    report.answer_ms = Some(post.elapsed().as_secs_f64() * 1000.0);
    Ok((pc, j))
}

/// Reads one remote track until it ends, counting into `shared`.
async fn read_track(track: Arc<TrackRemote>, shared: Arc<Mutex<Shared>>) {
    let mime = track.codec().capability.mime_type.clone();
    let idx = {
        let mut s = shared.lock().unwrap();
        s.tracks.push(TrackState {
            kind: track.kind().to_string(),
            mime_type: mime.clone(),
            ssrc: track.ssrc(),
            seq: SeqTracker::default(),
            keyframes: 0,
        });
        s.tracks.len() - 1
    };
    while let Ok((pkt, _)) = track.read_rtp().await {
        let now = Instant::now();
        let key = is_keyframe(&mime, &pkt.payload);
        let mut s = shared.lock().unwrap();
        s.first_packet.get_or_insert(now);
        if key {
            s.first_keyframe.get_or_insert(now);
        }
        let t = &mut s.tracks[idx];
        t.seq.push(pkt.header.sequence_number);
        t.keyframes += key as u64;
    }
}

/// A finished HTTP exchange.
pub struct HttpReply {
    pub status: u16,
    pub location: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

/// One HTTP/1.1 request on a fresh connection (hyper's client connection API).
pub async fn http_request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<HttpReply> {
    let u = url::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    if u.scheme() != "http" {
        bail!("only http:// URLs are supported: {url}");
    }
    let host = u.host_str().ok_or_else(|| anyhow!("no host in {url}"))?;
    let port = u.port_or_known_default().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("{host}:{port}"));
    if let Some(ct) = content_type {
        req = req.header(hyper::header::CONTENT_TYPE, ct);
    }
    let resp = send.send_request(req.body(Full::new(body))?).await?;
    let header = |name: hyper::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let status = resp.status().as_u16();
    let location = header(hyper::header::LOCATION);
    let content_type = header(hyper::header::CONTENT_TYPE);
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok(HttpReply {
        status,
        location,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// `loc` (absolute or relative, as in a `Location` header) against `base`.
fn resolve(base: &str, loc: &str) -> Result<String> {
    Ok(url::Url::parse(base)?.join(loc)?.to_string())
}

/// Summary figures of a run, as printed and as JSON.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub url: String,
    pub viewers: usize,
    pub seconds: f64,
    /// Viewers that received media without error.
    pub ok: usize,
    pub packets: u64,
    pub expected: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub gaps: u64,
    pub answer_ms_median: Option<f64>,
    pub first_packet_ms_median: Option<f64>,
    pub first_packet_ms_p95: Option<f64>,
    pub first_keyframe_ms_median: Option<f64>,
    pub first_keyframe_ms_p95: Option<f64>,
    pub per_viewer: Vec<ViewerReport>,
}

/// Builds the summary of `per_viewer`.
pub fn summarise(args: &WebrtcArgs, per_viewer: Vec<ViewerReport>) -> RunReport {
    let ok = per_viewer
        .iter()
        .filter(|v| v.error.is_none() && v.packets() > 0)
        .count();
    let packets = per_viewer.iter().map(ViewerReport::packets).sum();
    let expected: u64 = per_viewer.iter().map(ViewerReport::expected).sum();
    let lost: u64 = per_viewer.iter().map(ViewerReport::lost).sum();
    let gaps = per_viewer
        .iter()
        .flat_map(|v| &v.tracks)
        .map(|t| t.gaps)
        .sum();
    let col = |f: fn(&ViewerReport) -> Option<f64>| -> Vec<f64> {
        per_viewer.iter().filter_map(f).collect()
    };
    let answers = col(|v| v.answer_ms);
    let firsts = col(|v| v.first_packet_ms);
    let keys = col(|v| v.first_keyframe_ms);
    RunReport {
        url: args.url.clone(),
        viewers: args.viewers,
        seconds: args.seconds,
        ok,
        packets,
        expected,
        lost,
        loss_pct: if expected == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / expected as f64
        },
        gaps,
        answer_ms_median: percentile(&answers, 50.0),
        first_packet_ms_median: percentile(&firsts, 50.0),
        first_packet_ms_p95: percentile(&firsts, 95.0),
        first_keyframe_ms_median: percentile(&keys, 50.0),
        first_keyframe_ms_p95: percentile(&keys, 95.0),
        per_viewer,
    }
}

fn print_table(r: &RunReport) {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!(
        "{:>4} {:>6} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7}  tracks / error",
        "id", "http", "answer", "connect", "1st pkt", "1st key", "lost", "loss%"
    );
    for v in &r.per_viewer {
        let tracks: Vec<String> = v
            .tracks
            .iter()
            .map(|t| format!("{} {} pkts", t.mime_type, t.packets))
            .collect();
        println!(
            "{:>4} {:>6} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7.3}  {}",
            v.id,
            v.http_status.map_or("-".into(), |s| s.to_string()),
            ms(v.answer_ms),
            ms(v.connected_ms),
            ms(v.first_packet_ms),
            ms(v.first_keyframe_ms),
            v.lost(),
            if v.expected() == 0 {
                0.0
            } else {
                v.lost() as f64 * 100.0 / v.expected() as f64
            },
            v.error.clone().unwrap_or_else(|| tracks.join(", "))
        );
    }
    println!(
        "total: {}/{} viewers ok, {} packets, {} lost of {} ({:.3}%), {} gaps; \
         first packet median {} ms p95 {} ms; first keyframe median {} ms p95 {} ms",
        r.ok,
        r.viewers,
        r.packets,
        r.lost,
        r.expected,
        r.loss_pct,
        r.gaps,
        ms(r.first_packet_ms_median),
        ms(r.first_packet_ms_p95),
        ms(r.first_keyframe_ms_median),
        ms(r.first_keyframe_ms_p95),
    );
}

/// Runs `args.viewers` viewers concurrently and reports.
pub async fn run_viewers(args: &WebrtcArgs) -> Result<(RunReport, Vec<Arc<RTCPeerConnection>>)> {
    let api = Arc::new(build_api(args.video, !args.no_audio)?);
    let mut tasks = Vec::new();
    for id in 0..args.viewers {
        let (api, a) = (api.clone(), args.clone());
        tasks.push(tokio::spawn(async move { run_viewer(&api, id, &a).await }));
        if args.stagger_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.stagger_ms)).await;
        }
    }
    let mut reports = Vec::new();
    let mut kept = Vec::new();
    for (id, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok((r, pc)) => {
                reports.push(r);
                kept.extend(pc);
            }
            Err(e) => reports.push(ViewerReport {
                id,
                error: Some(format!("viewer task failed: {e}")),
                ..Default::default()
            }),
        }
    }
    Ok((summarise(args, reports), kept))
}

/// `divisor-bench webrtc`.
pub fn run(args: WebrtcArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (report, kept) = rt.block_on(run_viewers(&args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    if args.vanish {
        // Leave without a word: no DELETE, no DTLS close, sockets just disappear.
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::mem::forget(kept);
        std::process::exit(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker_counts_gaps_loss_and_duplicates() {
        let mut t = SeqTracker::default();
        for s in [65533u16, 65534, 65535, 0, 2, 3, 1, 3] {
            t.push(s);
        }
        // 65533..=3 is 7 numbers, all arrived (1 late), 3 twice.
        assert_eq!(t.expected(), 7);
        assert_eq!(t.lost(), 0);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.packets, 8);
        // 0 -> 2, 3 -> 1, 1 -> 3 are discontinuities.
        assert_eq!(t.gaps, 3);
        t.push(10);
        assert_eq!(t.expected(), 14);
        assert_eq!(t.lost(), 6);
    }

    #[test]
    fn seq_tracker_handles_long_runs() {
        let mut t = SeqTracker::default();
        for i in 0..200_000u32 {
            if i % 1000 != 7 {
                t.push(i as u16);
            }
        }
        assert_eq!(t.expected(), 200_000);
        assert_eq!(t.lost(), 200);
        assert_eq!(t.duplicates, 0);
    }

    #[test]
    fn keyframes_are_recognised() {
        assert!(is_keyframe("video/H264", &[0x65, 0x88]));
        assert!(is_keyframe("video/H264", &[0x67, 0x42]));
        assert!(!is_keyframe("video/H264", &[0x41, 0x9a]));
        // FU-A start of an IDR, and a middle fragment.
        assert!(is_keyframe("video/H264", &[0x7c, 0x85, 0]));
        assert!(!is_keyframe("video/H264", &[0x7c, 0x05, 0]));
        // STAP-A with SPS + PPS.
        assert!(is_keyframe(
            "video/H264",
            &[0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce]
        ));
        assert!(!is_keyframe("video/H264", &[0x78, 0, 2]));
        assert!(is_keyframe("video/AV1", &[0x18]));
        assert!(!is_keyframe("video/AV1", &[0x10]));
        assert!(!is_keyframe("audio/opus", &[0xff]));
        assert!(!is_keyframe("video/H264", &[]));
    }

    #[test]
    fn locations_resolve_against_the_endpoint() {
        assert_eq!(
            resolve("http://10.0.0.1:8080/whep/cam/web", "/whep/resource/abc").unwrap(),
            "http://10.0.0.1:8080/whep/resource/abc"
        );
    }
}
