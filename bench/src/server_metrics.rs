//! The server's own view of a level: its send-lateness histogram, scraped from our units'
//! Prometheus `/metrics` before and after the window.
//!
//! Issue 4's capacity bar is about *send* lateness at the sender (deadline to send call,
//! p99 at most 2 ms), which a receiver cannot see: the client-side lateness in
//! [`crate::capacity`] also holds the network and the receiver's own scheduling. Only our
//! servers export the histogram; peers are judged on the client-side figures alone.

use anyhow::{bail, Context, Result};
use std::time::Duration;

use divisor_tests::{Node, Topology};

/// Port of our units' `--http-listen` in the bench.
pub const HTTP_PORT: u16 = 8080;

/// Cumulative bucket counts of `send_lateness_seconds` at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lateness {
    /// (upper bound in seconds, cumulative count), ascending; the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl Lateness {
    /// Parses the histogram out of a Prometheus text exposition.
    pub fn parse(text: &str) -> Result<Lateness> {
        let mut buckets = Vec::new();
        for line in text.lines() {
            let Some(rest) = line
                .split_once("send_lateness_seconds_bucket{")
                .map(|(_, r)| r)
            else {
                continue;
            };
            let (labels, value) = rest
                .split_once('}')
                .with_context(|| format!("unterminated labels: {line}"))?;
            let le = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("le="))
                .with_context(|| format!("bucket without le: {line}"))?
                .trim_matches('"');
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>()
                    .with_context(|| format!("bad bucket bound: {line}"))?
            };
            let count = value
                .split_whitespace()
                .next()
                .unwrap_or("")
                .parse::<f64>()
                .with_context(|| format!("bad bucket count: {line}"))?;
            buckets.push((bound, count as u64));
        }
        if buckets.is_empty() {
            bail!("no send_lateness_seconds histogram in /metrics");
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Lateness { buckets })
    }

    /// What was recorded between `earlier` and `self` (same bucket bounds).
    pub fn since(&self, earlier: &Lateness) -> Lateness {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0, |&(_, c0)| c0);
                (le, c.saturating_sub(before))
            })
            .collect();
        Lateness { buckets }
    }

    /// Sends counted.
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |&(_, c)| c)
    }

    /// The `p`-th percentile in ms, as the upper bound of the bucket it falls in (so never
    /// better than the truth); `None` when nothing was counted, infinite when it lies
    /// beyond the largest finite bound.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let want = (p / 100.0 * total as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|&&(_, c)| c >= want)
            .map(|&(le, _)| le * 1e3)
    }
}

/// Scrapes `/metrics` of the unit at `ip` from the client namespace.
pub fn scrape(topo: &Topology) -> Result<Lateness> {
    let url = format!("http://{}:{HTTP_PORT}/metrics", topo.rtsp_ip);
    let out = topo.run_in(
        Node::Client,
        "curl",
        ["-sf", "--max-time", "5", &url],
        Duration::from_secs(8),
    )?;
    Lateness::parse(&out.stdout).with_context(|| format!("reading {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP divisor_send_lateness_seconds x\n\
        # TYPE divisor_send_lateness_seconds histogram\n\
        divisor_send_lateness_seconds_sum 1.5\n\
        divisor_send_lateness_seconds_count 1000\n\
        divisor_send_lateness_seconds_bucket{le=\"0.00005\"} 500\n\
        divisor_send_lateness_seconds_bucket{le=\"0.001\"} 980\n\
        divisor_send_lateness_seconds_bucket{le=\"0.002\"} 995\n\
        divisor_send_lateness_seconds_bucket{le=\"+Inf\"} 1000\n";

    #[test]
    fn percentiles_are_bucket_upper_bounds_of_the_window() {
        let after = Lateness::parse(TEXT).unwrap();
        assert_eq!(after.count(), 1000);
        assert_eq!(after.percentile_ms(50.0), Some(0.05));
        assert_eq!(after.percentile_ms(99.0), Some(2.0));
        assert_eq!(after.percentile_ms(99.9), Some(f64::INFINITY));
        let before = Lateness {
            buckets: vec![
                (0.00005, 400),
                (0.001, 400),
                (0.002, 400),
                (f64::INFINITY, 400),
            ],
        };
        let window = after.since(&before);
        assert_eq!(window.count(), 600);
        assert_eq!(window.percentile_ms(96.0), Some(1.0));
        assert_eq!(window.percentile_ms(99.0), Some(2.0));
    }

    #[test]
    fn text_without_the_histogram_is_an_error() {
        assert!(Lateness::parse("divisor_clients 3\n").is_err());
        assert!(Lateness::parse("x_send_lateness_seconds_bucket{le=\"a\"} 1").is_err());
        assert_eq!(Lateness::default().percentile_ms(99.0), None);
    }
}
