use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use proptest::prelude::*;

use super::*;
use crate::role::Role;

fn all(topo: &Topology) -> BTreeSet<String> {
    topo.nodes.iter().map(|n| n.id.clone()).collect()
}

fn without(topo: &Topology, dead: &[&str]) -> BTreeSet<String> {
    let mut s = all(topo);
    for d in dead {
        s.remove(*d);
    }
    s
}

fn parents(plan: &Plan) -> BTreeMap<&str, Option<&str>> {
    plan.parent
        .iter()
        .map(|(c, p)| (c.as_str(), p.as_deref()))
        .collect()
}

/// The surviving link between two nodes, as `build` would keep it: (cost, spare).
fn link(topo: &Topology, x: &str, y: &str) -> Option<(f64, bool)> {
    topo.links
        .iter()
        .filter(|l| (l.a == x && l.b == y) || (l.a == y && l.b == x))
        .map(|l| (l.cost, l.spare))
        .min_by(|p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)))
}

/// Every drawn pair, unordered, to the link `build` keeps for it.
fn link_index(topo: &Topology) -> BTreeMap<(&str, &str), (f64, bool)> {
    let mut map: BTreeMap<(&str, &str), (f64, bool)> = BTreeMap::new();
    for l in &topo.links {
        let key = (l.a.as_str().min(&l.b), l.a.as_str().max(&l.b));
        let e = map.entry(key).or_insert((l.cost, l.spare));
        if (l.cost, l.spare) < *e {
            *e = (l.cost, l.spare);
        }
    }
    map
}

/// Every invariant a plan must satisfy, whatever the topology.
fn check_invariants(topo: &Topology, plan: &Plan) {
    let links = link_index(topo);
    let link = |x: &str, y: &str| links.get(&(x.min(y), x.max(y))).copied();
    let placed: BTreeSet<&str> = plan.parent.keys().map(String::as_str).collect();
    let roles: BTreeSet<&str> = plan.role.keys().map(String::as_str).collect();
    assert_eq!(placed, roles, "parent and role maps cover the same nodes");
    let mut children: BTreeMap<&str, usize> = BTreeMap::new();
    for (c, p) in &plan.parent {
        let rc = plan.role[c];
        assert_eq!(rc, topo.node(c).expect("placed node is in the file").role);
        match p {
            None => assert_eq!(rc, Role::Master, "{c}: only masters have no parent"),
            Some(p) => {
                let rp = *plan.role.get(p).expect("parent is placed");
                assert_ne!(rp, Role::Public, "public {p} is a parent of {c}");
                assert!(may_feed(rp, rc), "{p} ({rp}) may not feed {c} ({rc})");
                assert!(link(p, c).is_some(), "{p} - {c} is not a drawn link");
                *children.entry(p.as_str()).or_default() += 1;
            }
        }
        // Reaches a master without a cycle (depth walks at most |plan| steps).
        assert!(plan.depth(c).is_some(), "{c} does not reach a master");
    }
    for (p, n) in children {
        assert!(n <= topo.max_children(p), "{p} has {n} children");
    }
    for (c, list) in &plan.backups {
        assert!(placed.contains(c.as_str()));
        assert!(list.len() <= MAX_BACKUPS);
        let mut seen = BTreeSet::new();
        for b in list {
            assert!(seen.insert(b), "{c}: backup {b} listed twice");
            assert_ne!(b, c);
            assert_ne!(
                plan.parent[c].as_ref(),
                Some(b),
                "{c}: backup is the primary"
            );
            assert!(may_feed(plan.role[b], plan.role[c]), "{b} may not feed {c}");
            assert!(link(b, c).is_some());
            // Not a descendant of c: walking up from b never meets c.
            let mut cur = b.as_str();
            while let Some(Some(up)) = plan.parent.get(cur) {
                assert_ne!(up, c, "{c}: backup {b} is its descendant");
                cur = up;
            }
        }
    }
}

/// Whether the tree's link from `c`'s parent is a spare one.
fn uses_spare(topo: &Topology, plan: &Plan, c: &str) -> bool {
    match &plan.parent[c] {
        Some(p) => link(topo, p, c).expect("tree link is drawn").1,
        None => false,
    }
}

// Castaldi's worked example (thesis §5.3, Figures 5.13–5.17, pp. 95–97): the
// administrator draws eleven nodes with roles and links, some of them redundancy
// links, with drawing mistakes; the builder prunes dangling branches (Fig. 5.15),
// weights nodes and links (Fig. 5.16) and computes the optimal tree (Fig. 5.17).
// The figures are images that the text we have does not carry, so the exact drawing
// cannot be reproduced. This fixture rebuilds one with what the text describes: one
// root, relays and leaves (11 nodes), redundancy (spare) links, a leaf fed directly by
// the root (as in Fig. 7.3), leaf–leaf mistakes, and a relay not connected to the root
// whose branch dangles. The expected tree is worked out by hand below.
const THESIS: &str = r#"
encoders = ["10.0.0.2:7000"]
fan_out = 16

[[node]]
id = "root"
role = "master"
[[node]]
id = "r1"
role = "intermediate"
[[node]]
id = "r2"
role = "intermediate"
[[node]]
id = "r3"
role = "intermediate"
[[node]]
id = "r4"
role = "intermediate"
[[node]]
id = "l1"
role = "public"
[[node]]
id = "l2"
role = "public"
[[node]]
id = "l3"
role = "public"
[[node]]
id = "l4"
role = "public"
[[node]]
id = "l5"
role = "public"
[[node]]
id = "l6"
role = "public"

[[link]]
a = "root"
b = "r1"
[[link]]
a = "root"
b = "r2"
[[link]]
a = "r1"
b = "r3"
[[link]]
a = "r2"
b = "r3"
spare = true
[[link]]
a = "r1"
b = "l1"
[[link]]
a = "l2"
b = "r1"
[[link]]
a = "r2"
b = "l3"
[[link]]
a = "r3"
b = "l4"
[[link]]
a = "r3"
b = "l1"
spare = true
[[link]]
a = "r2"
b = "l2"
spare = true
[[link]]
a = "root"
b = "l6"
[[link]]
a = "r2"
b = "l6"
[[link]]
a = "r4"
b = "l5"
[[link]]
a = "l3"
b = "l4"
[[link]]
a = "l5"
b = "l6"
"#;

#[test]
fn thesis_eleven_node_example() {
    let topo = Topology::from_toml_str(THESIS).unwrap();
    assert_eq!(topo.nodes.len(), 11);
    let plan = build(&topo, &all(&topo));
    check_invariants(&topo, &plan);
    // Weights: master 1, relay 2, leaf 3. Kruskal over root/relays takes root-r1 (3),
    // root-r2 (3), r1-r3 (4); the spare r2-r3 would close a cycle. Leaves take their
    // cheapest ordinary link: l6-root (4) beats l6-r2 (5).
    let expected: BTreeMap<&str, Option<&str>> = [
        ("root", None),
        ("r1", Some("root")),
        ("r2", Some("root")),
        ("r3", Some("r1")),
        ("l1", Some("r1")),
        ("l2", Some("r1")),
        ("l3", Some("r2")),
        ("l4", Some("r3")),
        ("l6", Some("root")),
    ]
    .into();
    assert_eq!(parents(&plan), expected);
    assert_eq!(plan.weight, 3.0 + 3.0 + 4.0 + 5.0 + 5.0 + 5.0 + 5.0 + 4.0);
    // Unused links become backups, spare ones first.
    let backups: BTreeMap<&str, Vec<&str>> = plan
        .backups
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
        .collect();
    let expected_backups: BTreeMap<&str, Vec<&str>> = [
        ("r2", vec!["r3"]),
        ("r3", vec!["r2"]),
        ("l1", vec!["r3"]),
        ("l2", vec!["r2"]),
        ("l6", vec!["r2"]),
    ]
    .into();
    assert_eq!(backups, expected_backups);
    assert_eq!(plan.upstreams("l1"), ["r1", "r3"]);
    assert!(plan.upstreams("root").is_empty());
    // The dangling branch r4-l5 and the leaf-leaf mistakes are reported.
    let what: BTreeSet<&str> = plan.pruned.iter().map(|p| p.what.as_str()).collect();
    let expected_pruned: BTreeSet<&str> = [
        "link l3 - l4 (#14)",
        "link l5 - l6 (#15)",
        "node r4",
        "node l5",
    ]
    .into();
    assert_eq!(what, expected_pruned);
    assert!(plan
        .pruned
        .iter()
        .all(|p| !p.what.starts_with("node") || p.reason.starts_with("dangling")));
    // No spare link in the tree while ordinary ones suffice.
    assert!(plan.parent.keys().all(|c| !uses_spare(&topo, &plan, c)));
    assert_eq!(plan.children("r1"), ["l1", "l2", "r3"]);
    assert_eq!(plan.depth("l4"), Some(3));
    assert_eq!(plan.depth("root"), Some(0));
    assert_eq!(plan.depth("r4"), None);
    assert_eq!(plan.descendants("r1"), 4);
    assert_eq!(plan.descendants("root"), 8);
    assert_eq!(plan.descendants("l1"), 0);
}

#[test]
fn repair_moves_children_to_backups_and_revival_restores() {
    let topo = Topology::from_toml_str(THESIS).unwrap();
    let before = build(&topo, &all(&topo));
    let after = build(&topo, &without(&topo, &["r1"]));
    check_invariants(&topo, &after);
    assert!(!after.parent.contains_key("r1"));
    for child in before.children("r1") {
        let new = after.parent[&child].clone().unwrap();
        assert!(
            before.backups[&child].contains(&new),
            "{child} moved to {new}, not a backup"
        );
    }
    // The repair needs the spare r2-r3: nothing else reaches r3 now.
    assert_eq!(after.parent["r3"].as_deref(), Some("r2"));
    assert!(uses_spare(&topo, &after, "r3"));
    // r3, l1, l2 changed parent; r2 lost its backup r3, which now hangs below it.
    assert_eq!(moved(&before, &after), ["l1", "l2", "r2", "r3"]);
    assert!(after
        .pruned
        .iter()
        .any(|p| p.reason.contains("\"r1\" is not alive")));
    let revived = build(&topo, &all(&topo));
    assert_eq!(revived, before);
    assert_eq!(moved(&after, &revived), ["l1", "l2", "r1", "r2", "r3"]);
    assert!(moved(&before, &revived).is_empty());
}

#[test]
fn pruning_rules() {
    let topo = Topology::from_toml_str(
        r#"
        [[node]]
        id = "m1"
        role = "master"
        [[node]]
        id = "m2"
        role = "master"
        [[node]]
        id = "i1"
        role = "intermediate"
        [[node]]
        id = "p1"
        role = "public"
        [[node]]
        id = "p2"
        role = "public"
        [[link]]
        a = "m1"
        b = "m2"
        [[link]]
        a = "i1"
        b = "i1"
        [[link]]
        a = "i1"
        b = "ghost"
        [[link]]
        a = "m1"
        b = "i1"
        cost = 3.0
        [[link]]
        a = "i1"
        b = "m1"
        cost = 2.0
        [[link]]
        a = "i1"
        b = "p1"
        [[link]]
        a = "p1"
        b = "p2"
        "#,
    )
    .unwrap();
    let plan = build(&topo, &all(&topo));
    check_invariants(&topo, &plan);
    let reasons: Vec<(&str, &str)> = plan
        .pruned
        .iter()
        .map(|p| (p.what.as_str(), p.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "link m1 - m2 (#1)",
                "links two masters; a master is fed by encoders only"
            ),
            ("link i1 - i1 (#2)", "self-link"),
            ("link i1 - ghost (#3)", "unknown node \"ghost\""),
            ("link m1 - i1 (#4)", "duplicate of link #5, which is kept"),
            (
                "link p1 - p2 (#7)",
                "links two public reflectors; a public reflector is never a parent"
            ),
            ("node p2", "dangling: no valid link leads to a master"),
        ]
    );
    // The cheaper duplicate (cost 2, weight 2 × (1 + 2)) is the one in the tree.
    assert_eq!(plan.weight, 6.0 + 5.0);
    assert_eq!(plan.parent["m2"], None);
}

fn chain_topology(fan_out: usize, spare_last: bool) -> Topology {
    // m feeds i1..i4 but has room for two; i1 and i2 can feed the others.
    let mut text =
        format!("fan_out = {fan_out}\n[[node]]\nid = \"m\"\nrole = \"master\"\nmax_children = 2\n");
    for i in 1..=4 {
        text += &format!("[[node]]\nid = \"i{i}\"\nrole = \"intermediate\"\n");
        text += &format!("[[link]]\na = \"m\"\nb = \"i{i}\"\n");
    }
    text += "[[link]]\na = \"i1\"\nb = \"i3\"\ncost = 5.0\n";
    text += &format!("[[link]]\na = \"i2\"\nb = \"i4\"\ncost = 5.0\nspare = {spare_last}\n");
    Topology::from_toml_str(&text).unwrap()
}

#[test]
fn fan_out_limits_and_spare_links_for_repair() {
    let topo = chain_topology(16, true);
    let plan = build(&topo, &all(&topo));
    check_invariants(&topo, &plan);
    assert_eq!(plan.children("m"), ["i1", "i2"]);
    assert_eq!(plan.parent["i3"].as_deref(), Some("i1"));
    // Only the spare link reaches i4 once m is full, so it is used.
    assert_eq!(plan.parent["i4"].as_deref(), Some("i2"));
    assert!(uses_spare(&topo, &plan, "i4"));
    // The drawn links m-i3, m-i4 stay as backups.
    assert_eq!(plan.backups["i3"], ["m"]);
    assert_eq!(plan.backups["i4"], ["m"]);

    // With i2 dead and m full, i4 has no parent with room.
    let plan = build(&topo, &without(&topo, &["i2"]));
    check_invariants(&topo, &plan);
    assert_eq!(plan.children("m"), ["i1", "i3"]);
    assert!(!plan.parent.contains_key("i4"));
    let p = plan.pruned.iter().find(|p| p.what == "node i4").unwrap();
    assert!(p.reason.contains("full"), "{}", p.reason);

    // A fan-out of one: every node has at most one child.
    let topo = Topology::from_toml_str(
        r#"
        fan_out = 1
        [[node]]
        id = "m"
        role = "master"
        [[node]]
        id = "i"
        role = "intermediate"
        [[node]]
        id = "p1"
        role = "public"
        [[node]]
        id = "p2"
        role = "public"
        [[link]]
        a = "m"
        b = "i"
        [[link]]
        a = "m"
        b = "p1"
        [[link]]
        a = "m"
        b = "p2"
        [[link]]
        a = "i"
        b = "p1"
        [[link]]
        a = "i"
        b = "p2"
        "#,
    )
    .unwrap();
    let plan = build(&topo, &all(&topo));
    check_invariants(&topo, &plan);
    assert_eq!(parents(&plan)["i"], Some("m"));
    assert_eq!(parents(&plan)["p1"], Some("i"));
    assert!(!plan.parent.contains_key("p2"));
}

#[test]
fn spare_public_link_only_when_needed() {
    let text = r#"
        [[node]]
        id = "m"
        role = "master"
        [[node]]
        id = "a"
        role = "intermediate"
        [[node]]
        id = "b"
        role = "intermediate"
        [[node]]
        id = "p"
        role = "public"
        [[link]]
        a = "m"
        b = "a"
        [[link]]
        a = "m"
        b = "b"
        [[link]]
        a = "p"
        b = "a"
        cost = 10.0
        [[link]]
        a = "p"
        b = "b"
        spare = true
        "#;
    let topo = Topology::from_toml_str(text).unwrap();
    let plan = build(&topo, &all(&topo));
    // The spare link is cheaper, yet the ordinary one is used; the spare is the backup.
    assert_eq!(plan.parent["p"].as_deref(), Some("a"));
    assert_eq!(plan.upstreams("p"), ["a", "b"]);
    let repaired = build(&topo, &without(&topo, &["a"]));
    assert_eq!(repaired.parent["p"].as_deref(), Some("b"));
    assert_eq!(moved(&plan, &repaired), ["p"]);
}

#[test]
fn several_masters_form_one_forest() {
    let topo = Topology::from_toml_str(
        r#"
        [[node]]
        id = "m1"
        role = "master"
        [[node]]
        id = "m2"
        role = "master"
        [[node]]
        id = "i"
        role = "intermediate"
        [[node]]
        id = "j"
        role = "intermediate"
        [[link]]
        a = "m1"
        b = "i"
        [[link]]
        a = "m2"
        b = "j"
        [[link]]
        a = "i"
        b = "j"
        cost = 0.0
        "#,
    )
    .unwrap();
    let plan = build(&topo, &all(&topo));
    check_invariants(&topo, &plan);
    // The free i-j link joins the two masters' trees; one master link is enough.
    assert_eq!(plan.weight, 3.0);
    assert_eq!(plan.parent["m1"], None);
    assert_eq!(plan.parent["m2"], None);
    assert_eq!(plan.parent["i"].as_deref(), Some("m1"));
    assert_eq!(plan.parent["j"].as_deref(), Some("i"));
    assert_eq!(plan.upstreams("j"), ["i", "m2"]);
}

#[test]
fn topology_errors_name_the_entry() {
    let err = |s: &str| Topology::from_toml_str(s).unwrap_err().to_string();
    let e = err("fan_out = ");
    assert!(e.starts_with("<inline topology>: "), "{e}");
    let e =
        err("[[node]]\nid = \"a\"\nrole = \"master\"\n[[node]]\nid = \"a\"\nrole = \"public\"\n");
    assert!(e.contains("node #2 \"a\": duplicate id"), "{e}");
    let e = err("[[node]]\nid = \"x\"\nrole = \"edge\"\n");
    assert!(
        e.contains("node \"x\"") && e.contains("unknown role \"edge\""),
        "{e}"
    );
    let e = err("[[link]]\na = \"x\"\nb = \"y\"\ncost = -1.0\n");
    assert!(e.contains("link #1 \"x\" - \"y\": cost -1"), "{e}");
    let e = err("[[link]]\na = \"x\"\nb = \"y\"\ncost = nan\n");
    assert!(e.contains("cost NaN"), "{e}");
    assert!(err("fan_out = 0").contains("fan_out must be at least 1"));
    assert!(err("fan_out = -3").starts_with("<inline topology>"));
    assert!(err("[[node]]\nid = \"x\"\nrole = \"master\"\ncolour = 1\n").contains("colour"));
    assert!(err("[[node]]\nid = \"\"\nrole = \"master\"\n").contains("node #1: empty id"));

    let path = std::env::temp_dir().join(format!("divisor-topo-{}.toml", std::process::id()));
    std::fs::write(&path, "[[node]]\nid = 3\n").unwrap();
    let e = Topology::from_file(&path).unwrap_err().to_string();
    std::fs::write(&path, THESIS).unwrap();
    let ok = Topology::from_file(&path);
    let _ = std::fs::remove_file(&path);
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    assert_eq!(ok.unwrap(), Topology::from_toml_str(THESIS).unwrap());
    let missing = Topology::from_file(&path).unwrap_err().to_string();
    assert!(missing.contains("cannot read"), "{missing}");
}

#[test]
fn defaults_and_lookups() {
    let topo = Topology::from_toml_str(
        "[[node]]\nid = \"m\"\nrole = \"master\"\nregion = \"eu\"\nmax_children = 3\n\
         [[node]]\nid = \"i\"\nrole = \"intermediate\"\n[[link]]\na = \"m\"\nb = \"i\"\n",
    )
    .unwrap();
    assert_eq!(topo.fan_out, DEFAULT_FAN_OUT);
    assert!(topo.encoders.is_empty());
    assert_eq!(topo.node("m").unwrap().region, "eu");
    assert_eq!(topo.node("i").unwrap().region, "");
    assert_eq!(topo.max_children("m"), 3);
    assert_eq!(topo.max_children("i"), DEFAULT_FAN_OUT);
    assert_eq!(topo.max_children("nobody"), DEFAULT_FAN_OUT);
    assert_eq!(topo.links[0].cost, 1.0);
    assert!(!topo.links[0].spare);
    assert!(topo.node("nobody").is_none());
}

#[test]
fn place_least_loaded_respects_fan_out() {
    let topo = Topology::from_toml_str(
        r#"
        fan_out = 2
        [[node]]
        id = "m1"
        role = "master"
        [[node]]
        id = "m2"
        role = "master"
        [[node]]
        id = "i1"
        role = "intermediate"
        [[node]]
        id = "i2"
        role = "intermediate"
        max_children = 3
        [[node]]
        id = "p0"
        role = "public"
        [[link]]
        a = "m1"
        b = "i1"
        [[link]]
        a = "m1"
        b = "i2"
        [[link]]
        a = "i1"
        b = "p0"
        "#,
    )
    .unwrap();
    let mut plan = build(&topo, &all(&topo));
    // i1 has p0, i2 has none: the new public goes to i2, backup i1.
    assert_eq!(
        place(&mut plan, &topo, "x1", Role::Public).as_deref(),
        Some("i2")
    );
    assert_eq!(plan.upstreams("x1"), ["i2", "i1"]);
    assert_eq!(plan.role["x1"], Role::Public);
    // Tie (one child each) goes to the smaller id.
    assert_eq!(
        place(&mut plan, &topo, "x2", Role::Public).as_deref(),
        Some("i1")
    );
    assert_eq!(
        place(&mut plan, &topo, "x3", Role::Public).as_deref(),
        Some("i2")
    );
    // i1 is full (fan_out 2); i2 has room for one more (max 3), with no backup left.
    assert_eq!(
        place(&mut plan, &topo, "x4", Role::Public).as_deref(),
        Some("i2")
    );
    assert_eq!(plan.upstreams("x4"), ["i2"]);
    // Everything is full: not placed, nothing changes (masters are not used).
    let snapshot = plan.clone();
    assert_eq!(place(&mut plan, &topo, "x5", Role::Public), None);
    assert_eq!(plan, snapshot);
    // An already-placed node stays where it is.
    assert_eq!(
        place(&mut plan, &topo, "x1", Role::Public).as_deref(),
        Some("i2")
    );
    assert_eq!(plan, snapshot);
    // Intermediates go under the least-loaded master: m2 (0) before m1 (full).
    assert_eq!(
        place(&mut plan, &topo, "j1", Role::Intermediate).as_deref(),
        Some("m2")
    );
    assert_eq!(plan.upstreams("j1"), ["m2"]);
    assert_eq!(
        place(&mut plan, &topo, "j2", Role::Intermediate).as_deref(),
        Some("m2")
    );
    assert_eq!(place(&mut plan, &topo, "j3", Role::Intermediate), None);
    // Now the new intermediates have room for publics; j1 and j2 are least loaded.
    assert_eq!(
        place(&mut plan, &topo, "x5", Role::Public).as_deref(),
        Some("j1")
    );
    assert_eq!(plan.upstreams("x5"), ["j1", "j2"]);
    // A master has no parent.
    assert_eq!(place(&mut plan, &topo, "m3", Role::Master), None);
    assert_eq!(plan.parent["m3"], None);
    assert_eq!(plan.depth("m3"), Some(0));
    assert_eq!(
        place(&mut plan, &topo, "j3", Role::Intermediate).as_deref(),
        Some("m3")
    );
}

#[test]
fn place_public_under_master_without_intermediates() {
    let topo = Topology::from_toml_str(
        "fan_out = 1\n[[node]]\nid = \"m1\"\nrole = \"master\"\n\
         [[node]]\nid = \"m2\"\nrole = \"master\"\n",
    )
    .unwrap();
    let mut plan = build(&topo, &all(&topo));
    assert_eq!(
        place(&mut plan, &topo, "p1", Role::Public).as_deref(),
        Some("m1")
    );
    assert_eq!(plan.upstreams("p1"), ["m1", "m2"]);
    assert_eq!(
        place(&mut plan, &topo, "p2", Role::Public).as_deref(),
        Some("m2")
    );
    assert_eq!(place(&mut plan, &topo, "p3", Role::Public), None);
    let mut empty = build(&topo, &BTreeSet::new());
    assert!(empty.parent.is_empty());
    assert_eq!(place(&mut empty, &topo, "p", Role::Public), None);
    assert!(empty.parent.is_empty());
}

/// A tiny deterministic generator, so the large test needs no extra crate.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[test]
fn ten_thousand_nodes_build_fast() {
    let (masters, inters, publics) = (10, 990, 9000);
    let mut rng = Lcg(7);
    let mut nodes = Vec::new();
    let mut links = Vec::new();
    let spec = |id: String, role| NodeSpec {
        id,
        role,
        region: String::new(),
        max_children: None,
    };
    let add = |a: String, b: String, rng: &mut Lcg| LinkSpec {
        a,
        b,
        cost: 1.0 + rng.below(10) as f64,
        spare: rng.below(5) == 0,
    };
    for m in 0..masters {
        nodes.push(spec(format!("m{m}"), Role::Master));
    }
    for i in 0..inters {
        nodes.push(spec(format!("i{i}"), Role::Intermediate));
        links.push(add(
            format!("m{}", rng.below(masters)),
            format!("i{i}"),
            &mut rng,
        ));
        for _ in 0..3 {
            links.push(add(
                format!("i{}", rng.below(inters)),
                format!("i{i}"),
                &mut rng,
            ));
        }
    }
    for p in 0..publics {
        nodes.push(spec(format!("p{p}"), Role::Public));
        for _ in 0..4 {
            links.push(add(
                format!("i{}", rng.below(inters)),
                format!("p{p}"),
                &mut rng,
            ));
        }
    }
    let topo = Topology {
        encoders: vec!["10.0.0.2:7000".into()],
        fan_out: 32,
        nodes,
        links,
    };
    let alive = all(&topo);
    let start = Instant::now();
    let plan = build(&topo, &alive);
    let took = start.elapsed();
    eprintln!(
        "build: {} nodes, {} links, {} placed in {:?}",
        topo.nodes.len(),
        topo.links.len(),
        plan.parent.len(),
        took
    );
    assert!(took.as_millis() < 500, "build took {took:?}");
    assert!(plan.parent.len() > 9_900, "placed {}", plan.parent.len());
    check_invariants(&topo, &plan);
}

// ---- property: the tree is the cheapest role-ordered tree ----

#[derive(Debug, Clone)]
struct Case {
    roles: Vec<Role>,
    /// (a, b, cost, spare), possibly invalid pairs (self-links, master–master, ...).
    links: Vec<(usize, usize, u8, bool)>,
}

fn role_strategy() -> impl Strategy<Value = Role> {
    prop_oneof![
        1 => Just(Role::Master),
        2 => Just(Role::Intermediate),
        2 => Just(Role::Public),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (2usize..=12)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(role_strategy(), n),
                prop::collection::vec((0..n, 0..n, 0u8..=4, prop::bool::weighted(0.25)), 0..=16),
            )
        })
        .prop_map(|(roles, links)| Case { roles, links })
}

fn case_topology(case: &Case) -> Topology {
    Topology {
        encoders: vec![],
        fan_out: 1000,
        nodes: case
            .roles
            .iter()
            .enumerate()
            .map(|(i, &role)| NodeSpec {
                id: format!("n{i:02}"),
                role,
                region: String::new(),
                max_children: None,
            })
            .collect(),
        links: case
            .links
            .iter()
            .map(|&(a, b, cost, spare)| LinkSpec {
                a: format!("n{a:02}"),
                b: format!("n{b:02}"),
                cost: f64::from(cost),
                spare,
            })
            .collect(),
    }
}

/// The minimum (spare links used, weight) over every valid parent assignment, found by
/// enumerating them all, and the set of nodes that can be placed at all. Spare links
/// are only used when nothing else connects, so the objective is lexicographic; with
/// no spare link in the tree it is plain weight.
fn brute_force(case: &Case) -> (BTreeSet<usize>, (usize, f64)) {
    let n = case.roles.len();
    // Best surviving link per pair, as the builder keeps it.
    let mut best: BTreeMap<(usize, usize), (f64, bool)> = BTreeMap::new();
    for &(a, b, cost, spare) in case.links.iter().filter(|l| l.0 != l.1) {
        let key = (a.min(b), a.max(b));
        let new = (f64::from(cost), spare);
        let e = best.entry(key).or_insert(new);
        if (new.0, new.1) < (e.0, e.1) {
            *e = new;
        }
    }
    // Candidate parents of each node.
    let mut options: Vec<Vec<(usize, f64, bool)>> = vec![Vec::new(); n];
    for (&(a, b), &(cost, spare)) in &best {
        for (p, c) in [(a, b), (b, a)] {
            if may_feed(case.roles[p], case.roles[c]) {
                let w = link_weight(cost, case.roles[p], case.roles[c]);
                options[c].push((p, w, spare));
            }
        }
    }
    // Placeable: reachable from a master along allowed parent links.
    let mut reach: BTreeSet<usize> = (0..n).filter(|&i| case.roles[i] == Role::Master).collect();
    loop {
        let more: Vec<usize> = (0..n)
            .filter(|c| !reach.contains(c) && options[*c].iter().any(|o| reach.contains(&o.0)))
            .collect();
        if more.is_empty() {
            break;
        }
        reach.extend(more);
    }
    let free: Vec<usize> = reach
        .iter()
        .copied()
        .filter(|&i| case.roles[i] != Role::Master)
        .collect();
    let opts: Vec<Vec<(usize, f64, bool)>> = free
        .iter()
        .map(|&c| {
            options[c]
                .iter()
                .copied()
                .filter(|o| reach.contains(&o.0))
                .collect()
        })
        .collect();
    let mut digit = vec![0usize; free.len()];
    let mut parent = vec![usize::MAX; n];
    let mut best_cost: Option<(usize, f64)> = None;
    loop {
        for (k, &c) in free.iter().enumerate() {
            parent[c] = opts[k][digit[k]].0;
        }
        let acyclic = free.iter().all(|&c| {
            let mut cur = c;
            for _ in 0..=n {
                if case.roles[cur] == Role::Master {
                    return true;
                }
                cur = parent[cur];
            }
            false
        });
        if acyclic {
            let spares = (0..free.len()).filter(|&k| opts[k][digit[k]].2).count();
            let weight: f64 = (0..free.len()).map(|k| opts[k][digit[k]].1).sum();
            let better = match best_cost {
                None => true,
                Some((s, w)) => (spares, weight) < (s, w),
            };
            if better {
                best_cost = Some((spares, weight));
            }
        }
        // Next assignment (mixed radix).
        let mut k = 0;
        while k < free.len() {
            digit[k] += 1;
            if digit[k] < opts[k].len() {
                break;
            }
            digit[k] = 0;
            k += 1;
        }
        if k == free.len() {
            break;
        }
    }
    (reach, best_cost.unwrap_or((0, 0.0)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn tree_is_minimal_and_role_ordered(case in case_strategy()) {
        let topo = case_topology(&case);
        let plan = build(&topo, &all(&topo));
        check_invariants(&topo, &plan);
        let (reach, (spares, weight)) = brute_force(&case);
        let placed: BTreeSet<usize> =
            plan.parent.keys().map(|id| id[1..].parse().unwrap()).collect();
        prop_assert_eq!(&placed, &reach);
        let used = plan.parent.keys().filter(|c| uses_spare(&topo, &plan, c)).count();
        prop_assert_eq!(used, spares);
        prop_assert!((plan.weight - weight).abs() < 1e-9, "{} vs {}", plan.weight, weight);
        // Deterministic, and the same whatever the order of the file's links.
        let mut reversed = topo.clone();
        reversed.links.reverse();
        let again = build(&reversed, &all(&topo));
        prop_assert_eq!(&again.parent, &plan.parent);
        prop_assert_eq!(&again.backups, &plan.backups);
        // Killing any node keeps every invariant; reviving restores the plan.
        if let Some(victim) = plan.parent.keys().next().cloned() {
            let after = build(&topo, &without(&topo, &[victim.as_str()]));
            check_invariants(&topo, &after);
            let changed = moved(&plan, &after);
            for id in after.parent.keys() {
                let differs = plan.upstreams(id) != after.upstreams(id)
                    || !plan.parent.contains_key(id);
                prop_assert_eq!(changed.contains(id), differs);
            }
            prop_assert_eq!(build(&topo, &all(&topo)), plan);
        }
    }
}
