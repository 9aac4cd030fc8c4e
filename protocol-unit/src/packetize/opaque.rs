//! RTP payload format for content-encrypted frames (`X-DIVISOR-ENC`).
//!
//! Ciphertext cannot go through a codec's payloader (the H.264 one looks for NAL units), so
//! an encrypted frame — the `divisor_link::content` payload: header + ciphertext — is cut
//! into fragments that fit the MTU, each behind a one-byte header:
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! +-+-+-+-+-+-+-+-+----------------------------+
//! |S|E|  0 (rsvd) |  fragment bytes ...         |
//! +-+-+-+-+-+-+-+-+----------------------------+
//! ```
//!
//! S marks the first fragment of a frame, E the last (a frame in one packet has both). The
//! last fragment also carries the RTP marker bit; every fragment carries the frame's RTP
//! timestamp. A receiver concatenates the fragments from an S to the next E with
//! consecutive sequence numbers, and drops a frame with a gap. The SDP names the format
//! `X-DIVISOR-ENC/<clock>` and the inner codec in `fmtp` (see `crate::sdp`).
//!
//! Hand-written: it is our own format; no crate implements it.

use bytes::{BufMut, Bytes, BytesMut};

use super::{PacketizeError, RtpPayload};

/// Bytes of the fragment header.
pub const HEADER_LEN: usize = 1;
/// First fragment of a frame.
pub const START: u8 = 0x80;
/// Last fragment of a frame.
pub const END: u8 = 0x40;

/// Append the payloads of `data` (one encrypted frame) to `out`; `budget` is the largest
/// payload (MTU minus the RTP header).
pub fn packetize(
    data: &Bytes,
    budget: usize,
    out: &mut Vec<RtpPayload>,
) -> Result<(), PacketizeError> {
    if budget <= HEADER_LEN {
        return Err(PacketizeError::MtuTooSmall {
            mtu: budget,
            min: HEADER_LEN + 1,
        });
    }
    let chunk = budget - HEADER_LEN;
    let mut off = 0;
    while off < data.len() {
        let end = (off + chunk).min(data.len());
        let mut h = 0;
        if off == 0 {
            h |= START;
        }
        if end == data.len() {
            h |= END;
        }
        let mut b = BytesMut::with_capacity(HEADER_LEN + end - off);
        b.put_u8(h);
        b.put_slice(&data[off..end]);
        out.push(RtpPayload {
            data: b.freeze(),
            marker: end == data.len(),
        });
        off = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference reassembler: (seq, payload) in, frames out.
    fn reassemble(pkts: &[(u16, &RtpPayload)]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut cur: Option<Vec<u8>> = None;
        let mut last_seq: Option<u16> = None;
        for (seq, p) in pkts {
            if last_seq.is_some_and(|l| l.wrapping_add(1) != *seq) {
                cur = None;
            }
            last_seq = Some(*seq);
            let h = p.data[0];
            if h & START != 0 {
                cur = Some(Vec::new());
            }
            if let Some(c) = cur.as_mut() {
                c.extend_from_slice(&p.data[1..]);
            }
            if h & END != 0 {
                assert!(p.marker);
                frames.extend(cur.take());
            }
        }
        frames
    }

    #[test]
    fn fragments_fit_and_reassemble() {
        for len in [1usize, 99, 100, 101, 1000, 5000] {
            let data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
            let mut out = Vec::new();
            packetize(&data, 100, &mut out).unwrap();
            assert_eq!(out.len(), len.div_ceil(99));
            assert!(out.iter().all(|p| p.data.len() <= 100));
            assert_eq!(out.iter().filter(|p| p.marker).count(), 1);
            assert!(out.last().unwrap().marker);
            let seqd: Vec<(u16, &RtpPayload)> = out
                .iter()
                .enumerate()
                .map(|(i, p)| (65530u16.wrapping_add(i as u16), p))
                .collect();
            assert_eq!(reassemble(&seqd), vec![data.to_vec()]);
        }
    }

    #[test]
    fn a_gap_drops_only_that_frame() {
        let a = Bytes::from(vec![1u8; 250]);
        let b = Bytes::from(vec![2u8; 50]);
        let mut out = Vec::new();
        packetize(&a, 100, &mut out).unwrap();
        packetize(&b, 100, &mut out).unwrap();
        let mut seqd: Vec<(u16, &RtpPayload)> =
            out.iter().enumerate().map(|(i, p)| (i as u16, p)).collect();
        seqd.remove(1);
        assert_eq!(reassemble(&seqd), vec![b.to_vec()]);
    }

    #[test]
    fn the_packetizer_sends_encrypted_frames_here() {
        use crate::packetize::test_util::{frame, track};
        use crate::packetize::Packetizer;
        use divisor_link::{Codec, FrameFlags};
        let mut p = Packetizer::new(&track(Codec::H264)).unwrap();
        // Ciphertext has no start code: the H.264 payloader would refuse it.
        let mut f = frame(Codec::H264, 0, vec![0xabu8; 3000]);
        assert!(p.packetize(&f).is_err());
        f.flags.insert(FrameFlags::ENCRYPTED);
        let out = p.packetize(&f).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].data[0], START);
        assert_eq!(out[2].data[0], END);
    }

    #[test]
    fn empty_frame_and_tiny_budget() {
        let mut out = Vec::new();
        packetize(&Bytes::new(), 100, &mut out).unwrap();
        assert!(out.is_empty());
        assert!(packetize(&Bytes::from_static(b"x"), 1, &mut out).is_err());
    }
}
