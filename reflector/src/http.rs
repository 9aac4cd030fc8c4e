//! A reflector's HTTP port (`--http-listen`): `GET /status` (JSON: role, upstreams with
//! state and round-trip time, children, channels) and `GET /metrics` (OpenMetrics text,
//! per channel). A public reflector also serves its front-end's documents under the same
//! two paths (merged in) and WHEP.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use divisor_protocol::http::{StatusDocument, METRICS_CONTENT_TYPE};
use divisor_protocol::server::FrontEnd;
use serde::Serialize;

use crate::driver::Reflector;
use crate::relay::status::GAP_BUCKETS_MS;
use crate::relay::RelaySnapshot;

#[derive(Clone)]
struct Node {
    role: &'static str,
    relay: Reflector,
    front: Option<FrontEnd>,
}

/// The `/status` document.
#[derive(Serialize)]
pub struct StatusDoc {
    pub role: &'static str,
    #[serde(flatten)]
    pub relay: RelaySnapshot,
    /// The public tier's front-end (RTSP/WHEP viewers), as `divisor-protocol` shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub front_end: Option<StatusDocument>,
}

/// The router of a node with `role`; `front` for a public reflector.
pub fn router(role: &'static str, relay: Reflector, front: Option<FrontEnd>) -> Router {
    let whep = front
        .as_ref()
        .map(|f| divisor_protocol::whep::signal::router(f.whep.clone()));
    let r = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status_handler))
        .with_state(Node { role, relay, front });
    let r = match whep {
        Some(w) => r.merge(w),
        None => r,
    };
    r.fallback(not_found)
}

async fn status_handler(State(n): State<Node>) -> Json<StatusDoc> {
    Json(StatusDoc {
        role: n.role,
        relay: n.relay.snapshot(),
        front_end: n
            .front
            .as_ref()
            .map(|f| StatusDocument::from_metrics(&f.metrics)),
    })
}

async fn metrics_handler(State(n): State<Node>) -> Response {
    let mut text = String::new();
    if let Some(f) = &n.front {
        let front = f.metrics.encode();
        text.push_str(front.trim_end().trim_end_matches("# EOF"));
    }
    render(&mut text, n.role, &n.relay.snapshot());
    text.push_str("# EOF\n");
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: a reflector serves /metrics and /status (and, on the public tier, /whep/<channel> and /play/<channel>)\n",
    )
}

/// Escape a label value (OpenMetrics: backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The relay's metrics in OpenMetrics text (without the final `# EOF`).
pub fn render(out: &mut String, role: &str, s: &RelaySnapshot) {
    let node = format!("node=\"{}\",role=\"{role}\"", esc(&s.id));
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# TYPE {name} {kind}\n# HELP {name} {help}");
    };
    family(
        out,
        "divisor_reflector_up",
        "gauge",
        "1 while the node runs; 0 once leaving.",
    );
    let _ = writeln!(
        out,
        "divisor_reflector_up{{{node}}} {}",
        u8::from(!s.leaving)
    );
    family(
        out,
        "divisor_reflector_upstream_up",
        "gauge",
        "1 while the link to this parent is up.",
    );
    for u in &s.upstreams {
        let _ = writeln!(
            out,
            "divisor_reflector_upstream_up{{{node},upstream=\"{}\",preference=\"{}\"}} {}",
            esc(&u.addr),
            u.preference,
            u8::from(u.state != "down")
        );
    }
    family(
        out,
        "divisor_reflector_upstream_rtt_seconds",
        "gauge",
        "Round trip of the last link ping to this parent.",
    );
    for u in s.upstreams.iter().filter(|u| u.rtt_ms.is_some()) {
        let _ = writeln!(
            out,
            "divisor_reflector_upstream_rtt_seconds{{{node},upstream=\"{}\"}} {}",
            esc(&u.addr),
            u.rtt_ms.unwrap_or_default() / 1000.0
        );
    }
    family(
        out,
        "divisor_reflector_children",
        "gauge",
        "Child links (reflectors, protocol units) attached.",
    );
    let remote = s.children.iter().filter(|c| !c.local).count();
    let _ = writeln!(out, "divisor_reflector_children{{{node}}} {remote}");
    family(
        out,
        "divisor_reflector_child_refusals",
        "counter",
        "Requests from children refused (limits, loops, bad requests).",
    );
    let refused: u64 = s.children.iter().map(|c| c.refused).sum();
    let _ = writeln!(
        out,
        "divisor_reflector_child_refusals_total{{{node}}} {refused}"
    );

    let per_channel: [(&str, &str, &str); 9] = [
        (
            "frames_in",
            "counter",
            "Frames received from the active (and joining) parent.",
        ),
        (
            "bytes_in",
            "counter",
            "Payload bytes received from parents.",
        ),
        (
            "frames_out",
            "counter",
            "Frames sent to children and local viewers.",
        ),
        (
            "bytes_out",
            "counter",
            "Payload bytes sent to children and local viewers.",
        ),
        (
            "duplicates",
            "counter",
            "Frames dropped by the splice as already forwarded.",
        ),
        (
            "skips",
            "counter",
            "Times a slow child was skipped to the next keyframe.",
        ),
        (
            "discontinuities",
            "counter",
            "Switches to another timeline (restarted at a keyframe).",
        ),
        (
            "channel_children",
            "gauge",
            "Remote children subscribed to the channel.",
        ),
        (
            "channel_viewers",
            "gauge",
            "Local front-end subscriptions (public tier).",
        ),
    ];
    for (name, kind, help) in per_channel {
        let full = format!("divisor_reflector_{name}");
        family(out, &full, kind, help);
        let suffix = if kind == "counter" { "_total" } else { "" };
        for c in &s.channels {
            let v = match name {
                "frames_in" => c.counters.frames_in,
                "bytes_in" => c.counters.bytes_in,
                "frames_out" => c.counters.frames_out,
                "bytes_out" => c.counters.bytes_out,
                "duplicates" => c.counters.duplicates,
                "skips" => c.counters.skips,
                "discontinuities" => c.counters.discontinuities,
                "channel_children" => c.children as u64,
                _ => c.local_subscribers as u64,
            };
            let _ = writeln!(
                out,
                "{full}{suffix}{{{node},channel=\"{}\"}} {v}",
                esc(&c.channel)
            );
        }
    }
    family(
        out,
        "divisor_reflector_active_upstream",
        "gauge",
        "1 for the parent a channel is taken from.",
    );
    for c in &s.channels {
        if let Some(up) = &c.active_upstream {
            let _ = writeln!(
                out,
                "divisor_reflector_active_upstream{{{node},channel=\"{}\",upstream=\"{}\"}} 1",
                esc(&c.channel),
                esc(up)
            );
        }
    }
    family(
        out,
        "divisor_reflector_switches",
        "counter",
        "Parent switches of a channel, by reason.",
    );
    for c in &s.channels {
        for (reason, n) in &c.counters.switches {
            let _ = writeln!(
                out,
                "divisor_reflector_switches_total{{{node},channel=\"{}\",reason=\"{reason}\"}} {n}",
                esc(&c.channel)
            );
        }
    }
    family(
        out,
        "divisor_reflector_upstream_gap_seconds",
        "histogram",
        "Time between consecutive frames from the active parent.",
    );
    for c in &s.channels {
        let ch = esc(&c.channel);
        let mut cum = 0u64;
        for (i, ub) in GAP_BUCKETS_MS.iter().enumerate() {
            cum += c.counters.gaps[i];
            let _ = writeln!(
                out,
                "divisor_reflector_upstream_gap_seconds_bucket{{{node},channel=\"{ch}\",le=\"{}\"}} {cum}",
                ub / 1000.0
            );
        }
        cum += c.counters.gaps[GAP_BUCKETS_MS.len()];
        let _ = writeln!(
            out,
            "divisor_reflector_upstream_gap_seconds_bucket{{{node},channel=\"{ch}\",le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            out,
            "divisor_reflector_upstream_gap_seconds_sum{{{node},channel=\"{ch}\"}} {}",
            c.counters.gap_sum_ms / 1000.0
        );
        let _ = writeln!(
            out,
            "divisor_reflector_upstream_gap_seconds_count{{{node},channel=\"{ch}\"}} {cum}"
        );
    }
}
