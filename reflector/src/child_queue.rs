//! The queue between the relay and one child's link writer.
//!
//! Frames and control messages share one queue, so their order is kept (a ContentKey and
//! an Announce before the frames they cover), but they are bounded apart: frames by
//! `frame_limit` (past it, the relay skips the child to the next keyframe), control
//! messages by a much larger `control_limit` (past it the child is dropped: it asks for
//! far more than it reads). A child that subscribes to many channels at once is answered,
//! not dropped.

use std::collections::VecDeque;
use std::sync::Mutex;

use divisor_link::Message;
use tokio::sync::Notify;

/// What [`ChildQueue::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// A frame was refused: `frame_limit` frames are waiting.
    FramesFull,
    /// A control message was refused: `control_limit` messages are waiting.
    ControlFull,
    /// The writer is gone.
    Closed,
}

struct State {
    q: VecDeque<Message>,
    frames: usize,
    closed: bool,
}

pub struct ChildQueue {
    state: Mutex<State>,
    notify: Notify,
    frame_limit: usize,
    control_limit: usize,
}

impl ChildQueue {
    pub fn new(frame_limit: usize, control_limit: usize) -> ChildQueue {
        ChildQueue {
            state: Mutex::new(State {
                q: VecDeque::new(),
                frames: 0,
                closed: false,
            }),
            notify: Notify::new(),
            frame_limit: frame_limit.max(1),
            control_limit: control_limit.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, m: Message) -> Push {
        let mut s = self.lock();
        if s.closed {
            return Push::Closed;
        }
        let frame = matches!(m, Message::Frame(_));
        if frame && s.frames >= self.frame_limit {
            return Push::FramesFull;
        }
        if !frame && s.q.len() - s.frames >= self.control_limit {
            return Push::ControlFull;
        }
        s.frames += usize::from(frame);
        s.q.push_back(m);
        drop(s);
        self.notify.notify_one();
        Push::Queued
    }

    /// The next message; `None` once closed. One consumer (the child's writer).
    pub async fn pop(&self) -> Option<Message> {
        loop {
            {
                let mut s = self.lock();
                if let Some(m) = s.q.pop_front() {
                    s.frames -= usize::from(matches!(m, Message::Frame(_)));
                    return Some(m);
                }
                if s.closed {
                    return None;
                }
            }
            // A push between the check and here left a permit: no wake-up is lost.
            self.notify.notified().await;
        }
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_and_control_are_bounded_apart_and_kept_in_order() {
        let q = ChildQueue::new(2, 3);
        let frame = || {
            Message::Frame(divisor_link::Frame {
                channel: 1,
                track: 0,
                codec: divisor_link::Codec::H264,
                flags: divisor_link::FrameFlags::empty(),
                pts: 0,
                dts: 0,
                duration: 0,
                data: bytes::Bytes::new(),
            })
        };
        assert_eq!(q.push(Message::Ping { seq: 1 }), Push::Queued);
        assert_eq!(q.push(frame()), Push::Queued);
        assert_eq!(q.push(frame()), Push::Queued);
        assert_eq!(q.push(frame()), Push::FramesFull);
        assert_eq!(q.push(Message::Ping { seq: 2 }), Push::Queued);
        assert_eq!(q.push(Message::Ping { seq: 3 }), Push::Queued);
        assert_eq!(q.push(Message::Ping { seq: 4 }), Push::ControlFull);
        assert_eq!(q.pop().await, Some(Message::Ping { seq: 1 }));
        assert!(matches!(q.pop().await, Some(Message::Frame(_))));
        assert_eq!(q.push(frame()), Push::Queued, "room again");
        q.close();
        assert_eq!(q.push(frame()), Push::Closed);
        let mut left = 0;
        while q.pop().await.is_some() {
            left += 1;
        }
        assert_eq!(left, 4, "what was queued is still written");
    }
}
