//! A deployed reflector's network: a namespace of its own, joined to a bridge by a veth
//! pair, with one address of the bridge's subnet. This is how separate machines are
//! simulated honestly on one host, and both backends use it, so a reflector has the
//! same network whichever backend started it.
//!
//! The bridge is the administrator's (or a test's): the deployer only adds ports to it.
//! It may live in another namespace (`bridge_netns`), as a test's switch does.

use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;

use super::DeployError;

/// Where deployed reflectors are plugged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The bridge every node's veth joins.
    pub bridge: String,
    /// The namespace holding the bridge; `None`: the deployer's own.
    pub bridge_netns: Option<String>,
    /// The bridge's subnet; nodes get addresses in it.
    pub subnet: Ipv4Net,
    /// Host number of the first address handed out (the ones below are the LAN's).
    pub first_host: u32,
    /// Default route of the nodes, if the bridge's subnet is not all they need.
    pub gateway: Option<Ipv4Addr>,
    /// Namespaces are named `PREFIX` + the reflector's id.
    pub ns_prefix: String,
}

impl NetConfig {
    /// The namespace of reflector `id`.
    pub fn ns_name(&self, id: &str) -> String {
        format!("{}{id}", self.ns_prefix)
    }

    /// The lowest address from `first_host` that none of `used` has.
    pub fn allocate(&self, used: &[Ipv4Addr]) -> Result<Ipv4Addr, DeployError> {
        let base = u32::from(self.subnet.network());
        let last = u32::from(self.subnet.broadcast());
        (base + self.first_host.max(1)..last)
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| DeployError::NoAddress {
                subnet: self.subnet.to_string(),
                first_host: self.first_host,
            })
    }

    /// The bridge-side end of the node's veth: short (15 bytes at most) and unique on
    /// the bridge, from the address's host number.
    fn port_name(&self, ip: Ipv4Addr) -> String {
        format!(
            "dvd{}",
            u32::from(ip).wrapping_sub(u32::from(self.subnet.network()))
        )
    }

    /// Create `id`'s namespace at `ip`, plugged into the bridge. Returns its name. A
    /// leftover namespace of the same name (a crashed run) is replaced.
    pub fn create(&self, id: &str, ip: Ipv4Addr) -> Result<String, DeployError> {
        let ns = self.ns_name(id);
        let _ = ip_cmd(&["netns", "del", &ns]);
        ip_cmd(&["netns", "add", &ns])?;
        let made = self.wire(&ns, ip);
        if made.is_err() {
            let _ = ip_cmd(&["netns", "del", &ns]);
        }
        made.map(|()| ns)
    }

    fn wire(&self, ns: &str, ip: Ipv4Addr) -> Result<(), DeployError> {
        let port = self.port_name(ip);
        ip_cmd(&["-n", ns, "link", "set", "lo", "up"])?;
        let mut add = vec![
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &port,
        ];
        if let Some(b) = &self.bridge_netns {
            add.extend(["netns", b.as_str()]);
        }
        // A port left by a crashed run (its namespace gone) would block the name.
        let _ = self.in_bridge_ns(&["link", "del", &port]);
        ip_cmd(&add)?;
        self.in_bridge_ns(&["link", "set", &port, "master", &self.bridge])?;
        self.in_bridge_ns(&["link", "set", &port, "up"])?;
        let addr = format!("{ip}/{}", self.subnet.prefix_len());
        ip_cmd(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip_cmd(&["-n", ns, "link", "set", "eth0", "up"])?;
        if let Some(gw) = self.gateway {
            ip_cmd(&["-n", ns, "route", "add", "default", "via", &gw.to_string()])?;
        }
        Ok(())
    }

    fn in_bridge_ns(&self, args: &[&str]) -> Result<(), DeployError> {
        match &self.bridge_netns {
            Some(b) => {
                let mut a = vec!["-n", b.as_str()];
                a.extend_from_slice(args);
                ip_cmd(&a)
            }
            None => ip_cmd(args),
        }
    }

    /// Remove `id`'s namespace (and with it the veth pair). Gone already is fine.
    pub fn destroy(&self, id: &str) -> Result<(), DeployError> {
        let ns = self.ns_name(id);
        if !std::path::Path::new("/run/netns").join(&ns).exists() {
            return Ok(());
        }
        ip_cmd(&["netns", "del", &ns])
    }
}

/// Run `ip ARGS`; its stderr is the error.
fn ip_cmd(args: &[&str]) -> Result<(), DeployError> {
    let cmd = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| DeployError::Io {
            what: format!("cannot run `{cmd}`"),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DeployError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NetConfig {
        NetConfig {
            bridge: "br0".into(),
            bridge_netns: None,
            subnet: "10.9.0.0/24".parse().unwrap(),
            first_host: 100,
            gateway: None,
            ns_prefix: "dvd-".into(),
        }
    }

    #[test]
    fn addresses_are_handed_out_lowest_first_and_never_twice() {
        let c = cfg();
        let a = c.allocate(&[]).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 100));
        let b = c.allocate(&[a]).unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 101));
        // A freed address is reused.
        assert_eq!(c.allocate(&[b]).unwrap(), a);
        assert_eq!(c.port_name(b), "dvd101");
    }

    #[test]
    fn a_full_subnet_is_a_clear_error() {
        let c = NetConfig {
            subnet: "10.9.0.0/30".parse().unwrap(),
            first_host: 1,
            ..cfg()
        };
        let used = [Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2)];
        let e = c.allocate(&used).unwrap_err();
        assert!(e.to_string().contains("10.9.0.0/30"), "{e}");
    }
}
