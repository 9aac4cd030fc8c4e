//! One live channel: its hub (the renditions being served and their subscribers) and the
//! thread that reads its input, puts frames on the channel timeline, paces them and hands
//! them to the hub.
//!
//! The hub outlives its source thread: when the configuration changes only the source, a
//! new thread takes over the same hub, timeline and epoch, and subscribers see an input
//! change (DISCONTINUITY), not an end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use divisor_link::{ChannelState, Frame, FrameFlags, TrackInfo};
use tracing::{debug, info, warn};

use super::rendition::{self, Input as WorkerInput, Outbox, Rendition, Worker, RENDITION_QUEUE};
use super::source::{Input, SourceSpec};
use super::timeline::{Mapped, Timeline};
use crate::chains::ChainFactory;
use crate::config::ChannelConfig;
use crate::storage::Library;

/// How far behind its wall-clock media time a looped file may start its next pass and
/// still continue exactly where the last one ended (otherwise it jumps to now).
const LOOP_SLACK_US: i64 = 500_000;
/// Longest sleep between checks of the stop flag.
const TICK: Duration = Duration::from_millis(50);

struct Active {
    rendition: Arc<Rendition>,
    tx: Sender<WorkerInput>,
    /// Skipping source frames until the next keyframe (the worker fell behind).
    skipping: bool,
    skipped: u64,
}

struct HubState {
    renditions: HashMap<String, Active>,
    tracks: Option<Vec<TrackInfo>>,
    status: (ChannelState, String),
    ended: bool,
}

/// What subscribers of a channel share. See the module documentation.
pub(super) struct Hub {
    pub name: String,
    pub config: ChannelConfig,
    factory: Arc<ChainFactory>,
    /// Wall-clock time of the channel timeline's 0.
    epoch: Instant,
    state: Mutex<HubState>,
    /// The timeline, handed from one source thread to the next.
    timeline: Mutex<Option<Timeline>>,
}

impl Hub {
    pub fn new(config: ChannelConfig, factory: Arc<ChainFactory>) -> Hub {
        Hub {
            name: config.name.clone(),
            config,
            factory,
            epoch: Instant::now(),
            state: Mutex::new(HubState {
                renditions: HashMap::new(),
                tracks: None,
                status: (ChannelState::Stalled, "waiting for the input".into()),
                ended: false,
            }),
            timeline: Mutex::new(Some(Timeline::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_us(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    /// Subscribe `outbox` to `rendition` (already resolved). Starts the rendition's worker
    /// if it is the first subscriber. Returns the subscriber id.
    pub fn subscribe(&self, rendition: &str, outbox: Outbox) -> Result<u64, String> {
        let mut st = self.lock();
        if st.ended {
            return Err(format!("live channel {:?} was removed", self.name));
        }
        if !st.renditions.contains_key(rendition) {
            let r = Arc::new(Rendition::new(&self.name, rendition, st.status.clone()));
            let mut chain = None;
            if let Some(tracks) = &st.tracks {
                let (mut c, out) = rendition::build(&self.factory, &self.config, rendition, tracks)
                    .map_err(|(_, why)| why)?;
                let mut prelude = Vec::new();
                c.prelude(&mut prelude);
                r.deliver(&mut prelude);
                r.set_out_tracks(out);
                chain = Some(c);
            }
            let (tx, rx) = mpsc::channel();
            let worker = Worker {
                rendition: r.clone(),
                factory: self.factory.clone(),
                config: self.config.clone(),
                chain,
                input_tracks: st.tracks.clone(),
            };
            std::thread::Builder::new()
                .name(format!("live-{}-{rendition}", self.name))
                .spawn(move || worker.run(rx))
                .map_err(|e| format!("cannot start a rendition thread: {e}"))?;
            st.renditions.insert(
                rendition.to_string(),
                Active {
                    rendition: r,
                    tx,
                    skipping: false,
                    skipped: 0,
                },
            );
        }
        let active = &st.renditions[rendition];
        let added = active.rendition.add(outbox).map_err(|r| r.0);
        if active.rendition.subscriber_count() == 0 {
            // Dropping the sender ends the worker.
            st.renditions.remove(rendition);
        }
        added
    }

    /// End subscription `id` of `rendition`; the last one stops the rendition's worker.
    pub fn unsubscribe(&self, rendition: &str, id: u64) {
        let mut st = self.lock();
        if let Some(active) = st.renditions.get(rendition) {
            if active.rendition.remove(id) == 0 {
                st.renditions.remove(rendition);
            }
        }
    }

    /// The active renditions (those with a running worker) and how many subscriptions
    /// each serves now, sorted by rendition name.
    pub fn subscription_counts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = self
            .lock()
            .renditions
            .iter()
            .map(|(name, a)| (name.clone(), a.rendition.subscriber_count()))
            .collect();
        counts.sort();
        counts
    }

    pub fn request_keyframe(&self, rendition: &str, track: u8) {
        if let Some(a) = self.lock().renditions.get(rendition) {
            a.rendition.request_keyframe(track);
        }
    }

    fn set_tracks(&self, tracks: Vec<TrackInfo>) {
        let mut st = self.lock();
        st.tracks = Some(tracks.clone());
        for a in st.renditions.values() {
            let _ = a.tx.send(WorkerInput::Tracks(tracks.clone()));
        }
    }

    /// Change the input state; logs and tells subscribers only on a change.
    fn set_status(&self, state: ChannelState, detail: &str) {
        let mut st = self.lock();
        if st.status.0 == state {
            return;
        }
        match state {
            ChannelState::Live => {
                info!(channel = %self.name, "live channel input is live: {detail}")
            }
            ChannelState::Stalled => {
                warn!(channel = %self.name, "live channel input stalled: {detail}")
            }
            ChannelState::Ended => info!(channel = %self.name, "live channel ended: {detail}"),
        }
        st.status = (state, detail.to_string());
        for a in st.renditions.values() {
            let _ = a.tx.send(WorkerInput::Status(state, detail.to_string()));
        }
    }

    fn status(&self) -> ChannelState {
        self.lock().status.0
    }

    /// Hand `frame` to every active rendition.
    fn broadcast(&self, frame: &Frame) {
        let mut st = self.lock();
        let key = frame.codec.is_video() && frame.flags.contains(FrameFlags::KEYFRAME);
        let has_video = st
            .tracks
            .as_ref()
            .is_some_and(|t| t.iter().any(|t| t.codec.is_video()));
        for a in st.renditions.values_mut() {
            if a.skipping {
                if key || !has_video {
                    info!(channel = %self.name, rendition = %a.rendition.name, skipped = a.skipped,
                        "rendition caught up: resuming at a keyframe");
                    a.skipping = false;
                } else {
                    a.skipped += 1;
                    continue;
                }
            } else if a.rendition.queued.load(Ordering::Relaxed) >= RENDITION_QUEUE {
                warn!(channel = %self.name, rendition = %a.rendition.name, queued = RENDITION_QUEUE,
                    "rendition cannot keep up with the input: skipping to the next keyframe");
                a.skipping = true;
                a.skipped = 1;
                continue;
            }
            a.rendition.queued.fetch_add(1, Ordering::Relaxed);
            let _ = a.tx.send(WorkerInput::Frame(frame.clone()));
        }
    }

    /// The channel is removed: subscribers get Ended, workers stop.
    pub fn end(&self, detail: &str) {
        self.set_status(ChannelState::Ended, detail);
        let mut st = self.lock();
        st.ended = true;
        st.renditions.clear();
    }
}

/// A running source thread; [`SourceThread::stop`] ends it.
pub(super) struct SourceThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl SourceThread {
    /// Start reading `spec` into `hub`.
    pub fn spawn(
        hub: Arc<Hub>,
        spec: SourceSpec,
        library: Arc<Library>,
    ) -> std::io::Result<SourceThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("live-{}", hub.name))
            .spawn(move || {
                let name = hub.name.clone();
                let run = std::panic::AssertUnwindSafe(|| run(&hub, &spec, &library, &flag));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(channel = %name, "live channel source thread panicked");
                }
            })?;
        Ok(SourceThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Stop the thread and wait for it (it notices within a tick, or as soon as
    /// libavformat checks its interrupt callback).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for SourceThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sleep until `deadline` or until `stop`; false if stopped.
fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(TICK));
    }
}

fn run(hub: &Hub, spec: &SourceSpec, library: &Library, stop: &Arc<AtomicBool>) {
    let mut timeline = hub
        .timeline
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_default();
    info!(channel = %hub.name, source = ?spec, "live channel starting");
    let mut last_failure = String::new();
    let mut backoff = Duration::from_millis(200);
    while !stop.load(Ordering::Relaxed) {
        let mut input = match Input::open(spec, library, stop) {
            Ok(i) => i,
            Err(e) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let reason = format!("cannot open the input: {e}");
                hub.set_status(ChannelState::Stalled, &reason);
                if reason != last_failure {
                    warn!(channel = %hub.name, "{reason}; retrying");
                    last_failure = reason;
                } else {
                    debug!(channel = %hub.name, "{reason}; retrying");
                }
                sleep_until(Instant::now() + backoff, stop);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        last_failure.clear();
        let reason = play(hub, spec, &mut input, &mut timeline, stop);
        drop(input);
        if let Some(reason) = reason {
            hub.set_status(ChannelState::Stalled, &reason);
        }
    }
    *hub.timeline.lock().unwrap_or_else(|p| p.into_inner()) = Some(timeline);
    debug!(channel = %hub.name, "live channel source stopped");
}

/// Play one opened input until it fails or the channel stops; the reason it ended.
fn play(
    hub: &Hub,
    spec: &SourceSpec,
    input: &mut Input,
    timeline: &mut Timeline,
    stop: &AtomicBool,
) -> Option<String> {
    let tracks = input.tracks();
    let clocks: Vec<u32> = tracks.iter().map(|t| t.clock_rate).collect();
    let has_video = tracks.iter().any(|t| t.codec.is_video());
    info!(channel = %hub.name, tracks = tracks.len(), "live channel input opened");
    hub.set_tracks(tracks);
    let paced = spec.paced();
    // A new input starts at the channel's wall-clock media time (after a stall, the
    // timeline jumps to now rather than bursting to catch up).
    timeline.start_segment(&clocks, hub.now_us());
    let mut need_key = has_video;
    let mut frames_this_pass = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let mut frame = match input.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) if input.loops() => {
                if frames_this_pass == 0 {
                    return Some("the file has no playable frames".into());
                }
                if let Err(e) = input.rewind() {
                    return Some(format!("cannot loop the file: {e}"));
                }
                debug!(channel = %hub.name, end_us = timeline.end_us(), "loop");
                frames_this_pass = 0;
                timeline.start_segment(&clocks, hub.now_us() - LOOP_SLACK_US);
                need_key = has_video;
                continue;
            }
            Ok(None) => return Some("the input ended".into()),
            Err(e) => return Some(e.to_string()),
        };
        if need_key {
            if frame.codec.is_video() && frame.flags.contains(FrameFlags::KEYFRAME) {
                need_key = false;
            } else {
                continue;
            }
        }
        if timeline.map(&mut frame, hub.now_us()) == Mapped::Dropped {
            continue;
        }
        if paced {
            let at = timeline.dts_us(&frame).max(0) as u64;
            if !sleep_until(hub.epoch + Duration::from_micros(at), stop) {
                return None;
            }
        }
        frames_this_pass += 1;
        if hub.status() != ChannelState::Live {
            hub.set_status(ChannelState::Live, "frames are flowing");
        }
        hub.broadcast(&frame);
    }
}
