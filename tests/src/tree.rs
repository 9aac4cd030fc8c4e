//! A reflector tree on a [`Lan`], every unit on a machine (namespace) of its own:
//!
//! ```text
//!   enc ── master ─┬─ int1 ─┬─ pub1 ── client
//!                  └─ int2 ─┴─ pub2 ──┘
//! ```
//!
//! The encoder unit serves the live channel `cam` (the test source). Each public
//! reflector has both intermediates as upstreams, `int1` first, and serves RTSP on 8554
//! with GSO off (so a capture at the client sees one frame per RTP packet). Real clients
//! run on `client`; `/status` of every node is read from there.

use crate::clients::{
    gst_play_on, progress_frames, spawn_ffmpeg_on, start_capture_on, stop_capture_on, trouble_lines,
};
use crate::lan::Lan;
use crate::paths::bin;
use crate::CmdOutput;
use anyhow::{bail, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const ENC: &str = "enc";
pub const MASTER: &str = "master";
pub const INTERMEDIATES: [&str; 2] = ["int1", "int2"];
pub const PUBLICS: [&str; 2] = ["pub1", "pub2"];
pub const CLIENT: &str = "client";
pub const CHANNEL: &str = "cam";

pub const ENC_LINK: u16 = 7400;
pub const ENC_HTTP: u16 = 7480;
pub const LINK: u16 = 7500;
pub const HTTP: u16 = 7580;
pub const RTSP: u16 = 8554;

/// Settings that tests shorten.
#[derive(Clone, Debug)]
pub struct TreeOptions {
    /// `--linger-secs` of every reflector and `--live-linger` of the public front-ends.
    pub linger_secs: u64,
    /// `--return-secs` of every reflector.
    pub return_secs: u64,
    /// An encoder configuration (TOML) defining the channel [`CHANNEL`]; without one it
    /// is `--live cam=testsrc` (the source as it is).
    pub encoder_config: Option<&'static str>,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            linger_secs: 1,
            return_secs: 3,
            encoder_config: None,
        }
    }
}

pub struct Tree {
    pub lan: Lan,
    pub key_file: PathBuf,
    pub opts: TreeOptions,
}

impl Tree {
    /// Starts the whole tree and waits until every public reflector has its link to
    /// both intermediates up.
    pub fn start(test: &str, opts: TreeOptions) -> Result<Tree> {
        let lan = Lan::new(test, &[ENC, MASTER, "int1", "int2", "pub1", "pub2", CLIENT])?;
        let key_file = lan.log_dir.join("link.key");
        std::fs::write(&key_file, "tree test link key\n")?;
        let library = lan.log_dir.join("library");
        std::fs::create_dir_all(&library)?;
        let tree = Tree {
            lan,
            key_file,
            opts,
        };
        let source = match tree.opts.encoder_config {
            Some(toml) => {
                let file = tree.lan.log_dir.join("encoder.toml");
                std::fs::write(&file, toml)?;
                ["--config".to_string(), file.to_string_lossy().into_owned()]
            }
            None => ["--live".to_string(), format!("{CHANNEL}=testsrc")],
        };
        tree.lan.spawn_in(
            ENC,
            ENC,
            bin("divisor-encoder")?,
            [
                "--library".into(),
                library.to_string_lossy().into_owned(),
                source[0].clone(),
                source[1].clone(),
                "--link-listen".into(),
                format!("0.0.0.0:{ENC_LINK}"),
                "--http-listen".into(),
                format!("0.0.0.0:{ENC_HTTP}"),
                "--link-key-file".into(),
                tree.key(),
            ],
        )?;
        tree.lan
            .wait_listening(ENC, ENC_LINK, Duration::from_secs(20))?;
        let enc = tree.lan.addr(ENC, ENC_LINK).to_string();
        tree.spawn_reflector(MASTER, "master", &[enc.as_str()], &[])?;
        let master = tree.lan.addr(MASTER, LINK).to_string();
        for i in INTERMEDIATES {
            tree.spawn_reflector(i, "intermediate", &[master.as_str()], &[])?;
        }
        let ints: Vec<String> = INTERMEDIATES
            .iter()
            .map(|i| tree.lan.addr(i, LINK).to_string())
            .collect();
        let ints: Vec<&str> = ints.iter().map(String::as_str).collect();
        for p in PUBLICS {
            tree.spawn_reflector(p, "public", &ints, &[])?;
        }
        for p in PUBLICS {
            tree.lan.wait_listening(p, RTSP, Duration::from_secs(20))?;
        }
        tree.wait_for(
            Duration::from_secs(15),
            "publics linked to both intermediates",
            |t| {
                Ok(PUBLICS.iter().all(|p| {
                    t.status(p).is_ok_and(|s| {
                        s["upstreams"]
                            .as_array()
                            .is_some_and(|u| u.len() == 2 && u.iter().all(|u| u["state"] == "up"))
                    })
                }))
            },
        )?;
        Ok(tree)
    }

    fn key(&self) -> String {
        self.key_file.to_string_lossy().into_owned()
    }

    /// Starts (or restarts) reflector `node` with `role`, `upstreams` and `extra` flags.
    pub fn spawn_reflector(
        &self,
        node: &str,
        role: &str,
        upstreams: &[&str],
        extra: &[&str],
    ) -> Result<()> {
        // Public reflectors read their parents from a file, so a test can re-wire them
        // (rewrite it, SIGHUP); the others take `--upstream`.
        let parents = if role == "public" {
            let file = self.upstream_file(node);
            std::fs::write(&file, upstreams.join("\n") + "\n")?;
            [
                "--upstream-file".to_string(),
                file.to_string_lossy().into_owned(),
            ]
        } else {
            ["--upstream".to_string(), upstreams.join(",")]
        };
        let mut args: Vec<String> = vec![
            "--role".into(),
            role.into(),
            "--id".into(),
            node.into(),
            parents[0].clone(),
            parents[1].clone(),
            "--link-key-file".into(),
            self.key(),
            "--http-listen".into(),
            format!("0.0.0.0:{HTTP}"),
            "--linger-secs".into(),
            self.opts.linger_secs.to_string(),
            "--return-secs".into(),
            self.opts.return_secs.to_string(),
        ];
        if role == "public" {
            args.extend(
                [
                    "--rtsp-listen",
                    &format!("0.0.0.0:{RTSP}"),
                    "--gso",
                    "false",
                    "--live-linger",
                    &self.opts.linger_secs.to_string(),
                ]
                .map(String::from),
            );
        } else {
            args.extend(["--link-listen".into(), format!("0.0.0.0:{LINK}")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.lan
            .spawn_in(node, node, bin("divisor-reflector")?, args)?;
        self.lan.wait_listening(node, HTTP, Duration::from_secs(20))
    }

    fn upstream_file(&self, node: &str) -> PathBuf {
        self.lan.log_dir.join(format!("{node}.upstreams"))
    }

    /// Re-wires public reflector `node` to `upstreams`: rewrites its upstream file and
    /// sends it SIGHUP.
    pub fn rewire(&self, node: &str, upstreams: &[&str]) -> Result<()> {
        std::fs::write(self.upstream_file(node), upstreams.join("\n") + "\n")?;
        self.lan.signal(node, libc::SIGHUP)
    }

    /// `/status` of `node` (any reflector, or the encoder unit), read from the client.
    pub fn status(&self, node: &str) -> Result<Value> {
        let port = if node == ENC { ENC_HTTP } else { HTTP };
        let url = format!("http://{}:{port}/status", self.lan.ip(node));
        self.lan.get_json(CLIENT, &url)
    }

    /// Live subscriptions the encoder unit holds for [`CHANNEL`], all links together.
    pub fn encoder_subscriptions(&self) -> Result<u64> {
        let s = self.status(ENC)?;
        Ok(s["live"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter(|c| c["channel"] == CHANNEL)
                    .map(|c| c["subscribers"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0))
    }

    /// The relayed channel [`CHANNEL`] on reflector `node`, if it relays it.
    pub fn channel(&self, node: &str) -> Result<Option<Value>> {
        let s = self.status(node)?;
        Ok(s["channels"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["channel"] == CHANNEL).cloned()))
    }

    /// Polls `cond` every 100 ms until it holds, or fails after `timeout` naming `what`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Tree) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            match cond(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last_err = Some(e),
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} (last error: {last_err:?})\n{}",
                    self.lan.logs_report(15)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn rtsp_url(&self, public: &str) -> String {
        format!("rtsp://{}:{RTSP}/live/{CHANNEL}", self.lan.ip(public))
    }

    /// Starts ffmpeg on the client reading `url` (see [`spawn_ffmpeg_on`]).
    pub fn spawn_ffmpeg(&self, name: &str, url: &str, secs: u64, copy: bool) -> Result<()> {
        spawn_ffmpeg_on(&self.lan, CLIENT, name, url, secs, copy)
    }

    /// Frames decoded by a background ffmpeg (its last `frame=`), and its trouble lines.
    pub fn ffmpeg_result(&self, name: &str) -> (u64, Vec<String>) {
        (
            progress_frames(&self.lan.stdout_of(name)),
            trouble_lines(&self.lan.log(name)),
        )
    }

    /// `gst-launch-1.0 rtspsrc` on the client plays `url` (see [`gst_play_on`]).
    pub fn gst_play(&self, url: &str, secs: u64) -> Result<CmdOutput> {
        gst_play_on(&self.lan, CLIENT, url, secs)
    }

    /// Starts tshark on the client (see [`start_capture_on`]).
    pub fn start_capture(&self, name: &str) -> Result<PathBuf> {
        start_capture_on(&self.lan, CLIENT, name)
    }

    /// Stops a capture started with [`Tree::start_capture`].
    pub fn stop_capture(&self, name: &str) -> Result<()> {
        stop_capture_on(&self.lan, name)
    }
}
