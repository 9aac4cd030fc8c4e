//! A small async RTSP 1.0 client for the load generator: DESCRIBE, SETUP (RTP/AVP over
//! UDP with chosen client ports), PLAY, TEARDOWN. Messages are built and parsed with
//! `rtsp-types`; the SDP with the `sdp` crate.

use anyhow::{anyhow, bail, Context, Result};
use rtsp_types::{headers, Message, Method, Request, Response, Version};
use std::io::Cursor;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time allowed for one request/response exchange.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// One RTSP connection.
pub struct RtspClient {
    stream: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
    session: Option<String>,
}

/// What a DESCRIBE told us about the stream to set up.
#[derive(Debug, Clone)]
pub struct Described {
    /// Absolute URL to SETUP for the video track.
    pub setup_url: String,
    /// The video track's RTP clock rate.
    pub clock_rate: u32,
}

impl RtspClient {
    pub async fn connect(addr: SocketAddr) -> Result<RtspClient> {
        let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to RTSP {addr} timed out"))?
            .with_context(|| format!("connecting to RTSP {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(RtspClient {
            stream,
            buf: Vec::with_capacity(4096),
            cseq: 0,
            session: None,
        })
    }

    /// Sends one request and waits for its response; non-2xx is an error naming it.
    pub async fn request(
        &mut self,
        method: Method,
        url: &str,
        extra: &[(&str, &str)],
    ) -> Result<Response<Vec<u8>>> {
        self.cseq += 1;
        let uri = url::Url::parse(url).with_context(|| format!("bad RTSP URL {url}"))?;
        let mut b = Request::builder(method.clone(), Version::V1_0)
            .request_uri(uri)
            .header(headers::CSEQ, self.cseq.to_string())
            .header(headers::USER_AGENT, "divisor-bench");
        if let Some(s) = &self.session {
            b = b.header(headers::SESSION, s.clone());
        }
        for (k, v) in extra {
            let name = headers::HeaderName::try_from(*k).map_err(|_| anyhow!("bad header {k}"))?;
            b = b.header(name, *v);
        }
        let req = b.empty();
        let mut out = Vec::with_capacity(256);
        req.write(&mut out)
            .map_err(|e| anyhow!("writing request: {e}"))?;
        self.stream.write_all(&out).await?;
        let resp = tokio::time::timeout(REPLY_TIMEOUT, self.read_response())
            .await
            .map_err(|_| anyhow!("{method:?} {url}: no reply within {REPLY_TIMEOUT:?}"))??;
        let code: u16 = resp.status().into();
        if !(200..300).contains(&code) {
            bail!("{method:?} {url}: {code} {}", resp.reason_phrase());
        }
        if let Some(s) = resp.header(&headers::SESSION) {
            let id = s
                .as_str()
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            if !id.is_empty() {
                self.session = Some(id);
            }
        }
        Ok(resp)
    }

    async fn read_response(&mut self) -> Result<Response<Vec<u8>>> {
        loop {
            if !self.buf.is_empty() {
                match Message::<Vec<u8>>::parse(&self.buf) {
                    Ok((msg, used)) => {
                        self.buf.drain(..used);
                        match msg {
                            Message::Response(r) => return Ok(r),
                            // Server requests (e.g. GET_PARAMETER keep-alives) and stray
                            // data are skipped.
                            _ => continue,
                        }
                    }
                    Err(rtsp_types::ParseError::Incomplete(_)) => {}
                    Err(rtsp_types::ParseError::Error) => bail!("unparsable RTSP reply"),
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("RTSP connection closed by the server");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// DESCRIBE `url` and find the video track.
    pub async fn describe(&mut self, url: &str) -> Result<Described> {
        let resp = self
            .request(Method::Describe, url, &[("Accept", "application/sdp")])
            .await?;
        let base = resp
            .header(&headers::CONTENT_BASE)
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| format!("{}/", url.trim_end_matches('/')));
        parse_describe(&base, resp.body())
    }

    /// SETUP `url` for RTP on `client_port` (RTCP on the next port), then PLAY `play_url`.
    pub async fn setup_play(&mut self, url: &str, play_url: &str, client_port: u16) -> Result<()> {
        let transport = format!(
            "RTP/AVP;unicast;client_port={}-{}",
            client_port,
            client_port + 1
        );
        self.request(Method::Setup, url, &[("Transport", &transport)])
            .await?;
        self.request(Method::Play, play_url, &[("Range", "npt=0-")])
            .await?;
        Ok(())
    }

    /// Ends the session (best effort) and closes the connection.
    pub async fn teardown(mut self, url: &str) {
        if self.session.is_some() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                self.request(Method::Teardown, url, &[]),
            )
            .await;
        }
        let _ = self.stream.shutdown().await;
    }
}

/// The video track's SETUP URL and clock rate from an SDP, controls resolved against `base`.
pub fn parse_describe(base: &str, body: &[u8]) -> Result<Described> {
    let sd = sdp::SessionDescription::unmarshal(&mut Cursor::new(body))
        .map_err(|e| anyhow!("DESCRIBE returned an SDP we cannot parse: {e}"))?;
    let video = sd
        .media_descriptions
        .iter()
        .find(|m| m.media_name.media == "video")
        .context("the SDP has no video track")?;
    let control = video
        .attribute("control")
        .flatten()
        .context("the video track has no a=control")?;
    let setup_url = if control.starts_with("rtsp://") {
        control.to_string()
    } else {
        let base = if base.ends_with('/') {
            base.to_string()
        } else {
            format!("{base}/")
        };
        format!("{base}{control}")
    };
    let clock_rate = video
        .attribute("rtpmap")
        .flatten()
        .and_then(|r| r.split('/').nth(1))
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(90_000);
    Ok(Described {
        setup_url,
        clock_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_relative_and_absolute_controls() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=x\r\nt=0 0\r\na=control:*\r\n\
                   m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\na=control:trackID=1\r\n\
                   m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n";
        let d = parse_describe("rtsp://h:1/vod/a.mp4/", sdp.as_bytes()).unwrap();
        assert_eq!(d.setup_url, "rtsp://h:1/vod/a.mp4/trackID=0");
        assert_eq!(d.clock_rate, 90_000);
        let sdp2 = sdp.replace("trackID=0", "rtsp://h:1/x/stream=0");
        let d = parse_describe("rtsp://h:1/vod/a.mp4", sdp2.as_bytes()).unwrap();
        assert_eq!(d.setup_url, "rtsp://h:1/x/stream=0");
    }

    #[test]
    fn no_video_is_an_error() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=x\r\nt=0 0\r\nm=audio 0 RTP/AVP 97\r\n";
        assert!(parse_describe("rtsp://h/", sdp.as_bytes()).is_err());
    }
}
