//! Viewers: the arrival curve (a daily curve plus a flash crowd), session lengths, and
//! the cohorts the world moves around.
//!
//! A cohort is `k` viewers of one region who arrive together and are sent to one public
//! reflector by one redirect decision; each then leaves at the end of its own session.
//! At ten million viewers one decision per viewer would multiply the controller's work
//! by the cohort size; cohorts keep the decisions near a million while the viewer counts
//! stay exact. (Leaving together would not: a reflector's count would move in steps of
//! a cohort, and the spread of load over reflectors would measure the lumps rather than
//! the redirect policy.)

use rand::Rng;

use crate::config::{Curve, SessionDist};

/// Target concurrent viewers at `t_ms` (before calibration): the daily curve, whose high
/// is 1, plus the flash crowd.
pub fn target_shape(c: &Curve, t_ms: u64) -> f64 {
    let h = c.start_hour + t_ms as f64 / 3_600_000.0;
    let phase = 2.0 * std::f64::consts::PI * (h - c.peak_hour) / 24.0;
    let daily = c.base + (1.0 - c.base) * ((1.0 + phase.cos()) / 2.0).powf(1.5);
    let flash = match c.flash_hour {
        None => 0.0,
        Some(f) => {
            // Minutes since the flash crowd started, wrapped to the day.
            let m = (h - f).rem_euclid(24.0) * 60.0;
            let ramp = c.flash_ramp_minutes;
            let fade = 3.0 * ramp;
            let s = if m < ramp {
                m / ramp
            } else if m < ramp + c.flash_minutes {
                1.0
            } else if m < ramp + c.flash_minutes + fade {
                1.0 - (m - ramp - c.flash_minutes) / fade
            } else {
                0.0
            };
            c.flash_extra * s
        }
    };
    daily + flash
}

/// Session lengths.
#[derive(Clone, Copy, Debug)]
pub struct Sessions {
    pub dist: SessionDist,
    pub mean_ms: f64,
    pub sigma: f64,
}

impl Sessions {
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let v = match self.dist {
            SessionDist::Fixed => self.mean_ms,
            SessionDist::Exponential => -self.mean_ms * (1.0 - rng.gen::<f64>()).ln(),
            SessionDist::Lognormal => {
                let mu = self.mean_ms.ln() - self.sigma * self.sigma / 2.0;
                (mu + self.sigma * normal(rng)).exp()
            }
        };
        v.clamp(1000.0, 48.0 * 3_600_000.0) as u64
    }

    /// P(session > d).
    pub fn survival(&self, d_ms: f64) -> f64 {
        match self.dist {
            SessionDist::Fixed => {
                if d_ms < self.mean_ms {
                    1.0
                } else {
                    0.0
                }
            }
            SessionDist::Exponential => (-d_ms / self.mean_ms).exp(),
            SessionDist::Lognormal => {
                if d_ms <= 0.0 {
                    return 1.0;
                }
                let mu = self.mean_ms.ln() - self.sigma * self.sigma / 2.0;
                let z = (d_ms.ln() - mu) / self.sigma;
                0.5 * erfc(z / std::f64::consts::SQRT_2)
            }
        }
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Complementary error function (Numerical Recipes' erfcc, |error| < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Arrival rates per minute (viewers), calibrated so that the expected concurrency
/// (arrivals convolved with the session survival) peaks at `curve.peak`.
///
/// Shape: new viewers replace those who leave (target / mean session) plus the target's
/// rise; the whole is then scaled. Returns viewers arriving in each minute.
pub fn arrival_minutes(curve: &Curve, sessions: &Sessions, minutes: usize) -> Vec<f64> {
    let target: Vec<f64> = (0..=minutes)
        .map(|m| target_shape(curve, m as u64 * 60_000))
        .collect();
    let mean_min = sessions.mean_ms / 60_000.0;
    let raw: Vec<f64> = (0..minutes)
        .map(|m| target[m] / mean_min + (target[m + 1] - target[m]).max(0.0))
        .collect();
    // Survival per minute of age, cut where it no longer matters.
    let mut surv = Vec::new();
    for d in 0..minutes {
        let s = sessions.survival((d as f64 + 0.5) * 60_000.0);
        if s < 1e-5 {
            break;
        }
        surv.push(s);
    }
    let mut peak: f64 = 0.0;
    for m in 0..minutes {
        let c: f64 = surv
            .iter()
            .enumerate()
            .take(m + 1)
            .map(|(d, s)| raw[m - d] * s)
            .sum();
        peak = peak.max(c);
    }
    let scale = if peak > 0.0 {
        curve.peak as f64 / peak
    } else {
        0.0
    };
    raw.into_iter().map(|r| r * scale).collect()
}

/// One cohort.
#[derive(Clone, Debug)]
pub struct Cohort {
    pub region: u8,
    pub k: u32,
    /// The public reflector serving it, and its position in that node's list.
    pub node: Option<(u32, u32)>,
    /// When each of its viewers leaves, latest first (the next to leave is last).
    pub ends: Vec<u64>,
    /// Attempts of its current (re)connection.
    pub attempts: u32,
    /// Since when it has been without a reflector because its own failed (None for a
    /// new arrival).
    pub rehoming_since: Option<u64>,
    /// Bumped on reuse of the slot, so stale events are ignored.
    pub gen: u32,
    pub live: bool,
}

/// Cohorts in a slab with a free list: ids are reused, events carry the generation.
#[derive(Default)]
pub struct Cohorts {
    pub all: Vec<Cohort>,
    free: Vec<u32>,
    pub live: usize,
}

impl Cohorts {
    /// A cohort of one viewer per entry of `ends` (sorted latest first).
    pub fn add(&mut self, region: u8, ends: Vec<u64>) -> (u32, u32) {
        debug_assert!(ends.windows(2).all(|w| w[0] >= w[1]));
        self.live += 1;
        let c = Cohort {
            region,
            k: ends.len() as u32,
            node: None,
            ends,
            attempts: 0,
            rehoming_since: None,
            gen: 0,
            live: true,
        };
        match self.free.pop() {
            Some(id) => {
                let gen = self.all[id as usize].gen.wrapping_add(1);
                self.all[id as usize] = Cohort { gen, ..c };
                (id, gen)
            }
            None => {
                self.all.push(c);
                ((self.all.len() - 1) as u32, 0)
            }
        }
    }

    /// The cohort `id` if it is still generation `gen` and live.
    pub fn get_mut(&mut self, id: u32, gen: u32) -> Option<&mut Cohort> {
        self.all
            .get_mut(id as usize)
            .filter(|c| c.live && c.gen == gen)
    }

    pub fn remove(&mut self, id: u32) {
        let c = &mut self.all[id as usize];
        if c.live {
            c.live = false;
            c.node = None;
            c.ends = Vec::new();
            self.live -= 1;
            self.free.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrated_peak_is_the_asked_peak() {
        let curve = Curve {
            peak: 1_000_000,
            base: 0.2,
            peak_hour: 12.0,
            start_hour: 0.0,
            flash_hour: None,
            flash_minutes: 0.0,
            flash_extra: 0.0,
            flash_ramp_minutes: 1.0,
        };
        let s = Sessions {
            dist: SessionDist::Exponential,
            mean_ms: 1_800_000.0,
            sigma: 1.0,
        };
        let a = arrival_minutes(&curve, &s, 24 * 60);
        // Rough check: at the daily high, arrivals ~ peak / mean session.
        let at_noon = a[12 * 60];
        assert!(
            (at_noon - 1_000_000.0 / 30.0).abs() / at_noon < 0.15,
            "{at_noon}"
        );
        assert!(erfc(0.0) - 1.0 < 1e-6 && (erfc(1.0) - 0.157_299_2).abs() < 1e-6);
    }
}
