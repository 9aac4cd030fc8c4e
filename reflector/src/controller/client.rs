//! A reflector's side of the control protocol (`divisor-reflector --controller`).
//!
//! It says HELLO (again after every reconnect), answers PING, takes its upstream list from
//! REDIRECT, answers REQFULLSTATS with its own figures, says LOSTUPSTREAM when its
//! primary parent's link goes down or silent, and leaves on KILL. Every
//! statistics period it folds its children's reports (which arrive over the data links,
//! [`divisor_link::Message::Report`]) into its own ([`super::aggregate`]) and sends one
//! STATS up: to its primary parent over the link, or, on a master, to the controller.
//! Reports from a child are plain XML inside the authenticated link; messages to and from
//! the controller are sealed ([`crate::control::Codec`]).

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tracing::{debug, info, warn};

use super::aggregate::{aggregate, ChildReports};
use super::driver::now_ms;
use crate::control::{
    decode_xml, encode_xml, framing, Body, Codec, ControlKey, Hello, Limits, Message, Peer, Stats,
};
use crate::driver::Reflector;
use crate::role::Role;

/// What the client needs.
pub struct ClientConfig {
    /// The controller's control address, `HOST:PORT`.
    pub controller: String,
    pub key: ControlKey,
    pub hello: Hello,
    /// The statistics period (`--stats-secs`).
    pub stats_every: Duration,
    pub limits: Limits,
}

/// This node's own figures for the period just ended, `(start_ms, end_ms)`.
pub type Sampler = Box<dyn FnMut(u64, u64) -> Stats + Send>;

/// Why the client stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientExit {
    /// The controller sent KILL (scale-in): leave gracefully and exit.
    Killed(String),
    /// [`ControlClient::bye`] was called and BYE sent (or no connection was up).
    Bye,
}

/// A handle on the running client.
#[derive(Clone)]
pub struct ControlClient {
    bye: mpsc::Sender<String>,
}

impl ControlClient {
    /// Say BYE (a graceful leave) and stop.
    pub async fn bye(&self, reason: &str) {
        let _ = self.bye.send(reason.to_string()).await;
    }
}

type Reader = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;
type Writer = FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>;

/// Start the client; the join handle says why it stopped.
pub fn spawn(
    cfg: ClientConfig,
    node: Reflector,
    sampler: Sampler,
) -> (ControlClient, tokio::task::JoinHandle<ClientExit>) {
    let (bye_tx, bye_rx) = mpsc::channel(1);
    let task = tokio::spawn(run(cfg, node, sampler, bye_rx));
    (ControlClient { bye: bye_tx }, task)
}

async fn next_frame(r: &mut Option<Reader>) -> Option<std::io::Result<bytes::BytesMut>> {
    match r {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

struct Session {
    cfg: ClientConfig,
    codec: Codec,
    node: Reflector,
    writer: Option<Writer>,
    children: ChildReports,
    upstreams: Vec<String>,
    /// The primary upstream while its link is up (to report its loss once).
    primary_up: Option<String>,
    /// The time of our last message: each gets a later one, so that two identical
    /// messages are never taken for a replay.
    last_sent_ms: std::cell::Cell<u64>,
    /// The children named in our last CHILDSUPDATE.
    reported_children: BTreeSet<String>,
}

impl Session {
    fn msg(&self, body: Body) -> Message {
        let time_ms = now_ms().max(self.last_sent_ms.get() + 1);
        self.last_sent_ms.set(time_ms);
        Message {
            time_ms,
            from: Peer::Node(self.cfg.hello.id.clone()),
            to: Peer::Root,
            body,
        }
    }

    /// Send to the controller; a failed send drops the connection (it will be redialled).
    async fn send(&mut self, body: Body) -> bool {
        let frame = self.codec.seal(&self.msg(body));
        let Some(w) = self.writer.as_mut() else {
            return false;
        };
        if let Err(e) = w.send(frame).await {
            warn!("control connection lost while sending: {e}");
            self.writer = None;
            return false;
        }
        true
    }

    async fn connect(&mut self) -> Option<Reader> {
        let stream = match TcpStream::connect(&self.cfg.controller).await {
            Ok(s) => s,
            Err(e) => {
                debug!(controller = %self.cfg.controller, "cannot reach the controller: {e}");
                return None;
            }
        };
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        self.writer = Some(FramedWrite::new(wr, framing(&self.cfg.limits)));
        let hello = Body::Hello(self.cfg.hello.clone());
        if !self.send(hello).await {
            return None;
        }
        info!(controller = %self.cfg.controller, "HELLO sent to the controller");
        // A (re)started controller knows none of our children yet.
        self.reported_children.clear();
        Some(FramedRead::new(rd, framing(&self.cfg.limits)))
    }

    /// Handle one message from the controller; `Some` when the client must stop.
    async fn handle_controller_message(
        &mut self,
        msg: Message,
        own: &mut Sampler,
    ) -> Option<ClientExit> {
        match msg.body {
            Body::Ping { seq } => {
                self.send(Body::Pong { seq }).await;
            }
            Body::Redirect { upstreams } => {
                let list: Vec<String> = upstreams.into_iter().map(|u| u.addr).collect();
                if list.is_empty() {
                    warn!("REDIRECT with no upstream ignored");
                } else if list != self.upstreams {
                    info!(upstreams = %list.join(","), "REDIRECT: re-wiring");
                    self.upstreams = list.clone();
                    self.node.set_upstreams(list);
                }
            }
            Body::ReqFullStats { .. } => {
                let now = now_ms();
                let start = now.saturating_sub(self.cfg.stats_every.as_millis() as u64);
                let s = own(start, now);
                self.send(Body::FullStats(s)).await;
            }
            Body::Kill { reason } => {
                warn!("KILL from the controller: {reason}");
                return Some(ClientExit::Killed(reason));
            }
            Body::Error { code, detail } => {
                warn!(code, "the controller refused a message: {detail}")
            }
            other => debug!(
                kind = other.type_name(),
                "unexpected control message ignored"
            ),
        }
        None
    }

    /// The period's report: own figures plus the children's, up one level.
    async fn report(&mut self, own: &mut Sampler, start: u64, end: u64) {
        let mine = own(start, end);
        let max_age = 3 * self.cfg.stats_every.as_millis() as u64;
        let kids = self.children.fresh(end, max_age);
        // Tell the controller which children we hear from, when that changes: a child
        // that drops out is checked at once, so leaves need no PINGs of their own.
        let ids: BTreeSet<String> = kids.iter().map(|k| k.node.clone()).collect();
        if ids != self.reported_children && self.writer.is_some() {
            let children = ids.iter().cloned().collect();
            if self.send(Body::ChildsUpdate { children }).await {
                self.reported_children = ids;
            }
        }
        let mut s = aggregate(&mine, &kids);
        s.start_ms = start;
        s.end_ms = end;
        if self.cfg.hello.role == Role::Master {
            self.send(Body::Stats(s)).await;
        } else {
            let xml = encode_xml(&self.msg(Body::Stats(s)));
            if !self.node.send_report(xml) {
                debug!("no parent link up: this period's report is dropped");
            }
        }
    }

    /// Say LOSTUPSTREAM when the primary parent's link goes down or silent (not when it
    /// leaves gracefully: it says BYE itself).
    async fn watch_primary(&mut self) {
        let snap = self.node.snapshot();
        let Some(primary) = snap.upstreams.iter().find(|u| u.preference == 0) else {
            self.primary_up = None;
            return;
        };
        let up = primary.state == "up";
        let lost = matches!(primary.state.as_str(), "down" | "silent");
        match (&self.primary_up, up, lost) {
            (_, true, _) => self.primary_up = Some(primary.addr.clone()),
            (Some(addr), _, true) if *addr == primary.addr => {
                let addr = addr.clone();
                warn!(upstream = %addr, "primary upstream lost: telling the controller");
                self.primary_up = None;
                self.send(Body::LostUpstream { addr }).await;
            }
            _ => {}
        }
    }

    fn child_report(&mut self, xml: &str) {
        match decode_xml(xml, &self.cfg.limits) {
            Ok(Message {
                body: Body::Stats(s),
                ..
            }) => self.children.insert(s, now_ms()),
            Ok(m) => debug!(
                kind = m.body.type_name(),
                "a child's report is not STATS: ignored"
            ),
            Err(e) => warn!("a child's report is not valid: {e}"),
        }
    }
}

async fn run(
    cfg: ClientConfig,
    node: Reflector,
    mut own: Sampler,
    mut bye: mpsc::Receiver<String>,
) -> ClientExit {
    let mut reports = node.take_reports();
    let codec = Codec::new(cfg.key.clone(), cfg.limits.clone());
    let stats_every = cfg.stats_every.max(Duration::from_millis(100));
    let mut s = Session {
        cfg,
        codec,
        node,
        writer: None,
        children: ChildReports::default(),
        upstreams: Vec::new(),
        primary_up: None,
        last_sent_ms: std::cell::Cell::new(0),
        reported_children: BTreeSet::new(),
    };
    let mut reader: Option<Reader> = None;
    let mut backoff = Duration::from_millis(250);
    let mut redial = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut tick = tokio::time::interval(stats_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut period_start = now_ms();
    let mut watch = tokio::time::interval(Duration::from_millis(100));
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = &mut redial, if reader.is_none() => {
                reader = s.connect().await;
                if reader.is_some() {
                    backoff = Duration::from_millis(250);
                } else {
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    redial.as_mut().reset(tokio::time::Instant::now() + backoff);
                }
            }
            frame = next_frame(&mut reader) => {
                let lost = match frame {
                    Some(Ok(payload)) => match s.codec.open(&payload, now_ms()) {
                        Ok(msg) => {
                            if let Some(exit) = s.handle_controller_message(msg, &mut own).await {
                                return exit;
                            }
                            s.writer.is_none()
                        }
                        Err(e) => {
                            warn!("a control message from the controller was refused: {e}");
                            false
                        }
                    },
                    Some(Err(e)) => {
                        warn!("control connection broken: {e}");
                        true
                    }
                    None => {
                        warn!("the controller closed the control connection");
                        true
                    }
                };
                if lost {
                    reader = None;
                    s.writer = None;
                    redial.as_mut().reset(tokio::time::Instant::now() + backoff);
                }
            }
            _ = tick.tick() => {
                let end = now_ms();
                s.report(&mut own, period_start, end).await;
                period_start = end;
            }
            _ = watch.tick() => s.watch_primary().await,
            Some(xml) = reports.recv() => s.child_report(&xml),
            Some(reason) = bye.recv() => {
                s.send(Body::Bye { reason }).await;
                if let Some(mut w) = s.writer.take() {
                    let _ = SinkExt::<bytes::Bytes>::close(&mut w).await;
                }
                return ClientExit::Bye;
            }
        }
    }
}
