//! The nftables rule that makes N clients cheap to receive: in the client namespace, a
//! `netdev` ingress hook on the client veth drops every UDP datagram to the load clients'
//! port range before the IP stack sees it. Only the measuring receivers' ports (below the
//! range) get through.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};

/// First client port of the load sessions (RTP on even ports, RTCP on the odd above).
pub const LOAD_PORT_BASE: u16 = 20_000;
/// Ports of measuring receivers start here (below the dropped range).
pub const MEASURE_PORT_BASE: u16 = 10_000;
/// Most load sessions the port range holds.
pub const MAX_LOAD_CLIENTS: usize = (65_534 - LOAD_PORT_BASE as usize) / 2;

/// RTP client port of load session `i`.
pub fn load_port(i: usize) -> u16 {
    LOAD_PORT_BASE + 2 * i as u16
}

/// RTP port of measuring receiver `i`.
pub fn measure_port(i: usize) -> u16 {
    MEASURE_PORT_BASE + 2 * i as u16
}

/// Installs the drop rule on interface `dev` in namespace `ns`.
pub fn install_drop(ns: &str, dev: &str) -> Result<()> {
    let ruleset = format!(
        "table netdev divisor_bench {{\n  chain ingress {{\n    type filter hook ingress device \"{dev}\" priority -500; policy accept;\n    udp dport {LOAD_PORT_BASE}-65535 counter drop\n  }}\n}}\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `nft`: install the Debian package `nftables`")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(ruleset.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft could not install the ingress drop rule in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Packets the drop rule has dropped so far (0 when unreadable).
pub fn dropped_packets(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "table",
            "netdev",
            "divisor_bench",
        ])
        .output();
    let Ok(out) = out else { return 0 };
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
