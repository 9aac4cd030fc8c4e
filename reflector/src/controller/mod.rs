//! The tree controller (after SOLEIL, chapters 3 and 5).
//!
//! - [`core`]: the sans-IO controller: registry, plan, liveness, repair, statistics.
//! - [`aggregate`]: how statistics fold up the tree (used by every node and the core).
//! - [`redirect`]: the pure policy choosing a client's public reflector.
//! - [`scale`]: the pure policy growing and shrinking the public tier (carried out by
//!   `core/scaling.rs`, through a [`crate::deploy::Deployer`] when one is given).
//! - [`metrics`]: the controller's counters and `/metrics` text.
//! - [`driver`]: the tokio driver (control connections, timer) and the [`front::Directory`].
//! - [`sampler`]: a node's own figures per period.
//! - [`client`]: a reflector's side of the control protocol (`--controller`).
//! - [`front`]: the RTSP and HTTP listeners that redirect clients, the tree page and JSON.

pub mod aggregate;
pub mod client;
pub mod core;
pub mod driver;
pub mod front;
pub mod metrics;
pub mod redirect;
pub mod sampler;
pub mod scale;

#[cfg(test)]
mod tests;

pub use self::core::{ConnId, Controller, ControllerConfig, NodeState, Output};
pub use driver::ControllerHandle;
