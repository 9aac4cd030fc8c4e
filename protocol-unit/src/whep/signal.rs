//! The WHEP HTTP handlers (axum), merged into the protocol unit's HTTP port.
//!
//! - `POST /whep/<channel>[/<rendition>]`, body an SDP offer (`application/sdp`):
//!   201 with the answer and `Location: /whep/resource/<id>`; 400 unreadable offer,
//!   406 no codec in common, 404 unknown channel, 415 wrong content type, 503 no link or
//!   over the admission budget. Error bodies are plain text with the reason.
//! - `DELETE /whep/resource/<id>`: 200, or 404 for an unknown id.
//! - `PATCH /whep/resource/<id>` (`application/trickle-ice-sdpfrag`): 204.
//! - `GET /play/<channel>[/<rendition>]`: the player page.
//! - With `--whep-token`, every WHEP request (not the page) needs
//!   `Authorization: Bearer <token>`: 401 with a `WWW-Authenticate: Bearer` challenge.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tracing::{debug, warn};

use super::session::{self, MAX_OFFER_BYTES};
use super::{Whep, WhepError};

/// The player page; `{{CHANNEL}}` and `{{WHEP_URL}}` are filled in (HTML-escaped).
const PLAYER_HTML: &str = include_str!("player.html");

/// The WHEP and player routes, for merging into the HTTP router.
pub fn router(whep: Arc<Whep>) -> Router {
    Router::new()
        .route(
            "/whep/resource/{id}",
            get(resource_get).delete(delete).patch(patch),
        )
        .route("/whep/{channel}", post(post_channel))
        .route("/whep/{channel}/{rendition}", post(post_rendition))
        .route("/play/{channel}", get(play_channel))
        .route("/play/{channel}/{rendition}", get(play_rendition))
        .with_state(whep)
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{body}\n"),
    )
        .into_response()
}

fn error(whep: &Whep, e: WhepError) -> Response {
    whep.metrics.webrtc_refused(e.kind());
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    debug!(status = status.as_u16(), "WHEP request refused: {e}");
    text(status, e.to_string())
}

/// With `--whep-token`, the request must carry `Authorization: Bearer <one of them>`.
/// The refusal is a 401 with a `WWW-Authenticate: Bearer` challenge (RFC 6750).
/// `None` when the request may go on, else the refusal to send.
fn refusal(whep: &Whep, headers: &HeaderMap) -> Option<Response> {
    let tokens = &whep.config.tokens;
    if tokens.is_empty() {
        return None;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|g| {
        tokens
            .iter()
            .any(|t| crate::rtsp::auth::constant_time_eq(t.as_bytes(), g.as_bytes()))
    });
    if ok {
        return None;
    }
    whep.metrics.webrtc_refused("unauthorized");
    let why = if given.is_some() {
        whep.metrics.auth_failed("whep_token");
        warn!("WHEP request with a wrong bearer token refused");
        "invalid_token"
    } else {
        "invalid_request"
    };
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; charset=utf-8".to_string(),
                ),
                (
                    header::WWW_AUTHENTICATE,
                    format!("Bearer realm=\"Divisor\", error=\"{why}\""),
                ),
            ],
            "a WHEP request needs Authorization: Bearer <token>\n",
        )
            .into_response(),
    )
}

/// Whether the request's content type is `want` (parameters such as charset ignored).
fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

async fn post_channel(
    State(whep): State<Arc<Whep>>,
    Path(channel): Path<String>,
    req: Request,
) -> Response {
    offer(whep, channel, String::new(), req).await
}

async fn post_rendition(
    State(whep): State<Arc<Whep>>,
    Path((channel, rendition)): Path<(String, String)>,
    req: Request,
) -> Response {
    offer(whep, channel, rendition, req).await
}

async fn offer(whep: Arc<Whep>, channel: String, rendition: String, req: Request) -> Response {
    if let Some(refused) = refusal(&whep, req.headers()) {
        return refused;
    }
    if !content_type_is(req.headers(), "application/sdp") {
        whep.metrics.webrtc_refused("content_type");
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a WHEP offer must be sent as Content-Type: application/sdp".into(),
        );
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let body = match to_bytes(req.into_body(), MAX_OFFER_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            whep.metrics.webrtc_refused("bad_offer");
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the offer is larger than {MAX_OFFER_BYTES} bytes"),
            );
        }
    };
    let Ok(sdp) = std::str::from_utf8(&body) else {
        return error(
            &whep,
            WhepError::BadOffer(super::OfferError::NotSdp("the body is not UTF-8".into())),
        );
    };
    match session::create(&whep, &channel, &rendition, sdp, peer).await {
        Ok((id, answer)) => (
            StatusCode::CREATED,
            [
                (header::CONTENT_TYPE, "application/sdp".to_string()),
                (header::LOCATION, format!("/whep/resource/{id}")),
            ],
            answer,
        )
            .into_response(),
        Err(e) => error(&whep, e),
    }
}

async fn resource_get(
    State(whep): State<Arc<Whep>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&whep, &headers) {
        return refused;
    }
    match whep.get(&id) {
        Some(s) => axum::Json(s.status()).into_response(),
        None => error(&whep, WhepError::NoSession(id)),
    }
}

async fn delete(
    State(whep): State<Arc<Whep>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&whep, &headers) {
        return refused;
    }
    match whep.stop(&id) {
        Ok(()) => text(StatusCode::OK, format!("WHEP session {id} ended")),
        Err(e) => error(&whep, e),
    }
}

async fn patch(State(whep): State<Arc<Whep>>, Path(id): Path<String>, req: Request) -> Response {
    if let Some(refused) = refusal(&whep, req.headers()) {
        return refused;
    }
    let Some(s) = whep.get(&id) else {
        return error(&whep, WhepError::NoSession(id));
    };
    if !content_type_is(req.headers(), "application/trickle-ice-sdpfrag") {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PATCH takes Content-Type: application/trickle-ice-sdpfrag".into(),
        );
    }
    let Ok(body) = to_bytes(req.into_body(), MAX_OFFER_BYTES).await else {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "fragment too large".into());
    };
    let frag = String::from_utf8_lossy(&body);
    match s.add_candidates(&frag).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(&whep, e),
    }
}

async fn play_channel(Path(channel): Path<String>) -> Response {
    player(&channel, "")
}

async fn play_rendition(Path((channel, rendition)): Path<(String, String)>) -> Response {
    player(&channel, &rendition)
}

/// HTML-escape `s` for text and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode one path segment.
fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The player page for `channel` (and `rendition`, "" = the channel's first).
pub fn player_page(channel: &str, rendition: &str) -> String {
    let (name, url) = if rendition.is_empty() {
        (channel.to_string(), format!("/whep/{}", segment(channel)))
    } else {
        (
            format!("{channel}/{rendition}"),
            format!("/whep/{}/{}", segment(channel), segment(rendition)),
        )
    };
    PLAYER_HTML
        .replace("{{CHANNEL}}", &escape(&name))
        .replace("{{WHEP_URL}}", &escape(&url))
}

fn player(channel: &str, rendition: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Body::from(player_page(channel, rendition)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn player_page_escapes_the_channel_name() {
        let page = player_page("<script>x</script>", "a\"b");
        assert!(!page.contains("<script>x</script>"));
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;/a&quot;b"));
        assert!(page.contains("data-whep=\"/whep/%3Cscript%3Ex%3C%2Fscript%3E/a%22b\""));
        assert!(page.contains("window.pc"));
        assert!(page.contains("id=\"state\""));
        assert!(page.contains("id=\"latency\""));
    }

    #[test]
    fn content_type_parameters_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "Application/SDP; charset=utf-8".parse().unwrap(),
        );
        assert!(content_type_is(&h, "application/sdp"));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!content_type_is(&h, "application/sdp"));
        assert!(!content_type_is(&HeaderMap::new(), "application/sdp"));
    }
}
