//! Transcoding: one rung of the rendition ladder as a pipeline [`Stage`].
//!
//! [`TranscodeStage`] takes the frames a source produces (H.264 Annex B with SPS/PPS in
//! band on keyframes, plus audio), decodes the video with libavcodec, scales it with
//! swscale to the rendition size and encodes it again: H.264 through libavcodec's
//! `libx264` ([`H264Encoder`]) or AV1 through rav1e ([`Av1Encoder`]). Audio passes
//! through unchanged. Output timestamps stay in the 90 kHz track clock. Renditions with
//! `audio = "opus"` add an [`AudioTranscodeStage`] after this one (AAC to Opus, see
//! [`audio`]).
//!
//! Frame-rate tiers: H.264 renditions with `tiers = true` use a fixed `P b B b` strict B
//! pyramid, and every output frame carries its temporal layer (read back from the
//! bitstream, see [`layers`]): 0 = I/P (quarter rate), 1 = reference B (half rate),
//! 2 = non-reference b (full rate, [`FrameFlags::DISPOSABLE`]). AV1 renditions are all
//! layer 0. Passthrough H.264 gets what its structure allows from [`mark_layers`] /
//! [`LayerMarker`].
//!
//! Frame rate: the encoders need it before the first picture (rate control, keyframe
//! interval). It is, in order: [`TranscodeStage::with_frame_rate`], the duration of the
//! first video frame, the pts distance of the first two decoded pictures, or 25 fps.

pub mod audio;
mod av1enc;
mod decode;
mod h264enc;
pub mod interleave;
pub mod ivf;
pub mod layers;
mod scale;

pub use audio::AudioTranscodeStage;
pub use av1enc::{
    obus, probe_sequence_header, sequence_header, Av1Encoder, Av1Settings, EncodedUnit, AV1_SPEED,
};
pub use h264enc::{
    mark_constrained_baseline, x264_options, EncodedPicture, H264Encoder, H264Settings,
    TIER_BFRAMES, X264_PRESET,
};
pub use interleave::InterleaveStage;
pub use layers::{classify, mark_layers, LayerMarker, PictureKind, SliceType};

use bytes::Bytes;
use divisor_link::{ChannelId, Codec, Frame, FrameFlags, Message, TrackInfo};
use ffmpeg::frame;
use ffmpeg_next as ffmpeg;

use crate::config::{RenditionConfig, VideoCodec};
use crate::pipeline::{Stage, StageError};
use decode::VideoDecoder;
use scale::Scaler;

/// A video frame rate as a fraction (e.g. 30000/1001), kept reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRate {
    pub num: u32,
    pub den: u32,
}

/// What a source with no usable timing is assumed to run at.
pub const DEFAULT_FRAME_RATE: FrameRate = FrameRate { num: 25, den: 1 };

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl FrameRate {
    /// `num / den` frames per second; `None` if either is 0.
    pub fn new(num: u32, den: u32) -> Option<FrameRate> {
        if num == 0 || den == 0 {
            return None;
        }
        let g = gcd(num, den);
        Some(FrameRate {
            num: num / g,
            den: den / g,
        })
    }

    /// The rate of frames lasting `duration` ticks of the 90 kHz clock.
    pub fn from_duration_90k(duration: u32) -> Option<FrameRate> {
        FrameRate::new(90_000, duration)
    }

    pub fn fps(&self) -> f64 {
        f64::from(self.num) / f64::from(self.den)
    }

    /// One frame's duration in the 90 kHz clock, rounded.
    pub fn frame_duration_90k(&self) -> u32 {
        let d = (90_000u64 * u64::from(self.den) + u64::from(self.num) / 2) / u64::from(self.num);
        u32::try_from(d.max(1)).unwrap_or(u32::MAX)
    }

    fn as_ffmpeg(&self) -> ffmpeg::Rational {
        ffmpeg::Rational::new(
            i32::try_from(self.num).unwrap_or(i32::MAX),
            i32::try_from(self.den).unwrap_or(1),
        )
    }
}

/// Frames between keyframes when a rendition does not say: two seconds, rounded to a
/// whole number of `P b B b` groups when tiers are on (so every GOP has the same pattern).
pub fn default_keyint(rate: FrameRate, tiers: bool) -> u32 {
    let two_seconds = (2.0 * rate.fps()).round().clamp(1.0, 100_000.0) as u32;
    if tiers {
        let group = TIER_BFRAMES + 1;
        (((two_seconds + group / 2) / group) * group).max(group)
    } else {
        two_seconds
    }
}

/// The ladder-rung-above-the-source error, worded the same wherever it is found.
fn larger_than_source(r: &RenditionConfig, width: u32, height: u32) -> StageError {
    StageError::Unsupported(format!(
        "rendition {} ({}x{}) is larger than the source ({width}x{height})",
        r.name, r.width, r.height
    ))
}

enum VideoEncoder {
    H264(H264Encoder),
    /// Boxed: rav1e's context is several kilobytes.
    Av1(Box<Av1Encoder>),
}

/// The video track being transcoded, as the input announced it.
#[derive(Clone, Copy, Debug)]
struct InputVideo {
    track: u8,
}

/// One rendition of a channel: decode, scale, encode the video track; pass the rest.
pub struct TranscodeStage {
    rendition: RenditionConfig,
    threads: usize,
    rate_hint: Option<FrameRate>,
    measured_rate: Option<FrameRate>,
    input: Option<InputVideo>,
    decoder: Option<VideoDecoder>,
    scaler: Scaler,
    encoder: Option<VideoEncoder>,
    /// Decoded pictures held until the frame rate is known.
    waiting: Vec<frame::Video>,
    force_keyframe: bool,
    channel: ChannelId,
    last_in_pts: Option<i64>,
    last_out_dts: Option<i64>,
    /// Video frames dropped since the run began while waiting for a keyframe.
    skipped: u32,
    /// The input's video changed (DISCONTINUITY: a loop point, a reconnection): the next
    /// video frame out says so too, as a passthrough rendition's would.
    discontinuity: bool,
}

/// A run starts at a keyframe: what comes before cannot decode (a live rendition started
/// mid-GOP). After this many frames without a flagged keyframe the decoder is tried
/// anyway, in case an input does not flag them.
const MAX_SKIPPED_FOR_KEYFRAME: u32 = 300;

impl TranscodeStage {
    /// A stage producing `rendition`, using `threads` threads in each of the decoder and
    /// the encoder. Fails when the encoder the rendition needs is missing.
    pub fn new(rendition: &RenditionConfig, threads: usize) -> Result<TranscodeStage, StageError> {
        crate::ingest::init();
        if rendition.codec == VideoCodec::H264 && ffmpeg::encoder::find_by_name("libx264").is_none()
        {
            return Err(StageError::Unsupported(
                "libavcodec was built without libx264: H.264 renditions are unavailable".into(),
            ));
        }
        if rendition.width < 16
            || rendition.height < 16
            || !rendition.width.is_multiple_of(2)
            || !rendition.height.is_multiple_of(2)
        {
            return Err(StageError::Unsupported(format!(
                "rendition {}: {}x{} must be even and at least 16x16",
                rendition.name, rendition.width, rendition.height
            )));
        }
        Ok(TranscodeStage {
            rendition: rendition.clone(),
            threads: threads.max(1),
            rate_hint: None,
            measured_rate: None,
            input: None,
            decoder: None,
            scaler: Scaler::new(u32::from(rendition.width), u32::from(rendition.height)),
            encoder: None,
            waiting: Vec::new(),
            force_keyframe: false,
            channel: 0,
            last_in_pts: None,
            last_out_dts: None,
            skipped: 0,
            discontinuity: false,
        })
    }

    /// Tell the stage the source frame rate (a live source knows it; files are measured).
    pub fn with_frame_rate(mut self, rate: FrameRate) -> TranscodeStage {
        self.rate_hint = Some(rate);
        self
    }

    /// The rendition this stage produces.
    pub fn rendition(&self) -> &RenditionConfig {
        &self.rendition
    }

    fn rate(&self) -> Option<FrameRate> {
        self.rate_hint.or(self.measured_rate)
    }

    fn codec(&self) -> Codec {
        match self.rendition.codec {
            VideoCodec::H264 => Codec::H264,
            VideoCodec::Av1 => Codec::Av1,
        }
    }

    fn keyint(&self, rate: FrameRate) -> u32 {
        let tiers = self.rendition.tiers && self.rendition.codec == VideoCodec::H264;
        self.rendition
            .keyint
            .unwrap_or_else(|| default_keyint(rate, tiers))
    }

    fn h264_settings(&self, rate: FrameRate) -> H264Settings {
        H264Settings {
            width: u32::from(self.rendition.width),
            height: u32::from(self.rendition.height),
            bitrate_kbps: self.rendition.bitrate_kbps,
            keyint: self.keyint(rate),
            frame_rate: rate,
            threads: self.threads,
            tiers: self.rendition.tiers,
            profile: self.rendition.profile,
        }
    }

    fn av1_settings(&self, rate: FrameRate) -> Av1Settings {
        Av1Settings {
            width: u32::from(self.rendition.width),
            height: u32::from(self.rendition.height),
            bitrate_kbps: self.rendition.bitrate_kbps,
            keyint: self.keyint(rate),
            frame_rate: rate,
            threads: self.threads,
        }
    }

    fn open_encoder(&self, rate: FrameRate) -> Result<VideoEncoder, StageError> {
        Ok(match self.rendition.codec {
            VideoCodec::H264 => VideoEncoder::H264(H264Encoder::open(&self.h264_settings(rate))?),
            VideoCodec::Av1 => {
                VideoEncoder::Av1(Box::new(Av1Encoder::open(&self.av1_settings(rate))?))
            }
        })
    }

    /// Pull every decoded picture out of `decoder` and encode it.
    fn drain_decoder(
        &mut self,
        decoder: &mut VideoDecoder,
        out: &mut Vec<Message>,
    ) -> Result<(), StageError> {
        while let Some(picture) = decoder.receive()? {
            self.picture(picture, out)?;
        }
        Ok(())
    }

    fn picture(&mut self, picture: frame::Video, out: &mut Vec<Message>) -> Result<(), StageError> {
        let (w, h) = (picture.width(), picture.height());
        if u32::from(self.rendition.width) > w || u32::from(self.rendition.height) > h {
            return Err(larger_than_source(&self.rendition, w, h));
        }
        if self.rate().is_none() {
            self.waiting.push(picture);
            if self.waiting.len() < 2 {
                return Ok(());
            }
            let delta = match (self.waiting[0].pts(), self.waiting[1].pts()) {
                (Some(a), Some(b)) if b > a => u32::try_from(b - a).ok(),
                _ => None,
            };
            self.measured_rate = Some(
                delta
                    .and_then(FrameRate::from_duration_90k)
                    .unwrap_or(DEFAULT_FRAME_RATE),
            );
            return self.encode_waiting(out);
        }
        self.encode(picture, out)
    }

    fn encode_waiting(&mut self, out: &mut Vec<Message>) -> Result<(), StageError> {
        for picture in std::mem::take(&mut self.waiting) {
            self.encode(picture, out)?;
        }
        Ok(())
    }

    fn encode(&mut self, picture: frame::Video, out: &mut Vec<Message>) -> Result<(), StageError> {
        let rate = self.rate().unwrap_or(DEFAULT_FRAME_RATE);
        let step = i64::from(rate.frame_duration_90k());
        // libx264 wants strictly increasing pts; a source that repeats or loses them gets
        // the nearest valid one.
        let pts = match (picture.pts(), self.last_in_pts) {
            (Some(p), Some(last)) if p > last => p,
            (Some(p), None) => p,
            (_, Some(last)) => last + step.max(1),
            (None, None) => 0,
        };
        self.last_in_pts = Some(pts);
        let mut scaled = self.scaler.scale(picture)?;
        scaled.set_pts(Some(pts));
        if self.encoder.is_none() {
            self.encoder = Some(self.open_encoder(rate)?);
        }
        let keyframe = std::mem::take(&mut self.force_keyframe);
        match self.encoder.as_mut() {
            Some(VideoEncoder::H264(e)) => e.send(&mut scaled, keyframe)?,
            Some(VideoEncoder::Av1(e)) => e.send(&scaled, pts, keyframe)?,
            None => {}
        }
        self.emit(out)
    }

    /// Move what the encoder has ready to `out` as link frames.
    fn emit(&mut self, out: &mut Vec<Message>) -> Result<(), StageError> {
        let mut pictures = Vec::new();
        let mut units = Vec::new();
        match self.encoder.as_mut() {
            Some(VideoEncoder::H264(e)) => e.receive(&mut pictures)?,
            Some(VideoEncoder::Av1(e)) => e.receive(&mut units)?,
            None => {}
        }
        let found = pictures
            .into_iter()
            .map(|p| {
                let mut flags = FrameFlags::empty().with_layer(p.layer);
                if p.keyframe {
                    flags.insert(FrameFlags::KEYFRAME);
                }
                if p.disposable {
                    flags.insert(FrameFlags::DISPOSABLE);
                }
                (p.data, p.pts, p.dts, flags)
            })
            .chain(units.into_iter().map(|u| {
                let flags = if u.keyframe {
                    FrameFlags::KEYFRAME
                } else {
                    FrameFlags::empty()
                };
                (u.data, u.pts, u.pts, flags)
            }));
        let duration = self
            .rate()
            .unwrap_or(DEFAULT_FRAME_RATE)
            .frame_duration_90k();
        let track = self.input.map_or(0, |v| v.track);
        let codec = self.codec();
        for (data, pts, dts, mut flags) in found.collect::<Vec<(Bytes, i64, i64, FrameFlags)>>() {
            if std::mem::take(&mut self.discontinuity) {
                flags.insert(FrameFlags::DISCONTINUITY);
            }
            let dts = match self.last_out_dts {
                Some(last) if dts <= last => last + 1,
                _ => dts,
            };
            self.last_out_dts = Some(dts);
            out.push(Message::Frame(Frame {
                channel: self.channel,
                track,
                codec,
                flags,
                pts,
                dts,
                duration,
                data,
            }));
        }
        Ok(())
    }

    /// Forget the current run: decoder, encoder, timestamps.
    fn drop_run(&mut self) {
        self.decoder = None;
        self.encoder = None;
        self.waiting.clear();
        self.last_in_pts = None;
        self.last_out_dts = None;
    }
}

impl Stage for TranscodeStage {
    fn tracks(&mut self, input: &[TrackInfo]) -> Result<Vec<TrackInfo>, StageError> {
        let r = &self.rendition;
        let video = input.iter().find(|t| t.codec.is_video()).ok_or_else(|| {
            StageError::Unsupported(format!(
                "rendition {} needs a video track; the source has none",
                r.name
            ))
        })?;
        if video.codec != Codec::H264 {
            return Err(StageError::Unsupported(format!(
                "rendition {}: transcoding from {:?} is not supported (H.264 sources only)",
                r.name, video.codec
            )));
        }
        let (sw, sh) = (u32::from(video.width), u32::from(video.height));
        if sw > 0 && sh > 0 && (u32::from(r.width) > sw || u32::from(r.height) > sh) {
            return Err(larger_than_source(r, sw, sh));
        }
        let rate = self.rate().unwrap_or(DEFAULT_FRAME_RATE);
        let params = match r.codec {
            VideoCodec::H264 => H264Encoder::open(&self.h264_settings(rate))?
                .params()
                .to_vec(),
            VideoCodec::Av1 => vec![probe_sequence_header(&self.av1_settings(rate))?],
        };
        self.input = Some(InputVideo { track: video.track });
        let codec = self.codec();
        Ok(input
            .iter()
            .map(|t| {
                if t.track != video.track {
                    return t.clone();
                }
                TrackInfo {
                    track: t.track,
                    codec,
                    clock_rate: 90_000,
                    width: r.width,
                    height: r.height,
                    sample_rate: 0,
                    channels: 0,
                    bitrate: r.bitrate_kbps.saturating_mul(1000),
                    params: params.clone(),
                }
            })
            .collect())
    }

    fn push(&mut self, frame: Frame, out: &mut Vec<Message>) -> Result<(), StageError> {
        let Some(input) = self.input else {
            return Err(StageError::Unsupported(
                "TranscodeStage::tracks must run before the first frame".into(),
            ));
        };
        if frame.track != input.track {
            out.push(Message::Frame(frame));
            return Ok(());
        }
        if frame.codec != Codec::H264 {
            return Err(StageError::Decode {
                what: format!("track {}", frame.track),
                reason: format!("expected H.264, got {:?}", frame.codec),
            });
        }
        self.channel = frame.channel;
        if frame.flags.contains(FrameFlags::DISCONTINUITY) {
            self.discontinuity = true;
        }
        if self.rate().is_none() && frame.duration > 0 {
            self.measured_rate = FrameRate::from_duration_90k(frame.duration);
        }
        let mut decoder = match self.decoder.take() {
            Some(d) => d,
            None if !frame.flags.contains(FrameFlags::KEYFRAME)
                && self.skipped < MAX_SKIPPED_FOR_KEYFRAME =>
            {
                self.skipped += 1;
                return Ok(());
            }
            None => {
                self.skipped = 0;
                VideoDecoder::open(self.threads)?
            }
        };
        let result = decoder
            .send(&frame.data, frame.pts, frame.dts, frame.duration)
            .and_then(|()| self.drain_decoder(&mut decoder, out));
        self.decoder = Some(decoder);
        result
    }

    fn flush(&mut self, out: &mut Vec<Message>) -> Result<(), StageError> {
        if let Some(mut decoder) = self.decoder.take() {
            decoder.send_eof()?;
            self.drain_decoder(&mut decoder, out)?;
        }
        if !self.waiting.is_empty() {
            // Fewer than two pictures in the whole run: no way to measure.
            self.measured_rate = Some(DEFAULT_FRAME_RATE);
            self.encode_waiting(out)?;
        }
        match self.encoder.as_mut() {
            Some(VideoEncoder::H264(e)) => e.send_eof()?,
            Some(VideoEncoder::Av1(e)) => e.send_eof(),
            None => {}
        }
        self.emit(out)?;
        self.drop_run();
        Ok(())
    }

    fn reset(&mut self) {
        self.drop_run();
        self.force_keyframe = false;
        self.discontinuity = false;
    }

    fn request_keyframe(&mut self, track: u8) {
        if self.input.is_some_and(|v| v.track == track) {
            self.force_keyframe = true;
        }
    }
}
