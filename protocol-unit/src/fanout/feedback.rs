//! RTCP from clients: receiver reports into [`ClientStats`], NACKs into retransmissions
//! (rate-limited per client), PLI/FIR into keyframe requests.
//!
//! UDP clients all send to the server's one RTCP socket and are told apart by source
//! address ([`FeedbackRoutes`]); interleaved clients' RTCP comes through their session.
//! Whatever a datagram holds, it only ever touches its own client: malformed packets,
//! strangers and NACK storms are dropped and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::debug;

use super::engine::{ClientId, Command, SharedSrtp};
use super::stats::{ClientStats, ServerStats};
use crate::rtcp::{parse_incoming, RtcpEvent};
use crate::schedule::EngineHandle;

/// SRTCP from an RTP/SAVP client, unprotected with its keys; `None` (counted as
/// `srtcp_rejected`, logged with `from`) when it does not authenticate or parse. Used by
/// the shared UDP RTCP socket and by RTSP connections' interleaved channels alike.
pub fn unprotect_srtcp(
    srtp: &SharedSrtp,
    packet: &[u8],
    stats: &ServerStats,
    from: &dyn std::fmt::Display,
) -> Option<bytes::Bytes> {
    let plain = srtp
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unprotect_rtcp(packet);
    plain
        .map_err(|e| {
            stats.srtcp_rejected.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "SRTCP dropped: {e}");
        })
        .ok()
}

/// Most NACKed packets a client may have resent in a burst, and per second after it.
pub const NACK_BURST: f64 = 200.0;
pub const NACK_PER_SECOND: f64 = 400.0;

/// A token bucket: `rate` tokens per second, at most `burst` saved.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(burst: f64, rate: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            burst,
            rate,
            last: now,
        }
    }

    /// Take up to `want` tokens at `now`; returns how many were granted.
    pub fn take(&mut self, want: usize, now: Instant) -> usize {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        let granted = (want as f64).min(self.tokens.floor()).max(0.0);
        self.tokens -= granted;
        granted as usize
    }
}

/// One client's RTCP context.
pub struct Feedback {
    pub client: ClientId,
    pub stats: Arc<ClientStats>,
    /// The session's idle timer, reset by every report.
    pub last_seen: Arc<Mutex<Instant>>,
    /// Where keyframe requests go (link track number); the receiver rate-limits them.
    pub keyframes: mpsc::UnboundedSender<u8>,
    /// Our SSRCs towards this client: (ssrc, link track, clock rate).
    streams: Mutex<Vec<(u32, u8, u32)>>,
    nack_budget: Mutex<TokenBucket>,
}

impl Feedback {
    pub fn new(
        client: ClientId,
        stats: Arc<ClientStats>,
        last_seen: Arc<Mutex<Instant>>,
        keyframes: mpsc::UnboundedSender<u8>,
    ) -> Arc<Feedback> {
        Arc::new(Feedback {
            client,
            stats,
            last_seen,
            keyframes,
            streams: Mutex::new(Vec::new()),
            nack_budget: Mutex::new(TokenBucket::new(
                NACK_BURST,
                NACK_PER_SECOND,
                Instant::now(),
            )),
        })
    }

    /// Note the SSRC we send `track` with (after SETUP or PLAY).
    pub fn set_stream(&self, ssrc: u32, track: u8, clock_rate: u32) {
        let mut s = lock(&self.streams);
        s.retain(|(_, t, _)| *t != track);
        s.push((ssrc, track, clock_rate));
    }

    fn stream(&self, ssrc: u32) -> Option<(u8, u32)> {
        lock(&self.streams)
            .iter()
            .find(|(s, _, _)| *s == ssrc)
            .map(|(_, t, r)| (*t, *r))
    }
}

/// UDP clients' RTCP source addresses.
#[derive(Default)]
pub struct FeedbackRoutes {
    routes: Mutex<Routes>,
    /// RTP/SAVP clients' RTCP source addresses: their SRTCP is unprotected with the keys
    /// of their `KeyMgmt` header before [`handle`] sees it.
    srtcp: Mutex<HashMap<SocketAddr, SharedSrtp>>,
}

/// Addresses to clients, and each client's addresses: a session that ends forgets its
/// own one or two addresses without scanning the routes of the thousands still playing.
#[derive(Default)]
struct Routes {
    by_addr: HashMap<SocketAddr, Arc<Feedback>>,
    by_client: HashMap<ClientId, Vec<SocketAddr>>,
}

impl FeedbackRoutes {
    pub fn new() -> Arc<FeedbackRoutes> {
        Arc::new(FeedbackRoutes::default())
    }

    /// RTCP from `from` belongs to `fb`.
    pub fn insert(&self, from: SocketAddr, fb: Arc<Feedback>) {
        let mut r = lock(&self.routes);
        let client = fb.client;
        if let Some(old) = r.by_addr.insert(from, fb) {
            // The address moves to the new client (a new session from the same port).
            if old.client != client {
                if let Some(addrs) = r.by_client.get_mut(&old.client) {
                    addrs.retain(|a| *a != from);
                }
            }
        }
        let addrs = r.by_client.entry(client).or_default();
        if !addrs.contains(&from) {
            addrs.push(from);
        }
        // A new session on this address is plain RTCP until told otherwise.
        lock(&self.srtcp).remove(&from);
    }

    /// RTCP from `from` is SRTCP, to unprotect with `srtp` (call after [`Self::insert`]).
    pub fn insert_srtcp(&self, from: SocketAddr, srtp: SharedSrtp) {
        lock(&self.srtcp).insert(from, srtp);
    }

    /// The SRTP state RTCP from `from` must be unprotected with, if it is an SRTP client.
    pub fn srtcp(&self, from: &SocketAddr) -> Option<SharedSrtp> {
        lock(&self.srtcp).get(from).cloned()
    }

    /// Forget every address of client `client`.
    pub fn remove_client(&self, client: ClientId) {
        let mut r = lock(&self.routes);
        let mut srtcp = lock(&self.srtcp);
        for addr in r.by_client.remove(&client).unwrap_or_default() {
            r.by_addr.remove(&addr);
            srtcp.remove(&addr);
        }
    }

    pub fn get(&self, from: &SocketAddr) -> Option<Arc<Feedback>> {
        lock(&self.routes).by_addr.get(from).cloned()
    }

    pub fn len(&self) -> usize {
        lock(&self.routes).by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Act on one RTCP datagram from the client of `fb`.
pub fn handle(
    packet: &[u8],
    fb: &Feedback,
    engine: &EngineHandle,
    server: &ServerStats,
    now: Instant,
) {
    let events = match parse_incoming(packet) {
        Ok(e) => e,
        Err(e) => {
            server.rtcp_malformed.fetch_add(1, Ordering::Relaxed);
            debug!(client = fb.client, "malformed RTCP dropped: {e}");
            return;
        }
    };
    *lock(&fb.last_seen) = now;
    for ev in events {
        match ev {
            RtcpEvent::ReceiverReport { reports, .. } | RtcpEvent::SenderReport { reports, .. } => {
                for r in reports {
                    let Some((_, rate)) = fb.stream(r.ssrc) else {
                        continue;
                    };
                    let s = &fb.stats;
                    s.receiver_reports.fetch_add(1, Ordering::Relaxed);
                    server.receiver_reports.fetch_add(1, Ordering::Relaxed);
                    s.fraction_lost
                        .store(u32::from(r.fraction_lost), Ordering::Relaxed);
                    s.cumulative_lost
                        .store(i64::from(r.cumulative_lost), Ordering::Relaxed);
                    s.jitter.store(r.jitter, Ordering::Relaxed);
                    s.jitter_clock_rate.store(rate, Ordering::Relaxed);
                    if let Some(rtt) = r.round_trip(SystemTime::now()) {
                        s.rtt_us.store(rtt.as_micros() as i64, Ordering::Relaxed);
                    }
                }
            }
            RtcpEvent::Nack {
                media_ssrc, lost, ..
            } => {
                fb.stats
                    .nacks_received
                    .fetch_add(lost.len() as u64, Ordering::Relaxed);
                server
                    .nacks_received
                    .fetch_add(lost.len() as u64, Ordering::Relaxed);
                if fb.stream(media_ssrc).is_none() {
                    continue;
                }
                let granted = lock(&fb.nack_budget).take(lost.len(), now);
                let refused = (lost.len() - granted) as u64;
                if refused > 0 {
                    fb.stats.nacks_refused.fetch_add(refused, Ordering::Relaxed);
                    server.nacks_refused.fetch_add(refused, Ordering::Relaxed);
                }
                if granted > 0 {
                    let mut seqs = lost;
                    seqs.truncate(granted);
                    engine.send(Command::Nack {
                        client: fb.client,
                        ssrc: media_ssrc,
                        seqs,
                    });
                }
            }
            RtcpEvent::Pli { media_ssrc, .. } => keyframe(fb, server, media_ssrc),
            RtcpEvent::Fir { targets, .. } => {
                for ssrc in targets {
                    keyframe(fb, server, ssrc);
                }
            }
            _ => {}
        }
    }
}

fn keyframe(fb: &Feedback, server: &ServerStats, ssrc: u32) {
    let Some((track, _)) = fb.stream(ssrc) else {
        return;
    };
    fb.stats.keyframe_asks.fetch_add(1, Ordering::Relaxed);
    server.keyframe_asks.fetch_add(1, Ordering::Relaxed);
    let _ = fb.keyframes.send(track);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Rate limit for keyframe requests to the encoder: at most one per track per interval.
pub struct KeyframeLimiter {
    last: HashMap<u8, Instant>,
    interval: std::time::Duration,
}

impl KeyframeLimiter {
    pub fn new(interval: std::time::Duration) -> KeyframeLimiter {
        KeyframeLimiter {
            last: HashMap::new(),
            interval,
        }
    }

    /// Whether a request for `track` may go out at `now`.
    pub fn allow(&mut self, track: u8, now: Instant) -> bool {
        match self.last.get(&track) {
            Some(t) if now.saturating_duration_since(*t) < self.interval => false,
            _ => {
                self.last.insert(track, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn feedback(client: ClientId) -> Arc<Feedback> {
        let (tx, _rx) = mpsc::unbounded_channel();
        let stats = ClientStats::new(client, "s", "live/a", "10.0.0.2:5000");
        Feedback::new(client, stats, Arc::new(Mutex::new(Instant::now())), tx)
    }

    #[test]
    fn a_session_that_ends_takes_only_its_own_routes() {
        let routes = FeedbackRoutes::new();
        let a1: SocketAddr = "10.0.0.2:5001".parse().unwrap();
        let a2: SocketAddr = "10.0.0.2:5003".parse().unwrap();
        let b: SocketAddr = "10.0.0.3:5001".parse().unwrap();
        routes.insert(a1, feedback(1));
        routes.insert(a2, feedback(1));
        routes.insert(b, feedback(2));
        // Client 3 takes over client 1's second address (a new session on that port).
        routes.insert(a2, feedback(3));
        routes.remove_client(1);
        assert!(routes.get(&a1).is_none());
        assert_eq!(routes.get(&a2).map(|f| f.client), Some(3));
        assert_eq!(routes.get(&b).map(|f| f.client), Some(2));
        routes.remove_client(3);
        routes.remove_client(2);
        assert!(routes.is_empty());
    }

    #[test]
    fn token_bucket_limits_bursts_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 100.0, t0);
        assert_eq!(b.take(25, t0), 10);
        assert_eq!(b.take(5, t0), 0);
        assert_eq!(b.take(5, t0 + Duration::from_millis(30)), 3);
    }

    #[test]
    fn keyframe_requests_are_rate_limited_per_track() {
        let t0 = Instant::now();
        let mut k = KeyframeLimiter::new(Duration::from_secs(1));
        assert!(k.allow(0, t0));
        assert!(!k.allow(0, t0 + Duration::from_millis(500)));
        assert!(k.allow(1, t0));
        assert!(k.allow(0, t0 + Duration::from_millis(1001)));
    }
}
