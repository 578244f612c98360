//! proxy-wasm glue: root and HTTP contexts. Translates only; decisions come from picker-core.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use log::{debug, error, info, warn};
use picker_core::pick::{parse_subset, Outcome, SubsetEntry};
use picker_core::prefix::EndpointKey;
use picker_core::sync::PrefixSync;
use picker_core::{pick, scan, Endpoint, InFlight, Instant, Pool, Prompt, Request, Snapshot, SplitMix64, State};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::time::Duration as StdDuration;

use crate::config::{FailureMode, FilterConfig, HostProfile, Mode};
use crate::ring::{ring_keys, HostRing};
use crate::shared::{
    bearer_matches, error_body, has_header, header_value, inflight_apply, inflight_for_pool, push_addr, source_allowed,
    validate_push, IntakeError, KEY_INFLIGHT, KEY_SNAPSHOT, KEY_SNAPSHOT_SEQ,
};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Headers a client must never set: they choose or report the upstream pod.
const ROUTING_HEADERS: [&str; 3] = [
    "x-gateway-destination-endpoint",
    "x-gateway-destination-endpoint-served",
    "x-gateway-destination-endpoint-subset",
];
const TEST_STEERING_HEADER: &str = "test-epp-endpoint-selection";
const TEST_SERVED_HEADER: &str = "x-conformance-test-served-endpoint";
/// InferenceObjective binding headers: GIE name and the llm-d alias (epp.md, header rename).
const OBJECTIVE_HEADERS: [&str; 2] = ["x-gateway-inference-objective", "x-llm-d-inference-objective"];
const AFFINITY_OUT_HEADER: &str = "x-wasm-epp-affinity";
/// Envoy filter state read by an ORIGINAL_DST cluster; a client cannot set it (DESIGN.md).
const ORIGINAL_DST_KEY: &str = "envoy.network.transport_socket.original_dst_address";

/// Protobuf `SetEnvoyFilterStateArguments { string path = 1; string value = 2; LifeSpan span = 3; }`
/// (Envoy `source/extensions/common/wasm/ext/set_envoy_filter_state.proto`), span
/// `DownstreamRequest` = 1.
fn filter_state_args(path: &str, value: &str) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag);
        let mut n = bytes.len();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(path.len() + value.len() + 8);
    field(&mut out, 0x0a, path.as_bytes());
    field(&mut out, 0x12, value.as_bytes());
    out.extend_from_slice(&[0x18, 1]);
    out
}

/// Snapshot-age gauge refresh period (a scrape interval is 50 ms; a 1 s gauge is plenty).
const AGE_GAUGE_PERIOD: picker_core::Duration = picker_core::Duration::from_millis(1000);

/// How many CAS retries a shared-data update gets before giving up (counts are hints).
const CAS_RETRIES: usize = 8;

/// Envoy custom metrics, named in parallel with GIE's EPP metrics (epp.md §5). Envoy stores them
/// under the `wasmcustom` namespace (proxywasm.md §1.3). Counters only ever get +1 (Envoy
/// rejects deltas ≤ 0 and the SDK would panic); gauges are set with `record`.
struct Metrics {
    requests: u32,
    errors: Vec<(u32, u32)>,
    per_model: Vec<(String, u32)>,
    shed: u32,
    ready_pods: u32,
    avg_queue: u32,
    avg_kv_percent: u32,
    snapshot_age_ms: u32,
    degraded: u32,
    decision_us: u32,
    pushes_accepted: u32,
    pushes_rejected: u32,
}

/// Per-model counters are defined lazily, up to this many models (bounded memory and stats).
const MAX_MODEL_METRICS: usize = 64;

impl Metrics {
    fn define() -> Option<Metrics> {
        let c = |n: &str| hostcalls::define_metric(MetricType::Counter, n).ok();
        let g = |n: &str| hostcalls::define_metric(MetricType::Gauge, n).ok();
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
            decision_us: hostcalls::define_metric(MetricType::Histogram, "wasm_epp_decision_duration_us").ok()?,
            pushes_accepted: c("wasm_epp_snapshot_accepted_total")?,
            pushes_rejected: c("wasm_epp_snapshot_rejected_total")?,
        })
    }

    fn inc(id: u32) {
        let _ = hostcalls::increment_metric(id, 1);
    }

    fn set(id: u32, v: u64) {
        let _ = hostcalls::record_metric(id, v);
    }

    fn request(&mut self, model: &str) {
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
                let id = hostcalls::define_metric(
                    MetricType::Counter,
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

    fn error(&self, status: u32) {
        if let Some((_, id)) = self.errors.iter().find(|(c, _)| *c == status) {
            Self::inc(*id);
        }
    }

    fn pool(&self, pool: &Pool) {
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

/// Per-VM (per-worker) state shared by the root and every HTTP context of that VM.
struct Worker {
    config: FilterConfig,
    state: State,
    rng: SplitMix64,
    /// The decoded snapshot this worker routes on, and its sequence.
    pool: Pool,
    pool_seq: Option<u64>,
    /// Logged once per transition, not per request.
    degraded_logged: bool,
    /// When the slow gauges (snapshot age, degraded) were last written.
    age_reported_at: Instant,
    metrics: Option<Metrics>,
    /// Prefix-index replication with the other workers (`prefixSync`), and the ring's keys.
    sync: Option<PrefixSync>,
    ring_keys: Vec<String>,
    /// Per-request scratch, reused: the in-flight counts aligned with the pool.
    inflight: Vec<InFlight>,
}

impl Worker {
    fn new(config: FilterConfig) -> Worker {
        // A per-VM seed from the host's randomness (WASI random_get backs RandomState).
        let seed = RandomState::new().hash_one(0x5eed_u64);
        let pool = static_pool(&config);
        let metrics = if config.metrics { Metrics::define() } else { None };
        let mut state = State::new(&config.picker);
        let (sync, ring_keys) = match config.prefix_sync {
            Some(p) => {
                state.enable_outbox();
                // The origin id only has to differ between the VMs sharing the ring.
                let origin = RandomState::new().hash_one(0x5eed_0419_u64);
                (Some(PrefixSync::new(origin, p)), ring_keys(p.ring))
            }
            None => (None, Vec::new()),
        };
        Worker {
            state,
            sync,
            ring_keys,
            rng: SplitMix64::new(seed),
            pool,
            pool_seq: None,
            config,
            degraded_logged: false,
            age_reported_at: Instant::ZERO,
            metrics,
            inflight: Vec::new(),
        }
    }
}

/// A pool from the statically configured endpoints, used until a snapshot arrives (and always on
/// GCP). Its load fields are zero and its scrape time "now", so only in-flight counts, prefix
/// affinity and consistent hashing inform the pick.
fn static_pool(config: &FilterConfig) -> Pool {
    let endpoints = config
        .endpoints
        .iter()
        .map(|a| Endpoint::new(*a, Instant::ZERO))
        .collect();
    // generated_at 0 makes a real snapshot always preferable; degradation uses `degradeAfterMs`.
    Pool::new(Snapshot {
        sequence: 0,
        generated_at: Instant::ZERO,
        endpoints,
    })
}

#[derive(Default)]
struct Root {
    worker: Option<Rc<RefCell<Worker>>>,
    /// A pull call is in flight; never more than one per VM.
    pulling: bool,
}

impl Context for Root {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        self.pulling = false;
        let Some(worker) = self.worker.clone() else { return };
        if num_headers == 0 {
            warn!("wasm-epp: snapshot pull failed (no response)");
            return;
        }
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        if status != "200" {
            warn!("wasm-epp: snapshot pull got HTTP {status}");
            return;
        }
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        let max = worker.borrow().config.snapshot.as_ref().map_or(0, |s| s.max_bytes);
        match store_snapshot(self, &body, max) {
            Ok(seq) => debug!("wasm-epp: pulled snapshot {seq}"),
            Err(IntakeError::Stale { .. }) => {}
            Err(e) => warn!("wasm-epp: pulled snapshot refused: {}", e.message()),
        }
    }
}

/// Validates `body` against the stored snapshot and stores it with CAS (push and pull share it).
/// A refused snapshot changes nothing.
fn store_snapshot(ctx: &dyn Context, body: &[u8], max: usize) -> Result<u64, IntakeError> {
    for _ in 0..CAS_RETRIES {
        let (stored, cas) = ctx.get_shared_data(KEY_SNAPSHOT);
        let snap = validate_push(body, stored.as_deref(), max)?;
        match ctx.set_shared_data(KEY_SNAPSHOT, Some(body), cas) {
            Ok(()) => {
                let _ = ctx.set_shared_data(KEY_SNAPSHOT_SEQ, Some(&snap.sequence.to_le_bytes()), None);
                return Ok(snap.sequence);
            }
            Err(_) => continue,
        }
    }
    Err(IntakeError::Stale { stored: 0, pushed: 0 })
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match FilterConfig::from_json(&bytes) {
            Ok(config) => {
                info!("{}", config.describe());
                if config.host == HostProfile::Envoy {
                    // Create the shared keys once, empty: a set with cas 0 on a missing key is
                    // unconditional, so two workers racing to create a key could overwrite each
                    // other; with the key present every later update is a real CAS.
                    for key in [KEY_INFLIGHT, KEY_SNAPSHOT] {
                        if self.get_shared_data(key).0.is_none() {
                            let _ = self.set_shared_data(key, Some(&[]), None);
                        }
                    }
                    if config.prefix_sync.is_some() {
                        PrefixSync::init_store(&mut HostRing { ctx: self, keys: &[] });
                    }
                }
                if let Some(p) = config.snapshot.as_ref().and_then(|s| s.pull.as_ref()) {
                    info!(
                        "wasm-epp: pulling snapshots from cluster {} {} every {} ms",
                        p.cluster, p.path, p.interval_ms
                    );
                    self.set_tick_period(StdDuration::from_millis(p.interval_ms));
                }
                self.worker = Some(Rc::new(RefCell::new(Worker::new(config))));
                true
            }
            Err(e) => {
                // Returning false makes Envoy reject the configuration (proxywasm.md §1.3).
                error!("wasm-epp: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if self.pulling {
            return;
        }
        let Some(worker) = self.worker.clone() else { return };
        let (pull, token) = {
            let w = worker.borrow();
            let Some(s) = w.config.snapshot.as_ref() else { return };
            let Some(p) = s.pull.clone() else { return };
            (p, s.token.clone())
        };
        let auth = format!("Bearer {token}");
        let headers = vec![
            (":method", "GET"),
            (":path", pull.path.as_str()),
            (":authority", pull.authority.as_str()),
            ("authorization", auth.as_str()),
        ];
        match self.dispatch_http_call(
            &pull.cluster,
            headers,
            None,
            vec![],
            StdDuration::from_millis(pull.interval_ms.max(1000)),
        ) {
            Ok(_) => self.pulling = true,
            Err(s) => warn!("wasm-epp: snapshot pull to cluster {} failed: {s:?}", pull.cluster),
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(Stream {
            worker,
            kind: Kind::Passthrough,
            acquired: None,
            primary: None,
            objective: None,
            steering: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

enum Kind {
    Passthrough,
    Intake,
    Inference(picker_core::Api),
}

struct Stream {
    worker: Rc<RefCell<Worker>>,
    kind: Kind,
    /// In-flight entry taken at the pick: (endpoint key, tokens); released in `on_done`.
    acquired: Option<(EndpointKey, u32)>,
    primary: Option<SocketAddr>,
    /// Read with the other request headers in the headers callback (one hostcall for the map)
    /// and used at the pick: the InferenceObjective header and, in test mode, the steering one.
    objective: Option<String>,
    steering: Option<String>,
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        self.release();
        true
    }
}

/// Removes request header `name` from the host map, and from `headers`, the local copy of it,
/// if the copy has it: an absent header costs no hostcall.
fn remove_header(ctx: &dyn HttpContext, headers: &mut Vec<(String, Vec<u8>)>, name: &str) {
    if has_header(headers, name) {
        ctx.set_http_request_header(name, None);
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

fn instant(t: std::time::SystemTime) -> Instant {
    Instant::from_millis(t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

impl Stream {
    fn reply(&self, status: u32, message: &str, extra: &[(&str, &str)]) {
        if matches!(self.kind, Kind::Inference(_)) {
            self.count(|m| m.error(status));
        }
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(extra);
        self.send_http_response(status, headers, Some(&error_body(status, message)));
    }

    fn envoy(&self) -> bool {
        self.worker.borrow().config.host == HostProfile::Envoy
    }

    /// Loads the shared snapshot if its sequence moved past the one this worker holds.
    fn refresh_pool(&self) {
        let (seq_bytes, _) = self.get_shared_data(KEY_SNAPSHOT_SEQ);
        let Some(seq) = seq_bytes
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes)
        else {
            return;
        };
        let mut w = self.worker.borrow_mut();
        if w.pool_seq.is_some_and(|s| s >= seq) {
            return;
        }
        let (bytes, _) = self.get_shared_data(KEY_SNAPSHOT);
        match bytes.map(|b| Snapshot::decode(&b)) {
            Some(Ok(snap)) => {
                let keys: Vec<EndpointKey> = snap.endpoints.iter().map(Endpoint::key).collect();
                w.state.index.retain_endpoints(&keys);
                w.pool_seq = Some(snap.sequence);
                w.pool = Pool::new(snap);
                if let Some(m) = w.metrics.as_ref() {
                    m.pool(&w.pool);
                }
            }
            // Only validated bytes are ever stored, so this means another build's format.
            Some(Err(e)) => warn!("wasm-epp: stored snapshot unreadable: {e}"),
            None => {}
        }
    }

    /// Read-modify-write of the shared in-flight table with CAS, updating the encoded bytes in
    /// place. `read` is a read this request already made (bytes and cas): the first attempt
    /// writes on it and pays no second read; a CAS mismatch (another worker wrote in between)
    /// rereads, as every later attempt does.
    fn update_inflight(&self, key: EndpointKey, tokens: u32, add: bool, mut read: Option<(Vec<u8>, Option<u32>)>) {
        for _ in 0..CAS_RETRIES {
            let (mut bytes, cas) = match read.take() {
                Some(r) => r,
                None => {
                    let (b, cas) = self.get_shared_data(KEY_INFLIGHT);
                    (b.unwrap_or_default(), cas)
                }
            };
            inflight_apply(&mut bytes, key, tokens, add);
            match self.set_shared_data(KEY_INFLIGHT, Some(&bytes), cas) {
                Ok(()) => return,
                Err(Status::CasMismatch) => continue,
                Err(s) => {
                    warn!("wasm-epp: in-flight update failed: {s:?}");
                    return;
                }
            }
        }
        warn!("wasm-epp: in-flight update gave up after {CAS_RETRIES} CAS retries");
    }

    fn release(&mut self) {
        if let Some((key, tokens)) = self.acquired.take() {
            if self.envoy() {
                self.update_inflight(key, tokens, false, None);
            }
        }
    }

    /// Removes every client-set routing header. `headers` is the request's header map, read
    /// once: only names present cost a remove hostcall (a remove drops every occurrence), and
    /// the local copy drops them too, so later lookups see what the host map holds.
    fn strip_client_routing_headers(&self, headers: &mut Vec<(String, Vec<u8>)>) {
        let w = self.worker.borrow();
        let steering = (!w.config.test_mode).then_some(TEST_STEERING_HEADER);
        let names = ROUTING_HEADERS
            .iter()
            .copied()
            .chain([w.config.model_header.as_str(), w.config.destination_header.as_str()])
            .chain(steering);
        for name in names {
            remove_header(self, headers, name);
        }
    }

    fn handle_intake_body(&self, body: &[u8]) {
        let max = self.worker.borrow().config.snapshot.as_ref().map_or(0, |s| s.max_bytes);
        match store_snapshot(self, body, max) {
            Ok(seq) => {
                debug!("wasm-epp: snapshot {seq} stored");
                self.count(|m| Metrics::inc(m.pushes_accepted));
                self.send_http_response(204, vec![], None);
            }
            Err(e) => {
                warn!("wasm-epp: snapshot push refused ({}): {}", e.status(), e.message());
                self.count(|m| Metrics::inc(m.pushes_rejected));
                self.reply(e.status(), &e.message(), &[]);
            }
        }
    }

    fn count(&self, f: impl FnOnce(&Metrics)) {
        if let Some(m) = self.worker.borrow().metrics.as_ref() {
            f(m);
        }
    }

    /// Picks for a scanned (or header-derived) request and sets the routing headers.
    /// Returns false after sending a local reply.
    /// Returns the target model (after any rewrite) when routed, `None` after a local reply.
    fn route(&mut self, model: &str, cache_salt: Option<&str>, prompt: Prompt<'_>) -> Option<String> {
        let envoy = self.envoy();
        if envoy {
            self.refresh_pool();
        }
        let objective = self.objective.take();
        let steering = self.steering.take();
        // One read of the in-flight table (bytes and cas) serves the pick and the acquire.
        let inflight_read = if envoy {
            let (bytes, cas) = self.get_shared_data(KEY_INFLIGHT);
            Some((bytes.unwrap_or_default(), cas))
        } else {
            None
        };

        let mut guard = self.worker.borrow_mut();
        let w = &mut *guard;
        if !w.config.allow_models.is_empty() && !w.config.allow_models.iter().any(|m| m == model) {
            drop(guard);
            self.reply(404, &format!("model {model:?} is not served here"), &[]);
            return None;
        }
        // Weighted rewrite (GIE InferenceModelRewrite): pick a target by weight with the worker RNG.
        let target = match w.config.rewrites.iter().find(|r| r.model == model) {
            Some(r) => {
                let total: u64 = r.targets.iter().map(|t| t.1 as u64).sum();
                let mut x = picker_core::Rng::below(&mut w.rng, total.max(1));
                let mut chosen = r
                    .targets
                    .first()
                    .map(|t| t.0.clone())
                    .unwrap_or_else(|| model.to_string());
                for (m, weight) in &r.targets {
                    if x < *weight as u64 {
                        chosen = m.clone();
                        break;
                    }
                    x -= *weight as u64;
                }
                chosen
            }
            None => model.to_string(),
        };
        let priority = objective
            .and_then(|o| w.config.objectives.get(&o).copied())
            .or_else(|| w.config.model_priorities.get(&target).copied())
            .unwrap_or(0);
        let subset: Option<Vec<SubsetEntry>> = match (w.config.test_mode, steering) {
            (true, Some(s)) => match parse_subset(&s) {
                Ok(v) => Some(v),
                Err(e) => {
                    drop(guard);
                    self.reply(400, &format!("{TEST_STEERING_HEADER}: {e}"), &[]);
                    return None;
                }
            },
            _ => None,
        };
        if w.pool.endpoints().is_empty() && w.config.failure_mode == FailureMode::FailOpen {
            // No snapshot yet and no static endpoints: GIE's FailOpen lets the cluster pick.
            let model_header = w.config.model_header.clone();
            drop(guard);
            self.set_http_request_header(&model_header, Some(&target));
            return Some(target);
        }
        let mut req = Request::new(&target, prompt);
        req.cache_salt = cache_salt;
        req.priority = priority;
        req.subset = subset.as_deref();
        let inflight_bytes = inflight_read.as_ref().map_or(&[][..], |r| r.0.as_slice());
        inflight_for_pool(inflight_bytes, &w.pool, &mut w.inflight);
        if let Some(sync) = w.sync.as_mut() {
            let mut ring = HostRing {
                ctx: self,
                keys: &w.ring_keys,
            };
            sync.pull(&mut ring, &mut w.state, &w.config.picker);
        }
        // One clock read is both the pick's `now` and the start of the decision timing.
        let started = self.get_current_time();
        let now = instant(started);
        let d = pick(
            &w.config.picker,
            &req,
            &w.pool,
            &w.inflight,
            &mut w.state,
            now,
            &mut w.rng,
        );
        let took_us = self
            .get_current_time()
            .duration_since(started)
            .map(|t| t.as_micros() as u64)
            .unwrap_or(0);
        if let Some(sync) = w.sync.as_mut() {
            let mut ring = HostRing {
                ctx: self,
                keys: &w.ring_keys,
            };
            sync.push(&mut ring, &mut w.state);
        }
        let degraded = d.mode == picker_core::pick::Mode::Degraded;
        let mode_changed = degraded != w.degraded_logged;
        let age_due = now.saturating_since(w.age_reported_at) >= AGE_GAUGE_PERIOD;
        if let Some(m) = w.metrics.as_mut() {
            m.request(&target);
            Metrics::set(m.decision_us, took_us);
            // Gauges that change slowly are written on change or at most every
            // AGE_GAUGE_PERIOD, not per request: each write is a hostcall on the hot path.
            if age_due || mode_changed {
                Metrics::set(
                    m.snapshot_age_ms,
                    now.saturating_since(w.pool.snapshot().generated_at).as_millis(),
                );
                Metrics::set(m.degraded, degraded as u64);
            }
            if matches!(d.outcome, Outcome::Reject(picker_core::Rejection::Shed { .. })) {
                Metrics::inc(m.shed);
            }
        }
        if age_due || mode_changed {
            w.age_reported_at = now;
        }
        if mode_changed && degraded {
            warn!("wasm-epp: snapshot older than degradeAfterMs; routing on consistent hashing and in-flight counts");
        } else if mode_changed {
            info!("wasm-epp: fresh snapshot again; full scoring restored");
        }
        w.degraded_logged = degraded;
        match d.outcome {
            Outcome::Route(list) => {
                // The ordered list `a,b,c`, written without intermediate strings.
                let mut value = String::with_capacity(24 * list.len());
                let mut primary = None;
                for addr in list.iter().filter_map(|&i| w.pool.endpoints().get(i).map(|e| e.addr)) {
                    if primary.is_some() {
                        value.push(',');
                    }
                    push_addr(&mut value, &addr);
                    primary.get_or_insert(addr);
                }
                let filter_state = w.config.original_dst_filter_state;
                let primary_key = list.first().map(|&i| w.pool.key(i));
                debug!(
                    "wasm-epp: model {target} -> {value} (prefix match {}/{})",
                    d.best_prefix_match,
                    d.hashes.len()
                );
                self.set_http_request_header(&w.config.destination_header, Some(&value));
                self.set_http_request_header(&w.config.model_header, Some(&target));
                drop(guard);
                self.primary = primary;
                if filter_state && primary.is_some() {
                    // The list's first entry is the primary's `ip:port`, already formatted.
                    let first = value.split(',').next().unwrap_or_default();
                    let args = filter_state_args(ORIGINAL_DST_KEY, first);
                    if let Err(s) = self.call_foreign_function("set_envoy_filter_state", Some(&args)) {
                        warn!("wasm-epp: set_envoy_filter_state failed: {s:?} (needs Envoy >= 1.26)");
                    }
                }
                if let (Some(key), true) = (primary_key, envoy) {
                    let tokens = (prompt.len() / 4).min(u32::MAX as usize) as u32;
                    self.update_inflight(key, tokens, true, inflight_read);
                    self.acquired = Some((key, tokens));
                }
                Some(target)
            }
            Outcome::Reject(r) => {
                drop(guard);
                let status = r.http_status() as u32;
                let extra: &[(&str, &str)] = if status == 429 { &[("retry-after", "1")] } else { &[] };
                self.reply(status, &r.to_string(), extra);
                None
            }
        }
    }

    fn on_headers_gcp(&mut self, headers: &mut Vec<(String, Vec<u8>)>) -> Action {
        // GCP: headers-only, no shared data / metrics / properties (proxywasm.md §6.5).
        let (hint, affinity, model_header) = {
            let w = self.worker.borrow();
            (
                w.config.headers_only_model.clone(),
                w.config.headers_only_affinity.clone(),
                w.config.model_header.clone(),
            )
        };
        if let Some(model) = header_value(headers, &hint) {
            self.set_http_request_header(&model_header, Some(&model));
        }
        remove_header(self, headers, AFFINITY_OUT_HEADER);
        if let Some(value) = affinity.and_then(|a| header_value(headers, &a)) {
            let h = picker_core::prefix::hash_prompt("", None, Prompt::from_bytes(value.as_bytes()), 1, 64);
            if let Some(k) = h.as_slice().last() {
                self.set_http_request_header(AFFINITY_OUT_HEADER, Some(&format!("{k:016x}")));
            }
        }
        Action::Continue
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // One hostcall for the whole map instead of one per header read or removed (bytes:
        // the SDK's string getters panic on a non-UTF-8 value, which Envoy can deliver).
        let mut headers = self.get_http_request_headers_bytes();
        self.strip_client_routing_headers(&mut headers);
        if !self.envoy() {
            return self.on_headers_gcp(&mut headers);
        }
        let path = header_value(&headers, ":path").unwrap_or_default();
        let method = header_value(&headers, ":method").unwrap_or_default();
        let (intake_path, mode, api, max_body) = {
            let w = self.worker.borrow();
            let c = &w.config;
            (
                c.snapshot.as_ref().map(|s| s.path.clone()),
                c.mode,
                c.api_for(&path),
                c.max_body_bytes,
            )
        };
        let bare = path.split('?').next().unwrap_or("");
        if intake_path.as_deref() == Some(bare) {
            self.kind = Kind::Intake;
            let (token, allowed) = {
                let w = self.worker.borrow();
                let s = w.config.snapshot.as_ref();
                (
                    s.map(|s| s.token.clone()).unwrap_or_default(),
                    s.map(|s| s.allowed_sources.clone()).unwrap_or_default(),
                )
            };
            let source = self
                .get_property(vec!["source", "address"])
                .and_then(|b| String::from_utf8(b).ok());
            let err = if method != "POST" {
                Some(IntakeError::MethodNotAllowed)
            } else if !source_allowed(source.as_deref(), &allowed) {
                Some(IntakeError::Forbidden)
            } else if !bearer_matches(header_value(&headers, "authorization").as_deref(), &token) {
                Some(IntakeError::Unauthorized)
            } else if end_of_stream {
                Some(IntakeError::Invalid(picker_core::snapshot::DecodeError::Truncated {
                    offset: 0,
                }))
            } else {
                None
            };
            if let Some(e) = err {
                self.reply(e.status(), &e.message(), &[]);
            }
            return Action::Pause;
        }
        let Some(api) = api.filter(|_| method == "POST") else {
            return Action::Continue;
        };
        self.kind = Kind::Inference(api);
        // Taken now for the pick, from the map as it stands after stripping: the values a read
        // at pick time would get (the headers wait, paused, until then).
        self.objective = OBJECTIVE_HEADERS
            .iter()
            .find_map(|h| header_value(&headers, h))
            .map(Cow::into_owned);
        if self.worker.borrow().config.test_mode {
            self.steering = header_value(&headers, TEST_STEERING_HEADER).map(Cow::into_owned);
        }
        if mode == Mode::HeadersOnly {
            let (hint, affinity) = {
                let w = self.worker.borrow();
                (
                    w.config.headers_only_model.clone(),
                    w.config.headers_only_affinity.clone(),
                )
            };
            let Some(model) = header_value(&headers, &hint) else {
                self.reply(
                    400,
                    &format!("headers-only mode needs the model in the {hint} header"),
                    &[],
                );
                return Action::Pause;
            };
            let affinity_value = affinity.and_then(|a| header_value(&headers, &a)).unwrap_or_default();
            return if self
                .route(&model, None, Prompt::from_bytes(affinity_value.as_bytes()))
                .is_some()
            {
                Action::Continue
            } else {
                Action::Pause
            };
        }
        if end_of_stream {
            self.reply(400, "an inference request needs a JSON body", &[]);
            return Action::Pause;
        }
        let too_big = header_value(&headers, "content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_some_and(|n| n > max_body);
        if too_big {
            self.reply(413, &format!("request body larger than {max_body} bytes"), &[]);
        }
        // Hold headers until the body is scanned (needs allow_on_headers_stop_iteration).
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let max = {
            let w = self.worker.borrow();
            match self.kind {
                Kind::Intake => w.config.snapshot.as_ref().map_or(0, |s| s.max_bytes),
                Kind::Inference(_) => w.config.max_body_bytes,
                Kind::Passthrough => return Action::Continue,
            }
        };
        if body_size > max {
            self.reply(413, &format!("body larger than {max} bytes"), &[]);
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match self.kind {
            Kind::Intake => {
                self.handle_intake_body(&body);
                Action::Pause
            }
            Kind::Inference(api) => match scan(&body, api) {
                Ok(s) => match self.route(&s.model, s.cache_salt.as_deref(), s.prompt) {
                    Some(target) => {
                        if target != s.model {
                            // The model server serves what the body names: splice the rewritten
                            // model in (as GIE's EPP does) and fix the length while headers wait.
                            let quoted = serde_json::Value::String(target).to_string();
                            let mut out = Vec::with_capacity(body.len() + quoted.len());
                            out.extend_from_slice(&body[..s.model_range.start]);
                            out.extend_from_slice(quoted.as_bytes());
                            out.extend_from_slice(&body[s.model_range.end..]);
                            self.set_http_request_body(0, body_size, &out);
                            self.set_http_request_header("content-length", Some(&out.len().to_string()));
                        }
                        Action::Continue
                    }
                    None => Action::Pause,
                },
                Err(e) => {
                    self.reply(400, &e.to_string(), &[]);
                    Action::Pause
                }
            },
            Kind::Passthrough => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !matches!(self.kind, Kind::Inference(_)) || !self.envoy() {
            return Action::Continue;
        }
        // Only conformance test mode reports the served endpoint; otherwise no property read.
        if self.worker.borrow().config.test_mode {
            let served = self
                .get_property(vec!["upstream", "address"])
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse::<SocketAddr>().ok())
                .or(self.primary);
            if let Some(a) = served {
                self.set_http_response_header(TEST_SERVED_HEADER, Some(&a.to_string()));
            }
        }
        Action::Continue
    }
}
