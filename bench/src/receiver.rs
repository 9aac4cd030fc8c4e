//! Measuring receivers: a UDP port pair (RTP, RTCP) read with `recvmmsg`, every datagram
//! stamped by the kernel on arrival (`SO_TIMESTAMPNS`), so the receiver thread being
//! descheduled (it shares a core with a server unit) does not distort the timings.

use crate::decrypt::{Decryptor, KeySource};
use crate::nsthread;
use crate::stats::{parse_rtp, parse_sr, StreamReport, StreamStats};
use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Datagrams read per `recvmmsg` call.
const BATCH: usize = 32;
const MAX_DGRAM: usize = 2048;

/// One measuring receiver, running on its own thread in the client namespace.
pub struct Receiver {
    stats: Arc<Mutex<StreamStats>>,
    /// Encrypted workloads: decrypts and verifies every frame.
    decrypt: Option<Arc<Mutex<Decryptor>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Receiver {
    /// Binds `rtp_port` and `rtp_port + 1` on `ip` inside `ns` and starts reading. With
    /// `keys`, the stream is content-encrypted: every frame is decrypted and verified.
    pub fn start(
        ns: &str,
        ip: Ipv4Addr,
        rtp_port: u16,
        clock_rate: u32,
        core: Option<usize>,
        keys: Option<KeySource>,
    ) -> Result<Receiver> {
        let stats = Arc::new(Mutex::new(StreamStats::new(clock_rate)));
        let decrypt = keys.map(|k| Arc::new(Mutex::new(Decryptor::new(k))));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (st, sp, dc) = (stats.clone(), stop.clone(), decrypt.clone());
        let thread = nsthread::spawn_in_ns(&format!("recv-{rtp_port}"), ns, core, move || {
            let bound = bind_pair(ip, rtp_port);
            let (rtp, rtcp) = match bound {
                Ok(p) => {
                    let _ = tx.send(Ok(()));
                    p
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let _ = tx.send(Err(e));
                    anyhow::bail!(msg);
                }
            };
            receive_loop(&rtp, &rtcp, &st, dc.as_deref(), &sp)
        })?;
        rx.recv().context("receiver thread died before binding")??;
        Ok(Receiver {
            stats,
            decrypt,
            stop,
            thread: Some(thread),
        })
    }

    /// Forgets the packets received so far (not the sender reports): the measurement
    /// window starts now.
    pub fn reset(&self) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restart();
        if let Some(d) = &self.decrypt {
            d.lock().unwrap_or_else(|p| p.into_inner()).reset_counts();
        }
    }

    /// The figures since the last reset.
    pub fn report(&self) -> StreamReport {
        let mut r = self
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report();
        if let Some(d) = &self.decrypt {
            let d = d.lock().unwrap_or_else(|p| p.into_inner());
            (r.decrypted_frames, r.decrypt_failures) = (d.ok, d.failed);
        }
        r
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind_pair(ip: Ipv4Addr, port: u16) -> Result<(UdpSocket, UdpSocket)> {
    let mk = |p: u16| -> Result<UdpSocket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_recv_buffer_size(4 << 20)?;
        s.bind(&SocketAddr::from((ip, p)).into())
            .with_context(|| format!("binding UDP {ip}:{p} for a measuring receiver"))?;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid fd and a c_int option value.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            anyhow::bail!("SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
        }
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    Ok((mk(port)?, mk(port + 1)?))
}

fn receive_loop(
    rtp: &UdpSocket,
    rtcp: &UdpSocket,
    stats: &Mutex<StreamStats>,
    decrypt: Option<&Mutex<Decryptor>>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut batch = Batch::new();
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: rtp.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: rtcp.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if n <= 0 {
            continue;
        }
        for (i, sock) in [rtp, rtcp].iter().enumerate() {
            if fds[i].revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                let got = batch.recv(sock.as_raw_fd());
                if got == 0 {
                    break;
                }
                let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                let mut d = decrypt.map(|d| d.lock().unwrap_or_else(|p| p.into_inner()));
                for k in 0..got {
                    let (data, at) = batch.get(k);
                    if i == 0 {
                        if let Some(info) = parse_rtp(data) {
                            s.on_rtp(info, data.len(), at);
                            if let Some(d) = d.as_mut() {
                                d.on_rtp(data);
                            }
                        }
                    } else if let Some(sr) = parse_sr(data) {
                        s.on_sr(sr, at);
                    }
                }
                if got < BATCH {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Buffers for one `recvmmsg` batch with room for a timestamp control message each.
struct Batch {
    bufs: Vec<[u8; MAX_DGRAM]>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<[u64; 8]>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            bufs: vec![[0u8; MAX_DGRAM]; BATCH],
            // SAFETY: iovec and mmsghdr are plain C structs; zero is a valid value.
            iovs: vec![unsafe { std::mem::zeroed() }; BATCH],
            ctrl: vec![[0u64; 8]; BATCH],
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }

    /// Reads up to BATCH datagrams without blocking; returns how many.
    fn recv(&mut self, fd: i32) -> usize {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: MAX_DGRAM,
            };
            // SAFETY: zeroed msghdr then pointers into buffers that outlive the call.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = std::mem::size_of::<[u64; 8]>();
            self.hdrs[i] = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
        }
        // SAFETY: hdrs holds BATCH initialised headers pointing at live buffers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        n.max(0) as usize
    }

    /// Datagram `k` of the last batch and its kernel arrival time (Unix ns).
    fn get(&self, k: usize) -> (&[u8], i128) {
        let h = &self.hdrs[k];
        let len = (h.msg_len as usize).min(MAX_DGRAM);
        let mut at = None;
        // SAFETY: walking the control buffer the kernel filled, with the libc CMSG macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                    at = Some(ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128);
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        let at = at.unwrap_or_else(now_ns);
        (&self.bufs[k][..len], at)
    }
}

/// Wall-clock now, Unix ns.
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}
