//! Temporal layers of H.264 access units, read from the bitstream: which frames a
//! protocol unit may drop to serve half or quarter frame rate without re-encoding.
//!
//! Only two fields of each access unit matter: `nal_ref_idc` of its first slice (0 = no
//! picture references this one) and the slice type. Reading them needs the NAL header and
//! two Exp-Golomb codes of the slice header (ITU-T H.264 §7.3.3), a few lines written here
//! rather than pulling a bitstream-parsing crate.

use divisor_link::{Codec, Frame, FrameFlags, Message, TrackInfo};

use crate::ingest::h264;
use crate::pipeline::{Stage, StageError};

/// The slice type of an access unit's first slice (`slice_type % 5`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceType {
    P,
    B,
    I,
    Sp,
    Si,
}

/// What the first slice of an access unit says about its place in the prediction
/// structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PictureKind {
    /// An IDR picture (NAL type 5).
    pub idr: bool,
    /// `nal_ref_idc`: 0 means no other picture references this one.
    pub nal_ref_idc: u8,
    pub slice_type: SliceType,
}

impl PictureKind {
    /// Whether no other picture may reference this one.
    pub fn disposable(&self) -> bool {
        self.nal_ref_idc == 0
    }
}

/// Reads bits MSB first over a NAL payload, skipping emulation prevention bytes.
struct BitReader<'a> {
    data: &'a [u8],
    byte: usize,
    bit: u8,
    zeros: u8,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader {
            data,
            byte: 0,
            bit: 0,
            zeros: 0,
        }
    }

    fn read_bit(&mut self) -> Option<u32> {
        if self.bit == 0 {
            // Entering a new byte: drop an emulation prevention byte (00 00 03).
            let b = *self.data.get(self.byte)?;
            if self.zeros >= 2 && b == 3 {
                self.byte += 1;
                self.zeros = 0;
            }
            let b = *self.data.get(self.byte)?;
            self.zeros = if b == 0 { self.zeros + 1 } else { 0 };
        }
        let b = *self.data.get(self.byte)?;
        let v = (b >> (7 - self.bit)) & 1;
        self.bit += 1;
        if self.bit == 8 {
            self.bit = 0;
            self.byte += 1;
        }
        Some(u32::from(v))
    }

    /// Unsigned Exp-Golomb code, `ue(v)`.
    fn read_ue(&mut self) -> Option<u32> {
        let mut leading = 0;
        while self.read_bit()? == 0 {
            leading += 1;
            if leading > 31 {
                return None;
            }
        }
        let mut rest = 0u64;
        for _ in 0..leading {
            rest = (rest << 1) | u64::from(self.read_bit()?);
        }
        u32::try_from((1u64 << leading) - 1 + rest).ok()
    }
}

/// Classify an access unit (its NAL units) by its first slice; `None` when it holds no
/// slice or the slice header is unreadable.
pub fn classify(nals: &[&[u8]]) -> Option<PictureKind> {
    let slice = nals.iter().find(|n| matches!(h264::nal_type(n), 1 | 5))?;
    let mut r = BitReader::new(slice.get(1..)?);
    let _first_mb_in_slice = r.read_ue()?;
    let slice_type = match r.read_ue()? % 5 {
        0 => SliceType::P,
        1 => SliceType::B,
        2 => SliceType::I,
        3 => SliceType::Sp,
        _ => SliceType::Si,
    };
    Some(PictureKind {
        idr: h264::nal_type(slice) == h264::NAL_IDR,
        nal_ref_idc: (slice[0] >> 5) & 0x03,
        slice_type,
    })
}

/// Layer of a picture in a stream whose structure is known to be a strict B pyramid
/// (our own x264 encodes: `b-pyramid=strict`, so P pictures never reference a B):
/// I/P = 0, reference B = 1, non-reference = 2.
pub(crate) fn strict_pyramid_layer(kind: &PictureKind) -> u8 {
    if kind.disposable() {
        2
    } else if kind.slice_type == SliceType::B {
        1
    } else {
        0
    }
}

/// Set the temporal layer and [`FrameFlags::DISPOSABLE`] of a passthrough H.264 frame from
/// its bitstream. Without knowing how the stream's P pictures choose their references, the
/// only safe claim is the non-reference one: such pictures get layer 2 and DISPOSABLE,
/// everything else stays in layer 0 (so the quarter-rate tier of a stored file equals its
/// half-rate tier). Frames of other codecs, and unreadable ones, are left alone.
pub fn mark_layers(frame: &mut Frame) {
    if frame.codec != Codec::H264 {
        return;
    }
    let nals = h264::split_annexb(&frame.data);
    let Some(kind) = classify(&nals) else {
        return;
    };
    if kind.disposable() && !kind.idr {
        frame.flags = (frame.flags | FrameFlags::DISPOSABLE).with_layer(2);
    } else {
        frame.flags.remove(FrameFlags::DISPOSABLE);
        frame.flags = frame.flags.with_layer(0);
    }
}

/// A [`Stage`] applying [`mark_layers`] to every H.264 frame: tiers for passthrough
/// channels.
#[derive(Debug, Default)]
pub struct LayerMarker;

impl Stage for LayerMarker {
    fn tracks(&mut self, input: &[TrackInfo]) -> Result<Vec<TrackInfo>, StageError> {
        Ok(input.to_vec())
    }

    fn push(&mut self, mut frame: Frame, out: &mut Vec<Message>) -> Result<(), StageError> {
        mark_layers(&mut frame);
        out.push(Message::Frame(frame));
        Ok(())
    }

    fn flush(&mut self, _out: &mut Vec<Message>) -> Result<(), StageError> {
        Ok(())
    }

    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(data: &[u8]) -> Frame {
        Frame {
            channel: 1,
            track: 0,
            codec: Codec::H264,
            flags: FrameFlags::empty(),
            pts: 0,
            dts: 0,
            duration: 0,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn reads_slice_type_and_ref_idc() {
        // IDR: nal 0x65, first_mb 0 ('1'), slice_type 7 ('0001000') -> 1000 1000 = 0x88.
        let k = classify(&[&[0x65, 0x88, 0x84]]).unwrap();
        assert!(k.idr);
        assert_eq!(k.slice_type, SliceType::I);
        // Reference B: nal_ref_idc 1, type 1; first_mb '1', slice_type 1 ('010') -> 1010 = 0xa0.
        let k = classify(&[&[0x21, 0xa0]]).unwrap();
        assert_eq!((k.nal_ref_idc, k.slice_type), (1, SliceType::B));
        assert_eq!(strict_pyramid_layer(&k), 1);
        // Non-reference B, slice_type 6 ('00111') -> 1001 11.. = 0x9c.
        let k = classify(&[&[0x01, 0x9c]]).unwrap();
        assert_eq!((k.nal_ref_idc, k.slice_type), (0, SliceType::B));
        assert_eq!(strict_pyramid_layer(&k), 2);
        // P, slice_type 5 ('00110') -> 1001 10.. = 0x98.
        let k = classify(&[&[0x41, 0x98]]).unwrap();
        assert_eq!((k.slice_type, strict_pyramid_layer(&k)), (SliceType::P, 0));
    }

    #[test]
    fn skips_emulation_prevention() {
        // first_mb_in_slice with 23 leading zeros makes the raw bytes 00 00 01, which the
        // NAL escapes as 00 00 03 01; then slice_type '011' (2 = I).
        let bits = format!("{}1{}011", "0".repeat(23), "0".repeat(23));
        let mut rbsp = Vec::new();
        for chunk in bits.as_bytes().chunks(8) {
            let s = std::str::from_utf8(chunk).unwrap();
            rbsp.push(u8::from_str_radix(&format!("{s:1<8}"), 2).unwrap());
        }
        let mut nal = vec![0x41];
        let mut zeros = 0;
        for b in rbsp {
            if zeros >= 2 && b <= 3 {
                nal.push(3);
                zeros = 0;
            }
            nal.push(b);
            zeros = if b == 0 { zeros + 1 } else { 0 };
        }
        assert_eq!(&nal[1..5], &[0, 0, 3, 1]);
        let k = classify(&[&nal]).unwrap();
        assert_eq!(k.slice_type, SliceType::I);
    }

    #[test]
    fn garbage_never_panics() {
        assert!(classify(&[]).is_none());
        assert!(classify(&[&[0x41]]).is_none());
        assert!(classify(&[&[0x41, 0, 0, 0, 0, 0]]).is_none());
        for len in 0..6 {
            let _ = classify(&[&[0x65, 0xff, 0x00, 0x00, 0x03, 0x01][..len]]);
        }
    }

    #[test]
    fn marks_only_non_reference_pictures() {
        let mut f = frame(&[0, 0, 0, 1, 0x01, 0x9c]);
        mark_layers(&mut f);
        assert!(f.flags.contains(FrameFlags::DISPOSABLE));
        assert_eq!(f.flags.layer(), 2);
        let mut f = frame(&[0, 0, 0, 1, 0x21, 0xa0]);
        mark_layers(&mut f);
        assert!(!f.flags.contains(FrameFlags::DISPOSABLE));
        assert_eq!(f.flags.layer(), 0);
    }
}
