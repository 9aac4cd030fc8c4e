//! Content encryption: the payload format of encrypted frames, its two ciphers and the
//! content-key derivation. Shared by the encoder unit (which encrypts a share of the
//! frames), the protocol unit (which encrypts the rest, flagged
//! [`FrameFlags::EDGE_ENCRYPT`](crate::FrameFlags::EDGE_ENCRYPT)) and receivers (which
//! decrypt). Pure functions, no I/O except [`read_master_secret`].
//!
//! # Payload format (version 1)
//!
//! ```text
//! +---------+--------+-----------------+------------------+------------------------+
//! | version | cipher | key_id (u32 BE) | IV (8 or 16 B)   | ciphertext of the frame |
//! |   = 1   | 1 | 2  |                 | DES: 8, AES: 16  | (Annex B / AU bytes)    |
//! +---------+--------+-----------------+------------------+------------------------+
//! ```
//!
//! - cipher 1, DES-CBC (insecure, DIVISOR's workload, for measurement only): the frame,
//!   padded with PKCS#7 (1 to 8 bytes), in CBC mode. IV = DES_K(nonce).
//! - cipher 2, AES-128-CTR (the default): the frame, unpadded, XORed with the AES-CTR
//!   keystream whose first counter block is the IV: nonce (8 bytes) || 0u64, the low 64
//!   bits counting blocks (big-endian).
//!
//! The nonce is `track (1 byte) || dts (low 56 bits, big-endian)`. The IV is thus a pure
//! function of (key, track, dts): whichever unit encrypts a frame, the bytes are the same,
//! which is what lets the encoder leave a share of the frames to the protocol unit.
//! Consequences (also in `docs/ENCRYPTION.md`):
//! - equal frames at the same (track, dts) under one key encrypt equally (as pre-encrypted
//!   VoD does); an observer learns that two such frames are equal, nothing more;
//! - different content must never reach the same (key, track, dts): for CTR that would reuse
//!   keystream. Distinct (track, dts) give distinct nonces, and a nonce's counter blocks
//!   (the low 64 bits) never reach another nonce's, so frames under one key never share a
//!   counter block. Keys must therefore be per stream of content (the derivation takes a
//!   name: channel *and* rendition, or asset *and* rendition), and whoever encrypts must
//!   move to a new key when a track's dts goes back (the encoder's stage does).
//!
//! The IV is carried in the header so a receiver needs only the key and the payload (an RTP
//! receiver sees pts, not dts).

mod table_des;

use std::path::Path;

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::message::Cipher;

/// Version byte of the payload format this module writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes before the IV: version, cipher, key id.
pub const FIXED_HEADER_LEN: usize = 6;

/// Domain-separation label of [`derive_key`].
pub const KEY_LABEL: &[u8] = b"divisor-content-key";

type AesCtr = ctr::Ctr64BE<aes::Aes128>;

/// An AES-128-CTR keystream from an already expanded key (no key expansion per frame).
fn aes_ctr(aes: &aes::Aes128, iv: [u8; 16]) -> AesCtr {
    AesCtr::from_core(ctr::CtrCore::inner_iv_init(aes.clone(), &iv.into()))
}

/// Why a payload could not be decrypted, or a key or frame could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("encrypted payload of {len} bytes is shorter than its {need}-byte header")]
    Truncated { len: usize, need: usize },
    #[error("encrypted payload format version {0}; this build reads version {FORMAT_VERSION}")]
    Version(u8),
    #[error("unknown content cipher code {0}")]
    UnknownCipher(u8),
    #[error("no content key with id {0}")]
    UnknownKey(u32),
    #[error("content key {key_id} is a {key:?} key but the payload says {payload:?}")]
    CipherMismatch {
        key_id: u32,
        key: Cipher,
        payload: Cipher,
    },
    #[error("a {cipher:?} key is {need} bytes, got {len}")]
    KeyLength {
        cipher: Cipher,
        len: usize,
        need: usize,
    },
    #[error("DES-CBC ciphertext of {0} bytes is not a positive multiple of 8")]
    BlockLength(usize),
    #[error("DES-CBC padding is invalid: wrong key or corrupted payload")]
    BadPadding,
    /// A frame to encrypt at the edge came before any content key of its channel.
    #[error("channel {0} has no content key yet")]
    NoKey(u32),
    /// A frame claims to be both encrypted and left for the edge to encrypt.
    #[error("frame flagged both ENCRYPTED and EDGE_ENCRYPT")]
    ConflictingFlags,
}

/// Key length of `cipher` in bytes.
pub fn key_len(cipher: Cipher) -> usize {
    match cipher {
        Cipher::DesCbc => 8,
        Cipher::Aes128Ctr => 16,
    }
}

/// IV length of `cipher` in bytes (what the header carries).
pub fn iv_len(cipher: Cipher) -> usize {
    match cipher {
        Cipher::DesCbc => 8,
        Cipher::Aes128Ctr => 16,
    }
}

/// Header length of a payload under `cipher`.
pub fn header_len(cipher: Cipher) -> usize {
    FIXED_HEADER_LEN + iv_len(cipher)
}

/// The 8-byte nonce of a frame: track, then the low 56 bits of dts (big-endian).
pub fn nonce(track: u8, dts: i64) -> [u8; 8] {
    let mut n = ((dts as u64) & ((1 << 56) - 1)).to_be_bytes();
    n[0] = track;
    n
}

/// The content key `key_id` of the stream `name` under `cipher`:
/// HMAC-SHA256(master, "divisor-content-key" || cipher code || len(name) as u32 BE ||
/// name || key_id as u32 BE), truncated to the key size.
///
/// The cipher is part of the input so that a DES key (56 bits, brute-forceable) never
/// reveals bytes of the AES key of the same stream; the name is length-prefixed so that
/// two (name, key_id) pairs never feed the same bytes.
pub fn derive_key(master: &[u8], name: &str, key_id: u32, cipher: Cipher) -> Bytes {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master).expect("HMAC takes any key length");
    mac.update(KEY_LABEL);
    mac.update(&[cipher.to_u8()]);
    mac.update(&(name.len() as u32).to_be_bytes());
    mac.update(name.as_bytes());
    mac.update(&key_id.to_be_bytes());
    let tag = mac.finalize().into_bytes();
    Bytes::copy_from_slice(&tag[..key_len(cipher)])
}

/// The key-derivation name of VoD asset `asset` in `rendition` ("" = the source as stored).
/// Every rendition is its own stream of content, so it gets its own keys.
pub fn vod_key_name(asset: &str, rendition: &str) -> String {
    format!("vod/{asset}#{rendition}")
}

/// The key-derivation name of live channel `channel` in `rendition` ("" = passthrough).
pub fn live_key_name(channel: &str, rendition: &str) -> String {
    format!("live/{channel}#{rendition}")
}

/// Read the master secret file: its bytes, trailing whitespace trimmed. An empty file is an
/// error (`InvalidData`): an empty secret would make every key public.
pub fn read_master_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("content master secret file {} is empty", path.display()),
        ));
    }
    Ok(bytes)
}

/// The header fields of a payload, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub cipher: Cipher,
    pub key_id: u32,
    pub iv: &'a [u8],
    pub ciphertext: &'a [u8],
}

/// Split a payload into its header fields and ciphertext.
pub fn parse(payload: &[u8]) -> Result<Header<'_>, ContentError> {
    if payload.len() < FIXED_HEADER_LEN {
        return Err(ContentError::Truncated {
            len: payload.len(),
            need: FIXED_HEADER_LEN,
        });
    }
    if payload[0] != FORMAT_VERSION {
        return Err(ContentError::Version(payload[0]));
    }
    let cipher = Cipher::from_u8(payload[1]).ok_or(ContentError::UnknownCipher(payload[1]))?;
    let need = header_len(cipher);
    if payload.len() < need {
        return Err(ContentError::Truncated {
            len: payload.len(),
            need,
        });
    }
    let key_id = u32::from_be_bytes([payload[2], payload[3], payload[4], payload[5]]);
    Ok(Header {
        cipher,
        key_id,
        iv: &payload[FIXED_HEADER_LEN..need],
        ciphertext: &payload[need..],
    })
}

/// Boxed: the two key schedules differ a lot in size, and a cipher is built once per key.
#[derive(Clone)]
enum Engine {
    Des(Box<table_des::Des>),
    Aes(Box<aes::Aes128>),
}

/// One content key, expanded and ready to encrypt or decrypt frames. Cheap to clone.
#[derive(Clone)]
pub struct FrameCipher {
    cipher: Cipher,
    key_id: u32,
    engine: Engine,
}

impl std::fmt::Debug for FrameCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("FrameCipher")
            .field("cipher", &self.cipher)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl FrameCipher {
    /// Expand `key` (8 bytes for DES, 16 for AES) as content key `key_id`.
    pub fn new(cipher: Cipher, key_id: u32, key: &[u8]) -> Result<FrameCipher, ContentError> {
        let need = key_len(cipher);
        if key.len() != need {
            return Err(ContentError::KeyLength {
                cipher,
                len: key.len(),
                need,
            });
        }
        let engine = match cipher {
            Cipher::DesCbc => {
                let mut k = [0u8; 8];
                k.copy_from_slice(key);
                Engine::Des(Box::new(table_des::Des::new(k)))
            }
            Cipher::Aes128Ctr => Engine::Aes(Box::new(aes::Aes128::new_from_slice(key).map_err(
                |_| ContentError::KeyLength {
                    cipher,
                    len: key.len(),
                    need,
                },
            )?)),
        };
        Ok(FrameCipher {
            cipher,
            key_id,
            engine,
        })
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Length of the payload for a frame of `plaintext_len` bytes.
    pub fn payload_len(&self, plaintext_len: usize) -> usize {
        header_len(self.cipher)
            + match self.cipher {
                Cipher::DesCbc => (plaintext_len / 8 + 1) * 8,
                Cipher::Aes128Ctr => plaintext_len,
            }
    }

    /// The payload of the frame `plaintext` of `track` at `dts`: header + ciphertext.
    pub fn encrypt(&self, track: u8, dts: i64, plaintext: &[u8]) -> Bytes {
        let n = nonce(track, dts);
        let mut out = BytesMut::with_capacity(self.payload_len(plaintext.len()));
        out.put_u8(FORMAT_VERSION);
        out.put_u8(self.cipher.to_u8());
        out.put_u32(self.key_id);
        match &self.engine {
            Engine::Des(des) => {
                let iv = des.encrypt_block(u64::from_be_bytes(n));
                out.put_u64(iv);
                let start = out.len();
                out.put_slice(plaintext);
                let pad = 8 - plaintext.len() % 8;
                out.put_bytes(pad as u8, pad);
                des.cbc_encrypt(iv, &mut out[start..]);
            }
            Engine::Aes(aes) => {
                let mut iv = [0u8; 16];
                iv[..8].copy_from_slice(&n);
                out.put_slice(&iv);
                let start = out.len();
                out.put_slice(plaintext);
                aes_ctr(aes, iv).apply_keystream(&mut out[start..]);
            }
        }
        out.freeze()
    }

    /// The frame inside `payload`, which must name this key and cipher.
    pub fn decrypt(&self, payload: &[u8]) -> Result<Bytes, ContentError> {
        let h = parse(payload)?;
        if h.key_id != self.key_id {
            return Err(ContentError::UnknownKey(h.key_id));
        }
        self.decrypt_parsed(&h)
    }

    fn decrypt_parsed(&self, h: &Header<'_>) -> Result<Bytes, ContentError> {
        if h.cipher != self.cipher {
            return Err(ContentError::CipherMismatch {
                key_id: self.key_id,
                key: self.cipher,
                payload: h.cipher,
            });
        }
        let mut out = BytesMut::from(h.ciphertext);
        match &self.engine {
            Engine::Des(des) => {
                if out.is_empty() || out.len() % 8 != 0 {
                    return Err(ContentError::BlockLength(out.len()));
                }
                let mut iv = [0u8; 8];
                iv.copy_from_slice(h.iv);
                des.cbc_decrypt(u64::from_be_bytes(iv), &mut out);
                let pad = usize::from(out[out.len() - 1]);
                if pad == 0 || pad > 8 || !out[out.len() - pad..].iter().all(|&b| b == pad as u8) {
                    return Err(ContentError::BadPadding);
                }
                out.truncate(out.len() - pad);
            }
            Engine::Aes(aes) => {
                let mut iv = [0u8; 16];
                iv.copy_from_slice(h.iv);
                aes_ctr(aes, iv).apply_keystream(&mut out);
            }
        }
        Ok(out.freeze())
    }

    /// Raw cipher work on `buf` in place, for throughput measurement: DES-CBC encryption
    /// (length rounded down to whole blocks) or AES-128-CTR, from the frame (0, 0) IV.
    pub fn encrypt_in_place_raw(&self, buf: &mut [u8]) {
        match &self.engine {
            Engine::Des(des) => des.cbc_encrypt(0, buf),
            Engine::Aes(aes) => aes_ctr(aes, [0u8; 16]).apply_keystream(buf),
        }
    }

    /// Raw DES-CBC decryption (or AES-CTR, its own inverse) in place, for measurement.
    pub fn decrypt_in_place_raw(&self, buf: &mut [u8]) {
        match &self.engine {
            Engine::Des(des) => des.cbc_decrypt(0, buf),
            Engine::Aes(_) => self.encrypt_in_place_raw(buf),
        }
    }
}

/// Encrypt one frame: [`FrameCipher::new`] then [`FrameCipher::encrypt`]. Callers that
/// encrypt many frames under one key should keep a [`FrameCipher`].
pub fn encrypt_frame(
    cipher: Cipher,
    key_id: u32,
    key: &[u8],
    track: u8,
    dts: i64,
    plaintext: &[u8],
) -> Result<Bytes, ContentError> {
    Ok(FrameCipher::new(cipher, key_id, key)?.encrypt(track, dts, plaintext))
}

/// Decrypt one payload with the key `keys` returns for the payload's key id.
pub fn decrypt_frame<'k>(
    keys: impl FnOnce(u32) -> Option<&'k FrameCipher>,
    payload: &[u8],
) -> Result<Bytes, ContentError> {
    let h = parse(payload)?;
    let key = keys(h.key_id).ok_or(ContentError::UnknownKey(h.key_id))?;
    key.decrypt_parsed(&h)
}

/// The content keys a receiver holds, by key id.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    keys: std::collections::HashMap<u32, FrameCipher>,
}

impl Keyring {
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Add (or replace) a key.
    pub fn insert(&mut self, key: FrameCipher) {
        self.keys.insert(key.key_id(), key);
    }

    pub fn get(&self, key_id: u32) -> Option<&FrameCipher> {
        self.keys.get(&key_id)
    }

    /// Drop every key except those whose id `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.keys.retain(|id, _| keep(*id));
    }

    /// Decrypt `payload` with the key it names.
    pub fn decrypt(&self, payload: &[u8]) -> Result<Bytes, ContentError> {
        decrypt_frame(|id| self.get(id), payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CIPHERS: [Cipher; 2] = [Cipher::DesCbc, Cipher::Aes128Ctr];

    fn key(cipher: Cipher, id: u32) -> FrameCipher {
        FrameCipher::new(
            cipher,
            id,
            &derive_key(b"master", "vod/clip.mp4", id, cipher),
        )
        .expect("derived keys have the right length")
    }

    #[test]
    fn round_trips_both_ciphers_all_lengths() {
        for cipher in CIPHERS {
            let k = key(cipher, 7);
            for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 1000, 65_537] {
                let data: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
                let p = k.encrypt(1, 3600 * len as i64, &data);
                assert_eq!(p.len(), k.payload_len(len));
                let h = parse(&p).unwrap();
                assert_eq!((h.cipher, h.key_id), (cipher, 7));
                if len >= 16 {
                    assert_ne!(&h.ciphertext[..16], &data[..16], "{cipher:?} encrypts");
                }
                assert_eq!(&k.decrypt(&p).unwrap()[..], &data[..], "{cipher:?} {len}");
            }
        }
    }

    #[test]
    fn deterministic_per_track_and_dts() {
        for cipher in CIPHERS {
            let data = vec![0x42u8; 100];
            // Two independent expansions of the same key: what the two units do.
            let (a, b) = (key(cipher, 1), key(cipher, 1));
            assert_eq!(a.encrypt(0, 9000, &data), b.encrypt(0, 9000, &data));
            assert_eq!(
                encrypt_frame(
                    cipher,
                    1,
                    &derive_key(b"master", "vod/clip.mp4", 1, cipher),
                    0,
                    9000,
                    &data
                )
                .unwrap(),
                a.encrypt(0, 9000, &data)
            );
            assert_ne!(a.encrypt(0, 9000, &data), a.encrypt(0, 9001, &data));
            assert_ne!(a.encrypt(0, 9000, &data), a.encrypt(1, 9000, &data));
            assert_ne!(
                a.encrypt(0, 9000, &data),
                key(cipher, 2).encrypt(0, 9000, &data)
            );
        }
    }

    #[test]
    fn ctr_counters_of_neighbouring_frames_do_not_overlap() {
        // A long frame at dts must not share keystream with the frame at dts + 1.
        let k = key(Cipher::Aes128Ctr, 1);
        let zeros = vec![0u8; 4096];
        let a = k.encrypt(0, 10, &zeros);
        let b = k.encrypt(0, 11, &zeros);
        let (ka, kb) = (&a[22..], &b[22..]);
        for off in (0..4096).step_by(16) {
            assert!(!kb.windows(16).any(|w| w == &ka[off..off + 16]));
        }
    }

    #[test]
    fn derived_keys_differ_by_every_input() {
        let base = derive_key(b"m", "a", 0, Cipher::Aes128Ctr);
        assert_eq!(base.len(), 16);
        assert_eq!(derive_key(b"m", "a", 0, Cipher::DesCbc).len(), 8);
        assert_ne!(base, derive_key(b"n", "a", 0, Cipher::Aes128Ctr));
        assert_ne!(base, derive_key(b"m", "b", 0, Cipher::Aes128Ctr));
        assert_ne!(base, derive_key(b"m", "a", 1, Cipher::Aes128Ctr));
        assert_ne!(
            &base[..8],
            &derive_key(b"m", "a", 0, Cipher::DesCbc)[..],
            "the DES key is not a prefix of the AES key"
        );
    }

    #[test]
    fn malformed_payloads_give_typed_errors() {
        let des = key(Cipher::DesCbc, 3);
        let aes = key(Cipher::Aes128Ctr, 3);
        let p = des.encrypt(0, 0, b"hello world");
        assert_eq!(
            parse(&p[..3]),
            Err(ContentError::Truncated { len: 3, need: 6 })
        );
        assert_eq!(
            parse(&p[..10]),
            Err(ContentError::Truncated { len: 10, need: 14 })
        );
        let mut bad = p.to_vec();
        bad[0] = 9;
        assert_eq!(parse(&bad), Err(ContentError::Version(9)));
        bad[0] = 1;
        bad[1] = 77;
        assert_eq!(parse(&bad), Err(ContentError::UnknownCipher(77)));
        let mut ring = Keyring::new();
        assert_eq!(ring.decrypt(&p), Err(ContentError::UnknownKey(3)));
        ring.insert(aes.clone());
        assert!(matches!(
            ring.decrypt(&p),
            Err(ContentError::CipherMismatch { .. })
        ));
        ring.insert(des.clone());
        assert_eq!(&ring.decrypt(&p).unwrap()[..], b"hello world");
        assert_eq!(
            des.decrypt(&p[..p.len() - 1]),
            Err(ContentError::BlockLength(15))
        );
        assert_eq!(des.decrypt(&p[..14]), Err(ContentError::BlockLength(0)));
        let mut flipped = p.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        assert_eq!(des.decrypt(&flipped), Err(ContentError::BadPadding));
        let other = key(Cipher::DesCbc, 4);
        assert_eq!(other.decrypt(&p), Err(ContentError::UnknownKey(3)));
        assert_eq!(
            FrameCipher::new(Cipher::Aes128Ctr, 0, &[0u8; 8]).unwrap_err(),
            ContentError::KeyLength {
                cipher: Cipher::Aes128Ctr,
                len: 8,
                need: 16
            }
        );
        assert!(format!("{des:?}").contains("key_id"));
    }

    #[test]
    fn des_cbc_interoperates_with_the_des_crate() {
        // The payload is plain DES-CBC/PKCS#7 with the IV in the header: decrypt it with
        // the `des` crate, one block at a time, as an outside receiver would.
        use ::des::cipher::{generic_array::GenericArray, BlockDecrypt, KeyInit};
        let kb = derive_key(b"master", "x", 0, Cipher::DesCbc);
        let p = FrameCipher::new(Cipher::DesCbc, 0, &kb).unwrap().encrypt(
            2,
            -3003,
            b"annex b bytes of a frame",
        );
        let h = parse(&p).unwrap();
        let d = ::des::Des::new(GenericArray::from_slice(&kb));
        let mut prev: Vec<u8> = h.iv.to_vec();
        let mut plain = Vec::new();
        for c in h.ciphertext.chunks(8) {
            let mut b = GenericArray::clone_from_slice(c);
            d.decrypt_block(&mut b);
            plain.extend(b.iter().zip(&prev).map(|(x, y)| x ^ y));
            prev = c.to_vec();
        }
        let pad = *plain.last().unwrap() as usize;
        plain.truncate(plain.len() - pad);
        assert_eq!(plain, b"annex b bytes of a frame");
    }

    proptest! {
        #[test]
        fn decrypt_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut ring = Keyring::new();
            ring.insert(key(Cipher::DesCbc, 1));
            ring.insert(key(Cipher::Aes128Ctr, 2));
            let _ = ring.decrypt(&payload);
        }

        #[test]
        fn decrypt_never_panics_on_plausible_headers(
            cipher in 0u8..4, id in 0u32..4, body in proptest::collection::vec(any::<u8>(), 0..100)
        ) {
            let mut ring = Keyring::new();
            ring.insert(key(Cipher::DesCbc, 1));
            ring.insert(key(Cipher::Aes128Ctr, 2));
            let mut p = vec![FORMAT_VERSION, cipher];
            p.extend(id.to_be_bytes());
            p.extend(body);
            let _ = ring.decrypt(&p);
        }

        #[test]
        fn round_trip_any(data in proptest::collection::vec(any::<u8>(), 0..300), dts: i64, track: u8) {
            for cipher in CIPHERS {
                let k = key(cipher, 5);
                prop_assert_eq!(&k.decrypt(&k.encrypt(track, dts, &data)).unwrap()[..], &data[..]);
            }
        }
    }
}
