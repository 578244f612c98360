//! Envoy custom metrics, named in parallel with GIE's EPP metrics (`inference_objective_*`,
//! `inference_pool_*`). Envoy stores them under the `wasmcustom` namespace (Envoy
//! `source/extensions/common/wasm/stats_handler.h`, `CustomStatNamespace`). Counters only ever
//! get +1 (Envoy rejects deltas <= 0); gauges are set with `record`. A metric call that fails
//! is ignored: metrics never fail a request.

use picker_core::{Endpoint, Pool};

use super::abi::{self, MetricKind};

pub(super) struct Metrics {
    pub(super) requests: u32,
    errors: Vec<(u32, u32)>,
    per_model: Vec<(String, u32)>,
    pub(super) shed: u32,
    ready_pods: u32,
    avg_queue: u32,
    avg_kv_percent: u32,
    pub(super) snapshot_age_ms: u32,
    pub(super) degraded: u32,
    pub(super) decision_us: u32,
    pub(super) pushes_accepted: u32,
    pub(super) pushes_rejected: u32,
    pub(super) relay_sent: u32,
    pub(super) relay_failed: u32,
    pub(super) relay_applied: u32,
    pub(super) relay_dropped: u32,
    pub(super) relay_rejected: u32,
}

/// Per-model counters are defined lazily, up to this many models (bounded memory and stats).
const MAX_MODEL_METRICS: usize = 64;

impl Metrics {
    /// Defines every metric; `None` (and no metrics at all) if the host refuses one.
    pub(super) fn define() -> Option<Metrics> {
        let c = |n: &str| abi::define_metric(MetricKind::Counter, n).ok();
        let g = |n: &str| abi::define_metric(MetricKind::Gauge, n).ok();
        let mut errors = Vec::new();
        for code in [400u32, 404, 413, 429, 503] {
            errors.push((
                code,
                c(&format!("inference_objective_request_error_total.error_code.{code}"))?,
            ));
        }
        Some(Metrics {
            requests: c("inference_objective_request_total")?,
            errors,
            per_model: Vec::new(),
            shed: c("wasm_epp_shed_total")?,
            ready_pods: g("inference_pool_ready_pods")?,
            avg_queue: g("inference_pool_average_queue_size")?,
            avg_kv_percent: g("inference_pool_average_kv_cache_utilization_percent")?,
            snapshot_age_ms: g("wasm_epp_snapshot_age_ms")?,
            degraded: g("wasm_epp_degraded")?,
            decision_us: abi::define_metric(MetricKind::Histogram, "wasm_epp_decision_duration_us").ok()?,
            pushes_accepted: c("wasm_epp_snapshot_accepted_total")?,
            pushes_rejected: c("wasm_epp_snapshot_rejected_total")?,
            relay_sent: c("wasm_epp_relay_sent_total")?,
            relay_failed: c("wasm_epp_relay_send_failed_total")?,
            relay_applied: c("wasm_epp_relay_batches_applied_total")?,
            relay_dropped: c("wasm_epp_relay_batches_dropped_total")?,
            relay_rejected: c("wasm_epp_relay_rejected_total")?,
        })
    }

    pub(super) fn inc(id: u32) {
        let _ = abi::increment_metric(id, 1);
    }

    /// Adds `n` (nothing for 0: Envoy refuses deltas <= 0).
    pub(super) fn add(id: u32, n: u32) {
        if n > 0 {
            let _ = abi::increment_metric(id, i64::from(n));
        }
    }

    pub(super) fn set(id: u32, v: u64) {
        let _ = abi::record_metric(id, v);
    }

    pub(super) fn request(&mut self, model: &str) {
        Self::inc(self.requests);
        let id = match self.per_model.iter().find(|(m, _)| m == model) {
            Some((_, id)) => Some(*id),
            None if self.per_model.len() < MAX_MODEL_METRICS => {
                let name: String = model
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let id = abi::define_metric(
                    MetricKind::Counter,
                    &format!("inference_objective_request_total.model_name.{name}"),
                )
                .ok();
                if let Some(id) = id {
                    self.per_model.push((model.to_string(), id));
                }
                id
            }
            None => None,
        };
        if let Some(id) = id {
            Self::inc(id);
        }
    }

    pub(super) fn error(&self, status: u32) {
        if let Some((_, id)) = self.errors.iter().find(|(c, _)| *c == status) {
            Self::inc(*id);
        }
    }

    pub(super) fn pool(&self, pool: &Pool) {
        let eps = pool.endpoints();
        let ready: Vec<&Endpoint> = eps.iter().filter(|e| e.ready).collect();
        Self::set(self.ready_pods, ready.len() as u64);
        if !ready.is_empty() {
            let n = ready.len() as f64;
            Self::set(
                self.avg_queue,
                (ready.iter().map(|e| e.waiting as f64).sum::<f64>() / n).round() as u64,
            );
            Self::set(
                self.avg_kv_percent,
                (ready.iter().map(|e| e.kv_usage as f64).sum::<f64>() * 100.0 / n).round() as u64,
            );
        }
    }
}
