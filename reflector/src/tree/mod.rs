//! Topology building and repair (after SOLEIL, Castaldi's thesis, chapter 5.3).
//!
//! An administrator draws nodes with roles and candidate links, some marked as spare
//! (redundancy) links. Drawings contain mistakes, so instead of refusing them the
//! builder prunes what breaks the role order (master → intermediate → public) and the
//! nodes left dangling, weights nodes by role and links by the sum of their ends'
//! weights, and runs Kruskal so the cheapest role-ordered tree comes out. Links the tree
//! does not use are kept as backup upstreams, so a node whose parent dies can switch at
//! once while the controller rebuilds.
//!
//! Everything here is pure: no clock, no sockets. The controller calls [`build()`] with
//! the nodes currently up, diffs the old and new plans with [`moved()`] to learn whom to
//! re-wire, and calls [`place()`] for a reflector the file does not list.
//!
//! - [`topology`]: the TOML file.
//! - [`build`](mod@build): pruning, Kruskal, backups; the [`Plan`].
//! - [`place`](mod@place): placing an unlisted node by load.
//!
//! # The topology file
//!
//! ```toml
//! encoders = ["10.0.0.2:7000"]   # link addresses of encoder units, the masters' upstreams
//! fan_out = 16                   # default max children per node (default 16, at least 1)
//!
//! [[node]]
//! id = "master1"
//! role = "master"                # master, intermediate or public
//! region = "eu"                  # optional, default ""
//! max_children = 8               # optional, default fan_out
//!
//! [[node]]
//! id = "int1"
//! role = "intermediate"
//!
//! [[link]]                       # undirected: the builder picks the direction
//! a = "master1"
//! b = "int1"
//! cost = 1.0                     # optional, default 1.0; finite and >= 0
//! spare = false                  # optional: a spare link is used only for repairs and backups
//! ```
//!
//! Unknown keys, duplicate node ids, unknown roles, negative or NaN costs and
//! `fan_out = 0` are errors ([`TopologyError`]); links that name unknown nodes or break
//! the role order are not, they are pruned by [`build()`] and listed in [`Plan::pruned`].

pub mod build;
pub mod place;
pub mod topology;

#[cfg(test)]
mod tests;

pub use build::{build, link_weight, may_feed, moved, node_weight, Plan, Pruned, MAX_BACKUPS};
pub use place::{has_room, has_room_for, place, place_with};
pub use topology::{FanOut, LinkSpec, NodeSpec, Topology, TopologyError, DEFAULT_FAN_OUT};
