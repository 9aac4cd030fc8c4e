//! The processing chain between a source and the link: transcode, then encrypt.
//!
//! Every step is a [`Stage`]: frames in, messages out (frames, and for encryption the
//! content keys that must reach the protocol unit before the frames they protect). A VoD
//! channel worker and a live channel's rendition both run a [`Chain`] of stages, so the
//! same code serves both. Stages are synchronous and owned by one thread; they never touch
//! a socket or a clock.

use divisor_link::{Frame, Message, TrackInfo};

/// Why a stage could not process a frame. The channel reports it and goes on or stops,
/// depending on the caller; it never panics.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The input could not be decoded (corrupt bitstream, unsupported profile...).
    #[error("decoding {what} failed: {reason}")]
    Decode { what: String, reason: String },
    /// The encoder refused or failed.
    #[error("encoding {what} failed: {reason}")]
    Encode { what: String, reason: String },
    /// The stage's configuration cannot apply to this input (a ladder rung above the
    /// source, a codec the stage does not take).
    #[error("{0}")]
    Unsupported(String),
    /// Encryption failed (bad key length, ...).
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// One step of the chain.
pub trait Stage: Send {
    /// The tracks this stage outputs, given the tracks it receives (what the channel's
    /// Announce will say). Called once before the first frame, and again after a
    /// [`Stage::reset`] if the source changed.
    fn tracks(&mut self, input: &[TrackInfo]) -> Result<Vec<TrackInfo>, StageError>;

    /// Process one frame; append what results to `out` (zero, one or more messages: an
    /// encoder may hold frames back for reordering).
    fn push(&mut self, frame: Frame, out: &mut Vec<Message>) -> Result<(), StageError>;

    /// The source ended (or is about to jump): emit everything held back.
    fn flush(&mut self, out: &mut Vec<Message>) -> Result<(), StageError>;

    /// Drop everything held back without emitting it (a seek); the next frame pushed
    /// starts a new, independent run, beginning with a keyframe.
    fn reset(&mut self);

    /// Messages the protocol unit needs before the channel's Announce (a content key, so it
    /// knows at DESCRIBE time that the channel is encrypted). Their channel id is 0; the
    /// caller addresses them. The default has none.
    fn prelude(&mut self, _out: &mut Vec<Message>) {}

    /// A client asked for a keyframe (PLI, late joiner): make the next output frame of
    /// video track `track` a keyframe if the stage can. The default does nothing.
    fn request_keyframe(&mut self, _track: u8) {}
}

/// Stages run in order; what one emits as [`Message::Frame`] feeds the next, other
/// messages pass straight to the output.
#[derive(Default)]
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    scratch: Vec<Message>,
}

impl Chain {
    /// A chain that passes frames through unchanged.
    pub fn passthrough() -> Chain {
        Chain::default()
    }

    /// Append a stage at the end.
    pub fn then(mut self, stage: Box<dyn Stage>) -> Chain {
        self.stages.push(stage);
        self
    }

    /// Whether there is no stage (frames pass unchanged).
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// The tracks at the end of the chain.
    pub fn tracks(&mut self, input: &[TrackInfo]) -> Result<Vec<TrackInfo>, StageError> {
        let mut tracks = input.to_vec();
        for s in &mut self.stages {
            tracks = s.tracks(&tracks)?;
        }
        Ok(tracks)
    }

    /// Run `frame` through every stage, appending the results to `out`.
    pub fn push(&mut self, frame: Frame, out: &mut Vec<Message>) -> Result<(), StageError> {
        self.run(Some(frame), out)
    }

    /// Flush every stage in order (what the first flushes goes through the rest).
    pub fn flush(&mut self, out: &mut Vec<Message>) -> Result<(), StageError> {
        self.run(None, out)
    }

    /// Reset every stage.
    pub fn reset(&mut self) {
        for s in &mut self.stages {
            s.reset();
        }
    }

    /// What every stage needs sent before the Announce (see [`Stage::prelude`]).
    pub fn prelude(&mut self, out: &mut Vec<Message>) {
        for s in &mut self.stages {
            s.prelude(out);
        }
    }

    /// Pass a keyframe request to every stage.
    pub fn request_keyframe(&mut self, track: u8) {
        for s in &mut self.stages {
            s.request_keyframe(track);
        }
    }

    fn run(&mut self, frame: Option<Frame>, out: &mut Vec<Message>) -> Result<(), StageError> {
        let flushing = frame.is_none();
        let mut current: Vec<Message> = frame.map(Message::Frame).into_iter().collect();
        for stage in &mut self.stages {
            self.scratch.clear();
            for msg in current.drain(..) {
                match msg {
                    Message::Frame(f) => stage.push(f, &mut self.scratch)?,
                    other => self.scratch.push(other),
                }
            }
            if flushing {
                stage.flush(&mut self.scratch)?;
            }
            std::mem::swap(&mut current, &mut self.scratch);
        }
        out.append(&mut current);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use divisor_link::{Codec, FrameFlags};

    /// Doubles each frame and holds the last one back until flush.
    struct Echo {
        held: Option<Frame>,
    }
    impl Stage for Echo {
        fn tracks(&mut self, input: &[TrackInfo]) -> Result<Vec<TrackInfo>, StageError> {
            Ok(input.to_vec())
        }
        fn push(&mut self, frame: Frame, out: &mut Vec<Message>) -> Result<(), StageError> {
            if let Some(h) = self.held.replace(frame.clone()) {
                out.push(Message::Frame(h));
            }
            out.push(Message::Frame(frame));
            Ok(())
        }
        fn flush(&mut self, out: &mut Vec<Message>) -> Result<(), StageError> {
            out.extend(self.held.take().map(Message::Frame));
            Ok(())
        }
        fn reset(&mut self) {
            self.held = None;
        }
    }

    fn frame(pts: i64) -> Frame {
        Frame {
            channel: 1,
            track: 0,
            codec: Codec::H264,
            flags: FrameFlags::empty(),
            pts,
            dts: pts,
            duration: 0,
            data: Bytes::new(),
        }
    }

    #[test]
    fn empty_chain_passes_through() {
        let mut c = Chain::passthrough();
        let mut out = Vec::new();
        c.push(frame(1), &mut out).unwrap();
        c.flush(&mut out).unwrap();
        assert_eq!(out, vec![Message::Frame(frame(1))]);
    }

    #[test]
    fn flush_of_first_stage_feeds_the_second() {
        let mut c = Chain::passthrough()
            .then(Box::new(Echo { held: None }))
            .then(Box::new(Echo { held: None }));
        let mut out = Vec::new();
        c.push(frame(1), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.clear();
        c.flush(&mut out).unwrap();
        // Stage 1 flushes frame 1; stage 2 sees it (held: frame 1 -> emits held + frame 1),
        // then flushes its own held frame.
        assert_eq!(out.len(), 3);
    }
}
