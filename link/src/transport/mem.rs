//! In-process link: two pairs of tokio queues, messages moved, never encoded. This is the
//! monolithic server's transport: the same encoder and protocol code, no socket between.

use super::{LinkShared, QUEUE_DEPTH};
use crate::{Link, LinkReceiver, LinkSender};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Two connected ends.
pub fn pair() -> (Link, Link) {
    let (a_tx, b_rx) = mpsc::channel(QUEUE_DEPTH);
    let (b_tx, a_rx) = mpsc::channel(QUEUE_DEPTH);
    let end = |tx, rx| Link {
        sender: LinkSender {
            tx,
            waker: None,
            _alive: None,
        },
        receiver: LinkReceiver {
            rx,
            shared: Arc::new(LinkShared::default()),
            waker: None,
            _guard: None,
        },
        peer: "in-process".to_owned(),
    };
    (end(a_tx, a_rx), end(b_tx, b_rx))
}
