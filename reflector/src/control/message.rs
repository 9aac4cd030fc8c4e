//! The typed control messages, independent of their XML spelling.

use std::fmt;
use std::str::FromStr;

use crate::role::Role;

use super::ControlError;

/// Who a message is from or addressed to.
///
/// On the wire `^` names the tree controller (the root of the control tree), `*`
/// broadcasts to every node, and anything else is a node id. Because of that, the ids
/// `^`, `*` and the empty string cannot name a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// The tree controller (`^`).
    Root,
    /// Every node (`*`).
    All,
    /// One node, by id.
    Node(String),
}

impl Peer {
    /// Reads the wire spelling; the empty string names nobody and is refused.
    pub fn parse(s: &str) -> Result<Self, ControlError> {
        match s {
            "" => Err(ControlError::BadValue {
                what: "peer".into(),
                value: String::new(),
            }),
            "^" => Ok(Peer::Root),
            "*" => Ok(Peer::All),
            id => Ok(Peer::Node(id.to_string())),
        }
    }
}

impl FromStr for Peer {
    type Err = ControlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Peer::parse(s)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Root => f.write_str("^"),
            Peer::All => f.write_str("*"),
            Peer::Node(id) => f.write_str(id),
        }
    }
}

/// One control message: the envelope (sender's clock, sender, addressee) and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The sender's wall clock in milliseconds since the Unix epoch; checked against the
    /// receiver's clock to bound how long a captured message can be replayed.
    pub time_ms: u64,
    pub from: Peer,
    pub to: Peer,
    pub body: Body,
}

/// What a message says. Each variant is one value of the envelope's `type` attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A node introduces itself to the controller.
    Hello(Hello),
    /// A node leaves on purpose (so the controller repairs without waiting for a timeout).
    Bye {
        reason: String,
    },
    /// The controller tells a node which children it now feeds.
    ChildsUpdate {
        children: Vec<String>,
    },
    /// The answer to a message that could not be accepted; `code` is HTTP-like.
    Error {
        code: u16,
        detail: String,
    },
    /// The controller orders a node to shut down.
    Kill {
        reason: String,
    },
    /// Liveness probe; answered by a [`Body::Pong`] with the same `seq`.
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// The controller tells a node where to pull its channels from, in order of
    /// preference: the first upstream is the primary, the rest are fallbacks.
    Redirect {
        upstreams: Vec<UpstreamRef>,
    },
    /// Periodic summary statistics of a node and its subtree.
    Stats(Stats),
    /// The controller asks for full statistics, of one channel or (None) of all.
    ReqFullStats {
        channel: Option<String>,
    },
    /// The answer to [`Body::ReqFullStats`].
    FullStats(Stats),
    /// A node lost its primary upstream (the link address it was told in REDIRECT):
    /// the controller checks that node at once instead of waiting for its next PING,
    /// so the root need not PING every node every period.
    LostUpstream {
        addr: String,
    },
}

impl Body {
    /// The envelope's `type` attribute for this body.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::Hello(_) => "HELLO",
            Body::Bye { .. } => "BYE",
            Body::ChildsUpdate { .. } => "CHILDSUPDATE",
            Body::Error { .. } => "ERROR",
            Body::Kill { .. } => "KILL",
            Body::Ping { .. } => "PING",
            Body::Pong { .. } => "PONG",
            Body::Redirect { .. } => "REDIRECT",
            Body::Stats(_) => "STATS",
            Body::ReqFullStats { .. } => "REQFULLSTATS",
            Body::FullStats(_) => "FULLSTATS",
            Body::LostUpstream { .. } => "LOSTUPSTREAM",
        }
    }
}

/// An upstream reflector a node should pull from.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRef {
    pub id: String,
    /// The upstream's link address, `host:port`.
    pub addr: String,
}

/// A node's self-description, sent when it joins.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub id: String,
    pub role: Role,
    /// Link address (`host:port`) where children connect.
    pub link: String,
    /// RTSP address viewers are sent to.
    pub rtsp: String,
    /// HTTP address (WHEP, status), if the node serves one.
    pub http: Option<String>,
    pub region: String,
    pub max_viewers: u32,
    pub egress_budget_bps: u64,
    /// A standby node joins the tree only to replace a failed one.
    pub standby: bool,
}

/// Statistics of one node over `start_ms..end_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub node: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Number of nodes below this one in the tree.
    pub descendants: u32,
    /// CPU load, 0.0 to 1.0 per core summed (must be finite).
    pub cpu_load: f64,
    pub viewers: u64,
    pub egress_bps: u64,
    pub channels: Vec<ChannelStats>,
}

/// Statistics of one channel on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub id: String,
    pub viewers: u64,
    /// Inbound interarrival jitter (must be finite).
    pub jitter_ms: f64,
    /// Cumulative packets lost on the way in.
    pub cum_lost: u64,
}
