//! Starting Divisor in a [`Topology`]: split (two units across the link veth) or mono.

use crate::media::{self, CLIP_MP4};
use crate::netns::{Node, Topology};
use crate::paths::bin;
use crate::rtsp::RtspConn;
use anyhow::{bail, Result};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

pub const LINK_PORT: u16 = 7400;
pub const RTSP_PORT: u16 = 8554;

/// Process names used in logs.
pub const ENCODER: &str = "encoder";
pub const PROTOCOL: &str = "protocol";
pub const MONO: &str = "mono";

/// Link transport between the units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTransport {
    Tcp,
    Uring,
}

impl LinkTransport {
    pub fn flag(self) -> &'static str {
        match self {
            LinkTransport::Tcp => "tcp",
            LinkTransport::Uring => "uring",
        }
    }
}

/// How the server is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Encoder unit in the encoder ns, protocol unit in the protocol ns.
    Split(LinkTransport),
    /// `divisor-mono` in the protocol ns.
    Mono,
}

/// Extra command-line arguments for the server processes (live channels, a config file,
/// the HTTP port...). The encoder's arguments go to `divisor-mono` too, and so do the
/// protocol unit's, so one set of options serves both kinds.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub encoder_args: Vec<OsString>,
    pub protocol_args: Vec<OsString>,
}

/// A running server plus its topology; derefs to the [`Topology`].
pub struct Deployment {
    pub topo: Topology,
    pub kind: Kind,
    /// RTSP address as reached from the client ns.
    pub rtsp_addr: SocketAddr,
    /// Encoder's link address as reached from the protocol ns (split only).
    pub link_addr: SocketAddr,
    /// Key file both units were given (split only).
    pub key_file: PathBuf,
    /// The extra arguments it was started with.
    pub options: Options,
}

impl Deref for Deployment {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.topo
    }
}

impl Deployment {
    /// Encoder and protocol unit as two processes in two namespaces.
    pub fn split(test: &str, transport: LinkTransport) -> Result<Deployment> {
        Deployment::start(test, Kind::Split(transport))
    }

    /// `divisor-mono` in the protocol namespace.
    pub fn mono(test: &str) -> Result<Deployment> {
        Deployment::start(test, Kind::Mono)
    }

    /// Starts the server and waits until a DESCRIBE of a test asset answers 200.
    pub fn start(test: &str, kind: Kind) -> Result<Deployment> {
        Deployment::start_with(test, kind, Options::default())
    }

    /// [`Deployment::start`] with extra arguments for the server processes.
    pub fn start_with(test: &str, kind: Kind, options: Options) -> Result<Deployment> {
        let library = media::library()?.to_path_buf();
        let topo = Topology::new(test)?;
        let rtsp_addr = SocketAddr::from((topo.rtsp_ip, RTSP_PORT));
        let link_addr = SocketAddr::from((topo.enc_ip, LINK_PORT));
        let key_file = topo.log_dir.join("link.key");
        fs::write(
            &key_file,
            format!("divisor-test-key-{test}-0123456789abcdef\n"),
        )?;
        let rtsp_listen = format!("0.0.0.0:{RTSP_PORT}");
        match kind {
            Kind::Split(t) => {
                let proto = bin("divisor-protocol")?;
                spawn_encoder(&topo, ENCODER, &library, &key_file, t, &options)?;
                topo.wait_listening(Node::Encoder, LINK_PORT, Duration::from_secs(20))?;
                let mut args = os_args([
                    "--link-connect".as_ref(),
                    link_addr.to_string().as_ref(),
                    "--link-key-file".as_ref(),
                    key_file.as_os_str(),
                    "--rtsp-listen".as_ref(),
                    rtsp_listen.as_ref(),
                    "--link-transport".as_ref(),
                    t.flag().as_ref(),
                ]);
                args.extend(options.protocol_args.iter().cloned());
                topo.spawn_in(Node::Protocol, PROTOCOL, proto, args)?;
            }
            Kind::Mono => {
                let mut args = os_args([
                    "--library".as_ref(),
                    library.as_os_str(),
                    "--rtsp-listen".as_ref(),
                    rtsp_listen.as_ref(),
                ]);
                args.extend(options.encoder_args.iter().cloned());
                args.extend(options.protocol_args.iter().cloned());
                topo.spawn_in(Node::Protocol, MONO, bin("divisor-mono")?, args)?;
            }
        }
        let d = Deployment {
            topo,
            kind,
            rtsp_addr,
            link_addr,
            key_file,
            options,
        };
        d.wait_tcp(Node::Client, rtsp_addr, Duration::from_secs(20))?;
        d.wait_ready(Duration::from_secs(20))?;
        Ok(d)
    }

    /// Polls DESCRIBE of a test asset from the client ns until it answers 200 (the split
    /// server answers 503 until its link is up).
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = self.url(CLIP_MP4);
        let mut last = String::new();
        while Instant::now() < deadline {
            self.check_alive()?;
            match RtspConn::connect(self, Node::Client, self.rtsp_addr)
                .and_then(|mut c| c.request("DESCRIBE", &url, &[("Accept", "application/sdp")]))
            {
                Ok(r) if r.status == 200 => return Ok(()),
                // With `--rtsp-users-file` every DESCRIBE without credentials is
                // challenged: the server answers, and the test checks the link itself.
                Ok(r) if r.status == 401 => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status, r.reason),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "server not ready after {timeout:?}: DESCRIBE {url} -> {last}\n{}",
            self.logs_report(40)
        )
    }

    /// `rtsp://<ip>:<port>/vod/` as reached from the client ns.
    pub fn base_url(&self) -> String {
        format!("rtsp://{}/vod/", self.rtsp_addr)
    }

    /// URL of `asset` (a file name in the test library).
    pub fn url(&self, asset: &str) -> String {
        format!("{}{asset}", self.base_url())
    }

    /// Name of the process that owns the RTSP front-end.
    pub fn front_end(&self) -> &'static str {
        match self.kind {
            Kind::Split(_) => PROTOCOL,
            Kind::Mono => MONO,
        }
    }
}

impl Deployment {
    /// Start another encoder unit process, named `name`, exactly as the first one was
    /// started (e.g. after stopping it with `stop(ENCODER)`). Split deployments only.
    pub fn restart_encoder(&self, name: &str) -> Result<()> {
        let Kind::Split(t) = self.kind else {
            bail!(
                "restart_encoder: {:?} has no separate encoder unit",
                self.kind
            )
        };
        spawn_encoder(
            &self.topo,
            name,
            media::library()?,
            &self.key_file,
            t,
            &self.options,
        )?;
        self.topo
            .wait_listening(Node::Encoder, LINK_PORT, Duration::from_secs(20))
    }
}

fn spawn_encoder(
    topo: &Topology,
    name: &str,
    library: &std::path::Path,
    key_file: &std::path::Path,
    t: LinkTransport,
    options: &Options,
) -> Result<()> {
    let mut args = os_args([
        "--library".as_ref(),
        library.as_os_str(),
        "--link-listen".as_ref(),
        format!("0.0.0.0:{LINK_PORT}").as_ref(),
        "--link-key-file".as_ref(),
        key_file.as_os_str(),
        "--link-transport".as_ref(),
        t.flag().as_ref(),
    ]);
    args.extend(options.encoder_args.iter().cloned());
    topo.spawn_in(Node::Encoder, name, bin("divisor-encoder")?, args)
}

/// Owned copies of borrowed arguments (lets argument lists mix `&str` and paths).
pub fn os_args<const N: usize>(a: [&OsStr; N]) -> Vec<OsString> {
    a.iter().map(|s| s.to_os_string()).collect()
}
