//! Pacing of a live feed's sends (sans-IO: the engine asks, this answers with times).
//!
//! Every client of a feed sits in one of [`PACING_SLOTS`] slots, and every slot has a
//! fixed offset from the feed's timeline: slot `s` gets each range (a frame, sometimes
//! with audio) at the range's deadline plus about `s / PACING_SLOTS` of the feed's *spread*
//! (exactly: see the phases below).
//! So sending a frame to N clients is many small bursts spread over the spread, not one
//! burst whose tail is late by its whole length, and each packet's send lateness is
//! measured against its own slot's time.
//!
//! Offsets are the same for every range, big or small. A client therefore sees the
//! stream shifted by a constant (its slot's offset, which its sender reports carry), with
//! no jitter of our making; and a keyframe, which costs the sender a few times an
//! ordinary frame, is spread over the whole spread like every other frame, interleaved
//! with the next frames of the earlier slots instead of demanding its CPU at once.
//!
//! The spread grows with the feed's clients ([`SPREAD_PER_CLIENT`] each, between
//! [`MIN_SPREAD`] and [`MAX_SPREAD`]): long enough that a keyframe's sends to all of them
//! fit in it beside the ordinary frames. It follows the client count, not a measured
//! cost: a measured cost moved with everything else on the core (a burst of RTSP set-ups
//! made sends look many times dearer), and every move of the spread shifts the clients'
//! timelines. It grows at once and shrinks by at most [`SHRINK_PER_RANGE`] a range, and a
//! slot's time never goes back, so a client never sees packets out of order. The price
//! is delay: the last slot's clients get each frame up to the spread after the first's.
//! (Version 2 used 20 slots over half a frame interval: at 3,584 clients one slot's burst
//! alone passed 2 ms.)
//!
//! A spread longer than the feed's release interval `T` (a frame's 40 ms at 25 frames/s)
//! holds several ranges in flight at once, and their slot jobs must neither come due
//! together nor bunch one range's jobs (a keyframe's are a few times dearer) in a row.
//! With offsets `spread * s / 128` jobs came due together whenever the slot step came
//! near a divisor of `T`: at 7,168 clients the spread was 9.85 frames, every 13th slot
//! fell within 40 us of the next frame's slot, and ten jobs fell due at the same instant
//! every 3 ms. Giving slot `s` the phase `s/128` of `T` plus whole intervals made the
//! jobs one per `T/128` but ran 13 of a keyframe's jobs back to back, which was worse (at
//! 8,192 clients p99 send lateness 1-25 ms against 0.5-1 ms). So the pacer learns `T` (the
//! median gap between releases) and rounds the spread up to an odd number `F` of
//! intervals: slot `s` at `s F / 128` of an interval has a phase `s F mod 128` no other
//! slot has (F shares no factor with 128), so the sender gets exactly one job each `T/128`
//! (312 us at 25 frames/s), and any `F` of them in a row serve `F` different frames.
//! Rounding stops at [`MAX_SPREAD`]: at 400 ms (10 frames) rounding up to 11 measured no
//! better than the pairs of jobs 10 gives. At 6,144 clients (9 frames) p99 send lateness
//! fell from 0.2 to 0.15 ms, at 7,168 (10, pairs) from 2 to 0.5 ms (bench/RESULTS.md).
//!
//! Clients join slots in bit-reversed order (0, 64, 32, 96, ...) so a few clients are
//! spread over the whole spread, and a feed with few clients has few slot wake-ups.

use std::time::{Duration, Instant};

/// Slots per feed: one slot's share of a keyframe stays under a millisecond of sending
/// with ten thousand clients (about 80 clients a slot, 2 ms apart at the widest spread),
/// and a feed wakes the sender at most `PACING_SLOTS` times a frame.
pub const PACING_SLOTS: usize = 128;
/// Smallest spread (up to 363 clients): about half a frame interval at 25 frames/s.
pub const MIN_SPREAD: Duration = Duration::from_millis(20);
/// Largest spread (from 7,273 clients): the most delay pacing adds for the last slot's
/// clients.
pub const MAX_SPREAD: Duration = Duration::from_millis(400);
/// Spread per client, sized so a keyframe fits beside a steady load of up to ~85 % of the
/// core. Measured on the bench's 1 Mbit/s channel (keyframes of about nine 1386-byte
/// packets, ordinary frames four, 25 frames/s): in the split server a packet costs the
/// protocol core about 1.65 us end to end (sends, wake-ups, kernel path), so at N clients
/// a keyframe's five extra packets a client take N x 8.3 us while the ordinary frames keep
/// N x 175 us/s of the core busy. At 4,800 clients (84 %) the keyframe needs
/// 40 ms / (1 - 0.84) = 250 ms of spread, ~52 us a client. Version 3 used 34 us (sized
/// for 54 % busy): at 4,096 clients (72 % busy) every keyframe brought the sender to ~95 %
/// and the 2 ms bar fell on any further noise (4 of 4 30-second windows failed).
pub const SPREAD_PER_CLIENT: Duration = Duration::from_micros(55);
/// Factor by which the spread may shrink per range (0.5 % a second at 25 frames/s). Each
/// shrink moves the last slots' clients earlier against the sender reports they last got
/// (every ~5 s): at 5 % a second a 225 ms spread moved them ~11 ms a second, and
/// receivers judged against their last report saw over 20 ms of lateness.
pub const SHRINK_PER_RANGE: f64 = 0.9998;

/// The slot of the `n`-th client to join: `n` bit-reversed over the slot count.
pub fn slot_for(n: usize) -> usize {
    const BITS: u32 = PACING_SLOTS.trailing_zeros();
    ((n % PACING_SLOTS).reverse_bits() >> (usize::BITS - BITS)) % PACING_SLOTS
}

/// The spread a feed with `clients` clients needs.
pub fn spread_for(clients: usize) -> Duration {
    SPREAD_PER_CLIENT
        .saturating_mul(u32::try_from(clients).unwrap_or(u32::MAX))
        .clamp(MIN_SPREAD, MAX_SPREAD)
}

/// Range intervals remembered to learn the feed's release interval (their median).
const INTERVAL_SAMPLES: usize = 16;
/// Gaps between releases longer than this are pauses, not the feed's interval.
const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// The pacing state of one live feed.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Latest time given to each slot: slot times never go back.
    last_due: Vec<Option<Instant>>,
    /// The spread of offsets over the slots.
    spread: Duration,
    /// Clients of the feed.
    clients: usize,
    /// Release time of the latest range.
    last_base: Option<Instant>,
    /// The latest gaps between releases, oldest first.
    gaps: std::collections::VecDeque<Duration>,
    /// The feed's release interval (median of `gaps`), once known.
    interval: Option<Duration>,
    /// The interval `T` and the whole number of intervals `F` the slots' offsets cover,
    /// while the spread is longer than `T` (see [`Pacer::slot_offset`]); set by
    /// [`Pacer::plan`], so the per-slot offset is one multiplication.
    laps: Option<(Duration, u32)>,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            last_due: vec![None; PACING_SLOTS],
            spread: MIN_SPREAD,
            clients: 0,
            last_base: None,
            gaps: std::collections::VecDeque::with_capacity(INTERVAL_SAMPLES),
            interval: None,
            laps: None,
        }
    }
}

impl Pacer {
    /// A range is released at `base`: learn the release interval and set the spread its
    /// slots get. Then ask [`Pacer::slot_time`] for each slot that has clients. Call once
    /// per range, in release order.
    pub fn plan(&mut self, base: Instant) {
        if let Some(gap) = self
            .last_base
            .and_then(|last| base.checked_duration_since(last))
        {
            if !gap.is_zero() && gap <= MAX_INTERVAL {
                if self.gaps.len() == INTERVAL_SAMPLES {
                    self.gaps.pop_front();
                }
                self.gaps.push_back(gap);
                let mut sorted = [Duration::ZERO; INTERVAL_SAMPLES];
                for (to, from) in sorted.iter_mut().zip(&self.gaps) {
                    *to = *from;
                }
                let sorted = &mut sorted[..self.gaps.len()];
                sorted.sort_unstable();
                self.interval = Some(sorted[sorted.len() / 2]);
            }
        }
        self.last_base = Some(self.last_base.map_or(base, |last| last.max(base)));
        let target = spread_for(self.clients);
        self.spread = if target >= self.spread {
            target
        } else {
            target.max(self.spread.mul_f64(SHRINK_PER_RANGE))
        };
        self.laps = self.interval.filter(|&t| self.spread > t).map(|t| {
            let need = self.spread.as_nanos().div_ceil(t.as_nanos());
            let most = (MAX_SPREAD.as_nanos() / t.as_nanos()).max(1);
            let laps = if need | 1 <= most {
                need | 1
            } else {
                need.min(most)
            };
            let n = PACING_SLOTS as u32;
            (t, u32::try_from(laps).unwrap_or(n - 1).min(n - 1))
        });
    }

    /// The send time of `slot`'s copy of the range released at `base` (planned with
    /// [`Pacer::plan`] just before): `base` plus the slot's offset, never before the
    /// slot's previous time.
    pub fn slot_time(&mut self, slot: usize, base: Instant) -> Instant {
        let slot = slot % PACING_SLOTS;
        let at = base + self.slot_offset(slot);
        let at = self.last_due[slot].map_or(at, |last| at.max(last));
        self.last_due[slot] = Some(at);
        at
    }

    /// The number of clients the feed now has (the spread is planned for them).
    pub fn set_clients(&mut self, clients: usize) {
        self.clients = clients;
    }

    /// Offset of `slot` from the feed's timeline (what its clients' sender reports say).
    ///
    /// A spread longer than the release interval `T` is rounded up to an odd number `F`
    /// of intervals, and slot `s` gets `s F / 128` of an interval. `F` odd shares no
    /// factor with 128, so the slots' phases within an interval (`s F mod 128`) are all
    /// different: the jobs of the ranges in flight fall one per `T/128`, and any `F`
    /// jobs in a row belong to `F` different ranges (see the module notes). Rounding
    /// never passes [`MAX_SPREAD`]: there `F` is the most whole intervals it holds (10 at
    /// 25 frames/s, where slots `s` and `s + 64` share a phase and jobs come in pairs).
    /// Until the interval is known, or when the spread fits in one interval, slots are
    /// spread evenly over the spread.
    pub fn slot_offset(&self, slot: usize) -> Duration {
        let s = (slot % PACING_SLOTS) as u32;
        let n = PACING_SLOTS as u32;
        match self.laps {
            Some((t, laps)) => t * (laps * s) / n,
            None => self.spread * s / n,
        }
    }

    /// The current spread of slot offsets.
    pub fn spread(&self) -> Duration {
        self.spread
    }

    /// The release interval learnt so far.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(40);
    const LAST: usize = PACING_SLOTS - 1;

    /// Plans `frames` frames 40 ms apart from `t0`; returns each one's time for the last
    /// slot, as an offset from the frame's deadline.
    fn run(p: &mut Pacer, t0: Instant, frames: u32) -> Vec<Duration> {
        (0..frames)
            .map(|n| {
                let base = t0 + FRAME * n;
                p.plan(base);
                p.slot_time(LAST, base) - base
            })
            .collect()
    }

    #[test]
    fn slots_are_taken_in_bit_reversed_order() {
        assert_eq!(slot_for(0), 0);
        assert_eq!(slot_for(1), PACING_SLOTS / 2);
        assert_eq!(slot_for(2), PACING_SLOTS / 4);
        assert_eq!(slot_for(3), 3 * PACING_SLOTS / 4);
        let mut all: Vec<usize> = (0..PACING_SLOTS).map(slot_for).collect();
        all.sort_unstable();
        assert_eq!(all, (0..PACING_SLOTS).collect::<Vec<_>>());
        assert_eq!(slot_for(PACING_SLOTS + 1), slot_for(1));
    }

    #[test]
    fn the_spread_follows_the_clients_within_bounds() {
        assert_eq!(spread_for(0), MIN_SPREAD);
        assert_eq!(spread_for(100), MIN_SPREAD);
        assert_eq!(spread_for(5000), SPREAD_PER_CLIENT * 5000);
        assert_eq!(spread_for(1_000_000), MAX_SPREAD);
        assert_eq!(spread_for(usize::MAX), MAX_SPREAD);
    }

    #[test]
    fn every_range_gets_the_same_offsets() {
        let mut p = Pacer::default();
        p.set_clients(5000);
        let t0 = Instant::now();
        let offsets = run(&mut p, t0, 100);
        // The first range comes before the interval is known: slots spread evenly.
        assert_eq!(
            offsets[0],
            spread_for(5000) * LAST as u32 / PACING_SLOTS as u32
        );
        // Then 275 ms over 40 ms frames rounds up to 7 intervals.
        assert_eq!(p.interval(), Some(FRAME));
        let want = FRAME * 7 * LAST as u32 / PACING_SLOTS as u32;
        assert!(offsets[1..].iter().all(|&o| o == want), "{offsets:?}");
        assert_eq!(p.slot_time(0, t0 + FRAME * 100), t0 + FRAME * 100);
    }

    /// The regressions this guards: with offsets `spread * s / 128` and a spread of 9.85
    /// frame intervals (7,168 clients), every 13th slot fell within 40 us of the next
    /// frame's slot, so ten jobs came due together; with phases `s/128` of a frame plus
    /// whole frames, 13 jobs of one frame (a keyframe's, say) came in a row. Now, for any
    /// number of clients, jobs are one per 1/128 of a frame interval (of the spread, when
    /// it is shorter; pairs per 1/64 at the widest spread), and when ranges overlap no two
    /// jobs in a row serve the same one.
    #[test]
    fn jobs_are_evenly_spaced_and_interleave_the_frames_in_flight() {
        for clients in [500, 1000, 4096, 7168, 8192, 10_000, 50_000] {
            let mut p = Pacer::default();
            p.set_clients(clients);
            let t0 = Instant::now();
            let frames = 60u32;
            let mut due = Vec::new();
            for n in 0..frames {
                let base = t0 + FRAME * n;
                p.plan(base);
                for s in 0..PACING_SLOTS {
                    due.push((p.slot_time(s, base), n));
                }
            }
            // Steady state: every frame that has jobs in the window had its interval
            // known, and every frame released before its end is in.
            let from = t0 + FRAME * 2 + p.spread() + FRAME * 3;
            let to = t0 + FRAME * frames;
            due.retain(|&(at, _)| at >= from && at < to);
            due.sort_unstable();
            assert!(due.len() > 1000, "{clients} clients: {} jobs", due.len());
            // Over 9 frames the spread takes 10 (even: 11 would pass MAX_SPREAD), where
            // slots s and s + 64 share a phase: jobs come in pairs, one per 1/64 of a frame.
            let pairs = p.spread() > FRAME * 9;
            let step = if pairs {
                FRAME / 64
            } else {
                p.spread().min(FRAME) / PACING_SLOTS as u32
            };
            let mut instants: Vec<Instant> = due.iter().map(|d| d.0).collect();
            instants.dedup();
            let most = if pairs { 2 } else { 1 };
            assert!(
                due.len() <= instants.len() * most,
                "{clients} clients: {} jobs at {} instants",
                due.len(),
                instants.len()
            );
            let closest = instants.windows(2).map(|w| w[1] - w[0]).min().unwrap();
            assert!(
                closest >= step - Duration::from_micros(1),
                "{clients} clients: two jobs {closest:?} apart (want {step:?})"
            );
            if p.spread() > FRAME * 2 {
                let run = due
                    .windows(3)
                    .find(|w| w[0].1 == w[1].1 || w[1].1 == w[2].1 || w[0].1 == w[2].1);
                assert!(
                    run.is_none(),
                    "{clients} clients: one frame's jobs in a row: {run:?}"
                );
            }
        }
    }

    #[test]
    fn the_spread_grows_at_once_shrinks_slowly_and_slot_times_never_go_back() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        p.set_clients(10);
        let _ = run(&mut p, t0, 10);
        assert_eq!(p.spread(), MIN_SPREAD);
        p.set_clients(6000);
        p.plan(t0 + FRAME * 10);
        let wide = p.spread();
        assert_eq!(wide, spread_for(6000));
        // Most clients leave: the spread comes down a little per frame.
        p.set_clients(10);
        let mut prev = [None; PACING_SLOTS];
        for n in 20..3000u32 {
            let base = t0 + FRAME * n;
            let before = p.spread();
            p.plan(base);
            assert!(p.spread().as_secs_f64() >= before.as_secs_f64() * SHRINK_PER_RANGE - 1e-9);
            for (s, last) in prev.iter_mut().enumerate() {
                let at = p.slot_time(s, base);
                assert!(last.is_none_or(|l| at >= l), "slot {s} went back");
                *last = Some(at);
            }
        }
        assert!(
            p.spread() < wide.mul_f64(0.6),
            "{:?} from {wide:?}",
            p.spread()
        );
        assert!(p.spread() >= MIN_SPREAD);
    }
}
