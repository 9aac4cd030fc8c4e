//! A real browser as a client: Debian's headless `chromium`, driven by
//! `tests/browser/play.mjs` (playwright-core, installed by `scripts/install-deps.sh`), opens
//! a page that plays through WebRTC and reports what `RTCPeerConnection.getStats()` saw.

use crate::netns::{Node, Topology};
use crate::paths::repo_root;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The folder holding `play.mjs` and its `node_modules`.
pub fn browser_dir() -> PathBuf {
    repo_root().join("tests").join("browser")
}

/// What the browser reported after playing a page (one JSON line of `play.mjs`).
#[derive(Debug, Clone)]
pub struct Playback {
    pub raw: Value,
}

impl Playback {
    fn num(&self, path: &[&str]) -> Option<f64> {
        let mut v = &self.raw;
        for p in path {
            v = v.get(p)?;
        }
        v.as_f64()
    }

    fn text(&self, path: &[&str]) -> Option<&str> {
        let mut v = &self.raw;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str()
    }

    /// The peer connection's final `connectionState`.
    pub fn connection_state(&self) -> Option<&str> {
        self.text(&["connectionState"])
    }

    /// The inbound video codec, e.g. `video/H264`.
    pub fn video_mime(&self) -> Option<&str> {
        self.text(&["video", "mimeType"])
    }

    /// The inbound audio codec, e.g. `audio/opus`.
    pub fn audio_mime(&self) -> Option<&str> {
        self.text(&["audio", "mimeType"])
    }

    /// The SRTP protection profile of the transport, as Chromium names it (e.g.
    /// `SRTP_AES128_CM_HMAC_SHA1_80`).
    pub fn srtp_cipher(&self) -> Option<&str> {
        self.text(&["srtpCipher"])
    }

    /// `framesDecoded` at the first poll.
    pub fn frames_first(&self) -> u64 {
        self.num(&["video", "framesDecodedFirst"]).unwrap_or(0.0) as u64
    }

    /// `framesDecoded` at the end.
    pub fn frames_last(&self) -> u64 {
        self.num(&["video", "framesDecodedLast"]).unwrap_or(0.0) as u64
    }

    /// `framesDecoded` at every poll, in order.
    pub fn frames_series(&self) -> Vec<u64> {
        self.raw
            .pointer("/video/framesDecodedSeries")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }

    /// Audio RTP packets received.
    pub fn audio_packets(&self) -> u64 {
        self.num(&["audio", "packetsReceived"]).unwrap_or(0.0) as u64
    }

    /// Video frame size the decoder produced.
    pub fn frame_size(&self) -> (u64, u64) {
        (
            self.num(&["video", "frameWidth"]).unwrap_or(0.0) as u64,
            self.num(&["video", "frameHeight"]).unwrap_or(0.0) as u64,
        )
    }

    /// Milliseconds from the page's WHEP POST to its first presented video frame.
    pub fn post_to_first_frame_ms(&self) -> Option<f64> {
        self.num(&["postToFirstFrameMs"])
    }

    /// Errors thrown by the page's scripts.
    pub fn page_errors(&self) -> Vec<String> {
        self.raw
            .get("pageErrors")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Opens `url` in headless chromium from inside `node`, polls `getStats()` for `seconds`,
/// saves a screenshot of the page to `screenshot`, and returns the report. An error when
/// the browser could not be driven at all; the figures are for the caller to judge.
pub fn play(
    topo: &Topology,
    node: Node,
    url: &str,
    seconds: u64,
    screenshot: &Path,
) -> Result<Playback> {
    play_with(
        |args, timeout| topo.run_in(node, "node", args, timeout),
        url,
        seconds,
        screenshot,
    )
}

/// [`play`] from machine `node` of a [`Lan`](crate::lan::Lan).
pub fn play_on_lan(
    lan: &crate::lan::Lan,
    node: &str,
    url: &str,
    seconds: u64,
    screenshot: &Path,
) -> Result<Playback> {
    play_with(
        |args, timeout| lan.run_in(node, "node", args, timeout),
        url,
        seconds,
        screenshot,
    )
}

/// [`play`] with `run` starting `node ARGS` where the browser should run.
fn play_with(
    run: impl FnOnce(Vec<std::ffi::OsString>, Duration) -> Result<crate::CmdOutput>,
    url: &str,
    seconds: u64,
    screenshot: &Path,
) -> Result<Playback> {
    let dir = browser_dir();
    if !dir.join("node_modules").join("playwright-core").is_dir() {
        bail!(
            "{} has no node_modules/playwright-core: run scripts/install-deps.sh",
            dir.display()
        );
    }
    let script = dir.join("play.mjs");
    let secs = seconds.to_string();
    let out = run(
        vec![
            script.into_os_string(),
            "--url".into(),
            url.into(),
            "--seconds".into(),
            secs.into(),
            "--screenshot".into(),
            screenshot.as_os_str().to_owned(),
        ],
        Duration::from_secs(seconds + 90),
    )?;
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(str::to_string);
    let Some(line) = line else {
        bail!("play.mjs printed no report:\n{}", out.failure_report());
    };
    let raw: Value = serde_json::from_str(&line)
        .with_context(|| format!("play.mjs report is not JSON: {line}"))?;
    if raw.get("ok").and_then(Value::as_bool) != Some(true) {
        bail!(
            "the browser could not play {url}: {}\n{}",
            raw.get("error").unwrap_or(&Value::Null),
            out.failure_report()
        );
    }
    Ok(Playback { raw })
}
