//! Shared helpers for the end-to-end tests.
//!
//! The tests start Divisor's release binaries in network namespaces standing in for
//! separate machines ([`Topology`], [`Deployment`]) and point real clients at them
//! (ffprobe, ffmpeg, GStreamer, tshark, and a raw RTSP client in [`rtsp`]). They need root
//! (for `ip netns`) and the tools `scripts/install-deps.sh` installs. Every external command
//! runs with a timeout, and every process a test starts is stopped when its topology drops.
//!
//! Logs of every unit go to `target/test-logs/<test>/`; a failing test prints their tails.

pub mod clients;
pub mod cmd;
pub mod deploy;
pub mod media;
pub mod netns;
pub mod paths;
pub mod rtsp;
pub mod tshark;

pub use clients::{Capture, Decode, RtpTransport};
pub use cmd::{run, CmdOutput};
pub use deploy::{Deployment, Kind, LinkTransport};
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
