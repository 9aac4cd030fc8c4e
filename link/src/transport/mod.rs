//! Byte movers behind one trait.
//!
//! A [`Transport`] is a connected pipe (a TCP socket, later an RDMA queue pair) that, once
//! started, pumps messages between the link's two queues and the wire: it takes what users
//! queued on the [`crate::LinkSender`] side ([`DriverEnds::outgoing`]), encodes and writes
//! it; it reads, decodes and hands messages to the [`crate::LinkReceiver`] side
//! ([`DriverEnds::incoming`]). Everything above (handshake, flow control, users) only sees
//! the queues, so a new backend only has to implement [`Transport::start`].
//!
//! - [`tcp`]: tokio, a reader task and a batching writer task;
//! - [`uring`]: a thread per link owning an io_uring;
//! - [`mem`]: no driver at all: the two ends share the queues (the monolithic server).

pub mod mem;
pub mod tcp;
pub mod uring;

use crate::{LinkError, LinkReceiver, LinkSender, Message};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Messages a link may hold queued in each direction before senders wait. Messages are
/// moved, not copied (frame payloads are shared `Bytes`), so this bounds counts, not bytes.
pub const QUEUE_DEPTH: usize = 256;

/// State shared by a link's user handles and its driver.
#[derive(Default)]
pub struct LinkShared {
    /// Why the link ended, if it ended badly; handed once to the receiver after the last
    /// message, so users see the cause rather than a bare "closed".
    error: Mutex<Option<LinkError>>,
    /// The handshake succeeded: full-size messages are accepted from now on.
    authenticated: AtomicBool,
}

impl LinkShared {
    /// Record why the link ended; the first cause wins.
    pub fn set_error(&self, e: LinkError) {
        if let Ok(mut slot) = self.error.lock() {
            if slot.is_none() {
                *slot = Some(e);
            }
        }
    }

    /// The handshake succeeded; lift the pre-authentication message size limit.
    pub fn mark_authenticated(&self) {
        self.authenticated.store(true, Ordering::Release);
    }

    /// Largest message a reader may accept now.
    pub fn max_message_size(&self) -> usize {
        if self.authenticated.load(Ordering::Acquire) {
            crate::codec::MAX_MESSAGE_SIZE
        } else {
            crate::codec::PRE_AUTH_MAX_MESSAGE_SIZE
        }
    }

    /// Take the recorded cause, if any.
    pub fn take_error(&self) -> Option<LinkError> {
        self.error.lock().ok().and_then(|mut s| s.take())
    }
}

/// Wakes a driver that sleeps outside tokio (the io_uring thread) when its queues change.
pub trait DriverWaker: Send + Sync {
    /// A message was queued for sending.
    fn sent(&self);
    /// The receiver took a message, so the incoming queue has room.
    fn received(&self);
}

/// The driver's ends of a link's queues.
pub struct DriverEnds {
    /// Messages users want sent, in order. Ends (`None`) when every sender is dropped.
    pub outgoing: mpsc::Receiver<Message>,
    /// A weak handle on the outgoing queue, so the driver can queue a reply itself (e.g. an
    /// `Error{Malformed}`) without keeping the link open on its own.
    pub outgoing_weak: mpsc::WeakSender<Message>,
    /// Where decoded messages go. Dropping it ends the receiver's stream.
    pub incoming: mpsc::Sender<Message>,
    /// Where the driver records why the link ended.
    pub shared: Arc<LinkShared>,
}

/// What a started transport gives back to the user handles.
#[derive(Default)]
pub struct Started {
    /// Kept by the receiver; dropping it tells the driver nobody reads any more.
    pub guard: Option<Box<dyn Send + Sync>>,
    /// Called by the handles when queues change (drivers that sleep outside tokio).
    pub waker: Option<Arc<dyn DriverWaker>>,
}

/// A connected byte pipe that can drive a link.
pub trait Transport: Send + 'static {
    /// Start pumping messages between `ends` and the wire. Called within a tokio runtime.
    fn start(self, ends: DriverEnds) -> Result<Started, LinkError>;
}

/// Build a link's user handles around a transport and start it.
pub fn start_link<T: Transport>(transport: T, peer: String) -> Result<crate::Link, LinkError> {
    let (out_tx, out_rx) = mpsc::channel(QUEUE_DEPTH);
    let (in_tx, in_rx) = mpsc::channel(QUEUE_DEPTH);
    let shared = Arc::new(LinkShared::default());
    let started = transport.start(DriverEnds {
        outgoing: out_rx,
        outgoing_weak: out_tx.downgrade(),
        incoming: in_tx,
        shared: shared.clone(),
    })?;
    Ok(crate::Link {
        sender: LinkSender {
            tx: out_tx,
            waker: started.waker.clone(),
            _alive: started.waker.clone().map(|w| Arc::new(SenderAlive(w))),
        },
        receiver: LinkReceiver {
            rx: in_rx,
            shared,
            waker: started.waker,
            _guard: started.guard,
        },
        peer,
    })
}

/// Wakes the driver when the last [`LinkSender`] clone is dropped.
pub struct SenderAlive(Arc<dyn DriverWaker>);

impl Drop for SenderAlive {
    fn drop(&mut self) {
        self.0.sent();
    }
}

/// Aborts a tokio task when dropped.
pub(crate) struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
