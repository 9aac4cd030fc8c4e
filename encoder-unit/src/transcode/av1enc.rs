//! AV1 encoding through rav1e: low-latency mode (no frame reordering, so pts = dts and one
//! packet per picture), fixed keyframe interval without scene detection, the speed preset
//! of [`AV1_SPEED`]. A packet is one temporal unit (temporal delimiter, the sequence
//! header on keyframes, then the frame OBUs), as the link's `Codec::Av1` asks.

use std::sync::Arc;

use bytes::Bytes;
use ffmpeg::frame;
use ffmpeg_next as ffmpeg;
use rav1e::prelude::{
    ChromaSampling, Config, Context, EncoderConfig, EncoderStatus, FrameParameters, FrameType,
    FrameTypeOverride, Opaque, Rational, SceneDetectionSpeed,
};

use super::FrameRate;
use crate::pipeline::StageError;

/// rav1e speed preset (0 slowest .. 10 fastest): 10 keeps a 360p rendition real time on
/// one core.
pub const AV1_SPEED: u8 = 10;

/// OBU type of a sequence header (AV1 §6.2.2).
const OBU_SEQUENCE_HEADER: u8 = 1;

/// What an AV1 encode needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Av1Settings {
    pub width: u32,
    pub height: u32,
    pub bitrate_kbps: u32,
    /// Frames between keyframes.
    pub keyint: u32,
    pub frame_rate: FrameRate,
    /// rav1e worker threads.
    pub threads: usize,
}

/// One encoded temporal unit.
#[derive(Clone, Debug)]
pub struct EncodedUnit {
    pub data: Bytes,
    pub pts: i64,
    pub keyframe: bool,
}

fn encode_error(reason: impl std::fmt::Display) -> StageError {
    StageError::Encode {
        what: "AV1 (rav1e)".into(),
        reason: reason.to_string(),
    }
}

/// An rav1e encoder for 8-bit 4:2:0 pictures.
pub struct Av1Encoder {
    ctx: Context<u8>,
    width: usize,
    height: usize,
    flushed: bool,
}

impl Av1Encoder {
    pub fn open(s: &Av1Settings) -> Result<Av1Encoder, StageError> {
        let mut enc = EncoderConfig::with_speed_preset(AV1_SPEED);
        enc.width = s.width as usize;
        enc.height = s.height as usize;
        enc.time_base = Rational::new(u64::from(s.frame_rate.den), u64::from(s.frame_rate.num));
        enc.bit_depth = 8;
        enc.chroma_sampling = ChromaSampling::Cs420;
        enc.low_latency = true;
        enc.bitrate = i32::try_from(u64::from(s.bitrate_kbps) * 1000).unwrap_or(i32::MAX);
        enc.set_key_frame_interval(u64::from(s.keyint), u64::from(s.keyint));
        enc.speed_settings.scene_detection_mode = SceneDetectionSpeed::None;
        let cfg = Config::new()
            .with_encoder_config(enc)
            .with_threads(s.threads.max(1));
        let ctx = cfg
            .new_context()
            .map_err(|e| StageError::Unsupported(format!("AV1 encoder settings: {e}")))?;
        Ok(Av1Encoder {
            ctx,
            width: s.width as usize,
            height: s.height as usize,
            flushed: false,
        })
    }

    /// Encode one YUV 4:2:0 picture of the configured size stamped `pts`; `keyframe`
    /// forces a keyframe.
    pub fn send(
        &mut self,
        picture: &frame::Video,
        pts: i64,
        keyframe: bool,
    ) -> Result<(), StageError> {
        if picture.width() as usize != self.width || picture.height() as usize != self.height {
            return Err(encode_error(format!(
                "picture is {}x{}, the encoder {}x{}",
                picture.width(),
                picture.height(),
                self.width,
                self.height
            )));
        }
        let mut f = self.ctx.new_frame();
        for (i, plane) in f.planes.iter_mut().enumerate() {
            plane.copy_from_raw_u8(picture.data(i), picture.stride(i), 1);
            plane.pad(self.width, self.height);
        }
        let params = FrameParameters {
            frame_type_override: if keyframe {
                FrameTypeOverride::Key
            } else {
                FrameTypeOverride::No
            },
            opaque: Some(Opaque::new(pts)),
            ..Default::default()
        };
        self.ctx
            .send_frame((Arc::new(f), params))
            .map_err(encode_error)
    }

    /// No more pictures.
    pub fn send_eof(&mut self) {
        if !self.flushed {
            self.ctx.flush();
            self.flushed = true;
        }
    }

    /// Append every temporal unit rav1e has ready to `out`.
    pub fn receive(&mut self, out: &mut Vec<EncodedUnit>) -> Result<(), StageError> {
        loop {
            match self.ctx.receive_packet() {
                Ok(pkt) => {
                    let pts = match pkt.opaque.map(|o| o.downcast::<i64>()) {
                        Some(Ok(p)) => *p,
                        _ => return Err(encode_error("a packet lost its timestamp")),
                    };
                    out.push(EncodedUnit {
                        data: Bytes::from(pkt.data),
                        pts,
                        keyframe: pkt.frame_type == FrameType::KEY,
                    });
                }
                Err(EncoderStatus::Encoded) => continue,
                Err(EncoderStatus::NeedMoreData | EncoderStatus::LimitReached) => return Ok(()),
                Err(e) => return Err(encode_error(e)),
            }
        }
    }
}

/// The sequence header OBU (whole, with its header and size field) of a temporal unit.
pub fn sequence_header(tu: &[u8]) -> Option<Bytes> {
    obus(tu)
        .into_iter()
        .find(|(t, _)| *t == OBU_SEQUENCE_HEADER)
        .map(|(_, o)| Bytes::copy_from_slice(o))
}

/// The OBUs of a low-overhead bitstream (every OBU has a size field): (type, whole OBU).
/// Stops at the first malformed OBU.
pub fn obus(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some(&header) = data.first() {
        let obu_type = (header >> 3) & 0x0f;
        let has_extension = header & 0x04 != 0;
        let has_size = header & 0x02 != 0;
        let mut pos = 1 + usize::from(has_extension);
        if !has_size || pos > data.len() {
            break;
        }
        let mut size: u64 = 0;
        let mut ok = false;
        for i in 0..8 {
            let Some(&b) = data.get(pos) else { break };
            pos += 1;
            size |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                ok = true;
                break;
            }
        }
        let end = usize::try_from(size).ok().and_then(|s| pos.checked_add(s));
        match end {
            Some(end) if ok && end <= data.len() => {
                out.push((obu_type, &data[..end]));
                data = &data[end..];
            }
            _ => break,
        }
    }
    out
}

/// The sequence header rav1e writes for these settings: encodes one grey picture with a
/// throwaway encoder (the announce needs it before the first real picture).
pub fn probe_sequence_header(s: &Av1Settings) -> Result<Bytes, StageError> {
    let mut enc = Av1Encoder::open(s)?;
    let mut picture = frame::Video::new(ffmpeg::format::Pixel::YUV420P, s.width, s.height);
    for i in 0..3 {
        picture.data_mut(i).fill(128);
    }
    enc.send(&picture, 0, true)?;
    enc.send_eof();
    let mut out = Vec::new();
    enc.receive(&mut out)?;
    out.first()
        .and_then(|u| sequence_header(&u.data))
        .ok_or_else(|| encode_error("rav1e wrote no sequence header on a keyframe"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_obus_and_finds_the_sequence_header() {
        // Temporal delimiter (type 2, size 0), sequence header (type 1, 2 bytes),
        // frame (type 6, 1 byte).
        let tu = [0x12, 0x00, 0x0a, 0x02, 0xaa, 0xbb, 0x32, 0x01, 0xcc];
        let got: Vec<u8> = obus(&tu).iter().map(|(t, _)| *t).collect();
        assert_eq!(got, vec![2, 1, 6]);
        assert_eq!(
            &sequence_header(&tu).unwrap()[..],
            &[0x0a, 0x02, 0xaa, 0xbb]
        );
        // Truncated: stops, never panics.
        for cut in 0..tu.len() {
            let _ = obus(&tu[..cut]);
        }
        assert_eq!(obus(&tu[..5]).len(), 1);
    }
}
