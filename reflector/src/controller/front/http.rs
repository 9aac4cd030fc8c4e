//! The HTTP front end: `307` redirects for `/play/CH…` and WHEP (`POST /whep/CH…`), the
//! tree as JSON (`/tree`), the controller's metrics (`/metrics`) and the tree page (`/`).
//!
//! 307 rather than 302 because it keeps the method and body (RFC 9110 §15.4.8): a WHEP
//! client's `POST` with its SDP offer is replayed at the public reflector. Browsers
//! only let a page follow and read a cross-origin redirect with CORS headers, so the
//! WHEP routes carry them (and answer the preflight `OPTIONS`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use tokio::net::TcpListener;
use tracing::{debug, info};

use super::{channel_path, region_of, Directory, NoTarget};

/// The content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

const TREE_PAGE: &str = include_str!("tree.html");

type Dir = Arc<dyn Directory>;

/// The front end's routes. The client address comes from [`ConnectInfo`] when served
/// with `into_make_service_with_connect_info::<SocketAddr>()` (as [`serve_http`] does);
/// without it, clients count as `0.0.0.0`, which only weakens the policy's placement.
pub fn router(dir: Arc<dyn Directory>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/tree", get(tree))
        .route("/metrics", get(metrics))
        .route("/play/{ch}", get(play))
        .route("/play/{ch}/{*rest}", get(play))
        .route("/whep/{ch}", axum::routing::post(whep).options(preflight))
        .route(
            "/whep/{ch}/{*rest}",
            axum::routing::post(whep).options(preflight),
        )
        .fallback(not_found)
        .with_state(dir)
}

/// Serves [`router`] on `listener` until the future is dropped.
pub async fn serve_http(listener: TcpListener, dir: Arc<dyn Directory>) -> std::io::Result<()> {
    let app = router(dir).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await
}

async fn page() -> Html<&'static str> {
    Html(TREE_PAGE)
}

async fn tree(State(dir): State<Dir>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Json(dir.tree()))
}

async fn metrics(State(dir): State<Dir>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        dir.metrics_text(),
    )
}

async fn play(
    State(dir): State<Dir>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    req: Request,
) -> Response {
    redirect(&*dir, client_ip(peer), &req, "/play/")
}

async fn whep(
    State(dir): State<Dir>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    req: Request,
) -> Response {
    let mut res = redirect(&*dir, client_ip(peer), &req, "/whep/");
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location"),
    );
    res
}

/// The CORS preflight a browser sends before a cross-origin WHEP `POST`.
async fn preflight() -> impl IntoResponse {
    let allow = |name: HeaderName, value: &'static str| (name, HeaderValue::from_static(value));
    (
        StatusCode::NO_CONTENT,
        [
            allow(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            allow(header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"),
            allow(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "content-type, authorization",
            ),
            allow(header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: the controller serves /play/<channel>, /whep/<channel>, /tree, /metrics and /\n",
    )
}

fn client_ip(peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> IpAddr {
    peer.map_or(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        |Extension(ConnectInfo(a))| a.ip().to_canonical(),
    )
}

/// Asks the directory and answers with a 307 to the same path (raw, as sent) and query
/// on the chosen reflector's HTTP port.
fn redirect(dir: &dyn Directory, client: IpAddr, req: &Request, prefix: &str) -> Response {
    let uri = req.uri();
    let Some(ch) = channel_path(uri.path(), prefix) else {
        return (StatusCode::NOT_FOUND, "no such channel path\n").into_response();
    };
    let query = uri.query();
    let target = match dir.redirect(&ch.channel, client, region_of(query)) {
        Ok(t) => t,
        Err(e) => {
            debug!(channel = %ch.channel, %client, reason = %e, "http redirect refused");
            return refused(&e);
        }
    };
    let Some(http) = &target.http else {
        let why = format!("public reflector {} has no HTTP front end\n", target.node);
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    };
    let mut location = format!("http://{http}{prefix}{}", ch.tail);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let Ok(location) = HeaderValue::try_from(location) else {
        // Only if the directory hands out a host with bytes no header may carry.
        return (StatusCode::INTERNAL_SERVER_ERROR, "bad target address\n").into_response();
    };
    let kind = if req.method() == Method::POST {
        "whep"
    } else {
        "play"
    };
    info!(channel = %ch.channel, %client, target = %http, node = %target.node, kind, "http redirect");
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response()
}

fn refused(e: &NoTarget) -> Response {
    let why = format!("{e}\n");
    match e {
        NoTarget::UnknownChannel(_) => (StatusCode::NOT_FOUND, why).into_response(),
        NoTarget::NoneUp | NoTarget::AllFull => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            why,
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::super::testing::FakeDirectory;
    use super::*;

    /// A parsed HTTP/1.1 response.
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    async fn start() -> (SocketAddr, Arc<FakeDirectory>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = Arc::new(FakeDirectory::default());
        tokio::spawn(serve_http(listener, dir.clone()));
        (addr, dir)
    }

    /// Sends one request with `Connection: close` and reads the whole response.
    async fn send(addr: SocketAddr, method: &str, target: &str, body: &str) -> Reply {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: ctl\r\nConnection: close\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut raw))
            .await
            .expect("response in time")
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("end of headers");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_string(),
        }
    }

    #[tokio::test]
    async fn play_redirects_with_path_and_query() {
        let (addr, dir) = start().await;
        let r = send(addr, "GET", "/play/ch1", "").await;
        assert_eq!(r.status, 307);
        assert_eq!(r.header("location"), Some("http://10.0.0.5:8080/play/ch1"));
        let r = send(addr, "GET", "/play/ch1/index.m3u8?region=eu&t=1", "").await;
        assert_eq!(r.status, 307);
        assert_eq!(
            r.header("location"),
            Some("http://10.0.0.5:8080/play/ch1/index.m3u8?region=eu&t=1")
        );
        let (ch, client, region) = dir.last.lock().unwrap().clone().unwrap();
        assert_eq!(ch, "ch1");
        assert!(client.is_loopback(), "{client}");
        assert_eq!(region.as_deref(), Some("eu"));
    }

    #[tokio::test]
    async fn whep_post_redirects_with_cors_and_preflight_is_allowed() {
        let (addr, _) = start().await;
        let r = send(addr, "POST", "/whep/ch1", "v=0\r\n").await;
        assert_eq!(r.status, 307);
        assert_eq!(r.header("location"), Some("http://10.0.0.5:8080/whep/ch1"));
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(r.header("access-control-expose-headers"), Some("Location"));
        let r = send(addr, "POST", "/whep/ch1/x?region=us", "").await;
        assert_eq!(
            r.header("location"),
            Some("http://10.0.0.5:8080/whep/ch1/x?region=us")
        );

        let r = send(addr, "OPTIONS", "/whep/ch1", "").await;
        assert_eq!(r.status, 204);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("POST, OPTIONS")
        );
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("content-type, authorization")
        );
    }

    #[tokio::test]
    async fn refusals_are_503_with_retry_after_or_404() {
        let (addr, _) = start().await;
        for ch in ["down", "full"] {
            let r = send(addr, "GET", &format!("/play/{ch}"), "").await;
            assert_eq!(r.status, 503);
            assert_eq!(r.header("retry-after"), Some("5"));
            assert!(r.body.contains("public reflector"), "{}", r.body);
        }
        let r = send(addr, "POST", "/whep/down", "").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        let r = send(addr, "GET", "/play/nohttp", "").await;
        assert_eq!(r.status, 503);
        assert!(r.body.contains("no HTTP"), "{}", r.body);
        let r = send(addr, "GET", "/play/nope", "").await;
        assert_eq!(r.status, 404);
        assert!(r.body.contains("no channel named nope"), "{}", r.body);
        assert_eq!(send(addr, "GET", "/elsewhere", "").await.status, 404);
    }

    #[tokio::test]
    async fn tree_metrics_and_page() {
        let (addr, _) = start().await;
        let r = send(addr, "GET", "/tree", "").await;
        assert_eq!(r.status, 200);
        let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let ids: Vec<&str> = doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["m1", "pub-1"]);
        assert_eq!(doc["nodes"][0]["role"], "master");
        assert_eq!(doc["links"][0]["kind"], "active");

        let r = send(addr, "GET", "/metrics", "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert!(r.body.contains("divisor_controller_up 1"));

        let r = send(addr, "GET", "/", "").await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.body.contains("<svg") && r.body.contains("id=\"tree\""));
        assert!(
            !r.body.contains("src=\"http"),
            "the page must be self-contained"
        );
    }
}
