//! The RTSP 1.0 front-end (RFC 2326): accepts connections, frames requests and
//! interleaved data, answers through [`methods`].
//!
//! Messages are parsed by `rtsp-types`; this module only cuts the byte stream into
//! messages, enforces a size limit and keeps one misbehaving connection from touching
//! anyone else's sessions.

pub mod auth;
pub mod error;
pub mod limits;
pub mod methods;
pub mod target;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use rtsp_types::{headers, Message, Request, Response, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use error::RtspError;

use crate::admission::Admission;
use crate::fanout::feedback::unprotect_srtcp;
use crate::fanout::{FanOut, SharedSrtp};
use crate::live::LiveHub;
use crate::metrics::Metrics;
use crate::session::{Command, SessionHandle, Sessions};
use crate::upstream::Upstream;

/// Largest request head plus body we buffer before answering 400: a header this big is
/// either a mistake or an attack.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Shared by every connection.
pub struct RtspContext {
    pub upstream: Upstream,
    pub sessions: Arc<Sessions>,
    /// Where every session's packets are sent from.
    pub fan: Arc<FanOut>,
    /// Subscribed live channels.
    pub live: Arc<LiveHub>,
    /// Counters that are not the fan-out's own (sessions started, refusals).
    pub metrics: Metrics,
    /// Budgets checked on a session's first SETUP.
    pub admission: Admission,
    /// Digest authentication, when a users file was given.
    pub auth: Option<auth::DigestAuth>,
    /// Open connections per client address.
    pub connections: limits::ConnectionLimit,
    next_connection: AtomicU64,
}

impl RtspContext {
    pub fn new(
        upstream: Upstream,
        sessions: Arc<Sessions>,
        fan: Arc<FanOut>,
        live: Arc<LiveHub>,
        metrics: Metrics,
        admission: Admission,
        auth: Option<auth::DigestAuth>,
    ) -> Arc<RtspContext> {
        Arc::new(RtspContext {
            upstream,
            sessions,
            fan,
            live,
            metrics,
            connections: limits::ConnectionLimit::new(admission.config().max_connections_per_ip),
            admission,
            auth,
            next_connection: AtomicU64::new(1),
        })
    }
}

/// Accept RTSP connections forever.
pub async fn serve(listener: TcpListener, ctx: Arc<RtspContext>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: log and keep serving the connections we have.
                warn!("RTSP accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = ctx.connections.admit(peer.ip()) else {
            ctx.metrics.rtsp_limit_refused("connections_per_ip");
            warn!(%peer, open = ctx.connections.open_from(peer.ip()), "RTSP connection refused: too many from this address");
            tokio::spawn(refuse(
                stream,
                503,
                "too many connections from your address",
            ));
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, peer, ctx).await {
                debug!(%peer, "RTSP connection ended: {e}");
            }
            drop(slot);
        });
    }
}

/// Answer a connection that will not be served with `status` and close it.
async fn refuse(mut stream: TcpStream, status: u16, reason: &str) {
    let reply = error_response(None, &RtspError::new(status, reason));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.write_all(&reply)).await;
    let _ = stream.shutdown().await;
}

/// One client connection, as the method handlers see it.
pub struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Everything written to the client goes through here (responses and interleaved data).
    pub writer: mpsc::Sender<Bytes>,
    pub ctx: Arc<RtspContext>,
    /// Interleaved RTCP channel -> where the RTCP the client sends back on it goes.
    pub interleaved: Mutex<HashMap<u8, InterleavedRoute>>,
    /// SRTP keys the last `?srtp=1` DESCRIBE announced, by track: SETUP protects with them.
    pub srtp_keys: Mutex<HashMap<u8, crate::srtp::SrtpKeys>>,
    /// Notified when a session of this connection ended for good (its live channel
    /// ended): the connection closes, so no client is left waiting on it.
    pub closing: Arc<tokio::sync::Notify>,
}

/// The session track an interleaved RTCP channel belongs to.
#[derive(Clone)]
pub struct InterleavedRoute {
    pub session: Arc<SessionHandle>,
    pub track: u8,
    /// RTP/SAVP/TCP: the client's RTCP is SRTCP, unprotected with its keys.
    pub srtp: Option<SharedSrtp>,
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<RtspContext>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let (mut rd, mut wr) = stream.into_split();
    let (writer, mut outgoing) = mpsc::channel::<Bytes>(4096);
    let write_task = tokio::spawn(async move {
        while let Some(b) = outgoing.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let conn = Connection {
        id: ctx.next_connection.fetch_add(1, Ordering::Relaxed),
        peer,
        local,
        writer,
        ctx: ctx.clone(),
        interleaved: Mutex::new(HashMap::new()),
        srtp_keys: Mutex::new(HashMap::new()),
        closing: Arc::new(tokio::sync::Notify::new()),
    };
    debug!(%peer, connection = conn.id, "RTSP connection");
    let result = read_loop(&conn, &mut rd).await;
    for id in ctx.sessions.of_connection(conn.id) {
        if ctx.sessions.remove(&id).is_some() {
            info!(session = %id, %peer, "session closed with its RTSP connection");
        }
    }
    drop(conn);
    let _ = write_task.await;
    result
}

async fn read_loop(
    conn: &Connection,
    rd: &mut tokio::net::tcp::OwnedReadHalf,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(8192);
    let mut begun: Option<tokio::time::Instant> = None;
    loop {
        // Answer every complete message in the buffer.
        loop {
            match next_message(&mut buf) {
                Framed::Request(req) => {
                    let response = methods::respond(conn, &req).await;
                    if conn.writer.send(response.bytes).await.is_err() {
                        return Ok(());
                    }
                    // The reply is queued ahead of any media on this connection.
                    if let Some(session) = response.start {
                        let _ = session.commands.send(Command::Go).await;
                    }
                }
                Framed::Interleaved { channel, data } => {
                    route_interleaved(conn, channel, data).await
                }
                Framed::Ignored => {}
                Framed::NeedMore => break,
                Framed::Invalid { cseq, reason } => {
                    warn!(peer = %conn.peer, "bad RTSP request: {reason}");
                    let reply = error_response(cseq.as_deref(), &RtspError::bad_request(reason));
                    let _ = conn.writer.send(reply).await;
                    // The stream cannot be resynchronised after garbage: close.
                    return Ok(());
                }
            }
        }
        if buf.len() > MAX_REQUEST_BYTES {
            let cseq = sniff_cseq(&buf);
            warn!(peer = %conn.peer, bytes = buf.len(), "RTSP request too large");
            conn.ctx.metrics.rtsp_limit_refused("request_too_large");
            let reply = error_response(
                cseq.as_deref(),
                &RtspError::bad_request(format!("request larger than {MAX_REQUEST_BYTES} bytes")),
            );
            let _ = conn.writer.send(reply).await;
            return Ok(());
        }
        // A request begun must arrive whole within the limit (slowloris).
        if buf.is_empty() {
            begun = None;
        } else if begun.is_none() {
            begun = Some(tokio::time::Instant::now());
        }
        let deadline = begun.map(|t| t + limits::REQUEST_TIMEOUT);
        tokio::select! {
            n = rd.read_buf(&mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                conn.ctx.metrics.rtsp_limit_refused("request_timeout");
                warn!(peer = %conn.peer, bytes = buf.len(), "RTSP request not complete within {:?}: closing", limits::REQUEST_TIMEOUT);
                let reply = error_response(sniff_cseq(&buf).as_deref(), &RtspError::new(408, "request not complete in time"));
                let _ = conn.writer.send(reply).await;
                return Ok(());
            }
            _ = conn.closing.notified() => {
                info!(peer = %conn.peer, connection = conn.id, "closing the RTSP connection: its stream ended");
                return Ok(());
            }
        }
    }
}

/// What [`next_message`] cut off the front of a connection's buffer.
pub enum Framed {
    Request(Request<Vec<u8>>),
    Interleaved {
        channel: u8,
        data: Bytes,
    },
    Ignored,
    NeedMore,
    Invalid {
        cseq: Option<String>,
        reason: String,
    },
}

/// Cut the next message off the front of `buf` (a request or an interleaved frame).
/// Public for the fuzz target; nothing in `buf` makes it panic.
pub fn next_message(buf: &mut BytesMut) -> Framed {
    if buf.is_empty() {
        return Framed::NeedMore;
    }
    if buf[0] == b'$' {
        if buf.len() < 4 {
            return Framed::NeedMore;
        }
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if buf.len() < 4 + len {
            return Framed::NeedMore;
        }
        let channel = buf[1];
        let mut frame = buf.split_to(4 + len).freeze();
        frame.advance(4);
        return Framed::Interleaved {
            channel,
            data: frame,
        };
    }
    // Stray line breaks between messages are allowed (RFC 2326 section 4).
    if buf[0] == b'\r' || buf[0] == b'\n' {
        buf.advance(1);
        return Framed::Ignored;
    }
    match Message::<Vec<u8>>::parse(&buf[..]) {
        Ok((_, consumed)) if consumed > MAX_REQUEST_BYTES => Framed::Invalid {
            cseq: sniff_cseq(buf),
            reason: format!("request larger than {MAX_REQUEST_BYTES} bytes"),
        },
        Ok((msg, consumed)) => {
            buf.advance(consumed);
            match msg {
                Message::Request(req) => Framed::Request(req),
                _ => Framed::Ignored,
            }
        }
        Err(rtsp_types::ParseError::Incomplete(_)) => Framed::NeedMore,
        Err(rtsp_types::ParseError::Error) => Framed::Invalid {
            cseq: sniff_cseq(buf),
            reason: "malformed RTSP message".into(),
        },
    }
}

/// Best-effort CSeq of a request we could not parse, so the error reply still matches.
fn sniff_cseq(buf: &[u8]) -> Option<String> {
    let head = &buf[..buf.len().min(MAX_REQUEST_BYTES)];
    let text = String::from_utf8_lossy(head);
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("cseq"))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() < 12 && v.bytes().all(|b| b.is_ascii_digit()))
}

async fn route_interleaved(conn: &Connection, channel: u8, data: Bytes) {
    let route = conn
        .interleaved
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&channel)
        .cloned();
    let Some(route) = route else {
        debug!(peer = %conn.peer, channel, "interleaved data on an unknown channel dropped");
        return;
    };
    let packet = match &route.srtp {
        None => data,
        Some(srtp) => {
            let from = format_args!("{} (interleaved channel {channel})", conn.peer);
            match unprotect_srtcp(srtp, &data, &conn.ctx.fan.stats, &from) {
                Some(p) => p,
                None => return,
            }
        }
    };
    let _ = route
        .session
        .commands
        .send(Command::Rtcp {
            track: route.track,
            packet,
        })
        .await;
}

/// A complete RTSP error reply.
pub fn error_response(cseq: Option<&str>, err: &RtspError) -> Bytes {
    let mut builder = Response::builder(Version::V1_0, StatusCode::from(err.status))
        .header(headers::SERVER, SERVER_NAME);
    if let Some(cseq) = cseq {
        builder = builder.header(headers::CSEQ, cseq);
    }
    if let Some(challenge) = &err.challenge {
        builder = builder.header(headers::WWW_AUTHENTICATE, challenge.as_str());
    }
    let mut response = builder.build(Vec::new());
    // rtsp-types knows the standard reason phrases; keep ours for the log only when it
    // has none, so clients see the RFC's wording.
    if response.reason_phrase().is_empty() {
        response.set_reason_phrase(err.reason.clone());
    }
    serialize(&response)
}

pub(crate) fn serialize(response: &Response<Vec<u8>>) -> Bytes {
    let mut out = Vec::with_capacity(256 + response.body().len());
    // Writing into a Vec cannot fail.
    let _ = response.write(&mut out);
    Bytes::from(out)
}

/// The `Server` header value.
pub const SERVER_NAME: &str = concat!("Divisor/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_requests_interleaved_and_garbage() {
        let mut buf = BytesMut::from(
            &b"OPTIONS rtsp://h/vod/a RTSP/1.0\r\nCSeq: 1\r\n\r\n$\x01\x00\x02ab"[..],
        );
        assert!(matches!(next_message(&mut buf), Framed::Request(_)));
        match next_message(&mut buf) {
            Framed::Interleaved { channel, data } => {
                assert_eq!(channel, 1);
                assert_eq!(&data[..], b"ab");
            }
            _ => panic!("expected interleaved data"),
        }
        assert!(matches!(next_message(&mut buf), Framed::NeedMore));
        let mut partial = BytesMut::from(&b"DESCRIBE rtsp://h/vod/a RTSP/1.0\r\nCSeq: 2\r\n"[..]);
        assert!(matches!(next_message(&mut partial), Framed::NeedMore));
        let mut big = BytesMut::from(&b"OPTIONS rtsp://h/vod/a RTSP/1.0\r\nCSeq: 3\r\nX-Big: "[..]);
        big.extend_from_slice(&vec![b'a'; MAX_REQUEST_BYTES]);
        big.extend_from_slice(b"\r\n\r\n");
        match next_message(&mut big) {
            Framed::Invalid { cseq, .. } => assert_eq!(cseq.as_deref(), Some("3")),
            _ => panic!("expected an oversized request to be refused"),
        }
        let mut bad = BytesMut::from(
            &b"DESCRIBE rtsp://h/vod/a RTSP/1.0\r\nCSeq: 7\r\nthis line has no colon\r\n\r\n"[..],
        );
        match next_message(&mut bad) {
            Framed::Invalid { cseq, .. } => assert_eq!(cseq.as_deref(), Some("7")),
            _ => panic!("expected invalid"),
        }
    }
}
