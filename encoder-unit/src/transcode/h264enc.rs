//! H.264 encoding through libavcodec's `libx264`, set up for streaming: constant GOP,
//! VBV-capped bit rate, sliced threads (no frame-thread delay), no lookahead beyond the
//! B-frames, and — with frame-rate tiers — a fixed `P b B b` strict B pyramid so that
//! every fourth picture is a P (layer 0), the middle B is a reference (layer 1) and the
//! other two are disposable (layer 2).
//!
//! With `profile = "baseline"` the encode is Constrained Baseline (no B-frames, CAVLC),
//! level 3.1 where the picture size and rate allow, and the SPS says so with the
//! constraint flags browsers' WebRTC stacks expect (`profile-level-id=42e01f`, see
//! [`mark_constrained_baseline`]).
//!
//! The options are a list of libavcodec AVOptions ([`x264_options`]) so the bench can
//! hand exactly the same ones to the `ffmpeg` command line.

use bytes::Bytes;
use ffmpeg::{codec, encoder, format, frame, picture, Dictionary, Packet};
use ffmpeg_next as ffmpeg;

use super::decode::CLOCK_90K;
use super::layers::{self, strict_pyramid_layer};
use super::FrameRate;
use crate::config::H264Profile;
use crate::ingest::h264;
use crate::pipeline::StageError;

/// x264 speed preset of every H.264 rendition: fast enough for several 1080p renditions
/// per core pair in real time.
pub const X264_PRESET: &str = "veryfast";

/// B-frames between P pictures when tiers are on: a `P b B b` pattern.
pub const TIER_BFRAMES: u32 = 3;

/// What an H.264 encode needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H264Settings {
    pub width: u32,
    pub height: u32,
    pub bitrate_kbps: u32,
    /// Frames between IDR pictures.
    pub keyint: u32,
    pub frame_rate: FrameRate,
    /// x264 threads (slices of one picture).
    pub threads: usize,
    /// Encode the fixed B pyramid of frame-rate tiers. Ignored with the baseline profile.
    pub tiers: bool,
    /// `None`: what x264's preset gives.
    pub profile: Option<H264Profile>,
}

/// Level 3.1 limits (H.264 Table A-1): frame size and rate in macroblocks, bit rate of
/// Baseline in kbit/s. A baseline rendition inside them is written as level 3.1, the
/// level of the `42e01f` WebRTC clients offer; a larger one gets x264's own choice.
const LEVEL_31_MAX_FS: u64 = 3_600;
const LEVEL_31_MAX_MBPS: u64 = 108_000;
const LEVEL_31_MAX_KBPS: u32 = 14_000;

/// Whether `s` fits level 3.1.
fn fits_level_31(s: &H264Settings) -> bool {
    let mbs = u64::from(s.width.div_ceil(16)) * u64::from(s.height.div_ceil(16));
    let per_second = mbs as f64 * s.frame_rate.fps();
    mbs <= LEVEL_31_MAX_FS
        && per_second <= LEVEL_31_MAX_MBPS as f64
        && s.bitrate_kbps <= LEVEL_31_MAX_KBPS
}

/// B-frames `s` encodes between P pictures.
fn bframes(s: &H264Settings) -> u32 {
    if s.tiers && s.profile != Some(H264Profile::Baseline) {
        TIER_BFRAMES
    } else {
        0
    }
}

/// The libavcodec options (`-key value` on the ffmpeg command line) of an encode.
pub fn x264_options(s: &H264Settings) -> Vec<(&'static str, String)> {
    let kbps = format!("{}k", s.bitrate_kbps);
    // Closed GOPs (every keyframe an IDR a client can join at), fixed keyframe interval,
    // no lookahead delay.
    let mut x264 = String::from("open-gop=0:scenecut=0:rc-lookahead=0:sync-lookahead=0:mbtree=0");
    x264.push_str(":sliced-threads=1");
    let bframes = bframes(s);
    if bframes > 0 {
        x264.push_str(":b-adapt=0:b-pyramid=strict");
    }
    let mut options = vec![
        ("preset", X264_PRESET.to_string()),
        ("b", kbps.clone()),
        ("maxrate", kbps.clone()),
        ("bufsize", kbps),
        ("g", s.keyint.to_string()),
        ("bf", bframes.to_string()),
        ("threads", s.threads.max(1).to_string()),
        ("forced-idr", "1".to_string()),
        ("x264-params", x264),
    ];
    if let Some(profile) = s.profile {
        options.push(("profile", profile.x264_name().to_string()));
        if profile == H264Profile::Baseline && fits_level_31(s) {
            options.push(("level", "3.1".to_string()));
        }
    }
    options
}

/// Sets constraint_set0..2 in a Baseline SPS (NAL without start code) that already has
/// constraint_set1 (x264's Constrained Baseline), so it reads `42e0..`. The stream meets
/// all three: no B slices, CAVLC, no FMO/ASO or redundant pictures, frame coding with
/// direct_8x8_inference. WebRTC stacks compare these bits exactly when they match
/// `profile-level-id` (webrtc-rs does), and browsers offer `42e01f`, so announcing the
/// `42c0..` x264 writes would find no codec in common. Other SPS are left alone.
pub fn mark_constrained_baseline(sps: &[u8]) -> Bytes {
    const PROFILE_BASELINE: u8 = 66;
    const CONSTRAINT_SET1: u8 = 0x40;
    const CONSTRAINT_SET012: u8 = 0xe0;
    let mut out = sps.to_vec();
    if out.len() >= 4
        && h264::nal_type(&out) == h264::NAL_SPS
        && out[1] == PROFILE_BASELINE
        && out[2] & CONSTRAINT_SET1 != 0
    {
        out[2] |= CONSTRAINT_SET012;
    }
    Bytes::from(out)
}

/// One encoded picture.
#[derive(Clone, Debug)]
pub struct EncodedPicture {
    /// Annex B; IDR pictures carry SPS and PPS in band.
    pub data: Bytes,
    pub pts: i64,
    pub dts: i64,
    pub keyframe: bool,
    /// Temporal layer, see `divisor_link::FrameFlags::layer`.
    pub layer: u8,
    /// No picture references this one.
    pub disposable: bool,
}

fn encode_error(reason: impl std::fmt::Display) -> StageError {
    StageError::Encode {
        what: "H.264 (libx264)".into(),
        reason: reason.to_string(),
    }
}

/// An open libx264 encoder. Pictures in (YUV 4:2:0 at the configured size, pts in the
/// 90 kHz clock), [`EncodedPicture`]s out in decode order.
pub struct H264Encoder {
    encoder: encoder::Video,
    params: Vec<Bytes>,
    packet: Packet,
    settings: H264Settings,
}

impl H264Encoder {
    pub fn open(settings: &H264Settings) -> Result<H264Encoder, StageError> {
        crate::ingest::init();
        let codec = encoder::find_by_name("libx264").ok_or_else(|| {
            StageError::Unsupported("libavcodec was built without libx264".into())
        })?;
        let ctx = codec::context::Context::new_with_codec(codec);
        let mut enc = ctx.encoder().video().map_err(encode_error)?;
        enc.set_width(settings.width);
        enc.set_height(settings.height);
        enc.set_format(format::Pixel::YUV420P);
        enc.set_time_base(CLOCK_90K);
        enc.set_frame_rate(Some(settings.frame_rate.as_ffmpeg()));
        // SPS/PPS once in extradata (for the announce); we put them in band ourselves.
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
        let mut options = Dictionary::new();
        for (k, v) in x264_options(settings) {
            options.set(k, &v);
        }
        let encoder = enc.open_as_with(codec, options).map_err(encode_error)?;
        // SAFETY: extradata of an opened encoder is null or `extradata_size` bytes.
        let extradata = unsafe {
            let p = &*encoder.as_ptr();
            if p.extradata.is_null() || p.extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.extradata, p.extradata_size as usize).to_vec()
            }
        };
        let mut params = h264::find_params(&h264::split_annexb(&extradata))
            .ok_or_else(|| encode_error("libx264 gave no SPS/PPS"))?;
        if settings.profile == Some(H264Profile::Baseline) {
            for p in &mut params {
                *p = mark_constrained_baseline(p);
            }
        }
        Ok(H264Encoder {
            encoder,
            params,
            packet: Packet::empty(),
            settings: settings.clone(),
        })
    }

    /// SPS and PPS, without start codes.
    pub fn params(&self) -> &[Bytes] {
        &self.params
    }

    /// The settings the encoder was opened with.
    pub fn settings(&self) -> &H264Settings {
        &self.settings
    }

    /// Encode `picture` (its pts is used as is); `keyframe` forces an IDR.
    pub fn send(&mut self, picture: &mut frame::Video, keyframe: bool) -> Result<(), StageError> {
        picture.set_kind(if keyframe {
            picture::Type::I
        } else {
            picture::Type::None
        });
        self.encoder.send_frame(picture).map_err(encode_error)
    }

    /// No more pictures: what is held back comes out of [`H264Encoder::receive`].
    pub fn send_eof(&mut self) -> Result<(), StageError> {
        match self.encoder.send_eof() {
            Ok(()) | Err(ffmpeg::Error::Eof) => Ok(()),
            Err(e) => Err(encode_error(e)),
        }
    }

    /// Append every picture the encoder has ready to `out`.
    pub fn receive(&mut self, out: &mut Vec<EncodedPicture>) -> Result<(), StageError> {
        loop {
            match self.encoder.receive_packet(&mut self.packet) {
                Ok(()) => {
                    if let Some(p) = self.convert() {
                        out.push(p);
                    }
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => {
                    return Ok(())
                }
                Err(e) => return Err(encode_error(e)),
            }
        }
    }

    fn convert(&self) -> Option<EncodedPicture> {
        let data = self.packet.data()?;
        let nals = h264::split_annexb(data);
        let kind = layers::classify(&nals);
        let keyframe = kind.map_or(self.packet.is_key(), |k| k.idr);
        let (layer, disposable) = match kind {
            Some(k) if !k.idr => (strict_pyramid_layer(&k), k.disposable()),
            _ => (0, false),
        };
        let pts = self.packet.pts()?;
        let dts = self.packet.dts().unwrap_or(pts);
        Some(EncodedPicture {
            data: h264::write_annexb(&nals, keyframe.then_some(self.params.as_slice())),
            pts,
            dts,
            keyframe,
            layer,
            disposable,
        })
    }
}
