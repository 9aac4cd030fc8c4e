//! Three network namespaces standing in for three machines:
//!
//! ```text
//!   [encoder ns] enc_ip --veth-- link_ip [protocol ns] rtsp_ip --veth-- client_ip [client ns]
//! ```
//!
//! The client namespace has no route to the encoder namespace: clients only reach the
//! protocol unit, as on real machines. Names carry the test process id and a counter so
//! parallel tests never collide; namespaces left behind by a killed run are swept.

use crate::cmd::{describe, kill_group, run, tail, CmdOutput};
use crate::paths::fresh_log_dir;
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// One of the three namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Encoder,
    Protocol,
    Client,
}

impl Node {
    fn suffix(self) -> &'static str {
        match self {
            Node::Encoder => "enc",
            Node::Protocol => "pro",
            Node::Client => "cli",
        }
    }
}

/// A process started with [`Topology::spawn_in`].
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Stopped on purpose by [`Topology::stop`]: not an early exit.
    stopped: bool,
}

/// Three namespaces joined by two veth pairs. Dropping it stops every process started in
/// it (SIGTERM, then SIGKILL) and deletes the namespaces; if the test is panicking, the
/// tail of every process log is printed first.
pub struct Topology {
    pub test: String,
    pub log_dir: PathBuf,
    pub enc_ns: String,
    pub proto_ns: String,
    pub client_ns: String,
    /// Encoder's address on the link veth.
    pub enc_ip: Ipv4Addr,
    /// Protocol unit's address on the link veth.
    pub link_ip: Ipv4Addr,
    /// Protocol unit's address facing clients.
    pub rtsp_ip: Ipv4Addr,
    /// Client's address.
    pub client_ip: Ipv4Addr,
    /// Client-side veth interface name (for packet capture in the client ns).
    pub client_if: String,
    /// Protocol-side veth interface name towards the encoder (capture in the protocol ns).
    pub proto_link_if: String,
    procs: Mutex<Vec<Proc>>,
}

impl Topology {
    /// Creates the namespaces and links for test `test` (also the log folder name).
    pub fn new(test: &str) -> Result<Topology> {
        SWEEP.call_once(sweep_stale);
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Interface names are limited to 15 bytes: "v" + pid (<= 7) + "x" + n + 2.
        let tag = format!("{pid}x{n}");
        // The subnets only need to be distinct inside one topology (every veth end lives in
        // a namespace of its own), but varying them makes captures easier to tell apart.
        let octet = (n % 250 + 1) as u8;
        let log_dir = fresh_log_dir(test)?;
        let mut t = Topology {
            test: test.to_string(),
            log_dir,
            enc_ns: String::new(),
            proto_ns: String::new(),
            client_ns: String::new(),
            enc_ip: Ipv4Addr::new(10, 201, octet, 1),
            link_ip: Ipv4Addr::new(10, 201, octet, 2),
            rtsp_ip: Ipv4Addr::new(10, 202, octet, 1),
            client_ip: Ipv4Addr::new(10, 202, octet, 2),
            client_if: format!("v{tag}cp"),
            proto_link_if: format!("v{tag}pe"),
            procs: Mutex::new(Vec::new()),
        };
        // Names are assigned one by one so Drop deletes exactly what was created.
        for node in [Node::Encoder, Node::Protocol, Node::Client] {
            let name = format!("dv{pid}_{n}_{}", node.suffix());
            ip(&["netns", "add", &name])?;
            match node {
                Node::Encoder => t.enc_ns = name.clone(),
                Node::Protocol => t.proto_ns = name.clone(),
                Node::Client => t.client_ns = name.clone(),
            }
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        t.veth(
            &format!("v{tag}ep"),
            &t.enc_ns.clone(),
            t.enc_ip,
            &t.proto_link_if.clone(),
            &t.proto_ns.clone(),
            t.link_ip,
        )?;
        t.veth(
            &format!("v{tag}pc"),
            &t.proto_ns.clone(),
            t.rtsp_ip,
            &t.client_if.clone(),
            &t.client_ns.clone(),
            t.client_ip,
        )?;
        // UDP GSO (on by default in the protocol unit) is segmented in software before
        // this veth, as in front of a NIC without UDP segmentation offload. Otherwise a
        // veth hands whole GSO super-packets to its peer (the receiving socket splits them),
        // and captures on the client veth see one frame per run instead of the packets.
        ip(&[
            "-n",
            &t.proto_ns.clone(),
            "link",
            "set",
            "dev",
            &format!("v{tag}pc"),
            "gso_max_segs",
            "1",
        ])?;
        Ok(t)
    }

    fn veth(
        &self,
        a: &str,
        ns_a: &str,
        ip_a: Ipv4Addr,
        b: &str,
        ns_b: &str,
        ip_b: Ipv4Addr,
    ) -> Result<()> {
        ip(&[
            "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b,
        ])?;
        for (ns, dev, addr) in [(ns_a, a, ip_a), (ns_b, b, ip_b)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// The namespace name of `node`.
    pub fn ns(&self, node: Node) -> &str {
        match node {
            Node::Encoder => &self.enc_ns,
            Node::Protocol => &self.proto_ns,
            Node::Client => &self.client_ns,
        }
    }

    /// A `Command` that runs `program` inside `node`'s namespace.
    pub fn command(&self, node: Node, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(node)]).arg(program);
        c
    }

    /// Starts a long-running process `name` in `node`; its stderr (where the units log)
    /// goes to `<log_dir>/<name>.log` and its stdout to `<log_dir>/<name>.stdout`. It is
    /// stopped when the topology is dropped.
    pub fn spawn_in<I, S>(
        &self,
        node: Node,
        name: &str,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log = self.log_path(name);
        let err = OpenOptions::new().create(true).append(true).open(&log)?;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stdout_path(name))?;
        let mut cmd = self.command(node, program);
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            )
            .env("RUST_BACKTRACE", "1")
            // Plain log files (tracing-subscriber honours NO_COLOR).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // If the test process dies (killed, aborted), take the unit with it. The signal is
        // tied to the spawning thread: spawn units from the thread that owns the topology.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let desc = describe(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{desc}`"))?;
        // ip netns exec execs the program, so the child pid is the program itself.
        let mut procs = self.procs.lock().unwrap();
        procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            stopped: false,
        });
        Ok(())
    }

    /// Where the stdout of process `name` goes.
    pub fn stdout_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.stdout"))
    }

    /// Everything process `name` wrote to stdout so far.
    pub fn stdout_of(&self, name: &str) -> String {
        fs::read_to_string(self.stdout_path(name)).unwrap_or_default()
    }

    /// Runs a command to completion in `node` with a timeout.
    pub fn run_in<I, S>(
        &self,
        node: Node,
        program: impl AsRef<OsStr>,
        args: I,
        timeout: Duration,
    ) -> Result<CmdOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(node, program);
        cmd.args(args);
        run(&mut cmd, timeout)
    }

    /// Runs `f` on a thread that has entered `node`'s network namespace: sockets it opens
    /// live in that namespace (and stay usable from any thread afterwards).
    pub fn in_ns<T: Send>(&self, node: Node, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(self.ns(node), f)
    }

    /// Connects a TCP socket from inside `node`.
    pub fn connect(&self, node: Node, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        Ok(self.in_ns(node, || TcpStream::connect_timeout(&addr, timeout))??)
    }

    /// Waits until a TCP connect from `node` to `addr` succeeds (then closes it).
    pub fn wait_tcp(&self, node: Node, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.connect(node, addr, Duration::from_millis(500)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "{addr} not reachable from {:?} within {timeout:?}: {e:#}\n{}",
                        node,
                        self.logs_report(30)
                    )
                }
                Err(_) => {}
            }
            self.check_alive()?;
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until something listens on TCP `port` inside `node`, without connecting to
    /// it (checked with `ss`, so the listener sees no stray connection).
    pub fn wait_listening(&self, node: Node, port: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let filter = format!("sport = :{port}");
        loop {
            let out = self.run_in(node, "ss", ["-Hltn", &filter], Duration::from_secs(5))?;
            if out.success() && !out.stdout.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "nothing listens on port {port} in {node:?} after {timeout:?}\n{}",
                    self.logs_report(30)
                );
            }
            self.check_alive()?;
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Error if any spawned process has exited, with its log tail.
    pub fn check_alive(&self) -> Result<()> {
        let mut procs = self.procs.lock().unwrap();
        for p in procs.iter_mut().filter(|p| !p.stopped) {
            if let Ok(Some(st)) = p.child.try_wait() {
                let log = fs::read_to_string(&p.log).unwrap_or_default();
                let out = fs::read_to_string(self.stdout_path(&p.name)).unwrap_or_default();
                bail!(
                    "process `{}` exited early with {st}; stderr tail:\n{}\nstdout tail:\n{}",
                    p.name,
                    tail(&log, 40),
                    tail(&out, 20)
                );
            }
        }
        Ok(())
    }

    /// Whether the process `name` is still running.
    pub fn is_running(&self, name: &str) -> bool {
        let mut procs = self.procs.lock().unwrap();
        procs
            .iter_mut()
            .find(|p| p.name == name)
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Stops the process `name` (SIGTERM, then SIGKILL after 3 s).
    pub fn stop(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap();
        if let Some(p) = procs.iter_mut().find(|p| p.name == name) {
            p.stopped = true;
            kill_group(&mut p.child, Duration::from_secs(3));
        }
    }

    /// Kills the process `name` with SIGKILL at once (a crash: no clean shutdown, no
    /// goodbye on its connections beyond what the kernel sends).
    pub fn kill(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap();
        if let Some(p) = procs.iter_mut().find(|p| p.name == name) {
            p.stopped = true;
            crate::cmd::signal_group(&p.child, libc::SIGKILL);
            let _ = p.child.wait();
        }
    }

    /// The log file of process (or capture) `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// The whole log of process `name` so far.
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// The last `n` lines of every process log, for failure messages.
    pub fn logs_report(&self, n: usize) -> String {
        let procs = self.procs.lock().unwrap();
        let mut s = String::new();
        for p in procs.iter() {
            let log = fs::read_to_string(&p.log).unwrap_or_default();
            s.push_str(&format!(
                "----- {} stderr ({}) last {n} lines -----\n{}\n",
                p.name,
                p.log.display(),
                tail(&log, n)
            ));
            let out = self.stdout_of(&p.name);
            if !out.trim().is_empty() {
                s.push_str(&format!(
                    "----- {} stdout last {n} lines -----\n{}\n",
                    p.name,
                    tail(&out, n)
                ));
            }
        }
        s
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "===== test {} failed; unit logs in {} =====\n{}",
                self.test,
                self.log_dir.display(),
                self.logs_report(40)
            );
        }
        let mut procs = self.procs.lock().unwrap();
        // SIGTERM everyone first so they shut down in parallel, then reap/kill each.
        for p in procs.iter() {
            unsafe { libc::kill(-(p.child.id() as libc::pid_t), libc::SIGTERM) };
        }
        for p in procs.iter_mut() {
            kill_group(&mut p.child, Duration::from_secs(3));
        }
        for ns in [&self.enc_ns, &self.proto_ns, &self.client_ns] {
            if !ns.is_empty() {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}

/// Runs `ip ARGS` (root namespace), erroring with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args), Duration::from_secs(10))?
        .check()
        .map(|_| ())
}

/// Runs `f` on a fresh thread that has joined the network namespace `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = Path::new("/run/netns").join(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    thread::scope(|s| {
        let h = s.spawn(|| {
            // setns(CLONE_NEWNET) only affects the calling thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!(
                    "setns({}): {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Deletes `dv<pid>_*` namespaces whose test process no longer exists.
fn sweep_stale() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("dv") else {
            continue;
        };
        let Some(pid) = rest.split('_').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            // Processes a killed test run left inside its own namespace.
            if let Ok(out) = run(
                Command::new("ip").args(["netns", "pids", &name]),
                Duration::from_secs(5),
            ) {
                for p in out.stdout.split_whitespace() {
                    if let Ok(p) = p.parse::<libc::pid_t>() {
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
            }
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
