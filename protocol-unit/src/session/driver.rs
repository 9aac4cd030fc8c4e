//! The tokio task that runs one VoD session: feeds frames and commands into the
//! [`Playout`] core, which the fan-out engine polls at its deadlines and whose packets it
//! sends; credits and keyframe requests go back to the encoder unit from here.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use divisor_link::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::playout::{Playout, TrackStart};
use crate::admission::Ticket;
use crate::fanout::feedback::{self, Feedback, KeyframeLimiter};
use crate::fanout::{
    ClientId, ClientStats, Command as EngineCommand, FanOut, FeedId, TrackDest, VodEvent,
};
use crate::upstream::{Channel, ChannelEvent};

/// Frames the encoder may send ahead of playout. At 25 fps video plus ~47 AAC frames/s
/// this is about 1.3 s of media: enough to ride out link hiccups, small enough to seek fast.
pub const CREDIT_WINDOW: u32 = 96;

/// Why a session command failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session has ended")]
    Ended,
    #[error("no such track {0}")]
    NoSuchTrack(u8),
    #[error("no track has been set up")]
    NothingSetUp,
    #[error("the encoder unit refused: {0}")]
    Encoder(String),
    #[error("the link to the encoder unit is down")]
    LinkDown,
}

/// What PLAY answers.
#[derive(Debug, Clone)]
pub struct PlayInfo {
    /// Where play really starts (the keyframe at or before the asked position).
    pub start_ms: u64,
    pub tracks: Vec<TrackStart>,
}

/// Requests from the RTSP front-end.
pub enum Command {
    Setup {
        track: u8,
        sink: TrackDest,
        reply: oneshot::Sender<Result<u32, SessionError>>,
    },
    /// Prepare play from `start_ms` (a seek), or from where it stands when `None` after a
    /// first play. Nothing is sent until [`Command::Go`].
    Play {
        start_ms: Option<u64>,
        reply: oneshot::Sender<Result<PlayInfo, SessionError>>,
    },
    Pause {
        reply: oneshot::Sender<Result<u64, SessionError>>,
    },
    /// The PLAY reply is on its way to the client: start sending.
    Go,
    /// An RTCP packet the client sent over the interleaved connection.
    Rtcp {
        track: u8,
        packet: Bytes,
    },
    Teardown,
}

/// What a VoD session's driver works with besides its channel.
pub struct DriverContext {
    pub fan: Arc<FanOut>,
    pub feed: FeedId,
    pub client: ClientId,
    pub stats: Arc<ClientStats>,
    pub last_seen: Arc<Mutex<Instant>>,
    pub label: String,
    /// This session's share of the admission budgets, released when the session's
    /// task ends and drops its context.
    pub admission: Ticket,
}

/// Spawn the driver of a session on `channel`. Its packets are sent by the fan-out
/// engine, which polls `playout` at its deadlines; the driver feeds it frames and
/// commands and relays credits back to the encoder unit.
pub fn spawn(
    mut channel: Channel,
    playout: Playout,
    commands: mpsc::Receiver<Command>,
    ctx: DriverContext,
) -> JoinHandle<()> {
    let events = channel.take_events();
    tokio::spawn(async move {
        let Some(events) = events else {
            warn!(session = %ctx.label, "channel without events; session not started");
            return;
        };
        let playout = Arc::new(Mutex::new(playout));
        let (engine_tx, engine_rx) = mpsc::unbounded_channel();
        let (keyframe_tx, keyframe_rx) = mpsc::unbounded_channel();
        ctx.fan.stats.add_client(ctx.stats.clone());
        ctx.fan.engine.send(EngineCommand::AddVod {
            feed: ctx.feed,
            client: ctx.client,
            playout: playout.clone(),
            events: engine_tx,
            stats: ctx.stats.clone(),
        });
        let feedback = Feedback::new(
            ctx.client,
            ctx.stats.clone(),
            ctx.last_seen.clone(),
            keyframe_tx,
        );
        let mut driver = Driver {
            channel,
            playout,
            set_up: Vec::new(),
            pending_play: None,
            label: ctx.label.clone(),
            credits_granted: false,
            user_paused: false,
            feedback,
            fan: ctx.fan.clone(),
            feed: ctx.feed,
            keyframes: KeyframeLimiter::new(KEYFRAME_INTERVAL),
        };
        driver.run(events, commands, engine_rx, keyframe_rx).await;
        ctx.fan
            .engine
            .send(EngineCommand::RemoveFeed { feed: ctx.feed });
        ctx.fan.routes.remove_client(ctx.client);
        ctx.fan.stats.remove_client(ctx.client);
        // Named so the task owns the ticket: an async block captures only the fields it
        // uses, and an unused one would be released as soon as the task was spawned.
        drop(ctx.admission);
    })
}

/// Least time between two keyframe requests for one track (PLI/FIR storms).
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

struct Driver {
    channel: Channel,
    playout: Arc<Mutex<Playout>>,
    /// Tracks set up.
    set_up: Vec<u8>,
    pending_play: Option<(u32, oneshot::Sender<Result<PlayInfo, SessionError>>)>,
    label: String,
    credits_granted: bool,
    /// The client paused: the encoder was told to stop and must be told to resume.
    user_paused: bool,
    feedback: Arc<Feedback>,
    fan: Arc<FanOut>,
    feed: FeedId,
    keyframes: KeyframeLimiter,
}

impl Driver {
    fn playout(&self) -> std::sync::MutexGuard<'_, Playout> {
        self.playout.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The playout changed: the engine must look at its deadline again.
    fn reschedule(&self) {
        self.fan
            .engine
            .send(EngineCommand::Reschedule { feed: self.feed });
    }

    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<ChannelEvent>,
        mut commands: mpsc::Receiver<Command>,
        mut engine_events: mpsc::UnboundedReceiver<VodEvent>,
        mut keyframe_asks: mpsc::UnboundedReceiver<u8>,
    ) {
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Teardown) => {
                        info!(session = %self.label, "teardown");
                        return;
                    }
                    Some(cmd) => self.command(cmd).await,
                },
                ev = events.recv() => match ev {
                    Some(ChannelEvent::Message(msg)) => self.message(msg),
                    Some(ChannelEvent::LinkDown) | None => {
                        warn!(session = %self.label, "link to the encoder unit lost; session ends");
                        if let Some((_, reply)) = self.pending_play.take() {
                            let _ = reply.send(Err(SessionError::LinkDown));
                        }
                        return;
                    }
                },
                ev = engine_events.recv() => match ev {
                    Some(VodEvent::Credits(frames)) => {
                        self.send(Message::Credits { channel: self.channel.id, frames }).await;
                    }
                    Some(VodEvent::Finished) => {
                        info!(session = %self.label, "end of stream; BYE sent");
                    }
                    Some(VodEvent::ClientGone) | None => {
                        info!(session = %self.label, "client connection gone; session ends");
                        return;
                    }
                },
                Some(track) = keyframe_asks.recv() => {
                    if self.keyframes.allow(track, Instant::now()) {
                        self.fan.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                        self.send(Message::KeyframeRequest { channel: self.channel.id, track }).await;
                    }
                }
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Setup { track, sink, reply } => {
                let (ok, ssrc) = {
                    let mut p = self.playout();
                    (p.enable_track(track), p.ssrc(track).unwrap_or_default())
                };
                if !ok {
                    let _ = reply.send(Err(SessionError::NoSuchTrack(track)));
                    return;
                }
                if let TrackDest::Udp { rtcp, .. } = &sink {
                    self.fan.routes.insert(*rtcp, self.feedback.clone());
                }
                let clock = self
                    .channel
                    .tracks
                    .iter()
                    .find(|t| t.track == track)
                    .map_or(90_000, |t| t.clock_rate);
                self.feedback.set_stream(ssrc, track, clock);
                self.fan.engine.send(EngineCommand::VodDest {
                    feed: self.feed,
                    track,
                    dest: sink,
                });
                self.set_up.retain(|t| *t != track);
                self.set_up.push(track);
                let _ = reply.send(Ok(ssrc));
            }
            Command::Play { start_ms, reply } => {
                if self.set_up.is_empty() {
                    let _ = reply.send(Err(SessionError::NothingSetUp));
                    return;
                }
                if !self.credits_granted {
                    self.credits_granted = true;
                    self.send(Message::Credits {
                        channel: self.channel.id,
                        frames: CREDIT_WINDOW,
                    })
                    .await;
                }
                let now = Instant::now();
                let resume = {
                    let p = self.playout();
                    (start_ms.is_none() && p.has_started()).then(|| {
                        (
                            (p.position_us(now) / 1000).max(0) as u64,
                            p.track_starts(now),
                        )
                    })
                };
                match resume {
                    Some((start_ms, tracks)) => {
                        info!(session = %self.label, start_ms, "play (resume)");
                        let _ = reply.send(Ok(PlayInfo { start_ms, tracks }));
                    }
                    None => {
                        let position_ms = start_ms.unwrap_or(0);
                        let request = self.playout().begin_seek();
                        self.reschedule();
                        if let Some((_, old)) = self.pending_play.take() {
                            let _ = old.send(Err(SessionError::Ended));
                        }
                        self.pending_play = Some((request, reply));
                        info!(session = %self.label, position_ms, "play (seek)");
                        self.send(Message::Seek {
                            channel: self.channel.id,
                            request,
                            position_ms,
                        })
                        .await;
                    }
                }
            }
            Command::Go => {
                {
                    let mut p = self.playout();
                    if !p.is_playing() {
                        p.resume(Instant::now());
                    }
                }
                self.reschedule();
                if self.user_paused {
                    self.user_paused = false;
                    self.send(Message::Resume {
                        channel: self.channel.id,
                    })
                    .await;
                }
            }
            Command::Pause { reply } => {
                let now = Instant::now();
                let position = {
                    let mut p = self.playout();
                    p.pause(now);
                    (p.position_us(now) / 1000).max(0) as u64
                };
                self.reschedule();
                self.user_paused = true;
                self.send(Message::Pause {
                    channel: self.channel.id,
                })
                .await;
                info!(session = %self.label, position_ms = position, "pause");
                let _ = reply.send(Ok(position));
            }
            Command::Rtcp { packet, .. } => {
                feedback::handle(
                    &packet,
                    &self.feedback,
                    &self.fan.engine,
                    &self.fan.stats,
                    Instant::now(),
                );
            }
            Command::Teardown => {}
        }
    }

    fn message(&mut self, msg: Message) {
        match msg {
            Message::ContentKey { .. } => self.playout().on_message(&msg),
            Message::Frame(frame) => {
                self.playout().on_frame(frame);
                self.reschedule();
            }
            Message::SeekDone {
                request,
                position_ms,
                ..
            } => {
                let now = Instant::now();
                let done = self.playout().on_seek_done(request, position_ms);
                if done {
                    if let Some((pending, reply)) = self.pending_play.take() {
                        if pending == request {
                            info!(session = %self.label, position_ms, "playing");
                            let tracks = self.playout().track_starts(now);
                            let _ = reply.send(Ok(PlayInfo {
                                start_ms: position_ms,
                                tracks,
                            }));
                        }
                    }
                }
            }
            Message::Error { code, message, .. } => {
                warn!(session = %self.label, ?code, "encoder unit reports: {message}");
                if let Some((_, reply)) = self.pending_play.take() {
                    let _ = reply.send(Err(SessionError::Encoder(message)));
                }
            }
            other => debug!(session = %self.label, "ignored from encoder: {other:?}"),
        }
    }

    async fn send(&self, msg: Message) {
        if let Err(e) = self.channel.send(msg).await {
            warn!(session = %self.label, "cannot reach the encoder unit: {e}");
        }
    }
}
