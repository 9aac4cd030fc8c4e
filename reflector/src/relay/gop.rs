//! The GOP cache of one relayed channel: every frame since the latest video keyframe, so
//! a child or a local viewer that joins starts at a keyframe at once instead of waiting
//! for the next one (up to a GOP, often 2 s), and so a child that switches to this node
//! after its old parent failed finds the frames it missed here.

use divisor_link::{Frame, FrameFlags};

/// Bounds of one channel's cache. A GOP longer than either is not cached: joiners then
/// wait for the next keyframe, as they would without a cache.
#[derive(Clone, Copy, Debug)]
pub struct GopLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
}

impl Default for GopLimits {
    fn default() -> Self {
        // 10 s of 60 fps video with its audio, or 32 MiB (a 4 Mbit/s channel's GOP of
        // 2 s is about 1 MiB).
        GopLimits {
            max_frames: 1200,
            max_bytes: 32 << 20,
        }
    }
}

/// Frames from the latest random access point on.
#[derive(Debug, Default)]
pub struct GopCache {
    frames: Vec<Frame>,
    bytes: usize,
    /// False until a random access point has been seen (and after an overflow).
    valid: bool,
    limits: GopLimits,
}

/// Whether `frame` is where a decoder may start: a video keyframe, or any frame of a
/// channel without video.
pub fn random_access(frame: &Frame, has_video: bool) -> bool {
    if has_video {
        frame.codec.is_video() && frame.flags.contains(FrameFlags::KEYFRAME)
    } else {
        true
    }
}

/// Audio-only channels keep this many frames (any audio frame is a start point; a few
/// let a joiner start without waiting and a splice find what it missed).
const AUDIO_ONLY_KEEP: usize = 64;

impl GopCache {
    pub fn new(limits: GopLimits) -> GopCache {
        GopCache {
            limits,
            ..GopCache::default()
        }
    }

    /// Add a frame forwarded downstream.
    pub fn push(&mut self, frame: &Frame, has_video: bool) {
        if random_access(frame, has_video) && (has_video || !self.valid) {
            self.frames.clear();
            self.bytes = 0;
            self.valid = true;
        }
        if !self.valid {
            return;
        }
        if !has_video && self.frames.len() >= AUDIO_ONLY_KEEP {
            let gone = self.frames.remove(0);
            self.bytes -= gone.data.len();
        }
        self.bytes += frame.data.len();
        self.frames.push(frame.clone());
        if self.frames.len() > self.limits.max_frames || self.bytes > self.limits.max_bytes {
            self.clear();
        }
    }

    /// Forget everything (a discontinuity, an overflow); valid again at the next keyframe.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.valid = false;
    }

    /// The cached frames, oldest (the keyframe) first; empty when nothing usable is held.
    pub fn frames(&self) -> &[Frame] {
        if self.valid {
            &self.frames
        } else {
            &[]
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use divisor_link::Codec;

    fn f(codec: Codec, key: bool, dts: i64, len: usize) -> Frame {
        Frame {
            channel: 1,
            track: if codec.is_video() { 0 } else { 1 },
            codec,
            flags: if key {
                FrameFlags::KEYFRAME
            } else {
                FrameFlags::empty()
            },
            pts: dts,
            dts,
            duration: 0,
            data: Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn holds_the_latest_gop_only() {
        let mut c = GopCache::new(GopLimits::default());
        c.push(&f(Codec::H264, false, 0, 10), true);
        assert!(c.frames().is_empty(), "nothing before the first keyframe");
        c.push(&f(Codec::H264, true, 1, 10), true);
        c.push(&f(Codec::Aac, false, 1, 5), true);
        c.push(&f(Codec::H264, false, 2, 10), true);
        assert_eq!(c.frames().len(), 3);
        c.push(&f(Codec::H264, true, 3, 10), true);
        assert_eq!(c.frames().len(), 1);
        assert_eq!(c.frames()[0].dts, 3);
        assert_eq!(c.bytes(), 10);
    }

    #[test]
    fn an_overlong_gop_is_dropped_until_the_next_keyframe() {
        let mut c = GopCache::new(GopLimits {
            max_frames: 3,
            max_bytes: 1 << 20,
        });
        c.push(&f(Codec::H264, true, 0, 1), true);
        for d in 1..4 {
            c.push(&f(Codec::H264, false, d, 1), true);
        }
        assert!(c.frames().is_empty());
        c.push(&f(Codec::H264, false, 5, 1), true);
        assert!(c.frames().is_empty());
        c.push(&f(Codec::H264, true, 6, 1), true);
        assert_eq!(c.frames().len(), 1);
    }

    #[test]
    fn audio_only_keeps_a_window() {
        let mut c = GopCache::new(GopLimits::default());
        for d in 0..100 {
            c.push(&f(Codec::Opus, false, d, 2), false);
        }
        assert_eq!(c.frames().len(), AUDIO_ONLY_KEEP);
        assert_eq!(c.frames()[0].dts, 100 - AUDIO_ONLY_KEEP as i64);
    }
}
