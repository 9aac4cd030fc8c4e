//! The raw sendmmsg probe (issue 4's baseline): how many UDP datagrams one core can push
//! to the load clients' addresses when it does nothing else, with plain `sendmmsg` and
//! with UDP GSO (`UDP_SEGMENT`, 4 segments per message).
//!
//! It runs on a thread inside the protocol unit's namespace, pinned to the protocol
//! unit's core, sending to the same destinations as the server (the client namespace's
//! ingress drop rule discards them) datagrams of the same size as the server's packets.

use crate::nsthread;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Datagram size when the server's is not known (the "about 1200-byte packets").
pub const PACKET_BYTES: usize = 1200;
/// Segments per GSO message.
pub const GSO_SEGMENTS: usize = 4;
/// Messages per `sendmmsg` call.
const BATCH: usize = 64;

/// What one probe run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub gso: bool,
    /// UDP payload of every datagram sent (bytes).
    pub datagram_bytes: usize,
    pub packets_per_s: f64,
    pub gbit_per_s: f64,
    /// How many 1 Mbit/s streams of such datagrams that rate would carry.
    pub clients_1mbps: f64,
    pub errors: u64,
    /// CPU time of the sending thread (user + system), seconds.
    pub cpu_secs: f64,
    /// Wall time of the send loop, seconds.
    pub secs: f64,
    /// Datagrams sent.
    pub packets: u64,
}

/// Sends datagrams of `size` bytes for `secs` from `ns` on `core` to `dests` in turn. The
/// callers pass the size of the server's packets they compare with.
pub fn run(
    ns: &str,
    core: usize,
    dests: Vec<SocketAddrV4>,
    gso: bool,
    secs: f64,
    size: usize,
) -> Result<ProbeResult> {
    if dests.is_empty() {
        bail!("the probe needs at least one destination");
    }
    if size == 0 || size * GSO_SEGMENTS > 65_000 {
        bail!("probe datagram size {size} out of range");
    }
    let h = nsthread::spawn_in_ns("probe", ns, Some(core), move || {
        send_loop(&dests, gso, secs, size)
    })?;
    h.join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
}

fn send_loop(dests: &[SocketAddrV4], gso: bool, secs: f64, size: usize) -> Result<ProbeResult> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_send_buffer_size(4 << 20)?;
    sock.bind(&std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
    let sock: UdpSocket = sock.into();
    let fd = sock.as_raw_fd();
    let segs = if gso { GSO_SEGMENTS } else { 1 };
    let payload = vec![0x5au8; size * segs];
    // Destinations as sockaddr_in, built once.
    let addrs: Vec<libc::sockaddr_in> = dests
        .iter()
        .map(|d| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: d.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*d.ip()).to_be(),
            },
            sin_zero: [0; 8],
        })
        .collect();
    // One control message with UDP_SEGMENT for GSO sends.
    let mut ctrl = [0u64; 4];
    let ctrl_len = if gso {
        // SAFETY: the buffer is large enough for one cmsg carrying a u16.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
            let mut h: libc::msghdr = std::mem::zeroed();
            h.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&h);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, size as u16);
            space
        }
    } else {
        0
    };
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: mmsghdr is plain data; zero is valid.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let cpu0 = thread_cpu_secs();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let (mut sent_msgs, mut errors, mut next) = (0u64, 0u64, 0usize);
    while Instant::now() < until {
        for h in hdrs.iter_mut() {
            let a = &addrs[next];
            next = (next + 1) % addrs.len();
            h.msg_hdr.msg_name = a as *const _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = &mut iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = if gso {
                ctrl.as_mut_ptr() as *mut libc::c_void
            } else {
                std::ptr::null_mut()
            };
            h.msg_hdr.msg_controllen = ctrl_len;
        }
        // SAFETY: BATCH initialised headers pointing at live buffers.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if gso && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) {
                return Err(e).context("UDP GSO is not supported here");
            }
            errors += 1;
            continue;
        }
        sent_msgs += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let packets = sent_msgs * segs as u64;
    let pps = packets as f64 / secs;
    Ok(ProbeResult {
        gso,
        datagram_bytes: size,
        packets_per_s: pps,
        gbit_per_s: pps * size as f64 * 8.0 / 1e9,
        clients_1mbps: pps * size as f64 * 8.0 / 1e6,
        errors,
        cpu_secs: thread_cpu_secs() - cpu0,
        secs,
        packets,
    })
}

/// CPU time of the calling thread, seconds.
pub fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
