//! The topology file: what the administrator drew (nodes with roles, candidate links).
//!
//! Parsing checks only what the file alone can get wrong (syntax, duplicate ids, unknown
//! roles, bad costs, a zero fan-out). Links that break role order or name unknown nodes
//! are not errors here: like SOLEIL's builder we treat them as drawing mistakes that
//! [`build`](super::build()) prunes and reports, so one bad line does not keep a whole
//! tree from coming up.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::role::{Role, UnknownRole};

/// Max children per node when the file gives no `fan_out`.
pub const DEFAULT_FAN_OUT: usize = 16;

/// The name used in error messages for a topology that did not come from a file.
const INLINE: &str = "<inline topology>";

/// A parsed topology file.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Link addresses of the encoder units: the upstreams of every master.
    pub encoders: Vec<String>,
    /// Default max children per node (at least 1).
    pub fan_out: usize,
    /// The nodes, in file order.
    pub nodes: Vec<NodeSpec>,
    /// The candidate links, in file order; undirected.
    pub links: Vec<LinkSpec>,
}

/// One `[[node]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub id: String,
    pub role: Role,
    /// Free-form grouping (e.g. `"eu"`); empty when not given.
    pub region: String,
    /// Overrides [`Topology::fan_out`] for this node.
    pub max_children: Option<usize>,
}

/// One `[[link]]` entry: a candidate, undirected link between two nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    pub a: String,
    pub b: String,
    /// Finite and non-negative; multiplies the link's role weight.
    pub cost: f64,
    /// A redundancy link (SOLEIL §5.2): used in the tree only when no ordinary link can
    /// connect a node, and preferred as a backup upstream.
    pub spare: bool,
}

/// Why a topology file was refused. Every message names the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: node #{index}: empty id")]
    EmptyId { file: String, index: usize },
    #[error("{file}: node #{index} {id:?}: duplicate id (first defined by node #{first})")]
    DuplicateNode {
        file: String,
        id: String,
        index: usize,
        first: usize,
    },
    #[error("{file}: node {id:?}: {source}")]
    UnknownRole {
        file: String,
        id: String,
        #[source]
        source: UnknownRole,
    },
    #[error("{file}: link #{index} {a:?} - {b:?}: cost {cost} must be a finite number >= 0")]
    BadCost {
        file: String,
        index: usize,
        a: String,
        b: String,
        cost: f64,
    },
    #[error("{file}: fan_out must be at least 1")]
    ZeroFanOut { file: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    encoders: Vec<String>,
    #[serde(default = "default_fan_out")]
    fan_out: usize,
    #[serde(default)]
    node: Vec<RawNode>,
    #[serde(default)]
    link: Vec<RawLink>,
}

/// The role stays a string here so an unknown one is reported with the node's id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    role: String,
    #[serde(default)]
    region: String,
    max_children: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    a: String,
    b: String,
    #[serde(default = "default_cost")]
    cost: f64,
    #[serde(default)]
    spare: bool,
}

fn default_fan_out() -> usize {
    DEFAULT_FAN_OUT
}

fn default_cost() -> f64 {
    1.0
}

impl Topology {
    /// Parses a topology from TOML text; errors name it `<inline topology>`.
    pub fn from_toml_str(s: &str) -> Result<Self, TopologyError> {
        Self::parse(s, INLINE)
    }

    /// Reads and parses a topology file; errors name the file.
    pub fn from_file(p: &Path) -> Result<Self, TopologyError> {
        let file = p.display().to_string();
        let text = std::fs::read_to_string(p).map_err(|source| TopologyError::Io {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// Parses TOML text, naming it `file` in errors. Entries are numbered from 1.
    pub fn parse(s: &str, file: &str) -> Result<Self, TopologyError> {
        let file = || file.to_string();
        let raw: RawTopology = toml::from_str(s).map_err(|e| TopologyError::Syntax {
            file: file(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if raw.fan_out == 0 {
            return Err(TopologyError::ZeroFanOut { file: file() });
        }
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        let mut nodes = Vec::with_capacity(raw.node.len());
        for (i, n) in raw.node.iter().enumerate() {
            let index = i + 1;
            if n.id.is_empty() {
                return Err(TopologyError::EmptyId {
                    file: file(),
                    index,
                });
            }
            if let Some(&first) = first_seen.get(n.id.as_str()) {
                return Err(TopologyError::DuplicateNode {
                    file: file(),
                    id: n.id.clone(),
                    index,
                    first,
                });
            }
            first_seen.insert(&n.id, index);
            let role = n
                .role
                .parse::<Role>()
                .map_err(|source| TopologyError::UnknownRole {
                    file: file(),
                    id: n.id.clone(),
                    source,
                })?;
            nodes.push(NodeSpec {
                id: n.id.clone(),
                role,
                region: n.region.clone(),
                max_children: n.max_children,
            });
        }
        let mut links = Vec::with_capacity(raw.link.len());
        for (i, l) in raw.link.into_iter().enumerate() {
            if !(l.cost.is_finite() && l.cost >= 0.0) {
                return Err(TopologyError::BadCost {
                    file: file(),
                    index: i + 1,
                    a: l.a,
                    b: l.b,
                    cost: l.cost,
                });
            }
            links.push(LinkSpec {
                a: l.a,
                b: l.b,
                cost: l.cost,
                spare: l.spare,
            });
        }
        Ok(Topology {
            encoders: raw.encoders,
            fan_out: raw.fan_out,
            nodes,
            links,
        })
    }

    /// The node with this id, if the file lists it.
    pub fn node(&self, id: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node's `max_children`, else the file's `fan_out` (also for ids the file does
    /// not list, such as nodes placed at run time by [`place`](super::place())).
    pub fn max_children(&self, id: &str) -> usize {
        self.node(id)
            .and_then(|n| n.max_children)
            .unwrap_or(self.fan_out)
    }

    /// Every node's `max_children` in a map, for callers asking about many nodes
    /// ([`max_children`](Topology::max_children) searches the node list each time).
    pub fn fan_outs(&self) -> FanOut {
        FanOut {
            default: self.fan_out,
            per_node: self
                .nodes
                .iter()
                .filter_map(|n| n.max_children.map(|m| (n.id.clone(), m)))
                .collect(),
        }
    }
}

/// Max children per node, looked up in constant time (see [`Topology::fan_outs`]).
#[derive(Debug, Clone, Default)]
pub struct FanOut {
    default: usize,
    per_node: HashMap<String, usize>,
}

impl FanOut {
    /// The node's `max_children`, else the file's `fan_out`.
    pub fn of(&self, id: &str) -> usize {
        self.per_node.get(id).copied().unwrap_or(self.default)
    }
}
