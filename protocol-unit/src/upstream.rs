//! The protocol unit's side of the link: one link to an encoder unit at a time, many
//! channels multiplexed over it.
//!
//! Front-ends ([`crate::rtsp`]) ask for a channel with [`Upstream::open`]; every message the
//! encoder sends for that channel (announce, seek answers, frames, errors) arrives on the
//! channel's own queue, so one session never waits behind another. When the link drops,
//! every open channel learns it through [`ChannelEvent::LinkDown`] and a new link can be
//! attached without restarting the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use divisor_link::{ChannelId, Cipher, ErrorCode, Link, LinkSender, Message, TrackInfo};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// How long an open may wait for the encoder's announce.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no link to an encoder unit is up")]
    NoLink,
    #[error("the link to the encoder unit went down")]
    LinkDown,
    #[error("the encoder unit did not answer within {0:?}")]
    Timeout(Duration),
    #[error("encoder unit refused: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected answer from the encoder unit: {0}")]
    Protocol(String),
}

/// What arrives on a channel's queue.
#[derive(Debug)]
pub enum ChannelEvent {
    /// A message the encoder unit sent for this channel.
    Message(Message),
    /// The link carrying the channel ended; the channel is dead.
    LinkDown,
}

struct Routes {
    /// Generation number of the current link, and its sender.
    link: Option<(u64, LinkSender)>,
    channels: HashMap<ChannelId, mpsc::UnboundedSender<ChannelEvent>>,
}

struct Inner {
    routes: Mutex<Routes>,
    next_channel: AtomicU32,
    next_generation: AtomicU64,
}

/// Handle on the link to the encoder unit. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    pub fn new() -> Upstream {
        Upstream {
            inner: Arc::new(Inner {
                routes: Mutex::new(Routes {
                    link: None,
                    channels: HashMap::new(),
                }),
                next_channel: AtomicU32::new(1),
                next_generation: AtomicU64::new(1),
            }),
        }
    }

    /// Whether a link is attached right now.
    pub fn is_up(&self) -> bool {
        self.routes().link.is_some()
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        // A poisoned lock only means another task panicked while routing; the map is
        // still consistent (every update is a single insert or remove).
        self.inner
            .routes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Use `link` from now on. Channels of a previous link are told it went down.
    /// The returned task ends when this link ends.
    pub fn attach(&self, link: Link) -> tokio::task::JoinHandle<()> {
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let Link {
            sender,
            mut receiver,
            peer,
        } = link;
        let stale = {
            let mut routes = self.routes();
            routes.link = Some((generation, sender));
            std::mem::take(&mut routes.channels)
        };
        for (_, tx) in stale {
            let _ = tx.send(ChannelEvent::LinkDown);
        }
        info!(%peer, "link to encoder unit up");
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(msg) => this.route(msg),
                    Err(e) => {
                        warn!(%peer, "link to encoder unit ended: {e}");
                        break;
                    }
                }
            }
            let dropped = {
                let mut routes = this.routes();
                if matches!(routes.link, Some((g, _)) if g == generation) {
                    routes.link = None;
                    std::mem::take(&mut routes.channels)
                } else {
                    HashMap::new()
                }
            };
            for (_, tx) in dropped {
                let _ = tx.send(ChannelEvent::LinkDown);
            }
        })
    }

    fn route(&self, msg: Message) {
        let channel = match &msg {
            Message::Frame(f) => f.channel,
            Message::Announce { channel, .. }
            | Message::Status { channel, .. }
            | Message::ContentKey { channel, .. }
            | Message::SeekDone { channel, .. }
            | Message::Credits { channel, .. }
            | Message::KeyframeRequest { channel, .. } => *channel,
            Message::Error {
                channel: 0,
                code,
                message,
            } => {
                warn!(?code, "encoder unit reports a link error: {message}");
                return;
            }
            Message::Error { channel, .. } => *channel,
            other => {
                debug!("ignoring unexpected message from encoder unit: {other:?}");
                return;
            }
        };
        let routes = self.routes();
        match routes.channels.get(&channel) {
            Some(tx) => {
                let _ = tx.send(ChannelEvent::Message(msg));
            }
            // Frames still in flight for a channel we closed: nothing to do.
            None => debug!(channel, "message for a closed channel dropped"),
        }
    }

    /// Open VoD asset `asset` on the encoder unit and wait for its announce.
    pub async fn open(&self, asset: &str, rendition: &str) -> Result<Channel, UpstreamError> {
        self.request(|id| Message::Open {
            channel: id,
            asset: asset.to_string(),
            rendition: rendition.to_string(),
        })
        .await
    }

    /// Subscribe to live channel `name` in `rendition` ("" = its first) and wait for its
    /// announce. Content keys sent before the announce are on [`Channel::keys`].
    pub async fn subscribe(&self, name: &str, rendition: &str) -> Result<Channel, UpstreamError> {
        self.request(|id| Message::Subscribe {
            channel: id,
            name: name.to_string(),
            rendition: rendition.to_string(),
        })
        .await
    }

    /// Send the request `make(id)` under a new channel id and wait for the announce.
    async fn request(
        &self,
        make: impl FnOnce(ChannelId) -> Message,
    ) -> Result<Channel, UpstreamError> {
        let id = self.inner.next_channel.fetch_add(1, Ordering::Relaxed);
        let (tx, mut events) = mpsc::unbounded_channel();
        let sender = {
            let mut routes = self.routes();
            let Some((_, sender)) = routes.link.clone() else {
                return Err(UpstreamError::NoLink);
            };
            routes.channels.insert(id, tx);
            sender
        };
        let mut channel = Channel {
            id,
            sender,
            events: None,
            duration_ms: None,
            tracks: Vec::new(),
            keys: Arc::new(Mutex::new(Vec::new())),
            upstream: self.clone(),
        };
        channel.send(make(id)).await?;
        let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
        loop {
            let answer = tokio::time::timeout_at(deadline, events.recv())
                .await
                .map_err(|_| UpstreamError::Timeout(OPEN_TIMEOUT))?;
            match answer {
                Some(ChannelEvent::Message(Message::Announce {
                    duration_ms,
                    tracks,
                    ..
                })) => {
                    channel.duration_ms = duration_ms;
                    channel.tracks = tracks;
                    channel.events = Some(events);
                    return Ok(channel);
                }
                Some(ChannelEvent::Message(Message::ContentKey {
                    key_id,
                    cipher,
                    key,
                    ..
                })) => channel.add_key(ContentKey {
                    key_id,
                    cipher,
                    key,
                }),
                // A live input's state may be reported before the announce.
                Some(ChannelEvent::Message(Message::Status { state, detail, .. })) => {
                    debug!(
                        channel = id,
                        ?state,
                        "channel status before announce: {detail}"
                    );
                }
                Some(ChannelEvent::Message(Message::Error { code, message, .. })) => {
                    return Err(UpstreamError::Refused { code, message })
                }
                Some(ChannelEvent::Message(other)) => {
                    return Err(UpstreamError::Protocol(format!(
                        "expected an announce, got {other:?}"
                    )))
                }
                Some(ChannelEvent::LinkDown) | None => return Err(UpstreamError::LinkDown),
            }
        }
    }

    fn forget(&self, id: ChannelId) {
        self.routes().channels.remove(&id);
    }
}

/// A content key of an encrypted channel, as the encoder unit sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentKey {
    pub key_id: u32,
    pub cipher: Cipher,
    pub key: Bytes,
}

/// The content keys of a channel, newest last; shared with whoever encrypts at the edge.
pub type ContentKeys = Arc<Mutex<Vec<ContentKey>>>;

/// Keys kept per channel: the current one and those frames may still name (rotation).
const KEYS_KEPT: usize = 4;

/// One open channel on the encoder unit. Closing happens on drop.
pub struct Channel {
    pub id: ChannelId,
    pub duration_ms: Option<u64>,
    pub tracks: Vec<TrackInfo>,
    /// Content keys received so far (encrypted channels), newest last.
    pub keys: ContentKeys,
    sender: LinkSender,
    events: Option<mpsc::UnboundedReceiver<ChannelEvent>>,
    upstream: Upstream,
}

impl Channel {
    /// Send a control message for this channel.
    pub async fn send(&self, msg: Message) -> Result<(), UpstreamError> {
        self.sender
            .send(msg)
            .await
            .map_err(|_| UpstreamError::LinkDown)
    }

    /// Keep `key` (replacing one with the same id); the oldest beyond a few are forgotten.
    pub fn add_key(&self, key: ContentKey) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.retain(|k| k.key_id != key.key_id);
        keys.push(key);
        let excess = keys.len().saturating_sub(KEYS_KEPT);
        keys.drain(..excess);
    }

    /// Take the queue of events for this channel (once).
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<ChannelEvent>> {
        self.events.take()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.upstream.forget(self.id);
        let sender = self.sender.clone();
        let id = self.id;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = sender.send(Message::Close { channel: id }).await;
            });
        }
    }
}
