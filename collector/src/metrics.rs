//! The collector's own Prometheus metrics (served on `--listen` at `/metrics`). Injected as one
//! struct, not globals, so tests assert on it directly.
//!
//! The exposition (names, `# HELP` / `# TYPE`, label escaping, number formatting) is written by
//! the `prometheus-client` crate's Prometheus text encoder (format version 0.0.4,
//! [`CONTENT_TYPE`]), not by hand. Exported names, unchanged from the hand-written version and
//! used by `manifests/grafana/` and `docs/operations.md`:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `collector_scrapes_total` | counter | `pod` |
//! | `collector_scrape_duration_seconds_total` | counter | `pod` |
//! | `collector_scrape_errors_total` | counter | `pod`, `reason` |
//! | `collector_pods_ready` | gauge | |
//! | `collector_pods` | gauge | |
//! | `collector_rounds_total` | counter | |
//! | `collector_round_duration_seconds` | histogram | |
//! | `collector_push_duration_seconds` | histogram | |
//! | `collector_scrape_to_push_seconds` | histogram | |
//! | `collector_pushes_total` | counter | `url`, `status` |
//! | `collector_relay_batches_total` | counter | `status` (answer to `POST /relay`) |
//!
//! prometheus-client appends `_total` to every counter itself, so counters are registered
//! without it (`collector_rounds` is exported as `collector_rounds_total`), and
//! `Registry::register` appends a `.` to the help text, so help strings given to it have none.
//! A family with no series yet (no pod scraped, no push made) is left out, `# HELP` and
//! `# TYPE` included.
//!
//! Adding a metric: a `pub` field of a prometheus-client type (or [`Histogram`]), created and
//! registered in [`Metrics::default`] (one `reg.register(…)` line with a clone: the types are
//! shared handles).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Bucket bounds in seconds, shared by every histogram here.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A latency histogram with [`BUCKETS`]; observes durations in seconds.
#[derive(Debug)]
pub struct Histogram {
    hist: prometheus_client::metrics::histogram::Histogram,
    /// Observations so far (prometheus-client reads its own count only with `test-util`).
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            hist: prometheus_client::metrics::histogram::Histogram::new(BUCKETS),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.hist.observe(d.as_secs_f64());
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default, Clone)]
pub struct PodStats {
    pub scrapes: u64,
    pub latency_sum: f64,
    /// Failed scrapes by reason (`connect`, `timeout`, `status`, `too_large`, `parse`, `missing`…).
    pub errors: BTreeMap<&'static str, u64>,
}

/// A pod's address as a label value (`10.0.0.1:8000`, `[fd00::1]:8000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PodAddr(SocketAddr);

impl EncodeLabelValue for PodAddr {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        write!(encoder, "{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PodLabels {
    pod: PodAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PodErrorLabels {
    pod: PodAddr,
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PushLabels {
    url: String,
    status: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RelayLabels {
    status: u16,
}

/// The per-pod table. One lock per scrape result (rather than three metric families) and pods
/// that leave discovery are dropped whole; it is exposed through prometheus-client's
/// [`Collector`], which writes its series on each render.
#[derive(Debug, Default)]
struct PodTable(Mutex<HashMap<SocketAddr, PodStats>>);

impl Collector for PodTable {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut pods: Vec<(SocketAddr, PodStats)> = self
            .0
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        if pods.is_empty() {
            return Ok(());
        }
        pods.sort_by_key(|(a, _)| *a);
        // Descriptors are given without `_total` and with their final `.`: the encoder appends
        // the suffix to counters, and only `Registry::register` adds the dot.
        let mut m = encoder.encode_descriptor("collector_scrapes", "Scrapes per pod.", None, MetricType::Counter)?;
        for (a, s) in &pods {
            ConstCounter::new(s.scrapes).encode(m.encode_family(&PodLabels { pod: PodAddr(*a) })?)?;
        }
        let mut m = encoder.encode_descriptor(
            "collector_scrape_duration_seconds",
            "Time spent scraping per pod.",
            None,
            MetricType::Counter,
        )?;
        for (a, s) in &pods {
            ConstCounter::new(s.latency_sum).encode(m.encode_family(&PodLabels { pod: PodAddr(*a) })?)?;
        }
        if pods.iter().any(|(_, s)| !s.errors.is_empty()) {
            let mut m = encoder.encode_descriptor(
                "collector_scrape_errors",
                "Failed scrapes per pod and reason.",
                None,
                MetricType::Counter,
            )?;
            for (a, s) in &pods {
                for (reason, n) in &s.errors {
                    let labels = PodErrorLabels {
                        pod: PodAddr(*a),
                        reason,
                    };
                    ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pods: Arc<PodTable>,
    pub pods_ready: Gauge<u64, AtomicU64>,
    pub pods_total: Gauge<u64, AtomicU64>,
    pub rounds: Counter,
    pub round_duration: Histogram,
    pub push_latency: Histogram,
    /// Time from the last scrape of a round to the push of its snapshot completing.
    pub scrape_to_push: Histogram,
    /// Push outcomes by (url, status) where status is the HTTP code or `error`.
    push_results: Family<PushLabels, Counter>,
    /// `POST /relay` answers by HTTP status.
    relay_results: Family<RelayLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            pods: Arc::default(),
            pods_ready: Gauge::default(),
            pods_total: Gauge::default(),
            rounds: Counter::default(),
            round_duration: Histogram::default(),
            push_latency: Histogram::default(),
            scrape_to_push: Histogram::default(),
            push_results: Family::default(),
            relay_results: Family::default(),
        };
        let mut reg = Registry::default();
        // Help text without the final `.` (register adds it); counters without `_total`.
        reg.register(
            "collector_pods_ready",
            "Pods ready in the last snapshot",
            m.pods_ready.clone(),
        );
        reg.register("collector_pods", "Pods discovered", m.pods_total.clone());
        reg.register("collector_rounds", "Scrape rounds", m.rounds.clone());
        reg.register(
            "collector_round_duration_seconds",
            "Scrape round duration",
            m.round_duration.hist.clone(),
        );
        reg.register(
            "collector_push_duration_seconds",
            "Snapshot push latency (successful pushes)",
            m.push_latency.hist.clone(),
        );
        reg.register(
            "collector_scrape_to_push_seconds",
            "Last scrape of a round to its push completing",
            m.scrape_to_push.hist.clone(),
        );
        reg.register(
            "collector_pushes",
            "Pushes by gateway URL and HTTP status (or error)",
            m.push_results.clone(),
        );
        reg.register(
            "collector_relay_batches",
            "Relay batches posted to /relay, by answer",
            m.relay_results.clone(),
        );
        reg.register_collector(Box::new(m.pods.clone()));
        Metrics { registry: reg, ..m }
    }
}

impl Metrics {
    pub fn scrape_ok(&self, pod: SocketAddr, latency: Duration) {
        if let Ok(mut m) = self.pods.0.lock() {
            let s = m.entry(pod).or_default();
            s.scrapes += 1;
            s.latency_sum += latency.as_secs_f64();
        }
    }

    pub fn scrape_err(&self, pod: SocketAddr, latency: Duration, reason: &'static str) {
        if let Ok(mut m) = self.pods.0.lock() {
            let s = m.entry(pod).or_default();
            s.scrapes += 1;
            s.latency_sum += latency.as_secs_f64();
            *s.errors.entry(reason).or_default() += 1;
        }
    }

    pub fn forget_pod(&self, pod: &SocketAddr) {
        if let Ok(mut m) = self.pods.0.lock() {
            m.remove(pod);
        }
    }

    pub fn pod(&self, pod: &SocketAddr) -> Option<PodStats> {
        self.pods.0.lock().ok()?.get(pod).cloned()
    }

    pub fn push_result(&self, url: &str, status: &str) {
        self.push_results
            .get_or_create(&PushLabels {
                url: url.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    pub fn relay_result(&self, status: u16) {
        self.relay_results.get_or_create(&RelayLabels { status }).inc();
    }

    pub fn relay_count(&self, status: u16) -> u64 {
        self.relay_results.get(&RelayLabels { status }).map_or(0, |c| c.get())
    }

    pub fn push_count(&self, url: &str, status: &str) -> u64 {
        self.push_results
            .get(&PushLabels {
                url: url.to_string(),
                status: status.to_string(),
            })
            .map_or(0, |c| c.get())
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail, nor can any metric here.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom;

    /// Every sample of `text` as `name{label="value",…}` (labels sorted, values unescaped) →
    /// value, read back with the collector's own exposition parser.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        prom::parse(text.as_bytes(), |s| {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|l| (l.name.to_string(), l.value().into_owned()))
                .collect();
            labels.sort();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            let key = if labels.is_empty() {
                s.name.to_string()
            } else {
                format!("{}{{{}}}", s.name, labels.join(","))
            };
            assert!(out.insert(key.clone(), s.value).is_none(), "duplicate series {key}");
        })
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        out
    }

    /// `# TYPE` lines as (name, type), in order.
    fn types(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (n, t) = l.split_once(' ').unwrap();
                (n.to_string(), t.to_string())
            })
            .collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_metrics_export_the_unlabelled_series_at_zero() {
        let m = Metrics::default();
        let text = m.render();
        let s = samples(&text);
        assert_eq!(s["collector_pods_ready"], 0.0);
        assert_eq!(s["collector_pods"], 0.0);
        assert_eq!(s["collector_rounds_total"], 0.0);
        assert_eq!(s["collector_round_duration_seconds_count"], 0.0);
        assert_eq!(s["collector_round_duration_seconds_bucket{le=\"+Inf\"}"], 0.0);
        assert!(!text.contains("collector_scrapes_total"), "{text}");
        assert!(!text.contains("collector_pushes_total"), "{text}");
    }

    #[test]
    fn names_types_and_values_match_the_documented_exposition() {
        let m = Metrics::default();
        let (a, b) = (addr("10.0.0.2:8000"), addr("[fd00::1]:8000"));
        m.scrape_ok(a, Duration::from_millis(3));
        m.scrape_ok(a, Duration::from_millis(5));
        m.scrape_err(a, Duration::from_millis(200), "timeout");
        m.scrape_err(b, Duration::from_millis(1), "connect");
        m.scrape_err(b, Duration::from_millis(1), "connect");
        m.scrape_err(b, Duration::from_millis(2), "parse");
        m.pods_ready.set(1);
        m.pods_total.set(2);
        m.rounds.inc();
        m.rounds.inc();
        m.round_duration.observe(Duration::from_micros(300)); // ≤ 0.0005
        m.round_duration.observe(Duration::from_millis(30)); // ≤ 0.05
        m.round_duration.observe(Duration::from_secs(3)); // only +Inf
        m.push_latency.observe(Duration::from_millis(2));
        m.scrape_to_push.observe(Duration::from_millis(7));
        m.push_result("http://gw:9002/.well-known/wasm-epp/snapshot", "204");
        m.push_result("http://gw:9002/.well-known/wasm-epp/snapshot", "204");
        m.push_result("http://gw:9002/.well-known/wasm-epp/snapshot", "error");
        m.relay_result(204);
        m.relay_result(204);
        m.relay_result(400);
        let text = m.render();

        // The names and types the Grafana dashboard and docs use, as before the crate.
        let mut got = types(&text);
        got.sort();
        let mut want: Vec<(String, String)> = [
            ("collector_scrapes_total", "counter"),
            ("collector_scrape_duration_seconds_total", "counter"),
            ("collector_scrape_errors_total", "counter"),
            ("collector_pods_ready", "gauge"),
            ("collector_pods", "gauge"),
            ("collector_rounds_total", "counter"),
            ("collector_round_duration_seconds", "histogram"),
            ("collector_push_duration_seconds", "histogram"),
            ("collector_scrape_to_push_seconds", "histogram"),
            ("collector_pushes_total", "counter"),
            ("collector_relay_batches_total", "counter"),
        ]
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
        want.sort();
        assert_eq!(got, want, "{text}");
        // One `# HELP` per family, same name, ending in exactly one dot.
        for (name, _) in &want {
            let help = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
                .unwrap_or_else(|| panic!("no HELP for {name}"));
            assert!(help.ends_with('.') && !help.ends_with(".."), "{name}: {help}");
        }

        let s = samples(&text);
        let close = |k: &str, v: f64| assert!((s[k] - v).abs() < 1e-9, "{k} = {} want {v}", s[k]);
        assert_eq!(s["collector_scrapes_total{pod=\"10.0.0.2:8000\"}"], 3.0);
        assert_eq!(s["collector_scrapes_total{pod=\"[fd00::1]:8000\"}"], 3.0);
        close("collector_scrape_duration_seconds_total{pod=\"10.0.0.2:8000\"}", 0.208);
        close("collector_scrape_duration_seconds_total{pod=\"[fd00::1]:8000\"}", 0.004);
        assert_eq!(
            s["collector_scrape_errors_total{pod=\"10.0.0.2:8000\",reason=\"timeout\"}"],
            1.0
        );
        assert_eq!(
            s["collector_scrape_errors_total{pod=\"[fd00::1]:8000\",reason=\"connect\"}"],
            2.0
        );
        assert_eq!(
            s["collector_scrape_errors_total{pod=\"[fd00::1]:8000\",reason=\"parse\"}"],
            1.0
        );
        assert_eq!(
            s.keys()
                .filter(|k| k.starts_with("collector_scrape_errors_total"))
                .count(),
            3
        );
        assert_eq!(s["collector_pods_ready"], 1.0);
        assert_eq!(s["collector_pods"], 2.0);
        assert_eq!(s["collector_rounds_total"], 2.0);

        // Histogram buckets are cumulative, `le` values as before (`0.0005`, `1`, `+Inf`).
        let le = |v: &str| s[&format!("collector_round_duration_seconds_bucket{{le=\"{v}\"}}")];
        assert_eq!(le("0.0005"), 1.0);
        assert_eq!(le("0.025"), 1.0);
        assert_eq!(le("0.05"), 2.0);
        assert_eq!(le("1"), 2.0);
        assert_eq!(le("2.5"), 2.0);
        assert_eq!(le("+Inf"), 3.0);
        let buckets = s
            .keys()
            .filter(|k| k.starts_with("collector_round_duration_seconds_bucket"))
            .count();
        assert_eq!(buckets, BUCKETS.len() + 1);
        assert_eq!(s["collector_round_duration_seconds_count"], 3.0);
        close("collector_round_duration_seconds_sum", 3.0303);
        assert_eq!(m.round_duration.count(), 3);
        assert_eq!(s["collector_push_duration_seconds_bucket{le=\"0.002\"}"], 1.0);
        assert_eq!(s["collector_push_duration_seconds_bucket{le=\"0.001\"}"], 0.0);
        assert_eq!(s["collector_scrape_to_push_seconds_bucket{le=\"0.01\"}"], 1.0);
        assert_eq!(s["collector_scrape_to_push_seconds_bucket{le=\"0.005\"}"], 0.0);

        let url = "http://gw:9002/.well-known/wasm-epp/snapshot";
        assert_eq!(s[&format!("collector_pushes_total{{status=\"204\",url={url:?}}}")], 2.0);
        assert_eq!(
            s[&format!("collector_pushes_total{{status=\"error\",url={url:?}}}")],
            1.0
        );
        assert_eq!(m.push_count(url, "204"), 2);
        assert_eq!(m.push_count(url, "409"), 0);
        assert_eq!(s["collector_relay_batches_total{status=\"204\"}"], 2.0);
        assert_eq!(s["collector_relay_batches_total{status=\"400\"}"], 1.0);
        assert_eq!((m.relay_count(204), m.relay_count(400), m.relay_count(413)), (2, 1, 0));
    }

    #[test]
    fn label_values_are_escaped_and_read_back_unchanged() {
        let m = Metrics::default();
        let url = "http://gw/a\"b\\c\nd";
        m.push_result(url, "204");
        let text = m.render();
        assert!(text.contains(r#"url="http://gw/a\"b\\c\nd""#), "{text}");
        let mut seen = Vec::new();
        prom::parse(text.as_bytes(), |s| {
            if s.name == "collector_pushes_total" {
                seen.push((s.label("url").unwrap().into_owned(), s.value));
            }
        })
        .unwrap();
        assert_eq!(seen, vec![(url.to_string(), 1.0)]);
    }

    #[test]
    fn forgotten_pods_leave_the_exposition() {
        let m = Metrics::default();
        let (a, b) = (addr("10.0.0.1:8000"), addr("10.0.0.2:8000"));
        m.scrape_err(a, Duration::from_millis(1), "connect");
        m.scrape_ok(b, Duration::from_millis(1));
        m.forget_pod(&a);
        assert!(m.pod(&a).is_none());
        assert_eq!(m.pod(&b).unwrap().scrapes, 1);
        let s = samples(&m.render());
        assert!(s.keys().all(|k| !k.contains("10.0.0.1:8000")), "{s:?}");
        assert_eq!(s["collector_scrapes_total{pod=\"10.0.0.2:8000\"}"], 1.0);
        // No pod has errors left: the errors family is gone, HELP and TYPE included.
        assert!(!m.render().contains("collector_scrape_errors_total"));
    }
}
