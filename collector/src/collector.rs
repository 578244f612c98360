//! The scrape loop: one table of pods, one round per interval, one snapshot per round.
//!
//! ```text
//!  tick ─▶ round: for every pod not already in flight, spawn scrape(jitter, timeout, cap)
//!          wait for this round's scrapes, at most 80% of the interval (a slow pod finishes in
//!          the background and lands in a later round: it never delays the others)
//!       ─▶ snapshot(sequence, now) ─▶ watch channel (latest wins) ─▶ push tasks, /snapshot
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use picker_core::snapshot::{Endpoint, Snapshot};
use picker_core::time::Instant as PInstant;
use tokio::sync::mpsc;

use crate::engine::{self, Engine, PodMetrics};
use crate::http::{HttpError, ScrapeConn};
use crate::metrics::Metrics;

/// One discovered scrape target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub engine: Engine,
    /// Readiness reported by discovery (Kubernetes pod condition); true elsewhere.
    pub ready: bool,
}

impl Target {
    pub fn new(addr: SocketAddr, engine: Engine) -> Self {
        Target {
            addr,
            engine,
            ready: true,
        }
    }
}

/// Wall clock in milliseconds since the UNIX epoch (the filter compares snapshot times with its
/// own wall clock in ms).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The snapshot sequence. Starts at `unix_ms × 1000` so that it keeps increasing across
/// restarts (the filter answers 409 to a sequence ≤ the stored one): a restarted collector
/// starts above any sequence its predecessor could have reached unless that one pushed more
/// than 1,000 snapshots per millisecond of its lifetime (it pushes one per interval).
#[derive(Debug)]
pub struct Sequence(AtomicU64);

impl Sequence {
    pub fn from_clock() -> Self {
        Sequence(AtomicU64::new(unix_ms().saturating_mul(1000)))
    }

    pub fn starting_at(v: u64) -> Self {
        Sequence(AtomicU64::new(v))
    }

    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// After a 409 naming the stored sequence: the next snapshot is numbered above it.
    pub fn bump_past(&self, stored: u64) {
        self.0.fetch_max(stored, Ordering::Relaxed);
    }
}

/// Scrape settings.
#[derive(Clone, Debug)]
pub struct ScrapeConfig {
    pub metrics_path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub fail_after: u32,
    pub max_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{0}")]
    Http(#[from] HttpError),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("{0}")]
    Extract(#[from] engine::ExtractError),
}

impl ScrapeError {
    pub fn reason(&self) -> &'static str {
        match self {
            ScrapeError::Http(HttpError::Connect(_)) => "connect",
            ScrapeError::Http(HttpError::Timeout) => "timeout",
            ScrapeError::Http(HttpError::TooLarge(_)) => "too_large",
            ScrapeError::Http(_) => "http",
            ScrapeError::Status(_) => "status",
            ScrapeError::Extract(engine::ExtractError::Parse(_)) => "parse",
            ScrapeError::Extract(_) => "missing_metric",
        }
    }
}

struct Done {
    addr: SocketAddr,
    conn: ScrapeConn,
    result: Result<PodMetrics, ScrapeError>,
    latency: Duration,
    finished: Instant,
    round: u64,
}

#[derive(Debug)]
struct Pod {
    engine: Engine,
    discovered_ready: bool,
    conn: Option<ScrapeConn>,
    in_flight: bool,
    fails: u32,
    last: Option<PodMetrics>,
    scraped_at_ms: u64,
}

impl std::fmt::Debug for ScrapeConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScrapeConn({})", self.addr())
    }
}

/// What one round did (for logs and the benchmark).
#[derive(Clone, Debug, Default)]
pub struct RoundReport {
    pub started: usize,
    pub completed: usize,
    pub failed: usize,
    pub duration: Duration,
    /// When the last scrape of this round finished (None if none finished).
    pub last_scrape: Option<Instant>,
}

pub struct Collector {
    cfg: ScrapeConfig,
    pods: HashMap<SocketAddr, Pod>,
    order: Vec<SocketAddr>,
    tx: mpsc::UnboundedSender<Done>,
    rx: mpsc::UnboundedReceiver<Done>,
    round: u64,
    metrics: Arc<Metrics>,
}

impl Collector {
    pub fn new(cfg: ScrapeConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Collector {
            cfg,
            pods: HashMap::new(),
            order: Vec::new(),
            tx,
            rx,
            round: 0,
            metrics,
        }
    }

    /// Replaces the target set; pods that stay keep their state and connection.
    pub fn set_targets(&mut self, targets: &[Target]) {
        let mut keep: HashMap<SocketAddr, &Target> = HashMap::with_capacity(targets.len());
        for t in targets {
            keep.insert(t.addr, t);
        }
        self.pods.retain(|a, _| keep.contains_key(a));
        for a in self.order.iter().filter(|a| !keep.contains_key(a)) {
            self.metrics.forget_pod(a);
        }
        self.order.clear();
        for t in targets {
            if self.order.contains(&t.addr) {
                continue;
            }
            self.order.push(t.addr);
            let pod = self.pods.entry(t.addr).or_insert_with(|| Pod {
                engine: t.engine,
                discovered_ready: t.ready,
                conn: Some(ScrapeConn::new(t.addr, &self.cfg.metrics_path)),
                in_flight: false,
                fails: 0,
                last: None,
                scraped_at_ms: 0,
            });
            pod.engine = t.engine;
            pod.discovered_ready = t.ready;
        }
        self.metrics.pods_total.set(self.order.len() as u64);
    }

    pub fn pod_count(&self) -> usize {
        self.order.len()
    }

    fn apply(&mut self, done: Done) -> bool {
        let Some(pod) = self.pods.get_mut(&done.addr) else {
            return false; // removed meanwhile
        };
        pod.in_flight = false;
        pod.conn = Some(done.conn);
        match done.result {
            Ok(m) => {
                self.metrics.scrape_ok(done.addr, done.latency);
                pod.fails = 0;
                pod.last = Some(m);
                pod.scraped_at_ms = unix_ms();
                true
            }
            Err(e) => {
                self.metrics.scrape_err(done.addr, done.latency, e.reason());
                pod.fails = pod.fails.saturating_add(1);
                if pod.fails == self.cfg.fail_after {
                    tracing::warn!(pod = %done.addr, error = %e, fails = pod.fails, "pod marked not ready");
                } else {
                    tracing::debug!(pod = %done.addr, error = %e, fails = pod.fails, "scrape failed");
                }
                false
            }
        }
    }

    /// Runs one round: starts a scrape of every idle pod and waits for them, at most
    /// `wait` (the run loop passes 80% of the interval).
    pub async fn round(&mut self, wait: Duration) -> RoundReport {
        let start = Instant::now();
        self.round += 1;
        let round = self.round;
        // Results that arrived after their round's deadline.
        while let Ok(d) = self.rx.try_recv() {
            self.apply(d);
        }
        let mut report = RoundReport::default();
        let jitter_max = (self.cfg.interval / 10).min(Duration::from_millis(5));
        for addr in &self.order {
            let Some(pod) = self.pods.get_mut(addr) else { continue };
            if pod.in_flight {
                continue;
            }
            let Some(mut conn) = pod.conn.take() else { continue };
            pod.in_flight = true;
            report.started += 1;
            let (tx, engine, timeout, max_bytes) = (self.tx.clone(), pod.engine, self.cfg.timeout, self.cfg.max_bytes);
            let addr = *addr;
            let jitter = Duration::from_micros(fastrand::u64(0..=jitter_max.as_micros() as u64));
            tokio::spawn(async move {
                tokio::time::sleep(jitter).await;
                let t0 = Instant::now();
                // A request cut off by the timeout leaves the connection marked in flight: the
                // next request starts on a new one.
                let result = match tokio::time::timeout(timeout, scrape(&mut conn, engine, max_bytes)).await {
                    Ok(r) => r,
                    Err(_) => Err(ScrapeError::Http(HttpError::Timeout)),
                };
                let finished = Instant::now();
                let _ = tx.send(Done {
                    addr,
                    conn,
                    result,
                    latency: finished - t0,
                    finished,
                    round,
                });
            });
        }
        // One timer for the whole wait (a `timeout_at` per result would register one per pod).
        let deadline = tokio::time::sleep_until(tokio::time::Instant::from_std(start + wait));
        tokio::pin!(deadline);
        let mut pending = report.started;
        while pending > 0 {
            let done = tokio::select! {
                biased;
                d = self.rx.recv() => d,
                _ = &mut deadline => None,
            };
            let Some(d) = done else { break };
            let (r, finished) = (d.round, d.finished);
            let ok = self.apply(d);
            if r == round {
                pending -= 1;
                report.completed += 1;
                if !ok {
                    report.failed += 1;
                }
                report.last_scrape = Some(report.last_scrape.map_or(finished, |l| l.max(finished)));
            }
        }
        report.duration = start.elapsed();
        self.metrics.rounds.inc();
        self.metrics.round_duration.observe(report.duration);
        report
    }

    /// The snapshot of the pod table now.
    pub fn snapshot(&self, sequence: u64, now_ms: u64) -> Snapshot {
        let mut endpoints = Vec::with_capacity(self.order.len());
        let mut ready = 0u64;
        for addr in &self.order {
            let Some(pod) = self.pods.get(addr) else { continue };
            let mut ep = Endpoint::new(*addr, PInstant::from_millis(pod.scraped_at_ms));
            match &pod.last {
                Some(m) => {
                    ep.ready = pod.discovered_ready && pod.fails < self.cfg.fail_after;
                    ep.waiting = m.waiting;
                    ep.running = m.running;
                    ep.kv_usage = m.kv_usage;
                    ep.block_size = m.block_size;
                    ep.gpu_blocks = m.gpu_blocks;
                    ep.lora = m.lora.clone();
                    ep.models = m.models.clone();
                }
                // Never scraped successfully: listed, not ready.
                None => ep.ready = false,
            }
            ready += ep.ready as u64;
            endpoints.push(ep);
        }
        self.metrics.pods_ready.set(ready);
        Snapshot {
            sequence,
            generated_at: PInstant::from_millis(now_ms),
            endpoints,
        }
    }
}

async fn scrape(conn: &mut ScrapeConn, engine: Engine, max_bytes: usize) -> Result<PodMetrics, ScrapeError> {
    let resp = conn.get(max_bytes).await?;
    if !resp.is_success() {
        return Err(ScrapeError::Status(resp.status));
    }
    Ok(engine::extract(engine, resp.body)?)
}
