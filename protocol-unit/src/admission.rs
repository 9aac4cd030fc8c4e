//! Admission control: configured budgets for clients, egress bandwidth and sessions per
//! client address. Over budget, a new session is refused with RTSP 453 Not Enough
//! Bandwidth *before* anything is allocated for it, so nobody already playing notices.
//!
//! [`Admission`] is pure accounting (no sockets, no clock): [`Admission::try_admit`]
//! either reserves a share of every budget and returns a [`Ticket`], or says why not
//! ([`Refused`]). The ticket gives the share back when dropped, so a session that ends
//! for any reason (TEARDOWN, timeout, connection loss, error) releases its budget by
//! simply dropping its ticket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Admission flags, to be flattened into the front-end flags (`#[command(flatten)]`).
/// Every budget is unlimited unless given.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AdmissionArgs {
    /// Most clients (RTSP sessions) served at once; more get 453 Not Enough Bandwidth.
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,

    /// Most egress bandwidth promised to clients at once, in Mbit/s (sum of the admitted
    /// sessions' estimated bitrates).
    #[arg(long, value_name = "MBIT/S")]
    pub max_egress_mbps: Option<f64>,

    /// Most sessions at once from one client IP address.
    #[arg(long, value_name = "N")]
    pub max_sessions_per_ip: Option<usize>,

    /// Most RTSP connections open at once from one client IP address; more are answered
    /// 503 and closed. Unlimited by default (load generators share one address).
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// Bitrate assumed for a session whose channel announces none, in kbit/s.
    #[arg(long, value_name = "KBIT/S", default_value_t = 2000)]
    pub default_session_kbps: u64,
}

impl AdmissionArgs {
    pub fn config(&self) -> AdmissionConfig {
        AdmissionConfig {
            max_clients: self.max_clients,
            max_egress_bps: self
                .max_egress_mbps
                .filter(|m| m.is_finite() && *m >= 0.0)
                .map(|m| (m * 1_000_000.0) as u64),
            max_sessions_per_ip: self.max_sessions_per_ip,
            max_connections_per_ip: self.max_connections_per_ip,
            default_session_bps: self.default_session_kbps.saturating_mul(1000),
        }
    }
}

/// Budgets; `None` is unlimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionConfig {
    pub max_clients: Option<usize>,
    pub max_egress_bps: Option<u64>,
    pub max_sessions_per_ip: Option<usize>,
    /// RTSP connections per client address (see [`crate::rtsp::limits`]).
    pub max_connections_per_ip: Option<usize>,
    /// Estimate for a session whose tracks announce no bitrate.
    pub default_session_bps: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionArgs::default().config()
    }
}

/// Why a session was refused. Maps to RTSP 453 Not Enough Bandwidth, with
/// [`Refused::to_string`] as the reason text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("server full: {limit} clients already")]
    TooManyClients { limit: usize },
    #[error(
        "egress budget: {in_use_bps} of {limit_bps} bit/s in use, session needs {requested_bps}"
    )]
    EgressBandwidth {
        requested_bps: u64,
        in_use_bps: u64,
        limit_bps: u64,
    },
    #[error("{ip} already holds {limit} sessions")]
    TooManySessionsFromIp { ip: IpAddr, limit: usize },
}

impl Refused {
    /// RTSP status code for the refusal: 453 Not Enough Bandwidth.
    pub const STATUS_CODE: u16 = 453;

    /// The RTSP status (453).
    pub fn status(&self) -> rtsp_types::StatusCode {
        rtsp_types::StatusCode::NotEnoughBandwidth
    }

    /// A short, fixed label for metrics (`admission_refusals_total{reason=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooManyClients { .. } => "clients",
            Self::EgressBandwidth { .. } => "egress",
            Self::TooManySessionsFromIp { .. } => "per_ip",
        }
    }
}

/// What is currently admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdmissionSnapshot {
    pub clients: usize,
    pub egress_bps: u64,
    pub refused_total: u64,
}

#[derive(Debug, Default)]
struct State {
    clients: usize,
    egress_bps: u64,
    per_ip: HashMap<IpAddr, usize>,
    refused_total: u64,
}

#[derive(Debug)]
struct Inner {
    config: AdmissionConfig,
    state: Mutex<State>,
}

impl Inner {
    /// The lock is only held for a few additions; a poisoned lock still holds consistent
    /// counters (no code path panics between updates), so keep using it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The admission controller; cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct Admission {
    inner: Arc<Inner>,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.inner.config
    }

    /// The bitrate to reserve for a session: the sum of its tracks' announced bitrates
    /// when known (non-zero), else the configured default.
    pub fn estimate_bps(&self, announced_bps: Option<u64>) -> u64 {
        announced_bps
            .filter(|b| *b > 0)
            .unwrap_or(self.inner.config.default_session_bps)
    }

    /// Admit one session from `client_ip` needing `estimated_bps` (see
    /// [`Admission::estimate_bps`]), or refuse it. Checks run in a fixed order: clients,
    /// sessions per IP, egress; nothing is reserved when any fails.
    pub fn try_admit(&self, client_ip: IpAddr, estimated_bps: u64) -> Result<Ticket, Refused> {
        let config = &self.inner.config;
        let mut state = self.inner.lock();
        let refusal = if config.max_clients.is_some_and(|max| state.clients >= max) {
            Some(Refused::TooManyClients {
                limit: config.max_clients.unwrap_or(0),
            })
        } else if config
            .max_sessions_per_ip
            .is_some_and(|max| state.per_ip.get(&client_ip).copied().unwrap_or(0) >= max)
        {
            Some(Refused::TooManySessionsFromIp {
                ip: client_ip,
                limit: config.max_sessions_per_ip.unwrap_or(0),
            })
        } else {
            config.max_egress_bps.and_then(|limit| {
                (state.egress_bps.saturating_add(estimated_bps) > limit).then_some(
                    Refused::EgressBandwidth {
                        requested_bps: estimated_bps,
                        in_use_bps: state.egress_bps,
                        limit_bps: limit,
                    },
                )
            })
        };
        if let Some(refused) = refusal {
            state.refused_total += 1;
            return Err(refused);
        }
        state.clients += 1;
        state.egress_bps = state.egress_bps.saturating_add(estimated_bps);
        *state.per_ip.entry(client_ip).or_insert(0) += 1;
        Ok(Ticket {
            inner: Arc::clone(&self.inner),
            ip: client_ip,
            bps: estimated_bps,
        })
    }

    pub fn snapshot(&self) -> AdmissionSnapshot {
        let state = self.inner.lock();
        AdmissionSnapshot {
            clients: state.clients,
            egress_bps: state.egress_bps,
            refused_total: state.refused_total,
        }
    }
}

/// One admitted session's share of the budgets; released when dropped.
#[derive(Debug)]
pub struct Ticket {
    inner: Arc<Inner>,
    ip: IpAddr,
    bps: u64,
}

impl Ticket {
    pub fn client_ip(&self) -> IpAddr {
        self.ip
    }

    /// The bandwidth reserved for this session.
    pub fn bps(&self) -> u64 {
        self.bps
    }

    /// Reserve `extra_bps` more for this session (e.g. a SETUP of a further track), or
    /// refuse with nothing changed.
    pub fn try_grow(&mut self, extra_bps: u64) -> Result<(), Refused> {
        let mut state = self.inner.lock();
        if let Some(limit) = self.inner.config.max_egress_bps {
            if state.egress_bps.saturating_add(extra_bps) > limit {
                state.refused_total += 1;
                return Err(Refused::EgressBandwidth {
                    requested_bps: extra_bps,
                    in_use_bps: state.egress_bps,
                    limit_bps: limit,
                });
            }
        }
        state.egress_bps = state.egress_bps.saturating_add(extra_bps);
        self.bps = self.bps.saturating_add(extra_bps);
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.clients = state.clients.saturating_sub(1);
        state.egress_bps = state.egress_bps.saturating_sub(self.bps);
        if let Some(n) = state.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn admission(clients: Option<usize>, mbps: Option<f64>, per_ip: Option<usize>) -> Admission {
        Admission::new(
            AdmissionArgs {
                max_clients: clients,
                max_egress_mbps: mbps,
                max_sessions_per_ip: per_ip,
                max_connections_per_ip: None,
                default_session_kbps: 1000,
            }
            .config(),
        )
    }

    #[test]
    fn unlimited_by_default() {
        let a = Admission::new(AdmissionConfig::default());
        let tickets: Vec<_> = (0..1000)
            .map(|i| a.try_admit(ip((i % 3) as u8), 50_000_000).unwrap())
            .collect();
        assert_eq!(a.snapshot().clients, 1000);
        drop(tickets);
        assert_eq!(a.snapshot(), AdmissionSnapshot::default());
    }

    #[test]
    fn client_budget_refuses_n_plus_one_and_frees_on_drop() {
        let a = admission(Some(3), None, None);
        let t: Vec<_> = (1..=3).map(|i| a.try_admit(ip(i), 1).unwrap()).collect();
        let refused = a.try_admit(ip(9), 1).unwrap_err();
        assert_eq!(refused, Refused::TooManyClients { limit: 3 });
        assert_eq!(refused.status(), rtsp_types::StatusCode::NotEnoughBandwidth);
        assert_eq!(u16::from(refused.status()), Refused::STATUS_CODE);
        assert_eq!(refused.to_string(), "server full: 3 clients already");
        assert_eq!(a.snapshot().refused_total, 1);
        drop(t.into_iter().next());
        assert!(a.try_admit(ip(9), 1).is_ok());
    }

    #[test]
    fn egress_budget_counts_estimates() {
        let a = admission(None, Some(2.5), None);
        let est = a.estimate_bps(None);
        assert_eq!(est, 1_000_000);
        assert_eq!(a.estimate_bps(Some(0)), 1_000_000);
        assert_eq!(a.estimate_bps(Some(300_000)), 300_000);
        let _t1 = a.try_admit(ip(1), est).unwrap();
        let mut t2 = a.try_admit(ip(2), est).unwrap();
        let err = a.try_admit(ip(3), est).unwrap_err();
        assert_eq!(err.kind(), "egress");
        assert!(matches!(
            err,
            Refused::EgressBandwidth {
                requested_bps: 1_000_000,
                in_use_bps: 2_000_000,
                limit_bps: 2_500_000
            }
        ));
        // A smaller session still fits, and growing past the budget changes nothing.
        let _t3 = a.try_admit(ip(3), 500_000).unwrap();
        assert!(t2.try_grow(1).is_err());
        assert_eq!(t2.bps(), 1_000_000);
        assert_eq!(a.snapshot().egress_bps, 2_500_000);
    }

    #[test]
    fn per_ip_budget() {
        let a = admission(None, None, Some(2));
        let _a1 = a.try_admit(ip(1), 1).unwrap();
        let a2 = a.try_admit(ip(1), 1).unwrap();
        assert_eq!(
            a.try_admit(ip(1), 1).unwrap_err(),
            Refused::TooManySessionsFromIp {
                ip: ip(1),
                limit: 2
            }
        );
        assert!(a.try_admit(ip(2), 1).is_ok(), "other addresses unaffected");
        drop(a2);
        assert!(a.try_admit(ip(1), 1).is_ok());
    }

    #[test]
    fn refusal_reserves_nothing() {
        let a = admission(Some(10), Some(1.0), Some(1));
        let _t = a.try_admit(ip(1), 900_000).unwrap();
        assert!(a.try_admit(ip(1), 1).is_err());
        assert!(a.try_admit(ip(2), 200_000).is_err());
        assert_eq!(a.snapshot().clients, 1);
        assert_eq!(a.snapshot().egress_bps, 900_000);
        assert_eq!(a.snapshot().refused_total, 2);
    }

    #[test]
    fn flags_parse() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            admission: AdmissionArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--max-clients",
            "5",
            "--max-egress-mbps",
            "1.5",
            "--max-sessions-per-ip",
            "2",
        ])
        .unwrap();
        let c = cli.admission.config();
        assert_eq!(c.max_clients, Some(5));
        assert_eq!(c.max_egress_bps, Some(1_500_000));
        assert_eq!(c.max_sessions_per_ip, Some(2));
        assert_eq!(c.default_session_bps, 2_000_000);
        let none = Cli::try_parse_from(["x"]).unwrap().admission.config();
        assert_eq!(none.max_clients, None);
        assert_eq!(none.max_egress_bps, None);
        assert!(Cli::try_parse_from(["x", "--max-clients", "-1"]).is_err());
    }
}
