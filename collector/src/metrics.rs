//! The collector's own Prometheus metrics (served on `--listen` at `/metrics`). Injected as one
//! struct, not globals, so tests assert on it directly.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Bucket bounds in seconds, shared by every histogram here.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

#[derive(Debug, Default)]
pub struct Histogram {
    inner: Mutex<HistInner>,
}

#[derive(Debug, Default, Clone)]
struct HistInner {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        if let Ok(mut h) = self.inner.lock() {
            for (i, b) in BUCKETS.iter().enumerate() {
                if v <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += v;
        }
    }

    pub fn count(&self) -> u64 {
        self.inner.lock().map_or(0, |h| h.count)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let h = self.inner.lock().map(|h| h.clone()).unwrap_or_default();
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
}

#[derive(Debug, Default, Clone)]
pub struct PodStats {
    pub scrapes: u64,
    pub latency_sum: f64,
    /// Failed scrapes by reason (`connect`, `timeout`, `status`, `too_large`, `parse`, `missing`…).
    pub errors: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pods: Mutex<HashMap<SocketAddr, PodStats>>,
    pub pods_ready: AtomicU64,
    pub pods_total: AtomicU64,
    pub rounds: AtomicU64,
    pub round_duration: Histogram,
    pub push_latency: Histogram,
    /// Time from the last scrape of a round to the push of its snapshot completing.
    pub scrape_to_push: Histogram,
    /// Push outcomes by (url, status) where status is the HTTP code or `error`.
    push_results: Mutex<BTreeMap<(String, String), u64>>,
    /// `POST /relay` answers by HTTP status.
    relay_results: Mutex<BTreeMap<u16, u64>>,
}

impl Metrics {
    pub fn scrape_ok(&self, pod: SocketAddr, latency: Duration) {
        if let Ok(mut m) = self.pods.lock() {
            let s = m.entry(pod).or_default();
            s.scrapes += 1;
            s.latency_sum += latency.as_secs_f64();
        }
    }

    pub fn scrape_err(&self, pod: SocketAddr, latency: Duration, reason: &'static str) {
        if let Ok(mut m) = self.pods.lock() {
            let s = m.entry(pod).or_default();
            s.scrapes += 1;
            s.latency_sum += latency.as_secs_f64();
            *s.errors.entry(reason).or_default() += 1;
        }
    }

    pub fn forget_pod(&self, pod: &SocketAddr) {
        if let Ok(mut m) = self.pods.lock() {
            m.remove(pod);
        }
    }

    pub fn pod(&self, pod: &SocketAddr) -> Option<PodStats> {
        self.pods.lock().ok()?.get(pod).cloned()
    }

    pub fn push_result(&self, url: &str, status: &str) {
        if let Ok(mut m) = self.push_results.lock() {
            *m.entry((url.to_string(), status.to_string())).or_default() += 1;
        }
    }

    pub fn relay_result(&self, status: u16) {
        if let Ok(mut m) = self.relay_results.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    pub fn relay_count(&self, status: u16) -> u64 {
        self.relay_results
            .lock()
            .ok()
            .and_then(|m| m.get(&status).copied())
            .unwrap_or(0)
    }

    pub fn push_count(&self, url: &str, status: &str) -> u64 {
        self.push_results
            .lock()
            .ok()
            .and_then(|m| m.get(&(url.to_string(), status.to_string())).copied())
            .unwrap_or(0)
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let pods = self.pods.lock().map(|m| m.clone()).unwrap_or_default();
        let mut pods: Vec<_> = pods.into_iter().collect();
        pods.sort_by_key(|(a, _)| *a);
        out.push_str("# HELP collector_scrapes_total Scrapes per pod.\n# TYPE collector_scrapes_total counter\n");
        for (a, s) in &pods {
            let _ = writeln!(out, "collector_scrapes_total{{pod=\"{a}\"}} {}", s.scrapes);
        }
        out.push_str(
            "# HELP collector_scrape_duration_seconds_total Time spent scraping per pod.\n\
             # TYPE collector_scrape_duration_seconds_total counter\n",
        );
        for (a, s) in &pods {
            let _ = writeln!(
                out,
                "collector_scrape_duration_seconds_total{{pod=\"{a}\"}} {}",
                s.latency_sum
            );
        }
        out.push_str(
            "# HELP collector_scrape_errors_total Failed scrapes per pod and reason.\n\
             # TYPE collector_scrape_errors_total counter\n",
        );
        for (a, s) in &pods {
            for (r, n) in &s.errors {
                let _ = writeln!(out, "collector_scrape_errors_total{{pod=\"{a}\",reason=\"{r}\"}} {n}");
            }
        }
        let _ = write!(
            out,
            "# HELP collector_pods_ready Pods ready in the last snapshot.\n# TYPE collector_pods_ready gauge\n\
             collector_pods_ready {}\n# HELP collector_pods Pods discovered.\n# TYPE collector_pods gauge\n\
             collector_pods {}\n# HELP collector_rounds_total Scrape rounds.\n# TYPE collector_rounds_total counter\n\
             collector_rounds_total {}\n",
            self.pods_ready.load(Ordering::Relaxed),
            self.pods_total.load(Ordering::Relaxed),
            self.rounds.load(Ordering::Relaxed),
        );
        out.push_str("# HELP collector_round_duration_seconds Scrape round duration.\n# TYPE collector_round_duration_seconds histogram\n");
        self.round_duration
            .render(&mut out, "collector_round_duration_seconds", "");
        out.push_str("# HELP collector_push_duration_seconds Snapshot push latency (successful pushes).\n# TYPE collector_push_duration_seconds histogram\n");
        self.push_latency
            .render(&mut out, "collector_push_duration_seconds", "");
        out.push_str("# HELP collector_scrape_to_push_seconds Last scrape of a round to its push completing.\n# TYPE collector_scrape_to_push_seconds histogram\n");
        self.scrape_to_push
            .render(&mut out, "collector_scrape_to_push_seconds", "");
        out.push_str("# HELP collector_pushes_total Pushes by gateway URL and HTTP status (or error).\n# TYPE collector_pushes_total counter\n");
        if let Ok(m) = self.push_results.lock() {
            for ((url, status), n) in m.iter() {
                let url = url.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(out, "collector_pushes_total{{url=\"{url}\",status=\"{status}\"}} {n}");
            }
        }
        if let Ok(m) = self.relay_results.lock() {
            if !m.is_empty() {
                out.push_str("# HELP collector_relay_batches_total Relay batches posted to /relay, by answer.\n# TYPE collector_relay_batches_total counter\n");
            }
            for (status, n) in m.iter() {
                let _ = writeln!(out, "collector_relay_batches_total{{status=\"{status}\"}} {n}");
            }
        }
        out
    }
}
