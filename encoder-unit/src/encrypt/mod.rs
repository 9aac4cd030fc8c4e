//! Content encryption, the last stage of a channel's chain.
//!
//! [`EncryptStage`] encrypts each frame with the channel's content key in the payload
//! format of `divisor_link::content` (DES-CBC — insecure, DIVISOR's workload, for
//! measurement only — or AES-128-CTR, the default), or leaves it in clear, flagged
//! [`FrameFlags::EDGE_ENCRYPT`], for the protocol unit to encrypt with the same key and
//! format: DIVISOR's load balancing between the units. Which frames are left is decided
//! deterministically from the frame count, so a share of 0.5 is exactly every other frame.
//!
//! Keys: `derive_key(master, name, key_id, cipher)` (HMAC-SHA256, see
//! `divisor_link::content::derive_key`) from the master secret file named by
//! `[encryption] key_file`; [`KeySchedule`] picks the key id (rotation every `rotate_secs`
//! of media time, and a fresh key when a track's timeline goes back). Before the first frame
//! under each key the stage emits [`Message::ContentKey`], so the protocol unit has the key
//! before it sees a frame that needs it. The caller should send [`EncryptStage::key_message`]
//! before the channel's Announce, so the protocol unit knows at DESCRIBE time that the
//! channel is encrypted.

mod schedule;

pub use schedule::KeySchedule;

use std::path::Path;

use divisor_link::content::{derive_key, read_master_secret, FrameCipher};
use divisor_link::{ChannelId, Cipher, Frame, FrameFlags, Message, TrackInfo};

use crate::config::EncryptionMode;
use crate::pipeline::{Stage, StageError};

/// The cipher of an encryption mode; `None` for [`EncryptionMode::None`].
pub fn cipher_of(mode: EncryptionMode) -> Option<Cipher> {
    match mode {
        EncryptionMode::None => None,
        EncryptionMode::Aes => Some(Cipher::Aes128Ctr),
        EncryptionMode::Des => Some(Cipher::DesCbc),
    }
}

/// Read the master secret file (`[encryption] key_file`).
pub fn load_master(path: &Path) -> Result<Vec<u8>, StageError> {
    read_master_secret(path).map_err(|e| {
        StageError::Encrypt(format!(
            "content master secret file {}: {e}",
            path.display()
        ))
    })
}

/// The encoder unit's content-key settings, loaded once from `[encryption]`: what the
/// chain builder needs to add an [`EncryptStage`] and the session to announce the first key.
#[derive(Clone)]
pub struct ContentKeys {
    master: std::sync::Arc<Vec<u8>>,
    rotate_secs: u64,
}

impl std::fmt::Debug for ContentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the master secret.
        f.debug_struct("ContentKeys")
            .field("rotate_secs", &self.rotate_secs)
            .finish_non_exhaustive()
    }
}

impl ContentKeys {
    /// Reads `config.key_file`; `Ok(None)` when no key file is configured (nothing may be
    /// encrypted then: `Config::validate` refuses encryption without a key file).
    pub fn from_config(
        config: &crate::config::EncryptionConfig,
    ) -> Result<Option<ContentKeys>, StageError> {
        let Some(path) = &config.key_file else {
            return Ok(None);
        };
        Ok(Some(ContentKeys {
            master: std::sync::Arc::new(load_master(path)?),
            rotate_secs: config.rotate_secs,
        }))
    }

    /// Keys from a master secret in memory (tests, benches).
    pub fn new(master: Vec<u8>, rotate_secs: u64) -> ContentKeys {
        ContentKeys {
            master: std::sync::Arc::new(master),
            rotate_secs,
        }
    }

    /// The stage for the stream `name` (`divisor_link::content::vod_key_name` /
    /// `live_key_name`).
    pub fn stage(
        &self,
        mode: EncryptionMode,
        name: &str,
        edge_share: f64,
    ) -> Result<EncryptStage, StageError> {
        EncryptStage::new(mode, name, &self.master, self.rotate_secs, edge_share)
    }

    /// The [`Message::ContentKey`] to send on `channel` before the Announce of the stream
    /// `name` encrypted with `mode`: its first key, id 0, which is what the stage starts
    /// with. `None` for [`EncryptionMode::None`]. (The stage announces it again before the
    /// first frame; the protocol unit takes a repeated key as a no-op.)
    pub fn initial_key_message(
        &self,
        mode: EncryptionMode,
        name: &str,
        channel: ChannelId,
    ) -> Option<Message> {
        let cipher = cipher_of(mode)?;
        Some(Message::ContentKey {
            channel,
            key_id: 0,
            cipher,
            key: derive_key(&self.master, name, 0, cipher),
        })
    }
}

/// One content key as it goes to the protocol unit.
#[derive(Clone, Debug)]
pub struct KeyAnnouncement {
    pub key_id: u32,
    pub cipher: Cipher,
    pub key: bytes::Bytes,
}

impl KeyAnnouncement {
    /// The [`Message::ContentKey`] of this key for `channel`.
    pub fn message(&self, channel: ChannelId) -> Message {
        Message::ContentKey {
            channel,
            key_id: self.key_id,
            cipher: self.cipher,
            key: self.key.clone(),
        }
    }
}

/// The encryption stage; see the module docs.
pub struct EncryptStage {
    /// `None`: [`EncryptionMode::None`], frames pass unchanged.
    cipher: Option<Cipher>,
    name: String,
    master: Vec<u8>,
    schedule: KeySchedule,
    /// The expanded key in use.
    key: Option<FrameCipher>,
    /// (channel, key id) last announced, so each key is announced once per channel.
    announced: Option<(ChannelId, u32)>,
    /// Edge share as a fraction of frames, and the frame counter it applies to.
    edge_share: f64,
    frames: u64,
}

impl EncryptStage {
    /// A stage encrypting with `mode` under keys derived from `master` for the stream
    /// `name`, rotating every `rotate_secs` of media time (0: never), leaving `edge_share`
    /// (0..=1) of the frames to the protocol unit.
    ///
    /// `name` must identify the stream of content, rendition included (use
    /// `divisor_link::content::{vod_key_name, live_key_name}`): two different streams under
    /// one key would reuse IVs. [`EncryptionMode::None`] gives a stage that passes frames
    /// unchanged.
    pub fn new(
        mode: EncryptionMode,
        name: &str,
        master: &[u8],
        rotate_secs: u64,
        edge_share: f64,
    ) -> Result<EncryptStage, StageError> {
        let cipher = cipher_of(mode);
        if cipher.is_some() && master.is_empty() {
            return Err(StageError::Encrypt(
                "the content master secret is empty".to_string(),
            ));
        }
        if !(0.0..=1.0).contains(&edge_share) {
            return Err(StageError::Encrypt(format!(
                "edge_share {edge_share} is not between 0 and 1"
            )));
        }
        let mut stage = EncryptStage {
            cipher,
            name: name.to_string(),
            master: master.to_vec(),
            schedule: KeySchedule::new(rotate_secs),
            key: None,
            announced: None,
            edge_share,
            frames: 0,
        };
        if let Some(c) = cipher {
            stage.key = Some(stage.expand(c, 0)?);
        }
        Ok(stage)
    }

    /// Whether frames are encrypted at all.
    pub fn is_active(&self) -> bool {
        self.cipher.is_some()
    }

    /// The key in use (the first one before any frame), `None` when not encrypting.
    pub fn current_key(&self) -> Option<KeyAnnouncement> {
        let cipher = self.cipher?;
        let key_id = self.schedule.current();
        Some(KeyAnnouncement {
            key_id,
            cipher,
            key: derive_key(&self.master, &self.name, key_id, cipher),
        })
    }

    /// The [`Message::ContentKey`] to send on `channel` before its Announce (`None` when not
    /// encrypting). The stage then does not repeat it before the first frame.
    pub fn key_message(&mut self, channel: ChannelId) -> Option<Message> {
        let k = self.current_key()?;
        self.announced = Some((channel, k.key_id));
        Some(k.message(channel))
    }

    fn expand(&self, cipher: Cipher, key_id: u32) -> Result<FrameCipher, StageError> {
        let key = derive_key(&self.master, &self.name, key_id, cipher);
        FrameCipher::new(cipher, key_id, &key).map_err(|e| StageError::Encrypt(e.to_string()))
    }

    /// Whether frame number `n` (from 0) is left to the protocol unit: frame n is, when
    /// floor((n+1) * share) > floor(n * share). Exactly `share` of every run of frames, spread
    /// evenly (0.5: every other frame, starting with the second).
    fn left_to_edge(&self, n: u64) -> bool {
        ((n + 1) as f64 * self.edge_share).floor() > (n as f64 * self.edge_share).floor()
    }
}

impl Stage for EncryptStage {
    fn tracks(&mut self, input: &[TrackInfo]) -> Result<Vec<TrackInfo>, StageError> {
        for t in input {
            self.schedule.set_clock(t.track, t.clock_rate);
        }
        Ok(input.to_vec())
    }

    fn push(&mut self, mut frame: Frame, out: &mut Vec<Message>) -> Result<(), StageError> {
        let Some(cipher) = self.cipher else {
            out.push(Message::Frame(frame));
            return Ok(());
        };
        if frame.flags.contains(FrameFlags::ENCRYPTED)
            || frame.flags.contains(FrameFlags::EDGE_ENCRYPT)
        {
            return Err(StageError::Encrypt(
                "frame is already flagged encrypted".to_string(),
            ));
        }
        if frame.data.is_empty() {
            // Nothing to protect (an end-of-stream marker): pass it in clear.
            out.push(Message::Frame(frame));
            return Ok(());
        }
        let key_id = self.schedule.key_for(frame.track, frame.dts);
        let key = match self.key.take() {
            Some(k) if k.key_id() == key_id => k,
            _ => self.expand(cipher, key_id)?,
        };
        if self.announced != Some((frame.channel, key_id)) {
            out.push(Message::ContentKey {
                channel: frame.channel,
                key_id,
                cipher,
                key: derive_key(&self.master, &self.name, key_id, cipher),
            });
            self.announced = Some((frame.channel, key_id));
        }
        let n = self.frames;
        self.frames += 1;
        if self.left_to_edge(n) {
            frame.flags.insert(FrameFlags::EDGE_ENCRYPT);
        } else {
            frame.data = key.encrypt(frame.track, frame.dts, &frame.data);
            frame.flags.insert(FrameFlags::ENCRYPTED);
        }
        self.key = Some(key);
        out.push(Message::Frame(frame));
        Ok(())
    }

    fn prelude(&mut self, out: &mut Vec<Message>) {
        out.extend(self.key_message(0));
    }

    fn flush(&mut self, _out: &mut Vec<Message>) -> Result<(), StageError> {
        Ok(())
    }

    fn reset(&mut self) {
        self.schedule.reset();
        self.frames = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use divisor_link::content::{vod_key_name, Keyring};
    use divisor_link::Codec;

    fn frame(track: u8, dts: i64, data: &'static [u8]) -> Frame {
        Frame {
            channel: 5,
            track,
            codec: if track == 0 { Codec::H264 } else { Codec::Aac },
            flags: FrameFlags::KEYFRAME,
            pts: dts,
            dts,
            duration: 0,
            data: Bytes::from_static(data),
        }
    }

    fn run(stage: &mut EncryptStage, frames: &[Frame]) -> Vec<Message> {
        let mut out = Vec::new();
        for f in frames {
            stage.push(f.clone(), &mut out).unwrap();
        }
        out
    }

    fn frames() -> Vec<Frame> {
        (0..10)
            .map(|i| frame((i % 2) as u8, i * 1800, b"\0\0\0\x01\x65 some frame bytes"))
            .collect()
    }

    #[test]
    fn key_first_then_encrypted_frames_that_decrypt() {
        for mode in [EncryptionMode::Aes, EncryptionMode::Des] {
            let name = vod_key_name("clip.mp4", "");
            let mut s = EncryptStage::new(mode, &name, b"master", 0, 0.0).unwrap();
            let out = run(&mut s, &frames());
            let Message::ContentKey {
                channel,
                key_id,
                cipher,
                key,
            } = &out[0]
            else {
                panic!("first message is not the key: {:?}", out[0]);
            };
            assert_eq!((*channel, *key_id), (5, 0));
            assert_eq!(*key, derive_key(b"master", &name, 0, *cipher));
            let mut ring = Keyring::new();
            ring.insert(FrameCipher::new(*cipher, 0, key).unwrap());
            assert_eq!(out.len(), 11, "one key, then the frames");
            for (m, orig) in out[1..].iter().zip(frames()) {
                let Message::Frame(f) = m else { panic!() };
                assert!(f
                    .flags
                    .contains(FrameFlags::ENCRYPTED | FrameFlags::KEYFRAME));
                assert_ne!(f.data, orig.data);
                assert_eq!(ring.decrypt(&f.data).unwrap(), orig.data);
            }
        }
    }

    #[test]
    fn initial_key_message_matches_the_stage() {
        let keys = ContentKeys::new(b"master".to_vec(), 0);
        let name = vod_key_name("clip.mp4", "");
        let first = keys
            .initial_key_message(EncryptionMode::Des, &name, 9)
            .unwrap();
        let mut stage = keys.stage(EncryptionMode::Des, &name, 0.5).unwrap();
        assert_eq!(Some(first), stage.key_message(9));
        assert!(keys
            .initial_key_message(EncryptionMode::None, &name, 9)
            .is_none());
        assert!(!format!("{keys:?}").contains("master"));
    }

    #[test]
    fn key_message_before_announce_is_not_repeated() {
        let mut s =
            EncryptStage::new(EncryptionMode::Aes, "live/news#", b"master", 0, 0.0).unwrap();
        assert!(matches!(
            s.key_message(5),
            Some(Message::ContentKey {
                channel: 5,
                key_id: 0,
                ..
            })
        ));
        let out = run(&mut s, &frames());
        assert!(out.iter().all(|m| matches!(m, Message::Frame(_))));
    }

    #[test]
    fn half_share_is_every_other_frame() {
        let mut s = EncryptStage::new(EncryptionMode::Des, "x", b"m", 0, 0.5).unwrap();
        let out = run(&mut s, &frames());
        let flags: Vec<bool> = out
            .iter()
            .filter_map(|m| match m {
                Message::Frame(f) => Some(f.flags.contains(FrameFlags::EDGE_ENCRYPT)),
                _ => None,
            })
            .collect();
        assert_eq!(flags, [false, true].repeat(5));
        for m in &out {
            if let Message::Frame(f) = m {
                assert!(
                    f.flags.contains(FrameFlags::EDGE_ENCRYPT)
                        != f.flags.contains(FrameFlags::ENCRYPTED)
                );
            }
        }
        for (share, expect) in [(0.0, 0), (0.25, 2), (1.0, 10)] {
            let mut s = EncryptStage::new(EncryptionMode::Aes, "x", b"m", 0, share).unwrap();
            let edge = run(&mut s, &frames())
                .iter()
                .filter(
                    |m| matches!(m, Message::Frame(f) if f.flags.contains(FrameFlags::EDGE_ENCRYPT)),
                )
                .count();
            assert_eq!(edge, expect, "share {share}");
        }
    }

    #[test]
    fn rotation_and_seek_back_announce_new_keys() {
        let mut s = EncryptStage::new(EncryptionMode::Aes, "x", b"m", 1, 0.0).unwrap();
        s.tracks(&[]).unwrap();
        let mut fs = vec![
            frame(0, 0, b"a"),
            frame(0, 45_000, b"b"),
            frame(0, 90_000, b"c"),
        ];
        fs.push(frame(0, 0, b"d"));
        let out = run(&mut s, &fs);
        let keys: Vec<u32> = out
            .iter()
            .filter_map(|m| match m {
                Message::ContentKey { key_id, .. } => Some(*key_id),
                _ => None,
            })
            .collect();
        assert_eq!(keys, [0, 1, 2]);
        assert!(matches!(out[3], Message::ContentKey { key_id: 1, .. }));
    }

    #[test]
    fn none_passes_through_and_bad_settings_are_errors() {
        let mut s = EncryptStage::new(EncryptionMode::None, "x", b"", 0, 0.0).unwrap();
        assert!(!s.is_active() && s.key_message(1).is_none());
        assert_eq!(run(&mut s, &frames()).len(), 10);
        assert!(EncryptStage::new(EncryptionMode::Aes, "x", b"", 0, 0.0).is_err());
        assert!(EncryptStage::new(EncryptionMode::Aes, "x", b"m", 0, 1.5).is_err());
        assert!(EncryptStage::new(EncryptionMode::Aes, "x", b"m", 0, f64::NAN).is_err());
        let mut s = EncryptStage::new(EncryptionMode::Aes, "x", b"m", 0, 0.0).unwrap();
        let mut f = frame(0, 0, b"abc");
        f.flags.insert(FrameFlags::ENCRYPTED);
        assert!(s.push(f, &mut Vec::new()).is_err());
        // An empty end-of-stream frame passes in clear, with no key before it.
        let mut out = Vec::new();
        s.push(frame(0, 0, b""), &mut out).unwrap();
        assert!(matches!(&out[..], [Message::Frame(f)] if f.flags == FrameFlags::KEYFRAME));
    }
}
