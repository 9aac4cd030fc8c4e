//! Live channels: one subscription to the encoder unit per (channel, rendition) while it
//! has viewers, fanned out to all of them.
//!
//! - [`LiveHub`]: the table of subscribed channels. [`LiveHub::acquire`] subscribes on
//!   first use and returns a [`Viewer`]; when the last viewer is dropped the subscription
//!   lingers a little (a client's DESCRIBE-then-SETUP, a quick reconnect) and is closed.
//! - each subscribed channel has a task that moves its frames into the fan-out engine,
//!   keeps its input state (live / stalled / ended) for the status endpoint, keeps its
//!   content keys for edge encryption, and sends (rate-limited) keyframe requests.
//! - [`session`]: the RTSP session of one live viewer.

pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use divisor_link::{ChannelState, Message, TrackInfo};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::content::EdgeCrypto;
use crate::fanout::feedback::KeyframeLimiter;
use crate::fanout::{Command as EngineCommand, FanOut, FeedId};
use crate::upstream::{Channel, ChannelEvent, ContentKeys, Upstream, UpstreamError};

/// Least time between two keyframe requests for one track of a channel.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// What a viewer's session asks of its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A viewer needs a keyframe of this link track (PLI/FIR, or a join with no GOP cached).
    KeyframeRequest(u8),
    /// No viewers left: unsubscribe.
    Close,
}

/// A live channel's input as the encoder unit reports it, for the status endpoint.
#[derive(Debug, Clone)]
pub struct LiveStatus {
    pub channel: String,
    pub rendition: String,
    /// `None` until the encoder reported a state (frames flowing means live).
    pub state: Option<ChannelState>,
    pub detail: String,
    /// When `state` last changed.
    pub since: SystemTime,
    pub viewers: usize,
    pub frames: u64,
    /// Content keys held (encrypted channels).
    pub keys: usize,
}

/// One subscribed channel rendition.
pub struct LiveChannel {
    pub name: String,
    pub rendition: String,
    /// Its feed in the fan-out engine.
    pub feed: FeedId,
    /// The announced tracks.
    pub tracks: Vec<TrackInfo>,
    /// Per track (in `tracks` order): the SSRC of its shared stream, which plain-RTP
    /// viewers of the full tier announce at SETUP so the fan-out can send them the
    /// rendition's pre-built packets unchanged.
    pub shared_ssrcs: Vec<u32>,
    /// Content keys, newest last (for edge encryption).
    pub keys: ContentKeys,
    state: Mutex<(Option<ChannelState>, String, SystemTime)>,
    frames: AtomicU64,
    viewers: AtomicUsize,
    control: mpsc::UnboundedSender<Control>,
    ended: watch::Receiver<bool>,
}

impl LiveChannel {
    /// The SSRC of `track`'s shared stream.
    pub fn shared_ssrc(&self, track: u8) -> Option<u32> {
        let i = self.tracks.iter().position(|t| t.track == track)?;
        self.shared_ssrcs.get(i).copied()
    }

    /// Ask the channel for something.
    pub fn control(&self, c: Control) {
        let _ = self.control.send(c);
    }

    /// Whether the subscription ended (link down, channel removed, encoder error).
    pub fn is_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Resolves when the subscription ends.
    pub fn ended(&self) -> watch::Receiver<bool> {
        self.ended.clone()
    }

    pub fn status(&self) -> LiveStatus {
        let (state, detail, since) = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        LiveStatus {
            channel: self.name.clone(),
            rendition: self.rendition.clone(),
            state,
            detail,
            since,
            viewers: self.viewers.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            keys: self.keys.lock().map(|k| k.len()).unwrap_or(0),
        }
    }

    fn set_state(&self, state: ChannelState, detail: String) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 != Some(state) {
            s.2 = SystemTime::now();
        }
        s.0 = Some(state);
        s.1 = detail;
    }
}

type Key = (String, String);

/// The subscribed live channels.
pub struct LiveHub {
    upstream: Upstream,
    fan: Arc<FanOut>,
    channels: Mutex<HashMap<Key, Arc<LiveChannel>>>,
    /// Serialises subscriptions so two first viewers do not subscribe twice.
    subscribing: tokio::sync::Mutex<()>,
    linger: Duration,
    /// How long a channel whose source went away holds its viewers (see
    /// [`LiveHub::with_resume`]).
    resume: Duration,
}

/// The default of [`LiveHub::with_resume`]: long enough for an encoder unit to restart
/// (a few seconds) or a cut link to heal, short enough that a viewer whose channel is
/// really gone is told within half a minute.
pub const DEFAULT_RESUME: Duration = Duration::from_secs(30);

/// While a channel's source is away: how often it looks for the link, and the first and
/// longest wait after a failed subscription.
const RESUBSCRIBE_POLL: Duration = Duration::from_millis(50);
const RESUBSCRIBE_FIRST: Duration = Duration::from_millis(200);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(1);

/// A viewer's hold on a channel; dropping it may end the subscription (after the linger).
pub struct Viewer {
    pub channel: Arc<LiveChannel>,
    hub: Arc<LiveHub>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        if self.channel.viewers.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let hub = self.hub.clone();
        let channel = self.channel.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            channel.control(Control::Close);
            return;
        };
        rt.spawn(async move {
            tokio::time::sleep(hub.linger).await;
            if channel.viewers.load(Ordering::Acquire) == 0 && hub.forget(&channel) {
                info!(channel = %channel.name, rendition = %channel.rendition, "no viewers left; unsubscribing");
                channel.control(Control::Close);
            }
        });
    }
}

impl LiveHub {
    /// A hub subscribing through `upstream` and sending through `fan`; a channel without
    /// viewers stays subscribed for `linger`.
    pub fn new(upstream: Upstream, fan: Arc<FanOut>, linger: Duration) -> Arc<LiveHub> {
        Self::with_resume(upstream, fan, linger, DEFAULT_RESUME)
    }

    /// As [`LiveHub::new`]; a channel whose source goes away (link down, encoder unit
    /// restarting) keeps its viewers for up to `resume` while it subscribes again, then
    /// ends: its viewers are sent RTCP BYE and their connections close.
    pub fn with_resume(
        upstream: Upstream,
        fan: Arc<FanOut>,
        linger: Duration,
        resume: Duration,
    ) -> Arc<LiveHub> {
        Arc::new(LiveHub {
            upstream,
            fan,
            channels: Mutex::new(HashMap::new()),
            subscribing: tokio::sync::Mutex::new(()),
            linger,
            resume,
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<LiveChannel>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remove `channel` from the table if it is still the one held. True if removed.
    fn forget(&self, channel: &Arc<LiveChannel>) -> bool {
        let key = (channel.name.clone(), channel.rendition.clone());
        let mut map = self.map();
        match map.get(&key) {
            Some(c) if Arc::ptr_eq(c, channel) => {
                map.remove(&key);
                true
            }
            _ => false,
        }
    }

    fn existing(self: &Arc<Self>, key: &Key) -> Option<Viewer> {
        let map = self.map();
        let c = map.get(key)?;
        if c.is_ended() {
            return None;
        }
        c.viewers.fetch_add(1, Ordering::AcqRel);
        Some(Viewer {
            channel: c.clone(),
            hub: self.clone(),
        })
    }

    /// A viewer of `name` in `rendition`, subscribing on first use.
    pub async fn acquire(
        self: &Arc<Self>,
        name: &str,
        rendition: &str,
    ) -> Result<Viewer, UpstreamError> {
        let key = (name.to_string(), rendition.to_string());
        if let Some(v) = self.existing(&key) {
            return Ok(v);
        }
        let _guard = self.subscribing.lock().await;
        if let Some(v) = self.existing(&key) {
            return Ok(v);
        }
        let mut upstream_channel = self.upstream.subscribe(name, rendition).await?;
        let Some(events) = upstream_channel.take_events() else {
            return Err(UpstreamError::Protocol("channel without events".into()));
        };
        for t in &upstream_channel.tracks {
            if let Err(e) = crate::packetize::Packetizer::new(t) {
                return Err(UpstreamError::Refused {
                    code: divisor_link::ErrorCode::UnsupportedMedia,
                    message: format!("live channel {name}: track {}: {e}", t.track),
                });
            }
        }
        let feed = self.fan.next_id();
        let shared_ssrcs: Vec<u32> = upstream_channel
            .tracks
            .iter()
            .map(|_| rand::random())
            .collect();
        self.fan.engine.send(EngineCommand::AddLive {
            feed,
            tracks: upstream_channel.tracks.clone(),
            shared_ssrcs: shared_ssrcs.clone(),
            name: format!("{name}/{rendition}"),
        });
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (ended_tx, ended_rx) = watch::channel(false);
        let channel = Arc::new(LiveChannel {
            name: name.to_string(),
            rendition: rendition.to_string(),
            feed,
            tracks: upstream_channel.tracks.clone(),
            shared_ssrcs,
            keys: upstream_channel.keys.clone(),
            state: Mutex::new((None, String::new(), SystemTime::now())),
            frames: AtomicU64::new(0),
            viewers: AtomicUsize::new(1),
            control: control_tx,
            ended: ended_rx,
        });
        info!(
            channel = name,
            rendition,
            feed,
            tracks = channel.tracks.len(),
            "live channel subscribed"
        );
        self.map().insert(key, channel.clone());
        tokio::spawn(run_channel(
            self.clone(),
            channel.clone(),
            upstream_channel,
            events,
            control_rx,
            ended_tx,
        ));
        Ok(Viewer {
            channel,
            hub: self.clone(),
        })
    }

    /// The state of every subscribed channel.
    pub fn status(&self) -> Vec<LiveStatus> {
        let mut v: Vec<LiveStatus> = self.map().values().map(|c| c.status()).collect();
        v.sort_by(|a, b| (&a.channel, &a.rendition).cmp(&(&b.channel, &b.rendition)));
        v
    }
}

/// Move one channel's frames into the engine until it ends or is closed. A lost link
/// stalls the channel rather than ending it: the viewers stay, and the channel subscribes
/// again when the link returns (see [`resubscribe`]).
async fn run_channel(
    hub: Arc<LiveHub>,
    channel: Arc<LiveChannel>,
    mut upstream: Channel,
    mut events: mpsc::UnboundedReceiver<ChannelEvent>,
    mut control: mpsc::UnboundedReceiver<Control>,
    ended: watch::Sender<bool>,
) {
    let mut limiter = KeyframeLimiter::new(KEYFRAME_INTERVAL);
    let name = format!("{}/{}", channel.name, channel.rendition);
    // Edge encryption happens here, as frames arrive in link order, so each frame left to
    // the edge is encrypted under the key the encoder announced last before it.
    let mut edge = EdgeCrypto::new();
    add_keys(&mut edge, &upstream, &name);
    let mut edge_failures: u64 = 0;
    let reason = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ChannelEvent::Message(Message::Frame(frame))) => {
                    channel.frames.fetch_add(1, Ordering::Relaxed);
                    let frame = match edge.prepare(frame) {
                        Ok(f) => f,
                        Err(e) => {
                            edge_failures += 1;
                            if edge_failures.is_power_of_two() {
                                warn!(channel = %name, dropped = edge_failures, "frame dropped: cannot encrypt at the edge: {e}");
                            }
                            continue;
                        }
                    };
                    hub.fan.engine.send(EngineCommand::LiveFrame { feed: channel.feed, frame });
                }
                Some(ChannelEvent::Message(Message::Status { state, detail, .. })) => {
                    match state {
                        ChannelState::Live => info!(channel = %name, "live input flowing: {detail}"),
                        ChannelState::Stalled => warn!(channel = %name, "live input stalled: {detail}"),
                        ChannelState::Ended => info!(channel = %name, "live channel ended: {detail}"),
                    }
                    channel.set_state(state, detail.clone());
                    if state == ChannelState::Ended {
                        break format!("stream ends: {detail}");
                    }
                }
                Some(ChannelEvent::Message(Message::ContentKey { key_id, cipher, key, .. })) => {
                    debug!(channel = %name, key_id, "content key");
                    if let Err(e) = edge.add_key(key_id, cipher, &key) {
                        warn!(channel = %name, key_id, "content key ignored: {e}");
                    }
                    upstream.add_key(crate::upstream::ContentKey { key_id, cipher, key });
                }
                Some(ChannelEvent::Message(Message::Error { code, message, .. })) => {
                    warn!(channel = %name, ?code, "encoder unit ends the live channel: {message}");
                    break format!("stream ends: {message}");
                }
                Some(ChannelEvent::Message(other)) => {
                    debug!(channel = %name, "ignored from encoder: {other:?}");
                }
                Some(ChannelEvent::LinkDown) | None => {
                    let viewers = channel.viewers.load(Ordering::Relaxed);
                    warn!(channel = %name, viewers, resume_secs = hub.resume.as_secs(), "link to the encoder unit lost; the viewers wait while the channel subscribes again");
                    channel.set_state(ChannelState::Stalled, "link to the encoder unit lost; subscribing again".into());
                    match resubscribe(&hub, &channel, &mut control).await {
                        Ok(mut again) => {
                            let Some(new_events) = again.take_events() else {
                                break "stream ends: channel without events".to_string();
                            };
                            info!(channel = %name, "live channel subscribed again; the viewers resume on their sessions");
                            channel.set_state(ChannelState::Live, "subscribed again after the link returned".into());
                            // The key list stays the one the status and the sessions read.
                            let fresh = std::mem::replace(&mut again.keys, channel.keys.clone());
                            for k in fresh.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                                again.add_key(k.clone());
                            }
                            add_keys(&mut edge, &again, &name);
                            upstream = again;
                            events = new_events;
                        }
                        Err(Some(why)) => break why,
                        Err(None) => break "no viewers left".to_string(),
                    }
                }
            },
            c = control.recv() => match c {
                Some(Control::KeyframeRequest(track)) => {
                    if limiter.allow(track, Instant::now()) {
                        hub.fan.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                        let _ = upstream.send(Message::KeyframeRequest { channel: upstream.id, track }).await;
                    }
                }
                Some(Control::Close) | None => break "no viewers left".to_string(),
            },
        }
    };
    // The engine tells every viewer (BYE) before the sessions see the end and go: its
    // commands run in order, so no session's removal overtakes the BYE.
    hub.fan.engine.send(EngineCommand::EndLive {
        feed: channel.feed,
        reason: reason.clone(),
    });
    channel.set_state(ChannelState::Ended, reason);
    let _ = ended.send(true);
    hub.forget(&channel);
    drop(upstream); // sends Close to the encoder unit
}

/// Give `edge` the content keys `upstream` holds.
fn add_keys(edge: &mut EdgeCrypto, upstream: &Channel, name: &str) {
    for k in upstream
        .keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        if let Err(e) = edge.add_key(k.key_id, k.cipher, &k.key) {
            warn!(channel = %name, key_id = k.key_id, "content key ignored: {e}");
        }
    }
}

/// Subscribe to `channel` again after its link went down, until [`LiveHub::resume`]
/// runs out. `Err(None)`: the last viewer left meanwhile; `Err(Some(why))`: the channel
/// ends. It must come back with the media it had (the viewers' SDP described it);
/// frames then continue on the same feed, whose timeline re-maps the new source's
/// timestamps, so every viewer's RTP clock and sequence numbers run on.
async fn resubscribe(
    hub: &LiveHub,
    channel: &LiveChannel,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> Result<Channel, Option<String>> {
    let deadline = tokio::time::Instant::now() + hub.resume;
    let mut last_error = String::from("no link to the encoder unit");
    // Look for the link every poll; after a failed attempt wait longer (backoff).
    let mut not_before = tokio::time::Instant::now();
    let mut backoff = RESUBSCRIBE_FIRST;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Some(format!(
                "stream ends: its source did not return within {} s ({last_error})",
                hub.resume.as_secs()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(RESUBSCRIBE_POLL.min(deadline - now)) => {}
            c = control.recv() => match c {
                Some(Control::KeyframeRequest(_)) => continue,
                Some(Control::Close) | None => return Err(None),
            },
        }
        let now = tokio::time::Instant::now();
        if !hub.upstream.is_up() || now < not_before || now >= deadline {
            continue;
        }
        let attempt = hub.upstream.subscribe(&channel.name, &channel.rendition);
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(again)) if same_media(&again.tracks, &channel.tracks) => return Ok(again),
            Ok(Ok(_)) => {
                return Err(Some(
                    "stream ends: its source returned with other media".to_string(),
                ))
            }
            Ok(Err(e)) => {
                debug!(channel = %channel.name, "subscribing again failed: {e}");
                last_error = e.to_string();
            }
            Err(_) => {}
        }
        not_before = tokio::time::Instant::now() + backoff;
        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
    }
}

/// Whether two announces describe the same media (the bit rate estimate may differ).
fn same_media(a: &[TrackInfo], b: &[TrackInfo]) -> bool {
    let shape = |t: &TrackInfo| TrackInfo {
        bitrate: 0,
        ..t.clone()
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| shape(x) == shape(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use divisor_link::Codec;

    fn track(codec: Codec, bitrate: u32) -> TrackInfo {
        TrackInfo {
            track: 0,
            codec,
            clock_rate: 90_000,
            width: 640,
            height: 360,
            sample_rate: 0,
            channels: 0,
            bitrate,
            params: vec![Bytes::from_static(b"sps")],
        }
    }

    #[test]
    fn a_source_back_with_the_same_media_resumes_and_other_media_does_not() {
        let a = [track(Codec::H264, 1_000_000)];
        assert!(same_media(&a, &[track(Codec::H264, 900_000)]));
        let mut other = track(Codec::H264, 1_000_000);
        other.params = vec![Bytes::from_static(b"other sps")];
        assert!(!same_media(&a, &[other]));
        assert!(!same_media(&a, &[]));
    }
}
