//! Scale-out and scale-in through a deployer: the core asks (`Output::Deploy`,
//! `Output::Undeploy`), waits for the HELLO, and drains before it removes.

use super::*;
use crate::controller::core::empty_topology;

fn cfg(scale: ScaleConfig) -> ControllerConfig {
    ControllerConfig {
        stats_ms: 1000,
        scale: Some(scale),
        ..ControllerConfig::default()
    }
}

fn deploying() -> ScaleConfig {
    ScaleConfig {
        periods: 2,
        cooldown_ms: 3000,
        drain_max_ms: 20_000,
        deploy: true,
        startup_grace_ms: 0,
        boot_timeout_ms: 10_000,
        max_public: 4,
        ..ScaleConfig::default()
    }
}

fn master() -> Hello {
    let mut m = hello("m", Role::Master);
    m.max_viewers = 0;
    m
}

/// `id` reports `n` viewers.
fn load(s: &mut Sim, id: &str, n: u64) {
    s.send(id, Body::FullStats(stats(id, n, 0)));
}

#[test]
fn a_hot_tier_deploys_one_public_waits_for_its_hello_then_sends_viewers_to_it() {
    let mut s = Sim::new(cfg(deploying()));
    s.join(master());
    s.join(hello("p1", Role::Public));
    load(&mut s, "p1", 90);
    s.advance(2500);
    assert_eq!(s.deploys, vec![("auto-public-1".to_string(), Role::Public)]);
    // Still hot, past the cool-down, but one deploy is in flight: no second machine.
    s.send("p1", Body::FullStats(stats("p1", 95, 0)));
    s.advance(6000);
    assert_eq!(s.deploys.len(), 1, "{:?}", s.deploys);
    // It boots and says HELLO: placed, wired, and the next viewers go there.
    s.join(hello("auto-public-1", Role::Public));
    assert_eq!(s.c.node_state("auto-public-1"), Some(NodeState::Up));
    assert_eq!(s.upstreams("auto-public-1"), Some(vec![link("m")]));
    assert_eq!(
        s.c.redirect("cam", ip(), None, s.now).unwrap().node,
        "auto-public-1"
    );
    assert!(s.c.deployed().iter().all(|d| d.joined));
    let text = s.c.metrics_text();
    assert!(
        text.contains(
            "divisor_controller_scale_actions_total{action=\"deploy\",reason=\"above_high_water\"} 1"
        ),
        "{text}"
    );
}

#[test]
fn a_cold_tier_drains_the_deployed_reflector_then_kills_and_removes_it() {
    let mut s = Sim::new(cfg(deploying()));
    s.join(master());
    s.join(hello("p1", Role::Public));
    load(&mut s, "p1", 90);
    s.advance(2500);
    s.join(hello("auto-public-1", Role::Public));
    // Everyone leaves.
    s.send("p1", Body::FullStats(stats("p1", 0, 0)));
    s.send(
        "auto-public-1",
        Body::FullStats(stats("auto-public-1", 0, 0)),
    );
    s.advance(4000);
    assert!(
        matches!(
            s.c.node_state("auto-public-1"),
            Some(NodeState::Draining { .. })
        ),
        "the deployed one drains first, not the static p1: {:?}",
        s.c.node_state("auto-public-1")
    );
    assert_eq!(s.c.node_state("p1"), Some(NodeState::Up));
    assert!(s.undeploys.is_empty(), "nothing removed while it drains");
    // While draining, new viewers go to p1.
    assert_eq!(s.c.redirect("cam", ip(), None, s.now).unwrap().node, "p1");
    s.advance(500);
    s.send(
        "auto-public-1",
        Body::FullStats(stats("auto-public-1", 0, 0)),
    );
    s.advance(1000);
    assert_eq!(s.c.node_state("auto-public-1"), Some(NodeState::Left));
    let conn = s.conn_of["auto-public-1"];
    assert!(s
        .sent
        .iter()
        .any(|(c, m)| *c == conn && matches!(m.body, Body::Kill { .. })));
    assert_eq!(s.undeploys, vec!["auto-public-1".to_string()]);
    assert!(s.c.deployed().is_empty());
    // The minimum (1) holds: p1 is never drained.
    s.advance(20_000);
    assert_eq!(s.c.node_state("p1"), Some(NodeState::Up));
}

#[test]
fn with_every_parent_full_an_intermediate_comes_first_then_the_public_under_it() {
    let mut s = Sim::new(ControllerConfig {
        topology: Topology {
            fan_out: 2,
            ..empty_topology()
        },
        ..cfg(deploying())
    });
    s.join(master());
    s.join(hello("i1", Role::Intermediate));
    s.join(hello("p1", Role::Public));
    s.join(hello("p2", Role::Public));
    assert_eq!(s.upstreams("p2"), Some(vec![link("i1")]));
    load(&mut s, "p1", 90);
    load(&mut s, "p2", 90);
    s.advance(2500);
    assert_eq!(
        s.deploys,
        vec![("auto-intermediate-1".to_string(), Role::Intermediate)],
        "i1 has its 2 children: a new public would find no parent"
    );
    s.join(hello("auto-intermediate-1", Role::Intermediate));
    assert_eq!(s.upstreams("auto-intermediate-1"), Some(vec![link("m")]));
    assert_eq!(
        s.deploys.last(),
        Some(&("auto-public-2".to_string(), Role::Public)),
        "the public follows as soon as its parent is up"
    );
    s.join(hello("auto-public-2", Role::Public));
    assert_eq!(
        s.upstreams("auto-public-2").map(|u| u[0].clone()),
        Some(link("auto-intermediate-1"))
    );
}

#[test]
fn a_reflector_that_never_says_hello_is_removed_and_the_tier_tries_again() {
    let mut s = Sim::new(cfg(deploying()));
    s.join(master());
    s.join(hello("p1", Role::Public));
    load(&mut s, "p1", 90);
    s.advance(2500);
    assert_eq!(s.deploys.len(), 1);
    s.send("p1", Body::FullStats(stats("p1", 90, 0)));
    s.advance(10_500);
    assert_eq!(s.undeploys, vec!["auto-public-1".to_string()]);
    s.send("p1", Body::FullStats(stats("p1", 90, 0)));
    s.advance(3000);
    assert_eq!(
        s.deploys.last().map(|d| d.0.as_str()),
        Some("auto-public-2"),
        "{:?}",
        s.deploys
    );
    // A deployer failure is forgotten at once, and retried after the cool-down.
    s.c.deploy_failed("auto-public-2", "no capacity on the host");
    assert!(s.c.deployed().is_empty());
    s.send("p1", Body::FullStats(stats("p1", 90, 0)));
    s.advance(4000);
    assert_eq!(s.deploys.len(), 3, "{:?}", s.deploys);
}

#[test]
fn minimum_counts_wait_for_the_start_up_grace_and_adopted_reflectors_count() {
    let mut s = Sim::new(cfg(ScaleConfig {
        min_public: 2,
        startup_grace_ms: 5000,
        ..deploying()
    }));
    s.join(master());
    s.join(hello("p1", Role::Public));
    s.advance(3000);
    assert!(s.deploys.is_empty(), "inside the grace");
    s.advance(3000);
    assert_eq!(s.deploys, vec![("auto-public-1".to_string(), Role::Public)]);

    // A restarted controller adopts what runs: no deploy, and new names stay clear.
    let mut s = Sim::new(cfg(ScaleConfig {
        min_public: 2,
        startup_grace_ms: 0,
        ..deploying()
    }));
    s.c.adopt("auto-public-7", Role::Public, s.now);
    s.join(master());
    s.join(hello("p1", Role::Public));
    s.join(hello("auto-public-7", Role::Public));
    s.advance(3000);
    assert!(s.deploys.is_empty(), "{:?}", s.deploys);
    load(&mut s, "p1", 95);
    load(&mut s, "auto-public-7", 95);
    s.advance(2500);
    assert_eq!(s.deploys, vec![("auto-public-8".to_string(), Role::Public)]);
}

#[test]
fn the_maximum_is_never_passed() {
    let mut s = Sim::new(cfg(ScaleConfig {
        max_public: 2,
        ..deploying()
    }));
    s.join(master());
    s.join(hello("p1", Role::Public));
    s.join(hello("p2", Role::Public));
    for _ in 0..5 {
        s.send("p1", Body::FullStats(stats("p1", 99, 0)));
        s.send("p2", Body::FullStats(stats("p2", 99, 0)));
        s.advance(4000);
    }
    assert!(s.deploys.is_empty(), "{:?}", s.deploys);
}
