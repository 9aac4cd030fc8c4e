//! `divisor-link`: the dedicated link between the encoder unit and the protocol unit.
//!
//! - [`message`]: the messages (frames and control), plain values;
//! - [`codec`]: their versioned, length-delimited byte format (pure functions);
//! - [`handshake`]: pre-shared-key challenge-response;
//! - [`transport`]: byte movers behind one trait (TCP, io_uring, in-process);
//! - [`flow`]: credit-based flow control.
//!
//! Users see a [`Link`]: a cloneable [`LinkSender`] and a [`LinkReceiver`] of [`Message`]s,
//! whatever transport carries them.

pub mod message;

pub use message::*;

use std::net::SocketAddr;
use std::path::Path;

/// Which transport carries a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// Plain TCP through tokio.
    #[default]
    Tcp,
    /// TCP sockets driven by io_uring.
    Uring,
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(TransportKind::Tcp),
            "uring" | "io_uring" | "io-uring" => Ok(TransportKind::Uring),
            other => Err(format!("unknown link transport {other:?}: use tcp or uring")),
        }
    }
}

/// Errors of the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link closed")]
    Closed,
    #[error("link I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// How a link is set up.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The pre-shared key both units prove knowledge of.
    pub key: Vec<u8>,
    /// Who we are.
    pub role: Role,
    pub transport: TransportKind,
}

/// An established, authenticated link.
pub struct Link {
    pub sender: LinkSender,
    pub receiver: LinkReceiver,
    /// Human-readable peer description for logs (an address, or "in-process").
    pub peer: String,
}

/// Sends messages on a link. Cheap to clone.
#[derive(Clone)]
pub struct LinkSender {}

impl LinkSender {
    /// Queue a message; waits while the transport's queue is full.
    pub async fn send(&self, _msg: Message) -> Result<(), LinkError> {
        todo!()
    }
}

/// Receives messages from a link.
pub struct LinkReceiver {}

impl LinkReceiver {
    /// The next message; `Err(LinkError::Closed)` once the link has ended.
    pub async fn recv(&mut self) -> Result<Message, LinkError> {
        todo!()
    }
}

/// Dial `addr` and authenticate.
pub async fn connect(_cfg: &LinkConfig, _addr: SocketAddr) -> Result<Link, LinkError> {
    todo!()
}

/// Dial until it works, backing off exponentially (100 ms up to 5 s), logging each failure.
/// Returns only a link that passed the handshake.
pub async fn connect_with_backoff(_cfg: &LinkConfig, _addr: SocketAddr) -> Link {
    todo!()
}

/// Accepts links.
pub struct LinkListener {}

impl LinkListener {
    pub async fn bind(_cfg: &LinkConfig, _addr: SocketAddr) -> Result<LinkListener, LinkError> {
        todo!()
    }
    pub fn local_addr(&self) -> SocketAddr {
        todo!()
    }
    /// Next authenticated link. A peer that fails the handshake is answered with an error
    /// message, logged and dropped; `accept` then goes on waiting for the next peer.
    pub async fn accept(&self) -> Result<Link, LinkError> {
        todo!()
    }
}

/// Two ends of an in-process link (the monolithic server). No handshake: same process.
pub fn mem_pair() -> (Link, Link) {
    todo!()
}

/// Read a key file (its bytes, trailing whitespace trimmed; must not be empty).
pub fn read_key_file(_path: &Path) -> Result<Vec<u8>, LinkError> {
    todo!()
}
