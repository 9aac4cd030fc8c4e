//! One rendition of a live channel: its chain (transcode, encrypt) on a worker thread,
//! and the subscriptions it fans out to.
//!
//! The channel's source thread hands every frame to each active rendition's queue; the
//! worker runs it through the chain once and copies the result to every subscriber's
//! [`Outbox`]. Nothing here waits for a link: a subscriber whose queue is full is skipped
//! until the next keyframe (and that is logged), so a slow link delays neither the source
//! nor the other subscribers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};

use divisor_link::{
    ChannelId, ChannelState, Codec, ErrorCode, Frame, FrameFlags, LinkSender, Message, TrackInfo,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::chains::{ChainError, ChainFactory};
use crate::config::ChannelConfig;
use crate::pipeline::Chain;

/// Frames a subscription may have queued towards its link before it is cut back to the
/// next keyframe (a few seconds of a typical channel).
pub const SUBSCRIBER_QUEUE: usize = 256;
/// Frames a rendition worker may have waiting before the source skips to a keyframe.
pub const RENDITION_QUEUE: usize = 128;

/// Where one subscription's messages go: an unbounded queue drained by a task into the
/// link, with a count of the frames in it so the live path can apply its own bound
/// (control messages such as Status are never dropped).
pub struct Outbox {
    /// The subscription's channel id on its link.
    pub channel: ChannelId,
    /// The link's peer, for logs.
    pub peer: String,
    tx: mpsc::UnboundedSender<Message>,
    frames_queued: Arc<AtomicUsize>,
}

impl Outbox {
    /// A queue towards `sender` for subscription `channel`, and the task draining it.
    /// Must be called inside a tokio runtime.
    pub fn spawn(channel: ChannelId, peer: &str, sender: LinkSender) -> Outbox {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let frames_queued = Arc::new(AtomicUsize::new(0));
        let count = frames_queued.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let frame = matches!(msg, Message::Frame(_));
                let sent = sender.send(msg).await;
                if frame {
                    count.fetch_sub(1, Ordering::Relaxed);
                }
                if sent.is_err() {
                    break;
                }
            }
        });
        Outbox {
            channel,
            peer: peer.to_string(),
            tx,
            frames_queued,
        }
    }

    /// Queue `msg` (a control message, or a frame already admitted); false if the link
    /// side is gone.
    fn send(&self, msg: Message) -> bool {
        if matches!(msg, Message::Frame(_)) {
            self.frames_queued.fetch_add(1, Ordering::Relaxed);
        }
        self.tx.send(msg).is_ok()
    }

    fn frames_queued(&self) -> usize {
        self.frames_queued.load(Ordering::Relaxed)
    }
}

/// Where a subscriber starts: at a video keyframe, with audio from that keyframe's
/// presentation time on (so the first audio and video a client sees line up). After an
/// overflow it waits for a keyframe again.
#[derive(Debug, Clone, Default)]
pub struct StartGate {
    /// `None` while waiting for a keyframe; else the keyframe's pts in µs and whether
    /// audio has started.
    started: Option<(i64, bool)>,
}

impl StartGate {
    /// Whether `frame` may go to the subscriber; `tracks` are the announced ones.
    pub fn admit(&mut self, frame: &Frame, tracks: &[TrackInfo]) -> bool {
        let has_video = tracks.iter().any(|t| t.codec.is_video());
        let clock = tracks
            .iter()
            .find(|t| t.track == frame.track)
            .map_or(90_000, |t| t.clock_rate.max(1));
        let pts_us = (i128::from(frame.pts) * 1_000_000 / i128::from(clock)) as i64;
        match &mut self.started {
            None => {
                if !has_video
                    || (frame.codec.is_video() && frame.flags.contains(FrameFlags::KEYFRAME))
                {
                    self.started = Some((pts_us, !has_video));
                    true
                } else {
                    false
                }
            }
            Some((from_us, audio_started)) => {
                if frame.codec.is_video() || *audio_started {
                    return true;
                }
                if pts_us < *from_us {
                    return false;
                }
                *audio_started = true;
                true
            }
        }
    }

    /// Wait for the next keyframe again.
    pub fn restart(&mut self) {
        self.started = None;
    }

    /// Whether frames are flowing.
    pub fn started(&self) -> bool {
        self.started.is_some()
    }
}

struct Subscriber {
    id: u64,
    outbox: Outbox,
    gate: StartGate,
    /// Frames skipped since the last overflow (0 when none).
    dropped: u64,
    frames_sent: u64,
}

/// Sent to the worker by the channel's source thread.
pub(super) enum Input {
    Frame(Frame),
    /// The input (re)opened with these tracks.
    Tracks(Vec<TrackInfo>),
    /// The input changed state.
    Status(ChannelState, String),
}

struct State {
    subscribers: Vec<Subscriber>,
    /// The tracks the chain outputs (what subscribers are announced); `None` until the
    /// input has opened.
    out_tracks: Option<Vec<TrackInfo>>,
    status: (ChannelState, String),
    /// The latest content keys (current and previous), for subscribers that join later.
    keys: Vec<Message>,
    keyframe_requests: Vec<u8>,
    /// Why the chain cannot run on this input, if it cannot.
    failed: Option<String>,
    next_id: u64,
}

/// A rendition of a live channel, shared by its worker and the channel's hub.
pub(super) struct Rendition {
    pub name: String,
    channel: String,
    state: Mutex<State>,
    /// Frames waiting in the worker's queue.
    pub queued: AtomicUsize,
}

/// What failed when a subscription could not start.
pub(super) struct Refused(pub String);

impl Rendition {
    pub fn new(channel: &str, name: &str, status: (ChannelState, String)) -> Rendition {
        Rendition {
            name: name.to_string(),
            channel: channel.to_string(),
            state: Mutex::new(State {
                subscribers: Vec::new(),
                out_tracks: None,
                status,
                keys: Vec::new(),
                keyframe_requests: Vec::new(),
                failed: None,
                next_id: 1,
            }),
            queued: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record the chain's output tracks (set before the worker starts when the input is
    /// already open).
    pub fn set_out_tracks(&self, tracks: Vec<TrackInfo>) {
        self.lock().out_tracks = Some(tracks);
    }

    /// Add a subscriber: it is announced now if the tracks are known (else when the input
    /// opens), gets the current content keys and the input's state if not live, and starts
    /// at the next keyframe.
    pub fn add(&self, outbox: Outbox) -> Result<u64, Refused> {
        let mut st = self.lock();
        if let Some(why) = &st.failed {
            return Err(Refused(why.clone()));
        }
        let id = st.next_id;
        st.next_id += 1;
        let channel = outbox.channel;
        match &st.out_tracks {
            Some(tracks) => {
                // Keys first: the protocol unit must know the channel is encrypted when the
                // Announce arrives (it answers DESCRIBE from it).
                for key in &st.keys {
                    outbox.send(key.clone().with_channel(channel));
                }
                outbox.send(Message::Announce {
                    channel,
                    duration_ms: None,
                    tracks: tracks.clone(),
                });
                if st.status.0 != ChannelState::Live {
                    outbox.send(status(channel, &st.status));
                }
                let video: Vec<u8> = tracks
                    .iter()
                    .filter(|t| t.codec.is_video())
                    .map(|t| t.track)
                    .collect();
                st.keyframe_requests.extend(video);
            }
            None => {
                outbox.send(status(channel, &st.status));
            }
        }
        info!(
            channel = %self.channel,
            rendition = %self.name,
            peer = %outbox.peer,
            link_channel = channel,
            "live subscription"
        );
        st.subscribers.push(Subscriber {
            id,
            outbox,
            gate: StartGate::default(),
            dropped: 0,
            frames_sent: 0,
        });
        Ok(id)
    }

    /// Remove subscriber `id`; returns how many remain.
    pub fn remove(&self, id: u64) -> usize {
        let mut st = self.lock();
        if let Some(i) = st.subscribers.iter().position(|s| s.id == id) {
            let s = st.subscribers.remove(i);
            info!(
                channel = %self.channel,
                rendition = %self.name,
                peer = %s.outbox.peer,
                link_channel = s.outbox.channel,
                frames_sent = s.frames_sent,
                "live subscription closed"
            );
        }
        st.subscribers.len()
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// A client of subscriber `id` asked for a keyframe of `track`.
    pub fn request_keyframe(&self, track: u8) {
        self.lock().keyframe_requests.push(track);
    }

    /// Send `state` to every subscriber (never dropped).
    fn status(&self, state: ChannelState, detail: String) {
        let mut st = self.lock();
        st.status = (state, detail);
        let msg_status = st.status.clone();
        st.subscribers
            .retain(|s| s.outbox.send(status(s.outbox.channel, &msg_status)));
    }

    /// Fan the chain's output out to the subscribers.
    pub(super) fn deliver(&self, out: &mut Vec<Message>) {
        let mut st = self.lock();
        let State {
            subscribers,
            out_tracks,
            keys,
            ..
        } = &mut *st;
        let tracks: &[TrackInfo] = out_tracks.as_deref().unwrap_or(&[]);
        for msg in out.drain(..) {
            match msg {
                Message::Frame(frame) => {
                    subscribers.retain_mut(|s| self.offer(s, &frame, tracks));
                }
                key @ Message::ContentKey { .. } => {
                    keys.push(key.clone());
                    if keys.len() > 2 {
                        keys.remove(0);
                    }
                    subscribers
                        .retain(|s| s.outbox.send(key.clone().with_channel(s.outbox.channel)));
                }
                other => {
                    subscribers
                        .retain(|s| s.outbox.send(other.clone().with_channel(s.outbox.channel)));
                }
            }
        }
    }

    /// Give `frame` to one subscriber, applying the start gate and the queue bound;
    /// false if its link is gone.
    fn offer(&self, s: &mut Subscriber, frame: &Frame, tracks: &[TrackInfo]) -> bool {
        if s.gate.started() && s.outbox.frames_queued() >= SUBSCRIBER_QUEUE {
            warn!(
                channel = %self.channel,
                rendition = %self.name,
                peer = %s.outbox.peer,
                link_channel = s.outbox.channel,
                queued = SUBSCRIBER_QUEUE,
                "live subscription cannot keep up: dropping frames until the next keyframe"
            );
            s.gate.restart();
            s.dropped = 0;
        }
        let was_waiting = !s.gate.started();
        if !s.gate.admit(frame, tracks) {
            s.dropped += 1;
            return true;
        }
        if was_waiting && s.dropped > 0 && s.frames_sent > 0 {
            info!(
                channel = %self.channel,
                rendition = %self.name,
                peer = %s.outbox.peer,
                link_channel = s.outbox.channel,
                dropped = s.dropped,
                "live subscription resumed at a keyframe"
            );
        }
        if was_waiting {
            s.dropped = 0;
        }
        let mut f = frame.clone();
        f.channel = s.outbox.channel;
        s.frames_sent += 1;
        s.outbox.send(Message::Frame(f))
    }

    /// The chain cannot run: tell every subscriber and refuse new ones.
    fn fail(&self, why: String, code: ErrorCode) {
        warn!(channel = %self.channel, rendition = %self.name, "{why}");
        let mut st = self.lock();
        for s in st.subscribers.drain(..) {
            s.outbox.send(Message::Error {
                channel: s.outbox.channel,
                code,
                message: why.clone(),
            });
        }
        st.failed = Some(why);
        st.out_tracks = None;
    }

    /// New output tracks: (re)announce to every subscriber if they changed.
    fn announce(&self, tracks: Vec<TrackInfo>) {
        let mut st = self.lock();
        st.failed = None;
        let changed = st
            .out_tracks
            .as_ref()
            .is_none_or(|old| !same_layout(old, &tracks));
        st.out_tracks = Some(tracks.clone());
        if !changed {
            return;
        }
        for s in &mut st.subscribers {
            s.gate.restart();
        }
        let status = st.status.clone();
        st.subscribers.retain(|s| {
            let ch = s.outbox.channel;
            let ok = s.outbox.send(Message::Announce {
                channel: ch,
                duration_ms: None,
                tracks: tracks.clone(),
            });
            ok && (status.0 != ChannelState::Live || s.outbox.send(self::status(ch, &status)))
        });
    }

    fn take_keyframe_requests(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().keyframe_requests)
    }
}

fn status(channel: ChannelId, (state, detail): &(ChannelState, String)) -> Message {
    Message::Status {
        channel,
        state: *state,
        detail: detail.clone(),
    }
}

/// Whether two track lists would be announced alike (codec parameters may differ: H.264
/// repeats them in band).
fn same_layout(a: &[TrackInfo], b: &[TrackInfo]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.track == y.track
                && x.codec == y.codec
                && x.clock_rate == y.clock_rate
                && (x.codec != Codec::Aac || x.params == y.params)
                && x.channels == y.channels
        })
}

/// The worker: owns the chain, runs until the hub drops the queue's sender.
pub(super) struct Worker {
    pub rendition: Arc<Rendition>,
    pub factory: Arc<ChainFactory>,
    pub config: ChannelConfig,
    pub chain: Option<Chain>,
    pub input_tracks: Option<Vec<TrackInfo>>,
}

impl Worker {
    pub fn run(mut self, rx: Receiver<Input>) {
        let mut out = Vec::new();
        let mut errors = 0u64;
        while let Ok(input) = rx.recv() {
            match input {
                Input::Frame(frame) => {
                    self.rendition.queued.fetch_sub(1, Ordering::Relaxed);
                    let Some(chain) = &mut self.chain else {
                        continue;
                    };
                    for track in self.rendition.take_keyframe_requests() {
                        chain.request_keyframe(track);
                    }
                    let mut result = Ok(());
                    let has_video = self
                        .input_tracks
                        .as_ref()
                        .is_some_and(|t| t.iter().any(|t| t.codec.is_video()));
                    if starts_new_run(&frame, has_video) && !chain.is_empty() {
                        result = chain.flush(&mut out);
                    }
                    let result = result.and_then(|()| chain.push(frame, &mut out));
                    if let Err(e) = result {
                        errors += 1;
                        if errors == 1 || errors.is_power_of_two() {
                            warn!(
                                channel = %self.config.name,
                                rendition = %self.rendition.name,
                                errors,
                                "frame dropped by the chain: {e}"
                            );
                        }
                    }
                    self.rendition.deliver(&mut out);
                }
                Input::Tracks(tracks) => self.tracks(tracks),
                Input::Status(state, detail) => self.rendition.status(state, detail),
            }
        }
        if let Some(chain) = &mut self.chain {
            let _ = chain.flush(&mut out);
            self.rendition.deliver(&mut out);
        }
        debug!(channel = %self.config.name, rendition = %self.rendition.name, "rendition worker ends");
    }

    fn tracks(&mut self, tracks: Vec<TrackInfo>) {
        let keep = self.chain.is_some()
            && self
                .input_tracks
                .as_ref()
                .is_some_and(|old| same_layout(old, &tracks));
        if keep {
            if let Some(chain) = &mut self.chain {
                if chain.is_empty() {
                    // Passthrough: announce the new parameters to later subscribers.
                    self.rendition.set_out_tracks(tracks.clone());
                }
            }
            self.input_tracks = Some(tracks);
            return;
        }
        self.input_tracks = Some(tracks.clone());
        match build(&self.factory, &self.config, &self.rendition.name, &tracks) {
            Ok((mut chain, out)) => {
                let mut prelude = Vec::new();
                chain.prelude(&mut prelude);
                self.rendition.deliver(&mut prelude);
                self.chain = Some(chain);
                self.rendition.announce(out);
            }
            Err((code, why)) => {
                self.chain = None;
                self.rendition.fail(why, code);
            }
        }
    }
}

/// Whether `frame` begins a new input segment for the chain, which is then flushed first.
/// The timeline flags the first frame of *every* track of a segment with DISCONTINUITY,
/// but the chain must be flushed once per segment, at the video: a second flush at the
/// audio's flag (which follows a few video frames later) would end the run the video
/// keyframe had just started, and the transcoder would drop the video up to the next
/// keyframe (a GOP lost at every loop point). Audio-only inputs flush at their audio.
fn starts_new_run(frame: &Frame, input_has_video: bool) -> bool {
    frame.flags.contains(FrameFlags::DISCONTINUITY) && (frame.codec.is_video() || !input_has_video)
}

/// The chain of `rendition` for an input with `tracks`, and what it outputs.
pub(super) fn build(
    factory: &ChainFactory,
    config: &ChannelConfig,
    rendition: &str,
    tracks: &[TrackInfo],
) -> Result<(Chain, Vec<TrackInfo>), (ErrorCode, String)> {
    let refuse = |e: ChainError| {
        let code = match e {
            ChainError::NoSuchRendition(_) => ErrorCode::NoSuchRendition,
            _ => ErrorCode::UnsupportedMedia,
        };
        (
            code,
            format!(
                "live channel {:?} rendition {rendition:?}: {e}",
                config.name
            ),
        )
    };
    let mut chain = factory
        .live_chain(config, rendition, tracks)
        .map_err(refuse)?;
    let out = chain
        .tracks(tracks)
        .map_err(|e| refuse(ChainError::Stage(e)))?;
    Ok((chain, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn tracks() -> Vec<TrackInfo> {
        vec![
            TrackInfo {
                track: 0,
                codec: Codec::H264,
                clock_rate: 90_000,
                width: 320,
                height: 240,
                sample_rate: 0,
                channels: 0,
                bitrate: 0,
                params: vec![],
            },
            TrackInfo {
                track: 1,
                codec: Codec::Aac,
                clock_rate: 48_000,
                width: 0,
                height: 0,
                sample_rate: 48_000,
                channels: 1,
                bitrate: 0,
                params: vec![],
            },
        ]
    }

    fn f(track: u8, pts: i64, key: bool) -> Frame {
        Frame {
            channel: 0,
            track,
            codec: if track == 0 { Codec::H264 } else { Codec::Aac },
            flags: if key {
                FrameFlags::KEYFRAME
            } else {
                FrameFlags::empty()
            },
            pts,
            dts: pts,
            duration: 0,
            data: Bytes::new(),
        }
    }

    #[test]
    fn a_segment_flushes_the_chain_once_at_its_video() {
        let mut video = f(0, 0, true);
        let mut audio = f(1, 0, false);
        assert!(!starts_new_run(&video, true), "no discontinuity, no flush");
        video.flags.insert(FrameFlags::DISCONTINUITY);
        audio.flags.insert(FrameFlags::DISCONTINUITY);
        assert!(starts_new_run(&video, true));
        assert!(
            !starts_new_run(&audio, true),
            "the audio's flag must not end the new run"
        );
        assert!(
            starts_new_run(&audio, false),
            "audio-only inputs flush at the audio"
        );
    }

    #[test]
    fn gate_starts_at_a_keyframe_with_audio_from_its_time() {
        let t = tracks();
        let mut g = StartGate::default();
        assert!(!g.admit(&f(1, 0, false), &t));
        assert!(!g.admit(&f(0, 3600, false), &t));
        // Keyframe at 1 s.
        assert!(g.admit(&f(0, 90_000, true), &t));
        // Audio before 1 s is dropped, from 1 s on passes.
        assert!(!g.admit(&f(1, 47_000, false), &t));
        assert!(g.admit(&f(1, 48_000, false), &t));
        assert!(
            g.admit(&f(1, 47_000, false), &t),
            "once started, audio flows"
        );
        assert!(g.admit(&f(0, 93_600, false), &t));
        g.restart();
        assert!(!g.admit(&f(0, 97_200, false), &t));
    }
}
