//! An RTSP failure: the status code to answer with and a reason for the log and the client.

use crate::session::SessionError;
use crate::upstream::UpstreamError;
use divisor_link::ErrorCode;

/// A request that cannot be served. `status` is the RTSP status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct RtspError {
    pub status: u16,
    pub reason: String,
    /// A 401's `WWW-Authenticate` challenge.
    pub challenge: Option<String>,
}

impl RtspError {
    pub fn new(status: u16, reason: impl Into<String>) -> RtspError {
        RtspError {
            status,
            reason: reason.into(),
            challenge: None,
        }
    }
    /// 401 with `challenge` in `WWW-Authenticate`.
    pub fn unauthorized(challenge: String, reason: impl Into<String>) -> RtspError {
        RtspError {
            challenge: Some(challenge),
            ..RtspError::new(401, reason)
        }
    }
    pub fn bad_request(reason: impl Into<String>) -> RtspError {
        RtspError::new(400, reason)
    }
    pub fn forbidden(reason: impl Into<String>) -> RtspError {
        RtspError::new(403, reason)
    }
    pub fn not_found(reason: impl Into<String>) -> RtspError {
        RtspError::new(404, reason)
    }
    pub fn session_not_found() -> RtspError {
        RtspError::new(454, "session not found")
    }
    pub fn wrong_state(reason: impl Into<String>) -> RtspError {
        RtspError::new(455, reason)
    }
    pub fn unsupported_transport(reason: impl Into<String>) -> RtspError {
        RtspError::new(461, reason)
    }
}

impl From<UpstreamError> for RtspError {
    fn from(e: UpstreamError) -> RtspError {
        let status = match &e {
            UpstreamError::Refused { code, .. } => match code {
                // An unknown rendition is a resource that does not exist.
                ErrorCode::NotFound | ErrorCode::NoSuchRendition => 404,
                ErrorCode::Forbidden => 403,
                ErrorCode::UnsupportedMedia => 415,
                ErrorCode::BadRequest => 400,
                _ => 500,
            },
            UpstreamError::NoLink | UpstreamError::LinkDown => 503,
            UpstreamError::Timeout(_) => 504,
            UpstreamError::Protocol(_) => 502,
        };
        RtspError::new(status, e.to_string())
    }
}

impl From<SessionError> for RtspError {
    fn from(e: SessionError) -> RtspError {
        let status = match &e {
            SessionError::Ended => 454,
            SessionError::NoSuchTrack(_) => 404,
            SessionError::NothingSetUp => 455,
            SessionError::Encoder(_) => 500,
            SessionError::LinkDown => 503,
        };
        RtspError::new(status, e.to_string())
    }
}
