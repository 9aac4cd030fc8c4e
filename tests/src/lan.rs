//! N machines on one switched LAN, each in a network namespace of its own:
//!
//! ```text
//!   [node 0] eth0 --veth-- p0 ┐
//!   [node 1] eth0 --veth-- p1 ├ br0 [switch ns]
//!   [node 2] eth0 --veth-- p2 ┘
//! ```
//!
//! Node `i` (in the order given to [`Lan::new`]) is `10.X.Y.(i+1)/24` on its `eth0`. The
//! subnet `10.X.Y.0/24` differs for every `Lan` of the test process (`X` = 203 + (n/250)%50,
//! `Y` = n%250 for the process's `n`-th `Lan`), away from the 10.201/10.202 ranges of
//! [`Topology`](crate::Topology); the namespaces are isolated anyway, the distinct subnets
//! only make captures easier to tell apart.
//!
//! Namespace names are `dv<pid>_lan<n>_<i>_<node>`, so leftovers of a killed run are swept
//! (by this module and by `netns.rs`). [`Lan::cut`] makes a node fall silent as a dead
//! box or a pulled cable would: nothing in or out of its `eth0`, no RST, no ICMP.

use crate::cmd::{describe, kill_group, run, signal_group, tail, CmdOutput};
use crate::netns::in_netns;
use crate::paths::fresh_log_dir;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// The interface of every node (the veth towards the switch), inside the node's namespace.
pub const NODE_IF: &str = "eth0";

/// The nftables table [`Lan::cut`] installs in a node's namespace.
const CUT_TABLE: &str = "divisor_cut";

/// One machine of the LAN.
struct LanNode {
    name: String,
    ns: String,
    ip: Ipv4Addr,
    /// The switch-side end of the node's veth (a bridge port in the switch namespace).
    port: String,
}

/// A process started with [`Lan::spawn_in`].
struct Proc {
    name: String,
    node: String,
    child: Child,
    log: PathBuf,
    /// Its exit is expected ([`Lan::stop`], [`Lan::expect_exit`], a terminating
    /// [`Lan::signal`], [`Lan::wait_exit`]): [`Lan::check_alive`] ignores it.
    expect_exit: bool,
}

/// N namespaces on one bridge. Dropping it stops every process started in it (SIGTERM,
/// then SIGKILL) and deletes the namespaces; if the test is panicking, the tail of every
/// process log is printed first.
pub struct Lan {
    pub test: String,
    pub log_dir: PathBuf,
    /// The namespace holding the bridge `br0` and the switch ends `p<i>` of the veths.
    pub switch_ns: String,
    /// The network address of the LAN's /24.
    pub subnet: Ipv4Addr,
    nodes: Vec<LanNode>,
    procs: Mutex<Vec<Proc>>,
    /// Indexes of the nodes currently [`Lan::cut`].
    cut: Mutex<HashSet<usize>>,
}

impl Lan {
    /// Creates the switch namespace and one namespace per name in `nodes` for test `test`
    /// (also the log folder name: `target/test-logs/<test>/`).
    pub fn new(test: &str, nodes: &[&str]) -> Result<Lan> {
        SWEEP.call_once(sweep_stale);
        if nodes.is_empty() || nodes.len() > 254 {
            bail!("a Lan holds 1 to 254 nodes, not {}", nodes.len());
        }
        let mut seen = HashSet::new();
        for n in nodes {
            if n.is_empty() || !seen.insert(*n) {
                bail!("node names must be non-empty and distinct: {nodes:?}");
            }
        }
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let subnet = Ipv4Addr::new(10, (203 + (n / 250) % 50) as u8, (n % 250) as u8, 0);
        let log_dir = fresh_log_dir(test)?;
        let mut lan = Lan {
            test: test.to_string(),
            log_dir,
            switch_ns: String::new(),
            subnet,
            nodes: Vec::new(),
            procs: Mutex::new(Vec::new()),
            cut: Mutex::new(HashSet::new()),
        };
        // Namespaces are recorded as soon as they exist so Drop deletes exactly those.
        let sw = format!("dv{pid}_lan{n}_sw");
        ip(&["netns", "add", &sw])?;
        lan.switch_ns = sw.clone();
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        // A plain switch: no STP (ports forward at once), no IGMP snooping (multicast is
        // flooded to every port).
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, name) in nodes.iter().enumerate() {
            let ns = format!("dv{pid}_lan{n}_{i}_{}", sanitize(name));
            ip(&["netns", "add", &ns])?;
            let o = subnet.octets();
            let node = LanNode {
                name: name.to_string(),
                ns: ns.clone(),
                ip: Ipv4Addr::new(o[0], o[1], o[2], (i + 1) as u8),
                port: format!("p{i}"),
            };
            let (addr, port) = (node.ip, node.port.clone());
            lan.nodes.push(node);
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Created directly in the target namespaces, so the names only need to be
            // unique there.
            ip(&[
                "link", "add", NODE_IF, "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                NODE_IF,
            ])?;
            // GSO super-packets are segmented before they leave the node, as in front of
            // a NIC without segmentation offload; otherwise a veth hands whole
            // super-packets to its peer and captures see one frame per run (netns.rs).
            ip(&[
                "-n",
                &ns,
                "link",
                "set",
                "dev",
                NODE_IF,
                "gso_max_segs",
                "1",
            ])?;
            ip(&["-n", &ns, "link", "set", NODE_IF, "up"])?;
        }
        Ok(lan)
    }

    fn idx(&self, node: &str) -> usize {
        match self.nodes.iter().position(|n| n.name == node) {
            Some(i) => i,
            None => panic!(
                "no node `{node}` on this Lan (nodes: {:?})",
                self.node_names()
            ),
        }
    }

    fn node(&self, node: &str) -> &LanNode {
        &self.nodes[self.idx(node)]
    }

    /// The node names, in the order given to [`Lan::new`].
    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// The address of `node` (panics on an unknown node).
    pub fn ip(&self, node: &str) -> Ipv4Addr {
        self.node(node).ip
    }

    /// `ip(node):port`.
    pub fn addr(&self, node: &str, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip(node), port))
    }

    /// The namespace name of `node`.
    pub fn ns(&self, node: &str) -> &str {
        &self.node(node).ns
    }

    /// The switch-side interface of `node`'s veth (in [`Lan::switch_ns`]), for captures
    /// on the switch. Inside the node its interface is [`NODE_IF`].
    pub fn switch_port(&self, node: &str) -> &str {
        &self.node(node).port
    }

    /// A `Command` that runs `program` inside `node`'s namespace.
    pub fn command(&self, node: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(node)]).arg(program);
        c
    }

    /// Runs a command to completion in `node` with a timeout.
    pub fn run_in<I, S>(
        &self,
        node: &str,
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

    /// Starts a long-running process `name` in `node`; its stderr (where the units log)
    /// goes to `<log_dir>/<name>.log` and its stdout to `<log_dir>/<name>.stdout`. It runs
    /// in a process group of its own, dies with the test process (PDEATHSIG, tied to the
    /// spawning thread: spawn from the thread that owns the `Lan`), and is stopped when the
    /// `Lan` is dropped. A name whose process has exited may be spawned again (its logs
    /// are appended to); a name still running is an error.
    pub fn spawn_in<I, S>(
        &self,
        node: &str,
        name: &str,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut procs = self.procs.lock().unwrap();
        if let Some(pos) = procs.iter().position(|p| p.name == name) {
            if matches!(procs[pos].child.try_wait(), Ok(None)) {
                bail!("process `{name}` is already running");
            }
            procs.remove(pos);
        }
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
        procs.push(Proc {
            name: name.to_string(),
            node: node.to_string(),
            child,
            log,
            expect_exit: false,
        });
        Ok(())
    }

    /// Where the stderr of process `name` goes.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Where the stdout of process `name` goes.
    pub fn stdout_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.stdout"))
    }

    /// Everything process `name` wrote to stderr (its log) so far.
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Everything process `name` wrote to stdout so far.
    pub fn stdout_of(&self, name: &str) -> String {
        fs::read_to_string(self.stdout_path(name)).unwrap_or_default()
    }

    /// The last `n` lines of every process log, for failure messages.
    pub fn logs_report(&self, n: usize) -> String {
        let procs = self.procs.lock().unwrap();
        let mut s = String::new();
        for p in procs.iter() {
            let log = fs::read_to_string(&p.log).unwrap_or_default();
            s.push_str(&format!(
                "----- {} on {} stderr ({}) last {n} lines -----\n{}\n",
                p.name,
                p.node,
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

    /// Error if any spawned process whose exit is not expected has exited, with its log
    /// tail.
    pub fn check_alive(&self) -> Result<()> {
        let mut procs = self.procs.lock().unwrap();
        for p in procs.iter_mut().filter(|p| !p.expect_exit) {
            if let Ok(Some(st)) = p.child.try_wait() {
                let log = fs::read_to_string(&p.log).unwrap_or_default();
                let out = fs::read_to_string(self.stdout_path(&p.name)).unwrap_or_default();
                bail!(
                    "process `{}` on {} exited early with {st}; stderr tail:\n{}\n\
                     stdout tail:\n{}",
                    p.name,
                    p.node,
                    tail(&log, 40),
                    tail(&out, 20)
                );
            }
        }
        Ok(())
    }

    /// Marks process `name` as expected to exit: [`Lan::check_alive`] no longer reports
    /// it. (Respawning the name clears the mark.)
    pub fn expect_exit(&self, name: &str) {
        let mut procs = self.procs.lock().unwrap();
        if let Some(p) = procs.iter_mut().find(|p| p.name == name) {
            p.expect_exit = true;
        }
    }

    /// Whether the process `name` is still running.
    pub fn is_running(&self, name: &str) -> bool {
        let mut procs = self.procs.lock().unwrap();
        procs
            .iter_mut()
            .find(|p| p.name == name)
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Stops the process `name` (SIGTERM to its group, then SIGKILL after 3 s) and
    /// returns how it ended (`None` for an unknown name).
    pub fn stop(&self, name: &str) -> Option<ExitStatus> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs.iter_mut().find(|p| p.name == name)?;
        p.expect_exit = true;
        kill_group(&mut p.child, Duration::from_secs(3))
    }

    /// Sends `sig` (e.g. `libc::SIGKILL`, `SIGTERM`, `SIGHUP`) to the process group of
    /// `name` without waiting. SIGKILL, SIGTERM, SIGINT and SIGQUIT also mark the exit as
    /// expected ([`Lan::expect_exit`]); other signals do not.
    pub fn signal(&self, name: &str, sig: libc::c_int) -> Result<()> {
        let mut procs = self.procs.lock().unwrap();
        let Some(p) = procs.iter_mut().find(|p| p.name == name) else {
            bail!("no process `{name}`");
        };
        if matches!(p.child.try_wait(), Ok(Some(_))) {
            bail!("process `{name}` has already exited");
        }
        if matches!(
            sig,
            libc::SIGKILL | libc::SIGTERM | libc::SIGINT | libc::SIGQUIT
        ) {
            p.expect_exit = true;
        }
        signal_group(&p.child, sig);
        Ok(())
    }

    /// Waits up to `timeout` for process `name` to exit by itself and returns its status
    /// (which also marks the exit as expected). The process is left running on timeout.
    pub fn wait_exit(&self, name: &str, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut procs = self.procs.lock().unwrap();
                let Some(p) = procs.iter_mut().find(|p| p.name == name) else {
                    bail!("no process `{name}`");
                };
                match p.child.try_wait() {
                    Ok(Some(st)) => {
                        p.expect_exit = true;
                        return Ok(st);
                    }
                    Ok(None) => {}
                    Err(e) => bail!("waiting for `{name}`: {e}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "process `{name}` still running after {timeout:?}\n{}",
                    self.logs_report(30)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until something listens on TCP `port` inside `node`, without connecting to
    /// it (checked with `ss`, so the listener sees no stray connection).
    pub fn wait_listening(&self, node: &str, port: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let filter = format!("sport = :{port}");
        loop {
            let out = self.run_in(node, "ss", ["-Hltn", &filter], Duration::from_secs(5))?;
            if out.success() && !out.stdout.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "nothing listens on port {port} in {node} after {timeout:?}\n{}",
                    self.logs_report(30)
                );
            }
            self.check_alive()?;
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `f` on a thread that has entered `node`'s network namespace: sockets it opens
    /// live in that namespace (and stay usable from any thread afterwards).
    pub fn in_ns<T: Send>(&self, node: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(self.ns(node), f)
    }

    /// Connects a TCP socket from inside `node`. The error keeps its `io::Error` (refused
    /// vs timed out can be told apart with `downcast_ref::<std::io::Error>()`).
    pub fn connect(&self, from: &str, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        Ok(self.in_ns(from, || TcpStream::connect_timeout(&addr, timeout))??)
    }

    /// Waits until a TCP connect from `from` to `addr` succeeds (then closes it).
    pub fn wait_tcp(&self, from: &str, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.connect(from, addr, Duration::from_millis(500)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => bail!(
                    "{addr} not reachable from {from} within {timeout:?}: {e:#}\n{}",
                    self.logs_report(30)
                ),
                Err(_) => {}
            }
            self.check_alive()?;
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET url` with curl from `from`: (HTTP status, body). Connect timeout 5 s, whole
    /// request 10 s. HTTP error statuses are returned, not errors; failing to connect or
    /// get a response is an error.
    pub fn http_get(&self, from: &str, url: &str) -> Result<(u16, String)> {
        self.http_get_timeout(from, url, Duration::from_secs(5), Duration::from_secs(10))
    }

    /// GET `url` from `from` (2 s to connect, 3 s in all) and parse its JSON; any status
    /// but 200 is an error.
    pub fn get_json(&self, from: &str, url: &str) -> Result<serde_json::Value> {
        let (code, body) =
            self.http_get_timeout(from, url, Duration::from_secs(2), Duration::from_secs(3))?;
        if code != 200 {
            bail!("GET {url}: {code} {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("{url}: {body}"))
    }

    /// [`Lan::http_get`] with explicit connect and total timeouts.
    pub fn http_get_timeout(
        &self,
        from: &str,
        url: &str,
        connect: Duration,
        total: Duration,
    ) -> Result<(u16, String)> {
        let connect_s = format!("{:.3}", connect.as_secs_f64());
        let total_s = format!("{:.3}", total.as_secs_f64());
        let out = self.run_in(
            from,
            "curl",
            [
                "-sS",
                "--noproxy",
                "*",
                "--connect-timeout",
                &connect_s,
                "--max-time",
                &total_s,
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                url,
            ],
            total + Duration::from_secs(5),
        )?;
        if !out.success() {
            bail!("GET {url} from {from}: {}", out.failure_report());
        }
        let (body, code) = out
            .stdout
            .rsplit_once('\n')
            .context("curl printed no status code")?;
        let code: u16 = code
            .trim()
            .parse()
            .with_context(|| format!("curl status code {code:?}"))?;
        if code == 0 {
            bail!("GET {url} from {from}: no HTTP response");
        }
        Ok((code, body.to_string()))
    }

    /// Cuts `node` off the network, as a dead machine or a pulled cable looks to the
    /// others: an nftables `netdev` table in its namespace drops every frame in (ingress)
    /// and out (egress) of its [`NODE_IF`] — IP and ARP alike, no RST, no ICMP. Its
    /// loopback keeps working and its processes keep running; their sends succeed and
    /// vanish. Peers see silence (connects hang; once their ARP entry for the node
    /// expires, a few seconds on, they may get "no route to host", as on a real LAN).
    /// Captures on the node's interface still see incoming frames (taps run before the
    /// ingress hook) but not its own outgoing ones. Cutting a cut node does nothing.
    pub fn cut(&self, node: &str) -> Result<()> {
        let i = self.idx(node);
        let mut cut = self.cut.lock().unwrap();
        if cut.contains(&i) {
            return Ok(());
        }
        nft_available()?;
        let ruleset = format!(
            "table netdev {CUT_TABLE} {{\n\
             \tchain ingress {{\n\
             \t\ttype filter hook ingress device \"{NODE_IF}\" priority -500; policy drop;\n\
             \t}}\n\
             \tchain egress {{\n\
             \t\ttype filter hook egress device \"{NODE_IF}\" priority -500; policy drop;\n\
             \t}}\n\
             }}\n"
        );
        // `nft -f FILE` rather than `-f -`: cmd::run gives commands no stdin, and the file
        // stays in the log folder.
        let file = self
            .log_dir
            .join(format!("nft-cut-{}.rules", sanitize(node)));
        fs::write(&file, ruleset)?;
        self.nft(node, &[OsStr::new("-f"), file.as_os_str()])
            .with_context(|| format!("cutting {node} off"))?;
        cut.insert(i);
        Ok(())
    }

    /// Undoes [`Lan::cut`]: removes the table, frames flow again. Healing a node that is
    /// not cut does nothing.
    pub fn heal(&self, node: &str) -> Result<()> {
        let i = self.idx(node);
        let mut cut = self.cut.lock().unwrap();
        if !cut.contains(&i) {
            return Ok(());
        }
        let args = ["delete", "table", "netdev", CUT_TABLE].map(OsStr::new);
        self.nft(node, &args)
            .with_context(|| format!("healing {node}"))?;
        cut.remove(&i);
        Ok(())
    }

    /// Whether `node` is currently [`Lan::cut`].
    pub fn is_cut(&self, node: &str) -> bool {
        let i = self.idx(node);
        self.cut.lock().unwrap().contains(&i)
    }

    /// Runs `nft ARGS` in `node`'s namespace.
    fn nft(&self, node: &str, args: &[&OsStr]) -> Result<()> {
        self.run_in(node, "nft", args, Duration::from_secs(10))?
            .check()?;
        Ok(())
    }
}

impl Drop for Lan {
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
        for p in procs.iter_mut() {
            if matches!(p.child.try_wait(), Ok(None)) {
                signal_group(&p.child, libc::SIGTERM);
            }
        }
        for p in procs.iter_mut() {
            kill_group(&mut p.child, Duration::from_secs(3));
        }
        for n in &self.nodes {
            let _ = ip(&["netns", "del", &n.ns]);
        }
        if !self.switch_ns.is_empty() {
            let _ = ip(&["netns", "del", &self.switch_ns]);
        }
    }
}

/// `name` reduced to what reads well in a namespace or file name (at most 20 bytes).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(20)
        .collect()
}

/// Error unless the `nft` binary is installed.
fn nft_available() -> Result<()> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join("nft").is_file());
    if !found {
        bail!("`nft` not found: install nftables (scripts/install-deps.sh does)");
    }
    Ok(())
}

/// Runs `ip ARGS` (root namespace), erroring with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args), Duration::from_secs(10))?
        .check()
        .map(|_| ())
}

/// Deletes `dv<pid>_*` namespaces whose test process no longer exists (as `netns.rs`
/// does when the first `Topology` is made; a test may only make `Lan`s).
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
