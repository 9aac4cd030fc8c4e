//! Issue 6's measurements, each in one run:
//!
//! - `divisor-bench webrtc-capacity`: WebRTC viewers per core of our split server (protocol
//!   unit, WHEP) beside Janus's streaming plugin, same stream shape, same quality bar, same
//!   load client (`divisor-bench webrtc`, webrtc-rs) and the same core layout;
//! - `divisor-bench webrtc-join`: WHEP POST to first decoded frame in headless Chromium
//!   (`tests/browser/play.mjs`), median and p95, on a warm and on a cold channel.
//!
//! Every server lives in its own `divisor_tests::Topology` (encoder | protocol | client
//! namespaces). The server under test is pinned to the protocol core, its feed (our
//! encoder unit, or ffmpeg for Janus) and the load client to the other core. The load client
//! runs as a child process (`divisor-bench webrtc --json`) so its CPU time is its own: on a
//! 2-core machine it may saturate before the server does, and the output says so.

use std::ffi::OsString;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use divisor_tests::{Node, RtspConn, Topology};
use serde::Serialize;
use serde_json::Value;

use crate::cpu;
use crate::servers::{veth_gso_passthrough, Cores};
use crate::stats::percentile;

const LINK_PORT: u16 = 7400;
const RTSP_PORT: u16 = 8554;
const HTTP_PORT: u16 = 8080;
const JANUS_HTTP_PORT: u16 = 8088;
const JANUS_VIDEO_PORT: u16 = 15004;
const JANUS_AUDIO_PORT: u16 = 15002;
const JANUS_MOUNTPOINT: u64 = 1;

/// The WebRTC contract's `web` rendition alone (the `av1` one is not measured here).
const ENCODER_CONFIG: &str = r#"
[[rendition]]
name = "web"
codec = "h264"
profile = "baseline"
width = 640
height = 360
bitrate_kbps = 800
keyint = 50
audio = "opus"

[[channel]]
name = "cam"
source = "testsrc"
renditions = ["web"]
"#;

#[derive(clap::Args, Clone)]
pub struct CapacityArgs {
    /// Which servers to ramp, comma-separated: ours (split server, WHEP), janus.
    #[arg(long, value_delimiter = ',', default_value = "ours,janus")]
    servers: Vec<String>,
    /// First level of the doubling ramp.
    #[arg(long, default_value_t = 8)]
    start: usize,
    /// Last level: the ramp stops here even if it passes.
    #[arg(long, default_value_t = 400)]
    max: usize,
    /// Bisection steps between the last passing and the first failing level.
    #[arg(long, default_value_t = 2)]
    bisect: usize,
    /// Seconds after the last viewer's POST before CPU is measured (joins settle).
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Seconds of measurement per level (every viewer is receiving throughout).
    #[arg(long, default_value_t = 5.0)]
    window: f64,
    /// Pause between two viewers' joins, in milliseconds.
    #[arg(long, default_value_t = 10)]
    stagger_ms: u64,
    /// Quality bar: loss over all viewers below this percentage.
    #[arg(long, default_value_t = 0.5)]
    max_loss_pct: f64,
    /// Quality bar: every viewer's first keyframe within this many ms of its join request.
    #[arg(long, default_value_t = 5000.0)]
    max_first_keyframe_ms: f64,
    /// Our protocol unit's WebRTC UDP port (one port for all viewers); 0 = a port per viewer.
    #[arg(long, default_value_t = 28555)]
    webrtc_udp_port: u16,
    /// Also write the whole result (every level, every figure) as JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
pub struct JoinArgs {
    /// Browser runs on a warm channel (a webrtc-rs viewer already watching).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Browser runs on a cold channel (a fresh server each time, first viewer ever).
    #[arg(long, default_value_t = 3)]
    cold_runs: usize,
    /// Seconds each browser plays (the first frame comes well before).
    #[arg(long, default_value_t = 2)]
    seconds: u64,
}

/// One level of a ramp.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub viewers: usize,
    pub ok: usize,
    pub loss_pct: f64,
    pub first_keyframe_ms_max: Option<f64>,
    pub first_keyframe_ms_median: Option<f64>,
    /// CPU of the server process(es) under test, % of one core.
    pub server_cpu_pct: f64,
    /// CPU of the load client process, % of one core (it is pinned to one core).
    pub client_cpu_pct: f64,
    /// Busy % of every core over the window.
    pub cores_busy_pct: Vec<f64>,
    pub pass: bool,
    /// Why the level failed the bar.
    pub failure: Option<String>,
    /// The load client used (nearly) all of its core: the figure may be the client's limit.
    pub client_saturated: bool,
}

/// One server's ramp.
#[derive(Debug, Clone, Serialize)]
pub struct Ramp {
    pub server: String,
    pub pinning: String,
    pub levels: Vec<Level>,
    /// Largest level that kept the bar (0: none did).
    pub max_viewers: usize,
    /// The ramp stopped at --max while still passing.
    pub capped: bool,
    pub error: Option<String>,
}

/// A server under test: where the viewers go and which processes count as the server.
struct Target {
    name: &'static str,
    topo: Topology,
    /// `--url` for `divisor-bench webrtc`.
    url: String,
    /// `--peer` for `divisor-bench webrtc`.
    peer: &'static str,
    pinning: String,
}

/// Errors naming what to install when a tool the run needs is missing.
fn require(cmd: &str, arg: &str, what: &str) -> Result<()> {
    match Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) => bail!("`{cmd}` cannot be run ({e}): {what}"),
    }
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces): run with sudo");
    }
    Ok(())
}

fn write_config(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("encoder.toml");
    std::fs::write(&path, ENCODER_CONFIG)?;
    Ok(path)
}

/// Our split server: encoder unit (contract config, `web` only) on `cores.encoder`, protocol
/// unit with WHEP on `cores.protocol`. Waits until cam/web is live.
fn start_ours(cores: Cores, udp_port: u16, tag: &str) -> Result<Target> {
    let topo = Topology::new(&format!("bench-{tag}-ours"))?;
    veth_gso_passthrough(&topo)?;
    let key = topo.log_dir.join("link.key");
    std::fs::write(&key, "divisor-bench-link-key-0123456789abcdef\n")?;
    let config = write_config(&topo.log_dir)?;
    let library = topo.log_dir.join("library");
    std::fs::create_dir_all(&library)?;
    let enc: Vec<OsString> = vec![
        "-c".into(),
        cores.encoder.to_string().into(),
        divisor_tests::bin("divisor-encoder")?.into(),
        "--library".into(),
        library.into(),
        "--config".into(),
        config.into(),
        "--link-listen".into(),
        format!("0.0.0.0:{LINK_PORT}").into(),
        "--link-key-file".into(),
        key.clone().into(),
    ];
    topo.spawn_in(Node::Encoder, "encoder", "taskset", enc)?;
    topo.wait_listening(Node::Encoder, LINK_PORT, Duration::from_secs(20))?;
    let pro: Vec<OsString> = vec![
        "-c".into(),
        cores.protocol.to_string().into(),
        divisor_tests::bin("divisor-protocol")?.into(),
        "--link-connect".into(),
        format!("{}:{LINK_PORT}", topo.enc_ip).into(),
        "--link-key-file".into(),
        key.into(),
        "--rtsp-listen".into(),
        format!("0.0.0.0:{RTSP_PORT}").into(),
        "--http-listen".into(),
        format!("0.0.0.0:{HTTP_PORT}").into(),
        "--webrtc-public-ip".into(),
        topo.rtsp_ip.to_string().into(),
        "--webrtc-udp-port".into(),
        udp_port.to_string().into(),
    ];
    topo.spawn_in(Node::Protocol, "protocol", "taskset", pro)?;
    let http = SocketAddr::from((topo.rtsp_ip, HTTP_PORT));
    topo.wait_tcp(Node::Client, http, Duration::from_secs(20))?;
    Ok(Target {
        name: "divisor (split, WHEP)",
        url: format!("http://{http}/whep/cam/web"),
        peer: "whep",
        pinning: format!(
            "divisor-protocol on core {}, divisor-encoder on core {}",
            cores.protocol, cores.encoder
        ),
        topo,
    })
}

/// Waits until `rtsp://.../live/cam/web` describes (the channel is live).
fn wait_live(topo: &Topology, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from((topo.rtsp_ip, RTSP_PORT));
    let url = format!("rtsp://{addr}/live/cam/web");
    let deadline = Instant::now() + timeout;
    loop {
        topo.check_alive()?;
        let last = match RtspConn::connect(topo, Node::Client, addr)
            .and_then(|mut c| c.request("DESCRIBE", &url, &[("Accept", "application/sdp")]))
        {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => format!("{} {}", r.status, r.reason),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{url} not live after {timeout:?}: {last}\n{}",
                topo.logs_report(30)
            );
        }
        thread::sleep(Duration::from_millis(300));
    }
}

/// Janus's configuration: ICE-lite, host candidates on the client-facing address only,
/// the streaming plugin with one RTP mountpoint, the HTTP transport; nothing else loaded.
fn janus_config(dir: &Path, ip: std::net::Ipv4Addr) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let lib = "/usr/lib/x86_64-linux-gnu/janus";
    let plugins = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,\
        libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,\
        libjanus_textroom.so,libjanus_videocall.so,libjanus_videoroom.so,libjanus_voicemail.so";
    let transports = "libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,\
        libjanus_rabbitmq.so,libjanus_websockets.so";
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            r#"general: {{
	configs_folder = "{cfg}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 4
	admin_secret = "unused-admin"
}}
media: {{
	rtp_port_range = "20000-40000"
}}
nat: {{
	ice_lite = true
	ice_enforce_list = "{ip}"
}}
plugins: {{
	disable = "{plugins}"
}}
transports: {{
	disable = "{transports}"
}}
events: {{
	broadcast = false
}}
loggers: {{
	disable = "libjanus_jsonlog.so"
}}
"#,
            cfg = dir.display()
        ),
    )?;
    std::fs::write(
        dir.join("janus.plugin.streaming.jcfg"),
        format!(
            r#"general: {{
}}
cam: {{
	type = "rtp"
	id = {JANUS_MOUNTPOINT}
	description = "ffmpeg testsrc2, H.264 constrained baseline 800 kbit/s + Opus"
	audio = true
	video = true
	audioport = {JANUS_AUDIO_PORT}
	audiopt = 111
	audiocodec = "opus"
	videoport = {JANUS_VIDEO_PORT}
	videopt = 96
	videocodec = "h264"
	videofmtp = "profile-level-id=42e01f;packetization-mode=1"
}}
"#
        ),
    )?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            r#"general: {{
	json = "plain"
	base_path = "/janus"
	http = true
	port = {JANUS_HTTP_PORT}
	https = false
}}
admin: {{
	admin_http = false
}}
"#
        ),
    )?;
    Ok(())
}

/// Janus in the protocol namespace, pinned to `cores.protocol`, fed by ffmpeg in the
/// encoder namespace (pinned to `cores.encoder`, like our encoder unit): testsrc2 640x360
/// at 25 frames/s, libx264 constrained baseline at 800 kbit/s with a keyframe every 50
/// frames (the `web` rendition's settings) and a 440 Hz sine in libopus, as RTP.
fn start_janus(cores: Cores, tag: &str) -> Result<Target> {
    let topo = Topology::new(&format!("bench-{tag}-janus"))?;
    veth_gso_passthrough(&topo)?;
    let dir = topo.log_dir.join("janus-config");
    janus_config(&dir, topo.rtsp_ip)?;
    let cfg = dir.join("janus.jcfg");
    let args: Vec<OsString> = vec![
        "-c".into(),
        cores.protocol.to_string().into(),
        "janus".into(),
        "-C".into(),
        cfg.into(),
        "-F".into(),
        dir.clone().into(),
        "-o".into(),
    ];
    topo.spawn_in(Node::Protocol, "janus", "taskset", args)?;
    topo.wait_listening(Node::Protocol, JANUS_HTTP_PORT, Duration::from_secs(20))?;
    let dst = topo.link_ip;
    let feed: Vec<String> = [
        "-c",
        &cores.encoder.to_string(),
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-map",
        "0:v",
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-level",
        "3.1",
        "-pix_fmt",
        "yuv420p",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-b:v",
        "800k",
        "-maxrate",
        "800k",
        "-bufsize",
        "800k",
        "-g",
        "50",
        "-keyint_min",
        "50",
        "-sc_threshold",
        "0",
        "-f",
        "rtp",
        "-payload_type",
        "96",
        &format!("rtp://{dst}:{JANUS_VIDEO_PORT}?pkt_size=1200"),
        "-map",
        "1:a",
        "-c:a",
        "libopus",
        "-b:a",
        "64k",
        "-ac",
        "2",
        "-f",
        "rtp",
        "-payload_type",
        "111",
        &format!("rtp://{dst}:{JANUS_AUDIO_PORT}?pkt_size=1200"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    topo.spawn_in(Node::Encoder, "ffmpeg-feed", "taskset", feed)?;
    let http = SocketAddr::from((topo.rtsp_ip, JANUS_HTTP_PORT));
    topo.wait_tcp(Node::Client, http, Duration::from_secs(20))?;
    Ok(Target {
        name: "janus (streaming plugin)",
        url: format!("http://{http}/janus"),
        peer: "janus",
        pinning: format!(
            "janus on core {}, ffmpeg feed on core {}",
            cores.protocol, cores.encoder
        ),
        topo,
    })
}

/// Runs `n` viewers against `t` and judges the level.
fn run_level(t: &Target, n: usize, args: &CapacityArgs, cores: Cores) -> Result<Level> {
    let join_s = n as f64 * args.stagger_ms as f64 / 1000.0;
    // Every viewer receives for `seconds` after its own join: the first until about
    // join_s + settle + window + 1, so all are there during the window.
    let seconds = join_s + args.settle + args.window + 1.0;
    let exe = std::env::current_exe().context("finding divisor-bench itself")?;
    let out_path = t.topo.log_dir.join(format!("viewers-{n}.json"));
    let err_path = t.topo.log_dir.join(format!("viewers-{n}.log"));
    let mut cmd = t.topo.command(Node::Client, "taskset");
    cmd.arg("-c")
        .arg(cores.load.to_string())
        .arg(&exe)
        .args(["webrtc", "--json", "--video", "h264", "--peer", t.peer])
        .args(["--url", &t.url])
        .args(["--viewers", &n.to_string()])
        .args(["--seconds", &format!("{seconds:.1}")])
        .args(["--stagger-ms", &args.stagger_ms.to_string()])
        .args(["--mountpoint", &JANUS_MOUNTPOINT.to_string()])
        .args(["--join-timeout", "10"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    let mut child = cmd.spawn().context("starting the load client")?;
    // `ip netns exec` and `taskset` exec: the child's pid is the load client itself.
    let client_pid = child.id();
    let server_pids = cpu::pids_in_ns(&t.topo.proto_ns);
    thread::sleep(Duration::from_secs_f64(join_s + args.settle));
    let units = vec![
        ("server".to_string(), server_pids),
        ("client".to_string(), vec![client_pid]),
    ];
    let sample = cpu::sample(&units);
    thread::sleep(Duration::from_secs_f64(args.window));
    let usage = sample.usage();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds + 60.0);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the load client did not finish ({})", err_path.display());
        }
        thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let Some(line) = text.lines().rev().find(|l| l.starts_with('{')) else {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        bail!(
            "the load client ({status}) printed no report: {}",
            divisor_tests::cmd::tail(&err, 20)
        );
    };
    let r: Value = serde_json::from_str(line).context("load client report")?;
    let pct = |name: &str| {
        usage
            .units
            .iter()
            .find(|u| u.unit == name)
            .map_or(0.0, |u| u.cpu_pct)
    };
    Ok(judge(
        &r,
        n,
        args,
        pct("server"),
        pct("client"),
        usage.cores_busy_pct,
    ))
}

/// The quality bar over one level's report from `divisor-bench webrtc --json`.
fn judge(
    r: &Value,
    n: usize,
    args: &CapacityArgs,
    server_cpu_pct: f64,
    client_cpu_pct: f64,
    cores_busy_pct: Vec<f64>,
) -> Level {
    let ok = r["ok"].as_u64().unwrap_or(0) as usize;
    let loss_pct = r["loss_pct"].as_f64().unwrap_or(100.0);
    let viewers = r["per_viewer"].as_array().cloned().unwrap_or_default();
    let keys: Vec<f64> = viewers
        .iter()
        .filter_map(|v| v["first_keyframe_ms"].as_f64())
        .collect();
    let key_max = keys.iter().copied().reduce(f64::max);
    let mut failure = None;
    if ok < n {
        let first_err = viewers
            .iter()
            .find_map(|v| v["error"].as_str())
            .unwrap_or("no media");
        failure = Some(format!("{ok}/{n} viewers ok (first error: {first_err})"));
    } else if loss_pct >= args.max_loss_pct {
        failure = Some(format!("loss {loss_pct:.3}% >= {}%", args.max_loss_pct));
    } else if keys.len() < n || key_max.is_some_and(|k| k > args.max_first_keyframe_ms) {
        failure = Some(format!(
            "first keyframe: {}/{n} viewers got one, slowest {:.0} ms (bar {} ms)",
            keys.len(),
            key_max.unwrap_or(f64::NAN),
            args.max_first_keyframe_ms
        ));
    }
    Level {
        viewers: n,
        ok,
        loss_pct,
        first_keyframe_ms_max: key_max,
        first_keyframe_ms_median: percentile(&keys, 50.0),
        server_cpu_pct,
        client_cpu_pct,
        cores_busy_pct,
        pass: failure.is_none(),
        failure,
        client_saturated: client_cpu_pct >= 90.0,
    }
}

/// Doubling ramp from `--start` to `--max` until a level fails the bar.
fn ramp(t: &Target, args: &CapacityArgs, cores: Cores) -> Ramp {
    let mut out = Ramp {
        server: t.name.to_string(),
        pinning: t.pinning.clone(),
        levels: Vec::new(),
        max_viewers: 0,
        capped: false,
        error: None,
    };
    let mut n = args.start.max(1).min(args.max);
    // (last pass, first failure) once a level failed: then the ramp bisects.
    let mut failed_at: Option<usize> = None;
    let mut steps = 0;
    loop {
        eprintln!("  {}: {n} viewers ...", t.name);
        let level = match run_level(t, n, args, cores) {
            Ok(l) => l,
            Err(e) => {
                out.error = Some(format!("{e:#}"));
                break;
            }
        };
        eprintln!(
            "    {} ok, loss {:.3}%, server {:.0}% cpu, client {:.0}% cpu{}",
            level.ok,
            level.loss_pct,
            level.server_cpu_pct,
            level.client_cpu_pct,
            level
                .failure
                .as_deref()
                .map_or(String::new(), |f| format!(" -- FAIL: {f}"))
        );
        let pass = level.pass;
        out.levels.push(level);
        if pass {
            out.max_viewers = out.max_viewers.max(n);
        } else {
            failed_at = Some(failed_at.map_or(n, |f| f.min(n)));
        }
        if pass && failed_at.is_none() && n >= args.max {
            out.capped = true;
            break;
        }
        let next = match failed_at {
            None => (n * 2).min(args.max),
            Some(fail) => {
                let mid = (out.max_viewers + fail) / 2;
                if steps >= args.bisect || mid <= out.max_viewers || mid >= fail {
                    break;
                }
                steps += 1;
                mid
            }
        };
        // Let the previous level's sessions go before the next one starts.
        thread::sleep(Duration::from_secs(2));
        if let Err(e) = t.topo.check_alive() {
            out.error = Some(format!("{e:#}"));
            break;
        }
        n = next;
    }
    out
}

/// `divisor-bench webrtc-capacity`.
pub fn run_capacity(args: CapacityArgs) -> Result<()> {
    require_root()?;
    for s in &args.servers {
        if s != "ours" && s != "janus" {
            bail!("unknown server `{s}`: use ours, janus (comma-separated)");
        }
    }
    if args.max == 0 || args.start == 0 {
        bail!("--start and --max must be at least 1");
    }
    divisor_tests::bin("divisor-encoder")
        .and_then(|_| divisor_tests::bin("divisor-protocol"))
        .context("build them: cargo build --release -p divisor-encoder -p divisor-protocol")?;
    let janus = args.servers.iter().any(|s| s == "janus");
    if janus {
        require(
            "janus",
            "--version",
            "install Debian's janus (apt-get install janus, or scripts/install-deps.sh), \
             or leave it out with --servers ours",
        )?;
        require(
            "ffmpeg",
            "-version",
            "install Debian's ffmpeg (apt-get install ffmpeg); it feeds Janus",
        )?;
    }
    let cores = Cores::detect();
    let tag = chrono::Utc::now().format("%H%M%S").to_string();
    let started = Instant::now();
    let mut ramps = Vec::new();
    for s in &args.servers {
        eprintln!("starting {s} ...");
        let target = match s.as_str() {
            "ours" => start_ours(cores, args.webrtc_udp_port, &tag).and_then(|t| {
                wait_live(&t.topo, Duration::from_secs(60))?;
                Ok(t)
            }),
            _ => start_janus(cores, &tag).inspect(|_| {
                // The feed's first keyframe reaches the mountpoint within a GOP.
                thread::sleep(Duration::from_secs(3));
            }),
        };
        match target {
            Ok(t) => {
                let r = ramp(&t, &args, cores);
                eprintln!("  logs: {}", t.topo.log_dir.display());
                ramps.push(r);
            }
            Err(e) => ramps.push(Ramp {
                server: s.clone(),
                pinning: String::new(),
                levels: Vec::new(),
                max_viewers: 0,
                capped: false,
                error: Some(format!("{e:#}")),
            }),
        }
    }
    print_capacity(&args, cores, &ramps, started.elapsed());
    if let Some(p) = &args.json_out {
        let v = serde_json::json!({
            "cores": cores,
            "max_loss_pct": args.max_loss_pct,
            "max_first_keyframe_ms": args.max_first_keyframe_ms,
            "ramps": ramps,
        });
        std::fs::write(p, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

fn print_capacity(args: &CapacityArgs, cores: Cores, ramps: &[Ramp], took: Duration) {
    println!(
        "WebRTC viewers per core, one channel (H.264 constrained baseline 640x360 800 kbit/s + Opus)"
    );
    println!(
        "quality bar: every viewer connected and receiving, loss < {}%, every first keyframe \
         within {} ms; ramp {}..{} doubling, {} bisection steps, settle {} s + window {} s, stagger {} ms",
        args.max_loss_pct,
        args.max_first_keyframe_ms,
        args.start,
        args.max,
        args.bisect,
        args.settle,
        args.window,
        args.stagger_ms
    );
    println!(
        "machine: {} cores; server under test on core {}, its feed and the load client \
         (divisor-bench webrtc, webrtc-rs) on core {}",
        cores.count, cores.protocol, cores.load
    );
    println!();
    println!(
        "| server | viewers | ok | loss % | 1st key median / max ms | server CPU % | client CPU % | cores busy % | result |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|");
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for r in ramps {
        for l in &r.levels {
            let cores_busy: Vec<String> =
                l.cores_busy_pct.iter().map(|c| format!("{c:.0}")).collect();
            println!(
                "| {} | {} | {} | {:.3} | {} / {} | {:.0} | {:.0}{} | {} | {} |",
                r.server,
                l.viewers,
                l.ok,
                l.loss_pct,
                ms(l.first_keyframe_ms_median),
                ms(l.first_keyframe_ms_max),
                l.server_cpu_pct,
                l.client_cpu_pct,
                if l.client_saturated { " (sat.)" } else { "" },
                cores_busy.join(" / "),
                l.failure.as_deref().unwrap_or("pass")
            );
        }
        if let Some(e) = &r.error {
            println!("| {} | error: {} |", r.server, e.replace('\n', " "));
        }
    }
    println!();
    println!("| server | max viewers (one core) | server CPU % at max | limited by |");
    println!("|---|---:|---:|---|");
    for r in ramps {
        let at = r.levels.iter().find(|l| l.viewers == r.max_viewers);
        let last = r.levels.last();
        let limit = if r.error.is_some() {
            "error (see above)".to_string()
        } else if r.capped {
            format!("--max {} reached (a lower bound)", args.max)
        } else if last.is_some_and(|l| l.client_saturated) {
            "the load client (its core saturated): a lower bound".to_string()
        } else {
            "the quality bar".to_string()
        };
        println!(
            "| {} | {}{} | {} | {} |",
            r.server,
            r.max_viewers,
            if r.capped { "+" } else { "" },
            at.map_or("-".into(), |l| format!("{:.0}", l.server_cpu_pct)),
            limit
        );
    }
    let get = |name: &str| ramps.iter().find(|r| r.server.starts_with(name));
    if let (Some(o), Some(j)) = (get("divisor"), get("janus")) {
        if j.max_viewers > 0 {
            let ratio = o.max_viewers as f64 / j.max_viewers as f64;
            println!();
            println!(
                "ours / Janus: {} / {} = {ratio:.2}x (goal >= 1.5x){}",
                o.max_viewers,
                j.max_viewers,
                if o.capped || j.capped {
                    "; a ramp reached --max, so the ratio is not a capacity ratio"
                } else {
                    ""
                }
            );
            // At a level both passed, CPU per viewer is a figure the load client's limit
            // does not hide.
            let common = o
                .levels
                .iter()
                .filter(|l| l.pass)
                .filter_map(|l| {
                    j.levels
                        .iter()
                        .find(|k| k.pass && k.viewers == l.viewers)
                        .map(|k| (l, k))
                })
                .max_by_key(|(l, _)| l.viewers);
            if let Some((l, k)) = common {
                println!(
                    "at {} viewers (both pass): server CPU ours {:.1}% vs Janus {:.1}% \
                     ({:.3} vs {:.3} % of a core per viewer)",
                    l.viewers,
                    l.server_cpu_pct,
                    k.server_cpu_pct,
                    l.server_cpu_pct / l.viewers as f64,
                    k.server_cpu_pct / k.viewers as f64
                );
            }
        }
    }
    if ramps
        .iter()
        .flat_map(|r| &r.levels)
        .any(|l| l.client_saturated)
    {
        println!(
            "note: the load client used >= 90% of its core at some level (marked sat.): \
             on this machine the client, not the server, may be what limits the figures"
        );
    }
    println!("took {:.0} s", took.as_secs_f64());
}

/// Polls `/status` from the client namespace until the link is up.
fn wait_link_up(topo: &Topology, timeout: Duration) -> Result<()> {
    let url = format!("http://{}:{HTTP_PORT}/status", topo.rtsp_ip);
    let deadline = Instant::now() + timeout;
    loop {
        topo.check_alive()?;
        let out = topo.run_in(
            Node::Client,
            "curl",
            ["-sf", "--max-time", "2", &url],
            Duration::from_secs(5),
        )?;
        if let Ok(v) = serde_json::from_str::<Value>(&out.stdout) {
            if v["link"]["state"] == "up" {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("link not up after {timeout:?}\n{}", topo.logs_report(30));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// One browser run: WHEP POST to first frame, in ms.
fn browser_join(topo: &Topology, i: usize, what: &str, seconds: u64) -> Result<f64> {
    let url = format!("http://{}:{HTTP_PORT}/play/cam/web", topo.rtsp_ip);
    let shot = topo.log_dir.join(format!("join-{what}-{i}.png"));
    let p = divisor_tests::browser::play(topo, Node::Client, &url, seconds, &shot)?;
    p.post_to_first_frame_ms()
        .with_context(|| format!("no first frame in {seconds} s: {}", p.raw))
}

/// `divisor-bench webrtc-join`.
pub fn run_join(args: JoinArgs) -> Result<()> {
    require_root()?;
    require(
        "node",
        "--version",
        "install Debian's nodejs (apt-get install nodejs, or scripts/install-deps.sh)",
    )?;
    if !Path::new("/usr/bin/chromium").exists() {
        bail!("/usr/bin/chromium missing: install Debian's chromium (apt-get install chromium, or scripts/install-deps.sh)");
    }
    let modules = divisor_tests::browser::browser_dir().join("node_modules/playwright-core");
    if !modules.is_dir() {
        bail!(
            "{} missing: run scripts/install-deps.sh (npm ci in tests/browser)",
            modules.display()
        );
    }
    divisor_tests::bin("divisor-encoder")
        .and_then(|_| divisor_tests::bin("divisor-protocol"))
        .context("build them: cargo build --release -p divisor-encoder -p divisor-protocol")?;
    let cores = Cores::detect();
    let tag = chrono::Utc::now().format("%H%M%S").to_string();
    let mut cold = Vec::new();
    let mut errors = Vec::new();
    for i in 0..args.cold_runs {
        eprintln!("cold run {} of {} (fresh server)", i + 1, args.cold_runs);
        let t = start_ours(cores, 0, &format!("{tag}c{i}"))?;
        wait_link_up(&t.topo, Duration::from_secs(30))?;
        match browser_join(&t.topo, i, "cold", args.seconds + 3) {
            Ok(ms) => cold.push(ms),
            Err(e) => errors.push(format!("cold {i}: {e:#}")),
        }
    }
    let mut warm = Vec::new();
    if args.runs > 0 {
        let t = start_ours(cores, 0, &format!("{tag}w"))?;
        wait_live(&t.topo, Duration::from_secs(60))?;
        // One webrtc-rs viewer keeps the channel warm throughout.
        let exe = std::env::current_exe()?;
        let whep = t.url.clone();
        t.topo.spawn_in(
            Node::Client,
            "warm-viewer",
            exe,
            [
                "webrtc",
                "--url",
                &whep,
                "--viewers",
                "1",
                "--seconds",
                "3600",
                "--video",
                "h264",
            ],
        )?;
        thread::sleep(Duration::from_secs(4));
        for i in 0..args.runs {
            eprintln!("warm run {} of {}", i + 1, args.runs);
            match browser_join(&t.topo, i, "warm", args.seconds) {
                Ok(ms) => warm.push(ms),
                Err(e) => errors.push(format!("warm {i}: {e:#}")),
            }
        }
        eprintln!("logs: {}", t.topo.log_dir.display());
    }
    println!("Join time: WHEP POST to first decoded frame in headless Chromium (play.mjs, postToFirstFrameMs), /play/cam/web of the split server; goal median < 500 ms");
    println!();
    println!("| channel | runs | median ms | p95 ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, v) in [
        ("warm (1 viewer watching)", &warm),
        ("cold (fresh server)", &cold),
    ] {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.0}"));
        println!(
            "| {what} | {} | {} | {} | {} | {} |",
            v.len(),
            f(percentile(v, 50.0)),
            f(percentile(v, 95.0)),
            f(v.iter().copied().reduce(f64::min)),
            f(v.iter().copied().reduce(f64::max)),
        );
    }
    for e in &errors {
        println!("failed run: {}", e.replace('\n', " "));
    }
    Ok(())
}
