//! SRTP for RTSP clients: RTP/SAVP with AES_CM_128_HMAC_SHA1_80, keys carried by MIKEY
//! ([`mikey`]) the way GStreamer's RTSP server and `rtspsrc` carry them.
//!
//! Keying, per client and per media (track):
//! - the server draws [`SrtpKeys`] and announces them in the SDP of its DESCRIBE answer
//!   (`a=key-mgmt:mikey <base64>`, see [`mikey::MikeyMessage::srtp_offer`]); it protects
//!   the RTP it sends and its RTCP sender reports with them;
//! - on SETUP the client may send `KeyMgmt: prot=mikey; uri=...; data=...` with *its* keys,
//!   which protect the RTCP it sends to the server (receiver reports, NACKs): see
//!   [`mikey::parse_key_mgmt_header`] and [`SrtpSession::set_remote_keys`].
//!
//! Cost: SRTP is the one per-client step that touches payload bytes (AES-CM over the
//! payload and HMAC-SHA1 over the packet), so a client that needs it cannot share the
//! channel's payload buffer: the fan-out writes the client's RTP header, then calls
//! [`SrtpSession::protect_rtp`] and sends the returned buffer. Clients on plain RTP/AVP pay
//! nothing. The crypto is webrtc-rs's `srtp` crate (`webrtc_srtp::context::Context`).
//!
//! Wiring (following gst-rtsp-server): a client asks with `?srtp=1` on the URL
//! ([`crate::rtsp::target::wants_srtp`]). DESCRIBE draws keys per track, keeps them on the
//! connection and offers `m=... RTP/SAVP` with `a=key-mgmt` ([`crate::sdp::offer_srtp`];
//! MIKEY with an empty crypto-session map, ROC 0). SETUP accepts `RTP/SAVP` over UDP and
//! `RTP/SAVP/TCP` interleaved (461 if the connection got no keys), applies the `KeyMgmt`
//! header's keys (entry whose `uri` matches, else the first; failure: 463 "Key Management
//! Failure") and puts an [`SrtpSession`] in the client's `TrackDest`: the fan-out protects
//! RTP (retransmissions re-protect the stored plain packet) and RTCP SR/BYE for that
//! client only, and the RTCP reader (the shared UDP socket, or the RTSP connection's
//! interleaved channel) unprotects its SRTCP (failures are dropped and counted as
//! `RtcpDrop::SrtcpRejected`). Keys travel in the clear in the SDP: secrecy needs RTSP
//! over TLS, as with GStreamer.

pub mod mikey;

use bytes::Bytes;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

/// The one protection profile served: AES-128 counter mode, HMAC-SHA1 with an 80-bit tag.
pub const PROFILE: ProtectionProfile = ProtectionProfile::Aes128CmHmacSha1_80;

/// Bytes SRTP adds to an RTP packet with [`PROFILE`] (the authentication tag). The
/// packetiser's MTU already leaves room for it.
pub const RTP_OVERHEAD: usize = 10;

/// Why an SRTP operation failed. The packet is to be dropped (and counted); the session
/// stays usable.
#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    #[error("SRTP keys: {0}")]
    Keys(String),
    #[error("cannot protect packet: {0}")]
    Protect(String),
    #[error("SRTCP packet rejected: {0}")]
    Unprotect(String),
    #[error("SRTCP from a client that sent no KeyMgmt keys")]
    NoRemoteKeys,
}

/// An SRTP master key and master salt for AES_CM_128_HMAC_SHA1_80.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub master_key: [u8; 16],
    pub master_salt: [u8; 14],
}

impl std::fmt::Debug for SrtpKeys {
    /// Never print key material into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpKeys(..)")
    }
}

impl SrtpKeys {
    pub const KEY_LEN: usize = 16;
    pub const SALT_LEN: usize = 14;

    /// Fresh keys from the operating system's random source.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut rng = rand::rngs::OsRng;
        let mut keys = Self {
            master_key: [0; 16],
            master_salt: [0; 14],
        };
        rng.fill_bytes(&mut keys.master_key);
        rng.fill_bytes(&mut keys.master_salt);
        keys
    }

    /// From key || salt (30 bytes), as GStreamer's `srtp-key` caps field holds them.
    pub fn from_concat(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::KEY_LEN + Self::SALT_LEN {
            return None;
        }
        let mut keys = Self {
            master_key: [0; 16],
            master_salt: [0; 14],
        };
        keys.master_key.copy_from_slice(&bytes[..Self::KEY_LEN]);
        keys.master_salt.copy_from_slice(&bytes[Self::KEY_LEN..]);
        Some(keys)
    }

    /// Key || salt (30 bytes).
    pub fn concat(&self) -> [u8; 30] {
        let mut out = [0u8; 30];
        out[..Self::KEY_LEN].copy_from_slice(&self.master_key);
        out[Self::KEY_LEN..].copy_from_slice(&self.master_salt);
        out
    }

    fn context(&self) -> Result<Context, SrtpError> {
        Context::new(&self.master_key, &self.master_salt, PROFILE, None, None)
            .map_err(|e| SrtpError::Keys(e.to_string()))
    }
}

/// One client's SRTP state for one media: our keys (outbound RTP and RTCP) and, once the
/// client sent them in `KeyMgmt`, its keys (inbound SRTCP). Not shared between clients.
pub struct SrtpSession {
    local_keys: SrtpKeys,
    outbound: Context,
    inbound: Option<Context>,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSession")
            .field("remote_keys", &self.inbound.is_some())
            .finish_non_exhaustive()
    }
}

impl SrtpSession {
    /// A session protecting with `local` (the keys announced in the SDP). The outbound
    /// rollover counter starts at 0, which is what the SDP's MIKEY must announce.
    pub fn new(local: SrtpKeys) -> Result<Self, SrtpError> {
        let outbound = local.context()?;
        Ok(Self {
            local_keys: local,
            outbound,
            inbound: None,
        })
    }

    /// The keys this session protects with (to put in the SDP).
    pub fn local_keys(&self) -> &SrtpKeys {
        &self.local_keys
    }

    /// The client's keys from its `KeyMgmt` header, for the SRTCP it sends us.
    pub fn set_remote_keys(&mut self, remote: &SrtpKeys) -> Result<(), SrtpError> {
        self.inbound = Some(remote.context()?);
        Ok(())
    }

    /// Whether the client sent its keys.
    pub fn has_remote_keys(&self) -> bool {
        self.inbound.is_some()
    }

    /// Encrypt and authenticate one RTP packet (header + payload). Packets must be
    /// protected in sending order per SSRC so the rollover counter follows the sequence.
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Bytes, SrtpError> {
        self.outbound
            .encrypt_rtp(packet)
            .map_err(|e| SrtpError::Protect(e.to_string()))
    }

    /// Encrypt and authenticate one (compound) RTCP packet we send, e.g. a sender report.
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Bytes, SrtpError> {
        self.outbound
            .encrypt_rtcp(packet)
            .map_err(|e| SrtpError::Protect(e.to_string()))
    }

    /// Check and decrypt one SRTCP packet from the client. A packet that fails
    /// authentication (or arrives before the client's keys) is an error: drop and count.
    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Bytes, SrtpError> {
        let inbound = self.inbound.as_mut().ok_or(SrtpError::NoRemoteKeys)?;
        inbound
            .decrypt_rtcp(packet)
            .map_err(|e| SrtpError::Unprotect(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1234u32.to_be_bytes());
        p.extend_from_slice(&0x1111_2222u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// An RTCP receiver report with one report block, SSRC 0x3333_4444.
    fn rr() -> Vec<u8> {
        let mut p = vec![0x81, 201, 0, 7];
        p.extend_from_slice(&0x3333_4444u32.to_be_bytes());
        p.extend_from_slice(&0x1111_2222u32.to_be_bytes());
        p.extend_from_slice(&[0; 20]);
        p
    }

    #[test]
    fn rtp_round_trip_and_overhead() {
        let keys = SrtpKeys::random();
        let mut tx = SrtpSession::new(keys.clone()).unwrap();
        let mut rx = keys.context().unwrap();
        for seq in [65_534u16, 65_535, 0, 1] {
            let plain = rtp(seq, b"hello payload");
            let sealed = tx.protect_rtp(&plain).unwrap();
            assert_eq!(sealed.len(), plain.len() + RTP_OVERHEAD);
            assert_ne!(&sealed[12..plain.len()], &plain[12..], "payload encrypted");
            assert_eq!(&rx.decrypt_rtp(&sealed).unwrap()[..], &plain[..]);
        }
    }

    #[test]
    fn rtcp_both_ways() {
        let ours = SrtpKeys::random();
        let theirs = SrtpKeys::random();
        let mut session = SrtpSession::new(ours.clone()).unwrap();

        // Our SR-like packet decrypts with our keys.
        let sealed = session.protect_rtcp(&rr()).unwrap();
        assert_eq!(
            &ours.context().unwrap().decrypt_rtcp(&sealed).unwrap()[..],
            &rr()[..]
        );

        // Their RTCP: refused before KeyMgmt, accepted after, tampering detected.
        let from_client = theirs.context().unwrap().encrypt_rtcp(&rr()).unwrap();
        assert!(matches!(
            session.unprotect_rtcp(&from_client),
            Err(SrtpError::NoRemoteKeys)
        ));
        session.set_remote_keys(&theirs).unwrap();
        assert_eq!(
            &session.unprotect_rtcp(&from_client).unwrap()[..],
            &rr()[..]
        );
        let mut tampered = theirs
            .context()
            .unwrap()
            .encrypt_rtcp(&rr())
            .unwrap()
            .to_vec();
        tampered[10] ^= 1;
        assert!(session.unprotect_rtcp(&tampered).is_err());
        assert!(session.unprotect_rtcp(&[0x80, 201]).is_err());
        assert!(session.unprotect_rtcp(&[]).is_err());
    }

    #[test]
    fn garbage_rtp_is_an_error() {
        let mut s = SrtpSession::new(SrtpKeys::random()).unwrap();
        assert!(s.protect_rtp(&[1, 2, 3]).is_err());
        assert!(s.protect_rtcp(&[]).is_err());
    }

    #[test]
    fn keys_concat() {
        let k = SrtpKeys::random();
        assert_eq!(SrtpKeys::from_concat(&k.concat()), Some(k.clone()));
        assert_eq!(SrtpKeys::from_concat(&[0; 29]), None);
        assert_eq!(format!("{k:?}"), "SrtpKeys(..)");
    }
}
