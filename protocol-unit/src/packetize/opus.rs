//! Opus over RTP, RFC 7587: one Opus packet per RTP payload, no payload header.
//!
//! Wraps the `rtp` crate's `OpusPayloader`. RFC 7587 has no fragmentation, so an Opus
//! packet larger than the payload budget is refused (the caller drops the frame) rather
//! than sent as an over-MTU datagram. The marker bit is never set (RFC 7587 §4.2 only
//! uses it after DTX, which the encoder unit does not produce).

use bytes::Bytes;
use rtp::codecs::opus::OpusPayloader;
use rtp::packetizer::Payloader;

use super::{PacketizeError, RtpPayload};

/// RFC 7587 packetiser.
#[derive(Debug)]
pub struct OpusPacketizer {
    budget: usize,
    inner: OpusPayloader,
}

impl OpusPacketizer {
    /// `budget` is the largest payload to emit (MTU minus RTP header).
    pub fn new(budget: usize) -> Self {
        OpusPacketizer {
            budget,
            inner: OpusPayloader,
        }
    }

    /// Append the payload of the Opus packet `packet` to `out`.
    pub fn packetize(
        &mut self,
        packet: &Bytes,
        out: &mut Vec<RtpPayload>,
    ) -> Result<(), PacketizeError> {
        if packet.len() > self.budget {
            return Err(PacketizeError::OpusPacketTooLarge {
                size: packet.len(),
                budget: self.budget,
            });
        }
        let payloads = self
            .inner
            .payload(self.budget, packet)
            .map_err(|e| PacketizeError::Rtp(e.to_string()))?;
        out.extend(payloads.into_iter().map(|data| RtpPayload {
            data,
            marker: false,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packetize::test_util::*;
    use crate::packetize::{Packetizer, DEFAULT_MTU, RTP_HEADER_LEN};
    use divisor_link::Codec;

    #[test]
    fn one_packet_per_frame_no_marker() {
        let mut p = Packetizer::new(&track(Codec::Opus)).unwrap();
        let data = Bytes::from_static(&[0xfc, 0xff, 0xfe, 1, 2, 3]);
        let pkts = p.packetize(&frame(Codec::Opus, 960, data.clone())).unwrap();
        assert_eq!(
            pkts,
            vec![RtpPayload {
                data: data.clone(),
                marker: false
            }]
        );
        // Zero copy: the payload is the frame's buffer.
        assert_eq!(pkts[0].data.as_ptr(), data.as_ptr());
    }

    #[test]
    fn oversized_refused() {
        let mut p = Packetizer::new(&track(Codec::Opus)).unwrap();
        let budget = DEFAULT_MTU - RTP_HEADER_LEN;
        assert_eq!(
            p.packetize(&frame(Codec::Opus, 0, vec![0u8; budget]))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            p.packetize(&frame(Codec::Opus, 0, vec![0u8; budget + 1])),
            Err(PacketizeError::OpusPacketTooLarge {
                size: budget + 1,
                budget
            })
        );
    }
}
