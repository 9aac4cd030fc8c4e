//! Statistics up the tree (SOLEIL §3.1.2): each parent folds its children's reports into
//! its own and passes one report up, so the controller hears one report per master per
//! period however large the tree grows.
//!
//! The formula, which the end-to-end test recomputes from the public reflectors' own
//! `/metrics`:
//!
//! - `descendants` = Σ over the children of (their `descendants` + 1).
//! - `cpu_load` is a mean over the nodes of the subtree: each child's (already a subtree
//!   mean) weighs its subtree size, `descendants + 1`; the node itself weighs 1. This is
//!   SOLEIL's "weighted by the number of descendants".
//! - `viewers`, `egress_bps` and per-channel `viewers` and `cum_lost` are sums.
//! - Per-channel `jitter_ms` is a mean over the channel's viewers: each report's figure
//!   weighs its viewers of the channel. Weighing it by subtree size instead would let a
//!   reflector with one viewer count as much as one with a thousand.

use std::collections::BTreeMap;

use crate::control::{ChannelStats, Stats};

/// Fold `children`'s reports into `own` (this node's own figures), as one report of the
/// subtree rooted here for the period `start_ms..end_ms`.
pub fn aggregate(own: &Stats, children: &[Stats]) -> Stats {
    let mut descendants = 0u32;
    let mut cpu_weighted = own.cpu_load;
    let mut weight = 1.0;
    let mut viewers = own.viewers;
    let mut egress = own.egress_bps;
    for c in children {
        let w = f64::from(c.descendants) + 1.0;
        descendants = descendants.saturating_add(c.descendants.saturating_add(1));
        cpu_weighted += c.cpu_load * w;
        weight += w;
        viewers = viewers.saturating_add(c.viewers);
        egress = egress.saturating_add(c.egress_bps);
    }
    Stats {
        node: own.node.clone(),
        start_ms: own.start_ms,
        end_ms: own.end_ms,
        descendants,
        cpu_load: cpu_weighted / weight,
        viewers,
        egress_bps: egress,
        channels: merge_channels(std::iter::once(own).chain(children)),
    }
}

/// Sum viewers and losses per channel; jitter is the viewer-weighted mean.
fn merge_channels<'a>(reports: impl Iterator<Item = &'a Stats>) -> Vec<ChannelStats> {
    // (viewers, jitter × viewers, cum_lost, reports seen)
    let mut by_id: BTreeMap<&str, (u64, f64, u64, u32)> = BTreeMap::new();
    for r in reports {
        for ch in &r.channels {
            let e = by_id.entry(ch.id.as_str()).or_default();
            e.0 = e.0.saturating_add(ch.viewers);
            e.1 += ch.jitter_ms * ch.viewers as f64;
            e.2 = e.2.saturating_add(ch.cum_lost);
            e.3 += 1;
        }
    }
    by_id
        .into_iter()
        .map(|(id, (viewers, jw, lost, _))| ChannelStats {
            id: id.to_string(),
            viewers,
            jitter_ms: if viewers > 0 {
                jw / viewers as f64
            } else {
                0.0
            },
            cum_lost: lost,
        })
        .collect()
}

/// The latest report of each child, kept until it is older than `max_age_ms` (a child
/// that stopped reporting, or moved to another parent, falls out by itself).
#[derive(Debug, Default)]
pub struct ChildReports {
    latest: BTreeMap<String, (u64, Stats)>,
}

/// Children a node keeps reports of: bounds memory against a flood of made-up node ids.
const MAX_CHILD_REPORTS: usize = 4096;

impl ChildReports {
    /// Keep `report` (received at `now_ms`), replacing the child's previous one.
    pub fn insert(&mut self, report: Stats, now_ms: u64) {
        if self.latest.len() >= MAX_CHILD_REPORTS && !self.latest.contains_key(&report.node) {
            return;
        }
        self.latest.insert(report.node.clone(), (now_ms, report));
    }

    /// The reports not older than `max_age_ms`; older ones are forgotten.
    pub fn fresh(&mut self, now_ms: u64, max_age_ms: u64) -> Vec<Stats> {
        self.latest
            .retain(|_, (at, _)| now_ms.saturating_sub(*at) <= max_age_ms);
        self.latest.values().map(|(_, s)| s.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(node: &str, desc: u32, cpu: f64, viewers: u64, ch: &[(&str, u64, f64, u64)]) -> Stats {
        Stats {
            node: node.into(),
            start_ms: 0,
            end_ms: 1000,
            descendants: desc,
            cpu_load: cpu,
            viewers,
            egress_bps: viewers * 1_000_000,
            channels: ch
                .iter()
                .map(|&(id, viewers, jitter_ms, cum_lost)| ChannelStats {
                    id: id.into(),
                    viewers,
                    jitter_ms,
                    cum_lost,
                })
                .collect(),
        }
    }

    #[test]
    fn subtree_means_weigh_by_subtree_size_and_sums_add() {
        // An intermediate with no viewers over two publics, then a master over it and a
        // leaf public: the master's figures are the plain means over all five nodes.
        let p1 = stats("p1", 0, 0.2, 10, &[("cam", 10, 2.0, 1)]);
        let p2 = stats("p2", 0, 0.4, 30, &[("cam", 30, 6.0, 2)]);
        let i1 = aggregate(&stats("i1", 0, 0.3, 0, &[]), &[p1, p2]);
        assert_eq!(i1.descendants, 2);
        assert!((i1.cpu_load - 0.3).abs() < 1e-9);
        assert_eq!(i1.viewers, 40);
        let cam = &i1.channels[0];
        assert_eq!((cam.viewers, cam.cum_lost), (40, 3));
        assert!((cam.jitter_ms - 5.0).abs() < 1e-9, "{}", cam.jitter_ms);

        let p3 = stats(
            "p3",
            0,
            0.9,
            60,
            &[("cam", 60, 1.0, 0), ("news", 5, 3.0, 7)],
        );
        let m = aggregate(&stats("m", 0, 0.1, 0, &[]), &[i1, p3]);
        assert_eq!(m.descendants, 4);
        let mean_cpu = (0.1 + 0.3 + 0.2 + 0.4 + 0.9) / 5.0;
        assert!((m.cpu_load - mean_cpu).abs() < 1e-9, "{}", m.cpu_load);
        assert_eq!(m.viewers, 100);
        assert_eq!(m.egress_bps, 100_000_000);
        let cam = m.channels.iter().find(|c| c.id == "cam").unwrap();
        assert_eq!(cam.viewers, 100);
        let want = (10.0 * 2.0 + 30.0 * 6.0 + 60.0 * 1.0) / 100.0;
        assert!((cam.jitter_ms - want).abs() < 1e-9, "{}", cam.jitter_ms);
        let news = m.channels.iter().find(|c| c.id == "news").unwrap();
        assert_eq!((news.viewers, news.cum_lost), (5, 7));
    }

    #[test]
    fn a_child_that_stops_reporting_falls_out() {
        let mut r = ChildReports::default();
        r.insert(stats("a", 0, 0.1, 1, &[]), 0);
        r.insert(stats("b", 0, 0.1, 1, &[]), 2000);
        assert_eq!(r.fresh(2500, 1000).len(), 1);
        assert_eq!(r.fresh(2500, 1000)[0].node, "b");
    }
}
