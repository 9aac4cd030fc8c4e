//! Long-lived threads inside a network namespace, pinned to a core: the load generator and
//! the receivers live in the client namespace, the probe in the protocol namespace.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so sockets the thread opens
//! belong to that namespace while the rest of the process stays in the root one.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::thread::{self, JoinHandle};

/// Enters namespace `ns` (a name under /run/netns) on the calling thread.
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: plain syscall on a valid fd; affects this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Pins the calling thread to `core`.
pub fn pin_to_core(core: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity(core {core}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Spawns thread `name` that enters `ns`, pins itself to `core` (if any) and runs `f`.
pub fn spawn_in_ns<T, F>(
    name: &str,
    ns: &str,
    core: Option<usize>,
    f: F,
) -> Result<JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = ns.to_string();
    Ok(thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            enter_netns(&ns)?;
            if let Some(c) = core {
                pin_to_core(c)?;
            }
            f()
        })?)
}
