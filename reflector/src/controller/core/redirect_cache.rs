//! The redirect's view of the public reflectors, kept between decisions, with an index
//! that answers [`redirect::choose`] in O(regions × log publics) instead of a pass over
//! every public reflector.
//!
//! At 10,000 publics a linear decision costs tens of microseconds; the simulator makes
//! millions of them, and a flash crowd queues thousands of real clients behind them. The
//! index gives exactly the linear policy's answer: a candidate's score differs only by
//! the locality bonus, so each region keeps its eligible candidates (up, not draining,
//! not full) twice, ordered by their score for a client of that region and for a client
//! elsewhere, ties by id. The best for a client of region `r` is the least of `r`'s
//! local first and every other region's remote first. Debug builds check every decision
//! against [`redirect::choose`] over the whole array.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use super::super::front::NoTarget;
#[cfg(debug_assertions)]
use super::super::redirect;
use super::super::redirect::Candidate;

/// A score with a total order ([`f64::total_cmp`], as the policy compares them).
#[derive(Clone, Copy, Debug)]
struct Score(f64);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One public reflector as the policy sees it (see [`Candidate`]).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct CachedCandidate {
    pub id: String,
    pub up: bool,
    pub draining: bool,
    pub region: usize,
    pub viewers: u64,
    pub max_viewers: u32,
    pub egress_bps: u64,
    pub egress_budget_bps: u64,
    pub jitter_ms: f64,
    pub losing: bool,
    pub carries: bool,
    /// The master whose subtree holds it in the plan (index into the masters).
    pub master: Option<usize>,
    /// When its latest FULLSTATS came (0: never).
    pub full_at_ms: u64,
}

/// Index keys of an eligible candidate: its score for a client of its own region, and
/// for any other client.
type Keys = (Score, Score);

/// The public reflectors in id order, and the index over them.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RedirectCache {
    pub channel: String,
    /// Distinct regions; candidates name them by index.
    regions: Vec<String>,
    publics: Vec<CachedCandidate>,
    /// Per candidate, its keys when it is eligible.
    keys: Vec<Option<Keys>>,
    /// Per region, its eligible candidates by (local score, position).
    local: Vec<BTreeSet<(Score, usize)>>,
    /// Per region, its eligible candidates by (remote score, position).
    remote: Vec<BTreeSet<(Score, usize)>>,
    /// Candidates up and not draining (eligible or full).
    up: usize,
    /// Masters named by candidates, and the estimated viewers of each one's publics, so
    /// a master's STATS is checked against the estimates without a walk of its subtree.
    masters: Vec<String>,
    viewers_below: Vec<u64>,
    /// Per master, its publics by (time of their latest FULLSTATS, position): whom to
    /// ask first when the master's aggregate looks wrong.
    stalest_below: Vec<BTreeSet<(u64, usize)>>,
}

impl RedirectCache {
    pub fn new(channel: &str) -> RedirectCache {
        RedirectCache {
            channel: channel.to_string(),
            regions: Vec::new(),
            publics: Vec::new(),
            keys: Vec::new(),
            local: Vec::new(),
            remote: Vec::new(),
            up: 0,
            masters: Vec::new(),
            viewers_below: Vec::new(),
            stalest_below: Vec::new(),
        }
    }

    /// The index of `master`, added if new.
    pub fn master_index(&mut self, master: &str) -> usize {
        match self.masters.iter().position(|m| m == master) {
            Some(i) => i,
            None => {
                self.masters.push(master.to_string());
                self.viewers_below.push(0);
                self.stalest_below.push(BTreeSet::new());
                self.masters.len() - 1
            }
        }
    }

    /// The estimated viewers of the publics below `master` (0 for a master with none).
    pub fn viewers_below(&self, master: &str) -> u64 {
        self.masters
            .iter()
            .position(|m| m == master)
            .map_or(0, |i| self.viewers_below[i])
    }

    /// Up to `k` publics below `master` whose figures are the oldest, oldest first.
    pub fn stalest_below(&self, master: &str, k: usize) -> Vec<&str> {
        let Some(m) = self.masters.iter().position(|x| x == master) else {
            return Vec::new();
        };
        self.stalest_below[m]
            .iter()
            .take(k)
            .map(|&(_, i)| self.publics[i].id.as_str())
            .collect()
    }

    /// The index of `region`, added if new.
    pub fn region_index(&mut self, region: &str) -> usize {
        match self.regions.iter().position(|r| r == region) {
            Some(i) => i,
            None => {
                self.regions.push(region.to_string());
                self.local.push(BTreeSet::new());
                self.remote.push(BTreeSet::new());
                self.regions.len() - 1
            }
        }
    }

    /// Append a candidate; callers push them in id order.
    pub fn push(&mut self, c: CachedCandidate) {
        debug_assert!(self.publics.last().is_none_or(|l| l.id < c.id));
        self.publics.push(c);
        self.keys.push(None);
        self.index(self.publics.len() - 1);
    }

    /// The position of `id`, if it is a candidate.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.publics
            .binary_search_by(|c| c.id.as_str().cmp(id))
            .ok()
    }

    /// Replace the candidate at `i` (same id).
    pub fn replace(&mut self, i: usize, c: CachedCandidate) {
        debug_assert_eq!(self.publics[i].id, c.id);
        self.unindex(i);
        self.publics[i] = c;
        self.index(i);
    }

    fn candidate(&self, i: usize) -> Candidate<'_> {
        let c = &self.publics[i];
        Candidate {
            id: &c.id,
            up: c.up,
            draining: c.draining,
            region: &self.regions[c.region],
            viewers: c.viewers,
            max_viewers: c.max_viewers,
            egress_bps: c.egress_bps,
            egress_budget_bps: c.egress_budget_bps,
            jitter_ms: c.jitter_ms,
            losing: c.losing,
            carries: c.carries,
        }
    }

    fn index(&mut self, i: usize) {
        if let Some(m) = self.publics[i].master {
            self.viewers_below[m] += self.publics[i].viewers;
            self.stalest_below[m].insert((self.publics[i].full_at_ms, i));
        }
        let cand = self.candidate(i);
        if !cand.up || cand.draining {
            return;
        }
        let keys = (!cand.full()).then(|| {
            (
                Score(cand.score(Some(cand.region))),
                Score(cand.score(None)),
            )
        });
        self.up += 1;
        let Some(keys) = keys else { return };
        let r = self.publics[i].region;
        self.local[r].insert((keys.0, i));
        self.remote[r].insert((keys.1, i));
        self.keys[i] = Some(keys);
    }

    fn unindex(&mut self, i: usize) {
        let c = &self.publics[i];
        if let Some(m) = c.master {
            self.viewers_below[m] -= c.viewers;
            self.stalest_below[m].remove(&(c.full_at_ms, i));
        }
        if c.up && !c.draining {
            self.up -= 1;
        }
        if let Some((local, remote)) = self.keys[i].take() {
            let r = c.region;
            self.local[r].remove(&(local, i));
            self.remote[r].remove(&(remote, i));
        }
    }

    /// The best candidate for a client of `region` (the policy of [`redirect::choose`]):
    /// its id.
    pub fn choose(&self, region: Option<&str>) -> Result<&str, NoTarget> {
        let home = region
            .filter(|r| !r.is_empty())
            .and_then(|r| self.regions.iter().position(|x| x == r));
        let best = (0..self.regions.len())
            .filter_map(|r| {
                let set = if Some(r) == home {
                    &self.local[r]
                } else {
                    &self.remote[r]
                };
                set.first().copied()
            })
            .min();
        let chosen = match best {
            Some((_, i)) => Ok(i),
            None if self.up > 0 => Err(NoTarget::AllFull),
            None => Err(NoTarget::NoneUp),
        };
        #[cfg(debug_assertions)]
        {
            let all: Vec<Candidate> = (0..self.publics.len()).map(|i| self.candidate(i)).collect();
            assert_eq!(
                chosen,
                redirect::choose(&all, region),
                "the redirect index disagrees with the policy"
            );
        }
        chosen.map(|i| self.publics[i].id.as_str())
    }

    /// Each candidate with its region's and master's names in place of their indices,
    /// for comparing two caches.
    #[cfg(debug_assertions)]
    pub fn resolved(&self) -> Vec<(CachedCandidate, &str, Option<&str>)> {
        self.publics
            .iter()
            .map(|c| {
                let names = (
                    self.regions[c.region].as_str(),
                    c.master.map(|m| self.masters[m].as_str()),
                );
                let mut c = c.clone();
                (c.region, c.master) = (0, None);
                (c, names.0, names.1)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(cache: &mut RedirectCache, id: &str, region: &str, viewers: u64) -> CachedCandidate {
        CachedCandidate {
            id: id.to_string(),
            up: true,
            draining: false,
            region: cache.region_index(region),
            viewers,
            max_viewers: 100,
            egress_bps: 0,
            egress_budget_bps: 0,
            jitter_ms: 0.0,
            losing: false,
            carries: true,
            master: None,
            full_at_ms: 0,
        }
    }

    /// A pseudo-random walk of updates; every decision is checked against the linear
    /// policy (the debug assertion in `choose`) and the index against a fresh build.
    #[test]
    fn the_index_answers_as_the_linear_policy_through_updates() {
        let regions = ["eu", "us", "ap", ""];
        let mut cache = RedirectCache::new("c");
        for i in 0..200u64 {
            let mut c = cand(
                &mut cache,
                &format!("p{i:03}"),
                regions[(i % 4) as usize],
                i % 7,
            );
            c.master = Some(cache.master_index(["m1", "m2"][(i % 2) as usize]));
            cache.push(c);
        }
        let mut x = 12345u64;
        for step in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (x >> 33) as usize % 200;
            let mut c = cache.publics[i].clone();
            match (x >> 20) % 6 {
                0 => c.viewers = (x >> 8) % 120,
                1 => c.draining = !c.draining,
                2 => c.up = !c.up,
                3 => c.losing = !c.losing,
                4 => c.jitter_ms = ((x >> 10) % 50) as f64,
                _ => c.viewers += 1,
            }
            cache.replace(i, c);
            let region = [
                Some("eu"),
                Some("us"),
                Some("ap"),
                Some(""),
                None,
                Some("xx"),
            ][step % 6];
            let _ = cache.choose(region);
            for m in ["m1", "m2"] {
                let want: u64 = cache
                    .publics
                    .iter()
                    .filter(|c| c.master.is_some_and(|i| cache.masters[i] == m))
                    .map(|c| c.viewers)
                    .sum();
                assert_eq!(cache.viewers_below(m), want);
            }
            if step % 500 == 0 {
                let mut fresh = RedirectCache::new("c");
                for r in &cache.regions {
                    fresh.region_index(r);
                }
                for m in &cache.masters {
                    fresh.master_index(m);
                }
                for c in &cache.publics {
                    fresh.push(c.clone());
                }
                assert_eq!(fresh, cache);
            }
        }
    }

    #[test]
    fn full_and_none_up_are_told_apart() {
        let mut cache = RedirectCache::new("c");
        let full = cand(&mut cache, "a", "eu", 100);
        cache.push(full);
        assert_eq!(cache.choose(Some("eu")), Err(NoTarget::AllFull));
        let mut down = cache.publics[0].clone();
        down.up = false;
        cache.replace(0, down);
        assert_eq!(cache.choose(None), Err(NoTarget::NoneUp));
        let b = cand(&mut cache, "b", "us", 3);
        cache.push(b);
        assert_eq!(cache.choose(Some("eu")), Ok("b"));
    }
}
