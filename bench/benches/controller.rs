//! The tree controller's sans-IO core at 100, 1,000 and 10,000 nodes: decision time per
//! event (HELLO, a death, STATS, a client redirect, the coalesced rebuild), and control
//! messages per second at the controller against the number of nodes.
//!
//!   cargo bench -p divisor-bench --bench controller
//!
//! Before criterion's means it prints, per size, the p50/p99 of 1,000 events of each
//! kind, and the messages per second of ten simulated minutes.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use divisor_reflector::control::{Body, ChannelStats, Hello, Message, Peer, Stats};
use divisor_reflector::controller::{Controller, ControllerConfig, Output};
use divisor_reflector::role::Role;
use divisor_reflector::tree::{LinkSpec, NodeSpec, Topology};

const T0: u64 = 1_700_000_000_000;

/// Masters 1 per 1,000 nodes, intermediates 1 per 20, the rest public; every node has a
/// primary and a spare candidate link one tier up.
fn topology(n: usize) -> Topology {
    let masters = (n / 1000).max(1);
    let ints = (n / 20).max(1);
    let mut nodes = Vec::new();
    let mut links = Vec::new();
    let node = |id: String, role| NodeSpec {
        id,
        role,
        region: String::new(),
        max_children: None,
    };
    let link = |a: String, b: String, spare| LinkSpec {
        a,
        b,
        cost: 1.0,
        spare,
    };
    for m in 0..masters {
        nodes.push(node(format!("m{m}"), Role::Master));
    }
    for i in 0..ints {
        nodes.push(node(format!("i{i}"), Role::Intermediate));
        links.push(link(format!("m{}", i % masters), format!("i{i}"), false));
        if masters > 1 {
            links.push(link(
                format!("m{}", (i + 1) % masters),
                format!("i{i}"),
                true,
            ));
        }
    }
    for p in 0..n.saturating_sub(masters + ints) {
        nodes.push(node(format!("p{p}"), Role::Public));
        links.push(link(format!("i{}", p % ints), format!("p{p}"), false));
        links.push(link(format!("i{}", (p + 1) % ints), format!("p{p}"), true));
    }
    Topology {
        encoders: vec!["10.0.0.1:7000".into()],
        fan_out: 64,
        nodes,
        links,
    }
}

fn hello(id: &str, role: Role) -> Hello {
    Hello {
        id: id.into(),
        role,
        link: format!("{id}:7000"),
        rtsp: format!("{id}:8554"),
        http: None,
        region: String::new(),
        max_viewers: 1000,
        egress_budget_bps: 0,
        standby: false,
    }
}

fn msg(from: &str, now: u64, body: Body) -> Message {
    Message {
        time_ms: now,
        from: Peer::Node(from.into()),
        to: Peer::Root,
        body,
    }
}

/// A controller with every node of `topology(n)` joined (connection k+1 for node k) and
/// the tree built.
fn joined(n: usize) -> (Controller, Vec<(String, Role)>, u64) {
    let topo = topology(n);
    let ids: Vec<(String, Role)> = topo.nodes.iter().map(|s| (s.id.clone(), s.role)).collect();
    let mut c = Controller::new(
        ControllerConfig {
            topology: topo,
            ..ControllerConfig::default()
        },
        T0,
    );
    for (k, (id, role)) in ids.iter().enumerate() {
        let conn = k as u64 + 1;
        c.connected(conn);
        c.message(conn, msg(id, T0, Body::Hello(hello(id, *role))), T0);
    }
    c.rebuild(T0);
    while c.poll_output().is_some() {}
    (c, ids, T0)
}

fn drain(c: &mut Controller) -> usize {
    let mut n = 0;
    while c.poll_output().is_some() {
        n += 1;
    }
    n
}

fn master_stats(now: u64) -> Stats {
    Stats {
        node: "m0".into(),
        start_ms: now - 2000,
        end_ms: now,
        descendants: 10,
        cpu_load: 0.2,
        viewers: 0,
        egress_bps: 0,
        channels: vec![ChannelStats {
            id: "cam".into(),
            viewers: 0,
            jitter_ms: 1.0,
            cum_lost: 0,
        }],
    }
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// p50/p99 of each kind of event, in microseconds.
fn event_percentiles(n: usize) {
    let (mut c, ids, now) = joined(n);
    let ints: Vec<usize> = (0..ids.len())
        .filter(|&k| ids[k].1 == Role::Intermediate)
        .collect();
    let (mut hello_t, mut death_t, mut stats_t, mut redirect_t, mut rebuild_t) =
        (vec![], vec![], vec![], vec![], vec![]);
    let client = "192.0.2.1".parse().unwrap();
    let mut t = now;
    for round in 0..1000u64 {
        t += 1;
        // A node not in the design joins (and leaves again, unmeasured).
        let conn = 1_000_000 + round;
        let id = format!("extra{round}");
        c.connected(conn);
        let m = msg(&id, t, Body::Hello(hello(&id, Role::Public)));
        let s = Instant::now();
        c.message(conn, m, t);
        hello_t.push(s.elapsed().as_secs_f64() * 1e6);
        c.closed(conn, t);
        drain(&mut c);
        // STATS from a master.
        let m = msg("m0", t, Body::Stats(master_stats(t)));
        let s = Instant::now();
        c.message(1, m, t);
        stats_t.push(s.elapsed().as_secs_f64() * 1e6);
        drain(&mut c);
        // A client redirect.
        let s = Instant::now();
        let _ = black_box(c.redirect("cam", client, None, t));
        redirect_t.push(s.elapsed().as_secs_f64() * 1e6);
        // An intermediate dies (its connection closes), then returns.
        if round < 200 {
            let k = ints[round as usize % ints.len()];
            let conn = k as u64 + 1;
            let s = Instant::now();
            c.closed(conn, t);
            death_t.push(s.elapsed().as_secs_f64() * 1e6);
            drain(&mut c);
            let (iid, role) = &ids[k];
            let conn2 = 2_000_000 + round;
            c.connected(conn2);
            c.message(conn2, msg(iid, t, Body::Hello(hello(iid, *role))), t);
            let s = Instant::now();
            c.rebuild(t);
            rebuild_t.push(s.elapsed().as_secs_f64() * 1e6);
            drain(&mut c);
        }
    }
    for (kind, v) in [
        ("hello", hello_t),
        ("death", death_t),
        ("stats", stats_t),
        ("redirect", redirect_t),
        ("rebuild", rebuild_t),
    ] {
        let (p50, p99) = percentiles(v);
        println!("controller {n:>6} nodes  {kind:<8}  p50 {p50:>9.1} µs  p99 {p99:>9.1} µs");
    }
}

/// Messages per second at the controller over ten simulated minutes (two sweeps) of a
/// steady tree: every parent has said which children it hears from (CHILDSUPDATE, as
/// reflectors do after their first report), every node answers PINGs, masters send
/// STATS every 2 s, nothing else happens.
fn messages_per_second(n: usize) {
    let (mut c, ids, now) = joined(n);
    let conn_of = |id: &str| ids.iter().position(|(i, _)| i == id).map(|k| k as u64 + 1);
    for (id, _) in &ids {
        let children = c.plan().children(id);
        if !children.is_empty() {
            let conn = conn_of(id).unwrap();
            c.message(conn, msg(id, now, Body::ChildsUpdate { children }), now);
        }
    }
    drain(&mut c);
    let masters: Vec<String> = ids
        .iter()
        .filter(|(_, r)| *r == Role::Master)
        .map(|(i, _)| i.clone())
        .collect();
    let before = c.metrics().messages_in_total() + c.metrics().messages_out_total();
    let mut t = now;
    let end = now + 600_000;
    let mut next_stats = now + 2000;
    while t < end {
        t = c.poll_timeout().min(next_stats).min(end);
        c.handle_timeout(t);
        if t >= next_stats {
            next_stats += 2000;
            for m in &masters {
                let conn = conn_of(m).unwrap();
                let mut s = master_stats(t);
                s.node = m.clone();
                c.message(conn, msg(m, t, Body::Stats(s)), t);
            }
        }
        let outs: Vec<Output> = std::iter::from_fn(|| c.poll_output()).collect();
        for o in outs {
            if let Output::Send { conn, msg: m } = o {
                if let (Body::Ping { seq }, Peer::Node(id)) = (&m.body, &m.to) {
                    let pong = msg(id, t, Body::Pong { seq: *seq });
                    c.message(conn, pong, t);
                }
            }
        }
    }
    let total = c.metrics().messages_in_total() + c.metrics().messages_out_total() - before;
    let alive: BTreeSet<_> = ids.iter().map(|(i, _)| i).collect();
    println!(
        "controller {n:>6} nodes  {:>9.1} control messages/s (in + out), {} masters, {} nodes up",
        total as f64 / 600.0,
        masters.len(),
        alive.len()
    );
}

fn bench(cr: &mut Criterion) {
    for n in [100, 1000, 10_000] {
        event_percentiles(n);
        messages_per_second(n);
    }
    let mut g = cr.benchmark_group("controller");
    g.sample_size(20);
    for n in [100usize, 1000, 10_000] {
        let (mut c, _, now) = joined(n);
        g.bench_with_input(BenchmarkId::new("stats", n), &n, |b, _| {
            let mut t = now;
            b.iter(|| {
                t += 1;
                c.message(1, msg("m0", t, Body::Stats(master_stats(t))), t);
                drain(&mut c)
            })
        });
        let client = "192.0.2.1".parse().unwrap();
        g.bench_with_input(BenchmarkId::new("redirect", n), &n, |b, _| {
            b.iter(|| black_box(c.redirect("cam", client, None, now)))
        });
        g.bench_with_input(BenchmarkId::new("rebuild", n), &n, |b, _| {
            b.iter(|| {
                c.rebuild(now);
                drain(&mut c)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
