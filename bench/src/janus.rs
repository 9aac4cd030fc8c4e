//! Janus (Debian's `janus`, streaming plugin) as the peer of `divisor-bench webrtc`: the
//! same receive-only viewers, signalled with Janus's HTTP/JSON API instead of WHEP.
//!
//! Janus offers and the viewer answers: `POST /janus {create}` gives a session,
//! `POST /janus/<session> {attach janus.plugin.streaming}` a handle, `POST
//! /janus/<session>/<handle> {message: watch <mountpoint>}` is acknowledged and the offer
//! arrives as an event on the session's long poll (`GET /janus/<session>?maxev=1`); the
//! answer goes back in `{message: start, jsep: answer}`. `destroy` ends the session.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::whep_client::http_request;

/// A Janus session with the streaming plugin attached.
pub struct JanusSession {
    /// `http://HOST:PORT/janus/<session>`.
    pub session_url: String,
    /// `http://HOST:PORT/janus/<session>/<handle>`.
    pub handle_url: String,
}

fn transaction() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("divisor-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// POSTs `body` (with a fresh transaction id) to `url`; the JSON reply, an error on a Janus
/// `error` reply.
async fn post(url: &str, mut body: Value) -> Result<Value> {
    body["transaction"] = json!(transaction());
    let r = http_request(
        "POST",
        url,
        Some("application/json"),
        Bytes::from(body.to_string()),
    )
    .await?;
    if r.status != 200 {
        bail!("POST {url} -> {}: {}", r.status, r.body.trim());
    }
    let v: Value = serde_json::from_str(&r.body).with_context(|| format!("reply of {url}"))?;
    if v["janus"] == "error" {
        bail!("Janus error from {url}: {}", v["error"]);
    }
    Ok(v)
}

impl JanusSession {
    /// Creates a session at `base` (`http://HOST:PORT/janus`) and attaches the streaming
    /// plugin.
    pub async fn open(base: &str) -> Result<JanusSession> {
        let base = base.trim_end_matches('/');
        let v = post(base, json!({"janus": "create"})).await?;
        let session = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("create: no session id in {v}"))?;
        let session_url = format!("{base}/{session}");
        let v = post(
            &session_url,
            json!({"janus": "attach", "plugin": "janus.plugin.streaming"}),
        )
        .await?;
        let handle = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("attach: no handle id in {v}"))?;
        Ok(JanusSession {
            handle_url: format!("{session_url}/{handle}"),
            session_url,
        })
    }

    /// Asks to watch `mountpoint`; returns Janus's SDP offer.
    pub async fn watch(&self, mountpoint: u64, timeout: Duration) -> Result<String> {
        post(
            &self.handle_url,
            json!({"janus": "message", "body": {"request": "watch", "id": mountpoint}}),
        )
        .await?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let r = http_request(
                "GET",
                &format!("{}?maxev=1", self.session_url),
                None,
                Bytes::new(),
            )
            .await?;
            let v: Value = serde_json::from_str(&r.body)
                .with_context(|| format!("event of {}: {}", self.session_url, r.body))?;
            for ev in v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]) {
                if let Some(sdp) = ev["jsep"]["sdp"].as_str() {
                    return Ok(sdp.to_string());
                }
                if let Some(e) = ev["plugindata"]["data"]["error"].as_str() {
                    bail!("watch {mountpoint}: {e}");
                }
            }
        }
        bail!("no offer from Janus within {timeout:?}")
    }

    /// Sends the viewer's answer and starts the stream.
    pub async fn start(&self, answer_sdp: &str) -> Result<()> {
        post(
            &self.handle_url,
            json!({
                "janus": "message",
                "body": {"request": "start"},
                "jsep": {"type": "answer", "sdp": answer_sdp},
            }),
        )
        .await
        .map(|_| ())
    }

    /// Ends the session (and its handle and peer connection).
    pub async fn destroy(&self) -> Result<u16> {
        post(&self.session_url, json!({"janus": "destroy"})).await?;
        Ok(200)
    }
}
