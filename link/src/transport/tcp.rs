//! TCP through tokio: a reader task and a batching writer task per link.
//!
//! The writer drains the outgoing queue in batches: small messages and frame headers are
//! encoded into one buffer, large frame payloads are referenced as they are (`Bytes`), and
//! the whole batch goes out with vectored writes — no payload copy, few syscalls.
//! The reader decodes in place ([`codec::decode_bytes`]): frame payloads are slices of the
//! receive buffer.

use super::{AbortOnDrop, DriverEnds, LinkShared, Started, Transport};
use crate::codec::{self, DecodeError};
use crate::{ErrorCode, LinkError, Message};
use bytes::{Bytes, BytesMut};
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

/// Frame payloads at least this large are written from their own buffer rather than copied
/// into the batch buffer.
pub const ZERO_COPY_THRESHOLD: usize = 16 * 1024;
/// A batch stops growing past this many bytes, so a burst cannot delay the first bytes.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// IoSlices per vectored write (Linux IOV_MAX is 1024).
const MAX_IOV: usize = 64;
/// Receive buffer growth step.
const READ_CHUNK: usize = 256 * 1024;
/// How long the writer may take to flush what is queued once the link is closing.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// A connected tokio TCP socket, ready to drive a link.
pub struct TcpTransport {
    stream: TcpStream,
}

impl TcpTransport {
    pub fn new(stream: TcpStream) -> TcpTransport {
        TcpTransport { stream }
    }
}

impl Transport for TcpTransport {
    fn start(self, ends: DriverEnds) -> Result<Started, LinkError> {
        let _ = self.stream.set_nodelay(true);
        let (rd, wr) = self.stream.into_split();
        let close = Arc::new(Notify::new());
        let DriverEnds {
            outgoing,
            outgoing_weak,
            incoming,
            shared,
        } = ends;
        tokio::spawn(writer(wr, outgoing, shared.clone(), close.clone()));
        let reader = tokio::spawn(reader(rd, incoming, outgoing_weak, shared, close));
        Ok(Started {
            guard: Some(Box::new(AbortOnDrop(reader.abort_handle()))),
            waker: None,
        })
    }
}

async fn reader(
    mut rd: OwnedReadHalf,
    incoming: mpsc::Sender<Message>,
    reply: mpsc::WeakSender<Message>,
    shared: Arc<LinkShared>,
    close: Arc<Notify>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let result: Result<(), LinkError> = async {
        loop {
            while let Some(m) = codec::decode_bytes(&mut buf)? {
                incoming.send(m).await.map_err(|_| LinkError::Closed)?;
            }
            // Reserve the whole of a large message at once; otherwise read in chunks.
            let want = match codec::peek_len_max(&buf, shared.max_message_size())? {
                Some(total) if total > buf.len() => {
                    (total - buf.len()).max(READ_CHUNK.min(64 * 1024))
                }
                _ => READ_CHUNK,
            };
            if buf.capacity() - buf.len() < want {
                buf.reserve(want);
            }
            if rd.read_buf(&mut buf).await? == 0 {
                if buf.is_empty() {
                    return Ok(());
                }
                let kind = buf.get(6).copied().unwrap_or(0);
                return Err(DecodeError::Truncated { kind }.into());
            }
        }
    }
    .await;
    match result {
        Ok(()) | Err(LinkError::Closed) => {}
        Err(e) => {
            if let LinkError::Decode(d) = &e {
                tracing::warn!(error = %d, "malformed bytes from link peer; closing the link");
                if let Some(tx) = reply.upgrade() {
                    let _ = tx.try_send(Message::Error {
                        channel: 0,
                        code: ErrorCode::Malformed,
                        message: format!("malformed message: {d}"),
                    });
                }
                close.notify_one();
            } else {
                tracing::debug!(error = %e, "link read failed");
            }
            shared.set_error(e);
        }
    }
    // Dropping `incoming` ends the receiver's stream after what was already delivered.
}

/// One piece of a batch: bytes of the batch buffer, or a payload written from its own buffer.
struct Batch {
    segs: Vec<Bytes>,
    bytes: usize,
}

fn add_message(msg: &Message, scratch: &mut BytesMut, batch: &mut Batch) {
    let res = match msg {
        Message::Frame(f) if f.data.len() >= ZERO_COPY_THRESHOLD => {
            codec::encode_frame_header(f, scratch).map(|()| {
                batch.segs.push(scratch.split().freeze());
                batch.segs.push(f.data.clone());
            })
        }
        m => codec::encode(m, scratch),
    };
    match res {
        Ok(()) => batch.bytes += codec::encoded_len(msg),
        // `LinkSender::send` checks messages, so this is a bug elsewhere: drop the message
        // rather than the link.
        Err(e) => tracing::error!(error = %e, "unencodable message dropped"),
    }
}

async fn writer(
    mut wr: OwnedWriteHalf,
    mut outgoing: mpsc::Receiver<Message>,
    shared: Arc<LinkShared>,
    close: Arc<Notify>,
) {
    let mut scratch = BytesMut::with_capacity(64 * 1024);
    let mut closing = false;
    loop {
        let first = tokio::select! {
            biased;
            m = outgoing.recv() => m,
            _ = close.notified(), if !closing => { closing = true; outgoing.close(); continue; }
        };
        let Some(first) = first else { break };
        let mut batch = Batch {
            segs: Vec::new(),
            bytes: 0,
        };
        add_message(&first, &mut scratch, &mut batch);
        while batch.bytes < MAX_BATCH_BYTES && batch.segs.len() < MAX_IOV {
            match outgoing.try_recv() {
                Ok(m) => add_message(&m, &mut scratch, &mut batch),
                Err(_) => break,
            }
        }
        if !scratch.is_empty() {
            batch.segs.push(scratch.split().freeze());
        }
        let write = write_all_vectored(&mut wr, &mut batch.segs);
        let res = if closing {
            tokio::time::timeout(CLOSE_FLUSH, write)
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "flush on close timed out",
                    ))
                })
        } else {
            write.await
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "link write failed");
            shared.set_error(LinkError::Io(e));
            outgoing.close();
            break;
        }
    }
    let _ = tokio::time::timeout(CLOSE_FLUSH, wr.shutdown()).await;
}

/// Writes every segment, in order, with as few syscalls as the socket allows.
async fn write_all_vectored(wr: &mut OwnedWriteHalf, segs: &mut [Bytes]) -> std::io::Result<()> {
    let mut first = 0;
    while first < segs.len() {
        if segs[first].is_empty() {
            first += 1;
            continue;
        }
        let n = {
            let slices: Vec<IoSlice<'_>> = segs[first..]
                .iter()
                .take(MAX_IOV)
                .map(|s| IoSlice::new(s))
                .collect();
            wr.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 && first < segs.len() {
            let len = segs[first].len();
            if left >= len {
                left -= len;
                first += 1;
            } else {
                let _ = segs[first].split_to(left);
                left = 0;
            }
        }
    }
    Ok(())
}
