//! Rendition choice from the viewer's bandwidth estimate, and the RTP rewrite that hides a
//! switch from the viewer (both sans-IO; the session's task drives them).
//!
//! Browsers report their receive-side estimate in REMB packets (RTCP payload-specific
//! feedback, `goog-remb`) when the answer offers `goog-remb` and not `transport-cc`.
//! [`Adapter`] turns that stream of estimates into switch decisions over the renditions a
//! viewer's negotiated codec can play:
//!
//! - down when the estimate stays below [`Policy::down_margin`] of what the viewer is
//!   sent for [`Policy::down_after`]: to the highest rendition the estimate covers (or
//!   the lowest one). "What it is sent" is the current rendition's announced bitrate
//!   (audio included), or the measured send rate ([`SendRate`]) when that is lower: a
//!   receive-side estimator seldom reports much above what it receives, so a stream
//!   running under its announced rate would otherwise look congested. The margin is
//!   there because an uncongested estimator hovers around the incoming rate while a
//!   congested one backs off below it (each overuse cuts Chromium's AIMD estimate to
//!   0.85x of the incoming rate, and a capped link sees one cut after another). 0.7:
//!   on a free link in our tests Chromium's estimate dipped to 0.83x of what it got;
//! - up one step when it stays above the next higher rendition's bitrate times
//!   [`Policy::up_margin`] for [`Policy::up_after`];
//! - up one step, as a probe, when the estimate has been calm for
//!   [`Policy::probe_after`] (a receive-side estimate seldom climbs far above what the
//!   viewer receives, so the rule above alone would keep a viewer moved down there for
//!   good); a probe answered by a move down waits twice as long next time;
//! - never twice within [`Policy::min_interval`], so a noisy estimate cannot make the
//!   viewer flap between renditions (each switch costs a keyframe).
//!
//! [`Continuity`] keeps the viewer's RTP sequence numbers and timestamps continuous across
//! a switch: the other rendition's feed is another engine client with its own numbering,
//! so after a switch each track's next packet is re-based to follow the last one sent.
//! The new feed starts with its cached GOP, a burst of frames up to a GOP old; a receiver
//! plays by timestamps, so sent as they are they would add their age to the viewer's
//! latency at every switch (and at the start: a first join gets the same burst). So until
//! the feed reaches the live edge, frames running ahead
//! of the wall clock are pulled back to it: video frames (which depend on each other) get
//! timestamps squeezed together (the receiver decodes them and shows the newest), audio
//! packets (each stands alone) are dropped.

use std::time::{Duration, Instant};

/// How eager the adaptation is.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// How long the estimate must stay below the down threshold before going down.
    pub down_after: Duration,
    /// The down threshold, as a share of what the viewer is sent.
    pub down_margin: f64,
    /// How long the estimate must stay above the next bitrate (times the margin) before
    /// going up.
    pub up_after: Duration,
    /// Head-room asked above the next rendition's bitrate before going up to it.
    pub up_margin: f64,
    /// Least time between two switches.
    pub min_interval: Duration,
    /// How long the estimate must stay calm (at least [`Policy::probe_margin`] of what
    /// is sent) before trying the next rendition up anyway. A receive-side estimate
    /// stays near what the viewer receives, so on a lower rendition it seldom reaches the
    /// next one's bitrate however good the link: without probing, a viewer moved down
    /// would stay down. A probe that is followed by a move down within
    /// [`Policy::probe_window`] failed, and doubles the wait (up to
    /// [`Policy::probe_max`]); one that holds resets it.
    pub probe_after: Duration,
    pub probe_margin: f64,
    /// During a probe's window the estimate is still climbing from the lower rendition's
    /// rate, so the usual down rule would undo every probe: instead the probe fails only
    /// if the estimate falls below this share of what it was when the probe began (a
    /// congestion cut).
    pub probe_drop: f64,
    pub probe_window: Duration,
    pub probe_max: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            down_after: Duration::from_secs(2),
            down_margin: 0.7,
            up_after: Duration::from_secs(5),
            up_margin: 1.3,
            min_interval: Duration::from_secs(5),
            probe_after: Duration::from_secs(20),
            probe_margin: 0.9,
            probe_drop: 0.85,
            probe_window: Duration::from_secs(15),
            probe_max: Duration::from_secs(160),
        }
    }
}

/// One rendition a viewer may be moved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rung {
    pub name: String,
    /// Announced bitrate of the tracks the viewer receives (video + audio), bits/s.
    pub bitrate: u64,
}

/// A decision: move the viewer to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    pub from: String,
    pub to: String,
    /// The estimate that decided it, bits/s.
    pub estimate: u64,
}

/// The adaptation state of one viewer.
#[derive(Clone, Debug)]
pub struct Adapter {
    /// Ascending by bitrate.
    rungs: Vec<Rung>,
    current: usize,
    policy: Policy,
    below_since: Option<Instant>,
    above_since: Option<Instant>,
    last_switch: Option<Instant>,
    /// Measured send rate to the viewer, bits/s, when known.
    sending: Option<u64>,
    /// Since when the estimate has been calm (see [`Policy::probe_after`]).
    calm_since: Option<Instant>,
    /// The wait before the next probe (grows after failed probes).
    probe_wait: Duration,
    /// When the last probe up was made and the estimate then, until it is judged.
    probed_at: Option<Instant>,
    probe_estimate: u64,
}

impl Adapter {
    /// An adapter over `rungs` (renditions with an unknown bitrate, 0, are left out),
    /// starting on `current`. `None` when there is nothing to choose between, or
    /// `current` is not among them.
    pub fn new(mut rungs: Vec<Rung>, current: &str, policy: Policy) -> Option<Adapter> {
        rungs.retain(|r| r.bitrate > 0);
        rungs.sort_by(|a, b| a.bitrate.cmp(&b.bitrate).then(a.name.cmp(&b.name)));
        rungs.dedup_by(|a, b| a.name == b.name);
        if rungs.len() < 2 {
            return None;
        }
        let current = rungs.iter().position(|r| r.name == current)?;
        Some(Adapter {
            rungs,
            current,
            below_since: None,
            above_since: None,
            last_switch: None,
            sending: None,
            calm_since: None,
            probe_wait: policy.probe_after,
            probed_at: None,
            probe_estimate: 0,
            policy,
        })
    }

    /// The rendition the viewer is on.
    pub fn current(&self) -> &Rung {
        &self.rungs[self.current]
    }

    /// The renditions, ascending by bitrate.
    pub fn rungs(&self) -> &[Rung] {
        &self.rungs
    }

    /// What the viewer is being sent now, bits/s, as measured (`None`: not known yet).
    pub fn set_sending(&mut self, bits_per_s: Option<u64>) {
        self.sending = bits_per_s.filter(|b| *b > 0);
    }

    /// Take one estimate (bits/s) received at `now`; returns a switch to make, if any.
    /// The caller makes it (or, if it cannot, calls [`Adapter::failed`]).
    pub fn on_estimate(&mut self, estimate: u64, now: Instant) -> Option<Switch> {
        let cur = self.rungs[self.current].bitrate;
        let sent = self.sending.map_or(cur, |s| s.min(cur));
        let down_below = sent as f64 * self.policy.down_margin;
        let may_switch = self
            .last_switch
            .is_none_or(|t| now.saturating_duration_since(t) >= self.policy.min_interval);
        // A probe that held for its window succeeded: the next one waits the base time.
        if self
            .probed_at
            .is_some_and(|t| now.saturating_duration_since(t) > self.policy.probe_window)
        {
            self.probed_at = None;
            self.probe_wait = self.policy.probe_after;
        }
        let down_below = if self.probed_at.is_some() {
            self.probe_estimate as f64 * self.policy.probe_drop
        } else {
            down_below
        };
        if (estimate as f64) < down_below {
            self.above_since = None;
            self.calm_since = None;
            let since = *self.below_since.get_or_insert(now);
            if self.current > 0
                && may_switch
                && now.saturating_duration_since(since) >= self.policy.down_after
            {
                if self.probed_at.take().is_some() {
                    // Moved down again soon after a probe: the link is still short.
                    self.probe_wait = (self.probe_wait * 2).min(self.policy.probe_max);
                }
                // The highest rendition the estimate covers, else the lowest.
                let to = self.rungs[..self.current]
                    .iter()
                    .rposition(|r| r.bitrate <= estimate)
                    .unwrap_or(0);
                return Some(self.switch_to(to, estimate, now));
            }
            return None;
        }
        self.below_since = None;
        let Some(next) = self.rungs.get(self.current + 1) else {
            self.above_since = None;
            return None;
        };
        if (estimate as f64) < next.bitrate as f64 * self.policy.up_margin {
            self.above_since = None;
            // Not enough to go up on the estimate: probe once it has been calm long enough.
            if (estimate as f64) < sent as f64 * self.policy.probe_margin {
                self.calm_since = None;
                return None;
            }
            let calm = *self.calm_since.get_or_insert(now);
            if may_switch && now.saturating_duration_since(calm) >= self.probe_wait {
                self.probed_at = Some(now);
                self.probe_estimate = estimate;
                return Some(self.switch_to(self.current + 1, estimate, now));
            }
            return None;
        }
        let since = *self.above_since.get_or_insert(now);
        if may_switch && now.saturating_duration_since(since) >= self.policy.up_after {
            return Some(self.switch_to(self.current + 1, estimate, now));
        }
        None
    }

    /// The switch last decided could not be made: stay on `name` (the rendition the viewer
    /// is still on); the interval still applies before the next try.
    pub fn failed(&mut self, name: &str) {
        if let Some(k) = self.rungs.iter().position(|r| r.name == name) {
            self.current = k;
        }
    }

    fn switch_to(&mut self, to: usize, estimate: u64, now: Instant) -> Switch {
        let from = self.rungs[self.current].name.clone();
        self.current = to;
        self.below_since = None;
        self.above_since = None;
        self.calm_since = None;
        self.last_switch = Some(now);
        Switch {
            from,
            to: self.rungs[to].name.clone(),
            estimate,
        }
    }
}

/// A viewer's send rate from a running byte count: bits/s over the last
/// [`SendRate::WINDOW`] or more (`None` until that much has been seen).
#[derive(Clone, Debug, Default)]
pub struct SendRate {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl SendRate {
    /// Shortest span a rate is given over (a GOP's keyframe would skew a shorter one).
    pub const WINDOW: Duration = Duration::from_secs(2);

    /// Add the byte count `total` seen at `now`; returns the rate over the samples kept.
    pub fn sample(&mut self, total: u64, now: Instant) -> Option<u64> {
        self.samples.push_back((now, total));
        // Keep one sample older than the window, so the span covers it.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= Self::WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, b0) = *self.samples.front()?;
        let span = now.saturating_duration_since(t0);
        if span < Self::WINDOW {
            return None;
        }
        Some((total.saturating_sub(b0) as f64 * 8.0 / span.as_secs_f64()) as u64)
    }
}

/// How a track catches up with the live edge after a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Frames depend on each other (video): keep them all, squeeze their timestamps.
    Squeeze,
    /// Packets stand alone (audio): drop those running ahead.
    Drop,
}

/// How far ahead of the wall clock a track may run after a switch before it is pulled
/// back (arrival jitter of live frames stays under it).
const AHEAD_TOLERANCE: Duration = Duration::from_millis(30);
/// The catch-up ends once nothing ran ahead for this long (the burst is over).
const CATCH_UP_QUIET: Duration = Duration::from_secs(1);
/// The catch-up ends this long after a switch whatever happens.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// Per track: the offsets that make the RTP numbering continuous across switches.
#[derive(Clone, Debug)]
struct TrackMap {
    clock_rate: u32,
    catch_up: CatchUp,
    /// While catching up: the first packet after the switch, as sent (timestamp) and when,
    /// and when a packet was last pulled back.
    anchor: Option<(u32, Instant, Instant)>,
    /// The timestamp of the last packet seen from the feed (a new one starts a frame).
    last_in_ts: Option<u32>,
    seq_off: u16,
    ts_off: u32,
    /// Last (sequence number, timestamp) sent and when.
    last: Option<(u16, u32, Instant)>,
    /// The next packet starts a new feed: re-base on it.
    rebase: bool,
}

/// Keeps each track's RTP sequence numbers and timestamps continuous while its packets
/// come from one feed, then another.
#[derive(Clone, Debug)]
pub struct Continuity {
    tracks: Vec<TrackMap>,
}

impl Continuity {
    /// One entry per track: its RTP clock rate and how it catches up after a switch.
    pub fn new(tracks: &[(u32, CatchUp)]) -> Continuity {
        Continuity {
            tracks: tracks
                .iter()
                .map(|&(clock_rate, catch_up)| TrackMap {
                    clock_rate: clock_rate.max(1),
                    catch_up,
                    anchor: None,
                    last_in_ts: None,
                    seq_off: 0,
                    ts_off: 0,
                    last: None,
                    // The first feed starts with its GOP burst too: catch up on it.
                    rebase: true,
                })
                .collect(),
        }
    }

    /// The packets to come are from another feed: each track's next packet continues
    /// right after its last one (sequence number + 1, timestamp advanced by the wall
    /// time since, at least 10 ms).
    pub fn rebase(&mut self) {
        for t in &mut self.tracks {
            t.rebase = true;
        }
    }

    /// The (sequence number, timestamp) to send for a packet of `track` that came with
    /// `seq`, `ts`; `None`: drop it (an audio packet of a switch's burst). Unknown tracks
    /// pass unchanged.
    pub fn map(&mut self, track: usize, seq: u16, ts: u32, now: Instant) -> Option<(u16, u32)> {
        let Some(t) = self.tracks.get_mut(track) else {
            return Some((seq, ts));
        };
        let prev_in_ts = t.last_in_ts.replace(ts);
        let new_frame = prev_in_ts != Some(ts);
        if t.rebase {
            t.rebase = false;
            if let Some((last_seq, last_ts, at)) = t.last {
                let gap = now
                    .saturating_duration_since(at)
                    .max(Duration::from_millis(10));
                let want_ts = last_ts.wrapping_add(t.ticks(gap));
                t.seq_off = last_seq.wrapping_add(1).wrapping_sub(seq);
                t.ts_off = want_ts.wrapping_sub(ts);
                t.anchor = Some((want_ts, now, now));
            } else {
                // The viewer's first packet: its own numbering, anchored at the wall clock.
                t.anchor = Some((ts, now, now));
            }
        } else if let Some((anchor_ts, anchor_at, pulled_at)) = t.anchor.filter(|_| new_frame) {
            // Catching up: where the wall clock says this frame should be.
            let elapsed = now.saturating_duration_since(anchor_at);
            let live = anchor_ts.wrapping_add(t.ticks(elapsed));
            let normal = ts.wrapping_add(t.ts_off);
            let ahead = normal.wrapping_sub(live) as i32;
            if ahead > t.ticks(AHEAD_TOLERANCE) as i32 {
                t.anchor = Some((anchor_ts, anchor_at, now));
                match t.catch_up {
                    CatchUp::Squeeze => {
                        // At the wall clock, and never at or before the last timestamp sent.
                        let floor = t
                            .last
                            .map_or(live, |(_, last_ts, _)| last_ts.wrapping_add(1));
                        let pulled = if (live.wrapping_sub(floor) as i32) < 0 {
                            floor
                        } else {
                            live
                        };
                        t.ts_off = pulled.wrapping_sub(ts);
                    }
                    CatchUp::Drop => {
                        // The next packet takes this one's place: its sequence number, and
                        // its timestamp (the time it covered is skipped).
                        let covered = prev_in_ts.map_or(0, |p| ts.wrapping_sub(p));
                        if (covered as i32) > 0 {
                            t.ts_off = t.ts_off.wrapping_sub(covered);
                        }
                        t.seq_off = t.seq_off.wrapping_sub(1);
                        return None;
                    }
                }
            } else if elapsed >= CATCH_UP_LIMIT
                || now.saturating_duration_since(pulled_at) >= CATCH_UP_QUIET
            {
                t.anchor = None;
            }
        }
        let out = (seq.wrapping_add(t.seq_off), ts.wrapping_add(t.ts_off));
        // Keep the newest packet as the reference (a retransmitted or reordered older
        // sequence number does not move it back).
        let newer = t
            .last
            .is_none_or(|(s, _, _)| out.0.wrapping_sub(s) < 0x8000 && out.0 != s);
        if newer {
            t.last = Some((out.0, out.1, now));
        }
        Some(out)
    }
}

impl TrackMap {
    /// `d` in this track's clock ticks.
    fn ticks(&self, d: Duration) -> u32 {
        (d.as_secs_f64() * f64::from(self.clock_rate)) as u64 as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rungs() -> Vec<Rung> {
        vec![
            Rung {
                name: "high".into(),
                bitrate: 2_000_000,
            },
            Rung {
                name: "low".into(),
                bitrate: 300_000,
            },
            Rung {
                name: "mid".into(),
                bitrate: 800_000,
            },
        ]
    }

    fn s(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_to_choose_from_means_no_adapter() {
        assert!(Adapter::new(vec![], "a", Policy::default()).is_none());
        let one = vec![Rung {
            name: "a".into(),
            bitrate: 1,
        }];
        assert!(Adapter::new(one, "a", Policy::default()).is_none());
        // Unknown bitrates do not count.
        let unknown = vec![
            Rung {
                name: "a".into(),
                bitrate: 1000,
            },
            Rung {
                name: "b".into(),
                bitrate: 0,
            },
        ];
        assert!(Adapter::new(unknown, "a", Policy::default()).is_none());
        assert!(Adapter::new(rungs(), "nope", Policy::default()).is_none());
        let a = Adapter::new(rungs(), "mid", Policy::default()).unwrap();
        let names: Vec<&str> = a.rungs().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["low", "mid", "high"]);
        assert_eq!(a.current().name, "mid");
    }

    #[test]
    fn goes_down_only_after_the_estimate_stays_low() {
        let t0 = Instant::now();
        let mut a = Adapter::new(rungs(), "high", Policy::default()).unwrap();
        // Below high (2 Mb/s) but enough for mid.
        assert_eq!(a.on_estimate(1_000_000, t0), None);
        assert_eq!(a.on_estimate(1_000_000, t0 + s(1000)), None);
        // One good estimate resets the clock.
        assert_eq!(a.on_estimate(2_500_000, t0 + s(1500)), None);
        assert_eq!(a.on_estimate(1_000_000, t0 + s(2000)), None);
        assert_eq!(a.on_estimate(1_000_000, t0 + s(3999)), None);
        let sw = a.on_estimate(1_000_000, t0 + s(4000)).unwrap();
        assert_eq!(
            sw,
            Switch {
                from: "high".into(),
                to: "mid".into(),
                estimate: 1_000_000
            }
        );
        assert_eq!(a.current().name, "mid");
    }

    #[test]
    fn an_estimate_near_what_is_really_sent_is_not_congestion() {
        // High announces 2 Mb/s but really sends 1.5 Mb/s; the receiver estimates about
        // what it gets. Not congested: it stays, however long.
        let t0 = Instant::now();
        let mut a = Adapter::new(rungs(), "high", Policy::default()).unwrap();
        a.set_sending(Some(1_500_000));
        for k in 0..20 {
            assert_eq!(a.on_estimate(1_450_000, t0 + s(k * 1000)), None);
        }
        // Even 0.8x of it is not (one overuse cut on a free link).
        for k in 0..5 {
            assert_eq!(a.on_estimate(1_200_000, t0 + s(21_000 + k * 1000)), None);
        }
        // Backing off well under what it gets is: down after the hold.
        a.on_estimate(1_000_000, t0 + s(30_000));
        assert_eq!(
            a.on_estimate(1_000_000, t0 + s(32_000)).map(|sw| sw.to),
            Some("mid".to_string())
        );
    }

    #[test]
    fn a_calm_viewer_probes_up_and_waits_longer_after_a_failed_probe() {
        let t0 = Instant::now();
        let policy = Policy::default();
        let mut a = Adapter::new(rungs(), "low", policy.clone()).unwrap();
        // On low, sent 250 kb/s, estimate about that: never enough for mid x 1.3, but calm.
        a.set_sending(Some(250_000));
        let at = |ms: u64| t0 + s(ms);
        for k in 0..20 {
            assert_eq!(a.on_estimate(260_000, at(k * 1000)), None, "{k}");
        }
        let probe = a.on_estimate(260_000, at(20_000)).unwrap();
        assert_eq!(probe.to, "mid");
        // On mid the estimate climbs from low's rate: not a reason to go down.
        a.set_sending(Some(800_000));
        for (k, e) in [280_000, 300_000, 320_000, 340_000].iter().enumerate() {
            assert_eq!(a.on_estimate(*e, at(21_000 + k as u64 * 1000)), None);
        }
        // The link cannot carry mid: the estimate is cut under 0.85x of 260k, and the
        // viewer goes down again within the probe window.
        a.on_estimate(200_000, at(26_000));
        assert_eq!(a.on_estimate(200_000, at(28_000)).unwrap().to, "low");
        // The next probe waits twice as long: 40 s of calm.
        a.set_sending(Some(250_000));
        for k in 0..40 {
            assert_eq!(a.on_estimate(260_000, at(29_000 + k * 1000)), None, "{k}");
        }
        assert_eq!(a.on_estimate(260_000, at(69_000)).unwrap().to, "mid");
        // This one holds past the window: the wait is back to 20 s on the next rung.
        a.set_sending(Some(800_000));
        for k in 0..20 {
            assert_eq!(a.on_estimate(780_000, at(70_000 + k * 1000)), None, "{k}");
        }
        assert_eq!(a.on_estimate(780_000, at(90_000)).unwrap().to, "high");
        // Restless estimates (under 0.9x of what is sent) never probe.
        let mut b = Adapter::new(rungs(), "low", policy).unwrap();
        b.set_sending(Some(250_000));
        for k in 0..60 {
            assert_eq!(b.on_estimate(200_000, at(k * 1000)), None, "{k}");
        }
    }

    #[test]
    fn send_rate_needs_the_window_and_follows_the_count() {
        let t0 = Instant::now();
        let mut r = SendRate::default();
        assert_eq!(r.sample(0, t0), None);
        assert_eq!(r.sample(100_000, t0 + s(1000)), None);
        // 250 kB in 2 s = 1 Mb/s.
        assert_eq!(r.sample(250_000, t0 + s(2000)), Some(1_000_000));
        // Older samples leave: the rate follows a slowdown.
        for k in 3..=6 {
            r.sample(250_000 + (k - 2) * 25_000, t0 + s(k * 1000));
        }
        assert_eq!(r.sample(375_000, t0 + s(7000)), Some(200_000));
    }

    #[test]
    fn a_deep_drop_skips_rungs_and_bottoms_out_at_the_lowest() {
        let t0 = Instant::now();
        let mut a = Adapter::new(rungs(), "high", Policy::default()).unwrap();
        a.on_estimate(100_000, t0);
        let sw = a.on_estimate(100_000, t0 + s(2000)).unwrap();
        assert_eq!(sw.to, "low");
        // Already at the bottom: stays, however low.
        for k in 0..20 {
            assert_eq!(a.on_estimate(50_000, t0 + s(10_000 + k * 1000)), None);
        }
        assert_eq!(a.current().name, "low");
    }

    #[test]
    fn goes_up_one_step_with_margin_after_the_hold() {
        let t0 = Instant::now();
        let mut a = Adapter::new(rungs(), "low", Policy::default()).unwrap();
        // Above mid but not by 1.3x (1.04 Mb/s): never up.
        for k in 0..10 {
            assert_eq!(a.on_estimate(1_000_000, t0 + s(k * 1000)), None);
        }
        // Plenty for high too, but up goes one step at a time, after 5 s.
        let t1 = t0 + s(20_000);
        for k in 0..5 {
            assert_eq!(a.on_estimate(10_000_000, t1 + s(k * 1000)), None);
        }
        let sw = a.on_estimate(10_000_000, t1 + s(5000)).unwrap();
        assert_eq!((sw.from.as_str(), sw.to.as_str()), ("low", "mid"));
        // The hold restarts after a switch: high 5 s later, not sooner.
        assert_eq!(a.on_estimate(10_000_000, t1 + s(6000)), None);
        assert_eq!(a.on_estimate(10_000_000, t1 + s(10_999)), None);
        let sw = a.on_estimate(10_000_000, t1 + s(11_000)).unwrap();
        assert_eq!(sw.to, "high");
        // At the top: nothing further.
        assert_eq!(a.on_estimate(100_000_000, t1 + s(30_000)), None);
    }

    #[test]
    fn never_switches_twice_within_the_interval() {
        let t0 = Instant::now();
        let policy = Policy {
            down_after: s(1000),
            up_after: s(1000),
            min_interval: s(8000),
            ..Policy::default()
        };
        let mut a = Adapter::new(rungs(), "mid", policy).unwrap();
        a.on_estimate(10_000_000, t0);
        assert_eq!(a.on_estimate(10_000_000, t0 + s(1000)).unwrap().to, "high");
        // The estimate collapses at once, and stays down: only 8 s after the last switch.
        a.on_estimate(100_000, t0 + s(1500));
        for k in 2..9 {
            assert_eq!(a.on_estimate(100_000, t0 + s(k * 1000)), None, "at {k} s");
        }
        assert_eq!(a.on_estimate(100_000, t0 + s(9000)).unwrap().to, "low");
    }

    #[test]
    fn estimate_exactly_at_the_bitrate_is_not_below() {
        let t0 = Instant::now();
        let mut a = Adapter::new(rungs(), "mid", Policy::default()).unwrap();
        for k in 0..10 {
            assert_eq!(a.on_estimate(800_000, t0 + s(k * 1000)), None);
        }
    }

    #[test]
    fn a_failed_switch_leaves_the_viewer_where_it_was() {
        let t0 = Instant::now();
        let mut a = Adapter::new(rungs(), "high", Policy::default()).unwrap();
        a.on_estimate(500_000, t0);
        let sw = a.on_estimate(500_000, t0 + s(2000)).unwrap();
        assert_eq!(sw.to, "low");
        a.failed(&sw.from);
        assert_eq!(a.current().name, "high");
        // Tried again after the interval.
        a.on_estimate(500_000, t0 + s(3000));
        assert_eq!(a.on_estimate(500_000, t0 + s(6999)), None);
        assert_eq!(a.on_estimate(500_000, t0 + s(7000)).unwrap().to, "low");
    }

    #[test]
    fn continuity_rebases_each_track_on_its_next_packet() {
        let t0 = Instant::now();
        let mut c = Continuity::new(&[(90_000, CatchUp::Squeeze), (48_000, CatchUp::Drop)]);
        // Feed 1 passes unchanged.
        assert_eq!(c.map(0, 100, 1000, t0), Some((100, 1000)));
        assert_eq!(c.map(0, 101, 4000, t0 + s(33)), Some((101, 4000)));
        assert_eq!(c.map(1, 7, 960, t0), Some((7, 960)));
        c.rebase();
        // Feed 2 numbers from elsewhere (with wrap): video follows on at 101 + 1, its
        // timestamp 100 ms (9000 ticks) after the last one.
        let t1 = t0 + s(133);
        assert_eq!(c.map(0, 65_535, 4_294_967_000, t1), Some((102, 13_000)));
        assert_eq!(c.map(0, 0, 4_294_967_000, t1), Some((103, 13_000)));
        // A gap in feed 2 stays a gap (the viewer may NACK it); a frame in step with the
        // wall clock keeps its timestamp.
        assert_eq!(
            c.map(0, 3, 4_294_967_000u32.wrapping_add(3000), t1 + s(33)),
            Some((106, 16_000))
        );
        // Audio re-bases on its own first packet, at least 10 ms on.
        assert_eq!(c.map(1, 5000, 0, t0), Some((8, 960 + 480)));
        // Unknown track: unchanged.
        assert_eq!(c.map(9, 1, 2, t1), Some((1, 2)));
    }

    #[test]
    fn a_switch_burst_is_pulled_back_to_the_wall_clock() {
        let t0 = Instant::now();
        let mut c = Continuity::new(&[(90_000, CatchUp::Squeeze), (48_000, CatchUp::Drop)]);
        for k in 0..10u16 {
            c.map(0, k, u32::from(k) * 3600, t0 + s(u64::from(k) * 40));
            c.map(1, k, u32::from(k) * 960, t0 + s(u64::from(k) * 20));
        }
        // Last sent: video seq 9 ts 32400 at 360 ms; audio seq 9 ts 8640 at 180 ms.
        c.rebase();
        let t1 = t0 + s(400);
        // The new feed's GOP burst: 25 video frames (1 s) and 50 audio packets at once.
        let mut video = Vec::new();
        for k in 0..25u32 {
            for part in 0..2u16 {
                let seq = (1000 + k * 2) as u16 + part;
                video.push(c.map(0, seq, 500_000 + k * 3600, t1).unwrap());
            }
        }
        let mut audio = Vec::new();
        for k in 0..50u32 {
            audio.push(c.map(1, 2000 + k as u16, 70_000 + k * 960, t1));
        }
        // Video: every packet kept, numbered on, the first at the wall clock (40 ms after
        // the last), the rest squeezed just after it instead of 1 s ahead.
        let seqs: Vec<u16> = video.iter().map(|v| v.0).collect();
        assert_eq!(seqs, (10..60).collect::<Vec<u16>>());
        assert_eq!(video[0].1, 32_400 + 3600);
        assert_eq!(video[1].1, video[0].1, "one frame, one timestamp");
        let last = video.last().unwrap().1;
        assert!(last > video[0].1 && last - video[0].1 < 100, "{video:?}");
        // Audio: the first packets kept up to the tolerance (30 ms ahead), the rest of
        // the burst dropped.
        assert_eq!(audio[0], Some((10, 8640 + 220 * 48)));
        assert_eq!(audio[1], Some((11, 8640 + 220 * 48 + 960)));
        assert!(audio[2..].iter().all(|a| a.is_none()), "{audio:?}");
        // Live again: frames in step with the wall clock pass at their own spacing,
        // audio numbered right after the last packet kept.
        let v1 = c.map(0, 1050, 500_000 + 25 * 3600, t1 + s(40)).unwrap();
        assert_eq!(v1.0, 60);
        assert!(v1.1 > last, "{v1:?} after {last}");
        let v2 = c.map(0, 1051, 500_000 + 26 * 3600, t1 + s(80)).unwrap();
        assert_eq!(v2, (61, v1.1 + 3600));
        let a1 = c.map(1, 2050, 70_000 + 50 * 960, t1 + s(20)).unwrap();
        assert_eq!(a1, (12, 8640 + 220 * 48 + 2 * 960));
        let a2 = c.map(1, 2051, 70_000 + 51 * 960, t1 + s(40)).unwrap();
        assert_eq!(a2, (13, a1.1 + 960));
    }

    #[test]
    fn a_first_join_burst_is_pulled_back_to_the_wall_clock() {
        let t0 = Instant::now();
        let mut c = Continuity::new(&[(90_000, CatchUp::Squeeze), (48_000, CatchUp::Drop)]);
        // The GOP cache (25 frames, 1 s, and 50 audio packets) arrives at once.
        let video: Vec<(u16, u32)> = (0..25u32)
            .map(|k| c.map(0, 300 + k as u16, 10_000 + k * 3600, t0).unwrap())
            .collect();
        let audio: Vec<Option<(u16, u32)>> = (0..50u32)
            .map(|k| c.map(1, 40 + k as u16, 5000 + k * 960, t0))
            .collect();
        // Video keeps its own numbering and first timestamp; the rest of the burst is
        // squeezed just after it instead of running up to 1 s ahead of the wall clock.
        assert_eq!(video[0], (300, 10_000));
        assert_eq!(video[24].0, 324);
        assert!(
            video[24].1 > 10_000 && video[24].1 - 10_000 < 100,
            "{video:?}"
        );
        // Audio: the packets within the tolerance, the rest of the burst dropped.
        assert_eq!(audio[0], Some((40, 5000)));
        assert_eq!(audio[1], Some((41, 5960)));
        assert!(audio[2..].iter().all(|a| a.is_none()), "{audio:?}");
        // Then live frames follow at their own spacing.
        let v = c.map(0, 325, 10_000 + 25 * 3600, t0 + s(40)).unwrap();
        assert_eq!(v.0, 325);
        assert!(v.1 > video[24].1);
        assert_eq!(
            c.map(0, 326, 10_000 + 26 * 3600, t0 + s(80)).unwrap(),
            (326, v.1 + 3600)
        );
    }

    #[test]
    fn continuity_ignores_old_packets_as_reference() {
        let t0 = Instant::now();
        let mut c = Continuity::new(&[(90_000, CatchUp::Squeeze)]);
        c.map(0, 10, 100, t0);
        c.map(0, 12, 300, t0);
        c.map(0, 11, 200, t0); // retransmission order
        c.rebase();
        assert_eq!(c.map(0, 500, 0, t0).unwrap().0, 13);
    }
}
