//! Puts a transcoded rendition's audio back in presentation order with its video.
//!
//! Transcoding delays video (decoder frame threads, encoder) more than audio, so a
//! rendition's audio frames would leave the chain ahead of the video frames of the same
//! time. A live subscriber starts at a video keyframe and takes the audio that follows
//! it (see `live::rendition::StartGate`): audio that overtook the keyframe is lost, and
//! the first sound comes later than the first picture. [`InterleaveStage`] holds each
//! audio frame until video has reached its presentation time (or until
//! [`MAX_HOLD_US`] of audio is waiting: video may stall or stop), so what leaves the
//! chain is in presentation order across tracks.

use std::collections::VecDeque;

use divisor_link::{Frame, Message, TrackInfo};

use crate::pipeline::{Stage, StageError};

/// Audio is never held longer than this behind the video (µs of audio waiting).
pub const MAX_HOLD_US: i64 = 500_000;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct InterleaveStage {
    /// Clock rate per track number; video tracks marked.
    clocks: Vec<(u8, u32, bool)>,
    has_video: bool,
    held: VecDeque<Frame>,
    /// Highest video presentation time emitted, µs.
    video_us: Option<i64>,
}

impl InterleaveStage {
    pub fn new() -> InterleaveStage {
        InterleaveStage::default()
    }

    fn clock(&self, track: u8) -> (u32, bool) {
        self.clocks
            .iter()
            .find(|(t, _, _)| *t == track)
            .map_or((90_000, true), |&(_, c, v)| (c.max(1), v))
    }

    fn pts_us(&self, f: &Frame) -> i64 {
        let (clock, _) = self.clock(f.track);
        (i128::from(f.pts) * 1_000_000 / i128::from(clock)) as i64
    }

    /// Emit held audio that video has reached, and whatever is held too long.
    fn release(&mut self, out: &mut Vec<Message>) {
        while let Some(first) = self.held.front() {
            let first_us = self.pts_us(first);
            let reached = self.video_us.is_some_and(|v| first_us <= v);
            let newest_us = self.held.back().map_or(first_us, |b| self.pts_us(b));
            if !(reached || newest_us - first_us > MAX_HOLD_US) {
                break;
            }
            out.extend(self.held.pop_front().map(Message::Frame));
        }
    }
}

impl Stage for InterleaveStage {
    fn tracks(&mut self, input: &[TrackInfo]) -> Result<Vec<TrackInfo>, StageError> {
        self.clocks = input
            .iter()
            .map(|t| (t.track, t.clock_rate, t.codec.is_video()))
            .collect();
        self.has_video = input.iter().any(|t| t.codec.is_video());
        Ok(input.to_vec())
    }

    fn push(&mut self, frame: Frame, out: &mut Vec<Message>) -> Result<(), StageError> {
        let (_, video) = self.clock(frame.track);
        if !self.has_video {
            out.push(Message::Frame(frame));
            return Ok(());
        }
        if video {
            let us = self.pts_us(&frame);
            self.video_us = Some(self.video_us.map_or(us, |v| v.max(us)));
            out.push(Message::Frame(frame));
        } else {
            self.held.push_back(frame);
        }
        self.release(out);
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<Message>) -> Result<(), StageError> {
        out.extend(self.held.drain(..).map(Message::Frame));
        self.video_us = None;
        Ok(())
    }

    fn reset(&mut self) {
        self.held.clear();
        self.video_us = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use divisor_link::{Codec, FrameFlags};

    fn track(track: u8, codec: Codec, clock_rate: u32) -> TrackInfo {
        TrackInfo {
            track,
            codec,
            clock_rate,
            width: 0,
            height: 0,
            sample_rate: 0,
            channels: 0,
            bitrate: 0,
            params: vec![],
        }
    }

    fn frame(track: u8, codec: Codec, pts: i64) -> Frame {
        Frame {
            channel: 1,
            track,
            codec,
            flags: FrameFlags::empty(),
            pts,
            dts: pts,
            duration: 0,
            data: Bytes::new(),
        }
    }

    fn order(out: &[Message]) -> Vec<(u8, i64)> {
        out.iter()
            .filter_map(|m| match m {
                Message::Frame(f) => Some((f.track, f.pts)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn audio_waits_for_the_video_of_its_time() {
        let mut s = InterleaveStage::new();
        s.tracks(&[track(0, Codec::H264, 90_000), track(1, Codec::Opus, 48_000)])
            .unwrap();
        let mut out = Vec::new();
        // Audio at 0, 20, 40 ms arrives before the video at 0 and 40 ms.
        for pts in [0, 960, 1920] {
            s.push(frame(1, Codec::Opus, pts), &mut out).unwrap();
        }
        assert!(out.is_empty());
        s.push(frame(0, Codec::H264, 0), &mut out).unwrap();
        s.push(frame(0, Codec::H264, 3600), &mut out).unwrap();
        assert_eq!(
            order(&out),
            vec![(0, 0), (1, 0), (0, 3600), (1, 960), (1, 1920)]
        );
    }

    #[test]
    fn audio_is_not_held_for_ever() {
        let mut s = InterleaveStage::new();
        s.tracks(&[track(0, Codec::H264, 90_000), track(1, Codec::Aac, 48_000)])
            .unwrap();
        let mut out = Vec::new();
        for i in 0..40 {
            s.push(frame(1, Codec::Aac, i * 960), &mut out).unwrap();
        }
        // 780 ms of audio, no video: all but the last 500 ms went out.
        let sent = order(&out);
        assert!(!sent.is_empty() && sent.len() < 40, "{}", sent.len());
        s.flush(&mut out).unwrap();
        assert_eq!(order(&out).len(), 40);
    }

    #[test]
    fn audio_only_passes() {
        let mut s = InterleaveStage::new();
        s.tracks(&[track(0, Codec::Opus, 48_000)]).unwrap();
        let mut out = Vec::new();
        s.push(frame(0, Codec::Opus, 0), &mut out).unwrap();
        assert_eq!(out.len(), 1);
    }
}
