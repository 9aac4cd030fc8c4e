//! Deploying reflectors: the controller's hands. The scale policy decides (in the
//! sans-IO core, `controller/core/scaling.rs`); a [`Deployer`] starts, stops and lists
//! the reflectors it runs.
//!
//! - [`local`]: reflectors as processes, each in its own network namespace on a bridge
//!   (a laptop, and the tests that need many nodes).
//! - [`libvirt`]: reflectors as libvirt domains (LXC application containers here;
//!   qemu/KVM guests in production), found again after a controller restart by the
//!   metadata every domain carries.
//!
//! Both give each reflector a network namespace of its own on the same bridge
//! ([`netns`]), and both build its command line the same way ([`ReflectorCommand`]), so
//! a reflector behaves the same whichever backend started it.
//!
//! Every call blocks (processes, the libvirt API); the controller's driver runs them on
//! tokio's blocking pool.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::role::Role;

pub mod libvirt;
pub mod local;
pub mod netns;
pub mod xml;

pub use netns::NetConfig;

/// What to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReflectorSpec {
    pub id: String,
    pub role: Role,
}

/// A reflector a deployer runs for this controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub id: String,
    pub role: Role,
    /// The controller that deployed it (its `--deploy-name`).
    pub controller: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// The process (or domain) is running; false for one that exited or was shut off.
    pub active: bool,
}

/// Why a deployer call failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{id} is not a reflector of controller {controller}: {why}")]
    NotOurs {
        id: String,
        controller: String,
        why: String,
    },
    #[error("{id} is already deployed")]
    Exists { id: String },
    #[error("{id} is not deployed")]
    Unknown { id: String },
    #[error("{id:?} is not a usable reflector id: {why}")]
    BadId { id: String, why: &'static str },
    #[error("no free address left in {subnet} (from host {first_host})")]
    NoAddress { subnet: String, first_host: u32 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("libvirt: {0}")]
    Libvirt(String),
    #[error("domain {name}: unreadable reflector metadata: {why}")]
    BadMetadata { name: String, why: String },
}

/// Starts, stops and lists the reflectors of one controller.
pub trait Deployer: Send + Sync {
    /// `local` or `libvirt`, for logs.
    fn backend(&self) -> &'static str;

    /// Start reflector `spec.id`. It joins the controller with HELLO by itself.
    fn start(&self, spec: &ReflectorSpec) -> Result<Running, DeployError>;

    /// Stop reflector `id` (SIGTERM first: it says BYE and moves its children) and
    /// remove everything its start created. Refuses one this controller did not deploy.
    fn stop(&self, id: &str) -> Result<(), DeployError>;

    /// The reflectors this controller deployed, running or not.
    fn list(&self) -> Result<Vec<Running>, DeployError>;

    /// Stop and remove every reflector this controller deployed (`--cleanup`).
    fn cleanup(&self) -> Result<usize, DeployError> {
        let all = self.list()?;
        let n = all.len();
        for r in all {
            self.stop(&r.id)?;
        }
        Ok(n)
    }
}

/// How every deployed reflector is started: the same program and flags whatever the
/// backend, with the listen addresses on the node's own bridge address.
#[derive(Clone, Debug)]
pub struct ReflectorCommand {
    /// The `divisor-reflector` program (absolute: containers see the host's files).
    pub binary: PathBuf,
    /// The controller's control address, as the nodes reach it (`--controller`).
    pub controller_addr: String,
    pub control_key_file: PathBuf,
    pub link_key_file: PathBuf,
    /// Ports on the node's address: links in (masters, intermediates), RTSP and HTTP
    /// (public reflectors serve viewers; every node serves `/metrics`).
    pub link_port: u16,
    pub rtsp_port: u16,
    pub http_port: u16,
    /// `--region` of every deployed node.
    pub region: String,
    /// More flags, given as they are (`--reflector-arg`).
    pub extra: Vec<String>,
}

impl ReflectorCommand {
    /// The command line (without the program) for `spec` at `ip`.
    pub fn args(&self, spec: &ReflectorSpec, ip: Ipv4Addr) -> Vec<String> {
        let mut a = vec![
            "--role".to_string(),
            spec.role.as_str().to_string(),
            "--id".to_string(),
            spec.id.clone(),
            "--controller".to_string(),
            self.controller_addr.clone(),
            "--control-key-file".to_string(),
            self.control_key_file.display().to_string(),
            "--link-key-file".to_string(),
            self.link_key_file.display().to_string(),
            "--http-listen".to_string(),
            format!("{ip}:{}", self.http_port),
        ];
        if spec.role == Role::Public {
            a.push("--rtsp-listen".to_string());
            a.push(format!("{ip}:{}", self.rtsp_port));
        } else {
            a.push("--link-listen".to_string());
            a.push(format!("{ip}:{}", self.link_port));
        }
        if !self.region.is_empty() {
            a.push("--region".to_string());
            a.push(self.region.clone());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// Ids become namespace, file and domain names: keep them to a safe alphabet.
pub fn check_id(id: &str) -> Result<(), DeployError> {
    let bad = |why| {
        Err(DeployError::BadId {
            id: id.to_string(),
            why,
        })
    };
    if id.is_empty() || id.len() > 48 {
        return bad("1 to 48 characters");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return bad("letters, digits, '-', '_' and '.' only");
    }
    if id.starts_with(['-', '.']) {
        return bad("must not start with '-' or '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> ReflectorCommand {
        ReflectorCommand {
            binary: "/usr/bin/divisor-reflector".into(),
            controller_addr: "10.0.0.1:7600".into(),
            control_key_file: "/etc/divisor/control.key".into(),
            link_key_file: "/etc/divisor/link.key".into(),
            link_port: 7500,
            rtsp_port: 8554,
            http_port: 7580,
            region: "eu".into(),
            extra: vec!["--max-clients".into(), "40".into()],
        }
    }

    #[test]
    fn a_public_serves_rtsp_and_a_relay_listens_for_links() {
        let ip = Ipv4Addr::new(10, 9, 0, 100);
        let p = cmd().args(
            &ReflectorSpec {
                id: "auto-public-1".into(),
                role: Role::Public,
            },
            ip,
        );
        let s = p.join(" ");
        assert!(s.contains("--role public --id auto-public-1 --controller 10.0.0.1:7600"));
        assert!(s.contains("--rtsp-listen 10.9.0.100:8554"));
        assert!(!s.contains("--link-listen"));
        assert!(s.ends_with("--region eu --max-clients 40"));
        let i = cmd().args(
            &ReflectorSpec {
                id: "auto-intermediate-2".into(),
                role: Role::Intermediate,
            },
            ip,
        );
        let s = i.join(" ");
        assert!(s.contains("--link-listen 10.9.0.100:7500"));
        assert!(!s.contains("--rtsp-listen"));
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("auto-public-12").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", "x;rm", &"x".repeat(49)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
