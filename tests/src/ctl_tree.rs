//! A reflector tree wired by the tree controller, every unit on a machine (namespace) of
//! its own:
//!
//! ```text
//!            ctl (divisor-controller: control 7600, RTSP 8654, HTTP 8680)
//!   enc ── master ─┬─ int1 ─┬─ pub1
//!                  │        └─ pub2      spare links: int2–pub1, int2–pub2, int1–pub3
//!                  └─ int2 ─── pub3
//! ```
//!
//! Reflectors are started with `--controller` only (no `--upstream`): the controller
//! gives the master the encoder unit from the topology file and everyone else its
//! upstreams. Clients run on `client` and start at the controller's URLs.

use crate::lan::Lan;
use crate::paths::bin;
use anyhow::{bail, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const CTL: &str = "ctl";
pub const ENC: &str = "enc";
pub const MASTER: &str = "master";
pub const INTERMEDIATES: [&str; 2] = ["int1", "int2"];
pub const PUBLICS: [&str; 3] = ["pub1", "pub2", "pub3"];
pub const CLIENT: &str = "client";
pub const CHANNEL: &str = "cam";

pub const CONTROL: u16 = 7600;
pub const CTL_RTSP: u16 = 8654;
pub const CTL_HTTP: u16 = 8680;
pub const ENC_LINK: u16 = 7400;
pub const ENC_HTTP: u16 = 7480;
pub const LINK: u16 = 7500;
pub const HTTP: u16 = 7580;
pub const RTSP: u16 = 8554;

/// Viewers each public reflector takes (`--max-clients`).
pub const MAX_VIEWERS: u32 = 40;

/// The designed parent of each node.
pub fn designed_parent(node: &str) -> &'static str {
    match node {
        "int1" | "int2" => MASTER,
        "pub1" | "pub2" => "int1",
        _ => "int2",
    }
}

/// Starts the encoder unit on [`ENC`] with the live channel [`CHANNEL`] in its
/// browser-safe rendition ([`crate::media::WEB_LIVE_CONFIG`]: H.264 without B-frames, so
/// ffmpeg's `-c copy` has no dts to guess at a join), links on [`ENC_LINK`].
pub fn spawn_web_encoder(lan: &Lan, link_key: &std::path::Path, http: Option<u16>) -> Result<()> {
    let library = lan.log_dir.join("library");
    std::fs::create_dir_all(&library)?;
    let config = lan.log_dir.join("encoder.toml");
    std::fs::write(&config, crate::media::WEB_LIVE_CONFIG)?;
    let mut args = vec![
        "--library".into(),
        path(&library),
        "--config".into(),
        path(&config),
        "--link-listen".into(),
        format!("0.0.0.0:{ENC_LINK}"),
        "--link-key-file".into(),
        path(link_key),
    ];
    if let Some(port) = http {
        args.extend(["--http-listen".into(), format!("0.0.0.0:{port}")]);
    }
    lan.spawn_in(ENC, ENC, bin("divisor-encoder")?, args)
}

pub struct CtlTree {
    pub lan: Lan,
    pub link_key: PathBuf,
    pub control_key: PathBuf,
}

impl CtlTree {
    /// Starts the controller, the encoder unit and the six reflectors, and waits until the
    /// controller has wired the designed tree and every public reflector's primary link
    /// is up.
    pub fn start(test: &str) -> Result<CtlTree> {
        let mut nodes = vec![CTL, ENC, MASTER];
        nodes.extend(INTERMEDIATES);
        nodes.extend(PUBLICS);
        nodes.push(CLIENT);
        let lan = Lan::new(test, &nodes)?;
        let link_key = lan.log_dir.join("link.key");
        std::fs::write(&link_key, "controller test link key\n")?;
        let control_key = lan.log_dir.join("control.key");
        std::fs::write(&control_key, "controller test control key\n")?;
        let t = CtlTree {
            lan,
            link_key,
            control_key,
        };
        spawn_web_encoder(&t.lan, &t.link_key, Some(ENC_HTTP))?;
        let topology = t.lan.log_dir.join("tree.toml");
        std::fs::write(&topology, t.topology())?;
        t.lan.spawn_in(
            CTL,
            CTL,
            bin("divisor-controller")?,
            [
                "--control-listen".into(),
                format!("0.0.0.0:{CONTROL}"),
                "--control-key-file".into(),
                path(&t.control_key),
                "--topology".into(),
                path(&topology),
                "--rtsp-listen".into(),
                format!("0.0.0.0:{CTL_RTSP}"),
                "--http-listen".into(),
                format!("0.0.0.0:{CTL_HTTP}"),
                "--ping-ms".into(),
                "1000".into(),
                "--stats-secs".into(),
                "1".into(),
            ],
        )?;
        t.lan
            .wait_listening(CTL, CONTROL, Duration::from_secs(20))?;
        t.lan
            .wait_listening(ENC, ENC_LINK, Duration::from_secs(20))?;
        t.spawn_reflector(MASTER, "master")?;
        for i in INTERMEDIATES {
            t.spawn_reflector(i, "intermediate")?;
        }
        for p in PUBLICS {
            t.spawn_reflector(p, "public")?;
        }
        t.wait_for(
            Duration::from_secs(30),
            "the designed tree wired and up",
            |t| t.designed_and_up(),
        )?;
        Ok(t)
    }

    fn topology(&self) -> String {
        let mut s = format!(
            "# The administrator's drawing for the controller test.\nencoders = [\"{}\"]\nfan_out = 8\n",
            self.lan.addr(ENC, ENC_LINK)
        );
        for (id, role) in [
            (MASTER, "master"),
            ("int1", "intermediate"),
            ("int2", "intermediate"),
            ("pub1", "public"),
            ("pub2", "public"),
            ("pub3", "public"),
        ] {
            s += &format!("[[node]]\nid = \"{id}\"\nrole = \"{role}\"\n");
        }
        for (a, b, spare) in [
            (MASTER, "int1", false),
            (MASTER, "int2", false),
            ("int1", "pub1", false),
            ("int1", "pub2", false),
            ("int2", "pub3", false),
            ("int2", "pub1", true),
            ("int2", "pub2", true),
            ("int1", "pub3", true),
        ] {
            s += &format!("[[link]]\na = \"{a}\"\nb = \"{b}\"\nspare = {spare}\n");
        }
        s
    }

    /// Starts (or restarts) reflector `node` with `role`, joined to the controller.
    pub fn spawn_reflector(&self, node: &str, role: &str) -> Result<()> {
        let mut args: Vec<String> = vec![
            "--role".into(),
            role.into(),
            "--id".into(),
            node.into(),
            "--controller".into(),
            self.lan.addr(CTL, CONTROL).to_string(),
            "--control-key-file".into(),
            path(&self.control_key),
            "--link-key-file".into(),
            path(&self.link_key),
            "--advertise".into(),
            self.lan.ip(node).to_string(),
            "--http-listen".into(),
            format!("0.0.0.0:{HTTP}"),
            "--stats-secs".into(),
            "1".into(),
            "--linger-secs".into(),
            "1".into(),
            "--return-secs".into(),
            "3".into(),
        ];
        if role == "public" {
            args.extend(
                [
                    "--rtsp-listen",
                    &format!("0.0.0.0:{RTSP}"),
                    "--gso",
                    "false",
                    "--live-linger",
                    "1",
                    "--max-clients",
                    &MAX_VIEWERS.to_string(),
                ]
                .map(String::from),
            );
        } else {
            args.extend(["--link-listen".into(), format!("0.0.0.0:{LINK}")]);
        }
        self.lan
            .spawn_in(node, node, bin("divisor-reflector")?, args)?;
        self.lan.wait_listening(node, HTTP, Duration::from_secs(20))
    }

    /// The controller's `/tree` JSON.
    pub fn tree(&self) -> Result<Value> {
        self.get_json(&format!("http://{}:{CTL_HTTP}/tree", self.lan.ip(CTL)))
    }

    /// The controller's `/metrics` text.
    pub fn controller_metrics(&self) -> Result<String> {
        let url = format!("http://{}:{CTL_HTTP}/metrics", self.lan.ip(CTL));
        let (code, body) = self.lan.http_get(CLIENT, &url)?;
        if code != 200 {
            bail!("GET {url}: {code}");
        }
        Ok(body)
    }

    /// `/status` of a reflector (or the encoder unit).
    pub fn status(&self, node: &str) -> Result<Value> {
        let port = if node == ENC { ENC_HTTP } else { HTTP };
        self.get_json(&format!("http://{}:{port}/status", self.lan.ip(node)))
    }

    fn get_json(&self, url: &str) -> Result<Value> {
        self.lan.get_json(CLIENT, url)
    }

    /// The parent the controller gives `node` now.
    pub fn parent_of(&self, node: &str) -> Result<Option<String>> {
        self.node_field(node, "parent")
    }

    /// A string field of `node`'s entry in the controller's `/tree`.
    fn node_field(&self, node: &str, field: &str) -> Result<Option<String>> {
        let t = self.tree()?;
        Ok(t["nodes"].as_array().and_then(|n| {
            n.iter()
                .find(|n| n["id"] == node)
                .and_then(|n| n[field].as_str().map(str::to_string))
        }))
    }

    /// The state the controller holds for `node` (`up`, `dead`, ...).
    pub fn state_of(&self, node: &str) -> Result<Option<String>> {
        self.node_field(node, "state")
    }

    /// The upstream addresses of reflector `node`, in order, and the first one's state.
    pub fn upstreams_of(&self, node: &str) -> Result<(Vec<String>, String)> {
        let s = self.status(node)?;
        let ups: Vec<String> = s["upstreams"]
            .as_array()
            .map(|u| {
                u.iter()
                    .filter_map(|u| u["addr"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let state = s["upstreams"][0]["state"]
            .as_str()
            .unwrap_or("")
            .to_string();
        Ok((ups, state))
    }

    /// Every reflector is wired as designed (controller and data plane agree), its
    /// primary up.
    pub fn designed_and_up(&self) -> Result<bool> {
        let mut all = INTERMEDIATES.to_vec();
        all.extend(PUBLICS);
        for n in all {
            if self.parent_of(n)?.as_deref() != Some(designed_parent(n)) {
                return Ok(false);
            }
            let (ups, state) = self.upstreams_of(n)?;
            let want = self.lan.addr(designed_parent(n), LINK).to_string();
            if ups.first() != Some(&want) || state != "up" {
                return Ok(false);
            }
        }
        let (ups, state) = self.upstreams_of(MASTER)?;
        Ok(ups == [self.lan.addr(ENC, ENC_LINK).to_string()] && state == "up")
    }

    /// Polls `cond` every 100 ms until it holds, or fails after `timeout` naming `what`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&CtlTree) -> Result<bool>,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut last_err = None;
        loop {
            match cond(self) {
                Ok(true) => return Ok(start.elapsed()),
                Ok(false) => {}
                Err(e) => last_err = Some(e),
            }
            if start.elapsed() >= timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what} (last error: {last_err:?})\n{}",
                    self.lan.logs_report(15)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The controller's RTSP URL of the channel.
    pub fn rtsp_url(&self) -> String {
        format!("rtsp://{}:{CTL_RTSP}/live/{CHANNEL}", self.lan.ip(CTL))
    }

    /// Which public reflector IP an address belongs to.
    pub fn public_of_ip(&self, ip: &str) -> Option<&'static str> {
        PUBLICS
            .iter()
            .copied()
            .find(|p| self.lan.ip(p).to_string() == ip)
    }
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}
