//! RTSP sessions: one VoD channel from the encoder unit played out to one client.
//!
//! - [`playout`]: the sans-IO core (media-time release of frames, RTP and RTCP);
//! - [`driver`]: the tokio task that feeds the core; the fan-out engine
//!   ([`crate::fanout`]) polls it at its deadlines and sends its packets;
//! - [`Sessions`]: the table of live sessions, with idle time-outs.

pub mod driver;
pub mod playout;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use divisor_link::TrackInfo;
use tokio::sync::mpsc;
use tracing::info;

pub use driver::{Command, PlayInfo, SessionError};

/// A live session as the RTSP front-end sees it.
pub struct SessionHandle {
    pub id: String,
    pub asset: String,
    pub duration_ms: Option<u64>,
    pub tracks: Vec<TrackInfo>,
    /// Commands to the session's driver task.
    pub commands: mpsc::Sender<Command>,
    /// The RTSP connection that created it (interleaved sessions die with it).
    pub connection: u64,
    /// The URL each set-up track was named by in SETUP, echoed in `RTP-Info`.
    pub track_urls: Mutex<Vec<(u8, String)>>,
    last_seen: Arc<Mutex<Instant>>,
}

impl SessionHandle {
    /// Note client activity (a request, an RTCP report): postpones the idle time-out.
    pub fn touch(&self) {
        touch(&self.last_seen);
    }

    fn idle_for(&self, now: Instant) -> Duration {
        let last = *self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        now.saturating_duration_since(last)
    }
}

pub(crate) fn touch(last_seen: &Mutex<Instant>) {
    *last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
}

/// The session table.
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<SessionHandle>>>,
    /// Idle time after which a session is torn down (RFC 2326 section 12.37: 60 s default).
    pub timeout: Duration,
}

impl Sessions {
    pub fn new(timeout: Duration) -> Arc<Sessions> {
        Arc::new(Sessions {
            map: Mutex::new(HashMap::new()),
            timeout,
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SessionHandle>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a session whose driver listens on `commands`.
    pub fn insert(
        &self,
        asset: &str,
        duration_ms: Option<u64>,
        tracks: Vec<TrackInfo>,
        commands: mpsc::Sender<Command>,
        connection: u64,
        last_seen: Arc<Mutex<Instant>>,
    ) -> Arc<SessionHandle> {
        let id = format!("{:016X}", rand::random::<u64>());
        let handle = Arc::new(SessionHandle {
            id: id.clone(),
            asset: asset.to_string(),
            duration_ms,
            tracks,
            commands,
            connection,
            track_urls: Mutex::new(Vec::new()),
            last_seen,
        });
        self.map().insert(id, handle.clone());
        handle
    }

    pub fn get(&self, id: &str) -> Option<Arc<SessionHandle>> {
        self.map().get(id).cloned()
    }

    /// Remove and stop a session.
    pub fn remove(&self, id: &str) -> Option<Arc<SessionHandle>> {
        let handle = self.map().remove(id)?;
        let _ = handle.commands.try_send(Command::Teardown);
        Some(handle)
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions created by RTSP connection `connection`.
    pub fn of_connection(&self, connection: u64) -> Vec<String> {
        self.map()
            .values()
            .filter(|s| s.connection == connection)
            .map(|s| s.id.clone())
            .collect()
    }

    /// Tear down sessions idle for longer than the time-out, and sessions whose driver ended.
    pub fn reap(&self, now: Instant) {
        let expired: Vec<String> = self
            .map()
            .values()
            .filter(|s| s.idle_for(now) > self.timeout || s.commands.is_closed())
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            if let Some(s) = self.remove(&id) {
                info!(session = %id, asset = %s.asset, "session closed: idle time-out or ended");
            }
        }
    }

    /// Run [`Sessions::reap`] every second, forever.
    pub async fn reaper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.reap(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(
        sessions: &Sessions,
        connection: u64,
    ) -> (Arc<SessionHandle>, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(4);
        let last_seen = Arc::new(Mutex::new(Instant::now()));
        let handle = sessions.insert("a.mp4", Some(1000), Vec::new(), tx, connection, last_seen);
        (handle, rx)
    }

    #[test]
    fn idle_sessions_are_torn_down_and_active_ones_kept() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (idle, mut idle_rx) = session(&sessions, 1);
        let (active, _active_rx) = session(&sessions, 1);
        let later = Instant::now() + Duration::from_secs(61);
        *active.last_seen.lock().unwrap() = later;
        sessions.reap(later);
        assert!(
            sessions.get(&idle.id).is_none(),
            "idle session survived its time-out"
        );
        assert!(matches!(idle_rx.try_recv(), Ok(Command::Teardown)));
        assert!(
            sessions.get(&active.id).is_some(),
            "active session was reaped"
        );
    }

    #[test]
    fn sessions_whose_driver_ended_are_removed() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (gone, rx) = session(&sessions, 7);
        drop(rx);
        sessions.reap(Instant::now());
        assert!(sessions.get(&gone.id).is_none());
        assert!(sessions.of_connection(7).is_empty());
    }
}
