//! The simulated world: reflectors, their links and viewers around one real
//! [`Controller`]. The controller core is driven exactly as its tokio driver drives it
//! (`connected`, `message`, `closed`, `handle_timeout`, `redirect_many`; outputs polled
//! after every call), with [`Message`] values delivered after the one-way latency between
//! the two ends' regions instead of sealed frames on sockets.
//!
//! What each simulated reflector does is what `controller/client.rs` does: HELLO on
//! connect, PONG to PING, FULLSTATS to REQFULLSTATS, re-wire on REDIRECT, LOSTUPSTREAM
//! when its primary parent goes silent, CHILDSUPDATE when the children it hears from
//! change, and every statistics period one report up the tree folded with the real
//! [`aggregate`] (masters send theirs to the controller as STATS).
//!
//! The data plane is modelled, not run: a child whose parent dies notices after the
//! relay's silence time (plus the 100 ms watch tick), moves to its first live backup,
//! and data flows again one round trip later. Viewers of a reflector see the outage minus
//! the public reflector's play-out delay (`edge_delay_ms`), which hides a short switch.
//! Viewers of a failed public reflector notice after the client's detect time and ask
//! the controller again.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use divisor_reflector::control::{Body, ChannelStats, Hello, Message, Peer, Stats, UpstreamRef};
use divisor_reflector::controller::aggregate::aggregate;
use divisor_reflector::controller::scale::ScaleConfig;
use divisor_reflector::controller::{ConnId, Controller, ControllerConfig, Output};
use divisor_reflector::role::Role;
use divisor_reflector::tree::Topology;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Arrivals, SimConfig};
use crate::events::Queue;
use crate::report::Recorder;
use crate::viewers::{arrival_minutes, Cohorts, Sessions};

/// The controller's clock at simulated time 0 (it wants wall-clock ms since the epoch).
const T0: u64 = 1_700_000_000_000;
/// When viewers start arriving: the tree forms in the first seconds.
pub const ARRIVALS_FROM_MS: u64 = 20_000;
/// The one channel every viewer watches.
const CHANNEL: &str = "live";
/// A reflector whose control connection the controller closed redials after this long
/// (client.rs: the first backoff).
const REDIAL_MS: u64 = 250;

fn abs(t: u64) -> u64 {
    T0 + t
}

/// What happens, and when.
enum Ev {
    /// A reflector starts (or restarts, or redials): it connects and says HELLO.
    Boot(u32),
    /// A message reaches the controller; `connect` for the first one on a connection.
    /// (Messages are boxed: an event is copied at every step of the heap, and the
    /// queue holds far more departures than messages.)
    ToCtl {
        conn: ConnId,
        msg: Box<Message>,
        connect: bool,
    },
    /// A message from the controller reaches a reflector.
    ToNode {
        node: u32,
        conn: ConnId,
        msg: Box<Message>,
    },
    /// The controller's connection `conn` is gone (after a Close or an undeploy).
    CtlClosed(ConnId),
    CtlTimer,
    StatsRound,
    /// Arrivals of minute `m` are drawn.
    Minute(u32),
    Arrive {
        region: u8,
        k: u32,
        dur: u64,
    },
    Leave {
        c: u32,
        gen: u32,
    },
    /// A cohort asks the controller (again).
    Attempt {
        c: u32,
        gen: u32,
    },
    /// `node`'s relay notices its active parent `lost` went silent.
    Detect {
        node: u32,
        lost: u32,
    },
    RandomFailure,
    Outage,
    Fail {
        node: u32,
        regional: bool,
    },
    Recover(u32),
    Sample,
}

/// One simulated reflector.
struct Node {
    id: String,
    role: Role,
    region: u8,
    capacity: u32,
    /// Running (booted and not failed).
    alive: bool,
    /// Stopped for good (KILLed or undeployed).
    removed: bool,
    conn: Option<ConnId>,
    /// Its upstreams from the last REDIRECT, primary first (encoders left out).
    upstreams: Vec<u32>,
    /// The parent its relay pulls from now (None: a master, or no live parent).
    active: Option<u32>,
    /// Since when its subtree has had no data (its parent died, no live backup).
    outage_since: Option<u64>,
    failed_at: Option<u64>,
    /// Index in `Recorder::failures` of its latest failure.
    failure: Option<usize>,
    /// Its own figures, updated in place every period.
    own: Stats,
    /// What it sends up this period (own, or folded with its children's).
    report: Stats,
    /// Its children's latest reports (as `aggregate::ChildReports` keeps them), their
    /// node indices and when each came.
    kids: Vec<Stats>,
    kid_ids: Vec<u32>,
    kid_seen: Vec<u64>,
    /// Where its report sits in its parent's `kids`.
    slot: Option<(u32, u32)>,
    /// The children named in its last CHILDSUPDATE (sorted indices).
    reported: Vec<u32>,
    cohorts: Vec<u32>,
    viewers: u64,
    /// Offset of its report within the period (nodes do not report in lock step).
    phase_ms: u64,
}

impl Node {
    fn hello(&self, regions: &[String]) -> Hello {
        Hello {
            id: self.id.clone(),
            role: self.role,
            link: link_addr(&self.id),
            rtsp: format!("{}:8554", self.id),
            http: None,
            region: regions[self.region as usize].clone(),
            max_viewers: self.capacity,
            egress_budget_bps: 0,
            standby: false,
        }
    }
}

fn link_addr(id: &str) -> String {
    format!("{id}:7000")
}

fn empty_stats(id: &str) -> Stats {
    Stats {
        node: id.to_string(),
        start_ms: 0,
        end_ms: 0,
        descendants: 0,
        cpu_load: 0.0,
        viewers: 0,
        egress_bps: 0,
        channels: vec![ChannelStats {
            id: CHANNEL.to_string(),
            viewers: 0,
            jitter_ms: 2.0,
            cum_lost: 0,
        }],
    }
}

/// Copy `src`'s figures into `dst` without allocating when they have the same channels
/// (they always have here: one).
fn overwrite(dst: &mut Stats, src: &Stats) {
    if dst.node != src.node || dst.channels.len() != src.channels.len() {
        *dst = src.clone();
        return;
    }
    dst.start_ms = src.start_ms;
    dst.end_ms = src.end_ms;
    dst.descendants = src.descendants;
    dst.cpu_load = src.cpu_load;
    dst.viewers = src.viewers;
    dst.egress_bps = src.egress_bps;
    for (d, s) in dst.channels.iter_mut().zip(&src.channels) {
        if d.id != s.id {
            d.id.clone_from(&s.id);
        }
        d.viewers = s.viewers;
        d.jitter_ms = s.jitter_ms;
        d.cum_lost = s.cum_lost;
    }
}

/// Two distinct elements of a slice, mutably.
fn pair<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = v.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

/// The world. [`World::run`] drives it to the end.
pub struct World {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    q: Queue<Ev>,
    now: u64,
    ctl: Controller,
    ctl_timer_at: u64,
    nodes: Vec<Node>,
    by_id: HashMap<String, u32>,
    conn_node: HashMap<ConnId, u32>,
    next_conn: ConnId,
    region_names: Vec<String>,
    cohorts: Cohorts,
    sessions: Sessions,
    arrivals_per_min: Vec<f64>,
    /// Viewers on reflectors now.
    concurrent: u64,
    pub rec: Recorder,
    /// Round-robin position for deployed reflectors' regions.
    deploy_rr: usize,
}

impl World {
    pub fn new(cfg: SimConfig) -> World {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let sessions = Sessions {
            dist: cfg.session,
            mean_ms: cfg.session_mean_ms as f64,
            sigma: cfg.session_sigma,
        };
        let minutes = (cfg.duration_ms.saturating_sub(ARRIVALS_FROM_MS) / 60_000 + 1) as usize;
        let arrivals_per_min = match &cfg.arrivals {
            Arrivals::Curve(c) => arrival_minutes(c, &sessions, minutes),
            Arrivals::Scripted(_) => Vec::new(),
        };
        let scale = cfg.scale.then(|| ScaleConfig {
            deploy: true,
            min_public: cfg.publics,
            // Room to grow tenfold: the audience, not this cap, should decide.
            max_public: cfg.publics.max(1) * 10,
            min_intermediate: cfg.intermediates,
            max_intermediate: cfg.intermediates * 2,
            boot_timeout_ms: cfg.boot_ms * 3,
            name_prefix: "auto".into(),
            ..ScaleConfig::default()
        });
        let ctl_cfg = ControllerConfig {
            ping_ms: cfg.ping_ms,
            stats_ms: cfg.stats_ms,
            topology: Topology {
                encoders: vec!["encoder0:7000".into()],
                fan_out: cfg.fan_out,
                nodes: Vec::new(),
                links: Vec::new(),
            },
            scale,
            ..ControllerConfig::default()
        };
        let ctl = Controller::new(ctl_cfg, abs(0));
        let duration_s = cfg.duration_ms / 1000 + 2;
        let mut w = World {
            rec: Recorder::new(duration_s as usize),
            region_names: cfg.regions.names.clone(),
            rng,
            q: Queue::default(),
            now: 0,
            ctl,
            ctl_timer_at: u64::MAX,
            nodes: Vec::new(),
            by_id: HashMap::new(),
            conn_node: HashMap::new(),
            next_conn: 1,
            cohorts: Cohorts::default(),
            sessions,
            arrivals_per_min,
            concurrent: 0,
            deploy_rr: 0,
            cfg,
        };
        w.create_nodes();
        w.schedule_start();
        w
    }

    /// Masters and intermediates round-robin over the regions (from the controller's);
    /// publics in proportion to the regions' viewer shares (largest remainder).
    fn create_nodes(&mut self) {
        let r = self.cfg.regions.len();
        let ctl_region = self.cfg.regions.controller;
        let (m, i, p) = (self.cfg.masters, self.cfg.intermediates, self.cfg.publics);
        let width = |n: usize| n.max(1).to_string().len();
        for k in 0..m {
            let id = format!("m{:0w$}", k, w = width(m));
            self.add_node(id, Role::Master, ((ctl_region + k) % r) as u8);
        }
        for k in 0..i {
            let id = format!("i{:0w$}", k, w = width(i));
            self.add_node(id, Role::Intermediate, ((ctl_region + k) % r) as u8);
        }
        let weights = &self.cfg.regions.weights;
        let mut counts: Vec<usize> = weights.iter().map(|w| (w * p as f64) as usize).collect();
        let mut order: Vec<usize> = (0..r).collect();
        order.sort_by(|&a, &b| {
            let fa = weights[a] * p as f64 - counts[a] as f64;
            let fb = weights[b] * p as f64 - counts[b] as f64;
            fb.total_cmp(&fa).then(a.cmp(&b))
        });
        let mut left = p - counts.iter().sum::<usize>();
        for &reg in order.iter().cycle() {
            if left == 0 {
                break;
            }
            counts[reg] += 1;
            left -= 1;
        }
        let mut k = 0;
        for (reg, &n) in counts.iter().enumerate() {
            for _ in 0..n {
                let id = format!("p{:0w$}", k, w = width(p));
                self.add_node(id, Role::Public, reg as u8);
                k += 1;
            }
        }
    }

    fn add_node(&mut self, id: String, role: Role, region: u8) -> u32 {
        let idx = self.nodes.len() as u32;
        let phase_ms = self.rng.gen_range(0..self.cfg.stats_ms);
        self.by_id.insert(id.clone(), idx);
        self.nodes.push(Node {
            own: empty_stats(&id),
            report: empty_stats(&id),
            id,
            role,
            region,
            capacity: if role == Role::Public {
                self.cfg.capacity
            } else {
                0
            },
            alive: false,
            removed: false,
            conn: None,
            upstreams: Vec::new(),
            active: None,
            outage_since: None,
            failed_at: None,
            failure: None,
            kids: Vec::new(),
            kid_ids: Vec::new(),
            kid_seen: Vec::new(),
            slot: None,
            reported: Vec::new(),
            cohorts: Vec::new(),
            viewers: 0,
            phase_ms,
        });
        self.rec.reflectors_created += 1;
        idx
    }

    /// Masters boot first, then intermediates, then publics (spread over ten seconds),
    /// so each finds its parents' tier placed.
    fn schedule_start(&mut self) {
        let n = self.nodes.len();
        let publics = self.cfg.publics.max(1) as u64;
        let mut k = 0u64;
        for idx in 0..n {
            let at = match self.nodes[idx].role {
                Role::Master => 100 + idx as u64,
                Role::Intermediate => 1000 + idx as u64,
                Role::Public => {
                    k += 1;
                    3000 + k * 10_000 / publics
                }
            };
            self.q.push(at, Ev::Boot(idx as u32));
        }
        self.q.push(self.cfg.stats_ms, Ev::StatsRound);
        self.q.push(self.cfg.sample_ms, Ev::Sample);
        match &self.cfg.arrivals {
            Arrivals::Curve(_) => self.q.push(ARRIVALS_FROM_MS, Ev::Minute(0)),
            Arrivals::Scripted(list) => {
                for a in list.clone() {
                    self.q.push(
                        a.at_ms,
                        Ev::Arrive {
                            region: a.region.min(self.cfg.regions.len() - 1) as u8,
                            k: a.k.max(1),
                            dur: a.duration_ms,
                        },
                    );
                }
            }
        }
        if self.cfg.failures_per_hour > 0.0 {
            let at =
                self.cfg.failures_after_ms + self.exp_ms(3_600_000.0 / self.cfg.failures_per_hour);
            self.q.push(at, Ev::RandomFailure);
        }
        if self.cfg.outages_per_day > 0.0 && self.cfg.outage_fraction > 0.0 {
            let at =
                self.cfg.failures_after_ms + self.exp_ms(86_400_000.0 / self.cfg.outages_per_day);
            self.q.push(at, Ev::Outage);
        }
    }

    fn exp_ms(&mut self, mean: f64) -> u64 {
        (-mean * (1.0 - self.rng.gen::<f64>()).ln()) as u64
    }

    fn lat(&self, a: u8, b: u8) -> u64 {
        self.cfg.regions.latency(a as usize, b as usize)
    }

    fn ctl_region(&self) -> u8 {
        self.cfg.regions.controller as u8
    }

    /// Run to the end; `progress(now_ms)` is called about once per simulated minute.
    pub fn run(&mut self, mut progress: impl FnMut(u64, u64)) {
        let mut next_progress = 0;
        while let Some((at, ev)) = self.q.pop() {
            if at > self.cfg.duration_ms {
                break;
            }
            self.now = at;
            self.rec.events += 1;
            if at >= next_progress {
                progress(at, self.concurrent);
                next_progress = at + 60_000;
            }
            self.handle(ev);
        }
        self.now = self.cfg.duration_ms;
        self.rec.end_tree(self.ctl.plan(), self.now);
        self.rec.controller_metrics = self.ctl.metrics_text();
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Boot(n) => self.boot(n),
            Ev::ToCtl { conn, msg, connect } => {
                if connect {
                    self.ctl.connected(conn);
                }
                if self.conn_node.contains_key(&conn) {
                    self.rec.ctl_msg(self.now, msg.body.type_name(), true);
                    self.ctl.message(conn, *msg, abs(self.now));
                    self.after_ctl();
                }
            }
            Ev::ToNode { node, conn, msg } => self.deliver(node, conn, *msg),
            Ev::CtlClosed(conn) => {
                self.ctl.closed(conn, abs(self.now));
                self.after_ctl();
            }
            Ev::CtlTimer => {
                if self.now == self.ctl_timer_at {
                    self.ctl_timer_at = u64::MAX;
                    self.ctl.handle_timeout(abs(self.now));
                    self.after_ctl();
                }
            }
            Ev::StatsRound => {
                self.stats_round();
                self.q.push(self.now + self.cfg.stats_ms, Ev::StatsRound);
            }
            Ev::Minute(m) => self.minute(m),
            Ev::Arrive { region, k, dur } => {
                // A scripted cohort's viewers all stay `dur`; a sampled one's first viewer
                // stays `dur` and each other its own session.
                let scripted = matches!(self.cfg.arrivals, Arrivals::Scripted(_));
                let mut ends: Vec<u64> = (0..k)
                    .map(|i| {
                        let d = if i == 0 || scripted {
                            dur
                        } else {
                            self.sessions.sample(&mut self.rng)
                        };
                        self.now + d
                    })
                    .collect();
                ends.sort_unstable_by(|a, b| b.cmp(a));
                let next = *ends.last().unwrap_or(&self.now);
                let (c, gen) = self.cohorts.add(region, ends);
                self.q.push(next, Ev::Leave { c, gen });
                self.attempt(c, gen);
            }
            Ev::Leave { c, gen } => self.leave(c, gen),
            Ev::Attempt { c, gen } => self.attempt(c, gen),
            Ev::Detect { node, lost } => self.detect(node, lost),
            Ev::RandomFailure => {
                let alive: Vec<u32> = (0..self.nodes.len() as u32)
                    .filter(|&n| self.nodes[n as usize].alive)
                    .collect();
                if !alive.is_empty() {
                    let n = alive[self.rng.gen_range(0..alive.len())];
                    self.fail(n, false);
                }
                let next = self.now + self.exp_ms(3_600_000.0 / self.cfg.failures_per_hour);
                self.q.push(next, Ev::RandomFailure);
            }
            Ev::Outage => {
                let region = self.rng.gen_range(0..self.cfg.regions.len()) as u8;
                let mut alive: Vec<u32> = (0..self.nodes.len() as u32)
                    .filter(|&n| {
                        let n = &self.nodes[n as usize];
                        n.alive && n.region == region
                    })
                    .collect();
                let take = ((alive.len() as f64 * self.cfg.outage_fraction).ceil() as usize)
                    .min(alive.len());
                for k in 0..take {
                    let j = self.rng.gen_range(k..alive.len());
                    alive.swap(k, j);
                    let at = self.now + self.rng.gen_range(0..=self.cfg.outage_spread_ms);
                    self.q.push(
                        at,
                        Ev::Fail {
                            node: alive[k],
                            regional: true,
                        },
                    );
                }
                self.rec.outages += 1;
                let next = self.now + self.exp_ms(86_400_000.0 / self.cfg.outages_per_day);
                self.q.push(next, Ev::Outage);
            }
            Ev::Fail { node, regional } => self.fail(node, regional),
            Ev::Recover(n) => {
                if !self.nodes[n as usize].removed && !self.nodes[n as usize].alive {
                    self.boot(n);
                }
            }
            Ev::Sample => {
                self.sample();
                self.q.push(self.now + self.cfg.sample_ms, Ev::Sample);
            }
        }
    }

    // ----- the controller's side ----------------------------------------------------

    /// After every call into the core: carry out its outputs, re-arm its timer.
    fn after_ctl(&mut self) {
        while let Some(out) = self.ctl.poll_output() {
            match out {
                Output::Send { conn, msg } => {
                    self.rec.ctl_msg(self.now, msg.body.type_name(), false);
                    if let Some(&node) = self.conn_node.get(&conn) {
                        let at = self.now
                            + self.lat(self.ctl_region(), self.nodes[node as usize].region);
                        self.q.push(
                            at,
                            Ev::ToNode {
                                node,
                                conn,
                                msg: Box::new(msg),
                            },
                        );
                    }
                }
                Output::Close { conn, .. } => self.ctl_closes(conn),
                Output::Deploy {
                    id,
                    role,
                    reason: _,
                } => self.deploy(id, role),
                Output::Undeploy { id, reason: _ } => {
                    if let Some(&n) = self.by_id.get(&id) {
                        self.stop(n);
                    }
                }
            }
        }
        let t = self.ctl.poll_timeout().saturating_sub(T0).max(self.now);
        if t < self.ctl_timer_at {
            self.ctl_timer_at = t;
            self.q.push(t, Ev::CtlTimer);
        }
    }

    /// The controller closed `conn`: if its node failed, that is the controller declaring
    /// it dead; a live node redials (a false alarm).
    fn ctl_closes(&mut self, conn: ConnId) {
        let Some(n) = self.conn_node.remove(&conn) else {
            return;
        };
        self.q.push(self.now, Ev::CtlClosed(conn));
        let node = &mut self.nodes[n as usize];
        if node.conn != Some(conn) {
            return;
        }
        node.conn = None;
        let (alive, region, failure) = (node.alive, node.region, node.failure);
        if alive {
            self.rec.false_deaths += 1;
            let at = self.now + self.lat(self.ctl_region(), region) + REDIAL_MS;
            self.q.push(at, Ev::Boot(n));
        } else if let Some(f) = failure {
            self.rec.declared_dead(f, self.now);
        }
    }

    /// The controller asks for a new reflector: it goes to the region whose publics are
    /// the most loaded (round-robin among equals), and says HELLO after `boot_ms`.
    fn deploy(&mut self, id: String, role: Role) {
        if self.by_id.contains_key(&id) {
            return;
        }
        let r = self.cfg.regions.len();
        let mut load = vec![(0u64, 0u64); r];
        for n in &self.nodes {
            if n.alive && n.role == Role::Public {
                load[n.region as usize].0 += n.viewers;
                load[n.region as usize].1 += u64::from(n.capacity);
            }
        }
        let start = self.deploy_rr;
        self.deploy_rr += 1;
        let region = (0..r)
            .map(|k| (start + k) % r)
            .max_by(|&a, &b| {
                let la = load[a].0 as f64 / load[a].1.max(1) as f64;
                let lb = load[b].0 as f64 / load[b].1.max(1) as f64;
                la.total_cmp(&lb).then(b.cmp(&a))
            })
            .unwrap_or(0);
        let n = self.add_node(id, role, region as u8);
        self.rec.deployed += 1;
        self.q.push(self.now + self.cfg.boot_ms, Ev::Boot(n));
    }

    fn send_ctl(&mut self, n: u32, body: Body) {
        let node = &self.nodes[n as usize];
        let Some(conn) = node.conn else { return };
        let at = self.now + self.lat(node.region, self.ctl_region());
        let msg = Message {
            time_ms: abs(self.now),
            from: Peer::Node(node.id.clone()),
            to: Peer::Root,
            body,
        };
        self.q.push(
            at,
            Ev::ToCtl {
                conn,
                msg: Box::new(msg),
                connect: false,
            },
        );
    }

    // ----- reflectors -----------------------------------------------------------------

    fn boot(&mut self, n: u32) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let regions = self.region_names.clone();
        let ctl_region = self.ctl_region();
        let node = &mut self.nodes[n as usize];
        if node.removed {
            return;
        }
        if !node.alive {
            // A (re)start: nothing carried over.
            node.alive = true;
            node.upstreams.clear();
            node.active = None;
            node.outage_since = None;
            node.kids.clear();
            node.kid_ids.clear();
            node.kid_seen.clear();
            node.slot = None;
        }
        node.reported.clear();
        node.conn = Some(conn);
        self.conn_node.insert(conn, n);
        let msg = Message {
            time_ms: abs(self.now),
            from: Peer::Node(node.id.clone()),
            to: Peer::Root,
            body: Body::Hello(node.hello(&regions)),
        };
        let at = self.now
            + self
                .cfg
                .regions
                .latency(node.region as usize, ctl_region as usize);
        self.q.push(
            at,
            Ev::ToCtl {
                conn,
                msg: Box::new(msg),
                connect: true,
            },
        );
    }

    fn deliver(&mut self, n: u32, conn: ConnId, msg: Message) {
        let node = &self.nodes[n as usize];
        if !node.alive || node.conn != Some(conn) {
            return;
        }
        match msg.body {
            Body::Ping { seq } => self.send_ctl(n, Body::Pong { seq }),
            Body::Redirect { upstreams } => self.redirected(n, &upstreams),
            Body::ReqFullStats { .. } => {
                self.refresh_own(n);
                let s = self.nodes[n as usize].own.clone();
                self.send_ctl(n, Body::FullStats(s));
            }
            Body::Kill { .. } => self.stop(n),
            Body::Error { .. } => self.rec.errors += 1,
            _ => {}
        }
    }

    /// A REDIRECT: new upstreams; the relay moves make-before-break (no gap) unless its
    /// subtree was without data, which then flows again one round trip later.
    fn redirected(&mut self, n: u32, ups: &[UpstreamRef]) {
        let list: Vec<u32> = ups
            .iter()
            .filter_map(|u| self.by_id.get(&u.id).copied())
            .collect();
        let first_live = list.iter().copied().find(|&u| self.nodes[u as usize].alive);
        self.rec.node_redirected(
            n,
            list.first().copied(),
            |u| self.nodes[u as usize].alive,
            self.now,
        );
        let node = &self.nodes[n as usize];
        let (old, region, outage) = (node.active, node.region, node.outage_since);
        if first_live != old {
            if let (Some(p), Some(since)) = (first_live, outage) {
                let resume = self.now + 2 * self.lat(region, self.nodes[p as usize].region);
                self.subtree_gap(n, resume.saturating_sub(since));
                self.nodes[n as usize].outage_since = None;
            }
            if first_live.is_none() && !list.is_empty() && outage.is_none() && old.is_some() {
                self.nodes[n as usize].outage_since = Some(self.now);
            }
            self.nodes[n as usize].active = first_live;
        }
        self.nodes[n as usize].upstreams = list;
    }

    /// `n`'s relay notices that its active parent `lost` has gone silent: LOSTUPSTREAM if
    /// it was the primary, and a switch to the first live backup.
    fn detect(&mut self, n: u32, lost: u32) {
        let node = &self.nodes[n as usize];
        if !node.alive || node.active != Some(lost) {
            return;
        }
        if node.upstreams.first() == Some(&lost) {
            let addr = link_addr(&self.nodes[lost as usize].id);
            self.send_ctl(n, Body::LostUpstream { addr });
        }
        let node = &self.nodes[n as usize];
        let since = self.nodes[lost as usize].failed_at.unwrap_or(self.now);
        let backup = node
            .upstreams
            .iter()
            .copied()
            .find(|&u| u != lost && self.nodes[u as usize].alive);
        match backup {
            Some(b) => {
                let resume = self.now + 2 * self.lat(node.region, self.nodes[b as usize].region);
                self.subtree_gap(n, resume - since);
                self.nodes[n as usize].active = Some(b);
                self.rec.dataplane_switches += 1;
            }
            None => {
                let node = &mut self.nodes[n as usize];
                node.active = None;
                node.outage_since = Some(since);
                self.rec.no_backup += 1;
            }
        }
    }

    /// Viewers below `n` (its own, or those of the publics it feeds) had no data for
    /// `outage_ms`; they see what the play-out delay does not hide.
    fn subtree_gap(&mut self, n: u32, outage_ms: u64) {
        let gap = outage_ms.saturating_sub(self.cfg.edge_delay_ms);
        let node = &self.nodes[n as usize];
        let viewers = if node.role == Role::Public {
            node.viewers
        } else {
            self.nodes
                .iter()
                .filter(|c| c.alive && c.role == Role::Public && c.active == Some(n))
                .map(|c| c.viewers)
                .sum()
        };
        if viewers > 0 {
            self.rec.gap(gap, viewers);
        }
    }

    /// Crash `n`: it goes silent (its control connection stays open, as a dead machine's
    /// does). Its children notice, its viewers reconnect; it restarts later.
    fn fail(&mut self, n: u32, regional: bool) {
        if !self.nodes[n as usize].alive {
            return;
        }
        let now = self.now;
        let pending: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&m| {
                let c = &self.nodes[m as usize];
                m != n && c.alive && (c.active == Some(n) || c.upstreams.first() == Some(&n))
            })
            .collect();
        let f = self.rec.failure(
            n,
            self.nodes[n as usize].role,
            regional,
            now,
            pending.clone(),
        );
        {
            let node = &mut self.nodes[n as usize];
            node.alive = false;
            node.failed_at = Some(now);
            node.failure = Some(f);
        }
        self.rec.child_died(n, now);
        for m in pending {
            if self.nodes[m as usize].active == Some(n) {
                let at =
                    now + self.cfg.silence_ms + self.rng.gen_range(0..self.cfg.watch_ms.max(1));
                self.q.push(at, Ev::Detect { node: m, lost: n });
            }
        }
        self.evict_viewers(n, true);
        if let Some(r) = self.cfg.recover_ms {
            self.q.push(now + r, Ev::Recover(n));
        }
    }

    /// Stop `n` for good (KILL, undeploy): it closes its connection; viewers reconnect.
    fn stop(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        if node.removed {
            return;
        }
        node.removed = true;
        node.alive = false;
        self.rec.removed += 1;
        if let Some(conn) = node.conn.take() {
            if self.conn_node.remove(&conn).is_some() {
                self.q.push(self.now, Ev::CtlClosed(conn));
            }
        }
        self.evict_viewers(n, false);
    }

    /// The viewers of `n` lose it: each cohort notices and asks the controller again.
    fn evict_viewers(&mut self, n: u32, crashed: bool) {
        let cohorts = std::mem::take(&mut self.nodes[n as usize].cohorts);
        self.concurrent -= self.nodes[n as usize].viewers;
        self.nodes[n as usize].viewers = 0;
        let (lo, hi) = self.cfg.client_detect_ms;
        for c in cohorts {
            let delay = if crashed {
                self.rng.gen_range(lo..=hi)
            } else {
                0
            };
            let now = self.now;
            let Some(co) = self.cohorts.all.get_mut(c as usize) else {
                continue;
            };
            co.node = None;
            co.attempts = 0;
            co.rehoming_since = Some(now);
            let gen = co.gen;
            self.rec.rehome_needed += u64::from(co.k);
            self.q.push(now + delay, Ev::Attempt { c, gen });
        }
    }

    // ----- statistics up the tree ------------------------------------------------------

    fn refresh_own(&mut self, n: u32) {
        let stats_ms = self.cfg.stats_ms;
        let bitrate = self.cfg.bitrate_bps;
        let now = abs(self.now);
        let node = &mut self.nodes[n as usize];
        let own = &mut node.own;
        own.start_ms = now.saturating_sub(stats_ms);
        own.end_ms = now;
        if node.role == Role::Public {
            own.viewers = node.viewers;
            own.egress_bps = node.viewers * bitrate;
            own.cpu_load = 0.05 + 0.9 * node.viewers as f64 / f64::from(node.capacity.max(1));
            own.channels[0].viewers = node.viewers;
        } else {
            own.egress_bps = node.kids.len() as u64 * bitrate;
            own.cpu_load = 0.05 + 0.01 * node.kids.len() as f64;
        }
    }

    /// One statistics period of every reflector (client.rs `report`): drop children not
    /// heard from for three periods, CHILDSUPDATE when that set changed, fold, send up.
    /// A report reaches the parent for its next period (one period per hop, as when
    /// every node ticks on its own clock).
    fn stats_round(&mut self) {
        let now = self.now;
        let max_age = 3 * self.cfg.stats_ms;
        let mut ids: Vec<u32> = Vec::new();
        for n in 0..self.nodes.len() as u32 {
            if !self.nodes[n as usize].alive {
                continue;
            }
            self.refresh_own(n);
            self.prune_kids(n, max_age);
            let node = &self.nodes[n as usize];
            if node.role != Role::Public || !node.kid_ids.is_empty() {
                ids.clear();
                ids.extend_from_slice(&node.kid_ids);
                ids.sort_unstable();
                if ids != node.reported && node.conn.is_some() {
                    let children = ids
                        .iter()
                        .map(|&c| self.nodes[c as usize].id.clone())
                        .collect();
                    self.nodes[n as usize].reported = ids.clone();
                    self.send_ctl(n, Body::ChildsUpdate { children });
                }
            }
            let node = &mut self.nodes[n as usize];
            if node.role == Role::Public && node.kids.is_empty() {
                let (own, report) = (&node.own, &mut node.report);
                overwrite(report, own);
            } else {
                node.report = aggregate(&node.own, &node.kids);
            }
            if node.role == Role::Master && node.conn.is_some() {
                let s = node.report.clone();
                let (region, phase) = (node.region, node.phase_ms);
                let at = now + phase + self.lat(region, self.ctl_region());
                let msg = Message {
                    time_ms: abs(now + phase),
                    from: Peer::Node(self.nodes[n as usize].id.clone()),
                    to: Peer::Root,
                    body: Body::Stats(s),
                };
                let conn = self.nodes[n as usize].conn.unwrap_or_default();
                self.q.push(
                    at,
                    Ev::ToCtl {
                        conn,
                        msg: Box::new(msg),
                        connect: false,
                    },
                );
            }
        }
        // Deliver: each report lands in its parent's table for the parent's next period.
        for n in 0..self.nodes.len() {
            let Some(p) = self.nodes[n].active else {
                continue;
            };
            let p = p as usize;
            if !self.nodes[n].alive || !self.nodes[p].alive {
                continue;
            }
            let (child, parent) = pair(&mut self.nodes, n, p);
            match child.slot {
                Some((sp, s))
                    if sp as usize == p && parent.kid_ids.get(s as usize) == Some(&(n as u32)) =>
                {
                    overwrite(&mut parent.kids[s as usize], &child.report);
                    parent.kid_seen[s as usize] = now;
                }
                _ => {
                    child.slot = Some((p as u32, parent.kids.len() as u32));
                    parent.kids.push(child.report.clone());
                    parent.kid_ids.push(n as u32);
                    parent.kid_seen.push(now);
                }
            }
        }
    }

    /// Forget children not heard from for `max_age` (aggregate::ChildReports::fresh).
    fn prune_kids(&mut self, n: u32, max_age: u64) {
        let now = self.now;
        let mut k = 0;
        while k < self.nodes[n as usize].kid_ids.len() {
            let node = &mut self.nodes[n as usize];
            if now.saturating_sub(node.kid_seen[k]) <= max_age {
                k += 1;
                continue;
            }
            node.kids.swap_remove(k);
            node.kid_ids.swap_remove(k);
            node.kid_seen.swap_remove(k);
            if let Some(&moved) = node.kid_ids.get(k) {
                let child = &mut self.nodes[moved as usize];
                if child.slot.is_some_and(|(p, _)| p == n) {
                    child.slot = Some((n, k as u32));
                }
            }
        }
    }

    // ----- viewers ---------------------------------------------------------------------

    /// Draw minute `m`'s arrivals: per region, its share of the minute's viewers in
    /// cohorts of `cohort` (the fraction drawn), at uniform times within the minute.
    fn minute(&mut self, m: u32) {
        let Some(&viewers) = self.arrivals_per_min.get(m as usize) else {
            return;
        };
        let start = ARRIVALS_FROM_MS + u64::from(m) * 60_000;
        let k = self.cfg.cohort;
        for r in 0..self.cfg.regions.len() {
            let want = viewers * self.cfg.regions.weights[r] / f64::from(k);
            let mut count = want.floor() as u64;
            if self.rng.gen::<f64>() < want - want.floor() {
                count += 1;
            }
            for _ in 0..count {
                let at = start + self.rng.gen_range(0..60_000);
                let dur = self.sessions.sample(&mut self.rng);
                self.q.push(
                    at,
                    Ev::Arrive {
                        region: r as u8,
                        k,
                        dur,
                    },
                );
            }
        }
        self.q.push(start + 60_000, Ev::Minute(m + 1));
    }

    /// A cohort asks the controller where to go, and connects there (the reflector's
    /// front-end admits up to its capacity; the rest ask again).
    fn attempt(&mut self, c: u32, gen: u32) {
        let now = self.now;
        let Some(co) = self.cohorts.get_mut(c, gen) else {
            return;
        };
        if co.node.is_some() {
            return;
        }
        let (region, k, since) = (co.region, co.k, co.rehoming_since);
        let region_name = &self.region_names[region as usize];
        self.rec.decision(now, k);
        let res = self.ctl.redirect_many(
            CHANNEL,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(region_name),
            k,
            abs(now),
        );
        let target = match res {
            Ok(t) => self.by_id.get(&t.node).copied(),
            Err(_) => {
                self.rec.refusals += 1;
                None
            }
        };
        let Some(p) = target.filter(|&p| self.nodes[p as usize].alive) else {
            return self.retry(c, gen);
        };
        let node = &self.nodes[p as usize];
        let room = u64::from(node.capacity).saturating_sub(node.viewers);
        let admit = (k as u64).min(room) as u32;
        if admit == 0 {
            self.rec.admission_refusals += 1;
            return self.retry(c, gen);
        }
        if admit < k {
            // The front-end takes what fits; the others ask again as a cohort of their own
            // (which of them: at random, since their sessions are alike).
            let mut ends = std::mem::take(&mut self.cohorts.all[c as usize].ends);
            ends.shuffle(&mut self.rng);
            let mut rest = ends.split_off(admit as usize);
            ends.sort_unstable_by(|a, b| b.cmp(a));
            rest.sort_unstable_by(|a, b| b.cmp(a));
            let (next, next2) = (*ends.last().unwrap_or(&now), *rest.last().unwrap_or(&now));
            self.cohorts.all[c as usize].ends = ends;
            let (c2, g2) = self.cohorts.add(region, rest);
            if let Some(c2m) = self.cohorts.all.get_mut(c2 as usize) {
                c2m.rehoming_since = since;
            }
            // The first part's next departure may have moved to the second: a Leave at the
            // old time finds nobody due and waits for the next.
            self.q.push(next, Ev::Leave { c, gen });
            self.q.push(next2, Ev::Leave { c: c2, gen: g2 });
            self.q.push(
                now + self.cfg.client_retry_ms,
                Ev::Attempt { c: c2, gen: g2 },
            );
            self.rec.admission_refusals += 1;
        }
        let pos = self.nodes[p as usize].cohorts.len() as u32;
        let node_region = self.nodes[p as usize].region;
        if let Some(co) = self.cohorts.get_mut(c, gen) {
            co.k = admit;
            co.node = Some((p, pos));
        }
        let node = &mut self.nodes[p as usize];
        node.cohorts.push(c);
        node.viewers += u64::from(admit);
        self.concurrent += u64::from(admit);
        self.rec.peak(self.concurrent);
        match since {
            None => self.rec.served += u64::from(admit),
            Some(t) => {
                let rtt = 2 * self.lat(region, node_region);
                self.rec.rehomed += u64::from(admit);
                self.rec
                    .gap(now + rtt + self.cfg.client_join_ms - t, u64::from(admit));
            }
        }
    }

    fn retry(&mut self, c: u32, gen: u32) {
        let attempts = self.cfg.client_attempts;
        let Some(co) = self.cohorts.get_mut(c, gen) else {
            return;
        };
        co.attempts += 1;
        if co.attempts >= attempts {
            let (k, rehoming) = (u64::from(co.k), co.rehoming_since.is_some());
            if rehoming {
                self.rec.rehome_failed += k;
            } else {
                self.rec.refused += k;
            }
            self.cohorts.remove(c);
            return;
        }
        self.q
            .push(self.now + self.cfg.client_retry_ms, Ev::Attempt { c, gen });
    }

    /// The viewers of cohort `c` whose sessions end now leave; the cohort goes when the
    /// last one has.
    fn leave(&mut self, c: u32, gen: u32) {
        let now = self.now;
        let Some(co) = self.cohorts.get_mut(c, gen) else {
            return;
        };
        let mut gone = 0u32;
        while co.ends.last().is_some_and(|&t| t <= now) {
            co.ends.pop();
            gone += 1;
        }
        if gone == 0 {
            // A stale event: a split moved this departure to the other part, whose own
            // event and this cohort's next one are queued.
            return;
        }
        co.k -= gone;
        let (k, node, rehoming, next) = (co.k, co.node, co.rehoming_since, co.ends.last().copied());
        let gone = u64::from(gone);
        match node {
            Some((p, pos)) => {
                if k == 0 {
                    let list = &mut self.nodes[p as usize].cohorts;
                    list.swap_remove(pos as usize);
                    if let Some(&moved) = list.get(pos as usize) {
                        if let Some(m) = self.cohorts.all.get_mut(moved as usize) {
                            m.node = Some((p, pos));
                        }
                    }
                }
                self.nodes[p as usize].viewers -= gone;
                self.concurrent -= gone;
            }
            None if rehoming.is_some() => self.rec.rehome_abandoned += gone,
            None => self.rec.left_waiting += gone,
        }
        match next {
            Some(t) if k > 0 => self.q.push(t, Ev::Leave { c, gen }),
            _ => self.cohorts.remove(c),
        }
    }

    // ----- sampling ----------------------------------------------------------------------

    /// Load over the active public reflectors (alive and given upstreams).
    fn sample(&mut self) {
        let loads: Vec<f64> = self
            .nodes
            .iter()
            .filter(|n| n.alive && n.role == Role::Public && n.active.is_some())
            .map(|n| n.viewers as f64 / f64::from(n.capacity.max(1)))
            .collect();
        self.rec.sample(self.now, self.concurrent, &loads);
        if self.now.is_multiple_of(10 * self.cfg.sample_ms) {
            self.rec.tree(self.ctl.plan());
        }
    }
}
