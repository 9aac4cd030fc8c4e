//! Sealing and opening control messages: limits, HMAC-SHA256, the replay window and
//! the length-prefixed framing on the control connection.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::codec::LengthDelimitedCodec;

use super::{decode_xml, encode_xml, Message};

type HmacSha256 = Hmac<Sha256>;

/// Length of the HMAC-SHA256 tag that precedes the XML in a sealed message.
pub const TAG_LEN: usize = 32;

/// How many tags the replay cache remembers at most; beyond that the ones that expire
/// first are forgotten, so a flood of messages cannot grow memory without bound.
pub const REPLAY_CACHE_CAP: usize = 65_536;

/// Bounds on what a peer may make us parse and remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest XML document accepted, in bytes (the tag is not counted).
    pub max_message_bytes: usize,
    /// Deepest element nesting accepted; `<message>` itself is depth 1.
    pub max_depth: usize,
    /// Most elements accepted in one message.
    pub max_elements: usize,
    /// How far (either way) a message's time may be from ours, and so how long a tag
    /// must be remembered to refuse replays.
    pub replay_window_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_depth: 16,
            max_elements: 4096,
            replay_window_ms: 30_000,
        }
    }
}

/// Why a control message was refused (or the key could not be loaded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control message is {len} bytes, over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("control message is shorter than its {TAG_LEN}-byte HMAC tag")]
    Truncated,
    #[error(
        "control message HMAC does not verify: the sender uses another control key or the message was altered"
    )]
    BadTag,
    #[error(
        "control message time is {skew_ms} ms off our clock (positive: ahead), outside the replay window"
    )]
    Stale { skew_ms: i64 },
    #[error("control message was already received within the replay window: refused as a replay")]
    Replay,
    #[error("control message is not well-formed XML: {0}")]
    Xml(String),
    #[error("control message contains a DOCTYPE, which is refused (entity expansion attacks)")]
    Doctype,
    #[error(
        "control message references the entity &{0};, but only the five predefined XML entities and character references are allowed"
    )]
    Entity(String),
    #[error("control message nests elements deeper than the depth limit")]
    TooDeep,
    #[error("control message has more elements than the element limit")]
    TooManyElements,
    #[error("control message has the unknown type {0:?}")]
    UnknownType(String),
    #[error("control message lacks the required {0}")]
    Missing(String),
    #[error("control message has a bad {what}: {value:?}")]
    BadValue { what: String, value: String },
    #[error("cannot load the control key: {0}")]
    KeyFile(String),
}

impl ControlError {
    /// The code of the ERROR message to answer with (HTTP-like): 400 malformed, 401 not
    /// authentic or not fresh, 413 over a size limit, 501 a type we do not implement,
    /// 500 a local failure (the key).
    pub fn code(&self) -> u16 {
        match self {
            ControlError::BadTag | ControlError::Stale { .. } | ControlError::Replay => 401,
            ControlError::TooLarge { .. }
            | ControlError::TooDeep
            | ControlError::TooManyElements => 413,
            ControlError::UnknownType(_) => 501,
            ControlError::KeyFile(_) => 500,
            ControlError::Truncated
            | ControlError::Xml(_)
            | ControlError::Doctype
            | ControlError::Entity(_)
            | ControlError::Missing(_)
            | ControlError::BadValue { .. } => 400,
        }
    }
}

/// The shared secret of the control tree. Debug output never shows it.
#[derive(Clone)]
pub struct ControlKey(HmacSha256);

impl ControlKey {
    /// An empty key would authenticate anyone who guesses it, so it is refused.
    pub fn new(bytes: Vec<u8>) -> Result<Self, ControlError> {
        if bytes.is_empty() {
            return Err(ControlError::KeyFile("the control key is empty".into()));
        }
        HmacSha256::new_from_slice(&bytes)
            .map(ControlKey)
            .map_err(|e| ControlError::KeyFile(e.to_string()))
    }

    /// Reads a key file the same way link keys are read (trailing whitespace trimmed).
    pub fn from_file(path: &Path) -> Result<Self, ControlError> {
        let bytes =
            divisor_link::read_key_file(path).map_err(|e| ControlError::KeyFile(e.to_string()))?;
        ControlKey::new(bytes)
    }
}

impl fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ControlKey(..)")
    }
}

/// Seals outgoing and opens incoming control messages for one connection (or one
/// controller): it owns the replay cache, so use one `Codec` per receiving party.
#[derive(Debug)]
pub struct Codec {
    key: ControlKey,
    limits: Limits,
    replay: ReplayCache,
}

impl Codec {
    pub fn new(key: ControlKey, limits: Limits) -> Self {
        Codec {
            key,
            limits,
            replay: ReplayCache::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The 32-byte HMAC-SHA256 tag of the XML, then the XML.
    pub fn seal(&self, msg: &Message) -> Bytes {
        let xml = encode_xml(msg);
        let mut mac = self.key.0.clone();
        mac.update(xml.as_bytes());
        let mut out = BytesMut::with_capacity(TAG_LEN + xml.len());
        out.put_slice(&mac.finalize().into_bytes());
        out.put_slice(xml.as_bytes());
        out.freeze()
    }

    /// Checks, cheapest and least trusting first: size, tag (in constant time), XML,
    /// freshness against `now_ms`, then replay. Only a message that passes everything is
    /// remembered, so a refused message never affects the next one.
    pub fn open(&mut self, payload: &[u8], now_ms: u64) -> Result<Message, ControlError> {
        let max = self.limits.max_message_bytes;
        let xml_len = payload.len().saturating_sub(TAG_LEN);
        if xml_len > max {
            return Err(ControlError::TooLarge { len: xml_len, max });
        }
        let (tag, xml) = payload
            .split_first_chunk::<TAG_LEN>()
            .ok_or(ControlError::Truncated)?;
        let mut mac = self.key.0.clone();
        mac.update(xml);
        mac.verify_slice(tag).map_err(|_| ControlError::BadTag)?;
        let xml =
            std::str::from_utf8(xml).map_err(|e| ControlError::Xml(format!("not UTF-8: {e}")))?;
        let msg = decode_xml(xml, &self.limits)?;

        let window = self.limits.replay_window_ms;
        let skew = i128::from(msg.time_ms) - i128::from(now_ms);
        if skew.unsigned_abs() > u128::from(window) {
            let skew_ms = i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX });
            return Err(ControlError::Stale { skew_ms });
        }
        self.replay.expire(now_ms);
        // The message stays fresh until its own time plus the window, however early it
        // arrived, so that is when its tag may be forgotten.
        if !self.replay.insert(*tag, msg.time_ms.saturating_add(window)) {
            return Err(ControlError::Replay);
        }
        Ok(msg)
    }
}

/// Tags of accepted messages, each with the time after which its message is stale anyway.
#[derive(Debug, Default)]
struct ReplayCache {
    tags: HashSet<[u8; TAG_LEN]>,
    by_expiry: BTreeSet<(u64, [u8; TAG_LEN])>,
}

impl ReplayCache {
    fn expire(&mut self, now_ms: u64) {
        while let Some(&(expires, tag)) = self.by_expiry.first() {
            if expires >= now_ms {
                break;
            }
            self.by_expiry.pop_first();
            self.tags.remove(&tag);
        }
    }

    /// False if the tag is already there.
    fn insert(&mut self, tag: [u8; TAG_LEN], expires_ms: u64) -> bool {
        if self.tags.contains(&tag) {
            return false;
        }
        while self.tags.len() >= REPLAY_CACHE_CAP {
            match self.by_expiry.pop_first() {
                Some((_, old)) => {
                    self.tags.remove(&old);
                }
                None => break,
            }
        }
        self.tags.insert(tag);
        self.by_expiry.insert((expires_ms, tag));
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tags.len()
    }
}

/// Control connections carry sealed messages behind a u32 big-endian length; a longer
/// frame than the largest sealed message is refused before it is buffered.
pub fn framing(limits: &Limits) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(limits.max_message_bytes.saturating_add(TAG_LEN))
        .new_codec()
}

#[cfg(test)]
impl Codec {
    pub(super) fn replay_len(&self) -> usize {
        self.replay.len()
    }
}
