//! proxy-wasm glue: root context, per-VM worker state, HTTP streams. Translates only;
//! decisions come from picker-core.
//!
//! * [`abi`]: the hostcalls, with every status returned as a value.
//! * [`stream`]: the HTTP context, a per-stream state machine whose states carry the right to
//!   write the request header map.
//! * [`metrics`]: Envoy custom metrics.
//! * [`relay`]: sending to and taking from the other gateway replicas (docs/replicas.md).
//! * here: the root context (configure, ticks, snapshot pulls) and the [`Worker`] state shared
//!   by the root and every stream of one VM (config, picker state, pool, in-flight counts).

mod abi;
mod metrics;
mod relay;
mod ring;
mod stream;

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::{Duration as StdDuration, UNIX_EPOCH};

use log::{debug, error, info, warn};
use picker_core::prefix::EndpointKey;
use picker_core::sync::PrefixSync;
use std::net::SocketAddr;

use picker_core::decision::Mode;
use picker_core::{
    Decision, Endpoint, InFlight, Inbound, Instant, Outcome, Pool, Rejection, Router, Routing, Snapshot, SplitMix64,
};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::config::{FilterConfig, HostProfile};
use crate::headers::push_addr;
use crate::inflight::{self, Local, KEY_INFLIGHT};
use crate::intake::{validate_push, IntakeError, KEY_SNAPSHOT, KEY_SNAPSHOT_SEQ};
use crate::relay::Appended;
use abi::HostError;
use metrics::Metrics;
use ring::{ring_keys, HostRing};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Snapshot-age gauge refresh period (a scrape interval is 50 ms; a 1 s gauge is plenty).
const AGE_GAUGE_PERIOD: picker_core::Duration = picker_core::Duration::from_millis(1000);

/// How many CAS retries a shared-data update gets before giving up (counts are hints).
const CAS_RETRIES: usize = 8;

/// The host's wall clock in ms (the SDK's `get_current_time`; Envoy's answers Ok always).
fn now_ms() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// An id that must differ between VMs and between proxies: the host's randomness (WASI
/// `random_get` behind `RandomState`) mixed with the clock in ns, so a host whose randomness
/// repeats between processes (host-sim's is seeded) still gives each proxy started at another
/// instant its own ids.
fn unique_id(tag: u64) -> u64 {
    let t = proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    RandomState::new().hash_one((tag, t))
}

/// Per-VM (per-worker) state shared by the root and every HTTP context of that VM.
struct Worker {
    config: FilterConfig,
    /// picker-core's request pipeline (policy, prefix index, prefix sync): every decision.
    router: Router,
    rng: SplitMix64,
    /// The decoded snapshot this worker routes on, and its sequence.
    pool: Pool,
    pool_seq: Option<u64>,
    /// Logged once per transition, not per request.
    degraded_logged: bool,
    /// When the slow gauges (snapshot age, degraded) were last written.
    age_reported_at: Instant,
    metrics: Option<Metrics>,
    /// The shared-data keys of the prefix-sync ring (empty without `prefixSync`).
    ring_keys: Vec<String>,
    /// Per-request scratch, reused: the in-flight counts aligned with the pool.
    inflight: Vec<InFlight>,
    /// This VM's identity in the shared in-flight table: random per VM instance, so a VM
    /// started after a reload never inherits the counts of the one that died.
    owner: u64,
    /// This VM's own in-flight requests: the truth it publishes as its section.
    local: Local,
    /// This VM's origin id in the prefix-sync ring.
    sync_origin: u64,
    /// With the relay on: the ring records this VM appended since its last relay batch.
    appended: Option<Appended>,
}

impl Worker {
    fn new(config: FilterConfig) -> Worker {
        // Per-VM seeds from the host's randomness (WASI random_get backs RandomState).
        let seed = RandomState::new().hash_one(0x5eed_u64);
        let owner = unique_id(0x0411);
        let pool = static_pool(&config);
        let metrics = if config.metrics { Metrics::define() } else { None };
        // The origin id only has to differ between the VMs sharing the ring (relayed records
        // carry their sending VM's owner id as origin: random too).
        let sync_origin = unique_id(0x5eed_0419);
        let (sync, ring_keys) = match config.prefix_sync {
            Some(p) => (Some(PrefixSync::new(sync_origin, p)), ring_keys(p.ring)),
            None => (None, Vec::new()),
        };
        let appended = config.relay.as_ref().map(|_| Appended::default());
        Worker {
            router: Router::new(config.picker.clone(), config.policy.clone(), sync),
            ring_keys,
            rng: SplitMix64::new(seed),
            pool,
            pool_seq: None,
            config,
            degraded_logged: false,
            age_reported_at: Instant::ZERO,
            metrics,
            inflight: Vec::new(),
            owner,
            local: Local::default(),
            sync_origin,
            appended,
        }
    }

    fn envoy(&self) -> bool {
        self.config.host == HostProfile::Envoy
    }

    /// Loads the shared snapshot if its sequence moved past the one this worker holds.
    fn refresh_pool(&mut self) {
        let seq = match abi::shared_data(KEY_SNAPSHOT_SEQ) {
            Ok(Some((b, _))) => match <[u8; 8]>::try_from(b.as_slice()) {
                Ok(b) => u64::from_le_bytes(b),
                Err(_) => return,
            },
            Ok(None) => return,
            Err(e) => {
                warn!("wasm-epp: reading the snapshot sequence failed: {e:?}");
                return;
            }
        };
        if self.pool_seq.is_some_and(|s| s >= seq) {
            return;
        }
        match abi::shared_data(KEY_SNAPSHOT).map(|r| r.map(|(b, _)| Snapshot::decode(&b))) {
            Ok(Some(Ok(snap))) => {
                let keys: Vec<EndpointKey> = snap.endpoints.iter().map(Endpoint::key).collect();
                self.router.state_mut().index.retain_endpoints(&keys);
                self.pool_seq = Some(snap.sequence);
                self.pool = Pool::new(snap);
                if let Some(m) = self.metrics.as_ref() {
                    m.pool(&self.pool);
                }
            }
            // Only validated bytes are ever stored, so this means another build's format.
            Ok(Some(Err(e))) => warn!("wasm-epp: stored snapshot unreadable: {e}"),
            Ok(None) => {}
            Err(e) => warn!("wasm-epp: reading the snapshot failed: {e:?}"),
        }
    }

    /// Runs picker-core's pipeline for an admitted request (`target` is the model after any
    /// rewrite) on this worker's pool and in-flight view, then records what the pick tells the
    /// metrics and the log.
    fn decide(&mut self, req: &Inbound<'_>, target: String, inflight_bytes: &[u8]) -> Routing {
        // One clock read is both the pick's `now` and the start of the decision timing.
        let started = now_ms();
        let now = Instant::from_millis(started);
        inflight::for_pool(
            inflight_bytes,
            &self.pool,
            started,
            self.config.inflight_ttl_ms,
            &mut self.inflight,
        );
        let t0 = proxy_wasm::hostcalls::get_current_time().ok();
        let routing = self.router.pick_for(
            req,
            target,
            &self.pool,
            &self.inflight,
            &mut HostRing {
                keys: &self.ring_keys,
                appended: self.appended.as_mut(),
            },
            now,
            &mut self.rng,
        );
        let took_us = t0
            .and_then(|t| proxy_wasm::hostcalls::get_current_time().ok()?.duration_since(t).ok())
            .map_or(0, |t| t.as_micros() as u64);
        if let Routing::Picked { target, decision, .. } = &routing {
            self.observe(target, decision, now, took_us);
        }
        routing
    }

    /// Metrics and the degraded-mode log line for one decision.
    fn observe(&mut self, target: &str, d: &Decision, now: Instant, took_us: u64) {
        let degraded = d.mode == Mode::Degraded;
        let mode_changed = degraded != self.degraded_logged;
        let age_due = now.saturating_since(self.age_reported_at) >= AGE_GAUGE_PERIOD;
        if let Some(m) = self.metrics.as_mut() {
            m.request(target);
            Metrics::set(m.decision_us, took_us);
            // Gauges that change slowly are written on change or at most every
            // AGE_GAUGE_PERIOD, not per request: each write is a hostcall on the hot path.
            if age_due || mode_changed {
                Metrics::set(
                    m.snapshot_age_ms,
                    now.saturating_since(self.pool.snapshot().generated_at).as_millis(),
                );
                Metrics::set(m.degraded, degraded as u64);
            }
            if matches!(d.outcome, Outcome::Reject(Rejection::Shed { .. })) {
                Metrics::inc(m.shed);
            }
        }
        if age_due || mode_changed {
            self.age_reported_at = now;
        }
        if mode_changed && degraded {
            warn!("wasm-epp: snapshot older than degradeAfterMs; routing on consistent hashing and in-flight counts");
        } else if mode_changed {
            info!("wasm-epp: fresh snapshot again; full scoring restored");
        }
        self.degraded_logged = degraded;
    }

    /// The ordered destination list `a,b,c` of a routed decision (written without intermediate
    /// strings), and its primary.
    fn destination_list(&self, d: &Decision) -> (String, Option<SocketAddr>) {
        let Outcome::Route(list) = &d.outcome else {
            return (String::new(), None);
        };
        let mut value = String::with_capacity(24 * list.len());
        let mut primary = None;
        for addr in list
            .iter()
            .filter_map(|&i| self.pool.endpoints().get(i).map(|e| e.addr))
        {
            if primary.is_some() {
                value.push(',');
            }
            push_addr(&mut value, &addr);
            primary.get_or_insert(addr);
        }
        debug!(
            "wasm-epp: -> {value} (prefix match {}/{})",
            d.best_prefix_match,
            d.hashes.len()
        );
        (value, primary)
    }

    /// Acquires (`add`) or releases one request of `tokens` on `key` in this VM's own counts,
    /// then publishes them. `read` is a read of the table this request already made (bytes,
    /// cas): the first attempt writes on it.
    fn account(&mut self, key: EndpointKey, tokens: u32, add: bool, read: Option<(Vec<u8>, u32)>) {
        self.local.apply(key, tokens, add);
        self.publish_inflight(read);
    }

    /// The prefill of one request on `key` is done: its `tokens` leave the counts, its request
    /// stays until the stream ends.
    fn prefill_done(&mut self, key: EndpointKey, tokens: u32) {
        self.local.release_tokens(key, tokens);
        self.publish_inflight(None);
    }

    /// Writes this VM's section of the shared in-flight table (dropping expired sections of
    /// dead VMs), with CAS retries.
    fn publish_inflight(&self, read: Option<(Vec<u8>, u32)>) {
        let ttl = self.config.inflight_ttl_ms;
        cas_update(KEY_INFLIGHT, read, "in-flight", |table| {
            Some(inflight::publish(table, self.owner, &self.local, now_ms(), ttl))
        });
    }

    /// The heartbeat: refreshes this VM's section, and drops sections of dead VMs, when due.
    fn inflight_heartbeat(&self) {
        let ttl = self.config.inflight_ttl_ms;
        let Ok(read) = abi::shared_data(KEY_INFLIGHT) else {
            return;
        };
        let read = read.unwrap_or_default();
        if inflight::needs_write(&read.0, self.owner, &self.local, now_ms(), ttl, ttl / 4) {
            self.publish_inflight(Some(read));
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

/// Read-modify-write of one shared-data key with CAS retries: `update` maps the stored bytes
/// (empty when absent) to the bytes to write, or to `None` when nothing changes. `read` is a read
/// of the key already made (bytes, cas): the first attempt uses it. `what` names the data in
/// warnings.
fn cas_update(
    key: &str,
    mut read: Option<(Vec<u8>, u32)>,
    what: &str,
    mut update: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) {
    for _ in 0..CAS_RETRIES {
        let (bytes, cas) = match read.take() {
            Some(r) => r,
            None => match abi::shared_data(key) {
                Ok(r) => r.unwrap_or_default(),
                Err(e) => {
                    warn!("wasm-epp: reading {what} counts failed: {e:?}");
                    return;
                }
            },
        };
        let Some(out) = update(&bytes) else {
            return;
        };
        match abi::set_shared_data(key, &out, cas) {
            Ok(()) => return,
            Err(HostError::CasMismatch) => continue,
            Err(e) => {
                warn!("wasm-epp: {what} update failed: {e:?}");
                return;
            }
        }
    }
    warn!("wasm-epp: {what} update gave up after {CAS_RETRIES} CAS retries");
}

/// Validates `body` against the stored snapshot and stores it with CAS (push and pull share it).
/// A refused snapshot changes nothing.
fn store_snapshot(body: &[u8], max: usize) -> Result<u64, IntakeError> {
    for _ in 0..CAS_RETRIES {
        let (stored, cas) = match abi::shared_data(KEY_SNAPSHOT) {
            Ok(Some((b, cas))) => (Some(b), cas),
            Ok(None) => (None, 0),
            Err(_) => break,
        };
        let snap = validate_push(body, stored.as_deref(), max)?;
        match abi::set_shared_data(KEY_SNAPSHOT, body, cas) {
            Ok(()) => {
                let _ = abi::set_shared_data(KEY_SNAPSHOT_SEQ, &snap.sequence.to_le_bytes(), 0);
                return Ok(snap.sequence);
            }
            Err(_) => continue,
        }
    }
    Err(IntakeError::Stale { stored: 0, pushed: 0 })
}

/// What the root context's timer does; the timer runs at the shortest period of the tasks.
#[derive(Default)]
struct Timers {
    period_ms: u64,
    next_pull_ms: u64,
    next_heartbeat_ms: u64,
}

/// The timer period: the shortest of the in-flight heartbeat, the pull and the relay intervals.
fn tick_period_ms(config: &FilterConfig) -> u64 {
    let heartbeat = config.inflight_ttl_ms / 4;
    let pull = config
        .snapshot
        .as_ref()
        .and_then(|s| s.pull.as_ref())
        .map(|p| p.interval_ms);
    let relay = config.relay.as_ref().map(|r| r.interval_ms);
    [Some(heartbeat), pull, relay]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(heartbeat)
}

#[derive(Default)]
struct Root {
    worker: Option<Rc<RefCell<Worker>>>,
    /// A pull call is in flight; never more than one per VM.
    pulling: bool,
    timers: Timers,
    relay: relay::Sender,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, _body_size: usize, _trailers: usize) {
        let Some(worker) = self.worker.clone() else { return };
        if self.relay.response(&worker.borrow(), token, num_headers) {
            return;
        }
        self.pulling = false;
        if num_headers == 0 {
            warn!("wasm-epp: snapshot pull failed (no response)");
            return;
        }
        let headers = abi::map_pairs(abi::Map::HttpCallResponse).unwrap_or_default();
        let status = crate::headers::header_value(&headers, ":status").unwrap_or_default();
        if status != "200" {
            warn!("wasm-epp: snapshot pull got HTTP {status}");
            return;
        }
        let body = abi::buffer(abi::Buffer::HttpCallResponseBody).unwrap_or_default();
        let max = worker.borrow().config.snapshot.as_ref().map_or(0, |s| s.max_bytes);
        match store_snapshot(&body, max) {
            Ok(seq) => debug!("wasm-epp: pulled snapshot {seq}"),
            Err(IntakeError::Stale { .. }) => {}
            Err(e) => warn!("wasm-epp: pulled snapshot refused: {}", e.message()),
        }
    }
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
                        if matches!(abi::shared_data(key), Ok(None)) {
                            let _ = abi::set_shared_data(key, &[], 0);
                        }
                    }
                    if config.prefix_sync.is_some() {
                        PrefixSync::init_store(&mut HostRing {
                            keys: &[],
                            appended: None,
                        });
                    }
                    // The in-flight heartbeat (a quarter of the time-to-live), the snapshot pull
                    // and the relay share the one timer a root context has.
                    let pull = config.snapshot.as_ref().and_then(|s| s.pull.as_ref());
                    if let Some(p) = pull {
                        info!(
                            "wasm-epp: pulling snapshots from cluster {} {} every {} ms",
                            p.cluster, p.path, p.interval_ms
                        );
                    }
                    let period = tick_period_ms(&config);
                    match abi::set_tick_period_ms(period as u32) {
                        Ok(()) => self.timers.period_ms = period,
                        Err(e) => warn!(
                            "wasm-epp: no timer ({e:?}): no snapshot pulls, relay batches or in-flight heartbeats"
                        ),
                    }
                }
                let relay = config.host == HostProfile::Envoy && config.relay.is_some();
                self.worker = Some(Rc::new(RefCell::new(Worker::new(config))));
                // After the worker's ids and seed are drawn, so turning the relay on leaves
                // them as they were: an exact A/B of its per-request cost (docs/replicas.md).
                if relay {
                    relay::init_shared(unique_id(0x4e91));
                }
                true
            }
            Err(e) => {
                // Returning false makes Envoy reject the configuration.
                error!("wasm-epp: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else { return };
        let now = now_ms();
        self.relay.tick(&mut worker.borrow_mut(), now);
        let w = worker.borrow();
        if now >= self.timers.next_heartbeat_ms {
            self.timers.next_heartbeat_ms = now + w.config.inflight_ttl_ms / 4;
            w.inflight_heartbeat();
        }
        let Some(s) = w.config.snapshot.as_ref() else { return };
        let Some(pull) = s.pull.as_ref() else { return };
        if self.pulling || now < self.timers.next_pull_ms {
            return;
        }
        self.timers.next_pull_ms = now + pull.interval_ms;
        let auth = format!("Bearer {}", s.token);
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
        Some(Box::new(stream::Stream::new(worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
