//! The tokio task that runs one session: feeds frames and commands into the
//! [`Playout`] core, sleeps until its next deadline, and carries its packets out.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use divisor_link::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::playout::{Action, Playout, TrackStart};
use super::sink::Sink;
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
        sink: Sink,
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

/// Spawn the driver of a session on `channel`.
pub fn spawn(
    mut channel: Channel,
    playout: Playout,
    commands: mpsc::Receiver<Command>,
    last_seen: Arc<Mutex<Instant>>,
    label: String,
) -> JoinHandle<()> {
    let events = channel.take_events();
    tokio::spawn(async move {
        let Some(events) = events else {
            warn!(session = %label, "channel without events; session not started");
            return;
        };
        let mut driver = Driver {
            channel,
            playout,
            sinks: Vec::new(),
            pending_play: None,
            rtcp_tasks: Vec::new(),
            last_seen,
            label,
            credits_granted: false,
            user_paused: false,
        };
        driver.run(events, commands).await;
        for t in &driver.rtcp_tasks {
            t.abort();
        }
    })
}

struct Driver {
    channel: Channel,
    playout: Playout,
    sinks: Vec<(u8, Sink)>,
    pending_play: Option<(u32, oneshot::Sender<Result<PlayInfo, SessionError>>)>,
    rtcp_tasks: Vec<JoinHandle<()>>,
    last_seen: Arc<Mutex<Instant>>,
    label: String,
    credits_granted: bool,
    /// The client paused: the encoder was told to stop and must be told to resume.
    user_paused: bool,
}

impl Driver {
    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<ChannelEvent>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut actions = Vec::new();
        loop {
            let wake = self.playout.next_wakeup();
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
                _ = sleep_until(wake) => {}
            }
            self.playout
                .poll(Instant::now(), SystemTime::now(), &mut actions);
            for action in actions.drain(..) {
                if !self.act(action).await {
                    info!(session = %self.label, "client connection gone; session ends");
                    return;
                }
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Setup { track, sink, reply } => {
                if !self.playout.enable_track(track) {
                    let _ = reply.send(Err(SessionError::NoSuchTrack(track)));
                    return;
                }
                if let Sink::Udp {
                    rtcp, rtcp_dest, ..
                } = &sink
                {
                    self.rtcp_tasks.push(spawn_rtcp_listener(
                        rtcp.clone(),
                        *rtcp_dest,
                        self.last_seen.clone(),
                        self.label.clone(),
                    ));
                }
                self.sinks.retain(|(t, _)| *t != track);
                self.sinks.push((track, sink));
                let ssrc = self.playout.ssrc(track).unwrap_or_default();
                let _ = reply.send(Ok(ssrc));
            }
            Command::Play { start_ms, reply } => {
                if self.sinks.is_empty() {
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
                match start_ms {
                    None if self.playout.has_started() => {
                        let start_ms = (self.playout.position_us(now) / 1000).max(0) as u64;
                        info!(session = %self.label, start_ms, "play (resume)");
                        let _ = reply.send(Ok(PlayInfo {
                            start_ms,
                            tracks: self.playout.track_starts(now),
                        }));
                    }
                    start => {
                        let position_ms = start.unwrap_or(0);
                        let request = self.playout.begin_seek();
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
                if !self.playout.is_playing() {
                    self.playout.resume(Instant::now());
                }
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
                self.playout.pause(now);
                self.user_paused = true;
                self.send(Message::Pause {
                    channel: self.channel.id,
                })
                .await;
                let position = (self.playout.position_us(now) / 1000).max(0) as u64;
                info!(session = %self.label, position_ms = position, "pause");
                let _ = reply.send(Ok(position));
            }
            Command::Rtcp { track, packet } => {
                super::touch(&self.last_seen);
                log_rtcp(&self.label, track, &packet);
            }
            Command::Teardown => {}
        }
    }

    fn message(&mut self, msg: Message) {
        match msg {
            Message::Frame(frame) => self.playout.on_frame(frame),
            Message::SeekDone {
                request,
                position_ms,
                ..
            } => {
                let now = Instant::now();
                if self.playout.on_seek_done(request, position_ms) {
                    if let Some((pending, reply)) = self.pending_play.take() {
                        if pending == request {
                            info!(session = %self.label, position_ms, "playing");
                            let _ = reply.send(Ok(PlayInfo {
                                start_ms: position_ms,
                                tracks: self.playout.track_starts(now),
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

    /// Carry out one action; false when the client is gone.
    async fn act(&mut self, action: Action) -> bool {
        match action {
            Action::Rtp { track, packet } => self.deliver(track, &packet, false).await,
            Action::Rtcp { track, packet } => self.deliver(track, &packet, true).await,
            Action::Credits(frames) => {
                self.send(Message::Credits {
                    channel: self.channel.id,
                    frames,
                })
                .await;
                true
            }
            Action::Finished => {
                info!(session = %self.label, "end of stream; BYE sent");
                true
            }
        }
    }

    async fn deliver(&self, track: u8, packet: &Bytes, rtcp: bool) -> bool {
        let Some((_, sink)) = self.sinks.iter().find(|(t, _)| *t == track) else {
            return true;
        };
        match sink.send(packet, rtcp).await {
            Ok(()) => true,
            Err(e) => {
                debug!(session = %self.label, "send failed: {e}");
                !matches!(sink, Sink::Interleaved { .. })
            }
        }
    }

    async fn send(&self, msg: Message) {
        if let Err(e) = self.channel.send(msg).await {
            warn!(session = %self.label, "cannot reach the encoder unit: {e}");
        }
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Read RTCP from the client's RTCP port. Packets from any other address are dropped:
/// only the client we set up may keep the session alive.
fn spawn_rtcp_listener(
    socket: Arc<tokio::net::UdpSocket>,
    client: std::net::SocketAddr,
    last_seen: Arc<Mutex<Instant>>,
    label: String,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if from.ip() != client.ip() {
                debug!(session = %label, %from, "RTCP from a stranger dropped");
                continue;
            }
            super::touch(&last_seen);
            log_rtcp(&label, 0, &buf[..n]);
        }
    })
}

fn log_rtcp(label: &str, track: u8, packet: &[u8]) {
    match crate::rtcp::parse_incoming(packet) {
        Ok(events) => debug!(session = %label, track, ?events, "RTCP from client"),
        Err(e) => debug!(session = %label, track, "malformed RTCP from client dropped: {e}"),
    }
}
