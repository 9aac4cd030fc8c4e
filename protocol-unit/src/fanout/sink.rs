//! An in-process destination for fan-out clients: a bounded queue instead of a socket.
//!
//! Front-ends that do their own transport (WHEP: webrtc-rs does ICE, DTLS-SRTP and the
//! interceptors per viewer) still take their packets from the packetise-once engine, so a
//! WebRTC viewer gets the same GOP cache, tiers, pacing and per-client header rewrite as an
//! RTSP client. The engine already knows one queued destination, an interleaved RTSP
//! connection (`$`, channel, length, packet; RFC 2326 section 10.12, one buffer per frame
//! and client, dropped and counted when the queue is full, the client marked gone when the
//! receiver is dropped). A [`QueueSink`] reuses exactly that framing, so the engine needs
//! no new code path: channel `2k` carries RTP of the `k`-th track given to
//! [`QueueSink::dest`], channel `2k + 1` its RTCP (sender reports), and
//! [`QueueSink::recv`] splits each buffer back into packets without copying.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::engine::TrackDest;

/// One packet taken from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkPacket {
    /// An RTP packet of the `k`-th track (header as rewritten for this client + payload).
    Rtp { track: usize, packet: Bytes },
    /// An RTCP packet the engine made for the `k`-th track (a sender report).
    Rtcp { track: usize, packet: Bytes },
}

/// The receiving end of an in-process client destination.
pub struct QueueSink {
    writer: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    pending: Vec<SinkPacket>,
}

impl QueueSink {
    /// A queue holding at most `depth` buffers (about one per frame and track).
    pub fn new(depth: usize) -> QueueSink {
        let (writer, rx) = mpsc::channel(depth.max(1));
        QueueSink {
            writer,
            rx,
            pending: Vec::new(),
        }
    }

    /// The engine destination of the `k`-th track (k < 128).
    pub fn dest(&self, k: usize) -> TrackDest {
        let k = (k.min(127) * 2) as u8;
        TrackDest::Interleaved {
            writer: self.writer.clone(),
            rtp_channel: k,
            rtcp_channel: k + 1,
            srtp: None,
        }
    }

    /// The next packet, or `None` when every destination handed out is gone (the engine
    /// dropped the client) and the queue is drained.
    pub async fn recv(&mut self) -> Option<SinkPacket> {
        loop {
            if let Some(p) = self.pending.pop() {
                return Some(p);
            }
            let buf = self.rx.recv().await?;
            let mut packets = split(&buf);
            packets.reverse();
            self.pending = packets;
        }
    }

    /// Stop holding a writer of our own, so [`QueueSink::recv`] ends once the engine has
    /// dropped the client's destinations.
    pub fn close_own_writer(&mut self) {
        let (dead, _) = mpsc::channel(1);
        self.writer = dead;
    }
}

/// Split one queued buffer into its packets. A truncated or foreign frame ends the
/// buffer (the engine only writes whole frames; this is defence, not a parser of input).
pub fn split(buf: &Bytes) -> Vec<SinkPacket> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 4 <= buf.len() && buf[at] == b'$' {
        let channel = buf[at + 1];
        let len = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
        let start = at + 4;
        let Some(end) = start.checked_add(len).filter(|e| *e <= buf.len()) else {
            break;
        };
        let packet = buf.slice(start..end);
        let track = usize::from(channel / 2);
        out.push(if channel.is_multiple_of(2) {
            SinkPacket::Rtp { track, packet }
        } else {
            SinkPacket::Rtcp { track, packet }
        });
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(channel: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![b'$', channel];
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn splits_frames_and_stops_at_truncation() {
        let mut buf = frame(2, b"rtp-of-track-1");
        buf.extend(frame(1, b"sr"));
        buf.extend(frame(0, b"x"));
        buf.extend_from_slice(b"$\x00\x00\x09abc"); // truncated
        let got = split(&Bytes::from(buf));
        assert_eq!(
            got,
            vec![
                SinkPacket::Rtp {
                    track: 1,
                    packet: Bytes::from_static(b"rtp-of-track-1")
                },
                SinkPacket::Rtcp {
                    track: 0,
                    packet: Bytes::from_static(b"sr")
                },
                SinkPacket::Rtp {
                    track: 0,
                    packet: Bytes::from_static(b"x")
                },
            ]
        );
        assert!(split(&Bytes::from_static(b"garbage")).is_empty());
    }

    #[tokio::test]
    async fn recv_yields_in_order_and_ends_when_writers_go() {
        let mut q = QueueSink::new(4);
        let TrackDest::Interleaved { writer, .. } = q.dest(0) else {
            panic!("queue dest is interleaved");
        };
        let mut buf = frame(0, b"a");
        buf.extend(frame(0, b"b"));
        writer.send(Bytes::from(buf)).await.unwrap();
        drop(writer);
        q.close_own_writer();
        assert!(matches!(q.recv().await, Some(SinkPacket::Rtp { packet, .. }) if packet == "a"));
        assert!(matches!(q.recv().await, Some(SinkPacket::Rtp { packet, .. }) if packet == "b"));
        assert_eq!(q.recv().await, None);
    }
}
