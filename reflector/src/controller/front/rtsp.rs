//! The RTSP front end: answers `OPTIONS` itself and redirects every other request on
//! `rtsp://…/live/CH` to a public reflector with `302 Moved Temporarily`.
//!
//! Players (ffmpeg, VLC, GStreamer) follow a 302 on `DESCRIBE` and start over on the
//! new URL, so the controller only ever sees the first request or two of a session.
//! Requests are parsed by hand rather than with `rtsp-types`, because that crate's
//! serializer names 302 "Found" and we want the classic RTSP/1.0 wording, and because
//! the only things needed are the request line, `CSeq` and `Content-Length`.
//!
//! The listener is exposed to the Internet, so every read is bounded: a request's
//! headers must arrive within [`RtspFrontOptions::header_timeout`] (slowloris) and fit
//! in [`RtspFrontOptions::max_header_bytes`]; bodies are read and dropped up to
//! [`MAX_BODY`].

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, info, warn};

use super::{channel_path, region_of, Directory, NoTarget};

/// The largest request body read (and dropped); a longer one gets 413 and a close.
pub const MAX_BODY: usize = 8 * 1024;

/// Bounds on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct RtspFrontOptions {
    /// Time for one request (headers and body) to arrive, counted from when the front
    /// end starts waiting for it; an idle or slow connection is closed after it.
    pub header_timeout: Duration,
    /// The longest request line plus headers; longer gets 400 and a close.
    pub max_header_bytes: usize,
}

impl Default for RtspFrontOptions {
    fn default() -> Self {
        RtspFrontOptions {
            header_timeout: Duration::from_secs(5),
            max_header_bytes: 8 * 1024,
        }
    }
}

/// Serves RTSP clients on `listener` with the default bounds; see [`serve_rtsp_with`].
pub async fn serve_rtsp(listener: TcpListener, dir: Arc<dyn Directory>) -> io::Result<()> {
    serve_rtsp_with(listener, dir, RtspFrontOptions::default()).await
}

/// Serves RTSP clients on `listener`, one task per connection, until the future is
/// dropped. Accept errors (out of file descriptors, a connection reset before it was
/// taken) are logged and retried after a pause rather than ending the front end.
pub async fn serve_rtsp_with(
    listener: TcpListener,
    dir: Arc<dyn Directory>,
    opts: RtspFrontOptions,
) -> io::Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let dir = dir.clone();
                tokio::spawn(async move {
                    let client = peer.ip().to_canonical();
                    if let Err(e) = connection(stream, client, &*dir, opts).await {
                        debug!(%client, error = %e, "rtsp connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "rtsp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One client connection: requests in a loop until a redirect, an error or the client
/// goes away.
async fn connection(
    mut stream: TcpStream,
    client: IpAddr,
    dir: &dyn Directory,
    opts: RtspFrontOptions,
) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let deadline = Instant::now() + opts.header_timeout;
        let head_len =
            match read_head(&mut stream, &mut buf, deadline, opts.max_header_bytes).await? {
                Head::Complete(n) => n,
                Head::Closed => return Ok(()),
                Head::TooLarge => {
                    let reply = response(BAD_REQUEST, None, &[]);
                    return close_with(stream, &reply).await;
                }
            };
        let Some(req) = parse_request(&buf[..head_len]) else {
            return close_with(stream, &response(BAD_REQUEST, None, &[])).await;
        };
        if req.content_length > MAX_BODY {
            let reply = response(TOO_LARGE, req.cseq.as_deref(), &[]);
            return close_with(stream, &reply).await;
        }
        // The body (an ANNOUNCE's SDP, GET_PARAMETER names) means nothing here; skip it
        // so the next request starts at the right byte.
        let buffered = (buf.len() - head_len).min(req.content_length);
        buf.drain(..head_len + buffered);
        let missing = req.content_length - buffered;
        if missing > 0 && !skip(&mut stream, missing, deadline).await? {
            return Ok(());
        }

        let (reply, keep_open) = answer(&req, client, dir);
        if !keep_open {
            return close_with(stream, &reply).await;
        }
        stream.write_all(reply.as_bytes()).await?;
    }
}

/// How reading a request's headers ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The first `n` bytes of the buffer are the request line and headers, including
    /// the empty line that ends them.
    Complete(usize),
    /// End of stream or the deadline passed: close without a word.
    Closed,
    /// Over the header limit.
    TooLarge,
}

/// Reads into `buf` until it holds a complete header block.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    max: usize,
) -> io::Result<Head> {
    let mut scanned: usize = 0;
    loop {
        // Empty lines between requests are allowed (RFC 2326 §4, as in HTTP).
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buf.drain(..blank);
        scanned = scanned.saturating_sub(blank);
        if let Some(end) = head_end(buf, scanned) {
            return Ok(if end > max {
                Head::TooLarge
            } else {
                Head::Complete(end)
            });
        }
        if buf.len() >= max {
            return Ok(Head::TooLarge);
        }
        scanned = buf.len();
        let mut chunk = [0u8; 2048];
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_elapsed) => return Ok(Head::Closed),
            Ok(Ok(0)) => return Ok(Head::Closed),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// The end (exclusive) of the first empty line in `buf`, looking from about `from` on;
/// lines end in CRLF or, leniently, a bare LF.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from.saturating_sub(2)..buf.len()).find_map(|i| match &buf[i..] {
        [b'\n', b'\n', ..] => Some(i + 2),
        [b'\n', b'\r', b'\n', ..] => Some(i + 3),
        _ => None,
    })
}

/// Reads and drops `n` bytes; `false` if the stream ended or the deadline passed first.
async fn skip(stream: &mut TcpStream, mut n: usize, deadline: Instant) -> io::Result<bool> {
    let mut chunk = [0u8; 2048];
    while n > 0 {
        let want = n.min(chunk.len());
        match timeout_at(deadline, stream.read(&mut chunk[..want])).await {
            Err(_) | Ok(Ok(0)) => return Ok(false),
            Ok(Ok(got)) => n -= got,
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes the last reply and closes gracefully. The client may still be sending (a
/// huge header, garbage): closing a socket with unread input makes the kernel send a
/// reset, which can destroy the reply before the client reads it, so input is drained
/// briefly after our side is shut.
async fn close_with(mut stream: TcpStream, reply: &str) -> io::Result<()> {
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 2048];
    let drain = async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = timeout(Duration::from_millis(500), drain).await;
    Ok(())
}

/// What the front end needs of a request.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    uri: String,
    cseq: Option<String>,
    content_length: usize,
}

/// Parses a header block (request line, headers, empty line); `None` if malformed.
/// Strict where sloppiness could be abused (control bytes, header folding, a broken
/// `Content-Length`), lenient where players differ (bare LF line ends, header case).
fn parse_request(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));

    let mut first = lines.next()?.split(' ');
    let (method, uri, version) = (first.next()?, first.next()?, first.next()?);
    let version_ok = version
        .strip_prefix("RTSP/")
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| is_digits(major) && is_digits(minor));
    let uri_ok = !uri.is_empty() && uri.bytes().all(|b| b.is_ascii_graphic());
    if first.next().is_some() || !is_token(method) || !uri_ok || !version_ok {
        return None;
    }

    let mut req = Request {
        method: method.to_string(),
        uri: uri.to_string(),
        cseq: None,
        content_length: 0,
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim_matches([' ', '\t']);
        if !is_token(name) || value.chars().any(|c| c.is_control() && c != '\t') {
            return None;
        }
        if name.eq_ignore_ascii_case("CSeq") {
            req.cseq = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("Content-Length") {
            req.content_length = value.parse().ok()?;
        }
    }
    Some(req)
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// An RFC 7230 token (method and header names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Path and query of a request URI: absolute (`rtsp://host:port/path?q`), a bare path,
/// or `*`. `None` for another scheme or something that is no URI.
fn split_uri(uri: &str) -> Option<(&str, Option<&str>)> {
    if uri == "*" {
        return Some((uri, None));
    }
    let path = match uri.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("rtsp") => {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        Some(_) => return None,
        None if uri.starts_with('/') => uri,
        None => return None,
    };
    Some(match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    })
}

type Status = (u16, &'static str);
const OK: Status = (200, "OK");
const MOVED: Status = (302, "Moved Temporarily");
const BAD_REQUEST: Status = (400, "Bad Request");
const NOT_FOUND: Status = (404, "Not Found");
const TOO_LARGE: Status = (413, "Request Entity Too Large");
const UNAVAILABLE: Status = (503, "Service Unavailable");

const PUBLIC: &str = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER";

/// The reply to a well-formed request, and whether the connection stays open for more
/// (only after `OPTIONS`: after a redirect or an error the client has nothing left to
/// ask here).
fn answer(req: &Request, client: IpAddr, dir: &dyn Directory) -> (String, bool) {
    let cseq = req.cseq.as_deref();
    if req.method == "OPTIONS" {
        return (response(OK, cseq, &[("Public", PUBLIC)]), true);
    }
    let Some((path, query)) = split_uri(&req.uri) else {
        return (response(BAD_REQUEST, cseq, &[]), false);
    };
    let Some(ch) = channel_path(path, "/live/") else {
        return (response(NOT_FOUND, cseq, &[]), false);
    };
    let reply = match dir.redirect(&ch.channel, client, region_of(query)) {
        Ok(target) => {
            let mut location = format!("rtsp://{}/live/{}", target.rtsp, ch.tail);
            if let Some(q) = query {
                location.push('?');
                location.push_str(q);
            }
            info!(channel = %ch.channel, %client, target = %target.rtsp, node = %target.node, "rtsp redirect");
            response(MOVED, cseq, &[("Location", &location)])
        }
        Err(e) => {
            debug!(channel = %ch.channel, %client, reason = %e, "rtsp redirect refused");
            match e {
                NoTarget::UnknownChannel(_) => response(NOT_FOUND, cseq, &[]),
                NoTarget::NoneUp | NoTarget::AllFull => {
                    response(UNAVAILABLE, cseq, &[("Retry-After", "5")])
                }
            }
        }
    };
    (reply, false)
}

/// A complete RTSP/1.0 response without a body.
fn response((code, reason): Status, cseq: Option<&str>, headers: &[(&str, &str)]) -> String {
    let mut out = format!("RTSP/1.0 {code} {reason}\r\n");
    if let Some(cseq) = cseq {
        out.push_str(&format!("CSeq: {cseq}\r\n"));
    }
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::testing::FakeDirectory;
    use super::*;

    async fn start(opts: RtspFrontOptions) -> (SocketAddr, Arc<FakeDirectory>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = Arc::new(FakeDirectory::default());
        tokio::spawn(serve_rtsp_with(listener, dir.clone(), opts));
        (addr, dir)
    }

    /// Reads one response (headers only: every reply here has an empty body).
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = timeout(Duration::from_secs(3), stream.read(&mut byte))
                .await
                .expect("response in time")
                .unwrap();
            assert_eq!(
                n,
                1,
                "closed mid-response after {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.push(byte[0]);
        }
        String::from_utf8(buf).unwrap()
    }

    /// Waits for the server to close the connection.
    async fn assert_closed(stream: &mut TcpStream) {
        let mut rest = Vec::new();
        timeout(Duration::from_secs(3), stream.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .unwrap();
        assert!(
            rest.is_empty(),
            "unexpected {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    async fn one_shot(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let reply = read_response(&mut s).await;
        assert_closed(&mut s).await;
        reply
    }

    #[tokio::test]
    async fn options_then_describe_on_one_connection() {
        let (addr, dir) = start(RtspFrontOptions::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"OPTIONS rtsp://ctl:554/live/ch1 RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: t\r\n\r\n",
        )
        .await
        .unwrap();
        let ok = read_response(&mut s).await;
        assert_eq!(
            ok,
            "RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER\r\nContent-Length: 0\r\n\r\n"
        );
        s.write_all(
            b"DESCRIBE rtsp://ctl:554/live/ch1/trackID=1?region=eu&x=1 RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n",
        )
        .await
        .unwrap();
        let moved = read_response(&mut s).await;
        assert_eq!(
            moved,
            "RTSP/1.0 302 Moved Temporarily\r\nCSeq: 2\r\nLocation: rtsp://10.0.0.5:8554/live/ch1/trackID=1?region=eu&x=1\r\nContent-Length: 0\r\n\r\n"
        );
        assert_closed(&mut s).await;
        let last = dir.last.lock().unwrap().clone().unwrap();
        assert_eq!(last.0, "ch1");
        assert!(last.1.is_loopback());
        assert_eq!(last.2.as_deref(), Some("eu"));
    }

    #[tokio::test]
    async fn refusals_map_to_status_codes() {
        let (addr, _) = start(RtspFrontOptions::default()).await;
        let unknown = one_shot(
            addr,
            "DESCRIBE rtsp://h/live/nope RTSP/1.0\r\nCSeq: 3\r\n\r\n",
        )
        .await;
        assert!(
            unknown.starts_with("RTSP/1.0 404 Not Found\r\nCSeq: 3\r\n"),
            "{unknown}"
        );
        let elsewhere = one_shot(
            addr,
            "DESCRIBE rtsp://h/vod/ch1 RTSP/1.0\r\nCSeq: 4\r\n\r\n",
        )
        .await;
        assert!(
            elsewhere.starts_with("RTSP/1.0 404 Not Found\r\n"),
            "{elsewhere}"
        );
        for ch in ["down", "full"] {
            let req = format!("PLAY rtsp://h/live/{ch} RTSP/1.0\r\nCSeq: 5\r\n\r\n");
            let busy = one_shot(addr, &req).await;
            assert!(
                busy.starts_with("RTSP/1.0 503 Service Unavailable\r\nCSeq: 5\r\n"),
                "{busy}"
            );
            assert!(busy.contains("\r\nRetry-After: 5\r\n"), "{busy}");
        }
    }

    #[tokio::test]
    async fn bodies_are_skipped_and_pipelining_works() {
        let (addr, _) = start(RtspFrontOptions::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"OPTIONS * RTSP/1.0\r\nCSeq: 7\r\nContent-Length: 5\r\n\r\nhelloANNOUNCE /live/ch1 RTSP/1.0\r\ncseq: 8\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(read_response(&mut s)
            .await
            .starts_with("RTSP/1.0 200 OK\r\nCSeq: 7\r\n"));
        let moved = read_response(&mut s).await;
        assert!(
            moved.contains("CSeq: 8\r\nLocation: rtsp://10.0.0.5:8554/live/ch1\r\n"),
            "{moved}"
        );
        assert_closed(&mut s).await;

        let huge = format!(
            "ANNOUNCE /live/ch1 RTSP/1.0\r\nCSeq: 9\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(one_shot(addr, &huge).await.starts_with("RTSP/1.0 413 "));
    }

    #[tokio::test]
    async fn garbage_and_oversized_headers_get_400() {
        let (addr, _) = start(RtspFrontOptions::default()).await;
        let garbage = one_shot(addr, "\u{1}\u{2}garbage!!\r\n\r\n").await;
        assert_eq!(
            garbage,
            "RTSP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
        );
        for bad in [
            "DESCRIBE rtsp://h/live/ch1 HTTP/1.1\r\n\r\n",
            "DESCRIBE  rtsp://h/live/ch1 RTSP/1.0\r\n\r\n",
            "DESCRIBE rtsp://h/live/ch1 RTSP/1.0\r\nCSeq 1\r\n\r\n",
            "DESCRIBE rtsp://h/live/ch1 RTSP/1.0\r\nContent-Length: -1\r\n\r\n",
            "DESCRIBE http://h/live/ch1 RTSP/1.0\r\n\r\n",
        ] {
            assert!(
                one_shot(addr, bad).await.starts_with("RTSP/1.0 400 "),
                "{bad:?}"
            );
        }
        let big = format!(
            "DESCRIBE rtsp://h/live/ch1 RTSP/1.0\r\nCSeq: 1\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert!(one_shot(addr, &big)
            .await
            .starts_with("RTSP/1.0 400 Bad Request\r\n"));
        // Without an end of headers at all.
        let endless = "x".repeat(20_000);
        assert!(one_shot(addr, &endless)
            .await
            .starts_with("RTSP/1.0 400 Bad Request\r\n"));
    }

    #[tokio::test]
    async fn slow_client_is_closed() {
        let opts = RtspFrontOptions {
            header_timeout: Duration::from_millis(300),
            ..RtspFrontOptions::default()
        };
        let (addr, _) = start(opts).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"DESCRIBE rtsp://h/live/ch1 RTSP/1.0\r\nCSe")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        assert_closed(&mut s).await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn parser_never_panics_on_prefixes_and_bytes() {
        let sample =
            b"DESCRIBE rtsp://h:1/live/ch1 RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 0\r\n\r\n";
        for i in 0..=sample.len() {
            let _ = parse_request(&sample[..i]);
            let _ = head_end(&sample[..i], i / 2);
        }
        for b in 0..=255u8 {
            let mut s = sample.to_vec();
            s[3] = b;
            s[20] = b;
            let _ = parse_request(&s);
        }
        assert_eq!(
            parse_request(sample),
            Some(Request {
                method: "DESCRIBE".into(),
                uri: "rtsp://h:1/live/ch1".into(),
                cseq: Some("1".into()),
                content_length: 0,
            })
        );
        assert_eq!(split_uri("rtsp://h"), Some(("/", None)));
        assert_eq!(split_uri("RTSP://h/live/a?b"), Some(("/live/a", Some("b"))));
        assert_eq!(split_uri("live/a"), None);
    }
}
