//! The RTSP session of one live viewer: the same [`Command`]s as a VoD session, served by
//! joining the channel's feed in the fan-out engine instead of opening a channel.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Control, Viewer};
use crate::admission::Ticket;
use crate::fanout::feedback::{self, Feedback};
use crate::fanout::{
    ClientId, ClientStats, Command as EngineCommand, FanOut, LiveJoin, LiveTrack, Tier, TrackDest,
};
use crate::session::{Command, PlayInfo, SessionError};

/// What a live session works with.
pub struct LiveSessionContext {
    pub fan: Arc<FanOut>,
    pub client: ClientId,
    pub tier: Tier,
    pub stats: Arc<ClientStats>,
    pub last_seen: Arc<Mutex<Instant>>,
    pub label: String,
    /// This session's share of the admission budgets, released when the session's
    /// task ends and drops its context.
    pub admission: Ticket,
    /// Notified when the channel ends, to close the viewer's connection (RTSP).
    pub close_connection: Option<Arc<tokio::sync::Notify>>,
}

/// Spawn the session of `viewer`.
pub fn spawn(
    viewer: Viewer,
    commands: mpsc::Receiver<Command>,
    ctx: LiveSessionContext,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (keyframe_tx, keyframe_rx) = mpsc::unbounded_channel();
        let feedback = Feedback::new(
            ctx.client,
            ctx.stats.clone(),
            ctx.last_seen.clone(),
            keyframe_tx,
        );
        ctx.fan.stats.add_client(ctx.stats.clone());
        let mut s = LiveSession {
            viewer,
            tracks: Vec::new(),
            feedback,
            ctx,
        };
        s.run(commands, keyframe_rx).await;
        s.ctx.fan.engine.send(EngineCommand::RemoveClient {
            client: s.ctx.client,
        });
        s.ctx.fan.routes.remove_client(s.ctx.client);
        s.ctx.fan.stats.remove_client(s.ctx.client);
        // The budget share goes only now that the client is out of the fan-out.
        drop(s.ctx.admission);
    })
}

struct LiveSession {
    viewer: Viewer,
    tracks: Vec<LiveTrack>,
    feedback: Arc<Feedback>,
    ctx: LiveSessionContext,
}

impl LiveSession {
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut keyframe_asks: mpsc::UnboundedReceiver<u8>,
    ) {
        let mut ended = self.viewer.channel.ended();
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Teardown) => {
                        info!(session = %self.ctx.label, "teardown");
                        return;
                    }
                    Some(cmd) => self.command(cmd).await,
                },
                Some(track) = keyframe_asks.recv() => {
                    self.viewer.channel.control(Control::KeyframeRequest(track));
                }
                r = ended.changed() => {
                    if r.is_err() || *ended.borrow() {
                        warn!(session = %self.ctx.label, "live channel ended (BYE sent); session and connection end");
                        if let Some(close) = &self.ctx.close_connection {
                            close.notify_one();
                        }
                        return;
                    }
                }
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Setup { track, sink, reply } => {
                let Some(info) = self.viewer.channel.tracks.iter().find(|t| t.track == track)
                else {
                    let _ = reply.send(Err(SessionError::NoSuchTrack(track)));
                    return;
                };
                // A plain-RTP viewer of the full tier joins the rendition's shared stream
                // (its packets go out unchanged, see `fanout::live_feed`); anyone else gets
                // a stream of its own.
                let shared = match &sink {
                    TrackDest::Udp { srtp: None, .. } if self.ctx.tier == Tier::Full => {
                        self.viewer.channel.shared_ssrc(track)
                    }
                    _ => None,
                };
                let ssrc = shared
                    .or_else(|| {
                        self.tracks
                            .iter()
                            .find(|t| t.track == track)
                            .map(|t| t.ssrc)
                    })
                    .unwrap_or_else(rand::random::<u32>);
                if let TrackDest::Udp { rtcp, .. } = &sink {
                    self.ctx.fan.routes.insert(*rtcp, self.feedback.clone());
                }
                self.feedback.set_stream(ssrc, track, info.clock_rate);
                self.tracks.retain(|t| t.track != track);
                self.tracks.push(LiveTrack {
                    track,
                    dest: sink,
                    ssrc,
                });
                let _ = reply.send(Ok(ssrc));
            }
            Command::Play { reply, .. } => {
                if self.tracks.is_empty() {
                    let _ = reply.send(Err(SessionError::NothingSetUp));
                    return;
                }
                let (tx, rx) = oneshot::channel();
                self.ctx.fan.engine.send(EngineCommand::JoinLive(LiveJoin {
                    client: self.ctx.client,
                    feed: self.viewer.channel.feed,
                    tier: self.ctx.tier,
                    tracks: self.tracks.clone(),
                    stats: self.ctx.stats.clone(),
                    reply: tx,
                }));
                match rx.await {
                    Ok(Some(join)) => {
                        if !join.starts_at_keyframe {
                            for t in self
                                .viewer
                                .channel
                                .tracks
                                .iter()
                                .filter(|t| t.codec.is_video())
                            {
                                self.viewer
                                    .channel
                                    .control(Control::KeyframeRequest(t.track));
                            }
                        }
                        info!(
                            session = %self.ctx.label,
                            tier = ?self.ctx.tier,
                            at_keyframe = join.starts_at_keyframe,
                            "play (live)"
                        );
                        let _ = reply.send(Ok(PlayInfo {
                            start_ms: 0,
                            tracks: join.tracks,
                        }));
                    }
                    _ => {
                        let _ = reply.send(Err(SessionError::Ended));
                    }
                }
            }
            Command::Go => {
                self.ctx.fan.engine.send(EngineCommand::Start {
                    client: self.ctx.client,
                });
            }
            Command::Pause { reply } => {
                self.ctx.fan.engine.send(EngineCommand::Pause {
                    client: self.ctx.client,
                });
                info!(session = %self.ctx.label, "pause (live)");
                let _ = reply.send(Ok(0));
            }
            Command::Rtcp { packet, .. } => {
                feedback::handle(
                    &packet,
                    &self.feedback,
                    &self.ctx.fan.engine,
                    &self.ctx.fan.stats,
                    Instant::now(),
                );
            }
            Command::Teardown => {}
        }
    }
}
