//! Divisor's reflector tiers (after the UIUC Reflector): master, intermediate and public
//! reflectors run this one program and relay live channels, routed by id, down a tree.
//!
//! - [`relay`]: the sans-IO relay core.
//! - [`child_queue`]: the bounded queue between the relay and each child.
//! - [`driver`]: the tokio driver that carries the core's outputs out on real links.
//! - [`http`]: `/status` and `/metrics`.

pub mod child_queue;
pub mod driver;
pub mod http;
pub mod relay;
