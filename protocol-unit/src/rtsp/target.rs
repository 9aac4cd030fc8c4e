//! What an RTSP URL names: `rtsp://host:port/vod/<asset>[/trackID=N]`.

use percent_encoding::percent_decode_str;
use rtsp_types::Url;

use super::error::RtspError;

/// The resource a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// File name in the encoder unit's library (percent-decoded).
    pub asset: String,
    /// Track control suffix, when the URL names one track.
    pub track: Option<u8>,
}

/// Parse the request URL. Only the `/vod/` tree exists so far.
pub fn parse(url: Option<&Url>) -> Result<Target, RtspError> {
    let url = url.ok_or_else(|| RtspError::bad_request("request URL missing"))?;
    let path = url.path();
    let rest = path.strip_prefix("/vod/").ok_or_else(|| {
        RtspError::not_found(format!(
            "no such resource {path}: URLs look like /vod/<file>"
        ))
    })?;
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
    Ok(Target { asset, track })
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
                track: None
            }
        );
        assert_eq!(
            p("rtsp://h:8554/vod/demo.mp4/").unwrap(),
            Target {
                asset: "demo.mp4".into(),
                track: None
            }
        );
        assert_eq!(
            p("rtsp://h:8554/vod/dir/my%20clip.mkv/trackID=1").unwrap(),
            Target {
                asset: "dir/my clip.mkv".into(),
                track: Some(1)
            }
        );
    }

    #[test]
    fn refuses_escapes_and_other_trees() {
        // The URL parser resolves dot segments first: this one leaves the /vod/ tree.
        assert_eq!(p("rtsp://h/vod/%2e%2e/etc/passwd").unwrap_err().status, 404);
        // Encoded slashes survive URL parsing and are caught here.
        assert_eq!(p("rtsp://h/vod/..%2Fetc%2Fpasswd").unwrap_err().status, 403);
        assert_eq!(p("rtsp://h/vod/%2Fetc%2Fpasswd").unwrap_err().status, 403);
        assert_eq!(p("rtsp://h/live/x").unwrap_err().status, 404);
        assert_eq!(p("rtsp://h/vod/").unwrap_err().status, 404);
        assert_eq!(parse(None).unwrap_err().status, 400);
    }
}
