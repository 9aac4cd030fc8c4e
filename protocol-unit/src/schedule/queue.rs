//! The command queue between control code (tokio tasks) and the sender.
//!
//! Why not `std::sync::mpsc`: its lock-free channel makes a receiver that finds a slot
//! reserved but not yet written busy-wait with `sched_yield` until the writer finishes.
//! The rt sender runs at SCHED_FIFO, often on the same core as the tokio threads that
//! write commands. When it preempted a writer mid-send, `sched_yield` never let that
//! (lower class) writer run again, so the sender spun until the kernel's real-time
//! throttling stepped in after 950 ms: a ~1 s stall of every stream, seen in the bench as
//! p99 lateness of 930–990 ms with zero loss. A mutex sleeps on a futex instead, which
//! lets the preempted writer finish; the critical sections are a push or a swap.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use crate::fanout::Command;

/// What the receiving side sees when it drains.
pub enum Drained {
    /// Commands in arrival order (possibly none).
    Commands(VecDeque<Command>),
    /// Every sending handle is gone and nothing is left to run.
    Disconnected,
}

struct Slot {
    queue: VecDeque<Command>,
    /// The receiver stopped: sends fail from now on.
    stopped: bool,
}

struct Shared {
    slot: Mutex<Slot>,
}

/// The sending side. Clones share one queue; the receiver notices when all are dropped.
#[derive(Clone)]
pub struct Sender {
    shared: Arc<Shared>,
    /// Liveness token: the receiver holds a `Weak` to it.
    _alive: Arc<()>,
}

/// The receiving side (the sender thread or task).
pub struct Receiver {
    shared: Arc<Shared>,
    alive: Weak<()>,
    /// Reused between drains so a steady stream of commands allocates nothing.
    spare: VecDeque<Command>,
}

/// A new queue.
pub fn channel() -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot {
            queue: VecDeque::new(),
            stopped: false,
        }),
    });
    let alive = Arc::new(());
    let rx = Receiver {
        shared: shared.clone(),
        alive: Arc::downgrade(&alive),
        spare: VecDeque::new(),
    };
    (
        Sender {
            shared,
            _alive: alive,
        },
        rx,
    )
}

fn lock(m: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sender {
    /// Queue `cmd`; false when the receiver has stopped.
    pub fn send(&self, cmd: Command) -> bool {
        let mut slot = lock(&self.shared.slot);
        if slot.stopped {
            return false;
        }
        slot.queue.push_back(cmd);
        true
    }
}

impl Receiver {
    /// Take everything queued. Hand the returned queue back with [`Receiver::recycle`].
    pub fn drain(&mut self) -> Drained {
        let mut batch = std::mem::take(&mut self.spare);
        {
            let mut slot = lock(&self.shared.slot);
            std::mem::swap(&mut slot.queue, &mut batch);
        }
        if batch.is_empty() && self.alive.strong_count() == 0 {
            return Drained::Disconnected;
        }
        Drained::Commands(batch)
    }

    /// Give a drained (now empty) queue back for reuse.
    pub fn recycle(&mut self, mut batch: VecDeque<Command>) {
        batch.clear();
        self.spare = batch;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        lock(&self.shared.slot).stopped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_order_and_reports_disconnect() {
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        assert!(tx.send(Command::RemoveClient { client: 1 }));
        assert!(tx2.send(Command::RemoveClient { client: 2 }));
        let Drained::Commands(batch) = rx.drain() else {
            panic!("expected commands");
        };
        let ids: Vec<_> = batch
            .iter()
            .map(|c| match c {
                Command::RemoveClient { client } => *client,
                _ => 0,
            })
            .collect();
        assert_eq!(ids, [1, 2]);
        rx.recycle(batch);
        // Still connected while a handle lives; empty drains are fine.
        assert!(matches!(rx.drain(), Drained::Commands(b) if b.is_empty()));
        drop(tx);
        assert!(tx2.send(Command::RemoveClient { client: 3 }));
        drop(tx2);
        // What was queued before the last handle went is still delivered.
        assert!(matches!(rx.drain(), Drained::Commands(b) if b.len() == 1));
        assert!(matches!(rx.drain(), Drained::Disconnected));
    }

    #[test]
    fn sends_fail_once_the_receiver_is_gone() {
        let (tx, rx) = channel();
        drop(rx);
        assert!(!tx.send(Command::RemoveClient { client: 1 }));
    }
}
