//! `divisor-link`: the dedicated link between the encoder unit and the protocol unit.
//!
//! - [`message`]: the messages (frames and control), plain values;
//! - [`codec`]: their versioned, length-delimited byte format (pure functions);
//! - [`handshake`]: pre-shared-key challenge-response;
//! - [`transport`]: byte movers behind one trait (TCP, io_uring, in-process);
//! - [`content`]: content encryption: the encrypted frame payload format, its ciphers
//!   (DES-CBC, AES-128-CTR) and content-key derivation;
//! - [`logging`]: the log set-up every Divisor binary shares.
//!
//! Credit-based flow control is a conversation over [`Message::Credits`]: the encoder
//! unit's channel workers count credits, the protocol unit's sessions return them.
//!
//! Users see a [`Link`]: a cloneable [`LinkSender`] and a [`LinkReceiver`] of [`Message`]s,
//! whatever transport carries them.

pub mod codec;
pub mod content;
pub mod handshake;
pub mod logging;
pub mod message;
pub mod transport;

pub use codec::{DecodeError, EncodeError};
pub use message::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};
use transport::{AbortOnDrop, DriverWaker, LinkShared};

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
            other => Err(format!(
                "unknown link transport {other:?}: use tcp or uring"
            )),
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
    /// The peer sent bytes that are not a valid message; the link was closed.
    #[error("malformed message from the link peer: {0}")]
    Decode(#[from] DecodeError),
    /// A message we were asked to send cannot be encoded (too large); nothing was sent.
    #[error("cannot send message: {0}")]
    Encode(#[from] EncodeError),
    /// The peer's handshake MAC did not verify with our key.
    #[error("link authentication failed: the peer's key differs from ours")]
    AuthFailed,
    /// The peer told us our handshake MAC did not verify with its key.
    #[error("peer rejected our link key: the two units are configured with different keys")]
    PeerRejectedKey,
    #[error("link protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error(
        "both ends of the link claim the role {0:?}: connect an encoder unit to a protocol unit"
    )]
    SameRole(Role),
    #[error("link handshake timed out after {0:?}: the peer is silent or not a divisor link")]
    HandshakeTimeout(Duration),
    /// The peer broke the handshake protocol (unexpected message, reflected nonce).
    #[error("link handshake protocol violation: {0}")]
    Handshake(String),
    /// The peer closed the link with an error message.
    #[error("peer closed the link with error {code:?}: {message}")]
    Peer { code: ErrorCode, message: String },
    #[error("link key is empty: configure a non-empty pre-shared key")]
    EmptyKey,
    #[error("link key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    /// The transport cannot run here (e.g. io_uring disabled by the kernel or a sandbox).
    #[error("link transport unavailable: {0}")]
    Unavailable(String),
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
pub struct LinkSender {
    tx: mpsc::Sender<Message>,
    /// Wakes a driver that sleeps outside tokio (io_uring) when something is queued.
    waker: Option<Arc<dyn DriverWaker>>,
    /// Shared by all clones; wakes the driver when the last sender goes, so it notices the
    /// queue closed. Declared after `tx` so the queue is closed first.
    _alive: Option<Arc<transport::SenderAlive>>,
}

impl LinkSender {
    /// Queue a message; waits while the transport's queue is full.
    ///
    /// A message too large to encode is refused here with [`LinkError::Encode`] and the
    /// link stays up; [`LinkError::Closed`] once the link has ended.
    pub async fn send(&self, msg: Message) -> Result<(), LinkError> {
        codec::check(&msg)?;
        self.tx.send(msg).await.map_err(|_| LinkError::Closed)?;
        if let Some(w) = &self.waker {
            w.sent();
        }
        Ok(())
    }

    /// Whether the link has ended (the driver stopped taking messages).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Receives messages from a link.
pub struct LinkReceiver {
    rx: mpsc::Receiver<Message>,
    shared: Arc<LinkShared>,
    waker: Option<Arc<dyn DriverWaker>>,
    /// Stops the driver's reading side when the receiver is dropped.
    _guard: Option<Box<dyn Send + Sync>>,
}

impl LinkReceiver {
    /// The next message; `Err(LinkError::Closed)` once the link has ended.
    ///
    /// If the link ended because of an error (malformed bytes, I/O error), that error is
    /// returned once, after the messages received before it; `Closed` after that.
    pub async fn recv(&mut self) -> Result<Message, LinkError> {
        match self.rx.recv().await {
            Some(m) => {
                if let Some(w) = &self.waker {
                    w.received();
                }
                Ok(m)
            }
            None => Err(self.shared.take_error().unwrap_or(LinkError::Closed)),
        }
    }
}

/// How long the peer has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Start the configured transport on an already connected socket and authenticate: what
/// [`connect`] and [`LinkListener`] do after connecting/accepting. Public for callers that
/// manage sockets themselves (and for tests). Times out after [`HANDSHAKE_TIMEOUT`].
pub async fn establish(
    cfg: &LinkConfig,
    stream: TcpStream,
    peer: String,
) -> Result<Link, LinkError> {
    if cfg.key.is_empty() {
        return Err(LinkError::EmptyKey);
    }
    stream.set_nodelay(true)?;
    let mut link = match cfg.transport {
        TransportKind::Tcp => {
            transport::start_link(transport::tcp::TcpTransport::new(stream), peer)?
        }
        TransportKind::Uring => {
            let std = stream.into_std()?;
            transport::start_link(transport::uring::UringTransport::new(std)?, peer)?
        }
    };
    // The handshake runs over the link itself, whatever the transport: one code path.
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake::run(&link.sender, &mut link.receiver, &cfg.key, cfg.role),
    )
    .await
    {
        Ok(Ok(())) => {
            link.receiver.shared.mark_authenticated();
            Ok(link)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LinkError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
    }
}

/// Dial `addr` and authenticate.
pub async fn connect(cfg: &LinkConfig, addr: SocketAddr) -> Result<Link, LinkError> {
    if cfg.key.is_empty() {
        return Err(LinkError::EmptyKey);
    }
    let stream = TcpStream::connect(addr).await?;
    establish(cfg, stream, addr.to_string()).await
}

/// Dial until it works, backing off exponentially (100 ms up to 5 s), logging each failure.
/// Returns only a link that passed the handshake.
pub async fn connect_with_backoff(cfg: &LinkConfig, addr: SocketAddr) -> Link {
    let mut delay = Duration::from_millis(100);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        match connect(cfg, addr).await {
            Ok(link) => {
                if attempt > 1 {
                    tracing::info!(%addr, attempt, "link established");
                }
                return link;
            }
            Err(e) => {
                tracing::warn!(%addr, attempt, error = %e, retry_in = ?delay, "link connect failed");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Accepts links.
///
/// Handshakes run concurrently in a background task, so a silent or slow peer cannot hold
/// up others; ready links wait in a small queue for [`LinkListener::accept`].
pub struct LinkListener {
    local: SocketAddr,
    ready: Mutex<mpsc::Receiver<Result<Link, LinkError>>>,
    _task: AbortOnDrop,
}

impl LinkListener {
    pub async fn bind(cfg: &LinkConfig, addr: SocketAddr) -> Result<LinkListener, LinkError> {
        if cfg.key.is_empty() {
            return Err(LinkError::EmptyKey);
        }
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(16);
        let cfg = cfg.clone();
        let task = tokio::spawn(accept_loop(listener, cfg, tx));
        Ok(LinkListener {
            local,
            ready: Mutex::new(rx),
            _task: AbortOnDrop(task.abort_handle()),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Next authenticated link. A peer that fails the handshake is answered with an error
    /// message, logged and dropped; `accept` then goes on waiting for the next peer.
    pub async fn accept(&self) -> Result<Link, LinkError> {
        let mut rx = self.ready.lock().await;
        rx.recv().await.unwrap_or(Err(LinkError::Closed))
    }
}

async fn accept_loop(
    listener: TcpListener,
    cfg: LinkConfig,
    ready: mpsc::Sender<Result<Link, LinkError>>,
) {
    let cfg = Arc::new(cfg);
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Per-connection failures (ECONNABORTED, EMFILE) must not end the listener;
                // back off a little so EMFILE does not spin.
                tracing::warn!(error = %e, "link accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let cfg = cfg.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match establish(&cfg, stream, addr.to_string()).await {
                Ok(link) => {
                    tracing::info!(peer = %addr, "link peer authenticated");
                    let _ = ready.send(Ok(link)).await;
                }
                Err(e) => tracing::warn!(peer = %addr, error = %e, "link peer rejected"),
            }
        });
    }
}

/// Two ends of an in-process link (the monolithic server). No handshake: same process.
pub fn mem_pair() -> (Link, Link) {
    transport::mem::pair()
}

/// Read a key file (its bytes, trailing whitespace trimmed; must not be empty).
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, LinkError> {
    let mut bytes = std::fs::read(path).map_err(|e| LinkError::KeyFile {
        path: path.to_owned(),
        reason: format!("cannot read: {e}"),
    })?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(LinkError::KeyFile {
            path: path.to_owned(),
            reason: "is empty: put the pre-shared link key in it".to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_errors_name_the_path() {
        let dir = std::env::temp_dir().join(format!("divisor-link-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let missing = dir.join("missing.key");
        let e = read_key_file(&missing).expect_err("missing");
        assert!(e.to_string().contains("missing.key"), "{e}");
        let empty = dir.join("empty.key");
        std::fs::write(&empty, " \n").expect("write");
        let e = read_key_file(&empty).expect_err("empty");
        assert!(
            e.to_string().contains("empty.key") && e.to_string().contains("empty"),
            "{e}"
        );
        let good = dir.join("good.key");
        std::fs::write(&good, "s3cret\n").expect("write");
        assert_eq!(read_key_file(&good).expect("good"), b"s3cret");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn transport_kind_parses() {
        assert_eq!("tcp".parse::<TransportKind>(), Ok(TransportKind::Tcp));
        assert_eq!(
            "io_uring".parse::<TransportKind>(),
            Ok(TransportKind::Uring)
        );
        assert!("udp".parse::<TransportKind>().is_err());
    }

    #[tokio::test]
    async fn mem_pair_moves_messages_and_closes() {
        let (a, mut b) = mem_pair();
        a.sender
            .send(Message::Pause { channel: 1 })
            .await
            .expect("send");
        assert_eq!(
            b.receiver.recv().await.expect("recv"),
            Message::Pause { channel: 1 }
        );
        drop(a);
        assert!(matches!(b.receiver.recv().await, Err(LinkError::Closed)));
    }
}
