//! Pacing of a live feed's sends (sans-IO: the engine asks, this answers with times).
//!
//! Every client of a feed sits in one of [`PACING_SLOTS`] slots, and every slot has a
//! fixed offset from the feed's timeline: slot `s` gets each range (a frame, sometimes
//! with audio) at the range's deadline plus `s / PACING_SLOTS` of the feed's *spread*.
//! So sending a frame to N clients is many small bursts spread over the spread, not one
//! burst whose tail is late by its whole length, and each packet's send lateness is
//! measured against its own slot's time.
//!
//! Offsets are the same for every range, big or small. A client therefore sees the
//! stream shifted by a constant (its slot's offset, which its sender reports carry), with
//! no jitter of our making; and a keyframe, which costs the sender several times an
//! ordinary frame, is spread over the whole spread like every other frame, interleaved
//! with the later frames of the earlier slots instead of demanding its CPU at once.
//! (Version 2 gave every range a window of half the frame interval and stretched only
//! keyframes, up to 1.5x: with thousands of clients a keyframe's sends took longer than
//! that, every slot after it ran late, and p99 send lateness passed 2 ms at 3,584 clients
//! while the core was less than half busy.)
//!
//! The spread follows the load ([`Pacer::spread`]): at least an average range's share of
//! the feed's byte rate sent twice as fast (about 20 ms at 25 frames/s, what a feed with
//! few clients gets), and long enough that the biggest recent range (the keyframe) fits
//! in the CPU the other ranges leave: `peak cost / (TARGET_LOAD - steady load)`, from the
//! measured cost per client and byte. It grows at once and shrinks slowly, by at most
//! [`SHRINK_PER_RANGE`] a range, so offsets drift by a fraction of a millisecond per frame
//! at most. The price of a long spread is delay: the last slot's clients get each frame
//! up to [`MAX_SPREAD`] after the first slot's.
//!
//! Clients join slots in bit-reversed order (0, 128, 64, 192, ...) so a few clients are
//! spread over the whole spread, and a feed with few clients has few slot wake-ups.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Slots per feed. Enough that one slot's share of a keyframe stays well under a
/// millisecond of sending with ten thousand clients (about 40 clients a slot).
pub const PACING_SLOTS: usize = 256;
/// Smallest spread (a feed just started, before it has a byte rate to average).
pub const MIN_SPREAD: Duration = Duration::from_millis(10);
/// Largest spread: the most delay pacing adds for the last slot's clients.
pub const MAX_SPREAD: Duration = Duration::from_millis(1000);
/// How much faster than the feed's average byte rate an average range is sent.
const PACE_FACTOR: f64 = 2.0;
/// Span of the byte-rate average (about a GOP).
const RATE_SPAN: Duration = Duration::from_secs(2);
/// How long the biggest range (a keyframe) is remembered: two GOPs of the usual 2 s.
const PEAK_SPAN: Duration = Duration::from_secs(4);
/// Ranges carrying less than this share of a second's bytes (audio packets) do not move
/// the average range size.
const TYPICAL_MIN_SHARE: f64 = 0.01;
/// Share of the sender's core the spread is planned for; the rest is for RTCP, RTSP and
/// surprises.
const TARGET_LOAD: f64 = 0.85;
/// Least headroom assumed for the peak (an overloaded core still gets a finite spread).
const MIN_HEADROOM: f64 = 0.05;
/// A growing spread is set this much above what the load needs.
const GROW_MARGIN: f64 = 1.1;
/// The spread is kept while the load needs at least this share of it.
const KEEP_BAND: f64 = 0.85;
/// Factor by which the spread may shrink per range (about 5 % a second at 25 frames/s).
pub const SHRINK_PER_RANGE: f64 = 0.998;

/// The slot of the `n`-th client to join: `n` bit-reversed over the slot count.
pub fn slot_for(n: usize) -> usize {
    const BITS: u32 = PACING_SLOTS.trailing_zeros();
    ((n % PACING_SLOTS).reverse_bits() >> (usize::BITS - BITS)) % PACING_SLOTS
}

/// The pacing state of one live feed.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// (when, bytes) of the ranges of the last [`PEAK_SPAN`].
    recent: VecDeque<(Instant, usize)>,
    /// Latest time given to each slot: slot times never go back.
    last_due: Vec<Option<Instant>>,
    /// Moving average of the size of frame-sized ranges, bytes (0: none yet).
    avg_bytes: f64,
    /// The spread of offsets over the slots.
    spread: Duration,
    /// Moving average of the sending time per client and payload byte (seconds; 0: not
    /// measured yet).
    cost: f64,
    /// Clients of the feed.
    clients: usize,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            recent: VecDeque::new(),
            last_due: vec![None; PACING_SLOTS],
            avg_bytes: 0.0,
            spread: MIN_SPREAD,
            cost: 0.0,
            clients: 0,
        }
    }
}

impl Pacer {
    /// A range of `bytes` is released at `base`: learn from it and set the spread its
    /// slots get. Then ask [`Pacer::slot_time`] for each slot that has clients. Call once
    /// per range, in release order.
    pub fn plan(&mut self, base: Instant, bytes: usize) {
        self.recent.push_back((base, bytes));
        while let Some(&(t, _)) = self.recent.front() {
            if base.saturating_duration_since(t) <= PEAK_SPAN {
                break;
            }
            self.recent.pop_front();
        }
        let rate = self.rate(base);
        if rate > 0.0 && bytes as f64 >= rate * TYPICAL_MIN_SHARE {
            // Average over about 16 frames.
            self.avg_bytes = if self.avg_bytes == 0.0 {
                bytes as f64
            } else {
                (self.avg_bytes * 15.0 + bytes as f64) / 16.0
            };
        }
        let target = self.target(rate);
        self.spread = if target > self.spread {
            // Grow with a margin, so the ordinary wobble of the rate (a keyframe entering
            // or leaving the averaging span) does not move every offset each time.
            target.mul_f64(GROW_MARGIN).min(MAX_SPREAD)
        } else if target < self.spread.mul_f64(KEEP_BAND) {
            target.max(self.spread.mul_f64(SHRINK_PER_RANGE))
        } else {
            self.spread
        };
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

    /// Reports that sending a range of `bytes` to `clients` clients took `took`.
    pub fn record_send(&mut self, bytes: usize, clients: usize, took: Duration) {
        if bytes == 0 || clients == 0 {
            return;
        }
        let c = took.as_secs_f64() / (bytes as f64 * clients as f64);
        self.cost = if self.cost == 0.0 {
            c
        } else {
            self.cost * 0.95 + c * 0.05
        };
    }

    /// The number of clients the feed now has (the spread is planned for them).
    pub fn set_clients(&mut self, clients: usize) {
        self.clients = clients;
    }

    /// Offset of `slot` from the feed's timeline (what its clients' sender reports say).
    pub fn slot_offset(&self, slot: usize) -> Duration {
        self.spread * (slot % PACING_SLOTS) as u32 / PACING_SLOTS as u32
    }

    /// The current spread of slot offsets.
    pub fn spread(&self) -> Duration {
        self.spread
    }

    /// The spread the feed needs now: an average range's time at [`PACE_FACTOR`] times
    /// the byte rate, or, once sends are measured, long enough for the biggest recent
    /// range to fit in the CPU the steady load leaves.
    fn target(&self, rate: f64) -> Duration {
        let typical = if rate > 0.0 && self.avg_bytes > 0.0 {
            Duration::from_secs_f64(self.avg_bytes / rate / PACE_FACTOR)
        } else {
            MIN_SPREAD
        };
        let mut need = typical;
        if self.cost > 0.0 && self.clients > 0 {
            let per_byte = self.cost * self.clients as f64;
            let peak = self.recent.iter().map(|&(_, b)| b).max().unwrap_or(0) as f64;
            let headroom = (TARGET_LOAD - per_byte * rate).max(MIN_HEADROOM);
            let peak_spread = per_byte * peak / headroom;
            if peak_spread.is_finite() {
                need = need.max(Duration::from_secs_f64(peak_spread.min(1e3)));
            }
        }
        need.clamp(MIN_SPREAD, MAX_SPREAD)
    }

    /// Bytes per second over the last [`RATE_SPAN`] before `now` (0 until the feed has
    /// two ranges at least 10 ms apart).
    fn rate(&self, now: Instant) -> f64 {
        // The bytes released after the oldest range of the span, over the time since it:
        // exact for a steady feed however young its history (the oldest range's bytes
        // belong to the interval before it).
        let mut bytes = 0usize;
        let mut oldest = None;
        for &(t, b) in self.recent.iter().rev() {
            if now.saturating_duration_since(t) > RATE_SPAN {
                break;
            }
            if let Some((_, later)) = oldest {
                bytes += later;
            }
            oldest = Some((t, b));
        }
        let Some((oldest, _)) = oldest else {
            return 0.0;
        };
        let span = now.saturating_duration_since(oldest);
        if span < Duration::from_millis(10) {
            return 0.0;
        }
        bytes as f64 / span.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(40);
    const LAST: usize = PACING_SLOTS - 1;

    /// Feeds `frames` frames of `size(n)` bytes every 40 ms; returns each frame's time for
    /// the last slot, as an offset from the frame's deadline.
    fn run(p: &mut Pacer, t0: Instant, frames: u32, size: impl Fn(u32) -> usize) -> Vec<Duration> {
        (0..frames)
            .map(|n| {
                let base = t0 + FRAME * n;
                p.plan(base, size(n));
                p.slot_time(LAST, base) - base
            })
            .collect()
    }

    /// Reports sends costing `share` of the core at the feed's rate of `frame_bytes`
    /// per 40 ms frame.
    fn measure(p: &mut Pacer, clients: usize, frame_bytes: usize, share: f64) {
        p.set_clients(clients);
        let took = FRAME.mul_f64(share);
        for _ in 0..200 {
            p.record_send(frame_bytes, clients, took);
        }
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
    fn a_feed_with_few_clients_spreads_an_average_frame_over_half_its_interval() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        let offsets = run(&mut p, t0, 100, |_| 5000);
        let last = offsets.last().unwrap().as_secs_f64();
        let want = FRAME.as_secs_f64() / PACE_FACTOR * LAST as f64 / PACING_SLOTS as f64;
        assert!((last - want).abs() < 0.002, "{last} vs {want}");
        assert_eq!(p.slot_time(0, t0 + FRAME * 100), t0 + FRAME * 100);
    }

    #[test]
    fn every_range_gets_the_same_offsets_keyframes_included() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        // A keyframe of 10x an ordinary frame every 50 frames, on a busy feed.
        let size = |n: u32| if n.is_multiple_of(50) { 50_000 } else { 5000 };
        let _ = run(&mut p, t0, 100, size);
        measure(&mut p, 1000, 6000, 0.3);
        let offsets = run(&mut p, t0 + FRAME * 100, 200, size);
        let tail = &offsets[100..];
        let (lo, hi) = (tail.iter().min().unwrap(), tail.iter().max().unwrap());
        assert!(*hi - *lo < Duration::from_millis(2), "{lo:?} .. {hi:?}");
    }

    #[test]
    fn the_spread_grows_with_the_keyframe_cost_and_the_load() {
        let t0 = Instant::now();
        let size = |n: u32| if n.is_multiple_of(50) { 40_000 } else { 5000 };
        let spread_at = |clients: usize, share: f64| {
            let mut p = Pacer::default();
            let _ = run(&mut p, t0, 60, size);
            measure(&mut p, clients, 5000, share);
            let _ = run(&mut p, t0 + FRAME * 60, 60, size);
            p.spread()
        };
        // Light load: about the typical half-interval (20 ms; the keyframe lifts the
        // average frame for a while, and growth keeps a 10 % margin).
        let light = spread_at(100, 0.01);
        assert!(light < Duration::from_millis(35), "{light:?}");
        // Heavy: an ordinary frame takes half the core; the keyframe (8x) needs its
        // cost over the headroom left: 8 x 20 ms / (0.85 - ~0.55).
        let heavy = spread_at(5000, 0.5);
        assert!(heavy > Duration::from_millis(300), "{heavy:?}");
        assert!(heavy <= MAX_SPREAD);
        // Overloaded: capped.
        assert_eq!(spread_at(20_000, 2.0), MAX_SPREAD);
    }

    #[test]
    fn the_spread_shrinks_slowly_and_slot_times_never_go_back() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        let size = |n: u32| if n.is_multiple_of(50) { 40_000 } else { 5000 };
        let _ = run(&mut p, t0, 60, size);
        measure(&mut p, 5000, 5000, 0.5);
        let _ = run(&mut p, t0 + FRAME * 60, 60, size);
        let wide = p.spread();
        // Most clients leave: the spread comes down a little per frame.
        p.set_clients(10);
        let mut prev = [None; PACING_SLOTS];
        for n in 120..400u32 {
            let base = t0 + FRAME * n;
            let before = p.spread();
            p.plan(base, size(n));
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
    }

    #[test]
    fn spreads_stay_within_bounds() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        p.plan(t0, 10_000_000);
        assert!(p.spread() >= MIN_SPREAD && p.spread() <= MAX_SPREAD);
        let _ = run(&mut p, t0, 50, |_| 100);
        p.plan(t0 + FRAME * 50, 0);
        assert!(p.spread() >= MIN_SPREAD);
        assert!(p.slot_time(1, t0 + FRAME * 50) >= t0 + FRAME * 50);
    }
}
