//! The controller core, driven faster than real time: nodes say HELLO, answer PINGs (or
//! fall silent), report statistics, and clients ask where to go.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::core::{ConnId, Controller, ControllerConfig, NodeState, Output};
use super::front::NoTarget;
use super::scale::ScaleConfig;
use crate::control::{Body, ChannelStats, ControlError, Hello, Message, Peer, Stats};
use crate::role::Role;
use crate::tree::Topology;

mod scaling;

const TOPOLOGY: &str = r#"
encoders = ["10.0.0.1:7000"]
[[node]]
id = "m"
role = "master"
[[node]]
id = "i1"
role = "intermediate"
[[node]]
id = "i2"
role = "intermediate"
[[node]]
id = "p1"
role = "public"
[[node]]
id = "p2"
role = "public"
[[node]]
id = "p3"
role = "public"
[[link]]
a = "m"
b = "i1"
[[link]]
a = "m"
b = "i2"
cost = 2.0
[[link]]
a = "i1"
b = "p1"
[[link]]
a = "i1"
b = "p2"
[[link]]
a = "i2"
b = "p3"
[[link]]
a = "i2"
b = "p1"
spare = true
[[link]]
a = "i2"
b = "p2"
spare = true
[[link]]
a = "i1"
b = "p3"
spare = true
"#;

struct Sim {
    c: Controller,
    now: u64,
    /// Nodes that answer PINGs.
    responsive: BTreeSet<ConnId>,
    conn_of: std::collections::BTreeMap<String, ConnId>,
    sent: Vec<(ConnId, Message)>,
    closed: Vec<ConnId>,
    /// `Output::Deploy`s and `Output::Undeploy`s, in order.
    deploys: Vec<(String, Role)>,
    undeploys: Vec<String>,
}

fn hello(id: &str, role: Role) -> Hello {
    Hello {
        id: id.into(),
        role,
        link: format!("{id}.link:7000"),
        rtsp: format!("{id}.rtsp:8554"),
        http: Some(format!("{id}.http:8080")),
        region: String::new(),
        max_viewers: 100,
        egress_budget_bps: 0,
        standby: false,
    }
}

impl Sim {
    fn new(cfg: ControllerConfig) -> Sim {
        let now = 1_700_000_000_000;
        Sim {
            c: Controller::new(cfg, now),
            now,
            responsive: BTreeSet::new(),
            conn_of: Default::default(),
            sent: Vec::new(),
            closed: Vec::new(),
            deploys: Vec::new(),
            undeploys: Vec::new(),
        }
    }

    fn with_topology() -> Sim {
        Sim::new(ControllerConfig {
            topology: Topology::from_toml_str(TOPOLOGY).unwrap(),
            ..ControllerConfig::default()
        })
    }

    fn msg(&self, from: &str, body: Body) -> Message {
        Message {
            time_ms: self.now,
            from: Peer::Node(from.into()),
            to: Peer::Root,
            body,
        }
    }

    fn join(&mut self, h: Hello) {
        let conn = self.conn_of.len() as u64 + 100 + self.closed.len() as u64 * 1000;
        self.c.connected(conn);
        let id = h.id.clone();
        let m = self.msg(&id, Body::Hello(h));
        self.c.message(conn, m, self.now);
        self.conn_of.insert(id, conn);
        self.responsive.insert(conn);
        self.drain();
    }

    fn send(&mut self, id: &str, body: Body) {
        let conn = self.conn_of[id];
        let m = self.msg(id, body);
        self.c.message(conn, m, self.now);
        self.drain();
    }

    /// Carry out the core's outputs as the driver does: answer PINGs of responsive nodes,
    /// and report a connection the core closed back as closed.
    fn drain(&mut self) {
        self.c.check_indices();
        while let Some(o) = self.c.poll_output() {
            match o {
                Output::Send { conn, msg } => {
                    if let Body::Ping { seq } = msg.body {
                        if self.responsive.contains(&conn) {
                            let Peer::Node(id) = &msg.to else {
                                panic!("ping to {:?}", msg.to)
                            };
                            let pong = Message {
                                time_ms: self.now,
                                from: Peer::Node(id.clone()),
                                to: Peer::Root,
                                body: Body::Pong { seq },
                            };
                            self.c.message(conn, pong, self.now);
                        }
                    }
                    self.sent.push((conn, msg));
                }
                Output::Close { conn, .. } => {
                    self.responsive.remove(&conn);
                    self.closed.push(conn);
                    self.c.closed(conn, self.now);
                }
                Output::Deploy { id, role, .. } => self.deploys.push((id, role)),
                Output::Undeploy { id, .. } => self.undeploys.push(id),
            }
        }
    }

    /// Run timers up to `now + ms`.
    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        loop {
            let due = self.c.poll_timeout();
            if due > end {
                break;
            }
            self.now = due.max(self.now);
            self.c.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }

    /// The upstream link addresses of the latest REDIRECT sent to `id`.
    fn upstreams(&self, id: &str) -> Option<Vec<String>> {
        let conn = self.conn_of.get(id)?;
        self.sent.iter().rev().find_map(|(c, m)| match &m.body {
            Body::Redirect { upstreams } if c == conn => {
                Some(upstreams.iter().map(|u| u.addr.clone()).collect())
            }
            _ => None,
        })
    }

    /// PINGs sent to `id` since `sent[start]`.
    fn pings_since(&self, start: usize, id: &str) -> usize {
        let conn = self.conn_of[id];
        self.sent[start..]
            .iter()
            .filter(|(c, m)| *c == conn && matches!(m.body, Body::Ping { .. }))
            .count()
    }

    fn redirects_to(&self, id: &str) -> usize {
        let conn = self.conn_of[id];
        self.sent
            .iter()
            .filter(|(c, m)| *c == conn && matches!(m.body, Body::Redirect { .. }))
            .count()
    }

    fn join_all(&mut self) {
        for (id, role) in [
            ("m", Role::Master),
            ("i1", Role::Intermediate),
            ("i2", Role::Intermediate),
            ("p1", Role::Public),
            ("p2", Role::Public),
            ("p3", Role::Public),
        ] {
            self.join(hello(id, role));
        }
        self.advance(500);
    }
}

/// A CHILDSUPDATE naming `ids`.
fn childs_update(ids: &[&str]) -> Body {
    Body::ChildsUpdate {
        children: ids.iter().map(|c| c.to_string()).collect(),
    }
}

fn link(id: &str) -> String {
    format!("{id}.link:7000")
}

fn ip() -> IpAddr {
    "192.0.2.10".parse().unwrap()
}

#[test]
fn the_design_is_wired_with_spare_links_as_backups() {
    let mut s = Sim::with_topology();
    s.join_all();
    assert_eq!(s.upstreams("m"), Some(vec!["10.0.0.1:7000".to_string()]));
    assert_eq!(s.upstreams("i1"), Some(vec![link("m")]));
    assert_eq!(s.upstreams("p1"), Some(vec![link("i1"), link("i2")]));
    assert_eq!(s.upstreams("p3"), Some(vec![link("i2"), link("i1")]));
    // One REDIRECT each: the joins were coalesced into one rebuild.
    for id in ["m", "i1", "i2", "p1", "p2", "p3"] {
        assert_eq!(s.redirects_to(id), 1, "{id}");
    }
}

#[test]
fn a_node_two_children_lost_is_dead_at_once_and_they_move_to_backups() {
    let mut s = Sim::with_topology();
    s.join_all();
    s.advance(3000);
    let i1 = s.conn_of["i1"];
    s.responsive.remove(&i1); // cut off: silence, no FIN
    let cut = s.now;
    let before = s.redirects_to("p1");
    // Its children notice the silence on their links first (150 ms) and say so.
    s.advance(150);
    s.send("p1", Body::LostUpstream { addr: link("i1") });
    assert_eq!(
        s.c.node_state("i1"),
        Some(NodeState::Up),
        "one child's report is checked by PING, not believed"
    );
    s.send("p2", Body::LostUpstream { addr: link("i1") });
    assert!(
        s.redirects_to("p1") > before,
        "the second report repairs at once"
    );
    assert_eq!(s.now - cut, 150);
    assert_eq!(s.c.node_state("i1"), Some(NodeState::Dead));
    assert_eq!(s.upstreams("p1"), Some(vec![link("i2")]));
    assert_eq!(s.upstreams("p2"), Some(vec![link("i2")]));
    // Only the children of i1 were re-wired; p3 kept its list (i1 was its backup: it
    // gets a list without it).
    assert_eq!(s.redirects_to("m"), 1);
    assert_eq!(s.redirects_to("i2"), 1);
    s.advance(1000);
    assert_eq!(
        s.redirects_to("p1"),
        before + 1,
        "the rebuild agreed with the repair"
    );

    // i1 comes back: the designed tree returns.
    let conn = 999;
    s.c.connected(conn);
    let m = s.msg("i1", Body::Hello(hello("i1", Role::Intermediate)));
    s.c.message(conn, m, s.now);
    s.conn_of.insert("i1".into(), conn);
    s.responsive.insert(conn);
    s.drain();
    s.advance(500);
    assert_eq!(s.upstreams("i1"), Some(vec![link("m")]));
    assert_eq!(s.upstreams("p1"), Some(vec![link("i1"), link("i2")]));
    assert_eq!(s.upstreams("p2"), Some(vec![link("i1"), link("i2")]));
    assert_eq!(s.upstreams("p3"), Some(vec![link("i2"), link("i1")]));
}

#[test]
fn a_node_one_child_lost_is_dead_when_silent_to_its_ping_for_a_period() {
    let mut s = Sim::with_topology();
    s.join_all();
    s.advance(3000);
    let i1 = s.conn_of["i1"];
    s.responsive.remove(&i1);
    let reported = s.now;
    s.send("p1", Body::LostUpstream { addr: link("i1") });
    while s.c.node_state("i1") == Some(NodeState::Up) {
        s.advance(50);
        assert!(s.now - reported <= 2_000, "still up after 2 s");
    }
    let took = s.now - reported;
    assert!(took > 1000, "dead after {took} ms, before a PING period");
    assert_eq!(s.c.node_state("i1"), Some(NodeState::Dead));
}

#[test]
fn a_false_alarm_costs_one_ping_and_a_silent_leaf_dies_by_the_sweep() {
    let mut s = Sim::with_topology();
    s.join_all();
    // p1 lost i1's link for a moment, but i1 answers its PING: nothing changes.
    s.send("p1", Body::LostUpstream { addr: link("i1") });
    s.advance(5000);
    assert_eq!(s.c.node_state("i1"), Some(NodeState::Up));
    assert_eq!(s.redirects_to("p1"), 1);
    // A public nobody reports on falls silent: only the sweep (300 s, twice) finds it.
    let p3 = s.conn_of["p3"];
    s.responsive.remove(&p3);
    s.advance(400_000);
    assert_eq!(s.c.node_state("p3"), Some(NodeState::Up));
    s.advance(300_000);
    assert_eq!(s.c.node_state("p3"), Some(NodeState::Dead));
}

#[test]
fn a_leaf_its_parent_stops_hearing_is_dead_within_two_ping_periods() {
    let mut s = Sim::with_topology();
    s.join_all();
    s.send("i1", childs_update(&["p1", "p2"]));
    s.advance(5000);
    // p1 goes silent; i1's next report no longer names it.
    s.responsive.remove(&s.conn_of["p1"]);
    s.send("i1", childs_update(&["p2"]));
    let pinged = s.now;
    s.advance(2500);
    assert_eq!(s.c.node_state("p1"), Some(NodeState::Dead));
    assert!(
        s.sent.iter().any(|(c, m)| *c == s.conn_of["p1"]
            && matches!(m.body, Body::Ping { .. })
            && m.time_ms >= pinged
            && m.time_ms <= pinged + 1),
        "p1 was not PINGed at once"
    );
    // A list that drops p2 while p2 still answers costs one PING and no repair.
    let before = s.sent.len();
    s.send("i1", childs_update(&[]));
    s.drain();
    assert!(
        s.pings_since(before, "p2") >= 1,
        "p2 should be checked once"
    );
    s.advance(3000);
    assert_eq!(s.c.node_state("p2"), Some(NodeState::Up));
}

#[test]
fn masters_are_pinged_every_period_and_the_rest_once_per_sweep() {
    let mut s = Sim::with_topology();
    s.join_all();
    let start = s.sent.len();
    s.advance(600_000);
    let pings = |id: &str| s.pings_since(start, id);
    assert!((599..=601).contains(&pings("m")), "{}", pings("m"));
    assert!((1..=3).contains(&pings("p1")), "{}", pings("p1"));
}

#[test]
fn in_a_steady_tree_whose_parents_vouch_only_masters_are_pinged() {
    let mut s = Sim::with_topology();
    s.join_all();
    s.send("m", childs_update(&["i1", "i2"]));
    s.send("i1", childs_update(&["p1", "p2"]));
    s.send("i2", childs_update(&["p3"]));
    let start = s.sent.len();
    s.advance(900_000);
    let pings = |id: &str| s.pings_since(start, id);
    for id in ["i1", "i2", "p1", "p2", "p3"] {
        assert_eq!(pings(id), 0, "{id} was PINGed");
        assert_eq!(s.c.node_state(id), Some(NodeState::Up), "{id}");
    }
    assert!(pings("m") >= 899, "{}", pings("m"));
}

#[test]
fn bye_and_closed_connections_repair_at_once() {
    let mut s = Sim::with_topology();
    s.join_all();
    s.send(
        "i1",
        Body::Bye {
            reason: "SIGTERM".into(),
        },
    );
    assert_eq!(s.c.node_state("i1"), Some(NodeState::Left));
    assert_eq!(s.upstreams("p1"), Some(vec![link("i2")]));
    let i2 = s.conn_of["i2"];
    s.c.closed(i2, s.now);
    s.drain();
    assert_eq!(s.c.node_state("i2"), Some(NodeState::Dead));
    // Nowhere left but the master.
    assert_eq!(s.upstreams("p1"), Some(vec![link("m")]));
}

#[test]
fn bad_messages_get_an_error_and_disturb_nobody() {
    let mut s = Sim::with_topology();
    s.join_all();
    let p1 = s.conn_of["p1"];
    for _ in 0..3 {
        s.c.invalid(p1, &ControlError::BadTag, s.now);
    }
    s.drain();
    let errors = s
        .sent
        .iter()
        .filter(|(c, m)| *c == p1 && matches!(m.body, Body::Error { code: 401, .. }))
        .count();
    assert_eq!(errors, 3);
    // Three identical ERRORs in one millisecond still carry three times: the node's
    // replay cache must not take the second for a replay of the first.
    let mut times: Vec<u64> = s
        .sent
        .iter()
        .filter(|(c, _)| *c == p1)
        .map(|(_, m)| m.time_ms)
        .collect();
    let n = times.len();
    times.dedup();
    assert_eq!(times.len(), n, "times to p1 repeat: {times:?}");
    // A stranger without HELLO, and a node speaking for another, are refused.
    s.c.connected(5000);
    let m = s.msg("p2", Body::Pong { seq: 1 });
    s.c.message(5000, m, s.now);
    let m = s.msg(
        "p2",
        Body::Bye {
            reason: "forged".into(),
        },
    );
    s.c.message(p1, m, s.now);
    s.drain();
    assert_eq!(s.c.node_state("p2"), Some(NodeState::Up));
    assert!(s
        .sent
        .iter()
        .any(|(c, m)| *c == 5000 && matches!(m.body, Body::Error { code: 403, .. })));
    // A role that contradicts the design is refused.
    s.c.connected(5001);
    let m = s.msg("i1", Body::Hello(hello("i1", Role::Public)));
    s.c.message(5001, m, s.now);
    s.drain();
    assert!(s
        .sent
        .iter()
        .any(|(c, m)| *c == 5001 && matches!(m.body, Body::Error { code: 409, .. })));
    // Everyone still plays along; a flood closes the offender only.
    for _ in 0..20 {
        s.c.invalid(p1, &ControlError::Replay, s.now);
    }
    s.drain();
    assert!(s.closed.contains(&p1));
    s.advance(3000);
    for id in ["m", "i1", "i2", "p2", "p3"] {
        assert_eq!(s.c.node_state(id), Some(NodeState::Up), "{id}");
    }
    assert_eq!(s.c.node_state("p1"), Some(NodeState::Dead));
}

#[test]
fn clients_spread_over_the_publics_and_never_to_a_full_one() {
    let mut s = Sim::with_topology();
    s.join_all();
    let mut per = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..60 {
        let t = s.c.redirect("cam", ip(), None, s.now).unwrap();
        *per.entry(t.node).or_default() += 1;
    }
    assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![20, 20, 20]);
    // Fill them up: 300 viewers of capacity 100 each, then refusals.
    for _ in 0..240 {
        s.c.redirect("cam", ip(), None, s.now).unwrap();
    }
    assert_eq!(
        s.c.redirect("cam", ip(), None, s.now),
        Err(NoTarget::AllFull)
    );
}

#[test]
fn locality_comes_from_the_subnet_map() {
    let mut s = Sim::new(ControllerConfig {
        topology: Topology::from_toml_str(TOPOLOGY).unwrap(),
        regions: super::redirect::RegionMap::parse(&["198.51.100.0/24=us"]).unwrap(),
        ..ControllerConfig::default()
    });
    for (id, role, region) in [
        ("m", Role::Master, ""),
        ("i1", Role::Intermediate, ""),
        ("i2", Role::Intermediate, ""),
        ("p1", Role::Public, "eu"),
        ("p2", Role::Public, "us"),
        ("p3", Role::Public, "eu"),
    ] {
        let mut h = hello(id, role);
        h.region = region.into();
        s.join(h);
    }
    s.advance(500);
    let us: IpAddr = "198.51.100.7".parse().unwrap();
    for _ in 0..5 {
        assert_eq!(s.c.redirect("cam", us, None, s.now).unwrap().node, "p2");
    }
    let t = s.c.redirect("cam", ip(), Some("eu"), s.now).unwrap();
    assert_ne!(t.node, "p2");
}

fn stats(node: &str, viewers: u64, lost: u64) -> Stats {
    Stats {
        node: node.into(),
        start_ms: 0,
        end_ms: 0,
        descendants: 5,
        cpu_load: 0.1,
        viewers,
        egress_bps: viewers * 1_000_000,
        channels: vec![ChannelStats {
            id: "cam".into(),
            viewers,
            jitter_ms: 1.0,
            cum_lost: lost,
        }],
    }
}

#[test]
fn an_aggregate_that_disagrees_brings_full_stats_requests() {
    let mut s = Sim::with_topology();
    s.join_all();
    let count_req = |s: &Sim| {
        s.sent
            .iter()
            .filter(|(_, m)| matches!(m.body, Body::ReqFullStats { .. }))
            .count()
    };
    s.send("m", Body::Stats(stats("m", 0, 0)));
    assert_eq!(count_req(&s), 0, "the aggregate agrees: nobody asked");
    s.send("m", Body::Stats(stats("m", 40, 0)));
    assert_eq!(
        count_req(&s),
        3,
        "40 viewers nobody was sent: ask the 3 publics"
    );
    assert_eq!(s.c.aggregates().next().unwrap().viewers, 40);
    s.send("p1", Body::FullStats(stats("p1", 40, 0)));
    s.send("m", Body::Stats(stats("m", 40, 0)));
    assert_eq!(count_req(&s), 3, "it agrees again");
    s.send("m", Body::Stats(stats("m", 40, 9)));
    assert_eq!(count_req(&s), 6, "losses: ask again");
    // p1 now holds 40 viewers: new clients go elsewhere.
    assert_ne!(s.c.redirect("cam", ip(), None, s.now).unwrap().node, "p1");
}

#[test]
fn the_tier_grows_from_the_pool_and_drains_back() {
    let mut s = Sim::new(ControllerConfig {
        stats_ms: 1000,
        scale: Some(ScaleConfig {
            periods: 2,
            cooldown_ms: 3000,
            drain_max_ms: 20_000,
            ..ScaleConfig::default()
        }),
        ..ControllerConfig::default()
    });
    let mut master = hello("m", Role::Master);
    master.max_viewers = 0;
    s.join(master);
    s.join(hello("p1", Role::Public));
    let mut spare = hello("p9", Role::Public);
    spare.standby = true;
    s.join(spare);
    s.advance(100);
    assert_eq!(s.c.node_state("p9"), Some(NodeState::Standby));
    assert_eq!(s.upstreams("p9"), None, "a pool node is not wired");
    assert_eq!(s.upstreams("p1"), Some(vec![link("m")]));
    // 90 viewers on p1 (capacity 100): above the high-water mark.
    for _ in 0..90 {
        s.c.redirect("cam", ip(), None, s.now).unwrap();
    }
    s.send("p1", Body::FullStats(stats("p1", 90, 0)));
    s.advance(2500);
    assert_eq!(s.c.node_state("p9"), Some(NodeState::Up));
    assert_eq!(s.upstreams("p9"), Some(vec![link("m")]));
    assert_eq!(s.c.redirect("cam", ip(), None, s.now).unwrap().node, "p9");
    // The audience leaves: below the low-water mark, one drains, then is killed once
    // empty.
    s.send("p1", Body::FullStats(stats("p1", 0, 0)));
    s.send("p9", Body::FullStats(stats("p9", 0, 0)));
    s.advance(6000);
    let kills: Vec<ConnId> = s
        .sent
        .iter()
        .filter(|(_, m)| matches!(m.body, Body::Kill { .. }))
        .map(|(c, _)| *c)
        .collect();
    let states = (s.c.node_state("p1"), s.c.node_state("p9"));
    assert!(
        matches!(
            states,
            (
                Some(NodeState::Up),
                Some(NodeState::Draining { .. }) | Some(NodeState::Left)
            ) | (
                Some(NodeState::Draining { .. }) | Some(NodeState::Left),
                Some(NodeState::Up)
            )
        ),
        "{states:?}"
    );
    // While draining it got no new client; an empty drained node is killed.
    for _ in 0..3 {
        let t = s.c.redirect("cam", ip(), None, s.now).unwrap();
        assert!(matches!(s.c.node_state(&t.node), Some(NodeState::Up)));
    }
    let draining: Vec<String> = ["p1", "p9"]
        .iter()
        .filter(|id| matches!(s.c.node_state(id), Some(NodeState::Draining { .. })))
        .map(|s| s.to_string())
        .collect();
    for id in draining {
        s.send(&id, Body::FullStats(stats(&id, 0, 0)));
    }
    s.advance(1500);
    let kills_after: usize = s
        .sent
        .iter()
        .filter(|(_, m)| matches!(m.body, Body::Kill { .. }))
        .count();
    assert_eq!(kills.len().max(kills_after), 1, "one reflector killed");
    assert!(
        [s.c.node_state("p1"), s.c.node_state("p9")].contains(&Some(NodeState::Left)),
        "the drained one left"
    );
}

#[test]
fn tree_view_and_metrics_show_the_tree() {
    let mut s = Sim::with_topology();
    s.join_all();
    s.c.redirect("cam", ip(), None, s.now).unwrap();
    let v = s.c.tree_view(s.now);
    assert_eq!(v.nodes.len(), 6);
    assert!(v
        .links
        .iter()
        .any(|l| l.parent == "i1" && l.child == "p1" && l.kind == "active"));
    assert!(v
        .links
        .iter()
        .any(|l| l.parent == "i2" && l.child == "p1" && l.kind == "spare"));
    let text = s.c.metrics_text();
    assert!(
        text.contains("divisor_controller_nodes{role=\"public\",state=\"up\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("divisor_controller_client_redirects_total{target=\"p1\"} 1"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn a_wrong_aggregate_refreshes_the_stalest_publics_so_every_one_is_asked_in_turn() {
    let mut s = Sim::new(ControllerConfig {
        topology: Topology {
            fan_out: 200,
            ..super::core::empty_topology()
        },
        ..ControllerConfig::default()
    });
    let mut m = hello("m", Role::Master);
    m.max_viewers = 0;
    s.join(m);
    let publics: Vec<String> = (0..100).map(|i| format!("p{i:03}")).collect();
    for p in &publics {
        s.join(hello(p, Role::Public));
    }
    let mut asked_ever = BTreeSet::new();
    for round in 0..2 {
        let start = s.sent.len();
        // 1,000 viewers the controller never sent anywhere: the aggregate disagrees.
        s.send("m", Body::Stats(stats("m", 1000, 0)));
        let asked: BTreeSet<ConnId> = s.sent[start..]
            .iter()
            .filter(|(_, m)| matches!(m.body, Body::ReqFullStats { .. }))
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(
            asked.len(),
            64,
            "round {round}: a bounded number per report"
        );
        asked_ever.extend(asked.iter().copied());
        s.now += 10;
        for p in &publics {
            if asked.contains(&s.conn_of[p]) {
                s.send(p, Body::FullStats(stats(p, 0, 0)));
            }
        }
        s.now += 1000;
    }
    assert_eq!(
        asked_ever.len(),
        100,
        "the second round asks those the first did not"
    );
}
