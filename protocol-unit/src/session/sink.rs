//! Where a track's RTP and RTCP packets go: a pair of UDP ports, or the client's RTSP
//! connection (RTP/AVP/TCP interleaved, RFC 2326 section 10.12).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Destination of one track.
#[derive(Clone, Debug)]
pub enum Sink {
    Udp {
        rtp: Arc<UdpSocket>,
        rtcp: Arc<UdpSocket>,
        rtp_dest: SocketAddr,
        rtcp_dest: SocketAddr,
    },
    Interleaved {
        /// The RTSP connection's writer.
        writer: mpsc::Sender<Bytes>,
        rtp_channel: u8,
        rtcp_channel: u8,
    },
}

impl Sink {
    /// Send one RTP (`rtcp == false`) or RTCP packet. Errors mean the client is gone.
    pub async fn send(&self, packet: &Bytes, rtcp: bool) -> std::io::Result<()> {
        match self {
            Sink::Udp {
                rtp,
                rtcp: rtcp_socket,
                rtp_dest,
                rtcp_dest,
            } => {
                let (socket, dest) = if rtcp {
                    (rtcp_socket, rtcp_dest)
                } else {
                    (rtp, rtp_dest)
                };
                // A refused datagram (ICMP port unreachable) is the client's problem, not
                // a reason to stop the session: RTSP keeps it alive until TEARDOWN/time-out.
                match socket.send_to(packet, *dest).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Sink::Interleaved {
                writer,
                rtp_channel,
                rtcp_channel,
            } => {
                let channel = if rtcp { *rtcp_channel } else { *rtp_channel };
                writer.send(interleave(channel, packet)).await.map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "RTSP connection closed")
                })
            }
        }
    }
}

/// Frame `packet` for interleaved transport: `$`, channel, 16-bit length, data.
pub fn interleave(channel: u8, packet: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + packet.len());
    b.put_u8(b'$');
    b.put_u8(channel);
    b.put_u16(packet.len() as u16);
    b.put_slice(packet);
    b.freeze()
}

/// Bind an even RTP port and the odd RTCP port above it on `ip` (RFC 3550 section 11).
pub async fn bind_udp_pair(ip: IpAddr) -> std::io::Result<(UdpSocket, UdpSocket)> {
    let mut last_err = None;
    for _ in 0..64 {
        let port = 20_000 + 2 * (rand::random::<u16>() % 20_000);
        let rtp = match UdpSocket::bind(SocketAddr::new(ip, port)).await {
            Ok(s) => s,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        match UdpSocket::bind(SocketAddr::new(ip, port + 1)).await {
            Ok(rtcp) => return Ok((rtp, rtcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no free UDP port pair")))
}
