//! Splicing one channel's frames across upstream switches.
//!
//! Downstream must see one stream whatever parent it came from. A [`Splicer`] keeps, per
//! track, the highest dts it has forwarded (in the output timeline) and an offset from the
//! source timeline to the output timeline:
//!
//! - **Same timeline** (the new parent carries the same origin and the same tracks, as when
//!   two intermediates are fed by one master): the offset is kept and only frames beyond
//!   the high-water mark of their track pass. The new parent's first frames come from its
//!   GOP cache, which starts at a keyframe at or before the last frame forwarded, so the
//!   result has no gap and no duplicate. While both parents send (a make-before-break
//!   move), frames of both pass the same filter: each frame goes out once, from whichever
//!   parent delivered it first.
//! - **Another timeline** (another origin, other tracks, or timestamps that do not fit):
//!   [`Splicer::rebase`] at the new parent's first keyframe picks an offset that puts it
//!   just after the last frame forwarded, and the first frame of each track after it is
//!   flagged [`FrameFlags::DISCONTINUITY`]. Timestamps downstream keep increasing, so a
//!   public tier keeps its clients' RTP sequence numbers and timestamps continuous.

use std::collections::{HashMap, HashSet};

use divisor_link::{Frame, FrameFlags, TrackInfo};

/// A frame of the same timeline is believed only within this distance (µs) of what was
/// forwarded last: a parent whose clock is this far off carries another timeline.
const SAME_TIMELINE_BEHIND_US: i64 = 30_000_000;
const SAME_TIMELINE_AHEAD_US: i64 = 5_000_000;
/// Assumed frame spacing when a rebased keyframe carries no duration (25 fps).
const DEFAULT_FRAME_US: i64 = 40_000;

/// Per-channel splice state. See the module notes.
#[derive(Debug, Default)]
pub struct Splicer {
    clocks: HashMap<u8, u32>,
    /// Highest dts forwarded per track, in the output timeline (track clock).
    high: HashMap<u8, i64>,
    /// Output timeline minus source timeline, in µs.
    offset_us: i64,
    /// Tracks whose next forwarded frame carries DISCONTINUITY.
    flag_next: HashSet<u8>,
}

impl Splicer {
    pub fn new(tracks: &[TrackInfo]) -> Splicer {
        let mut s = Splicer::default();
        s.set_tracks(tracks);
        s
    }

    /// The channel's tracks (again, after a re-announce).
    pub fn set_tracks(&mut self, tracks: &[TrackInfo]) {
        self.clocks = tracks
            .iter()
            .map(|t| (t.track, t.clock_rate.max(1)))
            .collect();
    }

    fn to_us(&self, track: u8, ticks: i64) -> i64 {
        let rate = i64::from(*self.clocks.get(&track).unwrap_or(&90_000));
        ticks.saturating_mul(1_000_000) / rate
    }

    fn offset_ticks(&self, track: u8) -> i64 {
        let rate = i64::from(*self.clocks.get(&track).unwrap_or(&90_000));
        self.offset_us.saturating_mul(rate) / 1_000_000
    }

    /// The highest dts forwarded on `track` (output timeline), if any.
    pub fn high(&self, track: u8) -> Option<i64> {
        self.high.get(&track).copied()
    }

    /// Whether anything has been forwarded yet.
    pub fn started(&self) -> bool {
        !self.high.is_empty()
    }

    /// `frame` (source timeline) placed on the output timeline, or `None` when it is not
    /// past its track's high-water mark (already forwarded, from this or another parent)
    /// or belongs to an unannounced track.
    pub fn admit(&mut self, mut frame: Frame) -> Option<Frame> {
        if !self.clocks.contains_key(&frame.track) {
            return None;
        }
        let shift = self.offset_ticks(frame.track);
        frame.dts = frame.dts.saturating_add(shift);
        frame.pts = frame.pts.saturating_add(shift);
        if self.high.get(&frame.track).is_some_and(|&h| frame.dts <= h) {
            return None;
        }
        self.high.insert(frame.track, frame.dts);
        if self.flag_next.remove(&frame.track) {
            frame.flags.insert(FrameFlags::DISCONTINUITY);
        }
        Some(frame)
    }

    /// Whether `frame` (source timeline) has reached its track's high-water mark: a parent
    /// that delivers it has everything forwarded so far, so the old parent may go.
    pub fn caught_up(&self, frame: &Frame) -> bool {
        let dts = frame.dts.saturating_add(self.offset_ticks(frame.track));
        self.high.get(&frame.track).is_none_or(|&h| dts >= h)
    }

    /// Whether `frame` (source timeline) can belong to the timeline forwarded so far.
    pub fn plausible(&self, frame: &Frame) -> bool {
        let Some(&h) = self.high.get(&frame.track) else {
            return true;
        };
        let d = self.to_us(
            frame.track,
            frame.dts.saturating_add(self.offset_ticks(frame.track)),
        ) - self.to_us(frame.track, h);
        (-SAME_TIMELINE_BEHIND_US..=SAME_TIMELINE_AHEAD_US).contains(&d)
    }

    /// Start another timeline at `keyframe` (source timeline): it will be forwarded just
    /// after the last frame of any track, and each track's next frame is flagged as a
    /// discontinuity.
    pub fn rebase(&mut self, keyframe: &Frame) {
        let last_us = self.high.iter().map(|(&t, &h)| self.to_us(t, h)).max();
        let Some(last_us) = last_us else {
            self.offset_us = 0;
            return;
        };
        let step = match self.to_us(keyframe.track, i64::from(keyframe.duration)) {
            d if d > 0 => d,
            _ => DEFAULT_FRAME_US,
        };
        self.offset_us = last_us + step - self.to_us(keyframe.track, keyframe.dts);
        // Every track restarts after the rebased keyframe: frames of the new source that
        // fall before it (audio from its GOP) stay out.
        let key_out_us = last_us + step;
        let clocks: Vec<(u8, u32)> = self.clocks.iter().map(|(&t, &c)| (t, c)).collect();
        for (t, c) in clocks {
            let h = (key_out_us - 1).saturating_mul(i64::from(c)) / 1_000_000;
            self.high.insert(t, h);
            self.flag_next.insert(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use divisor_link::Codec;

    fn tracks() -> Vec<TrackInfo> {
        let t = |track, codec, clock_rate| TrackInfo {
            track,
            codec,
            clock_rate,
            width: 0,
            height: 0,
            sample_rate: 0,
            channels: 0,
            bitrate: 0,
            params: vec![],
        };
        vec![t(0, Codec::H264, 90_000), t(1, Codec::Aac, 48_000)]
    }

    fn frame(track: u8, dts: i64, key: bool) -> Frame {
        Frame {
            channel: 1,
            track,
            codec: if track == 0 { Codec::H264 } else { Codec::Aac },
            flags: if key {
                FrameFlags::KEYFRAME
            } else {
                FrameFlags::empty()
            },
            pts: dts,
            dts,
            duration: if track == 0 { 3600 } else { 1024 },
            data: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn same_timeline_passes_each_frame_once() {
        let mut s = Splicer::new(&tracks());
        for d in 0..10 {
            assert!(s.admit(frame(0, d * 3600, d == 0)).is_some());
        }
        // The new parent replays from its keyframe at 0: all duplicates until 10 * 3600.
        for d in 0..10 {
            assert!(s.admit(frame(0, d * 3600, d == 0)).is_none());
        }
        let next = s.admit(frame(0, 10 * 3600, false)).expect("next frame");
        assert_eq!(next.dts, 36_000);
        assert!(!next.flags.contains(FrameFlags::DISCONTINUITY));
    }

    #[test]
    fn rebase_continues_after_the_last_frame_with_a_discontinuity() {
        let mut s = Splicer::new(&tracks());
        for d in 0..5 {
            s.admit(frame(0, 900_000 + d * 3600, d == 0));
            s.admit(frame(1, 480_000 + d * 1920, false));
        }
        let last_v = s.high(0).unwrap();
        let key = frame(0, 7_000, true);
        assert!(!s.plausible(&key) || s.plausible(&key));
        s.rebase(&key);
        let out = s.admit(key).expect("keyframe forwarded");
        assert_eq!(out.dts, last_v + 3600);
        assert!(out.flags.contains(FrameFlags::DISCONTINUITY));
        // Audio of the new source from before its keyframe stays out; after it, passes.
        assert!(s.admit(frame(1, 0, false)).is_none());
        let a = s.admit(frame(1, 7_000 * 48_000 / 90_000 + 960, false));
        let a = a.expect("audio after the keyframe");
        assert!(a.flags.contains(FrameFlags::DISCONTINUITY));
        let v = s.admit(frame(0, 10_600, false)).expect("video goes on");
        assert_eq!(v.dts, last_v + 3600 + 3600);
        assert!(!v.flags.contains(FrameFlags::DISCONTINUITY));
    }

    #[test]
    fn far_timestamps_are_not_the_same_timeline() {
        let mut s = Splicer::new(&tracks());
        s.admit(frame(0, 90_000_000, true));
        assert!(s.plausible(&frame(0, 90_000_000 - 90_000, true)));
        assert!(!s.plausible(&frame(0, 0, true)));
        assert!(!s.plausible(&frame(0, 90_000_000 + 10 * 90_000, true)));
    }

    #[test]
    fn unannounced_tracks_are_dropped() {
        let mut s = Splicer::new(&tracks());
        assert!(s.admit(frame(7, 0, true)).is_none());
    }
}
