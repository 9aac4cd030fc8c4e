//! What a relay shows of itself: the snapshot `/status` serialises and `/metrics` is built
//! from. Plain data, taken from the core under its lock, so the HTTP side never holds it.

use serde::Serialize;

pub use super::state::{ChannelCounters, GAP_BUCKETS_MS};

/// The whole node.
#[derive(Debug, Clone, Serialize)]
pub struct RelaySnapshot {
    pub id: String,
    /// Set once SIGTERM started a graceful leave.
    pub leaving: bool,
    pub uptime_seconds: f64,
    pub upstreams: Vec<UpstreamSnapshot>,
    pub children: Vec<ChildSnapshot>,
    pub channels: Vec<ChannelSnapshot>,
}

/// One parent, in order of preference.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamSnapshot {
    pub addr: String,
    /// 0 = the primary.
    pub preference: usize,
    /// `up`, `silent`, `leaving`, `retired` or `down`.
    pub state: String,
    /// Round trip of the last link Ping, if one came back.
    pub rtt_ms: Option<f64>,
    /// Channels it is the active parent of.
    pub channels: usize,
    pub messages_in: u64,
}

/// One child link.
#[derive(Debug, Clone, Serialize)]
pub struct ChildSnapshot {
    pub id: u64,
    pub peer: String,
    /// The public tier's own front-end (in-process link).
    pub local: bool,
    pub channels: usize,
    pub refused: u64,
    pub skips: u64,
}

/// One relayed channel.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelSnapshot {
    pub channel: String,
    /// `subscribing`, `live`, `switching`, `no_parent`, `stalled` or `ended`.
    pub state: String,
    pub active_upstream: Option<String>,
    /// Node ids the channel crossed, origin first, this node last.
    pub path: Vec<String>,
    /// Remote children subscribed.
    pub children: usize,
    /// Subscriptions of the local front-end (public tier).
    pub local_subscribers: usize,
    pub pinned: bool,
    pub gop_frames: usize,
    pub gop_bytes: usize,
    #[serde(flatten)]
    pub counters: ChannelCounters,
}
