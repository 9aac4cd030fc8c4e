//! The running fan-out: the server's shared RTP/RTCP socket pair, the engine on its
//! sender, and the task that reads clients' RTCP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info};

use super::engine::Engine;
use super::feedback::{self, FeedbackRoutes};
use super::stats::ServerStats;
use super::udp::{SendPath, UdpSender};
use crate::schedule::{self, EngineHandle, SchedulerConfig};

/// Socket buffer we ask for on the RTP socket: bursts to thousands of clients.
const SEND_BUFFER: usize = 8 << 20;

/// Fan-out settings.
#[derive(Clone, Copy, Debug)]
pub struct FanOutConfig {
    /// Address of the server's RTP port (even; RTCP is the next port). Port 0 picks one.
    pub rtp_listen: SocketAddr,
    pub send_path: SendPath,
    /// Send runs of equal-size packets to one client as one UDP GSO message.
    pub gso: bool,
    pub scheduler: SchedulerConfig,
    /// Delay between a live frame's arrival and its send deadline (the edge delay).
    pub live_delay: Duration,
}

impl Default for FanOutConfig {
    fn default() -> Self {
        FanOutConfig {
            rtp_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            send_path: SendPath::Sendmmsg,
            gso: true,
            scheduler: SchedulerConfig::default(),
            live_delay: crate::fanout::live_feed::LIVE_DELAY,
        }
    }
}

/// Handle on the running fan-out, shared by the front-ends.
pub struct FanOut {
    pub engine: EngineHandle,
    pub stats: Arc<ServerStats>,
    pub routes: Arc<FeedbackRoutes>,
    /// The server's RTP port (RTCP is the next one), as put in `server_port`.
    pub rtp_port: u16,
    next_id: AtomicU64,
}

impl FanOut {
    /// Bind the socket pair, start the sender and the RTCP reader. Needs a tokio runtime.
    pub fn start(config: FanOutConfig) -> std::io::Result<Arc<FanOut>> {
        let (rtp, rtcp) = bind_pair(config.rtp_listen)?;
        discard_received(&rtp)?;
        let rtp_port = rtp.local_addr()?.port();
        let rtp = Arc::new(rtp);
        let rtcp = Arc::new(rtcp);
        let stats = ServerStats::new();
        let mut engine = Engine::new(
            UdpSender::new(rtp.clone(), config.send_path, config.gso)?,
            UdpSender::new(rtcp.clone(), SendPath::Sendmmsg, false)?,
            stats.clone(),
        );
        engine.set_live_delay(config.live_delay);
        let handle = schedule::start(config.scheduler, engine)?;
        let routes = FeedbackRoutes::new();
        info!(
            rtp_port,
            rtcp_port = rtp_port + 1,
            send_path = ?config.send_path,
            gso = config.gso,
            scheduler = ?config.scheduler.mode,
            "fan-out ready"
        );
        let fan = Arc::new(FanOut {
            engine: handle,
            stats,
            routes,
            rtp_port,
            next_id: AtomicU64::new(1),
        });
        let reader_rtcp = tokio::net::UdpSocket::from_std(rtcp.try_clone()?)?;
        tokio::spawn(read_rtcp(reader_rtcp, fan.clone()));
        Ok(fan)
    }

    /// A fresh id for a feed or a client.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Bind an even RTP port and the RTCP port above it (RFC 3550 section 11).
fn bind_pair(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    let mut last = None;
    for attempt in 0..64 {
        let port = if addr.port() != 0 {
            addr.port()
        } else {
            20_000 + 2 * (rand::random::<u16>() % 20_000)
        };
        match (
            bind(SocketAddr::new(addr.ip(), port)),
            bind(SocketAddr::new(addr.ip(), port + 1)),
        ) {
            (Ok(a), Ok(b)) => return Ok((a, b)),
            (Err(e), _) | (_, Err(e)) => last = Some(e),
        }
        if addr.port() != 0 || attempt == 63 {
            break;
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free UDP port pair")))
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps it at net.core.wmem_max.
    let _ = s.set_send_buffer_size(SEND_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Clients' RTCP: each datagram goes to the client it comes from, or is counted as a
/// stranger's and dropped.
async fn read_rtcp(socket: tokio::net::UdpSocket, fan: Arc<FanOut>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!("RTCP socket: {e}");
                continue;
            }
        };
        match fan.routes.get(&from) {
            Some(fb) => match fan.routes.srtcp(&from) {
                None => feedback::handle(&buf[..n], &fb, &fan.engine, &fan.stats, Instant::now()),
                Some(srtp) => {
                    if let Some(p) = feedback::unprotect_srtcp(&srtp, &buf[..n], &fan.stats, &from)
                    {
                        feedback::handle(&p, &fb, &fan.engine, &fan.stats, Instant::now());
                    }
                }
            },
            None => {
                fan.stats.rtcp_strangers.fetch_add(1, Ordering::Relaxed);
                debug!(%from, "RTCP from an address that holds no session dropped");
            }
        }
    }
}

/// Clients send a few packets to the RTP port to open NAT bindings, and nothing else
/// arrives there: a one-instruction socket filter ("keep 0 bytes") drops them before they
/// are queued.
///
/// The port is not read by an async task on purpose. Registering the socket with epoll
/// puts a waiter on its wait queue, and then every sent packet's release
/// (`sock_wfree`) runs the epoll callback under a spinlock and may wake the runtime:
/// ~3 % of the sender's time at 4,096 clients (`perf record -g`), for nothing.
fn discard_received(rtp: &std::net::UdpSocket) -> std::io::Result<()> {
    let keep_nothing = libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    };
    socket2::SockRef::from(rtp).attach_filter(&[keep_nothing])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rtp_port_drops_what_it_receives_and_the_rtcp_port_keeps_it() {
        let (rtp, rtcp) = bind_pair(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        discard_received(&rtp).unwrap();
        let client = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        for s in [&rtp, &rtcp] {
            client.send_to(b"punch", s.local_addr().unwrap()).unwrap();
        }
        let mut buf = [0u8; 64];
        // Loopback delivery is synchronous: the datagram is queued (or not) by now.
        assert_eq!(rtcp.recv_from(&mut buf).unwrap().0, 5);
        let e = rtp.recv_from(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        // Sending from the filtered socket still works.
        rtp.send_to(b"rtp", client.local_addr().unwrap()).unwrap();
        assert_eq!(client.recv_from(&mut buf).unwrap().0, 3);
    }
}
