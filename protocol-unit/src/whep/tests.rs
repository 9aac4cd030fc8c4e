//! In-process WHEP tests: a fake encoder unit on an in-process link feeds a live channel
//! through the real fan-out engine; a webrtc-rs client (a real, independent WebRTC
//! stack) posts a recvonly offer over HTTP (curl) and must receive H.264 RTP over
//! ICE + DTLS-SRTP. Bad requests get their statuses, and the server keeps serving.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use divisor_link::{Codec, ErrorCode, Frame, FrameFlags, Link, Message, TrackInfo};
use tokio::sync::mpsc;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;

use super::{Whep, WhepConfig};
use crate::admission::{Admission, AdmissionConfig};
use crate::fanout::{FanOut, FanOutConfig};
use crate::live::LiveHub;
use crate::metrics::Metrics;
use crate::schedule::{SchedulerConfig, SchedulerMode};
use crate::upstream::Upstream;

/// SPS of a 42e01f stream (only its first bytes matter here), and a PPS.
const SPS: &[u8] = &[0x67, 0x42, 0xe0, 0x1f, 0x8c, 0x8d, 0x40];
const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

fn video_track() -> TrackInfo {
    TrackInfo {
        track: 0,
        codec: Codec::H264,
        clock_rate: 90_000,
        width: 320,
        height: 240,
        sample_rate: 0,
        channels: 0,
        bitrate: 500_000,
        params: vec![Bytes::from_static(SPS), Bytes::from_static(PPS)],
    }
}

fn frame(channel: u32, n: i64) -> Frame {
    let key = n % 25 == 0;
    let mut data = Vec::new();
    if key {
        for p in [SPS, PPS] {
            data.extend_from_slice(&[0, 0, 0, 1]);
            data.extend_from_slice(p);
        }
    }
    data.extend_from_slice(&[0, 0, 0, 1, if key { 0x65 } else { 0x41 }]);
    data.extend(std::iter::repeat_n(n as u8, 300));
    let mut flags = FrameFlags::empty();
    if key {
        flags.insert(FrameFlags::KEYFRAME);
    }
    Frame {
        channel,
        track: 0,
        codec: Codec::H264,
        flags,
        pts: n * 3600,
        dts: n * 3600,
        duration: 3600,
        data: Bytes::from(data),
    }
}

/// The encoder side of the link: channel "cam" exists (one H.264 track, 25 fps), any
/// other name is refused as not found.
async fn fake_encoder(link: Link) {
    let Link {
        sender,
        mut receiver,
        ..
    } = link;
    let mut subscribed: Option<u32> = None;
    let mut n = 0i64;
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    loop {
        tokio::select! {
            m = receiver.recv() => match m {
                Ok(Message::Subscribe { channel, name, .. }) => {
                    if name == "cam" {
                        subscribed = Some(channel);
                        let _ = sender.send(Message::Announce { channel, duration_ms: None, tracks: vec![video_track()] }).await;
                    } else {
                        let _ = sender.send(Message::Error { channel, code: ErrorCode::NotFound, message: format!("no channel {name}") }).await;
                    }
                }
                Ok(Message::Close { .. }) => subscribed = None,
                Ok(_) => {}
                Err(_) => return,
            },
            _ = tick.tick() => {
                if let Some(ch) = subscribed {
                    let _ = sender.send(Message::Frame(frame(ch, n))).await;
                    n += 1;
                }
            }
        }
    }
}

async fn server(config: WhepConfig) -> (SocketAddr, Arc<Whep>) {
    let (addr, whep, encoder_end) = server_with_link(config).await;
    tokio::spawn(fake_encoder(encoder_end));
    (addr, whep)
}

/// A WHEP server (HTTP on loopback, real fan-out engine) whose encoder unit is the
/// returned end of an in-process link, for the test to play.
pub(super) async fn server_with_link(config: WhepConfig) -> (SocketAddr, Arc<Whep>, Link) {
    let (encoder_end, protocol_end) = divisor_link::mem_pair();
    let upstream = Upstream::new();
    upstream.attach(protocol_end);
    let fan = FanOut::start(FanOutConfig {
        scheduler: SchedulerConfig {
            mode: SchedulerMode::Plain,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let live = LiveHub::new(upstream, fan.clone(), Duration::from_secs(1));
    let metrics = Metrics::new();
    metrics.attach_fanout(fan.stats.clone());
    let whep = Whep::start(
        config,
        live,
        fan,
        Admission::new(AdmissionConfig::default()),
        metrics.clone(),
    )
    .unwrap();
    let status_whep = Arc::downgrade(&whep);
    metrics.register_webrtc_status(Arc::new(move || {
        status_whep
            .upgrade()
            .map(|w| w.status())
            .unwrap_or_default()
    }));
    let router = crate::http::router(metrics).merge(super::signal::router(whep.clone()));
    let listener = crate::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::http::serve_router(listener, router));
    (addr, whep, encoder_end)
}

/// curl, the real HTTP client: (status, headers + body).
pub(super) async fn curl(args: Vec<String>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "20", "-w", "\n%{http_code}"])
            .args(&args)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.trim().parse().unwrap_or(0), body.to_string())
    })
    .await
    .unwrap()
}

pub(super) async fn post(url: String, content_type: &str, body: String) -> (u16, String) {
    curl(vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        format!("Content-Type: {content_type}"),
        "--data-binary".into(),
        body,
        url,
    ])
    .await
}

/// A webrtc-rs client offering to receive H.264 video; `packets` gets every RTP packet it
/// receives.
pub(super) async fn client() -> (
    Arc<webrtc::peer_connection::RTCPeerConnection>,
    String,
    mpsc::UnboundedReceiver<rtp::packet::Packet>,
) {
    let mut media = MediaEngine::default();
    for (pt, fmtp) in [
        (
            102,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        ),
        (
            106,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
    ] {
        media
            .register_codec(
                RTCRtpCodecParameters {
                    capability: RTCRtpCodecCapability {
                        mime_type: "video/H264".into(),
                        clock_rate: 90_000,
                        channels: 0,
                        sdp_fmtp_line: fmtp.into(),
                        rtcp_feedback: vec![],
                    },
                    payload_type: pt,
                    ..Default::default()
                },
                RTPCodecType::Video,
            )
            .unwrap();
    }
    media
        .register_codec(
            RTCRtpCodecParameters {
                capability: RTCRtpCodecCapability {
                    mime_type: "video/AV1".into(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: "level-idx=5;profile=0;tier=0".into(),
                    rtcp_feedback: vec![],
                },
                payload_type: 45,
                ..Default::default()
            },
            RTPCodecType::Video,
        )
        .unwrap();
    media
        .register_codec(
            RTCRtpCodecParameters {
                capability: RTCRtpCodecCapability {
                    mime_type: "audio/opus".into(),
                    clock_rate: 48_000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                    rtcp_feedback: vec![],
                },
                payload_type: 111,
                ..Default::default()
            },
            RTPCodecType::Audio,
        )
        .unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .unwrap(),
    );
    pc.add_transceiver_from_kind(
        RTPCodecType::Video,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            send_encodings: vec![],
        }),
    )
    .await
    .unwrap();
    pc.add_transceiver_from_kind(
        RTPCodecType::Audio,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            send_encodings: vec![],
        }),
    )
    .await
    .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    pc.on_track(Box::new(move |track, _, _| {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok((p, _)) = track.read_rtp().await {
                if tx.send(p).is_err() {
                    return;
                }
            }
        });
        Box::pin(async {})
    }));
    let offer = pc.create_offer(None).await.unwrap();
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
    let sdp = pc.local_description().await.unwrap().sdp;
    (pc, sdp, rx)
}

pub(super) fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

pub(super) fn body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
}

async fn play_and_receive(config: WhepConfig) {
    let (addr, whep) = server(config).await;
    let (pc, offer, mut packets) = client().await;
    let (code, response) = post(format!("http://{addr}/whep/cam"), "application/sdp", offer).await;
    assert_eq!(code, 201, "{response}");
    assert_eq!(header(&response, "content-type"), Some("application/sdp"));
    let location = header(&response, "location").expect("Location").to_string();
    assert!(location.starts_with("/whep/resource/"), "{location}");
    let answer = body(&response).to_string();
    assert!(answer.contains("H264/90000"), "{answer}");
    assert!(answer.contains("a=ice-lite"), "{answer}");
    pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    // RTP arrives: H.264 with one of the offered payload types.
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while got < 30 {
        match tokio::time::timeout_at(deadline, packets.recv()).await {
            Ok(Some(p)) => {
                let pt = p.header.payload_type;
                assert!(pt == 102 || pt == 106, "payload type {pt}");
                got += 1;
            }
            _ => panic!("only {got} RTP packets arrived"),
        }
    }
    assert_eq!(whep.len(), 1);
    assert_eq!(whep.metrics.webrtc_viewers.get(), 1);
    let (code, status) = curl(vec![format!("http://{addr}/status")]).await;
    assert_eq!(code, 200);
    assert!(body(&status).contains("\"webrtc_viewers\":1"), "{status}");
    // DELETE frees the session; a second DELETE is 404.
    let url = format!("http://{addr}{location}");
    let (code, _) = curl(vec!["-X".into(), "DELETE".into(), url.clone()]).await;
    assert_eq!(code, 200);
    for _ in 0..50 {
        if whep.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(whep.is_empty(), "session freed after DELETE");
    let (code, _) = curl(vec!["-X".into(), "DELETE".into(), url]).await;
    assert_eq!(code, 404);
    let _ = pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_client_receives_h264_ephemeral_ports() {
    play_and_receive(WhepConfig::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_client_receives_h264_through_the_udp_mux() {
    // A free port: bind, note it, let go.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    play_and_receive(WhepConfig {
        udp_port: port,
        public_ips: vec!["127.0.0.1".into()],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_the_server_carries_on() {
    let (addr, whep) = server(WhepConfig::default()).await;
    let url = format!("http://{addr}/whep/cam");
    let (code, r) = post(url.clone(), "application/sdp", "this is not sdp".into()).await;
    assert_eq!(code, 400, "{r}");
    assert!(body(&r).contains("not SDP"), "{r}");
    let (code, r) = post(url.clone(), "text/plain", "v=0".into()).await;
    assert_eq!(code, 415, "{r}");
    let (_pc, offer, _) = client().await;
    let (code, r) = post(
        format!("http://{addr}/whep/nope"),
        "application/sdp",
        offer.clone(),
    )
    .await;
    assert_eq!(code, 404, "{r}");
    assert!(body(&r).contains("no live channel"), "{r}");
    // Only VP8 offered: 406 naming both sides.
    let vp8 = offer
        .replace("H264/90000", "VP8/90000")
        .replace("packetization-mode=1", "x=1");
    let (code, r) = post(url.clone(), "application/sdp", vp8).await;
    assert_eq!(code, 406, "{r}");
    assert!(
        body(&r).contains("no codec in common: offer has VP8, AV1, opus; channel cam has H264"),
        "{r}"
    );
    let (code, _) = curl(vec![
        "-X".into(),
        "DELETE".into(),
        format!("http://{addr}/whep/resource/unknown"),
    ])
    .await;
    assert_eq!(code, 404);
    let (code, page) = curl(vec![format!("http://{addr}/play/cam")]).await;
    assert_eq!(code, 200);
    assert!(page.contains("window.pc"));
    assert!(whep.is_empty());
    let (code, metrics) = curl(vec![format!("http://{addr}/metrics")]).await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("divisor_webrtc_refused_total{reason=\"no_codec\"} 1"),
        "{metrics}"
    );
}

/// Against a running server: `WHEP_URL=http://HOST:PORT/whep/cam/web cargo test --release
/// -p divisor-protocol --lib whep::tests::external -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a running server (WHEP_URL)"]
async fn external_server_sends_media() {
    let url = std::env::var("WHEP_URL").expect("WHEP_URL");
    let (pc, offer, mut packets) = client().await;
    let (code, response) = post(url, "application/sdp", offer).await;
    assert_eq!(code, 201, "{response}");
    let answer = body(&response).to_string();
    pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut got = 0;
    let mut by_pt = std::collections::BTreeMap::<u8, u64>::new();
    while got < 400 {
        match tokio::time::timeout(Duration::from_secs(10), packets.recv()).await {
            Ok(Some(p)) => {
                let pt = p.header.payload_type;
                if got == 0 {
                    eprintln!("first RTP after {:?}", t0.elapsed());
                }
                *by_pt.entry(pt).or_default() += 1;
                got += 1;
            }
            _ => panic!("only {got} RTP packets arrived"),
        }
    }
    eprintln!(
        "{got} RTP packets in {:?}, by payload type {by_pt:?}",
        t0.elapsed()
    );
    let _ = pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_never_connects_is_freed_after_the_timeout() {
    let (addr, whep) = server(WhepConfig {
        timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let (_pc, offer, _) = client().await;
    // The answer is never applied: the viewer vanishes right after the POST.
    let (code, r) = post(format!("http://{addr}/whep/cam"), "application/sdp", offer).await;
    assert_eq!(code, 201, "{r}");
    assert_eq!(whep.len(), 1);
    for _ in 0..50 {
        if whep.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(whep.is_empty(), "session freed after the timeout");
    let (_, metrics) = curl(vec![format!("http://{addr}/metrics")]).await;
    assert!(
        metrics.contains("divisor_webrtc_sessions_ended_total{reason=\"timeout\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("divisor_webrtc_viewers 0"), "{metrics}");
}
