//! AAC over RTP, RFC 3640 `mpeg4-generic`, mode AAC-hbr.
//!
//! Hand-written: the `rtp` crate (webrtc-rs) has no RFC 3640 payloader — WebRTC does not
//! carry AAC — and no other kept crate does this small job.
//!
//! Payload layout (SDP: `sizelength=13;indexlength=3;indexdeltalength=3`):
//!
//! ```text
//! | AU-headers-length (16 bits) = 16 | AU-size (13) | AU-index (3) = 0 | AU data ... |
//! ```
//!
//! One access unit per packet. An AU larger than the payload budget is fragmented over
//! several packets (RFC 3640 §3.2.3): every fragment repeats the AU header with the size of
//! the *whole* AU, and only the last fragment carries the marker bit. An unfragmented AU
//! always carries the marker bit.

use bytes::{BufMut, Bytes, BytesMut};

use super::{PacketizeError, RtpPayload};

/// Bytes of AU-headers-length + one AU header.
pub const AU_HEADER_SECTION_LEN: usize = 4;

/// Largest AU the 13-bit AU-size field can describe.
pub const MAX_AU_SIZE: usize = (1 << 13) - 1;

/// The four bytes in front of each (fragment of an) AU of `au_size` bytes.
/// `au_size` must be <= [`MAX_AU_SIZE`].
pub fn au_header_section(au_size: usize) -> [u8; AU_HEADER_SECTION_LEN] {
    let size = (au_size as u16) & 0x1fff;
    let header = size << 3; // AU-index = 0
    let h = header.to_be_bytes();
    [0x00, 0x10, h[0], h[1]]
}

/// RFC 3640 AAC-hbr packetiser; see the module docs.
#[derive(Debug)]
pub struct AacPacketizer {
    budget: usize,
}

impl AacPacketizer {
    /// `budget` is the largest payload to emit (MTU minus RTP header).
    pub fn new(budget: usize) -> Self {
        AacPacketizer {
            budget: budget.max(AU_HEADER_SECTION_LEN + 1),
        }
    }

    /// Append the payloads of the raw AAC access unit `au` to `out`.
    pub fn packetize(
        &mut self,
        au: &Bytes,
        out: &mut Vec<RtpPayload>,
    ) -> Result<(), PacketizeError> {
        if au.len() > MAX_AU_SIZE {
            return Err(PacketizeError::AacAuTooLarge(au.len()));
        }
        if au.is_empty() {
            return Ok(());
        }
        let head = au_header_section(au.len());
        let chunk = self.budget - AU_HEADER_SECTION_LEN;
        let mut off = 0;
        while off < au.len() {
            let end = (off + chunk).min(au.len());
            let mut b = BytesMut::with_capacity(AU_HEADER_SECTION_LEN + end - off);
            b.put_slice(&head);
            b.put_slice(&au[off..end]);
            out.push(RtpPayload {
                data: b.freeze(),
                marker: end == au.len(),
            });
            off = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packetize::test_util::*;
    use crate::packetize::{Packetizer, DEFAULT_MTU, RTP_HEADER_LEN};
    use divisor_link::Codec;

    /// Minimal RFC 3640 AAC-hbr depacketiser for the tests: (AU size, AU index, data).
    fn parse(p: &[u8]) -> (usize, u8, &[u8]) {
        let headers_bits = u16::from_be_bytes([p[0], p[1]]);
        assert_eq!(headers_bits, 16);
        let h = u16::from_be_bytes([p[2], p[3]]);
        ((h >> 3) as usize, (h & 7) as u8, &p[4..])
    }

    #[test]
    fn header_bits() {
        assert_eq!(au_header_section(0x155), [0x00, 0x10, 0x0a, 0xa8]);
        assert_eq!(au_header_section(MAX_AU_SIZE), [0x00, 0x10, 0xff, 0xf8]);
    }

    #[test]
    fn one_au_per_packet_marker_set() {
        let mut p = Packetizer::new(&track(Codec::Aac)).unwrap();
        let au: Vec<u8> = (0..371).map(|i| i as u8).collect();
        let pkts = p.packetize(&frame(Codec::Aac, 1024, au.clone())).unwrap();
        assert_eq!(pkts.len(), 1);
        assert!(pkts[0].marker);
        let (size, idx, data) = parse(&pkts[0].data);
        assert_eq!((size, idx), (371, 0));
        assert_eq!(data, &au[..]);
    }

    #[test]
    fn fragmented_au() {
        let mut p = Packetizer::new(&track(Codec::Aac)).unwrap();
        let au: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let pkts = p.packetize(&frame(Codec::Aac, 0, au.clone())).unwrap();
        assert_eq!(
            pkts.len(),
            4000usize.div_ceil(DEFAULT_MTU - RTP_HEADER_LEN - 4)
        );
        let mut back = Vec::new();
        for (i, pk) in pkts.iter().enumerate() {
            assert!(pk.data.len() + RTP_HEADER_LEN <= DEFAULT_MTU);
            assert_eq!(pk.marker, i == pkts.len() - 1);
            let (size, idx, data) = parse(&pk.data);
            assert_eq!((size, idx), (4000, 0));
            back.extend_from_slice(data);
        }
        assert_eq!(back, au);
    }

    #[test]
    fn too_large_au() {
        let mut p = Packetizer::new(&track(Codec::Aac)).unwrap();
        assert_eq!(
            p.packetize(&frame(Codec::Aac, 0, vec![1u8; 8192])),
            Err(PacketizeError::AacAuTooLarge(8192))
        );
        assert_eq!(
            p.packetize(&frame(Codec::Aac, 0, vec![1u8; 8191]))
                .unwrap()
                .len(),
            8191usize.div_ceil(DEFAULT_MTU - RTP_HEADER_LEN - 4)
        );
    }
}
