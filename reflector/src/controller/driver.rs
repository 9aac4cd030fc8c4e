//! The controller's tokio driver: control connections over TCP (length-prefixed, sealed
//! with the pre-shared key), a timer, and the [`Directory`] the front ends ask.
//!
//! The core sits behind one mutex, held for one call and the draining of its outputs;
//! nothing awaits under it. Each connection has a reader task and a writer task joined by
//! a bounded queue: a node that does not read its messages is disconnected (and repaired
//! around) rather than holding up the others. Each call into the core is timed, into the
//! decision-time histogram of `/metrics`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, warn};

use super::core::{ConnId, Controller, Output};
use super::front::{Directory, NoTarget, Target, TreeView};
use crate::control::{framing, Codec, ControlError};
use crate::deploy::{Deployer, ReflectorSpec};

/// Messages queued for one node before it counts as not reading.
const CONN_QUEUE: usize = 1024;

/// Wall-clock milliseconds since the Unix epoch: the controller's `now`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct ConnHandle {
    tx: mpsc::Sender<Bytes>,
    reader: AbortHandle,
}

struct Shared {
    core: Mutex<Controller>,
    /// One codec for every connection: one replay cache, so a message replayed on another
    /// connection is refused too.
    codec: Mutex<Codec>,
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
    next_conn: AtomicU64,
    timer: Notify,
    /// Starts and stops reflectors for the scale policy; `None`: the standby pool only.
    deployer: Option<Arc<dyn Deployer>>,
}

/// A running controller. Cheap to clone; it is the front ends' [`Directory`].
#[derive(Clone)]
pub struct ControllerHandle {
    shared: Arc<Shared>,
}

impl ControllerHandle {
    /// Start the core's timer. Needs a tokio runtime.
    pub fn start(core: Controller, codec: Codec) -> ControllerHandle {
        Self::start_with(core, codec, None)
    }

    /// [`ControllerHandle::start`] with a deployer. The reflectors it already runs for
    /// this controller (a restart) are adopted first; the caller lists them (blocking).
    pub fn start_with(
        mut core: Controller,
        codec: Codec,
        deployer: Option<(Arc<dyn Deployer>, Vec<crate::deploy::Running>)>,
    ) -> ControllerHandle {
        let deployer = deployer.map(|(d, running)| {
            for r in running {
                core.adopt(&r.id, r.role, now_ms());
            }
            d
        });
        let h = ControllerHandle {
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                codec: Mutex::new(codec),
                conns: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
                timer: Notify::new(),
                deployer,
            }),
        };
        let t = h.clone();
        tokio::spawn(async move { t.timer_loop().await });
        h
    }

    fn core(&self) -> MutexGuard<'_, Controller> {
        self.shared.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the core, time it as a `kind` decision, then carry out its outputs.
    fn with_core<R>(&self, kind: &'static str, f: impl FnOnce(&mut Controller) -> R) -> R {
        let r = {
            let mut core = self.core();
            let t = Instant::now();
            let r = f(&mut core);
            core.metrics_mut().decision(kind, t.elapsed().as_secs_f64());
            r
        };
        self.pump();
        r
    }

    fn pump(&self) {
        let outs: Vec<Output> = {
            let mut core = self.core();
            std::iter::from_fn(|| core.poll_output()).collect()
        };
        if outs.is_empty() {
            return;
        }
        let mut closed = Vec::new();
        {
            let codec = self.shared.codec.lock().unwrap_or_else(|e| e.into_inner());
            let mut conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
            for o in outs {
                match o {
                    Output::Send { conn, msg } => {
                        let Some(c) = conns.get(&conn) else { continue };
                        if c.tx.try_send(codec.seal(&msg)).is_err() {
                            warn!(
                                conn,
                                "node does not read its control messages: disconnecting"
                            );
                            if let Some(c) = conns.remove(&conn) {
                                c.reader.abort();
                                closed.push(conn);
                            }
                        }
                    }
                    Output::Close { conn, reason } => {
                        if let Some(c) = conns.remove(&conn) {
                            debug!(conn, "closing control connection: {reason}");
                            c.reader.abort();
                            closed.push(conn);
                        }
                    }
                    Output::Deploy { id, role, reason } => {
                        self.deploy(ReflectorSpec { id, role }, reason)
                    }
                    Output::Undeploy { id, reason } => self.undeploy(id, reason),
                }
            }
        }
        self.shared.timer.notify_one();
        for conn in closed {
            self.with_core("close", |c| c.closed(conn, now_ms()));
        }
    }

    /// Start a reflector on the blocking pool; a failure goes back to the core.
    fn deploy(&self, spec: ReflectorSpec, reason: String) {
        let Some(d) = self.shared.deployer.clone() else {
            warn!(node = %spec.id, "the core asked for a deploy, but no deployer is configured");
            let id = spec.id;
            self.with_core("deploy", |c| c.deploy_failed(&id, "no deployer"));
            return;
        };
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            info!(node = %spec.id, role = %spec.role, backend = d.backend(), reason, "deploying");
            match d.start(&spec) {
                Ok(r) => info!(node = %r.id, ip = %r.ip, "deployed; waiting for its HELLO"),
                Err(e) => {
                    warn!(node = %spec.id, "deploy failed: {e}");
                    let err = e.to_string();
                    me.with_core("deploy", |c| c.deploy_failed(&spec.id, &err));
                }
            }
        });
    }

    /// Stop and remove a reflector on the blocking pool.
    fn undeploy(&self, id: String, reason: String) {
        let Some(d) = self.shared.deployer.clone() else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            info!(node = %id, backend = d.backend(), reason, "undeploying");
            if let Err(e) = d.stop(&id) {
                warn!(node = %id, "undeploy failed: {e}");
            }
        });
    }

    /// Stop every reflector the deployer runs for this controller (`--cleanup`).
    pub async fn cleanup(&self) -> Result<usize, crate::deploy::DeployError> {
        let Some(d) = self.shared.deployer.clone() else {
            return Ok(0);
        };
        tokio::task::spawn_blocking(move || d.cleanup())
            .await
            .unwrap_or(Ok(0))
    }

    async fn timer_loop(&self) {
        loop {
            let due = self.core().poll_timeout();
            let now = now_ms();
            if now >= due {
                self.with_core("timer", |c| c.handle_timeout(now));
                continue;
            }
            let wait = Duration::from_millis((due - now).min(1000));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shared.timer.notified() => {}
            }
        }
    }

    /// Accept control connections on `listener` until it fails.
    pub async fn serve_control(&self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            self.add_conn(stream, peer);
        }
    }

    fn add_conn(&self, stream: TcpStream, peer: SocketAddr) {
        let conn = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let limits = self
            .shared
            .codec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .limits()
            .clone();
        let (rd, wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(CONN_QUEUE);
        let mut sink = FramedWrite::new(wr, framing(&limits));
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if sink.send(b).await.is_err() {
                    break;
                }
            }
        });
        let me = self.clone();
        // The reader starts once the connection is registered, so its end always finds it.
        let (go, started) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(async move {
            if started.await.is_err() {
                return;
            }
            let mut frames = FramedRead::new(rd, framing(&limits));
            while let Some(frame) = frames.next().await {
                let now = now_ms();
                match frame {
                    Ok(payload) => {
                        let opened = me
                            .shared
                            .codec
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .open(&payload, now);
                        match opened {
                            Ok(msg) => {
                                let kind = msg.body.type_name();
                                me.with_core(kind, |c| c.message(conn, msg, now));
                            }
                            Err(e) => me.with_core("invalid", |c| c.invalid(conn, &e, now)),
                        }
                    }
                    Err(e) => {
                        // A bad length prefix: the stream cannot be resynchronised.
                        let err = ControlError::TooLarge {
                            len: usize::MAX,
                            max: limits.max_message_bytes,
                        };
                        warn!(%peer, "control stream broken: {e}");
                        me.with_core("invalid", |c| c.invalid(conn, &err, now));
                        break;
                    }
                }
            }
            let known = me
                .shared
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&conn)
                .is_some();
            if known {
                me.with_core("close", |c| c.closed(conn, now_ms()));
            }
        });
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                conn,
                ConnHandle {
                    tx,
                    reader: reader.abort_handle(),
                },
            );
        info!(conn, %peer, "control connection");
        self.with_core("connect", |c| c.connected(conn));
        let _ = go.send(());
    }
}

impl Directory for ControllerHandle {
    fn redirect(
        &self,
        channel: &str,
        client: IpAddr,
        region: Option<&str>,
    ) -> Result<Target, NoTarget> {
        self.with_core("redirect", |c| {
            c.redirect(channel, client, region, now_ms())
        })
    }

    fn tree(&self) -> TreeView {
        self.core().tree_view(now_ms())
    }

    fn metrics_text(&self) -> String {
        self.core().metrics_text()
    }
}
