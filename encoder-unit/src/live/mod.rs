//! Live channels: inputs that do not wait (a network sender, a file looped in real time,
//! the test source), each encoded once per rendition and pushed to every protocol unit
//! that subscribed.
//!
//! - [`LiveRegistry`]: the channels by name; [`LiveRegistry::apply`] adds, removes and
//!   restarts channels from a configuration without touching the ones that did not change;
//!   [`LiveRegistry::subscribe`] is what a link's `Subscribe` message becomes.
//! - `channel`: per channel a source thread (open, read, timeline, pace, stall detection
//!   and retry) and a hub of active renditions.
//! - `rendition`: per (channel, rendition) a worker running the [`crate::pipeline::Chain`]
//!   once and fanning out to the subscriptions, each behind a bounded queue.
//! - [`timeline`]: one media timeline per channel across loops and input restarts, with
//!   audio and video measured from the same origin.
//! - [`source`]: the `source` strings and the inputs they open.
//! - [`cli`]: `--live NAME=SOURCE` and `--config FILE`, shared by the binaries.
//!
//! What a subscriber receives: `Announce{duration_ms: None}` as soon as the input's tracks
//! are known (if the input has never opened yet, `Status{Stalled}` first and the Announce
//! when it opens), the current content keys, `Status` whenever the input stalls or comes
//! back, and frames in real time starting at a video keyframe (audio from that keyframe's
//! presentation time on). Frames carry DISCONTINUITY where the input changed (loop point,
//! reconnection). A new Announce follows if a reconnected input has other tracks.

mod channel;
pub mod cli;
mod rendition;
pub mod source;
pub mod timeline;

pub use rendition::{Outbox, StartGate, RENDITION_QUEUE, SUBSCRIBER_QUEUE};
pub use source::{default_sdp, SourceSpec, SourceSpecError, DEFAULT_RTP_PT, STALL_AFTER};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use divisor_link::ErrorCode;
use tracing::{info, warn};

use crate::chains::{ChainError, ChainFactory};
use crate::config::ChannelConfig;
use crate::storage::Library;
use channel::{Hub, SourceThread};

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("no live channel {name:?} (channels: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    NotFound { name: String, known: Vec<String> },
    #[error("{0}")]
    NoSuchRendition(String),
    #[error("{0}")]
    Unsupported(String),
}

impl SubscribeError {
    /// The link error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            SubscribeError::NotFound { .. } => ErrorCode::NotFound,
            SubscribeError::NoSuchRendition(_) => ErrorCode::NoSuchRendition,
            SubscribeError::Unsupported(_) => ErrorCode::UnsupportedMedia,
        }
    }
}

/// What [`LiveRegistry::apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Only the input changed: same subscribers, new source.
    pub new_source: Vec<String>,
    /// Renditions or encryption changed: subscribers were ended, the channel restarted.
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
}

impl std::fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        write!(
            f,
            "added {}; removed {}; new source {}; restarted {}; unchanged {}",
            l(&self.added),
            l(&self.removed),
            l(&self.new_source),
            l(&self.restarted),
            l(&self.unchanged)
        )
    }
}

struct Channel {
    config: ChannelConfig,
    hub: Arc<Hub>,
    source: Option<SourceThread>,
}

/// The live channels of an encoder unit. Shared by every link.
pub struct LiveRegistry {
    library: Arc<Library>,
    factory: Arc<ChainFactory>,
    channels: Mutex<BTreeMap<String, Channel>>,
}

impl LiveRegistry {
    /// No channels yet; [`LiveRegistry::apply`] adds them.
    pub fn new(library: Arc<Library>, factory: Arc<ChainFactory>) -> LiveRegistry {
        LiveRegistry {
            library,
            factory,
            channels: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The channel names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The live subscriptions served now: `(channel, rendition, subscriptions)` for every
    /// active rendition of every channel ("" = the input as it is), sorted. A rendition is
    /// active from its first subscription to its last one's end (a `Close`, or the link
    /// dropping), so a channel nobody watches has no entry. Read-only; for `/status`.
    pub fn subscription_counts(&self) -> Vec<(String, String, usize)> {
        // Take the hubs and let go of the registry before locking any of them.
        let hubs: Vec<(String, Arc<Hub>)> = self
            .lock()
            .iter()
            .map(|(name, ch)| (name.clone(), ch.hub.clone()))
            .collect();
        hubs.into_iter()
            .flat_map(|(channel, hub)| {
                hub.subscription_counts()
                    .into_iter()
                    .map(move |(rendition, n)| (channel.clone(), rendition, n))
            })
            .collect()
    }

    /// Make the running channels be `channels`: start new ones, stop removed ones, give a
    /// changed source to a running channel (its subscribers stay), restart a channel whose
    /// renditions or encryption changed; leave the rest alone. Checks every source string
    /// first: on an error nothing changes. Blocking (it waits for stopped source threads).
    pub fn apply(&self, channels: &[ChannelConfig]) -> Result<ApplyReport, SourceSpecError> {
        let specs = channels
            .iter()
            .map(|c| SourceSpec::parse(&c.source, c.sdp.as_ref()).map(|s| (c, s)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut report = ApplyReport::default();
        let mut running = self.lock();
        let wanted: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
        let gone: Vec<String> = running
            .keys()
            .filter(|n| !wanted.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(ch) = running.remove(&name) {
                stop(ch, "the channel was removed from the configuration");
                report.removed.push(name);
            }
        }
        for (config, spec) in specs {
            let name = config.name.clone();
            match running.remove(&name) {
                Some(ch) if ch.config == *config => {
                    running.insert(name.clone(), ch);
                    report.unchanged.push(name);
                }
                Some(mut ch)
                    if ch.config.renditions == config.renditions
                        && ch.config.encryption == config.encryption
                        && ch.config.edge_share == config.edge_share =>
                {
                    if let Some(s) = ch.source.take() {
                        s.stop();
                    }
                    // The hub keeps its (older) config for chains; only the source differs.
                    let hub = ch.hub.clone();
                    ch.source = self.start_source(&hub, spec);
                    ch.config = config.clone();
                    running.insert(name.clone(), ch);
                    report.new_source.push(name);
                }
                Some(ch) => {
                    stop(ch, "the channel's renditions or encryption changed");
                    running.insert(name.clone(), self.start(config, spec));
                    report.restarted.push(name);
                }
                None => {
                    running.insert(name.clone(), self.start(config, spec));
                    report.added.push(name);
                }
            }
        }
        Ok(report)
    }

    fn start(&self, config: &ChannelConfig, spec: SourceSpec) -> Channel {
        let hub = Arc::new(Hub::new(config.clone(), self.factory.clone()));
        let source = self.start_source(&hub, spec);
        Channel {
            config: config.clone(),
            hub,
            source,
        }
    }

    fn start_source(&self, hub: &Arc<Hub>, spec: SourceSpec) -> Option<SourceThread> {
        match SourceThread::spawn(hub.clone(), spec, self.library.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(channel = %hub.name, "cannot start the source thread: {e}");
                None
            }
        }
    }

    /// Subscribe `outbox` to channel `name` in `rendition` ("" = the channel's first
    /// rendition, or the input itself if it has none). The subscription lasts until the
    /// returned handle is dropped.
    pub fn subscribe(
        &self,
        name: &str,
        rendition: &str,
        outbox: Outbox,
    ) -> Result<Subscription, SubscribeError> {
        let hub = {
            let channels = self.lock();
            match channels.get(name) {
                Some(ch) => ch.hub.clone(),
                None => {
                    return Err(SubscribeError::NotFound {
                        name: name.to_string(),
                        known: channels.keys().cloned().collect(),
                    })
                }
            }
        };
        let rendition =
            ChainFactory::live_rendition(&hub.config, rendition).map_err(|e| match e {
                ChainError::NoSuchRendition(m) => SubscribeError::NoSuchRendition(m),
                other => SubscribeError::Unsupported(other.to_string()),
            })?;
        let id = hub
            .subscribe(&rendition, outbox)
            .map_err(SubscribeError::Unsupported)?;
        Ok(Subscription { hub, rendition, id })
    }

    /// Stop every channel (subscribers get `Status{Ended}`).
    pub fn shutdown(&self) {
        let mut running = self.lock();
        while let Some((_, ch)) = running.pop_first() {
            stop(ch, "the encoder unit is shutting down");
        }
    }
}

fn stop(ch: Channel, why: &str) {
    info!(channel = %ch.config.name, "stopping live channel: {why}");
    ch.hub.end(why);
    if let Some(s) = ch.source {
        s.stop();
    }
}

/// One subscription; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    rendition: String,
    id: u64,
}

impl Subscription {
    /// The rendition served ("" = the input as it is).
    pub fn rendition(&self) -> &str {
        &self.rendition
    }

    /// Ask the rendition's encoder for a keyframe on `track` soon.
    pub fn request_keyframe(&self, track: u8) {
        self.hub.request_keyframe(&self.rendition, track);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.rendition, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscription_counts_follow_subscriptions() {
        let dir = tempfile::tempdir().unwrap();
        let library = Arc::new(Library::open(dir.path()).unwrap());
        let live = LiveRegistry::new(library, Arc::new(ChainFactory::passthrough()));
        let channels = [
            cli::parse_live("news=testsrc").unwrap(),
            cli::parse_live("quiet=testsrc").unwrap(),
        ];
        live.apply(&channels).unwrap();
        assert!(live.subscription_counts().is_empty(), "nobody watches yet");

        // Keep the far end up, so the subscriptions' queues stay open.
        let (link, _far) = divisor_link::mem_pair();
        let outbox = |ch| Outbox::spawn(ch, "test", link.sender.clone());
        let a = live.subscribe("news", "", outbox(1)).unwrap();
        let b = live.subscribe("news", "", outbox(2)).unwrap();
        let news = |n| vec![("news".to_string(), String::new(), n)];
        assert_eq!(live.subscription_counts(), news(2));
        drop(a);
        assert_eq!(live.subscription_counts(), news(1));
        drop(b);
        assert!(live.subscription_counts().is_empty());
        live.shutdown();
    }
}
