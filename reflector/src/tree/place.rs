//! Placing a node the topology file does not list (a reflector that announced itself
//! with HELLO). With no drawn links to choose from, load is the only criterion.

use std::collections::HashMap;

use crate::role::Role;

use super::build::Plan;
use super::topology::{FanOut, Topology};

/// Adds `node` with `role` to `plan` and returns its parent.
///
/// - A public reflector goes under the intermediate with the fewest children that is
///   below its `max_children`; only when the plan has no intermediate at all does it
///   go under a master instead (a full intermediate tier does not spill onto masters,
///   which should feed relays, not viewers).
/// - An intermediate goes under the least-loaded master with room.
/// - A master is added with no parent (its upstreams are the encoders); returns `None`.
///
/// Ties are broken by id. The runner-up, if any, becomes the node's one backup.
/// `max_children` comes from [`Topology::max_children`], so nodes placed at run time
/// get the file's `fan_out`.
///
/// Returns `None` and leaves the plan unchanged when every candidate is full (or there
/// is none). A node already in the plan is left where it is and its current parent is
/// returned. `plan.weight` is not changed: the new link has no drawn cost.
pub fn place(plan: &mut Plan, topo: &Topology, node: &str, role: Role) -> Option<String> {
    // Owned keys: `place_with` mutates the plan while the counts are read.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for p in plan.parent.values().flatten() {
        *counts.entry(p.clone()).or_default() += 1;
    }
    place_with(plan, &topo.fan_outs(), node, role, |id| {
        counts.get(id).copied().unwrap_or(0)
    })
}

/// [`place`] for a caller that keeps its own index: `children_of(id)` is how many
/// children `id` has in `plan`, and `fan_out` comes from [`Topology::fan_outs`] built
/// once. It then costs one pass over the plan's roles, with no string searches, where
/// [`place`] must first count every node's children.
pub fn place_with(
    plan: &mut Plan,
    fan_out: &FanOut,
    node: &str,
    role: Role,
    children_of: impl Fn(&str) -> usize,
) -> Option<String> {
    if let Some(p) = plan.parent.get(node) {
        return p.clone();
    }
    if role == Role::Master {
        plan.parent.insert(node.to_string(), None);
        plan.role.insert(node.to_string(), Role::Master);
        plan.backups.remove(node);
        return None;
    }
    let open = open_parents(plan, fan_out, role, children_of);
    let chosen = open.first()?.0.to_string();
    let backup: Vec<String> = open
        .get(1)
        .map(|(id, _)| id.to_string())
        .into_iter()
        .collect();

    plan.parent.insert(node.to_string(), Some(chosen.clone()));
    plan.role.insert(node.to_string(), role);
    if backup.is_empty() {
        plan.backups.remove(node);
    } else {
        plan.backups.insert(node.to_string(), backup);
    }
    Some(chosen)
}

/// Whether a node of `role` would find a parent with room (what [`place_with`] would
/// do, without changing the plan): the scale-out asks this before deploying a public
/// reflector, and deploys an intermediate first when the answer is no.
pub fn has_room(
    plan: &Plan,
    fan_out: &FanOut,
    role: Role,
    children_of: impl Fn(&str) -> usize,
) -> bool {
    has_room_for(plan, fan_out, role, 1, children_of)
}

/// Whether `n` more nodes of `role` would all find a parent with room.
pub fn has_room_for(
    plan: &Plan,
    fan_out: &FanOut,
    role: Role,
    n: usize,
    children_of: impl Fn(&str) -> usize,
) -> bool {
    role == Role::Master
        || open_parents(plan, fan_out, role, children_of)
            .iter()
            .map(|&(id, used)| fan_out.of(id).saturating_sub(used))
            .sum::<usize>()
            >= n
}

/// The parents a node of `role` (not a master) may go under, with their child counts,
/// least loaded first; ties in id order (the BTreeMap's, kept by the stable sort).
fn open_parents<'p>(
    plan: &'p Plan,
    fan_out: &FanOut,
    role: Role,
    children_of: impl Fn(&str) -> usize,
) -> Vec<(&'p str, usize)> {
    let tier = match role {
        Role::Public if plan.role.values().any(|&r| r == Role::Intermediate) => Role::Intermediate,
        _ => Role::Master,
    };
    let mut open: Vec<(&str, usize)> = plan
        .role
        .iter()
        .filter(|(id, &r)| r == tier && plan.parent.contains_key(*id))
        .map(|(id, _)| (id.as_str(), children_of(id)))
        .filter(|&(id, n)| n < fan_out.of(id))
        .collect();
    open.sort_by_key(|&(_, n)| n);
    open
}
