//! One vLLM-like model server: waiting queue, continuous batching with chunked prefill, paged KV
//! with prefix caching, and recompute preemption. Time-free: the caller asks for a step, gets its
//! duration, and applies it when the step's end comes (the cluster owns the clock).
//!
//! ```text
//!   enqueue ─▶ waiting (FCFS) ──admit: prefix hit, blocks, ≤ budget──▶ running ──▶ finished
//!                 ▲                                                     │
//!                 └─────────── preempted (blocks freed, recompute) ─────┘
//! ```
//!
//! One step (vLLM V1 scheduler, simplified): spend the token budget (`max_batched_tokens`) on the
//! running sequences first, in order (a decode costs 1 token, an unfinished prefill the rest of
//! its prompt, chunked to the budget); when a running sequence needs a KV block and none is free,
//! preempt from the tail of the running list. Then, if nothing was preempted, admit waiting
//! sequences in order while budget, `max_seqs` and free blocks allow, each starting after its
//! longest cached prefix (at least one token is always computed, as in vLLM).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::calib::ServerParams;
use crate::kv::KvCache;

/// What the server is asked to run.
#[derive(Clone, Debug)]
pub struct SeqSpec {
    /// Caller's request id (index into its own table).
    pub id: usize,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Chained hashes of the prompt's full blocks (see [`crate::workload::block_hashes`]).
    pub hashes: Arc<[u64]>,
    /// LoRA adapter (caller's index), if the request targets one.
    pub adapter: Option<u16>,
}

#[derive(Clone, Debug)]
struct Seq {
    spec: SeqSpec,
    blocks: Vec<u32>,
    /// Tokens whose KV is computed.
    computed: u32,
    /// Tokens to prefill before sampling: the prompt, plus earlier output after a preemption.
    target: u32,
    generated: u32,
    /// Full prompt blocks already registered in the cache.
    hashed: u32,
    /// Tokens scheduled in the step in progress (0: not scheduled).
    sched: u32,
    first_token_sent: bool,
    /// Prompt tokens found cached when first admitted (before the first token).
    first_cached: u32,
}

/// Something a finished step produced, for the cluster to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// The first output token of request `id`.
    /// `cached`: prompt tokens served from the prefix cache at its first admission
    /// (`usage.prompt_tokens_details.cached_tokens`).
    FirstToken { id: usize, cached: u32 },
    /// Request `id` generated its last token.
    Finished { id: usize },
    /// Request `id` can never fit in this server's KV cache and was dropped.
    Aborted { id: usize },
}

/// Counters of one server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub steps: u64,
    pub preemptions: u64,
    /// Prompt tokens looked up at admission (vLLM `prefix_cache_queries`).
    pub query_tokens: u64,
    /// Of those, tokens found cached (vLLM `prefix_cache_hits`).
    pub hit_tokens: u64,
    pub output_tokens: u64,
    pub prefill_tokens: u64,
}

/// A simulated model server.
#[derive(Clone, Debug)]
pub struct Server {
    params: ServerParams,
    kv: KvCache,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    stepping: bool,
    pub stats: ServerStats,
}

impl Server {
    pub fn new(params: ServerParams) -> Self {
        Server {
            kv: KvCache::new(params.gpu_blocks),
            params,
            waiting: VecDeque::new(),
            running: Vec::new(),
            stepping: false,
            stats: ServerStats::default(),
        }
    }

    pub fn params(&self) -> &ServerParams {
        &self.params
    }

    /// `vllm:num_requests_waiting`.
    pub fn num_waiting(&self) -> u32 {
        self.waiting.len() as u32
    }

    /// `vllm:num_requests_running`.
    pub fn num_running(&self) -> u32 {
        self.running.len() as u32
    }

    /// `vllm:kv_cache_usage_perc` (a fraction).
    pub fn kv_usage(&self) -> f64 {
        self.kv.usage()
    }

    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// Whether a step is in progress.
    pub fn is_stepping(&self) -> bool {
        self.stepping
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Prompt tokens still to prefill over all queued and running requests, assuming no further
    /// cache hits for the queued ones (used by the oracle policy).
    pub fn pending_prefill_tokens(&self) -> u64 {
        let w: u64 = self.waiting.iter().map(|s| (s.target - s.computed) as u64).sum();
        let r: u64 = self
            .running
            .iter()
            .map(|s| s.target.saturating_sub(s.computed) as u64)
            .sum();
        w + r
    }

    /// LoRA adapters in the running batch and adapters only waiting (`vllm:lora_requests_info`
    /// labels `running_lora_adapters` / `waiting_lora_adapters`), each sorted and unique.
    pub fn lora_state(&self) -> (Vec<u16>, Vec<u16>) {
        let mut running: Vec<u16> = self.running.iter().filter_map(|s| s.spec.adapter).collect();
        running.sort_unstable();
        running.dedup();
        let mut waiting: Vec<u16> = self
            .waiting
            .iter()
            .filter_map(|s| s.spec.adapter)
            .filter(|a| running.binary_search(a).is_err())
            .collect();
        waiting.sort_unstable();
        waiting.dedup();
        (running, waiting)
    }

    /// `(request id, output tokens generated so far)` of every running request (for streaming).
    pub fn running_progress(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.running.iter().map(|s| (s.spec.id, s.generated))
    }

    pub fn enqueue(&mut self, spec: SeqSpec) {
        let target = spec.prompt_tokens.max(1);
        self.waiting.push_back(Seq {
            spec,
            blocks: Vec::new(),
            computed: 0,
            target,
            generated: 0,
            hashed: 0,
            sched: 0,
            first_token_sent: false,
            first_cached: 0,
        });
    }

    fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.params.block_tokens)
    }

    fn preempt(&mut self, mut s: Seq) {
        self.kv.release(&s.blocks);
        s.blocks.clear();
        s.computed = 0;
        s.hashed = 0;
        s.sched = 0;
        s.target = s.spec.prompt_tokens.max(1) + s.generated;
        self.stats.preemptions += 1;
        self.waiting.push_front(s);
    }

    /// Schedules one step. Returns its duration in seconds, or `None` when there is nothing to
    /// run. Requests that can never fit are dropped and reported in `out`.
    pub fn start_step(&mut self, out: &mut Vec<EngineEvent>) -> Option<f64> {
        debug_assert!(!self.stepping);
        let bt = self.params.block_tokens;
        let mut budget = self.params.max_batched_tokens;
        let mut preempted = false;

        // Running sequences first.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let s = &self.running[i];
            let n = if s.computed < s.target {
                (s.target - s.computed).min(budget)
            } else {
                1
            };
            let need = self.blocks_for(s.computed + n).saturating_sub(s.blocks.len() as u32);
            let mut self_preempted = false;
            while self.kv.free_blocks() < need {
                preempted = true;
                if self.running.len() - 1 > i {
                    let victim = self.running.pop().expect("non-empty");
                    self.preempt(victim);
                } else {
                    let me = self.running.remove(i);
                    self.preempt(me);
                    self_preempted = true;
                    break;
                }
            }
            if self_preempted {
                break;
            }
            let s = &mut self.running[i];
            for _ in 0..need {
                let b = self.kv.allocate().expect("checked free blocks");
                s.blocks.push(b);
            }
            s.sched = n;
            budget -= n;
            i += 1;
        }

        // Then admissions, unless this step had to preempt. A request whose LoRA adapter is not
        // in the batch while all `max_loras` slots are taken is skipped (it keeps its place);
        // a request that does not fit in KV stops admission (vLLM V1 scheduler).
        let mut active: Vec<u16> = Vec::new();
        for s in &self.running {
            if let Some(a) = s.spec.adapter {
                if !active.contains(&a) {
                    active.push(a);
                }
            }
        }
        let mut wi = 0;
        while !preempted && budget > 0 && (self.running.len() as u32) < self.params.max_seqs {
            let Some(s) = self.waiting.get(wi) else { break };
            if let Some(a) = s.spec.adapter {
                if !active.contains(&a) && active.len() as u32 >= self.params.max_loras {
                    wi += 1;
                    continue;
                }
            }
            let max_cached_blocks = ((s.target - 1) / bt) as usize;
            let limit = s.spec.hashes.len().min(max_cached_blocks);
            let (k, k_free) = self.kv.lookup_prefix_free(&s.spec.hashes[..limit]);
            let cached = k as u32 * bt;
            let n = (s.target - cached).min(budget);
            let need_new = self.blocks_for(cached + n) - k as u32;
            let free_after = self.kv.free_blocks() - k_free;
            if free_after < need_new {
                if self.running.is_empty() && need_new > self.kv.num_blocks() {
                    // Can never fit, even alone.
                    let s = self.waiting.remove(wi).expect("indexed");
                    out.push(EngineEvent::Aborted { id: s.spec.id });
                    continue;
                }
                break;
            }
            let mut s = self.waiting.remove(wi).expect("indexed");
            if let Some(a) = s.spec.adapter {
                if !active.contains(&a) {
                    active.push(a);
                }
            }
            self.kv.acquire_cached(&s.spec.hashes[..k], &mut s.blocks);
            for _ in 0..need_new {
                let b = self.kv.allocate().expect("checked free blocks");
                s.blocks.push(b);
            }
            self.stats.query_tokens += s.spec.prompt_tokens as u64;
            self.stats.hit_tokens += (cached.min(s.spec.prompt_tokens)) as u64;
            s.computed = cached;
            if !s.first_token_sent {
                s.first_cached = cached.min(s.spec.prompt_tokens);
            }
            s.hashed = k as u32;
            s.sched = n;
            budget -= n;
            self.running.push(s);
        }

        // Cost of the step.
        let mut seqs = 0u32;
        let mut ctx = 0u64;
        let mut prefill_tokens = 0u64;
        for s in self.running.iter().filter(|s| s.sched > 0) {
            seqs += 1;
            if s.computed < s.target {
                prefill_tokens += s.sched as u64;
            } else {
                ctx += s.computed as u64 + 1;
            }
        }
        if seqs == 0 {
            return None;
        }
        self.stepping = true;
        self.stats.steps += 1;
        self.stats.prefill_tokens += prefill_tokens;
        let chunks = self
            .running
            .iter()
            .filter(|s| s.sched > 0 && s.computed < s.target)
            .map(|s| (s.sched, s.computed));
        // With shared blocks read once per step, the decode read is bounded by the blocks the
        // running sequences reference (an upper bound on the distinct blocks the decodes touch).
        let read = if self.params.step.shared_kv_read_once {
            let referenced = (self.kv.num_blocks() - self.kv.free_blocks()) as u64;
            ctx.min(referenced * bt as u64)
        } else {
            ctx
        };
        Some(self.params.step.step_seconds_read(seqs, ctx, read, chunks))
    }

    /// Applies the step started by [`start_step`](Self::start_step). Returns the number of output
    /// tokens generated; first tokens and completions go to `out`.
    pub fn finish_step(&mut self, out: &mut Vec<EngineEvent>) -> u32 {
        debug_assert!(self.stepping);
        self.stepping = false;
        let bt = self.params.block_tokens;
        let mut tokens = 0;
        for s in self.running.iter_mut().filter(|s| s.sched > 0) {
            let was_prefill = s.computed < s.target;
            s.computed += s.sched;
            s.sched = 0;
            while (s.hashed as usize) < s.spec.hashes.len() && (s.hashed + 1) * bt <= s.computed {
                let j = s.hashed as usize;
                self.kv.set_hash(s.blocks[j], s.spec.hashes[j]);
                s.hashed += 1;
            }
            if !was_prefill || s.computed >= s.target {
                s.generated += 1;
                tokens += 1;
                if !s.first_token_sent {
                    s.first_token_sent = true;
                    out.push(EngineEvent::FirstToken {
                        id: s.spec.id,
                        cached: s.first_cached,
                    });
                }
            }
        }
        let kv = &mut self.kv;
        self.running.retain(|s| {
            if s.generated >= s.spec.output_tokens.max(1) {
                kv.release(&s.blocks);
                out.push(EngineEvent::Finished { id: s.spec.id });
                false
            } else {
                true
            }
        });
        self.stats.output_tokens += tokens as u64;
        tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(blocks: u32) -> ServerParams {
        ServerParams {
            gpu_blocks: blocks,
            ..ServerParams::qwen3_32b_tp2_h100()
        }
    }

    fn spec(id: usize, prompt: u32, out: u32, hashes: &[u64]) -> SeqSpec {
        SeqSpec {
            id,
            prompt_tokens: prompt,
            output_tokens: out,
            hashes: hashes.into(),
            adapter: None,
        }
    }

    /// Runs steps until idle; returns (total seconds, events).
    fn drain(s: &mut Server) -> (f64, Vec<(f64, EngineEvent)>) {
        let mut t = 0.0;
        let mut evs = Vec::new();
        let mut out = Vec::new();
        while let Some(d) = s.start_step(&mut out) {
            t += d;
            s.finish_step(&mut out);
            evs.extend(out.drain(..).map(|e| (t, e)));
        }
        evs.extend(out.drain(..).map(|e| (t, e)));
        (t, evs)
    }

    #[test]
    fn prefill_then_decode_produces_every_token() {
        let mut s = Server::new(small(1000));
        s.enqueue(spec(0, 100, 5, &[1, 2, 3, 4, 5, 6]));
        let (_, evs) = drain(&mut s);
        let kinds: Vec<_> = evs.iter().map(|e| e.1).collect();
        assert_eq!(
            kinds,
            [
                EngineEvent::FirstToken { id: 0, cached: 0 },
                EngineEvent::Finished { id: 0 }
            ]
        );
        assert_eq!(s.stats.output_tokens, 5);
        assert_eq!(s.stats.steps, 5, "1 prefill step + 4 decode steps");
        assert_eq!(s.kv_usage(), 0.0, "all blocks released");
    }

    #[test]
    fn long_prompt_is_chunked_to_the_token_budget() {
        let mut s = Server::new(small(5000));
        s.enqueue(spec(0, 20_000, 1, &[]));
        let mut out = Vec::new();
        let mut steps = 0;
        while s.start_step(&mut out).is_some() {
            s.finish_step(&mut out);
            steps += 1;
        }
        assert_eq!(steps, 3, "20,000 tokens in 8192-token chunks");
        assert_eq!(s.stats.prefill_tokens, 20_000);
    }

    #[test]
    fn second_request_hits_the_prefix_and_is_faster() {
        let hashes: Vec<u64> = (0..400).collect(); // 6400 tokens of shared prefix
        let mut s = Server::new(small(2000));
        s.enqueue(spec(0, 6400 + 100, 1, &hashes));
        let (cold, _) = drain(&mut s);
        let mut h2 = hashes.clone();
        h2.push(999);
        s.enqueue(spec(1, 6400 + 100, 1, &h2));
        let (warm, _) = drain(&mut s);
        assert_eq!(s.stats.hit_tokens, 6400);
        assert_eq!(s.stats.query_tokens, 13_000);
        assert!(warm < cold / 4.0, "warm {warm} cold {cold}");
    }

    #[test]
    fn fully_cached_prompt_still_computes_its_last_block() {
        let hashes: Vec<u64> = (0..4).collect();
        let mut s = Server::new(small(100));
        s.enqueue(spec(0, 64, 1, &hashes));
        drain(&mut s);
        s.enqueue(spec(1, 64, 1, &hashes));
        drain(&mut s);
        assert_eq!(s.stats.hit_tokens, 48, "3 of 4 blocks reused; the last is recomputed");
    }

    #[test]
    fn kv_pressure_preempts_and_everything_still_finishes() {
        // 40 blocks = 640 tokens; three requests needing 200 + 300 tokens each cannot coexist.
        let mut s = Server::new(small(40));
        for id in 0..3 {
            s.enqueue(spec(id, 200, 300, &[]));
        }
        let (_, evs) = drain(&mut s);
        let finished = evs
            .iter()
            .filter(|e| matches!(e.1, EngineEvent::Finished { .. }))
            .count();
        assert_eq!(finished, 3);
        assert!(s.stats.preemptions > 0);
        assert_eq!(s.stats.output_tokens, 900);
        s.kv.check();
    }

    #[test]
    fn request_larger_than_the_cache_is_aborted() {
        let mut s = Server::new(small(10));
        s.enqueue(spec(7, 1000, 1, &[]));
        let (_, evs) = drain(&mut s);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].1, EngineEvent::Aborted { id: 7 });
    }

    #[test]
    fn metrics_reflect_queue_and_batch() {
        let mut s = Server::new(ServerParams {
            max_seqs: 2,
            ..small(1000)
        });
        for id in 0..4 {
            s.enqueue(spec(id, 16, 10, &[]));
        }
        assert_eq!((s.num_waiting(), s.num_running()), (4, 0));
        let mut out = Vec::new();
        s.start_step(&mut out).unwrap();
        assert_eq!((s.num_waiting(), s.num_running()), (2, 2));
        assert!(s.kv_usage() > 0.0);
    }

    #[test]
    fn lora_slots_limit_distinct_adapters_in_a_batch_without_blocking_others() {
        let mut s = Server::new(ServerParams {
            max_loras: 1,
            ..small(1000)
        });
        let lora = |id, a| SeqSpec {
            adapter: Some(a),
            ..spec(id, 16, 3, &[])
        };
        s.enqueue(lora(0, 7));
        s.enqueue(lora(1, 8)); // needs a second slot: skipped
        s.enqueue(lora(2, 7)); // same adapter: admitted past the skipped one
        s.enqueue(spec(3, 16, 3, &[])); // base model: admitted
        let mut out = Vec::new();
        s.start_step(&mut out).unwrap();
        assert_eq!(s.num_running(), 3);
        assert_eq!(s.lora_state(), (vec![7], vec![8]));
        s.finish_step(&mut out);
        let (_, evs) = drain(&mut s);
        assert_eq!(
            evs.iter()
                .filter(|e| matches!(e.1, EngineEvent::Finished { .. }))
                .count(),
            4
        );
    }

    /// Invariants over seeded random workloads (small KV so that preemption and eviction
    /// happen): every request finishes exactly once with exactly its output tokens, the free
    /// list stays consistent, and all blocks return when idle.
    #[test]
    fn random_workloads_conserve_tokens_and_blocks() {
        use picker_core::{Rng, SplitMix64};
        for seed in 0..20u64 {
            let mut rng = SplitMix64::new(seed);
            let mut s = Server::new(ServerParams {
                max_batched_tokens: 256,
                max_loras: 2,
                ..small(64)
            });
            let mut want = 0u64;
            let mut finished = vec![0u32; 40];
            let mut out = Vec::new();
            let mut id = 0;
            while id < 40 || s.has_work() {
                if id < 40 && rng.below(2) == 0 {
                    let prompt = 1 + rng.below(300) as u32;
                    let output = 1 + rng.below(60) as u32;
                    // Half the requests share a 4-block prefix; a few use adapters.
                    let shared = rng.below(2) == 0;
                    let hashes: Vec<u64> = (0..prompt / 16)
                        .map(|b| {
                            if shared && b < 4 {
                                b as u64
                            } else {
                                (id as u64) << 32 | b as u64
                            }
                        })
                        .collect();
                    let adapter = if rng.below(4) == 0 {
                        Some(rng.below(3) as u16)
                    } else {
                        None
                    };
                    s.enqueue(SeqSpec {
                        adapter,
                        ..spec(id, prompt, output, &hashes)
                    });
                    want += output as u64;
                    id += 1;
                }
                if s.start_step(&mut out).is_some() {
                    s.finish_step(&mut out);
                }
                for e in out.drain(..) {
                    if let EngineEvent::Finished { id } = e {
                        finished[id] += 1;
                    }
                }
                s.kv.check();
            }
            assert!(finished.iter().all(|&f| f == 1), "seed {seed}: {finished:?}");
            assert_eq!(s.stats.output_tokens, want, "seed {seed}");
            assert_eq!(s.kv.free_blocks(), 64, "seed {seed}");
        }
    }
}
