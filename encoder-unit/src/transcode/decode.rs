//! H.264 decoding through libavcodec: link frames (Annex B, SPS/PPS in band) in, raw
//! pictures out in presentation order, with their pts in the 90 kHz track clock.

use ffmpeg::{codec, decoder, frame, Packet, Rational};
use ffmpeg_next as ffmpeg;

use crate::pipeline::StageError;

/// The video track clock: every timestamp given to or read from libavcodec here.
pub(crate) const CLOCK_90K: Rational = Rational(1, 90_000);

fn decode_error(reason: impl std::fmt::Display) -> StageError {
    StageError::Decode {
        what: "H.264 video".into(),
        reason: reason.to_string(),
    }
}

/// One H.264 decoder. Blocking; owned by the stage's thread.
pub(crate) struct VideoDecoder {
    decoder: decoder::Video,
    /// Consecutive packets the decoder refused as invalid; reset by any good one.
    bad_packets: u32,
}

/// After this many consecutive undecodable packets the input is declared broken.
const MAX_BAD_PACKETS: u32 = 250;

impl VideoDecoder {
    /// A decoder using `threads` frame threads (as the ffmpeg command line does).
    pub(crate) fn open(threads: usize) -> Result<VideoDecoder, StageError> {
        crate::ingest::init();
        let codec = decoder::find(codec::Id::H264)
            .ok_or_else(|| decode_error("libavcodec has no H.264 decoder"))?;
        let mut ctx = codec::context::Context::new_with_codec(codec);
        ctx.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Frame,
            count: threads.max(1),
            ..Default::default()
        });
        let mut dec = ctx.decoder();
        dec.set_packet_time_base(CLOCK_90K);
        let decoder = dec.video().map_err(decode_error)?;
        Ok(VideoDecoder {
            decoder,
            bad_packets: 0,
        })
    }

    /// Feed one access unit. Pictures become available through [`VideoDecoder::receive`].
    /// A corrupt access unit is skipped (the decoder recovers at the next keyframe); only a
    /// long run of them, or another failure, is an error.
    pub(crate) fn send(
        &mut self,
        data: &[u8],
        pts: i64,
        dts: i64,
        duration: u32,
    ) -> Result<(), StageError> {
        let mut pkt = Packet::copy(data);
        pkt.set_pts(Some(pts));
        pkt.set_dts(Some(dts));
        pkt.set_duration(i64::from(duration));
        match self.decoder.send_packet(&pkt) {
            Ok(()) => {
                self.bad_packets = 0;
                Ok(())
            }
            Err(ffmpeg::Error::InvalidData) => {
                self.bad_packets += 1;
                if self.bad_packets >= MAX_BAD_PACKETS {
                    return Err(decode_error(format!(
                        "{} consecutive access units were invalid",
                        self.bad_packets
                    )));
                }
                tracing::debug!(pts, "skipping an undecodable H.264 access unit");
                Ok(())
            }
            Err(e) => Err(decode_error(e)),
        }
    }

    /// Signal the end of the input: the remaining pictures come out of `receive`.
    pub(crate) fn send_eof(&mut self) -> Result<(), StageError> {
        match self.decoder.send_eof() {
            Ok(()) | Err(ffmpeg::Error::Eof) => Ok(()),
            Err(e) => Err(decode_error(e)),
        }
    }

    /// The next decoded picture, if one is ready. Its pts is the best-effort timestamp in
    /// the 90 kHz clock (`None` if the decoder could not tell).
    pub(crate) fn receive(&mut self) -> Result<Option<frame::Video>, StageError> {
        let mut picture = frame::Video::empty();
        match self.decoder.receive_frame(&mut picture) {
            Ok(()) => {
                let ts = picture.timestamp();
                picture.set_pts(ts);
                Ok(Some(picture))
            }
            Err(ffmpeg::Error::Eof) => Ok(None),
            Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => Ok(None),
            Err(ffmpeg::Error::InvalidData) => Ok(None),
            Err(e) => Err(decode_error(e)),
        }
    }
}
