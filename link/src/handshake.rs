//! Pre-shared-key challenge-response, run by both ends at once.
//!
//! Each side sends `Hello{version, role, nonce}` (32 fresh random bytes), then, having read
//! the peer's Hello, `Auth{mac}` with
//!
//! ```text
//! mac = HMAC-SHA256(key, "divisor-link-v1" || sender role byte || receiver's nonce || sender's nonce)
//! ```
//!
//! The receiver's nonce makes each answer fresh (no replay across connections); the role
//! byte stops a captured answer from one side being reflected as the other's. Each side
//! verifies the peer's MAC in constant time (`hmac`'s `verify_slice`). On any failure the
//! side that notices sends `Error{channel: 0, ..}` and gives up; a side that receives such
//! an error reports it clearly ([`LinkError::PeerRejectedKey`] for a key mismatch).
//!
//! The exchange runs over a [`LinkSender`]/[`LinkReceiver`] pair, so it is the same code
//! over TCP, io_uring and the in-process transport (where the tests drive it). The pure
//! parts ([`compute_mac`], [`verify_mac`], [`check_hello`]) hold all the decisions.

use crate::{ErrorCode, LinkError, LinkReceiver, LinkSender, Message, Role, PROTOCOL_VERSION};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation for the MAC: another protocol using the same key never produces ours.
pub const MAC_CONTEXT: &[u8] = b"divisor-link-v1";

fn mac_for(
    key: &[u8],
    sender: Role,
    receiver_nonce: &[u8; 32],
    sender_nonce: &[u8; 32],
) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(MAC_CONTEXT);
    mac.update(&[sender.to_u8()]);
    mac.update(receiver_nonce);
    mac.update(sender_nonce);
    mac
}

/// The MAC `sender` sends to prove it knows `key`.
pub fn compute_mac(
    key: &[u8],
    sender: Role,
    receiver_nonce: &[u8; 32],
    sender_nonce: &[u8; 32],
) -> [u8; 32] {
    mac_for(key, sender, receiver_nonce, sender_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of a MAC received from `sender`.
pub fn verify_mac(
    key: &[u8],
    sender: Role,
    receiver_nonce: &[u8; 32],
    sender_nonce: &[u8; 32],
    mac: &[u8; 32],
) -> bool {
    mac_for(key, sender, receiver_nonce, sender_nonce)
        .verify_slice(mac)
        .is_ok()
}

/// A fresh random nonce.
pub fn new_nonce() -> [u8; 32] {
    rand::random()
}

/// Checks the peer's Hello against ours; the error says what to reply with.
pub fn check_hello(
    ours: Role,
    our_nonce: &[u8; 32],
    msg: Message,
) -> Result<(Role, [u8; 32]), (LinkError, Option<ErrorCode>)> {
    match msg {
        Message::Hello {
            version,
            role,
            nonce,
        } => {
            if version != PROTOCOL_VERSION {
                return Err((
                    LinkError::VersionMismatch {
                        ours: PROTOCOL_VERSION,
                        theirs: version,
                    },
                    Some(ErrorCode::VersionMismatch),
                ));
            }
            if role == ours {
                return Err((LinkError::SameRole(role), Some(ErrorCode::BadRequest)));
            }
            if &nonce == our_nonce {
                return Err((
                    LinkError::Handshake("peer reflected our nonce".into()),
                    Some(ErrorCode::BadRequest),
                ));
            }
            Ok((role, nonce))
        }
        other => Err(unexpected(other, "Hello")),
    }
}

/// What an unexpected handshake message means: a peer's error, or a protocol violation.
fn unexpected(msg: Message, wanted: &str) -> (LinkError, Option<ErrorCode>) {
    match msg {
        Message::Error {
            code: ErrorCode::AuthFailed,
            ..
        } => (LinkError::PeerRejectedKey, None),
        Message::Error {
            code: ErrorCode::VersionMismatch,
            message,
            ..
        } => (
            LinkError::Peer {
                code: ErrorCode::VersionMismatch,
                message,
            },
            None,
        ),
        Message::Error { code, message, .. } => (LinkError::Peer { code, message }, None),
        other => (
            LinkError::Handshake(format!("expected {wanted}, got {}", other.kind_name())),
            Some(ErrorCode::BadRequest),
        ),
    }
}

/// Run the handshake as `role` with `key`. On failure the peer has been told why (when it
/// makes sense) and the caller drops the link.
pub async fn run(
    tx: &LinkSender,
    rx: &mut LinkReceiver,
    key: &[u8],
    role: Role,
) -> Result<(), LinkError> {
    let nonce = new_nonce();
    tx.send(Message::Hello {
        version: PROTOCOL_VERSION,
        role,
        nonce,
    })
    .await?;
    let result = exchange(tx, rx, key, role, &nonce).await;
    if let Err((e, Some(code))) = &result {
        let message = match code {
            ErrorCode::AuthFailed => "link key mismatch".to_owned(),
            _ => e.to_string(),
        };
        // Best effort: the link may already be gone.
        let _ = tx
            .send(Message::Error {
                channel: 0,
                code: *code,
                message,
            })
            .await;
    }
    result.map_err(|(e, _)| e)
}

async fn exchange(
    tx: &LinkSender,
    rx: &mut LinkReceiver,
    key: &[u8],
    role: Role,
    nonce: &[u8; 32],
) -> Result<(), (LinkError, Option<ErrorCode>)> {
    let hello = rx.recv().await.map_err(|e| (e, None))?;
    let (peer_role, peer_nonce) = check_hello(role, nonce, hello)?;
    let mac = compute_mac(key, role, &peer_nonce, nonce);
    tx.send(Message::Auth { mac })
        .await
        .map_err(|e| (e, None))?;
    match rx.recv().await.map_err(|e| (e, None))? {
        Message::Auth { mac } => {
            if verify_mac(key, peer_role, nonce, &peer_nonce, &mac) {
                Ok(())
            } else {
                Err((LinkError::AuthFailed, Some(ErrorCode::AuthFailed)))
            }
        }
        other => Err(unexpected(other, "Auth")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_pair;

    async fn both(
        key_a: &[u8],
        role_a: Role,
        key_b: &[u8],
        role_b: Role,
    ) -> (
        Result<(), LinkError>,
        Result<(), LinkError>,
        crate::Link,
        crate::Link,
    ) {
        let (mut a, mut b) = mem_pair();
        let (ra, rb) = tokio::join!(
            run(&a.sender, &mut a.receiver, key_a, role_a),
            run(&b.sender, &mut b.receiver, key_b, role_b)
        );
        (ra, rb, a, b)
    }

    #[tokio::test]
    async fn right_key_passes_and_link_works() {
        let (ra, rb, a, mut b) = both(b"k", Role::Encoder, b"k", Role::Protocol).await;
        ra.expect("a ok");
        rb.expect("b ok");
        a.sender
            .send(Message::Pause { channel: 1 })
            .await
            .expect("send");
        assert_eq!(
            b.receiver.recv().await.expect("recv"),
            Message::Pause { channel: 1 }
        );
    }

    #[tokio::test]
    async fn wrong_key_fails_both_sides_clearly() {
        let (ra, rb, _a, _b) = both(b"k1", Role::Encoder, b"k2", Role::Protocol).await;
        for r in [ra, rb] {
            let e = r.expect_err("must fail");
            assert!(matches!(e, LinkError::AuthFailed), "{e:?}");
            assert!(e.to_string().contains("key differs"), "{e}");
        }
    }

    #[tokio::test]
    async fn receiver_of_auth_error_reports_rejected_key() {
        // A peer that answers our Hello with the AuthFailed error.
        let (mut a, mut b) = mem_pair();
        let peer = async {
            let _ = b.receiver.recv().await;
            b.sender
                .send(Message::Hello {
                    version: PROTOCOL_VERSION,
                    role: Role::Protocol,
                    nonce: [1; 32],
                })
                .await
                .expect("hello");
            let _ = b.receiver.recv().await; // our Auth
            b.sender
                .send(Message::Error {
                    channel: 0,
                    code: ErrorCode::AuthFailed,
                    message: "link key mismatch".into(),
                })
                .await
                .expect("err");
        };
        let (r, ()) = tokio::join!(run(&a.sender, &mut a.receiver, b"k", Role::Encoder), peer);
        let e = r.expect_err("rejected");
        assert!(matches!(e, LinkError::PeerRejectedKey), "{e:?}");
        assert!(e.to_string().contains("peer rejected our link key"), "{e}");
    }

    #[tokio::test]
    async fn same_role_fails() {
        let (ra, rb, _a, _b) = both(b"k", Role::Encoder, b"k", Role::Encoder).await;
        assert!(matches!(ra, Err(LinkError::SameRole(Role::Encoder))));
        assert!(matches!(rb, Err(LinkError::SameRole(Role::Encoder))));
    }

    #[tokio::test]
    async fn version_mismatch_both_sides() {
        let (mut a, mut b) = mem_pair();
        let peer = async {
            let _ = b.receiver.recv().await;
            b.sender
                .send(Message::Hello {
                    version: PROTOCOL_VERSION + 1,
                    role: Role::Protocol,
                    nonce: [1; 32],
                })
                .await
                .expect("hello");
            b.receiver.recv().await
        };
        let (r, reply) = tokio::join!(run(&a.sender, &mut a.receiver, b"k", Role::Encoder), peer);
        assert!(
            matches!(r, Err(LinkError::VersionMismatch { theirs, .. }) if theirs == PROTOCOL_VERSION + 1)
        );
        assert!(matches!(
            reply,
            Ok(Message::Error {
                code: ErrorCode::VersionMismatch,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn garbage_instead_of_hello_fails() {
        let (mut a, mut b) = mem_pair();
        let peer = async {
            b.sender
                .send(Message::Credits {
                    channel: 9,
                    frames: 1,
                })
                .await
                .expect("send");
            let _ = b.receiver.recv().await; // our hello
            b.receiver.recv().await
        };
        let (r, reply) = tokio::join!(run(&a.sender, &mut a.receiver, b"k", Role::Encoder), peer);
        assert!(matches!(r, Err(LinkError::Handshake(_))), "{r:?}");
        assert!(matches!(
            reply,
            Ok(Message::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn peer_hanging_up_is_closed() {
        let (mut a, b) = mem_pair();
        drop(b);
        let r = run(&a.sender, &mut a.receiver, b"k", Role::Encoder).await;
        assert!(matches!(r, Err(LinkError::Closed)), "{r:?}");
    }

    #[test]
    fn mac_binds_role_and_nonces() {
        let (n1, n2) = ([1u8; 32], [2u8; 32]);
        let m = compute_mac(b"key", Role::Encoder, &n1, &n2);
        assert!(verify_mac(b"key", Role::Encoder, &n1, &n2, &m));
        assert!(!verify_mac(b"key", Role::Protocol, &n1, &n2, &m));
        assert!(!verify_mac(b"key", Role::Encoder, &n2, &n1, &m));
        assert!(!verify_mac(b"kez", Role::Encoder, &n1, &n2, &m));
    }
}
