//! One WHEP viewer: its webrtc-rs peer connection, fed from the fan-out engine.
//!
//! [`create`] answers the offer (or says why not) and spawns the session's task, which
//! joins the channel's feed in the engine with an in-process queue as destination, starts
//! the feed (GOP cache first) once DTLS is up, moves each RTP packet from the queue into
//! the viewer's `TrackLocalStaticRTP` (webrtc-rs then sets the negotiated SSRC and payload
//! type, our [`super::nack`] interceptor keeps the packet for NACKs, and webrtc-rs
//! protects it with SRTP), and turns PLI/FIR from
//! the viewer into keyframe requests to the encoder unit. It ends on DELETE, when the
//! channel ends, or when the connection stays disconnected or failed (or never connects)
//! for the configured timeout; every end frees the engine client, the admission ticket and
//! the channel hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};
use webrtc::api::interceptor_registry::configure_rtcp_reports;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::APIBuilder;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};
use webrtc::util::Unmarshal;

use super::adapt::{Adapter, CatchUp, Continuity, Rung, SendRate};
use super::nack::{BoundedNackBuilder, NackCounts};
use super::negotiate::{self, Chosen, Kind};
use super::{Whep, WhepError, WhepStatus};
use crate::admission::Ticket;
use crate::fanout::engine::TrackDest;
use crate::fanout::sink::{QueueSink, SinkPacket};
use crate::fanout::{ClientStats, Command as EngineCommand, LiveJoin, LiveTrack, Tier};
use crate::live::{Control, Viewer};

/// Buffers queued between the engine and a viewer's task (about one per frame and
/// track): a GOP burst fits, and a stuck viewer loses its own packets only.
const QUEUE_DEPTH: usize = 1024;
/// Longest wait for ICE candidate gathering before the answer goes out without them.
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest SDP body accepted.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// A session in the table.
pub struct WhepSession {
    pub id: String,
    /// `channel/rendition` as asked.
    pub channel: String,
    pub peer: String,
    pub codecs: Vec<String>,
    created: SystemTime,
    pc: Arc<RTCPeerConnection>,
    state: Mutex<RTCPeerConnectionState>,
    stop: Notify,
    why: Mutex<Option<String>>,
    /// The rendition being sent.
    rendition: Mutex<String>,
    /// Last REMB estimate, bits/s (0 = none yet).
    estimate: AtomicU64,
    /// REMB packets received.
    rembs: AtomicU64,
    switches: AtomicU64,
    /// NACKed packets resent and refused by the bounded responder.
    nack: Arc<NackCounts>,
}

impl WhepSession {
    /// Ask the session's task to end (`why` is logged).
    pub fn stop(&self, why: &str) {
        *self.why.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
        self.stop.notify_one();
    }

    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> WhepStatus {
        WhepStatus {
            id: self.id.clone(),
            channel: self.channel.clone(),
            peer: self.peer.clone(),
            state: self.state().to_string(),
            codecs: self.codecs.clone(),
            age_seconds: self
                .created
                .elapsed()
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            rendition: self
                .rendition
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            estimate_bps: match self.estimate.load(Ordering::Relaxed) {
                0 => None,
                e => Some(e),
            },
            remb_packets: self.rembs.load(Ordering::Relaxed),
            switches: self.switches.load(Ordering::Relaxed),
            nack_resent: self.nack.resent.load(Ordering::Relaxed),
            nack_refused: self.nack.refused.load(Ordering::Relaxed),
        }
    }

    /// Trickle ICE (`PATCH` with an `application/trickle-ice-sdpfrag` body): every
    /// `a=candidate:` line is given to ICE. With ICE-lite the viewer's checks reach us
    /// anyway, so this only helps. Returns how many candidates were taken.
    pub async fn add_candidates(&self, frag: &str) -> Result<usize, WhepError> {
        let mut n = 0;
        for line in frag.lines() {
            let Some(c) = line.trim().strip_prefix("a=candidate:") else {
                continue;
            };
            self.pc
                .add_ice_candidate(RTCIceCandidateInit {
                    candidate: format!("candidate:{c}"),
                    ..Default::default()
                })
                .await
                .map_err(|e| WhepError::Rejected(format!("candidate refused: {e}")))?;
            n += 1;
        }
        Ok(n)
    }
}

/// RTCP feedback offered for a codec. Video gets `goog-remb` and deliberately not
/// `transport-cc`: without transport-wide sequence numbers Chromium runs its receive-side
/// estimator and reports it in REMB packets, which is what [`super::adapt`] chooses
/// renditions from (the server keeps no send-side congestion controller).
fn feedback(kind: Kind) -> Vec<RTCPFeedback> {
    if kind == Kind::Audio {
        return Vec::new();
    }
    [
        ("nack", ""),
        ("nack", "pli"),
        ("ccm", "fir"),
        ("goog-remb", ""),
    ]
    .iter()
    .map(|(t, p)| RTCPFeedback {
        typ: t.to_string(),
        parameter: p.to_string(),
    })
    .collect()
}

fn capability(c: &Chosen) -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: c.mime_type.to_string(),
        clock_rate: c.clock_rate,
        channels: c.channels,
        sdp_fmtp_line: c.fmtp.clone(),
        rtcp_feedback: feedback(c.kind),
    }
}

/// Answer `offer` for `channel`/`rendition` from `peer`: returns the session's resource id
/// and the SDP answer.
pub async fn create(
    whep: &Arc<Whep>,
    channel: &str,
    rendition: &str,
    offer: &str,
    peer: Option<SocketAddr>,
) -> Result<(String, String), WhepError> {
    let parsed = negotiate::parse_offer(offer)?;
    // A viewer of the channel (no rendition named) is adapted when a ladder is configured:
    // it starts on the first rendition listed (or the channel's default, if that fails).
    let adaptive = rendition.is_empty() && !whep.config.adapt_renditions.is_empty();
    let first = if adaptive {
        whep.live
            .acquire(channel, &whep.config.adapt_renditions[0])
            .await
            .ok()
    } else {
        None
    };
    let viewer = match first {
        Some(v) => v,
        None => whep
            .live
            .acquire(channel, rendition)
            .await
            .map_err(|e| WhepError::from_upstream(e, channel, rendition))?,
    };
    let label = if rendition.is_empty() {
        channel.to_string()
    } else {
        format!("{channel}/{rendition}")
    };
    let chosen = negotiate::choose(&parsed, &viewer.channel.tracks, &label)?;
    let announced: u64 = viewer
        .channel
        .tracks
        .iter()
        .filter(|t| chosen.iter().any(|c| c.track == t.track))
        .map(|t| u64::from(t.bitrate))
        .sum();
    let ip = peer
        .map(|p| p.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let ticket = whep
        .admission
        .try_admit(ip, whep.admission.estimate_bps(Some(announced)))
        .inspect_err(|r| whep.metrics.admission_refused(r))?;

    let mut media = MediaEngine::default();
    for c in &chosen {
        let typ = match c.kind {
            Kind::Video => RTPCodecType::Video,
            Kind::Audio => RTPCodecType::Audio,
        };
        media
            .register_codec(
                RTCRtpCodecParameters {
                    capability: capability(c),
                    payload_type: c.payload_type,
                    ..Default::default()
                },
                typ,
            )
            .map_err(|e| WhepError::Internal(format!("codec registration: {e}")))?;
    }
    // NACKs are answered by our bounded responder (see `super::nack`), not webrtc-rs's;
    // the video codecs offer `nack` themselves (`feedback`).
    let nack = Arc::new(NackCounts::default());
    let mut registry = configure_rtcp_reports(Registry::new());
    registry.add(Box::new(BoundedNackBuilder {
        counts: Arc::clone(&nack),
    }));
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(whep.settings())
        .build();
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .map_err(|e| WhepError::Internal(format!("peer connection: {e}")))?,
    );
    match answer(&pc, &chosen, offer).await {
        Ok((tracks, senders, sdp)) => {
            let id = Whep::new_id();
            let session = Arc::new(WhepSession {
                id: id.clone(),
                channel: label.clone(),
                peer: peer.map(|p| p.to_string()).unwrap_or_default(),
                codecs: chosen.iter().map(|c| c.mime_type.to_string()).collect(),
                created: Whep::now(),
                pc: pc.clone(),
                state: Mutex::new(RTCPeerConnectionState::New),
                stop: Notify::new(),
                why: Mutex::new(None),
                rendition: Mutex::new(viewer.channel.rendition.clone()),
                estimate: AtomicU64::new(0),
                rembs: AtomicU64::new(0),
                switches: AtomicU64::new(0),
                nack,
            });
            let (state_tx, state_rx) = mpsc::unbounded_channel();
            // Weak: the connection holds this handler, the session holds the connection.
            let s = Arc::downgrade(&session);
            pc.on_peer_connection_state_change(Box::new(move |st| {
                if let Some(s) = s.upgrade() {
                    *s.state.lock().unwrap_or_else(|p| p.into_inner()) = st;
                }
                let _ = state_tx.send(st);
                Box::pin(async {})
            }));
            whep.insert(session.clone());
            whep.metrics.webrtc_sessions.inc();
            info!(session = %id, channel = %label, peer = %session.peer, codecs = ?session.codecs, "WHEP session created");
            tokio::spawn(run(
                whep.clone(),
                session,
                Running {
                    viewer,
                    chosen,
                    tracks,
                    senders,
                    _ticket: ticket,
                    adaptive,
                },
                state_rx,
            ));
            Ok((id, sdp))
        }
        Err(e) => {
            let _ = pc.close().await;
            Err(e)
        }
    }
}

type Tracks = Vec<Arc<TrackLocalStaticRTP>>;
type Senders = Vec<Arc<RTCRtpSender>>;

/// Add the tracks, take the offer, make the answer with the gathered candidates.
async fn answer(
    pc: &Arc<RTCPeerConnection>,
    chosen: &[Chosen],
    offer: &str,
) -> Result<(Tracks, Senders, String), WhepError> {
    let mut tracks = Vec::new();
    let mut senders = Vec::new();
    for c in chosen {
        let kind = if c.kind == Kind::Video {
            "video"
        } else {
            "audio"
        };
        let track = Arc::new(TrackLocalStaticRTP::new(
            capability(c),
            kind.to_string(),
            "divisor".to_string(),
        ));
        let sender = pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
            .await
            .map_err(|e| WhepError::Internal(format!("add track: {e}")))?;
        tracks.push(track);
        senders.push(sender);
    }
    let desc = RTCSessionDescription::offer(offer.to_string())
        .map_err(|e| WhepError::Rejected(e.to_string()))?;
    pc.set_remote_description(desc)
        .await
        .map_err(|e| WhepError::Rejected(e.to_string()))?;
    let answer = pc
        .create_answer(None)
        .await
        .map_err(|e| WhepError::Rejected(e.to_string()))?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer)
        .await
        .map_err(|e| WhepError::Rejected(e.to_string()))?;
    let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
    let local = pc
        .local_description()
        .await
        .ok_or_else(|| WhepError::Internal("no local description".into()))?;
    Ok((tracks, senders, local.sdp))
}

/// What the session's task owns.
struct Running {
    viewer: Viewer,
    chosen: Vec<Chosen>,
    tracks: Tracks,
    senders: Senders,
    _ticket: Ticket,
    /// Whether the viewer may be moved between renditions.
    adaptive: bool,
}

/// Why a session ended (for the log and the metrics label).
fn end_kind(why: &str) -> &'static str {
    if why.starts_with("deleted") {
        "deleted"
    } else if why.starts_with("timed out") || why.starts_with("never connected") {
        "timeout"
    } else if why.starts_with("channel") {
        "channel_ended"
    } else {
        "closed"
    }
}

async fn run(
    whep: Arc<Whep>,
    session: Arc<WhepSession>,
    mut running: Running,
    mut states: mpsc::UnboundedReceiver<RTCPeerConnectionState>,
) {
    let fan = whep.fan.clone();
    let client = fan.next_id();
    let stats = ClientStats::new(
        client,
        &session.id,
        &format!("webrtc/{}", session.channel),
        &session.peer,
    );
    fan.stats.add_client(stats.clone());
    let n = running.chosen.len();
    let mut queue = QueueSink::new(QUEUE_DEPTH);
    // Two sets of destinations: the feed being sent, and the one an adaptive viewer is
    // being moved to (packets say which by their queue channel).
    let dests: Vec<TrackDest> = (0..2 * n).map(|k| queue.dest(k)).collect();
    let (tx, rx) = oneshot::channel();
    fan.engine.send(EngineCommand::JoinLive(LiveJoin {
        client,
        feed: running.viewer.channel.feed,
        tier: Tier::Full,
        tracks: live_tracks(&running.chosen, &dests[..n]),
        stats: stats.clone(),
        reply: tx,
    }));
    // An adaptive viewer keeps writers for later joins; the others end when the engine
    // drops theirs.
    let spare = if running.adaptive { dests } else { Vec::new() };
    queue.close_own_writer();
    let mut clients = vec![client];
    let why = match rx.await {
        Ok(Some(join)) => {
            if !join.starts_at_keyframe {
                ask_keyframes(&running);
            }
            let mut ctx = Serve {
                queue: &mut queue,
                states: &mut states,
                client,
                stats: &stats,
                spare,
                clients: &mut clients,
            };
            serve(&whep, &session, &mut running, &mut ctx).await
        }
        _ => "channel ended before the viewer joined".to_string(),
    };
    let kind = end_kind(&why);
    if kind == "timeout" {
        warn!(session = %session.id, channel = %session.channel, "WHEP session freed: {why}");
    } else {
        info!(session = %session.id, channel = %session.channel, "WHEP session ends: {why}");
    }
    whep.metrics.webrtc_session_ended(kind);
    for c in clients {
        fan.engine.send(EngineCommand::RemoveClient { client: c });
    }
    fan.stats.remove_client(client);
    whep.remove(&session.id);
    if let Err(e) = session.pc.close().await {
        debug!(session = %session.id, "peer connection close: {e}");
    }
    // `running` (the channel holds and the admission ticket) drops here.
}

fn live_tracks(chosen: &[Chosen], dests: &[TrackDest]) -> Vec<LiveTrack> {
    chosen
        .iter()
        .zip(dests)
        .map(|(c, d)| LiveTrack {
            track: c.track,
            dest: d.clone(),
            ssrc: rand::random(),
        })
        .collect()
}

fn ask_keyframes(running: &Running) {
    for c in running.chosen.iter().filter(|c| c.kind == Kind::Video) {
        running
            .viewer
            .channel
            .control(Control::KeyframeRequest(c.track));
    }
}

/// The session loop's engine-side state.
struct Serve<'a> {
    queue: &'a mut QueueSink,
    states: &'a mut mpsc::UnboundedReceiver<RTCPeerConnectionState>,
    /// The engine client first joined (its statistics id).
    client: u64,
    stats: &'a Arc<ClientStats>,
    /// Destinations for adaptive joins (2 x tracks), empty when not adaptive.
    spare: Vec<TrackDest>,
    /// Engine clients held: the current one, then one being switched to.
    clients: &'a mut Vec<u64>,
}

/// A switch under way: the engine client joined to the new feed, not yet sending to the
/// viewer until its first packet arrives (the old feed goes on until then).
struct Pending {
    client: u64,
    generation: usize,
    viewer: Viewer,
    since: Instant,
}

/// The other renditions an adaptive viewer may move to, with the adapter over them
/// (subscribing to them in the background once the viewer is connected).
async fn ladder(
    whep: Arc<Whep>,
    channel: String,
    current: String,
    chosen: Vec<Chosen>,
    current_bitrate: Option<u64>,
) -> (Option<Adapter>, HashMap<String, Viewer>) {
    let mut held = HashMap::new();
    let mut rungs = Vec::new();
    if let Some(b) = current_bitrate {
        rungs.push(Rung {
            name: current.clone(),
            bitrate: b,
        });
    }
    for name in &whep.config.adapt_renditions {
        if *name == current || held.contains_key(name) {
            continue;
        }
        match whep.live.acquire(&channel, name).await {
            Ok(v) => match negotiate::playable_bitrate(&chosen, &v.channel.tracks) {
                Some(bitrate) => {
                    rungs.push(Rung {
                        name: name.clone(),
                        bitrate,
                    });
                    held.insert(name.clone(), v);
                }
                None => {
                    debug!(channel, rendition = %name, "rendition not playable with the negotiated codecs; not adapted to")
                }
            },
            Err(e) => {
                debug!(channel, rendition = %name, "rendition not available for adaptation: {e}")
            }
        }
    }
    let adapter = Adapter::new(rungs, &current, whep.config.adapt.clone());
    if adapter.is_none() {
        held.clear();
    }
    (adapter, held)
}

/// The session's loop; returns why it ended.
async fn serve(
    whep: &Arc<Whep>,
    session: &Arc<WhepSession>,
    running: &mut Running,
    ctx: &mut Serve<'_>,
) -> String {
    let timeout = whep.config.timeout;
    let created = Instant::now();
    let mut started = false;
    let mut down_since: Option<Instant> = None;
    let mut ended = running.viewer.channel.ended();
    let n = running.chosen.len();
    // Feedback from the viewer, one reader per sender (reading also drives the
    // interceptors: NACK responder, report statistics).
    let (keyframe_tx, mut keyframe_rx) = mpsc::unbounded_channel::<u8>();
    let (estimate_tx, mut estimate_rx) = mpsc::unbounded_channel::<u64>();
    let mut readers = Vec::new();
    for (sender, c) in running.senders.iter().zip(&running.chosen) {
        readers.push(tokio::spawn(read_rtcp(
            sender.clone(),
            c.track,
            c.kind,
            Feedback {
                keyframes: keyframe_tx.clone(),
                estimates: estimate_tx.clone(),
                stats: ctx.stats.clone(),
                server: whep.fan.stats.clone(),
            },
        )));
    }
    drop(keyframe_tx);
    drop(estimate_tx);
    // Adaptation: the ladder arrives once the viewer is connected.
    let (ladder_tx, mut ladder_rx) = oneshot::channel();
    let mut ladder_tx = Some(ladder_tx);
    let mut ladder_done = false;
    let mut adapter: Option<Adapter> = None;
    let mut held: HashMap<String, Viewer> = HashMap::new();
    let mut pending: Option<Pending> = None;
    // What the viewer is really sent, for the adapter's down decision.
    let mut send_rate = SendRate::default();
    let mut generation = 0usize;
    let mut current = ctx.client;
    let mut continuity = Continuity::new(
        &running
            .chosen
            .iter()
            .map(|c| {
                let catch_up = match c.kind {
                    Kind::Video => CatchUp::Squeeze,
                    Kind::Audio => CatchUp::Drop,
                };
                (c.clock_rate, catch_up)
            })
            .collect::<Vec<_>>(),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let why = loop {
        tokio::select! {
            p = ctx.queue.recv() => match p {
                Some(SinkPacket::Rtp { track, packet }) => {
                    let (g, k) = (track / n.max(1), track % n.max(1));
                    if g != generation {
                        // The new feed's first packet (its GOP start): cut over.
                        let Some(p) = pending.take_if(|p| p.generation == g) else {
                            continue;
                        };
                        whep.fan.engine.send(EngineCommand::RemoveClient { client: current });
                        ctx.clients.retain(|c| *c != current);
                        current = p.client;
                        generation = g;
                        continuity.rebase();
                        let old = std::mem::replace(&mut running.viewer, p.viewer);
                        let old_name = old.channel.rendition.clone();
                        held.insert(old_name, old);
                        held.remove(&running.viewer.channel.rendition);
                        ended = running.viewer.channel.ended();
                        debug!(session = %session.id, cut_ms = p.since.elapsed().as_millis() as u64, "WHEP switch cut over");
                    }
                    if let Some(t) = running.tracks.get(k) {
                        write(t, packet, k, &mut continuity).await;
                    }
                }
                // webrtc-rs's interceptor makes the sender reports for this connection.
                Some(SinkPacket::Rtcp { .. }) => {}
                None => break "the fan-out dropped the viewer".to_string(),
            },
            st = ctx.states.recv() => match st {
                Some(RTCPeerConnectionState::Connected) => {
                    down_since = None;
                    if !started {
                        started = true;
                        info!(session = %session.id, join_ms = created.elapsed().as_millis() as u64, "WHEP viewer connected; sending");
                        whep.fan.engine.send(EngineCommand::Start { client: current });
                        if running.adaptive {
                            if let Some(tx) = ladder_tx.take() {
                                let bitrate = negotiate::playable_bitrate(&running.chosen, &running.viewer.channel.tracks);
                                let job = ladder(
                                    whep.clone(),
                                    running.viewer.channel.name.clone(),
                                    running.viewer.channel.rendition.clone(),
                                    running.chosen.clone(),
                                    bitrate,
                                );
                                tokio::spawn(async move {
                                    let _ = tx.send(job.await);
                                });
                            }
                        }
                    }
                }
                Some(RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Failed) => {
                    down_since.get_or_insert_with(Instant::now);
                }
                Some(RTCPeerConnectionState::Closed) => break "peer connection closed".to_string(),
                Some(_) => {}
                None => break "peer connection gone".to_string(),
            },
            Some(track) = keyframe_rx.recv() => {
                running.viewer.channel.control(Control::KeyframeRequest(track));
            }
            Some(estimate) = estimate_rx.recv() => {
                session.estimate.store(estimate, Ordering::Relaxed);
                session.rembs.fetch_add(1, Ordering::Relaxed);
                whep.metrics.webrtc_remb.inc();
                let Some(a) = adapter.as_mut() else { continue };
                let now = Instant::now();
                a.set_sending(send_rate.sample(ctx.stats.bytes.load(Ordering::Relaxed), now));
                if pending.is_some() {
                    continue;
                }
                let Some(sw) = a.on_estimate(estimate, now) else { continue };
                let Some(target) = held.get(&sw.to).map(|v| v.channel.clone()) else {
                    a.failed(&sw.from);
                    continue;
                };
                let next = whep.fan.next_id();
                let g = 1 - generation;
                let (tx, rx) = oneshot::channel();
                whep.fan.engine.send(EngineCommand::JoinLive(LiveJoin {
                    client: next,
                    feed: target.feed,
                    tier: Tier::Full,
                    tracks: live_tracks(&running.chosen, &ctx.spare[g * n..(g + 1) * n]),
                    stats: ctx.stats.clone(),
                    reply: tx,
                }));
                ctx.clients.push(next);
                match rx.await {
                    Ok(Some(_)) => {
                        // The new rendition starts at a fresh keyframe, not with its cached
                        // GOP: a GOP sent at once would land on the slow link that made
                        // the viewer switch down. The old rendition plays on until the
                        // cut-over.
                        whep.fan.engine.send(EngineCommand::StartAtNextKeyframe { client: next });
                        for c in running.chosen.iter().filter(|c| c.kind == Kind::Video) {
                            target.control(Control::KeyframeRequest(c.track));
                        }
                        let Some(viewer) = held.remove(&sw.to) else { continue };
                        info!(session = %session.id, from = %sw.from, to = %sw.to, estimate_bps = sw.estimate, "WHEP viewer switches rendition on its bandwidth estimate");
                        session.switches.fetch_add(1, Ordering::Relaxed);
                        *session.rendition.lock().unwrap_or_else(|p| p.into_inner()) = sw.to.clone();
                        whep.metrics.webrtc_switches.inc();
                        pending = Some(Pending { client: next, generation: g, viewer, since: Instant::now() });
                    }
                    _ => {
                        warn!(session = %session.id, to = %sw.to, "WHEP rendition switch failed: the feed is gone");
                        whep.fan.engine.send(EngineCommand::RemoveClient { client: next });
                        ctx.clients.retain(|c| *c != next);
                        a.failed(&sw.from);
                    }
                }
            }
            l = &mut ladder_rx, if ladder_tx.is_none() && !ladder_done => {
                if let Ok((a, h)) = l {
                    if let Some(a) = &a {
                        let names: Vec<String> = a.rungs().iter().map(|r| format!("{}={}", r.name, r.bitrate)).collect();
                        info!(session = %session.id, ladder = ?names, "WHEP viewer adapted by REMB between renditions");
                    }
                    adapter = a;
                    held = h;
                }
                // Never polled again.
                ladder_done = true;
                if adapter.is_none() {
                    running.adaptive = false;
                }
            }
            _ = session.stop.notified() => {
                break session.why.lock().unwrap_or_else(|p| p.into_inner()).clone()
                    .unwrap_or_else(|| "stopped".to_string());
            }
            r = ended.changed() => {
                if r.is_err() || *ended.borrow() {
                    break "channel ended".to_string();
                }
            }
            _ = tick.tick() => {
                if let Some(since) = down_since {
                    if since.elapsed() >= timeout {
                        break format!("timed out: disconnected for {} s", since.elapsed().as_secs());
                    }
                }
                if !started && created.elapsed() >= timeout {
                    break format!("never connected within {} s", timeout.as_secs());
                }
            }
        }
    };
    for r in readers {
        r.abort();
    }
    *ctx.clients = vec![current]
        .into_iter()
        .chain(pending.map(|p| p.client))
        .collect();
    why
}

/// Hand one RTP packet of track `k` to webrtc-rs (which rewrites SSRC and payload type to
/// the negotiated ones, keeps it for NACKs and protects it), with its sequence number and
/// timestamp made continuous across rendition switches.
async fn write(track: &TrackLocalStaticRTP, mut packet: Bytes, k: usize, c: &mut Continuity) {
    match rtp::packet::Packet::unmarshal(&mut packet) {
        Ok(mut p) => {
            let Some((seq, ts)) = c.map(
                k,
                p.header.sequence_number,
                p.header.timestamp,
                Instant::now(),
            ) else {
                return;
            };
            p.header.sequence_number = seq;
            p.header.timestamp = ts;
            if let Err(e) = track.write_rtp(&p).await {
                debug!("WHEP write: {e}");
            }
        }
        Err(e) => debug!("WHEP: engine packet not RTP: {e}"),
    }
}

/// Where one sender's RTCP reader reports.
struct Feedback {
    keyframes: mpsc::UnboundedSender<u8>,
    estimates: mpsc::UnboundedSender<u64>,
    stats: Arc<ClientStats>,
    server: Arc<crate::fanout::ServerStats>,
}

/// Read the viewer's RTCP for one sender until it closes: PLI/FIR ask for a keyframe,
/// REMB estimates go to the adaptation, receiver reports and NACKs into the client's
/// statistics. A REMB names every stream it covers and so reaches each of their readers;
/// only the reader of the first one named takes it (one estimate, counted once).
async fn read_rtcp(sender: Arc<RTCRtpSender>, track: u8, kind: Kind, fb: Feedback) {
    use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
    use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
    use rtcp::receiver_report::ReceiverReport;
    use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
    let Feedback {
        keyframes,
        estimates,
        stats,
        server,
    } = fb;
    let own_ssrc = sender
        .get_parameters()
        .await
        .encodings
        .first()
        .map(|e| e.ssrc);
    while let Ok((packets, _)) = sender.read_rtcp().await {
        for p in packets {
            let any = p.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                if kind == Kind::Video {
                    stats.keyframe_asks.fetch_add(1, Ordering::Relaxed);
                    server.keyframe_asks.fetch_add(1, Ordering::Relaxed);
                    let _ = keyframes.send(track);
                }
            } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                let ours = own_ssrc.is_some() && remb.ssrcs.first() == own_ssrc.as_ref();
                if ours && remb.bitrate.is_finite() && remb.bitrate >= 1.0 {
                    let _ = estimates.send(remb.bitrate as u64);
                }
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                for r in &rr.reports {
                    stats.receiver_reports.fetch_add(1, Ordering::Relaxed);
                    server.receiver_reports.fetch_add(1, Ordering::Relaxed);
                    stats
                        .fraction_lost
                        .store(u32::from(r.fraction_lost), Ordering::Relaxed);
                    stats
                        .cumulative_lost
                        .store(i64::from(r.total_lost), Ordering::Relaxed);
                    stats.jitter.store(r.jitter, Ordering::Relaxed);
                    stats.jitter_clock_rate.store(
                        if kind == Kind::Video { 90_000 } else { 48_000 },
                        Ordering::Relaxed,
                    );
                }
            } else if let Some(n) = any.downcast_ref::<TransportLayerNack>() {
                let lost: u64 = n
                    .nacks
                    .iter()
                    .map(|p| 1 + u64::from(p.lost_packets.count_ones()))
                    .sum();
                stats.nacks_received.fetch_add(lost, Ordering::Relaxed);
                server.nacks_received.fetch_add(lost, Ordering::Relaxed);
            }
        }
    }
}
