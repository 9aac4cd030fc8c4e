//! The controller's sans-IO core: the node registry, the tree plan, liveness, repair,
//! statistics, the redirect and scale policies. Messages and `now` in, messages and a
//! timer out; it never touches a socket or reads a clock, so the tests and the simulator
//! run it faster than real time. `now_ms` is wall-clock milliseconds since the Unix epoch
//! (messages carry it, and the replay window compares it).
//!
//! Life of a node:
//!
//! 1. It connects and says HELLO (id, role, link address, capacity). A `standby` public
//!    reflector waits in the pool, outside the tree, until the scale policy needs it.
//! 2. The plan places it (the topology's design, or the least-loaded parent for a node
//!    the file does not name) and it gets REDIRECT: its upstream list, primary first,
//!    then its backups (the spare links).
//! 3. Masters get PING every `ping_ms`. Below them a node is watched by its neighbours:
//!    a child that loses its parent says LOSTUPSTREAM, a parent whose child's reports
//!    stop sends a CHILDSUPDATE without it, and either way the node is PINGed at once;
//!    a second neighbour's report, with nothing heard from the node in between, makes it
//!    dead without waiting for the PING.
//!    A node no parent vouches for is PINGed once per `sweep_ms`. Silent too long (or
//!    its connection closed, or it said BYE), a node is dead: its children move at once to their
//!    first live backup (REDIRECT, O(children)), and a full rebuild on the surviving graph
//!    follows `rebuild_delay_ms` later, coalescing bursts of events.
//! 4. When it returns (HELLO again), the rebuild restores the designed tree; the moves are
//!    REDIRECTs, which the data plane carries out make-before-break.
//!
//! Statistics: masters send one STATS per period, their subtree's aggregate (see
//! [`super::aggregate`]). The controller keeps per-public estimates (its last FULLSTATS
//! plus the redirects sent since) and asks for FULLSTATS when an aggregate disagrees with
//! them, when a channel loses packets, or, a few nodes per period, round-robin.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::ops::Bound;

use tracing::{debug, info, warn};

use super::front::{
    AggregateChannel, AggregateView, LinkView, NoTarget, NodeView, Target, TreeView,
};
use super::metrics::ControllerMetrics;
use super::redirect::{Candidate, RegionMap};
use super::scale::{ScaleConfig, ScalePolicy};
use crate::control::{Body, ControlError, Hello, Message, Peer, Stats, UpstreamRef};
use crate::role::Role;
use crate::tree::{self, FanOut, Plan, Topology};

mod redirect_cache;
mod scaling;
use redirect_cache::{CachedCandidate, RedirectCache};
pub use scaling::DeployedView;
use scaling::Deployment;

/// A control connection, numbered by the driver.
pub type ConnId = u64;

/// The core's settings.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// PING period of the masters, and of a node under suspicion.
    pub ping_ms: u64,
    /// A master silent for this many PING periods is dead; so is any other node silent
    /// for this many sweeps.
    pub dead_after_missed: u32,
    /// PING period of the nodes below the masters. Their deaths are normally reported
    /// by their children (LOSTUPSTREAM) or their parent (a CHILDSUPDATE without them):
    /// the node is PINGed at once and is dead if silent for `dead_after_missed`
    /// periods. So the controller's messages grow with masters and events, not with
    /// the tree; the sweep is only the safety net.
    pub sweep_ms: u64,
    /// The statistics period (the nodes' `--stats-secs`): scale ticks and FULLSTATS checks.
    pub stats_ms: u64,
    /// Events within this long share one rebuild.
    pub rebuild_delay_ms: u64,
    /// The administrator's design; empty when none was given.
    pub topology: Topology,
    /// Client subnets to regions, for locality.
    pub regions: RegionMap,
    /// Scale the public tier out and in from the pool of standby reflectors.
    pub scale: Option<ScaleConfig>,
    /// Round-robin FULLSTATS requests per period (besides those asked for a reason).
    pub full_stats_per_period: usize,
    /// Invalid messages a connection may send before it is closed.
    pub max_invalid_per_conn: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            ping_ms: 1000,
            dead_after_missed: 2,
            sweep_ms: 300_000,
            stats_ms: 2000,
            rebuild_delay_ms: 200,
            topology: empty_topology(),
            regions: RegionMap::default(),
            scale: None,
            full_stats_per_period: 8,
            max_invalid_per_conn: 16,
        }
    }
}

/// The topology when no file is given: every node is placed by policy.
pub fn empty_topology() -> Topology {
    Topology {
        encoders: Vec::new(),
        fan_out: 16,
        nodes: Vec::new(),
        links: Vec::new(),
    }
}

/// What the core asks its driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Seal and send `msg` on `conn`.
    Send { conn: ConnId, msg: Message },
    /// Close `conn`.
    Close { conn: ConnId, reason: String },
    /// Start a reflector `id` of `role` through the deployer; it joins with HELLO. The
    /// driver reports a failure with [`Controller::deploy_failed`].
    Deploy {
        id: String,
        role: Role,
        reason: String,
    },
    /// Stop and remove the deployed reflector `id` (drained, dead, or never booted).
    Undeploy { id: String, reason: String },
}

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// In the tree and serving.
    Up,
    /// In the pool: said HELLO with `standby`, waits outside the tree.
    Standby,
    /// Serving its viewers, but no new ones are sent to it; KILLed once they have left.
    Draining { since_ms: u64 },
    /// Missed its PINGs or its connection closed.
    Dead,
    /// Said BYE or was KILLed.
    Left,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Standby => "standby",
            NodeState::Draining { .. } => "draining",
            NodeState::Dead => "dead",
            NodeState::Left => "left",
        }
    }

    /// In the tree (placed, gets upstreams, relays).
    fn in_tree(self) -> bool {
        matches!(self, NodeState::Up | NodeState::Draining { .. })
    }
}

/// How long a redirect counts towards a reflector's estimated viewers before its
/// FULLSTATS would show the client (connecting takes a moment).
const REDIRECT_SETTLE_MS: u64 = 1000;
/// Redirect times kept per node, bounding memory under a flood of clients.
const MAX_RECENT_REDIRECTS: usize = 4096;
/// Public reflectors of a subtree asked for FULLSTATS when its aggregate looks wrong.
const SUSPECT_FULL_STATS: usize = 64;
/// An aggregate whose viewers differ from the estimates by more than 1/this of them
/// looks wrong. Viewers who leave are seen only in FULLSTATS, so the estimates of a
/// subtree drift above the truth, and the redirect policy pours new viewers onto the
/// reflectors refreshed last. At 1/10 (tried first) `divisor-sim` at 10,000 reflectors
/// and 1M viewers showed the busiest public at 1.23x the mean; at 1/30, 1.14x, for
/// 2.3x the FULLSTATS (still a rate set by the tree and the sessions, not the viewers).
const AGGREGATE_TOLERANCE: u64 = 30;
/// Neighbours that must report a node lost, with nothing heard from it since the first
/// report, for it to be dead without waiting for its PING (see
/// [`Controller::check_now`]). One child's report alone could be its own link's fault.
const LOST_QUORUM: usize = 2;
/// Jitter (ms) in an aggregate above which the subtree's publics are asked for FULLSTATS.
const JITTER_SUSPECT_MS: f64 = 30.0;

struct Node {
    hello: Hello,
    conn: Option<ConnId>,
    state: NodeState,
    last_heard_ms: u64,
    last_ping_ms: u64,
    /// A child reported losing it: PINGed every `ping_ms` until it answers.
    suspect_since: Option<u64>,
    /// The neighbours that reported losing it since `suspect_since` (children by
    /// LOSTUPSTREAM, its parent by a CHILDSUPDATE without it).
    lost_by: BTreeSet<String>,
    ping_seq: u64,
    /// The latest FULLSTATS, and when it came.
    full: Option<(u64, Stats)>,
    /// Its clients lost packets between its last two FULLSTATS.
    losing: bool,
    /// Recent redirects to it, in time order: when each was sent and the value of
    /// `redirects` just before it, so the viewers sent since any time are one
    /// subtraction (a redirect may send many viewers, see
    /// [`Controller::redirect_many`]).
    recent_redirects: VecDeque<(u64, u64)>,
    /// Viewers ever redirected to it.
    redirects: u64,
    /// The upstream list last sent in a REDIRECT (link addresses).
    sent_upstreams: Vec<String>,
    /// The children its latest CHILDSUPDATE named (those whose reports reach it).
    reported_children: BTreeSet<String>,
}

impl Node {
    /// Viewers: the last FULLSTATS' figure plus redirects since (not yet in it).
    fn viewers(&self) -> u64 {
        let (at, base) = match &self.full {
            Some((at, s)) => (at.saturating_sub(REDIRECT_SETTLE_MS), s.viewers),
            None => (0, 0),
        };
        // The redirect times are pushed in order: find the first after `at` by bisection;
        // the viewers sent since are the running total minus the total before it.
        let first = self.recent_redirects.partition_point(|&(t, _)| t <= at);
        let since = self
            .recent_redirects
            .get(first)
            .map_or(0, |&(_, before)| self.redirects - before);
        base + since
    }

    fn egress_bps(&self) -> u64 {
        let Some((_, s)) = &self.full else { return 0 };
        // Scale the measured egress by the viewers added since.
        if s.viewers == 0 {
            return s.egress_bps;
        }
        (s.egress_bps as f64 * self.viewers() as f64 / s.viewers as f64) as u64
    }

    fn mean_jitter_ms(&self) -> f64 {
        let Some((_, s)) = &self.full else { return 0.0 };
        let (mut w, mut sum) = (0u64, 0.0);
        for c in &s.channels {
            w += c.viewers;
            sum += c.jitter_ms * c.viewers as f64;
        }
        if w == 0 {
            0.0
        } else {
            sum / w as f64
        }
    }

    fn carries(&self, channel: &str) -> bool {
        self.full
            .as_ref()
            .is_some_and(|(_, s)| s.channels.iter().any(|c| c.id == channel))
    }
}

struct Conn {
    node: Option<String>,
    invalid: u32,
    /// The time of the last message sent here. Each message gets a later one, so two
    /// identical messages (two ERRORs for two bad frames) never look like a replay.
    last_sent_ms: u64,
}

/// The controller core.
pub struct Controller {
    cfg: ControllerConfig,
    nodes: BTreeMap<String, Node>,
    conns: HashMap<ConnId, Conn>,
    plan: Plan,
    /// Masters' latest aggregates, and when they came.
    aggregates: BTreeMap<String, (u64, Stats)>,
    out: VecDeque<Output>,
    rebuild_at: Option<u64>,
    next_ping_ms: u64,
    next_period_ms: u64,
    next_check_ms: u64,
    /// Round-robin position of FULLSTATS requests.
    full_stats_cursor: Option<String>,
    scale: Option<ScalePolicy>,
    metrics: ControllerMetrics,
    /// Children per node of the current plan, rebuilt lazily after the plan changes.
    /// Children per parent in `plan`, kept up to date by every change to the plan, so an
    /// event never pays a scan of the whole tree.
    children: ChildrenIndex,
    /// Per node, the nodes that have it among their backups (a superset: entries may
    /// outlive the backup between rebuilds, never the reverse), so a death touches only
    /// the nodes that leaned on it.
    backed_by: ChildrenIndex,
    /// The designed role of every node the topology lists.
    designed: HashMap<String, Role>,
    /// `max_children` per node.
    fan_out: FanOut,
    /// Reflectors the deployer runs for this controller (started or adopted), by id.
    deployed: BTreeMap<String, Deployment>,
    /// Numbers deployed names from here on.
    next_deploy_seq: u64,
    started_ms: u64,
    /// The redirect's view of the public reflectors, kept between decisions (see
    /// [`RedirectCache`]); `None` when something it depends on may have changed.
    redirect_cache: Option<RedirectCache>,
    /// The channel of the latest redirect: the one a cache built for other needs is for.
    redirect_channel: String,
    /// Masters and suspects: the nodes [`Controller::check_liveness`] looks at every
    /// tick (a superset; the full check prunes it).
    watched: BTreeSet<String>,
    next_full_check_ms: u64,
}

/// What the redirect keeps between decisions: the public reflectors in id order with
/// an index over them (see [`redirect_cache`]), so a decision is neither a walk of the
/// registry and the plan nor a pass over every public reflector.
///
/// It is dropped by every input that may change a candidate: any message but PING, PONG,
/// STATS, FULLSTATS, CHILDSUPDATE, LOSTUPSTREAM and ERROR (which touch no candidate
/// field), a closed connection, a node going down, a rebuild, and the scale policy taking a
/// node from the pool. A FULLSTATS (or a non-master's STATS) and a
/// redirect refresh the one node they change. Debug builds check every decision's
/// cache against a fresh walk.
fn candidate_of(
    cache: &mut RedirectCache,
    id: &str,
    n: &Node,
    in_plan: bool,
    master: Option<&str>,
) -> CachedCandidate {
    CachedCandidate {
        master: master.map(|m| cache.master_index(m)),
        id: id.to_string(),
        up: n.state.in_tree() && n.conn.is_some() && in_plan,
        draining: matches!(n.state, NodeState::Draining { .. }),
        region: cache.region_index(&n.hello.region),
        viewers: n.viewers(),
        max_viewers: n.hello.max_viewers,
        egress_bps: n.egress_bps(),
        egress_budget_bps: n.hello.egress_budget_bps,
        jitter_ms: n.mean_jitter_ms(),
        losing: n.losing,
        carries: n.carries(&cache.channel),
        full_at_ms: n.full.as_ref().map_or(0, |(at, _)| *at),
    }
}

/// Children per parent, for a [`Plan`] (or, built by [`ChildrenIndex::backups_of`],
/// the nodes that have each node as a backup).
#[derive(Default)]
struct ChildrenIndex(HashMap<String, Vec<String>>);

impl ChildrenIndex {
    fn backups_of(plan: &Plan) -> ChildrenIndex {
        let mut idx = ChildrenIndex::default();
        for (node, list) in &plan.backups {
            for b in list {
                idx.add(b, node);
            }
        }
        idx
    }

    fn of(plan: &Plan) -> ChildrenIndex {
        let mut idx: HashMap<String, Vec<String>> = HashMap::new();
        for (child, parent) in &plan.parent {
            if let Some(p) = parent {
                idx.entry(p.clone()).or_default().push(child.clone());
            }
        }
        ChildrenIndex(idx)
    }

    fn get(&self, parent: &str) -> &[String] {
        self.0.get(parent).map_or(&[], Vec::as_slice)
    }

    fn count(&self, parent: &str) -> usize {
        self.get(parent).len()
    }

    fn add(&mut self, parent: &str, child: &str) {
        self.0
            .entry(parent.to_string())
            .or_default()
            .push(child.to_string());
    }

    fn remove(&mut self, parent: &str, child: &str) {
        if let Some(v) = self.0.get_mut(parent) {
            v.retain(|c| c != child);
            if v.is_empty() {
                self.0.remove(parent);
            }
        }
    }

    /// Forget `parent`'s list and return it.
    fn take(&mut self, parent: &str) -> Vec<String> {
        self.0.remove(parent).unwrap_or_default()
    }
}

impl Controller {
    pub fn new(cfg: ControllerConfig, now_ms: u64) -> Controller {
        let scale = cfg.scale.clone().map(ScalePolicy::new);
        let plan = tree::build(&cfg.topology, &BTreeSet::new());
        let designed = cfg
            .topology
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.role))
            .collect();
        let fan_out = cfg.topology.fan_outs();
        let children = ChildrenIndex::of(&plan);
        let backed_by = ChildrenIndex::backups_of(&plan);
        Controller {
            next_ping_ms: now_ms + cfg.ping_ms,
            next_period_ms: now_ms + cfg.stats_ms,
            next_check_ms: now_ms + check_every(&cfg),
            cfg,
            nodes: BTreeMap::new(),
            conns: HashMap::new(),
            plan,
            aggregates: BTreeMap::new(),
            out: VecDeque::new(),
            rebuild_at: None,
            full_stats_cursor: None,
            scale,
            metrics: ControllerMetrics::default(),
            children,
            backed_by,
            designed,
            fan_out,
            deployed: BTreeMap::new(),
            next_deploy_seq: 1,
            started_ms: now_ms,
            redirect_cache: None,
            redirect_channel: String::new(),
            watched: BTreeSet::new(),
            next_full_check_ms: now_ms,
        }
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    pub fn metrics(&self) -> &ControllerMetrics {
        &self.metrics
    }

    /// For the driver's timing of each call (a histogram in `/metrics`).
    pub fn metrics_mut(&mut self) -> &mut ControllerMetrics {
        &mut self.metrics
    }

    /// The current plan (parents, backups).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// A node's state, if it ever said HELLO.
    pub fn node_state(&self, id: &str) -> Option<NodeState> {
        self.nodes.get(id).map(|n| n.state)
    }

    /// Masters' latest aggregates.
    pub fn aggregates(&self) -> impl Iterator<Item = &Stats> {
        self.aggregates.values().map(|(_, s)| s)
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Controller::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> u64 {
        let mut t = self
            .next_ping_ms
            .min(self.next_period_ms)
            .min(self.next_check_ms);
        if let Some(r) = self.rebuild_at {
            t = t.min(r);
        }
        t
    }

    // ----- connections ------------------------------------------------------------------

    /// A new control connection.
    pub fn connected(&mut self, conn: ConnId) {
        self.conns.insert(
            conn,
            Conn {
                node: None,
                invalid: 0,
                last_sent_ms: 0,
            },
        );
    }

    /// A connection closed (or failed).
    pub fn closed(&mut self, conn: ConnId, now_ms: u64) {
        self.redirect_cache = None;
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let Some(id) = c.node else { return };
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.conn != Some(conn) {
            return; // an older connection of a node that has reconnected
        }
        n.conn = None;
        if matches!(n.state, NodeState::Left | NodeState::Dead) {
            return;
        }
        info!(node = %id, "control connection closed: the node is dead");
        self.node_down(&id, NodeState::Dead, "connection closed", now_ms);
    }

    /// A message that failed to open (bad tag, stale, malformed): answered with ERROR and
    /// counted; a connection that keeps sending them is closed.
    pub fn invalid(&mut self, conn: ConnId, err: &ControlError, now_ms: u64) {
        self.metrics.invalid(err);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.invalid += 1;
        let node = c.node.clone();
        warn!(
            conn,
            node = node.as_deref().unwrap_or("?"),
            "invalid control message: {err}"
        );
        let to = node.map_or(Peer::All, Peer::Node);
        self.send(
            conn,
            to,
            Body::Error {
                code: err.code(),
                detail: err.to_string(),
            },
            now_ms,
        );
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.invalid >= self.cfg.max_invalid_per_conn)
        {
            self.out.push_back(Output::Close {
                conn,
                reason: "too many invalid control messages".into(),
            });
        }
    }

    /// A valid (authenticated, fresh) message on `conn`.
    pub fn message(&mut self, conn: ConnId, msg: Message, now_ms: u64) {
        self.metrics.message_in(msg.body.type_name());
        if !matches!(
            msg.body,
            Body::Ping { .. }
                | Body::Pong { .. }
                | Body::Stats(_)
                | Body::FullStats(_)
                | Body::ChildsUpdate { .. }
                | Body::LostUpstream { .. }
                | Body::Error { .. }
        ) {
            self.redirect_cache = None;
        }
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if let Body::Hello(hello) = msg.body {
            if msg.from != Peer::Node(hello.id.clone()) {
                return self.refuse(conn, 400, "HELLO from one id about another", now_ms);
            }
            return self.hello(conn, hello, now_ms);
        }
        let Some(id) = c.node.clone() else {
            return self.refuse(conn, 403, "say HELLO first", now_ms);
        };
        if msg.from != Peer::Node(id.clone()) {
            return self.refuse(
                conn,
                403,
                &format!("this connection speaks for {id}"),
                now_ms,
            );
        }
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        n.last_heard_ms = now_ms;
        if n.suspect_since.is_some_and(|t| now_ms >= t) {
            n.suspect_since = None;
            n.lost_by.clear();
        }
        match msg.body {
            Body::Hello(_) => {}
            Body::Pong { .. } => {}
            Body::Ping { seq } => self.send(conn, Peer::Node(id), Body::Pong { seq }, now_ms),
            Body::Bye { reason } => {
                info!(node = %id, "BYE: {reason}");
                self.node_down(&id, NodeState::Left, "said BYE", now_ms);
            }
            Body::Stats(s) => self.stats(&id, s, now_ms),
            Body::FullStats(s) => self.full_stats(&id, s, now_ms),
            Body::LostUpstream { addr } => self.lost_upstream(&id, &addr, now_ms),
            Body::ChildsUpdate { children } => self.childs_update(&id, children, now_ms),
            Body::Error { code, detail } => {
                warn!(node = %id, code, "node reports an error: {detail}");
            }
            Body::Kill { .. } | Body::Redirect { .. } | Body::ReqFullStats { .. } => {
                self.refuse(conn, 400, "only the controller sends that", now_ms);
            }
        }
    }

    fn refuse(&mut self, conn: ConnId, code: u16, detail: &str, now_ms: u64) {
        self.metrics.refused();
        warn!(conn, code, "control message refused: {detail}");
        self.send(
            conn,
            Peer::All,
            Body::Error {
                code,
                detail: detail.to_string(),
            },
            now_ms,
        );
    }

    fn send(&mut self, conn: ConnId, to: Peer, body: Body, now_ms: u64) {
        self.metrics.message_out(body.type_name());
        let time_ms = match self.conns.get_mut(&conn) {
            Some(c) => {
                c.last_sent_ms = now_ms.max(c.last_sent_ms + 1);
                c.last_sent_ms
            }
            None => now_ms,
        };
        self.out.push_back(Output::Send {
            conn,
            msg: Message {
                time_ms,
                from: Peer::Root,
                to,
                body,
            },
        });
    }

    fn send_to(&mut self, id: &str, body: Body, now_ms: u64) {
        if let Some(conn) = self.nodes.get(id).and_then(|n| n.conn) {
            self.send(conn, Peer::Node(id.to_string()), body, now_ms);
        }
    }

    // ----- membership -------------------------------------------------------------------

    fn hello(&mut self, conn: ConnId, hello: Hello, now_ms: u64) {
        let id = hello.id.clone();
        if id.is_empty() || id == "^" || id == "*" {
            return self.refuse(conn, 400, "a node id must not be empty, ^ or *", now_ms);
        }
        if let Some(&designed) = self.designed.get(&id) {
            if designed != hello.role {
                let detail = format!(
                    "{id} is a {} in the topology, not a {}",
                    designed, hello.role
                );
                return self.refuse(conn, 409, &detail, now_ms);
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.node = Some(id.clone());
        }
        let standby = hello.standby && hello.role == Role::Public;
        let (old_conn, was) = match self.nodes.get(&id) {
            Some(n) => (n.conn.filter(|&c| c != conn), Some(n.state)),
            None => (None, None),
        };
        if let Some(old) = old_conn {
            self.out.push_back(Output::Close {
                conn: old,
                reason: format!("{id} connected again"),
            });
        }
        // A node that was serving keeps its place across a reconnect; a pool node stays in
        // the pool; everyone else joins as asked.
        let state = match was {
            Some(s @ (NodeState::Up | NodeState::Draining { .. })) => s,
            _ if standby => NodeState::Standby,
            _ => NodeState::Up,
        };
        info!(
            node = %id,
            role = %hello.role,
            link = %hello.link,
            state = state.as_str(),
            "HELLO"
        );
        let node = self.nodes.entry(id.clone()).or_insert_with(|| Node {
            hello: hello.clone(),
            conn: None,
            state,
            last_heard_ms: now_ms,
            // Spread the nodes' sweeps over the period, so ten thousand nodes that joined
            // together are not all PINGed in the same millisecond.
            last_ping_ms: now_ms.saturating_sub(spread(&id, self.cfg.sweep_ms)),
            suspect_since: None,
            lost_by: BTreeSet::new(),
            ping_seq: 0,
            full: None,
            losing: false,
            recent_redirects: VecDeque::new(),
            redirects: 0,
            sent_upstreams: Vec::new(),
            reported_children: BTreeSet::new(),
        });
        if hello.role == Role::Master {
            self.watched.insert(id.clone());
        }
        node.hello = hello;
        node.conn = Some(conn);
        node.state = state;
        node.last_heard_ms = now_ms;
        node.suspect_since = None;
        node.lost_by.clear();
        // The node may have restarted: it holds no upstreams until told again.
        node.sent_upstreams.clear();
        if state.in_tree() {
            if self.designed.contains_key(&id) {
                // A designed node: the design (on the surviving graph) decides where it
                // goes; the coming rebuild computes it, coalescing a burst of joins.
                self.schedule_rebuild(now_ms);
            } else {
                self.place_now(&id);
                self.send_redirects_to(vec![id.clone()], now_ms);
            }
        }
        self.deployed_hello(&id, now_ms);
    }

    /// Put `id` in the plan at once (its designed parent if alive, else the least-loaded
    /// one), so it gets upstreams without waiting for the rebuild.
    fn place_now(&mut self, id: &str) {
        let Some(role) = self.nodes.get(id).map(|n| n.hello.role) else {
            return;
        };
        if self.plan.parent.contains_key(id) {
            return;
        }
        self.place_in_plan(id, role);
    }

    /// [`tree::place_with`] on the current plan, keeping the children index in step.
    fn place_in_plan(&mut self, id: &str, role: Role) -> Option<String> {
        if let Some(p) = self.plan.parent.get(id) {
            return p.clone();
        }
        let children = &self.children;
        let parent = tree::place_with(&mut self.plan, &self.fan_out, id, role, |p| {
            children.count(p)
        })?;
        self.children.add(&parent, id);
        for b in self.plan.backups.get(id).into_iter().flatten() {
            self.backed_by.add(b, id);
        }
        Some(parent)
    }

    fn node_down(&mut self, id: &str, state: NodeState, why: &str, now_ms: u64) {
        self.redirect_cache = None;
        let Some(n) = self.nodes.get_mut(id) else {
            return;
        };
        let was_in_tree = n.state.in_tree();
        n.state = state;
        if let Some(conn) = n.conn.take() {
            if state == NodeState::Dead {
                self.out.push_back(Output::Close {
                    conn,
                    reason: why.to_string(),
                });
            }
        }
        self.aggregates.remove(id);
        if !was_in_tree {
            return;
        }
        self.metrics.repair(why);
        warn!(node = %id, "{why}: repairing the tree");
        let touched = self.repair_now(id);
        self.send_redirects_to(touched, now_ms);
        self.schedule_rebuild(now_ms);
    }

    /// Move the children of the lost node `id` to their first live backup (or any
    /// least-loaded parent), and drop it from the plan. Returns the nodes whose upstreams
    /// changed. The full rebuild comes later.
    fn repair_now(&mut self, id: &str) -> Vec<String> {
        let children = self.children.take(id);
        if let Some(Some(p)) = self.plan.parent.get(id) {
            self.children.remove(&p.clone(), id);
        }
        self.plan.parent.remove(id);
        self.plan.role.remove(id);
        self.plan.backups.remove(id);
        let mut touched = children.clone();
        for node in self.backed_by.take(id) {
            if let Some(list) = self.plan.backups.get_mut(&node) {
                let before = list.len();
                list.retain(|b| b != id);
                if list.len() != before {
                    touched.push(node);
                }
            }
        }
        for child in children {
            let backup = self
                .plan
                .backups
                .get(&child)
                .and_then(|b| b.first().cloned());
            match backup {
                Some(b) => {
                    if let Some(list) = self.plan.backups.get_mut(&child) {
                        list.retain(|x| *x != b);
                    }
                    self.children.add(&b, &child);
                    self.plan.parent.insert(child.clone(), Some(b));
                }
                None => {
                    // No backup: detach the child's subtree root and place it again.
                    let role = self.plan.role.get(&child).copied();
                    self.plan.parent.remove(&child);
                    if let Some(role) = role {
                        if self.place_in_plan(&child, role).is_none() {
                            warn!(node = %child, "no parent left for it");
                        }
                    }
                }
            }
        }
        touched
    }

    fn schedule_rebuild(&mut self, now_ms: u64) {
        if self.rebuild_at.is_none() {
            self.rebuild_at = Some(now_ms + self.cfg.rebuild_delay_ms);
        }
    }

    /// The alive nodes of the tree.
    fn alive(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.state.in_tree())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Rebuild the plan from the design on the surviving graph, place the nodes the design
    /// does not name, and REDIRECT those whose upstreams changed.
    pub fn rebuild(&mut self, now_ms: u64) {
        self.redirect_cache = None;
        self.rebuild_at = None;
        let alive = self.alive();
        let mut plan = tree::build(&self.cfg.topology, &alive);
        let mut children = ChildrenIndex::of(&plan);
        for p in &plan.pruned {
            debug!(what = %p.what, "pruned: {}", p.reason);
        }
        let mut unplaced: Vec<(u8, String, Role)> = alive
            .iter()
            .filter(|id| !plan.parent.contains_key(*id))
            .filter_map(|id| {
                self.nodes
                    .get(id)
                    .map(|n| (n.hello.role.rank(), id.clone(), n.hello.role))
            })
            .collect();
        unplaced.sort();
        for (_, id, role) in unplaced {
            // Keep a node the design does not name where it was, while its parent lives
            // and has room: a rebuild should not shuffle it.
            let kept = self.plan.parent.get(&id).cloned().flatten().filter(|p| {
                plan.parent.contains_key(p)
                    && plan.role.get(p).is_some_and(|r| *r != Role::Public)
                    && children.count(p) < self.fan_out.of(p)
            });
            if let Some(p) = kept {
                let backups: Vec<String> = self
                    .plan
                    .backups
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .filter(|b| plan.parent.contains_key(*b))
                    .cloned()
                    .collect();
                children.add(&p, &id);
                plan.parent.insert(id.clone(), Some(p));
                plan.role.insert(id.clone(), role);
                plan.backups.insert(id.clone(), backups);
                continue;
            }
            match tree::place_with(&mut plan, &self.fan_out, &id, role, |p| children.count(p)) {
                Some(p) => children.add(&p, &id),
                None if role != Role::Master => {
                    warn!(node = %id, role = %role, "no parent with room: not placed");
                }
                None => {}
            }
        }
        self.backed_by = ChildrenIndex::backups_of(&plan);
        self.plan = plan;
        self.children = children;
        self.metrics.rebuilt();
        self.send_redirects(now_ms);
    }

    /// The link addresses `id` should take as upstreams now.
    fn upstreams_of(&self, id: &str) -> Vec<UpstreamRef> {
        match self.plan.parent.get(id) {
            Some(None) => self
                .cfg
                .topology
                .encoders
                .iter()
                .enumerate()
                .map(|(i, addr)| UpstreamRef {
                    id: format!("encoder{i}"),
                    addr: addr.clone(),
                })
                .collect(),
            Some(Some(_)) => self
                .plan
                .upstreams(id)
                .into_iter()
                .filter_map(|u| {
                    let n = self.nodes.get(&u)?;
                    n.state.in_tree().then(|| UpstreamRef {
                        id: u.clone(),
                        addr: n.hello.link.clone(),
                    })
                })
                .collect(),
            None => Vec::new(),
        }
    }

    /// REDIRECT every connected node of the tree whose upstream list changed, parents
    /// before children (a moved child then finds its new parent already wired).
    fn send_redirects(&mut self, now_ms: u64) {
        let all: Vec<String> = self.nodes.keys().cloned().collect();
        self.send_redirects_to(all, now_ms);
    }

    /// [`Controller::send_redirects`] for the nodes `ids` only: an event touches a few
    /// nodes, and must not cost a sweep of ten thousand.
    fn send_redirects_to(&mut self, ids: Vec<String>, now_ms: u64) {
        let mut todo: Vec<(usize, String)> = ids
            .into_iter()
            .filter(|id| {
                self.nodes
                    .get(id)
                    .is_some_and(|n| n.state.in_tree() && n.conn.is_some())
            })
            .map(|id| (self.plan.depth(&id).unwrap_or(usize::MAX), id))
            .collect();
        todo.sort();
        todo.dedup();
        for (_, id) in todo {
            let ups = self.upstreams_of(&id);
            if ups.is_empty() {
                // A master without encoders in the topology keeps its own `--upstream`;
                // an unplaced node keeps what it has.
                continue;
            }
            let addrs: Vec<String> = ups.iter().map(|u| u.addr.clone()).collect();
            let Some(n) = self.nodes.get_mut(&id) else {
                continue;
            };
            if n.sent_upstreams == addrs {
                continue;
            }
            info!(node = %id, upstreams = %addrs.join(","), "REDIRECT");
            n.sent_upstreams = addrs;
            self.metrics.redirected_node();
            self.send_to(&id, Body::Redirect { upstreams: ups }, now_ms);
        }
    }

    // ----- timers -----------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now_ms: u64) {
        if now_ms >= self.next_check_ms {
            self.next_check_ms = now_ms + check_every(&self.cfg);
            self.check_liveness(now_ms);
        }
        if now_ms >= self.next_ping_ms {
            self.next_ping_ms = now_ms + self.cfg.ping_ms;
            self.ping_all(now_ms);
        }
        if self.rebuild_at.is_some_and(|t| now_ms >= t) {
            self.rebuild(now_ms);
        }
        if now_ms >= self.next_period_ms {
            self.next_period_ms = now_ms + self.cfg.stats_ms;
            self.period(now_ms);
        }
    }

    /// PING the masters and the suspects every period, the others once per sweep,
    /// except those their parent vouches for: a node its parent's latest CHILDSUPDATE
    /// names is heard from through the parent (its reports reach it), and the parent
    /// says so as soon as they stop. So in a steady tree only the masters are PINGed.
    fn ping_all(&mut self, now_ms: u64) {
        let sweep = self.cfg.sweep_ms.max(self.cfg.ping_ms);
        let mut due: Vec<(String, bool)> = Vec::new();
        for (id, n) in &self.nodes {
            if n.conn.is_none() {
                continue;
            }
            if n.hello.role == Role::Master || n.suspect_since.is_some() {
                due.push((id.clone(), false));
            } else if now_ms.saturating_sub(n.last_ping_ms) >= sweep {
                due.push((id.clone(), self.vouched(id)));
            }
        }
        for (id, vouched) in due {
            let Some(n) = self.nodes.get_mut(&id) else {
                continue;
            };
            n.last_ping_ms = now_ms;
            if vouched {
                n.last_heard_ms = now_ms;
                continue;
            }
            n.ping_seq += 1;
            let (conn, seq) = (n.conn, n.ping_seq);
            if let Some(conn) = conn {
                self.send(conn, Peer::Node(id), Body::Ping { seq }, now_ms);
            }
        }
    }

    /// Its parent in the plan is up and names it in its latest CHILDSUPDATE.
    fn vouched(&self, id: &str) -> bool {
        let Some(Some(parent)) = self.plan.parent.get(id) else {
            return false;
        };
        self.nodes.get(parent).is_some_and(|p| {
            p.state.in_tree() && p.conn.is_some() && p.reported_children.contains(id)
        })
    }

    /// Declare dead the nodes silent too long. Masters and suspects (whose limits are a
    /// few PING periods) are checked every `check_every`; the rest, whose limit is a
    /// sweep, once per `ping_ms`, so ten thousand quiet leaves cost no scan every tick.
    fn check_liveness(&mut self, now_ms: u64) {
        let missed = u64::from(self.cfg.dead_after_missed.max(1));
        let master_limit = self.cfg.ping_ms * missed;
        let sweep_limit = self.cfg.sweep_ms.max(self.cfg.ping_ms) * missed + self.cfg.ping_ms;
        let verdict = |n: &Node| -> Option<&'static str> {
            n.conn?;
            if let Some(t) = n.suspect_since {
                if now_ms.saturating_sub(t) > self.cfg.ping_ms && n.last_heard_ms < t {
                    return Some("lost by its child, silent to PING");
                }
            }
            let limit = if n.hello.role == Role::Master {
                master_limit
            } else {
                sweep_limit
            };
            (now_ms.saturating_sub(n.last_heard_ms) > limit).then_some("missed its PINGs")
        };
        let dead: Vec<(String, &'static str)> = if now_ms >= self.next_full_check_ms {
            self.next_full_check_ms = now_ms + self.cfg.ping_ms;
            let nodes = &self.nodes;
            self.watched.retain(|id| {
                nodes.get(id).is_some_and(|n| {
                    n.conn.is_some() && (n.hello.role == Role::Master || n.suspect_since.is_some())
                })
            });
            self.nodes
                .iter()
                .filter_map(|(id, n)| verdict(n).map(|why| (id.clone(), why)))
                .collect()
        } else {
            self.watched
                .iter()
                .filter_map(|id| {
                    let why = verdict(self.nodes.get(id)?)?;
                    Some((id.clone(), why))
                })
                .collect()
        };
        for (id, why) in dead {
            self.node_down(&id, NodeState::Dead, why, now_ms);
        }
    }

    /// `reporter` lost its primary upstream `addr`: PING that node now, and every period
    /// until it answers; silent for one period, it is dead.
    fn lost_upstream(&mut self, reporter: &str, addr: &str, now_ms: u64) {
        let Some(id) = self
            .nodes
            .iter()
            .find(|(_, n)| n.hello.link == addr && n.conn.is_some())
            .map(|(id, _)| id.clone())
        else {
            debug!(reporter, addr, "LOSTUPSTREAM about no connected node");
            return;
        };
        info!(node = %id, reporter, "LOSTUPSTREAM: checking the node now");
        self.check_now(&id, reporter, now_ms);
    }

    /// A parent's children whose reports reach it. One that drops out of the list while
    /// the plan still has it there has gone silent or lost its link: it is PINGed at
    /// once, as for LOSTUPSTREAM. This is how a leaf's death is noticed without the
    /// controller PINGing every leaf: the parents watch them.
    fn childs_update(&mut self, parent: &str, children: Vec<String>, now_ms: u64) {
        let Some(n) = self.nodes.get_mut(parent) else {
            return;
        };
        let now: BTreeSet<String> = children.into_iter().collect();
        let gone: Vec<String> = n.reported_children.difference(&now).cloned().collect();
        debug!(node = %parent, children = now.len(), gone = gone.len(), "CHILDSUPDATE");
        n.reported_children = now;
        for child in gone {
            let still_here =
                self.plan.parent.get(&child).and_then(|p| p.as_deref()) == Some(parent);
            let up = self
                .nodes
                .get(&child)
                .is_some_and(|c| c.state == NodeState::Up && c.conn.is_some());
            if still_here && up {
                info!(node = %child, parent, "its parent stopped hearing from it: checking the node now");
                self.check_now(&child, parent, now_ms);
            }
        }
    }

    /// `reporter` lost `id`: PING it now and keep PINGing it every `ping_ms` until it
    /// answers; silent for one period, it is dead. Lost by [`LOST_QUORUM`] neighbours
    /// and silent since the first report, it is dead at once: two children that each
    /// heard nothing on the whole link for the data plane's silence time are better
    /// evidence than a PING, and waiting a PING period would put the controller's repair
    /// a second behind the data plane's own switch.
    fn check_now(&mut self, id: &str, reporter: &str, now_ms: u64) {
        let Some(n) = self.nodes.get_mut(id) else {
            return;
        };
        if n.suspect_since.is_none() {
            n.suspect_since = Some(now_ms);
        }
        n.lost_by.insert(reporter.to_string());
        if n.lost_by.len() >= LOST_QUORUM {
            return self.node_down(id, NodeState::Dead, "lost by two neighbours", now_ms);
        }
        self.watched.insert(id.to_string());
        n.ping_seq += 1;
        n.last_ping_ms = now_ms;
        let (conn, seq) = (n.conn, n.ping_seq);
        if let Some(conn) = conn {
            self.send(conn, Peer::Node(id.to_string()), Body::Ping { seq }, now_ms);
        }
    }

    /// Once per statistics period: FULLSTATS requests, drains, the scale policy.
    fn period(&mut self, now_ms: u64) {
        // Round-robin over the publics of the tree, from after the last one asked.
        let serving =
            |n: &Node| n.hello.role == Role::Public && n.state.in_tree() && n.conn.is_some();
        let from = self.full_stats_cursor.take().unwrap_or_default();
        let after = self
            .nodes
            .range::<str, _>((Bound::Excluded(from.as_str()), Bound::Unbounded));
        let wrapped = self
            .nodes
            .range::<str, _>((Bound::Unbounded, Bound::Included(from.as_str())));
        let ask: Vec<String> = after
            .chain(wrapped)
            .filter(|(_, n)| serving(n))
            .take(self.cfg.full_stats_per_period)
            .map(|(id, _)| id.clone())
            .collect();
        self.full_stats_cursor = ask.last().cloned().or(Some(from));
        for id in ask {
            self.send_to(&id, Body::ReqFullStats { channel: None }, now_ms);
        }
        self.drain_step(now_ms);
        self.scale_step(now_ms);
    }

    // ----- statistics -------------------------------------------------------------------

    fn stats(&mut self, id: &str, s: Stats, now_ms: u64) {
        let Some(n) = self.nodes.get(id) else { return };
        if n.hello.role != Role::Master {
            // A node below a master reports to its parent, not here; tolerate it (it may
            // have no parent yet) as its own figures.
            return self.full_stats(id, s, now_ms);
        }
        // Something looks wrong in the subtree? Ask its publics for their own figures.
        let estimated = self.estimated_below(id);
        let diff = estimated.abs_diff(s.viewers);
        let lost_more = match self.aggregates.get(id) {
            Some((_, prev)) => s.channels.iter().any(|c| {
                prev.channels
                    .iter()
                    .find(|p| p.id == c.id)
                    .is_some_and(|p| c.cum_lost > p.cum_lost)
            }),
            None => false,
        };
        let jittery = s.channels.iter().any(|c| c.jitter_ms > JITTER_SUSPECT_MS);
        let suspect = diff > 5.max(s.viewers / AGGREGATE_TOLERANCE) || lost_more || jittery;
        self.aggregates.insert(id.to_string(), (now_ms, s));
        if suspect {
            debug!(master = %id, estimated, diff, lost_more, jittery, "aggregate looks wrong: asking for FULLSTATS");
            // The stalest figures first: asking the same first few every period would
            // leave the rest of a large subtree with estimates that miss every viewer who
            // left since (and the redirect policy would pour new viewers onto the few).
            let ask = self.stalest_below(id, SUSPECT_FULL_STATS);
            for p in ask {
                self.send_to(&p, Body::ReqFullStats { channel: None }, now_ms);
            }
        }
    }

    /// The estimated viewers of the publics below master `id`: kept summed per master
    /// in the redirect cache, so checking an aggregate costs no walk of the subtree.
    fn estimated_below(&mut self, id: &str) -> u64 {
        let cache = match self.redirect_cache.take() {
            Some(c) => c,
            None => self.build_redirect_cache(&self.redirect_channel),
        };
        let estimated = cache.viewers_below(id);
        self.redirect_cache = Some(cache);
        #[cfg(debug_assertions)]
        {
            let mut walked = 0u64;
            self.each_public_below(id, |n| walked += n.viewers());
            assert_eq!(estimated, walked, "the per-master sums are out of step");
        }
        estimated
    }

    /// Up to `k` publics below master `id` with the oldest figures, from the redirect
    /// cache's per-master index (a walk of the subtree on every suspect aggregate was
    /// the simulator's hottest path at ten million viewers).
    fn stalest_below(&mut self, id: &str, k: usize) -> Vec<String> {
        let cache = match self.redirect_cache.take() {
            Some(c) => c,
            None => self.build_redirect_cache(&self.redirect_channel),
        };
        let ask: Vec<String> = cache
            .stalest_below(id, k)
            .into_iter()
            .map(str::to_string)
            .collect();
        self.redirect_cache = Some(cache);
        #[cfg(debug_assertions)]
        {
            let at = |n: &Node| n.full.as_ref().map_or(0, |(at, _)| *at);
            let mut walked: Vec<u64> = Vec::new();
            self.each_public_below(id, |n| walked.push(at(n)));
            walked.sort_unstable();
            walked.truncate(k);
            let picked: Vec<u64> = ask.iter().map(|p| at(&self.nodes[p])).collect();
            assert_eq!(picked, walked, "the staleness index is out of step");
        }
        ask
    }

    /// Calls `f` on every public reflector below `root` in the plan (the debug builds'
    /// check of the per-master indices).
    #[cfg(debug_assertions)]
    fn each_public_below<'s>(&'s self, root: &'s str, mut f: impl FnMut(&'s Node)) {
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            for c in self.children.get(n) {
                if let Some(node) = self.nodes.get(c).filter(|n| n.hello.role == Role::Public) {
                    f(node);
                }
                stack.push(c);
            }
        }
    }

    fn full_stats(&mut self, id: &str, s: Stats, now_ms: u64) {
        let Some(n) = self.nodes.get_mut(id) else {
            return;
        };
        n.losing = match &n.full {
            Some((_, prev)) => s.channels.iter().any(|c| {
                prev.channels
                    .iter()
                    .find(|p| p.id == c.id)
                    .is_some_and(|p| c.cum_lost > p.cum_lost)
            }),
            None => false,
        };
        n.full = Some((now_ms, s));
        while n
            .recent_redirects
            .front()
            .is_some_and(|&(t, _)| t + REDIRECT_SETTLE_MS < now_ms)
        {
            n.recent_redirects.pop_front();
        }
        self.refresh_redirect_cache(id);
    }

    /// The redirect's view of every public reflector, from the registry and the plan.
    fn build_redirect_cache(&self, channel: &str) -> RedirectCache {
        let mut cache = RedirectCache::new(channel);
        // One pass over the registry and the plan together (both are ordered by id), so
        // no candidate costs a search.
        let mut placed = self.plan.parent.keys().peekable();
        for (id, n) in self
            .nodes
            .iter()
            .filter(|(_, n)| n.hello.role == Role::Public)
        {
            while placed.next_if(|p| p.as_str() < id.as_str()).is_some() {}
            let in_plan = placed.peek().is_some_and(|p| *p == id);
            let e = candidate_of(&mut cache, id, n, in_plan, self.master_of(id));
            cache.push(e);
        }
        cache
    }

    /// The master above `id` in the plan (through its primary parents).
    fn master_of(&self, id: &str) -> Option<&str> {
        let mut at = id;
        // A plan is a tree of a few levels; the bound only guards against a cycle.
        for _ in 0..64 {
            let parent = self.plan.parent.get(at)?.as_deref()?;
            if self
                .nodes
                .get(parent)
                .is_some_and(|n| n.hello.role == Role::Master)
            {
                return Some(parent);
            }
            at = parent;
        }
        None
    }

    /// Re-read `id`'s entry in the redirect cache, if there is one.
    fn refresh_redirect_cache(&mut self, id: &str) {
        let Some(mut cache) = self.redirect_cache.take() else {
            return;
        };
        let Some(i) = cache.position(id) else {
            self.redirect_cache = Some(cache);
            return;
        };
        // A candidate that left the registry: the cache is dropped (rebuilt when needed).
        let Some(n) = self.nodes.get(id) else {
            return;
        };
        let in_plan = self.plan.parent.contains_key(id);
        let e = candidate_of(&mut cache, id, n, in_plan, self.master_of(id));
        cache.replace(i, e);
        self.redirect_cache = Some(cache);
    }

    // ----- clients ----------------------------------------------------------------------

    /// Choose the public reflector for a client of `channel` at `client` (see
    /// [`super::redirect`]), and count it.
    pub fn redirect(
        &mut self,
        channel: &str,
        client: IpAddr,
        region: Option<&str>,
        now_ms: u64,
    ) -> Result<Target, NoTarget> {
        self.redirect_many(channel, client, region, 1, now_ms)
    }

    /// [`Controller::redirect`] for `viewers` clients of one region arriving together:
    /// one decision, and the chosen reflector's estimate grows by `viewers`. The
    /// simulator sends cohorts of viewers this way, since one decision scans every
    /// public reflector. The fullness check is the policy's (room for one more), so a
    /// cohort may take a reflector up to `viewers - 1` past its capacity.
    pub fn redirect_many(
        &mut self,
        channel: &str,
        client: IpAddr,
        region: Option<&str>,
        viewers: u32,
        now_ms: u64,
    ) -> Result<Target, NoTarget> {
        let region = region
            .map(str::to_string)
            .or_else(|| self.cfg.regions.region_of(client).map(str::to_string));
        let cache = match self.redirect_cache.take() {
            Some(c) if c.channel == channel => c,
            _ => {
                self.redirect_channel = channel.to_string();
                self.build_redirect_cache(channel)
            }
        };
        #[cfg(debug_assertions)]
        {
            let fresh = self.build_redirect_cache(channel);
            assert_eq!(
                cache.resolved(),
                fresh.resolved(),
                "the redirect cache is out of step with the registry"
            );
        }
        let id = cache.choose(region.as_deref()).map(str::to_string);
        self.redirect_cache = Some(cache);
        let id = match id {
            Ok(id) => id,
            Err(e) => {
                self.metrics.redirect_refused(&e);
                return Err(e);
            }
        };
        let n = self.nodes.get_mut(&id).ok_or(NoTarget::NoneUp)?;
        if n.recent_redirects.len() >= MAX_RECENT_REDIRECTS {
            n.recent_redirects.pop_front();
        }
        n.recent_redirects.push_back((now_ms, n.redirects));
        n.redirects += u64::from(viewers);
        let target = Target {
            node: id.clone(),
            rtsp: n.hello.rtsp.clone(),
            http: n.hello.http.clone(),
        };
        self.metrics.client_redirected(&id);
        self.refresh_redirect_cache(&id);
        Ok(target)
    }

    /// Panics if the incremental indices disagree with the plan (tests call it after
    /// every step).
    #[cfg(test)]
    pub(crate) fn check_indices(&self) {
        let sorted = |idx: &ChildrenIndex| -> BTreeMap<String, BTreeSet<String>> {
            idx.0
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                .filter(|(_, v): &(String, BTreeSet<String>)| !v.is_empty())
                .collect()
        };
        assert_eq!(
            sorted(&self.children),
            sorted(&ChildrenIndex::of(&self.plan)),
            "children index out of step with the plan"
        );
        let have = sorted(&self.backed_by);
        for (b, nodes) in sorted(&ChildrenIndex::backups_of(&self.plan)) {
            let got = have.get(&b).cloned().unwrap_or_default();
            assert!(
                nodes.is_subset(&got),
                "backed_by misses {b}: {nodes:?} not in {got:?}"
            );
        }
    }

    // ----- views ------------------------------------------------------------------------

    /// What `/tree` shows.
    pub fn tree_view(&self, now_ms: u64) -> TreeView {
        let nodes = self
            .nodes
            .iter()
            .map(|(id, n)| {
                let c = Candidate {
                    id,
                    up: true,
                    draining: false,
                    region: "",
                    viewers: n.viewers(),
                    max_viewers: n.hello.max_viewers,
                    egress_bps: n.egress_bps(),
                    egress_budget_bps: n.hello.egress_budget_bps,
                    jitter_ms: 0.0,
                    losing: false,
                    carries: false,
                };
                NodeView {
                    id: id.clone(),
                    role: n.hello.role,
                    state: n.state.as_str().to_string(),
                    load: if n.hello.role == Role::Public {
                        c.load()
                    } else {
                        n.full.as_ref().map_or(0.0, |(_, s)| s.cpu_load)
                    },
                    viewers: n.viewers(),
                    max_viewers: n.hello.max_viewers,
                    parent: self.plan.parent.get(id).cloned().flatten(),
                    region: n.hello.region.clone(),
                    depth: self.plan.depth(id).unwrap_or(0),
                }
            })
            .collect();
        let mut links = Vec::new();
        for (child, parent) in &self.plan.parent {
            if let Some(p) = parent {
                links.push(LinkView {
                    parent: p.clone(),
                    child: child.clone(),
                    kind: "active".into(),
                });
            }
            for b in self.plan.backups.get(child).into_iter().flatten() {
                links.push(LinkView {
                    parent: b.clone(),
                    child: child.clone(),
                    kind: "spare".into(),
                });
            }
        }
        let aggregate = self
            .aggregates
            .values()
            .map(|(_, s)| AggregateView {
                master: s.node.clone(),
                descendants: s.descendants,
                cpu_load: s.cpu_load,
                viewers: s.viewers,
                egress_bps: s.egress_bps,
                channels: s
                    .channels
                    .iter()
                    .map(|c| AggregateChannel {
                        id: c.id.clone(),
                        viewers: c.viewers,
                        jitter_ms: c.jitter_ms,
                        cum_lost: c.cum_lost,
                    })
                    .collect(),
            })
            .collect();
        TreeView {
            nodes,
            links,
            aggregate,
            generated_ms: now_ms,
        }
    }

    /// `/metrics` text.
    pub fn metrics_text(&self) -> String {
        let mut by_role_state: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
        for n in self.nodes.values() {
            *by_role_state
                .entry((n.hello.role.as_str(), n.state.as_str()))
                .or_default() += 1;
        }
        self.metrics.render(&by_role_state, &self.aggregates)
    }
}

/// Liveness is checked ten times per PING period, so a death is seen within a tenth of a
/// period of its deadline.
/// A stable offset in `0..period` for `id` (FNV-1a of the id).
fn spread(id: &str, period: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h % period.max(1)
}

fn check_every(cfg: &ControllerConfig) -> u64 {
    (cfg.ping_ms / 10).max(10)
}
