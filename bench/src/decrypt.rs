//! Decryption at the measuring receivers (the DES content-encryption workloads): an
//! authorised client's work, so a run proves every frame that reached a client could be
//! decrypted, not only that packets arrived.
//!
//! Reassembles `X-DIVISOR-ENC` fragments (one-byte header, S = 0x80 first, E = 0x40 last;
//! `protocol-unit/src/packetize/opaque.rs`, `docs/ENCRYPTION.md`), decrypts each frame with
//! keys derived from the master secret (`divisor_link::content`) and checks that the clear
//! frame is an H.264 access unit in Annex B (starts with a start code). Sans-IO: packets in,
//! counters out.

use divisor_link::content::{self, FrameCipher, Keyring};

/// What a receiver needs to derive a stream's content keys.
#[derive(Debug, Clone)]
pub struct KeySource {
    pub master: Vec<u8>,
    /// The key-derivation name (`divisor_link::content::vod_key_name`).
    pub name: String,
}

/// Reassembly and decryption of one RTP stream of encrypted frames.
pub struct Decryptor {
    keys: KeySource,
    ring: Keyring,
    buf: Vec<u8>,
    /// Inside a frame (its first fragment was seen) and no packet of it is missing.
    started: bool,
    last_seq: Option<u16>,
    /// Frames decrypted and verified.
    pub ok: u64,
    /// Complete frames that did not decrypt or were not H.264 once decrypted.
    pub failed: u64,
}

impl Decryptor {
    pub fn new(keys: KeySource) -> Decryptor {
        Decryptor {
            keys,
            ring: Keyring::new(),
            buf: Vec::new(),
            started: false,
            last_seq: None,
            ok: 0,
            failed: 0,
        }
    }

    /// Forget the counters (a measurement window starts); reassembly goes on.
    pub fn reset_counts(&mut self) {
        self.ok = 0;
        self.failed = 0;
    }

    /// One RTP packet. A frame with a missing packet is dropped uncounted: the sequence gap
    /// is already counted as loss.
    pub fn on_rtp(&mut self, packet: &[u8]) {
        let Some((seq, payload)) = rtp_payload(packet) else {
            return;
        };
        if self.last_seq.is_some_and(|l| l.wrapping_add(1) != seq) {
            self.started = false;
        }
        self.last_seq = Some(seq);
        let Some((&hdr, body)) = payload.split_first() else {
            return;
        };
        if hdr & 0x80 != 0 {
            self.buf.clear();
            self.started = true;
        }
        if !self.started {
            return;
        }
        self.buf.extend_from_slice(body);
        if hdr & 0x40 == 0 {
            return;
        }
        self.started = false;
        if self.decrypt().is_some_and(|plain| is_annex_b(&plain)) {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
    }

    fn decrypt(&mut self) -> Option<bytes::Bytes> {
        let h = content::parse(&self.buf).ok()?;
        if self.ring.get(h.key_id).is_none() {
            let key = content::derive_key(&self.keys.master, &self.keys.name, h.key_id, h.cipher);
            self.ring
                .insert(FrameCipher::new(h.cipher, h.key_id, &key).ok()?);
        }
        self.ring.decrypt(&self.buf).ok()
    }
}

/// Sequence number and payload of an RTP packet (RFC 3550 5.1: CSRCs, extension and
/// padding skipped).
fn rtp_payload(p: &[u8]) -> Option<(u16, &[u8])> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return None;
    }
    let seq = u16::from_be_bytes([p[2], p[3]]);
    let mut start = 12 + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        let ext = p.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = p.len();
    if p[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*p.last()?))?;
    }
    Some((seq, p.get(start..end)?))
}

/// Whether `frame` starts with an Annex B start code (what the encoder unit sends).
fn is_annex_b(frame: &[u8]) -> bool {
    frame.starts_with(&[0, 0, 1]) || frame.starts_with(&[0, 0, 0, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use divisor_link::Cipher;

    fn packets(seq0: u16, payload: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let n = payload.len().div_ceil(chunk);
        (0..n)
            .map(|i| {
                let mut p = vec![0x80, 96, 0, 0, 0, 0, 0, 1, 0, 0, 0, 7];
                p[2..4].copy_from_slice(&(seq0 + i as u16).to_be_bytes());
                let mut h = 0;
                if i == 0 {
                    h |= 0x80;
                }
                if i == n - 1 {
                    h |= 0x40;
                    p[1] |= 0x80;
                }
                p.push(h);
                p.extend_from_slice(&payload[i * chunk..((i + 1) * chunk).min(payload.len())]);
                p
            })
            .collect()
    }

    #[test]
    fn decrypts_counts_failures_and_skips_gaps() {
        let keys = KeySource {
            master: b"master".to_vec(),
            name: content::vod_key_name("a.mp4", ""),
        };
        let key = content::derive_key(&keys.master, &keys.name, 0, Cipher::DesCbc);
        let c = FrameCipher::new(Cipher::DesCbc, 0, &key).unwrap();
        let frame = [&[0u8, 0, 0, 1, 0x65][..], &[7u8; 3000]].concat();
        let enc = c.encrypt(0, 3600, &frame);
        let mut d = Decryptor::new(keys.clone());
        for p in packets(10, &enc, 1000) {
            d.on_rtp(&p);
        }
        assert_eq!((d.ok, d.failed), (1, 0));
        // A corrupted frame is a failure.
        let mut bad = enc.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        for p in packets(20, &bad, 1000) {
            d.on_rtp(&p);
        }
        assert_eq!((d.ok, d.failed), (1, 1));
        // A frame with a missing packet is not counted at all.
        let ps = packets(30, &enc, 1000);
        d.on_rtp(&ps[0]);
        d.on_rtp(&ps[2]);
        d.on_rtp(&ps[3]);
        assert_eq!((d.ok, d.failed), (1, 1));
        // A wrong master secret fails every frame.
        let mut w = Decryptor::new(KeySource {
            master: b"other".to_vec(),
            ..keys
        });
        for p in packets(40, &enc, 1000) {
            w.on_rtp(&p);
        }
        assert_eq!(w.ok, 0);
        assert_eq!(w.failed, 1);
    }
}
