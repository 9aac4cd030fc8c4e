//! The encoder unit's HTTP port (`divisor-encoder --http-listen ADDR:PORT`, off by
//! default): `GET /status` (JSON) and `GET /metrics` (OpenMetrics text).
//!
//! Why it exists: the protocol units and reflectors in front of an encoder unit should
//! share one upstream subscription per (channel, rendition) however many viewers and
//! relays there are. This port shows what the encoder unit itself serves, so a test (or
//! an operator) can check that a tree of relays holds exactly one live subscription for a
//! channel, and none once everyone has left. The counts are exact: they are read from
//! [`LiveRegistry::subscription_counts`] at each request, and a subscription stops
//! counting as soon as it is closed (a `Close` message, or its link dropping).
//!
//! ```text
//! GET /status  {"role":"encoder",
//!               "live":[{"channel":"news","rendition":"360p","subscribers":1}],
//!               "live_subscriptions_total":1,"links":1}
//! GET /metrics divisor_encoder_live_subscriptions{channel="news",rendition="360p"} 1
//!              divisor_encoder_links 1
//! ```
//!
//! A rendition of "" is the input as it is (a channel without a ladder). Anything else is
//! 404 with a plain-text reason.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::live::LiveRegistry;

/// Content type of `/metrics` (the OpenMetrics text format; Prometheus accepts it).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the HTTP port could not be served.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP port {addr} stopped: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How many links (protocol units, reflectors) are being served now. Cheap to clone;
/// every clone counts the same links.
#[derive(Clone, Debug, Default)]
pub struct LinkCounter(Arc<AtomicUsize>);

impl LinkCounter {
    pub fn new() -> LinkCounter {
        LinkCounter::default()
    }

    /// Count one link until the returned guard is dropped (hold it while serving it).
    pub fn track(&self) -> LinkGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        LinkGuard(self.0.clone())
    }

    /// The links counted now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One counted link; see [`LinkCounter::track`].
#[derive(Debug)]
pub struct LinkGuard(Arc<AtomicUsize>);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One active rendition of a live channel in `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveEntry {
    pub channel: String,
    /// "" = the input as it is.
    pub rendition: String,
    /// Live subscriptions served now, from all links together.
    pub subscribers: usize,
}

/// The `/status` document; `/metrics` renders the same numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusDocument {
    /// Always "encoder".
    pub role: &'static str,
    pub live: Vec<LiveEntry>,
    /// The sum of `live[].subscribers`.
    pub live_subscriptions_total: usize,
    /// Links connected now.
    pub links: usize,
}

impl StatusDocument {
    /// From [`LiveRegistry::subscription_counts`] and a link count.
    pub fn new(counts: Vec<(String, String, usize)>, links: usize) -> StatusDocument {
        let live: Vec<LiveEntry> = counts
            .into_iter()
            .map(|(channel, rendition, subscribers)| LiveEntry {
                channel,
                rendition,
                subscribers,
            })
            .collect();
        StatusDocument {
            role: "encoder",
            live_subscriptions_total: live.iter().map(|e| e.subscribers).sum(),
            live,
            links,
        }
    }

    /// The OpenMetrics text exposition of these numbers (ends with `# EOF`).
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP divisor_encoder_live_subscriptions Live subscriptions served now, \
             per channel and active rendition (all links together).\n\
             # TYPE divisor_encoder_live_subscriptions gauge\n",
        );
        for e in &self.live {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "divisor_encoder_live_subscriptions{{channel=\"{}\",rendition=\"{}\"}} {}",
                escape_label(&e.channel),
                escape_label(&e.rendition),
                e.subscribers
            );
        }
        out.push_str(
            "# HELP divisor_encoder_links Links (protocol units, reflectors) connected now.\n\
             # TYPE divisor_encoder_links gauge\n",
        );
        let _ = writeln!(out, "divisor_encoder_links {}", self.links);
        out.push_str("# EOF\n");
        out
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// What the HTTP port reads, at each request.
#[derive(Clone)]
pub struct StatusSource {
    pub live: Arc<LiveRegistry>,
    pub links: LinkCounter,
}

impl StatusSource {
    /// The numbers now.
    pub fn snapshot(&self) -> StatusDocument {
        StatusDocument::new(self.live.subscription_counts(), self.links.get())
    }
}

/// The router, for embedding or testing without a socket.
pub fn router(source: StatusSource) -> Router {
    Router::new()
        .route("/status", get(status_handler))
        .route("/metrics", get(metrics_handler))
        .fallback(not_found)
        .with_state(source)
}

async fn status_handler(State(source): State<StatusSource>) -> Json<StatusDocument> {
    Json(source.snapshot())
}

async fn metrics_handler(State(source): State<StatusSource>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        source.snapshot().metrics_text(),
    )
        .into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: this port serves GET /status and GET /metrics\n",
    )
}

/// Bind `addr` (at start-up, so a busy port is an error before anything runs).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serve `/status` and `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, source: StatusSource) -> Result<(), HttpError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    axum::serve(listener, router(source))
        .await
        .map_err(|source| HttpError::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> StatusDocument {
        StatusDocument::new(
            vec![
                ("news".into(), "360p".into(), 1),
                ("news".into(), "720p".into(), 2),
                ("odd\"name".into(), String::new(), 0),
            ],
            3,
        )
    }

    #[test]
    fn status_json_has_the_documented_shape() {
        let v = serde_json::to_value(doc()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "role": "encoder",
                "live": [
                    {"channel": "news", "rendition": "360p", "subscribers": 1},
                    {"channel": "news", "rendition": "720p", "subscribers": 2},
                    {"channel": "odd\"name", "rendition": "", "subscribers": 0},
                ],
                "live_subscriptions_total": 3,
                "links": 3,
            })
        );
        let empty = serde_json::to_value(StatusDocument::new(Vec::new(), 0)).unwrap();
        assert_eq!(
            empty,
            serde_json::json!({"role": "encoder", "live": [], "live_subscriptions_total": 0, "links": 0})
        );
    }

    #[test]
    fn metrics_text_is_valid_and_escaped() {
        let text = doc().metrics_text();
        let samples = divisor_protocol::metrics::parse_exposition(&text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(samples.len(), 4, "{text}");
        assert!(text.contains(
            "divisor_encoder_live_subscriptions{channel=\"news\",rendition=\"720p\"} 2\n"
        ));
        assert!(text.contains(
            "divisor_encoder_live_subscriptions{channel=\"odd\\\"name\",rendition=\"\"} 0\n"
        ));
        assert!(text.contains("\ndivisor_encoder_links 3\n"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn link_counter_counts_held_guards() {
        let links = LinkCounter::new();
        let a = links.track();
        let b = links.clone().track();
        assert_eq!(links.get(), 2);
        drop(a);
        assert_eq!(links.get(), 1);
        drop(b);
        assert_eq!(links.get(), 0);
    }
}
