//! A server's HTTP side and live channels as tests see them from the client namespace:
//! `curl` requests, `/status` and `/metrics`, and waiting for a channel to go live.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Deployment, Node, RtspConn};

/// `curl` from the client namespace: (status, body).
pub fn http(
    d: &Deployment,
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        "-X".into(),
        method.into(),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(ct) = content_type {
        args.extend(["-H".into(), format!("Content-Type: {ct}")]);
    }
    if let Some(b) = body {
        args.extend(["--data-binary".into(), b.into()]);
    }
    args.push(url.into());
    let out = d
        .run_in(Node::Client, "curl", &args, Duration::from_secs(15))?
        .check()?;
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .ok_or_else(|| anyhow::anyhow!("no status from curl: {}", out.stdout))?;
    Ok((code.trim().parse()?, body.to_string()))
}

/// `/status` as JSON.
pub fn status(d: &Deployment, base: &str) -> anyhow::Result<Value> {
    let (code, body) = http(d, "GET", &format!("{base}/status"), None, None)?;
    anyhow::ensure!(code == 200, "/status -> {code}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// One unlabelled sample of `/metrics`, e.g. `divisor_webrtc_remb_total`.
pub fn metric(d: &Deployment, base: &str, name: &str) -> anyhow::Result<f64> {
    let (code, body) = http(d, "GET", &format!("{base}/metrics"), None, None)?;
    anyhow::ensure!(code == 200, "/metrics -> {code}: {body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {name} in /metrics"))
}

/// Waits until every rendition of live `channel` answers an RTSP DESCRIBE with 200 (the
/// protocol unit knows a live channel once the encoder announced it).
pub fn wait_live(
    d: &Deployment,
    channel: &str,
    renditions: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for rendition in renditions {
        let url = format!("rtsp://{}/live/{channel}/{rendition}", d.rtsp_addr);
        loop {
            d.check_alive()?;
            let last = match RtspConn::connect(d, Node::Client, d.rtsp_addr)
                .and_then(|mut c| c.request("DESCRIBE", &url, &[("Accept", "application/sdp")]))
            {
                Ok(r) if r.status == 200 => break,
                Ok(r) => format!("{} {}", r.status, r.reason),
                Err(e) => format!("{e:#}"),
            };
            anyhow::ensure!(
                Instant::now() < deadline,
                "{url} not live after {timeout:?}: {last}"
            );
            thread::sleep(Duration::from_millis(300));
        }
    }
    Ok(())
}
