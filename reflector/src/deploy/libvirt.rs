//! The libvirt backend: each reflector a libvirt domain, through the `virt` crate.
//!
//! Here that is an LXC application container (`lxc:///system`): the container's init
//! is `/bin/sh -c 'exec >>LOG 2>&1; exec divisor-reflector ...'` on the host's root
//! filesystem, with its own network namespace on a bridge in libvirtd's namespace
//! (`<interface type='bridge'>`, address and route set by libvirt). In production the
//! same metadata and life cycle apply to qemu/KVM guests; see the README.
//!
//! Every domain carries a `<divisor:reflector>` metadata element (id, role, controller,
//! address; [`super::xml`]). That is how a restarted controller finds and adopts its
//! reflectors, and why it refuses to stop or replace a domain that is not its own.
//!
//! `test:///default` (libvirt's in-process test driver) takes the same calls with
//! `type='test'` domains, for unit tests without a daemon.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::xml::{
    domain_name, domain_xml, DomainKind, DomainNet, DomainSpec, Metadata, METADATA_URI,
};
use super::{check_id, DeployError, Deployer, NetConfig, ReflectorCommand, ReflectorSpec, Running};

/// How long a stopped reflector has to leave (BYE, children moved) before destroy.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The libvirt backend's settings.
#[derive(Clone, Debug)]
pub struct LibvirtConfig {
    /// `lxc:///system` here; `test:///default` in unit tests.
    pub uri: String,
    /// This controller's name, recorded in every domain it defines.
    pub controller: String,
    /// The bridge (in libvirtd's namespace) and subnet of the domains' network; `None`:
    /// the host's network (one reflector per host then, or distinct ports).
    pub net: Option<NetConfig>,
    pub cmd: ReflectorCommand,
    /// Where each reflector's log `ID.log` goes.
    pub log_dir: PathBuf,
    /// The domain's memory, also its cgroup's hard limit.
    pub memory_mib: u32,
}

/// A connection closed when dropped (`virt::Connect` does not close itself).
struct Conn(Connect);

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.0.close();
    }
}

/// Reflectors as libvirt domains.
pub struct LibvirtDeployer {
    cfg: LibvirtConfig,
    kind: DomainKind,
    conn: Mutex<Conn>,
}

fn lv(e: virt::error::Error) -> DeployError {
    DeployError::Libvirt(e.to_string())
}

impl LibvirtDeployer {
    /// Connect to `cfg.uri`.
    pub fn new(cfg: LibvirtConfig) -> Result<LibvirtDeployer, DeployError> {
        // libvirt prints every error to stderr by default; ours are returned and logged.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(&cfg.uri)).map_err(|e| {
            DeployError::Libvirt(format!(
                "cannot connect to {} ({e}); is libvirtd running? (scripts/start-libvirt.sh)",
                cfg.uri
            ))
        })?;
        let kind = if cfg.uri.starts_with("test:") {
            DomainKind::Test
        } else {
            DomainKind::Lxc
        };
        std::fs::create_dir_all(&cfg.log_dir).map_err(|source| DeployError::Io {
            what: format!("cannot create the log folder {}", cfg.log_dir.display()),
            source,
        })?;
        Ok(LibvirtDeployer {
            cfg,
            kind,
            conn: Mutex::new(Conn(conn)),
        })
    }

    /// Run `f` on the connection, reconnecting once if libvirtd went away meanwhile.
    fn with_conn<T>(
        &self,
        f: impl Fn(&Connect) -> Result<T, DeployError>,
    ) -> Result<T, DeployError> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if !c.0.is_alive().unwrap_or(false) {
            warn!(uri = %self.cfg.uri, "libvirt connection lost: reconnecting");
            *c = Conn(Connect::open(Some(&self.cfg.uri)).map_err(lv)?);
        }
        f(&c.0)
    }

    /// Our metadata on `dom`, if it has any.
    fn metadata(dom: &Domain) -> Option<Result<Metadata, DeployError>> {
        let xml = dom
            .get_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(METADATA_URI),
                0,
            )
            .ok()?;
        Some(
            Metadata::parse(&xml).map_err(|why| DeployError::BadMetadata {
                name: dom.get_name().unwrap_or_default(),
                why,
            }),
        )
    }

    /// Every domain with our metadata, whichever controller defined it.
    fn all(conn: &Connect) -> Result<Vec<(Domain, Metadata)>, DeployError> {
        let mut out = Vec::new();
        for dom in conn.list_all_domains(0).map_err(lv)? {
            match Self::metadata(&dom) {
                Some(Ok(m)) => out.push((dom, m)),
                Some(Err(e)) => warn!("{e}: ignored"),
                None => {}
            }
        }
        Ok(out)
    }

    fn not_ours(&self, id: &str, why: String) -> DeployError {
        DeployError::NotOurs {
            id: id.to_string(),
            controller: self.cfg.controller.clone(),
            why,
        }
    }

    /// The domain of `id`, checked to be this controller's.
    fn ours(&self, conn: &Connect, id: &str) -> Result<Option<(Domain, Metadata)>, DeployError> {
        let Ok(dom) = Domain::lookup_by_name(conn, &domain_name(id)) else {
            return Ok(None);
        };
        match Self::metadata(&dom) {
            None => Err(self.not_ours(id, "the domain has no divisor metadata".into())),
            Some(Err(e)) => Err(e),
            Some(Ok(m)) if m.controller != self.cfg.controller => {
                Err(self.not_ours(id, format!("controller {} defined it", m.controller)))
            }
            Some(Ok(m)) if m.id != id => {
                Err(self.not_ours(id, format!("its metadata names reflector {}", m.id)))
            }
            Some(Ok(m)) => Ok(Some((dom, m))),
        }
    }

    /// The container's init: a shell that sends its output to the log and becomes the
    /// reflector (so SIGTERM from `virDomainShutdown` reaches it).
    fn init_args(&self, spec: &ReflectorSpec, ip: Ipv4Addr) -> Vec<String> {
        let log = self.cfg.log_dir.join(format!("{}.log", spec.id));
        let mut line = format!(
            "exec >>{} 2>&1; exec {}",
            sh_quote(&log.display().to_string()),
            sh_quote(&self.cfg.cmd.binary.display().to_string())
        );
        for a in self.cfg.cmd.args(spec, ip) {
            line.push(' ');
            line.push_str(&sh_quote(&a));
        }
        vec!["-c".to_string(), line]
    }

    fn running(&self, dom: &Domain, m: &Metadata) -> Running {
        Running {
            id: m.id.clone(),
            role: m.role,
            controller: m.controller.clone(),
            ip: m.ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            active: dom.is_active().unwrap_or(false),
        }
    }

    fn remove(dom: &Domain) -> Result<(), DeployError> {
        if dom.is_active().unwrap_or(false) {
            dom.destroy().map_err(lv)?;
        }
        dom.undefine().map_err(lv)
    }
}

impl Deployer for LibvirtDeployer {
    fn backend(&self) -> &'static str {
        "libvirt"
    }

    fn start(&self, spec: &ReflectorSpec) -> Result<Running, DeployError> {
        check_id(&spec.id)?;
        self.with_conn(|conn| {
            if let Some((dom, _)) = self.ours(conn, &spec.id)? {
                if dom.is_active().unwrap_or(false) {
                    return Err(DeployError::Exists {
                        id: spec.id.clone(),
                    });
                }
                // Ours but shut off (it exited or crashed): define it afresh.
                dom.undefine().map_err(lv)?;
            }
            let ip = match &self.cfg.net {
                Some(net) => {
                    let used: Vec<Ipv4Addr> =
                        Self::all(conn)?.iter().filter_map(|(_, m)| m.ip).collect();
                    Some(net.allocate(&used)?)
                }
                None => None,
            };
            let meta = Metadata {
                id: spec.id.clone(),
                role: spec.role,
                controller: self.cfg.controller.clone(),
                ip,
            };
            let args = self.init_args(spec, ip.unwrap_or(Ipv4Addr::UNSPECIFIED));
            let xml = domain_xml(&DomainSpec {
                kind: self.kind,
                meta: &meta,
                memory_mib: self.cfg.memory_mib,
                init: std::path::Path::new("/bin/sh"),
                init_args: &args,
                net: match (&self.cfg.net, ip) {
                    (Some(n), Some(ip)) => Some(DomainNet {
                        bridge: &n.bridge,
                        ip,
                        prefix: n.subnet.prefix_len(),
                        gateway: n.gateway,
                    }),
                    _ => None,
                },
            });
            let dom = Domain::define_xml(conn, &xml).map_err(lv)?;
            if let Err(e) = dom.create() {
                let _ = dom.undefine();
                return Err(lv(e));
            }
            info!(node = %spec.id, role = %spec.role, domain = %domain_name(&spec.id), ip = ?ip, uri = %self.cfg.uri, "libvirt reflector started");
            Ok(self.running(&dom, &meta))
        })
    }

    fn stop(&self, id: &str) -> Result<(), DeployError> {
        check_id(id)?;
        self.with_conn(|conn| {
            let (dom, _) = self
                .ours(conn, id)?
                .ok_or_else(|| DeployError::Unknown { id: id.to_string() })?;
            if dom.is_active().unwrap_or(false) && self.kind == DomainKind::Lxc {
                // SIGTERM to the container's init, the reflector: it says BYE and its
                // children move first.
                if let Err(e) = dom.shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_SIGNAL) {
                    warn!(node = %id, "shutdown: {e}; destroying");
                }
                let t = Instant::now();
                while dom.is_active().unwrap_or(false) && t.elapsed() < STOP_GRACE {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Self::remove(&dom)?;
            info!(node = %id, domain = %domain_name(id), "libvirt reflector stopped and undefined");
            Ok(())
        })
    }

    fn list(&self) -> Result<Vec<Running>, DeployError> {
        self.with_conn(|conn| {
            Ok(Self::all(conn)?
                .iter()
                .filter(|(_, m)| m.controller == self.cfg.controller)
                .map(|(d, m)| self.running(d, m))
                .collect())
        })
    }
}

/// `s` as one word for `sh`.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::Role;

    fn cmd() -> ReflectorCommand {
        ReflectorCommand {
            binary: "/usr/bin/divisor-reflector".into(),
            controller_addr: "10.77.0.1:7600".into(),
            control_key_file: "/etc/divisor/control key".into(),
            link_key_file: "/etc/divisor/link.key".into(),
            link_port: 7500,
            rtsp_port: 8554,
            http_port: 7580,
            region: String::new(),
            extra: Vec::new(),
        }
    }

    fn deployer(controller: &str, dir: &std::path::Path) -> LibvirtDeployer {
        LibvirtDeployer::new(LibvirtConfig {
            uri: "test:///default".into(),
            controller: controller.into(),
            net: Some(NetConfig {
                bridge: "dvbr0".into(),
                bridge_netns: None,
                subnet: "10.77.0.0/24".parse().unwrap(),
                first_host: 100,
                gateway: None,
                ns_prefix: String::new(),
            }),
            cmd: cmd(),
            log_dir: dir.to_path_buf(),
            memory_mib: 256,
        })
        .expect("test:///default opens")
    }

    fn spec(id: &str, role: Role) -> ReflectorSpec {
        ReflectorSpec {
            id: id.into(),
            role,
        }
    }

    #[test]
    fn quoting_keeps_one_word() {
        assert_eq!(sh_quote("--id"), "--id");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    /// One test, because `test:///default` is one state per process shared by every
    /// connection: parallel tests would see each other's domains.
    #[test]
    fn adopts_after_a_restart_cleans_up_and_refuses_what_is_not_ours() {
        let dir = std::env::temp_dir().join(format!("divisor-libvirt-test-{}", std::process::id()));
        // Held open for the whole test: the test driver's state lives while a
        // connection does.
        let keep = Conn(Connect::open(Some("test:///default")).unwrap());

        let first = deployer("ctl-a", &dir);
        let p1 = first.start(&spec("auto-public-1", Role::Public)).unwrap();
        let i1 = first
            .start(&spec("auto-intermediate-2", Role::Intermediate))
            .unwrap();
        assert!(p1.active && i1.active);
        assert_eq!(p1.ip, Ipv4Addr::new(10, 77, 0, 100));
        assert_eq!(
            i1.ip,
            Ipv4Addr::new(10, 77, 0, 101),
            "addresses never collide"
        );
        assert!(matches!(
            first.start(&spec("auto-public-1", Role::Public)),
            Err(DeployError::Exists { .. })
        ));

        // Another controller's domain, and a domain nobody here defined.
        let other = deployer("ctl-b", &dir);
        other.start(&spec("b-public-1", Role::Public)).unwrap();
        Domain::define_xml(
            &keep.0,
            "<domain type='test'><name>divisor-stranger</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>",
        )
        .unwrap();

        // The controller restarts: a new deployer finds exactly its own two.
        drop(first);
        let again = deployer("ctl-a", &dir);
        let mut ids: Vec<(String, Role)> = again
            .list()
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.role))
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            vec![
                ("auto-intermediate-2".to_string(), Role::Intermediate),
                ("auto-public-1".to_string(), Role::Public),
            ]
        );

        // Names that are not ours are refused, and left alone.
        for (id, why) in [("b-public-1", "ctl-b"), ("stranger", "no divisor metadata")] {
            let e = again.stop(id).unwrap_err();
            assert!(matches!(e, DeployError::NotOurs { .. }), "{e}");
            assert!(e.to_string().contains(why), "{e}");
            let e = again.start(&spec(id, Role::Public)).unwrap_err();
            assert!(matches!(e, DeployError::NotOurs { .. }), "{e}");
        }
        assert!(matches!(
            again.stop("never-deployed"),
            Err(DeployError::Unknown { .. })
        ));

        // Cleanup removes ours only.
        assert_eq!(again.cleanup().unwrap(), 2);
        assert!(again.list().unwrap().is_empty());
        assert!(Domain::lookup_by_name(&keep.0, "divisor-auto-public-1").is_err());
        assert_eq!(other.list().unwrap().len(), 1);
        assert!(Domain::lookup_by_name(&keep.0, "divisor-stranger").is_ok());
        other.cleanup().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
