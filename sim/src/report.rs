//! What a run measures ([`Recorder`], filled in by the world as things happen) and what
//! it reports ([`Summary`], the JSON object).

use std::collections::BTreeMap;

use divisor_reflector::role::Role;
use divisor_reflector::tree::Plan;
use serde::Serialize;

use crate::config::SimConfig;

/// One reflector failure and how the system answered it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub node: u32,
    pub role: Role,
    pub regional: bool,
    pub at_ms: u64,
    /// Its children (nodes that had it as active parent or as primary) still waiting for a
    /// REDIRECT whose primary is alive.
    pub pending: Vec<u32>,
    pub had_children: bool,
    /// Failure → the last of its children got such a REDIRECT.
    pub repaired_ms: Option<u64>,
    /// Failure → the controller declared it dead (closed its connection).
    pub dead_ms: Option<u64>,
}

/// A load-spread sample over the active public reflectors.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_ms: u64,
    pub viewers: u64,
    pub publics: usize,
    pub mean_load: f64,
    pub max_load: f64,
}

/// Counters and series, filled during the run.
#[derive(Default)]
pub struct Recorder {
    pub reflectors_created: u64,
    pub deployed: u64,
    pub removed: u64,
    pub events: u64,
    pub outages: u64,
    /// The controller closed a live reflector's connection (it redials).
    pub false_deaths: u64,
    pub errors: u64,
    pub dataplane_switches: u64,
    /// A child found no live backup and waited for the controller.
    pub no_backup: u64,
    /// Redirect decisions the controller refused (all full, none up).
    pub refusals: u64,
    /// A public reflector's front-end turned (part of) a cohort away: full.
    pub admission_refusals: u64,
    /// Viewers admitted on arrival; refused after every attempt.
    pub served: u64,
    pub refused: u64,
    /// Viewers whose reflector failed: to re-home, re-homed, gave up, left meanwhile.
    pub rehome_needed: u64,
    pub rehomed: u64,
    pub rehome_failed: u64,
    pub rehome_abandoned: u64,
    /// New viewers whose session ended before they were admitted.
    pub left_waiting: u64,
    pub viewers_peak: u64,
    pub decisions: u64,
    /// Per simulated second: controller messages (in + out), decisions, decided viewers.
    pub msgs_per_s: Vec<u32>,
    pub decisions_per_s: Vec<u32>,
    pub msgs_by_type: BTreeMap<String, (u64, u64)>,
    pub failures: Vec<Failure>,
    /// Failures with children still waiting.
    open: Vec<usize>,
    /// Gap (ms, 10 ms buckets) → viewers who saw it.
    pub gaps: BTreeMap<u64, u64>,
    pub samples: Vec<Sample>,
    pub depth_max: usize,
    pub fan_out_max: usize,
    pub fan_out_mean: f64,
    pub depth_end: usize,
    pub placed_end: usize,
    pub controller_metrics: String,
}

impl Recorder {
    pub fn new(seconds: usize) -> Recorder {
        Recorder {
            msgs_per_s: vec![0; seconds],
            decisions_per_s: vec![0; seconds],
            ..Recorder::default()
        }
    }

    fn second(v: &mut [u32], now_ms: u64) -> Option<&mut u32> {
        let i = (now_ms / 1000) as usize;
        let last = v.len().checked_sub(1)?;
        v.get_mut(i.min(last))
    }

    pub fn ctl_msg(&mut self, now_ms: u64, kind: &str, inbound: bool) {
        if let Some(s) = Self::second(&mut self.msgs_per_s, now_ms) {
            *s += 1;
        }
        let e = self.msgs_by_type.entry(kind.to_string()).or_default();
        if inbound {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    pub fn decision(&mut self, now_ms: u64, _viewers: u32) {
        self.decisions += 1;
        if let Some(s) = Self::second(&mut self.decisions_per_s, now_ms) {
            *s += 1;
        }
    }

    pub fn peak(&mut self, concurrent: u64) {
        self.viewers_peak = self.viewers_peak.max(concurrent);
    }

    pub fn gap(&mut self, gap_ms: u64, viewers: u64) {
        *self.gaps.entry(gap_ms / 10 * 10).or_default() += viewers;
    }

    pub fn failure(
        &mut self,
        node: u32,
        role: Role,
        regional: bool,
        at_ms: u64,
        pending: Vec<u32>,
    ) -> usize {
        let had_children = !pending.is_empty();
        self.failures.push(Failure {
            node,
            role,
            regional,
            at_ms,
            pending,
            had_children,
            repaired_ms: None,
            dead_ms: None,
        });
        let f = self.failures.len() - 1;
        if had_children {
            self.open.push(f);
        }
        f
    }

    pub fn declared_dead(&mut self, f: usize, now_ms: u64) {
        if let Some(x) = self.failures.get_mut(f) {
            if x.dead_ms.is_none() {
                x.dead_ms = Some(now_ms - x.at_ms);
            }
        }
    }

    /// `n` got a REDIRECT whose primary is `first`: it is repaired for every open failure
    /// of another node if that primary lives.
    pub fn node_redirected(
        &mut self,
        n: u32,
        first: Option<u32>,
        alive: impl Fn(u32) -> bool,
        now_ms: u64,
    ) {
        let Some(p) = first.filter(|&p| alive(p)) else {
            return;
        };
        self.resolve(now_ms, |f| f.node != p, n);
    }

    /// `n` died: it waits for nothing any more.
    pub fn child_died(&mut self, n: u32, now_ms: u64) {
        self.resolve(now_ms, |_| true, n);
    }

    fn resolve(&mut self, now_ms: u64, ok: impl Fn(&Failure) -> bool, n: u32) {
        let failures = &mut self.failures;
        self.open.retain(|&f| {
            let x = &mut failures[f];
            if ok(x) {
                x.pending.retain(|&c| c != n);
            }
            if x.pending.is_empty() {
                x.repaired_ms = Some(now_ms - x.at_ms);
                false
            } else {
                true
            }
        });
    }

    pub fn sample(&mut self, t_ms: u64, viewers: u64, loads: &[f64]) {
        let n = loads.len();
        let mean = if n > 0 {
            loads.iter().sum::<f64>() / n as f64
        } else {
            0.0
        };
        let max = loads.iter().copied().fold(0.0, f64::max);
        self.samples.push(Sample {
            t_ms,
            viewers,
            publics: n,
            mean_load: mean,
            max_load: max,
        });
    }

    /// Depth and fan-out of the controller's plan.
    pub fn tree(&mut self, plan: &Plan) {
        let (depth, fan_max, fan_mean) = tree_shape(plan);
        self.depth_max = self.depth_max.max(depth);
        self.fan_out_max = self.fan_out_max.max(fan_max);
        self.fan_out_mean = fan_mean;
    }

    pub fn end_tree(&mut self, plan: &Plan, _now_ms: u64) {
        self.tree(plan);
        self.depth_end = tree_shape(plan).0;
        self.placed_end = plan.parent.len();
    }
}

/// (max depth, max children, mean children over nodes with any).
fn tree_shape(plan: &Plan) -> (usize, usize, f64) {
    let mut kids: BTreeMap<&str, usize> = BTreeMap::new();
    for p in plan.parent.values().flatten() {
        *kids.entry(p.as_str()).or_default() += 1;
    }
    let depth = plan
        .parent
        .keys()
        .filter_map(|id| plan.depth(id))
        .max()
        .unwrap_or(0);
    let max = kids.values().copied().max().unwrap_or(0);
    let mean = if kids.is_empty() {
        0.0
    } else {
        kids.values().sum::<usize>() as f64 / kids.len() as f64
    };
    (depth, max, mean)
}

/// The `q` quantile (0..1) of unweighted values, by nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// The `q` quantile of a weighted histogram (value → weight).
pub fn weighted_quantile(h: &BTreeMap<u64, u64>, q: f64) -> Option<u64> {
    let total: u64 = h.values().sum();
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (&v, &w) in h {
        acc += w;
        if acc >= want {
            return Some(v);
        }
    }
    h.keys().next_back().copied()
}

/// The run's summary: what `summary.json` holds and the last stdout line prints.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub reflectors: usize,
    pub masters: usize,
    pub intermediates: usize,
    pub publics: usize,
    pub regions: usize,
    pub capacity_per_public: u32,
    pub fan_out_limit: usize,
    pub seed: u64,
    pub hours: f64,
    pub cohort: u32,
    /// The most concurrent viewers on reflectors at any time.
    pub viewers_peak: u64,
    pub viewers_served: u64,
    pub viewers_refused: u64,
    /// served / (served + refused), new arrivals only.
    pub served_ratio: f64,
    pub redirect_decisions: u64,
    pub redirect_decisions_per_s_max: u32,
    pub redirect_decisions_per_s_mean: f64,
    pub redirect_refusals: u64,
    pub admission_refusals: u64,
    /// Control messages at the controller, in + out, the busiest 1 s window.
    pub controller_msgs_per_s_max: u32,
    pub controller_msgs_per_s_mean: f64,
    pub controller_msgs_by_type: BTreeMap<String, (u64, u64)>,
    /// Max over public reflectors of viewers/capacity, over the mean: the worst sample
    /// taken while viewers were at least 80 % of their peak.
    pub load_max_over_mean: f64,
    /// The same over every sample with at least 10 % of the peak (p99 of samples).
    pub load_max_over_mean_p99_all: f64,
    pub load_max_at_peak: f64,
    pub tree_depth_max: usize,
    pub fan_out_max: usize,
    pub fan_out_mean: f64,
    pub failures: usize,
    pub failures_regional: usize,
    pub failures_with_children: usize,
    /// Failure → every child got a REDIRECT to a live parent (failures with children).
    pub repair_p50_ms: Option<u64>,
    pub repair_p99_ms: Option<u64>,
    pub repair_max_ms: Option<u64>,
    pub repairs_unfinished: usize,
    /// Failure → the controller declared the node dead (all failures).
    pub dead_p50_ms: Option<u64>,
    pub dead_p99_ms: Option<u64>,
    pub dead_p99_ms_leaf: Option<u64>,
    pub dead_p99_ms_inner: Option<u64>,
    pub dead_undeclared: usize,
    pub false_deaths: u64,
    /// The data plane's budget: a switch shorter than the edge delay never reaches
    /// viewers (silence + resubscribe must fit in it).
    pub failover_budget_ms: u64,
    pub dataplane_switches: u64,
    pub dataplane_no_backup: u64,
    /// Gaps seen by viewers of failed reflectors (and of their subtrees), viewer-weighted.
    pub gap_viewers: u64,
    pub gap_zero_ratio: f64,
    pub gap_p50_ms: Option<u64>,
    pub gap_p99_ms: Option<u64>,
    pub gap_max_ms: Option<u64>,
    pub rehome_needed: u64,
    pub rehomed: u64,
    pub rehome_failed: u64,
    pub rehome_abandoned: u64,
    pub deployed: u64,
    pub removed: u64,
    pub events: u64,
    pub wall_s: f64,
    pub peak_rss_mb: f64,
}

impl Summary {
    /// Build from a finished run.
    pub fn new(cfg: &SimConfig, r: &Recorder, wall_s: f64, peak_rss_mb: f64) -> Summary {
        let secs = r.msgs_per_s.len().max(1) as f64;
        let peak = r.viewers_peak.max(1) as f64;
        let ratio = |s: &Sample| {
            if s.mean_load > 0.0 {
                s.max_load / s.mean_load
            } else {
                0.0
            }
        };
        let load_max_over_mean = r
            .samples
            .iter()
            .filter(|s| s.viewers as f64 >= 0.8 * peak)
            .map(ratio)
            .fold(0.0, f64::max);
        let mut all: Vec<u64> = r
            .samples
            .iter()
            .filter(|s| s.viewers as f64 >= 0.1 * peak)
            .map(|s| (ratio(s) * 1e6) as u64)
            .collect();
        all.sort_unstable();
        let at_peak = r
            .samples
            .iter()
            .max_by_key(|s| s.viewers)
            .map_or(0.0, |s| s.max_load);
        let sorted = |it: &mut dyn Iterator<Item = u64>| {
            let mut v: Vec<u64> = it.collect();
            v.sort_unstable();
            v
        };
        let repairs: Vec<u64> = {
            let mut v: Vec<u64> = r
                .failures
                .iter()
                .filter(|f| f.had_children)
                .filter_map(|f| f.repaired_ms)
                .collect();
            v.sort_unstable();
            v
        };
        let dead = sorted(&mut r.failures.iter().filter_map(|f| f.dead_ms));
        let dead_leaf = sorted(
            &mut r
                .failures
                .iter()
                .filter(|f| f.role == Role::Public)
                .filter_map(|f| f.dead_ms),
        );
        let dead_inner = sorted(
            &mut r
                .failures
                .iter()
                .filter(|f| f.role != Role::Public)
                .filter_map(|f| f.dead_ms),
        );
        let gap_viewers: u64 = r.gaps.values().sum();
        let zero = r.gaps.get(&0).copied().unwrap_or(0);
        let served_total = r.served + r.refused;
        Summary {
            reflectors: cfg.reflectors(),
            masters: cfg.masters,
            intermediates: cfg.intermediates,
            publics: cfg.publics,
            regions: cfg.regions.len(),
            capacity_per_public: cfg.capacity,
            fan_out_limit: cfg.fan_out,
            seed: cfg.seed,
            hours: cfg.duration_ms as f64 / 3_600_000.0,
            cohort: cfg.cohort,
            viewers_peak: r.viewers_peak,
            viewers_served: r.served,
            viewers_refused: r.refused,
            served_ratio: if served_total > 0 {
                r.served as f64 / served_total as f64
            } else {
                1.0
            },
            redirect_decisions: r.decisions,
            redirect_decisions_per_s_max: r.decisions_per_s.iter().copied().max().unwrap_or(0),
            redirect_decisions_per_s_mean: r.decisions as f64 / secs,
            redirect_refusals: r.refusals,
            admission_refusals: r.admission_refusals,
            controller_msgs_per_s_max: r.msgs_per_s.iter().copied().max().unwrap_or(0),
            controller_msgs_per_s_mean: r.msgs_per_s.iter().map(|&m| u64::from(m)).sum::<u64>()
                as f64
                / secs,
            controller_msgs_by_type: r.msgs_by_type.clone(),
            load_max_over_mean,
            load_max_over_mean_p99_all: quantile(&all, 0.99).map_or(0.0, |v| v as f64 / 1e6),
            load_max_at_peak: at_peak,
            tree_depth_max: r.depth_max,
            fan_out_max: r.fan_out_max,
            fan_out_mean: r.fan_out_mean,
            failures: r.failures.len(),
            failures_regional: r.failures.iter().filter(|f| f.regional).count(),
            failures_with_children: r.failures.iter().filter(|f| f.had_children).count(),
            repair_p50_ms: quantile(&repairs, 0.5),
            repair_p99_ms: quantile(&repairs, 0.99),
            repair_max_ms: repairs.last().copied(),
            repairs_unfinished: r
                .failures
                .iter()
                .filter(|f| f.had_children && f.repaired_ms.is_none())
                .count(),
            dead_p50_ms: quantile(&dead, 0.5),
            dead_p99_ms: quantile(&dead, 0.99),
            dead_p99_ms_leaf: quantile(&dead_leaf, 0.99),
            dead_p99_ms_inner: quantile(&dead_inner, 0.99),
            dead_undeclared: r.failures.iter().filter(|f| f.dead_ms.is_none()).count(),
            false_deaths: r.false_deaths,
            failover_budget_ms: cfg.edge_delay_ms,
            dataplane_switches: r.dataplane_switches,
            dataplane_no_backup: r.no_backup,
            gap_viewers,
            gap_zero_ratio: if gap_viewers > 0 {
                zero as f64 / gap_viewers as f64
            } else {
                1.0
            },
            gap_p50_ms: weighted_quantile(&r.gaps, 0.5),
            gap_p99_ms: weighted_quantile(&r.gaps, 0.99),
            gap_max_ms: r.gaps.keys().next_back().copied(),
            rehome_needed: r.rehome_needed,
            rehomed: r.rehomed,
            rehome_failed: r.rehome_failed,
            rehome_abandoned: r.rehome_abandoned,
            deployed: r.deployed,
            removed: r.removed,
            events: r.events,
            wall_s,
            peak_rss_mb,
        }
    }

    /// The summary without what differs between two runs of one seed (time, memory).
    pub fn deterministic(&self) -> Summary {
        Summary {
            wall_s: 0.0,
            peak_rss_mb: 0.0,
            ..self.clone()
        }
    }
}

/// Peak resident memory of this process (VmHWM), MiB; 0 where /proc has none.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(quantile(&[1, 2, 3, 4], 0.99), Some(4));
        let h: BTreeMap<u64, u64> = [(0, 90), (100, 9), (500, 1)].into_iter().collect();
        assert_eq!(weighted_quantile(&h, 0.5), Some(0));
        assert_eq!(weighted_quantile(&h, 0.95), Some(100));
        assert_eq!(weighted_quantile(&h, 1.0), Some(500));
    }
}
