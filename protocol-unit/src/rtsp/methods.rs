//! What each RTSP method does. [`respond`] turns one request into one complete reply.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rtsp_types::headers::{
    self, HeaderName, NptRange, NptTime, Range, RtpLowerTransport, RtpProfile, Transport,
    Transports,
};
use rtsp_types::{Method, Request, Response, StatusCode, Version};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::auth::Verdict;
use super::error::RtspError;
use super::target::{self, LiveTarget};
use super::{serialize, Connection, InterleavedRoute, SERVER_NAME};
use crate::admission::Ticket;
use crate::fanout::{ClientStats, TrackDest};
use crate::live::session::{self as live_session, LiveSessionContext};
use crate::session::playout::Playout;
use crate::session::{driver, Command, SessionHandle};

/// How long a request may wait on the session or the encoder unit.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

const PUBLIC: &str =
    "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER";

/// A successful answer: extra headers and an optional body.
#[derive(Default)]
struct Reply {
    headers: Vec<(HeaderName, String)>,
    body: Option<(&'static str, Vec<u8>)>,
    /// Session to start sending once this reply is written.
    start: Option<Arc<SessionHandle>>,
}

impl Reply {
    fn header(mut self, name: HeaderName, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// The reply to write, and the session to start once it is written (after a PLAY).
pub struct Responded {
    pub bytes: Bytes,
    pub start: Option<Arc<SessionHandle>>,
}

/// Answer one request; never fails: errors become RTSP error replies.
pub async fn respond(conn: &Connection, req: &Request<Vec<u8>>) -> Responded {
    let cseq = req.header(&headers::CSEQ).map(|v| v.as_str().to_string());
    let url = req
        .request_uri()
        .map(|u| u.as_str().to_string())
        .unwrap_or_default();
    let result = match &cseq {
        None => Err(RtspError::bad_request("CSeq header missing")),
        Some(_) if req.version() != Version::V1_0 => {
            Err(RtspError::new(505, "only RTSP/1.0 is spoken here"))
        }
        Some(_) => match authorize(conn, req).await {
            Ok(()) => handle(conn, req).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(reply) => {
            let start = reply.start.clone();
            let mut builder = Response::builder(Version::V1_0, StatusCode::Ok)
                .header(headers::SERVER, SERVER_NAME);
            if let Some(cseq) = &cseq {
                builder = builder.header(headers::CSEQ, cseq.as_str());
            }
            for (name, value) in reply.headers {
                builder = builder.header(name, value);
            }
            let body = match reply.body {
                Some((content_type, body)) => {
                    builder = builder.header(headers::CONTENT_TYPE, content_type);
                    body
                }
                None => Vec::new(),
            };
            Responded {
                bytes: serialize(&builder.build(body)),
                start,
            }
        }
        Err(e) => {
            // A client's first, credential-less try is routine; failures are warned of
            // where they are found.
            if e.status == 401 {
                debug!(peer = %conn.peer, method = ?req.method(), %url, "RTSP {e}");
            } else {
                warn!(peer = %conn.peer, method = ?req.method(), %url, "RTSP {e}");
            }
            Responded {
                bytes: super::error_response(cseq.as_deref(), &e),
                start: None,
            }
        }
    }
}

/// With `--rtsp-users-file`, every method but OPTIONS needs Digest credentials of a user
/// who may read the path (see [`super::auth`]).
async fn authorize(conn: &Connection, req: &Request<Vec<u8>>) -> Result<(), RtspError> {
    let Some(auth) = &conn.ctx.auth else {
        return Ok(());
    };
    if req.method() == Method::Options {
        return Ok(());
    }
    let path = req.request_uri().map_or("/", |u| u.path());
    let method: &str = req.method().into();
    let header = req.header(&headers::AUTHORIZATION).map(|v| v.as_str());
    let now = SystemTime::now();
    match auth.check(method, path, header, now) {
        Verdict::Allowed { user } => {
            debug!(peer = %conn.peer, user, method, path, "authenticated");
            Ok(())
        }
        Verdict::Challenge => Err(RtspError::unauthorized(
            auth.challenge(now, false),
            "authentication required",
        )),
        Verdict::Stale => Err(RtspError::unauthorized(
            auth.challenge(now, true),
            "nonce expired",
        )),
        Verdict::Failed { why } => {
            conn.ctx.metrics.auth_failed("credentials");
            let wait = auth.failed(conn.peer.ip(), Instant::now());
            warn!(peer = %conn.peer, method, path, slowed_ms = wait.as_millis() as u64, "RTSP authentication failed: {why}");
            // Held back on this connection only: a guesser slows itself, nobody else.
            tokio::time::sleep(wait).await;
            Err(RtspError::unauthorized(
                auth.challenge(now, false),
                "wrong credentials",
            ))
        }
        Verdict::Forbidden { user } => {
            conn.ctx.metrics.auth_failed("forbidden");
            Err(RtspError::forbidden(format!(
                "user {user} may not read {path}"
            )))
        }
    }
}

async fn handle(conn: &Connection, req: &Request<Vec<u8>>) -> Result<Reply, RtspError> {
    let session = session_of(conn, req)?;
    if let Some(s) = &session {
        s.touch();
    }
    match req.method() {
        Method::Options => Ok(Reply::default().header(headers::PUBLIC, PUBLIC)),
        Method::Describe => describe(conn, req).await,
        Method::Setup => setup(conn, req, session).await,
        Method::Play => play(req, required(session)?).await,
        Method::Pause => pause(required(session)?).await,
        Method::Teardown => teardown(conn, required(session)?),
        // Keep-alive: any session it names was touched above.
        Method::GetParameter | Method::SetParameter => {
            Ok(with_session(Reply::default(), session.as_deref(), conn))
        }
        Method::Announce | Method::Record | Method::Redirect | Method::PlayNotify => {
            Err(RtspError::new(405, "this server only plays"))
        }
        Method::Extension(name) => Err(RtspError::new(
            501,
            format!("method {name} not implemented"),
        )),
    }
}

/// The session named by the `Session` header, if any; 454 if it names an unknown one.
fn session_of(
    conn: &Connection,
    req: &Request<Vec<u8>>,
) -> Result<Option<Arc<SessionHandle>>, RtspError> {
    let Some(value) = req.header(&headers::SESSION) else {
        return Ok(None);
    };
    let id = value.as_str().split(';').next().unwrap_or("").trim();
    conn.ctx
        .sessions
        .get(id)
        .map(Some)
        .ok_or_else(RtspError::session_not_found)
}

fn required(session: Option<Arc<SessionHandle>>) -> Result<Arc<SessionHandle>, RtspError> {
    session.ok_or_else(RtspError::session_not_found)
}

fn with_session(reply: Reply, session: Option<&SessionHandle>, conn: &Connection) -> Reply {
    match session {
        Some(s) => reply.header(
            headers::SESSION,
            format!("{};timeout={}", s.id, conn.ctx.sessions.timeout.as_secs()),
        ),
        None => reply,
    }
}

async fn describe(conn: &Connection, req: &Request<Vec<u8>>) -> Result<Reply, RtspError> {
    let target = target::parse(req.request_uri())?;
    let url = req
        .request_uri()
        .map(|u| u.as_str().to_string())
        .unwrap_or_default();
    let (sdp, base) = match &target.live {
        None => {
            let channel = conn
                .ctx
                .upstream
                .open(&target.asset, &target.rendition)
                .await?;
            let sdp = crate::sdp::describe_channel(
                &channel.tracks,
                channel.duration_ms,
                conn.local.ip(),
                &target.asset,
                &channel.keys,
            )
            .map_err(|e| RtspError::new(415, format!("cannot describe {}: {e}", target.asset)))?;
            drop(channel);
            with_query_controls(&url, sdp)
        }
        Some(live) => {
            // The viewer is dropped at the end: the subscription lingers for the SETUP.
            let viewer = conn
                .ctx
                .live
                .acquire(&live.channel, &live.rendition)
                .await?;
            let sdp = crate::sdp::describe_channel(
                &viewer.channel.tracks,
                None,
                conn.local.ip(),
                &target.asset,
                &viewer.channel.keys,
            )
            .map_err(|e| RtspError::new(415, format!("cannot describe {}: {e}", target.asset)))?;
            with_query_controls(&url, sdp)
        }
    };
    let sdp = if target::wants_srtp(req.request_uri()) {
        offer_srtp(conn, &sdp)?
    } else {
        sdp
    };
    Ok(Reply {
        body: Some(("application/sdp", sdp.into_bytes())),
        ..Default::default()
    }
    .header(headers::CONTENT_BASE, base))
}

/// Draw SRTP keys for every track of `sdp`, remember them on the connection for SETUP,
/// and announce them with MIKEY (as gst-rtsp-server does, with ROC 0).
fn offer_srtp(conn: &Connection, sdp: &str) -> Result<String, RtspError> {
    use crate::srtp::{mikey::MikeyMessage, SrtpKeys};
    let mut keys = conn.srtp_keys.lock().unwrap_or_else(|p| p.into_inner());
    keys.clear();
    let mut failure = None;
    let ntp = ntp_now();
    let sdp = crate::sdp::offer_srtp(sdp, |track| {
        let k = SrtpKeys::random();
        let msg = MikeyMessage::srtp_offer(&k, Vec::new(), rand::random(), ntp, rand::random());
        match msg.sdp_key_mgmt_value() {
            Ok(v) => {
                keys.insert(track, k);
                Some(v)
            }
            Err(e) => {
                failure = Some(e);
                None
            }
        }
    });
    match failure {
        Some(e) => Err(RtspError::new(500, format!("cannot write MIKEY: {e}"))),
        None => Ok(sdp),
    }
}

/// Now as a 64-bit NTP timestamp (MIKEY's timestamp payload).
fn ntp_now() -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The client's SRTP state for the track being set up over RTP/SAVP: our keys from the
/// DESCRIBE answer, and its keys from the `KeyMgmt` header (the entry for this URL).
fn srtp_session(
    conn: &Connection,
    req: &Request<Vec<u8>>,
    track: u8,
) -> Result<crate::fanout::SharedSrtp, RtspError> {
    use crate::srtp::{mikey, SrtpSession};
    let local = conn
        .srtp_keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&track)
        .cloned()
        .ok_or_else(|| {
            RtspError::unsupported_transport(
                "RTP/SAVP needs the keys of a DESCRIBE with ?srtp=1 on this connection",
            )
        })?;
    let mut session =
        SrtpSession::new(local).map_err(|e| RtspError::new(500, format!("SRTP: {e}")))?;
    let key_mgmt = HeaderName::from_static_str("KeyMgmt").ok();
    if let Some(value) = key_mgmt.as_ref().and_then(|h| req.header(h)) {
        let key_failure = |e: String| RtspError::new(463, format!("Key Management Failure: {e}"));
        let entries =
            mikey::parse_key_mgmt_header(value.as_str()).map_err(|e| key_failure(e.to_string()))?;
        let url = req.request_uri().map(|u| u.as_str().to_string());
        let entry = entries
            .iter()
            .find(|e| e.uri.is_some() && e.uri == url)
            .or_else(|| entries.first())
            .ok_or_else(|| key_failure("no MIKEY entry".into()))?;
        let remote = entry
            .message
            .srtp_keys()
            .map_err(|e| key_failure(e.to_string()))?;
        session
            .set_remote_keys(&remote)
            .map_err(|e| key_failure(e.to_string()))?;
    }
    Ok(std::sync::Arc::new(std::sync::Mutex::new(session)))
}

/// An SDP whose track URLs carry the request's query (a live tier, a VoD rendition): with a
/// query, track URLs are made absolute, since clients resolve relative control URLs against
/// the base differently and the query must survive into SETUP. Returns the SDP and the
/// Content-Base.
fn with_query_controls(url: &str, sdp: String) -> (String, String) {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let mut base = path.to_string();
    if !base.ends_with('/') {
        base.push('/');
    }
    let Some(query) = query else {
        return (sdp, base);
    };
    let suffix = format!("?{query}");
    let sdp = sdp
        .lines()
        .map(|l| match l.strip_prefix("a=control:") {
            Some(c) if c.starts_with("trackID=") => format!("a=control:{base}{c}{suffix}"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n";
    (sdp, format!("{base}{suffix}"))
}

/// The transport a client asked for, as we will serve it.
enum Wanted {
    /// `savp`: RTP/SAVP (SRTP) rather than RTP/AVP.
    Udp {
        rtp_port: u16,
        rtcp_port: u16,
        savp: bool,
    },
    Interleaved {
        rtp: u8,
        rtcp: u8,
        savp: bool,
    },
}

fn choose_transport(req: &Request<Vec<u8>>, track: u8) -> Result<Wanted, RtspError> {
    let transports = req
        .typed_header::<Transports>()
        .map_err(|_| RtspError::bad_request("malformed Transport header"))?
        .ok_or_else(|| RtspError::unsupported_transport("Transport header missing"))?;
    let mut impossible = None;
    for t in transports.iter() {
        let Transport::Rtp(rtp) = t else { continue };
        let savp = match rtp.profile {
            RtpProfile::Avp => false,
            RtpProfile::SAvp => true,
            _ => continue,
        };
        if rtp.params.multicast {
            continue;
        }
        match rtp.lower_transport {
            Some(RtpLowerTransport::Tcp) => {
                let (rtp_ch, rtcp_ch) = match rtp.params.interleaved {
                    Some((a, b)) => (a, b.unwrap_or(a.wrapping_add(1))),
                    None => (track * 2, track * 2 + 1),
                };
                return Ok(Wanted::Interleaved {
                    rtp: rtp_ch,
                    rtcp: rtcp_ch,
                    savp,
                });
            }
            None | Some(RtpLowerTransport::Udp) => {
                let Some((rtp_port, rtcp)) = rtp.params.client_port else {
                    continue;
                };
                // A pair we could never send to (port 0, or no room for RTCP past 65535)
                // is refused rather than guessed at. Non-adjacent or even reversed pairs
                // are deliverable: clients that bind two ephemeral sockets send them.
                let rtcp_port = match rtcp {
                    Some(p) => Some(p),
                    None => rtp_port.checked_add(1),
                };
                let Some(rtcp_port) = rtcp_port.filter(|&p| rtp_port != 0 && p != 0) else {
                    impossible = Some(match rtcp {
                        Some(p) => format!("client_port={rtp_port}-{p} is not a usable port pair"),
                        None => format!("client_port={rtp_port} leaves no port for RTCP"),
                    });
                    continue;
                };
                return Ok(Wanted::Udp {
                    rtp_port,
                    rtcp_port,
                    savp,
                });
            }
            _ => continue,
        }
    }
    if let Some(why) = impossible {
        return Err(RtspError::unsupported_transport(why));
    }
    Err(RtspError::unsupported_transport(
        "only RTP/AVP or RTP/SAVP unicast, over UDP (with client_port) or TCP \
         (interleaved), is served",
    ))
}

async fn setup(
    conn: &Connection,
    req: &Request<Vec<u8>>,
    session: Option<Arc<SessionHandle>>,
) -> Result<Reply, RtspError> {
    let target = target::parse(req.request_uri())?;
    let track = target.track.ok_or_else(|| {
        RtspError::new(
            459,
            "SETUP names the presentation; name one track (…/trackID=N)",
        )
    })?;
    let wanted = choose_transport(req, track)?;
    let srtp = match wanted {
        Wanted::Udp { savp: true, .. } | Wanted::Interleaved { savp: true, .. } => {
            Some(srtp_session(conn, req, track)?)
        }
        _ => None,
    };
    let session = match session {
        Some(s) if s.asset != target.asset => {
            return Err(RtspError::new(
                459,
                "a session plays one asset; SETUP a new session for another",
            ))
        }
        Some(s) => s,
        None => {
            // Admission before anything is allocated for the session (channel, driver,
            // fan-out client): a refused client costs nothing, and no one playing notices.
            let ticket = admit(conn)?;
            // The budget share travels with the session's driver and is released when
            // the driver ends, however the session ends (TEARDOWN, time-out, connection
            // loss, end of the channel).
            let session = match &target.live {
                None => create_session(conn, &target.asset, &target.rendition, ticket).await?,
                Some(live) => create_live_session(conn, &target.asset, live, ticket).await?,
            };
            conn.ctx.metrics.sessions_started.inc();
            session
        }
    };
    if !session.tracks.iter().any(|t| t.track == track) {
        return Err(RtspError::not_found(format!(
            "{} has no track {track}",
            target.asset
        )));
    }
    let (sink, transport) = match wanted {
        Wanted::Udp {
            rtp_port,
            rtcp_port,
            savp,
        } => {
            let server_rtp = conn.ctx.fan.rtp_port;
            let sink = TrackDest::Udp {
                rtp: (conn.peer.ip(), rtp_port).into(),
                rtcp: (conn.peer.ip(), rtcp_port).into(),
                srtp: srtp.clone(),
            };
            let profile = if savp { "RTP/SAVP" } else { "RTP/AVP" };
            let transport = format!(
                "{profile};unicast;client_port={rtp_port}-{rtcp_port};server_port={server_rtp}-{}",
                server_rtp + 1
            );
            (sink, transport)
        }
        Wanted::Interleaved { rtp, rtcp, savp } => {
            conn.interleaved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    rtcp,
                    InterleavedRoute {
                        session: session.clone(),
                        track,
                        srtp: srtp.clone(),
                    },
                );
            let sink = TrackDest::Interleaved {
                writer: conn.writer.clone(),
                rtp_channel: rtp,
                rtcp_channel: rtcp,
                srtp: srtp.clone(),
            };
            let profile = if savp { "RTP/SAVP/TCP" } else { "RTP/AVP/TCP" };
            (sink, format!("{profile};unicast;interleaved={rtp}-{rtcp}"))
        }
    };
    let ssrc = ask(&session, |reply| Command::Setup { track, sink, reply }).await??;
    // The session's RTCP route exists now: its RTCP is SRTCP.
    if let (Some(srtp), Wanted::Udp { rtcp_port, .. }) = (srtp, &wanted) {
        conn.ctx
            .fan
            .routes
            .insert_srtcp((conn.peer.ip(), *rtcp_port).into(), srtp);
    }
    if let Some(url) = req.request_uri() {
        let mut urls = session.track_urls.lock().unwrap_or_else(|p| p.into_inner());
        urls.retain(|(t, _)| *t != track);
        urls.push((track, url.as_str().to_string()));
    }
    info!(session = %session.id, asset = %session.asset, track, %transport, peer = %conn.peer, "setup");
    Ok(with_session(Reply::default(), Some(&session), conn)
        .header(headers::TRANSPORT, format!("{transport};ssrc={ssrc:08X}")))
}

/// Reserve a share of the admission budgets for a new session, or refuse it with 453.
fn admit(conn: &Connection) -> Result<Ticket, RtspError> {
    let admission = &conn.ctx.admission;
    admission
        .try_admit(conn.peer.ip(), admission.estimate_bps(None))
        .map_err(|refused| {
            conn.ctx.metrics.admission_refused(&refused);
            RtspError::new(refused.status().into(), refused.to_string())
        })
}

async fn create_session(
    conn: &Connection,
    asset: &str,
    rendition: &str,
    admission: Ticket,
) -> Result<Arc<SessionHandle>, RtspError> {
    let channel = conn.ctx.upstream.open(asset, rendition).await?;
    let playout = Playout::new(&channel.tracks, "divisor")
        .map_err(|e| RtspError::new(415, format!("cannot stream {asset}: {e}")))?
        .with_keys(&channel.keys.lock().unwrap_or_else(|p| p.into_inner()));
    let (commands, rx) = mpsc::channel(64);
    let last_seen = Arc::new(Mutex::new(Instant::now()));
    let session = conn.ctx.sessions.insert(
        asset,
        channel.duration_ms,
        channel.tracks.clone(),
        commands,
        conn.id,
        last_seen.clone(),
    );
    let fan = conn.ctx.fan.clone();
    let client = fan.next_id();
    let stats = ClientStats::new(
        client,
        &session.id,
        &format!("vod/{asset}"),
        &conn.peer.to_string(),
    );
    driver::spawn(
        channel,
        playout,
        rx,
        driver::DriverContext {
            feed: fan.next_id(),
            fan,
            client,
            stats,
            last_seen,
            label: session.id.clone(),
            admission,
        },
    );
    info!(session = %session.id, %asset, peer = %conn.peer, "session created");
    Ok(session)
}

async fn create_live_session(
    conn: &Connection,
    asset: &str,
    live: &LiveTarget,
    admission: Ticket,
) -> Result<Arc<SessionHandle>, RtspError> {
    let viewer = conn
        .ctx
        .live
        .acquire(&live.channel, &live.rendition)
        .await?;
    let (commands, rx) = mpsc::channel(64);
    let last_seen = Arc::new(Mutex::new(Instant::now()));
    let session = conn.ctx.sessions.insert(
        asset,
        None,
        viewer.channel.tracks.clone(),
        commands,
        conn.id,
        last_seen.clone(),
    );
    let fan = conn.ctx.fan.clone();
    let client = fan.next_id();
    let stats = ClientStats::new(client, &session.id, asset, &conn.peer.to_string());
    live_session::spawn(
        viewer,
        rx,
        LiveSessionContext {
            fan,
            client,
            tier: live.tier,
            stats,
            last_seen,
            label: session.id.clone(),
            admission,
            close_connection: Some(conn.closing.clone()),
        },
    );
    info!(session = %session.id, %asset, tier = ?live.tier, peer = %conn.peer, "live session created");
    Ok(session)
}

/// Send a command to a session's driver and wait for its answer.
async fn ask<T>(
    session: &SessionHandle,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, RtspError> {
    let (tx, rx) = oneshot::channel();
    session
        .commands
        .send(make(tx))
        .await
        .map_err(|_| RtspError::session_not_found())?;
    match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(RtspError::session_not_found()),
        Err(_) => Err(RtspError::new(
            504,
            "the encoder unit did not answer in time",
        )),
    }
}

/// Requested start in milliseconds; `None` for "from where it is".
fn requested_start(
    req: &Request<Vec<u8>>,
    duration_ms: Option<u64>,
) -> Result<Option<u64>, RtspError> {
    let range = req
        .typed_header::<Range>()
        .map_err(|_| RtspError::new(457, "malformed Range header"))?;
    let start = match range {
        None => return Ok(None),
        Some(Range::Npt(NptRange::From(t))) | Some(Range::Npt(NptRange::FromTo(t, _))) => t,
        Some(Range::Npt(NptRange::Empty)) => return Ok(None),
        Some(_) => {
            return Err(RtspError::new(
                457,
                "only npt ranges with a start are supported",
            ))
        }
    };
    let ms = match start {
        NptTime::Now => return Ok(None),
        NptTime::Seconds(s, nanos) => s * 1000 + u64::from(nanos.unwrap_or(0)) / 1_000_000,
        NptTime::Hms(h, m, s, nanos) => {
            ((h * 60 + u64::from(m)) * 60 + u64::from(s)) * 1000
                + u64::from(nanos.unwrap_or(0)) / 1_000_000
        }
    };
    if let Some(d) = duration_ms {
        if ms > d {
            return Err(RtspError::new(
                457,
                format!("start {ms} ms is past the end ({d} ms)"),
            ));
        }
    }
    Ok(Some(ms))
}

async fn play(req: &Request<Vec<u8>>, session: Arc<SessionHandle>) -> Result<Reply, RtspError> {
    let start_ms = requested_start(req, session.duration_ms)?;
    let info = ask(&session, |reply| Command::Play { start_ms, reply }).await??;
    let urls = session
        .track_urls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let rtp_info: Vec<String> = info
        .tracks
        .iter()
        .filter_map(|t| {
            let url = urls.iter().find(|(track, _)| *track == t.track)?.1.clone();
            Some(format!("url={url};seq={};rtptime={}", t.seq, t.rtptime))
        })
        .collect();
    let range = match session.duration_ms {
        Some(d) => format!("npt={}-{}", npt(info.start_ms), npt(d)),
        None => format!("npt={}-", npt(info.start_ms)),
    };
    Ok(Reply {
        start: Some(session.clone()),
        ..Default::default()
    }
    .header(headers::SESSION, session.id.clone())
    .header(headers::RANGE, range)
    .header(headers::RTP_INFO, rtp_info.join(",")))
}

fn npt(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

async fn pause(session: Arc<SessionHandle>) -> Result<Reply, RtspError> {
    let position = ask(&session, |reply| Command::Pause { reply }).await??;
    Ok(Reply::default()
        .header(headers::SESSION, session.id.clone())
        .header(headers::RANGE, format!("npt={}-", npt(position))))
}

fn teardown(conn: &Connection, session: Arc<SessionHandle>) -> Result<Reply, RtspError> {
    conn.ctx.sessions.remove(&session.id);
    conn.interleaved
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|_, route| route.session.id != session.id);
    info!(session = %session.id, asset = %session.asset, "teardown");
    Ok(Reply::default().header(headers::SESSION, session.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(range: Option<&str>) -> Request<Vec<u8>> {
        let mut b = Request::builder(Method::Play, Version::V1_0)
            .request_uri(rtsp_types::Url::parse("rtsp://h/vod/a.mp4").unwrap())
            .header(headers::CSEQ, "3");
        if let Some(r) = range {
            b = b.header(headers::RANGE, r);
        }
        b.build(Vec::new())
    }

    #[test]
    fn ranges() {
        assert_eq!(requested_start(&request(None), Some(10_000)).unwrap(), None);
        assert_eq!(
            requested_start(&request(Some("npt=5.000-")), Some(10_000)).unwrap(),
            Some(5000)
        );
        assert_eq!(
            requested_start(&request(Some("npt=0-")), None).unwrap(),
            Some(0)
        );
        assert_eq!(
            requested_start(&request(Some("npt=now-")), None).unwrap(),
            None
        );
        assert_eq!(
            requested_start(&request(Some("npt=99-")), Some(10_000))
                .unwrap_err()
                .status,
            457
        );
        assert_eq!(
            requested_start(&request(Some("npt=abc")), Some(10_000))
                .unwrap_err()
                .status,
            457
        );
        assert_eq!(npt(4040), "4.040");
    }

    fn setup_with(transport: &str) -> Request<Vec<u8>> {
        Request::builder(Method::Setup, Version::V1_0)
            .request_uri(rtsp_types::Url::parse("rtsp://h/vod/a.mp4/trackID=1").unwrap())
            .header(headers::CSEQ, "2")
            .header(headers::TRANSPORT, transport)
            .build(Vec::new())
    }

    #[test]
    fn transports_udp_and_interleaved_plain_or_srtp() {
        let chosen = |t: &str| choose_transport(&setup_with(t), 1);
        assert!(matches!(
            chosen("RTP/AVP;unicast;client_port=5000-5001"),
            Ok(Wanted::Udp {
                rtp_port: 5000,
                rtcp_port: 5001,
                savp: false
            })
        ));
        assert!(matches!(
            chosen("RTP/SAVP;unicast;client_port=5000-5001"),
            Ok(Wanted::Udp { savp: true, .. })
        ));
        assert!(matches!(
            chosen("RTP/SAVP/TCP;unicast;interleaved=4-5"),
            Ok(Wanted::Interleaved {
                rtp: 4,
                rtcp: 5,
                savp: true
            })
        ));
        // No interleaved= picks the track's pair.
        assert!(matches!(
            chosen("RTP/AVP/TCP;unicast"),
            Ok(Wanted::Interleaved {
                rtp: 2,
                rtcp: 3,
                savp: false
            })
        ));
        // The first usable one of a list wins.
        assert!(matches!(
            chosen("RTP/AVP;multicast,RTP/SAVP/TCP;unicast;interleaved=0-1"),
            Ok(Wanted::Interleaved { savp: true, .. })
        ));
        for refused in [
            "RTP/AVP;unicast;client_port=0-1",
            "RTP/AVP;unicast;client_port=65535",
            "RTP/AVP;multicast",
        ] {
            assert_eq!(
                chosen(refused).err().map(|e| e.status),
                Some(461),
                "{refused}"
            );
        }
    }
}
