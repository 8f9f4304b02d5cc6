//! Request counts and latencies of one model server, for `deployments`.
//! They live in the server, so they survive restarts of the node.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Latencies kept for the percentiles: the most recent ones.
const WINDOW: usize = 4096;
/// The span `requests_per_second` is measured over.
const RATE_SPAN: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Stats {
    started: Instant,
    requests: u64,
    errors: u64,
    total_ms: f64,
    /// (when it finished, latency ms) of the latest successful requests.
    recent: VecDeque<(Instant, f64)>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            requests: 0,
            errors: 0,
            total_ms: 0.0,
            recent: VecDeque::with_capacity(WINDOW),
        }
    }

    pub fn record(&mut self, latency_ms: f64, ok: bool) {
        self.requests += 1;
        if !ok {
            self.errors += 1;
            return;
        }
        self.total_ms += latency_ms;
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((Instant::now(), latency_ms));
    }

    /// `request_count`, `error_count`, `avg/p50/p95_latency_ms` (of
    /// successful requests), `requests_per_second` over the last minute.
    pub fn to_json(&self) -> Value {
        let mut sorted: Vec<f64> = self.recent.iter().map(|(_, ms)| *ms).collect();
        sorted.sort_by(f64::total_cmp);
        let ok = self.requests - self.errors;
        let now = Instant::now();
        let span = now
            .duration_since(self.started)
            .min(RATE_SPAN)
            .as_secs_f64();
        let in_span = self
            .recent
            .iter()
            .filter(|(at, _)| now.duration_since(*at) <= RATE_SPAN)
            .count();
        json!({
            "request_count": self.requests,
            "error_count": self.errors,
            "avg_latency_ms": (ok > 0).then(|| round3(self.total_ms / ok as f64)),
            "p50_latency_ms": percentile(&sorted, 0.50).map(round3),
            "p95_latency_ms": percentile(&sorted, 0.95).map(round3),
            "requests_per_second": if span > 0.0 { round3(in_span as f64 / span) } else { 0.0 },
        })
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[index])
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles() {
        let mut stats = Stats::new();
        assert_eq!(stats.to_json()["p50_latency_ms"], Value::Null);
        for ms in 1..=100 {
            stats.record(ms as f64, true);
        }
        stats.record(5000.0, false);
        let json = stats.to_json();
        assert_eq!(json["request_count"], 101);
        assert_eq!(json["error_count"], 1);
        assert_eq!(json["p50_latency_ms"], 51.0);
        assert_eq!(json["p95_latency_ms"], 95.0);
        assert_eq!(json["avg_latency_ms"], 50.5);
        assert!(json["requests_per_second"].as_f64().unwrap() > 0.0);
    }
}
