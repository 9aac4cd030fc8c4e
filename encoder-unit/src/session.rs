//! Serving one link: the channels a protocol unit opens on it, each streaming one asset.
//!
//! The dispatcher ([`serve_link`]) is async and owns the link's receiving side. Each open
//! channel gets its own std thread owning the (blocking) demuxer; commands reach it over an
//! unbounded queue, its messages go back through a small bounded queue drained by a tokio
//! task into the link sender. So one slow or broken file never holds up another channel,
//! and a full link applies back-pressure to the demuxer threads only.
//!
//! Flow control: the worker holds the channel's credits (one per frame sent, all tracks;
//! end-of-stream markers need none). Credits survive seeks and pauses: the protocol unit
//! grants its window once and returns the credits of frames it drops.
//!
//! Every VoD channel runs its frames through the [`Chain`] the [`ChainFactory`] picks for
//! its asset and rendition (passthrough for the source): frames are pushed, the chain is
//! flushed at the end of the file and reset on a seek, and what comes out (content keys,
//! then the frames they protect) goes to the link in order; keys need no credit.
//!
//! Live channels are subscribed to, not opened: `Subscribe` goes to the
//! [`LiveRegistry`], which pushes to the link without credits (see [`crate::live`]).

use std::collections::hash_map::{Entry, HashMap};
use std::collections::VecDeque;
use std::sync::Arc;

use divisor_link::{
    ChannelId, Codec, ErrorCode, Frame, FrameFlags, Link, LinkError, LinkSender, Message,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::chains::{ChainError, ChainFactory};
use crate::ingest::{Demuxed, FileSource, IngestError};
use crate::live::{LiveRegistry, Outbox, Subscription};
use crate::pipeline::Chain;
use crate::storage::{AssetInfo, Catalog, Library, StorageError};

/// How many messages a channel may queue towards the link sender.
const OUTBOX: usize = 16;

/// Why [`serve_link`] stopped other than by the link closing normally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("link to {peer} failed: {source}")]
    Link {
        peer: String,
        #[source]
        source: LinkError,
    },
}

/// What the dispatcher tells a channel's worker.
#[derive(Debug)]
enum Command {
    Seek { request: u32, position_ms: u64 },
    Pause,
    Resume,
    Credits(u32),
    KeyframeRequest(u8),
    Close,
}

/// What a link is served from; shared by every link of the unit.
#[derive(Clone)]
pub struct Services {
    pub library: Arc<Library>,
    /// Updated with assets opened for the first time.
    pub catalog: Arc<Catalog>,
    /// The chain of each VoD open (and of live renditions).
    pub chains: Arc<ChainFactory>,
    /// The live channels.
    pub live: Arc<LiveRegistry>,
}

impl Services {
    /// VoD passthrough of `library`, no live channel.
    pub fn new(library: Arc<Library>, catalog: Arc<Catalog>) -> Services {
        let chains = Arc::new(ChainFactory::passthrough());
        let live = Arc::new(LiveRegistry::new(library.clone(), chains.clone()));
        Services {
            library,
            catalog,
            chains,
            live,
        }
    }
}

/// Serve one link until it closes: open assets of `library` as channels, and stream them
/// under credit-based flow control. Returns `Ok(())` when the link closes normally, an
/// error if it failed (malformed bytes, I/O). Every open channel is freed on return.
///
/// `catalog` is updated with assets opened for the first time. No live channels and VoD
/// passthrough only: see [`serve_link_with`] for the rest.
pub async fn serve_link(
    link: Link,
    library: Arc<Library>,
    catalog: Arc<Catalog>,
) -> Result<(), SessionError> {
    serve_link_with(link, Services::new(library, catalog)).await
}

/// [`serve_link`] with renditions and live channels.
pub async fn serve_link_with(link: Link, services: Services) -> Result<(), SessionError> {
    let Services {
        library,
        catalog,
        chains,
        live,
    } = services;
    let Link {
        sender,
        mut receiver,
        peer,
    } = link;
    info!(%peer, "link up: serving");
    let mut channels: HashMap<ChannelId, mpsc::UnboundedSender<Command>> = HashMap::new();
    let mut subscriptions: HashMap<ChannelId, Subscription> = HashMap::new();
    let result = loop {
        let msg = match receiver.recv().await {
            Ok(m) => m,
            Err(LinkError::Closed) => break Ok(()),
            Err(source) => {
                break Err(SessionError::Link {
                    peer: peer.clone(),
                    source,
                })
            }
        };
        // Forget channels whose worker has ended (failed open, link error).
        channels.retain(|_, tx| !tx.is_closed());
        let (channel, command) = match msg {
            Message::Open {
                channel,
                asset,
                rendition,
            } => {
                if subscriptions.contains_key(&channel) {
                    let text = format!("channel {channel} is already a live subscription");
                    reply_error(&sender, channel, ErrorCode::BadRequest, &text).await;
                } else if channel == 0 {
                    reply_error(
                        &sender,
                        0,
                        ErrorCode::BadRequest,
                        "channel 0 is the link itself",
                    )
                    .await;
                } else {
                    match channels.entry(channel) {
                        Entry::Occupied(_) => {
                            let text = format!("channel {channel} is already open");
                            reply_error(&sender, channel, ErrorCode::BadRequest, &text).await;
                        }
                        Entry::Vacant(slot) => match spawn_channel(
                            Opened {
                                channel,
                                asset,
                                rendition,
                            },
                            &peer,
                            sender.clone(),
                            library.clone(),
                            catalog.clone(),
                            chains.clone(),
                        ) {
                            Ok(tx) => {
                                slot.insert(tx);
                            }
                            Err(e) => {
                                let text = format!("cannot start channel {channel}: {e}");
                                warn!(%peer, "{text}");
                                reply_error(&sender, channel, ErrorCode::Internal, &text).await;
                            }
                        },
                    }
                }
                continue;
            }
            Message::Close { channel } if subscriptions.contains_key(&channel) => {
                // Dropping the subscription unsubscribes.
                subscriptions.remove(&channel);
                continue;
            }
            Message::KeyframeRequest { channel, track } if subscriptions.contains_key(&channel) => {
                if let Some(s) = subscriptions.get(&channel) {
                    s.request_keyframe(track);
                }
                continue;
            }
            Message::Credits { channel, .. } if subscriptions.contains_key(&channel) => {
                // Live subscriptions are pushed without credits; a grant is harmless.
                continue;
            }
            Message::Pause { channel }
            | Message::Resume { channel }
            | Message::Seek { channel, .. }
                if subscriptions.contains_key(&channel) =>
            {
                let text = format!(
                    "channel {channel} is a live subscription: it cannot seek, pause or resume"
                );
                reply_error(&sender, channel, ErrorCode::BadRequest, &text).await;
                continue;
            }
            Message::Seek {
                channel,
                request,
                position_ms,
            } => (
                channel,
                Command::Seek {
                    request,
                    position_ms,
                },
            ),
            Message::Pause { channel } => (channel, Command::Pause),
            Message::Resume { channel } => (channel, Command::Resume),
            Message::Close { channel } => (channel, Command::Close),
            Message::Credits { channel, frames } => (channel, Command::Credits(frames)),
            Message::KeyframeRequest { channel, track } => {
                (channel, Command::KeyframeRequest(track))
            }
            Message::Error {
                channel,
                code,
                message,
            } => {
                warn!(%peer, channel, ?code, "peer reports an error: {message}");
                continue;
            }
            Message::Hello { .. } | Message::Auth { .. } => {
                warn!(%peer, "ignoring a handshake message on an established link");
                continue;
            }
            // A reflector probes its upstreams' liveness: answer at once.
            Message::Ping { seq } => {
                let _ = sender.send(Message::Pong { seq }).await;
                continue;
            }
            // The encoder unit is the origin of every route: the path of a request that
            // reaches it cannot hold a loop, so there is nothing to check.
            Message::Path { .. }
            | Message::Pong { .. }
            | Message::GoingAway { .. }
            | Message::Report { .. } => continue,
            Message::Subscribe {
                channel,
                name,
                rendition,
            } => {
                if channel == 0
                    || channels.contains_key(&channel)
                    || subscriptions.contains_key(&channel)
                {
                    let text = format!("channel {channel} is the link itself or already in use");
                    reply_error(&sender, channel, ErrorCode::BadRequest, &text).await;
                    continue;
                }
                let outbox = Outbox::spawn(channel, &peer, sender.clone());
                match live.subscribe(&name, &rendition, outbox) {
                    Ok(sub) => {
                        subscriptions.insert(channel, sub);
                    }
                    Err(e) => {
                        info!(%peer, channel, live = %name, rendition = %rendition, "subscription refused: {e}");
                        reply_error(&sender, channel, e.code(), &e.to_string()).await;
                    }
                }
                continue;
            }
            Message::Announce { channel, .. }
            | Message::SeekDone { channel, .. }
            | Message::Status { channel, .. }
            | Message::ContentKey { channel, .. }
            | Message::Frame(Frame { channel, .. }) => {
                warn!(%peer, channel, "unexpected message for the encoder unit");
                reply_error(
                    &sender,
                    channel,
                    ErrorCode::BadRequest,
                    "the encoder unit does not accept Announce, SeekDone, Status, ContentKey or Frame",
                )
                .await;
                continue;
            }
        };
        let close = matches!(command, Command::Close);
        let delivered = channels
            .get(&channel)
            .is_some_and(|tx| tx.send(command).is_ok());
        if close || !delivered {
            channels.remove(&channel);
        }
        if !delivered {
            debug!(%peer, channel, "message for a channel that is not open");
            let text = format!("channel {channel} is not open");
            reply_error(&sender, channel, ErrorCode::BadRequest, &text).await;
        }
    };
    match &result {
        Ok(()) => {
            info!(%peer, open_channels = channels.len(), live_subscriptions = subscriptions.len(), "link closed")
        }
        Err(e) => {
            warn!(%peer, open_channels = channels.len(), live_subscriptions = subscriptions.len(), "{e}")
        }
    }
    // Dropping the command queues ends every worker; dropping subscriptions unsubscribes.
    drop(channels);
    drop(subscriptions);
    result
}

async fn reply_error(sender: &LinkSender, channel: ChannelId, code: ErrorCode, message: &str) {
    let _ = sender
        .send(Message::Error {
            channel,
            code,
            message: message.to_string(),
        })
        .await;
}

/// What the protocol unit asked to open.
struct Opened {
    channel: ChannelId,
    asset: String,
    rendition: String,
}

fn spawn_channel(
    opened: Opened,
    peer: &str,
    sender: LinkSender,
    library: Arc<Library>,
    catalog: Arc<Catalog>,
    chains: Arc<ChainFactory>,
) -> std::io::Result<mpsc::UnboundedSender<Command>> {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(OUTBOX);
    let peer = peer.to_string();
    let channel = opened.channel;
    std::thread::Builder::new()
        .name(format!("channel-{channel}"))
        .spawn({
            let peer = peer.clone();
            let peer_for_log = peer.clone();
            move || {
                let mut worker = Worker {
                    channel,
                    peer,
                    asset: opened.asset,
                    rendition: opened.rendition,
                    cmds: cmd_rx,
                    out: out_tx,
                    credits: 0,
                    flowing: false,
                    at_end: false,
                    chain: Chain::passthrough(),
                    ready: VecDeque::new(),
                    source_done: None,
                    discontinuity: Vec::new(),
                    track_end: Vec::new(),
                    frames_sent: 0,
                    codecs: Vec::new(),
                };
                // A panic (a bug, or a library surprise on a bad file) ends this channel
                // only; the dispatcher then sees it closed.
                let run = std::panic::AssertUnwindSafe(|| worker.run(&library, &catalog, &chains));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(peer = %peer_for_log, channel, "channel worker panicked");
                }
            }
        })?;
    tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if sender.send(msg).await.is_err() {
                break;
            }
        }
    });
    Ok(cmd_tx)
}

/// The link went away (or its queue did): the worker stops.
struct Gone;

struct Worker {
    channel: ChannelId,
    peer: String,
    asset: String,
    rendition: String,
    cmds: mpsc::UnboundedReceiver<Command>,
    out: mpsc::Sender<Message>,
    credits: u64,
    flowing: bool,
    at_end: bool,
    /// The asset's chain (passthrough for the source rendition).
    chain: Chain,
    /// What the chain produced, not yet sent (frames wait for a credit, or a resume).
    ready: VecDeque<Message>,
    /// The source has ended (`Some(None)`) or failed (`Some(Some(error))`) and the chain
    /// has been flushed: once `ready` is empty, the stream ends.
    source_done: Option<Option<String>>,
    /// Per track: the next frame gets DISCONTINUITY (after a seek).
    discontinuity: Vec<bool>,
    /// Per track: end time (pts + duration) of the last frame sent, for the EOS marker.
    track_end: Vec<i64>,
    frames_sent: u64,
    /// Per track: its codec, as announced.
    codecs: Vec<Codec>,
}

impl Worker {
    fn send(&self, msg: Message) -> Result<(), Gone> {
        self.out.blocking_send(msg).map_err(|_| Gone)
    }

    fn error(&self, code: ErrorCode, message: String) -> Result<(), Gone> {
        self.send(Message::Error {
            channel: self.channel,
            code,
            message,
        })
    }

    fn run(&mut self, library: &Library, catalog: &Catalog, chains: &ChainFactory) {
        let Some(mut source) = self.open(library, catalog, chains) else {
            return;
        };
        let _ = self.serve(&mut source);
        info!(
            peer = %self.peer,
            channel = self.channel,
            asset = %self.asset,
            frames_sent = self.frames_sent,
            "channel closed"
        );
    }

    /// Resolve and open the asset and its chain, answering Announce or Error.
    fn open(
        &mut self,
        library: &Library,
        catalog: &Catalog,
        chains: &ChainFactory,
    ) -> Option<FileSource> {
        let opened = library
            .resolve(&self.asset)
            .map_err(|e| {
                let code = match e {
                    StorageError::Forbidden { .. } => ErrorCode::Forbidden,
                    StorageError::NotFound { .. } => ErrorCode::NotFound,
                    _ => ErrorCode::Internal,
                };
                (code, e.to_string())
            })
            .and_then(|path| {
                FileSource::open(&path).map_err(|e| {
                    let code = match e {
                        IngestError::Open { .. } | IngestError::Unsupported(_) => {
                            ErrorCode::UnsupportedMedia
                        }
                        _ => ErrorCode::Internal,
                    };
                    (code, format!("{}: {e}", self.asset))
                })
            })
            .and_then(|source| {
                catalog.record(AssetInfo::from_source(&self.asset, &source));
                let built = chains
                    .vod_chain(&self.asset, &self.rendition, source.tracks())
                    .and_then(|mut chain| {
                        let tracks = chain.tracks(source.tracks())?;
                        Ok((chain, tracks))
                    });
                match built {
                    Ok((chain, tracks)) => Ok((source, chain, tracks)),
                    Err(e) => {
                        let code = match e {
                            ChainError::NoSuchRendition(_) => ErrorCode::NoSuchRendition,
                            _ => ErrorCode::UnsupportedMedia,
                        };
                        Err((code, format!("{}: {e}", self.asset)))
                    }
                }
            });
        match opened {
            Ok((source, chain, tracks)) => {
                info!(
                    peer = %self.peer,
                    channel = self.channel,
                    asset = %self.asset,
                    rendition = %self.rendition,
                    duration_ms = ?source.duration_ms(),
                    tracks = tracks.len(),
                    "open"
                );
                self.chain = chain;
                self.discontinuity = vec![false; tracks.len()];
                self.track_end = vec![0; tracks.len()];
                self.codecs = tracks.iter().map(|t| t.codec).collect();
                let mut prelude = Vec::new();
                self.chain.prelude(&mut prelude);
                for msg in prelude {
                    self.send(msg.with_channel(self.channel)).ok()?;
                }
                let announce = Message::Announce {
                    channel: self.channel,
                    duration_ms: source.duration_ms(),
                    tracks,
                };
                self.send(announce).ok()?;
                Some(source)
            }
            Err((code, message)) => {
                warn!(
                    peer = %self.peer,
                    channel = self.channel,
                    asset = %self.asset,
                    rendition = %self.rendition,
                    ?code,
                    "open refused: {message}"
                );
                let _ = self.error(code, message);
                None
            }
        }
    }

    /// Whether there is work to do without waiting for a command.
    fn can_work(&self) -> bool {
        self.flowing
            && !self.at_end
            && match self.ready.front() {
                None => true,
                Some(Message::Frame(_)) => self.credits > 0,
                Some(_) => true,
            }
    }

    fn serve(&mut self, source: &mut FileSource) -> Result<(), Gone> {
        loop {
            // Commands first, so Pause/Seek/Close take effect after the frame in hand.
            let cmd = if self.can_work() {
                match self.cmds.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => return Err(Gone),
                }
            } else {
                Some(self.cmds.blocking_recv().ok_or(Gone)?)
            };
            if let Some(cmd) = cmd {
                if !self.command(cmd, source)? {
                    return Ok(());
                }
                continue;
            }
            self.step(source)?;
        }
    }

    /// Apply one command; false on Close.
    fn command(&mut self, cmd: Command, source: &mut FileSource) -> Result<bool, Gone> {
        let (peer, channel) = (&self.peer, self.channel);
        match cmd {
            Command::Credits(n) => {
                self.credits = self.credits.saturating_add(u64::from(n));
            }
            Command::Seek {
                request,
                position_ms,
            } => {
                self.ready.clear();
                self.source_done = None;
                self.chain.reset();
                match source.seek(position_ms) {
                    Ok(real) => {
                        info!(%peer, channel, request, asked_ms = position_ms, real_ms = real, "seek");
                        self.at_end = false;
                        self.flowing = true;
                        self.discontinuity.iter_mut().for_each(|d| *d = true);
                        self.send(Message::SeekDone {
                            channel,
                            request,
                            position_ms: real,
                        })?;
                    }
                    Err(e) => {
                        warn!(%peer, channel, request, asked_ms = position_ms, "seek failed: {e}");
                        self.flowing = false;
                        self.error(ErrorCode::Internal, format!("{}: {e}", self.asset))?;
                    }
                }
            }
            Command::Pause => {
                info!(%peer, channel, frames_sent = self.frames_sent, "pause");
                self.flowing = false;
            }
            Command::Resume => {
                if self.at_end {
                    info!(%peer, channel, "resume at end of stream: nothing left to send");
                } else {
                    info!(%peer, channel, credits = self.credits, "resume");
                    self.flowing = true;
                }
            }
            Command::KeyframeRequest(track) => {
                if self.chain.is_empty() {
                    debug!(%peer, channel, track, "keyframe request: stored files keep their own GOP");
                } else {
                    self.chain.request_keyframe(track);
                }
            }
            Command::Close => return Ok(false),
        }
        Ok(true)
    }

    /// Run the next source frame through the chain if nothing is ready, then send what is
    /// ready: control messages at once, a frame if a credit allows.
    fn step(&mut self, source: &mut FileSource) -> Result<(), Gone> {
        if self.ready.is_empty() {
            if let Some(error) = self.source_done.take() {
                return self.end_of_stream(error);
            }
            let mut out = Vec::new();
            let pushed = match source.next_frame() {
                Ok(Demuxed::Frame(mut f)) => {
                    f.channel = self.channel;
                    self.chain.push(f, &mut out).map_err(|e| e.to_string())
                }
                Ok(Demuxed::End) => {
                    self.source_done = Some(None);
                    self.chain.flush(&mut out).map_err(|e| e.to_string())
                }
                Err(e) => {
                    self.source_done = Some(Some(e.to_string()));
                    self.chain.flush(&mut out).map_err(|e| e.to_string())
                }
            };
            if let Err(e) = pushed {
                self.chain.reset();
                self.source_done = Some(Some(format!("processing failed: {e}")));
            }
            self.ready.extend(out);
            return Ok(());
        }
        let msg = match self.ready.front() {
            Some(Message::Frame(_)) if self.credits == 0 => return Ok(()),
            _ => self.ready.pop_front(),
        };
        match msg {
            Some(Message::Frame(mut frame)) => {
                frame.channel = self.channel;
                let t = usize::from(frame.track);
                if let Some(d) = self.discontinuity.get_mut(t) {
                    if *d {
                        frame.flags.insert(FrameFlags::DISCONTINUITY);
                        *d = false;
                    }
                }
                if let Some(end) = self.track_end.get_mut(t) {
                    *end = frame.pts + i64::from(frame.duration);
                }
                self.credits -= 1;
                self.frames_sent += 1;
                self.send(Message::Frame(frame))?;
            }
            Some(mut other) => {
                if let Message::ContentKey { channel, .. } = &mut other {
                    *channel = self.channel;
                }
                self.send(other)?;
            }
            None => {}
        }
        Ok(())
    }

    /// One END_OF_STREAM frame per track (no credit needed); the channel stays open.
    fn end_of_stream(&mut self, error: Option<String>) -> Result<(), Gone> {
        match error {
            None => {
                info!(peer = %self.peer, channel = self.channel, frames_sent = self.frames_sent, "end of stream")
            }
            Some(e) => warn!(
                peer = %self.peer,
                channel = self.channel,
                asset = %self.asset,
                "ending the stream early: {e}"
            ),
        }
        self.at_end = true;
        self.flowing = false;
        self.ready.clear();
        for track in 0..self.codecs.len() {
            let codec = self.codecs[track];
            let end = self.track_end.get(track).copied().unwrap_or(0);
            let mut flags = FrameFlags::END_OF_STREAM;
            if self.discontinuity.get(track).copied().unwrap_or(false) {
                flags.insert(FrameFlags::DISCONTINUITY);
            }
            self.send(Message::Frame(Frame {
                channel: self.channel,
                track: track as u8,
                codec,
                flags,
                pts: end,
                dts: end,
                duration: 0,
                data: bytes::Bytes::new(),
            }))?;
        }
        Ok(())
    }
}
