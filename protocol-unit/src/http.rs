//! The protocol unit's HTTP port (`--http-listen ADDR:PORT`, off by default):
//! `GET /metrics` (Prometheus / OpenMetrics text, see [`crate::metrics`]) and
//! `GET /status` (JSON: uptime, link state, live channels, client and session counts).
//! Anything else is 404 with a plain-text reason. hyper parses the requests: a malformed
//! one gets 400 and its connection closed; the server carries on.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::{ChannelStatus, ClientStatus, LinkStatus, Metrics};

/// HTTP flags, to be flattened into the front-end flags (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct HttpArgs {
    /// Serve `/metrics` (Prometheus) and `/status` (JSON) on this address. Off when not
    /// given.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http_listen: Option<SocketAddr>,
}

/// Content type of the OpenMetrics text format `prometheus-client` writes; Prometheus
/// accepts it.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `/status` document.
#[derive(Clone, Debug, Serialize)]
pub struct StatusDocument {
    pub uptime_seconds: f64,
    pub link: LinkStatus,
    pub channels: Vec<ChannelStatus>,
    /// Clients (sessions) served now.
    pub clients: i64,
    /// Sessions set up since start.
    pub sessions_started: u64,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// Every client served now, with its latest receiver report.
    pub sessions: Vec<ClientStatus>,
    /// WebRTC (WHEP) viewers held now, and each one's state.
    pub webrtc_viewers: i64,
    pub webrtc_sessions: Vec<crate::whep::WhepStatus>,
}

impl StatusDocument {
    pub fn from_metrics(metrics: &Metrics) -> Self {
        metrics.refresh();
        let unit = metrics.unit_status();
        Self {
            uptime_seconds: metrics.uptime().as_secs_f64(),
            link: unit.link,
            channels: unit.channels,
            clients: metrics.clients.get(),
            sessions_started: metrics.sessions_started.get(),
            packets_sent: metrics.packets_sent.get(),
            bytes_sent: metrics.bytes_sent.get(),
            sessions: metrics.client_statuses(),
            webrtc_viewers: metrics.webrtc_viewers.get(),
            webrtc_sessions: metrics.webrtc_statuses(),
        }
    }
}

/// The router, for embedding or testing without a socket.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status_handler))
        .fallback(not_found)
        .with_state(metrics)
}

async fn metrics_handler(State(metrics): State<Metrics>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}

async fn status_handler(State(metrics): State<Metrics>) -> Json<StatusDocument> {
    Json(StatusDocument::from_metrics(&metrics))
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: this port serves /metrics, /status, /whep/<channel> and /play/<channel>\n",
    )
}

/// Bind `addr`; an error names the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen for HTTP on {addr}: {e}"))
    })
}

/// Serve `/metrics` and `/status` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics) -> std::io::Result<()> {
    serve_router(listener, router(metrics)).await
}

/// Serve `router` (e.g. [`router`] merged with the WHEP routes) on `listener`; handlers
/// can read the peer's address (`ConnectInfo<SocketAddr>`).
pub async fn serve_router(listener: TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::metrics::{parse_exposition, UnitStatus};

    async fn start() -> (SocketAddr, Metrics) {
        let metrics = Metrics::new();
        metrics.register_status_source(Arc::new(|| UnitStatus {
            link: LinkStatus {
                state: "up".into(),
                peer: Some("10.0.0.1:7400".into()),
            },
            channels: vec![ChannelStatus {
                name: "cam1".into(),
                state: "live".into(),
                clients: 2,
            }],
        }));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, metrics.clone()));
        (addr, metrics)
    }

    /// curl, the real client, run off the async runtime. Returns (status, body).
    async fn curl(url: String) -> (u16, String) {
        tokio::task::spawn_blocking(move || {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
                .arg(&url)
                .output()
                .expect("run curl");
            assert!(out.status.success(), "curl failed: {out:?}");
            let text = String::from_utf8(out.stdout).expect("utf8");
            let (body, code) = text.rsplit_once('\n').expect("status line");
            (code.parse().expect("code"), body.to_string())
        })
        .await
        .expect("join")
    }

    #[tokio::test]
    async fn metrics_status_404_and_garbage() {
        let (addr, metrics) = start().await;
        metrics.clients.set(2);
        metrics.sessions_started.inc_by(5);
        metrics.packets_sent.inc_by(42);

        let (code, body) = curl(format!("http://{addr}/metrics")).await;
        assert_eq!(code, 200);
        let samples = parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert!(samples.contains(&("divisor_packets_sent_total".into(), 42.0)));
        assert!(samples.contains(&("divisor_link_up".into(), 1.0)));

        let (code, body) = curl(format!("http://{addr}/status")).await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["link"]["state"], "up");
        assert_eq!(v["channels"][0]["name"], "cam1");
        assert_eq!(v["channels"][0]["state"], "live");
        assert_eq!(v["clients"], 2);
        assert_eq!(v["sessions_started"], 5);
        assert!(v["uptime_seconds"].as_f64().unwrap() >= 0.0);

        let (code, body) = curl(format!("http://{addr}/nope")).await;
        assert_eq!(code, 404);
        assert!(body.contains("/metrics"), "{body}");

        // Malformed HTTP: answered 4xx/505 or closed, and the server keeps serving.
        for junk in [
            &b"\x00\x01\x02garbage\r\n\r\n"[..],
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nBad Header Line\r\n\r\n",
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(junk).await.unwrap();
            let mut reply = Vec::new();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut reply))
                    .await;
            let reply = String::from_utf8_lossy(&reply);
            assert!(
                reply.is_empty()
                    || reply.starts_with("HTTP/1.1 4")
                    || reply.starts_with("HTTP/1.1 505"),
                "{junk:?} -> {reply}"
            );
        }
        let (code, _) = curl(format!("http://{addr}/metrics")).await;
        assert_eq!(code, 200, "server survives malformed requests");
    }

    #[test]
    fn flag_parses_and_is_off_by_default() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            http: HttpArgs,
        }
        assert_eq!(Cli::try_parse_from(["x"]).unwrap().http.http_listen, None);
        let cli = Cli::try_parse_from(["x", "--http-listen", "127.0.0.1:9100"]).unwrap();
        assert_eq!(
            cli.http.http_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert!(Cli::try_parse_from(["x", "--http-listen", "nope"]).is_err());
    }
}
