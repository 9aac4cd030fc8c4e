//! AV1 over RTP: the AOMedia "RTP Payload Format For AV1" (v1.0), 90 kHz clock.
//!
//! Input is one temporal unit per frame, as the encoder unit's rav1e stage emits it: OBUs in
//! the low-overhead bitstream format (every OBU carries `obu_size`), usually a temporal
//! delimiter first, the sequence header on keyframes, then the frame OBUs.
//!
//! Each payload starts with the one-byte aggregation header `Z|Y|W W|N|0 0 0`:
//! - Z: the first OBU element continues an OBU fragmented in the previous packet;
//! - Y: the last OBU element continues in the next packet;
//! - W: the number of OBU elements (1..=3; every element but the last is prefixed with its
//!   leb128 length); W = 0, every element length-prefixed, is legal but not produced here;
//! - N: first packet of a coded video sequence.
//!
//! OBUs are sent with `obu_has_size_field` cleared and their size removed; temporal
//! delimiter, tile list and padding OBUs are dropped (the RTP timestamp and the marker bit
//! delimit temporal units). The marker bit is set on the last packet of the temporal unit.
//!
//! Packets are filled greedily: OBU elements are appended while they fit (at most three per
//! packet, so W is always 1..=3 and only the elements before the last carry a length), and
//! an OBU larger than the room left is fragmented across packets (Y on the packet it
//! continues from, Z on the packet it continues in). N is set on the first packet of a
//! temporal unit that starts a coded video sequence ([`starts_coded_video_sequence`]): a
//! sequence header before the first frame header, and that frame header shows a key frame
//! with temporal id 0. Chrome marks a frame as a keyframe from N, so this decides when a
//! viewer can start decoding after a PLI.
//!
//! Hand-written rather than wrapping `rtp::codecs::av1::Av1Payloader` (webrtc-rs 0.17),
//! because that payloader is not correct:
//! - its leb128 writer is wrong for values of 128 and more: an OBU element of 300 bytes
//!   before the last one of a packet gets the length `82 d8 02` (43778) instead of `ac 02`,
//!   so a receiver loses the rest of the packet, and the packet exceeds the MTU budget by
//!   a byte (checked against 0.17.2);
//! - it trusts its input: an `obu_size` running past the end of the frame makes it slice out
//!   of bounds (a panic) and a truncated leb128 is read as size 0;
//! - it sets N whenever the first kept OBU is a sequence header, whatever the frame type.
//!
//! [`parse_obus`] validates the whole temporal unit first and refuses a malformed one with
//! a typed [`Av1Error`]; nothing here indexes outside input it has not checked.

use bytes::{BufMut, Bytes, BytesMut};

use super::{PacketizeError, RtpPayload};

/// OBU type of a sequence header (AV1 §6.2.2).
pub const OBU_SEQUENCE_HEADER: u8 = 1;
/// OBU type of a temporal delimiter.
pub const OBU_TEMPORAL_DELIMITER: u8 = 2;
/// OBU type of a frame header.
pub const OBU_FRAME_HEADER: u8 = 3;
/// OBU type of a frame (frame header and tile group).
pub const OBU_FRAME: u8 = 6;
/// OBU type of a tile list (large scale tile decoding only).
pub const OBU_TILE_LIST: u8 = 8;
/// OBU type of padding.
pub const OBU_PADDING: u8 = 15;

/// Bit of the aggregation header that marks the first packet of a coded video sequence.
pub const AGGREGATION_N_BIT: u8 = 0x08;

/// Why a temporal unit is not a well-formed low-overhead AV1 bitstream. `offset` is the
/// byte offset of the offending OBU in the frame.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Av1Error {
    #[error("OBU at byte {offset}: forbidden bit is set")]
    ForbiddenBit { offset: usize },
    #[error("OBU at byte {offset}: extension header byte missing")]
    TruncatedHeader { offset: usize },
    #[error("OBU at byte {offset}: obu_size (leb128) is truncated")]
    TruncatedLeb128 { offset: usize },
    #[error("OBU at byte {offset}: obu_size (leb128) is longer than 8 bytes")]
    Leb128TooLong { offset: usize },
    #[error(
        "OBU at byte {offset}: obu_size {size} runs past the end of the frame \
         ({remaining} bytes left)"
    )]
    ObuSizePastEnd {
        offset: usize,
        size: u64,
        remaining: usize,
    },
}

/// Where one OBU lies in a temporal unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObuSpan {
    /// `obu_type` (4 bits).
    pub obu_type: u8,
    /// Byte offset of the OBU header.
    pub start: usize,
    /// The OBU header byte.
    pub header: u8,
    /// The extension header byte, when `obu_extension_flag` is set.
    pub extension: Option<u8>,
    /// Byte offset of the OBU payload (after the header and the size field).
    pub payload_start: usize,
    /// Byte offset just past the OBU payload.
    pub end: usize,
}

impl ObuSpan {
    /// `temporal_id` from the extension header (0 without one).
    pub fn temporal_id(&self) -> u8 {
        self.extension.map_or(0, |e| e >> 5)
    }

    /// Whether the RTP payload format drops this OBU (temporal delimiter, tile list,
    /// padding).
    pub fn dropped_in_rtp(&self) -> bool {
        matches!(
            self.obu_type,
            OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST | OBU_PADDING
        )
    }
}

/// Read an unsigned leb128 (AV1 §4.10.5: at most 8 bytes) from the start of `data`:
/// (value, bytes used). `Err(true)` when longer than 8 bytes, `Err(false)` when truncated.
pub(crate) fn read_leb128(data: &[u8]) -> Result<(u64, usize), bool> {
    let mut value = 0u64;
    for i in 0..8 {
        let Some(&b) = data.get(i) else {
            return Err(false);
        };
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(true)
}

/// The OBUs of the temporal unit `tu`, validated: every OBU header is complete, every
/// `obu_size` is a well-formed leb128 that ends inside `tu`. An OBU without a size field
/// extends to the end of `tu` (allowed for the last OBU).
pub fn parse_obus(tu: &[u8]) -> Result<Vec<ObuSpan>, Av1Error> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < tu.len() {
        let offset = pos;
        let header = tu[pos];
        if header & 0x80 != 0 {
            return Err(Av1Error::ForbiddenBit { offset });
        }
        pos += 1;
        let extension = if header & 0x04 != 0 {
            let e = *tu.get(pos).ok_or(Av1Error::TruncatedHeader { offset })?;
            pos += 1;
            Some(e)
        } else {
            None
        };
        let end = if header & 0x02 != 0 {
            let (size, used) = read_leb128(&tu[pos..]).map_err(|too_long| {
                if too_long {
                    Av1Error::Leb128TooLong { offset }
                } else {
                    Av1Error::TruncatedLeb128 { offset }
                }
            })?;
            pos += used;
            let remaining = tu.len() - pos;
            match usize::try_from(size) {
                Ok(s) if s <= remaining => pos + s,
                _ => {
                    return Err(Av1Error::ObuSizePastEnd {
                        offset,
                        size,
                        remaining,
                    })
                }
            }
        } else {
            tu.len()
        };
        out.push(ObuSpan {
            obu_type: (header >> 3) & 0x0f,
            start: offset,
            header,
            extension,
            payload_start: pos,
            end,
        });
        pos = end;
    }
    Ok(out)
}

/// Whether the temporal unit `tu` (with `obus` from [`parse_obus`]) starts a new coded video
/// sequence (AV1 §7.5): a sequence header OBU comes before the first frame header, and that
/// frame header has `frame_type` KEY_FRAME, `show_frame` 1, `show_existing_frame` 0 and
/// `temporal_id` 0.
pub fn starts_coded_video_sequence(tu: &[u8], obus: &[ObuSpan]) -> bool {
    // reduced_still_picture_header of the sequence header seen so far.
    let mut reduced_still: Option<bool> = None;
    for o in obus {
        let payload = &tu[o.payload_start..o.end];
        match o.obu_type {
            OBU_SEQUENCE_HEADER => {
                // seq_profile f(3), still_picture f(1), reduced_still_picture_header f(1).
                reduced_still = payload.first().map(|b| b & 0x08 != 0);
            }
            OBU_FRAME_HEADER | OBU_FRAME => {
                let Some(reduced) = reduced_still else {
                    return false;
                };
                if o.temporal_id() != 0 {
                    return false;
                }
                if reduced {
                    // A reduced still picture header implies a shown key frame.
                    return true;
                }
                // uncompressed_header: show_existing_frame f(1), frame_type f(2),
                // show_frame f(1). KEY_FRAME = 0.
                return match payload.first() {
                    Some(&b) => b & 0x80 == 0 && (b >> 5) & 0x03 == 0 && b & 0x10 != 0,
                    None => false,
                };
            }
            _ => {}
        }
    }
    false
}

/// Most OBU elements per packet: with up to three, W counts them and the last one needs no
/// length prefix.
const MAX_ELEMENTS: usize = 3;

/// Size of the aggregation header.
const AGGREGATION_HEADER_LEN: usize = 1;

/// Bytes of the unsigned leb128 encoding of `v`.
fn leb128_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Append the minimal unsigned leb128 encoding of `v`.
fn put_leb128(out: &mut BytesMut, mut v: usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.put_u8(b);
            return;
        }
        out.put_u8(b | 0x80);
    }
}

/// One OBU as it travels in RTP: header with `obu_has_size_field` cleared, optional
/// extension byte, payload. `len()` is the size of its whole OBU element.
struct RtpObu<'a> {
    head: [u8; 2],
    head_len: usize,
    payload: &'a [u8],
}

impl<'a> RtpObu<'a> {
    fn new(tu: &'a [u8], o: &ObuSpan) -> Self {
        let mut head = [o.header & !0x02, 0];
        let mut head_len = 1;
        if let Some(e) = o.extension {
            head[1] = e;
            head_len = 2;
        }
        RtpObu {
            head,
            head_len,
            payload: &tu[o.payload_start..o.end],
        }
    }

    fn len(&self) -> usize {
        self.head_len + self.payload.len()
    }

    /// Append bytes `from..from + len` of the element to `out`.
    fn put_range(&self, from: usize, len: usize, out: &mut BytesMut) {
        let end = from + len;
        if from < self.head_len {
            out.put_slice(&self.head[from..end.min(self.head_len)]);
        }
        if end > self.head_len {
            let p0 = from.saturating_sub(self.head_len);
            out.put_slice(&self.payload[p0..end - self.head_len]);
        }
    }
}

/// One OBU element of a packet being filled: bytes `from..from + len` of OBU `obu`.
#[derive(Clone, Copy)]
struct Element {
    obu: usize,
    from: usize,
    len: usize,
}

/// AV1 RTP packetiser; see the module docs.
#[derive(Debug)]
pub struct Av1Packetizer {
    /// Bytes available for OBU elements in a packet (payload budget minus the aggregation
    /// header); at least 2.
    room: usize,
}

impl Av1Packetizer {
    /// `budget` is the largest payload to emit (MTU minus RTP header).
    pub fn new(budget: usize) -> Self {
        Av1Packetizer {
            room: budget.saturating_sub(AGGREGATION_HEADER_LEN).max(2),
        }
    }

    /// Append the payloads of the temporal unit `tu` to `out`. A temporal unit made only of
    /// dropped OBUs (e.g. a lone temporal delimiter) yields none.
    pub fn packetize(
        &mut self,
        tu: &Bytes,
        out: &mut Vec<RtpPayload>,
    ) -> Result<(), PacketizeError> {
        let spans = parse_obus(tu)?;
        let new_sequence = starts_coded_video_sequence(tu, &spans);
        let obus: Vec<RtpObu> = spans
            .iter()
            .filter(|o| !o.dropped_in_rtp())
            .map(|o| RtpObu::new(tu, o))
            .collect();
        let start = out.len();
        let mut elements: Vec<Element> = Vec::with_capacity(MAX_ELEMENTS);
        // Bytes taken in the packet being filled: its elements and the length prefixes of
        // all but the last.
        let mut used = 0;
        for (i, obu) in obus.iter().enumerate() {
            let size = obu.len();
            let mut from = 0;
            while from < size {
                // Appending an element gives the current last one a length prefix.
                let prefix = elements.last().map_or(0, |e| leb128_len(e.len));
                if elements.len() == MAX_ELEMENTS || used + prefix >= self.room {
                    self.flush(
                        &obus,
                        &mut elements,
                        new_sequence && out.len() == start,
                        out,
                    );
                    used = 0;
                    continue;
                }
                let len = (size - from).min(self.room - used - prefix);
                used += prefix + len;
                elements.push(Element { obu: i, from, len });
                from += len;
                if from < size {
                    // Fragmented: this packet is full.
                    self.flush(
                        &obus,
                        &mut elements,
                        new_sequence && out.len() == start,
                        out,
                    );
                    used = 0;
                }
            }
        }
        self.flush(
            &obus,
            &mut elements,
            new_sequence && out.len() == start,
            out,
        );
        if out.len() > start {
            if let Some(last) = out.last_mut() {
                last.marker = true;
            }
        }
        Ok(())
    }

    /// Write the packet made of `elements` (if any) to `out` and empty `elements`.
    fn flush(
        &self,
        obus: &[RtpObu],
        elements: &mut Vec<Element>,
        n: bool,
        out: &mut Vec<RtpPayload>,
    ) {
        let (Some(first), Some(last)) = (elements.first(), elements.last()) else {
            return;
        };
        let mut agg = (elements.len() as u8) << 4;
        if first.from > 0 {
            agg |= 0x80; // Z
        }
        if last.from + last.len < obus[last.obu].len() {
            agg |= 0x40; // Y
        }
        if n {
            agg |= AGGREGATION_N_BIT;
        }
        let size = AGGREGATION_HEADER_LEN
            + elements
                .iter()
                .map(|e| e.len + leb128_len(e.len))
                .sum::<usize>();
        let mut b = BytesMut::with_capacity(size);
        b.put_u8(agg);
        let count = elements.len();
        for (k, e) in elements.drain(..).enumerate() {
            if k + 1 < count {
                put_leb128(&mut b, e.len);
            }
            obus[e.obu].put_range(e.from, e.len, &mut b);
        }
        out.push(RtpPayload {
            data: b.freeze(),
            marker: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packetize::test_util::*;
    use crate::packetize::{Packetizer, DEFAULT_MTU, RTP_HEADER_LEN};
    use divisor_link::{Codec, FrameFlags};
    use rand::{Rng, SeedableRng};

    fn put_leb128(out: &mut Vec<u8>, mut v: usize) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// One OBU in the low-overhead format: header (size flag set), extension, leb128 size,
    /// payload.
    fn obu(obu_type: u8, extension: Option<u8>, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(obu_type << 3) | 0x02 | if extension.is_some() { 0x04 } else { 0 }];
        v.extend(extension);
        put_leb128(&mut v, payload.len());
        v.extend_from_slice(payload);
        v
    }

    fn td() -> Vec<u8> {
        obu(OBU_TEMPORAL_DELIMITER, None, &[])
    }

    /// A sequence header payload: profile 0, not still, not reduced.
    fn seq_header() -> Vec<u8> {
        obu(OBU_SEQUENCE_HEADER, None, &[0x00, 0x00, 0x00, 0x0a, 0x0b])
    }

    /// A frame OBU whose header says key frame (shown) or inter frame, body of `len` bytes.
    fn frame_obu(key: bool, len: usize) -> Vec<u8> {
        let mut p = vec![if key { 0x10 } else { 0x30 }];
        p.extend((1..len).map(|i| (i * 7 % 256) as u8));
        obu(OBU_FRAME, None, &p)
    }

    fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    /// What a receiver must get back: the OBUs of `tu` minus the dropped types, each with
    /// `obu_has_size_field` set and a minimal leb128 size.
    fn expected_obus(tu: &[u8]) -> Vec<Vec<u8>> {
        parse_obus(tu)
            .unwrap()
            .into_iter()
            .filter(|o| !o.dropped_in_rtp())
            .map(|o| {
                let mut v = vec![o.header | 0x02];
                v.extend(o.extension);
                put_leb128(&mut v, o.end - o.payload_start);
                v.extend_from_slice(&tu[o.payload_start..o.end]);
                v
            })
            .collect()
    }

    /// A depacketiser written from the spec (§4.4, §4.5, §5), independent of the rtp crate:
    /// reassembles temporal units from payloads and gives back their OBUs in the
    /// low-overhead format (size field restored, minimal leb128), plus the N bit of each
    /// temporal unit's first packet. Checks the rules a receiver relies on and fails the
    /// test (via `Err`) on any violation.
    #[derive(Default)]
    struct Depacketizer {
        /// OBUs completed in the current temporal unit.
        obus: Vec<Vec<u8>>,
        /// OBU being reassembled across packets (without size field).
        partial: Option<Vec<u8>>,
        /// N bit of the temporal unit's first packet, once seen.
        first_n: Option<bool>,
    }

    #[derive(Debug, PartialEq)]
    struct Unit {
        obus: Vec<Vec<u8>>,
        n: bool,
    }

    impl Depacketizer {
        fn push(&mut self, p: &RtpPayload) -> Result<Option<Unit>, String> {
            let d = &p.data[..];
            let (&agg, mut rest) = d.split_first().ok_or("empty payload")?;
            let z = agg & 0x80 != 0;
            let y = agg & 0x40 != 0;
            let w = usize::from((agg >> 4) & 0x03);
            let n = agg & AGGREGATION_N_BIT != 0;
            if agg & 0x07 != 0 {
                return Err(format!("reserved bits set: {agg:#04x}"));
            }
            match self.first_n {
                None => self.first_n = Some(n),
                Some(_) if n => return Err("N set on a packet that is not the first".into()),
                Some(_) => {}
            }
            if z != self.partial.is_some() {
                return Err(format!(
                    "Z={z} but partial OBU pending: {}",
                    self.partial.is_some()
                ));
            }
            let mut elements: Vec<&[u8]> = Vec::new();
            let mut i = 0;
            while !rest.is_empty() {
                i += 1;
                let len = if w == 0 || i < w {
                    let (len, used) = read_leb128(rest).map_err(|_| "bad element length")?;
                    rest = &rest[used..];
                    usize::try_from(len).map_err(|_| "huge")?
                } else {
                    rest.len()
                };
                if len > rest.len() {
                    return Err("element length past the end".into());
                }
                elements.push(&rest[..len]);
                rest = &rest[len..];
                if w != 0 && i == w && !rest.is_empty() {
                    return Err("bytes after the W-th element".into());
                }
            }
            if w != 0 && elements.len() != w {
                return Err(format!("W={w} but {} elements", elements.len()));
            }
            if elements.is_empty() {
                return Err("packet without OBU elements".into());
            }
            let count = elements.len();
            for (k, e) in elements.into_iter().enumerate() {
                let mut whole = if k == 0 && z {
                    let mut p = self.partial.take().ok_or("continuation without start")?;
                    p.extend_from_slice(e);
                    p
                } else {
                    e.to_vec()
                };
                if k == count - 1 && y {
                    self.partial = Some(std::mem::take(&mut whole));
                    continue;
                }
                self.obus.push(restore_size(&whole)?);
            }
            if p.marker {
                if self.partial.is_some() {
                    return Err("marker with a fragment pending".into());
                }
                let unit = Unit {
                    obus: std::mem::take(&mut self.obus),
                    n: self.first_n.take().unwrap_or(false),
                };
                return Ok(Some(unit));
            }
            Ok(None)
        }
    }

    /// An OBU as sent (no size field) back to the low-overhead format.
    fn restore_size(o: &[u8]) -> Result<Vec<u8>, String> {
        let (&h, _) = o.split_first().ok_or("empty OBU element")?;
        if h & 0x02 != 0 {
            return Err("obu_has_size_field set in RTP".into());
        }
        let t = (h >> 3) & 0x0f;
        if matches!(t, OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST | OBU_PADDING) {
            return Err(format!("OBU type {t} must be dropped"));
        }
        let hlen = if h & 0x04 != 0 { 2 } else { 1 };
        if o.len() < hlen {
            return Err("OBU header cut".into());
        }
        let mut v = vec![h | 0x02];
        v.extend_from_slice(&o[1..hlen]);
        put_leb128(&mut v, o.len() - hlen);
        v.extend_from_slice(&o[hlen..]);
        Ok(v)
    }

    fn packetize(tu: &[u8], mtu: usize) -> Result<Vec<RtpPayload>, PacketizeError> {
        let mut p = Packetizer::with_mtu(&track(Codec::Av1), mtu).unwrap();
        p.packetize(&frame(Codec::Av1, 0, tu.to_vec()))
    }

    /// Packetise `tu`, check every packet's size and the marker, depacketise, compare.
    fn round_trip(tu: &[u8], mtu: usize) -> (Vec<RtpPayload>, Unit) {
        let pkts = packetize(tu, mtu).unwrap();
        assert!(!pkts.is_empty());
        let mut d = Depacketizer::default();
        let mut unit = None;
        for (i, p) in pkts.iter().enumerate() {
            assert!(
                RTP_HEADER_LEN + p.data.len() <= mtu,
                "packet {i} is {} bytes, MTU {mtu}",
                p.data.len()
            );
            assert_eq!(p.marker, i == pkts.len() - 1);
            let got = d.push(p).unwrap_or_else(|e| panic!("packet {i}: {e}"));
            assert_eq!(got.is_some(), i == pkts.len() - 1);
            unit = got;
        }
        let unit = unit.unwrap();
        assert_eq!(unit.obus, expected_obus(tu));
        (pkts, unit)
    }

    #[test]
    fn keyframe_small_sets_n_and_aggregates() {
        let tu = concat(&[td(), seq_header(), frame_obu(true, 100)]);
        let (pkts, unit) = round_trip(&tu, DEFAULT_MTU);
        // Sequence header + frame in one packet: W = 2, N = 1, temporal delimiter dropped.
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].data[0], 0x20 | AGGREGATION_N_BIT);
        assert!(unit.n);
        assert_eq!(unit.obus.len(), 2);
    }

    #[test]
    fn inter_frame_has_no_n_and_no_size_fields() {
        let f = frame_obu(false, 50);
        let tu = concat(&[td(), f.clone()]);
        let (pkts, unit) = round_trip(&tu, DEFAULT_MTU);
        assert!(!unit.n);
        // W = 1: the single element carries no length; the OBU has no size field.
        assert_eq!(pkts[0].data[0], 0x10);
        assert_eq!(pkts[0].data[1], f[0] & !0x02);
        assert_eq!(pkts[0].data.len(), 1 + 1 + 50);
    }

    #[test]
    fn sequence_header_on_inter_frame_is_not_n() {
        // A sequence header repeated on an inter frame does not start a sequence; neither
        // does a key frame without a sequence header, nor a hidden key frame, nor a key
        // frame of temporal layer 1.
        for tu in [
            concat(&[td(), seq_header(), frame_obu(false, 20)]),
            concat(&[td(), frame_obu(true, 20)]),
            concat(&[seq_header(), obu(OBU_FRAME, None, &[0x00, 1, 2])]),
            concat(&[seq_header(), obu(OBU_FRAME, Some(0x20), &[0x10, 1, 2])]),
            concat(&[seq_header(), obu(OBU_FRAME, None, &[0x90, 1, 2])]),
        ] {
            let (pkts, unit) = round_trip(&tu, DEFAULT_MTU);
            assert!(!unit.n, "{tu:02x?}");
            assert_eq!(pkts[0].data[0] & AGGREGATION_N_BIT, 0);
        }
        // Metadata before the sequence header, frame header OBU: still a new sequence, and
        // N is set although the sequence header is not the first OBU.
        let tu = concat(&[
            td(),
            obu(5, None, &[1, 2, 3]),
            seq_header(),
            obu(OBU_FRAME_HEADER, Some(0x00), &[0x10, 9]),
            obu(4, None, &[7; 30]),
        ]);
        let (pkts, unit) = round_trip(&tu, DEFAULT_MTU);
        assert!(unit.n);
        // Four OBUs: three in the first packet (W = 3, N), one in the second (W = 1).
        assert_eq!(pkts.len(), 2);
        assert_eq!(pkts[0].data[0], 0x30 | AGGREGATION_N_BIT);
        assert_eq!(pkts[1].data[0], 0x10);
        // Reduced still picture header: always a key frame.
        let tu = concat(&[
            obu(OBU_SEQUENCE_HEADER, None, &[0x18, 0]),
            obu(OBU_FRAME, None, &[0xff, 1]),
        ]);
        assert!(round_trip(&tu, DEFAULT_MTU).1.n);
    }

    #[test]
    fn large_keyframe_fragments_with_z_and_y() {
        let tu = concat(&[td(), seq_header(), frame_obu(true, 5000)]);
        let (pkts, unit) = round_trip(&tu, DEFAULT_MTU);
        assert!(unit.n);
        assert!(pkts.len() >= 4);
        for (i, p) in pkts.iter().enumerate() {
            let agg = p.data[0];
            assert_eq!(agg & 0x80 != 0, i > 0, "Z of packet {i}");
            assert_eq!(agg & 0x40 != 0, i < pkts.len() - 1, "Y of packet {i}");
            assert_eq!(agg & AGGREGATION_N_BIT != 0, i == 0, "N of packet {i}");
        }
    }

    #[test]
    fn small_mtus_and_many_obus_per_packet() {
        let mut parts = vec![td(), seq_header()];
        for i in 0..10 {
            parts.push(obu(5, None, &vec![i as u8; 3 + i * 17]));
        }
        parts.push(frame_obu(true, 700));
        parts.push(obu(OBU_PADDING, None, &[0; 40]));
        parts.push(obu(4, Some(0x08), &[0x55; 300]));
        let tu = concat(&parts);
        for mtu in [
            MIN_MTU_FOR_TESTS,
            77,
            80,
            100,
            141,
            200,
            300,
            576,
            1200,
            DEFAULT_MTU,
        ] {
            let (pkts, unit) = round_trip(&tu, mtu);
            assert!(unit.n);
            if mtu == DEFAULT_MTU {
                // Several OBUs share packets: fewer packets than OBUs.
                assert!(pkts.len() < unit.obus.len(), "{} packets", pkts.len());
            }
        }
    }

    const MIN_MTU_FOR_TESTS: usize = crate::packetize::MIN_MTU;

    #[test]
    fn dropped_obus_only_yield_nothing() {
        let tu = concat(&[
            td(),
            obu(OBU_PADDING, None, &[0; 5]),
            obu(OBU_TILE_LIST, None, &[1]),
        ]);
        assert!(packetize(&tu, DEFAULT_MTU).unwrap().is_empty());
        assert!(packetize(&td(), DEFAULT_MTU).unwrap().is_empty());
    }

    #[test]
    fn last_obu_without_size_field() {
        // The last OBU may omit obu_size: it runs to the end of the frame.
        let mut tu = concat(&[td(), seq_header()]);
        tu.extend_from_slice(&[OBU_FRAME << 3, 0x10, 1, 2, 3]);
        let (_, unit) = round_trip(&tu, DEFAULT_MTU);
        assert!(unit.n);
        assert_eq!(unit.obus[1], vec![(OBU_FRAME << 3) | 2, 4, 0x10, 1, 2, 3]);
    }

    #[test]
    fn malformed_input_gives_typed_errors() {
        let av1 = |e| Err(PacketizeError::Av1(e));
        // Truncated leb128: continuation bit on the last byte.
        assert_eq!(
            packetize(&[0x32, 0x80], DEFAULT_MTU),
            av1(Av1Error::TruncatedLeb128 { offset: 0 })
        );
        let mut tu = td();
        tu.extend_from_slice(&[0x32]);
        assert_eq!(
            packetize(&tu, DEFAULT_MTU),
            av1(Av1Error::TruncatedLeb128 { offset: 2 })
        );
        // Size past the end.
        assert_eq!(
            packetize(&[0x12, 0x00, 0x32, 0x05, 1, 2], DEFAULT_MTU),
            av1(Av1Error::ObuSizePastEnd {
                offset: 2,
                size: 5,
                remaining: 2
            })
        );
        // Huge size.
        assert_eq!(
            packetize(
                &[0x32, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1],
                DEFAULT_MTU
            ),
            av1(Av1Error::ObuSizePastEnd {
                offset: 0,
                size: (1 << 56) - 1,
                remaining: 1
            })
        );
        // Nine-byte leb128.
        assert_eq!(
            packetize(
                &[0x32, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
                DEFAULT_MTU
            ),
            av1(Av1Error::Leb128TooLong { offset: 0 })
        );
        // Extension flag on the last byte.
        assert_eq!(
            packetize(&[0x36], DEFAULT_MTU),
            av1(Av1Error::TruncatedHeader { offset: 0 })
        );
        // Forbidden bit.
        assert_eq!(
            packetize(&[0xb2, 0x00], DEFAULT_MTU),
            av1(Av1Error::ForbiddenBit { offset: 0 })
        );
        // Non-minimal leb128 is legal.
        let tu = [0x32, 0x83, 0x80, 0x00, 0x10, 1, 2];
        assert_eq!(
            round_trip(&tu, DEFAULT_MTU).1.obus,
            vec![vec![0x32, 3, 0x10, 1, 2]]
        );
        // The packetiser stays usable after an error.
        let mut p = Packetizer::new(&track(Codec::Av1)).unwrap();
        assert!(p
            .packetize(&frame(Codec::Av1, 0, vec![0x32, 0x80]))
            .is_err());
        assert_eq!(
            p.packetize(&frame(Codec::Av1, 0, frame_obu(false, 9)))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn every_truncation_is_an_error_or_a_valid_prefix() {
        let tu = concat(&[
            td(),
            seq_header(),
            frame_obu(true, 400),
            obu(4, Some(0x28), &[3; 90]),
        ]);
        for cut in 0..tu.len() {
            let _ = packetize(&tu[..cut], 100);
            let _ = packetize(&tu[cut..], 100);
        }
    }

    #[test]
    fn encrypted_frames_go_opaque() {
        let mut p = Packetizer::new(&track(Codec::Av1)).unwrap();
        let mut f = frame(Codec::Av1, 0, vec![0xffu8; 10]);
        f.flags = FrameFlags::ENCRYPTED;
        assert_eq!(p.packetize(&f).unwrap().len(), 1);
    }

    /// A random temporal unit: optional TD, optional sequence header, random OBUs of every
    /// type (with and without extension), sometimes a last OBU without size field.
    fn random_tu(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
        let mut parts = Vec::new();
        if rng.gen_bool(0.8) {
            parts.push(td());
        }
        if rng.gen_bool(0.3) {
            parts.push(seq_header());
        }
        for _ in 0..rng.gen_range(0..8) {
            let t = rng.gen_range(0..16u8);
            let ext = rng.gen_bool(0.3).then(|| rng.gen::<u8>() & 0xf8);
            let len = match rng.gen_range(0..4) {
                0 => rng.gen_range(0..4),
                1 => rng.gen_range(0..200),
                2 => rng.gen_range(0..3000),
                _ => rng.gen_range(16_000..20_000),
            };
            let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            parts.push(obu(t, ext, &payload));
        }
        let mut tu = concat(&parts);
        if rng.gen_bool(0.2) {
            let len = rng.gen_range(0..500);
            tu.push(6 << 3);
            tu.extend((0..len).map(|_| rng.gen::<u8>()));
        }
        tu
    }

    #[test]
    fn random_temporal_units_round_trip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xa1);
        for _ in 0..3000 {
            let tu = random_tu(&mut rng);
            let mtu = rng.gen_range(crate::packetize::MIN_MTU..1500);
            if expected_obus(&tu).is_empty() {
                assert!(packetize(&tu, mtu).unwrap().is_empty());
                continue;
            }
            let (pkts, unit) = round_trip(&tu, mtu);
            let obus = parse_obus(&tu).unwrap();
            assert_eq!(unit.n, starts_coded_video_sequence(&tu, &obus));
            let _ = pkts;
        }
    }

    /// The frames of an IVF file: (pts, temporal unit), and the 32-byte file header.
    fn read_ivf(data: &[u8]) -> ([u8; 32], Vec<(i64, Vec<u8>)>) {
        assert_eq!(&data[0..4], b"DKIF");
        let header: [u8; 32] = data[..32].try_into().unwrap();
        let mut frames = Vec::new();
        let mut pos = 32;
        while pos + 12 <= data.len() {
            let size = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            let pts = i64::from_le_bytes(data[pos + 4..pos + 12].try_into().unwrap());
            frames.push((pts, data[pos + 12..pos + 12 + size].to_vec()));
            pos += 12 + size;
        }
        assert_eq!(pos, data.len());
        (header, frames)
    }

    fn ffmpeg(args: &[&str]) -> Vec<u8> {
        let out = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
            .args(args)
            .output()
            .expect("ffmpeg must be installed (scripts/install-deps.sh)");
        assert!(
            out.status.success(),
            "ffmpeg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The per-frame MD5s of the decoded pictures (libdav1d).
    fn decoded_md5s(ivf: &std::path::Path) -> Vec<String> {
        let out = ffmpeg(&[
            "-c:v",
            "libdav1d",
            "-i",
            ivf.to_str().unwrap(),
            "-f",
            "framemd5",
            "-",
        ]);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    /// End to end with a real encoder and decoder: ffmpeg (librav1e, what the encoder unit
    /// uses) encodes 2 s of testsrc to IVF; every temporal unit is packetised, depacketised
    /// and written to a new IVF (temporal delimiter restored in front, as the low-overhead
    /// format wants); libdav1d decodes both files and the pictures must match frame for
    /// frame. Done at the default MTU and at a small one (heavy fragmentation).
    #[test]
    fn rav1e_stream_decodes_frame_exact_after_rtp_round_trip() {
        let dir = std::env::temp_dir().join(format!("divisor-av1-rtp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src.ivf");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x180:rate=25",
            "-t",
            "2",
            "-c:v",
            "librav1e",
            "-speed",
            "10",
            "-g",
            "10",
            src.to_str().unwrap(),
        ]);
        let (header, frames) = read_ivf(&std::fs::read(&src).unwrap());
        assert_eq!(frames.len(), 50);
        let want = decoded_md5s(&src);
        assert_eq!(want.len(), 50);

        for mtu in [DEFAULT_MTU, 150] {
            let mut p = Packetizer::with_mtu(&track(Codec::Av1), mtu).unwrap();
            let mut d = Depacketizer::default();
            let mut ivf = header.to_vec();
            let (mut packets, mut fragmented, mut n_units, mut seq_units) = (0, 0, 0, 0);
            for (pts, tu) in &frames {
                let pkts = p.packetize(&frame(Codec::Av1, *pts, tu.clone())).unwrap();
                packets += pkts.len();
                let mut unit = None;
                for (i, pk) in pkts.iter().enumerate() {
                    assert!(pk.data.len() + RTP_HEADER_LEN <= mtu);
                    fragmented += usize::from(pk.data[0] & 0x40 != 0);
                    unit = d
                        .push(pk)
                        .unwrap_or_else(|e| panic!("pts {pts} packet {i}: {e}"));
                }
                let unit = unit.expect("marker on the last packet");
                assert_eq!(unit.obus, expected_obus(tu));
                n_units += usize::from(unit.n);
                seq_units += usize::from(
                    parse_obus(tu)
                        .unwrap()
                        .iter()
                        .any(|o| o.obu_type == OBU_SEQUENCE_HEADER),
                );
                let mut data = td();
                for o in &unit.obus {
                    data.extend_from_slice(o);
                }
                ivf.extend_from_slice(&(data.len() as u32).to_le_bytes());
                ivf.extend_from_slice(&pts.to_le_bytes());
                ivf.extend_from_slice(&data);
            }
            // A keyframe every 10 frames, each one starting a coded video sequence.
            assert!(n_units >= 5, "{n_units} units with N");
            assert_eq!(n_units, seq_units);
            assert!(fragmented > 0);
            let back = dir.join(format!("rtp-{mtu}.ivf"));
            std::fs::write(&back, &ivf).unwrap();
            let got = decoded_md5s(&back);
            eprintln!(
                "MTU {mtu}: {} temporal units, {packets} packets ({fragmented} with Y), \
                 {n_units} with N, {} frames decoded, identical: {}",
                frames.len(),
                got.len(),
                got == want
            );
            assert_eq!(got, want, "MTU {mtu}: decoded pictures differ");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Random garbage never panics.
    #[test]
    fn random_garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let mtu = rng.gen_range(crate::packetize::MIN_MTU..200);
            if let Ok(pkts) = packetize(&data, mtu) {
                for p in &pkts {
                    assert!(p.data.len() + RTP_HEADER_LEN <= mtu);
                }
            }
        }
    }
}
