//! Tests of the sans-IO relay core: simulated parents and children, simulated time (no
//! sleeping), so every scenario runs in milliseconds.

use std::time::{Duration, Instant};

use bytes::Bytes;
use divisor_link::{ChannelId, Codec, ErrorCode, Frame, FrameFlags, Message, TrackInfo};

use super::state::{ChildId, Output, Relay, RelayConfig, UpstreamId};

const VIDEO_US: i64 = 40_000; // 25 fps
const AUDIO_US: i64 = 20_000;
const GOP: i64 = 25; // a keyframe every second

fn tracks() -> Vec<TrackInfo> {
    vec![
        TrackInfo {
            track: 0,
            codec: Codec::H264,
            clock_rate: 90_000,
            width: 640,
            height: 360,
            sample_rate: 0,
            channels: 0,
            bitrate: 0,
            params: vec![],
        },
        TrackInfo {
            track: 1,
            codec: Codec::Opus,
            clock_rate: 48_000,
            width: 0,
            height: 0,
            sample_rate: 48_000,
            channels: 2,
            bitrate: 0,
            params: vec![],
        },
    ]
}

/// A parent that carries one channel on the media timeline every test shares: video
/// frame `n` at `n * 40 ms`, audio frame `k` at `k * 20 ms`, `offset_us` added to both
/// (another origin's clock).
struct Parent {
    up: UpstreamId,
    path: Vec<String>,
    offset_us: i64,
    ch: Option<ChannelId>,
    next_v: i64,
    next_a: i64,
    /// Sends nothing while set (cut off).
    silent: bool,
}

impl Parent {
    fn new(up: UpstreamId, path: &[&str]) -> Parent {
        Parent {
            up,
            path: path.iter().map(|s| s.to_string()).collect(),
            offset_us: 0,
            ch: None,
            next_v: 0,
            next_a: 0,
            silent: false,
        }
    }

    /// Subscribed at media time `t_us`: start with its GOP cache (from the last keyframe).
    fn subscribed(&mut self, h: &mut Harness, ch: ChannelId, t_us: i64) {
        self.ch = Some(ch);
        let key = (t_us / VIDEO_US / GOP) * GOP;
        self.next_v = key;
        self.next_a = (key * VIDEO_US + AUDIO_US - 1) / AUDIO_US;
        h.up_says(
            self.up,
            Message::Path {
                channel: ch,
                nodes: self.path.clone(),
            },
        );
        h.up_says(
            self.up,
            Message::Announce {
                channel: ch,
                duration_ms: None,
                tracks: tracks(),
            },
        );
        self.feed(h, t_us);
    }

    /// Send every frame due by media time `t_us`, in time order.
    fn feed(&mut self, h: &mut Harness, t_us: i64) {
        let Some(ch) = self.ch else { return };
        if self.silent {
            return;
        }
        loop {
            let tv = self.next_v * VIDEO_US;
            let ta = self.next_a * AUDIO_US;
            if tv.min(ta) > t_us {
                break;
            }
            let f = if tv <= ta {
                self.next_v += 1;
                Frame {
                    channel: ch,
                    track: 0,
                    codec: Codec::H264,
                    flags: if (self.next_v - 1) % GOP == 0 {
                        FrameFlags::KEYFRAME
                    } else {
                        FrameFlags::empty()
                    },
                    pts: (tv + self.offset_us) * 9 / 100,
                    dts: (tv + self.offset_us) * 9 / 100,
                    duration: 3600,
                    data: Bytes::from_static(&[1u8; 100]),
                }
            } else {
                self.next_a += 1;
                Frame {
                    channel: ch,
                    track: 1,
                    codec: Codec::Opus,
                    flags: FrameFlags::empty(),
                    pts: (ta + self.offset_us) * 48 / 1000,
                    dts: (ta + self.offset_us) * 48 / 1000,
                    duration: 960,
                    data: Bytes::from_static(&[2u8; 20]),
                }
            };
            h.up_says(self.up, Message::Frame(f));
        }
    }
}

struct Harness {
    r: Relay,
    t0: Instant,
    t_us: i64,
    outs: Vec<Output>,
}

impl Harness {
    fn new(cfg: RelayConfig) -> Harness {
        let t0 = Instant::now();
        let mut h = Harness {
            r: Relay::new(cfg, t0),
            t0,
            t_us: 0,
            outs: Vec::new(),
        };
        h.collect();
        h
    }

    /// A relay "r" under parents 1 ("a") and 2 ("b"), both up.
    fn two_parents() -> Harness {
        let mut h = Harness::new(RelayConfig::new("r", vec!["a".into(), "b".into()]));
        h.r.upstream_up(1, h.now());
        h.r.upstream_up(2, h.now());
        h.collect();
        h
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_micros(self.t_us as u64)
    }

    fn collect(&mut self) {
        while let Some(o) = self.r.poll_output() {
            self.outs.push(o);
        }
    }

    fn up_says(&mut self, up: UpstreamId, msg: Message) {
        let now = self.now();
        self.r.from_upstream(up, msg, now);
        self.collect();
    }

    fn child_says(&mut self, child: ChildId, msg: Message) {
        let now = self.now();
        self.r.from_child(child, msg, now);
        self.collect();
    }

    fn subscribe(&mut self, child: ChildId, ch: ChannelId, name: &str) {
        self.child_says(
            child,
            Message::Subscribe {
                channel: ch,
                name: name.into(),
                rendition: String::new(),
            },
        );
    }

    /// Advance 10 ms: parents feed, live parents answer pings, timers run.
    fn tick(&mut self, parents: &mut [&mut Parent]) {
        self.t_us += 10_000;
        for p in parents.iter_mut() {
            if !p.silent {
                // Anything from a parent proves its link alive (as its pongs do).
                self.up_says(p.up, Message::Ping { seq: 0 });
            }
            p.feed(self, self.t_us);
        }
        let now = self.now();
        if self.r.poll_timeout().is_some_and(|t| t <= now) {
            self.r.handle_timeout(now);
            self.collect();
        }
        self.answer_subscribes(parents);
    }

    /// Hand new upstream subscriptions to the simulated parents.
    fn answer_subscribes(&mut self, parents: &mut [&mut Parent]) {
        let subs: Vec<(UpstreamId, ChannelId)> = self.take(|o| match o {
            Output::ToUpstream {
                upstream,
                msg: Message::Subscribe { channel, .. },
            } => Some((*upstream, *channel)),
            _ => None,
        });
        for (up, ch) in subs {
            if let Some(p) = parents.iter_mut().find(|p| p.up == up) {
                let t = self.t_us;
                p.subscribed(self, ch, t);
            }
        }
    }

    fn run(&mut self, ms: i64, parents: &mut [&mut Parent]) {
        for _ in 0..ms / 10 {
            self.tick(parents);
        }
    }

    /// Outputs matching `f`, removed from the log (others stay).
    fn take<T>(&mut self, f: impl Fn(&Output) -> Option<T>) -> Vec<T> {
        let mut got = Vec::new();
        self.outs.retain(|o| match f(o) {
            Some(t) => {
                got.push(t);
                false
            }
            None => true,
        });
        got
    }

    fn frames_to(&mut self, child: ChildId) -> Vec<Frame> {
        self.take(|o| match o {
            Output::ToChild {
                child: c,
                msg: Message::Frame(f),
            } if *c == child => Some(f.clone()),
            _ => None,
        })
    }

    fn closes_to(&mut self, up: UpstreamId) -> usize {
        self.take(|o| match o {
            Output::ToUpstream {
                upstream,
                msg: Message::Close { .. },
            } if *upstream == up => Some(()),
            _ => None,
        })
        .len()
    }

    fn errors_to(&mut self, child: ChildId) -> Vec<(ErrorCode, String)> {
        self.take(|o| match o {
            Output::ToChild {
                child: c,
                msg: Message::Error { code, message, .. },
            } if *c == child => Some((*code, message.clone())),
            _ => None,
        })
    }
}

/// Each track's frames step by exactly one frame: no gap, no duplicate.
fn assert_continuous(frames: &[Frame]) {
    for (track, step) in [(0u8, 3600i64), (1, 960)] {
        let dts: Vec<i64> = frames
            .iter()
            .filter(|f| f.track == track)
            .map(|f| f.dts)
            .collect();
        assert!(
            dts.len() > 10,
            "track {track}: too few frames ({})",
            dts.len()
        );
        for w in dts.windows(2) {
            assert_eq!(
                w[1] - w[0],
                step,
                "track {track}: {} -> {} is a gap or a duplicate",
                w[0],
                w[1]
            );
        }
    }
}

#[test]
fn a_switch_after_silence_splices_with_no_gap_and_no_duplicate() {
    let mut h = Harness::two_parents();
    let mut a = Parent::new(1, &["enc", "m"]);
    let mut b = Parent::new(2, &["enc", "m"]);
    h.r.child_up(7, "child", false);
    h.subscribe(7, 1, "cam");
    h.run(10, &mut [&mut a, &mut b]);
    assert!(
        a.ch.is_some() && b.ch.is_none(),
        "one subscription, at the primary"
    );
    h.run(1500, &mut [&mut a, &mut b]);
    a.silent = true;
    h.run(1000, &mut [&mut a, &mut b]);
    assert!(
        b.ch.is_some(),
        "the silent primary's channel moved to the backup"
    );
    assert_eq!(
        h.closes_to(1),
        1,
        "the old subscription is closed once spliced"
    );
    let frames = h.frames_to(7);
    assert!(frames[0].flags.contains(FrameFlags::KEYFRAME));
    assert_continuous(&frames);
    assert!(frames
        .iter()
        .all(|f| !f.flags.contains(FrameFlags::DISCONTINUITY)));
    let snap = h.r.snapshot(h.now());
    let c = &snap.channels[0];
    assert_eq!(c.counters.switches.get("silence"), Some(&1));
    assert_eq!(c.active_upstream.as_deref(), Some("b"));
    assert_eq!(c.path, vec!["enc", "m", "r"]);
}

#[test]
fn the_switch_is_detected_within_the_silence_time() {
    let mut h = Harness::two_parents();
    let mut a = Parent::new(1, &["m"]);
    let mut b = Parent::new(2, &["m"]);
    h.r.child_up(7, "child", false);
    h.subscribe(7, 1, "cam");
    h.run(1000, &mut [&mut a, &mut b]);
    a.silent = true;
    let cut = h.t_us;
    while b.ch.is_none() {
        h.tick(&mut [&mut a, &mut b]);
        assert!(h.t_us - cut < 1_000_000, "no switch within 1 s");
    }
    // The last frame came at most 20 ms before the cut; 150 ms silence; 10 ms ticks.
    assert!(
        h.t_us - cut <= 180_000,
        "switched after {} µs",
        h.t_us - cut
    );
}

#[test]
fn a_link_drop_switches_at_once_and_a_leaving_parent_moves_make_before_break() {
    let mut h = Harness::two_parents();
    let mut a = Parent::new(1, &["m"]);
    let mut b = Parent::new(2, &["m"]);
    h.r.child_up(7, "child", false);
    h.subscribe(7, 1, "cam");
    h.run(700, &mut [&mut a, &mut b]);
    // A leaves gracefully: B is subscribed while A still sends; A is closed only then.
    h.up_says(
        1,
        Message::GoingAway {
            detail: "bye".into(),
        },
    );
    h.answer_subscribes(&mut [&mut a, &mut b]);
    assert!(b.ch.is_some());
    h.run(500, &mut [&mut a, &mut b]);
    assert_eq!(h.closes_to(1), 1);
    a.ch = None;
    h.run(300, &mut [&mut a, &mut b]);
    // Now B's link drops: nowhere fresh to go but A is back (GoingAway is cleared by a
    // new link), so the channel moves at once, without waiting for silence.
    let t = h.now();
    h.r.upstream_up(1, t);
    h.r.upstream_down(2, "test", t);
    h.collect();
    b.ch = None;
    h.answer_subscribes(&mut [&mut a, &mut b]);
    assert!(
        a.ch.is_some(),
        "resubscribed at A as soon as B's link dropped"
    );
    h.run(500, &mut [&mut a, &mut b]);
    let frames = h.frames_to(7);
    assert_continuous(&frames);
    let snap = h.r.snapshot(h.now());
    let sw = &snap.channels[0].counters.switches;
    assert_eq!(sw.get("parent_leaving"), Some(&1));
    assert_eq!(sw.get("link_down"), Some(&1));
}

#[test]
fn another_timeline_restarts_at_a_keyframe_with_a_discontinuity() {
    let mut h = Harness::two_parents();
    let mut a = Parent::new(1, &["enc1"]);
    let mut b = Parent::new(2, &["enc2"]);
    b.offset_us = 3_600_000_000; // another origin, another clock
    h.r.child_up(7, "child", false);
    h.subscribe(7, 1, "cam");
    h.run(1300, &mut [&mut a, &mut b]);
    a.silent = true;
    h.run(1500, &mut [&mut a, &mut b]);
    let frames = h.frames_to(7);
    let disc: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.flags.contains(FrameFlags::DISCONTINUITY))
        .collect();
    assert!(!disc.is_empty(), "the restart is flagged");
    assert!(disc[0].flags.contains(FrameFlags::KEYFRAME) && disc[0].track == 0);
    for track in [0u8, 1] {
        let dts: Vec<i64> = frames
            .iter()
            .filter(|f| f.track == track)
            .map(|f| f.dts)
            .collect();
        assert!(
            dts.windows(2).all(|w| w[1] > w[0]),
            "track {track}: timestamps downstream keep increasing"
        );
        // No jump of an hour: the new origin was rebased onto ours.
        let max_step = dts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        assert!(
            max_step < 90_000,
            "track {track}: a step of {max_step} ticks"
        );
    }
    assert_eq!(
        h.r.snapshot(h.now()).channels[0].counters.discontinuities,
        1
    );
}

#[test]
fn one_upstream_subscription_however_many_children_then_linger_and_let_go() {
    let mut h = Harness::two_parents();
    let mut a = Parent::new(1, &["m"]);
    let mut b = Parent::new(2, &["m"]);
    for c in 1..=5 {
        h.r.child_up(c, "child", false);
        h.subscribe(c, 1, "cam");
    }
    h.run(1200, &mut [&mut a, &mut b]);
    let subs_up = h.take(|o| {
        matches!(
            o,
            Output::ToUpstream {
                msg: Message::Subscribe { .. },
                ..
            }
        )
        .then_some(())
    });
    assert!(
        subs_up.is_empty() && a.ch.is_some(),
        "one subscription, answered already"
    );
    // A late joiner starts at once at the cached keyframe.
    h.frames_to(1);
    h.r.child_up(9, "late", false);
    h.subscribe(9, 4, "cam");
    let first = h.frames_to(9);
    assert!(!first.is_empty() && first[0].flags.contains(FrameFlags::KEYFRAME));
    for c in [1, 2, 3, 4, 5, 9] {
        let now = h.now();
        h.r.child_down(c, now);
    }
    h.run(4900, &mut [&mut a, &mut b]);
    assert_eq!(h.closes_to(1), 0, "lingers for 5 s");
    h.run(200, &mut [&mut a, &mut b]);
    assert_eq!(h.closes_to(1), 1, "let go after the linger");
    assert!(h.r.snapshot(h.now()).channels.is_empty());
}

#[test]
fn a_pinned_channel_stays_subscribed() {
    let mut cfg = RelayConfig::new("r", vec!["a".into()]);
    cfg.pins = vec![super::ChannelKey::parse("cam")];
    let mut h = Harness::new(cfg);
    let mut a = Parent::new(1, &["m"]);
    let now = h.now();
    h.r.upstream_up(1, now);
    h.collect();
    h.answer_subscribes(&mut [&mut a]);
    assert!(a.ch.is_some(), "subscribed with nobody downstream");
    h.run(8000, &mut [&mut a]);
    assert_eq!(h.closes_to(1), 0);
}

#[test]
fn a_slow_child_is_skipped_to_the_next_keyframe_alone() {
    let mut h = Harness::two_parents();
    let mut a = Parent::new(1, &["m"]);
    let mut b = Parent::new(2, &["m"]);
    h.r.child_up(1, "slow", false);
    h.r.child_up(2, "fast", false);
    h.subscribe(1, 1, "cam");
    h.subscribe(2, 1, "cam");
    h.run(1100, &mut [&mut a, &mut b]);
    h.frames_to(1);
    h.frames_to(2);
    h.r.child_overflow(1, 1);
    h.run(1000, &mut [&mut a, &mut b]);
    let slow = h.frames_to(1);
    let fast = h.frames_to(2);
    assert_continuous(&fast);
    assert!(!slow.is_empty(), "the slow child resumes");
    assert!(
        slow[0].flags.contains(FrameFlags::KEYFRAME) && slow[0].track == 0,
        "it resumes at a keyframe"
    );
    assert!(slow.len() < fast.len());
    let snap = h.r.snapshot(h.now());
    assert_eq!(snap.channels[0].counters.skips, 1);
    assert_eq!(
        snap.children.iter().find(|c| c.id == 1).map(|c| c.skips),
        Some(1)
    );
}

#[test]
fn loops_are_refused_both_ways() {
    let mut h = Harness::two_parents();
    // A request that already came through this node.
    h.r.child_up(1, "child", false);
    h.child_says(
        1,
        Message::Path {
            channel: 1,
            nodes: vec!["x".into(), "r".into(), "y".into()],
        },
    );
    h.subscribe(1, 1, "cam");
    let e = h.errors_to(1);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, ErrorCode::BadRequest);
    assert!(e[0].1.contains("loop"), "{}", e[0].1);
    assert!(
        h.r.snapshot(h.now()).channels.is_empty(),
        "nothing subscribed upstream"
    );
    // A channel whose announced path already holds this node.
    let mut a = Parent::new(1, &["m", "r", "q"]);
    let mut b = Parent::new(2, &["m", "r", "q"]);
    h.subscribe(1, 2, "cam");
    h.answer_subscribes(&mut [&mut a, &mut b]);
    let e = h.errors_to(1);
    assert!(e.iter().any(|(_, m)| m.contains("loop")), "{e:?}");
    assert!(h.closes_to(1) >= 1, "the looping subscription is closed");
    assert!(h.frames_to(1).is_empty(), "no frame storm");
}

#[test]
fn a_child_is_bounded_in_channels_and_bad_requests_are_answered() {
    let mut h = Harness::two_parents();
    h.r.child_up(1, "greedy", false);
    h.r.child_up(2, "good", false);
    h.subscribe(2, 1, "cam");
    for ch in 1..=10_000u32 {
        h.subscribe(1, ch, &format!("c{ch}"));
    }
    let refused = h.errors_to(1);
    assert_eq!(refused.len(), 10_000 - 256);
    assert!(refused[0].1.contains("limit"), "{}", refused[0].1);
    let snap = h.r.snapshot(h.now());
    assert_eq!(
        snap.channels.len(),
        257,
        "256 for the greedy child, 1 for the good one"
    );
    // VoD and control the reflector does not serve.
    h.child_says(
        2,
        Message::Open {
            channel: 5,
            asset: "x.mp4".into(),
            rendition: String::new(),
        },
    );
    h.child_says(2, Message::Pause { channel: 1 });
    let e = h.errors_to(2);
    assert_eq!(e.len(), 2, "{e:?}");
    // The good child's channel is untouched.
    let mut a = Parent::new(1, &["m"]);
    let mut b = Parent::new(2, &["m"]);
    h.answer_subscribes(&mut [&mut a, &mut b]);
    h.run(500, &mut [&mut a, &mut b]);
    assert!(!h.frames_to(2).is_empty());
}

#[test]
fn a_graceful_leave_waits_for_the_children_to_move() {
    let mut h = Harness::two_parents();
    let mut a = Parent::new(1, &["m"]);
    h.r.child_up(1, "child", false);
    h.subscribe(1, 1, "cam");
    h.run(300, &mut [&mut a]);
    let now = h.now();
    h.r.leave(now);
    h.collect();
    let told = h.take(|o| {
        matches!(
            o,
            Output::ToChild {
                child: 1,
                msg: Message::GoingAway { .. }
            }
        )
        .then_some(())
    });
    assert_eq!(told.len(), 1);
    assert!(!h.outs.contains(&Output::LeaveDone));
    h.run(200, &mut [&mut a]);
    h.child_says(1, Message::Close { channel: 1 });
    assert!(
        h.outs.contains(&Output::LeaveDone),
        "done once the child moved"
    );
}

#[test]
fn rewiring_moves_channels_off_a_dropped_upstream() {
    let mut h = Harness::two_parents();
    let mut a = Parent::new(1, &["m"]);
    let mut b = Parent::new(2, &["m"]);
    h.r.child_up(1, "child", false);
    h.subscribe(1, 1, "cam");
    h.run(1200, &mut [&mut a, &mut b]);
    let now = h.now();
    h.r.set_upstreams(vec!["b".into()], now);
    h.collect();
    h.answer_subscribes(&mut [&mut a, &mut b]);
    assert!(b.ch.is_some());
    h.run(600, &mut [&mut a, &mut b]);
    assert_eq!(h.closes_to(1), 1);
    assert!(h.outs.contains(&Output::Hangup { upstream: 1 }));
    assert_continuous(&h.frames_to(1));
}

#[test]
fn a_channel_silent_on_a_live_link_waits_before_switching() {
    let mut h = Harness::two_parents();
    let mut a = Parent::new(1, &["m"]);
    let mut b = Parent::new(2, &["m"]);
    h.r.child_up(7, "child", false);
    h.subscribe(7, 1, "cam");
    h.run(1000, &mut [&mut a, &mut b]);
    // The origin stalls for 1 s: A's link stays alive (it answers), so the silence is
    // shared by every parent and no switch is made.
    let ch = a.ch.take();
    h.run(1000, &mut [&mut a, &mut b]);
    assert!(b.ch.is_none(), "switched on a silence every parent shares");
    // Silent for longer than `channel_silence`: A is given up on after all.
    h.run(1200, &mut [&mut a, &mut b]);
    assert!(
        b.ch.is_some(),
        "a channel silent for 2 s on a live link was not moved"
    );
    let _ = ch;
}
