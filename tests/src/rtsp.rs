//! A minimal raw RTSP client for tests that must see the exact bytes: error statuses,
//! interleaved RTP sequence numbers and timestamps across PAUSE/PLAY.
//!
//! Deliberately hand-written and tolerant: the point is to observe what the server sends,
//! including malformed replies, not to be a good client.

use crate::netns::{Node, Topology};
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One RTSP reply.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status line as received.
    pub status_line: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The session id of a `Session:` header, without `;timeout=`.
    pub fn session(&self) -> Option<String> {
        self.header("Session")
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
    }
}

/// An interleaved (`$`) binary frame.
#[derive(Debug, Clone)]
pub struct Interleaved {
    pub channel: u8,
    pub data: Vec<u8>,
    pub at: Instant,
}

/// What arrives on the RTSP connection.
#[derive(Debug)]
pub enum Incoming {
    Response(Response),
    Interleaved(Interleaved),
}

/// An RTSP connection opened from inside a namespace.
pub struct RtspConn {
    stream: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
    /// Set from the first reply carrying `Session:`; sent on later requests.
    pub session: Option<String>,
    /// Interleaved frames that arrived while waiting for a reply.
    pub pending: VecDeque<Interleaved>,
    closed: bool,
}

impl RtspConn {
    /// Connects from `node` to `addr`.
    pub fn connect(topo: &Topology, node: Node, addr: SocketAddr) -> Result<RtspConn> {
        let stream = topo.connect(node, addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        Ok(RtspConn {
            stream,
            buf: Vec::new(),
            cseq: 0,
            session: None,
            pending: VecDeque::new(),
            closed: false,
        })
    }

    /// Another handle to the socket (e.g. to write from a second thread).
    pub fn try_clone_stream(&self) -> Result<TcpStream> {
        Ok(self.stream.try_clone()?)
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Sends a request with the next CSeq (and Session, once known) and returns the reply.
    pub fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        self.cseq += 1;
        let mut req = format!("{method} {url} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        if let Some(s) = &self.session {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("Session"))
            {
                req.push_str(&format!("Session: {s}\r\n"));
            }
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("User-Agent: divisor-tests\r\n\r\n");
        self.send_raw(req.as_bytes())?;
        let r = self
            .read_response(Duration::from_secs(10))
            .with_context(|| format!("reply to {method} {url}"))?;
        let cseq = r.header("CSeq").map(str::trim);
        if cseq != Some(self.cseq.to_string().as_str()) {
            bail!(
                "{method} reply CSeq {cseq:?}, expected {}: {r:?}",
                self.cseq
            );
        }
        if self.session.is_none() && r.status == 200 {
            self.session = r.session();
        }
        Ok(r)
    }

    /// The CSeq the last [`RtspConn::request`] used.
    /// DESCRIBE `url` (200 expected) and the SDP's tracks, control URLs resolved against
    /// the Content-Base (or `url`).
    pub fn describe(&mut self, url: &str) -> Result<Vec<SdpTrack>> {
        let r = self.request("DESCRIBE", url, &[("Accept", "application/sdp")])?;
        if r.status != 200 {
            bail!("DESCRIBE {url}: {}", r.status_line);
        }
        let base = r.header("Content-Base").unwrap_or(url).trim().to_string();
        Ok(sdp_tracks(&r.body_text(), &base))
    }

    /// The control URL of `url`'s first track (see [`RtspConn::describe`]).
    pub fn first_track(&mut self, url: &str) -> Result<String> {
        self.describe(url)?
            .into_iter()
            .next()
            .map(|t| t.control)
            .ok_or_else(|| anyhow::anyhow!("DESCRIBE {url}: no tracks in the SDP"))
    }

    pub fn last_cseq(&self) -> u32 {
        self.cseq
    }

    /// Reads until the next RTSP reply, queueing interleaved frames in `pending`.
    pub fn read_response(&mut self, timeout: Duration) -> Result<Response> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no RTSP reply within {timeout:?}");
            }
            match self.next_from_wire(left)? {
                Some(Incoming::Response(r)) => return Ok(r),
                Some(Incoming::Interleaved(f)) => self.pending.push_back(f),
                None if self.closed => bail!("connection closed before an RTSP reply"),
                None => {}
            }
        }
    }

    /// Whether the peer closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Next message, or `None` if nothing complete arrived within `timeout` (or the
    /// connection closed: see [`RtspConn::is_closed`]). Queued frames come first.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(Some(Incoming::Interleaved(f)));
        }
        self.next_from_wire(timeout)
    }

    fn next_from_wire(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.parse()? {
                return Ok(Some(m));
            }
            if self.closed {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => self.closed = true,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Incoming>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf[0] == b'$' {
            if self.buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            if self.buf.len() < 4 + len {
                return Ok(None);
            }
            let data = self.buf[4..4 + len].to_vec();
            let channel = self.buf[1];
            self.buf.drain(..4 + len);
            return Ok(Some(Incoming::Interleaved(Interleaved {
                channel,
                data,
                at: Instant::now(),
            })));
        }
        let Some(end) = find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > 1 << 20 {
                bail!("RTSP header over 1 MiB without an end");
            }
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            } else {
                bail!("malformed header line {l:?} in reply:\n{head}");
            }
        }
        let clen: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
            .map(|(_, v)| v.parse().context("bad Content-Length"))
            .transpose()?
            .unwrap_or(0);
        if self.buf.len() < end + 4 + clen {
            return Ok(None);
        }
        let body = self.buf[end + 4..end + 4 + clen].to_vec();
        self.buf.drain(..end + 4 + clen);
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status = parts.next().and_then(|c| c.parse::<u16>().ok());
        let reason = parts.next().unwrap_or_default().to_string();
        let (true, Some(status)) = (version == "RTSP/1.0", status) else {
            bail!("malformed status line {status_line:?}");
        };
        Ok(Some(Incoming::Response(Response {
            status_line,
            status,
            reason,
            headers,
            body,
        })))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A media section of an SDP.
#[derive(Debug, Clone)]
pub struct SdpTrack {
    /// `video`, `audio`, ...
    pub media: String,
    /// Absolute control URL for SETUP.
    pub control: String,
    pub payload_type: u8,
    /// Encoding name from `a=rtpmap` (e.g. `H264`).
    pub encoding: String,
    pub clock_rate: u32,
}

/// The tracks of an SDP, with control URLs resolved against `base` (Content-Base or the
/// request URL).
pub fn sdp_tracks(sdp: &str, base: &str) -> Vec<SdpTrack> {
    let mut tracks: Vec<SdpTrack> = Vec::new();
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            let f: Vec<&str> = m.split_whitespace().collect();
            tracks.push(SdpTrack {
                media: f.first().unwrap_or(&"").to_string(),
                control: base.to_string(),
                payload_type: f.get(3).and_then(|p| p.parse().ok()).unwrap_or(0),
                encoding: String::new(),
                clock_rate: 0,
            });
        } else if let Some(t) = tracks.last_mut() {
            if let Some(c) = line.strip_prefix("a=control:") {
                t.control = resolve(base, c.trim());
            } else if let Some(r) = line.strip_prefix("a=rtpmap:") {
                if let Some((_, enc)) = r.split_once(' ') {
                    let mut p = enc.split('/');
                    t.encoding = p.next().unwrap_or("").to_string();
                    t.clock_rate = p.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                }
            }
        }
    }
    tracks
}

fn resolve(base: &str, control: &str) -> String {
    if control.starts_with("rtsp://") || control.starts_with("rtsps://") {
        control.to_string()
    } else if control == "*" {
        base.to_string()
    } else if base.ends_with('/') {
        format!("{base}{control}")
    } else {
        format!("{base}/{control}")
    }
}

/// The fixed RTP header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// Parses an RTP header (version 2), or `None`.
pub fn rtp_header(p: &[u8]) -> Option<RtpHeader> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return None;
    }
    Some(RtpHeader {
        payload_type: p[1] & 0x7f,
        marker: p[1] & 0x80 != 0,
        seq: u16::from_be_bytes([p[2], p[3]]),
        timestamp: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
    })
}
