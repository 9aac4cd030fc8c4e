//! Batched UDP sending from one shared socket to many destinations.
//!
//! A [`Batch`] collects datagrams for many destinations: each is the client's rewritten
//! 12-byte RTP header followed by a payload every client of the feed shares, copied into
//! the batch's one buffer as it is queued. A client's consecutive datagrams are therefore
//! one contiguous slice, and [`UdpSender::flush`] hands the kernel one iovec per message:
//!
//! - `sendmmsg` path: runs of consecutive datagrams to the same destination whose sizes are
//!   equal (the last may be shorter) go as *one* message with a `UDP_SEGMENT` control
//!   message (UDP GSO): the kernel builds the IP packets, one route lookup and one skb for
//!   up to [`MAX_GSO_SEGMENTS`] packets. Up to 1024 messages per system call.
//! - `io_uring` path: the same messages, each a `SENDMSG` submission, submitted in batches
//!   with one `io_uring_enter`.
//!
//! Why copy, when scatter-gather could point at the header and the shared payload in
//! place: the kernel copies a message iovec by iovec, and with a header and a payload
//! iovec per packet its copy (`_copy_from_iter`) cost 2.5x the raw probe's per packet. One
//! user-space copy of a payload that is hot in cache (every client of the slot gets the
//! same one) into a buffer that stays hot is cheaper, and a queued datagram holds no
//! reference count on the payload. The engine went from 71-83 % to 85-93 % of the probe's
//! packets per CPU-second (`divisor-bench fanout --clients 5120 --what
//! probe-gso,engine-gso`, bench/RESULTS.md).
//!
//! Datagrams that are the same bytes for many clients (a live rendition's pre-built wire
//! packets, see `fanout::live_feed`) skip even that copy: [`Batch::push_shared`] queues a
//! slice of a shared buffer, which the batch keeps alive until the flush, and every such
//! client's message points at the same hot bytes, as the raw probe's do.
//!
//! Why `libc::sendmmsg` rather than `quinn-udp`: `sendmmsg` sends many destinations per
//! call, which quinn-udp's one-destination-per-call `send` does not, and at thousands of
//! clients a system call per client and frame is the cost that matters.
//!
//! Errors never stop the batch: a datagram the kernel refuses (full buffer after a short
//! wait, unreachable, too big) is counted as dropped against its tag and the rest go on.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::{info, warn};

/// Most segments in one GSO message (the kernel's `UDP_MAX_SEGMENTS` on every kernel that
/// has GSO).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Most bytes in one GSO message (a UDP datagram's length field is 16 bits).
const MAX_GSO_BYTES: usize = 63 * 1024;

/// Messages per `sendmmsg` call (the kernel's `UIO_MAXIOV`).
const MAX_MMSG: usize = 1024;

/// How long a flush waits for room in a full socket buffer before dropping.
const FULL_BUFFER_WAIT_MS: i32 = 2;

/// How the batch reaches the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SendPath {
    /// `sendmmsg(2)`, up to 1024 messages per call.
    Sendmmsg,
    /// io_uring `SENDMSG` submissions, one `io_uring_enter` per batch.
    Uring,
}

/// [`Datagram::src`] of bytes in the batch's own buffer.
const OWN: u32 = u32::MAX;

/// One datagram of a batch: where its bytes sit.
#[derive(Clone, Copy, Debug)]
struct Datagram {
    dest: u32,
    /// [`OWN`] for the batch's own buffer, else an index into its shared buffers.
    src: u32,
    at: u32,
    len: u32,
    /// Caller's tag, passed back for datagrams that could not be sent.
    tag: u32,
    /// When it was due, for the lateness the caller records.
    deadline: Instant,
}

impl Datagram {
    fn len(&self) -> usize {
        self.len as usize
    }
}

/// Datagrams waiting to be sent.
#[derive(Default)]
pub struct Batch {
    dests: Vec<SocketAddr>,
    datagrams: Vec<Datagram>,
    /// Every datagram's bytes, in push order: a run of datagrams to one destination is
    /// one contiguous slice, which goes to the kernel as one iovec.
    bytes: Vec<u8>,
    /// Shared buffers that queued datagrams point into, held until the flush.
    shared: Vec<Bytes>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// The index to pass to [`Batch::push`] for `addr`. Reuses the last destination when it
    /// is the same, so a client's consecutive packets share one entry.
    pub fn dest(&mut self, addr: SocketAddr) -> u32 {
        if self.dests.last() == Some(&addr) {
            return (self.dests.len() - 1) as u32;
        }
        self.dests.push(addr);
        (self.dests.len() - 1) as u32
    }

    /// Queue `head` followed by `payload` to `dest`, due at `deadline`. `tag` comes back
    /// through the drop callback if the datagram cannot be sent. Both are copied into the
    /// batch's buffer (see the module notes for why a copy beats pointing at them).
    pub fn push(&mut self, dest: u32, head: &[u8], payload: &[u8], tag: u32, deadline: Instant) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(head);
        self.bytes.extend_from_slice(payload);
        self.datagrams.push(Datagram {
            dest,
            src: OWN,
            at: at as u32,
            len: (head.len() + payload.len()) as u32,
            tag,
            deadline,
        });
    }

    /// Queue `buf[at..at + len]` to `dest` without copying it: `buf` is held until the
    /// flush. For bytes many destinations get unchanged; consecutive pushes from one
    /// buffer hold it once. A range past the end of `buf` (a caller's bug) queues nothing
    /// rather than stopping the sender.
    pub fn push_shared(
        &mut self,
        dest: u32,
        buf: &Bytes,
        at: usize,
        len: usize,
        tag: u32,
        deadline: Instant,
    ) {
        if at.checked_add(len).is_none_or(|end| end > buf.len()) {
            debug_assert!(false, "shared datagram past its buffer");
            return;
        }
        // A slot's clients get the same frame or two: look a few buffers back before
        // holding another reference (an atomic increment on a shared line).
        let held = self
            .shared
            .iter()
            .rev()
            .take(4)
            .position(|b| b.as_ptr() == buf.as_ptr() && b.len() == buf.len());
        let src = match held {
            Some(k) => self.shared.len() - 1 - k,
            None => {
                self.shared.push(buf.clone());
                self.shared.len() - 1
            }
        };
        self.datagrams.push(Datagram {
            dest,
            src: src as u32,
            at: at as u32,
            len: len as u32,
            tag,
            deadline,
        });
    }

    /// The bytes of `d`.
    fn bytes_of(&self, d: &Datagram) -> &[u8] {
        let buf: &[u8] = match d.src {
            OWN => &self.bytes,
            k => &self.shared[k as usize],
        };
        &buf[d.at as usize..d.at as usize + d.len()]
    }

    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Forget every queued datagram (keeps the allocations).
    pub fn clear(&mut self) {
        self.dests.clear();
        self.datagrams.clear();
        self.bytes.clear();
        self.shared.clear();
    }
}

/// What happened to one datagram of a flushed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Handed to the kernel at `at`; it was due at `deadline`.
    Sent { at: Instant, deadline: Instant },
    /// Not sent: the tag given to [`Batch::push`].
    Dropped { tag: u32 },
}

/// What a flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Datagrams dropped.
    pub dropped: usize,
    /// System calls made.
    pub syscalls: usize,
}

/// A run of datagrams that goes as one message.
#[derive(Clone, Copy)]
struct Run {
    first: usize,
    count: usize,
    /// GSO segment size, or 0 for a single datagram.
    segment: u16,
    /// Address of the message's first byte (in the batch's buffer or a shared one).
    at: usize,
    len: usize,
}

/// Control-message space for one `UDP_SEGMENT` (a u16), 8-byte aligned as `cmsghdr` wants.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; 32]);

/// A destination as the kernel reads it: a `sockaddr_in` or `sockaddr_in6` (28 bytes at
/// most), built per message from the batch's `SocketAddr`s. The batch used to hold
/// socket2's `SockAddr` (a 128-byte `sockaddr_storage`): copying and comparing one per
/// client and frame was a measurable share of the fan-out's user-space time.
#[derive(Clone, Copy)]
struct RawAddr {
    addr: RawAddrStorage,
    len: libc::socklen_t,
}

#[repr(C)]
#[derive(Clone, Copy)]
union RawAddrStorage {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        std::ptr::addr_of_mut!(self.addr).cast()
    }
}

impl From<&SocketAddr> for RawAddr {
    fn from(a: &SocketAddr) -> RawAddr {
        match a {
            SocketAddr::V4(a) => RawAddr {
                addr: RawAddrStorage {
                    v4: libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: a.port().to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes(a.ip().octets()),
                        },
                        sin_zero: [0; 8],
                    },
                },
                len: std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            },
            SocketAddr::V6(a) => RawAddr {
                addr: RawAddrStorage {
                    v6: libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET6 as libc::sa_family_t,
                        sin6_port: a.port().to_be(),
                        // As std and socket2 store it: the raw field, not byte-swapped.
                        sin6_flowinfo: a.flowinfo(),
                        sin6_addr: libc::in6_addr {
                            s6_addr: a.ip().octets(),
                        },
                        sin6_scope_id: a.scope_id(),
                    },
                },
                len: std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            },
        }
    }
}

/// Sends [`Batch`]es on one UDP socket.
pub struct UdpSender {
    socket: Arc<std::net::UdpSocket>,
    path: SendPath,
    gso: bool,
    ring: Option<io_uring::IoUring>,
    runs: Vec<Run>,
    iovecs: Vec<libc::iovec>,
    /// Every message's destination, as the kernel reads it.
    names: Vec<RawAddr>,
    msgs: Vec<libc::mmsghdr>,
    cmsgs: Vec<CmsgBuf>,
    /// Most messages one flush hands to the kernel; the rest are dropped as if the socket
    /// buffer were full (tests of overload behaviour).
    limit: Option<usize>,
}

// SAFETY: the raw pointers inside `iovecs`/`msgs` are scratch space rebuilt on every flush
// and only dereferenced (by the kernel) during it; between flushes they dangle unused.
unsafe impl Send for UdpSender {}

impl UdpSender {
    /// A sender on `socket` (made non-blocking here) using `path`, with UDP GSO runs when
    /// `gso`. The io_uring path falls back to `sendmmsg` when a ring cannot be set up (old
    /// kernel, seccomp), with a log line.
    ///
    /// GSO caveat: a veth passes GSO packets to its peer unsegmented (the receiving socket
    /// splits them), so a capture on a veth shows one frame per run and counts the other
    /// segments as lost although every receiver gets them; a real NIC, or a veth with
    /// `tx-udp-segmentation off`, puts ordinary packets on the wire.
    pub fn new(
        socket: Arc<std::net::UdpSocket>,
        path: SendPath,
        gso: bool,
    ) -> io::Result<UdpSender> {
        socket.set_nonblocking(true)?;
        let gso = gso && gso_supported(&socket);
        let mut path = path;
        let ring = if path == SendPath::Uring {
            match io_uring::IoUring::new(256) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!("io_uring unavailable ({e}); sending with sendmmsg instead");
                    path = SendPath::Sendmmsg;
                    None
                }
            }
        } else {
            None
        };
        Ok(UdpSender {
            socket,
            gso,
            path,
            ring,
            runs: Vec::new(),
            iovecs: Vec::new(),
            names: Vec::new(),
            msgs: Vec::new(),
            cmsgs: Vec::new(),
            limit: None,
        })
    }

    /// Accept at most `limit` messages per flush and drop the rest, as a full socket
    /// buffer would (for tests of what the engine does under overload).
    pub fn set_message_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// The path in use.
    pub fn path(&self) -> SendPath {
        self.path
    }

    /// Whether GSO is in use (asked for, and not refused by the kernel).
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Send and clear `batch`. `fate` is called once per datagram.
    pub fn flush(&mut self, batch: &mut Batch, mut fate: impl FnMut(Fate)) -> FlushOutcome {
        let mut out = FlushOutcome::default();
        if batch.is_empty() {
            return out;
        }
        self.plan(batch);
        let limit = self.limit.unwrap_or(usize::MAX).min(self.msgs.len());
        for run in &self.runs[limit..] {
            out.dropped += run.count;
            for d in &batch.datagrams[run.first..run.first + run.count] {
                fate(Fate::Dropped { tag: d.tag });
            }
        }
        let mut i = 0;
        while i < limit {
            let end = (i + MAX_MMSG).min(limit);
            let at = Instant::now();
            let results = match self.path {
                SendPath::Uring => self.submit_uring(i, end, &mut out),
                _ => self.submit_mmsg(i, end, &mut out),
            };
            for (k, res) in results.into_iter().enumerate() {
                let run = self.runs[i + k];
                let dgrams = &batch.datagrams[run.first..run.first + run.count];
                match res {
                    Ok(()) => {
                        out.sent += run.count;
                        for d in dgrams {
                            out.bytes += d.len();
                            fate(Fate::Sent {
                                at,
                                deadline: d.deadline,
                            });
                        }
                    }
                    Err(e) if run.segment != 0 && gso_refused(&e) => {
                        // The kernel or device will not segment: send this run one by one
                        // and stop asking for GSO.
                        if self.gso {
                            info!("UDP GSO refused by the kernel ({e}); sending without GSO");
                            self.gso = false;
                        }
                        for d in dgrams {
                            out.syscalls += 1;
                            match self.send_one(&batch.dests[d.dest as usize], batch.bytes_of(d)) {
                                Ok(()) => {
                                    out.sent += 1;
                                    out.bytes += d.len();
                                    fate(Fate::Sent {
                                        at,
                                        deadline: d.deadline,
                                    });
                                }
                                Err(_) => {
                                    out.dropped += 1;
                                    fate(Fate::Dropped { tag: d.tag });
                                }
                            }
                        }
                    }
                    Err(_) => {
                        out.dropped += run.count;
                        for d in dgrams {
                            fate(Fate::Dropped { tag: d.tag });
                        }
                    }
                }
            }
            i = end;
        }
        batch.clear();
        out
    }

    /// Group datagrams into runs and build iovecs, control messages and `mmsghdr`s.
    fn plan(&mut self, batch: &Batch) {
        self.runs.clear();
        let ds = &batch.datagrams;
        // Where each datagram's bytes start; the batch is not pushed to during a flush,
        // so these stay valid until it is cleared.
        let start = |d: &Datagram| batch.bytes_of(d).as_ptr() as usize;
        let mut i = 0;
        while i < ds.len() {
            let seg = ds[i].len();
            let mut j = i + 1;
            let mut total = seg;
            if self.gso && seg > 0 {
                while j < ds.len()
                    && j - i < MAX_GSO_SEGMENTS
                    && ds[j].dest == ds[i].dest
                    && ds[j].len() <= seg
                    && ds[j].len() > 0
                    && total + ds[j].len() <= MAX_GSO_BYTES
                    // One iovec per message: the next datagram's bytes must follow on.
                    && start(&ds[j]) == start(&ds[j - 1]) + ds[j - 1].len()
                {
                    total += ds[j].len();
                    j += 1;
                    if ds[j - 1].len() < seg {
                        break; // a shorter datagram must be the last segment
                    }
                }
            }
            self.runs.push(Run {
                first: i,
                count: j - i,
                segment: if j - i > 1 { seg as u16 } else { 0 },
                at: start(&ds[i]),
                len: total,
            });
            i = j;
        }
        self.iovecs.clear();
        self.iovecs.extend(self.runs.iter().map(|run| libc::iovec {
            iov_base: run.at as *mut libc::c_void,
            iov_len: run.len,
        }));
        self.names.clear();
        self.names.extend(
            self.runs
                .iter()
                .map(|run| RawAddr::from(&batch.dests[ds[run.first].dest as usize])),
        );
        self.cmsgs.clear();
        self.cmsgs.resize(self.runs.len(), CmsgBuf([0; 32]));
        self.msgs.clear();
        for (k, run) in self.runs.iter().enumerate() {
            // SAFETY: an all-zero msghdr is a valid "no name, no data" header.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            let name = &mut self.names[k];
            hdr.msg_name = name.as_mut_ptr();
            hdr.msg_namelen = name.len;
            hdr.msg_iov = &mut self.iovecs[k];
            hdr.msg_iovlen = 1;
            if run.segment != 0 {
                let buf = &mut self.cmsgs[k];
                // SAFETY: CMSG_* walk `buf`, which is 8-byte aligned and large enough for
                // one cmsghdr carrying a u16 (CMSG_SPACE(2) = 24 on 64-bit Linux).
                unsafe {
                    let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
                    hdr.msg_control = buf.0.as_mut_ptr() as *mut libc::c_void;
                    hdr.msg_controllen = space as _;
                    let cmsg = libc::CMSG_FIRSTHDR(&hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, run.segment);
                }
            }
            self.msgs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
    }

    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// `sendmmsg` messages `from..to`; one result per message.
    fn submit_mmsg(
        &mut self,
        from: usize,
        to: usize,
        out: &mut FlushOutcome,
    ) -> Vec<io::Result<()>> {
        let mut results = Vec::with_capacity(to - from);
        let mut i = from;
        let mut waited = false;
        while i < to {
            out.syscalls += 1;
            // SAFETY: msgs[i..to] were built by `plan` and point into live scratch vectors
            // and into the batch, which outlives this call.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd(),
                    self.msgs[i..].as_mut_ptr(),
                    (to - i) as libc::c_uint,
                    0,
                )
            };
            if n > 0 {
                for _ in 0..n {
                    results.push(Ok(()));
                }
                i += n as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if is_full(&err) && !waited {
                // The socket buffer is full: everyone's packets share it, so wait a moment
                // once per flush for the device to drain, then drop what still does not fit.
                waited = true;
                self.wait_writable();
                continue;
            }
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            results.push(Err(err));
            i += 1;
        }
        results
    }

    fn wait_writable(&self) {
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe {
            libc::poll(&mut pfd, 1, FULL_BUFFER_WAIT_MS);
        }
    }

    /// io_uring `SENDMSG` for messages `from..to`; one result per message.
    fn submit_uring(
        &mut self,
        from: usize,
        to: usize,
        out: &mut FlushOutcome,
    ) -> Vec<io::Result<()>> {
        let fd = self.fd();
        let Some(ring) = self.ring.as_mut() else {
            return self.submit_mmsg(from, to, out);
        };
        let mut results: Vec<io::Result<()>> = (from..to).map(|_| Ok(())).collect();
        let depth = ring.params().sq_entries() as usize;
        let mut i = from;
        while i < to {
            let end = (i + depth).min(to);
            {
                let mut sq = ring.submission();
                for k in i..end {
                    let entry = io_uring::opcode::SendMsg::new(
                        io_uring::types::Fd(fd),
                        &self.msgs[k].msg_hdr as *const libc::msghdr,
                    )
                    .build()
                    .user_data(k as u64);
                    // SAFETY: the msghdr and everything it points to stay alive and
                    // unmoved until the completions are reaped below.
                    if unsafe { sq.push(&entry) }.is_err() {
                        results[k - from] = Err(io::Error::other("io_uring queue full"));
                    }
                }
            }
            out.syscalls += 1;
            let want = end - i;
            let mut reaped = 0;
            if let Err(e) = ring.submit_and_wait(want) {
                warn!("io_uring submit failed: {e}");
            }
            while reaped < want {
                let mut got = 0;
                for cqe in ring.completion() {
                    got += 1;
                    let k = cqe.user_data() as usize;
                    if cqe.result() < 0 && k >= from && k < to {
                        results[k - from] = Err(io::Error::from_raw_os_error(-cqe.result()));
                    }
                }
                reaped += got;
                if reaped < want {
                    out.syscalls += 1;
                    if ring.submit_and_wait(want - reaped).is_err() {
                        break;
                    }
                }
            }
            i = end;
        }
        results
    }

    /// One datagram on its own (the GSO fallback).
    fn send_one(&self, dest: &SocketAddr, bytes: &[u8]) -> io::Result<()> {
        self.socket.send_to(bytes, dest).map(|_| ())
    }
}

/// Whether the kernel knows UDP GSO (`UDP_SEGMENT`, Linux 4.18+): setting the socket's
/// default segment size to 0 (no segmentation unless a message asks) fails otherwise.
/// Logs once when it does not.
fn gso_supported(socket: &std::net::UdpSocket) -> bool {
    let zero: libc::c_int = 0;
    // SAFETY: valid fd, pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &zero as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        return true;
    }
    info!(
        "UDP GSO not available ({}); sending one message per packet",
        io::Error::last_os_error()
    );
    false
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS))
}

/// Errors that mean "no GSO here" rather than "this destination is bad".
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOPROTOOPT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn receiver() -> UdpSocket {
        let r = UdpSocket::bind("127.0.0.1:0").unwrap();
        r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        r
    }

    fn recv_all(r: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while out.len() < n {
            match r.recv(&mut buf) {
                Ok(k) => out.push(buf[..k].to_vec()),
                Err(_) => break,
            }
        }
        out
    }

    fn check_path(path: SendPath, gso: bool) {
        let a = receiver();
        let b = receiver();
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let mut s = UdpSender::new(sock, path, gso).unwrap();
        let payload = vec![7u8; 1000];
        let short = vec![9u8; 300];
        let mut batch = Batch::new();
        let da = batch.dest(a.local_addr().unwrap());
        for i in 0..5u8 {
            batch.push(da, &[i; 12], &payload, 1, Instant::now());
        }
        batch.push(da, &[5; 12], &short, 1, Instant::now());
        let db = batch.dest(b.local_addr().unwrap());
        for i in 0..3u8 {
            batch.push(db, &[i; 12], &payload, 2, Instant::now());
        }
        let out = s.flush(&mut batch, |f| {
            assert!(matches!(f, Fate::Sent { .. }), "nothing should drop")
        });
        assert_eq!(out.sent, 9);
        assert!(batch.is_empty());
        let got_a = recv_all(&a, 6);
        assert_eq!(got_a.len(), 6, "{path:?}");
        for (i, d) in got_a.iter().take(5).enumerate() {
            assert_eq!(d.len(), 1012);
            assert_eq!(d[0], i as u8);
            assert_eq!(d[12], 7);
        }
        assert_eq!(got_a[5].len(), 312);
        assert_eq!(got_a[5][12], 9);
        let got_b = recv_all(&b, 3);
        assert_eq!(got_b.len(), 3);
    }

    #[test]
    fn sendmmsg_with_gso_delivers_every_datagram_intact() {
        check_path(SendPath::Sendmmsg, true);
    }

    #[test]
    fn sendmmsg_without_gso_delivers_every_datagram_intact() {
        check_path(SendPath::Sendmmsg, false);
    }

    #[test]
    fn io_uring_delivers_every_datagram_intact() {
        check_path(SendPath::Uring, true);
        check_path(SendPath::Uring, false);
    }

    /// Shared slices and own copies mixed, to one destination and to several: every
    /// datagram arrives with its own bytes, whichever buffer they came from, and a run
    /// that is not contiguous (own bytes after shared ones, a gap in the shared buffer)
    /// is split rather than sent with the wrong bytes.
    fn check_shared(path: SendPath, gso: bool) {
        let a = receiver();
        let b = receiver();
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let mut s = UdpSender::new(sock, path, gso).unwrap();
        // Three 500-byte packets back to back, then a 200-byte one.
        let mut wire = Vec::new();
        for i in 0..3u8 {
            wire.extend_from_slice(&[i + 1; 500]);
        }
        wire.extend_from_slice(&[4; 200]);
        let wire = Bytes::from(wire);
        let mut batch = Batch::new();
        let now = Instant::now();
        for r in [&a, &b] {
            let d = batch.dest(r.local_addr().unwrap());
            for k in 0..3 {
                batch.push_shared(d, &wire, k * 500, 500, 1, now);
            }
            batch.push_shared(d, &wire, 1500, 200, 1, now);
        }
        let da = batch.dest(a.local_addr().unwrap());
        batch.push(da, &[9; 12], &[8; 488], 2, now);
        // Packets 1 and 3 only: not contiguous.
        batch.push_shared(da, &wire, 0, 500, 3, now);
        batch.push_shared(da, &wire, 1000, 500, 3, now);
        assert_eq!(batch.shared.len(), 1, "one buffer, held once");
        let out = s.flush(&mut batch, |f| {
            assert!(matches!(f, Fate::Sent { .. }), "nothing should drop")
        });
        assert_eq!(out.sent, 11);
        let got_a = recv_all(&a, 7);
        let firsts: Vec<(usize, u8)> = got_a.iter().map(|d| (d.len(), d[0])).collect();
        assert_eq!(
            firsts,
            vec![
                (500, 1),
                (500, 2),
                (500, 3),
                (200, 4),
                (500, 9),
                (500, 1),
                (500, 3)
            ],
            "{path:?} gso {gso}"
        );
        assert!(got_a.iter().all(|d| d.iter().skip(12).all(|&x| x == d[12])));
        let got_b = recv_all(&b, 4);
        assert_eq!(
            got_b.iter().map(|d| d[0]).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn shared_and_own_datagrams_arrive_intact_on_every_path() {
        check_shared(SendPath::Sendmmsg, true);
        check_shared(SendPath::Sendmmsg, false);
        check_shared(SendPath::Uring, true);
    }

    #[test]
    fn unreachable_destinations_are_counted_not_fatal() {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let mut s = UdpSender::new(sock, SendPath::Sendmmsg, true).unwrap();
        let a = receiver();
        let mut batch = Batch::new();
        // An IPv6 destination on an IPv4 socket is refused by the kernel.
        let bad = batch.dest("[::1]:9".parse::<SocketAddr>().unwrap());
        batch.push(bad, &[0; 12], b"x", 3, Instant::now());
        let good = batch.dest(a.local_addr().unwrap());
        batch.push(good, &[0; 12], b"y", 4, Instant::now());
        let mut drops = Vec::new();
        let out = s.flush(&mut batch, |f| {
            if let Fate::Dropped { tag } = f {
                drops.push(tag)
            }
        });
        assert_eq!(drops, vec![3]);
        assert_eq!(out.sent, 1);
        assert_eq!(recv_all(&a, 1).len(), 1);
    }
}
