//! Limits that keep one address or one slow client from holding the RTSP port: open
//! connections per address, and the time a begun request may take to arrive (slowloris).
//! Refusals are answered with a status (503, 408), logged and counted in
//! `divisor_rtsp_limit_refusals_total{reason}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a request may take from its first byte to its last. Real clients send a
/// request in one write; a connection that trickles bytes is holding a slot.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Open RTSP connections per client address, bounded by `max` (none: unbounded).
pub struct ConnectionLimit {
    max: Option<usize>,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection; its slot is freed on drop.
pub struct ConnectionSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnectionLimit {
    pub fn new(max: Option<usize>) -> ConnectionLimit {
        ConnectionLimit {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for a connection from `ip`, unless it already holds `max`.
    pub fn admit(&self, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if self.max.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            ip,
            open: self.open.clone(),
        })
    }

    /// Connections open from `ip` now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_and_the_slots_come_back() {
        let limit = ConnectionLimit::new(Some(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = limit.admit(a).unwrap();
        let _s2 = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none(), "a third from one address");
        assert!(limit.admit(b).is_some(), "another address is not affected");
        drop(s1);
        assert_eq!(limit.open_from(a), 1);
        assert!(limit.admit(a).is_some());
        let open = ConnectionLimit::new(None);
        let all: Vec<_> = (0..1000).filter_map(|_| open.admit(a)).collect();
        assert_eq!(all.len(), 1000);
    }
}
