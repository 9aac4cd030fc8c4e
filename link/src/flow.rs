//! Credit-based flow control: frames of a channel flow only while the sender holds credits.
//!
//! The protocol unit grants [`crate::Message::Credits`] as it consumes frames; the encoder
//! unit takes one credit per frame sent. That bounds how far the encoder runs ahead of the
//! protocol unit (design habit 3: the link runs ahead of the deadline only by a window).
//!
//! - [`CreditGate`] (sender side, one per channel): `acquire` waits for a credit;
//!   `grant` adds credits when a `Credits` message arrives; `reset` drops them all (seek).
//! - [`CreditGranter`] (receiver side): counts consumed frames and says when to grant
//!   a batch back, so credits go out in batches rather than one message per frame.

use std::sync::Mutex;
use tokio::sync::Notify;

/// Credits of one channel on the sending side.
#[derive(Debug, Default)]
pub struct CreditGate {
    state: Mutex<GateState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct GateState {
    credits: u64,
}

impl CreditGate {
    /// A gate holding `initial` credits.
    pub fn new(initial: u32) -> CreditGate {
        CreditGate {
            state: Mutex::new(GateState {
                credits: initial as u64,
            }),
            notify: Notify::new(),
        }
    }

    /// Waits until a credit is available and consumes it. Cancel-safe: a dropped `acquire`
    /// consumes nothing.
    pub async fn acquire(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a grant between the check and the await wakes us.
            notified.as_mut().enable();
            if self.try_acquire() {
                return;
            }
            notified.await;
        }
    }

    /// Consumes a credit if one is available.
    pub fn try_acquire(&self) -> bool {
        let mut s = self.lock();
        if s.credits > 0 {
            s.credits -= 1;
            true
        } else {
            false
        }
    }

    /// Adds `n` credits (a `Credits` message arrived) and wakes waiters.
    pub fn grant(&self, n: u32) {
        if n == 0 {
            return;
        }
        self.lock().credits += n as u64;
        self.notify.notify_waiters();
    }

    /// Drops every credit (e.g. on seek or pause, the receiver grants afresh).
    pub fn reset(&self) {
        self.lock().credits = 0;
    }

    /// Credits currently held.
    pub fn available(&self) -> u64 {
        self.lock().credits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is two integers, always consistent: a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Receiver-side bookkeeping: grant `window` credits up front, then grant back in batches
/// of `batch` as frames are consumed.
#[derive(Debug, Clone)]
pub struct CreditGranter {
    window: u32,
    batch: u32,
    consumed: u32,
}

impl CreditGranter {
    /// `window`: frames the sender may have in flight; `batch`: how many consumed frames
    /// make one grant (clamped to 1..=window).
    pub fn new(window: u32, batch: u32) -> CreditGranter {
        CreditGranter {
            window,
            batch: batch.clamp(1, window.max(1)),
            consumed: 0,
        }
    }

    /// Credits to grant when the channel starts (or restarts after a seek).
    pub fn initial(&mut self) -> u32 {
        self.consumed = 0;
        self.window
    }

    /// A frame was consumed; `Some(n)` when it is time to send `Credits{frames: n}`.
    pub fn consumed(&mut self) -> Option<u32> {
        self.consumed += 1;
        if self.consumed >= self.batch {
            let n = self.consumed;
            self.consumed = 0;
            Some(n)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_for_grant() {
        let gate = Arc::new(CreditGate::new(1));
        gate.acquire().await; // initial credit
        let g = gate.clone();
        let waiter = tokio::spawn(async move {
            g.acquire().await;
            tokio::time::Instant::now()
        });
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        gate.grant(1);
        let at = waiter.await.expect("join");
        assert_eq!(at - start, Duration::from_millis(100));
        assert_eq!(gate.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn grant_n_lets_n_through() {
        let gate = CreditGate::new(0);
        gate.grant(3);
        for _ in 0..3 {
            gate.acquire().await;
        }
        assert!(!gate.try_acquire());
        let blocked = tokio::time::timeout(Duration::from_secs(1), gate.acquire()).await;
        assert!(blocked.is_err(), "no credit left");
        // A timed-out acquire consumed nothing.
        gate.grant(1);
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reset_drops_credits() {
        let gate = CreditGate::new(5);
        gate.reset();
        assert_eq!(gate.available(), 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), gate.acquire())
                .await
                .is_err()
        );
        gate.grant(2);
        gate.acquire().await;
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn many_waiters_one_credit_each() {
        let gate = Arc::new(CreditGate::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let g = gate.clone();
            tasks.push(tokio::spawn(async move { g.acquire().await }));
        }
        tokio::task::yield_now().await;
        gate.grant(2);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(tasks.iter().filter(|t| t.is_finished()).count(), 2);
        gate.grant(2);
        for t in tasks {
            t.await.expect("join");
        }
        assert_eq!(gate.available(), 0);
    }

    #[test]
    fn granter_batches() {
        let mut g = CreditGranter::new(8, 4);
        assert_eq!(g.initial(), 8);
        assert_eq!(g.consumed(), None);
        assert_eq!(g.consumed(), None);
        assert_eq!(g.consumed(), None);
        assert_eq!(g.consumed(), Some(4));
        assert_eq!(g.initial(), 8);
    }
}
