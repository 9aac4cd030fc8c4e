//! What an RTSP URL names: `rtsp://host:port/vod/<asset>[/trackID=N][?rendition=NAME]` or
//! `rtsp://host:port/live/<channel>[/<rendition>][/trackID=N][?tier=full|half|quarter]`.

use percent_encoding::percent_decode_str;
use rtsp_types::Url;

use super::error::RtspError;
use crate::fanout::Tier;

/// A live channel named by a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTarget {
    pub channel: String,
    /// "" = the channel's first rendition.
    pub rendition: String,
    pub tier: Tier,
}

/// The resource a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// File name in the encoder unit's library (percent-decoded).
    pub asset: String,
    /// Track control suffix, when the URL names one track.
    pub track: Option<u8>,
    /// VoD: the rendition of the encoder's ladder (`?rendition=NAME`); "" = the source.
    pub rendition: String,
    /// Set for `/live/` URLs; `asset` is then `live/<channel>/<rendition>`.
    pub live: Option<LiveTarget>,
}

/// Parse the request URL.
pub fn parse(url: Option<&Url>) -> Result<Target, RtspError> {
    let url = url.ok_or_else(|| RtspError::bad_request("request URL missing"))?;
    let path = url.path();
    if let Some(rest) = path.strip_prefix("/live/") {
        return parse_live(rest, url.query());
    }
    let rest = path.strip_prefix("/vod/").ok_or_else(|| {
        RtspError::not_found(format!(
            "no such resource {path}: URLs look like /vod/<file> or /live/<channel>"
        ))
    })?;
    let (rendition, glued_track) = parse_vod_query(url.query())?;
    let (encoded_asset, track) = match rest.rsplit_once('/') {
        Some((asset, last)) if last.starts_with("trackID=") => {
            let track = crate::sdp::parse_track_id(last)
                .ok_or_else(|| RtspError::not_found(format!("no such track {last}")))?;
            (asset, Some(track))
        }
        _ => (rest.trim_end_matches('/'), None),
    };
    let asset = percent_decode_str(encoded_asset)
        .decode_utf8()
        .map_err(|_| RtspError::bad_request("asset name is not UTF-8"))?
        .into_owned();
    if asset.is_empty() {
        return Err(RtspError::not_found("no asset named in the URL"));
    }
    // The encoder unit checks paths against its library too; refusing here as well keeps
    // obviously hostile names from ever crossing the link.
    if asset.starts_with('/') || asset.split('/').any(|c| c == "..") || asset.contains('\0') {
        return Err(RtspError::forbidden(format!(
            "{asset:?} points outside the library"
        )));
    }
    Ok(Target {
        asset,
        track: track.or(glued_track),
        rendition,
        live: None,
    })
}

/// Whether the URL asks for SRTP (`?srtp=1`, beside any `rendition=` or `tier=`): the
/// DESCRIBE answer then offers RTP/SAVP with MIKEY keys. A relative control URL glued on
/// after the query (`srtp=1/trackID=0`) is understood too.
pub fn wants_srtp(url: Option<&Url>) -> bool {
    url.and_then(|u| u.query())
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(k, v)| {
            k == "srtp" && matches!(v.split('/').next(), Some("1" | "true" | "yes" | "on"))
        })
}

/// The VoD query: `rendition=NAME`, possibly with a relative control URL glued on by a
/// client that resolved it against a base ending in the query (`rendition=360p/trackID=0`).
fn parse_vod_query(query: Option<&str>) -> Result<(String, Option<u8>), RtspError> {
    let mut rendition = String::new();
    let mut track = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (v, glued) = match v.split_once('/') {
            Some((v, g)) => (v, Some(g)),
            None => (v, None),
        };
        if k == "rendition" {
            let name = percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| RtspError::bad_request("rendition name is not UTF-8"))?;
            if name.contains(['/', '\0']) {
                return Err(RtspError::bad_request(format!(
                    "{name:?} is not a rendition"
                )));
            }
            rendition = name.into_owned();
        }
        if let Some(g) = glued {
            track = Some(
                crate::sdp::parse_track_id(g)
                    .ok_or_else(|| RtspError::not_found(format!("no such track {g}")))?,
            );
        }
    }
    Ok((rendition, track))
}

/// `<channel>[/<rendition>][/trackID=N]` and the query. A client that glued a relative
/// control URL after the query (`?tier=half/trackID=0`) is understood too.
fn parse_live(rest: &str, query: Option<&str>) -> Result<Target, RtspError> {
    let mut track = None;
    let mut tier = Tier::Full;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (v, glued) = match v.split_once('/') {
            Some((v, g)) => (v, Some(g)),
            None => (v, None),
        };
        if k == "tier" {
            tier = Tier::parse(v).ok_or_else(|| {
                RtspError::bad_request(format!("tier={v}: use full, half or quarter"))
            })?;
        }
        if let Some(g) = glued {
            track = Some(
                crate::sdp::parse_track_id(g)
                    .ok_or_else(|| RtspError::not_found(format!("no such track {g}")))?,
            );
        }
    }
    let mut parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    if let Some(last) = parts.last() {
        if last.starts_with("trackID=") {
            track = Some(
                crate::sdp::parse_track_id(last)
                    .ok_or_else(|| RtspError::not_found(format!("no such track {last}")))?,
            );
            parts.pop();
        }
    }
    let decode = |s: &str| -> Result<String, RtspError> {
        let d = percent_decode_str(s)
            .decode_utf8()
            .map_err(|_| RtspError::bad_request("channel name is not UTF-8"))?;
        if d.contains('/') || d.contains('\0') || d == ".." {
            return Err(RtspError::forbidden(format!("{d:?} is not a channel name")));
        }
        Ok(d.into_owned())
    };
    let (channel, rendition) = match parts.as_slice() {
        [c] => (decode(c)?, String::new()),
        [c, r] => (decode(c)?, decode(r)?),
        _ => {
            return Err(RtspError::not_found(
                "live URLs look like /live/<channel>[/<rendition>]",
            ))
        }
    };
    Ok(Target {
        asset: format!("live/{channel}/{rendition}"),
        track,
        rendition: String::new(),
        live: Some(LiveTarget {
            channel,
            rendition,
            tier,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Target, RtspError> {
        parse(Some(&Url::parse(s).unwrap()))
    }

    #[test]
    fn asset_and_track() {
        assert_eq!(
            p("rtsp://h:8554/vod/demo.mp4").unwrap(),
            Target {
                asset: "demo.mp4".into(),
                track: None,
                rendition: String::new(),
                live: None
            }
        );
        assert_eq!(
            p("rtsp://h:8554/vod/demo.mp4/").unwrap(),
            Target {
                asset: "demo.mp4".into(),
                track: None,
                rendition: String::new(),
                live: None
            }
        );
        assert_eq!(
            p("rtsp://h:8554/vod/dir/my%20clip.mkv/trackID=1").unwrap(),
            Target {
                asset: "dir/my clip.mkv".into(),
                track: Some(1),
                rendition: String::new(),
                live: None
            }
        );
    }

    #[test]
    fn live_channels_renditions_tracks_and_tiers() {
        let t = p("rtsp://h/live/news").unwrap();
        assert_eq!(t.asset, "live/news/");
        let l = t.live.unwrap();
        assert_eq!(
            (l.channel.as_str(), l.rendition.as_str(), l.tier),
            ("news", "", Tier::Full)
        );
        let t = p("rtsp://h/live/news/720p/trackID=1?tier=half").unwrap();
        assert_eq!(t.track, Some(1));
        let l = t.live.unwrap();
        assert_eq!((l.rendition.as_str(), l.tier), ("720p", Tier::Half));
        let t = p("rtsp://h/live/news?tier=quarter/trackID=0").unwrap();
        assert_eq!(t.track, Some(0));
        assert_eq!(t.live.unwrap().tier, Tier::Quarter);
        assert_eq!(p("rtsp://h/live/news?tier=fast").unwrap_err().status, 400);
        assert_eq!(p("rtsp://h/live/").unwrap_err().status, 404);
        assert_eq!(p("rtsp://h/live/a/b/c").unwrap_err().status, 404);
    }

    #[test]
    fn srtp_query() {
        let w = |s: &str| wants_srtp(Some(&Url::parse(s).unwrap()));
        assert!(w("rtsp://h/vod/a.mp4?srtp=1"));
        assert!(w("rtsp://h/vod/a.mp4?rendition=360p&srtp=1/trackID=0"));
        assert!(w("rtsp://h/live/news?tier=half&srtp=true"));
        assert!(!w("rtsp://h/vod/a.mp4"));
        assert!(!w("rtsp://h/vod/a.mp4?srtp=0"));
        assert!(!w("rtsp://h/vod/a.mp4?rendition=srtp"));
        let t = p("rtsp://h/vod/a.mp4?srtp=1/trackID=1").unwrap();
        assert_eq!((t.asset.as_str(), t.track), ("a.mp4", Some(1)));
    }

    #[test]
    fn refuses_escapes_and_other_trees() {
        // The URL parser resolves dot segments first: this one leaves the /vod/ tree.
        assert_eq!(p("rtsp://h/vod/%2e%2e/etc/passwd").unwrap_err().status, 404);
        // Encoded slashes survive URL parsing and are caught here.
        assert_eq!(p("rtsp://h/vod/..%2Fetc%2Fpasswd").unwrap_err().status, 403);
        assert_eq!(p("rtsp://h/vod/%2Fetc%2Fpasswd").unwrap_err().status, 403);
        assert_eq!(p("rtsp://h/other/x").unwrap_err().status, 404);
        assert_eq!(p("rtsp://h/vod/").unwrap_err().status, 404);
        assert_eq!(parse(None).unwrap_err().status, 400);
    }
}
