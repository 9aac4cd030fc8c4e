//! The `divisor-encoder` process, reached over a real TCP link.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::media;
use divisor_link::{LinkConfig, LinkListener, Message, Role, TransportKind};
use tokio::time::timeout;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn key_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("link.key");
    std::fs::write(&path, "test-link-key\n").unwrap();
    (dir, path)
}

fn cfg() -> LinkConfig {
    LinkConfig {
        key: b"test-link-key".to_vec(),
        role: Role::Protocol,
        transport: TransportKind::Tcp,
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn encoder(args: &[&str], key: &std::path::Path) -> Kill {
    let child = Command::new(env!("CARGO_BIN_EXE_divisor-encoder"))
        .arg("--library")
        .arg(&media().root)
        .arg("--link-key-file")
        .arg(key)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start divisor-encoder");
    Kill(child)
}

async fn open_and_play(link: &mut divisor_link::Link, channel: u32) {
    link.sender
        .send(Message::Open {
            channel,
            asset: "av.mp4".into(),
            rendition: String::new(),
        })
        .await
        .unwrap();
    let msg = timeout(Duration::from_secs(10), link.receiver.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(msg, Message::Announce { .. }), "{msg:?}");
    link.sender
        .send(Message::Credits { channel, frames: 4 })
        .await
        .unwrap();
    link.sender.send(Message::Resume { channel }).await.unwrap();
    for _ in 0..4 {
        let msg = timeout(Duration::from_secs(10), link.receiver.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(msg, Message::Frame(ref f) if f.channel == channel),
            "{msg:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_encoder_serves_several_links() {
    let (_d, key) = key_file();
    let addr = free_port();
    let _enc = encoder(&["--link-listen", &addr.to_string()], &key);
    let mut links = Vec::new();
    for _ in 0..2 {
        let mut attempt = 0;
        let link = loop {
            match divisor_link::connect(&cfg(), addr).await {
                Ok(l) => break l,
                Err(e) if attempt < 100 => {
                    attempt += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot reach the encoder: {e}"),
            }
        };
        links.push(link);
    }
    for (i, link) in links.iter_mut().enumerate() {
        open_and_play(link, i as u32 + 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_encoder_reconnects_after_the_link_drops() {
    let (_d, key) = key_file();
    let listener = LinkListener::bind(&cfg(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();
    let _enc = encoder(&["--link-connect", &addr], &key);
    let mut link = timeout(Duration::from_secs(20), listener.accept())
        .await
        .unwrap()
        .unwrap();
    open_and_play(&mut link, 1).await;
    drop(link);
    let mut link = timeout(Duration::from_secs(20), listener.accept())
        .await
        .unwrap()
        .unwrap();
    open_and_play(&mut link, 1).await;
}
