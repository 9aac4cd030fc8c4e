//! Pruning, the role-ordered Kruskal tree and backup upstreams.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::role::Role;

use super::topology::Topology;

/// How many backup upstreams a node keeps besides its primary parent.
pub const MAX_BACKUPS: usize = 2;

/// The tree computed from a topology and the set of nodes currently up.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Every placed node and its parent; `None` for a master, whose upstreams are the
    /// topology's encoders.
    pub parent: BTreeMap<String, Option<String>>,
    /// The role of every placed node.
    pub role: BTreeMap<String, Role>,
    /// Per placed node, its ordered backup parents (never its primary), at most
    /// [`MAX_BACKUPS`]. Nodes without backups may be absent.
    pub backups: BTreeMap<String, Vec<String>>,
    /// What was dropped and why, for the logs.
    pub pruned: Vec<Pruned>,
    /// Total weight of the tree's links (see [`node_weight`] and [`link_weight`]).
    pub weight: f64,
}

/// A link or node left out of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// `link a - b (#n)` or `node id`.
    pub what: String,
    pub reason: String,
}

impl Plan {
    /// The node's upstreams: its primary parent first, then its backups. Empty for a
    /// master (its upstreams are the encoders) and for a node not in the plan.
    pub fn upstreams(&self, id: &str) -> Vec<String> {
        let mut up: Vec<String> = self
            .parent
            .get(id)
            .and_then(|p| p.clone())
            .into_iter()
            .collect();
        if let Some(b) = self.backups.get(id) {
            up.extend(b.iter().cloned());
        }
        up
    }

    /// The node's children, sorted by id.
    pub fn children(&self, id: &str) -> Vec<String> {
        self.parent
            .iter()
            .filter(|(_, p)| p.as_deref() == Some(id))
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Hops from a master (a master is 0). `None` for a node not in the plan, or whose
    /// parent chain does not end at a master (the fields are public, so a hand-edited
    /// plan may be broken; this never loops).
    pub fn depth(&self, id: &str) -> Option<usize> {
        let mut cur = id;
        for depth in 0..=self.parent.len() {
            match self.parent.get(cur)? {
                None => return Some(depth),
                Some(p) => cur = p,
            }
        }
        None
    }

    /// How many nodes hang below this one, at any depth (0 for a leaf or unknown id).
    pub fn descendants(&self, id: &str) -> usize {
        let mut kids: HashMap<&str, Vec<&str>> = HashMap::new();
        for (c, p) in &self.parent {
            if let Some(p) = p {
                kids.entry(p.as_str()).or_default().push(c.as_str());
            }
        }
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack = vec![id];
        while let Some(n) = stack.pop() {
            for &c in kids.get(n).map(Vec::as_slice).unwrap_or_default() {
                if c != id && seen.insert(c) {
                    stack.push(c);
                }
            }
        }
        seen.len()
    }
}

/// The nodes of `new` whose upstream list ([`Plan::upstreams`]) differs from `old`, or
/// that `old` did not place; sorted. These are the nodes the controller must re-wire.
/// Nodes that left the plan are not listed: there is nothing to tell them.
pub fn moved(old: &Plan, new: &Plan) -> Vec<String> {
    new.parent
        .keys()
        .filter(|id| !old.parent.contains_key(*id) || old.upstreams(id) != new.upstreams(id))
        .cloned()
        .collect()
}

/// A node's weight by role. SOLEIL (Castaldi, §5.3 and Fig. 5.16) weights every node by
/// its role and every link by the sum of its ends' weights before running Kruskal; the
/// thesis text does not give the figures, so we take rank + 1 (master 1, intermediate 2,
/// public 3): links near the root are cheaper, so the tree leans on masters first.
pub fn node_weight(role: Role) -> f64 {
    f64::from(role.rank()) + 1.0
}

/// A link's weight: `cost × (w(a) + w(b))`. With the default cost 1 this is exactly the
/// thesis' sum of the ends' weights; the cost lets an administrator scale it.
pub fn link_weight(cost: f64, a: Role, b: Role) -> f64 {
    cost * (node_weight(a) + node_weight(b))
}

/// Whether `parent` may feed `child`: master → intermediate, master → public,
/// intermediate → intermediate, intermediate → public. A master has no parent but the
/// encoders and a public reflector is never a parent.
pub fn may_feed(parent: Role, child: Role) -> bool {
    matches!(
        (parent, child),
        (Role::Master, Role::Intermediate)
            | (Role::Master, Role::Public)
            | (Role::Intermediate, Role::Intermediate)
            | (Role::Intermediate, Role::Public)
    )
}

/// A surviving link, between node indices `a < b`.
#[derive(Clone, Copy)]
struct Edge {
    a: usize,
    b: usize,
    cost: f64,
    weight: f64,
    spare: bool,
}

/// Kruskal's order: ordinary links before spare ones (a spare link joins the tree only
/// when nothing else connects), then by weight, then by ids (node indices follow id
/// order) so that equal weights always give the same tree.
fn tree_order(x: &Edge, y: &Edge) -> Ordering {
    x.spare
        .cmp(&y.spare)
        .then_with(|| x.weight.total_cmp(&y.weight))
        .then_with(|| (x.a, x.b).cmp(&(y.a, y.b)))
}

struct UnionFind {
    up: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind {
            up: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.up[x] != x {
            self.up[x] = self.up[self.up[x]];
            x = self.up[x];
        }
        x
    }

    /// Joins the two sets; false if they were already one.
    fn union(&mut self, x: usize, y: usize) -> bool {
        let (mut x, mut y) = (self.find(x), self.find(y));
        if x == y {
            return false;
        }
        if self.size[x] < self.size[y] {
            std::mem::swap(&mut x, &mut y);
        }
        self.up[y] = x;
        self.size[x] += self.size[y];
        true
    }
}

/// Builds the tree over the nodes of `topo` that are in `alive`.
///
/// 1. Prune links naming unknown or dead nodes, self-links, duplicates (the cheaper is
///    kept; at equal cost an ordinary link beats a spare one, then the first wins), and
///    master–master and public–public links (masters are fed by encoders only; a public
///    reflector is never a parent). Every other pair has one role-ordered direction.
/// 2. Kruskal over the masters and intermediates plus a virtual super-root joined to
///    every master at zero cost, so several masters grow one forest. A link is skipped
///    when an end has no room left: in a tree hanging from the super-root a node's
///    degree is its children plus its parent link, so `max_children + 1` bounds it.
///    Edges are then oriented away from the super-root, which makes every master a
///    root and every other node hang below a master.
/// 3. Public reflectors, always leaves, each take their cheapest link (ordinary before
///    spare) to a placed node with room, considered over all publics in one order.
/// 4. Backups for every node: other placed neighbours allowed to feed it, neither the
///    node's descendants nor its primary; spare links first (they were drawn for this),
///    then by weight, then id; at most [`MAX_BACKUPS`].
///
/// Nodes that no valid link connects to a master, or whose possible parents are all
/// full, are left out of `parent` and reported in `pruned`. Pure and deterministic.
pub fn build(topo: &Topology, alive: &BTreeSet<String>) -> Plan {
    let mut pruned = Vec::new();

    // Alive nodes, indexed in id order so index order breaks ties by id.
    let mut specs: Vec<_> = topo
        .nodes
        .iter()
        .filter(|n| alive.contains(&n.id))
        .collect();
    specs.sort_by(|x, y| x.id.cmp(&y.id));
    let n = specs.len();
    let index: HashMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let role: Vec<Role> = specs.iter().map(|s| s.role).collect();
    let max_children: Vec<usize> = specs
        .iter()
        .map(|s| s.max_children.unwrap_or(topo.fan_out))
        .collect();
    let id = |i: usize| specs[i].id.as_str();

    // 1. Prune.
    let mut edges: Vec<Edge> = Vec::new();
    // Unordered pair -> (position in `edges`, file entry), to spot duplicates.
    let mut edge_of: HashMap<(usize, usize), (usize, usize)> =
        HashMap::with_capacity(topo.links.len());
    for (entry, l) in topo.links.iter().enumerate() {
        let what = || format!("link {} - {} (#{})", l.a, l.b, entry + 1);
        let mut drop = |reason: String| {
            pruned.push(Pruned {
                what: what(),
                reason,
            })
        };
        let end = |name: &str| match index.get(name) {
            Some(&i) => Ok(i),
            None if topo.node(name).is_some() => Err(format!("node {name:?} is not alive")),
            None => Err(format!("unknown node {name:?}")),
        };
        let (a, b) = match (end(&l.a), end(&l.b)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                drop(e);
                continue;
            }
        };
        if a == b {
            drop("self-link".into());
            continue;
        }
        match (role[a], role[b]) {
            (Role::Master, Role::Master) => {
                drop("links two masters; a master is fed by encoders only".into());
                continue;
            }
            (Role::Public, Role::Public) => {
                drop("links two public reflectors; a public reflector is never a parent".into());
                continue;
            }
            _ => {}
        }
        if !l.cost.is_finite() || l.cost < 0.0 {
            drop(format!("cost {} is not a finite number >= 0", l.cost));
            continue;
        }
        let (a, b) = (a.min(b), a.max(b));
        let edge = Edge {
            a,
            b,
            cost: l.cost,
            weight: link_weight(l.cost, role[a], role[b]),
            spare: l.spare,
        };
        match edge_of.get(&(a, b)).copied() {
            None => {
                edge_of.insert((a, b), (edges.len(), entry));
                edges.push(edge);
            }
            Some((k, kept_entry)) => {
                let old = edges[k];
                let better = (edge.cost, edge.spare) < (old.cost, old.spare);
                let (loser, winner) = if better {
                    edges[k] = edge;
                    edge_of.insert((a, b), (k, entry));
                    (kept_entry, entry)
                } else {
                    (entry, kept_entry)
                };
                let ll = &topo.links[loser];
                pruned.push(Pruned {
                    what: format!("link {} - {} (#{})", ll.a, ll.b, loser + 1),
                    reason: format!("duplicate of link #{}, which is kept", winner + 1),
                });
            }
        }
    }

    // 2. Kruskal over masters and intermediates; node `n` is the super-root.
    let root = n;
    let mut uf = UnionFind::new(n + 1);
    let mut reach = UnionFind::new(n + 1); // the same links ignoring room, for the logs
    let mut degree = vec![0usize; n + 1];
    let mut adj: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n + 1];
    for m in (0..n).filter(|&i| role[i] == Role::Master) {
        uf.union(root, m);
        reach.union(root, m);
        degree[m] += 1;
        adj[root].push((m, 0.0));
        adj[m].push((root, 0.0));
    }
    let mut inner: Vec<Edge> = edges
        .iter()
        .filter(|e| role[e.a] != Role::Public && role[e.b] != Role::Public)
        .copied()
        .collect();
    inner.sort_unstable_by(tree_order);
    for e in &inner {
        reach.union(e.a, e.b);
        let full = |i: usize| degree[i] > max_children[i];
        if full(e.a) || full(e.b) || !uf.union(e.a, e.b) {
            continue;
        }
        degree[e.a] += 1;
        degree[e.b] += 1;
        adj[e.a].push((e.b, e.weight));
        adj[e.b].push((e.a, e.weight));
    }

    // Orient away from the super-root.
    const NONE: usize = usize::MAX;
    let mut parent = vec![NONE; n];
    let mut parent_weight = vec![0.0f64; n];
    let mut placed = vec![false; n];
    let mut children = vec![0usize; n];
    let mut queue: Vec<usize> = adj[root].iter().map(|&(m, _)| m).collect();
    for &m in &queue {
        placed[m] = true;
    }
    let mut head = 0;
    while let Some(&u) = queue.get(head) {
        head += 1;
        for &(v, w) in &adj[u] {
            if v != root && !placed[v] {
                placed[v] = true;
                parent[v] = u;
                parent_weight[v] = w;
                children[u] += 1;
                queue.push(v);
            }
        }
    }

    // 3. Public reflectors.
    let mut leaf_links: Vec<(Edge, usize, usize)> = edges
        .iter()
        .filter_map(|e| match (role[e.a], role[e.b]) {
            (Role::Public, _) if placed[e.b] => Some((*e, e.a, e.b)),
            (_, Role::Public) if placed[e.a] => Some((*e, e.b, e.a)),
            _ => None,
        })
        .collect();
    leaf_links.sort_unstable_by(|(x, xp, xq), (y, yp, yq)| {
        x.spare
            .cmp(&y.spare)
            .then_with(|| x.weight.total_cmp(&y.weight))
            .then_with(|| (xp, xq).cmp(&(yp, yq)))
    });
    let mut had_candidate = vec![false; n];
    for (e, p, q) in &leaf_links {
        had_candidate[*p] = true;
        if placed[*p] || children[*q] >= max_children[*q] {
            continue;
        }
        placed[*p] = true;
        parent[*p] = *q;
        parent_weight[*p] = e.weight;
        children[*q] += 1;
    }

    for i in (0..n).filter(|&i| !placed[i]) {
        let full = if role[i] == Role::Public {
            had_candidate[i]
        } else {
            reach.find(i) == reach.find(root)
        };
        pruned.push(Pruned {
            what: format!("node {}", id(i)),
            reason: if full {
                "every parent it could hang from is full (max_children)".into()
            } else {
                "dangling: no valid link leads to a master".into()
            },
        });
    }

    // 4. Backups. Pre-order numbering makes "is a descendant" an interval test.
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); n];
    for c in (0..n).filter(|&c| placed[c] && parent[c] != NONE) {
        kids[parent[c]].push(c);
    }
    let (mut enter, mut leave) = (vec![0usize; n], vec![0usize; n]);
    let mut clock = 0;
    let mut stack: Vec<(usize, bool)> = (0..n)
        .rev()
        .filter(|&i| placed[i] && parent[i] == NONE)
        .map(|i| (i, false))
        .collect();
    while let Some((u, done)) = stack.pop() {
        if done {
            leave[u] = clock;
            continue;
        }
        enter[u] = clock;
        clock += 1;
        stack.push((u, true));
        stack.extend(kids[u].iter().rev().map(|&c| (c, false)));
    }
    let below = |x: usize, top: usize| enter[top] <= enter[x] && enter[x] < leave[top];
    let mut candidates: Vec<Vec<(bool, f64, usize)>> = vec![Vec::new(); n];
    for e in &edges {
        if !(placed[e.a] && placed[e.b]) {
            continue;
        }
        for (p, c) in [(e.a, e.b), (e.b, e.a)] {
            if may_feed(role[p], role[c]) && parent[c] != p && !below(p, c) {
                candidates[c].push((!e.spare, e.weight, p));
            }
        }
    }

    // Index order is id order, so the maps are built from sorted runs.
    let nodes: Vec<usize> = (0..n).filter(|&i| placed[i]).collect();
    let backups = nodes
        .iter()
        .filter_map(|&i| {
            let mut cands = std::mem::take(&mut candidates[i]);
            if cands.is_empty() {
                return None;
            }
            cands.sort_unstable_by(|x, y| {
                x.0.cmp(&y.0)
                    .then_with(|| x.1.total_cmp(&y.1))
                    .then_with(|| x.2.cmp(&y.2))
            });
            let list = cands
                .iter()
                .take(MAX_BACKUPS)
                .map(|&(_, _, p)| id(p).to_string())
                .collect();
            Some((id(i).to_string(), list))
        })
        .collect();
    Plan {
        parent: nodes
            .iter()
            .map(|&i| {
                let up = (parent[i] != NONE).then(|| id(parent[i]).to_string());
                (id(i).to_string(), up)
            })
            .collect(),
        role: nodes
            .iter()
            .map(|&i| (id(i).to_string(), role[i]))
            .collect(),
        backups,
        pruned,
        weight: nodes.iter().map(|&i| parent_weight[i]).sum(),
    }
}
