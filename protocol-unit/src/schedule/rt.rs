//! Real-time set-up and precise sleeping for the sender thread (Linux).

use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Pin the calling thread to `core` (if given), make it SCHED_FIFO and lock the process's
/// memory, each when permitted. Logs one line saying what took effect.
pub fn make_realtime(core: Option<usize>, priority: i32) {
    let mut refused = Vec::new();
    let mut granted = Vec::new();
    if let Some(core) = core {
        // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
        let r = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if r == 0 {
            granted.push(format!("pinned to core {core}"));
        } else {
            refused.push(format!(
                "pinning to core {core}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: valid param; pid 0 = the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        granted.push(format!("SCHED_FIFO priority {priority}"));
    } else {
        refused.push(format!("SCHED_FIFO: {}", std::io::Error::last_os_error()));
    }
    // Lock future allocations too only when the limit cannot make later allocations fail.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer.
    let unlimited = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0
        && lim.rlim_cur == libc::RLIM_INFINITY;
    let flags = if unlimited {
        libc::MCL_CURRENT | libc::MCL_FUTURE
    } else {
        libc::MCL_CURRENT
    };
    // SAFETY: plain system call.
    if unsafe { libc::mlockall(flags) } == 0 {
        granted.push(if unlimited {
            "memory locked (current and future)".to_string()
        } else {
            "memory locked (current)".to_string()
        });
    } else {
        refused.push(format!("mlockall: {}", std::io::Error::last_os_error()));
    }
    if refused.is_empty() {
        info!("real-time sender: {}", granted.join(", "));
    } else {
        warn!(
            "real-time sender runs without {} (granted: {}); run as root or with \
             CAP_SYS_NICE/CAP_IPC_LOCK for real-time guarantees",
            refused.join("; "),
            if granted.is_empty() {
                "nothing".to_string()
            } else {
                granted.join(", ")
            }
        );
    }
}

/// Sleep until `deadline` with `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`, waking
/// `spin` early and busy-waiting the rest. `Instant` is CLOCK_MONOTONIC on Linux; the
/// absolute time is derived from one paired reading of both.
pub fn sleep_until(deadline: Instant, spin: Duration) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    let wake = deadline.checked_sub(spin).unwrap_or(deadline);
    if wake > now {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let base = Instant::now();
        let d = wake.saturating_duration_since(base);
        let mut sec = ts.tv_sec + d.as_secs() as libc::time_t;
        let mut nsec = ts.tv_nsec + libc::c_long::from(d.subsec_nanos() as i32);
        if nsec >= 1_000_000_000 {
            sec += 1;
            nsec -= 1_000_000_000;
        }
        let target = libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        loop {
            // SAFETY: valid timespec; remaining time is unused with TIMER_ABSTIME.
            let r = unsafe {
                libc::clock_nanosleep(
                    libc::CLOCK_MONOTONIC,
                    libc::TIMER_ABSTIME,
                    &target,
                    std::ptr::null_mut(),
                )
            };
            if r != libc::EINTR {
                break;
            }
        }
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_deadline_not_before() {
        let d = Instant::now() + Duration::from_millis(5);
        sleep_until(d, Duration::from_micros(50));
        assert!(Instant::now() >= d);
    }
}
