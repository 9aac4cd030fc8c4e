//! The local backend: each reflector a process in its own network namespace
//! ([`super::netns`]), for a laptop and for tests that need many nodes.
//!
//! What runs is recorded in a state folder, one `ID.json` per reflector (its role, the
//! controller that started it, address, pid) beside its log `ID.log`. The processes
//! are their own process groups, so they outlive a controller restart; the restarted
//! controller reads the folder and adopts those that still run.

use std::collections::HashMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{check_id, DeployError, Deployer, NetConfig, ReflectorCommand, ReflectorSpec, Running};
use crate::role::Role;

/// How long a stopped reflector has to leave (BYE, children moved) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Debug, Clone)]
struct Record {
    id: String,
    role: Role,
    controller: String,
    ip: Ipv4Addr,
    pid: u32,
    ns: String,
}

/// Reflectors as local processes.
pub struct LocalDeployer {
    /// This controller's name, recorded in every reflector it starts.
    controller: String,
    dir: PathBuf,
    net: NetConfig,
    cmd: ReflectorCommand,
    /// The processes this deployer spawned (reaped when they exit); adopted ones are
    /// watched by pid.
    children: Mutex<HashMap<String, Child>>,
}

impl LocalDeployer {
    pub fn new(
        controller: &str,
        dir: &Path,
        net: NetConfig,
        cmd: ReflectorCommand,
    ) -> Result<LocalDeployer, DeployError> {
        fs::create_dir_all(dir).map_err(|source| DeployError::Io {
            what: format!("cannot create the state folder {}", dir.display()),
            source,
        })?;
        Ok(LocalDeployer {
            controller: controller.to_string(),
            dir: dir.to_path_buf(),
            net,
            cmd,
            children: Mutex::new(HashMap::new()),
        })
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The log of reflector `id`.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// Every record in the folder, whoever started it (addresses must not collide).
    fn records(&self) -> Result<Vec<Record>, DeployError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| DeployError::Io {
            what: format!("cannot read {}", self.dir.display()),
            source,
        })?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|s| serde_json::from_str::<Record>(&s).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => warn!(file = %p.display(), "unreadable deploy record, ignored: {e}"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn record(&self, id: &str) -> Result<Option<Record>, DeployError> {
        let p = self.record_path(id);
        match fs::read_to_string(&p) {
            Ok(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| DeployError::BadMetadata {
                    name: id.to_string(),
                    why: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DeployError::Io {
                what: format!("cannot read {}", p.display()),
                source,
            }),
        }
    }

    fn alive(&self, r: &Record) -> bool {
        let mut kids = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = kids.get_mut(&r.id) {
            return match c.try_wait() {
                Ok(None) => true,
                _ => {
                    kids.remove(&r.id);
                    false
                }
            };
        }
        drop(kids);
        // Not our child (adopted): the pid must still be a reflector of that id, not a
        // recycled pid.
        fs::read(format!("/proc/{}/cmdline", r.pid)).is_ok_and(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"--id" && w[1] == r.id.as_bytes())
        })
    }

    fn check_ours(&self, r: &Record) -> Result<(), DeployError> {
        if r.controller == self.controller {
            Ok(())
        } else {
            Err(DeployError::NotOurs {
                id: r.id.clone(),
                controller: self.controller.clone(),
                why: format!("controller {} started it", r.controller),
            })
        }
    }

    fn running(&self, r: &Record) -> Running {
        Running {
            id: r.id.clone(),
            role: r.role,
            controller: r.controller.clone(),
            ip: r.ip,
            active: self.alive(r),
        }
    }

    /// Send `sig` to the reflector's process group.
    fn signal(r: &Record, sig: libc::c_int) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is
        // involved.
        unsafe {
            libc::kill(-(r.pid as libc::pid_t), sig);
        }
    }
}

impl Deployer for LocalDeployer {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn start(&self, spec: &ReflectorSpec) -> Result<Running, DeployError> {
        check_id(&spec.id)?;
        if let Some(old) = self.record(&spec.id)? {
            self.check_ours(&old)?;
            if self.alive(&old) {
                return Err(DeployError::Exists {
                    id: spec.id.clone(),
                });
            }
            // A leftover of a reflector that died: clear it.
            self.net.destroy(&old.id)?;
        }
        let used: Vec<Ipv4Addr> = self.records()?.iter().map(|r| r.ip).collect();
        let ip = self.net.allocate(&used)?;
        let ns = self.net.create(&spec.id, ip)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&spec.id))
            .map_err(|source| DeployError::Io {
                what: format!("cannot open the log of {}", spec.id),
                source,
            })?;
        let err_log = log.try_clone().map_err(|source| DeployError::Io {
            what: "cannot duplicate the log handle".into(),
            source,
        })?;
        let args = self.cmd.args(spec, ip);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&self.cmd.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            // Its own process group: it outlives a controller restart, and a stop
            // signals the whole group.
            .process_group(0)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(source) => {
                let _ = self.net.destroy(&spec.id);
                return Err(DeployError::Io {
                    what: format!("cannot start {}", self.cmd.binary.display()),
                    source,
                });
            }
        };
        let r = Record {
            id: spec.id.clone(),
            role: spec.role,
            controller: self.controller.clone(),
            ip,
            pid: child.id(),
            ns,
        };
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.id.clone(), child);
        let json = serde_json::to_string_pretty(&r).map_err(|e| DeployError::BadMetadata {
            name: r.id.clone(),
            why: e.to_string(),
        })?;
        fs::write(self.record_path(&r.id), json).map_err(|source| DeployError::Io {
            what: format!("cannot write the record of {}", r.id),
            source,
        })?;
        info!(node = %r.id, role = %r.role, ip = %ip, pid = r.pid, ns = %r.ns, "local reflector started");
        Ok(self.running(&r))
    }

    fn stop(&self, id: &str) -> Result<(), DeployError> {
        check_id(id)?;
        let r = self
            .record(id)?
            .ok_or_else(|| DeployError::Unknown { id: id.to_string() })?;
        self.check_ours(&r)?;
        if self.alive(&r) {
            Self::signal(&r, libc::SIGTERM);
            let t = Instant::now();
            while self.alive(&r) && t.elapsed() < STOP_GRACE {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.alive(&r) {
                warn!(node = %id, "did not leave within {} s: SIGKILL", STOP_GRACE.as_secs());
                Self::signal(&r, libc::SIGKILL);
                let t = Instant::now();
                while self.alive(&r) && t.elapsed() < Duration::from_secs(2) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.net.destroy(id)?;
        let _ = fs::remove_file(self.record_path(id));
        info!(node = %id, "local reflector stopped and removed");
        Ok(())
    }

    fn list(&self) -> Result<Vec<Running>, DeployError> {
        Ok(self
            .records()?
            .iter()
            .filter(|r| r.controller == self.controller)
            .map(|r| self.running(r))
            .collect())
    }
}
