//! The deadline-ordered sender: runs the fan-out [`Engine`] on its own thread (real-time
//! mode) or as a tokio task (plain mode, kept for comparison).
//!
//! Control code sends [`Command`]s through an [`EngineHandle`] (a queue plus a wake-up);
//! the sender drains them, runs every feed whose deadline has come, and sleeps until the
//! next deadline:
//!
//! - `rt`: a dedicated thread, pinned to `--rt-core` if given, SCHED_FIFO and `mlockall`
//!   when permitted. Far from a deadline it parks (woken early by commands); within
//!   [`FINE_WINDOW`] of it, it sleeps with `clock_nanosleep(TIMER_ABSTIME)` and spins the
//!   last `--spin-us` microseconds.
//! - `plain`: a tokio task sleeping with tokio timers (millisecond resolution, shared
//!   worker threads): what a server without a real-time scheduler does.
//!
//! Both record the same send-lateness histogram ([`crate::fanout::stats`]).

pub mod queue;
pub mod rt;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::fanout::{Command, Engine};

/// Within this of a deadline the rt sender stops listening for commands and sleeps
/// precisely (commands then wait at most this long).
pub const FINE_WINDOW: Duration = Duration::from_millis(2);

/// Longest the rt sender runs without sleeping before it gives the core away for
/// [`OVERLOAD_YIELD`]. A SCHED_FIFO thread that is always behind would otherwise leave
/// ordinary threads on its core only the kernel's real-time throttling share (5 %): the
/// RTSP and RTCP tasks (and, in `divisor-mono`, the encoder) crawl, sessions cannot be
/// set up or kept alive, and clients time out. This keeps about 9 % of the core for them.
pub const MAX_BUSY: Duration = Duration::from_millis(50);
pub const OVERLOAD_YIELD: Duration = Duration::from_millis(5);
/// Least time between two "overloaded" warnings of the rt sender.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// SCHED_FIFO priority of the rt sender (1..=99; above ordinary threads, below the
/// kernel's own real-time threads at 50+ on PREEMPT_RT).
const RT_PRIORITY: i32 = 40;

/// Which sender runs the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedulerMode {
    /// Dedicated real-time thread.
    Rt,
    /// Tokio task with tokio timers.
    Plain,
}

/// Scheduler settings.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    pub mode: SchedulerMode,
    /// Core to pin the rt sender to.
    pub rt_core: Option<usize>,
    /// Busy-wait this long before each deadline (rt mode).
    pub spin: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            mode: SchedulerMode::Rt,
            rt_core: None,
            spin: Duration::ZERO,
        }
    }
}

enum Waker {
    Thread(std::thread::Thread),
    Tokio(Arc<Notify>),
}

/// Sends commands to the engine. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct EngineHandle {
    tx: queue::Sender,
    waker: Arc<Waker>,
}

impl EngineHandle {
    /// Queue `cmd` and wake the sender. False when the sender has stopped.
    pub fn send(&self, cmd: Command) -> bool {
        if !self.tx.send(cmd) {
            return false;
        }
        match &*self.waker {
            Waker::Thread(t) => t.unpark(),
            Waker::Tokio(n) => n.notify_one(),
        }
        true
    }
}

/// Start the sender for `engine`. Plain mode needs a tokio runtime.
pub fn start(config: SchedulerConfig, engine: Engine) -> std::io::Result<EngineHandle> {
    let (tx, rx) = queue::channel();
    match config.mode {
        SchedulerMode::Rt => {
            let thread = std::thread::Builder::new()
                .name("divisor-sender".into())
                .spawn(move || run_rt(config, engine, rx))?;
            Ok(EngineHandle {
                tx,
                waker: Arc::new(Waker::Thread(thread.thread().clone())),
            })
        }
        SchedulerMode::Plain => {
            let notify = Arc::new(Notify::new());
            let n = notify.clone();
            tokio::spawn(run_plain(engine, rx, n));
            info!("plain sender (tokio timers)");
            Ok(EngineHandle {
                tx,
                waker: Arc::new(Waker::Tokio(notify)),
            })
        }
    }
}

/// Drain queued commands; false on shutdown or when every handle is gone.
fn drain(engine: &mut Engine, rx: &mut queue::Receiver) -> bool {
    let mut batch = match rx.drain() {
        queue::Drained::Commands(batch) => batch,
        queue::Drained::Disconnected => return false,
    };
    let mut running = true;
    for cmd in batch.drain(..) {
        if matches!(cmd, Command::Shutdown) {
            running = false;
            break;
        }
        engine.handle(cmd, Instant::now());
    }
    rx.recycle(batch);
    running
}

fn run_rt(config: SchedulerConfig, mut engine: Engine, mut rx: queue::Receiver) {
    rt::make_realtime(config.rt_core, RT_PRIORITY);
    // When the sender last slept, and when it last said it had to yield.
    let mut rested = Instant::now();
    let mut warned: Option<Instant> = None;
    loop {
        if !drain(&mut engine, &mut rx) {
            return;
        }
        engine.run_due(Instant::now());
        let next = engine.next_deadline();
        let now = Instant::now();
        if next <= now {
            if now.saturating_duration_since(rested) > MAX_BUSY {
                if warned.is_none_or(|w| now.saturating_duration_since(w) > WARN_INTERVAL) {
                    warn!(
                        "real-time sender busy for over {} ms without a pause (overloaded): \
                         yielding {} ms in every {} so RTSP and RTCP keep running",
                        MAX_BUSY.as_millis(),
                        OVERLOAD_YIELD.as_millis(),
                        MAX_BUSY.as_millis()
                    );
                    warned = Some(now);
                }
                std::thread::sleep(OVERLOAD_YIELD);
                rested = Instant::now();
            }
            continue;
        }
        rested = now;
        let left = next - now;
        if left > FINE_WINDOW {
            // Commands (frames, joins) wake us early.
            std::thread::park_timeout(left - FINE_WINDOW);
        } else {
            if !drain(&mut engine, &mut rx) {
                return;
            }
            // A command may have brought the deadline closer.
            let next = engine.next_deadline().min(next);
            rt::sleep_until(next, config.spin);
        }
    }
}

async fn run_plain(mut engine: Engine, mut rx: queue::Receiver, notify: Arc<Notify>) {
    loop {
        if !drain(&mut engine, &mut rx) {
            return;
        }
        engine.run_due(Instant::now());
        let next = engine.next_deadline();
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
}
