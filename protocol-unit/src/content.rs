//! Edge encryption: the protocol unit's share of content encryption.
//!
//! The encoder unit encrypts some frames itself ([`FrameFlags::ENCRYPTED`]) and leaves the
//! others in clear, flagged [`FrameFlags::EDGE_ENCRYPT`], with the channel's key sent ahead in
//! [`Message::ContentKey`]. [`EdgeCrypto`] holds a channel's keys and encrypts those frames
//! with the same key and the same payload format (`divisor_link::content`), so a client gets
//! identical bytes whichever unit did the work.
//!
//! Order matters: feed [`EdgeCrypto::on_message`] every message of the channel in link order
//! and call [`EdgeCrypto::prepare`] on each frame as it arrives (before any buffering), so an
//! edge frame is encrypted under the key the encoder announced last before it — the key the
//! encoder meant (its key ids only increase, and it announces each key before its first
//! frame).

use divisor_link::content::{ContentError, FrameCipher};
use divisor_link::{Cipher, Frame, FrameFlags, Message};

/// The content keys of one channel: the current one and the one before it.
#[derive(Debug, Default, Clone)]
pub struct EdgeCrypto {
    current: Option<FrameCipher>,
    previous: Option<FrameCipher>,
}

impl EdgeCrypto {
    pub fn new() -> EdgeCrypto {
        EdgeCrypto::default()
    }

    /// Whether the channel is encrypted (a key has been announced).
    pub fn is_encrypted(&self) -> bool {
        self.current.is_some()
    }

    /// The channel's cipher, once a key has been announced: what SDP describes.
    pub fn cipher(&self) -> Option<Cipher> {
        self.current.as_ref().map(FrameCipher::cipher)
    }

    /// The id of the current key.
    pub fn current_key_id(&self) -> Option<u32> {
        self.current.as_ref().map(FrameCipher::key_id)
    }

    /// Take a key announced by the encoder; it becomes current, the old current one
    /// previous. Announcing the current key again changes nothing.
    pub fn add_key(&mut self, key_id: u32, cipher: Cipher, key: &[u8]) -> Result<(), ContentError> {
        let k = FrameCipher::new(cipher, key_id, key)?;
        if self.current_key_id() == Some(key_id) {
            self.current = Some(k);
        } else {
            self.previous = self.current.replace(k);
        }
        Ok(())
    }

    /// Look at a link message of this channel: a [`Message::ContentKey`] is taken (`Ok(true)`),
    /// anything else is ignored (`Ok(false)`). A key of the wrong length is an error.
    pub fn on_message(&mut self, msg: &Message) -> Result<bool, ContentError> {
        match msg {
            Message::ContentKey {
                key_id,
                cipher,
                key,
                ..
            } => {
                self.add_key(*key_id, *cipher, key)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The frame as clients must get it: an [`FrameFlags::EDGE_ENCRYPT`] frame is encrypted
    /// under the current key (the flag cleared, [`FrameFlags::ENCRYPTED`] set); any other
    /// frame is returned as it is.
    pub fn prepare(&self, mut frame: Frame) -> Result<Frame, ContentError> {
        let edge = frame.flags.contains(FrameFlags::EDGE_ENCRYPT);
        if edge && frame.flags.contains(FrameFlags::ENCRYPTED) {
            return Err(ContentError::ConflictingFlags);
        }
        if !edge {
            return Ok(frame);
        }
        let key = self
            .current
            .as_ref()
            .ok_or(ContentError::NoKey(frame.channel))?;
        frame.data = key.encrypt(frame.track, frame.dts, &frame.data);
        frame.flags.remove(FrameFlags::EDGE_ENCRYPT);
        frame.flags.insert(FrameFlags::ENCRYPTED);
        Ok(frame)
    }

    /// The key `key_id`, if it is the current or the previous one.
    pub fn key(&self, key_id: u32) -> Option<&FrameCipher> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find(|k| k.key_id() == key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use divisor_link::content::{derive_key, Keyring};
    use divisor_link::Codec;

    fn frame(dts: i64, flags: FrameFlags) -> Frame {
        Frame {
            channel: 3,
            track: 0,
            codec: Codec::H264,
            flags,
            pts: dts,
            dts,
            duration: 3600,
            data: Bytes::from_static(b"\0\0\0\x01\x65frame data, any length"),
        }
    }

    fn key_msg(id: u32, cipher: Cipher) -> Message {
        Message::ContentKey {
            channel: 3,
            key_id: id,
            cipher,
            key: derive_key(b"master", "vod/clip.mp4#", id, cipher),
        }
    }

    #[test]
    fn edge_encrypted_equals_encoder_encrypted() {
        for cipher in [Cipher::DesCbc, Cipher::Aes128Ctr] {
            let mut edge = EdgeCrypto::new();
            assert!(edge.on_message(&key_msg(4, cipher)).unwrap());
            assert_eq!(edge.cipher(), Some(cipher));
            let plain = frame(7200, FrameFlags::KEYFRAME | FrameFlags::EDGE_ENCRYPT);
            let out = edge.prepare(plain.clone()).unwrap();
            assert_eq!(out.flags, FrameFlags::KEYFRAME | FrameFlags::ENCRYPTED);
            // What the encoder unit would have produced for the same frame.
            let key = derive_key(b"master", "vod/clip.mp4#", 4, cipher);
            let encoder = FrameCipher::new(cipher, 4, &key).unwrap();
            assert_eq!(out.data, encoder.encrypt(0, 7200, &plain.data));
            let mut ring = Keyring::new();
            ring.insert(encoder);
            assert_eq!(ring.decrypt(&out.data).unwrap(), plain.data);
        }
    }

    #[test]
    fn other_frames_pass_and_errors_are_typed() {
        let mut edge = EdgeCrypto::new();
        let f = frame(0, FrameFlags::EDGE_ENCRYPT);
        assert_eq!(edge.prepare(f.clone()), Err(ContentError::NoKey(3)));
        let clear = frame(0, FrameFlags::KEYFRAME);
        assert_eq!(edge.prepare(clear.clone()).unwrap(), clear);
        assert!(!edge.on_message(&Message::Pause { channel: 3 }).unwrap());
        edge.on_message(&key_msg(0, Cipher::Aes128Ctr)).unwrap();
        let enc = frame(0, FrameFlags::ENCRYPTED);
        assert_eq!(edge.prepare(enc.clone()).unwrap(), enc);
        assert_eq!(
            edge.prepare(frame(0, FrameFlags::ENCRYPTED | FrameFlags::EDGE_ENCRYPT)),
            Err(ContentError::ConflictingFlags)
        );
        let bad = Message::ContentKey {
            channel: 3,
            key_id: 1,
            cipher: Cipher::DesCbc,
            key: Bytes::from_static(b"short"),
        };
        assert!(matches!(
            edge.on_message(&bad),
            Err(ContentError::KeyLength { .. })
        ));
        assert_eq!(edge.current_key_id(), Some(0), "a bad key changes nothing");
    }

    #[test]
    fn rotation_keeps_the_previous_key() {
        let mut edge = EdgeCrypto::new();
        edge.on_message(&key_msg(0, Cipher::Aes128Ctr)).unwrap();
        edge.on_message(&key_msg(1, Cipher::Aes128Ctr)).unwrap();
        edge.on_message(&key_msg(1, Cipher::Aes128Ctr)).unwrap();
        assert_eq!(edge.current_key_id(), Some(1));
        assert!(edge.key(0).is_some() && edge.key(1).is_some());
        let out = edge.prepare(frame(0, FrameFlags::EDGE_ENCRYPT)).unwrap();
        assert_eq!(divisor_link::content::parse(&out.data).unwrap().key_id, 1);
        edge.on_message(&key_msg(2, Cipher::Aes128Ctr)).unwrap();
        assert!(edge.key(0).is_none());
    }
}
