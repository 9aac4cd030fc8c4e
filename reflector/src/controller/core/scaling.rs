//! The controller's part of scaling: carrying out what the pure [`ScalePolicy`] asks,
//! once per statistics period.
//!
//! - **Grow**: a standby reflector from the pool if there is one; otherwise, with
//!   `deploy` on, `Output::Deploy` of a new public reflector, or of an intermediate
//!   first when no parent has room for another public one (the public follows as soon
//!   as the intermediate says HELLO). A step deploys as many as the audience needs to
//!   sit at the high-water mark (those still booting count; at most 16 a step), so a
//!   flash crowd does not wait one cool-down per machine.
//! - **Shrink**: the least-loaded public reflector (deployed ones first) drains: no new
//!   redirects, KILL once its viewers have left or `drain_max_ms` passed, then
//!   `Output::Undeploy` if the deployer runs it.
//! - **Housekeeping**: minimum counts per role are kept (after a start-up grace, so
//!   reflectors that already run have time to reconnect); a deployed reflector that
//!   never says HELLO, or stays dead, is removed; a deployed intermediate left without
//!   children is stopped.
//!
//! Every action is logged with its reason and counted by (action, reason).

use tracing::{info, warn};

use super::{Controller, NodeState, Output};
use crate::control::Body;
use crate::controller::scale::{ScaleAction, ScaleReason};
use crate::role::Role;
use crate::tree;

/// Most public reflectors deployed in one scale-out step.
const MAX_BURST: usize = 16;

/// A reflector the deployer runs for this controller.
#[derive(Clone, Debug)]
pub(crate) struct Deployment {
    pub role: Role,
    /// When it was asked for (or adopted).
    pub since_ms: u64,
    /// It has said HELLO since.
    pub joined: bool,
    /// An intermediate deployed for a public reflector that had no parent with room.
    pub for_public: bool,
}

/// What the deployer runs for this controller, as the front ends and tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployedView {
    pub id: String,
    pub role: Role,
    /// It has said HELLO since it was started or adopted.
    pub joined: bool,
}

impl Controller {
    /// A reflector the deployer already runs for this controller (found at start, after a
    /// restart): it counts as deployed, and is expected to say HELLO within
    /// `boot_timeout_ms` or it is removed.
    pub fn adopt(&mut self, id: &str, role: Role, now_ms: u64) {
        let joined = self.nodes.get(id).is_some_and(|n| n.conn.is_some());
        info!(node = %id, role = %role, "adopting a deployed reflector");
        self.deployed.insert(
            id.to_string(),
            Deployment {
                role,
                since_ms: now_ms,
                joined,
                for_public: false,
            },
        );
        // Keep new names clear of adopted ones.
        if let Some(n) = id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()) {
            self.next_deploy_seq = self.next_deploy_seq.max(n + 1);
        }
    }

    /// The deployer could not start `id`: forget it; the policy may ask again after its
    /// cool-down.
    pub fn deploy_failed(&mut self, id: &str, error: &str) {
        if self.deployed.remove(id).is_some() {
            warn!(node = %id, "deploy failed: {error}");
            self.metrics
                .scale_action("deploy_failed", ScaleReason::DeployFailed);
        }
    }

    /// What the deployer runs for this controller.
    pub fn deployed(&self) -> Vec<DeployedView> {
        self.deployed
            .iter()
            .map(|(id, d)| DeployedView {
                id: id.clone(),
                role: d.role,
                joined: d.joined,
            })
            .collect()
    }

    /// `id` said HELLO: a deployed reflector has booted. An intermediate deployed for a
    /// public reflector brings that one now.
    pub(super) fn deployed_hello(&mut self, id: &str, now_ms: u64) {
        let Some(d) = self.deployed.get_mut(id) else {
            return;
        };
        if d.joined {
            return;
        }
        d.joined = true;
        let (role, waited, for_public) = (d.role, now_ms.saturating_sub(d.since_ms), d.for_public);
        d.for_public = false;
        info!(node = %id, role = %role, boot_ms = waited, "deployed reflector joined");
        if for_public {
            self.deploy(Role::Public, ScaleReason::UnderNewIntermediate, now_ms);
        }
    }

    fn deploy(&mut self, role: Role, reason: ScaleReason, now_ms: u64) -> String {
        let prefix = self
            .cfg
            .scale
            .as_ref()
            .map_or("auto", |s| s.name_prefix.as_str())
            .to_string();
        let id = loop {
            let id = format!("{prefix}-{}-{}", role.as_str(), self.next_deploy_seq);
            self.next_deploy_seq += 1;
            if !self.nodes.contains_key(&id) && !self.deployed.contains_key(&id) {
                break id;
            }
        };
        info!(node = %id, role = %role, reason = reason.as_str(), "deploying a reflector");
        self.metrics.scale_action("deploy", reason);
        self.deployed.insert(
            id.clone(),
            Deployment {
                role,
                since_ms: now_ms,
                joined: false,
                for_public: false,
            },
        );
        self.out.push_back(Output::Deploy {
            id: id.clone(),
            role,
            reason: reason.as_str().to_string(),
        });
        id
    }

    fn undeploy(&mut self, id: &str, reason: ScaleReason) {
        if self.deployed.remove(id).is_none() {
            return;
        }
        info!(node = %id, reason = reason.as_str(), "removing a deployed reflector");
        self.metrics.scale_action("undeploy", reason);
        self.out.push_back(Output::Undeploy {
            id: id.to_string(),
            reason: reason.as_str().to_string(),
        });
    }

    /// KILL the draining reflectors whose viewers have left (or that drained too long).
    pub(super) fn drain_step(&mut self, now_ms: u64) {
        let drain_max = self.cfg.scale.as_ref().map_or(120_000, |s| s.drain_max_ms);
        let draining: Vec<(String, u64)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| match n.state {
                NodeState::Draining { since_ms } => Some((id.clone(), since_ms)),
                _ => None,
            })
            .collect();
        for (id, since) in draining {
            let empty = self.nodes.get(&id).is_some_and(|n| {
                n.full
                    .as_ref()
                    .is_some_and(|(at, s)| *at > since && s.viewers == 0)
            });
            let overdue = now_ms.saturating_sub(since) >= drain_max;
            if !(empty || overdue) {
                self.send_to(&id, Body::ReqFullStats { channel: None }, now_ms);
                continue;
            }
            let (reason, detail) = if empty {
                (
                    ScaleReason::Drained,
                    "drained: its viewers have left".to_string(),
                )
            } else {
                (
                    ScaleReason::DrainTimeout,
                    format!("drained for {} s: stopping it", drain_max / 1000),
                )
            };
            info!(node = %id, "KILL: {detail}");
            self.metrics.scale_action("kill", reason);
            self.send_to(&id, Body::Kill { reason: detail }, now_ms);
            self.node_down(&id, NodeState::Left, "killed after draining", now_ms);
            self.undeploy(&id, reason);
        }
    }

    /// Deployments that never joined or stayed dead, and idle deployed intermediates.
    fn housekeeping(&mut self, now_ms: u64) {
        let Some(cfg) = self.cfg.scale.clone() else {
            return;
        };
        let mut gone = Vec::new();
        let intermediates_up = self.count_up(Role::Intermediate);
        let mut idle_removed = 0;
        for (id, d) in &self.deployed {
            let node = self.nodes.get(id);
            let age = now_ms.saturating_sub(d.since_ms);
            if !d.joined {
                if age >= cfg.boot_timeout_ms {
                    gone.push((id.clone(), ScaleReason::BootTimeout));
                }
                continue;
            }
            let Some(n) = node else { continue };
            if n.state == NodeState::Dead
                && now_ms.saturating_sub(n.last_heard_ms) >= cfg.boot_timeout_ms
            {
                gone.push((id.clone(), ScaleReason::Dead));
            } else if d.role == Role::Intermediate
                && n.state == NodeState::Up
                && self.children.count(id) == 0
                && age >= cfg.cooldown_ms
                && intermediates_up - idle_removed > cfg.min_intermediate
                && !self.deployed.values().any(|o| !o.joined)
            {
                idle_removed += 1;
                gone.push((id.clone(), ScaleReason::Idle));
            }
        }
        for (id, reason) in gone {
            match reason {
                ScaleReason::BootTimeout => {
                    warn!(node = %id, "deployed reflector never said HELLO: removing it")
                }
                ScaleReason::Idle => {
                    info!(node = %id, "deployed intermediate has no children: stopping it");
                    self.send_to(
                        &id,
                        Body::Kill {
                            reason: "no children left".into(),
                        },
                        now_ms,
                    );
                    self.node_down(&id, NodeState::Left, "stopped: no children", now_ms);
                }
                _ => {}
            }
            self.undeploy(&id, reason);
        }
    }

    /// In-tree, connected nodes of `role`.
    fn count_up(&self, role: Role) -> usize {
        self.nodes
            .values()
            .filter(|n| n.hello.role == role && n.state.in_tree() && n.conn.is_some())
            .count()
    }

    /// Deployed, not yet joined, of `role`.
    fn booting(&self, role: Role) -> usize {
        self.deployed
            .values()
            .filter(|d| d.role == role && !d.joined)
            .count()
    }

    /// One statistics period of the scale policy.
    pub(super) fn scale_step(&mut self, now_ms: u64) {
        let Some(cfg) = self.cfg.scale.clone() else {
            return;
        };
        self.housekeeping(now_ms);
        let (mut viewers, mut capacity, mut active) = (0u64, 0u64, 0usize);
        let mut pool = Vec::new();
        for (id, n) in &self.nodes {
            if n.hello.role != Role::Public || n.conn.is_none() {
                continue;
            }
            match n.state {
                NodeState::Up => {
                    viewers += n.viewers();
                    capacity += u64::from(n.hello.max_viewers);
                    active += 1;
                }
                NodeState::Standby => pool.push(id.clone()),
                _ => {}
            }
        }
        let load = if capacity > 0 {
            viewers as f64 / capacity as f64
        } else {
            0.0
        };
        let booting = self.booting(Role::Public) + self.booting(Role::Intermediate);
        let settled = now_ms.saturating_sub(self.started_ms) >= cfg.startup_grace_ms;

        // Minimum counts first: they need no load to justify them.
        if cfg.deploy && settled && booting == 0 {
            if self.count_up(Role::Intermediate) < cfg.min_intermediate {
                self.deploy(Role::Intermediate, ScaleReason::BelowMinimum, now_ms);
                return;
            }
            if active + pool.len() < cfg.min_public {
                self.grow_by_deploy(ScaleReason::BelowMinimum, now_ms);
                return;
            }
        }

        // How many more public reflectors the audience needs to sit at the high-water
        // mark, beyond those up and those already booting: a flash crowd gets them in
        // one step instead of one per cool-down (bounded by `MAX_BURST`).
        let booting_public = self.booting(Role::Public);
        let mean_capacity = if active > 0 {
            capacity as f64 / active as f64
        } else {
            0.0
        };
        let wanted = if mean_capacity > 0.0 && cfg.high_water > 0.0 {
            ((viewers as f64 / (cfg.high_water * mean_capacity)).ceil() as usize)
                .saturating_sub(active + booting_public)
        } else {
            0
        };
        let room = cfg.max_public.saturating_sub(active + booting_public);
        let burst = wanted.clamp(1, MAX_BURST).min(room);
        // The policy sees the pool plus what may be deployed now. An intermediate still
        // booting holds back new publics (they would find no parent yet).
        let deployable = if cfg.deploy && self.booting(Role::Intermediate) == 0 && wanted > 0 {
            burst
        } else {
            0
        };
        let Some(policy) = self.scale.as_mut() else {
            return;
        };
        match policy.tick(now_ms, load, active, pool.len() + deployable) {
            Some(ScaleAction::Grow) => {
                info!(
                    load = format!("{load:.2}"),
                    active, "scale out: public tier load above the high-water mark"
                );
                match pool.first().cloned() {
                    Some(id) => {
                        info!(node = %id, "scale out: from the standby pool");
                        self.metrics
                            .scale_action("grow", ScaleReason::AboveHighWater);
                        if let Some(n) = self.nodes.get_mut(&id) {
                            n.state = NodeState::Up;
                        }
                        self.redirect_cache = None;
                        self.place_now(&id);
                        self.send_redirects_to(vec![id], now_ms);
                    }
                    None => {
                        for _ in 0..deployable {
                            if !self.grow_by_deploy(ScaleReason::AboveHighWater, now_ms) {
                                break;
                            }
                        }
                    }
                }
            }
            Some(ScaleAction::Shrink) => {
                // Deployed reflectors first (they can be removed), then the fewest viewers.
                let victim = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.hello.role == Role::Public && n.state == NodeState::Up)
                    .min_by_key(|(id, n)| {
                        (!self.deployed.contains_key(*id), n.viewers(), (*id).clone())
                    })
                    .map(|(id, _)| id.clone());
                let Some(id) = victim else { return };
                info!(node = %id, load = format!("{load:.2}"), "scale in: public tier load below the low-water mark: draining");
                self.metrics
                    .scale_action("drain", ScaleReason::BelowLowWater);
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.state = NodeState::Draining { since_ms: now_ms };
                }
                self.refresh_redirect_cache(&id);
                self.send_to(&id, Body::ReqFullStats { channel: None }, now_ms);
            }
            None => {}
        }
    }

    /// Deploy a public reflector, or an intermediate first when no parent has room.
    /// Returns whether a public reflector was deployed (so a burst may go on).
    fn grow_by_deploy(&mut self, reason: ScaleReason, now_ms: u64) -> bool {
        let Some(cfg) = self.cfg.scale.clone() else {
            return false;
        };
        if !cfg.deploy {
            return false;
        }
        // Places under parents promised to publics still booting count as taken.
        let booting = self.booting(Role::Public);
        let children = &self.children;
        let room = tree::has_room_for(&self.plan, &self.fan_out, Role::Public, booting + 1, |p| {
            children.count(p)
        });
        if room {
            self.deploy(Role::Public, reason, now_ms);
            return true;
        }
        let intermediates = self.count_up(Role::Intermediate);
        let master_room = tree::has_room(&self.plan, &self.fan_out, Role::Intermediate, |p| {
            children.count(p)
        });
        if intermediates < cfg.max_intermediate && master_room {
            let id = self.deploy(Role::Intermediate, ScaleReason::FanOutFull, now_ms);
            if let Some(d) = self.deployed.get_mut(&id) {
                d.for_public = true;
            }
        } else {
            warn!(
                intermediates,
                max = cfg.max_intermediate,
                "scale out wanted, but every parent is full and no intermediate can be added"
            );
            self.metrics.scale_action("refused", ScaleReason::AtMaximum);
        }
        false
    }
}
