//! RTP packetisation: frames from the link become RTP *payloads*, once per channel.
//!
//! "Packetise once, send many": a [`Packetizer`] turns each [`Frame`] into a list of
//! [`RtpPayload`]s (payload bytes + marker bit, no RTP header). The fan-out then writes a
//! 12-byte header per client with [`RtpHeader`] / [`write_rtp_header`]; the payload bytes
//! are shared (`Bytes` is reference counted) between all clients of a channel.
//!
//! The RTP timestamp of every payload of a frame is the frame's `pts` in the track clock
//! plus the client's random offset, modulo 2^32: see [`rtp_timestamp`].
//!
//! Codecs:
//! - H.264: RFC 6184, packetization-mode=1 (single NAL unit, STAP-A, FU-A), [`h264`];
//! - AAC: RFC 3640 mpeg4-generic, AAC-hbr, [`aac`];
//! - Opus: RFC 7587, [`opus`];
//! - AV1: AOMedia "RTP Payload Format For AV1" v1.0, [`av1`];
//! - content-encrypted frames of any codec: [`opaque`] (`X-DIVISOR-ENC`).

pub mod aac;
pub mod av1;
pub mod h264;
pub mod opaque;
pub mod opus;

use bytes::{BufMut, Bytes, BytesMut};
use divisor_link::{Codec, Frame, FrameFlags, TrackInfo};

/// Default largest RTP packet (12-byte header + payload) we emit, in bytes. Leaves room
/// under a 1500-byte Ethernet MTU for IP/UDP headers, SRTP tags and tunnel overheads.
pub const DEFAULT_MTU: usize = 1400;

/// Size of the fixed RTP header we write (no CSRCs, no extension).
pub const RTP_HEADER_LEN: usize = 12;

/// Smallest MTU [`Packetizer::with_mtu`] accepts (RTP header + a useful payload).
pub const MIN_MTU: usize = RTP_HEADER_LEN + 64;

/// One RTP payload (no RTP header) and the marker bit its packet must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpPayload {
    pub data: Bytes,
    pub marker: bool,
}

/// Why a frame could not be packetised. The frame is to be dropped; the packetiser stays
/// usable for the next frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketizeError {
    #[error("frame codec {frame:?} does not match the track codec {track:?}")]
    CodecMismatch { frame: Codec, track: Codec },
    #[error("MTU {mtu} is below the minimum of {min} bytes")]
    MtuTooSmall { mtu: usize, min: usize },
    #[error("H.264 frame is not Annex B: no start code at its beginning")]
    NoStartCode,
    #[error("AAC access unit of {0} bytes does not fit the 13-bit AU-size field (max 8191)")]
    AacAuTooLarge(usize),
    #[error("Opus packet of {size} bytes exceeds the RTP payload budget of {budget} bytes")]
    OpusPacketTooLarge { size: usize, budget: usize },
    #[error("malformed AV1 temporal unit: {0}")]
    Av1(#[from] av1::Av1Error),
    #[error("rtp payloader: {0}")]
    Rtp(String),
    #[error("no RTP packetiser for {0:?} yet")]
    UnsupportedCodec(Codec),
}

#[derive(Debug)]
enum Inner {
    H264(h264::H264Packetizer),
    Aac(aac::AacPacketizer),
    Opus(opus::OpusPacketizer),
    Av1(av1::Av1Packetizer),
}

/// Turns the frames of one track into RTP payloads.
#[derive(Debug)]
pub struct Packetizer {
    codec: Codec,
    budget: usize,
    inner: Inner,
}

impl Packetizer {
    /// A packetiser for `track` whose RTP packets are at most [`DEFAULT_MTU`] bytes.
    pub fn new(track: &TrackInfo) -> Result<Self, PacketizeError> {
        Self::with_mtu(track, DEFAULT_MTU)
    }

    /// A packetiser for `track` whose RTP packets (12-byte header included) are at most
    /// `mtu` bytes. SRTP or RTSP-interleaved overheads are the caller's to subtract.
    pub fn with_mtu(track: &TrackInfo, mtu: usize) -> Result<Self, PacketizeError> {
        if mtu < MIN_MTU {
            return Err(PacketizeError::MtuTooSmall { mtu, min: MIN_MTU });
        }
        let budget = mtu - RTP_HEADER_LEN;
        let inner = match track.codec {
            Codec::H264 => Inner::H264(h264::H264Packetizer::new(budget)),
            Codec::Aac => Inner::Aac(aac::AacPacketizer::new(budget)),
            Codec::Opus => Inner::Opus(opus::OpusPacketizer::new(budget)),
            Codec::Av1 => Inner::Av1(av1::Av1Packetizer::new(budget)),
        };
        Ok(Packetizer {
            codec: track.codec,
            budget,
            inner,
        })
    }

    /// The codec this packetiser handles.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Largest payload this packetiser emits (MTU minus the RTP header).
    pub fn payload_budget(&self) -> usize {
        self.budget
    }

    /// The RTP payloads of `frame`, in sending order. All share the RTP timestamp
    /// [`rtp_timestamp`]`(frame, offset)`. An empty frame (e.g. end of stream) yields none.
    pub fn packetize(&mut self, frame: &Frame) -> Result<Vec<RtpPayload>, PacketizeError> {
        let mut out = Vec::new();
        self.packetize_into(frame, &mut out)?;
        Ok(out)
    }

    /// As [`Packetizer::packetize`], appending to `out` (reuse its allocation). On error
    /// `out` is left as it was.
    pub fn packetize_into(
        &mut self,
        frame: &Frame,
        out: &mut Vec<RtpPayload>,
    ) -> Result<(), PacketizeError> {
        if frame.codec != self.codec {
            return Err(PacketizeError::CodecMismatch {
                frame: frame.codec,
                track: self.codec,
            });
        }
        if frame.data.is_empty() {
            return Ok(());
        }
        if frame.flags.contains(FrameFlags::ENCRYPTED) {
            // Ciphertext: the codec's payloader cannot parse it (see `opaque`).
            return opaque::packetize(&frame.data, self.budget, out);
        }
        let start = out.len();
        let res = match &mut self.inner {
            Inner::H264(p) => p.packetize(&frame.data, out),
            Inner::Aac(p) => p.packetize(&frame.data, out),
            Inner::Opus(p) => p.packetize(&frame.data, out),
            Inner::Av1(p) => p.packetize(&frame.data, out),
        };
        if res.is_err() {
            out.truncate(start);
        }
        res
    }
}

/// The RTP timestamp of `frame`: its pts in the track clock plus the stream's random
/// `offset`, modulo 2^32 (negative pts wrap correctly).
pub fn rtp_timestamp(frame: &Frame, offset: u32) -> u32 {
    (frame.pts as u32).wrapping_add(offset)
}

/// Fields of a fixed 12-byte RTP header (version 2, no padding, no extension, no CSRC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// The 12 header bytes.
    #[inline]
    pub fn to_bytes(&self) -> [u8; RTP_HEADER_LEN] {
        let mut b = [0u8; RTP_HEADER_LEN];
        self.write(&mut b);
        b
    }

    /// Write the header into `buf`.
    #[inline]
    pub fn write(&self, buf: &mut [u8; RTP_HEADER_LEN]) {
        write_rtp_header(
            buf,
            self.payload_type,
            self.marker,
            self.sequence,
            self.timestamp,
            self.ssrc,
        );
    }

    /// Append header + `payload` to `out` (one contiguous RTP packet).
    #[inline]
    pub fn write_packet(&self, payload: &[u8], out: &mut BytesMut) {
        out.reserve(RTP_HEADER_LEN + payload.len());
        out.put_slice(&self.to_bytes());
        out.put_slice(payload);
    }

    /// A full RTP packet: this header followed by `payload`, in one allocation.
    pub fn packet(&self, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(RTP_HEADER_LEN + payload.len());
        self.write_packet(payload, &mut out);
        out.freeze()
    }
}

/// Write a fixed RTP header (V=2, P=0, X=0, CC=0) into `buf`. `pt` is masked to 7 bits.
#[inline]
pub fn write_rtp_header(
    buf: &mut [u8; RTP_HEADER_LEN],
    pt: u8,
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
) {
    buf[0] = 0x80;
    buf[1] = (pt & 0x7f) | if marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod test_util {
    use bytes::Bytes;
    use divisor_link::{Codec, Frame, FrameFlags, TrackInfo};

    pub fn track(codec: Codec) -> TrackInfo {
        let video = codec.is_video();
        TrackInfo {
            track: if video { 0 } else { 1 },
            codec,
            clock_rate: match codec {
                Codec::H264 | Codec::Av1 => 90000,
                Codec::Aac => 44100,
                Codec::Opus => 48000,
            },
            width: if video { 1280 } else { 0 },
            height: if video { 720 } else { 0 },
            sample_rate: if video { 0 } else { 44100 },
            channels: if video { 0 } else { 2 },
            bitrate: 0,
            params: vec![],
        }
    }

    pub fn frame(codec: Codec, pts: i64, data: impl Into<Bytes>) -> Frame {
        Frame {
            channel: 1,
            track: 0,
            codec,
            flags: FrameFlags::empty(),
            pts,
            dts: pts,
            duration: 0,
            data: data.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn header_matches_rtp_crate() {
        let h = RtpHeader {
            payload_type: 96,
            marker: true,
            sequence: 0xabcd,
            timestamp: 0x1234_5678,
            ssrc: 0xdead_beef,
        };
        let pkt = h.packet(b"hello");
        assert_eq!(pkt.len(), 17);
        // Compare with the rtp crate's own header marshalling.
        let theirs = rtp::header::Header {
            version: 2,
            marker: true,
            payload_type: 96,
            sequence_number: 0xabcd,
            timestamp: 0x1234_5678,
            ssrc: 0xdead_beef,
            ..Default::default()
        };
        let mut buf = vec![0u8; 12];
        let n = rtp_header_marshal(&theirs, &mut buf);
        assert_eq!(n, 12);
        assert_eq!(&pkt[..12], &buf[..]);
        assert_eq!(&pkt[12..], b"hello");

        let h2 = RtpHeader {
            marker: false,
            payload_type: 0xff,
            ..h
        };
        assert_eq!(h2.to_bytes()[1], 0x7f);
    }

    fn rtp_header_marshal(h: &rtp::header::Header, buf: &mut [u8]) -> usize {
        // Through the rtp crate's Packet marshal: header + empty payload.
        let p = rtp::packet::Packet {
            header: h.clone(),
            payload: Bytes::new(),
        };
        webrtc_util::marshal::Marshal::marshal_to(&p, buf).unwrap()
    }

    #[test]
    fn codec_mismatch_and_empty_frames() {
        let mut p = Packetizer::new(&track(Codec::Aac)).unwrap();
        assert_eq!(
            p.packetize(&frame(Codec::Opus, 0, vec![1u8, 2, 3])),
            Err(PacketizeError::CodecMismatch {
                frame: Codec::Opus,
                track: Codec::Aac
            })
        );
        assert!(p
            .packetize(&frame(Codec::Aac, 0, Bytes::new()))
            .unwrap()
            .is_empty());
        assert!(matches!(
            Packetizer::with_mtu(&track(Codec::H264), 20),
            Err(PacketizeError::MtuTooSmall { .. })
        ));
    }

    #[test]
    fn timestamps_wrap() {
        let f = frame(Codec::H264, -3000, vec![0u8]);
        assert_eq!(rtp_timestamp(&f, 1000), (1000u32).wrapping_sub(3000));
        let f = frame(Codec::H264, (1i64 << 32) + 5, vec![0u8]);
        assert_eq!(rtp_timestamp(&f, 10), 15);
    }

    #[test]
    fn packetize_into_keeps_out_on_error() {
        let mut p = Packetizer::new(&track(Codec::H264)).unwrap();
        let mut out = vec![RtpPayload {
            data: Bytes::from_static(b"x"),
            marker: false,
        }];
        assert!(p
            .packetize_into(&frame(Codec::H264, 0, vec![9u8, 9, 9]), &mut out)
            .is_err());
        assert_eq!(out.len(), 1);
    }
}
