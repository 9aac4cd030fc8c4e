//! The messages that cross the link, as plain Rust values.
//!
//! This file is the contract between the encoder unit and the protocol unit. The byte
//! layout lives in [`crate::codec`]; nothing here knows about sockets.
//!
//! Conversation, whoever dialled whom:
//! 1. both sides send [`Message::Hello`] with a fresh nonce, then [`Message::Auth`] proving
//!    knowledge of the pre-shared key (see [`crate::handshake`]);
//! 2. the protocol unit sends [`Message::Open`] for a VoD asset under a channel id it picks;
//!    the encoder answers [`Message::Announce`] (tracks and codec parameters) or
//!    [`Message::Error`] with that channel id. An opened channel is paused at position 0;
//! 3. [`Message::Seek`] (start or jump: the encoder answers [`Message::SeekDone`] with the
//!    keyframe position it really starts from, then frames) or [`Message::Resume`] (go on
//!    from where it stopped) start the flow; [`Message::Pause`] stops it;
//!    [`Message::Close`] ends the channel;
//! 4. frames flow only while the sender holds credits: the receiver grants
//!    [`Message::Credits`] (in frames) as it consumes them, which bounds how far the encoder
//!    runs ahead of the protocol unit;
//! 5. live channels are different: the protocol unit sends [`Message::Subscribe`] once per
//!    (channel, rendition) it has viewers for; the encoder answers [`Message::Announce`]
//!    (no duration) and then pushes frames in real time, starting at a keyframe, without
//!    credits (a live encoder cannot wait). [`Message::Status`] tells when the input
//!    stalls or comes back; [`Message::Close`] unsubscribes;
//! 6. an encrypted channel gets [`Message::ContentKey`] before the first frame under each
//!    key: frames flagged [`FrameFlags::ENCRYPTED`] were encrypted by the encoder, frames
//!    flagged [`FrameFlags::EDGE_ENCRYPT`] are plaintext that the protocol unit encrypts with
//!    the same key and the same payload format (see `crate::content`) before sending.
//! 7. reflectors (relays between an encoder unit and protocol units) add three things:
//!    [`Message::Path`] before a Subscribe (the relays the request came through) and before
//!    an Announce (the nodes the channel crossed, origin first), so loops are refused and
//!    depth is capped; [`Message::Ping`] / [`Message::Pong`] on the link itself, so a parent
//!    that went silent without closing is noticed within a fraction of a second; and
//!    [`Message::GoingAway`], a parent telling its children to move before it leaves.

use bytes::Bytes;

/// Identifies one stream of frames on a link: a VoD session or a live channel.
/// Chosen by the protocol unit when it opens a session. 0 means "the link itself".
pub type ChannelId = u32;

/// Wire format version. Bumped on any incompatible change to [`crate::codec`].
pub const PROTOCOL_VERSION: u16 = 3;

/// The elementary stream format of a track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// H.264 / AVC. Frame data is Annex B (start-code delimited NAL units); keyframes
    /// carry SPS and PPS in band.
    H264,
    /// AAC. Frame data is one raw access unit (no ADTS header).
    Aac,
    /// Opus. Frame data is one Opus packet.
    Opus,
    /// AV1. Frame data is one temporal unit of OBUs in the low-overhead bitstream format
    /// (with size fields); keyframes carry the sequence header OBU.
    Av1,
}

impl Codec {
    /// Wire code.
    pub fn to_u8(self) -> u8 {
        match self {
            Codec::H264 => 1,
            Codec::Aac => 2,
            Codec::Opus => 3,
            Codec::Av1 => 4,
        }
    }

    /// Parse a wire code; `None` for codes this version does not know.
    pub fn from_u8(v: u8) -> Option<Codec> {
        match v {
            1 => Some(Codec::H264),
            2 => Some(Codec::Aac),
            3 => Some(Codec::Opus),
            4 => Some(Codec::Av1),
            _ => None,
        }
    }

    /// Whether this is a video codec.
    pub fn is_video(self) -> bool {
        matches!(self, Codec::H264 | Codec::Av1)
    }
}

/// Per-frame flags, a bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrameFlags(pub u8);

impl FrameFlags {
    /// A random access point (IDR for H.264).
    pub const KEYFRAME: FrameFlags = FrameFlags(1);
    /// No other frame references this one: it may be dropped for a lower frame-rate tier.
    pub const DISPOSABLE: FrameFlags = FrameFlags(1 << 1);
    /// The payload is content-encrypted.
    pub const ENCRYPTED: FrameFlags = FrameFlags(1 << 2);
    /// The timeline jumps here (after a seek, a splice or an input change).
    pub const DISCONTINUITY: FrameFlags = FrameFlags(1 << 3);
    /// Last frame of the stream; `data` may be empty.
    pub const END_OF_STREAM: FrameFlags = FrameFlags(1 << 4);
    /// The payload is plaintext that the protocol unit must encrypt with the channel's
    /// current content key before sending (the share of the encryption work DIVISOR moves
    /// to the protocol unit). Never set together with [`FrameFlags::ENCRYPTED`].
    pub const EDGE_ENCRYPT: FrameFlags = FrameFlags(1 << 5);
    /// Bits 6-7 hold the frame's temporal layer, see [`FrameFlags::layer`].
    const LAYER_SHIFT: u8 = 6;
    const LAYER_MASK: u8 = 0b11 << 6;

    /// No flags.
    pub const fn empty() -> FrameFlags {
        FrameFlags(0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: FrameFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Set the bits of `other`.
    pub fn insert(&mut self, other: FrameFlags) {
        self.0 |= other.0;
    }

    /// Clear the bits of `other`.
    pub fn remove(&mut self, other: FrameFlags) {
        self.0 &= !other.0;
    }

    /// Temporal layer of a video frame, for frame-rate tiers without re-encoding:
    /// 0 = base layer (keyframes and the frames of the quarter-rate tier), 1 = frames added
    /// for the half-rate tier, 2 = frames added for full rate. A tier that keeps layers
    /// `0..=n` never loses a frame that a kept frame references. Audio is always layer 0.
    pub const fn layer(self) -> u8 {
        (self.0 & Self::LAYER_MASK) >> Self::LAYER_SHIFT
    }

    /// These flags with the temporal layer set to `layer` (0..=3; higher bits ignored).
    pub const fn with_layer(self, layer: u8) -> FrameFlags {
        FrameFlags((self.0 & !Self::LAYER_MASK) | ((layer & 0b11) << Self::LAYER_SHIFT))
    }
}

impl std::ops::BitOr for FrameFlags {
    type Output = FrameFlags;
    fn bitor(self, rhs: FrameFlags) -> FrameFlags {
        FrameFlags(self.0 | rhs.0)
    }
}

/// One encoded access unit with its timing. Not yet packetised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub channel: ChannelId,
    /// Index into the channel's announced tracks.
    pub track: u8,
    pub codec: Codec,
    pub flags: FrameFlags,
    /// Presentation time in the track's clock ([`TrackInfo::clock_rate`]).
    pub pts: i64,
    /// Decode time in the track's clock. Frames of a track are sent in dts order.
    pub dts: i64,
    /// Duration in the track's clock, 0 if unknown.
    pub duration: u32,
    pub data: Bytes,
}

/// Description of one track of a channel, enough to write SDP and packetise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackInfo {
    /// Index of the track within the channel (matches [`Frame::track`]).
    pub track: u8,
    pub codec: Codec,
    /// RTP clock: 90000 for video, the sample rate for audio (48000 for Opus).
    pub clock_rate: u32,
    /// Video width in pixels (0 for audio).
    pub width: u16,
    /// Video height in pixels (0 for audio).
    pub height: u16,
    /// Audio sample rate in Hz (0 for video).
    pub sample_rate: u32,
    /// Audio channel count (0 for video).
    pub channels: u8,
    /// Average bit rate in bit/s, 0 if unknown.
    pub bitrate: u32,
    /// Codec parameters. H.264: the SPS and PPS NAL units without start codes.
    /// AAC: one element, the AudioSpecificConfig. Opus: empty.
    pub params: Vec<Bytes>,
}

/// Which unit is speaking; part of what the handshake MAC covers, so a captured
/// answer from one side cannot be replayed as the other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Encoder,
    Protocol,
}

impl Role {
    pub fn to_u8(self) -> u8 {
        match self {
            Role::Encoder => 1,
            Role::Protocol => 2,
        }
    }
    pub fn from_u8(v: u8) -> Option<Role> {
        match v {
            1 => Some(Role::Encoder),
            2 => Some(Role::Protocol),
            _ => None,
        }
    }
}

/// Why a request failed. Sent in [`Message::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The peer's handshake MAC did not verify: the link keys differ.
    AuthFailed,
    /// The peer speaks another [`PROTOCOL_VERSION`].
    VersionMismatch,
    /// A message could not be decoded.
    Malformed,
    /// The asset or channel does not exist.
    NotFound,
    /// The asset name points outside the library.
    Forbidden,
    /// The file exists but holds no track we can stream.
    UnsupportedMedia,
    /// A request that makes no sense in the current state (e.g. seek on an unopened channel).
    BadRequest,
    /// The rendition named in an open or subscribe is not in the ladder.
    NoSuchRendition,
    /// Anything else that went wrong on the sender's side.
    Internal,
}

impl ErrorCode {
    pub fn to_u8(self) -> u8 {
        match self {
            ErrorCode::AuthFailed => 1,
            ErrorCode::VersionMismatch => 2,
            ErrorCode::Malformed => 3,
            ErrorCode::NotFound => 4,
            ErrorCode::Forbidden => 5,
            ErrorCode::UnsupportedMedia => 6,
            ErrorCode::BadRequest => 7,
            ErrorCode::Internal => 8,
            ErrorCode::NoSuchRendition => 9,
        }
    }
    pub fn from_u8(v: u8) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::AuthFailed,
            2 => ErrorCode::VersionMismatch,
            3 => ErrorCode::Malformed,
            4 => ErrorCode::NotFound,
            5 => ErrorCode::Forbidden,
            6 => ErrorCode::UnsupportedMedia,
            7 => ErrorCode::BadRequest,
            8 => ErrorCode::Internal,
            9 => ErrorCode::NoSuchRendition,
            _ => return None,
        })
    }
}

/// State of a live channel's input, sent in [`Message::Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Frames are flowing.
    Live,
    /// The input has sent nothing for a while; subscribers stay, frames resume when it does.
    Stalled,
    /// The channel was removed; no more frames will come.
    Ended,
}

impl ChannelState {
    pub fn to_u8(self) -> u8 {
        match self {
            ChannelState::Live => 1,
            ChannelState::Stalled => 2,
            ChannelState::Ended => 3,
        }
    }
    pub fn from_u8(v: u8) -> Option<ChannelState> {
        Some(match v {
            1 => ChannelState::Live,
            2 => ChannelState::Stalled,
            3 => ChannelState::Ended,
            _ => return None,
        })
    }
}

/// Content cipher of an encrypted channel, sent in [`Message::ContentKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// DES-CBC, 8-byte key. DIVISOR's workload. Insecure: for measurement only.
    DesCbc,
    /// AES-128 in counter mode, 16-byte key. The default.
    Aes128Ctr,
}

impl Cipher {
    pub fn to_u8(self) -> u8 {
        match self {
            Cipher::DesCbc => 1,
            Cipher::Aes128Ctr => 2,
        }
    }
    pub fn from_u8(v: u8) -> Option<Cipher> {
        Some(match v {
            1 => Cipher::DesCbc,
            2 => Cipher::Aes128Ctr,
            _ => return None,
        })
    }
}

/// Everything that crosses the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// First message each side sends: version, role and a fresh random nonce.
    Hello {
        version: u16,
        role: Role,
        nonce: [u8; 32],
    },
    /// Second message: HMAC-SHA256 over the handshake transcript (see [`crate::handshake`]).
    Auth { mac: [u8; 32] },
    /// Protocol -> encoder: open the VoD asset `asset` (a file name in the library) as
    /// `channel`, in `rendition` of the ladder ("" = the source as stored).
    Open {
        channel: ChannelId,
        asset: String,
        rendition: String,
    },
    /// Protocol -> encoder: send the live channel `name` in `rendition` ("" = the channel's
    /// first rendition) as `channel`, from the next keyframe on, until [`Message::Close`].
    Subscribe {
        channel: ChannelId,
        name: String,
        rendition: String,
    },
    /// Encoder -> protocol: a live channel's input changed state; `detail` says why.
    Status {
        channel: ChannelId,
        state: ChannelState,
        detail: String,
    },
    /// Encoder -> protocol: the content key `key_id` of `channel`. Frames encrypted under it
    /// (by either unit) name `key_id` in their payload header. Sent before its first frame;
    /// the previous key stays valid until frames stop naming it (rotation).
    ContentKey {
        channel: ChannelId,
        key_id: u32,
        cipher: Cipher,
        key: Bytes,
    },
    /// Encoder -> protocol: the channel's tracks. `duration_ms` is `None` for live.
    Announce {
        channel: ChannelId,
        duration_ms: Option<u64>,
        tracks: Vec<TrackInfo>,
    },
    /// Protocol -> encoder: (re)start the channel at `position_ms`; `request` is echoed in
    /// [`Message::SeekDone`] so frames of an older position can be told apart.
    Seek {
        channel: ChannelId,
        request: u32,
        position_ms: u64,
    },
    /// Encoder -> protocol: the seek `request` took effect; the next frames of the channel
    /// start at the keyframe at `position_ms` (at or before the asked position).
    SeekDone {
        channel: ChannelId,
        request: u32,
        position_ms: u64,
    },
    /// Protocol -> encoder: stop sending frames of the channel, keep the position.
    Pause { channel: ChannelId },
    /// Protocol -> encoder: go on sending from where the channel stopped.
    Resume { channel: ChannelId },
    /// Protocol -> encoder: the channel is finished; free it.
    Close { channel: ChannelId },
    /// Protocol -> encoder: a client needs a keyframe soon (PLI/FIR, a late joiner).
    KeyframeRequest { channel: ChannelId, track: u8 },
    /// Receiver -> sender: permission to send `frames` more frames of `channel`.
    Credits { channel: ChannelId, frames: u32 },
    /// A request failed, or (channel 0) the link itself is being closed for `code`.
    Error {
        channel: ChannelId,
        code: ErrorCode,
        message: String,
    },
    /// One encoded frame.
    Frame(Frame),
    /// The route of `channel`. Sent by a relay right before its [`Message::Subscribe`]: the
    /// ids of the nodes the request came through, the first requester first. Sent by a relay
    /// right before its [`Message::Announce`]: the ids of the nodes the channel crossed, its
    /// origin first. Encoder and protocol units ignore it.
    Path {
        channel: ChannelId,
        nodes: Vec<String>,
    },
    /// Link liveness probe (channel 0); the peer answers [`Message::Pong`] with `seq`.
    Ping { seq: u32 },
    /// Answer to [`Message::Ping`].
    Pong { seq: u32 },
    /// The sender is about to leave (a reflector shutting down gracefully): move every
    /// subscription to another upstream, then close it here. The link stays up meanwhile.
    GoingAway { detail: String },
    /// Child -> parent reflector (channel 0): a control-plane report, the tree
    /// controller's XML (the subtree's aggregated statistics), carried up the data tree so
    /// each parent can fold its children into one report. Units ignore it.
    Report { xml: String },
}

impl Message {
    /// The message's kind, for logs and error texts.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Auth { .. } => "Auth",
            Message::Open { .. } => "Open",
            Message::Subscribe { .. } => "Subscribe",
            Message::Status { .. } => "Status",
            Message::ContentKey { .. } => "ContentKey",
            Message::Announce { .. } => "Announce",
            Message::Seek { .. } => "Seek",
            Message::SeekDone { .. } => "SeekDone",
            Message::Pause { .. } => "Pause",
            Message::Resume { .. } => "Resume",
            Message::Close { .. } => "Close",
            Message::KeyframeRequest { .. } => "KeyframeRequest",
            Message::Credits { .. } => "Credits",
            Message::Error { .. } => "Error",
            Message::Frame(_) => "Frame",
            Message::Path { .. } => "Path",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::GoingAway { .. } => "GoingAway",
            Message::Report { .. } => "Report",
        }
    }

    /// This message re-addressed to channel `id` (handshake messages are returned as they
    /// are). Stages and live channels build messages once and address them per receiver.
    pub fn with_channel(mut self, id: ChannelId) -> Message {
        match &mut self {
            Message::Hello { .. }
            | Message::Auth { .. }
            | Message::Ping { .. }
            | Message::Pong { .. }
            | Message::GoingAway { .. }
            | Message::Report { .. } => {}
            Message::Path { channel, .. }
            | Message::Open { channel, .. }
            | Message::Subscribe { channel, .. }
            | Message::Status { channel, .. }
            | Message::ContentKey { channel, .. }
            | Message::Announce { channel, .. }
            | Message::Seek { channel, .. }
            | Message::SeekDone { channel, .. }
            | Message::Pause { channel }
            | Message::Resume { channel }
            | Message::Close { channel }
            | Message::KeyframeRequest { channel, .. }
            | Message::Credits { channel, .. }
            | Message::Error { channel, .. }
            | Message::Frame(Frame { channel, .. }) => *channel = id,
        }
        self
    }
}
