//! The tokio driver of the relay core: real links in, [`Output`]s carried out.
//!
//! The core sits behind one mutex and is only ever held for a call and the draining of
//! its outputs; nothing awaits under it. Per link:
//!
//! - an **upstream** slot is a task that dials (with backoff), attaches the link, feeds
//!   what it receives to the core and redials when it drops or the core resets it; its
//!   messages go out through an unbounded queue (control traffic only, small);
//! - a **child** is a reader task and a writer task joined by a *bounded* queue. Frames are
//!   offered with `try_send`: a full queue tells the core, which skips that child to the
//!   next keyframe; a child whose queue stays full for [`DriverConfig::child_stall`], or
//!   that cannot take a control message, is dropped. One slow child never holds up the
//!   others, nor the upstream.
//! - a timer task sleeps until [`Relay::poll_timeout`] and runs [`Relay::handle_timeout`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use divisor_link::{Link, LinkConfig, LinkError, LinkListener, Message};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::child_queue::{ChildQueue, Push};
use crate::relay::{ChildId, Output, Relay, RelayConfig, RelaySnapshot, UpstreamId};

/// Driver settings (the core has its own, [`RelayConfig`]).
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Key and transport of every link; the role is set per side.
    pub link: LinkConfig,
    /// Messages queued for one child before its frames are refused (then skipped).
    pub child_queue: usize,
    /// A child whose queue stays full this long is dropped.
    pub child_stall: Duration,
}

/// Control messages a child may have waiting, per frame slot of its queue.
const CONTROL_PER_FRAME_SLOT: usize = 16;

struct ChildConn {
    queue: Arc<ChildQueue>,
    /// Since when its queue has refused messages without a success in between.
    full_since: Option<Instant>,
    tasks: Vec<AbortHandle>,
}

struct UpstreamConn {
    /// Set while a link is up.
    tx: Option<mpsc::UnboundedSender<Message>>,
    reset: Arc<Notify>,
    task: AbortHandle,
}

struct Inner {
    core: Mutex<Relay>,
    children: Mutex<HashMap<ChildId, ChildConn>>,
    upstreams: Mutex<HashMap<UpstreamId, UpstreamConn>>,
    next_child: AtomicU64,
    timer: Notify,
    left: Notify,
    left_flag: std::sync::atomic::AtomicBool,
    /// Where children's reports go (the controller client), once it asked for them.
    reports: Mutex<Option<mpsc::Sender<String>>>,
    cfg: DriverConfig,
}

/// A running reflector node. Cheap to clone.
#[derive(Clone)]
pub struct Reflector {
    inner: Arc<Inner>,
}

impl Reflector {
    /// Start the core for `relay` (dialling its upstreams) and its timer. Needs a tokio
    /// runtime.
    pub fn start(relay: RelayConfig, cfg: DriverConfig) -> Reflector {
        let core = Relay::new(relay, Instant::now());
        let r = Reflector {
            inner: Arc::new(Inner {
                core: Mutex::new(core),
                children: Mutex::new(HashMap::new()),
                upstreams: Mutex::new(HashMap::new()),
                next_child: AtomicU64::new(1),
                timer: Notify::new(),
                left: Notify::new(),
                left_flag: std::sync::atomic::AtomicBool::new(false),
                reports: Mutex::new(None),
                cfg,
            }),
        };
        let t = r.clone();
        tokio::spawn(async move { t.timer_loop().await });
        r.pump();
        r
    }

    /// Accept child links on `addr` in the background; returns the bound address.
    pub async fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, LinkError> {
        let cfg = LinkConfig {
            role: divisor_link::Role::Encoder,
            ..self.inner.cfg.link.clone()
        };
        let listener = LinkListener::bind(&cfg, addr).await?;
        let at = listener.local_addr();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok(link) => me.add_child(link, false),
                    Err(LinkError::Closed) => return,
                    Err(e) => warn!("child link refused: {e}"),
                }
            }
        });
        Ok(at)
    }

    /// An in-process child link for the public tier's own front-end; returns the end the
    /// front-end attaches to (`Upstream::attach`).
    pub fn attach_local(&self) -> Link {
        let (ours, theirs) = divisor_link::mem_pair();
        self.add_child(ours, true);
        theirs
    }

    /// What `/status` and `/metrics` show.
    pub fn snapshot(&self) -> RelaySnapshot {
        self.lock().snapshot(Instant::now())
    }

    /// Replace the upstream list (SIGHUP): re-wired make-before-break.
    pub fn set_upstreams(&self, list: Vec<String>) {
        self.lock().set_upstreams(list, Instant::now());
        self.pump();
    }

    /// Children's control-plane reports from now on (the controller client folds them into
    /// its own). Replaces an earlier receiver.
    pub fn take_reports(&self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel(1024);
        *self.inner.reports.lock().expect("reports") = Some(tx);
        rx
    }

    /// Send a report to the primary parent; false when no parent link is up.
    pub fn send_report(&self, xml: String) -> bool {
        let sent = self.lock().send_report(xml);
        self.pump();
        sent
    }

    /// Start a graceful leave; [`Reflector::left`] completes when the children have moved.
    pub fn leave(&self) {
        self.lock().leave(Instant::now());
        self.pump();
    }

    /// Completes once a graceful leave has finished.
    pub async fn left(&self) {
        loop {
            let wait = self.inner.left.notified();
            if self.inner.left_flag.load(Ordering::Acquire) {
                return;
            }
            wait.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Relay> {
        self.inner.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add_child(&self, link: Link, local: bool) {
        let id = self.inner.next_child.fetch_add(1, Ordering::Relaxed);
        let Link {
            sender,
            mut receiver,
            peer,
        } = link;
        let frames = self.inner.cfg.child_queue.max(16);
        let queue = Arc::new(ChildQueue::new(frames, frames * CONTROL_PER_FRAME_SLOT));
        let q = queue.clone();
        let writer = tokio::spawn(async move {
            while let Some(m) = q.pop().await {
                if sender.send(m).await.is_err() {
                    return;
                }
            }
        });
        let me = self.clone();
        let peer_r = peer.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                match receiver.recv().await {
                    Ok(m) => {
                        me.lock().from_child(id, m, Instant::now());
                        me.pump();
                    }
                    Err(LinkError::Closed) => break "link closed".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            info!(peer = %peer_r, "child link ended: {why}");
            me.remove_child(id);
        });
        self.inner.children.lock().expect("children").insert(
            id,
            ChildConn {
                queue,
                full_since: None,
                tasks: vec![writer.abort_handle(), reader.abort_handle()],
            },
        );
        info!(%peer, local, "child link up");
        self.lock().child_up(id, &peer, local);
        self.pump();
    }

    fn remove_child(&self, id: ChildId) {
        if let Some(c) = self.inner.children.lock().expect("children").remove(&id) {
            c.queue.close();
            for t in c.tasks {
                t.abort();
            }
        }
        self.lock().child_down(id, Instant::now());
        self.pump();
    }

    /// Carry out everything the core has queued.
    fn pump(&self) {
        loop {
            let outs: Vec<Output> = {
                let mut core = self.lock();
                std::iter::from_fn(|| core.poll_output()).collect()
            };
            if outs.is_empty() {
                break;
            }
            let mut overflows = Vec::new();
            let mut drops = Vec::new();
            for o in outs {
                match o {
                    Output::ToChild { child, msg } => {
                        self.to_child(child, msg, &mut overflows, &mut drops)
                    }
                    Output::ToUpstream { upstream, msg } => {
                        let ups = self.inner.upstreams.lock().expect("upstreams");
                        if let Some(tx) = ups.get(&upstream).and_then(|u| u.tx.as_ref()) {
                            let _ = tx.send(msg);
                        }
                    }
                    Output::Dial { upstream, addr } => self.dial(upstream, addr),
                    Output::Hangup { upstream } => {
                        if let Some(u) = self
                            .inner
                            .upstreams
                            .lock()
                            .expect("upstreams")
                            .remove(&upstream)
                        {
                            u.task.abort();
                        }
                    }
                    Output::Reset { upstream, reason } => {
                        warn!(upstream, "resetting upstream link: {reason}");
                        if let Some(u) = self
                            .inner
                            .upstreams
                            .lock()
                            .expect("upstreams")
                            .get(&upstream)
                        {
                            u.reset.notify_one();
                        }
                    }
                    Output::DropChild { child, reason } => drops.push((child, reason)),
                    Output::LeaveDone => {
                        self.inner.left_flag.store(true, Ordering::Release);
                        self.inner.left.notify_waiters();
                    }
                    Output::Report { child, xml } => {
                        let reports = self.inner.reports.lock().expect("reports");
                        // Reports are periodic: a full queue drops this one, the next comes.
                        if let Some(tx) = reports.as_ref() {
                            if tx.try_send(xml).is_err() {
                                warn!(child, "a child's report was dropped: nobody reads them");
                            }
                        }
                    }
                }
            }
            if !overflows.is_empty() {
                let mut core = self.lock();
                for (child, ch) in overflows {
                    core.child_overflow(child, ch);
                }
            }
            for (child, reason) in drops {
                warn!(child, "dropping child: {reason}");
                self.remove_child(child);
            }
        }
        self.inner.timer.notify_one();
    }

    fn to_child(
        &self,
        child: ChildId,
        msg: Message,
        overflows: &mut Vec<(ChildId, u32)>,
        drops: &mut Vec<(ChildId, String)>,
    ) {
        let mut children = self.inner.children.lock().expect("children");
        let Some(c) = children.get_mut(&child) else {
            return;
        };
        let frame_channel = match &msg {
            Message::Frame(f) => Some(f.channel),
            _ => None,
        };
        match c.queue.push(msg) {
            Push::Queued => {
                if frame_channel.is_some() {
                    c.full_since = None;
                }
            }
            Push::Closed => {}
            Push::ControlFull => drops.push((
                child,
                "it sends requests much faster than it reads the answers".into(),
            )),
            Push::FramesFull => {
                let now = Instant::now();
                let since = *c.full_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= self.inner.cfg.child_stall {
                    drops.push((
                        child,
                        format!(
                            "it has taken no frame for {} s",
                            self.inner.cfg.child_stall.as_secs()
                        ),
                    ));
                } else if let Some(ch) = frame_channel {
                    overflows.push((child, ch));
                }
            }
        }
    }

    fn dial(&self, id: UpstreamId, addr: String) {
        let reset = Arc::new(Notify::new());
        let me = self.clone();
        let r = reset.clone();
        let task = tokio::spawn(async move { me.upstream_loop(id, addr, r).await });
        self.inner.upstreams.lock().expect("upstreams").insert(
            id,
            UpstreamConn {
                tx: None,
                reset,
                task: task.abort_handle(),
            },
        );
    }

    /// Keep the link to one upstream up, forever (until hung up).
    async fn upstream_loop(self, id: UpstreamId, addr: String, reset: Arc<Notify>) {
        let cfg = LinkConfig {
            role: divisor_link::Role::Protocol,
            ..self.inner.cfg.link.clone()
        };
        let mut delay = Duration::from_millis(50);
        let mut failures: u64 = 0;
        loop {
            let link = match connect(&cfg, &addr).await {
                Ok(l) => l,
                Err(e) => {
                    failures += 1;
                    // First failure and then every 30th: a parent that is down for long
                    // does not flood the log.
                    if failures % 30 == 1 {
                        warn!(upstream = %addr, failures, retry_in = ?delay, "cannot link to upstream: {e}");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if failures > 0 {
                info!(upstream = %addr, failures, "linked to upstream");
            }
            failures = 0;
            delay = Duration::from_millis(50);
            let Link {
                sender,
                mut receiver,
                ..
            } = link;
            let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
            let writer = tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if sender.send(m).await.is_err() {
                        return;
                    }
                }
            });
            if let Some(u) = self.inner.upstreams.lock().expect("upstreams").get_mut(&id) {
                u.tx = Some(tx);
            }
            self.lock().upstream_up(id, Instant::now());
            self.pump();
            let why = loop {
                tokio::select! {
                    m = receiver.recv() => match m {
                        Ok(m) => {
                            self.lock().from_upstream(id, m, Instant::now());
                            self.pump();
                        }
                        Err(LinkError::Closed) => break "link closed".to_string(),
                        Err(e) => break e.to_string(),
                    },
                    _ = reset.notified() => break "reset".to_string(),
                }
            };
            writer.abort();
            if let Some(u) = self.inner.upstreams.lock().expect("upstreams").get_mut(&id) {
                u.tx = None;
            }
            self.lock().upstream_down(id, &why, Instant::now());
            self.pump();
            tokio::time::sleep(delay).await;
        }
    }

    async fn timer_loop(self) {
        loop {
            let next = self.lock().poll_timeout();
            let wake = self.inner.timer.notified();
            match next {
                Some(t) => {
                    let at = tokio::time::Instant::from_std(t);
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = wake => continue,
                    }
                }
                None => {
                    wake.await;
                    continue;
                }
            }
            self.lock().handle_timeout(Instant::now());
            self.pump();
        }
    }
}

/// A dial (TCP connect and handshake) that takes longer is abandoned: a parent cut off
/// answers nothing, and the kernel's own SYN timeout is minutes.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolve `addr` (host:port) and dial it.
async fn connect(cfg: &LinkConfig, addr: &str) -> Result<Link, LinkError> {
    let mut last = LinkError::Closed;
    for a in tokio::net::lookup_host(addr).await? {
        match tokio::time::timeout(DIAL_TIMEOUT, divisor_link::connect(cfg, a)).await {
            Ok(Ok(l)) => return Ok(l),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = LinkError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {DIAL_TIMEOUT:?}"),
                ))
            }
        }
    }
    Err(last)
}
