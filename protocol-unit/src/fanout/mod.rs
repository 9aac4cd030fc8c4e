//! The fan-out engine: packetise once per feed, send to many clients.
//!
//! - [`live_feed`]: a live channel rendition packetised once, with its GOP cache, NACK
//!   history, frame-rate tiers and shared wire packets (sans-IO);
//! - [`engine`]: feeds and clients, per-client header rewrite (or the shared wire
//!   packets), batched sends, sender
//!   reports, retransmissions; owned by the scheduler's thread ([`crate::schedule`]);
//! - [`udp`]: batched UDP sends (`sendmmsg` with GSO, or io_uring) from shared sockets;
//! - [`feedback`]: RTCP from clients (receiver reports, NACK, PLI/FIR);
//! - [`sink`]: an in-process queue as a client's destination (WHEP viewers);
//! - [`service`]: the shared sockets, the sender and the RTCP reader, started together;
//! - [`stats`]: counters and the send-lateness histogram, shared with `/metrics`.

pub mod engine;
pub mod feedback;
pub mod live_feed;
pub mod pacing;
pub mod service;
pub mod sink;
pub mod stats;
pub mod udp;

pub use engine::{
    ClientId, Command, Engine, FeedId, JoinInfo, LiveJoin, LiveTrack, PrepareFrame, SharedSrtp,
    TrackDest, VodEvent,
};
pub use live_feed::Tier;
pub use service::{FanOut, FanOutConfig};
pub use stats::{ClientStats, ServerStats};
pub use udp::SendPath;
