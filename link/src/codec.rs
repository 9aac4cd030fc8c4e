//! The byte format of [`Message`]s: versioned and length-delimited. Pure functions, no I/O.
//!
//! Every message is
//!
//! ```text
//! u32 BE  length of everything after this field (version + kind + body)
//! u16 BE  version (PROTOCOL_VERSION)
//! u8      kind
//! ...     body: fields big-endian; strings and byte arrays as u32 BE length + bytes
//! ```
//!
//! A [`Frame`]'s payload is its last field, so a transport can write the encoded header
//! ([`encode_frame_header`]) and the payload `Bytes` with one vectored write, without copying
//! the payload. On the receiving side [`decode_bytes`] slices frame payloads out of the
//! received buffer instead of copying them.
//!
//! Written by hand because the layout is ours and small; a serde format would hide the
//! byte layout the RDMA backend will later need to know exactly.

use crate::message::*;
use bytes::{BufMut, Bytes, BytesMut};

/// Largest message accepted or produced, length field included. Bounds the memory a peer
/// can make us reserve with one length prefix.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Largest message accepted before the handshake succeeds (Hello, Auth, Error are tiny).
pub const PRE_AUTH_MAX_MESSAGE_SIZE: usize = 4 * 1024;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes of the fixed message header: length prefix, version and kind.
pub const HEADER_LEN: usize = LEN_PREFIX + 2 + 1;

/// Wire codes of message kinds.
pub mod kind {
    pub const HELLO: u8 = 1;
    pub const AUTH: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const ANNOUNCE: u8 = 4;
    pub const SEEK: u8 = 5;
    pub const SEEK_DONE: u8 = 6;
    pub const PAUSE: u8 = 7;
    pub const RESUME: u8 = 8;
    pub const CLOSE: u8 = 9;
    pub const KEYFRAME_REQUEST: u8 = 10;
    pub const CREDITS: u8 = 11;
    pub const ERROR: u8 = 12;
    pub const FRAME: u8 = 13;
    pub const SUBSCRIBE: u8 = 14;
    pub const STATUS: u8 = 15;
    pub const CONTENT_KEY: u8 = 16;
    pub const PATH: u8 = 17;
    pub const PING: u8 = 18;
    pub const PONG: u8 = 19;
    pub const GOING_AWAY: u8 = 20;
    pub const REPORT: u8 = 21;
}

/// Why bytes from the peer are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("message length field {0} is shorter than the version and kind fields")]
    TooShort(u32),
    #[error("peer speaks link protocol version {got}, we speak {PROTOCOL_VERSION}")]
    BadVersion { got: u16 },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("unknown codec code {0}")]
    UnknownCodec(u8),
    #[error("unknown role code {0}")]
    UnknownRole(u8),
    #[error("unknown error code {0}")]
    UnknownErrorCode(u8),
    #[error("invalid boolean/option tag {0}")]
    InvalidTag(u8),
    #[error("message kind {kind} truncated: body ends before its fields do")]
    Truncated { kind: u8 },
    #[error("message kind {kind} has {extra} trailing bytes after its fields")]
    TrailingBytes { kind: u8, extra: usize },
    #[error("string field is not valid UTF-8")]
    InvalidUtf8,
}

/// Why a message cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("too many elements in a list field ({0}, at most 65535)")]
    TooManyElements(usize),
}

fn kind_of(msg: &Message) -> u8 {
    match msg {
        Message::Hello { .. } => kind::HELLO,
        Message::Auth { .. } => kind::AUTH,
        Message::Open { .. } => kind::OPEN,
        Message::Announce { .. } => kind::ANNOUNCE,
        Message::Seek { .. } => kind::SEEK,
        Message::SeekDone { .. } => kind::SEEK_DONE,
        Message::Pause { .. } => kind::PAUSE,
        Message::Resume { .. } => kind::RESUME,
        Message::Close { .. } => kind::CLOSE,
        Message::KeyframeRequest { .. } => kind::KEYFRAME_REQUEST,
        Message::Credits { .. } => kind::CREDITS,
        Message::Error { .. } => kind::ERROR,
        Message::Frame(_) => kind::FRAME,
        Message::Subscribe { .. } => kind::SUBSCRIBE,
        Message::Status { .. } => kind::STATUS,
        Message::ContentKey { .. } => kind::CONTENT_KEY,
        Message::Path { .. } => kind::PATH,
        Message::Ping { .. } => kind::PING,
        Message::Pong { .. } => kind::PONG,
        Message::GoingAway { .. } => kind::GOING_AWAY,
        Message::Report { .. } => kind::REPORT,
    }
}

/// Bytes of a frame's header after the message header: everything but the payload bytes.
pub const FRAME_FIXED: usize = 4 + 1 + 1 + 1 + 8 + 8 + 4 + 4;

/// Size of the body (after the kind byte) of `msg`.
fn body_len(msg: &Message) -> usize {
    match msg {
        Message::Hello { .. } => 2 + 1 + 32,
        Message::Auth { .. } => 32,
        Message::Open {
            asset, rendition, ..
        } => 4 + 4 + asset.len() + 4 + rendition.len(),
        Message::Subscribe {
            name, rendition, ..
        } => 4 + 4 + name.len() + 4 + rendition.len(),
        Message::Status { detail, .. } => 4 + 1 + 4 + detail.len(),
        Message::ContentKey { key, .. } => 4 + 4 + 1 + 4 + key.len(),
        Message::Announce { tracks, .. } => {
            4 + 1
                + 8
                + 2
                + tracks
                    .iter()
                    .map(|t| {
                        1 + 1
                            + 4
                            + 2
                            + 2
                            + 4
                            + 1
                            + 4
                            + 2
                            + t.params.iter().map(|p| 4 + p.len()).sum::<usize>()
                    })
                    .sum::<usize>()
        }
        Message::Seek { .. } | Message::SeekDone { .. } => 4 + 4 + 8,
        Message::Pause { .. } | Message::Resume { .. } | Message::Close { .. } => 4,
        Message::KeyframeRequest { .. } => 4 + 1,
        Message::Credits { .. } => 4 + 4,
        Message::Error { message, .. } => 4 + 1 + 4 + message.len(),
        Message::Frame(f) => FRAME_FIXED + f.data.len(),
        Message::Path { nodes, .. } => 4 + 2 + nodes.iter().map(|n| 4 + n.len()).sum::<usize>(),
        Message::Ping { .. } | Message::Pong { .. } => 4,
        Message::GoingAway { detail } => 4 + detail.len(),
        Message::Report { xml } => 4 + xml.len(),
    }
}

/// Total encoded size of `msg`, length prefix included.
pub fn encoded_len(msg: &Message) -> usize {
    HEADER_LEN + body_len(msg)
}

/// Checks that `msg` can be encoded: within [`MAX_MESSAGE_SIZE`], list counts within u16.
/// Senders call this before queueing so a transport never meets an unencodable message.
pub fn check(msg: &Message) -> Result<(), EncodeError> {
    let len = encoded_len(msg);
    if len > MAX_MESSAGE_SIZE {
        return Err(EncodeError::TooLarge {
            len,
            max: MAX_MESSAGE_SIZE,
        });
    }
    if let Message::Path { nodes, .. } = msg {
        if nodes.len() > u16::MAX as usize {
            return Err(EncodeError::TooManyElements(nodes.len()));
        }
    }
    if let Message::Announce { tracks, .. } = msg {
        if tracks.len() > u16::MAX as usize {
            return Err(EncodeError::TooManyElements(tracks.len()));
        }
        for t in tracks {
            if t.params.len() > u16::MAX as usize {
                return Err(EncodeError::TooManyElements(t.params.len()));
            }
        }
    }
    Ok(())
}

fn put_header<B: BufMut>(msg: &Message, out: &mut B) {
    out.put_u32((encoded_len(msg) - LEN_PREFIX) as u32);
    out.put_u16(PROTOCOL_VERSION);
    out.put_u8(kind_of(msg));
}

fn put_bytes<B: BufMut>(out: &mut B, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_frame_fields<B: BufMut>(f: &Frame, out: &mut B) {
    out.put_u32(f.channel);
    out.put_u8(f.track);
    out.put_u8(f.codec.to_u8());
    out.put_u8(f.flags.0);
    out.put_i64(f.pts);
    out.put_i64(f.dts);
    out.put_u32(f.duration);
    out.put_u32(f.data.len() as u32);
}

/// Appends the encoding of `msg` to `out` (a `BytesMut`, or a `&mut [u8]` with at least
/// [`encoded_len`] bytes of room — a `&mut [u8]` that is too short panics, as `BufMut` does).
pub fn encode<B: BufMut>(msg: &Message, out: &mut B) -> Result<(), EncodeError> {
    check(msg)?;
    put_header(msg, out);
    match msg {
        Message::Hello {
            version,
            role,
            nonce,
        } => {
            out.put_u16(*version);
            out.put_u8(role.to_u8());
            out.put_slice(nonce);
        }
        Message::Auth { mac } => out.put_slice(mac),
        Message::Open {
            channel,
            asset,
            rendition,
        } => {
            out.put_u32(*channel);
            put_bytes(out, asset.as_bytes());
            put_bytes(out, rendition.as_bytes());
        }
        Message::Subscribe {
            channel,
            name,
            rendition,
        } => {
            out.put_u32(*channel);
            put_bytes(out, name.as_bytes());
            put_bytes(out, rendition.as_bytes());
        }
        Message::Status {
            channel,
            state,
            detail,
        } => {
            out.put_u32(*channel);
            out.put_u8(state.to_u8());
            put_bytes(out, detail.as_bytes());
        }
        Message::ContentKey {
            channel,
            key_id,
            cipher,
            key,
        } => {
            out.put_u32(*channel);
            out.put_u32(*key_id);
            out.put_u8(cipher.to_u8());
            put_bytes(out, key);
        }
        Message::Announce {
            channel,
            duration_ms,
            tracks,
        } => {
            out.put_u32(*channel);
            out.put_u8(duration_ms.is_some() as u8);
            out.put_u64(duration_ms.unwrap_or(0));
            out.put_u16(tracks.len() as u16);
            for t in tracks {
                out.put_u8(t.track);
                out.put_u8(t.codec.to_u8());
                out.put_u32(t.clock_rate);
                out.put_u16(t.width);
                out.put_u16(t.height);
                out.put_u32(t.sample_rate);
                out.put_u8(t.channels);
                out.put_u32(t.bitrate);
                out.put_u16(t.params.len() as u16);
                for p in &t.params {
                    put_bytes(out, p);
                }
            }
        }
        Message::Seek {
            channel,
            request,
            position_ms,
        }
        | Message::SeekDone {
            channel,
            request,
            position_ms,
        } => {
            out.put_u32(*channel);
            out.put_u32(*request);
            out.put_u64(*position_ms);
        }
        Message::Pause { channel } | Message::Resume { channel } | Message::Close { channel } => {
            out.put_u32(*channel)
        }
        Message::KeyframeRequest { channel, track } => {
            out.put_u32(*channel);
            out.put_u8(*track);
        }
        Message::Credits { channel, frames } => {
            out.put_u32(*channel);
            out.put_u32(*frames);
        }
        Message::Error {
            channel,
            code,
            message,
        } => {
            out.put_u32(*channel);
            out.put_u8(code.to_u8());
            put_bytes(out, message.as_bytes());
        }
        Message::Frame(f) => {
            put_frame_fields(f, out);
            out.put_slice(&f.data);
        }
        Message::Path { channel, nodes } => {
            out.put_u32(*channel);
            out.put_u16(nodes.len() as u16);
            for n in nodes {
                put_bytes(out, n.as_bytes());
            }
        }
        Message::Ping { seq } | Message::Pong { seq } => out.put_u32(*seq),
        Message::GoingAway { detail } => put_bytes(out, detail.as_bytes()),
        Message::Report { xml } => put_bytes(out, xml.as_bytes()),
    }
    Ok(())
}

/// Appends everything of a frame message except its payload bytes, which must be written
/// right after (`frame.data`). Lets transports send 1 MB payloads without copying them.
pub fn encode_frame_header<B: BufMut>(frame: &Frame, out: &mut B) -> Result<(), EncodeError> {
    let msg_len = HEADER_LEN + FRAME_FIXED + frame.data.len();
    if msg_len > MAX_MESSAGE_SIZE {
        return Err(EncodeError::TooLarge {
            len: msg_len,
            max: MAX_MESSAGE_SIZE,
        });
    }
    out.put_u32((msg_len - LEN_PREFIX) as u32);
    out.put_u16(PROTOCOL_VERSION);
    out.put_u8(kind::FRAME);
    put_frame_fields(frame, out);
    Ok(())
}

/// Looks at the start of `buf`: `Ok(Some(total))` is the full size of the first message
/// (length prefix included) once its length field is there, after checking it against
/// [`MAX_MESSAGE_SIZE`]; `Ok(None)` if fewer than 4 bytes are present. Lets readers reserve
/// room for a large message in one go, and reject a huge length before reading the body.
pub fn peek_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    peek_len_max(buf, MAX_MESSAGE_SIZE)
}

/// [`peek_len`] with a tighter limit: before the handshake has succeeded a reader accepts
/// only [`PRE_AUTH_MAX_MESSAGE_SIZE`], so an unauthenticated peer cannot make it reserve
/// megabytes with one length prefix.
pub fn peek_len_max(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if (len as usize) < HEADER_LEN - LEN_PREFIX {
        return Err(DecodeError::TooShort(len));
    }
    let total = len as usize + LEN_PREFIX;
    let max = max.min(MAX_MESSAGE_SIZE);
    if total > max {
        return Err(DecodeError::TooLarge { len: total, max });
    }
    Ok(Some(total))
}

/// Decodes the first message of `buf`. `Ok(None)`: more bytes are needed. On success,
/// also returns how many bytes the message took. Frame payloads are copied.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(total) = peek_len(buf)? else {
        return Ok(None);
    };
    // Check the version as soon as it is there, so a peer speaking another version is told
    // so rather than "truncated" or "too large".
    if buf.len() >= LEN_PREFIX + 2 {
        check_version(&buf[LEN_PREFIX..])?;
    }
    let Some(whole) = buf.get(..total) else {
        return Ok(None);
    };
    let msg = parse(whole, None)?;
    Ok(Some((msg, total)))
}

/// Decodes the first message of `buf` and removes it from `buf`. Frame payloads become
/// slices of the received buffer (no copy). `Ok(None)`: more bytes are needed.
pub fn decode_bytes(buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
    let Some(total) = peek_len(buf)? else {
        return Ok(None);
    };
    if buf.len() >= LEN_PREFIX + 2 {
        check_version(&buf[LEN_PREFIX..])?;
    }
    if buf.len() < total {
        return Ok(None);
    }
    let whole = buf.split_to(total).freeze();
    parse(&whole, Some(&whole)).map(Some)
}

/// Decodes exactly one whole message held in `whole` (length prefix included), slicing frame
/// payloads out of it.
pub fn decode_whole(whole: &Bytes) -> Result<Message, DecodeError> {
    match peek_len(whole)? {
        Some(total) if total == whole.len() => parse(whole, Some(whole)),
        Some(total) if total > whole.len() => Err(DecodeError::Truncated {
            kind: whole.get(6).copied().unwrap_or(0),
        }),
        Some(total) => Err(DecodeError::TrailingBytes {
            kind: whole.get(6).copied().unwrap_or(0),
            extra: whole.len() - total,
        }),
        None => Err(DecodeError::Truncated { kind: 0 }),
    }
}

fn check_version(after_len: &[u8]) -> Result<(), DecodeError> {
    let got = u16::from_be_bytes([after_len[0], after_len[1]]);
    if got != PROTOCOL_VERSION {
        return Err(DecodeError::BadVersion { got });
    }
    Ok(())
}

/// Cursor over one message's body. `src`, when given, is the `Bytes` that `buf` borrows
/// from, so byte fields can be sliced instead of copied.
struct Reader<'a> {
    buf: &'a [u8],
    src: Option<&'a Bytes>,
    kind: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { kind: self.kind });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }
    fn arr32(&mut self) -> Result<[u8; 32], DecodeError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        let s = self.take(n)?;
        Ok(match self.src {
            Some(src) => src.slice_ref(s),
            None => Bytes::copy_from_slice(s),
        })
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8)
    }
    fn codec(&mut self) -> Result<Codec, DecodeError> {
        let c = self.u8()?;
        Codec::from_u8(c).ok_or(DecodeError::UnknownCodec(c))
    }
}

/// Parses one whole message (length prefix included; length already checked by the caller).
fn parse(whole: &[u8], src: Option<&Bytes>) -> Result<Message, DecodeError> {
    if whole.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { kind: 0 });
    }
    check_version(&whole[LEN_PREFIX..])?;
    let k = whole[6];
    let mut r = Reader {
        buf: &whole[HEADER_LEN..],
        src,
        kind: k,
    };
    let msg = match k {
        kind::HELLO => {
            let version = r.u16()?;
            let role_code = r.u8()?;
            let role = Role::from_u8(role_code).ok_or(DecodeError::UnknownRole(role_code))?;
            Message::Hello {
                version,
                role,
                nonce: r.arr32()?,
            }
        }
        kind::AUTH => Message::Auth { mac: r.arr32()? },
        kind::OPEN => Message::Open {
            channel: r.u32()?,
            asset: r.string()?,
            rendition: r.string()?,
        },
        kind::SUBSCRIBE => Message::Subscribe {
            channel: r.u32()?,
            name: r.string()?,
            rendition: r.string()?,
        },
        kind::STATUS => {
            let channel = r.u32()?;
            let s = r.u8()?;
            let state = ChannelState::from_u8(s).ok_or(DecodeError::InvalidTag(s))?;
            Message::Status {
                channel,
                state,
                detail: r.string()?,
            }
        }
        kind::CONTENT_KEY => {
            let channel = r.u32()?;
            let key_id = r.u32()?;
            let c = r.u8()?;
            let cipher = Cipher::from_u8(c).ok_or(DecodeError::InvalidTag(c))?;
            Message::ContentKey {
                channel,
                key_id,
                cipher,
                key: r.bytes()?,
            }
        }
        kind::ANNOUNCE => {
            let channel = r.u32()?;
            let tag = r.u8()?;
            let d = r.u64()?;
            let duration_ms = match tag {
                0 => None,
                1 => Some(d),
                t => return Err(DecodeError::InvalidTag(t)),
            };
            let n = r.u16()? as usize;
            // Each track takes at least 25 bytes: cap the allocation by what is there.
            let mut tracks = Vec::with_capacity(n.min(r.buf.len() / 25));
            for _ in 0..n {
                let track = r.u8()?;
                let codec = r.codec()?;
                let clock_rate = r.u32()?;
                let width = r.u16()?;
                let height = r.u16()?;
                let sample_rate = r.u32()?;
                let channels = r.u8()?;
                let bitrate = r.u32()?;
                let np = r.u16()? as usize;
                let mut params = Vec::with_capacity(np.min(r.buf.len() / 4));
                for _ in 0..np {
                    params.push(r.bytes()?);
                }
                tracks.push(TrackInfo {
                    track,
                    codec,
                    clock_rate,
                    width,
                    height,
                    sample_rate,
                    channels,
                    bitrate,
                    params,
                });
            }
            Message::Announce {
                channel,
                duration_ms,
                tracks,
            }
        }
        kind::SEEK => Message::Seek {
            channel: r.u32()?,
            request: r.u32()?,
            position_ms: r.u64()?,
        },
        kind::SEEK_DONE => Message::SeekDone {
            channel: r.u32()?,
            request: r.u32()?,
            position_ms: r.u64()?,
        },
        kind::PAUSE => Message::Pause { channel: r.u32()? },
        kind::RESUME => Message::Resume { channel: r.u32()? },
        kind::CLOSE => Message::Close { channel: r.u32()? },
        kind::KEYFRAME_REQUEST => Message::KeyframeRequest {
            channel: r.u32()?,
            track: r.u8()?,
        },
        kind::CREDITS => Message::Credits {
            channel: r.u32()?,
            frames: r.u32()?,
        },
        kind::ERROR => {
            let channel = r.u32()?;
            let c = r.u8()?;
            let code = ErrorCode::from_u8(c).ok_or(DecodeError::UnknownErrorCode(c))?;
            Message::Error {
                channel,
                code,
                message: r.string()?,
            }
        }
        kind::FRAME => Message::Frame(Frame {
            channel: r.u32()?,
            track: r.u8()?,
            codec: r.codec()?,
            flags: FrameFlags(r.u8()?),
            pts: r.i64()?,
            dts: r.i64()?,
            duration: r.u32()?,
            data: r.bytes()?,
        }),
        kind::PATH => {
            let channel = r.u32()?;
            let n = r.u16()? as usize;
            // Each node id takes at least 4 bytes: cap the allocation by what is there.
            let mut nodes = Vec::with_capacity(n.min(r.buf.len() / 4));
            for _ in 0..n {
                nodes.push(r.string()?);
            }
            Message::Path { channel, nodes }
        }
        kind::PING => Message::Ping { seq: r.u32()? },
        kind::PONG => Message::Pong { seq: r.u32()? },
        kind::GOING_AWAY => Message::GoingAway {
            detail: r.string()?,
        },
        kind::REPORT => Message::Report { xml: r.string()? },
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes {
            kind: k,
            extra: r.buf.len(),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(m: &Message) -> BytesMut {
        let mut b = BytesMut::new();
        encode(m, &mut b).expect("encodable");
        b
    }

    fn frame(len: usize) -> Frame {
        Frame {
            channel: 7,
            track: 1,
            codec: Codec::H264,
            flags: FrameFlags::KEYFRAME | FrameFlags::ENCRYPTED,
            pts: -3000,
            dts: 1 << 40,
            duration: 3000,
            data: Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>()),
        }
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Encoder,
                nonce: [9; 32],
            },
            Message::Auth { mac: [0xab; 32] },
            Message::Open {
                channel: 3,
                asset: "films/été.mp4".into(),
                rendition: "360p".into(),
            },
            Message::Subscribe {
                channel: 4,
                name: "news".into(),
                rendition: String::new(),
            },
            Message::Status {
                channel: 4,
                state: ChannelState::Stalled,
                detail: "no input for 2 s".into(),
            },
            Message::ContentKey {
                channel: 4,
                key_id: 2,
                cipher: Cipher::DesCbc,
                key: Bytes::from_static(b"8bytekey"),
            },
            Message::Announce {
                channel: 3,
                duration_ms: Some(123_456),
                tracks: vec![
                    TrackInfo {
                        track: 0,
                        codec: Codec::H264,
                        clock_rate: 90_000,
                        width: 1920,
                        height: 1080,
                        sample_rate: 0,
                        channels: 0,
                        bitrate: 4_000_000,
                        params: vec![
                            Bytes::from_static(b"\x67sps"),
                            Bytes::from_static(b"\x68pps"),
                        ],
                    },
                    TrackInfo {
                        track: 1,
                        codec: Codec::Opus,
                        clock_rate: 48_000,
                        width: 0,
                        height: 0,
                        sample_rate: 48_000,
                        channels: 2,
                        bitrate: 0,
                        params: vec![],
                    },
                ],
            },
            Message::Announce {
                channel: 4,
                duration_ms: None,
                tracks: vec![],
            },
            Message::Seek {
                channel: 3,
                request: 2,
                position_ms: 60_000,
            },
            Message::SeekDone {
                channel: 3,
                request: 2,
                position_ms: 59_000,
            },
            Message::Pause { channel: 3 },
            Message::Resume { channel: 3 },
            Message::Close { channel: 3 },
            Message::KeyframeRequest {
                channel: 3,
                track: 0,
            },
            Message::Credits {
                channel: 3,
                frames: 32,
            },
            Message::Error {
                channel: 0,
                code: ErrorCode::AuthFailed,
                message: "nope".into(),
            },
            Message::Frame(frame(0)),
            Message::Frame(frame(1000)),
            Message::Path {
                channel: 4,
                nodes: vec!["encoder@10.0.0.1:7400".into(), "master-1".into()],
            },
            Message::Path {
                channel: 5,
                nodes: vec![],
            },
            Message::Ping { seq: 7 },
            Message::Pong { seq: 7 },
            Message::GoingAway {
                detail: "SIGTERM".into(),
            },
            Message::Report {
                xml: "<message type=\"STATS\"/>".into(),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_both_decoders() {
        for m in samples() {
            let b = enc(&m);
            assert_eq!(b.len(), encoded_len(&m), "{m:?}");
            let (d, used) = decode(&b).expect("ok").expect("complete");
            assert_eq!(d, m);
            assert_eq!(used, b.len());
            let mut bm = b.clone();
            bm.extend_from_slice(&[0, 0]); // start of the next message stays
            assert_eq!(decode_bytes(&mut bm).expect("ok"), Some(m.clone()));
            assert_eq!(&bm[..], &[0, 0]);
            assert_eq!(decode_whole(&b.clone().freeze()).expect("ok"), m);
        }
    }

    #[test]
    fn frame_header_plus_payload_equals_encode() {
        let f = frame(5000);
        let mut h = BytesMut::new();
        encode_frame_header(&f, &mut h).expect("ok");
        h.extend_from_slice(&f.data);
        assert_eq!(h, enc(&Message::Frame(f)));
    }

    #[test]
    fn every_prefix_needs_more() {
        for m in samples() {
            let b = enc(&m);
            for cut in 0..b.len() {
                assert_eq!(decode(&b[..cut]), Ok(None), "{m:?} cut at {cut}");
            }
        }
    }

    fn with_kind_body(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 3) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        v.push(kind);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn too_large() {
        let b = (1u32 << 30).to_be_bytes();
        assert!(matches!(decode(&b), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn too_short_length() {
        assert_eq!(decode(&[0, 0, 0, 2, 0, 1]), Err(DecodeError::TooShort(2)));
    }

    #[test]
    fn bad_version() {
        let mut b = enc(&Message::Pause { channel: 1 }).to_vec();
        b[5] = 99;
        assert_eq!(decode(&b), Err(DecodeError::BadVersion { got: 99 }));
        // Reported as soon as the version bytes arrive.
        assert_eq!(decode(&b[..6]), Err(DecodeError::BadVersion { got: 99 }));
    }

    #[test]
    fn unknown_kind() {
        assert_eq!(
            decode(&with_kind_body(200, &[])),
            Err(DecodeError::UnknownKind(200))
        );
    }

    #[test]
    fn unknown_codec_role_error_code() {
        let mut f = enc(&Message::Frame(frame(3))).to_vec();
        f[HEADER_LEN + 5] = 77;
        assert_eq!(decode(&f), Err(DecodeError::UnknownCodec(77)));
        let hello = with_kind_body(
            kind::HELLO,
            &[0, 1, 9]
                .iter()
                .chain(&[0u8; 32])
                .copied()
                .collect::<Vec<_>>(),
        );
        assert_eq!(decode(&hello), Err(DecodeError::UnknownRole(9)));
        let err = with_kind_body(kind::ERROR, &[0, 0, 0, 0, 42, 0, 0, 0, 0]);
        assert_eq!(decode(&err), Err(DecodeError::UnknownErrorCode(42)));
    }

    #[test]
    fn invalid_option_tag() {
        let mut b = with_kind_body(kind::ANNOUNCE, &[0, 0, 0, 1, 5]);
        b.extend_from_slice(&[0; 10]);
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(decode(&b), Err(DecodeError::InvalidTag(5)));
    }

    #[test]
    fn truncated_body() {
        let b = with_kind_body(kind::CREDITS, &[0, 0, 0, 1, 0]);
        assert_eq!(
            decode(&b),
            Err(DecodeError::Truncated {
                kind: kind::CREDITS
            })
        );
        // A byte array whose length runs past the message.
        let b = with_kind_body(kind::OPEN, &[0, 0, 0, 1, 0, 0, 1, 0, b'a']);
        assert_eq!(decode(&b), Err(DecodeError::Truncated { kind: kind::OPEN }));
    }

    #[test]
    fn trailing_bytes() {
        let b = with_kind_body(kind::PAUSE, &[0, 0, 0, 1, 0xff]);
        assert_eq!(
            decode(&b),
            Err(DecodeError::TrailingBytes {
                kind: kind::PAUSE,
                extra: 1
            })
        );
    }

    #[test]
    fn invalid_utf8() {
        let b = with_kind_body(kind::OPEN, &[0, 0, 0, 1, 0, 0, 0, 2, 0xc3, 0x28]);
        assert_eq!(decode(&b), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn encode_rejects_oversized() {
        let f = Frame {
            data: Bytes::from(vec![0u8; MAX_MESSAGE_SIZE]),
            ..frame(0)
        };
        let mut b = BytesMut::new();
        assert!(matches!(
            encode(&Message::Frame(f.clone()), &mut b),
            Err(EncodeError::TooLarge { .. })
        ));
        assert!(matches!(
            encode_frame_header(&f, &mut b),
            Err(EncodeError::TooLarge { .. })
        ));
        assert!(b.is_empty());
    }

    fn arb_codec() -> impl Strategy<Value = Codec> {
        prop_oneof![
            Just(Codec::H264),
            Just(Codec::Aac),
            Just(Codec::Opus),
            Just(Codec::Av1)
        ]
    }
    fn arb_role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Encoder), Just(Role::Protocol)]
    }
    fn arb_code() -> impl Strategy<Value = ErrorCode> {
        (1u8..=9).prop_map(|c| ErrorCode::from_u8(c).expect("valid code"))
    }
    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }
    fn arb_track() -> impl Strategy<Value = TrackInfo> {
        (
            any::<u8>(),
            arb_codec(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<u8>(),
            any::<u32>(),
            proptest::collection::vec(arb_bytes(), 0..3),
        )
            .prop_map(
                |(
                    track,
                    codec,
                    clock_rate,
                    width,
                    height,
                    sample_rate,
                    channels,
                    bitrate,
                    params,
                )| {
                    TrackInfo {
                        track,
                        codec,
                        clock_rate,
                        width,
                        height,
                        sample_rate,
                        channels,
                        bitrate,
                        params,
                    }
                },
            )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u16>(), arb_role(), any::<[u8; 32]>()).prop_map(|(version, role, nonce)| {
                Message::Hello {
                    version,
                    role,
                    nonce,
                }
            }),
            any::<[u8; 32]>().prop_map(|mac| Message::Auth { mac }),
            (any::<u32>(), ".{0,20}", ".{0,8}").prop_map(|(channel, asset, rendition)| {
                Message::Open {
                    channel,
                    asset,
                    rendition,
                }
            }),
            (any::<u32>(), ".{0,20}", ".{0,8}").prop_map(|(channel, name, rendition)| {
                Message::Subscribe {
                    channel,
                    name,
                    rendition,
                }
            }),
            (any::<u32>(), 1u8..=3, ".{0,20}").prop_map(|(channel, s, detail)| {
                Message::Status {
                    channel,
                    state: ChannelState::from_u8(s).expect("valid state"),
                    detail,
                }
            }),
            (any::<u32>(), any::<u32>(), any::<bool>(), arb_bytes()).prop_map(
                |(channel, key_id, des, key)| Message::ContentKey {
                    channel,
                    key_id,
                    cipher: if des {
                        Cipher::DesCbc
                    } else {
                        Cipher::Aes128Ctr
                    },
                    key,
                }
            ),
            (
                any::<u32>(),
                any::<Option<u64>>(),
                proptest::collection::vec(arb_track(), 0..3)
            )
                .prop_map(|(channel, duration_ms, tracks)| Message::Announce {
                    channel,
                    duration_ms,
                    tracks
                }),
            (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
                |(channel, request, position_ms)| Message::Seek {
                    channel,
                    request,
                    position_ms
                }
            ),
            (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
                |(channel, request, position_ms)| Message::SeekDone {
                    channel,
                    request,
                    position_ms
                }
            ),
            any::<u32>().prop_map(|channel| Message::Pause { channel }),
            any::<u32>().prop_map(|channel| Message::Resume { channel }),
            any::<u32>().prop_map(|channel| Message::Close { channel }),
            (any::<u32>(), any::<u8>())
                .prop_map(|(channel, track)| Message::KeyframeRequest { channel, track }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(channel, frames)| Message::Credits { channel, frames }),
            (any::<u32>(), proptest::collection::vec(".{0,12}", 0..4))
                .prop_map(|(channel, nodes)| Message::Path { channel, nodes }),
            any::<u32>().prop_map(|seq| Message::Ping { seq }),
            any::<u32>().prop_map(|seq| Message::Pong { seq }),
            ".{0,20}".prop_map(|detail| Message::GoingAway { detail }),
            ".{0,40}".prop_map(|xml| Message::Report { xml }),
            (any::<u32>(), arb_code(), ".{0,20}").prop_map(|(channel, code, message)| {
                Message::Error {
                    channel,
                    code,
                    message,
                }
            }),
            (
                any::<u32>(),
                any::<u8>(),
                arb_codec(),
                any::<u8>(),
                any::<i64>(),
                any::<i64>(),
                any::<u32>(),
                arb_bytes()
            )
                .prop_map(
                    |(channel, track, codec, flags, pts, dts, duration, data)| {
                        Message::Frame(Frame {
                            channel,
                            track,
                            codec,
                            flags: FrameFlags(flags),
                            pts,
                            dts,
                            duration,
                            data,
                        })
                    }
                ),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(m in arb_message()) {
            let b = enc(&m);
            prop_assert_eq!(b.len(), encoded_len(&m));
            let (d, used) = decode(&b).expect("decodes").expect("complete");
            prop_assert_eq!(used, b.len());
            prop_assert_eq!(&d, &m);
            let mut bm = b.clone();
            prop_assert_eq!(decode_bytes(&mut bm).expect("decodes"), Some(m));
            prop_assert!(bm.is_empty());
        }

        #[test]
        fn stream_of_messages_round_trips(ms in proptest::collection::vec(arb_message(), 0..8)) {
            let mut b = BytesMut::new();
            for m in &ms { encode(m, &mut b).expect("encodable"); }
            let mut out = Vec::new();
            while let Some(m) = decode_bytes(&mut b).expect("decodes") { out.push(m); }
            prop_assert_eq!(out, ms);
            prop_assert!(b.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let mut bm = BytesMut::from(&bytes[..]);
            let _ = decode_bytes(&mut bm);
            let _ = decode_whole(&Bytes::from(bytes));
        }

        #[test]
        fn mutated_messages_never_panic(m in arb_message(), idx in any::<usize>(), val in any::<u8>()) {
            let mut b = enc(&m).to_vec();
            let i = idx % b.len();
            b[i] = val;
            let _ = decode(&b);
        }
    }
}
