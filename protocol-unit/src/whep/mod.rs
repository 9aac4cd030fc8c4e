//! WHEP: WebRTC playback of live channels for browsers, with webrtc-rs.
//!
//! - [`negotiate`]: the offer's codecs against the channel's tracks (sans-IO);
//! - [`session`]: one viewer — its webrtc-rs `RTCPeerConnection` (ICE-lite, DTLS-SRTP,
//!   NACK responder and sender reports from the interceptors) fed from the fan-out
//!   engine, its feedback (PLI/FIR become keyframe requests to the encoder unit) and its
//!   lifetime (DELETE, or ICE gone for `--webrtc-timeout-secs`);
//! - [`signal`]: the HTTP side: `POST /whep/<channel>[/<rendition>]`,
//!   `DELETE`/`PATCH /whep/resource/<id>`, and the player page `GET /play/<channel>`.
//!
//! Media path: a viewer is one more client of the packetise-once engine
//! ([`crate::fanout`]), with an in-process queue ([`crate::fanout::sink`]) as its
//! destination instead of a UDP address; so it starts at the cached GOP, shares the
//! channel's payloads, and per viewer the work left is the header rewrite (engine) and
//! SRTP (webrtc-rs).

pub mod adapt;
pub mod nack;
pub mod negotiate;
pub mod session;
pub mod signal;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tracing::{info, warn};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;

use crate::admission::{Admission, Refused};
use crate::fanout::FanOut;
use crate::live::LiveHub;
use crate::metrics::Metrics;
use crate::upstream::UpstreamError;

pub use negotiate::{NegotiateError, OfferError};
pub use session::WhepSession;

/// WebRTC flags, flattened into the front-end flags (`divisor-protocol`, `divisor-mono`).
#[derive(clap::Args, Clone, Debug)]
pub struct WebRtcArgs {
    /// Address to advertise in WebRTC host candidates instead of the local interfaces'
    /// (1:1 NAT, or to pick one interface). Repeatable; `EXTERNAL/LOCAL` pairs are allowed
    /// as in webrtc-rs's NAT 1:1 mapping.
    #[arg(long = "webrtc-public-ip", value_name = "IP")]
    pub webrtc_public_ip: Vec<String>,

    /// One UDP port for every WebRTC viewer (webrtc-rs UDP mux). 0 = each viewer gets
    /// ephemeral ports.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub webrtc_udp_port: u16,

    /// Seconds a WebRTC viewer may stay disconnected (ICE disconnected or failed, or never
    /// connected) before its session is freed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub webrtc_timeout_secs: u64,

    /// Renditions of the encoder's ladder a viewer of `POST /whep/<channel>` (no rendition
    /// named) may be moved between by its bandwidth estimate (REMB), e.g. `low,web`.
    /// The viewer starts on the first one; those its codec cannot play are left out.
    /// Empty: no adaptation.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub webrtc_adapt_renditions: Vec<String>,

    /// Require `Authorization: Bearer TOKEN` on WHEP requests (the offer POST, and PATCH
    /// and DELETE of its resource), as the WHEP specification does; 401 otherwise.
    /// Repeatable: any token listed is accepted. The player page sends the `?token=`
    /// of its own URL (`/play/<channel>?token=TOKEN`). Off when none is given.
    #[arg(long = "whep-token", value_name = "TOKEN")]
    pub whep_tokens: Vec<String>,
}

impl Default for WebRtcArgs {
    fn default() -> Self {
        WebRtcArgs {
            webrtc_public_ip: Vec::new(),
            webrtc_udp_port: 0,
            webrtc_timeout_secs: 10,
            webrtc_adapt_renditions: Vec::new(),
            whep_tokens: Vec::new(),
        }
    }
}

impl WebRtcArgs {
    pub fn config(&self) -> WhepConfig {
        WhepConfig {
            public_ips: self.webrtc_public_ip.clone(),
            udp_port: self.webrtc_udp_port,
            timeout: Duration::from_secs(self.webrtc_timeout_secs.max(1)),
            adapt_renditions: self
                .webrtc_adapt_renditions
                .iter()
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect(),
            adapt: adapt::Policy::default(),
            tokens: self
                .whep_tokens
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
        }
    }
}

/// WHEP settings.
#[derive(Clone, Debug, PartialEq)]
pub struct WhepConfig {
    pub public_ips: Vec<String>,
    pub udp_port: u16,
    pub timeout: Duration,
    /// Renditions a channel viewer may be moved between (see [`adapt`]).
    pub adapt_renditions: Vec<String>,
    pub adapt: adapt::Policy,
    /// Bearer tokens a WHEP request must carry one of; empty: open.
    pub tokens: Vec<String>,
}

impl Default for WhepConfig {
    fn default() -> Self {
        WebRtcArgs::default().config()
    }
}

/// Why a WHEP request fails; [`WhepError::status`] is its HTTP status, its text the body.
#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    #[error("bad offer: {0}")]
    BadOffer(#[from] OfferError),
    #[error("offer refused by the WebRTC stack: {0}")]
    Rejected(String),
    #[error("{0}")]
    NoCodec(#[from] NegotiateError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("over the admission budget: {0}")]
    Admission(#[from] Refused),
    #[error("no WHEP session {0}")]
    NoSession(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl WhepError {
    pub fn status(&self) -> u16 {
        match self {
            WhepError::BadOffer(_) | WhepError::Rejected(_) => 400,
            WhepError::NoCodec(_) => 406,
            WhepError::NotFound(_) | WhepError::NoSession(_) => 404,
            WhepError::Unavailable(_) | WhepError::Admission(_) => 503,
            WhepError::Internal(_) => 500,
        }
    }

    /// A fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            WhepError::BadOffer(_) | WhepError::Rejected(_) => "bad_offer",
            WhepError::NoCodec(_) => "no_codec",
            WhepError::NotFound(_) | WhepError::NoSession(_) => "not_found",
            WhepError::Unavailable(_) => "unavailable",
            WhepError::Admission(_) => "admission",
            WhepError::Internal(_) => "internal",
        }
    }

    fn from_upstream(e: UpstreamError, channel: &str, rendition: &str) -> WhepError {
        use divisor_link::ErrorCode;
        match e {
            UpstreamError::Refused {
                code: ErrorCode::NotFound | ErrorCode::NoSuchRendition,
                message,
            } => WhepError::NotFound(if rendition.is_empty() {
                format!("no live channel named {channel:?}: {message}")
            } else {
                format!("no live channel {channel:?} with rendition {rendition:?}: {message}")
            }),
            UpstreamError::Refused {
                code: ErrorCode::UnsupportedMedia,
                message,
            } => WhepError::Unavailable(format!("channel cannot be served: {message}")),
            UpstreamError::NoLink | UpstreamError::LinkDown => {
                WhepError::Unavailable(format!("{e}"))
            }
            other => WhepError::Unavailable(format!("{other}")),
        }
    }
}

/// A WebRTC session as `/status` shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WhepStatus {
    pub id: String,
    pub channel: String,
    pub peer: String,
    /// The peer connection state (`new`, `connecting`, `connected`, `disconnected`, ...).
    pub state: String,
    /// Codecs sent (`video/H264`, `audio/opus`).
    pub codecs: Vec<String>,
    pub age_seconds: f64,
    /// The rendition being sent (changes when the viewer is adapted).
    pub rendition: String,
    /// The viewer's last bandwidth estimate (REMB), bits/s.
    pub estimate_bps: Option<u64>,
    /// REMB packets (bandwidth estimates) received from the viewer.
    pub remb_packets: u64,
    /// Rendition switches made for this viewer.
    pub switches: u64,
    /// Packets resent on the viewer's NACKs.
    pub nack_resent: u64,
    /// NACKed packets not resent (unknown, older than 1 s, resent just before, or over
    /// the retransmission budget).
    pub nack_refused: u64,
}

/// The WHEP front-end: shared settings and the table of sessions.
pub struct Whep {
    pub config: WhepConfig,
    pub(crate) live: Arc<LiveHub>,
    pub(crate) fan: Arc<FanOut>,
    pub(crate) admission: Admission,
    pub(crate) metrics: Metrics,
    settings: SettingEngine,
    sessions: Mutex<HashMap<String, Arc<WhepSession>>>,
    /// The UDP mux's local address, when one port serves everyone.
    pub udp_addr: Option<SocketAddr>,
}

impl Whep {
    /// Bind the UDP mux (when a port is configured) and make the shared settings. Needs a
    /// tokio runtime.
    pub fn start(
        config: WhepConfig,
        live: Arc<LiveHub>,
        fan: Arc<FanOut>,
        admission: Admission,
        metrics: Metrics,
    ) -> std::io::Result<Arc<Whep>> {
        let mut settings = SettingEngine::default();
        // A server answers and never initiates: ICE-lite, host candidates only, no mDNS.
        settings.set_lite(true);
        settings.set_ice_multicast_dns_mode(webrtc::ice::mdns::MulticastDnsMode::Disabled);
        settings.set_include_loopback_candidate(true);
        // SRTP with AES-CM + HMAC-SHA1-80 only (WebRTC's mandatory profile, RFC 8827
        // section 6.5), not AES-GCM: webrtc-srtp 0.17's GCM path appends every ciphertext
        // byte to its output one `put_u8` at a time, which cost ~15 % of the protocol core
        // at 128 viewers. Our answer makes the server the DTLS client, so this list is what
        // the viewer picks from; browsers and webrtc-rs both support it.
        settings
            .set_srtp_protection_profiles(vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80]);
        // Notice a vanished viewer soon; the session's own timer then frees it.
        let disconnected = config.timeout.min(Duration::from_secs(5));
        settings.set_ice_timeouts(
            Some(disconnected),
            Some(disconnected + config.timeout),
            Some(Duration::from_secs(2)),
        );
        let mut udp_addr = None;
        if config.udp_port == 0 {
            if !config.public_ips.is_empty() {
                settings.set_nat_1to1_ips(config.public_ips.clone(), RTCIceCandidateType::Host);
            }
        } else {
            // webrtc-rs gives every local address its own host candidate, and with a UDP
            // mux they all read one shared connection, each discarding what arrived for
            // another: DTLS then stalls. So the mux serves exactly one local address,
            // advertised as the public one when that differs.
            let (local, public) = mux_address(&config.public_ips);
            settings.set_ip_filter(Box::new(move |ip| ip == local));
            settings.set_include_loopback_candidate(local.is_loopback());
            settings.set_network_types(vec![if local.is_ipv4() {
                webrtc::ice::network_type::NetworkType::Udp4
            } else {
                webrtc::ice::network_type::NetworkType::Udp6
            }]);
            if let Some(p) = public.filter(|p| *p != local) {
                settings.set_nat_1to1_ips(vec![p.to_string()], RTCIceCandidateType::Host);
            }
            let addr = SocketAddr::new(local, config.udp_port);
            let socket = bind_mux_socket(addr)
                .and_then(tokio::net::UdpSocket::from_std)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot bind the WebRTC UDP port {addr}: {e}"),
                    )
                })?;
            udp_addr = socket.local_addr().ok();
            let mux = UDPMuxDefault::new(UDPMuxParams::new(socket));
            settings.set_udp_network(UDPNetwork::Muxed(mux));
        }
        info!(
            udp = ?udp_addr,
            public_ips = ?config.public_ips,
            timeout_s = config.timeout.as_secs(),
            "WHEP ready (ICE-lite, host candidates)"
        );
        Ok(Arc::new(Whep {
            config,
            live,
            fan,
            admission,
            metrics,
            settings,
            sessions: Mutex::new(HashMap::new()),
            udp_addr,
        }))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<WhepSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of WebRTC sessions held.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session with resource id `id`.
    pub fn get(&self, id: &str) -> Option<Arc<WhepSession>> {
        self.table().get(id).cloned()
    }

    pub(crate) fn insert(&self, s: Arc<WhepSession>) {
        self.table().insert(s.id.clone(), s);
        self.metrics
            .webrtc_viewers
            .set(i64::try_from(self.len()).unwrap_or(i64::MAX));
    }

    /// Forget session `id` (its task ended). True if it was held.
    pub(crate) fn remove(&self, id: &str) -> bool {
        let removed = self.table().remove(id).is_some();
        self.metrics
            .webrtc_viewers
            .set(i64::try_from(self.len()).unwrap_or(i64::MAX));
        removed
    }

    /// End session `id` (WHEP DELETE).
    pub fn stop(&self, id: &str) -> Result<(), WhepError> {
        let s = self
            .get(id)
            .ok_or_else(|| WhepError::NoSession(id.to_string()))?;
        s.stop("deleted by the viewer");
        Ok(())
    }

    /// Every session, for `/status`.
    pub fn status(&self) -> Vec<WhepStatus> {
        let mut v: Vec<WhepStatus> = self.table().values().map(|s| s.status()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub(crate) fn settings(&self) -> SettingEngine {
        self.settings.clone()
    }

    /// A fresh, unguessable resource id.
    pub(crate) fn new_id() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    pub(crate) fn now() -> SystemTime {
        SystemTime::now()
    }
}

/// The one local address the UDP mux serves, and the public address to advertise for it:
/// the first `--webrtc-public-ip` if this host holds it, else the address the host sends
/// from towards it (1:1 NAT), else towards any outside address, else loopback.
fn mux_address(public_ips: &[String]) -> (IpAddr, Option<IpAddr>) {
    let public: Option<IpAddr> = public_ips
        .iter()
        .find_map(|p| p.split('/').next().and_then(|ip| ip.trim().parse().ok()));
    let local_towards = |to: IpAddr| -> Option<IpAddr> {
        let any: IpAddr = if to.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        };
        let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
        s.connect(SocketAddr::new(to, 9)).ok()?;
        s.local_addr().ok().map(|a| a.ip())
    };
    if let Some(p) = public {
        if std::net::UdpSocket::bind(SocketAddr::new(p, 0)).is_ok() {
            return (p, Some(p));
        }
        if let Some(l) = local_towards(p) {
            return (l, Some(p));
        }
    }
    let fallback = IpAddr::from([127, 0, 0, 1]);
    let local = local_towards(IpAddr::from([192, 0, 2, 1])).unwrap_or(fallback);
    (local, public)
}

/// Receive buffer asked for the shared WebRTC UDP port.
const MUX_RECV_BUFFER: usize = 8 << 20;

/// Binds the shared WebRTC UDP port with a large receive buffer. Every viewer's ICE,
/// DTLS and RTCP arrive on this one socket, read by one task: under a burst of joins the
/// default buffer (~208 KiB) overflows, and a lost DTLS handshake message costs a
/// retransmission second or, when it is the peer's last one (webrtc-rs does not resend
/// it), the whole session. As root the buffer is forced past `net.core.rmem_max`;
/// otherwise the kernel caps it there and that is logged.
fn bind_mux_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if !force_recv_buffer(&socket, MUX_RECV_BUFFER) {
        let _ = socket.set_recv_buffer_size(MUX_RECV_BUFFER);
    }
    // Linux reports twice the size asked (its bookkeeping overhead).
    let got = socket.recv_buffer_size().unwrap_or(0) / 2;
    if got < MUX_RECV_BUFFER {
        warn!(
            asked = MUX_RECV_BUFFER,
            got,
            "WebRTC UDP port: receive buffer capped by net.core.rmem_max; join bursts may \
             lose handshake packets (raise the sysctl or run with CAP_NET_ADMIN)"
        );
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN); whether it took.
fn force_recv_buffer(socket: &socket2::Socket, bytes: usize) -> bool {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(test)]
mod adapt_tests;
#[cfg(test)]
mod tests;
