//! TCP driven by io_uring: one thread per link owns a ring and the socket.
//!
//! - **Registered buffers**: a receive buffer and a send buffer are registered with the
//!   ring (`register_buffers`); small messages and frame headers are encoded straight into
//!   the send buffer and written with `WriteFixed`, small messages are read with
//!   `ReadFixed`, so the kernel does not map and unmap pages per operation.
//! - **Large payloads** (frames of `ZC_THRESHOLD` bytes and more) are sent from their own
//!   `Bytes` with `SendZc` (zero-copy; the `Bytes` is kept alive until the kernel's
//!   notification) when the kernel supports it (probed with `Probe`), else with `Send`.
//!   They are received into a buffer of their exact size, which becomes the frame's
//!   `Bytes` — no copy on either side beyond what the kernel does.
//! - **Batched submissions**: each turn of the loop queues the read, the next write and the
//!   wake-up read together and enters the kernel once (`submit_and_wait`).
//! - **Bridge to tokio**: users talk to tokio mpsc queues. The thread takes outgoing
//!   messages with `try_recv`; when it has nothing to do it sleeps in the ring, with a read
//!   on an eventfd in flight. Senders write the eventfd only if the thread said it sleeps
//!   (an atomic flag), so a busy link costs no extra syscalls.
//!
//! Writes on the socket are issued one at a time (each continuing where the previous one
//! stopped, partial writes included), which keeps byte order trivially right.
//!
//! The handshake runs over this driver like over any other transport; the socket is
//! connected (and accepted) by tokio and handed over as a blocking std socket.
//!
//! Zero-copy send is used for remote peers only: on loopback the kernel copies the pages
//! anyway and the pinning and notifications cost about a third of the throughput (see
//! `bench/RESULTS.md`). `DIVISOR_URING_ZC=1` (or `0`) in the environment forces it on (off).

use super::{DriverEnds, DriverWaker, LinkShared, Started, Transport};
use crate::codec::{self, DecodeError};
use crate::{ErrorCode, LinkError, Message};
use bytes::{Buf, Bytes, BytesMut};
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use std::collections::{HashMap, VecDeque};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};

/// Registered receive buffer size.
const RBUF_SIZE: usize = 256 * 1024;
/// Registered send buffer size: small messages and headers of one batch.
const WBUF_SIZE: usize = 1024 * 1024;
/// Messages at least this large are received into their own buffer (no copy out of the
/// receive buffer); frame payloads at least this large are sent from their own `Bytes`.
const ZC_THRESHOLD: usize = 64 * 1024;
/// Ring size.
const RING_ENTRIES: u32 = 64;
/// Most write operations submitted as one linked chain.
const MAX_CHAIN: usize = 16;

const UD_READ: u64 = 1;
const UD_EFD: u64 = 2;
const UD_WRITE: u64 = 3;
const UD_ZC_TAG: u64 = 4;

/// A connected TCP socket to be driven by io_uring.
pub struct UringTransport {
    stream: TcpStream,
    /// Whether the peer is on this machine: loopback always copies zero-copy payloads
    /// (`skb_copy_ubufs`), so zero-copy send only adds page pinning and notifications there.
    loopback: bool,
}

impl UringTransport {
    /// Takes over a connected socket (made blocking: io_uring polls it internally).
    pub fn new(stream: TcpStream) -> Result<UringTransport, LinkError> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        let loopback = stream
            .peer_addr()
            .map(|a| a.ip().is_loopback())
            .unwrap_or(false);
        Ok(UringTransport { stream, loopback })
    }
}

/// Wakes the driver thread from tokio land.
struct UringWaker {
    efd: OwnedFd,
    /// The thread is (about to be) asleep in the ring.
    sleeping: AtomicBool,
    /// The thread waits for room in the incoming queue.
    want_room: AtomicBool,
    /// The receiver was dropped: stop reading.
    stop: AtomicBool,
}

impl UringWaker {
    fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own. A failure (counter
        // saturated) still leaves the eventfd readable, which is all we need.
        unsafe {
            libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }
}

impl DriverWaker for UringWaker {
    fn sent(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.kick();
        }
    }
    fn received(&self) {
        fence(Ordering::SeqCst);
        if self.want_room.load(Ordering::Relaxed) && self.want_room.swap(false, Ordering::SeqCst) {
            self.kick();
        }
    }
}

/// Kept by the receiver: dropping it stops the reading side.
struct RxGuard(Arc<UringWaker>);

impl Drop for RxGuard {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.kick();
    }
}

impl Transport for UringTransport {
    fn start(self, ends: DriverEnds) -> Result<Started, LinkError> {
        // COOP_TASKRUN: completions are processed when we enter the ring anyway, so the kernel
        // need not interrupt the thread for them (falls back if the kernel predates 5.19).
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))
            .map_err(|e| LinkError::Unavailable(format!("cannot create an io_uring: {e}")))?;
        // SAFETY: plain syscall; the returned fd is checked and then owned.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let waker = Arc::new(UringWaker {
            efd,
            sleeping: AtomicBool::new(false),
            want_room: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let mut probe = Probe::new();
        let zc_supported = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::SendZc::CODE);
        // Measured on loopback (bench/RESULTS.md): zero-copy send costs about a third of the
        // throughput there, because the kernel copies the pages anyway (`skb_copy_ubufs`)
        // after pinning them. Default: on for remote peers only.
        let zc_wanted = match std::env::var("DIVISOR_URING_ZC").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => !self.loopback,
        };
        let zc_supported = zc_supported && zc_wanted;
        tracing::debug!(
            zero_copy = zc_supported,
            loopback = self.loopback,
            "io_uring link driver"
        );
        let mut driver = Driver::new(ring, self.stream, waker.clone(), ends, zc_supported);
        std::thread::Builder::new()
            .name("divisor-link-uring".into())
            .spawn(move || driver.run())?;
        let w: Arc<dyn DriverWaker> = waker.clone();
        Ok(Started {
            guard: Some(Box::new(RxGuard(waker))),
            waker: Some(w),
        })
    }
}

/// One write operation: a range of the send buffer, or a payload sent from its own bytes.
enum WOp {
    Fixed { off: usize, len: usize },
    Payload(Bytes),
}

struct Driver {
    ring: IoUring,
    stream: TcpStream,
    fd: RawFd,
    waker: Arc<UringWaker>,
    shared: Arc<LinkShared>,
    /// Whether `rbuf`/`wbuf` are registered (index 0 and 1); if the kernel refused (memlock
    /// limit), plain Recv/Send are used on the same memory.
    fixed: bool,
    zc: bool,

    // Reading.
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    /// A large message being received into its own buffer: (buffer, total size).
    big: Option<(BytesMut, usize)>,
    read_inflight: bool,
    read_done: bool,
    read_error: Option<LinkError>,
    incoming: Option<mpsc::Sender<Message>>,
    pending_in: VecDeque<Message>,

    // Writing.
    outgoing: mpsc::Receiver<Message>,
    held: Option<Message>,
    out_closed: bool,
    /// The last message to send before closing (our answer to a malformed message).
    final_reply: Option<Message>,
    wbuf: Box<[u8]>,
    wlen: usize,
    ops: VecDeque<WOp>,
    /// Write operations of the current chain still in the kernel.
    writes_inflight: usize,
    write_failed: bool,
    shut_wr: bool,
    zc_next: u64,
    /// Payloads the kernel may still read (zero-copy sends awaiting their notification).
    zc_pending: HashMap<u64, Bytes>,

    efd_buf: Box<u64>,
    efd_inflight: bool,
}

impl Driver {
    fn new(
        ring: IoUring,
        stream: TcpStream,
        waker: Arc<UringWaker>,
        ends: DriverEnds,
        zc: bool,
    ) -> Driver {
        let fd = stream.as_raw_fd();
        let mut rbuf = vec![0u8; RBUF_SIZE].into_boxed_slice();
        let mut wbuf = vec![0u8; WBUF_SIZE].into_boxed_slice();
        let iovecs = [
            libc::iovec {
                iov_base: rbuf.as_mut_ptr().cast(),
                iov_len: rbuf.len(),
            },
            libc::iovec {
                iov_base: wbuf.as_mut_ptr().cast(),
                iov_len: wbuf.len(),
            },
        ];
        // SAFETY: both buffers are heap allocations owned by the driver, which keeps them
        // (and never moves their contents) until the ring is dropped.
        let fixed = unsafe { ring.submitter().register_buffers(&iovecs) }.is_ok();
        if !fixed {
            tracing::debug!("io_uring buffer registration refused; using unregistered buffers");
        }
        let DriverEnds {
            outgoing,
            outgoing_weak: _,
            incoming,
            shared,
        } = ends;
        Driver {
            ring,
            stream,
            fd,
            waker,
            shared,
            fixed,
            zc,
            rbuf,
            rstart: 0,
            rend: 0,
            big: None,
            read_inflight: false,
            read_done: false,
            read_error: None,
            incoming: Some(incoming),
            pending_in: VecDeque::new(),
            outgoing,
            held: None,
            out_closed: false,
            final_reply: None,
            wbuf,
            wlen: 0,
            ops: VecDeque::new(),
            writes_inflight: 0,
            write_failed: false,
            shut_wr: false,
            zc_next: 0,
            zc_pending: HashMap::new(),
            efd_buf: Box::new(0),
            efd_inflight: false,
        }
    }

    fn run(&mut self) {
        if let Err(e) = self.main_loop() {
            tracing::warn!(error = %e, "io_uring link driver failed");
            self.shared.set_error(LinkError::Io(e));
        }
        self.teardown();
    }

    fn write_finished(&self) -> bool {
        (self.out_closed || self.write_failed)
            && self.ops.is_empty()
            && self.writes_inflight == 0
            && self.held.is_none()
            && (self.final_reply.is_none() || self.write_failed)
    }

    fn main_loop(&mut self) -> std::io::Result<()> {
        loop {
            self.flush_incoming();
            if self.waker.stop.load(Ordering::Relaxed) && !self.read_done {
                self.read_done = true;
                self.pending_in.clear();
                self.incoming = None;
            }
            if self.writes_inflight == 0 && !self.write_failed {
                if self.ops.is_empty() {
                    self.fill_batch();
                }
                self.submit_writes();
            }
            if self.write_finished() && !self.shut_wr {
                self.shut_wr = true;
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            if !self.read_done && !self.read_inflight && self.pending_in.is_empty() {
                self.submit_read();
            }
            if self.read_done && self.write_finished() {
                return Ok(());
            }
            if !self.efd_inflight {
                self.submit_efd_read();
            }

            // Sleep only if there is nothing to do right now; the flags tell tokio-side
            // handles to wake us. Re-check after publishing them (see `UringWaker`).
            let can_write = self.writes_inflight == 0 && !self.write_failed && !self.out_closed;
            let mut wait = 1;
            if can_write || !self.pending_in.is_empty() {
                self.waker.sleeping.store(true, Ordering::SeqCst);
                if !self.pending_in.is_empty() {
                    self.waker.want_room.store(true, Ordering::SeqCst);
                }
                fence(Ordering::SeqCst);
                let progressed = (can_write && self.poll_outgoing()) || self.flush_incoming();
                if progressed {
                    wait = 0;
                }
            }
            match self.ring.submit_and_wait(wait) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            self.waker.sleeping.store(false, Ordering::Relaxed);
            self.waker.want_room.store(false, Ordering::Relaxed);
            self.reap();
        }
    }

    /// Takes one outgoing message into `held` if there is one; notes a closed queue.
    fn poll_outgoing(&mut self) -> bool {
        if self.held.is_some() {
            return true;
        }
        match self.outgoing.try_recv() {
            Ok(m) => {
                self.held = Some(m);
                true
            }
            Err(TryRecvError::Empty) => false,
            Err(TryRecvError::Disconnected) => {
                self.out_closed = true;
                true
            }
        }
    }

    /// Encodes queued messages into the send buffer / payload list, up to one buffer full.
    fn fill_batch(&mut self) {
        self.wlen = 0;
        let mut fixed_start = 0;
        let mut final_op = None;
        loop {
            if self.held.is_none() && (self.out_closed || !self.poll_outgoing()) {
                break;
            }
            let Some(msg) = self.held.take() else { break };
            let len = codec::encoded_len(&msg);
            match &msg {
                Message::Frame(f) if f.data.len() >= ZC_THRESHOLD => {
                    let hdr = len - f.data.len();
                    if WBUF_SIZE - self.wlen < hdr {
                        self.held = Some(msg);
                        break;
                    }
                    let mut out = &mut self.wbuf[self.wlen..];
                    if codec::encode_frame_header(f, &mut out).is_err() {
                        tracing::error!("unencodable frame dropped");
                        continue;
                    }
                    self.wlen += hdr;
                    self.ops.push_back(WOp::Fixed {
                        off: fixed_start,
                        len: self.wlen - fixed_start,
                    });
                    fixed_start = self.wlen;
                    self.ops.push_back(WOp::Payload(f.data.clone()));
                }
                _ if len > WBUF_SIZE => {
                    // A big control message (rare): encode it on its own.
                    if self.wlen > fixed_start {
                        self.ops.push_back(WOp::Fixed {
                            off: fixed_start,
                            len: self.wlen - fixed_start,
                        });
                        fixed_start = self.wlen;
                    }
                    let mut b = BytesMut::with_capacity(len);
                    if codec::encode(&msg, &mut b).is_ok() {
                        self.ops.push_back(WOp::Payload(b.freeze()));
                    }
                }
                _ => {
                    if WBUF_SIZE - self.wlen < len {
                        self.held = Some(msg);
                        break;
                    }
                    let mut out = &mut self.wbuf[self.wlen..self.wlen + len];
                    if codec::encode(&msg, &mut out).is_err() {
                        tracing::error!("unencodable message dropped");
                        continue;
                    }
                    self.wlen += len;
                }
            }
            if self.ops.len() >= 64 {
                break;
            }
        }
        if self.out_closed && self.held.is_none() {
            if let Some(reply) = self.final_reply.take() {
                let mut b = BytesMut::new();
                if codec::encode(&reply, &mut b).is_ok() {
                    // After the fixed range below: pushed once that is queued.
                    final_op = Some(WOp::Payload(b.freeze()));
                }
            }
        }
        if self.wlen > fixed_start {
            self.ops.push_back(WOp::Fixed {
                off: fixed_start,
                len: self.wlen - fixed_start,
            });
        }
        if let Some(op) = final_op {
            self.ops.push_back(op);
        }
    }

    fn push(&mut self, entry: io_uring::squeue::Entry) {
        // SAFETY: every buffer an entry points at is owned by the driver (rbuf, wbuf,
        // efd_buf, `big`, or a `Bytes` kept in `ops`/`zc_pending`) and outlives the
        // operation: teardown waits for every completion before dropping them.
        unsafe {
            while self.ring.submission().push(&entry).is_err() {
                // Queue full: hand what is queued to the kernel and retry.
                let _ = self.ring.submit();
            }
        }
    }

    /// Submits the queued write operations as one linked chain: the kernel runs them in
    /// order, and a short or failed one cancels the rest (sends use `MSG_WAITALL`, so a short
    /// send means an error). Completions then advance the queue; cancelled operations stay
    /// queued and go again in the next chain.
    fn submit_writes(&mut self) {
        let fd = types::Fd(self.fd);
        let flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
        let n = self.ops.len().min(MAX_CHAIN);
        let mut entries = Vec::with_capacity(n);
        for (i, op) in self.ops.iter().take(n).enumerate() {
            let e = match op {
                WOp::Fixed { off, len } => {
                    let ptr = self.wbuf[*off..].as_ptr();
                    if self.fixed {
                        opcode::WriteFixed::new(fd, ptr, *len as u32, 1)
                            .build()
                            .user_data(UD_WRITE)
                    } else {
                        opcode::Send::new(fd, ptr, *len as u32)
                            .flags(flags)
                            .build()
                            .user_data(UD_WRITE)
                    }
                }
                WOp::Payload(data) => {
                    if self.zc && data.len() >= ZC_THRESHOLD {
                        let ud = (self.zc_next << 8) | UD_ZC_TAG;
                        self.zc_next += 1;
                        self.zc_pending.insert(ud, data.clone());
                        opcode::SendZc::new(fd, data.as_ptr(), data.len() as u32)
                            .flags(flags)
                            .build()
                            .user_data(ud)
                    } else {
                        opcode::Send::new(fd, data.as_ptr(), data.len() as u32)
                            .flags(flags)
                            .build()
                            .user_data(UD_WRITE)
                    }
                }
            };
            entries.push(if i + 1 < n {
                e.flags(squeue::Flags::IO_LINK)
            } else {
                e
            });
        }
        for e in entries {
            self.push(e);
            self.writes_inflight += 1;
        }
    }

    fn submit_read(&mut self) {
        let fd = types::Fd(self.fd);
        let entry = if let Some((big, total)) = &mut self.big {
            let want = *total - big.len();
            big.reserve(want);
            let spare = big.spare_capacity_mut();
            // MSG_WAITALL: the kernel completes the read only when the whole message is in,
            // instead of waking us for every chunk.
            opcode::Recv::new(fd, spare.as_mut_ptr().cast(), want.min(spare.len()) as u32)
                .flags(libc::MSG_WAITALL)
                .build()
        } else {
            if self.rstart == self.rend {
                self.rstart = 0;
                self.rend = 0;
            } else if RBUF_SIZE - self.rend < ZC_THRESHOLD {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            }
            let ptr = self.rbuf[self.rend..].as_mut_ptr();
            let len = (RBUF_SIZE - self.rend) as u32;
            if self.fixed {
                opcode::ReadFixed::new(fd, ptr, len, 0).build()
            } else {
                opcode::Recv::new(fd, ptr, len).build()
            }
        };
        self.push(entry.user_data(UD_READ));
        self.read_inflight = true;
    }

    fn submit_efd_read(&mut self) {
        let ptr: *mut u64 = &mut *self.efd_buf;
        let e = opcode::Read::new(types::Fd(self.waker.efd.as_raw_fd()), ptr.cast(), 8)
            .build()
            .user_data(UD_EFD);
        self.push(e);
        self.efd_inflight = true;
    }

    fn reap(&mut self) {
        let done: Vec<(u64, i32, u32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, flags) in done {
            match ud {
                UD_READ => self.on_read(res),
                UD_EFD => self.efd_inflight = false,
                UD_WRITE => self.on_write(res),
                zc if zc & 0xff == UD_ZC_TAG => {
                    if cqueue::notif(flags) {
                        self.zc_pending.remove(&zc);
                    } else {
                        if !cqueue::more(flags) {
                            // No notification will follow (e.g. the send failed).
                            self.zc_pending.remove(&zc);
                        }
                        if res == -libc::EOPNOTSUPP || res == -libc::EINVAL {
                            tracing::debug!("zero-copy send refused; falling back to send");
                            self.zc = false;
                            self.writes_inflight -= 1;
                        } else {
                            self.on_write(res);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn on_write(&mut self, res: i32) {
        self.writes_inflight = self.writes_inflight.saturating_sub(1);
        if self.write_failed {
            return;
        }
        if res == -libc::ECANCELED || res == -libc::EINTR || res == -libc::EAGAIN {
            return; // still queued: goes again in the next chain
        }
        if res <= 0 {
            let e = if res == 0 {
                std::io::Error::from(std::io::ErrorKind::WriteZero)
            } else {
                std::io::Error::from_raw_os_error(-res)
            };
            tracing::debug!(error = %e, "link write failed");
            self.shared.set_error(LinkError::Io(e));
            self.fail_writes();
            return;
        }
        let n = res as usize;
        let finished = match self.ops.front_mut() {
            Some(WOp::Fixed { off, len }) => {
                *off += n.min(*len);
                *len -= n.min(*len);
                *len == 0
            }
            Some(WOp::Payload(b)) => {
                b.advance(n.min(b.len()));
                b.is_empty()
            }
            None => false,
        };
        if finished {
            self.ops.pop_front();
        }
    }

    fn fail_writes(&mut self) {
        self.write_failed = true;
        self.ops.clear();
        self.held = None;
        self.final_reply = None;
        self.outgoing.close();
    }

    fn on_read(&mut self, res: i32) {
        self.read_inflight = false;
        if self.read_done {
            return;
        }
        if res == -libc::EINTR || res == -libc::EAGAIN {
            return;
        }
        if res < 0 {
            let e = std::io::Error::from_raw_os_error(-res);
            self.finish_read(Some(LinkError::Io(e)));
            return;
        }
        if res == 0 {
            let partial = self.big.is_some() || self.rend > self.rstart;
            if partial {
                let kind = match &self.big {
                    Some((b, _)) => b.get(6).copied(),
                    None => self.rbuf[self.rstart..self.rend].get(6).copied(),
                };
                self.decode_failed(DecodeError::Truncated {
                    kind: kind.unwrap_or(0),
                });
            } else {
                self.finish_read(None);
            }
            return;
        }
        let n = res as usize;
        match &mut self.big {
            // SAFETY: the kernel wrote `n` bytes into the spare capacity we gave it.
            Some((b, _)) => unsafe { b.set_len(b.len() + n) },
            None => self.rend += n,
        }
        if let Err(e) = self.process_input() {
            self.decode_failed(e);
        }
    }

    /// Decodes every whole message received so far.
    fn process_input(&mut self) -> Result<(), DecodeError> {
        loop {
            if let Some((b, total)) = &self.big {
                if b.len() < *total {
                    return Ok(());
                }
                let Some((b, _)) = self.big.take() else {
                    return Ok(());
                };
                let m = codec::decode_whole(&b.freeze())?;
                self.deliver(m);
                continue;
            }
            let avail = &self.rbuf[self.rstart..self.rend];
            let Some(total) = codec::peek_len_max(avail, self.shared.max_message_size())? else {
                return Ok(());
            };
            if total >= ZC_THRESHOLD {
                // Validate the version before committing memory to the message.
                if avail.len() >= codec::LEN_PREFIX + 2 {
                    let v = u16::from_be_bytes([avail[4], avail[5]]);
                    if v != crate::PROTOCOL_VERSION {
                        return Err(DecodeError::BadVersion { got: v });
                    }
                }
                let have = avail.len().min(total);
                let mut b = BytesMut::with_capacity(total);
                b.extend_from_slice(&avail[..have]);
                self.rstart += have;
                self.big = Some((b, total));
                continue;
            }
            match codec::decode(avail)? {
                Some((m, used)) => {
                    self.rstart += used;
                    self.deliver(m);
                }
                None => return Ok(()),
            }
        }
    }

    fn deliver(&mut self, m: Message) {
        if self.pending_in.is_empty() {
            if let Some(tx) = &self.incoming {
                match tx.try_send(m) {
                    Ok(()) => {}
                    Err(TrySendError::Full(m)) => self.pending_in.push_back(m),
                    Err(TrySendError::Closed(_)) => {
                        self.read_done = true;
                        self.incoming = None;
                    }
                }
            }
        } else {
            self.pending_in.push_back(m);
        }
    }

    /// Hands held messages to the receiver; true if any went.
    fn flush_incoming(&mut self) -> bool {
        let mut progressed = false;
        while let Some(m) = self.pending_in.pop_front() {
            let Some(tx) = &self.incoming else {
                self.pending_in.clear();
                break;
            };
            match tx.try_send(m) {
                Ok(()) => progressed = true,
                Err(TrySendError::Full(m)) => {
                    self.pending_in.push_front(m);
                    break;
                }
                Err(TrySendError::Closed(_)) => {
                    self.pending_in.clear();
                    self.incoming = None;
                    self.read_done = true;
                }
            }
        }
        if self.pending_in.is_empty() && self.read_done {
            if let Some(e) = self.read_error.take() {
                self.shared.set_error(e);
            }
            self.incoming = None;
        }
        progressed
    }

    /// The reading side ended (cleanly with `None`). The receiver gets what was decoded,
    /// then the error.
    fn finish_read(&mut self, err: Option<LinkError>) {
        self.read_done = true;
        self.read_error = err;
        self.flush_incoming();
    }

    fn decode_failed(&mut self, e: DecodeError) {
        tracing::warn!(error = %e, "malformed bytes from link peer; closing the link");
        // Tell the peer why, after what is already queued (e.g. our handshake answer), then
        // stop sending: the queue is closed to new messages and drained by `fill_batch`,
        // which appends this reply last.
        if !self.write_failed {
            self.final_reply = Some(Message::Error {
                channel: 0,
                code: ErrorCode::Malformed,
                message: format!("malformed message: {e}"),
            });
        }
        self.outgoing.close();
        self.finish_read(Some(LinkError::Decode(e)));
    }

    /// Waits for every operation in flight so no buffer is freed under the kernel.
    fn teardown(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.waker.kick();
        self.incoming = None;
        let mut rounds = 0;
        while self.read_inflight
            || self.efd_inflight
            || self.writes_inflight > 0
            || !self.zc_pending.is_empty()
        {
            if rounds == 0 {
                // The shutdown makes socket operations complete; cancel them too, in case.
                for ud in [UD_READ, UD_WRITE] {
                    self.push(opcode::AsyncCancel::new(ud).build().user_data(0));
                }
            }
            if self.efd_inflight {
                self.waker.kick();
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => break,
            }
            let done: Vec<(u64, u32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.flags()))
                .collect();
            for (ud, flags) in done {
                match ud {
                    UD_READ => self.read_inflight = false,
                    UD_EFD => self.efd_inflight = false,
                    UD_WRITE => self.writes_inflight = self.writes_inflight.saturating_sub(1),
                    zc if zc & 0xff == UD_ZC_TAG => {
                        if cqueue::notif(flags) || !cqueue::more(flags) {
                            self.zc_pending.remove(&zc);
                        }
                        if !cqueue::notif(flags) {
                            self.writes_inflight = self.writes_inflight.saturating_sub(1);
                        }
                    }
                    _ => {}
                }
            }
            rounds += 1;
            if rounds > 10_000 {
                // Should never happen; leaking the buffers is safer than freeing them.
                tracing::error!("io_uring link teardown did not complete; leaking its buffers");
                std::mem::forget(std::mem::take(&mut self.rbuf));
                std::mem::forget(std::mem::take(&mut self.wbuf));
                std::mem::forget(std::mem::take(&mut self.zc_pending));
                std::mem::forget(self.big.take());
                return;
            }
        }
    }
}
