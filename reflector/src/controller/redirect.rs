//! Which public reflector a client goes to: a pure policy over what the controller knows
//! of each one, so it is unit-tested here and run unchanged by the simulator.
//!
//! A candidate is skipped when it is not up, is draining, or is full (viewers at
//! `max_viewers`, or egress at its budget). Among the rest the lowest score wins:
//!
//! - **load**: the larger of viewers / capacity and egress / budget (0..1);
//! - **quality**: + 0.25 × min(1, jitter / 30 ms), + 0.25 if its clients lost packets in
//!   the last report (a reflector whose viewers suffer gets fewer new ones);
//! - **locality**: − 0.3 when the client's region (from the subnet → region map, or asked
//!   for in the URL) is the reflector's region;
//! - **carrying**: − 0.05 when it already relays the channel (no new upstream
//!   subscription needed).
//!
//! Ties go to the smaller id, so the choice is deterministic.

use std::net::IpAddr;

use ipnet::IpNet;

use super::front::NoTarget;

/// What the policy sees of one public reflector (borrowed from the caller's registry:
/// a redirect must not copy ten thousand names).
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub up: bool,
    pub draining: bool,
    pub region: &'a str,
    pub viewers: u64,
    pub max_viewers: u32,
    pub egress_bps: u64,
    pub egress_budget_bps: u64,
    /// Mean jitter its clients report, over its channels (ms).
    pub jitter_ms: f64,
    /// Its clients lost packets since its previous report.
    pub losing: bool,
    /// It relays the channel already.
    pub carries: bool,
}

impl Candidate<'_> {
    /// Full: no room for one more viewer of `bitrate_bps`.
    pub fn full(&self) -> bool {
        self.viewers >= u64::from(self.max_viewers)
            || (self.egress_budget_bps > 0 && self.egress_bps >= self.egress_budget_bps)
    }

    /// Share of capacity in use (0..1, above 1 when over).
    pub fn load(&self) -> f64 {
        let by_viewers = self.viewers as f64 / f64::from(self.max_viewers.max(1));
        let by_egress = if self.egress_budget_bps > 0 {
            self.egress_bps as f64 / self.egress_budget_bps as f64
        } else {
            0.0
        };
        by_viewers.max(by_egress)
    }

    /// Lower is better: load, plus quality penalties, less the locality and carrying
    /// bonuses (see the module doc).
    pub fn score(&self, region: Option<&str>) -> f64 {
        let mut s = self.load();
        s += 0.25 * (self.jitter_ms / 30.0).clamp(0.0, 1.0);
        if self.losing {
            s += 0.25;
        }
        if region.is_some_and(|r| !r.is_empty() && r == self.region) {
            s -= 0.3;
        }
        if self.carries {
            s -= 0.05;
        }
        s
    }
}

/// Pick the best candidate for a client in `region`; returns its index.
pub fn choose(candidates: &[Candidate], region: Option<&str>) -> Result<usize, NoTarget> {
    let mut any_up = false;
    let mut best: Option<(f64, usize)> = None;
    for (i, c) in candidates.iter().enumerate() {
        if !c.up || c.draining {
            continue;
        }
        any_up = true;
        if c.full() {
            continue;
        }
        let score = c.score(region);
        let better = match best {
            None => true,
            Some((b, j)) => score
                .total_cmp(&b)
                .then_with(|| c.id.cmp(candidates[j].id))
                .is_lt(),
        };
        if better {
            best = Some((score, i));
        }
    }
    match best {
        Some((_, i)) => Ok(i),
        None if any_up => Err(NoTarget::AllFull),
        None => Err(NoTarget::NoneUp),
    }
}

/// Client subnets to regions, the most specific prefix winning.
#[derive(Clone, Debug, Default)]
pub struct RegionMap {
    entries: Vec<(IpNet, String)>,
}

/// A bad `SUBNET=REGION` entry.
#[derive(Debug, thiserror::Error)]
#[error("region map entry {entry:?}: {reason} (expected SUBNET=REGION, e.g. 10.1.0.0/16=eu)")]
pub struct RegionMapError {
    pub entry: String,
    pub reason: String,
}

impl RegionMap {
    /// From `SUBNET=REGION` entries.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<RegionMap, RegionMapError> {
        let mut map = RegionMap::default();
        for e in entries {
            let e = e.as_ref();
            let err = |reason: String| RegionMapError {
                entry: e.to_string(),
                reason,
            };
            let (net, region) = e.split_once('=').ok_or_else(|| err("no '='".into()))?;
            let net: IpNet = net
                .trim()
                .parse()
                .map_err(|x| err(format!("bad subnet: {x}")))?;
            let region = region.trim();
            if region.is_empty() {
                return Err(err("empty region".into()));
            }
            map.entries.push((net, region.to_string()));
        }
        Ok(map)
    }

    /// Add one entry.
    pub fn insert(&mut self, net: IpNet, region: &str) {
        self.entries.push((net, region.to_string()));
    }

    /// The region of `ip`: the longest matching prefix.
    pub fn region_of(&self, ip: IpAddr) -> Option<&str> {
        self.entries
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, r)| r.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, viewers: u64) -> Candidate<'_> {
        Candidate {
            id,
            up: true,
            draining: false,
            region: "eu",
            viewers,
            max_viewers: 100,
            egress_bps: viewers * 1_000_000,
            egress_budget_bps: 1_000_000_000,
            jitter_ms: 0.0,
            losing: false,
            carries: true,
        }
    }

    #[test]
    fn least_loaded_wins_and_ties_go_to_the_smaller_id() {
        let c = vec![cand("b", 10), cand("a", 10), cand("c", 5)];
        assert_eq!(choose(&c, None), Ok(2));
        let c = vec![cand("b", 10), cand("a", 10)];
        assert_eq!(choose(&c, None), Ok(1));
    }

    #[test]
    fn full_or_draining_or_down_is_never_chosen() {
        let mut full = cand("a", 100);
        full.max_viewers = 100;
        let mut draining = cand("b", 0);
        draining.draining = true;
        let mut down = cand("c", 0);
        down.up = false;
        let mut over_budget = cand("d", 1);
        over_budget.egress_budget_bps = 1_000_000;
        assert_eq!(
            choose(&[full.clone(), draining.clone(), over_budget.clone()], None),
            Err(NoTarget::AllFull)
        );
        assert_eq!(
            choose(&[draining, down.clone()], None),
            Err(NoTarget::NoneUp)
        );
        assert_eq!(choose(&[full, down, cand("e", 99)], None), Ok(2));
    }

    #[test]
    fn egress_counts_as_load() {
        let mut heavy = cand("a", 10);
        heavy.egress_bps = 900_000_000; // few viewers, but HD bitrates
        assert_eq!(choose(&[heavy, cand("b", 30)], None), Ok(1));
    }

    #[test]
    fn loss_and_jitter_steer_new_viewers_away() {
        let mut losing = cand("a", 10);
        losing.losing = true;
        assert_eq!(choose(&[losing, cand("b", 20)], None), Ok(1));
        let mut jittery = cand("a", 10);
        jittery.jitter_ms = 40.0;
        assert_eq!(choose(&[jittery, cand("b", 20)], None), Ok(1));
    }

    #[test]
    fn locality_wins_until_the_local_one_is_much_busier() {
        let mut us = cand("us1", 10);
        us.region = "us";
        let eu = cand("eu1", 30);
        assert_eq!(choose(&[us.clone(), eu.clone()], Some("eu")), Ok(1));
        assert_eq!(choose(&[us.clone(), eu.clone()], Some("us")), Ok(0));
        assert_eq!(choose(&[us.clone(), cand("eu2", 60)], Some("eu")), Ok(0));
    }

    #[test]
    fn region_map_takes_the_longest_prefix() {
        let m = RegionMap::parse(&["10.0.0.0/8=world", "10.1.0.0/16=eu", "fd00::/8=v6"]).unwrap();
        assert_eq!(m.region_of("10.1.2.3".parse().unwrap()), Some("eu"));
        assert_eq!(m.region_of("10.2.2.3".parse().unwrap()), Some("world"));
        assert_eq!(m.region_of("fd00::1".parse().unwrap()), Some("v6"));
        assert_eq!(m.region_of("192.168.1.1".parse().unwrap()), None);
        let e = RegionMap::parse(&["10.0.0.0/33=x"]).unwrap_err();
        assert!(e.to_string().contains("bad subnet"), "{e}");
        assert!(RegionMap::parse(&["10.0.0.0/8"]).is_err());
        assert!(RegionMap::parse(&["10.0.0.0/8="]).is_err());
    }
}
