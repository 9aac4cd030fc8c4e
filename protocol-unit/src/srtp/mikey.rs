//! MIKEY (RFC 3830) messages, the subset GStreamer's RTSP client and server exchange.
//!
//! GStreamer (`gst_mikey_message_new_from_caps`, used by gst-rtsp-server for the SDP and by
//! `rtspsrc` for its `KeyMgmt` header) sends a PSK-init message with no pre-shared key at
//! all: the header with one SRTP crypto session per sending SSRC (policy 0, SSRC, ROC), a
//! timestamp (NTP-UTC), 16 random bytes, one security-policy payload describing the SRTP
//! profile, and a KEMAC payload with NULL encryption and NULL MAC whose single key-data
//! sub-payload is a TEK holding the 30-byte SRTP master key || master salt in the clear.
//! The key is thus only as secret as the RTSP connection carrying it (GStreamer relies on
//! RTSP over TLS for that).
//!
//! Why by hand: the only Rust MIKEY crate (`mykey`) is self-described as experimental and
//! unaudited, is built around DH/PSK exchanges for AES67, and does not model GStreamer's
//! NULL-KEMAC transport. The subset here is small, and every length is checked: decoding
//! returns a [`MikeyError`] naming what was wrong and never panics.

use base64::Engine as _;

use super::SrtpKeys;

/// MIKEY version 1, the only one defined.
pub const VERSION: u8 = 1;
/// PRF function MIKEY-1.
pub const PRF_MIKEY_1: u8 = 0;
/// Crypto-session ID map type SRTP-ID.
pub const MAP_TYPE_SRTP: u8 = 0;
/// Security-policy protocol type SRTP.
pub const SEC_PROTO_SRTP: u8 = 0;

/// Payload type numbers (RFC 3830 §6.1); `LAST` ends the chain.
mod pt {
    pub const LAST: u8 = 0;
    pub const KEMAC: u8 = 1;
    pub const T: u8 = 5;
    pub const SP: u8 = 10;
    pub const RAND: u8 = 11;
    pub const KEY_DATA: u8 = 20;
}

/// SRTP security-policy parameter types (RFC 3830 §6.10.1).
pub mod sp {
    pub const ENC_ALG: u8 = 0;
    pub const ENC_KEY_LEN: u8 = 1;
    pub const AUTH_ALG: u8 = 2;
    pub const AUTH_KEY_LEN: u8 = 3;
    pub const SALT_KEY_LEN: u8 = 4;
    pub const SRTP_ENC: u8 = 7;
    pub const SRTCP_ENC: u8 = 8;
    pub const SRTP_AUTH: u8 = 10;
    pub const AUTH_TAG_LEN: u8 = 11;
    /// Encryption algorithm value AES-CM.
    pub const ENC_AES_CM: u8 = 1;
    /// Authentication algorithm value HMAC-SHA-1.
    pub const AUTH_HMAC_SHA1: u8 = 1;
}

/// Why a MIKEY message could not be read or written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MikeyError {
    #[error("MIKEY data is not valid base64: {0}")]
    Base64(String),
    #[error("MIKEY message truncated in {what}: need {need} bytes, {have} left")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("MIKEY version {0} is not supported (only 1)")]
    UnsupportedVersion(u8),
    #[error("unknown MIKEY data type {0}")]
    UnknownDataType(u8),
    #[error("MIKEY crypto-session map type {0} is not supported (only SRTP-ID, 0)")]
    UnsupportedMapType(u8),
    #[error("MIKEY payload type {0} is not supported")]
    UnsupportedPayload(u8),
    #[error("MIKEY payload type {0} is not allowed inside a KEMAC")]
    UnexpectedSubPayload(u8),
    #[error("KEMAC with encryption {enc_alg} / MAC {mac_alg} needs a pre-shared key; only NULL/NULL is supported")]
    ProtectedKemac { enc_alg: u8, mac_alg: u8 },
    #[error("unknown MIKEY timestamp type {0}")]
    UnknownTimestampType(u8),
    #[error("unknown MIKEY key type {0}")]
    UnknownKeyType(u8),
    #[error("unknown MIKEY key validity type {0}")]
    UnknownKeyValidity(u8),
    #[error("{0} bytes after the last MIKEY payload")]
    TrailingBytes(usize),
    #[error("MIKEY field {0} is too long to encode")]
    TooLong(&'static str),
    #[error("MIKEY message carries no TEK key data")]
    NoKey,
    #[error("MIKEY security policy is not SRTP (protocol {0})")]
    NotSrtp(u8),
    #[error("MIKEY SRTP policy parameter {param} = {value} is not AES_CM_128_HMAC_SHA1_80")]
    UnsupportedPolicy { param: u8, value: u8 },
    #[error("MIKEY TEK of {key} bytes (salt {salt}) is not a 16-byte key and 14-byte salt")]
    BadKeyLength { key: usize, salt: usize },
    #[error("SDP key-mgmt attribute is not `mikey <base64>`")]
    NotMikeyAttribute,
    #[error("KeyMgmt header: {0}")]
    BadKeyMgmtHeader(&'static str),
}

/// MIKEY message data type (RFC 3830 §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    PskInit,
    PskVerify,
    PkInit,
    PkVerify,
    DhInit,
    DhResp,
    Error,
}

impl DataType {
    fn from_u8(v: u8) -> Result<Self, MikeyError> {
        Ok(match v {
            0 => Self::PskInit,
            1 => Self::PskVerify,
            2 => Self::PkInit,
            3 => Self::PkVerify,
            4 => Self::DhInit,
            5 => Self::DhResp,
            6 => Self::Error,
            other => return Err(MikeyError::UnknownDataType(other)),
        })
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::PskInit => 0,
            Self::PskVerify => 1,
            Self::PkInit => 2,
            Self::PkVerify => 3,
            Self::DhInit => 4,
            Self::DhResp => 5,
            Self::Error => 6,
        }
    }
}

/// One SRTP crypto session of the header's SRTP-ID map: which policy protects which SSRC,
/// and the rollover counter the receiver must start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoSession {
    pub policy: u8,
    pub ssrc: u32,
    pub roc: u32,
}

/// Timestamp payload value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timestamp {
    /// 64-bit NTP time, UTC (what GStreamer sends).
    NtpUtc(u64),
    Ntp(u64),
    Counter(u32),
}

/// One security-policy parameter (type, value bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyParam {
    pub kind: u8,
    pub value: Vec<u8>,
}

/// Security-policy payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityPolicy {
    pub policy: u8,
    pub protocol: u8,
    pub params: Vec<PolicyParam>,
}

impl SecurityPolicy {
    /// First byte of parameter `kind`, if present.
    pub fn param_u8(&self, kind: u8) -> Option<u8> {
        self.params
            .iter()
            .find(|p| p.kind == kind)
            .and_then(|p| p.value.first().copied())
    }
}

/// Key type of a key-data sub-payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// TEK generation key.
    Tgk,
    /// Traffic-encrypting key: for SRTP, the master key (and, from GStreamer, the salt).
    Tek,
}

/// Key validity of a key-data sub-payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyValidity {
    Null,
    Spi(Vec<u8>),
    Interval { from: Vec<u8>, to: Vec<u8> },
}

/// Key-data sub-payload of a KEMAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyData {
    pub key_type: KeyType,
    pub key: Vec<u8>,
    pub salt: Option<Vec<u8>>,
    pub validity: KeyValidity,
}

/// A MIKEY payload of the supported subset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Timestamp(Timestamp),
    Rand(Vec<u8>),
    SecurityPolicy(SecurityPolicy),
    /// KEMAC with NULL encryption and NULL MAC: the key data in the clear.
    Kemac(Vec<KeyData>),
}

impl Payload {
    fn type_number(&self) -> u8 {
        match self {
            Self::Timestamp(_) => pt::T,
            Self::Rand(_) => pt::RAND,
            Self::SecurityPolicy(_) => pt::SP,
            Self::Kemac(_) => pt::KEMAC,
        }
    }
}

/// A MIKEY message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MikeyMessage {
    pub data_type: DataType,
    /// The V flag: a verification message is requested.
    pub verify: bool,
    pub prf: u8,
    pub csb_id: u32,
    pub crypto_sessions: Vec<CryptoSession>,
    pub payloads: Vec<Payload>,
}

impl MikeyMessage {
    /// The message GStreamer's `gst_mikey_message_new_from_caps` builds for
    /// AES_CM_128_HMAC_SHA1_80, with `crypto_sessions` added as gst-rtsp-server does (one
    /// per sending SSRC, policy 0). The caller supplies the random parts and the clock, so
    /// the function is deterministic: `ntp_utc` is the 64-bit NTP time of now, `rand` 16
    /// random bytes, `csb_id` a random crypto-session-bundle id.
    pub fn srtp_offer(
        keys: &SrtpKeys,
        crypto_sessions: Vec<CryptoSession>,
        csb_id: u32,
        ntp_utc: u64,
        rand: [u8; 16],
    ) -> Self {
        let on = vec![1u8];
        let params = vec![
            PolicyParam {
                kind: sp::ENC_ALG,
                value: vec![sp::ENC_AES_CM],
            },
            PolicyParam {
                kind: sp::ENC_KEY_LEN,
                value: vec![SrtpKeys::KEY_LEN as u8],
            },
            PolicyParam {
                kind: sp::AUTH_ALG,
                value: vec![sp::AUTH_HMAC_SHA1],
            },
            // GStreamer reads this parameter as the tag length (10 → 80-bit tag, 4 →
            // 32-bit) and writes 10; we write the same so every GStreamer version agrees.
            PolicyParam {
                kind: sp::AUTH_KEY_LEN,
                value: vec![10],
            },
            PolicyParam {
                kind: sp::SALT_KEY_LEN,
                value: vec![SrtpKeys::SALT_LEN as u8],
            },
            PolicyParam {
                kind: sp::SRTP_ENC,
                value: on.clone(),
            },
            PolicyParam {
                kind: sp::SRTCP_ENC,
                value: on.clone(),
            },
            PolicyParam {
                kind: sp::SRTP_AUTH,
                value: on,
            },
            PolicyParam {
                kind: sp::AUTH_TAG_LEN,
                value: vec![10],
            },
        ];
        Self {
            data_type: DataType::PskInit,
            verify: false,
            prf: PRF_MIKEY_1,
            csb_id,
            crypto_sessions,
            payloads: vec![
                Payload::Timestamp(Timestamp::NtpUtc(ntp_utc)),
                Payload::Rand(rand.to_vec()),
                Payload::SecurityPolicy(SecurityPolicy {
                    policy: 0,
                    protocol: SEC_PROTO_SRTP,
                    params,
                }),
                Payload::Kemac(vec![KeyData {
                    key_type: KeyType::Tek,
                    key: keys.concat().to_vec(),
                    salt: None,
                    validity: KeyValidity::Null,
                }]),
            ],
        }
    }

    /// The SRTP master key and salt this message carries, after checking its security
    /// policy (when present) asks for AES_CM_128_HMAC_SHA1_80. Accepts the key and salt
    /// concatenated in one TEK (GStreamer) or as TEK + salt (RFC 3830 TEK+SALT).
    pub fn srtp_keys(&self) -> Result<SrtpKeys, MikeyError> {
        for payload in &self.payloads {
            if let Payload::SecurityPolicy(policy) = payload {
                check_srtp_policy(policy)?;
            }
        }
        let tek = self
            .payloads
            .iter()
            .filter_map(|p| match p {
                Payload::Kemac(keys) => Some(keys),
                _ => None,
            })
            .flatten()
            .find(|k| k.key_type == KeyType::Tek)
            .ok_or(MikeyError::NoKey)?;
        let salt_len = tek.salt.as_ref().map_or(0, Vec::len);
        let bad = MikeyError::BadKeyLength {
            key: tek.key.len(),
            salt: salt_len,
        };
        match &tek.salt {
            Some(salt) => {
                let mut both = tek.key.clone();
                both.extend_from_slice(salt);
                if tek.key.len() != SrtpKeys::KEY_LEN {
                    return Err(bad);
                }
                SrtpKeys::from_concat(&both).ok_or(bad)
            }
            None => SrtpKeys::from_concat(&tek.key).ok_or(bad),
        }
    }

    /// The rollover counter announced for `ssrc`, if the header maps it.
    pub fn roc_for(&self, ssrc: u32) -> Option<u32> {
        self.crypto_sessions
            .iter()
            .find(|cs| cs.ssrc == ssrc)
            .map(|cs| cs.roc)
    }

    /// Serialise to the RFC 3830 wire format.
    pub fn encode(&self) -> Result<Vec<u8>, MikeyError> {
        let mut out = Vec::with_capacity(128);
        out.push(VERSION);
        out.push(self.data_type.to_u8());
        out.push(self.payloads.first().map_or(pt::LAST, Payload::type_number));
        out.push(if self.verify { 0x80 } else { 0 } | (self.prf & 0x7f));
        out.extend_from_slice(&self.csb_id.to_be_bytes());
        out.push(u8_len(self.crypto_sessions.len(), "#CS")?);
        out.push(MAP_TYPE_SRTP);
        for cs in &self.crypto_sessions {
            out.push(cs.policy);
            out.extend_from_slice(&cs.ssrc.to_be_bytes());
            out.extend_from_slice(&cs.roc.to_be_bytes());
        }
        for (i, payload) in self.payloads.iter().enumerate() {
            let next = self
                .payloads
                .get(i + 1)
                .map_or(pt::LAST, Payload::type_number);
            encode_payload(payload, next, &mut out)?;
        }
        Ok(out)
    }

    /// Parse the RFC 3830 wire format (the subset in this module's doc).
    pub fn decode(data: &[u8]) -> Result<Self, MikeyError> {
        let mut r = Reader { data, pos: 0 };
        let version = r.u8("header")?;
        if version != VERSION {
            return Err(MikeyError::UnsupportedVersion(version));
        }
        let data_type = DataType::from_u8(r.u8("header")?)?;
        let mut next = r.u8("header")?;
        let vprf = r.u8("header")?;
        let csb_id = r.u32("header")?;
        let n_cs = r.u8("header")?;
        let map_type = r.u8("header")?;
        if map_type != MAP_TYPE_SRTP {
            return Err(MikeyError::UnsupportedMapType(map_type));
        }
        let mut crypto_sessions = Vec::with_capacity(n_cs as usize);
        for _ in 0..n_cs {
            crypto_sessions.push(CryptoSession {
                policy: r.u8("crypto-session map")?,
                ssrc: r.u32("crypto-session map")?,
                roc: r.u32("crypto-session map")?,
            });
        }
        let mut payloads = Vec::new();
        while next != pt::LAST {
            let (payload, following) = decode_payload(next, &mut r)?;
            payloads.push(payload);
            next = following;
        }
        if r.remaining() > 0 {
            return Err(MikeyError::TrailingBytes(r.remaining()));
        }
        Ok(Self {
            data_type,
            verify: vprf & 0x80 != 0,
            prf: vprf & 0x7f,
            csb_id,
            crypto_sessions,
            payloads,
        })
    }

    /// Base64 of the encoded message, as carried in SDP and in `KeyMgmt`.
    pub fn to_base64(&self) -> Result<String, MikeyError> {
        Ok(base64::engine::general_purpose::STANDARD.encode(self.encode()?))
    }

    /// Parse base64 text (surrounding whitespace allowed).
    pub fn from_base64(text: &str) -> Result<Self, MikeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| MikeyError::Base64(e.to_string()))?;
        Self::decode(&bytes)
    }

    /// The value of the SDP media attribute `a=key-mgmt:` (RFC 4567): `mikey <base64>`.
    pub fn sdp_key_mgmt_value(&self) -> Result<String, MikeyError> {
        Ok(format!("mikey {}", self.to_base64()?))
    }

    /// Parse the value of an SDP `a=key-mgmt:` attribute.
    pub fn from_sdp_key_mgmt(value: &str) -> Result<Self, MikeyError> {
        let rest = value
            .trim()
            .strip_prefix("mikey")
            .filter(|r| r.starts_with([' ', '\t']))
            .ok_or(MikeyError::NotMikeyAttribute)?;
        Self::from_base64(rest)
    }
}

fn check_srtp_policy(policy: &SecurityPolicy) -> Result<(), MikeyError> {
    if policy.protocol != SEC_PROTO_SRTP {
        return Err(MikeyError::NotSrtp(policy.protocol));
    }
    let want: [(u8, &[u8]); 6] = [
        (sp::ENC_ALG, &[sp::ENC_AES_CM]),
        (sp::ENC_KEY_LEN, &[SrtpKeys::KEY_LEN as u8]),
        (sp::AUTH_ALG, &[sp::AUTH_HMAC_SHA1]),
        // 10 as GStreamer's tag length, 20 as RFC 3830's HMAC-SHA1 key length.
        (sp::AUTH_KEY_LEN, &[10, 20]),
        (sp::SALT_KEY_LEN, &[SrtpKeys::SALT_LEN as u8]),
        (sp::AUTH_TAG_LEN, &[10]),
    ];
    for (param, allowed) in want {
        if let Some(value) = policy.param_u8(param) {
            if !allowed.contains(&value) {
                return Err(MikeyError::UnsupportedPolicy { param, value });
            }
        }
    }
    Ok(())
}

fn u8_len(len: usize, what: &'static str) -> Result<u8, MikeyError> {
    u8::try_from(len).map_err(|_| MikeyError::TooLong(what))
}

fn u16_len(len: usize, what: &'static str) -> Result<[u8; 2], MikeyError> {
    u16::try_from(len)
        .map(u16::to_be_bytes)
        .map_err(|_| MikeyError::TooLong(what))
}

fn encode_payload(payload: &Payload, next: u8, out: &mut Vec<u8>) -> Result<(), MikeyError> {
    out.push(next);
    match payload {
        Payload::Timestamp(ts) => match ts {
            Timestamp::NtpUtc(v) => {
                out.push(0);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Timestamp::Ntp(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Timestamp::Counter(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_be_bytes());
            }
        },
        Payload::Rand(rand) => {
            out.push(u8_len(rand.len(), "RAND")?);
            out.extend_from_slice(rand);
        }
        Payload::SecurityPolicy(policy) => {
            out.push(policy.policy);
            out.push(policy.protocol);
            let plen: usize = policy.params.iter().map(|p| 2 + p.value.len()).sum();
            out.extend_from_slice(&u16_len(plen, "security policy")?);
            for param in &policy.params {
                out.push(param.kind);
                out.push(u8_len(param.value.len(), "policy parameter")?);
                out.extend_from_slice(&param.value);
            }
        }
        Payload::Kemac(keys) => {
            out.push(0); // encryption NULL
            let mut encr = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                let next = if i + 1 < keys.len() {
                    pt::KEY_DATA
                } else {
                    pt::LAST
                };
                encode_key_data(key, next, &mut encr)?;
            }
            out.extend_from_slice(&u16_len(encr.len(), "KEMAC")?);
            out.extend_from_slice(&encr);
            out.push(0); // MAC NULL, no MAC bytes
        }
    }
    Ok(())
}

fn encode_key_data(key: &KeyData, next: u8, out: &mut Vec<u8>) -> Result<(), MikeyError> {
    out.push(next);
    let base = match key.key_type {
        KeyType::Tgk => 0u8,
        KeyType::Tek => 2u8,
    };
    let kind = base | u8::from(key.salt.is_some());
    let kv = match key.validity {
        KeyValidity::Null => 0u8,
        KeyValidity::Spi(_) => 1,
        KeyValidity::Interval { .. } => 2,
    };
    out.push((kind << 4) | kv);
    out.extend_from_slice(&u16_len(key.key.len(), "key data")?);
    out.extend_from_slice(&key.key);
    if let Some(salt) = &key.salt {
        out.extend_from_slice(&u16_len(salt.len(), "salt")?);
        out.extend_from_slice(salt);
    }
    match &key.validity {
        KeyValidity::Null => {}
        KeyValidity::Spi(spi) => {
            out.push(u8_len(spi.len(), "SPI")?);
            out.extend_from_slice(spi);
        }
        KeyValidity::Interval { from, to } => {
            out.push(u8_len(from.len(), "valid-from")?);
            out.extend_from_slice(from);
            out.push(u8_len(to.len(), "valid-to")?);
            out.extend_from_slice(to);
        }
    }
    Ok(())
}

/// Decode the payload of type `kind`; returns it and the next payload type.
fn decode_payload(kind: u8, r: &mut Reader<'_>) -> Result<(Payload, u8), MikeyError> {
    let next = r.u8("payload header")?;
    let payload = match kind {
        pt::T => {
            let ts = match r.u8("timestamp")? {
                0 => Timestamp::NtpUtc(r.u64("timestamp")?),
                1 => Timestamp::Ntp(r.u64("timestamp")?),
                2 => Timestamp::Counter(r.u32("timestamp")?),
                other => return Err(MikeyError::UnknownTimestampType(other)),
            };
            Payload::Timestamp(ts)
        }
        pt::RAND => {
            let len = r.u8("RAND")? as usize;
            Payload::Rand(r.bytes(len, "RAND")?.to_vec())
        }
        pt::SP => {
            let policy = r.u8("security policy")?;
            let protocol = r.u8("security policy")?;
            let plen = r.u16("security policy")? as usize;
            let mut pr = Reader {
                data: r.bytes(plen, "security policy")?,
                pos: 0,
            };
            let mut params = Vec::new();
            while pr.remaining() > 0 {
                let kind = pr.u8("policy parameter")?;
                let len = pr.u8("policy parameter")? as usize;
                params.push(PolicyParam {
                    kind,
                    value: pr.bytes(len, "policy parameter")?.to_vec(),
                });
            }
            Payload::SecurityPolicy(SecurityPolicy {
                policy,
                protocol,
                params,
            })
        }
        pt::KEMAC => {
            let enc_alg = r.u8("KEMAC")?;
            let len = r.u16("KEMAC")? as usize;
            let encr = r.bytes(len, "KEMAC")?;
            let mac_alg = r.u8("KEMAC")?;
            if enc_alg != 0 || mac_alg != 0 {
                return Err(MikeyError::ProtectedKemac { enc_alg, mac_alg });
            }
            let mut kr = Reader { data: encr, pos: 0 };
            let mut keys = Vec::new();
            let mut sub = if kr.remaining() > 0 {
                pt::KEY_DATA
            } else {
                pt::LAST
            };
            while sub != pt::LAST {
                if sub != pt::KEY_DATA {
                    return Err(MikeyError::UnexpectedSubPayload(sub));
                }
                let (key, following) = decode_key_data(&mut kr)?;
                keys.push(key);
                sub = following;
            }
            if kr.remaining() > 0 {
                return Err(MikeyError::TrailingBytes(kr.remaining()));
            }
            Payload::Kemac(keys)
        }
        other => return Err(MikeyError::UnsupportedPayload(other)),
    };
    Ok((payload, next))
}

fn decode_key_data(r: &mut Reader<'_>) -> Result<(KeyData, u8), MikeyError> {
    let next = r.u8("key data")?;
    let type_kv = r.u8("key data")?;
    let kind = type_kv >> 4;
    let key_type = match kind {
        0 | 1 => KeyType::Tgk,
        2 | 3 => KeyType::Tek,
        other => return Err(MikeyError::UnknownKeyType(other)),
    };
    let key_len = r.u16("key data")? as usize;
    let key = r.bytes(key_len, "key data")?.to_vec();
    let salt = if kind & 1 == 1 {
        let len = r.u16("salt")? as usize;
        Some(r.bytes(len, "salt")?.to_vec())
    } else {
        None
    };
    let validity = match type_kv & 0x0f {
        0 => KeyValidity::Null,
        1 => {
            let len = r.u8("SPI")? as usize;
            KeyValidity::Spi(r.bytes(len, "SPI")?.to_vec())
        }
        2 => {
            let len = r.u8("valid-from")? as usize;
            let from = r.bytes(len, "valid-from")?.to_vec();
            let len = r.u8("valid-to")? as usize;
            let to = r.bytes(len, "valid-to")?.to_vec();
            KeyValidity::Interval { from, to }
        }
        other => return Err(MikeyError::UnknownKeyValidity(other)),
    };
    Ok((
        KeyData {
            key_type,
            key,
            salt,
            validity,
        },
        next,
    ))
}

/// A bounds-checked cursor: every read names what it was reading when it runs out.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], MikeyError> {
        if self.remaining() < n {
            return Err(MikeyError::Truncated {
                what,
                need: n,
                have: self.remaining(),
            });
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, MikeyError> {
        Ok(self.bytes(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, MikeyError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, MikeyError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, MikeyError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// One `prot=...; uri="..."; data="..."` entry of an RTSP `KeyMgmt` header (RFC 4567 §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMgmtEntry {
    pub uri: Option<String>,
    pub message: MikeyMessage,
}

/// Parse an RTSP `KeyMgmt` header value as `rtspsrc` sends it on SETUP:
/// `prot=mikey; uri="rtsp://host/path/stream=0"; data="<base64>"`, possibly several such
/// entries separated by commas. Entries for other protocols are skipped; a `mikey` entry
/// that does not parse is an error (GStreamer's server answers 463 Key Management Failure).
pub fn parse_key_mgmt_header(value: &str) -> Result<Vec<KeyMgmtEntry>, MikeyError> {
    let mut entries = Vec::new();
    for spec in split_unquoted(value, ',') {
        let mut prot = None;
        let mut uri = None;
        let mut data = None;
        for param in split_unquoted(spec, ';') {
            let param = param.trim();
            if param.is_empty() {
                continue;
            }
            let (key, val) = param
                .split_once('=')
                .ok_or(MikeyError::BadKeyMgmtHeader("parameter without '='"))?;
            let val = unquote(val.trim())?;
            match key.trim().to_ascii_lowercase().as_str() {
                "prot" => prot = Some(val),
                "uri" => uri = Some(val.to_string()),
                "data" => data = Some(val),
                _ => {}
            }
        }
        match prot {
            Some(p) if p.eq_ignore_ascii_case("mikey") => {
                let data = data.ok_or(MikeyError::BadKeyMgmtHeader("mikey entry without data"))?;
                entries.push(KeyMgmtEntry {
                    uri,
                    message: MikeyMessage::from_base64(data)?,
                });
            }
            Some(_) => {}
            None => return Err(MikeyError::BadKeyMgmtHeader("entry without prot")),
        }
    }
    if entries.is_empty() {
        return Err(MikeyError::BadKeyMgmtHeader("no mikey entry"));
    }
    Ok(entries)
}

/// Format a `KeyMgmt` header value the way GStreamer's `gst_sdp_make_keymgmt` does.
pub fn format_key_mgmt_header(uri: &str, message: &MikeyMessage) -> Result<String, MikeyError> {
    Ok(format!(
        "prot=mikey; uri=\"{uri}\"; data=\"{}\"",
        message.to_base64()?
    ))
}

fn unquote(v: &str) -> Result<&str, MikeyError> {
    match v.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or(MikeyError::BadKeyMgmtHeader("unterminated quote")),
        None => Ok(v),
    }
}

/// Split on `sep` where it is not inside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SrtpKeys {
        let mut concat = [0u8; 30];
        for (i, b) in concat.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        SrtpKeys::from_concat(&concat).unwrap()
    }

    fn offer() -> MikeyMessage {
        MikeyMessage::srtp_offer(
            &keys(),
            vec![CryptoSession {
                policy: 0,
                ssrc: 0xdead_beef,
                roc: 0,
            }],
            0x1234_5678,
            0xe000_0000_0000_0001,
            [7; 16],
        )
    }

    #[test]
    fn round_trip() {
        let msg = offer();
        let bytes = msg.encode().unwrap();
        assert_eq!(MikeyMessage::decode(&bytes).unwrap(), msg);
        assert_eq!(msg.srtp_keys().unwrap(), keys());
        assert_eq!(msg.roc_for(0xdead_beef), Some(0));
        let attr = msg.sdp_key_mgmt_value().unwrap();
        assert!(attr.starts_with("mikey "));
        assert_eq!(MikeyMessage::from_sdp_key_mgmt(&attr).unwrap(), msg);
    }

    #[test]
    fn wire_layout_matches_rfc3830() {
        let bytes = offer().encode().unwrap();
        // HDR: version 1, PSK init, next = T (5), PRF 0, CSB id, 1 CS, map SRTP-ID.
        assert_eq!(&bytes[..10], &[1, 0, 5, 0, 0x12, 0x34, 0x56, 0x78, 1, 0]);
        assert_eq!(&bytes[10..19], &[0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]);
        // T: next = RAND (11), NTP-UTC.
        assert_eq!(&bytes[19..21], &[11, 0]);
        // Last payload is the KEMAC: next 0, enc NULL, len 34 (4 + 30), key data TEK.
        let kemac = bytes.len() - (1 + 1 + 2 + 34 + 1);
        assert_eq!(&bytes[kemac..kemac + 4], &[0, 0, 0, 34]);
        assert_eq!(&bytes[kemac + 4..kemac + 8], &[0, 0x20, 0, 30]);
        assert_eq!(*bytes.last().unwrap(), 0, "MAC alg NULL");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = offer().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(MikeyMessage::decode(&bytes[..len]).is_err(), "len {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            MikeyMessage::decode(&longer),
            Err(MikeyError::TrailingBytes(1))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: mutate every byte of a valid message.
        let bytes = offer().encode().unwrap();
        for i in 0..bytes.len() {
            for v in [0u8, 1, 2, 3, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = MikeyMessage::decode(&b);
            }
        }
    }

    #[test]
    fn protected_kemac_and_wrong_policy_are_refused() {
        let mut bytes = offer().encode().unwrap();
        let kemac = bytes.len() - 39;
        bytes[kemac + 1] = 1; // AES-CM encrypted KEMAC
        assert!(matches!(
            MikeyMessage::decode(&bytes),
            Err(MikeyError::ProtectedKemac { enc_alg: 1, .. })
        ));

        let mut msg = offer();
        if let Payload::SecurityPolicy(p) = &mut msg.payloads[2] {
            p.params[0].value = vec![2]; // AES-F8
        }
        assert_eq!(
            msg.srtp_keys(),
            Err(MikeyError::UnsupportedPolicy { param: 0, value: 2 })
        );
    }

    #[test]
    fn tek_plus_salt_is_accepted() {
        let mut msg = offer();
        let k = keys();
        msg.payloads[3] = Payload::Kemac(vec![KeyData {
            key_type: KeyType::Tek,
            key: k.master_key.to_vec(),
            salt: Some(k.master_salt.to_vec()),
            validity: KeyValidity::Spi(vec![1, 2]),
        }]);
        let back = MikeyMessage::decode(&msg.encode().unwrap()).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.srtp_keys().unwrap(), k);
    }

    #[test]
    fn key_mgmt_header() {
        let msg = offer();
        let header = format_key_mgmt_header("rtsp://h/vod/a.mp4/stream=0", &msg).unwrap();
        let entries = parse_key_mgmt_header(&header).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].uri.as_deref(),
            Some("rtsp://h/vod/a.mp4/stream=0")
        );
        assert_eq!(entries[0].message, msg);

        let two = format!("prot=other; data=\"x\", {header}");
        assert_eq!(parse_key_mgmt_header(&two).unwrap().len(), 1);
        assert!(parse_key_mgmt_header("prot=mikey; data=\"!!!\"").is_err());
        assert!(parse_key_mgmt_header("prot=mikey").is_err());
        assert!(parse_key_mgmt_header("").is_err());
        assert!(parse_key_mgmt_header("prot=mikey; data=\"abc").is_err());
    }
}
