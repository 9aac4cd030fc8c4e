//! The controller's counters and its `/metrics` text (OpenMetrics, written the way the
//! relay's `/metrics` is: from plain counters at scrape time).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::front::NoTarget;
use super::scale::ScaleReason;
use crate::control::{ControlError, Stats};

/// Upper bounds (seconds) of the decision-time histogram's buckets.
pub const DECISION_BUCKETS: [f64; 10] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.25,
];

/// Counts of decision times of one kind of event.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Per bucket of [`DECISION_BUCKETS`] (not cumulative), then +Inf.
    buckets: [u64; DECISION_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        let i = DECISION_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DECISION_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Everything the controller counts.
#[derive(Clone, Debug, Default)]
pub struct ControllerMetrics {
    pub messages_in: BTreeMap<&'static str, u64>,
    pub messages_out: BTreeMap<&'static str, u64>,
    /// Invalid messages by ERROR code.
    pub invalid: BTreeMap<u16, u64>,
    pub refused: u64,
    pub repairs: BTreeMap<String, u64>,
    pub rebuilds: u64,
    /// REDIRECT messages sent to nodes.
    pub node_redirects: u64,
    /// Clients sent to each public reflector.
    pub client_redirects: BTreeMap<String, u64>,
    pub redirects_refused: BTreeMap<&'static str, u64>,
    /// Scale actions by (action, reason).
    pub scale_actions: BTreeMap<(&'static str, &'static str), u64>,
    pub decisions: BTreeMap<&'static str, Histogram>,
}

impl ControllerMetrics {
    pub fn message_in(&mut self, kind: &'static str) {
        *self.messages_in.entry(kind).or_default() += 1;
    }

    pub fn message_out(&mut self, kind: &'static str) {
        *self.messages_out.entry(kind).or_default() += 1;
    }

    pub fn invalid(&mut self, e: &ControlError) {
        *self.invalid.entry(e.code()).or_default() += 1;
    }

    pub fn refused(&mut self) {
        self.refused += 1;
    }

    pub fn repair(&mut self, why: &str) {
        *self.repairs.entry(why.to_string()).or_default() += 1;
    }

    pub fn rebuilt(&mut self) {
        self.rebuilds += 1;
    }

    pub fn redirected_node(&mut self) {
        self.node_redirects += 1;
    }

    pub fn client_redirected(&mut self, target: &str) {
        *self.client_redirects.entry(target.to_string()).or_default() += 1;
    }

    pub fn redirect_refused(&mut self, why: &NoTarget) {
        let k = match why {
            NoTarget::NoneUp => "none_up",
            NoTarget::AllFull => "all_full",
            NoTarget::UnknownChannel(_) => "unknown_channel",
        };
        *self.redirects_refused.entry(k).or_default() += 1;
    }

    pub fn scale_action(&mut self, action: &'static str, reason: ScaleReason) {
        *self
            .scale_actions
            .entry((action, reason.as_str()))
            .or_default() += 1;
    }

    /// Scale actions of one kind, whatever the reason.
    pub fn scale_actions_of(&self, action: &str) -> u64 {
        self.scale_actions
            .iter()
            .filter(|((a, _), _)| *a == action)
            .map(|(_, n)| n)
            .sum()
    }

    /// How long handling one event of `kind` took (timed by the driver or the bench).
    pub fn decision(&mut self, kind: &'static str, secs: f64) {
        self.decisions.entry(kind).or_default().observe(secs);
    }

    /// Messages received in all.
    pub fn messages_in_total(&self) -> u64 {
        self.messages_in.values().sum()
    }

    /// Messages sent in all.
    pub fn messages_out_total(&self) -> u64 {
        self.messages_out.values().sum()
    }

    /// The OpenMetrics text, with the node counts and aggregates the core passes in.
    pub fn render(
        &self,
        nodes: &BTreeMap<(&'static str, &'static str), u64>,
        aggregates: &BTreeMap<String, (u64, Stats)>,
    ) -> String {
        let mut o = String::new();
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# TYPE {name} {kind}\n# HELP {name} {help}");
        };
        family(
            &mut o,
            "divisor_controller_nodes",
            "gauge",
            "Nodes by role and state.",
        );
        for ((role, state), n) in nodes {
            let _ = writeln!(
                o,
                "divisor_controller_nodes{{role=\"{role}\",state=\"{state}\"}} {n}"
            );
        }
        family(
            &mut o,
            "divisor_controller_messages_in",
            "counter",
            "Valid control messages received, by type.",
        );
        for (k, n) in &self.messages_in {
            let _ = writeln!(
                o,
                "divisor_controller_messages_in_total{{type=\"{k}\"}} {n}"
            );
        }
        family(
            &mut o,
            "divisor_controller_messages_out",
            "counter",
            "Control messages sent, by type.",
        );
        for (k, n) in &self.messages_out {
            let _ = writeln!(
                o,
                "divisor_controller_messages_out_total{{type=\"{k}\"}} {n}"
            );
        }
        family(
            &mut o,
            "divisor_controller_invalid_messages",
            "counter",
            "Control messages refused before reading (bad tag, stale, replay, malformed, too large), by the ERROR code answered.",
        );
        for (k, n) in &self.invalid {
            let _ = writeln!(
                o,
                "divisor_controller_invalid_messages_total{{code=\"{k}\"}} {n}"
            );
        }
        family(
            &mut o,
            "divisor_controller_refused_messages",
            "counter",
            "Valid messages refused (no HELLO yet, wrong sender, role conflict).",
        );
        let _ = writeln!(
            o,
            "divisor_controller_refused_messages_total {}",
            self.refused
        );
        family(
            &mut o,
            "divisor_controller_repairs",
            "counter",
            "Tree repairs, by cause.",
        );
        for (k, n) in &self.repairs {
            let _ = writeln!(
                o,
                "divisor_controller_repairs_total{{cause=\"{}\"}} {n}",
                esc(k)
            );
        }
        family(
            &mut o,
            "divisor_controller_rebuilds",
            "counter",
            "Full rebuilds of the plan.",
        );
        let _ = writeln!(o, "divisor_controller_rebuilds_total {}", self.rebuilds);
        family(
            &mut o,
            "divisor_controller_node_redirects",
            "counter",
            "REDIRECT messages sent to nodes (new upstream lists).",
        );
        let _ = writeln!(
            o,
            "divisor_controller_node_redirects_total {}",
            self.node_redirects
        );
        family(
            &mut o,
            "divisor_controller_client_redirects",
            "counter",
            "Clients sent to each public reflector.",
        );
        for (k, n) in &self.client_redirects {
            let _ = writeln!(
                o,
                "divisor_controller_client_redirects_total{{target=\"{}\"}} {n}",
                esc(k)
            );
        }
        family(
            &mut o,
            "divisor_controller_redirects_refused",
            "counter",
            "Clients that could not be placed, by reason.",
        );
        for (k, n) in &self.redirects_refused {
            let _ = writeln!(
                o,
                "divisor_controller_redirects_refused_total{{reason=\"{k}\"}} {n}"
            );
        }
        family(
            &mut o,
            "divisor_controller_scale_actions",
            "counter",
            "Scale actions taken (grow, deploy, drain, kill, undeploy, ...), by reason.",
        );
        for ((k, r), n) in &self.scale_actions {
            let _ = writeln!(
                o,
                "divisor_controller_scale_actions_total{{action=\"{k}\",reason=\"{r}\"}} {n}"
            );
        }
        family(
            &mut o,
            "divisor_controller_decision_seconds",
            "histogram",
            "Time the controller core took to handle one event, by kind.",
        );
        for (kind, h) in &self.decisions {
            let mut cum = 0;
            for (i, b) in DECISION_BUCKETS.iter().enumerate() {
                cum += h.buckets[i];
                let _ = writeln!(
                    o,
                    "divisor_controller_decision_seconds_bucket{{kind=\"{kind}\",le=\"{b}\"}} {cum}"
                );
            }
            let _ = writeln!(
                o,
                "divisor_controller_decision_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "divisor_controller_decision_seconds_sum{{kind=\"{kind}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "divisor_controller_decision_seconds_count{{kind=\"{kind}\"}} {}",
                h.count
            );
        }
        family(
            &mut o,
            "divisor_controller_aggregate_viewers",
            "gauge",
            "Viewers in each master's subtree (its last STATS).",
        );
        for (m, (_, s)) in aggregates {
            let _ = writeln!(
                o,
                "divisor_controller_aggregate_viewers{{master=\"{}\"}} {}",
                esc(m),
                s.viewers
            );
        }
        family(
            &mut o,
            "divisor_controller_aggregate_cpu_load",
            "gauge",
            "Mean CPU load over each master's subtree, weighted by subtree size.",
        );
        for (m, (_, s)) in aggregates {
            let _ = writeln!(
                o,
                "divisor_controller_aggregate_cpu_load{{master=\"{}\"}} {}",
                esc(m),
                s.cpu_load
            );
        }
        family(
            &mut o,
            "divisor_controller_aggregate_egress_bps",
            "gauge",
            "Egress of each master's subtree (bits per second).",
        );
        for (m, (_, s)) in aggregates {
            let _ = writeln!(
                o,
                "divisor_controller_aggregate_egress_bps{{master=\"{}\"}} {}",
                esc(m),
                s.egress_bps
            );
        }
        family(
            &mut o,
            "divisor_controller_aggregate_channel_jitter_ms",
            "gauge",
            "Per channel, the viewers' mean inter-arrival jitter in each master's subtree.",
        );
        for (m, (_, s)) in aggregates {
            for c in &s.channels {
                let _ = writeln!(
                    o,
                    "divisor_controller_aggregate_channel_jitter_ms{{master=\"{}\",channel=\"{}\"}} {}",
                    esc(m),
                    esc(&c.id),
                    c.jitter_ms
                );
            }
        }
        family(
            &mut o,
            "divisor_controller_aggregate_channel_lost",
            "gauge",
            "Per channel, the cumulative packets lost by the viewers of each master's subtree.",
        );
        for (m, (_, s)) in aggregates {
            for c in &s.channels {
                let _ = writeln!(
                    o,
                    "divisor_controller_aggregate_channel_lost{{master=\"{}\",channel=\"{}\"}} {}",
                    esc(m),
                    esc(&c.id),
                    c.cum_lost
                );
            }
        }
        o.push_str("# EOF\n");
        o
    }
}

/// Escape a label value (OpenMetrics: backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
