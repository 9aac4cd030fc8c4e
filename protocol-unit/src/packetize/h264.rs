//! H.264 over RTP, RFC 6184 packetization-mode=1.
//!
//! Hand-written rather than wrapping `rtp::codecs::h264::H264Payloader`, because that
//! payloader (webrtc-rs 0.17) does not fit a server that packetises each access unit once:
//! it keeps SPS/PPS in state *across calls* and only emits them glued (as STAP-A) in front
//! of the next NAL unit — a frame ending in a parameter set leaks it into the next frame —
//! it silently drops the SPS/PPS STAP-A when it exceeds the MTU, and it cannot tell which
//! payload ends the access unit. Here every call is self-contained: each NAL unit of the
//! frame is sent exactly once, in order, and the marker bit is set on the last payload of
//! the access unit. The rtp crate's constants and its depacketiser (in tests) are reused.
//!
//! Packet choice per NAL unit:
//! - runs of consecutive non-VCL NAL units (SPS, PPS, SEI, ...) are aggregated into one
//!   STAP-A while they fit (a single one goes as a single NAL unit packet);
//! - a VCL NAL unit (slice) that fits goes as a single NAL unit packet, else as FU-A.
//!
//! Access unit delimiters and filler data are dropped (the RTP timestamp and marker bit
//! delimit access units); NAL unit types 0 and 24..=31 are dropped too, as their numbers
//! mean aggregation/fragmentation packet types in RTP and a receiver would misread them.

use bytes::{BufMut, Bytes, BytesMut};
use rtp::codecs::h264::{
    AUD_NALU_TYPE, FILLER_NALU_TYPE, FUA_HEADER_SIZE, FUA_NALU_TYPE, FU_END_BITMASK,
    FU_START_BITMASK, NALU_TYPE_BITMASK, STAPA_HEADER_SIZE, STAPA_NALU_LENGTH_SIZE,
    STAPA_NALU_TYPE,
};

use super::{PacketizeError, RtpPayload};

/// Splits Annex B byte streams into NAL units (without start codes, trailing zero bytes
/// removed). Errors if `data` does not start (after optional zero bytes) with a start
/// code. Empty NAL units are skipped.
pub fn split_annex_b(data: &Bytes) -> Result<Vec<Bytes>, PacketizeError> {
    let mut nals = Vec::new();
    let mut pos = match find_start_code(data, 0) {
        Some((at, len)) if data[..at].iter().all(|&b| b == 0) => at + len,
        _ => return Err(PacketizeError::NoStartCode),
    };
    loop {
        let (end, next) = match find_start_code(data, pos) {
            Some((at, len)) => (at, Some(at + len)),
            None => (data.len(), None),
        };
        let mut e = end;
        while e > pos && data[e - 1] == 0 {
            e -= 1;
        }
        if e > pos {
            nals.push(data.slice(pos..e));
        }
        match next {
            Some(n) => pos = n,
            None => break,
        }
    }
    Ok(nals)
}

/// Position and length (3) of the next `00 00 01` at or after `from`.
fn find_start_code(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 2 < data.len() {
        // Skip quickly: the third byte of a start code is 1, so if data[i+2] > 1 no start
        // code begins at i, i+1 or i+2.
        let b2 = data[i + 2];
        if b2 > 1 {
            i += 3;
        } else if b2 == 1 && data[i] == 0 && data[i + 1] == 0 {
            return Some((i, 3));
        } else {
            i += 1;
        }
    }
    None
}

fn is_vcl(nal_type: u8) -> bool {
    (1..=5).contains(&nal_type)
}

/// RFC 6184 packetization-mode=1 packetiser; see the module docs.
#[derive(Debug)]
pub struct H264Packetizer {
    budget: usize,
}

impl H264Packetizer {
    /// `budget` is the largest payload to emit (MTU minus RTP header); must be >= 3.
    pub fn new(budget: usize) -> Self {
        H264Packetizer {
            budget: budget.max(FUA_HEADER_SIZE + 1),
        }
    }

    /// Append the payloads of the Annex B access unit `data` to `out`.
    pub fn packetize(
        &mut self,
        data: &Bytes,
        out: &mut Vec<RtpPayload>,
    ) -> Result<(), PacketizeError> {
        let nals = split_annex_b(data)?;
        let start = out.len();
        let mut group: Vec<Bytes> = Vec::new();
        let mut group_size = STAPA_HEADER_SIZE;
        for nal in nals {
            let t = nal[0] & NALU_TYPE_BITMASK;
            if t == AUD_NALU_TYPE || t == FILLER_NALU_TYPE || t == 0 || t >= STAPA_NALU_TYPE {
                continue;
            }
            if !is_vcl(t) {
                let add = STAPA_NALU_LENGTH_SIZE + nal.len();
                if !group.is_empty() && group_size + add > self.budget {
                    self.flush_group(&mut group, out);
                    group_size = STAPA_HEADER_SIZE;
                }
                if STAPA_HEADER_SIZE + add <= self.budget {
                    group_size += add;
                    group.push(nal);
                    continue;
                }
                // Too big to aggregate: goes alone (FU-A) below.
            }
            self.flush_group(&mut group, out);
            group_size = STAPA_HEADER_SIZE;
            self.emit_nal(nal, out);
        }
        self.flush_group(&mut group, out);
        if out.len() > start {
            if let Some(last) = out.last_mut() {
                last.marker = true;
            }
        }
        Ok(())
    }

    fn flush_group(&self, group: &mut Vec<Bytes>, out: &mut Vec<RtpPayload>) {
        match group.len() {
            0 => {}
            1 => {
                let nal = group.pop().unwrap_or_default();
                self.emit_nal(nal, out);
            }
            _ => {
                let size = STAPA_HEADER_SIZE
                    + group
                        .iter()
                        .map(|n| STAPA_NALU_LENGTH_SIZE + n.len())
                        .sum::<usize>();
                let mut b = BytesMut::with_capacity(size);
                // F = OR of the F bits, NRI = the highest NRI of the aggregated units.
                let f = group.iter().fold(0u8, |a, n| a | (n[0] & 0x80));
                let nri = group.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
                b.put_u8(f | nri | STAPA_NALU_TYPE);
                for n in group.drain(..) {
                    // Fits in u16: the group is bounded by the payload budget.
                    b.put_u16(n.len() as u16);
                    b.put_slice(&n);
                }
                out.push(RtpPayload {
                    data: b.freeze(),
                    marker: false,
                });
            }
        }
    }

    fn emit_nal(&self, nal: Bytes, out: &mut Vec<RtpPayload>) {
        if nal.len() <= self.budget {
            out.push(RtpPayload {
                data: nal,
                marker: false,
            });
            return;
        }
        // FU-A: the NAL header is not carried; its F/NRI go into the FU indicator and its
        // type into the FU header.
        let hdr = nal[0];
        let indicator = (hdr & 0xe0) | FUA_NALU_TYPE;
        let nal_type = hdr & NALU_TYPE_BITMASK;
        let chunk = self.budget - FUA_HEADER_SIZE;
        let body = nal.slice(1..);
        let mut off = 0;
        while off < body.len() {
            let end = (off + chunk).min(body.len());
            let mut fu = nal_type;
            if off == 0 {
                fu |= FU_START_BITMASK;
            }
            if end == body.len() {
                fu |= FU_END_BITMASK;
            }
            let mut b = BytesMut::with_capacity(FUA_HEADER_SIZE + end - off);
            b.put_u8(indicator);
            b.put_u8(fu);
            b.put_slice(&body[off..end]);
            out.push(RtpPayload {
                data: b.freeze(),
                marker: false,
            });
            off = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packetize::test_util::*;
    use crate::packetize::{Packetizer, DEFAULT_MTU, RTP_HEADER_LEN};
    use divisor_link::Codec;
    use rtp::codecs::h264::H264Packet;
    use rtp::packetizer::Depacketizer;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn idr(len: usize) -> Vec<u8> {
        let mut v = vec![0x65];
        // Avoid accidental start codes: no zero bytes in the body.
        v.extend((0..len - 1).map(|i| (i % 251) as u8 + 1));
        v
    }

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, n) in nals.iter().enumerate() {
            if i % 2 == 0 {
                v.extend_from_slice(&[0, 0, 0, 1]);
            } else {
                v.extend_from_slice(&[0, 0, 1]);
            }
            v.extend_from_slice(n);
        }
        v
    }

    /// Reassemble with the rtp crate's depacketiser; returns the NAL units.
    fn depacketize(payloads: &[RtpPayload]) -> Vec<Vec<u8>> {
        let mut d = H264Packet::default();
        let mut stream = Vec::new();
        for p in payloads {
            let out = d.depacketize(&p.data).unwrap();
            stream.extend_from_slice(&out);
        }
        split_annex_b(&Bytes::from(stream))
            .unwrap()
            .into_iter()
            .map(|b| b.to_vec())
            .collect()
    }

    #[test]
    fn split_handles_3_and_4_byte_start_codes() {
        let data = Bytes::from(vec![
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 0, 1, 0x68, 3, 0, 0, 1,
        ]);
        let nals = split_annex_b(&data).unwrap();
        assert_eq!(
            nals,
            vec![
                Bytes::from_static(&[0x09, 0xf0]),
                Bytes::from_static(&[0x67, 1, 2]),
                Bytes::from_static(&[0x68, 3]),
            ]
        );
        assert_eq!(
            split_annex_b(&Bytes::from_static(&[0x65, 1, 2])),
            Err(PacketizeError::NoStartCode)
        );
        assert_eq!(
            split_annex_b(&Bytes::from_static(&[7, 0, 0, 1, 0x65])),
            Err(PacketizeError::NoStartCode)
        );
        assert!(split_annex_b(&Bytes::from_static(&[0, 0, 1]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn keyframe_sps_pps_big_idr() {
        let big = idr(5000);
        let data = annex_b(&[&[0x09, 0xf0], SPS, PPS, &big]);
        let mut p = Packetizer::new(&track(Codec::H264)).unwrap();
        let pkts = p.packetize(&frame(Codec::H264, 0, data)).unwrap();

        // SPS+PPS in one STAP-A, then FU-As.
        assert_eq!(pkts[0].data[0] & 0x1f, STAPA_NALU_TYPE);
        assert_eq!(pkts[0].data[0] & 0x60, 0x60);
        let fus = &pkts[1..];
        assert_eq!(
            fus.len(),
            5000usize.div_ceil(DEFAULT_MTU - RTP_HEADER_LEN - 2)
        );
        for (i, f) in fus.iter().enumerate() {
            assert!(f.data.len() + RTP_HEADER_LEN <= DEFAULT_MTU);
            assert_eq!(f.data[0], 0x60 | FUA_NALU_TYPE);
            assert_eq!(f.data[1] & 0x1f, 5);
            assert_eq!(f.data[1] & FU_START_BITMASK != 0, i == 0);
            assert_eq!(f.data[1] & FU_END_BITMASK != 0, i == fus.len() - 1);
        }
        for (i, pk) in pkts.iter().enumerate() {
            assert!(pk.data.len() + RTP_HEADER_LEN <= DEFAULT_MTU);
            assert_eq!(pk.marker, i == pkts.len() - 1);
        }
        // AUD dropped; the rest come back byte for byte.
        assert_eq!(depacketize(&pkts), vec![SPS.to_vec(), PPS.to_vec(), big]);
    }

    #[test]
    fn small_frames_and_state_across_calls() {
        let mut p = Packetizer::new(&track(Codec::H264)).unwrap();
        // A frame ending with parameter sets: nothing may leak into the next frame.
        let a = p
            .packetize(&frame(Codec::H264, 0, annex_b(&[&idr(100), SPS, PPS])))
            .unwrap();
        assert_eq!(a.len(), 2);
        assert!(!a[0].marker && a[1].marker);
        assert_eq!(depacketize(&a), vec![idr(100), SPS.to_vec(), PPS.to_vec()]);

        let slice = [0x41u8, 0x9a, 0x11, 0x22];
        let b = p
            .packetize(&frame(Codec::H264, 3000, annex_b(&[&slice])))
            .unwrap();
        assert_eq!(
            b,
            vec![RtpPayload {
                data: Bytes::copy_from_slice(&slice),
                marker: true
            }]
        );

        // Only dropped NAL types: nothing to send.
        let c = p
            .packetize(&frame(Codec::H264, 6000, annex_b(&[&[0x09, 0x10]])))
            .unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn exact_fit_and_one_over() {
        let budget = DEFAULT_MTU - RTP_HEADER_LEN;
        let mut p = Packetizer::new(&track(Codec::H264)).unwrap();
        let fit = p
            .packetize(&frame(Codec::H264, 0, annex_b(&[&idr(budget)])))
            .unwrap();
        assert_eq!(fit.len(), 1);
        assert_eq!(fit[0].data.len(), budget);
        let over = p
            .packetize(&frame(Codec::H264, 0, annex_b(&[&idr(budget + 1)])))
            .unwrap();
        assert_eq!(over.len(), 2);
        assert_eq!(depacketize(&over), vec![idr(budget + 1)]);
    }

    #[test]
    fn many_params_split_into_several_stap_a_and_big_sei() {
        let mut p = Packetizer::with_mtu(&track(Codec::H264), 200).unwrap();
        let sei: Vec<u8> = std::iter::once(0x06)
            .chain((0..100).map(|i| i as u8 + 1))
            .collect();
        let big_sei: Vec<u8> = std::iter::once(0x06).chain([7u8; 500]).collect();
        let slice = idr(50);
        let nals: Vec<&[u8]> = vec![SPS, PPS, &sei, &sei, &big_sei, &sei, &slice];
        let pkts = p.packetize(&frame(Codec::H264, 0, annex_b(&nals))).unwrap();
        for pk in &pkts {
            assert!(pk.data.len() <= 200 - RTP_HEADER_LEN);
        }
        let back = depacketize(&pkts);
        let want: Vec<Vec<u8>> = nals.iter().map(|n| n.to_vec()).collect();
        assert_eq!(back, want);
        assert_eq!(pkts.iter().filter(|p| p.marker).count(), 1);
        assert!(pkts.last().unwrap().marker);
    }
}
