//! The relay state machine: channels routed by id, subscription-gated forwarding, one
//! upstream subscription per channel, GOP caches, redundant parents with splicing,
//! make-before-break moves, loop refusal and per-child bounds.
//!
//! Sans-IO: the driver feeds it link events and messages with `now`, and carries out the
//! [`Output`]s it queues; [`Relay::poll_timeout`] says when [`Relay::handle_timeout`] is
//! due next. Nothing here reads the clock or touches a socket, so tests and the simulation
//! run it faster than real time.
//!
//! Names: an *upstream* is a parent (an encoder unit or another reflector), a *child* is a
//! link that subscribes here (a reflector further down, a protocol unit, or the public
//! tier's own front-end over the in-process link). Both sides speak the link protocol; a
//! child sees this node exactly as it would see an encoder unit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use divisor_link::{ChannelId, ChannelState, Cipher, ErrorCode, Frame, Message, TrackInfo};
use tracing::{debug, info, warn};

use super::gop::{random_access, GopCache, GopLimits};
use super::splice::Splicer;
use super::status::{ChannelSnapshot, ChildSnapshot, RelaySnapshot, UpstreamSnapshot};

/// Stable id of an upstream slot (kept across re-wiring of the upstream list).
pub type UpstreamId = u32;
/// Id of a child link, chosen by the driver.
pub type ChildId = u64;

/// A live channel as children name it: (channel name, rendition; "" = the first).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    pub name: String,
    pub rendition: String,
}

impl ChannelKey {
    pub fn new(name: &str, rendition: &str) -> ChannelKey {
        ChannelKey {
            name: name.to_string(),
            rendition: rendition.to_string(),
        }
    }

    /// Parses `NAME` or `NAME/RENDITION` (as `--pin` takes it).
    pub fn parse(s: &str) -> ChannelKey {
        match s.split_once('/') {
            Some((n, r)) => ChannelKey::new(n, r),
            None => ChannelKey::new(s, ""),
        }
    }
}

impl std::fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rendition.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.name, self.rendition)
        }
    }
}

/// Settings of the relay core. See `divisor-reflector --help` for what each is for.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// This node's id: named in paths, refused when it appears twice.
    pub id: String,
    /// Upstreams in order of preference: the primary first.
    pub upstreams: Vec<String>,
    /// A channel whose active parent sends nothing for this long is switched.
    pub silence: Duration,
    /// A better (earlier) parent healthy for this long takes its channels back.
    pub return_after: Duration,
    /// A channel nobody wants is let go this long after the last one left.
    pub linger: Duration,
    /// Channels subscribed always.
    pub pins: Vec<ChannelKey>,
    /// Longest path (nodes) a channel may cross before this node.
    pub max_depth: usize,
    /// Channels one child may hold at once.
    pub max_channels_per_child: usize,
    /// Channels this node relays at once (all children together).
    pub max_channels: usize,
    pub gop: GopLimits,
    /// Liveness probes to every upstream at this interval.
    pub ping_interval: Duration,
    /// An upstream silent this long (no frame, no pong) is reset and redialled.
    pub link_timeout: Duration,
    /// A switch that has not spliced after this long is abandoned.
    pub join_timeout: Duration,
    /// A channel silent while its parent's link is alive (pongs arrive) is switched only
    /// after this long: the silence is then most likely the origin's, every parent shares
    /// it, and a reflector parent fails over on its own.
    pub channel_silence: Duration,
    /// On a graceful leave, wait at most this long for children to move.
    pub leave_timeout: Duration,
}

impl RelayConfig {
    /// Defaults for node `id` with `upstreams`.
    pub fn new(id: &str, upstreams: Vec<String>) -> RelayConfig {
        RelayConfig {
            id: id.to_string(),
            upstreams,
            silence: Duration::from_millis(150),
            return_after: Duration::from_secs(10),
            linger: Duration::from_secs(5),
            pins: Vec::new(),
            max_depth: 16,
            max_channels_per_child: 256,
            max_channels: 4096,
            gop: GopLimits::default(),
            ping_interval: Duration::from_millis(50),
            link_timeout: Duration::from_secs(1),
            join_timeout: Duration::from_secs(3),
            channel_silence: Duration::from_secs(2),
            leave_timeout: Duration::from_secs(15),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a link to this upstream (and keep it up, redialling with backoff).
    Dial { upstream: UpstreamId, addr: String },
    /// Close the link to this upstream for good (it left the upstream list).
    Hangup { upstream: UpstreamId },
    /// Drop the current link to this upstream and redial: it went silent.
    Reset {
        upstream: UpstreamId,
        reason: String,
    },
    /// Send on the link to an upstream.
    ToUpstream { upstream: UpstreamId, msg: Message },
    /// Send on a child's link. Frames may be refused by a full child queue: then tell
    /// [`Relay::child_overflow`].
    ToChild { child: ChildId, msg: Message },
    /// Close a child's link.
    DropChild { child: ChildId, reason: String },
    /// A graceful leave has finished: the process may exit.
    LeaveDone,
    /// A child's control-plane report (the controller's XML statistics of its subtree),
    /// for this node's controller client to fold into its own report.
    Report { child: ChildId, xml: String },
}

/// Why a channel changed parent (counted per reason in `/metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SwitchReason {
    /// The parent's link failed or closed.
    LinkDown,
    /// The parent sent nothing on the channel for `--silence-ms`.
    Silence,
    /// The parent refused or ended the channel.
    Refused,
    /// The parent is leaving gracefully (make-before-break).
    ParentLeaving,
    /// The upstream list changed (SIGHUP, a controller's REDIRECT).
    Rewire,
    /// The primary is healthy again.
    Return,
}

impl SwitchReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchReason::LinkDown => "link_down",
            SwitchReason::Silence => "silence",
            SwitchReason::Refused => "refused",
            SwitchReason::ParentLeaving => "parent_leaving",
            SwitchReason::Rewire => "rewire",
            SwitchReason::Return => "return",
        }
    }
}

struct Upstream {
    id: UpstreamId,
    addr: String,
    up: bool,
    /// Left the upstream list: no new channels; hung up once unused.
    retired: bool,
    /// Said GoingAway: no new channels.
    going_away: bool,
    last_heard: Option<Instant>,
    healthy_since: Option<Instant>,
    next_ping: Option<Instant>,
    ping_seq: u32,
    pings: VecDeque<(u32, Instant)>,
    rtt: Option<Duration>,
    next_channel: ChannelId,
    /// Upstream channel id -> channel it carries.
    routes: HashMap<ChannelId, ChannelKey>,
    messages_in: u64,
}

impl Upstream {
    fn new(id: UpstreamId, addr: String) -> Upstream {
        Upstream {
            id,
            addr,
            up: false,
            retired: false,
            going_away: false,
            last_heard: None,
            healthy_since: None,
            next_ping: None,
            ping_seq: 0,
            pings: VecDeque::new(),
            rtt: None,
            next_channel: 1,
            routes: HashMap::new(),
            messages_in: 0,
        }
    }

    fn eligible(&self) -> bool {
        self.up && !self.retired && !self.going_away
    }

    fn fresh(&self, now: Instant, silence: Duration) -> bool {
        self.last_heard
            .is_some_and(|t| now.saturating_duration_since(t) <= silence)
    }
}

/// One subscription held upstream for a channel.
#[derive(Clone, Debug)]
struct Source {
    upstream: UpstreamId,
    channel: ChannelId,
    /// Tracks announced on it (None until its Announce).
    tracks: Option<Vec<TrackInfo>>,
    /// Route it announced (origin first), this node excluded.
    path: Vec<String>,
    last_frame: Option<Instant>,
    since: Instant,
}

impl Source {
    /// When this source counts as silent: `silence` after its last frame, or, before its
    /// first, `join_timeout` after it was subscribed (a parent may first have to subscribe
    /// further up and wait for a keyframe).
    fn silent_after(&self, cfg: &RelayConfig) -> Instant {
        match self.last_frame {
            Some(t) => t + cfg.silence,
            None => self.since + cfg.join_timeout,
        }
    }
}

/// A switch in progress: the new source and why.
#[derive(Debug)]
struct Join {
    source: Source,
    reason: SwitchReason,
    /// Decided at its Announce: carries the same origin and tracks.
    same_timeline: Option<bool>,
}

/// A child's subscription to a channel.
#[derive(Debug)]
struct Sub {
    child: ChildId,
    channel: ChannelId,
    /// Has received a start point (cache replay or a keyframe).
    started: bool,
    /// Audio waits for this video pts (µs of the keyframe) when started live.
    skipping: bool,
    skips: u64,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ChannelCounters {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub duplicates: u64,
    pub skips: u64,
    pub switches: BTreeMap<&'static str, u64>,
    pub discontinuities: u64,
    /// Upstream inter-arrival gaps, bucket upper bounds in ms ([`GAP_BUCKETS_MS`]) plus +Inf.
    pub gaps: [u64; GAP_BUCKETS_MS.len() + 1],
    pub gap_sum_ms: f64,
}

/// How often channels on a backup parent look for a better one.
const RETURN_CHECK: Duration = Duration::from_secs(1);

/// Bucket bounds of the upstream gap histogram, in milliseconds.
pub const GAP_BUCKETS_MS: [f64; 9] = [10.0, 25.0, 50.0, 100.0, 150.0, 250.0, 500.0, 1000.0, 5000.0];

struct Channel {
    key: ChannelKey,
    pinned: bool,
    active: Option<Source>,
    join: Option<Join>,
    tracks: Option<Vec<TrackInfo>>,
    /// Route announced to children: origin first, this node last.
    path: Vec<String>,
    /// Path the first request came with (for loop detection upstream).
    request_path: Vec<String>,
    keys: Vec<(u32, Cipher, Bytes)>,
    status: Option<(ChannelState, String)>,
    splicer: Splicer,
    gop: GopCache,
    subs: Vec<Sub>,
    linger_until: Option<Instant>,
    /// Waiting for an upstream to come up to (re)subscribe.
    orphan_since: Option<Instant>,
    last_keyframe_request: Option<Instant>,
    last_forward: Option<Instant>,
    counters: ChannelCounters,
    /// Logged "no healthy parent" once per outage.
    stranded_logged: bool,
    /// After a silence was handled (switched, or nowhere to go), the next look is due
    /// no earlier than this.
    silence_retry: Option<Instant>,
    /// Last change of parent: a channel returns to a better parent only `return_after`
    /// after it, so a parent that failed the channel is not trusted again at once.
    switched_at: Option<Instant>,
}

impl Channel {
    fn has_video(&self) -> bool {
        self.tracks
            .as_ref()
            .is_some_and(|t| t.iter().any(|t| t.codec.is_video()))
    }

    fn uses(&self, up: UpstreamId) -> bool {
        self.active.as_ref().is_some_and(|s| s.upstream == up)
            || self.join.as_ref().is_some_and(|j| j.source.upstream == up)
    }
}

struct Child {
    peer: String,
    local: bool,
    /// Child channel id -> channel.
    subs: HashMap<ChannelId, ChannelKey>,
    /// Path sent ahead of the next Subscribe, by child channel id.
    pending_paths: HashMap<ChannelId, Vec<String>>,
    refused: u64,
    skips: u64,
}

/// The relay core. See the module notes.
pub struct Relay {
    cfg: RelayConfig,
    upstreams: Vec<Upstream>,
    next_upstream: UpstreamId,
    channels: BTreeMap<ChannelKey, Channel>,
    children: BTreeMap<ChildId, Child>,
    out: VecDeque<Output>,
    leaving: Option<Instant>,
    leave_done: bool,
    started: Instant,
    /// Next look for channels that should return to a better parent.
    next_return_check: Instant,
}

impl Relay {
    /// A relay for `cfg`; the first outputs dial every upstream.
    pub fn new(cfg: RelayConfig, now: Instant) -> Relay {
        let mut r = Relay {
            upstreams: Vec::new(),
            next_upstream: 1,
            channels: BTreeMap::new(),
            children: BTreeMap::new(),
            out: VecDeque::new(),
            leaving: None,
            leave_done: false,
            started: now,
            next_return_check: now + RETURN_CHECK,
            cfg,
        };
        let list = r.cfg.upstreams.clone();
        r.set_upstreams(list, now);
        for key in r.cfg.pins.clone() {
            let path = vec![];
            r.ensure_channel(&key, path, now);
            if let Some(c) = r.channels.get_mut(&key) {
                c.pinned = true;
            }
        }
        r
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    // ----- upstream side -------------------------------------------------------------

    /// Replace the upstream list (SIGHUP, a controller's REDIRECT). Kept addresses keep
    /// their links; channels on a dropped upstream move make-before-break; a dropped
    /// upstream is hung up once no channel uses it.
    pub fn set_upstreams(&mut self, list: Vec<String>, now: Instant) {
        let mut order = Vec::with_capacity(list.len());
        for addr in &list {
            if let Some(pos) = self
                .upstreams
                .iter()
                .position(|u| &u.addr == addr && !u.retired)
            {
                order.push(self.upstreams.remove(pos));
            } else {
                let id = self.next_upstream;
                self.next_upstream += 1;
                self.out.push_back(Output::Dial {
                    upstream: id,
                    addr: addr.clone(),
                });
                order.push(Upstream::new(id, addr.clone()));
            }
        }
        let dropped: Vec<Upstream> = std::mem::take(&mut self.upstreams);
        self.upstreams = order;
        for mut u in dropped {
            if !u.retired {
                info!(upstream = %u.addr, "upstream removed from the list; its channels move");
            }
            u.retired = true;
            self.upstreams.push(u);
        }
        self.cfg.upstreams = list;
        let keys: Vec<ChannelKey> = self.channels.keys().cloned().collect();
        for key in keys {
            let on_retired = self.channels[&key]
                .active
                .as_ref()
                .is_some_and(|s| self.upstream(s.upstream).is_none_or(|u| u.retired));
            if on_retired {
                self.start_switch(&key, SwitchReason::Rewire, now);
            }
        }
        self.hang_up_unused();
    }

    fn upstream(&self, id: UpstreamId) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.id == id)
    }

    fn upstream_mut(&mut self, id: UpstreamId) -> Option<&mut Upstream> {
        self.upstreams.iter_mut().find(|u| u.id == id)
    }

    fn hang_up_unused(&mut self) {
        let unused: Vec<UpstreamId> = self
            .upstreams
            .iter()
            .filter(|u| u.retired)
            .map(|u| u.id)
            .filter(|&id| !self.channels.values().any(|c| c.uses(id)))
            .collect();
        for id in unused {
            self.upstreams.retain(|u| u.id != id);
            self.out.push_back(Output::Hangup { upstream: id });
        }
    }

    /// The link to `upstream` is up and authenticated.
    pub fn upstream_up(&mut self, upstream: UpstreamId, now: Instant) {
        let Some(u) = self.upstream_mut(upstream) else {
            return;
        };
        u.up = true;
        u.going_away = false;
        u.last_heard = Some(now);
        u.healthy_since = Some(now);
        u.next_ping = Some(now);
        u.routes.clear();
        info!(upstream = %u.addr, "upstream link up");
        // Channels that lost every parent resubscribe at once.
        let keys: Vec<ChannelKey> = self
            .channels
            .iter()
            .filter(|(_, c)| c.active.is_none() && c.join.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.start_switch(&key, SwitchReason::LinkDown, now);
        }
    }

    /// The link to `upstream` failed or closed.
    pub fn upstream_down(&mut self, upstream: UpstreamId, reason: &str, now: Instant) {
        let Some(u) = self.upstream_mut(upstream) else {
            return;
        };
        if u.up {
            warn!(upstream = %u.addr, "upstream link down: {reason}");
        }
        u.up = false;
        u.healthy_since = None;
        u.next_ping = None;
        u.pings.clear();
        u.routes.clear();
        let keys: Vec<ChannelKey> = self
            .channels
            .iter()
            .filter(|(_, c)| c.uses(upstream))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let c = self.channels.get_mut(&key).expect("listed");
            if c.join
                .as_ref()
                .is_some_and(|j| j.source.upstream == upstream)
            {
                c.join = None;
            }
            if c.active.as_ref().is_some_and(|s| s.upstream == upstream) {
                c.active = None;
                self.start_switch(&key, SwitchReason::LinkDown, now);
            } else if c.join.is_none() && c.active.is_some() {
                // The switch target died: try another, the reason still holds.
                let silent = c.active.as_ref().is_some_and(|s| {
                    s.last_frame
                        .is_none_or(|t| now.saturating_duration_since(t) > self.cfg.silence)
                });
                if silent {
                    self.start_switch(&key, SwitchReason::Silence, now);
                }
            }
        }
        self.hang_up_unused();
    }

    /// A message from `upstream`.
    pub fn from_upstream(&mut self, upstream: UpstreamId, msg: Message, now: Instant) {
        let Some(u) = self.upstream_mut(upstream) else {
            return;
        };
        u.last_heard = Some(now);
        u.messages_in += 1;
        let channel = match &msg {
            Message::Ping { seq } => {
                let seq = *seq;
                self.out.push_back(Output::ToUpstream {
                    upstream,
                    msg: Message::Pong { seq },
                });
                return;
            }
            Message::Pong { seq } => {
                if let Some(pos) = u.pings.iter().position(|(s, _)| s == seq) {
                    let (_, sent) = u.pings[pos];
                    u.rtt = Some(now.saturating_duration_since(sent));
                    u.pings.drain(..=pos);
                }
                return;
            }
            Message::GoingAway { detail } => {
                info!(upstream = %u.addr, "upstream is leaving ({detail}); moving its channels");
                u.going_away = true;
                u.healthy_since = None;
                let keys: Vec<ChannelKey> = self
                    .channels
                    .iter()
                    .filter(|(_, c)| c.active.as_ref().is_some_and(|s| s.upstream == upstream))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    self.start_switch(&key, SwitchReason::ParentLeaving, now);
                }
                return;
            }
            Message::Error {
                channel: 0,
                code,
                message,
            } => {
                warn!(upstream = %u.addr, ?code, "upstream reports a link error: {message}");
                return;
            }
            Message::Frame(f) => f.channel,
            Message::Announce { channel, .. }
            | Message::Path { channel, .. }
            | Message::Status { channel, .. }
            | Message::ContentKey { channel, .. }
            | Message::Error { channel, .. } => *channel,
            other => {
                debug!(upstream = %u.addr, kind = other.kind_name(), "unexpected message from upstream ignored");
                return;
            }
        };
        let Some(key) = u.routes.get(&channel).cloned() else {
            // In flight after a Close: harmless.
            return;
        };
        let Some(c) = self.channels.get_mut(&key) else {
            return;
        };
        let is_active = c
            .active
            .as_ref()
            .is_some_and(|s| s.upstream == upstream && s.channel == channel);
        let is_join = c
            .join
            .as_ref()
            .is_some_and(|j| j.source.upstream == upstream && j.source.channel == channel);
        if !is_active && !is_join {
            return;
        }
        match msg {
            Message::Frame(f) => self.on_frame(&key, is_join, f, now),
            Message::Path { nodes, .. } => {
                let src = source_mut(c, is_join);
                src.path = nodes;
            }
            Message::Announce { tracks, .. } => self.on_announce(&key, is_join, tracks, now),
            Message::ContentKey {
                key_id,
                cipher,
                key: k,
                ..
            } => {
                if c.keys.iter().any(|(id, _, _)| *id == key_id) {
                    return;
                }
                c.keys.push((key_id, cipher, k.clone()));
                let excess = c.keys.len().saturating_sub(4);
                c.keys.drain(..excess);
                let subs: Vec<(ChildId, ChannelId)> =
                    c.subs.iter().map(|s| (s.child, s.channel)).collect();
                for (child, ch) in subs {
                    self.out.push_back(Output::ToChild {
                        child,
                        msg: Message::ContentKey {
                            channel: ch,
                            key_id,
                            cipher,
                            key: k.clone(),
                        },
                    });
                }
            }
            Message::Status { state, detail, .. } => {
                if is_join {
                    return;
                }
                c.status = Some((state, detail.clone()));
                let subs: Vec<(ChildId, ChannelId)> =
                    c.subs.iter().map(|s| (s.child, s.channel)).collect();
                for (child, ch) in subs {
                    self.out.push_back(Output::ToChild {
                        child,
                        msg: Message::Status {
                            channel: ch,
                            state,
                            detail: detail.clone(),
                        },
                    });
                }
            }
            Message::Error { code, message, .. } => {
                self.on_upstream_refusal(&key, upstream, is_join, code, message, now)
            }
            _ => {}
        }
    }

    fn on_upstream_refusal(
        &mut self,
        key: &ChannelKey,
        upstream: UpstreamId,
        is_join: bool,
        code: ErrorCode,
        message: String,
        now: Instant,
    ) {
        let addr = self
            .upstream(upstream)
            .map(|u| u.addr.clone())
            .unwrap_or_default();
        let c = self.channels.get_mut(key).expect("routed");
        if let Some(src) = if is_join {
            c.join.take().map(|j| j.source)
        } else {
            c.active.take()
        } {
            if let Some(u) = self.upstream_mut(src.upstream) {
                u.routes.remove(&src.channel);
            }
        }
        let c = self.channels.get_mut(key).expect("routed");
        let announced = c.tracks.is_some();
        // A parent that refuses a channel this node already relays (a backup that does not
        // carry it) is skipped; a refusal of a new channel goes to the children.
        if announced && !matches!(code, ErrorCode::BadRequest) && is_join {
            info!(channel = %key, upstream = %addr, ?code, "backup parent refused the channel: {message}");
            return;
        }
        if announced && c.active.is_none() && c.join.is_none() && !is_join {
            info!(channel = %key, upstream = %addr, ?code, "parent dropped the channel: {message}");
            self.start_switch(key, SwitchReason::Refused, now);
            if self.channels.get(key).is_some_and(|c| c.join.is_some()) {
                return;
            }
        }
        info!(channel = %key, upstream = %addr, ?code, "channel refused upstream: {message}");
        let c = self.channels.remove(key).expect("routed");
        for s in &c.subs {
            if let Some(ch) = self.children.get_mut(&s.child) {
                ch.subs.remove(&s.channel);
            }
            self.out.push_back(Output::ToChild {
                child: s.child,
                msg: Message::Error {
                    channel: s.channel,
                    code,
                    message: format!("{}: {message}", self.cfg.id),
                },
            });
        }
        self.close_sources(c.active, c.join.map(|j| j.source));
        self.hang_up_unused();
    }

    fn close_sources(&mut self, a: Option<Source>, b: Option<Source>) {
        for src in [a, b].into_iter().flatten() {
            if let Some(u) = self.upstream_mut(src.upstream) {
                u.routes.remove(&src.channel);
                if u.up {
                    self.out.push_back(Output::ToUpstream {
                        upstream: src.upstream,
                        msg: Message::Close {
                            channel: src.channel,
                        },
                    });
                }
            }
        }
    }

    fn on_announce(
        &mut self,
        key: &ChannelKey,
        is_join: bool,
        tracks: Vec<TrackInfo>,
        now: Instant,
    ) {
        let id = self.cfg.id.clone();
        let max_depth = self.cfg.max_depth;
        let c = self.channels.get_mut(key).expect("routed");
        let src_path = source_mut(c, is_join).path.clone();
        if src_path.iter().any(|n| n == &id) || src_path.len() >= max_depth {
            let why = if src_path.iter().any(|n| n == &id) {
                format!(
                    "routing loop: the channel already crossed {id} ({} -> {id})",
                    src_path.join(" -> ")
                )
            } else {
                format!(
                    "path too deep: {} nodes ({}), at most {max_depth}",
                    src_path.len(),
                    src_path.join(" -> ")
                )
            };
            warn!(channel = %key, "{why}");
            let (up, ch) = {
                let src = source_mut(c, is_join);
                (src.upstream, src.channel)
            };
            // Refused here, not by the parent: tell it to stop sending.
            self.out.push_back(Output::ToUpstream {
                upstream: up,
                msg: Message::Close { channel: ch },
            });
            self.on_upstream_refusal(key, up, is_join, ErrorCode::BadRequest, why, now);
            return;
        }
        source_mut(c, is_join).tracks = Some(tracks.clone());
        if is_join {
            let j = c.join.as_mut().expect("join");
            let same = c.tracks.as_ref() == Some(&tracks)
                && !c.path.is_empty()
                && c.path.first() == j.source.path.first();
            j.same_timeline = Some(same);
            debug!(channel = %key, same_timeline = same, "switch target announced");
            return;
        }
        let mut path = src_path;
        path.push(id);
        let changed = c.tracks.as_ref() != Some(&tracks);
        c.path = path;
        if !changed {
            return;
        }
        let first = c.tracks.is_none();
        if !first {
            info!(channel = %key, "parent announced other tracks; children re-announced");
            c.gop.clear();
        }
        c.splicer.set_tracks(&tracks);
        c.tracks = Some(tracks);
        let subs: Vec<(ChildId, ChannelId)> = c.subs.iter().map(|s| (s.child, s.channel)).collect();
        for (child, ch) in subs {
            self.announce_to(key, child, ch);
        }
    }

    /// Keys, route, announce and status of channel `key` to a child's subscription.
    fn announce_to(&mut self, key: &ChannelKey, child: ChildId, ch: ChannelId) {
        let c = &self.channels[key];
        let Some(tracks) = c.tracks.clone() else {
            return;
        };
        for (key_id, cipher, k) in &c.keys {
            self.out.push_back(Output::ToChild {
                child,
                msg: Message::ContentKey {
                    channel: ch,
                    key_id: *key_id,
                    cipher: *cipher,
                    key: k.clone(),
                },
            });
        }
        self.out.push_back(Output::ToChild {
            child,
            msg: Message::Path {
                channel: ch,
                nodes: c.path.clone(),
            },
        });
        self.out.push_back(Output::ToChild {
            child,
            msg: Message::Announce {
                channel: ch,
                duration_ms: None,
                tracks,
            },
        });
        if let Some((state, detail)) = &c.status {
            if *state != ChannelState::Live {
                self.out.push_back(Output::ToChild {
                    child,
                    msg: Message::Status {
                        channel: ch,
                        state: *state,
                        detail: detail.clone(),
                    },
                });
            }
        }
    }

    fn on_frame(&mut self, key: &ChannelKey, from_join: bool, frame: Frame, now: Instant) {
        let c = self.channels.get_mut(key).expect("routed");
        c.counters.frames_in += 1;
        c.counters.bytes_in += frame.data.len() as u64;
        if c.tracks.is_none() {
            return;
        }
        let has_video = c.has_video();
        let mut promote = false;
        let admitted = if from_join {
            let j = c.join.as_mut().expect("join");
            j.source.last_frame = Some(now);
            match j.same_timeline {
                None => None, // no Announce yet: nothing to compare with
                Some(true) if c.splicer.plausible(&frame) || !c.splicer.started() => {
                    let caught_up = c.splicer.caught_up(&frame);
                    let out = c.splicer.admit(frame);
                    if out.is_some() || (caught_up && random_access_or_video(&c.tracks, has_video))
                    {
                        promote = true;
                    }
                    out
                }
                Some(_) => {
                    // Another timeline: restart at its first keyframe.
                    if random_access(&frame, has_video) {
                        if j.same_timeline == Some(true) {
                            info!(channel = %key, "switch target's timestamps do not fit; restarting at a keyframe");
                        }
                        j.same_timeline = Some(false);
                        c.splicer.rebase(&frame);
                        c.gop.clear();
                        c.counters.discontinuities += 1;
                        promote = true;
                        c.splicer.admit(frame)
                    } else {
                        None
                    }
                }
            }
        } else {
            let src = c.active.as_mut().expect("active");
            if let Some(last) = src.last_frame {
                let gap = now.saturating_duration_since(last).as_secs_f64() * 1000.0;
                let b = GAP_BUCKETS_MS
                    .iter()
                    .position(|&ub| gap <= ub)
                    .unwrap_or(GAP_BUCKETS_MS.len());
                c.counters.gaps[b] += 1;
                c.counters.gap_sum_ms += gap;
            }
            src.last_frame = Some(now);
            c.splicer.admit(frame)
        };
        if promote {
            self.promote(key, now);
        }
        let c = self.channels.get_mut(key).expect("routed");
        let Some(frame) = admitted else {
            if !promote {
                c.counters.duplicates += 1;
            }
            return;
        };
        c.last_forward = Some(now);
        c.gop.push(&frame, has_video);
        let start = random_access(&frame, has_video);
        let len = frame.data.len() as u64;
        for s in c.subs.iter_mut() {
            if !s.started || s.skipping {
                if !start {
                    continue;
                }
                s.started = true;
                s.skipping = false;
            }
            c.counters.frames_out += 1;
            c.counters.bytes_out += len;
            self.out.push_back(Output::ToChild {
                child: s.child,
                msg: Message::Frame(Frame {
                    channel: s.channel,
                    ..frame.clone()
                }),
            });
        }
    }

    /// The switch target has spliced: it becomes the active parent, the old one is
    /// closed (make-before-break: only now).
    fn promote(&mut self, key: &ChannelKey, now: Instant) {
        let c = self.channels.get_mut(key).expect("routed");
        let Some(j) = c.join.take() else {
            return;
        };
        let old = c.active.replace(j.source);
        c.switched_at = Some(now);
        *c.counters.switches.entry(j.reason.as_str()).or_default() += 1;
        c.stranded_logged = false;
        c.orphan_since = None;
        let new_up = c.active.as_ref().map(|s| s.upstream).unwrap_or_default();
        let same = j.same_timeline;
        let new_addr = self
            .upstream(new_up)
            .map(|u| u.addr.clone())
            .unwrap_or_default();
        info!(channel = %key, upstream = %new_addr, reason = j.reason.as_str(), same_timeline = ?same, "channel switched parent");
        self.close_sources(old, None);
        self.hang_up_unused();
    }

    /// Begin moving channel `key` to the best eligible parent other than its current one.
    fn start_switch(&mut self, key: &ChannelKey, reason: SwitchReason, now: Instant) {
        let silence = self.cfg.silence;
        let Some(c) = self.channels.get(key) else {
            return;
        };
        if c.join.is_some() {
            return;
        }
        let current = c.active.as_ref().map(|s| s.upstream);
        let candidate = self
            .upstreams
            .iter()
            .filter(|u| u.eligible() && Some(u.id) != current)
            .find(|u| u.fresh(now, silence) || reason == SwitchReason::LinkDown)
            .map(|u| u.id);
        let Some(up) = candidate else {
            let c = self.channels.get_mut(key).expect("exists");
            if c.active.is_none() && c.orphan_since.is_none() {
                c.orphan_since = Some(now);
            }
            if !c.stranded_logged {
                c.stranded_logged = true;
                warn!(channel = %key, reason = reason.as_str(), "no other healthy parent to switch to");
            }
            return;
        };
        let c = self.channels.get(key).expect("exists");
        let mut path = c.request_path.clone();
        path.push(self.cfg.id.clone());
        let u = self.upstream_mut(up).expect("candidate");
        let ch = u.next_channel;
        u.next_channel = u.next_channel.wrapping_add(1).max(1);
        u.routes.insert(ch, key.clone());
        self.out.push_back(Output::ToUpstream {
            upstream: up,
            msg: Message::Path {
                channel: ch,
                nodes: path,
            },
        });
        self.out.push_back(Output::ToUpstream {
            upstream: up,
            msg: Message::Subscribe {
                channel: ch,
                name: key.name.clone(),
                rendition: key.rendition.clone(),
            },
        });
        let source = Source {
            upstream: up,
            channel: ch,
            tracks: None,
            path: Vec::new(),
            last_frame: None,
            since: now,
        };
        let c = self.channels.get_mut(key).expect("exists");
        if c.active.is_none() && c.tracks.is_none() {
            // First subscription of this channel: no splice to make.
            c.active = Some(source);
        } else {
            debug!(channel = %key, reason = reason.as_str(), "switching parent");
            c.join = Some(Join {
                source,
                reason,
                same_timeline: None,
            });
        }
    }

    /// Create channel `key` (subscribing upstream) if it does not exist.
    fn ensure_channel(&mut self, key: &ChannelKey, request_path: Vec<String>, now: Instant) {
        if self.channels.contains_key(key) {
            return;
        }
        self.channels.insert(
            key.clone(),
            Channel {
                key: key.clone(),
                pinned: false,
                active: None,
                join: None,
                tracks: None,
                path: Vec::new(),
                request_path,
                keys: Vec::new(),
                status: None,
                splicer: Splicer::default(),
                gop: GopCache::new(self.cfg.gop),
                subs: Vec::new(),
                linger_until: None,
                orphan_since: None,
                last_keyframe_request: None,
                last_forward: None,
                counters: ChannelCounters::default(),
                stranded_logged: false,
                silence_retry: None,
                switched_at: None,
            },
        );
        self.start_switch(key, SwitchReason::LinkDown, now);
    }

    // ----- child side ----------------------------------------------------------------

    /// A child link is up. `local` marks the public tier's own front-end.
    pub fn child_up(&mut self, child: ChildId, peer: &str, local: bool) {
        self.children.insert(
            child,
            Child {
                peer: peer.to_string(),
                local,
                subs: HashMap::new(),
                pending_paths: HashMap::new(),
                refused: 0,
                skips: 0,
            },
        );
        if self.leaving.is_some() && !local {
            self.out.push_back(Output::ToChild {
                child,
                msg: Message::GoingAway {
                    detail: format!("{} is leaving", self.cfg.id),
                },
            });
        }
    }

    /// A child link ended: its subscriptions end.
    pub fn child_down(&mut self, child: ChildId, now: Instant) {
        let Some(c) = self.children.remove(&child) else {
            return;
        };
        for (ch, key) in c.subs {
            self.remove_sub(&key, child, ch, now);
        }
    }

    /// A child's queue refused a frame of its subscription `channel`: it is skipped to the
    /// next keyframe, for that child alone.
    pub fn child_overflow(&mut self, child: ChildId, channel: ChannelId) {
        let Some(ch) = self.children.get_mut(&child) else {
            return;
        };
        let Some(key) = ch.subs.get(&channel).cloned() else {
            return;
        };
        let peer = ch.peer.clone();
        let Some(c) = self.channels.get_mut(&key) else {
            return;
        };
        if let Some(s) = c
            .subs
            .iter_mut()
            .find(|s| s.child == child && s.channel == channel)
        {
            if !s.skipping {
                s.skipping = true;
                s.skips += 1;
                c.counters.skips += 1;
                ch.skips += 1;
                warn!(%peer, channel = %key, skips = s.skips, "child does not keep up; skipping it to the next keyframe");
            }
        }
    }

    fn refuse(&mut self, child: ChildId, channel: ChannelId, code: ErrorCode, message: String) {
        if let Some(c) = self.children.get_mut(&child) {
            c.refused += 1;
            debug!(peer = %c.peer, channel, ?code, "refused: {message}");
        }
        self.out.push_back(Output::ToChild {
            child,
            msg: Message::Error {
                channel,
                code,
                message,
            },
        });
    }

    /// A message from a child.
    pub fn from_child(&mut self, child: ChildId, msg: Message, now: Instant) {
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        match msg {
            Message::Ping { seq } => self.out.push_back(Output::ToChild {
                child,
                msg: Message::Pong { seq },
            }),
            Message::Pong { .. } | Message::Credits { .. } => {}
            Message::Report { xml } => self.out.push_back(Output::Report { child, xml }),
            Message::Path { channel, nodes } => {
                // Bounded: one pending path per channel id, and only a few of them.
                if c.pending_paths.len() < 64 {
                    c.pending_paths.insert(channel, nodes);
                }
            }
            Message::Subscribe {
                channel,
                name,
                rendition,
            } => {
                let path = c.pending_paths.remove(&channel).unwrap_or_default();
                self.subscribe(child, channel, ChannelKey { name, rendition }, path, now);
            }
            Message::Close { channel } => {
                c.pending_paths.remove(&channel);
                if let Some(key) = c.subs.remove(&channel) {
                    self.remove_sub(&key, child, channel, now);
                }
            }
            Message::KeyframeRequest { channel, track } => {
                let Some(key) = c.subs.get(&channel).cloned() else {
                    return;
                };
                self.keyframe_request(&key, track, now);
            }
            Message::Open { channel, asset, .. } => self.refuse(
                child,
                channel,
                ErrorCode::NotFound,
                format!(
                    "{} is a reflector: it relays live channels, not VoD assets ({asset:?})",
                    self.cfg.id
                ),
            ),
            Message::Error {
                channel,
                code,
                message,
            } => debug!(peer = %c.peer, channel, ?code, "child reports an error: {message}"),
            other => {
                let kind = other.kind_name();
                let channel = match other {
                    Message::Seek { channel, .. }
                    | Message::Pause { channel }
                    | Message::Resume { channel } => channel,
                    _ => 0,
                };
                self.refuse(
                    child,
                    channel,
                    ErrorCode::BadRequest,
                    format!("a reflector does not accept {kind} from a child"),
                );
            }
        }
    }

    fn subscribe(
        &mut self,
        child: ChildId,
        channel: ChannelId,
        key: ChannelKey,
        path: Vec<String>,
        now: Instant,
    ) {
        let c = self.children.get(&child).expect("checked");
        if channel == 0 || c.subs.contains_key(&channel) {
            let m = format!("channel {channel} is the link itself or already in use");
            return self.refuse(child, channel, ErrorCode::BadRequest, m);
        }
        if c.subs.len() >= self.cfg.max_channels_per_child {
            let m = format!(
                "subscription limit: a child may hold {} channels at once on {}",
                self.cfg.max_channels_per_child, self.cfg.id
            );
            return self.refuse(child, channel, ErrorCode::BadRequest, m);
        }
        if path.iter().any(|n| n == &self.cfg.id) {
            let m = format!(
                "routing loop refused by {}: the request already came through it ({} -> {})",
                self.cfg.id,
                path.join(" -> "),
                self.cfg.id
            );
            warn!(channel = %key, "{m}");
            return self.refuse(child, channel, ErrorCode::BadRequest, m);
        }
        if path.len() >= self.cfg.max_depth {
            let m = format!(
                "path too deep at {}: {} nodes, at most {}",
                self.cfg.id,
                path.len(),
                self.cfg.max_depth
            );
            return self.refuse(child, channel, ErrorCode::BadRequest, m);
        }
        if self.leaving.is_some() && !c.local {
            let m = format!("{} is leaving: subscribe elsewhere", self.cfg.id);
            return self.refuse(child, channel, ErrorCode::Internal, m);
        }
        if !self.channels.contains_key(&key) {
            if self.channels.len() >= self.cfg.max_channels {
                let m = format!(
                    "{} relays {} channels, its limit",
                    self.cfg.id, self.cfg.max_channels
                );
                return self.refuse(child, channel, ErrorCode::Internal, m);
            }
            if !self.upstreams.iter().any(|u| u.eligible()) {
                let m = format!("{} has no upstream link up", self.cfg.id);
                return self.refuse(child, channel, ErrorCode::Internal, m);
            }
            self.ensure_channel(&key, path, now);
        }
        let peer = self.children[&child].peer.clone();
        self.children
            .get_mut(&child)
            .expect("checked")
            .subs
            .insert(channel, key.clone());
        let ch = self.channels.get_mut(&key).expect("ensured");
        ch.linger_until = None;
        let cached: Vec<Frame> = ch.gop.frames().to_vec();
        let started = !cached.is_empty();
        ch.subs.push(Sub {
            child,
            channel,
            started,
            skipping: false,
            skips: 0,
        });
        info!(%peer, channel = %key, subscribers = ch.subs.len(), cached = cached.len(), "child subscribed");
        let announced = ch.tracks.is_some();
        if announced {
            self.announce_to(&key, child, channel);
            let ch = self.channels.get_mut(&key).expect("ensured");
            for f in cached {
                ch.counters.frames_out += 1;
                ch.counters.bytes_out += f.data.len() as u64;
                self.out.push_back(Output::ToChild {
                    child,
                    msg: Message::Frame(Frame { channel, ..f }),
                });
            }
            if !started {
                // Nothing cached: ask for a keyframe so the joiner does not wait a GOP.
                let video = self.channels[&key]
                    .tracks
                    .as_ref()
                    .and_then(|t| t.iter().find(|t| t.codec.is_video()).map(|t| t.track));
                if let Some(track) = video {
                    self.keyframe_request(&key, track, now);
                }
            }
        }
    }

    fn keyframe_request(&mut self, key: &ChannelKey, track: u8, now: Instant) {
        let Some(c) = self.channels.get_mut(key) else {
            return;
        };
        if c.last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(250))
        {
            return;
        }
        let Some(src) = c.active.as_ref() else {
            return;
        };
        c.last_keyframe_request = Some(now);
        self.out.push_back(Output::ToUpstream {
            upstream: src.upstream,
            msg: Message::KeyframeRequest {
                channel: src.channel,
                track,
            },
        });
    }

    fn remove_sub(&mut self, key: &ChannelKey, child: ChildId, channel: ChannelId, now: Instant) {
        let linger = self.cfg.linger;
        let Some(c) = self.channels.get_mut(key) else {
            return;
        };
        c.subs
            .retain(|s| !(s.child == child && s.channel == channel));
        if c.subs.is_empty() && !c.pinned {
            c.linger_until = Some(now + linger);
            debug!(channel = %key, "last subscriber left; lingering");
        }
        self.check_leave_done(now);
    }

    // ----- reports up the tree --------------------------------------------------------

    /// Send a control-plane report to the primary parent: the most preferred upstream
    /// whose link is up and that is neither retired nor leaving. Returns false when there
    /// is none (the report is dropped: reports are periodic, the next one will go).
    pub fn send_report(&mut self, xml: String) -> bool {
        let Some(u) = self
            .upstreams
            .iter()
            .find(|u| u.up && !u.retired && !u.going_away)
        else {
            return false;
        };
        self.out.push_back(Output::ToUpstream {
            upstream: u.id,
            msg: Message::Report { xml },
        });
        true
    }

    // ----- leaving -------------------------------------------------------------------

    /// Leave gracefully (SIGTERM): children are told to move; [`Output::LeaveDone`] comes
    /// once they have (or after `leave_timeout`).
    pub fn leave(&mut self, now: Instant) {
        if self.leaving.is_some() {
            return;
        }
        self.leaving = Some(now);
        let remote: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, c)| !c.local)
            .map(|(id, _)| *id)
            .collect();
        info!(children = remote.len(), "leaving: telling children to move");
        for child in remote {
            self.out.push_back(Output::ToChild {
                child,
                msg: Message::GoingAway {
                    detail: format!("{} is leaving", self.cfg.id),
                },
            });
        }
        self.check_leave_done(now);
    }

    fn check_leave_done(&mut self, now: Instant) {
        let Some(since) = self.leaving else {
            return;
        };
        if self.leave_done {
            return;
        }
        let remaining: usize = self
            .children
            .values()
            .filter(|c| !c.local)
            .map(|c| c.subs.len())
            .sum();
        let timed_out = now.saturating_duration_since(since) >= self.cfg.leave_timeout;
        if remaining == 0 || timed_out {
            if timed_out && remaining > 0 {
                warn!(remaining, "leave timed out; children still subscribed");
            } else {
                info!("every child has moved");
            }
            self.leave_done = true;
            self.out.push_back(Output::LeaveDone);
        }
    }

    // ----- timers --------------------------------------------------------------------

    /// When [`Relay::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for u in &self.upstreams {
            consider(u.next_ping);
            if u.up {
                consider(u.last_heard.map(|t| t + self.cfg.link_timeout));
            }
        }
        for c in self.channels.values() {
            consider(c.linger_until);
            if let (Some(s), None, Some(_)) = (&c.active, &c.join, &c.tracks) {
                let quiet_at = s.silent_after(&self.cfg);
                consider(Some(c.silence_retry.map_or(quiet_at, |r| r.max(quiet_at))));
            }
            if let Some(j) = &c.join {
                consider(Some(j.source.since + self.cfg.join_timeout));
            }
        }
        if let Some(since) = self.leaving {
            if !self.leave_done {
                consider(Some(since + self.cfg.leave_timeout));
            }
        }
        if self.upstreams.iter().any(|u| u.healthy_since.is_some()) {
            consider(Some(self.next_return_check));
        }
        next
    }

    /// Run whatever is due at `now`: pings, silence and link time-outs, lingers, returns.
    pub fn handle_timeout(&mut self, now: Instant) {
        let silence = self.cfg.silence;
        let mut resets = Vec::new();
        for u in self.upstreams.iter_mut() {
            if !u.up {
                continue;
            }
            if u.last_heard
                .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.link_timeout)
            {
                resets.push(u.id);
                continue;
            }
            if u.fresh(now, silence) && !u.going_away {
                u.healthy_since.get_or_insert(now);
            } else {
                u.healthy_since = None;
            }
            if u.next_ping.is_some_and(|t| t <= now) {
                u.ping_seq = u.ping_seq.wrapping_add(1);
                u.pings.push_back((u.ping_seq, now));
                if u.pings.len() > 64 {
                    u.pings.pop_front();
                }
                self.out.push_back(Output::ToUpstream {
                    upstream: u.id,
                    msg: Message::Ping { seq: u.ping_seq },
                });
                u.next_ping = Some(now + self.cfg.ping_interval);
            }
        }
        for id in resets {
            let reason = format!(
                "silent for {} ms (no frame, no pong)",
                self.cfg.link_timeout.as_millis()
            );
            self.out.push_back(Output::Reset {
                upstream: id,
                reason: reason.clone(),
            });
            self.upstream_down(id, &reason, now);
        }

        let return_check = now >= self.next_return_check;
        if return_check {
            self.next_return_check = now + RETURN_CHECK;
        }
        let keys: Vec<ChannelKey> = self.channels.keys().cloned().collect();
        for key in keys {
            let c = &self.channels[&key];
            if c.linger_until.is_some_and(|t| t <= now) && c.subs.is_empty() && !c.pinned {
                info!(channel = %key, "nobody wants the channel; unsubscribed upstream");
                let c = self.channels.remove(&key).expect("listed");
                self.close_sources(c.active, c.join.map(|j| j.source));
                continue;
            }
            if let Some(j) = &c.join {
                if now.saturating_duration_since(j.source.since) >= self.cfg.join_timeout {
                    let reason = j.reason;
                    warn!(channel = %key, "switch did not splice in time; abandoned");
                    let c = self.channels.get_mut(&key).expect("listed");
                    let j = c.join.take().expect("join");
                    self.close_sources(Some(j.source), None);
                    if self.channels[&key].active.is_none() {
                        self.start_switch(&key, reason, now);
                    }
                    continue;
                }
            }
            let c = &self.channels[&key];
            let stalled = matches!(
                c.status,
                Some((ChannelState::Stalled | ChannelState::Ended, _))
            );
            if let Some(s) = &c.active {
                let quiet = now >= s.silent_after(&self.cfg);
                let retry_due = c.silence_retry.is_none_or(|t| t <= now);
                // A cut-off parent is silent on its whole link (no pong either); a parent
                // that answers but sends nothing on the channel gets `channel_silence`.
                let link_alive = self
                    .upstream(s.upstream)
                    .is_some_and(|u| u.fresh(now, silence));
                let long_quiet = now.saturating_duration_since(s.last_frame.unwrap_or(s.since))
                    >= self.cfg.channel_silence;
                let quiet = quiet && (!link_alive || long_quiet);
                if c.tracks.is_some() && quiet && c.join.is_none() && retry_due {
                    let c = self.channels.get_mut(&key).expect("listed");
                    c.silence_retry = Some(now + silence);
                    if !stalled {
                        self.start_switch(&key, SwitchReason::Silence, now);
                    }
                    continue;
                }
            }
            // Return to a better parent that has been healthy long enough.
            let c = &self.channels[&key];
            let settled = c
                .switched_at
                .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.return_after);
            if c.join.is_none() && !stalled && return_check && settled {
                if let Some(s) = &c.active {
                    let pos = self.upstreams.iter().position(|u| u.id == s.upstream);
                    let better = self
                        .upstreams
                        .iter()
                        .take(pos.unwrap_or(self.upstreams.len()))
                        .find(|u| {
                            u.eligible()
                                && u.healthy_since.is_some_and(|t| {
                                    now.saturating_duration_since(t) >= self.cfg.return_after
                                })
                        })
                        .is_some();
                    if better {
                        self.start_switch_to_best(&key, now);
                    }
                }
            }
        }
        self.hang_up_unused();
        self.check_leave_done(now);
    }

    fn start_switch_to_best(&mut self, key: &ChannelKey, now: Instant) {
        // start_switch picks the first eligible fresh upstream other than the current
        // one, which is the better one when it comes first in the list.
        self.start_switch(key, SwitchReason::Return, now);
    }

    // ----- status --------------------------------------------------------------------

    /// Everything `/status` and `/metrics` show.
    pub fn snapshot(&self, now: Instant) -> RelaySnapshot {
        RelaySnapshot {
            id: self.cfg.id.clone(),
            leaving: self.leaving.is_some(),
            uptime_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
            upstreams: self
                .upstreams
                .iter()
                .enumerate()
                .map(|(i, u)| UpstreamSnapshot {
                    addr: u.addr.clone(),
                    preference: i,
                    state: if !u.up {
                        "down"
                    } else if u.going_away {
                        "leaving"
                    } else if u.retired {
                        "retired"
                    } else if u.fresh(now, self.cfg.silence) {
                        "up"
                    } else {
                        "silent"
                    }
                    .to_string(),
                    rtt_ms: u.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    channels: self
                        .channels
                        .values()
                        .filter(|c| c.active.as_ref().is_some_and(|s| s.upstream == u.id))
                        .count(),
                    messages_in: u.messages_in,
                })
                .collect(),
            children: self
                .children
                .iter()
                .map(|(id, c)| ChildSnapshot {
                    id: *id,
                    peer: c.peer.clone(),
                    local: c.local,
                    channels: c.subs.len(),
                    refused: c.refused,
                    skips: c.skips,
                })
                .collect(),
            channels: self
                .channels
                .values()
                .map(|c| ChannelSnapshot {
                    channel: c.key.to_string(),
                    state: match (&c.status, &c.active, &c.tracks) {
                        (Some((ChannelState::Stalled, _)), _, _) => "stalled",
                        (Some((ChannelState::Ended, _)), _, _) => "ended",
                        (_, None, _) => "no_parent",
                        (_, Some(_), None) => "subscribing",
                        _ if c.join.is_some() => "switching",
                        _ => "live",
                    }
                    .to_string(),
                    active_upstream: c
                        .active
                        .as_ref()
                        .and_then(|s| self.upstream(s.upstream))
                        .map(|u| u.addr.clone()),
                    path: c.path.clone(),
                    children: c
                        .subs
                        .iter()
                        .filter(|s| !self.children.get(&s.child).is_some_and(|ch| ch.local))
                        .count(),
                    local_subscribers: c
                        .subs
                        .iter()
                        .filter(|s| self.children.get(&s.child).is_some_and(|ch| ch.local))
                        .count(),
                    pinned: c.pinned,
                    gop_frames: c.gop.frames().len(),
                    gop_bytes: c.gop.bytes(),
                    counters: c.counters.clone(),
                })
                .collect(),
        }
    }
}

fn source_mut(c: &mut Channel, join: bool) -> &mut Source {
    if join {
        &mut c.join.as_mut().expect("join").source
    } else {
        c.active.as_mut().expect("active")
    }
}

/// A caught-up duplicate from the new parent promotes it only for a channel with video
/// (where "caught up" is judged on a track that carries every frame in order).
fn random_access_or_video(tracks: &Option<Vec<TrackInfo>>, has_video: bool) -> bool {
    has_video || tracks.as_ref().is_some_and(|t| !t.is_empty())
}
