//! The cluster: N servers, a gateway running a policy, a metrics scraper, and the event loop.
//!
//! ```text
//!  trace ──arrival──▶ gateway (replica r, worker w: policy, own picker State)
//!                        │  in-flight +1 (exact, per replica)      ▲ snapshot (lags: 50 ms scrapes)
//!                        ▼                                         │
//!                    server s ──steps──▶ first token, finish ──────┘ in-flight −1
//! ```
//!
//! Events are processed in time order (µs); ties break by insertion order, so a run is a pure
//! function of (trace, policy, config, seed). The scraper copies each server's waiting, running
//! and KV usage at every multiple of the scrape interval; the picker only ever sees the last copy.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use picker_core::snapshot::LoraState;
use picker_core::sync::{MemSlots, PrefixSync, SyncParams};
use picker_core::{
    Endpoint, InFlight, Inbound, Instant, ModelPolicy, Pool, Prompt, Rng, Router, Routing, Snapshot, SplitMix64,
};

use crate::calib::{micros, Micros, ServerParams};
use crate::deploy::{Deployment, Epp, Relay, RelayStats};
use crate::ladder::{Drain, Staging, LEAD};
use crate::model_server::{EngineEvent, SeqSpec, Server};
use crate::policy::{PolicyKind, PolicySpec, ORACLE_WEIGHTS};
use crate::workload::{Trace, BYTES_PER_TOKEN, UNTIMED};

/// Cluster and measurement settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub servers: usize,
    pub params: ServerParams,
    /// **\[src\]** 50 ms: llm-d-router `pkg/epp/datalayer/runtime.go` `defaultRefreshInterval`
    /// (`docs/engines.md`, "Scrape interval"); the peer simulator BLIS
    /// (inference-sim/inference-sim) models the same lag with its `--snapshot-refresh-interval`.
    pub scrape_interval: Micros,
    /// Requests arriving before this are warm-up: served, but not in the latency statistics;
    /// throughput counts tokens generated in `[warmup, horizon)`.
    pub warmup: Micros,
    /// End of the arrival window (the trace's horizon).
    pub horizon: Micros,
    /// Stop draining this long after the horizon; requests still running count as unfinished.
    pub drain_cap: Micros,
    /// Client-side cap on outstanding requests (a load generator with a fixed pool of sender
    /// threads, like inference-perf's `num_workers × worker_max_concurrency`). Arrivals beyond it
    /// wait in the client and latency is measured from when they are *sent*. `None`: open loop.
    pub max_concurrency: Option<u32>,
    pub seed: u64,
}

impl SimConfig {
    /// 8 servers (the llm-d b2b-saas cluster, `docs/engines.md`, "Shared-prefix workload"),
    /// Qwen3-32B TP2 H100 each.
    pub fn llmd_cluster(horizon_s: u64, warmup_s: u64, seed: u64) -> Self {
        SimConfig {
            servers: 8,
            params: ServerParams::qwen3_32b_tp2_h100(),
            scrape_interval: 50_000,
            warmup: warmup_s * 1_000_000,
            horizon: horizon_s * 1_000_000,
            drain_cap: 3_600 * 1_000_000,
            max_concurrency: None,
            seed,
        }
    }
}

/// Per-request outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReqRecord {
    pub arrival: Micros,
    /// When the client sent it (= arrival unless a concurrency cap held it back).
    pub sent: Micros,
    pub server: Option<u32>,
    pub first_token: Option<Micros>,
    pub finish: Option<Micros>,
    pub shed: bool,
    pub aborted: bool,
}

/// Everything a run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub records: Vec<ReqRecord>,
    /// Output tokens generated in `[warmup, horizon)`.
    pub window_tokens: u64,
    /// Prompt tokens (cached or not) of requests whose first token came in `[warmup, horizon)`.
    pub window_prompt_tokens: u64,
    pub window: Micros,
    pub hit_tokens: u64,
    pub query_tokens: u64,
    pub preemptions: u64,
    /// Highest total of in-flight tokens the gateway counted (all replicas and servers).
    pub max_inflight_tokens: u64,
    /// In-flight (requests, tokens) still counted when the run ended: (0, 0) once every request
    /// has ended.
    pub inflight_left: (u64, u64),
    pub end: Micros,
    pub warmup: Micros,
    pub horizon: Micros,
    /// The replica relay's counters (`+relay`; zero otherwise).
    pub relay: RelayStats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    StepDone(u32),
    /// The pick for this request is due (after the decision cost or the EPP hop).
    Decide(u32),
}

/// Address of simulated server `i`: 10.0.(i / 250).(i % 250 + 1):8000.
pub fn server_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1)),
        8000,
    )
}

struct Gateway {
    kind: PolicyKind,
    workers: u32,
    /// One picker-core router (the pipeline the proxy module runs) per (replica, worker).
    routers: Vec<Router>,
    /// One prefix-sync ring per replica (untouched without `sync`).
    rings: Vec<MemSlots>,
    /// Exact in-flight counts per replica per server.
    inflight: Vec<Vec<InFlight>>,
    rr_next: usize,
    rng: SplitMix64,
    /// Chooses the replica and worker of each request (connection spreading).
    topo_rng: SplitMix64,
    /// The replicas' relay (`+relay`).
    relay: Option<Relay>,
    /// The central EPP's queue and hop (`+epp`).
    epp: Option<Epp>,
}

/// Runs `trace` through a cluster routed by `policy`.
pub fn run(cfg: &SimConfig, trace: &Trace, policy: &PolicySpec) -> RunResult {
    let n = cfg.servers;
    let mut servers: Vec<Server> = (0..n).map(|_| Server::new(cfg.params.clone())).collect();
    let replicas = policy.replicas.max(1) as usize;
    let workers = policy.workers.max(1);
    let routers: Vec<Router> = match &policy.kind {
        PolicyKind::Picker(c) => (0..replicas * workers as usize)
            .map(|i| {
                let sync = policy
                    .sync
                    .then(|| PrefixSync::new(i as u64 + 1, SyncParams::default()));
                Router::new((**c).clone(), workload_policy(), sync)
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut rings = vec![MemSlots::default(); replicas];
    rings.iter_mut().for_each(PrefixSync::init_store);
    let mut gw = Gateway {
        kind: policy.kind.clone(),
        workers,
        routers,
        rings,
        inflight: vec![vec![InFlight::default(); n]; replicas],
        rr_next: 0,
        rng: SplitMix64::new(cfg.seed ^ 0x5EED_0001),
        topo_rng: SplitMix64::new(cfg.seed ^ 0x5EED_0002),
        relay: policy
            .relay
            .map(|p| Relay::new(p, replicas, n, SyncParams::default().ring, cfg.seed ^ 0x5EED_0004)),
        epp: match policy.deploy {
            Deployment::CentralEpp(e) => Some(Epp::new(e, cfg.seed ^ 0x5EED_0003)),
            _ => None,
        },
    };
    assert!(
        !matches!(policy.kind, PolicyKind::Bound),
        "the bound is computed (crate::bound), not simulated"
    );
    // Requests whose pick is due (their Decide event fired); they hold a client slot already.
    let mut ready: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    // Replica r's in-flight view for the pick in progress.
    let mut view: Vec<InFlight> = Vec::with_capacity(n);
    // Which replica sent each request (to release its in-flight count), and the in-flight tokens
    // it still holds there (its uncached prompt tokens until its first token, then 0).
    let mut sent_by: Vec<u32> = vec![0; trace.arrivals.len()];
    let mut held: Vec<u64> = vec![0; trace.arrivals.len()];
    let mut total_inflight_tokens = 0u64;
    let mut max_inflight_tokens = 0u64;
    let mut records: Vec<ReqRecord> = trace
        .arrivals
        .iter()
        .map(|a| ReqRecord {
            arrival: a.at,
            ..ReqRecord::default()
        })
        .collect();

    // Scraped view.
    let mut scraper = Scraper::new(cfg, trace);
    let mut heap: BinaryHeap<Reverse<(Micros, u64, Ev)>> = BinaryHeap::new();
    let mut ev_seq = 0u64;
    let mut cursor = 0usize;
    let mut engine_out: Vec<EngineEvent> = Vec::new();
    let mut window_tokens = 0u64;
    let mut window_prompt_tokens = 0u64;
    // A closed-loop chain's next request is sent when its predecessor ends, before the horizon.
    let release = |id: usize, now: Micros, records: &mut [ReqRecord], q: &mut std::collections::VecDeque<usize>| {
        if let Some(Some(j)) = trace.next.get(id) {
            if now < cfg.horizon {
                records[*j as usize].arrival = now;
                q.push_back(*j as usize);
            }
        }
    };
    let mut now: Micros = 0;
    let stop_at = cfg.horizon.saturating_add(cfg.drain_cap);
    let mut client_queue: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut outstanding: u32 = 0;
    let cap = cfg.max_concurrency.unwrap_or(u32::MAX);
    // A drained ladder (inference-perf): a stage's arrivals are offsets from its timer start, and
    // the next stage starts only after every request of this one has ended.
    let mut gate = trace
        .staging
        .as_ref()
        .filter(|s| s.drain == Drain::Harness)
        .map(StageGate::new);

    loop {
        let next_arrival = match &gate {
            Some(g) if cursor >= g.released => None,
            Some(g) => Some(g.start + trace.arrivals[cursor].at),
            None => trace.arrivals.get(cursor).map(|a| a.at).filter(|&t| t != UNTIMED),
        };
        let next_step = heap.peek().map(|Reverse((t, _, _))| *t);
        let (t, is_arrival) = match (next_arrival, next_step) {
            (Some(a), Some(s)) if a < s => (a, true),
            (Some(a), None) => (a, true),
            (_, Some(s)) => (s, false),
            // Nothing left to happen; anything still in the client queue can never be sent.
            (None, None) => break,
        };
        if t > stop_at {
            break;
        }
        // Scrapes and relay batches strictly before this event see the state before it.
        scraper.advance(t, &servers, trace);
        if let Some(r) = &mut gw.relay {
            r.tick_until(t, &gw.inflight);
        }
        now = t;

        if is_arrival {
            if gate.is_some() {
                records[cursor].arrival = t;
            }
            client_queue.push_back(cursor);
            cursor += 1;
        } else {
            match heap.pop().expect("peeked") {
                Reverse((_, _, Ev::StepDone(s))) => {
                    let srv = &mut servers[s as usize];
                    let tokens = srv.finish_step(&mut engine_out);
                    if now >= cfg.warmup && now < cfg.horizon {
                        window_tokens += tokens as u64;
                    }
                    start(srv, s as usize, now, &mut heap, &mut ev_seq, &mut engine_out);
                }
                Reverse((_, _, Ev::Decide(id))) => ready.push_back(id as usize),
            }
        }

        // Settle this instant: record engine events, then send what the client may send.
        loop {
            for e in engine_out.drain(..) {
                match e {
                    EngineEvent::FirstToken { id, .. } => {
                        records[id].first_token = Some(now);
                        // llm-d's in-flight producer: the pending prefill ends with the first chunk.
                        let s = records[id].server.expect("routed") as usize;
                        let r = sent_by[id] as usize;
                        let f = &mut gw.inflight[r][s];
                        debug_assert!(f.tokens >= held[id]);
                        total_inflight_tokens -= held[id];
                        f.tokens -= std::mem::take(&mut held[id]);
                        if let Some(relay) = &mut gw.relay {
                            let head = Relay::head(&mut gw.rings[r]);
                            relay.changed(r, now, &mut gw.rings[r], head, &gw.inflight[r]);
                        }
                        if now >= cfg.warmup && now < cfg.horizon {
                            window_prompt_tokens += trace.prompts[trace.arrivals[id].prompt as usize].tokens as u64;
                        }
                    }
                    EngineEvent::Finished { id } | EngineEvent::Aborted { id } => {
                        if matches!(e, EngineEvent::Finished { .. }) {
                            records[id].finish = Some(now);
                        } else {
                            records[id].aborted = true;
                        }
                        outstanding -= 1;
                        let s = records[id].server.expect("routed") as usize;
                        let r = sent_by[id] as usize;
                        let f = &mut gw.inflight[r][s];
                        debug_assert!(f.requests >= 1 && f.tokens >= held[id]);
                        f.requests -= 1;
                        // Nonzero only when the request ended without a first token (aborted).
                        total_inflight_tokens -= held[id];
                        f.tokens -= std::mem::take(&mut held[id]);
                        if let Some(relay) = &mut gw.relay {
                            let head = Relay::head(&mut gw.rings[r]);
                            relay.changed(r, now, &mut gw.rings[r], head, &gw.inflight[r]);
                        }
                        release(id, now, &mut records, &mut client_queue);
                        if let Some(g) = &mut gate {
                            g.ended(id, now);
                        }
                    }
                }
            }
            // A request whose pick is due goes first; it already holds a client slot.
            let (idx, counted) = match ready.pop_front() {
                Some(i) => (i, true),
                None => {
                    if outstanding >= cap {
                        break;
                    }
                    let Some(i) = client_queue.pop_front() else { break };
                    records[i].sent = now;
                    let delay = match policy.deploy {
                        Deployment::Ideal => 0,
                        Deployment::InProxy { decision_cost } => decision_cost,
                        Deployment::CentralEpp(_) => gw.epp.as_mut().expect("built for +epp").delay(now),
                    };
                    if delay > 0 {
                        outstanding += 1;
                        ev_seq += 1;
                        heap.push(Reverse((now + delay, ev_seq, Ev::Decide(i as u32))));
                        continue;
                    }
                    (i, false)
                }
            };
            let a = trace.arrivals[idx];
            let prompt = &trace.prompts[a.prompt as usize];
            let pool = scraper.pool();
            let replica = if replicas > 1 {
                gw.topo_rng.below(replicas as u64) as usize
            } else {
                0
            };
            let worker = if gw.workers > 1 {
                gw.topo_rng.below(gw.workers as u64) as usize
            } else {
                0
            };
            // The replica's in-flight view: its own exact counts, plus (with the relay) every
            // other replica's as last received.
            let since = match &mut gw.relay {
                Some(relay) => {
                    relay.deliver(now, &mut gw.rings);
                    relay.view(replica, &gw.inflight[replica], &mut view);
                    Relay::head(&mut gw.rings[replica])
                }
                None => {
                    view.clear();
                    view.extend_from_slice(&gw.inflight[replica]);
                    0
                }
            };
            let choice = route(
                &mut gw,
                replica,
                worker,
                trace,
                a.prompt as usize,
                a.priority,
                a.adapter,
                pool,
                &view,
                &servers,
                now,
            );
            let Some((s, tokens)) = choice else {
                records[idx].shed = true;
                if counted {
                    outstanding -= 1;
                }
                if let Some(relay) = &mut gw.relay {
                    relay.changed(replica, now, &mut gw.rings[replica], since, &gw.inflight[replica]);
                }
                release(idx, now, &mut records, &mut client_queue);
                if let Some(g) = &mut gate {
                    g.ended(idx, now);
                }
                continue;
            };
            let f = &mut gw.inflight[replica][s];
            f.requests += 1;
            f.tokens += tokens;
            held[idx] = tokens;
            total_inflight_tokens += tokens;
            max_inflight_tokens = max_inflight_tokens.max(total_inflight_tokens);
            if !counted {
                outstanding += 1;
            }
            sent_by[idx] = replica as u32;
            if let Some(relay) = &mut gw.relay {
                relay.changed(replica, now, &mut gw.rings[replica], since, &gw.inflight[replica]);
            }
            records[idx].server = Some(s as u32);
            let srv = &mut servers[s];
            srv.enqueue(SeqSpec {
                id: idx,
                prompt_tokens: prompt.tokens,
                output_tokens: a.output_tokens,
                hashes: prompt.hashes.clone(),
                adapter: a.adapter,
            });
            if !srv.is_stepping() {
                start(srv, s, now, &mut heap, &mut ev_seq, &mut engine_out);
            }
        }
    }

    let (hit_tokens, query_tokens, preemptions) = servers.iter().fold((0, 0, 0), |(h, q, p), s| {
        (
            h + s.stats.hit_tokens,
            q + s.stats.query_tokens,
            p + s.stats.preemptions,
        )
    });
    RunResult {
        records,
        window_tokens,
        window_prompt_tokens,
        window: cfg.horizon.saturating_sub(cfg.warmup),
        hit_tokens,
        query_tokens,
        preemptions,
        max_inflight_tokens,
        inflight_left: gw
            .inflight
            .iter()
            .flatten()
            .fold((0, 0), |(r, t), f| (r + f.requests as u64, t + f.tokens)),
        end: now,
        warmup: cfg.warmup,
        horizon: cfg.horizon,
        relay: gw.relay.map_or_else(RelayStats::default, |r| r.stats),
    }
}

/// The metrics path as the picker sees it: every `scrape_interval` the collector copies each
/// server's `num_requests_waiting`, `num_requests_running`, KV usage (and LoRA state) with the
/// scrape's timestamp; between scrapes the picker's [`Pool`] does not change.
#[derive(Debug)]
pub struct Scraper {
    interval: Micros,
    next: Micros,
    last: Micros,
    observed: Vec<Endpoint>,
    sequence: u64,
    pool: Pool,
    dirty: bool,
}

impl Scraper {
    pub fn new(cfg: &SimConfig, trace: &Trace) -> Self {
        let observed: Vec<Endpoint> = (0..cfg.servers)
            .map(|i| {
                let mut e = Endpoint::new(server_addr(i), Instant::ZERO);
                e.block_size = Some(cfg.params.block_tokens);
                e.gpu_blocks = Some(cfg.params.gpu_blocks);
                e.models = std::iter::once(&trace.model).chain(&trace.adapters).cloned().collect();
                if !trace.adapters.is_empty() {
                    e.lora = Some(LoraState {
                        running: Vec::new(),
                        waiting: Vec::new(),
                        max: cfg.params.max_loras as u16,
                    });
                }
                e
            })
            .collect();
        let pool = Pool::new(Snapshot {
            sequence: 1,
            generated_at: Instant::ZERO,
            endpoints: observed.clone(),
        });
        Scraper {
            interval: cfg.scrape_interval.max(1),
            next: 0,
            last: 0,
            observed,
            sequence: 1,
            pool,
            dirty: false,
        }
    }

    /// Performs every scrape due strictly before `t` (they see the state before the event at `t`).
    pub fn advance(&mut self, t: Micros, servers: &[Server], trace: &Trace) {
        while self.next < t {
            for (e, s) in self.observed.iter_mut().zip(servers) {
                e.waiting = s.num_waiting();
                e.running = s.num_running();
                e.kv_usage = s.kv_usage() as f32;
                if let Some(l) = &mut e.lora {
                    let (running, waiting) = s.lora_state();
                    l.running = running.iter().map(|&a| trace.adapters[a as usize].clone()).collect();
                    l.waiting = waiting.iter().map(|&a| trace.adapters[a as usize].clone()).collect();
                }
                e.scraped_at = Instant::from_millis(self.next / 1000);
            }
            self.last = self.next;
            self.dirty = true;
            self.next += self.interval;
        }
    }

    /// The picker's view: the last scrape, as a [`Pool`] (rebuilt only when a scrape happened).
    pub fn pool(&mut self) -> &Pool {
        if self.dirty {
            self.sequence += 1;
            self.pool = Pool::new(Snapshot {
                sequence: self.sequence,
                generated_at: Instant::from_millis(self.last / 1000),
                endpoints: self.observed.clone(),
            });
            self.dirty = false;
        }
        &self.pool
    }
}

/// Releases a drained ladder's stages one at a time (see [`crate::ladder`]).
struct StageGate<'a> {
    staging: &'a Staging,
    /// Requests of each stage that have not ended yet.
    left: Vec<usize>,
    stage: usize,
    /// The current stage's timer start.
    start: Micros,
    /// Arrivals before this index are released.
    released: usize,
}

impl<'a> StageGate<'a> {
    fn new(staging: &'a Staging) -> Self {
        let mut g = StageGate {
            staging,
            left: staging.spans.iter().map(|s| s.len).collect(),
            stage: 0,
            start: LEAD,
            released: staging.spans.first().map_or(0, |s| s.first + s.len),
        };
        g.skip_empty(LEAD);
        g
    }

    fn skip_empty(&mut self, now: Micros) {
        while self.stage + 1 < self.left.len() && self.left[self.stage] == 0 {
            self.stage += 1;
            self.start = Staging::next_start(self.start, now.max(self.start));
            let s = self.staging.spans[self.stage];
            self.released = s.first + s.len;
        }
    }

    /// Request `id` finished, failed or was shed at `now`.
    fn ended(&mut self, id: usize, now: Micros) {
        let k = self.staging.stage_of(id);
        self.left[k] -= 1;
        if k == self.stage {
            self.skip_empty(now);
        }
    }
}

fn start(
    srv: &mut Server,
    s: usize,
    now: Micros,
    heap: &mut BinaryHeap<Reverse<(Micros, u64, Ev)>>,
    ev_seq: &mut u64,
    out: &mut Vec<EngineEvent>,
) {
    if let Some(d) = srv.start_step(out) {
        *ev_seq += 1;
        heap.push(Reverse((now + micros(d), *ev_seq, Ev::StepDone(s as u32))));
    }
}

/// The InferenceObjective the workloads give their sheddable requests (priority −1).
pub const SHEDDABLE_OBJECTIVE: &str = "sheddable";

/// The request policy of the simulated pool: every model served, none rewritten, and
/// [`SHEDDABLE_OBJECTIVE`] at priority −1 (GIE: sheddable).
fn workload_policy() -> ModelPolicy {
    let mut objectives = std::collections::BTreeMap::new();
    objectives.insert(String::from(SHEDDABLE_OBJECTIVE), -1);
    ModelPolicy::try_new(Vec::new(), Default::default(), Vec::new(), objectives).expect("valid policy")
}

/// Chooses a server for one request and the in-flight tokens to count for it there until its
/// first token, or `None` when the picker sheds it. picker-core policies count the
/// decision's `uncached_tokens` (llm-d's semantics); the others, which read no token counts,
/// count the whole prompt (bytes / 4).
#[allow(clippy::too_many_arguments)]
fn route(
    gw: &mut Gateway,
    replica: usize,
    worker: usize,
    trace: &Trace,
    prompt_idx: usize,
    priority: i32,
    adapter: Option<u16>,
    pool: &Pool,
    inflight: &[InFlight],
    servers: &[Server],
    now: Micros,
) -> Option<(usize, u64)> {
    let n = servers.len();
    let whole = (trace.prompts[prompt_idx].len() / BYTES_PER_TOKEN) as u64;
    match &gw.kind {
        PolicyKind::Random => Some((gw.rng.below(n as u64) as usize, whole)),
        PolicyKind::RoundRobin => {
            let s = gw.rr_next % n;
            gw.rr_next += 1;
            Some((s, whole))
        }
        PolicyKind::LeastRequest => {
            let min = inflight.iter().map(|f| f.requests).min().unwrap_or(0);
            let ties: Vec<usize> = (0..n).filter(|&i| inflight[i].requests == min).collect();
            Some((ties[gw.rng.below(ties.len() as u64) as usize], whole))
        }
        PolicyKind::Oracle => {
            let p = &trace.prompts[prompt_idx];
            let range =
                |v: &dyn Fn(usize) -> u64| (0..n).map(v).fold((u64::MAX, 0), |(lo, hi), x| (lo.min(x), hi.max(x)));
            let mm = |x: u64, (lo, hi): (u64, u64)| {
                if hi == lo {
                    1.0
                } else {
                    (hi - x) as f64 / (hi - lo) as f64
                }
            };
            let q_range = range(&|i| servers[i].num_waiting() as u64);
            let f_range = range(&|i| inflight[i].requests as u64);
            let blocks = p.hashes.len().max(1) as f64;
            let mut order: Vec<usize> = (0..n).collect();
            picker_core::rng::shuffle(&mut order, &mut gw.rng);
            let mut best = (f64::NEG_INFINITY, 0usize);
            for i in order {
                let s = &servers[i];
                let hit = s.kv().lookup_prefix(&p.hashes) as f64 / blocks;
                let score = ORACLE_WEIGHTS[0] * hit
                    + ORACLE_WEIGHTS[1] * mm(s.num_waiting() as u64, q_range)
                    + ORACLE_WEIGHTS[2] * (1.0 - s.kv_usage())
                    + ORACLE_WEIGHTS[3] * mm(inflight[i].requests as u64, f_range);
                if score > best.0 {
                    best = (score, i);
                }
            }
            Some((best.1, whole))
        }
        PolicyKind::Picker(_) => {
            let p = &trace.prompts[prompt_idx];
            let model = adapter.map_or(&trace.model, |a| &trace.adapters[a as usize]);
            let mut req = Inbound::new(model, Prompt::from_parts(&p.head, &p.tail));
            req.objective = (priority < 0).then_some(SHEDDABLE_OBJECTIVE);
            let slot = replica * gw.workers as usize + worker;
            // The proxy module's pipeline: admit, rewrite, sync pull, pick, sync push.
            let routing = gw.routers[slot].route(
                &req,
                pool,
                inflight,
                &mut gw.rings[replica],
                Instant::from_millis(now / 1000),
                &mut gw.rng,
            );
            match routing {
                Routing::Picked { decision, .. } => decision.primary().map(|s| (s, decision.uncached_tokens)),
                Routing::ModelNotAllowed => None,
            }
        }
        PolicyKind::Bound => unreachable!("checked in run"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::SharedPrefix;

    fn tiny_cluster() -> SimConfig {
        SimConfig {
            servers: 4,
            ..SimConfig::llmd_cluster(20, 5, 1)
        }
    }

    fn tiny_trace(qps: f64) -> Trace {
        let shape = SharedPrefix {
            groups: 12,
            users_per_group: 3,
            system_tokens: 2000,
            question_tokens: 200,
            output_tokens: 50,
        };
        shape.trace(qps, 20_000_000, 16, 42)
    }

    #[test]
    fn every_request_finishes_and_runs_are_deterministic() {
        let cfg = tiny_cluster();
        let trace = tiny_trace(8.0);
        for policy in PolicySpec::standard() {
            let a = run(&cfg, &trace, &policy);
            let b = run(&cfg, &trace, &policy);
            assert_eq!(a, b, "{} is not deterministic", policy.name);
            assert!(
                a.records.iter().all(|r| r.finish.is_some()),
                "{} left requests unfinished",
                policy.name
            );
            assert!(a
                .records
                .iter()
                .all(|r| r.first_token.unwrap() >= r.arrival && r.finish >= r.first_token));
            assert_eq!(a.inflight_left, (0, 0), "{}", policy.name);
        }
    }

    /// llm-d's in-flight semantics: a request counts 1 until it ends and its uncached prompt
    /// tokens until its first token; every count returns to zero.
    #[test]
    fn in_flight_tokens_are_released_at_the_first_token() {
        let cfg = SimConfig {
            servers: 1,
            ..SimConfig::llmd_cluster(5, 0, 3)
        };
        let shape = SharedPrefix {
            groups: 2,
            users_per_group: 1,
            system_tokens: 1000,
            question_tokens: 1000,
            output_tokens: 200,
        };
        let mut trace = shape.trace(1.0, 1, 16, 1);
        let arrival = |at, prompt| crate::workload::Arrival {
            at,
            prompt,
            output_tokens: 200,
            priority: 0,
            adapter: None,
        };
        // B arrives while A decodes (A's prefill takes ~0.15 s, its decode ~3 s).
        trace.arrivals = vec![arrival(0, 0), arrival(1_000_000, 1)];
        for name in ["round-robin", "llm-d-optimized-baseline", "wasm-epp-default"] {
            let r = run(&cfg, &trace, &PolicySpec::parse(name).unwrap());
            assert!(r.records[1].sent < r.records[0].finish.unwrap(), "{name}: overlap");
            // One cold prompt at a time (llm-d counts whole 64-token blocks: 2,048 for 2,000).
            let m = r.max_inflight_tokens;
            assert!((2000..=2048).contains(&m), "{name}: {m}, not both prompts");
            assert_eq!(r.inflight_left, (0, 0), "{name}");
        }
        // The same prompt again 10 ms later, while A still prefills: llm-d counts only what the
        // pod does not hold (its index already has A's blocks), round-robin the whole prompt.
        trace.arrivals = vec![arrival(0, 0), arrival(10_000, 0)];
        let r = run(&cfg, &trace, &PolicySpec::parse("llm-d-optimized-baseline").unwrap());
        assert!(r.records[1].sent < r.records[0].first_token.unwrap());
        assert_eq!(r.max_inflight_tokens, 2048);
        assert_eq!(r.inflight_left, (0, 0));
        let rr = run(&cfg, &trace, &PolicySpec::parse("round-robin").unwrap());
        assert_eq!(rr.max_inflight_tokens, 4000);
    }

    #[test]
    fn round_robin_spreads_evenly_and_prefix_aware_routing_hits_more() {
        let cfg = tiny_cluster();
        let trace = tiny_trace(8.0);
        let rr = run(&cfg, &trace, &PolicySpec::parse("round-robin").unwrap());
        let mut per = [0usize; 4];
        for r in &rr.records {
            per[r.server.unwrap() as usize] += 1;
        }
        assert!(per.iter().max().unwrap() - per.iter().min().unwrap() <= 1, "{per:?}");
        let gie = run(&cfg, &trace, &PolicySpec::parse("gie-default").unwrap());
        let hit = |r: &RunResult| r.hit_tokens as f64 / r.query_tokens as f64;
        assert!(hit(&gie) > hit(&rr) + 0.1, "gie {} vs rr {}", hit(&gie), hit(&rr));
    }

    #[test]
    fn closed_loop_chains_send_each_turn_after_the_previous_one_ends() {
        use crate::workload::{ConversationReplay, Dist};
        let cfg = SimConfig {
            servers: 4,
            ..SimConfig::llmd_cluster(30, 5, 1)
        };
        let shape = ConversationReplay {
            shared_system_tokens: 300,
            dynamic_system: Dist::Fixed(2000.0),
            turns: Dist::Fixed(3.0),
            input_per_turn: Dist::Fixed(200.0),
            output_per_turn: Dist::Fixed(40.0),
            stagger_s: 1.0,
        };
        let trace = shape.trace(6, cfg.horizon, 16, 14_000, 5);
        for name in ["round-robin", "wasm-epp-default"] {
            let r = run(&cfg, &trace, &PolicySpec::parse(name).unwrap());
            let mut outstanding = 0i32;
            // Never more than 6 requests (one per slot) between send and finish.
            let mut events: Vec<(Micros, i32)> = Vec::new();
            for (i, rec) in r.records.iter().enumerate() {
                if let Some(Some(j)) = trace.next.get(i) {
                    let next = &r.records[*j as usize];
                    if next.server.is_some() {
                        assert_eq!(Some(next.sent), rec.finish, "{name}: turn sent when the previous ends");
                    }
                }
                if let (Some(f), true) = (rec.finish, rec.server.is_some()) {
                    events.push((rec.sent, 1));
                    events.push((f, -1));
                }
            }
            events.sort();
            for (_, d) in events {
                outstanding += d;
                assert!(outstanding <= 6, "{name}: {outstanding} in flight");
            }
            let sent = r.records.iter().filter(|x| x.server.is_some()).count();
            assert!(sent > 6 * 3, "{name}: only {sent} requests sent in 30 s");
            assert!(r.window_prompt_tokens > 0 && r.window_tokens > 0);
        }
    }

    #[test]
    fn split_topology_uses_separate_states() {
        let cfg = tiny_cluster();
        let trace = tiny_trace(8.0);
        let one = run(&cfg, &trace, &PolicySpec::parse("gie-default").unwrap());
        let split = run(&cfg, &trace, &PolicySpec::parse("gie-default@4x2").unwrap());
        // With 8 independent prefix indexes, a group is learned up to 8 times: hit rate drops.
        let hit = |r: &RunResult| r.hit_tokens as f64 / r.query_tokens as f64;
        assert!(hit(&split) < hit(&one), "split {} one {}", hit(&split), hit(&one));
    }

    #[test]
    fn synced_workers_route_like_one_view() {
        // Workers that replicate their prefix index through the ring make the decisions one
        // worker would (same entries, same gateway RNG); unsynced ones do not.
        let cfg = tiny_cluster();
        let trace = tiny_trace(8.0);
        let servers = |name: &str| -> Vec<Option<u32>> {
            let r = run(&cfg, &trace, &PolicySpec::parse(name).unwrap());
            r.records.iter().map(|x| x.server).collect()
        };
        let one = servers("gie-default");
        assert_eq!(servers("gie-default@4x1+sync"), one);
        assert_ne!(servers("gie-default@4x1"), one);
    }

    #[test]
    fn relayed_replicas_with_no_delay_route_like_one_view() {
        // With a zero-delay, lossless relay every replica's ring gets every insertion before the
        // next pick and every replica sees every count: the decisions of one view (same decision
        // cost, same gateway RNG).
        let cfg = tiny_cluster();
        let trace = tiny_trace(8.0);
        let run_named = |name: &str| run(&cfg, &trace, &PolicySpec::parse(name).unwrap());
        let servers = |r: &RunResult| -> Vec<Option<u32>> { r.records.iter().map(|x| x.server).collect() };
        for base in ["gie-default", "wasm-epp-default", "llm-d-optimized-baseline"] {
            let one = run_named(&format!("{base}+proxy"));
            let relayed = run_named(&format!("{base}@2x2+relay:0"));
            assert_eq!(servers(&relayed), servers(&one), "{base}");
            assert_eq!(relayed.relay.lost, 0);
            let routed = relayed.records.iter().filter(|x| x.server.is_some()).count() as u64;
            // Each insertion reaches the other replica (batches are applied before the next pick,
            // so the last request's is still on its way when the run ends).
            let applied = relayed.relay.records_applied;
            assert!(
                (routed - 1..=routed).contains(&applied),
                "{base}: {applied} of {routed}"
            );
            assert_eq!(relayed.inflight_left, (0, 0));
            let late = run_named(&format!("{base}@2x2+relay:100"));
            assert_eq!(late.inflight_left, (0, 0));
        }
        // Without the relay, replicas learn alone.
        let one = run_named("gie-default+proxy");
        assert_ne!(servers(&run_named("gie-default@2x2+sync+proxy")), servers(&one));
        // Lossy and batched relays stay deterministic and account every request.
        let a = run_named("wasm-epp-default@2x3+relay:50:0.3:20");
        assert_eq!(a, run_named("wasm-epp-default@2x3+relay:50:0.3:20"));
        assert!(a.relay.lost > 0 && a.relay.lost < a.relay.sent, "{:?}", a.relay);
        assert!(a.records.iter().all(|r| r.finish.is_some()));
    }

    #[test]
    fn the_central_epp_delays_every_request_by_its_hop() {
        let cfg = tiny_cluster();
        let trace = tiny_trace(8.0);
        let ideal = run(&cfg, &trace, &PolicySpec::parse("gie-default").unwrap());
        let epp = run(&cfg, &trace, &PolicySpec::parse("gie-default+epp:1000:20:20").unwrap());
        // A fixed 20 ms hop: every request is sent when it arrives and reaches its server 20 ms
        // later, so its TTFT is at least 20 ms plus a step.
        for r in &epp.records {
            assert_eq!(r.sent, r.arrival);
            assert!(r.first_token.unwrap() >= r.sent + 20_000 + 10_000);
        }
        let ttft = |r: &RunResult| {
            let v: Vec<Micros> = r.records.iter().map(|x| x.first_token.unwrap() - x.sent).collect();
            v.iter().sum::<Micros>() / v.len() as Micros
        };
        assert!(
            ttft(&epp) >= ttft(&ideal) + 15_000,
            "{} vs {}",
            ttft(&epp),
            ttft(&ideal)
        );
        assert_eq!(epp.inflight_left, (0, 0));
        // With a client cap the held requests count as outstanding while they wait for the EPP.
        let capped = SimConfig {
            max_concurrency: Some(2),
            ..tiny_cluster()
        };
        let r = run(&capped, &trace, &PolicySpec::parse("gie-default+epp").unwrap());
        assert!(r.records.iter().all(|x| x.finish.is_some()));
        let mut ev: Vec<(Micros, i32)> = r
            .records
            .iter()
            .flat_map(|x| [(x.sent, 1), (x.finish.unwrap(), -1)])
            .collect();
        ev.sort();
        let mut open = 0;
        for (_, d) in ev {
            open += d;
            assert!(open <= 2);
        }
    }

    #[test]
    fn least_request_counts_in_flight_exactly_between_scrapes() {
        // Two requests 1 ms apart, both between the same two scrapes: the scraped queues are
        // identical (idle), but the proxy's own in-flight count already sees the first request.
        let cfg = SimConfig {
            servers: 2,
            ..SimConfig::llmd_cluster(1, 0, 3)
        };
        let shape = SharedPrefix {
            groups: 2,
            users_per_group: 1,
            system_tokens: 64,
            question_tokens: 16,
            output_tokens: 5,
        };
        let mut trace = shape.trace(1.0, 1, 16, 1);
        trace.arrivals = vec![
            crate::workload::Arrival {
                at: 10_000,
                prompt: 0,
                output_tokens: 5,
                priority: 0,
                adapter: None,
            },
            crate::workload::Arrival {
                at: 11_000,
                prompt: 1,
                output_tokens: 5,
                priority: 0,
                adapter: None,
            },
        ];
        let lr = run(&cfg, &trace, &PolicySpec::parse("least-request").unwrap());
        assert_ne!(
            lr.records[0].server, lr.records[1].server,
            "exact in-flight separates them"
        );
    }

    #[test]
    fn concurrency_cap_holds_requests_in_the_client() {
        let cfg = SimConfig {
            max_concurrency: Some(1),
            ..tiny_cluster()
        };
        let trace = tiny_trace(2.0);
        let r = run(&cfg, &trace, &PolicySpec::parse("round-robin").unwrap());
        let mut spans: Vec<(Micros, Micros)> = r.records.iter().map(|x| (x.sent, x.finish.unwrap())).collect();
        spans.sort();
        assert!(
            spans.windows(2).all(|w| w[0].1 <= w[1].0),
            "at most one request outstanding"
        );
        assert!(
            r.records.iter().any(|x| x.sent > x.arrival),
            "some requests waited in the client"
        );
    }

    #[test]
    fn picker_view_lags_until_the_next_scrape() {
        let cfg = SimConfig {
            servers: 1,
            ..tiny_cluster()
        };
        let trace = tiny_trace(1.0);
        let mut servers = vec![Server::new(cfg.params.clone())];
        let mut sc = Scraper::new(&cfg, &trace);
        sc.advance(1, &servers, &trace); // scrape at t = 0: idle
        assert_eq!(sc.pool().endpoints()[0].waiting, 0);
        for id in 0..3 {
            servers[0].enqueue(SeqSpec {
                id,
                prompt_tokens: 16,
                output_tokens: 1,
                hashes: Vec::new().into(),
                adapter: None,
            });
        }
        sc.advance(50_000, &servers, &trace); // the scrape at 50 ms is not yet due (strictly before)
        let ep = &sc.pool().endpoints()[0];
        assert_eq!(
            (ep.waiting, ep.scraped_at),
            (0, Instant::from_millis(0)),
            "three requests queued, none visible"
        );
        sc.advance(50_001, &servers, &trace);
        let ep = &sc.pool().endpoints()[0];
        assert_eq!((ep.waiting, ep.scraped_at), (3, Instant::from_millis(50)));
        assert_eq!(sc.pool().snapshot().generated_at, Instant::from_millis(50));
    }
}
