//! Pacing of a live feed's sends (sans-IO: the engine asks, this answers with times).
//!
//! Every client of a feed sits in one of [`PACING_SLOTS`] slots. The packets a feed
//! releases at once (a *range*: usually one frame, sometimes with audio) go to the
//! clients of slot `s` at the range's deadline plus `s / PACING_SLOTS` of the range's
//! *window*. So sending a frame to N clients is many small bursts spread over the window,
//! not one burst whose tail is late by its whole duration, and every packet's send
//! lateness is measured against its own slot's time.
//!
//! The window follows the bytes. A range of `B` bytes on a feed that averages `R` bytes/s
//! gets `B / R / PACE_FACTOR` (clamped to [`MIN_WINDOW`] ..= [`MAX_WINDOW`], and to
//! `MAX_STRETCH` times the typical window): an average 25 frames/s frame is spread over
//! 32 ms of its 40 ms interval, and a keyframe of twice the size over 48 ms, instead of
//! demanding twice the CPU in the same window (which made every keyframe late once a
//! core was half busy). A slot's time never goes back, so
//! each client still gets its ranges in order; a big range simply delays the slots after
//! it a little, as any pacer turns bursts into delay.
//!
//! Sender reports map each client's RTP clock to its slot's *typical* offset
//! ([`Pacer::slot_offset`]), the offset an average frame gets, so a receiver's
//! lateness against the report stays near zero outside keyframes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Slots per feed.
pub const PACING_SLOTS: usize = 40;
/// Smallest window (tiny ranges: audio, or a feed just started).
pub const MIN_WINDOW: Duration = Duration::from_millis(10);
/// Largest window (a huge keyframe on a quiet feed).
pub const MAX_WINDOW: Duration = Duration::from_millis(160);
/// How much faster than the feed's average byte rate a range is sent.
const PACE_FACTOR: f64 = 1.1;
/// Longest window, as a multiple of the typical one.
const MAX_STRETCH: f64 = 1.5;
/// Span of the byte-rate average (about a GOP).
const RATE_SPAN: Duration = Duration::from_secs(2);
/// Ranges carrying less than this share of a second's bytes (audio packets) do not move
/// the typical window.
const TYPICAL_MIN_SHARE: f64 = 0.01;

/// The pacing state of one live feed.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// (when, bytes) of the ranges of the last [`RATE_SPAN`].
    recent: VecDeque<(Instant, usize)>,
    recent_bytes: usize,
    /// Latest time given to each slot: slot times never go back.
    last_due: [Option<Instant>; PACING_SLOTS],
    /// Moving average of the windows of frame-sized ranges.
    typical: Duration,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            recent: VecDeque::new(),
            recent_bytes: 0,
            last_due: [None; PACING_SLOTS],
            typical: MIN_WINDOW,
        }
    }
}

impl Pacer {
    /// The send times of a range of `bytes` released at `base`: one per slot, slot 0
    /// first. Call once per range, in release order.
    pub fn plan(&mut self, base: Instant, bytes: usize) -> [Instant; PACING_SLOTS] {
        let rate = self.rate(base);
        self.recent.push_back((base, bytes));
        self.recent_bytes += bytes;
        // At most MAX_STRETCH times the typical window: a receiver sees a big frame's
        // packets that much later than the typical offset its sender reports announce.
        let longest = (self.typical.mul_f64(MAX_STRETCH)).clamp(MIN_WINDOW, MAX_WINDOW);
        let window = match rate {
            Some(r) if r > 0.0 => {
                Duration::from_secs_f64(bytes as f64 / r / PACE_FACTOR).clamp(MIN_WINDOW, longest)
            }
            _ => MIN_WINDOW,
        };
        if rate.is_some_and(|r| bytes as f64 >= r * TYPICAL_MIN_SHARE) {
            // Average over about 16 frames.
            self.typical = (self.typical * 15 + window) / 16;
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
    fn an_average_frame_is_spread_over_most_of_its_interval() {
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
        assert!(spread > FRAME / 2 && spread < FRAME);
        assert_eq!(last[0], base);
        assert!((p.slot_offset(PACING_SLOTS - 1).as_secs_f64() - last_offset).abs() < 0.002);
    }

    #[test]
    fn a_keyframe_gets_a_longer_window_and_slots_never_go_back() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        let plans = run(&mut p, t0, 100, |_| 5000);
        let key = p.plan(t0 + FRAME * 100, 15_000);
        let after = p.plan(t0 + FRAME * 101, 5000);
        let base = t0 + FRAME * 100;
        // Longer than an average frame's window, but at most MAX_STRETCH times it.
        let spread = key[PACING_SLOTS - 1] - base;
        let typical = FRAME.as_secs_f64() / PACE_FACTOR;
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
