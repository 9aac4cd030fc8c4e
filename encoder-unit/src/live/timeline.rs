//! A live channel's one media timeline, across loops, input restarts and timestamp jumps.
//!
//! Every input segment (a file played once, one connection of a network sender) has its
//! own timestamps. The channel's subscribers must see one timeline that only goes forward,
//! with audio and video measured from the same origin (so the protocol unit's RTCP sender
//! reports, which map one media clock to wall time, keep them in sync). A segment's
//! frames are shifted by one offset, common to all tracks: the segment's first frame lands
//! at the end of what was sent before (or later, at the channel's wall-clock media time,
//! after a stall), and the first frame of each track in a new segment is flagged
//! [`FrameFlags::DISCONTINUITY`].
//!
//! Sans-IO: the caller passes the wall-clock media time (`now_us`, time since the
//! channel's epoch); nothing here reads a clock.

use divisor_link::{Frame, FrameFlags};

/// A track's timestamps going back by more than this start a new segment (a sender that
/// restarted); smaller steps back are dropped as out of order.
const MAX_BACK_US: i64 = 100_000;
/// A forward jump of more than this also starts a new segment (a sender's clock jump),
/// so the channel never goes silent waiting for far-future timestamps.
const MAX_FORWARD_US: i64 = 5_000_000;

/// What [`Timeline::map`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// The frame's pts/dts are now on the channel timeline.
    Kept,
    /// The frame goes back in time within its segment; drop it.
    Dropped,
}

/// The channel's media timeline. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    clocks: Vec<u32>,
    /// Channel time (µs) where the current segment's origin lands.
    base_us: i64,
    /// Source pts (µs) of the current segment's first frame; `None` until it comes.
    origin_us: Option<i64>,
    /// Smallest channel time the next segment may start at (besides `end_us`).
    at_least_us: i64,
    /// Highest end (pts + duration) of anything mapped, µs.
    end_us: i64,
    last_dts: Vec<Option<i64>>,
    last_step: Vec<i64>,
    discontinuity: Vec<bool>,
    mapped_any: bool,
}

fn to_us(v: i64, clock: u32) -> i64 {
    (i128::from(v) * 1_000_000 / i128::from(clock.max(1))) as i64
}

fn from_us(us: i64, clock: u32) -> i64 {
    let c = i128::from(clock.max(1));
    // Round to nearest so audio and video offsets agree to within half a tick.
    ((i128::from(us) * c + 500_000 * i128::from(us.signum())) / 1_000_000) as i64
}

impl Timeline {
    /// An empty timeline: the first segment starts at channel time 0 (or later).
    pub fn new() -> Timeline {
        Timeline::default()
    }

    /// A new segment begins with tracks of `clocks` (index = track number). Its first
    /// frame lands at the end of everything mapped so far, or at `at_least_us` if that is
    /// later. Every track's first frame in it gets DISCONTINUITY (except in the channel's
    /// very first segment, which continues nothing).
    pub fn start_segment(&mut self, clocks: &[u32], at_least_us: i64) {
        let n = clocks.len();
        self.clocks = clocks.to_vec();
        self.origin_us = None;
        self.at_least_us = at_least_us;
        self.last_dts.resize(n, None);
        self.last_step.resize(n, 0);
        self.discontinuity = vec![self.mapped_any; n];
    }

    /// Channel time (µs) just after the last thing mapped.
    pub fn end_us(&self) -> i64 {
        self.end_us
    }

    /// Put `frame` (source timestamps of the current segment) on the channel timeline.
    /// `now_us` is the channel's wall-clock media time, used if the source jumps.
    pub fn map(&mut self, frame: &mut Frame, now_us: i64) -> Mapped {
        let t = usize::from(frame.track);
        if t >= self.clocks.len() {
            // A track the segment did not declare: extend with the video clock.
            self.clocks.resize(t + 1, 90_000);
            self.last_dts.resize(t + 1, None);
            self.last_step.resize(t + 1, 0);
            self.discontinuity.resize(t + 1, self.mapped_any);
        }
        let clock = self.clocks[t];
        // The segment's origin is the presentation time of its first frame (a keyframe
        // when there is video), so pts continue seamlessly across a loop point; dts of
        // reordered video may start a little before it.
        let src_us = to_us(frame.pts, clock);
        let origin = match self.origin_us {
            Some(o) => o,
            None => {
                self.base_us = self.end_us.max(self.at_least_us);
                self.origin_us = Some(src_us);
                src_us
            }
        };
        let mut offset_us = self.base_us - origin;
        let mut dts = frame.dts + from_us(offset_us, clock);
        if let Some(last) = self.last_dts[t] {
            let step_us = to_us(dts - last, clock);
            if !(-MAX_BACK_US..=MAX_FORWARD_US).contains(&step_us) {
                // The source jumped: a new segment starting with this frame.
                let clocks = self.clocks.clone();
                self.start_segment(&clocks, now_us);
                self.base_us = self.end_us.max(self.at_least_us);
                self.origin_us = Some(src_us);
                offset_us = self.base_us - src_us;
                dts = frame.dts + from_us(offset_us, clock);
            } else if dts <= last {
                return Mapped::Dropped;
            }
        }
        let shift = from_us(offset_us, clock);
        frame.pts += shift;
        frame.dts = dts;
        if let Some(last) = self.last_dts[t] {
            self.last_step[t] = dts - last;
        }
        self.last_dts[t] = Some(dts);
        let duration = if frame.duration > 0 {
            i64::from(frame.duration)
        } else {
            self.last_step[t].max(0)
        };
        self.end_us = self
            .end_us
            .max(to_us(frame.pts.max(frame.dts) + duration, clock));
        if std::mem::take(&mut self.discontinuity[t]) {
            frame.flags.insert(FrameFlags::DISCONTINUITY);
        }
        self.mapped_any = true;
        Mapped::Kept
    }

    /// Channel time (µs) of a frame's dts, for pacing.
    pub fn dts_us(&self, frame: &Frame) -> i64 {
        let clock = self
            .clocks
            .get(usize::from(frame.track))
            .copied()
            .unwrap_or(90_000);
        to_us(frame.dts, clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use divisor_link::Codec;

    fn frame(track: u8, pts: i64, dts: i64, duration: u32) -> Frame {
        Frame {
            channel: 0,
            track,
            codec: if track == 0 { Codec::H264 } else { Codec::Aac },
            flags: FrameFlags::empty(),
            pts,
            dts,
            duration,
            data: Bytes::new(),
        }
    }

    /// One pass over a 1 s "file": video 25 fps with 2 frames of reorder delay
    /// (dts starts at -2 frames), audio 48 kHz in 1024-sample frames.
    fn one_pass(tl: &mut Timeline, out: &mut Vec<Frame>) {
        let mut v = (0..25).map(|i| frame(0, i * 3600, (i - 2) * 3600, 3600));
        let mut a = (0..47).map(|i| frame(1, i * 1024, i * 1024, 1024));
        loop {
            let mut got = false;
            for f in v.next().into_iter().chain(a.next()).chain(a.next()) {
                let mut f = f;
                if tl.map(&mut f, 0) == Mapped::Kept {
                    out.push(f);
                }
                got = true;
            }
            if !got {
                break;
            }
        }
    }

    #[test]
    fn loops_keep_increasing_and_flag_the_loop_point() {
        let mut tl = Timeline::new();
        let mut out = Vec::new();
        tl.start_segment(&[90_000, 48_000], 0);
        one_pass(&mut tl, &mut out);
        let first_pass = out.len();
        tl.start_segment(&[90_000, 48_000], 0);
        one_pass(&mut tl, &mut out);
        assert_eq!(out.len(), 2 * first_pass, "nothing dropped");
        for track in 0..2u8 {
            let fs: Vec<&Frame> = out.iter().filter(|f| f.track == track).collect();
            assert!(fs.windows(2).all(|w| w[1].dts > w[0].dts), "track {track}");
            let flagged: Vec<usize> = fs
                .iter()
                .enumerate()
                .filter(|(_, f)| f.flags.contains(FrameFlags::DISCONTINUITY))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(flagged, vec![fs.len() / 2], "track {track}");
        }
        // Both tracks shifted by the same amount: the second pass's first audio and
        // first video pts agree as they did in the source.
        let second_v = out.iter().filter(|f| f.track == 0).nth(25).unwrap();
        let second_a = out.iter().filter(|f| f.track == 1).nth(47).unwrap();
        let v_us = to_us(second_v.pts, 90_000);
        let a_us = to_us(second_a.pts, 48_000);
        assert!((v_us - a_us).abs() < 1000, "{v_us} vs {a_us}");
    }

    #[test]
    fn a_restarted_sender_continues_after_a_stall() {
        let mut tl = Timeline::new();
        tl.start_segment(&[90_000], 0);
        let mut f = frame(0, 900_000, 900_000, 3600);
        tl.map(&mut f, 0);
        assert_eq!(f.dts, 0);
        // The sender restarts at pts 0 while the channel clock says 30 s.
        let mut g = frame(0, 0, 0, 3600);
        tl.start_segment(&[90_000], 30_000_000);
        tl.map(&mut g, 30_000_000);
        assert_eq!(g.dts, 30 * 90_000);
        assert!(g.flags.contains(FrameFlags::DISCONTINUITY));
        // Without a reopen, a jump back in the same segment also re-bases.
        let mut h = frame(0, 180_000, 180_000, 3600);
        tl.map(&mut h, 31_000_000);
        let mut k = frame(0, 0, 0, 3600);
        assert_eq!(tl.map(&mut k, 31_000_000), Mapped::Kept);
        assert!(k.dts > h.dts);
        assert!(k.flags.contains(FrameFlags::DISCONTINUITY));
    }
}
