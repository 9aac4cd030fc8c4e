//! Shared helpers for the end-to-end tests.
//!
//! The tests start Divisor's release binaries in network namespaces standing in for
//! separate machines ([`Topology`], [`Deployment`]) and point real clients at them
//! (ffprobe, ffmpeg, GStreamer, tshark, and a raw RTSP client in [`rtsp`]). They need root
//! (for `ip netns`) and the tools `scripts/install-deps.sh` installs. Every external command
//! runs with a timeout, and every process a test starts is stopped when its topology drops.
//!
//! Logs of every unit go to `target/test-logs/<test>/`; a failing test prints their tails.

pub mod browser;
pub mod clients;
pub mod cmd;
pub mod control;
pub mod ctl_scale;
pub mod ctl_tree;
pub mod deploy;
pub mod lan;
pub mod media;
pub mod netns;
pub mod paths;
pub mod receiver;
pub mod rtsp;
pub mod tree;
pub mod tshark;

pub use clients::{Capture, Decode, RtpTransport};
pub use cmd::{run, CmdOutput};
pub use deploy::{Deployment, Kind, LinkTransport, Options};
pub use media::{asset, AssetInfo};
pub use netns::{Node, Topology};
pub use paths::bin;
pub use rtsp::RtspConn;

/// All three deployments the RTSP behaviour is checked on.
pub const ALL_KINDS: [Kind; 3] = [
    Kind::Split(LinkTransport::Tcp),
    Kind::Split(LinkTransport::Uring),
    Kind::Mono,
];

/// Short label of a deployment for test and log names.
pub fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Split(LinkTransport::Tcp) => "split-tcp",
        Kind::Split(LinkTransport::Uring) => "split-uring",
        Kind::Mono => "mono",
    }
}

/// Collects failed expectations so one run reports all of them, then panics at the end.
#[derive(Debug, Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// Records `msg` unless `ok`.
    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) -> bool {
        if !ok {
            let m = msg();
            eprintln!("CHECK FAILED: {m}");
            self.failures.push(m);
        }
        ok
    }

    /// Records an error result.
    pub fn ok<T>(&mut self, what: &str, r: anyhow::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.check(false, || format!("{what}: {e:#}"));
                None
            }
        }
    }

    /// Adds another collector's failures.
    pub fn merge(&mut self, other: Checks) {
        self.failures.extend(other.failures);
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Panics listing every failure, if any.
    pub fn finish(self) {
        if !self.failures.is_empty() {
            panic!(
                "{} check(s) failed:\n - {}",
                self.failures.len(),
                self.failures.join("\n - ")
            );
        }
    }
}
