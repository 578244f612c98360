//! The pick: candidates → admission → filters → scorers → max-score picker, with the reasons.
//!
//! ```text
//! snapshot.endpoints ──ready? serves model? in subset?──▶ candidates ──(empty: 503)
//!        │                                                    │
//!        │                   admission: pool saturation over candidates; priority < 0 and
//!        │                   saturation ≥ 1.0 → 429 (GIE legacy admission; docs/epp.md,
//!        │                   "Saturation detector and shedding")
//!        ▼                                                    ▼
//!   filters in order (utilization, prefix affinity), each fail-open ──▶ scorers, weighted sum
//!        ──▶ max-score picker: shuffle (injected RNG), stable sort by score ↓, top N ──▶ Decision
//! ```
//!
//! Scorer formulas (`docs/epp.md`, "Scorers" and "token-load-scorer"; all clamp to [0, 1]):
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

use crate::chash;
use crate::config::{Config, FilterKind, ScorerKind, MAX_SCORERS};
use crate::decision::{AffinityGate, Decision, DropReason, Mode, Outcome, Rejection, Scored};
use crate::prefix::{hash_prompt_into, PrefixHashes};
use crate::request::{InFlight, Request};
use crate::rng::{shuffle, Rng};
use crate::snapshot::{Endpoint, Pool};
use crate::state::State;
use crate::time::Instant;

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
///
/// The stages, in the order GIE's scheduler runs them: [`candidates`] → admission
/// ([`admit`]) → [`prefix_matches`] → filters (`filter`) → scorers (`score`) → the
/// max-score picker ([`max_score`]).
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
    let (mut cands, mut drops) = candidates(req, pool);
    let degraded = config
        .degrade_after()
        .is_some_and(|d| now.saturating_since(pool.snapshot().generated_at) > d);
    let mode = if degraded { Mode::Degraded } else { Mode::Normal };
    let saturation = pool_saturation(config, pool, &cands, now);
    if let Some(r) = admit(req, &cands, saturation, degraded) {
        return Decision {
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
    }
    let matched = prefix_matches(state, &hashes, pool);
    let best_prefix_match = cands.iter().map(|&i| matched[i]).max().unwrap_or(0);
    let view = View {
        config,
        req,
        pool,
        inflight,
        hashes: &hashes,
        matched: &matched,
        now,
    };
    // Filters are skipped in degraded mode: they read metrics we no longer trust.
    let affinity = if degraded {
        None
    } else {
        filter(&view, &mut cands, &mut drops, rng)
    };
    let scorers: Vec<(ScorerKind, f64)> = if degraded {
        [(ScorerKind::ConsistentHash, 1.0), (ScorerKind::InFlight, 1.0)].to_vec()
    } else {
        config.scorers().iter().map(|s| (s.kind, s.weight)).collect()
    };
    let scored = score(&view, &cands, &scorers);
    let picked = max_score(&scored, config.max_endpoints() as usize, rng);
    let uncached_tokens = picked.first().map_or(0, |&p| view.uncached(p));
    if let Some(&primary) = picked.first() {
        // GIE records the primary pick in PreRequest; the proxy reports a different served
        // endpoint through `State::record_served`.
        state.record_served(config, &pool.endpoints()[primary], &hashes);
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

/// What every stage after admission reads about one request.
struct View<'a, 'r> {
    config: &'a Config,
    req: &'a Request<'r>,
    pool: &'a Pool,
    inflight: &'a [InFlight],
    hashes: &'a PrefixHashes,
    /// Matched prefix blocks per endpoint (indexed like `pool.endpoints()`).
    matched: &'a [u32],
    now: Instant,
}

impl View<'_, '_> {
    fn endpoint(&self, i: usize) -> &Endpoint {
        &self.pool.endpoints()[i]
    }

    /// In-flight counts of endpoint `i` (a shorter slice counts the rest as idle).
    fn load(&self, i: usize) -> InFlight {
        self.inflight.get(i).copied().unwrap_or_default()
    }

    /// GIE's prefix score: matched blocks / request blocks. Most pods hold none of the prompt:
    /// 0 / n is exactly +0.0, so the division is skipped.
    fn prefix_score(&self, i: usize) -> f64 {
        match self.matched[i] {
            0 => 0.0,
            m => m as f64 / self.hashes.len() as f64,
        }
    }

    /// Prompt tokens endpoint `i` would still have to prefill.
    fn uncached(&self, i: usize) -> u64 {
        self.hashes.uncached_tokens(self.matched[i])
    }
}

/// Stage 1: the endpoints that are ready, serve the model and lie inside the subset hint; the
/// others with why.
pub fn candidates(req: &Request<'_>, pool: &Pool) -> (Vec<usize>, Vec<(usize, DropReason)>) {
    let mut drops = Vec::new();
    let mut cands = Vec::with_capacity(pool.endpoints().len());
    for (i, ep) in pool.endpoints().iter().enumerate() {
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
    (cands, drops)
}

/// Stage 2, admission (GIE's legacy path): no candidate is 503; a sheddable request (priority
/// < 0) is dropped with 429 when the pool is saturated. In degraded mode the metrics are too old
/// to call the pool saturated, so nothing is shed.
pub fn admit(req: &Request<'_>, cands: &[usize], saturation: f64, degraded: bool) -> Option<Rejection> {
    if cands.is_empty() {
        Some(if req.subset.is_some() {
            Rejection::SubsetEmpty
        } else {
            Rejection::NoEndpoints
        })
    } else if !degraded && req.priority < 0 && saturation >= 1.0 {
        Some(Rejection::Shed { saturation })
    } else {
        None
    }
}

/// Stage 3: matched prefix blocks per endpoint, indexed like `pool.endpoints()`.
pub fn prefix_matches(state: &mut State, hashes: &PrefixHashes, pool: &Pool) -> Vec<u32> {
    state.index.match_longest(hashes.as_slice(), &mut state.matches);
    let mut matched = alloc::vec![0u32; pool.endpoints().len()];
    for &(key, n) in &state.matches {
        if let Some(i) = pool.index_of(key) {
            matched[i] = n;
        }
    }
    matched
}

/// Stage 4: the configured filters in order; each keeps all candidates when it would keep none
/// (fail-open). Returns the affinity filter's verdict when it ran.
fn filter(
    v: &View<'_, '_>,
    cands: &mut Vec<usize>,
    drops: &mut Vec<(usize, DropReason)>,
    rng: &mut impl Rng,
) -> Option<AffinityGate> {
    let mut affinity = None;
    for f in v.config.filters() {
        let (keep, reason) = match f {
            FilterKind::Utilization => (utilization_keep(v, cands), DropReason::Saturated),
            FilterKind::PrefixAffinity => {
                let (verdict, keep) = affinity_keep(v, cands, rng);
                affinity = verdict.or(affinity);
                match keep {
                    Some(k) => (k, DropReason::NotSticky),
                    None => continue,
                }
            }
        };
        if keep.iter().any(|k| *k) {
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
    affinity
}

/// GIE's utilization detector used as a filter: fresh metrics, queue and KV under their
/// thresholds (times `1 + headroom`).
fn utilization_keep(v: &View<'_, '_>, cands: &[usize]) -> Vec<bool> {
    let s = v.config.saturation();
    let q_max = s.queue_threshold as f64 * (1.0 + s.headroom);
    let kv_max = s.kv_threshold * (1.0 + s.headroom);
    cands
        .iter()
        .map(|&i| {
            let ep = v.endpoint(i);
            !is_stale(v.config, ep, v.now) && (ep.waiting as f64) < q_max && (ep.kv_usage as f64) < kv_max
        })
        .collect()
}

/// llm-d `prefix-cache-affinity-filter` (llm-d-router @ebab687,
/// `pkg/epp/framework/plugins/scheduling/filter/prefixcacheaffinity/plugin.go` `Filter`): a
/// no-op for one candidate; exploration skips it; sticky = prefix score ≥ threshold; the TTFT
/// gate keeps all when the best sticky pod's estimated TTFT exceeds the best non-sticky pod's by
/// more than the penalty (TTFT = in-flight tokens / peak prefill throughput × 1000), checked
/// only when a non-sticky pod exists. `None` keeps: the filter did not narrow.
fn affinity_keep(v: &View<'_, '_>, cands: &[usize], rng: &mut impl Rng) -> (Option<AffinityGate>, Option<Vec<bool>>) {
    if cands.len() <= 1 {
        return (None, None);
    }
    let a = v.config.affinity();
    if a.exploration > 0.0 && rng.unit_f64() < a.exploration {
        let g = AffinityGate {
            sticky: 0,
            explored: true,
            ttft_ms: None,
            kept_all: true,
        };
        return (Some(g), None);
    }
    let sticky: Vec<bool> = cands.iter().map(|&i| v.prefix_score(i) >= a.threshold).collect();
    let n_sticky = sticky.iter().filter(|s| **s).count() as u32;
    let mut gate = AffinityGate {
        sticky: n_sticky,
        explored: false,
        ttft_ms: None,
        kept_all: n_sticky == 0,
    };
    if n_sticky > 0 && a.max_ttft_penalty_ms > 0.0 && sticky.iter().any(|s| !s) {
        let ttft_ms = |i: usize| v.load(i).tokens as f64 / a.peak_prefill_throughput * 1000.0;
        let best = |want: bool| {
            cands
                .iter()
                .zip(&sticky)
                .filter(|(_, s)| **s == want)
                .map(|(&i, _)| ttft_ms(i))
                .fold(f64::MAX, f64::min)
        };
        let (sticky_best, other_best) = (best(true), best(false));
        gate.ttft_ms = Some((sticky_best, other_best));
        gate.kept_all = sticky_best - other_best > a.max_ttft_penalty_ms;
    }
    let keep = (!gate.kept_all).then_some(sticky);
    (Some(gate), keep)
}

/// Stage 5: every scorer's column over the candidates, `total = Σ weight × clamp(score)` in
/// scorer order. Column by column: the scorer's kind is decided once per pass rather than once
/// per (candidate, scorer), and the divisions of one pass are independent of each other.
fn score(v: &View<'_, '_>, cands: &[usize], scorers: &[(ScorerKind, f64)]) -> Vec<Scored> {
    let mut scored: Vec<Scored> = cands
        .iter()
        .map(|&i| Scored {
            index: i,
            scores: [0.0; MAX_SCORERS],
            total: 0.0,
        })
        .collect();
    for (slot, &(kind, weight)) in scorers.iter().enumerate().take(MAX_SCORERS) {
        match kind {
            ScorerKind::Queue => {
                let range = min_max(cands.iter().map(|&i| v.endpoint(i).waiting as u64));
                add_column(&mut scored, slot, weight, |i| {
                    min_max_score(v.endpoint(i).waiting as u64, range)
                })
            }
            ScorerKind::KvCache => add_column(&mut scored, slot, weight, |i| 1.0 - v.endpoint(i).kv_usage as f64),
            ScorerKind::Prefix => add_column(&mut scored, slot, weight, |i| v.prefix_score(i)),
            ScorerKind::Lora => add_column(&mut scored, slot, weight, |i| lora_score(v.endpoint(i), v.req.model)),
            ScorerKind::RunningRequests => {
                let range = min_max(cands.iter().map(|&i| v.endpoint(i).running as u64));
                add_column(&mut scored, slot, weight, |i| {
                    min_max_score(v.endpoint(i).running as u64, range)
                })
            }
            ScorerKind::TokenLoad => {
                // llm-d `token-load-scorer` (token_load.go @ebab687): in-flight tokens plus
                // this request's uncached tokens on the pod, `1 − min(load, τ) / τ`.
                let threshold = v.config.token_load_threshold() as f64;
                add_column(&mut scored, slot, weight, |i| {
                    let tokens = v.load(i).tokens.saturating_add(v.uncached(i)) as f64;
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
                let (lo, hi) = min_max(cands.iter().map(|&i| v.load(i).requests as u64));
                let range = (hi - lo).max(INFLIGHT_RANGE_FLOOR) as f64;
                add_column(&mut scored, slot, weight, |i| {
                    (hi - v.load(i).requests as u64) as f64 / range
                })
            }
            ScorerKind::ConsistentHash => {
                let choice = chash_choice(v, cands);
                add_column(&mut scored, slot, weight, |i| if choice == Some(i) { 1.0 } else { 0.0 })
            }
        }
    }
    scored
}

/// The bounded-load consistent-hash choice for the prompt's leading blocks, if any.
fn chash_choice(v: &View<'_, '_>, cands: &[usize]) -> Option<usize> {
    let ch = v.config.consistent_hash();
    let key = v.hashes.affinity_key(ch.prefix_blocks as usize)?;
    chash::choose(
        key,
        ch.epsilon,
        ch.min_bound,
        cands.iter().map(|&i| (i, v.pool.key(i), v.load(i).requests)),
    )
}

fn min_max(vals: impl Iterator<Item = u64>) -> (u64, u64) {
    vals.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// GIE's min-max normalisation, lower is better; 1.0 when all are equal.
fn min_max_score(v: u64, (lo, hi): (u64, u64)) -> f64 {
    if hi == lo {
        1.0
    } else {
        (hi - v) as f64 / (hi - lo) as f64
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

/// Stage 6, GIE `max-score-picker`: shuffle, then a stable sort by score descending, so ties break
/// uniformly at random; keep the top `n`. For `n == 1` the same distribution comes without a
/// shuffle or sort: one pass finds the best total and counts the candidates tied at it, one
/// uniform draw (none without a tie) picks the k-th of them.
pub fn max_score(scored: &[Scored], n: usize, rng: &mut impl Rng) -> Vec<usize> {
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
