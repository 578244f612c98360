//! The pick: candidates → admission → filters → scorers → max-score picker, with the reasons.
//!
//! ```text
//! snapshot.endpoints ──ready? serves model? in subset?──▶ candidates ──(empty: 503)
//!        │                                                    │
//!        │                   admission: pool saturation over candidates; priority < 0 and
//!        │                   saturation ≥ 1.0 → 429 (GIE legacy admission, epp.md §3.8)
//!        ▼                                                    ▼
//!   filters in order (utilization, prefix affinity), each fail-open ──▶ scorers, weighted sum
//!        ──▶ max-score picker: shuffle (injected RNG), stable sort by score ↓, top N ──▶ Decision
//! ```
//!
//! Scorer formulas (epp.md §3.4; all clamp to [0, 1]):
//! * queue: `(maxQ − q) / (maxQ − minQ)` over candidates, 1.0 when all equal;
//! * kv-cache: `1 − kv_usage`;
//! * prefix: `matched blocks / request blocks` (0 without blocks);
//! * lora: 1.0 adapter running; 0.8 room to load (`running + waiting < max`); 0.6 adapter
//!   waiting; else 0;
//! * running-requests: min-max like queue, on running requests;
//! * token-load: `1 − min(1, (in-flight tokens + this request's uncached tokens) / threshold)`;
//! * in-flight (ours): min-max like queue, on the proxy's exact in-flight requests;
//! * consistent-hash (ours): 1.0 for the bounded-load rendezvous choice of the prompt's leading
//!   blocks, 0 elsewhere (see [`crate::chash`]).
//!
//! The total is `Σ weight × score`, not normalised by total weight, as in GIE.

use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, SocketAddr};

use crate::chash;
use crate::config::{Config, FilterKind, ScorerKind, MAX_SCORERS};
use crate::prefix::{hash_prompt_into, EndpointKey, PrefixHashes, PrefixIndex};
use crate::rng::{shuffle, Rng};
use crate::scan::Prompt;
use crate::snapshot::{Endpoint, Pool};
use crate::sync::Served;
use crate::time::Instant;

/// Proxy-side load of one endpoint, counted exactly by the filter across all workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub requests: u32,
    /// Estimated prompt tokens of the requests in flight (bytes / chars-per-token).
    pub tokens: u64,
}

/// One entry of a subset hint (`x-gateway-destination-endpoint-subset`, or the conformance
/// steering header): a bare IP matches every port of that host, `ip:port` matches exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsetEntry {
    Ip(IpAddr),
    Addr(SocketAddr),
}

impl SubsetEntry {
    pub fn matches(&self, addr: &SocketAddr) -> bool {
        match self {
            SubsetEntry::Ip(ip) => addr.ip() == *ip,
            SubsetEntry::Addr(a) => a == addr,
        }
    }
}

/// Why a subset list could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubsetError {
    /// Index of the offending comma-separated item.
    pub item: usize,
}

impl fmt::Display for SubsetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "endpoint subset item {} is not an IP or ip:port", self.item)
    }
}

impl core::error::Error for SubsetError {}

/// Most entries accepted in a subset list.
pub const MAX_SUBSET: usize = 1024;

/// Parses a comma-separated list of `ip`, `ip:port`, `[v6]:port` or bare v6 (as GIE's lwepp
/// accepts). Empty items are skipped; an empty list is valid and selects nothing.
pub fn parse_subset(s: &str) -> Result<Vec<SubsetEntry>, SubsetError> {
    let mut out = Vec::new();
    for (item, raw) in s.split(',').enumerate() {
        let t = raw.trim();
        if t.is_empty() {
            continue;
        }
        if out.len() >= MAX_SUBSET {
            return Err(SubsetError { item });
        }
        let e = if let Ok(a) = t.parse::<SocketAddr>() {
            SubsetEntry::Addr(a)
        } else if let Ok(ip) = t.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            SubsetEntry::Ip(ip)
        } else {
            return Err(SubsetError { item });
        };
        out.push(e);
    }
    Ok(out)
}

/// What the caller knows about one request.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The model the pods must serve (after any rewrite).
    pub model: &'a str,
    pub cache_salt: Option<&'a str>,
    pub prompt: Prompt<'a>,
    /// InferenceObjective priority; negative means sheddable (GIE `IsSheddable`).
    pub priority: i32,
    /// Restrict the pick to these endpoints (subset hint); `Some(&[])` selects nothing → 503.
    pub subset: Option<&'a [SubsetEntry]>,
}

impl<'a> Request<'a> {
    pub fn new(model: &'a str, prompt: Prompt<'a>) -> Self {
        Request {
            model,
            cache_salt: None,
            prompt,
            priority: 0,
            subset: None,
        }
    }
}

/// Why the picker refused to route.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rejection {
    /// No ready endpoint serves the model (or the snapshot is empty).
    NoEndpoints,
    /// A subset was given and no eligible endpoint is in it.
    SubsetEmpty,
    /// Sheddable request while the pool is saturated.
    Shed { saturation: f64 },
}

impl Rejection {
    /// The HTTP status the proxy should answer with (epp.md §1.3, §3.8).
    pub fn http_status(&self) -> u16 {
        match self {
            Rejection::NoEndpoints | Rejection::SubsetEmpty => 503,
            Rejection::Shed { .. } => 429,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoEndpoints => f.write_str("no ready endpoint serves the requested model"),
            Rejection::SubsetEmpty => f.write_str("no eligible endpoint in the requested subset"),
            Rejection::Shed { saturation } => {
                write!(f, "pool saturated ({saturation:.2}), sheddable request dropped")
            }
        }
    }
}

/// Why an endpoint of the snapshot was not a candidate, or was filtered out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    NotReady,
    ModelNotServed,
    NotInSubset,
    /// Removed by the utilization filter (stale metrics, queue or KV over threshold).
    Saturated,
    /// Removed by the prefix-affinity filter (not sticky).
    NotSticky,
}

/// What the prefix-cache-affinity filter saw and did (llm-d's reasons, for logs and `explain`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffinityGate {
    /// Candidates whose prefix score reached the threshold.
    pub sticky: u32,
    /// The exploration draw skipped the filter.
    pub explored: bool,
    /// Best (lowest) estimated TTFT in ms of the sticky and of the non-sticky candidates, when
    /// both kinds exist (TTFT = in-flight tokens / peak prefill throughput × 1000).
    pub ttft_ms: Option<(f64, f64)>,
    /// The filter kept every candidate: no sticky pod, exploration, or the TTFT gate opened
    /// (the sticky pods' lead exceeded `maxTTFTPenaltyMs`).
    pub kept_all: bool,
}

/// How the decision was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The configured profile over a fresh snapshot.
    Normal,
    /// The snapshot is older than `degradeAfterMs`: consistent hashing + in-flight counts only.
    Degraded,
}

/// One scored candidate. `scores[i]` belongs to `Decision::scorers[i]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// Index into `snapshot.endpoints`.
    pub index: usize,
    pub scores: [f32; MAX_SCORERS],
    pub total: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Ordered endpoints (indices into `snapshot.endpoints`): the first is the pick, the rest
    /// the fallback list.
    Route(Vec<usize>),
    Reject(Rejection),
}

/// The pick and every reason for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    pub mode: Mode,
    /// Pool saturation over the candidates (GIE utilization detector).
    pub saturation: f64,
    /// The scorers that produced `Scored::scores`, in order, with weights.
    pub scorers: Vec<(ScorerKind, f64)>,
    /// Candidates that reached scoring, in snapshot order.
    pub scored: Vec<Scored>,
    /// Endpoints dropped before scoring and why.
    pub drops: Vec<(usize, DropReason)>,
    /// The request's prefix block hashes (for recording the served endpoint later).
    pub hashes: PrefixHashes,
    /// Best prefix match among candidates, in blocks.
    pub best_prefix_match: u32,
    /// The affinity filter's verdict, when the profile has that filter and it ran.
    pub affinity: Option<AffinityGate>,
    /// Prompt tokens the primary endpoint must still prefill (its uncached tokens, as llm-d's
    /// in-flight producer counts them; [`PrefixHashes::uncached_tokens`]); 0 when rejected. A
    /// caller that keeps in-flight token counts adds this at dispatch and removes it at the
    /// first streamed response chunk, as llm-d does: the counters then measure pending
    /// prefill, which the token-load scorer and the affinity filter's TTFT gate read.
    pub uncached_tokens: u64,
}

impl Decision {
    /// The chosen endpoint (first of the list), if routed.
    pub fn primary(&self) -> Option<usize> {
        match &self.outcome {
            Outcome::Route(v) => v.first().copied(),
            Outcome::Reject(_) => None,
        }
    }
}

/// Mutable picker state: the prefix index. One per worker; [`crate::sync`] replicates it
/// between workers.
#[derive(Clone, Debug)]
pub struct State {
    pub index: PrefixIndex,
    matches: Vec<(EndpointKey, u32)>,
    /// Insertions not yet replicated; `None` unless [`State::enable_outbox`] was called.
    outbox: Option<Vec<Served>>,
}

/// Most insertions kept for replication between two pushes; older ones are dropped.
pub const OUTBOX_MAX: usize = 8;

impl State {
    pub fn new(config: &Config) -> Self {
        State {
            index: PrefixIndex::new(config.prefix().max_index_entries),
            matches: Vec::new(),
            outbox: None,
        }
    }

    /// Keeps every local insertion for [`crate::sync::PrefixSync::push`].
    pub fn enable_outbox(&mut self) {
        self.outbox.get_or_insert_with(Vec::new);
    }

    /// The insertions made since the last call (empty without an outbox).
    pub fn take_outbox(&mut self) -> Vec<Served> {
        self.outbox.as_mut().map(core::mem::take).unwrap_or_default()
    }

    /// Records that `endpoint` served a request with `hashes` (use when the proxy walked the
    /// fallback list and the served endpoint differs from the primary pick).
    pub fn record_served(&mut self, config: &Config, endpoint: &Endpoint, hashes: &PrefixHashes) {
        let (key, cap) = (
            endpoint.key(),
            endpoint.gpu_blocks.unwrap_or(config.prefix().lru_capacity),
        );
        self.index
            .insert(key, cap, hashes.as_slice(), config.prefix().insert_order);
        // Full hits are replicated too: they refresh the prompt's LRU recency on every worker.
        // (Skipping them cost the shared-prefix benchmark up to 1 point of hit rate and doubled
        // TTFT p90 at some rates: the index evicts by recency.)
        if let (Some(out), false) = (self.outbox.as_mut(), hashes.is_empty()) {
            if out.len() == OUTBOX_MAX {
                out.remove(0);
            }
            out.push(Served {
                endpoint: key,
                capacity: cap,
                hashes: hashes.as_slice().to_vec(),
            });
        }
    }

    /// Applies an insertion (local, or replicated from another worker) to the index.
    pub fn apply_served(&mut self, config: &Config, s: &Served) {
        self.index
            .insert(s.endpoint, s.capacity, &s.hashes, config.prefix().insert_order);
    }
}

/// Whether `ep`'s metrics are older than the staleness threshold at `now`.
fn is_stale(config: &Config, ep: &Endpoint, now: Instant) -> bool {
    now.saturating_since(ep.scraped_at) > config.saturation().staleness
}

/// GIE utilization detector: `mean_p max(q_p / qThr, kv_p / kvThr)`, stale pods count 1.0,
/// an empty set counts 1.0.
pub fn pool_saturation(config: &Config, pool: &Pool, candidates: &[usize], now: Instant) -> f64 {
    if candidates.is_empty() {
        return 1.0;
    }
    let s = config.saturation();
    let sum: f64 = candidates
        .iter()
        .map(|&i| {
            let ep = &pool.endpoints()[i];
            if is_stale(config, ep, now) {
                1.0
            } else {
                let q = ep.waiting as f64 / s.queue_threshold as f64;
                let kv = ep.kv_usage as f64 / s.kv_threshold;
                q.max(kv)
            }
        })
        .sum();
    sum / candidates.len() as f64
}

/// Spread of in-flight counts below which the in-flight scorer scores proportionally (see
/// `pick_hashed`); the consistent-hash `minBound` default, the load a pod may always take.
pub const INFLIGHT_RANGE_FLOOR: u64 = 8;

/// Picks endpoints for `req`. `inflight` is indexed like `pool.endpoints()` (a shorter slice
/// counts the rest as idle). Never panics; allocations are the decision and small scratch.
pub fn pick(
    config: &Config,
    req: &Request<'_>,
    pool: &Pool,
    inflight: &[InFlight],
    state: &mut State,
    now: Instant,
    rng: &mut impl Rng,
) -> Decision {
    let hashes = prefix_hashes(config, req, pool);
    pick_hashed(config, req, hashes, pool, inflight, state, now, rng)
}

/// The request's prefix block hashes, with the block size of the first ready endpoint that
/// serves the model when autoTune is on (GIE takes the first candidate's `block_size`).
pub fn prefix_hashes(config: &Config, req: &Request<'_>, pool: &Pool) -> PrefixHashes {
    let first = pool.endpoints().iter().find(|e| e.ready && e.serves(req.model));
    let block_tokens = config.block_tokens(first.and_then(|e| e.block_size));
    let chars = config.prefix().chars_per_token.max(1) as usize;
    let mut hashes = PrefixHashes::default();
    hash_prompt_into(
        req.model,
        req.cache_salt,
        req.prompt,
        (block_tokens as usize).saturating_mul(chars),
        config.max_blocks(block_tokens) as usize,
        &mut hashes,
    );
    hashes.set_token_sizes(block_tokens, req.prompt.len().div_ceil(chars) as u64);
    hashes
}

/// [`pick`] with the prefix hashes already computed by [`prefix_hashes`] (lets callers and
/// benchmarks separate hashing, which is linear in the prompt, from the decision).
#[allow(clippy::too_many_arguments)]
pub fn pick_hashed(
    config: &Config,
    req: &Request<'_>,
    hashes: PrefixHashes,
    pool: &Pool,
    inflight: &[InFlight],
    state: &mut State,
    now: Instant,
    rng: &mut impl Rng,
) -> Decision {
    let snapshot = pool.snapshot();
    let mut drops = Vec::new();
    let mut cands: Vec<usize> = Vec::with_capacity(snapshot.endpoints.len());
    for (i, ep) in snapshot.endpoints.iter().enumerate() {
        if !ep.ready {
            drops.push((i, DropReason::NotReady));
        } else if !ep.serves(req.model) {
            drops.push((i, DropReason::ModelNotServed));
        } else if req.subset.is_some_and(|s| !s.iter().any(|e| e.matches(&ep.addr))) {
            drops.push((i, DropReason::NotInSubset));
        } else {
            cands.push(i);
        }
    }

    let degraded = config
        .degrade_after()
        .is_some_and(|d| now.saturating_since(snapshot.generated_at) > d);
    let mode = if degraded { Mode::Degraded } else { Mode::Normal };

    let saturation = pool_saturation(config, pool, &cands, now);
    let reject = |r: Rejection, drops, hashes| Decision {
        outcome: Outcome::Reject(r),
        mode,
        saturation,
        scorers: Vec::new(),
        scored: Vec::new(),
        drops,
        hashes,
        best_prefix_match: 0,
        affinity: None,
        uncached_tokens: 0,
    };
    if cands.is_empty() {
        let r = if req.subset.is_some() {
            Rejection::SubsetEmpty
        } else {
            Rejection::NoEndpoints
        };
        return reject(r, drops, hashes);
    }
    // Admission (GIE legacy path): sheddable requests are dropped when saturated. In degraded
    // mode the metrics are too old to call the pool saturated, so nothing is shed.
    if !degraded && req.priority < 0 && saturation >= 1.0 {
        return reject(Rejection::Shed { saturation }, drops, hashes);
    }

    // Prefix matches per endpoint (needed by the prefix scorer and the affinity filter).
    state.index.match_longest(hashes.as_slice(), &mut state.matches);
    let total_blocks = hashes.len() as u32;
    let mut matched = alloc::vec![0u32; snapshot.endpoints.len()];
    for &(key, n) in &state.matches {
        if let Some(i) = pool.index_of(key) {
            matched[i] = n;
        }
    }
    // Most pods hold none of the prompt: 0 / n is exactly +0.0, so skip the division.
    let prefix_score = |i: usize| -> f64 {
        match matched[i] {
            0 => 0.0,
            m => m as f64 / total_blocks as f64,
        }
    };
    let load = |i: usize| inflight.get(i).copied().unwrap_or_default();
    let uncached = |i: usize| hashes.uncached_tokens(matched[i]);
    let best_prefix_match = cands.iter().map(|&i| matched[i]).max().unwrap_or(0);

    // Filters (skipped in degraded mode: they read metrics we no longer trust).
    let mut affinity = None;
    if !degraded {
        for f in config.filters() {
            let keep: Vec<bool> = match f {
                FilterKind::Utilization => {
                    let s = config.saturation();
                    let q_max = s.queue_threshold as f64 * (1.0 + s.headroom);
                    let kv_max = s.kv_threshold * (1.0 + s.headroom);
                    cands
                        .iter()
                        .map(|&i| {
                            let ep = &snapshot.endpoints[i];
                            !is_stale(config, ep, now) && (ep.waiting as f64) < q_max && (ep.kv_usage as f64) < kv_max
                        })
                        .collect()
                }
                FilterKind::PrefixAffinity => {
                    // llm-d `prefix-cache-affinity-filter` (prefixcacheaffinity/plugin.go
                    // `Filter` @ebab687): a no-op for one candidate; exploration skips it; with
                    // no sticky pod it keeps all (below); the TTFT gate keeps all when the best
                    // sticky pod's estimated TTFT exceeds the best non-sticky pod's by more than
                    // the penalty, TTFT = in-flight tokens / peak prefill throughput.
                    if cands.len() <= 1 {
                        continue;
                    }
                    let a = config.affinity();
                    let mut verdict = AffinityGate {
                        sticky: 0,
                        explored: false,
                        ttft_ms: None,
                        kept_all: true,
                    };
                    if a.exploration > 0.0 && rng.unit_f64() < a.exploration {
                        verdict.explored = true;
                        affinity = Some(verdict);
                        continue;
                    }
                    let sticky: Vec<bool> = cands.iter().map(|&i| prefix_score(i) >= a.threshold).collect();
                    verdict.sticky = sticky.iter().filter(|s| **s).count() as u32;
                    verdict.kept_all = verdict.sticky == 0;
                    affinity = Some(verdict);
                    if a.max_ttft_penalty_ms > 0.0 && sticky.iter().any(|s| !s) {
                        let ttft_ms = |i: usize| load(i).tokens as f64 / a.peak_prefill_throughput * 1000.0;
                        let best = |want: bool| {
                            cands
                                .iter()
                                .zip(&sticky)
                                .filter(|(_, s)| **s == want)
                                .map(|(&i, _)| ttft_ms(i))
                                .fold(f64::MAX, f64::min)
                        };
                        let (sticky_best, other_best) = (best(true), best(false));
                        if sticky_best != f64::MAX {
                            let open = sticky_best - other_best > a.max_ttft_penalty_ms;
                            affinity = Some(AffinityGate {
                                ttft_ms: Some((sticky_best, other_best)),
                                kept_all: open,
                                ..verdict
                            });
                            if open {
                                continue;
                            }
                        }
                    }
                    sticky
                }
            };
            if keep.iter().any(|k| *k) {
                let reason = match f {
                    FilterKind::Utilization => DropReason::Saturated,
                    FilterKind::PrefixAffinity => DropReason::NotSticky,
                };
                let mut k = keep.iter();
                cands.retain(|&i| {
                    let kept = *k.next().unwrap_or(&true);
                    if !kept {
                        drops.push((i, reason));
                    }
                    kept
                });
            }
        }
    }

    // Scorers.
    let degraded_scorers = [(ScorerKind::ConsistentHash, 1.0), (ScorerKind::InFlight, 1.0)];
    let scorers: Vec<(ScorerKind, f64)> = if degraded {
        degraded_scorers.to_vec()
    } else {
        config.scorers().iter().map(|s| (s.kind, s.weight)).collect()
    };
    let min_max = |vals: &mut dyn Iterator<Item = u64>| -> (u64, u64) {
        vals.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let min_max_score = |v: u64, (lo, hi): (u64, u64)| -> f64 {
        if hi == lo {
            1.0
        } else {
            (hi - v) as f64 / (hi - lo) as f64
        }
    };
    let ch_choice = if scorers.iter().any(|s| s.0 == ScorerKind::ConsistentHash) {
        hashes
            .affinity_key(config.consistent_hash().prefix_blocks as usize)
            .and_then(|key| {
                chash::choose(
                    key,
                    config.consistent_hash().epsilon,
                    config.consistent_hash().min_bound,
                    cands.iter().map(|&i| (i, pool.key(i), load(i).requests)),
                )
            })
    } else {
        None
    };

    // Column by column: one pass per scorer over the candidates, so the scorer's kind is
    // decided once per pass rather than once per (candidate, scorer), and the divisions of one
    // pass are independent of each other. The arithmetic per candidate is unchanged:
    // `total = Σ weight × clamp(score)` in scorer order.
    let mut scored: Vec<Scored> = cands
        .iter()
        .map(|&i| Scored {
            index: i,
            scores: [0.0; MAX_SCORERS],
            total: 0.0,
        })
        .collect();
    let eps = &snapshot.endpoints;
    for (slot, &(kind, weight)) in scorers.iter().enumerate().take(MAX_SCORERS) {
        match kind {
            ScorerKind::Queue => {
                let range = min_max(&mut cands.iter().map(|&i| eps[i].waiting as u64));
                add_column(&mut scored, slot, weight, |i| {
                    min_max_score(eps[i].waiting as u64, range)
                })
            }
            ScorerKind::KvCache => add_column(&mut scored, slot, weight, |i| 1.0 - eps[i].kv_usage as f64),
            ScorerKind::Prefix => add_column(&mut scored, slot, weight, prefix_score),
            ScorerKind::Lora => add_column(&mut scored, slot, weight, |i| lora_score(&eps[i], req.model)),
            ScorerKind::RunningRequests => {
                let range = min_max(&mut cands.iter().map(|&i| eps[i].running as u64));
                add_column(&mut scored, slot, weight, |i| {
                    min_max_score(eps[i].running as u64, range)
                })
            }
            ScorerKind::TokenLoad => {
                // llm-d `token-load-scorer` (token_load.go @ebab687): in-flight tokens plus
                // this request's uncached tokens on the pod, `1 − min(load, τ) / τ`.
                let threshold = config.token_load_threshold() as f64;
                add_column(&mut scored, slot, weight, |i| {
                    let tokens = load(i).tokens.saturating_add(uncached(i)) as f64;
                    if tokens <= 0.0 {
                        1.0
                    } else {
                        1.0 - tokens.min(threshold) / threshold
                    }
                })
            }
            ScorerKind::InFlight => {
                // Min-max over a range of at least INFLIGHT_RANGE_FLOOR requests: one request
                // more than an idle pod costs 1/8 of the weight, not all of it, so a lone
                // in-flight request cannot outvote prefix and hash affinity.
                let (lo, hi) = min_max(&mut cands.iter().map(|&i| load(i).requests as u64));
                let range = (hi - lo).max(INFLIGHT_RANGE_FLOOR) as f64;
                add_column(&mut scored, slot, weight, |i| {
                    (hi - load(i).requests as u64) as f64 / range
                })
            }
            ScorerKind::ConsistentHash => {
                add_column(
                    &mut scored,
                    slot,
                    weight,
                    |i| {
                        if ch_choice == Some(i) {
                            1.0
                        } else {
                            0.0
                        }
                    },
                )
            }
        }
    }

    let picked = max_score(&scored, config.max_endpoints() as usize, rng);
    let uncached_tokens = picked.first().map_or(0, |&p| uncached(p));

    if let Some(&primary) = picked.first() {
        // GIE records the primary pick in PreRequest; the proxy reports a different served
        // endpoint through `State::record_served`.
        state.record_served(config, &snapshot.endpoints[primary], &hashes);
    }
    Decision {
        outcome: Outcome::Route(picked),
        mode,
        saturation,
        scorers,
        scored,
        drops,
        hashes,
        best_prefix_match,
        affinity,
        uncached_tokens,
    }
}

/// Adds one scorer's column: `scores[slot] = clamp(score(index))`, `total += weight × it`.
#[inline]
fn add_column(scored: &mut [Scored], slot: usize, weight: f64, score: impl Fn(usize) -> f64) {
    for c in scored {
        let s = score(c.index);
        let s = if s.is_finite() { s.clamp(0.0, 1.0) } else { 0.0 };
        c.scores[slot] = s as f32;
        c.total += weight * s;
    }
}

/// GIE `max-score-picker`: shuffle, then a stable sort by score descending, so ties break
/// uniformly at random; keep the top `n`. For `n == 1` the same distribution comes without a
/// shuffle or sort: one pass finds the best total and counts the candidates tied at it, one
/// uniform draw (none without a tie) picks the k-th of them.
fn max_score(scored: &[Scored], n: usize, rng: &mut impl Rng) -> Vec<usize> {
    if n == 1 {
        // One pass for the best total and how many candidates tie at it.
        let mut best: Option<(f64, usize)> = None;
        for s in scored {
            best = match best {
                Some((b, ties)) => match s.total.total_cmp(&b) {
                    core::cmp::Ordering::Greater => Some((s.total, 1)),
                    core::cmp::Ordering::Equal => Some((b, ties + 1)),
                    core::cmp::Ordering::Less => Some((b, ties)),
                },
                None => Some((s.total, 1)),
            };
        }
        let Some((best, ties)) = best else {
            return Vec::new();
        };
        let k = if ties > 1 { rng.below(ties as u64) as usize } else { 0 };
        return scored
            .iter()
            .filter(|s| s.total.total_cmp(&best).is_eq())
            .nth(k)
            .map(|s| alloc::vec![s.index])
            .unwrap_or_default();
    }
    let mut order: Vec<usize> = (0..scored.len()).collect();
    shuffle(&mut order, rng);
    order.sort_by(|&a, &b| scored[b].total.total_cmp(&scored[a].total));
    order.iter().take(n).map(|&o| scored[o].index).collect()
}

/// GIE `lora-affinity-scorer`.
fn lora_score(ep: &Endpoint, model: &str) -> f64 {
    let Some(l) = &ep.lora else { return 0.0 };
    if l.running.iter().any(|a| a == model) {
        1.0
    } else if l.running.len() + l.waiting.len() < l.max as usize {
        0.8
    } else if l.waiting.iter().any(|a| a == model) {
        0.6
    } else {
        0.0
    }
}

#[cfg(test)]
#[path = "pick_tests.rs"]
mod tests;
