//! Divisor's reflector tiers (after the UIUC Reflector): master, intermediate and public
//! reflectors run this one program and relay live channels, routed by id, down a tree;
//! a tree controller (after SOLEIL) wires the tree and sends viewers to the best edge.
//!
//! - [`relay`]: the sans-IO relay core.
//! - [`child_queue`]: the bounded queue between the relay and each child.
//! - [`driver`]: the tokio driver that carries the core's outputs out on real links.
//! - [`http`]: `/status` and `/metrics`.
//! - [`role`]: the three tiers.
//! - [`control`]: the XML control protocol (envelope, messages, HMAC, replay window).
//! - [`tree`]: the topology file, pruning, the role-ordered Kruskal tree and repairs.
//! - [`controller`]: the sans-IO controller core, its policies and its drivers.

pub mod child_queue;
pub mod control;
pub mod controller;
pub mod deploy;
pub mod driver;
pub mod http;
pub mod relay;
pub mod role;
pub mod tree;
