//! Prometheus metrics of the protocol unit (served as text on `/metrics` by [`crate::http`]).
//!
//! The send path never touches this module: the fan-out engine keeps its own relaxed
//! atomics ([`ServerStats`] / [`ClientStats`]) and [`Metrics::attach_fanout`] makes every
//! scrape read them. On each scrape ([`Metrics::refresh`]) the fan-out totals are copied
//! into the counters here (packets, bytes, late sends, drops, RRs, NACKs, retransmits,
//! keyframe requests, malformed/stranger RTCP); the RTCP histograms (fraction lost, jitter,
//! RTT) are built from each current client's latest receiver report; and the send-lateness
//! histogram is read from the sender's merged hdrhistogram. Counters pushed from outside
//! the fan-out (sessions started, admission refusals, SRTCP rejections) are plain atomics.
//!
//! Also read only at scrape time, from the code that owns them:
//! - any other histogram kept elsewhere: a [`HistogramSource`]
//!   ([`Metrics::register_histogram`]) asked for a [`HistogramSnapshot`] on each scrape;
//! - link and live-channel state: a [`StatusSource`]
//!   ([`Metrics::register_status_source`]), also what `/status` shows.
//!
//! Label sets are bounded: reasons are fixed strings, channels are the configured ones.
//! There are no per-client labels: per-client RTCP figures go into histograms.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::fanout::{ClientStats, ServerStats};

/// A histogram owned elsewhere, as read at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations in this bucket only)`, bounds increasing. Observations
    /// above the last bound are `count` minus the sum of these (the `+Inf` bucket).
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// Something that can describe its histogram on demand (e.g. the scheduler's send
/// lateness, in seconds).
pub trait HistogramSource: Send + Sync + 'static {
    fn snapshot(&self) -> HistogramSnapshot;
}

impl<F: Fn() -> HistogramSnapshot + Send + Sync + 'static> HistogramSource for F {
    fn snapshot(&self) -> HistogramSnapshot {
        self()
    }
}

/// The link to the encoder unit, for `/status` and `divisor_link_up`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    /// `up` when a link is attached, else e.g. `down` / `connecting`.
    pub state: String,
    /// The encoder unit's address, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// One live channel, for `/status` and `divisor_channel_state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelStatus {
    pub name: String,
    /// e.g. `live`, `stalled`, `failed`, `idle` (as the encoder unit reports it).
    pub state: String,
    /// Clients watching this channel now.
    pub clients: u64,
}

/// One client (RTSP session) as `/status` shows it, from its [`ClientStats`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientStatus {
    pub session: String,
    pub stream: String,
    pub peer: String,
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
    pub retransmits: u64,
    pub nacks_received: u64,
    pub receiver_reports: u64,
    /// Latest receiver report: fraction lost (0..1), cumulative lost, jitter (s), RTT (s).
    pub fraction_lost: f64,
    pub cumulative_lost: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_seconds: Option<f64>,
}

impl ClientStatus {
    pub fn of(c: &ClientStats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let rtt = c.rtt_us.load(Relaxed);
        ClientStatus {
            session: c.session.clone(),
            stream: c.stream.clone(),
            peer: c.peer.clone(),
            packets: c.packets.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            drops: c.drops.load(Relaxed),
            retransmits: c.retransmits.load(Relaxed),
            nacks_received: c.nacks_received.load(Relaxed),
            receiver_reports: c.receiver_reports.load(Relaxed),
            fraction_lost: f64::from(c.fraction_lost.load(Relaxed)) / 256.0,
            cumulative_lost: c.cumulative_lost.load(Relaxed),
            jitter_seconds: c.jitter_seconds(),
            rtt_seconds: (rtt >= 0).then(|| rtt as f64 / 1e6),
        }
    }
}

/// What the rest of the unit reports about itself at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UnitStatus {
    pub link: LinkStatus,
    pub channels: Vec<ChannelStatus>,
}

/// Provider of [`UnitStatus`] (implemented by the upstream / channel router).
pub trait StatusSource: Send + Sync + 'static {
    fn status(&self) -> UnitStatus;
}

impl<F: Fn() -> UnitStatus + Send + Sync + 'static> StatusSource for F {
    fn status(&self) -> UnitStatus {
        self()
    }
}

/// Lists the WebRTC sessions for `/status`.
pub type WebRtcStatusSource = Arc<dyn Fn() -> Vec<crate::whep::WhepStatus> + Send + Sync>;

/// Why an inbound RTCP packet was dropped (a fixed label set).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RtcpDrop {
    /// Did not parse as RTCP.
    Malformed,
    /// From an address that holds no session.
    UnknownSource,
    /// SRTCP that failed authentication, or SRTCP before the client's keys.
    SrtcpRejected,
    /// Over the per-client NACK rate limit.
    RateLimited,
}

impl RtcpDrop {
    fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownSource => "unknown_source",
            Self::SrtcpRejected => "srtcp_rejected",
            Self::RateLimited => "rate_limited",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The protocol unit's metrics. Clone freely: every field is a shared handle.
#[derive(Clone)]
pub struct Metrics {
    /// Clients (RTSP sessions) being served now.
    pub clients: Gauge,
    /// Sessions set up since start (counter; `clients` is the current figure).
    pub sessions_started: Counter,
    /// RTP/RTCP packets and bytes (UDP payload) sent to clients.
    pub packets_sent: Counter,
    pub bytes_sent: Counter,
    /// Packets sent after their deadline by more than the scheduler's tolerance.
    pub late_packets: Counter,
    /// Packets dropped at send time (a client's socket buffer full, send error).
    pub send_drops: Counter,
    /// RTCP receiver reports received.
    pub receiver_reports: Counter,
    /// NACKs received (generic NACK FCI entries) and packets retransmitted for them.
    pub nacks_received: Counter,
    pub retransmissions: Counter,
    /// PLI/FIR turned into keyframe requests to the encoder unit.
    pub keyframe_requests: Counter,
    /// WebRTC (WHEP) viewers held now, and sessions created since start.
    pub webrtc_viewers: Gauge,
    pub webrtc_sessions: Counter,
    /// WebRTC viewers moved to another rendition by their bandwidth estimate.
    pub webrtc_switches: Counter,
    /// REMB packets (receiver bandwidth estimates) received from WebRTC viewers.
    pub webrtc_remb: Counter,
    webrtc_ended: Family<ReasonLabel, Counter>,
    webrtc_refused: Family<ReasonLabel, Counter>,
    webrtc_status: Arc<OnceLock<WebRtcStatusSource>>,
    rtcp_dropped: Family<ReasonLabel, Counter>,
    admission_refusals: Family<ReasonLabel, Counter>,
    auth_failures: Family<ReasonLabel, Counter>,
    rtsp_limit_refusals: Family<ReasonLabel, Counter>,
    registry: Arc<Mutex<Registry>>,
    status: Arc<OnceLock<Arc<dyn StatusSource>>>,
    fanout: Arc<OnceLock<Arc<ServerStats>>>,
    /// Serialises [`Metrics::refresh`] so two scrapes cannot add the same delta twice.
    refreshing: Arc<Mutex<()>>,
    started: Instant,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered under the `divisor_` prefix.
    pub fn new() -> Self {
        let m = Self {
            clients: Gauge::default(),
            sessions_started: Counter::default(),
            packets_sent: Counter::default(),
            bytes_sent: Counter::default(),
            late_packets: Counter::default(),
            send_drops: Counter::default(),
            receiver_reports: Counter::default(),
            nacks_received: Counter::default(),
            retransmissions: Counter::default(),
            keyframe_requests: Counter::default(),
            webrtc_viewers: Gauge::default(),
            webrtc_sessions: Counter::default(),
            webrtc_switches: Counter::default(),
            webrtc_remb: Counter::default(),
            webrtc_ended: Family::default(),
            webrtc_refused: Family::default(),
            webrtc_status: Arc::new(OnceLock::new()),
            rtcp_dropped: Family::default(),
            admission_refusals: Family::default(),
            auth_failures: Family::default(),
            rtsp_limit_refusals: Family::default(),
            registry: Arc::new(Mutex::new(Registry::with_prefix("divisor"))),
            status: Arc::new(OnceLock::new()),
            fanout: Arc::new(OnceLock::new()),
            refreshing: Arc::new(Mutex::new(())),
            started: Instant::now(),
        };
        {
            let mut r = m.lock_registry();
            r.register(
                "clients",
                "Clients (sessions) served now",
                m.clients.clone(),
            );
            r.register(
                "sessions_started",
                "Sessions set up since start",
                m.sessions_started.clone(),
            );
            r.register(
                "packets_sent",
                "RTP and RTCP packets sent to clients",
                m.packets_sent.clone(),
            );
            r.register(
                "bytes_sent",
                "UDP payload bytes sent to clients",
                m.bytes_sent.clone(),
            );
            r.register(
                "late_packets",
                "Packets sent later than their deadline allows",
                m.late_packets.clone(),
            );
            r.register(
                "send_drops",
                "Packets dropped at send time (client buffer full, send error)",
                m.send_drops.clone(),
            );
            r.register(
                "rtcp_receiver_reports",
                "RTCP receiver reports received from clients",
                m.receiver_reports.clone(),
            );
            r.register(
                "rtcp_dropped",
                "Inbound RTCP packets dropped, by reason",
                m.rtcp_dropped.clone(),
            );
            r.register(
                "nacks_received",
                "Packets asked for again by RTCP generic NACKs",
                m.nacks_received.clone(),
            );
            r.register(
                "retransmissions",
                "Packets retransmitted in answer to NACKs",
                m.retransmissions.clone(),
            );
            r.register(
                "keyframe_requests",
                "PLI/FIR forwarded to the encoder unit as keyframe requests",
                m.keyframe_requests.clone(),
            );
            r.register(
                "webrtc_viewers",
                "WebRTC (WHEP) viewers held now",
                m.webrtc_viewers.clone(),
            );
            r.register(
                "webrtc_sessions",
                "WebRTC (WHEP) sessions created since start",
                m.webrtc_sessions.clone(),
            );
            r.register(
                "webrtc_rendition_switches",
                "WebRTC viewers moved to another rendition by their bandwidth estimate (REMB)",
                m.webrtc_switches.clone(),
            );
            r.register(
                "webrtc_remb",
                "REMB packets (receiver bandwidth estimates) received from WebRTC viewers",
                m.webrtc_remb.clone(),
            );
            r.register(
                "webrtc_sessions_ended",
                "WebRTC sessions ended, by reason (deleted, timeout, channel_ended, closed)",
                m.webrtc_ended.clone(),
            );
            r.register(
                "webrtc_refused",
                "WHEP requests refused, by reason",
                m.webrtc_refused.clone(),
            );
            r.register(
                "admission_refusals",
                "Sessions refused by admission control (453), by reason",
                m.admission_refusals.clone(),
            );
            r.register(
                "auth_failures",
                "RTSP requests refused by authentication: wrong credentials (401) or a path the user may not read (403)",
                m.auth_failures.clone(),
            );
            r.register(
                "rtsp_limit_refusals",
                "RTSP connections or requests refused by a limit: connections_per_ip (503), request_timeout (408), request_too_large (400)",
                m.rtsp_limit_refusals.clone(),
            );
            r.register_collector(Box::new(FanOutCollector {
                fanout: Arc::clone(&m.fanout),
            }));
            r.register_collector(Box::new(StatusCollector {
                status: Arc::clone(&m.status),
                started: m.started,
            }));
        }
        m
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Registration cannot leave the registry half-updated; keep using a poisoned one.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read the fan-out's statistics on every scrape (first call wins).
    pub fn attach_fanout(&self, stats: Arc<ServerStats>) {
        let _ = self.fanout.set(stats);
    }

    /// Copy the fan-out's totals into the counters (done by [`Metrics::encode`] and the
    /// `/status` handler; cheap: a few atomic loads).
    pub fn refresh(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(s) = self.fanout.get() else {
            return;
        };
        let _serial = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        self.clients
            .set(i64::try_from(s.client_count()).unwrap_or(i64::MAX));
        catch_up(&self.packets_sent, s.packets.load(Relaxed));
        catch_up(&self.bytes_sent, s.bytes.load(Relaxed));
        catch_up(&self.late_packets, s.late_sends.load(Relaxed));
        catch_up(&self.send_drops, s.drops.load(Relaxed));
        catch_up(&self.receiver_reports, s.receiver_reports.load(Relaxed));
        catch_up(&self.nacks_received, s.nacks_received.load(Relaxed));
        catch_up(&self.retransmissions, s.retransmits.load(Relaxed));
        catch_up(&self.keyframe_requests, s.keyframe_requests.load(Relaxed));
        for (why, total) in [
            (RtcpDrop::Malformed, s.rtcp_malformed.load(Relaxed)),
            (RtcpDrop::UnknownSource, s.rtcp_strangers.load(Relaxed)),
            (RtcpDrop::SrtcpRejected, s.srtcp_rejected.load(Relaxed)),
            (RtcpDrop::RateLimited, s.nacks_refused.load(Relaxed)),
        ] {
            if total > 0 {
                catch_up(
                    &self.rtcp_dropped.get_or_create(&ReasonLabel {
                        reason: why.label(),
                    }),
                    total,
                );
            }
        }
    }

    /// Every current client's figures (for `/status`); empty before [`Self::attach_fanout`].
    pub fn client_statuses(&self) -> Vec<ClientStatus> {
        self.fanout
            .get()
            .map(|s| s.clients().iter().map(|c| ClientStatus::of(c)).collect())
            .unwrap_or_default()
    }

    /// Count a dropped inbound RTCP packet.
    pub fn rtcp_dropped(&self, why: RtcpDrop) {
        self.rtcp_dropped
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .inc();
    }

    /// Count an admission refusal, labelled by [`crate::admission::Refused::kind`].
    pub fn admission_refused(&self, refused: &crate::admission::Refused) {
        self.admission_refusals
            .get_or_create(&ReasonLabel {
                reason: refused.kind(),
            })
            .inc();
    }

    /// Count a connection or request refused by an RTSP limit.
    pub fn rtsp_limit_refused(&self, reason: &'static str) {
        self.rtsp_limit_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Count a refused authentication (`reason`: `credentials` or `forbidden`).
    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Count an ended WebRTC session (`kind`: a fixed label).
    pub fn webrtc_session_ended(&self, kind: &'static str) {
        self.webrtc_ended
            .get_or_create(&ReasonLabel { reason: kind })
            .inc();
    }

    /// Count a refused WHEP request (`kind`: a fixed label).
    pub fn webrtc_refused(&self, kind: &'static str) {
        self.webrtc_refused
            .get_or_create(&ReasonLabel { reason: kind })
            .inc();
    }

    /// Where `/status` reads the WebRTC sessions from (first call wins).
    pub fn register_webrtc_status(&self, source: WebRtcStatusSource) {
        let _ = self.webrtc_status.set(source);
    }

    /// Every WebRTC session now (empty without WHEP).
    pub fn webrtc_statuses(&self) -> Vec<crate::whep::WhepStatus> {
        self.webrtc_status.get().map(|f| f()).unwrap_or_default()
    }

    /// Expose a histogram kept elsewhere (e.g. `send_lateness_seconds` from the
    /// scheduler) under `divisor_<name>`, read on each scrape.
    pub fn register_histogram(
        &self,
        name: &'static str,
        help: &'static str,
        source: Arc<dyn HistogramSource>,
    ) {
        self.lock_registry()
            .register_collector(Box::new(ExternalHistogram { name, help, source }));
    }

    /// Where link and channel state come from (first call wins; later calls are ignored).
    pub fn register_status_source(&self, source: Arc<dyn StatusSource>) {
        let _ = self.status.set(source);
    }

    /// The unit's status now (link, channels); default (empty) when nobody registered.
    pub fn unit_status(&self) -> UnitStatus {
        self.status.get().map(|s| s.status()).unwrap_or_default()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The OpenMetrics text exposition (what `/metrics` returns).
    pub fn encode(&self) -> String {
        self.refresh();
        let mut out = String::with_capacity(4096);
        let registry = self.lock_registry();
        // Writing into a String cannot fail; an error here would be a collector bug, and
        // the scrape then carries what was written so far.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Raise a counter fed from elsewhere to `total` (counters only grow).
fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// Bucket `values` (each with a count) under increasing `bounds`.
fn bucketed(bounds: &[f64], values: impl Iterator<Item = (f64, u64)>) -> HistogramSnapshot {
    let mut snap = HistogramSnapshot {
        buckets: bounds.iter().map(|b| (*b, 0)).collect(),
        sum: 0.0,
        count: 0,
    };
    for (v, n) in values {
        if !v.is_finite() {
            continue;
        }
        snap.sum += v * n as f64;
        snap.count += n;
        if let Some(b) = snap.buckets.iter_mut().find(|(le, _)| v <= *le) {
            b.1 += n;
        }
    }
    snap
}

fn encode_snapshot(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    snap: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut buckets: Vec<(f64, u64)> = snap
        .buckets
        .iter()
        .copied()
        .filter(|(le, _)| le.is_finite())
        .collect();
    let counted: u64 = buckets.iter().map(|(_, n)| n).sum();
    buckets.push((f64::INFINITY, snap.count.saturating_sub(counted)));
    let count = snap.count.max(counted);
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(snap.sum, count, &buckets, None)
}

/// Send lateness bounds, seconds (50 µs .. 1 s); 200 µs and 2 ms are issue 4's bars.
const LATENESS_BOUNDS: [f64; 15] = [
    0.00005, 0.0001, 0.00015, 0.0002, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

/// The fan-out's histograms, built at scrape time: send lateness (from the sender's
/// merged hdrhistogram) and, over the clients served now, the latest receiver report's
/// fraction lost, jitter and round-trip time.
struct FanOutCollector {
    fanout: Arc<OnceLock<Arc<ServerStats>>>,
}

impl std::fmt::Debug for FanOutCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOutCollector").finish_non_exhaustive()
    }
}

impl Collector for FanOutCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = self.fanout.get() else {
            return Ok(());
        };
        let lateness = {
            let h = stats.lateness.lock().unwrap_or_else(|e| e.into_inner());
            bucketed(
                &LATENESS_BOUNDS,
                h.iter_recorded()
                    .map(|v| (v.value_iterated_to() as f64 / 1e6, v.count_at_value())),
            )
        };
        encode_snapshot(
            &mut encoder,
            "send_lateness_seconds",
            "Send lateness (deadline to send call), per frame and client batch",
            &lateness,
        )?;
        let clients: Vec<ClientStatus> = stats
            .clients()
            .iter()
            .map(|c| ClientStatus::of(c))
            .filter(|c| c.receiver_reports > 0)
            .collect();
        let loss = bucketed(
            &[0.0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5],
            clients.iter().map(|c| (c.fraction_lost, 1)),
        );
        encode_snapshot(
            &mut encoder,
            "rtcp_fraction_lost",
            "Fraction lost in each current client's latest RTCP receiver report",
            &loss,
        )?;
        let time_bounds = exponential_buckets(0.0001, 2.0, 16).collect::<Vec<_>>();
        let jitter = bucketed(
            &time_bounds,
            clients.iter().filter_map(|c| Some((c.jitter_seconds?, 1))),
        );
        encode_snapshot(
            &mut encoder,
            "rtcp_jitter_seconds",
            "Interarrival jitter in each current client's latest RTCP receiver report",
            &jitter,
        )?;
        let rtt = bucketed(
            &time_bounds,
            clients.iter().filter_map(|c| Some((c.rtt_seconds?, 1))),
        );
        encode_snapshot(
            &mut encoder,
            "rtcp_rtt_seconds",
            "Round-trip time from each current client's latest RTCP receiver report",
            &rtt,
        )
    }
}

/// A histogram read from its owner at scrape time.
struct ExternalHistogram {
    name: &'static str,
    help: &'static str,
    source: Arc<dyn HistogramSource>,
}

impl std::fmt::Debug for ExternalHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalHistogram")
            .field("name", &self.name)
            .finish()
    }
}

impl Collector for ExternalHistogram {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_snapshot(&mut encoder, self.name, self.help, &self.source.snapshot())
    }
}

/// Uptime, link state and live-channel states, read at scrape time.
struct StatusCollector {
    status: Arc<OnceLock<Arc<dyn StatusSource>>>,
    started: Instant,
}

impl std::fmt::Debug for StatusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusCollector").finish_non_exhaustive()
    }
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let uptime = self.started.elapsed().as_secs_f64();
        encoder
            .encode_descriptor(
                "uptime_seconds",
                "Seconds since the protocol unit started",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&uptime)?;
        let Some(source) = self.status.get() else {
            return Ok(());
        };
        let status = source.status();
        let up = i64::from(status.link.state == "up");
        encoder
            .encode_descriptor(
                "link_up",
                "1 while a link to the encoder unit is attached",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&up)?;
        if !status.channels.is_empty() {
            let mut states = encoder.encode_descriptor(
                "channel_state",
                "Live channel state (1 for the current state)",
                None,
                MetricType::Gauge,
            )?;
            for ch in &status.channels {
                let labels = [("channel", ch.name.as_str()), ("state", ch.state.as_str())];
                states.encode_family(&labels)?.encode_gauge(&1i64)?;
            }
            let mut clients = encoder.encode_descriptor(
                "channel_clients",
                "Clients watching each live channel",
                None,
                MetricType::Gauge,
            )?;
            for ch in &status.channels {
                let labels = [("channel", ch.name.as_str())];
                let n = i64::try_from(ch.clients).unwrap_or(i64::MAX);
                clients.encode_family(&labels)?.encode_gauge(&n)?;
            }
        }
        Ok(())
    }
}

/// A small check of the text exposition format, for tests here and in `http`: every line
/// is a `# HELP`/`# TYPE`/`# UNIT` comment, `# EOF` (last), or `name{labels} value` with a
/// numeric value; every sample belongs to a declared family. Returns the samples.
pub fn parse_exposition(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut families: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let mut saw_eof = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if saw_eof {
            return Err(format!("line {n}: content after # EOF"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts
                .next()
                .ok_or(format!("line {n}: comment without name"))?;
            match kind {
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "info", "unknown"].contains(&t) {
                        return Err(format!("line {n}: unknown type {t:?}"));
                    }
                    families.push(name.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => return Err(format!("line {n}: unknown comment {kind:?}")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or(format!("line {n}: no value: {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|_| format!("line {n}: bad value {v:?}"))?,
        };
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                if !labels.ends_with('}') {
                    return Err(format!("line {n}: unterminated labels"));
                }
                name
            }
            None => series,
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("line {n}: bad metric name {name:?}"));
        }
        let family_ok = families.iter().any(|f| {
            name == f
                || ["_total", "_bucket", "_sum", "_count", "_created", "_info"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))
        });
        if !family_ok {
            return Err(format!("line {n}: sample {name} has no # TYPE"));
        }
        samples.push((series.to_string(), value));
    }
    if !saw_eof {
        return Err("no # EOF".into());
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
        samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
    }

    #[test]
    fn counters_and_histograms_render() {
        let m = Metrics::new();
        m.clients.set(3);
        m.packets_sent.inc_by(1000);
        m.bytes_sent.inc_by(1_200_000);
        m.rtcp_dropped(RtcpDrop::SrtcpRejected);
        m.rtcp_dropped(RtcpDrop::SrtcpRejected);
        m.admission_refused(&crate::admission::Refused::TooManyClients { limit: 1 });
        let text = m.encode();
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(value(&samples, "divisor_clients"), Some(3.0));
        assert_eq!(value(&samples, "divisor_packets_sent_total"), Some(1000.0));
        assert_eq!(value(&samples, "divisor_bytes_sent_total"), Some(1.2e6));
        assert_eq!(
            value(
                &samples,
                "divisor_rtcp_dropped_total{reason=\"srtcp_rejected\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &samples,
                "divisor_admission_refusals_total{reason=\"clients\"}"
            ),
            Some(1.0)
        );
        assert!(value(&samples, "divisor_uptime_seconds").is_some());
    }

    #[test]
    fn external_histogram_and_status() {
        let m = Metrics::new();
        m.register_histogram(
            "send_lateness_seconds",
            "Send lateness",
            Arc::new(|| HistogramSnapshot {
                buckets: vec![(0.0001, 5), (0.001, 3), (0.002, 1)],
                sum: 0.004,
                count: 10,
            }),
        );
        m.register_status_source(Arc::new(|| UnitStatus {
            link: LinkStatus {
                state: "up".into(),
                peer: None,
            },
            channels: vec![ChannelStatus {
                name: "cam1".into(),
                state: "live".into(),
                clients: 7,
            }],
        }));
        let text = m.encode();
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let b = |le: &str| {
            value(
                &samples,
                &format!("divisor_send_lateness_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.0001"), Some(5.0));
        assert_eq!(b("0.001"), Some(8.0));
        assert_eq!(b("0.002"), Some(9.0));
        assert_eq!(b("+Inf"), Some(10.0));
        assert_eq!(
            value(&samples, "divisor_send_lateness_seconds_count"),
            Some(10.0)
        );
        assert_eq!(value(&samples, "divisor_link_up"), Some(1.0));
        assert_eq!(
            value(
                &samples,
                "divisor_channel_state{channel=\"cam1\",state=\"live\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&samples, "divisor_channel_clients{channel=\"cam1\"}"),
            Some(7.0)
        );
        assert_eq!(m.unit_status().channels.len(), 1);
    }

    #[test]
    fn fanout_stats_are_read_at_scrape_time() {
        use std::sync::atomic::Ordering::Relaxed;
        let m = Metrics::new();
        let stats = ServerStats::new();
        m.attach_fanout(stats.clone());
        let c = ClientStats::new(1, "S1", "vod/a.mp4", "10.0.0.2:5000");
        c.receiver_reports.store(3, Relaxed);
        c.fraction_lost.store(64, Relaxed);
        c.jitter.store(900, Relaxed);
        c.jitter_clock_rate.store(90_000, Relaxed);
        c.rtt_us.store(5_000, Relaxed);
        stats.add_client(c);
        stats.packets.store(1000, Relaxed);
        stats.receiver_reports.store(3, Relaxed);
        stats.rtcp_malformed.store(2, Relaxed);
        let mut local = crate::fanout::stats::new_lateness_histogram();
        local.record(300).unwrap();
        local.record(3_000).unwrap();
        stats.merge_lateness(&local);
        let text = m.encode();
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(value(&samples, "divisor_clients"), Some(1.0));
        assert_eq!(value(&samples, "divisor_packets_sent_total"), Some(1000.0));
        assert_eq!(
            value(&samples, "divisor_rtcp_receiver_reports_total"),
            Some(3.0)
        );
        assert_eq!(
            value(&samples, "divisor_rtcp_dropped_total{reason=\"malformed\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(&samples, "divisor_rtcp_fraction_lost_sum"),
            Some(0.25)
        );
        assert_eq!(value(&samples, "divisor_rtcp_rtt_seconds_count"), Some(1.0));
        assert_eq!(
            value(&samples, "divisor_send_lateness_seconds_count"),
            Some(2.0)
        );
        // A second scrape does not count anything twice.
        let text = m.encode();
        let samples = parse_exposition(&text).unwrap();
        assert_eq!(value(&samples, "divisor_packets_sent_total"), Some(1000.0));
        assert_eq!(m.client_statuses()[0].jitter_seconds, Some(0.01));
    }

    #[test]
    fn parser_rejects_bad_text() {
        assert!(parse_exposition("").is_err());
        assert!(
            parse_exposition("x 1\n# EOF\n").is_err(),
            "undeclared family"
        );
        assert!(parse_exposition("# TYPE x gauge\nx abc\n# EOF\n").is_err());
        assert!(parse_exposition("# TYPE x gauge\nx 1\n").is_err(), "no EOF");
        assert!(parse_exposition("# TYPE x gauge\nx{a=\"1\" 1\n# EOF\n").is_err());
        assert_eq!(
            parse_exposition("# TYPE x gauge\nx 1\n# EOF\n").unwrap(),
            vec![("x".to_string(), 1.0)]
        );
    }
}
