//! Running external commands with a hard timeout, so no test can hang CI.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a finished (or killed) command produced.
#[derive(Debug)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub desc: String,
    /// `None` only if the process could not be reaped.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// The command ran past its timeout and was killed.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl CmdOutput {
    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// Exit code, if it exited normally.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Error unless [`CmdOutput::success`], with the stderr tail in the message.
    pub fn check(self) -> Result<Self> {
        if self.success() {
            return Ok(self);
        }
        bail!("{}", self.failure_report())
    }

    /// A multi-line description of how the command ended, with its output tails.
    pub fn failure_report(&self) -> String {
        let how = if self.timed_out {
            format!("timed out after {:.1?} and was killed", self.elapsed)
        } else {
            format!("ended with {:?} after {:.1?}", self.status, self.elapsed)
        };
        format!(
            "`{}` {how}\n--- stderr (tail) ---\n{}\n--- stdout (tail) ---\n{}",
            self.desc,
            tail(&self.stderr, 40),
            tail(&self.stdout, 15)
        )
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `program arg arg ...` for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Sends `SIGTERM` to the process group led by `child`, waits up to `grace` for it to exit,
/// then `SIGKILL`s the group. Reaps the child.
pub fn kill_group(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let pgid = child.id() as libc::pid_t;
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    child.wait().ok()
}

/// Sends `sig` to the process group led by `child`.
pub fn signal_group(child: &Child, sig: libc::c_int) {
    unsafe { libc::kill(-(child.id() as libc::pid_t), sig) };
}

/// Runs `cmd` (stdin null, stdout and stderr captured) in its own process group; after
/// `timeout` the group is killed and the output so far returned with `timed_out` set.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<CmdOutput> {
    let desc = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start `{desc}`"))?;
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(e) => bail!("waiting for `{desc}`: {e}"),
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            break kill_group(&mut child, Duration::from_secs(2));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(CmdOutput {
        desc,
        status,
        stdout,
        stderr,
        timed_out,
        elapsed: start.elapsed(),
    })
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}
