//! The relay core: sans-IO, messages and `now` in, messages and timers out.
//!
//! - [`state`]: the [`Relay`] state machine (routing, subscriptions, fail-over, moves).
//! - [`splice`]: one stream downstream across parent switches.
//! - [`gop`]: the per-channel GOP cache joiners start from.
//! - [`status`]: the snapshot `/status` and `/metrics` show.

pub mod gop;
pub mod splice;
pub mod state;
pub mod status;

pub use state::{ChannelKey, ChildId, Output, Relay, RelayConfig, SwitchReason, UpstreamId};
pub use status::RelaySnapshot;

#[cfg(test)]
mod tests;
