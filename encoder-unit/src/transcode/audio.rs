//! Audio for WebRTC renditions: the source's AAC decoded with libavcodec, resampled with
//! swresample to 48 kHz, and encoded to Opus with libopus in 20 ms packets.
//!
//! Browsers play Opus, not AAC, so a rendition with `audio = "opus"` runs this stage after
//! the video one. Timing: the output stays on the channel's timeline. Every decoded AAC
//! frame says where its samples start (its pts, rescaled to the 48 kHz Opus clock); the
//! samples queue in a [`SampleFifo`] that remembers the time of its first sample, and
//! each 960-sample Opus frame is stamped from it. libopus then stamps its packets with
//! that time less its look-ahead (the samples its decoder will output first), so the
//! decoded Opus lines up with the decoded AAC it replaces and with the video. A jump in
//! the source's timestamps (a gap, a loop) re-anchors the queue instead of drifting.
//!
//! Mono sources stay mono; everything else becomes stereo (downmixed by swresample).

use bytes::Bytes;
use divisor_link::{ChannelId, Codec, Frame, FrameFlags, Message, TrackInfo};
use ffmpeg::software::resampling;
use ffmpeg::{codec, decoder, encoder, format, frame, ChannelLayout, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;

use crate::pipeline::{Stage, StageError};

/// The Opus clock and sample rate (RFC 7587: the RTP clock is always 48 kHz).
pub const OPUS_RATE: u32 = 48_000;
/// Samples per channel in one 20 ms Opus frame at 48 kHz.
pub const OPUS_FRAME: usize = 960;
/// libopus bit rate for a mono and for a stereo rendition, bit/s.
pub const OPUS_BITRATE_MONO: u32 = 64_000;
pub const OPUS_BITRATE_STEREO: u32 = 96_000;

/// A decoded frame whose time differs from where the queued samples end by more than
/// this (samples at 48 kHz, 60 ms) starts the queue afresh at the frame's time.
const MAX_DRIFT: i64 = 3 * OPUS_FRAME as i64;
/// Consecutive undecodable AAC frames tolerated before the input is declared broken.
const MAX_BAD_PACKETS: u32 = 250;

/// `v` ticks of a `from` Hz clock in ticks of a `to` Hz clock, rounded to nearest.
pub fn rescale(v: i64, from: u32, to: u32) -> i64 {
    let from = i128::from(from.max(1));
    let num = i128::from(v) * i128::from(to);
    let half = from / 2 * num.signum();
    ((num + half) / from) as i64
}

/// Opus output channels for a source with `channels` (0 = unknown): 1 stays 1, else 2.
pub fn opus_channels(channels: u8) -> u8 {
    if channels == 1 {
        1
    } else {
        2
    }
}

/// An AAC-LC AudioSpecificConfig (ISO 14496-3 §1.6.2.1) for a track announced without
/// one; `None` for a rate outside the MPEG-4 table or more than 7 channels.
pub fn aac_lc_config(rate: u32, channels: u8) -> Option<[u8; 2]> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let index = RATES.iter().position(|&r| r == rate)? as u8;
    if channels == 0 || channels > 7 {
        return None;
    }
    const AAC_LC: u8 = 2;
    Some([
        (AAC_LC << 3) | (index >> 1),
        ((index & 1) << 7) | (channels << 3),
    ])
}

/// Interleaved samples waiting for a whole Opus frame, with the time of the first one.
/// Sans-IO: the stage feeds it and cuts frames from it.
#[derive(Debug, Clone)]
pub struct SampleFifo {
    channels: usize,
    samples: Vec<f32>,
    /// 48 kHz time of `samples[0]`; `None` until the first push.
    start: Option<i64>,
}

impl SampleFifo {
    pub fn new(channels: u8) -> SampleFifo {
        SampleFifo {
            channels: usize::from(channels.max(1)),
            samples: Vec::new(),
            start: None,
        }
    }

    /// Samples per channel queued.
    pub fn len(&self) -> usize {
        self.samples.len() / self.channels
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The time just after the last queued sample (where the next push should start).
    pub fn end(&self) -> Option<i64> {
        self.start.map(|s| s + self.len() as i64)
    }

    /// Append interleaved `samples` that start at `at` (48 kHz; `None`: right after what
    /// is queued). If that is more than [`MAX_DRIFT`] away from the end of the queue, what
    /// is queued is dropped and the queue starts again at `at`. Returns whether it did.
    pub fn push(&mut self, samples: &[f32], at: Option<i64>) -> bool {
        let mut restarted = false;
        match (self.end(), at) {
            (None, at) => self.start = Some(at.unwrap_or(0)),
            (Some(end), Some(at)) if (at - end).abs() > MAX_DRIFT => {
                self.samples.clear();
                self.start = Some(at);
                restarted = true;
            }
            _ => {}
        }
        self.samples.extend_from_slice(samples);
        restarted
    }

    /// The next `n` samples per channel and their time, if that many are queued.
    pub fn pop(&mut self, n: usize) -> Option<(Vec<f32>, i64)> {
        let start = self.start?;
        if self.len() < n {
            return None;
        }
        let rest = self.samples.split_off(n * self.channels);
        let out = std::mem::replace(&mut self.samples, rest);
        self.start = Some(start + n as i64);
        Some((out, start))
    }

    /// What is left, padded with silence to `n` samples per channel (end of stream).
    pub fn pop_padded(&mut self, n: usize) -> Option<(Vec<f32>, i64)> {
        if self.is_empty() {
            return None;
        }
        let missing = n.saturating_sub(self.len()) * self.channels;
        self.samples.extend(std::iter::repeat_n(0.0, missing));
        self.pop(n)
    }

    /// Forget everything, including the time.
    pub fn clear(&mut self) {
        self.samples.clear();
        self.start = None;
    }
}

fn decode_error(reason: impl std::fmt::Display) -> StageError {
    StageError::Decode {
        what: "AAC audio".into(),
        reason: reason.to_string(),
    }
}

fn encode_error(reason: impl std::fmt::Display) -> StageError {
    StageError::Encode {
        what: "Opus (libopus)".into(),
        reason: reason.to_string(),
    }
}

fn layout_of(channels: u8) -> ChannelLayout {
    if channels == 1 {
        ChannelLayout::MONO
    } else {
        ChannelLayout::STEREO
    }
}

/// Sets the (new-style) channel layout of `layout`, which libavcodec 5.x checks besides
/// the legacy mask the ffmpeg-next setters write.
///
/// # Safety
/// `layout` must point at an `AVChannelLayout` that is zeroed or holds a native layout.
unsafe fn set_default_layout(layout: *mut ffmpeg::ffi::AVChannelLayout, channels: u8) {
    ffmpeg::ffi::av_channel_layout_default(layout, i32::from(channels));
}

/// The AAC track being transcoded, as the input announced it.
#[derive(Clone, Debug)]
struct InputAudio {
    track: u8,
    clock: u32,
    asc: Bytes,
}

/// swresample from whatever the decoder gives to packed float at 48 kHz.
struct Resampler {
    ctx: resampling::Context,
    /// Input format, layout mask and rate it was built for.
    input: (format::Sample, u64, u32),
    out_channels: usize,
}

impl Resampler {
    fn input_of(f: &frame::Audio) -> (format::Sample, u64, u32) {
        let layout = match f.channel_layout() {
            l if l.bits() != 0 && l.channels() == i32::from(f.channels()) => l,
            _ => ChannelLayout::default(i32::from(f.channels())),
        };
        (f.format(), layout.bits(), f.rate())
    }

    fn new(f: &frame::Audio, out_channels: u8) -> Result<Resampler, StageError> {
        let input = Resampler::input_of(f);
        let ctx = resampling::Context::get(
            input.0,
            ChannelLayout::from_bits_truncate(input.1),
            input.2,
            format::Sample::F32(format::sample::Type::Packed),
            layout_of(out_channels),
            OPUS_RATE,
        )
        .map_err(|e| decode_error(format!("swresample from {input:?}: {e}")))?;
        Ok(Resampler {
            ctx,
            input,
            out_channels: usize::from(out_channels),
        })
    }

    /// Samples (48 kHz) the resampler holds back, to date what comes out next.
    fn delay(&self) -> i64 {
        // SAFETY: the context is initialised and owned by `self`.
        unsafe { ffmpeg::ffi::swr_get_delay(self.ctx.as_ptr() as *mut _, i64::from(OPUS_RATE)) }
    }

    /// Convert `f`; the interleaved output samples are appended to `out`.
    fn convert(&mut self, f: &frame::Audio, out: &mut Vec<f32>) -> Result<(), StageError> {
        let in_samples = i32::try_from(f.samples()).map_err(decode_error)?;
        // SAFETY: the context is valid; `f` is a decoded frame whose `extended_data` holds
        // `nb_samples` samples per channel in the format and layout the context was built
        // for (checked by the caller); the output buffer has room for `max` samples per
        // channel of packed f32 in `out_channels` channels, as swr_convert is told.
        unsafe {
            let swr = self.ctx.as_mut_ptr();
            let max = ffmpeg::ffi::swr_get_out_samples(swr, in_samples);
            if max < 0 {
                return Err(decode_error(ffmpeg::Error::from(max)));
            }
            let start = out.len();
            out.resize(start + max as usize * self.out_channels, 0.0);
            let mut dst = out.as_mut_ptr().add(start) as *mut u8;
            let src = (*f.as_ptr()).extended_data as *mut *const u8;
            let n = ffmpeg::ffi::swr_convert(swr, &mut dst, max, src, in_samples);
            if n < 0 {
                out.truncate(start);
                return Err(decode_error(ffmpeg::Error::from(n)));
            }
            out.truncate(start + n as usize * self.out_channels);
        }
        Ok(())
    }
}

/// One decode → resample → encode run (until a flush or a reset).
struct Run {
    decoder: decoder::Audio,
    resampler: Option<Resampler>,
    encoder: encoder::Audio,
    fifo: SampleFifo,
    packet: Packet,
    scratch: Vec<f32>,
    bad_packets: u32,
}

/// Transcodes a channel's AAC track to Opus; every other frame passes unchanged.
pub struct AudioTranscodeStage {
    rendition: String,
    /// `None` when there is nothing to transcode (no audio, or Opus already).
    input: Option<InputAudio>,
    out_channels: u8,
    run: Option<Run>,
    channel: ChannelId,
    last_out_pts: Option<i64>,
}

impl AudioTranscodeStage {
    /// The Opus stage of rendition `rendition` (named in errors). Fails when libavcodec
    /// has no libopus encoder or no AAC decoder.
    pub fn new(rendition: &str) -> Result<AudioTranscodeStage, StageError> {
        crate::ingest::init();
        if encoder::find_by_name("libopus").is_none() {
            return Err(StageError::Unsupported(format!(
                "rendition {rendition}: libavcodec was built without libopus: \
                 audio = \"opus\" is unavailable"
            )));
        }
        if decoder::find(codec::Id::AAC).is_none() {
            return Err(StageError::Unsupported(format!(
                "rendition {rendition}: libavcodec has no AAC decoder"
            )));
        }
        Ok(AudioTranscodeStage {
            rendition: rendition.to_string(),
            input: None,
            out_channels: 2,
            run: None,
            channel: 0,
            last_out_pts: None,
        })
    }

    fn bitrate(&self) -> u32 {
        if self.out_channels == 1 {
            OPUS_BITRATE_MONO
        } else {
            OPUS_BITRATE_STEREO
        }
    }

    fn open_run(&self, input: &InputAudio) -> Result<Run, StageError> {
        // Decoder, with the AudioSpecificConfig as extradata (frames are raw AUs).
        let aac = decoder::find(codec::Id::AAC).ok_or_else(|| decode_error("no AAC decoder"))?;
        let mut ctx = codec::context::Context::new_with_codec(aac);
        let padding = ffmpeg::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
        // SAFETY: the context is ours and not opened yet; extradata is allocated with
        // av_mallocz (freed by avcodec_free_context when the context drops), with the
        // padding libavcodec requires, and its size is set to match.
        unsafe {
            let buf = ffmpeg::ffi::av_mallocz(input.asc.len() + padding) as *mut u8;
            if buf.is_null() {
                return Err(decode_error("out of memory for the AudioSpecificConfig"));
            }
            std::ptr::copy_nonoverlapping(input.asc.as_ptr(), buf, input.asc.len());
            let p = ctx.as_mut_ptr();
            (*p).extradata = buf;
            (*p).extradata_size = input.asc.len() as i32;
        }
        let mut dec = ctx.decoder();
        dec.set_packet_time_base(Rational(1, input.clock.max(1) as i32));
        let decoder = dec.audio().map_err(decode_error)?;
        // Encoder.
        let opus = encoder::find_by_name("libopus")
            .ok_or_else(|| encode_error("libavcodec was built without libopus"))?;
        let ctx = codec::context::Context::new_with_codec(opus);
        let mut enc = ctx.encoder().audio().map_err(encode_error)?;
        enc.set_rate(OPUS_RATE as i32);
        enc.set_format(format::Sample::F32(format::sample::Type::Packed));
        enc.set_channel_layout(layout_of(self.out_channels));
        enc.set_channels(i32::from(self.out_channels));
        // SAFETY: the encoder context is ours and not opened yet; its ch_layout is zeroed.
        unsafe { set_default_layout(&mut (*enc.as_mut_ptr()).ch_layout, self.out_channels) };
        enc.set_bit_rate(self.bitrate() as usize);
        enc.set_time_base(Rational(1, OPUS_RATE as i32));
        let mut options = Dictionary::new();
        options.set("frame_duration", "20");
        options.set("application", "audio");
        let encoder = enc.open_as_with(opus, options).map_err(encode_error)?;
        let frame_size = encoder.frame_size() as usize;
        if frame_size != OPUS_FRAME {
            return Err(encode_error(format!(
                "libopus frame size is {frame_size} samples, not {OPUS_FRAME}"
            )));
        }
        Ok(Run {
            decoder,
            resampler: None,
            encoder,
            fifo: SampleFifo::new(self.out_channels),
            packet: Packet::empty(),
            scratch: Vec::new(),
            bad_packets: 0,
        })
    }

    /// Decode what the decoder has ready, queue it, encode every whole Opus frame.
    fn drain(&mut self, run: &mut Run, out: &mut Vec<Message>) -> Result<(), StageError> {
        let clock = self.input.as_ref().map_or(OPUS_RATE, |i| i.clock);
        let mut decoded = frame::Audio::empty();
        loop {
            match run.decoder.receive_frame(&mut decoded) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => break,
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => break,
                Err(ffmpeg::Error::InvalidData) => break,
                Err(e) => return Err(decode_error(e)),
            }
            if decoded.samples() == 0 || decoded.channels() == 0 || decoded.rate() == 0 {
                continue;
            }
            let stale = run
                .resampler
                .as_ref()
                .is_some_and(|r| r.input != Resampler::input_of(&decoded));
            if stale || run.resampler.is_none() {
                run.resampler = Some(Resampler::new(&decoded, self.out_channels)?);
            }
            let Some(resampler) = run.resampler.as_mut() else {
                continue;
            };
            // Where this frame's first output sample lands: its time, less what the
            // resampler still holds from before (that comes out first).
            let at = decoded
                .timestamp()
                .map(|ts| rescale(ts, clock, OPUS_RATE) - resampler.delay());
            run.scratch.clear();
            resampler.convert(&decoded, &mut run.scratch)?;
            if run.fifo.push(&run.scratch, at) {
                tracing::debug!(
                    rendition = %self.rendition,
                    "audio timestamps jumped; Opus timing restarts"
                );
            }
            while let Some((samples, pts)) = run.fifo.pop(OPUS_FRAME) {
                self.encode(run, &samples, pts, out)?;
            }
        }
        Ok(())
    }

    /// Encode one 960-sample frame stamped `pts` and emit the packets that result.
    fn encode(
        &mut self,
        run: &mut Run,
        samples: &[f32],
        pts: i64,
        out: &mut Vec<Message>,
    ) -> Result<(), StageError> {
        let mut f = frame::Audio::new(
            format::Sample::F32(format::sample::Type::Packed),
            OPUS_FRAME,
            layout_of(self.out_channels),
        );
        // SAFETY: the frame is ours; its ch_layout was left zeroed by the legacy setter.
        unsafe { set_default_layout(&mut (*f.as_mut_ptr()).ch_layout, self.out_channels) };
        f.set_rate(OPUS_RATE);
        f.set_pts(Some(pts));
        // Packed audio is one plane (`plane_mut` would count samples, not values).
        let bytes = f.data_mut(0);
        if bytes.len() < samples.len() * 4 {
            return Err(encode_error("audio frame buffer too small"));
        }
        for (dst, s) in bytes.chunks_exact_mut(4).zip(samples) {
            dst.copy_from_slice(&s.to_ne_bytes());
        }
        run.encoder.send_frame(&f).map_err(encode_error)?;
        self.receive(run, out)
    }

    /// Move the packets libopus has ready to `out` as link frames.
    fn receive(&mut self, run: &mut Run, out: &mut Vec<Message>) -> Result<(), StageError> {
        let track = self.input.as_ref().map_or(0, |i| i.track);
        loop {
            match run.encoder.receive_packet(&mut run.packet) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => {
                    return Ok(())
                }
                Err(e) => return Err(encode_error(e)),
            }
            let (Some(data), Some(pts)) = (run.packet.data(), run.packet.pts()) else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            // A new run (after a flush) overlaps the last one by libopus's look-ahead:
            // keep the track's timestamps strictly increasing.
            if self.last_out_pts.is_some_and(|last| pts <= last) {
                continue;
            }
            self.last_out_pts = Some(pts);
            let duration = u32::try_from(run.packet.duration())
                .ok()
                .filter(|&d| d > 0)
                .unwrap_or(OPUS_FRAME as u32);
            out.push(Message::Frame(Frame {
                channel: self.channel,
                track,
                codec: Codec::Opus,
                flags: FrameFlags::KEYFRAME,
                pts,
                dts: pts,
                duration,
                data: Bytes::copy_from_slice(data),
            }));
        }
    }
}

impl Stage for AudioTranscodeStage {
    fn tracks(&mut self, input: &[TrackInfo]) -> Result<Vec<TrackInfo>, StageError> {
        self.run = None;
        self.input = None;
        let Some(audio) = input.iter().find(|t| !t.codec.is_video()) else {
            // No audio: nothing to do, the rendition is video only.
            return Ok(input.to_vec());
        };
        match audio.codec {
            Codec::Opus => return Ok(input.to_vec()),
            Codec::Aac => {}
            other => {
                return Err(StageError::Unsupported(format!(
                    "rendition {}: cannot transcode {other:?} audio to Opus (AAC only)",
                    self.rendition
                )))
            }
        }
        let rate = if audio.sample_rate > 0 {
            audio.sample_rate
        } else {
            audio.clock_rate
        };
        let asc = match audio.params.first().filter(|p| !p.is_empty()) {
            Some(asc) => asc.clone(),
            None => {
                Bytes::copy_from_slice(&aac_lc_config(rate, audio.channels).ok_or_else(|| {
                    StageError::Unsupported(format!(
                        "rendition {}: the AAC track has no AudioSpecificConfig and \
                         {rate} Hz / {} channels do not make one",
                        self.rendition, audio.channels
                    ))
                })?)
            }
        };
        self.out_channels = opus_channels(audio.channels);
        self.input = Some(InputAudio {
            track: audio.track,
            clock: audio.clock_rate.max(1),
            asc,
        });
        let track = audio.track;
        let bitrate = self.bitrate();
        let channels = self.out_channels;
        Ok(input
            .iter()
            .map(|t| {
                if t.track != track {
                    return t.clone();
                }
                TrackInfo {
                    track,
                    codec: Codec::Opus,
                    clock_rate: OPUS_RATE,
                    width: 0,
                    height: 0,
                    sample_rate: OPUS_RATE,
                    channels,
                    bitrate,
                    params: Vec::new(),
                }
            })
            .collect())
    }

    fn push(&mut self, frame: Frame, out: &mut Vec<Message>) -> Result<(), StageError> {
        let Some(input) = self.input.clone() else {
            out.push(Message::Frame(frame));
            return Ok(());
        };
        if frame.track != input.track {
            out.push(Message::Frame(frame));
            return Ok(());
        }
        if frame.codec != Codec::Aac {
            return Err(StageError::Decode {
                what: format!("track {}", frame.track),
                reason: format!("expected AAC, got {:?}", frame.codec),
            });
        }
        self.channel = frame.channel;
        let mut run = match self.run.take() {
            Some(r) => r,
            None => self.open_run(&input)?,
        };
        let mut pkt = Packet::copy(&frame.data);
        pkt.set_pts(Some(frame.pts));
        pkt.set_dts(Some(frame.dts));
        pkt.set_duration(i64::from(frame.duration));
        let result = match run.decoder.send_packet(&pkt) {
            Ok(()) => {
                run.bad_packets = 0;
                Ok(())
            }
            Err(ffmpeg::Error::InvalidData) => {
                run.bad_packets += 1;
                if run.bad_packets >= MAX_BAD_PACKETS {
                    Err(decode_error(format!(
                        "{} consecutive AAC frames were invalid",
                        run.bad_packets
                    )))
                } else {
                    tracing::debug!(pts = frame.pts, "skipping an undecodable AAC frame");
                    Ok(())
                }
            }
            Err(e) => Err(decode_error(e)),
        }
        .and_then(|()| self.drain(&mut run, out));
        self.run = Some(run);
        result
    }

    fn flush(&mut self, out: &mut Vec<Message>) -> Result<(), StageError> {
        let Some(mut run) = self.run.take() else {
            return Ok(());
        };
        match run.decoder.send_eof() {
            Ok(()) | Err(ffmpeg::Error::Eof) => {}
            Err(e) => return Err(decode_error(e)),
        }
        self.drain(&mut run, out)?;
        if let Some((samples, pts)) = run.fifo.pop_padded(OPUS_FRAME) {
            self.encode(&mut run, &samples, pts, out)?;
        }
        match run.encoder.send_eof() {
            Ok(()) | Err(ffmpeg::Error::Eof) => {}
            Err(e) => return Err(encode_error(e)),
        }
        self.receive(&mut run, out)
    }

    fn reset(&mut self) {
        self.run = None;
        self.last_out_pts = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_rounds_to_nearest() {
        assert_eq!(rescale(1024, 44_100, 48_000), 1115);
        assert_eq!(rescale(-1024, 44_100, 48_000), -1115);
        assert_eq!(rescale(960, 48_000, 48_000), 960);
        assert_eq!(rescale(90_000, 90_000, 48_000), 48_000);
    }

    #[test]
    fn asc_for_common_rates() {
        // 48 kHz stereo AAC-LC: 0x11 0x90; 44.1 kHz mono: 0x12 0x08.
        assert_eq!(aac_lc_config(48_000, 2), Some([0x11, 0x90]));
        assert_eq!(aac_lc_config(44_100, 1), Some([0x12, 0x08]));
        assert_eq!(aac_lc_config(12_345, 2), None);
        assert_eq!(aac_lc_config(48_000, 8), None);
    }

    #[test]
    fn fifo_cuts_frames_with_their_time() {
        let mut f = SampleFifo::new(2);
        assert!(!f.push(&vec![0.5; 2 * 1024], Some(1000)));
        let (s, pts) = f.pop(OPUS_FRAME).unwrap();
        assert_eq!((s.len(), pts), (2 * OPUS_FRAME, 1000));
        assert!(f.pop(OPUS_FRAME).is_none());
        assert_eq!(f.len(), 64);
        // Contiguous (within the drift allowance): appended.
        assert!(!f.push(&vec![0.5; 2 * 1024], Some(1000 + 1024 + 5)));
        assert_eq!(f.pop(OPUS_FRAME).unwrap().1, 1000 + 960);
        // A jump: what is queued goes, the time restarts.
        assert!(f.push(&[0.25; 2 * 10], Some(1_000_000)));
        assert_eq!(f.len(), 10);
        let (s, pts) = f.pop_padded(OPUS_FRAME).unwrap();
        assert_eq!((s.len(), pts), (2 * OPUS_FRAME, 1_000_000));
        assert_eq!(s[19], 0.25);
        assert_eq!(s[20], 0.0);
        assert!(f.pop_padded(OPUS_FRAME).is_none());
    }

    #[test]
    fn fifo_without_times_counts_samples() {
        let mut f = SampleFifo::new(1);
        f.push(&[0.0; 500], None);
        f.push(&[0.0; 500], None);
        assert_eq!(f.pop(OPUS_FRAME).unwrap().1, 0);
        assert_eq!(f.end(), Some(1000));
        f.clear();
        assert_eq!(f.end(), None);
    }

    #[test]
    fn mono_stays_mono_others_stereo() {
        assert_eq!(opus_channels(1), 1);
        assert_eq!(opus_channels(2), 2);
        assert_eq!(opus_channels(6), 2);
        assert_eq!(opus_channels(0), 2);
    }

    /// Two seconds of the test source's AAC tone through the stage: Opus packets every
    /// 20 ms from where the AAC started (less libopus's look-ahead), video untouched, and
    /// libavcodec's Opus decoder takes every packet.
    #[test]
    fn test_source_tone_becomes_decodable_opus() {
        use crate::ingest::testsrc::{TestSource, TestSourceConfig};
        let mut src = TestSource::new(TestSourceConfig {
            width: 320,
            height: 180,
            ..TestSourceConfig::default()
        })
        .unwrap();
        let mut stage = AudioTranscodeStage::new("web").unwrap();
        let tracks = stage.tracks(src.tracks()).unwrap();
        assert_eq!(
            tracks[0],
            src.tracks()[0],
            "video is not this stage's business"
        );
        let opus = &tracks[1];
        assert_eq!(
            (opus.codec, opus.clock_rate, opus.sample_rate, opus.channels),
            (Codec::Opus, 48_000, 48_000, 2)
        );
        assert!(opus.params.is_empty());
        let mut out = Vec::new();
        let (mut video_in, mut first_aac) = (0, None);
        while video_in < 50 {
            let f = src.next_frame().unwrap();
            if f.track == 0 {
                video_in += 1;
            } else {
                first_aac.get_or_insert(f.pts);
            }
            stage.push(f, &mut out).unwrap();
        }
        stage.flush(&mut out).unwrap();
        let frames: Vec<Frame> = out
            .into_iter()
            .filter_map(|m| match m {
                Message::Frame(f) => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(frames.iter().filter(|f| f.track == 0).count(), 50);
        let audio: Vec<&Frame> = frames.iter().filter(|f| f.track == 1).collect();
        assert!(audio.len() >= 95, "{} Opus packets for 2 s", audio.len());
        assert!(audio.iter().all(|f| f.codec == Codec::Opus));
        // Whole 20 ms packets, except at the end of the stream (the flush).
        let durations: Vec<u32> = audio.iter().map(|f| f.duration).collect();
        let (tail, whole) = durations.split_last().unwrap();
        assert!(whole.iter().all(|&d| d == 960), "{durations:?}");
        assert!((1..=960).contains(tail), "{durations:?}");
        let first = rescale(first_aac.unwrap(), 48_000, OPUS_RATE);
        // libopus look-ahead: 6.5 ms at 48 kHz.
        assert!(
            (audio[0].pts - first + 312).abs() <= 1,
            "first pts {}",
            audio[0].pts
        );
        for w in audio.windows(2) {
            assert_eq!(w[1].pts - w[0].pts, 960, "20 ms apart");
        }
        let opus_dec = decoder::find(codec::Id::OPUS).unwrap();
        let mut dec = codec::context::Context::new_with_codec(opus_dec)
            .decoder()
            .audio()
            .unwrap();
        let (mut decoded, mut samples) = (frame::Audio::empty(), 0);
        for f in &audio {
            dec.send_packet(&Packet::copy(&f.data)).unwrap();
            while dec.receive_frame(&mut decoded).is_ok() {
                samples += decoded.samples();
            }
        }
        assert_eq!(samples, audio.len() * OPUS_FRAME);
    }
}
