//! A controller that deploys its own public tier, every unit on a machine (namespace)
//! of its own:
//!
//! ```text
//!   ctl (divisor-controller --deploy local|libvirt; control 7600, RTSP 8654, HTTP 8680)
//!   enc ── master ─┬─ auto-public-1      deployed on the LAN's bridge, from .100 up
//!                  ├─ auto-public-2
//!                  └─ ...                client: ffmpeg viewers at rtsp://ctl:8654/live/cam
//! ```
//!
//! The local backend plugs each deployed reflector's namespace straight into the LAN's
//! switch. libvirt plugs its containers into a bridge in its own (the root) namespace,
//! so for that backend the harness joins that bridge to the LAN's switch with a veth
//! pair: one L2 segment, one subnet, as if the host running the containers were on
//! the LAN.

use crate::lan::Lan;
use crate::paths::bin;
use anyhow::{bail, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub use crate::ctl_tree::{
    CHANNEL, CLIENT, CONTROL, CTL, CTL_HTTP, CTL_RTSP, ENC, ENC_LINK, HTTP, LINK, MASTER,
};

/// Which deployer the controller uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    Libvirt,
}

/// The scale settings a test picks.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    pub backend: Backend,
    /// Viewers each deployed public takes (`--max-clients`).
    pub max_viewers: u32,
    pub min_public: usize,
    pub max_public: usize,
    pub high_water: f64,
    pub low_water: f64,
}

pub struct CtlScale {
    pub lan: Lan,
    pub opts: ScaleOptions,
    /// `--deploy-name`: unique per run, so nothing of another run is adopted.
    pub deploy_name: String,
    pub deploy_dir: PathBuf,
    /// libvirt: the root-namespace bridge and the veth joining it to the switch.
    root_bridge: Option<(String, String)>,
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl CtlScale {
    /// Starts the encoder unit, the master and the controller; the controller then
    /// deploys `min_public` public reflectors by itself.
    pub fn start(test: &str, opts: ScaleOptions) -> Result<CtlScale> {
        let lan = Lan::new(test, &[CTL, ENC, MASTER, CLIENT])?;
        let pid = std::process::id();
        let deploy_name = format!(
            "t{pid}{}",
            if opts.backend == Backend::Libvirt {
                "v"
            } else {
                "l"
            }
        );
        let deploy_dir = lan.log_dir.join("deploy");
        let mut t = CtlScale {
            lan,
            opts,
            deploy_name,
            deploy_dir,
            root_bridge: None,
        };
        if t.opts.backend == Backend::Libvirt {
            t.join_root_bridge()?;
        }
        let link_key = t.lan.log_dir.join("link.key");
        std::fs::write(&link_key, "scale test link key\n")?;
        let control_key = t.lan.log_dir.join("control.key");
        std::fs::write(&control_key, "scale test control key\n")?;
        crate::ctl_tree::spawn_web_encoder(&t.lan, &link_key, None)?;
        let topology = t.lan.log_dir.join("tree.toml");
        std::fs::write(
            &topology,
            format!(
                "encoders = [\"{}\"]\nfan_out = 16\n[[node]]\nid = \"{MASTER}\"\nrole = \"master\"\n",
                t.lan.addr(ENC, ENC_LINK)
            ),
        )?;
        t.lan
            .wait_listening(ENC, ENC_LINK, Duration::from_secs(20))?;
        t.lan.spawn_in(
            MASTER,
            MASTER,
            bin("divisor-reflector")?,
            [
                "--role",
                "master",
                "--id",
                MASTER,
                "--controller",
                &t.lan.addr(CTL, CONTROL).to_string(),
                "--control-key-file",
                &path(&control_key),
                "--link-key-file",
                &path(&link_key),
                "--link-listen",
                &format!("{}:{LINK}", t.lan.ip(MASTER)),
                "--http-listen",
                &format!("{}:{HTTP}", t.lan.ip(MASTER)),
                "--stats-secs",
                "1",
            ]
            .map(String::from),
        )?;
        let (bridge, bridge_ns) = match &t.root_bridge {
            Some((b, _)) => (b.clone(), None),
            None => ("br0".to_string(), Some(t.lan.switch_ns.clone())),
        };
        let o = &t.opts;
        let mut args: Vec<String> = vec![
            "--control-listen".into(),
            format!("0.0.0.0:{CONTROL}"),
            "--control-key-file".into(),
            path(&control_key),
            "--link-key-file".into(),
            path(&link_key),
            "--topology".into(),
            path(&topology),
            "--rtsp-listen".into(),
            format!("0.0.0.0:{CTL_RTSP}"),
            "--http-listen".into(),
            format!("0.0.0.0:{CTL_HTTP}"),
            "--stats-secs".into(),
            "1".into(),
            "--deploy".into(),
            match o.backend {
                Backend::Local => "local",
                Backend::Libvirt => "libvirt",
            }
            .into(),
            "--deploy-name".into(),
            t.deploy_name.clone(),
            "--deploy-controller-addr".into(),
            t.lan.addr(CTL, CONTROL).to_string(),
            "--deploy-dir".into(),
            path(&t.deploy_dir),
            "--deploy-bridge".into(),
            bridge,
            "--deploy-subnet".into(),
            format!("{}/24", t.lan.subnet),
            "--deploy-first-host".into(),
            "100".into(),
            "--deploy-http-port".into(),
            HTTP.to_string(),
            "--min-public".into(),
            o.min_public.to_string(),
            "--max-public".into(),
            o.max_public.to_string(),
            "--high-water".into(),
            o.high_water.to_string(),
            "--low-water".into(),
            o.low_water.to_string(),
            "--scale-periods".into(),
            "2".into(),
            "--cooldown-secs".into(),
            "3".into(),
            "--drain-max-secs".into(),
            "90".into(),
            "--boot-timeout-secs".into(),
            "30".into(),
            "--libvirt-memory-mib".into(),
            "512".into(),
            "--cleanup".into(),
        ];
        if let Some(ns) = bridge_ns {
            args.extend(["--deploy-bridge-netns".into(), ns]);
        }
        for a in [
            "--stats-secs",
            "1",
            "--linger-secs",
            "1",
            "--live-linger",
            "1",
            "--gso",
            "false",
            "--max-clients",
            &o.max_viewers.to_string(),
        ] {
            args.push(format!("--reflector-arg={a}"));
        }
        t.lan.spawn_in(CTL, CTL, bin("divisor-controller")?, args)?;
        t.lan
            .wait_listening(CTL, CTL_HTTP, Duration::from_secs(20))?;
        Ok(t)
    }

    /// libvirt's containers join a bridge in the root namespace; link it to the switch.
    fn join_root_bridge(&mut self) -> Result<()> {
        let n = self.lan.subnet.octets();
        let bridge = format!("dvlv{}", n[2]);
        let port = format!("dvlvp{}", n[2]);
        let _ = ip(&["link", "del", &bridge]);
        let _ = ip(&["link", "del", &port]);
        ip(&["link", "add", &bridge, "type", "bridge", "stp_state", "0"])?;
        self.root_bridge = Some((bridge.clone(), port.clone()));
        ip(&["link", "set", &bridge, "up"])?;
        ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "lvup",
            "netns",
            &self.lan.switch_ns,
        ])?;
        ip(&["link", "set", &port, "master", &bridge])?;
        ip(&["link", "set", &port, "up"])?;
        ip(&[
            "-n",
            &self.lan.switch_ns,
            "link",
            "set",
            "lvup",
            "master",
            "br0",
        ])?;
        ip(&["-n", &self.lan.switch_ns, "link", "set", "lvup", "up"])?;
        Ok(())
    }

    /// `rtsp://ctl:8654/live/cam`: where viewers start.
    pub fn url(&self) -> String {
        format!("rtsp://{}:{CTL_RTSP}/live/{CHANNEL}", self.lan.ip(CTL))
    }

    /// The controller's `/tree` JSON.
    pub fn tree(&self) -> Result<Value> {
        let url = format!("http://{}:{CTL_HTTP}/tree", self.lan.ip(CTL));
        self.lan.get_json(CLIENT, &url)
    }

    /// The controller's `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let url = format!("http://{}:{CTL_HTTP}/metrics", self.lan.ip(CTL));
        let (code, body) = self.lan.http_get(CLIENT, &url)?;
        if code != 200 {
            bail!("GET {url}: {code}");
        }
        Ok(body)
    }

    /// Public reflectors of the tree by state (`up`, `draining`, ...).
    pub fn publics(&self) -> Result<Vec<(String, String)>> {
        let t = self.tree()?;
        Ok(t["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter(|n| n["role"] == "public")
                    .filter_map(|n| {
                        Some((
                            n["id"].as_str()?.to_string(),
                            n["state"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Public reflectors up (serving, not draining).
    pub fn publics_up(&self) -> Result<usize> {
        Ok(self.publics()?.iter().filter(|(_, s)| s == "up").count())
    }

    /// Polls `check` every 200 ms until it holds or `timeout` passes.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&CtlScale) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "timed out after {timeout:?} waiting for {what} (last error: {last})\n{}",
            self.lan.logs_report(30)
        )
    }

    /// The namespaces (local) or domains (libvirt) this run's deployer has now.
    pub fn deployed_now(&self) -> Vec<String> {
        match self.opts.backend {
            Backend::Local => std::fs::read_dir("/run/netns")
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with(&self.ns_prefix()))
                        .collect()
                })
                .unwrap_or_default(),
            Backend::Libvirt => self
                .libvirt_domains()
                .into_iter()
                .filter(|d| d.starts_with("divisor-auto-"))
                .collect(),
        }
    }

    fn ns_prefix(&self) -> String {
        format!("dvd-{}-", self.deploy_name)
    }

    /// Names of every libvirt LXC domain, running or not.
    pub fn libvirt_domains(&self) -> Vec<String> {
        Command::new("virsh")
            .args(["-c", "lxc:///system", "list", "--all", "--name"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops the controller with SIGTERM; with `--cleanup` it removes what it deployed.
    pub fn stop_controller(&self) -> Result<()> {
        self.lan.signal(CTL, libc::SIGTERM)?;
        self.lan.wait_exit(CTL, Duration::from_secs(60))?;
        Ok(())
    }
}

impl Drop for CtlScale {
    fn drop(&mut self) {
        // The controller's --cleanup removes what it deployed; a test that failed
        // before may have left some: remove them by name.
        if self.lan.is_running(CTL) {
            let _ = self.stop_controller();
        }
        match self.opts.backend {
            Backend::Local => {
                for ns in self.deployed_now() {
                    if let Ok(o) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                        for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                            if let Ok(p) = p.parse::<libc::pid_t>() {
                                // SAFETY: kill(2) on a pid; no memory involved.
                                unsafe { libc::kill(p, libc::SIGKILL) };
                            }
                        }
                    }
                    let _ = ip(&["netns", "del", &ns]);
                }
            }
            Backend::Libvirt => {
                for d in self.deployed_now() {
                    let _ = Command::new("virsh")
                        .args(["-c", "lxc:///system", "destroy", &d])
                        .output();
                    let _ = Command::new("virsh")
                        .args(["-c", "lxc:///system", "undefine", &d])
                        .output();
                }
            }
        }
        if let Some((bridge, port)) = self.root_bridge.take() {
            let _ = ip(&["link", "del", &port]);
            let _ = ip(&["link", "del", &bridge]);
        }
    }
}
