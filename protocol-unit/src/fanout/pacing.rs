//! Pacing of a live feed's sends (sans-IO: the engine asks, this answers with times).
//!
//! Every client of a feed sits in one of [`PACING_SLOTS`] slots. The packets a feed
//! releases at once (a *range*: usually one frame, sometimes with audio) go to the
//! clients of slot `s` at the range's deadline plus `s / PACING_SLOTS` of the range's
//! *window*. So sending a frame to N clients is many small bursts spread over the window,
//! not one burst whose tail is late by its whole duration, and every packet's send
//! lateness is measured against its own slot's time.
//!
//! The window follows the feed's bytes. A feed that averages `R` bytes/s in ranges of
//! `A` bytes on average gets a typical window of `A / R / PACE_FACTOR` (clamped to
//! [`MIN_WINDOW`] ..= [`MAX_WINDOW`]): an average 25 frames/s frame is spread over about
//! 20 ms, half its interval. (Windows of ~36 ms with 40 slots made `rtcp_feedback`'s
//! bystander lose packets in about one run of six during a NACK storm; the cause is not
//! found yet, so the window stays at half the interval.) Ranges keep that window (steady offsets: no jitter of our
//! making), except a bigger-than-average one (a keyframe) on a busy feed, whose sends
//! would take more than `BUSY_SHARE` of it: that one gets up to `MAX_STRETCH` times it,
//! instead of demanding twice the CPU in the same window (which made every keyframe late
//! once a core was half busy). A slot's time never goes back, so
//! each client still gets its ranges in order; a big range simply delays the slots after
//! it a little, as any pacer turns bursts into delay.
//!
//! Sender reports map each client's RTP clock to its slot's *typical* offset
//! ([`Pacer::slot_offset`]), the offset an average frame gets, so a receiver's
//! lateness against the report stays near zero outside keyframes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Slots per feed.
pub const PACING_SLOTS: usize = 20;
/// Smallest window (a feed just started, before it has a byte rate to average).
pub const MIN_WINDOW: Duration = Duration::from_millis(10);
/// Largest window (a huge keyframe on a quiet feed).
pub const MAX_WINDOW: Duration = Duration::from_millis(160);
/// How much faster than the feed's average byte rate a range is sent.
const PACE_FACTOR: f64 = 2.0;
/// Longest window, as a multiple of the typical one.
const MAX_STRETCH: f64 = 1.5;
/// Span of the byte-rate average (about a GOP).
const RATE_SPAN: Duration = Duration::from_secs(2);
/// Ranges carrying less than this share of a second's bytes (audio packets) do not move
/// the average range size.
const TYPICAL_MIN_SHARE: f64 = 0.01;
/// Share of the typical window a range's sends may take before a bigger-than-average
/// range gets a longer window.
const BUSY_SHARE: f64 = 0.5;

/// The pacing state of one live feed.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// (when, bytes) of the ranges of the last [`RATE_SPAN`].
    recent: VecDeque<(Instant, usize)>,
    recent_bytes: usize,
    /// Latest time given to each slot: slot times never go back.
    last_due: [Option<Instant>; PACING_SLOTS],
    /// Moving average of the size of frame-sized ranges, bytes (0: none yet).
    avg_bytes: f64,
    /// The window of an average range: its share of a second at the feed's byte rate,
    /// over [`PACE_FACTOR`].
    typical: Duration,
    /// Moving average of the sending time per byte of a range, all slots together
    /// (seconds; 0: not measured yet).
    cost_per_byte: f64,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            recent: VecDeque::new(),
            recent_bytes: 0,
            last_due: [None; PACING_SLOTS],
            avg_bytes: 0.0,
            typical: MIN_WINDOW,
            cost_per_byte: 0.0,
        }
    }
}

impl Pacer {
    /// The send times of a range of `bytes` released at `base`: one per slot, slot 0
    /// first. Call once per range, in release order.
    ///
    /// Ranges get the typical window, so each slot keeps a steady offset from the feed's
    /// timeline and its clients see no jitter of our making (a window proportional to
    /// every frame's size moved the last slots' packets by ±10 ms from frame to frame).
    /// Only a range bigger than average (a keyframe) whose sends would take more than
    /// [`BUSY_SHARE`] of the window ([`Pacer::record_send`] measures that) gets a longer
    /// one: at most its size over the average, and at most [`MAX_STRETCH`] times. So a
    /// lightly loaded feed never stretches, and windows stay under the frame interval
    /// on average (no drift).
    pub fn plan(&mut self, base: Instant, bytes: usize) -> [Instant; PACING_SLOTS] {
        let rate = self.rate(base);
        self.recent.push_back((base, bytes));
        self.recent_bytes += bytes;
        // The window from what came before; then this range joins the averages.
        let typical = self.typical.as_secs_f64();
        let stretch = if self.avg_bytes > 0.0 && self.cost_per_byte > 0.0 {
            let busy = bytes as f64 * self.cost_per_byte;
            let bigger = bytes as f64 / self.avg_bytes;
            (busy / (BUSY_SHARE * typical)).clamp(1.0, MAX_STRETCH.min(bigger.max(1.0)))
        } else {
            1.0
        };
        let window = self.typical.mul_f64(stretch).min(MAX_WINDOW);
        if let Some(r) = rate.filter(|&r| r > 0.0) {
            if bytes as f64 >= r * TYPICAL_MIN_SHARE {
                // Average over about 16 frames.
                self.avg_bytes = if self.avg_bytes == 0.0 {
                    bytes as f64
                } else {
                    (self.avg_bytes * 15.0 + bytes as f64) / 16.0
                };
            }
            if self.avg_bytes > 0.0 {
                self.typical = Duration::from_secs_f64(self.avg_bytes / r / PACE_FACTOR)
                    .clamp(MIN_WINDOW, MAX_WINDOW);
            }
        }
        let mut due = [base; PACING_SLOTS];
        for (slot, d) in due.iter_mut().enumerate() {
            let at = base + window * slot as u32 / PACING_SLOTS as u32;
            let at = self.last_due[slot].map_or(at, |last| at.max(last));
            self.last_due[slot] = Some(at);
            *d = at;
        }
        due
    }

    /// Reports that one slot's sends of a range of `bytes` took `took`.
    pub fn record_send(&mut self, bytes: usize, took: Duration) {
        if bytes == 0 {
            return;
        }
        // A slot holds 1/PACING_SLOTS of the clients.
        let c = took.as_secs_f64() * PACING_SLOTS as f64 / bytes as f64;
        self.cost_per_byte = if self.cost_per_byte == 0.0 {
            c
        } else {
            self.cost_per_byte * 0.95 + c * 0.05
        };
    }

    /// Offset of `slot` for an average range (what sender reports assume).
    pub fn slot_offset(&self, slot: usize) -> Duration {
        self.typical * (slot % PACING_SLOTS) as u32 / PACING_SLOTS as u32
    }

    /// Bytes per second over the last [`RATE_SPAN`] before `now`; `None` until the feed
    /// has a history to average over.
    fn rate(&mut self, now: Instant) -> Option<f64> {
        while let Some(&(t, b)) = self.recent.front() {
            if now.saturating_duration_since(t) <= RATE_SPAN {
                break;
            }
            self.recent.pop_front();
            self.recent_bytes -= b;
        }
        let oldest = self.recent.front()?.0;
        // A young history spans less than RATE_SPAN; never divide by less than 100 ms.
        let span = now
            .saturating_duration_since(oldest)
            .max(Duration::from_millis(100));
        Some(self.recent_bytes as f64 / span.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(40);

    /// Feeds `frames` frames of `size(n)` bytes every 40 ms; returns the plans.
    fn run(
        p: &mut Pacer,
        t0: Instant,
        frames: u32,
        size: impl Fn(u32) -> usize,
    ) -> Vec<[Instant; PACING_SLOTS]> {
        (0..frames)
            .map(|n| p.plan(t0 + FRAME * n, size(n)))
            .collect()
    }

    #[test]
    fn an_average_frame_is_spread_over_its_share_of_the_interval() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        let plans = run(&mut p, t0, 100, |_| 5000);
        let last = plans.last().unwrap();
        let base = t0 + FRAME * 99;
        let spread = last[PACING_SLOTS - 1] - base;
        // The interval over PACE_FACTOR, less one slot step.
        let window = FRAME.as_secs_f64() / PACE_FACTOR;
        let last_offset = window * (PACING_SLOTS - 1) as f64 / PACING_SLOTS as f64;
        assert!(
            (spread.as_secs_f64() - last_offset).abs() < 0.002,
            "{spread:?}"
        );
        assert!(spread > FRAME / 4 && spread < FRAME);
        assert_eq!(last[0], base);
        assert!((p.slot_offset(PACING_SLOTS - 1).as_secs_f64() - last_offset).abs() < 0.002);
    }

    #[test]
    fn a_keyframe_on_a_busy_feed_gets_a_longer_window_and_slots_never_go_back() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        let plans = run(&mut p, t0, 100, |_| 5000);
        // Busy: an average frame's sends take 60 % of the typical window.
        let typical = FRAME.as_secs_f64() / PACE_FACTOR;
        let per_slot = Duration::from_secs_f64(0.6 * typical / PACING_SLOTS as f64);
        for _ in 0..200 {
            p.record_send(5000, per_slot);
        }
        let key = p.plan(t0 + FRAME * 100, 15_000);
        let after = p.plan(t0 + FRAME * 101, 5000);
        let base = t0 + FRAME * 100;
        // Longer than an average frame's window, but at most MAX_STRETCH times it.
        let spread = key[PACING_SLOTS - 1] - base;
        assert!(
            spread.as_secs_f64() > typical * 1.2
                && spread.as_secs_f64() <= typical * MAX_STRETCH + 0.001,
            "{spread:?}"
        );
        for s in 0..PACING_SLOTS {
            assert!(after[s] >= key[s], "slot {s} went back");
            assert!(key[s] >= plans[99][s]);
        }
        // The frame after starts on time for the first slots.
        assert_eq!(after[0], t0 + FRAME * 101);
    }

    #[test]
    fn a_keyframe_on_a_quiet_feed_keeps_the_typical_window() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        let plans = run(&mut p, t0, 100, |_| 5000);
        // An average frame's sends take 5 % of the window: a keyframe fits as it is.
        let typical = FRAME.as_secs_f64() / PACE_FACTOR;
        let per_slot = Duration::from_secs_f64(0.05 * typical / PACING_SLOTS as f64);
        for _ in 0..200 {
            p.record_send(5000, per_slot);
        }
        let key = p.plan(t0 + FRAME * 100, 15_000);
        let spread = key[PACING_SLOTS - 1] - (t0 + FRAME * 100);
        let before = plans[99][PACING_SLOTS - 1] - (t0 + FRAME * 99);
        assert!(
            spread.abs_diff(before) < Duration::from_micros(300),
            "{spread:?} vs {before:?}"
        );
    }

    #[test]
    fn frames_of_ordinary_sizes_keep_each_slot_at_a_steady_offset() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        let size = |n: u32| if n.is_multiple_of(2) { 3500 } else { 6500 };
        let plans = run(&mut p, t0, 200, size);
        let spreads: Vec<Duration> = (150..200)
            .map(|n| plans[n as usize][PACING_SLOTS - 1] - (t0 + FRAME * n))
            .collect();
        let (lo, hi) = (spreads.iter().min().unwrap(), spreads.iter().max().unwrap());
        // Only the averages drift (under a millisecond); a window proportional to each
        // frame would swing the last slot by about ±10 ms here.
        assert!(*hi - *lo < Duration::from_millis(1), "{lo:?} .. {hi:?}");
    }

    #[test]
    fn windows_stay_within_bounds() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        let first = p.plan(t0, 10_000_000);
        assert_eq!(
            first[PACING_SLOTS - 1] - t0,
            MIN_WINDOW * (PACING_SLOTS - 1) as u32 / PACING_SLOTS as u32
        );
        let _ = run(&mut p, t0, 50, |_| 100);
        let huge = p.plan(t0 + FRAME * 50, 10_000_000);
        assert!(huge[PACING_SLOTS - 1] - (t0 + FRAME * 50) <= MAX_WINDOW);
        let tiny = p.plan(t0 + FRAME * 60, 0);
        assert!(tiny[1] >= t0 + FRAME * 60);
    }
}
