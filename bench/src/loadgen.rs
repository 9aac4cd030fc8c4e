//! The load generator: N real RTSP sessions (RTP over UDP to chosen client ports) opened
//! from the client namespace, held open while a level is measured, closed between levels.
//!
//! It runs a single-threaded tokio runtime on one thread that entered the client namespace
//! (so every socket it opens lives there) and is pinned to the load core. Only set-up and
//! tear-down cost CPU: the media of all but the measuring receivers' sessions is dropped
//! by nftables at the client veth's ingress ([`crate::nft`]).

use crate::nsthread;
use crate::rtsp_client::{Described, RtspClient};
use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Sessions set up at the same time.
const CONCURRENCY: usize = 16;

/// What opening a batch of sessions gave.
#[derive(Debug, Clone)]
pub struct Opened {
    pub opened: usize,
    pub failed: usize,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    pub described: Described,
}

enum Cmd {
    Open {
        server: SocketAddr,
        url: String,
        ports: Vec<u16>,
        reply: std_mpsc::Sender<Result<Opened>>,
    },
    CloseAll {
        reply: std_mpsc::Sender<()>,
    },
}

/// Handle to the load generator thread.
pub struct LoadGen {
    tx: Option<mpsc::UnboundedSender<Cmd>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl LoadGen {
    /// Starts the generator in namespace `ns`, pinned to `core`.
    pub fn start(ns: &str, core: Option<usize>) -> Result<LoadGen> {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = nsthread::spawn_in_ns("loadgen", ns, core, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(rx));
            Ok(())
        })?;
        Ok(LoadGen {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Opens one session per port in `ports` (RTP to that port, RTCP to the next) on the
    /// stream `url` of the RTSP server at `server`, and keeps them playing.
    pub fn open(&self, server: SocketAddr, url: &str, ports: Vec<u16>) -> Result<Opened> {
        let (reply, rx) = std_mpsc::channel();
        self.send(Cmd::Open {
            server,
            url: url.to_string(),
            ports,
            reply,
        })?;
        rx.recv().context("load generator thread died")?
    }

    /// Tears every open session down.
    pub fn close_all(&self) -> Result<()> {
        let (reply, rx) = std_mpsc::channel();
        self.send(Cmd::CloseAll { reply })?;
        rx.recv_timeout(Duration::from_secs(60))
            .context("load generator did not finish closing sessions")
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|t| t.send(cmd).ok())
            .ok_or_else(|| anyhow!("load generator thread is gone"))
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut open: Vec<(RtspClient, String)> = Vec::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Open {
                server,
                url,
                ports,
                reply,
            } => {
                let r = open_many(server, &url, ports, &mut open).await;
                let _ = reply.send(r);
            }
            Cmd::CloseAll { reply } => {
                close_all(&mut open).await;
                let _ = reply.send(());
            }
        }
    }
    close_all(&mut open).await;
}

async fn open_many(
    server: SocketAddr,
    url: &str,
    ports: Vec<u16>,
    open: &mut Vec<(RtspClient, String)>,
) -> Result<Opened> {
    // One DESCRIBE per batch: every session plays the same stream, and the server's cost
    // of describing is not what is measured.
    let mut c = RtspClient::connect(server).await?;
    let described = c.describe(url).await?;
    drop(c);
    let sem = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for port in ports {
        let sem = sem.clone();
        let setup = described.setup_url.clone();
        let play = url.to_string();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let mut c = RtspClient::connect(server).await?;
            c.setup_play(&setup, &play, port).await?;
            Ok::<_, anyhow::Error>((c, play))
        });
    }
    let (mut opened, mut failed, mut first_error) = (0, 0, None);
    while let Some(r) = tasks.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(c) => {
                opened += 1;
                open.push(c);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Ok(Opened {
        opened,
        failed,
        first_error,
        described,
    })
}

async fn close_all(open: &mut Vec<(RtspClient, String)>) {
    let sem = Arc::new(Semaphore::new(CONCURRENCY * 4));
    let mut tasks = tokio::task::JoinSet::new();
    for (c, url) in open.drain(..) {
        let sem = sem.clone();
        tasks.spawn(async move {
            let _p = sem.acquire_owned().await;
            c.teardown(&url).await
        });
    }
    while tasks.join_next().await.is_some() {}
}
