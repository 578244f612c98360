//! Workloads: synthetic prompt *text* (so picker-core scans and hashes exactly the bytes it would
//! in production) and seeded Poisson arrivals.
//!
//! Text is made of 4-byte "tokens" (three lowercase letters and a space), so a prompt of `n`
//! tokens is exactly `4n` bytes, matching the 4 characters per token that GIE's approximate prefix
//! cache assumes (`docs/epp.md`, "Approximate prefix cache") and making one 16-token KV block
//! exactly one 64-byte picker block.
//! Shared prefixes are shared *bytes*: every user of a group sends the same system-prompt bytes.

use std::sync::Arc;

use picker_core::{Rng, SplitMix64};
use xxhash_rust::xxh64::xxh64;

use crate::calib::Micros;

/// Bytes per token of the synthetic text.
pub const BYTES_PER_TOKEN: usize = 4;

/// One distinct prompt: two byte segments (e.g. system prompt + question) and the server-side
/// block hashes of their concatenation.
#[derive(Clone, Debug)]
pub struct PromptText {
    pub head: Arc<[u8]>,
    pub tail: Arc<[u8]>,
    pub tokens: u32,
    /// Chained hashes of the full 16-token blocks (see [`block_hashes`]).
    pub hashes: Arc<[u64]>,
}

impl PromptText {
    pub fn new(model: &str, head: Arc<[u8]>, tail: Arc<[u8]>, block_tokens: u32) -> Self {
        let bytes = head.len() + tail.len();
        let tokens = bytes.div_ceil(BYTES_PER_TOKEN) as u32;
        let hashes = block_hashes(model, &head, &tail, block_tokens as usize * BYTES_PER_TOKEN).into();
        PromptText {
            head,
            tail,
            tokens,
            hashes,
        }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The simulated engine's block hashes: like vLLM's, each full block's hash covers its own
/// tokens and (through the parent hash) everything before it, seeded by the model name (vLLM
/// keys LoRA adapters into the hash the same way). Only full blocks are hashed.
pub fn block_hashes(model: &str, head: &[u8], tail: &[u8], block_bytes: usize) -> Vec<u64> {
    const SEED: u64 = 0x706f_6473_696d; // "podsim": any fixed value; never compared with the picker's
    let total = head.len() + tail.len();
    let mut out = Vec::with_capacity(total / block_bytes);
    let mut prev = xxh64(model.as_bytes(), SEED);
    let mut buf = Vec::with_capacity(block_bytes + 8);
    let byte = |i: usize| {
        if i < head.len() {
            head[i]
        } else {
            tail[i - head.len()]
        }
    };
    let mut pos = 0;
    while pos + block_bytes <= total {
        buf.clear();
        if pos + block_bytes <= head.len() {
            buf.extend_from_slice(&head[pos..pos + block_bytes]);
        } else {
            buf.extend((pos..pos + block_bytes).map(byte));
        }
        buf.extend_from_slice(&prev.to_le_bytes());
        prev = xxh64(&buf, SEED);
        out.push(prev);
        pos += block_bytes;
    }
    out
}

/// `tokens` tokens of random text.
pub fn random_text(tokens: usize, rng: &mut impl Rng) -> Arc<[u8]> {
    let mut v = Vec::with_capacity(tokens * BYTES_PER_TOKEN);
    for _ in 0..tokens {
        let r = rng.next_u64();
        for k in 0..3 {
            v.push(b'a' + ((r >> (8 * k)) % 26) as u8);
        }
        v.push(b' ');
    }
    v.into()
}

/// One request of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub at: Micros,
    /// Index into [`Trace::prompts`].
    pub prompt: u32,
    pub output_tokens: u32,
    /// InferenceObjective priority (negative: sheddable).
    pub priority: i32,
    /// LoRA adapter: index into [`Trace::adapters`]; `None` targets the base model.
    pub adapter: Option<u16>,
}

/// A complete, pre-generated request sequence: the same trace is replayed against every policy
/// (common random numbers), so differences between policies are not sampling noise.
#[derive(Clone, Debug)]
pub struct Trace {
    pub model: String,
    /// LoRA adapter names served on top of `model` (empty: none).
    pub adapters: Vec<String>,
    pub prompts: Vec<PromptText>,
    /// Sorted by `at`; closed-loop follow-ups (see `next`) come last with `at == UNTIMED`.
    pub arrivals: Vec<Arrival>,
    /// Closed-loop chains: `next[i] = Some(j)` sends request `j` (whose `at` is [`UNTIMED`]) as
    /// soon as request `i` finishes, is shed or fails, if that is before the horizon (the client
    /// slot that sent `i` sends `j` next). Empty for open-loop workloads.
    pub next: Vec<Option<u32>>,
    /// A load ladder run as inference-perf runs it (see [`crate::ladder`]); `None` otherwise.
    pub staging: Option<crate::ladder::Staging>,
}

/// `Arrival::at` of a request that is sent when its predecessor in a closed-loop chain ends.
pub const UNTIMED: Micros = Micros::MAX;

/// Exponential inter-arrival gap for `qps`, in µs.
fn exp_gap(qps: f64, rng: &mut impl Rng) -> Micros {
    let u = rng.unit_f64();
    ((-(1.0 - u).ln() / qps) * 1e6).round() as Micros
}

/// Poisson arrival times in `[0, horizon)`.
pub fn poisson_times(qps: f64, horizon: Micros, rng: &mut impl Rng) -> Vec<Micros> {
    let mut t = 0;
    let mut out = Vec::new();
    loop {
        t += exp_gap(qps, rng);
        if t >= horizon {
            return out;
        }
        out.push(t);
    }
}

/// The model name every workload uses (the calibrated server).
pub const MODEL: &str = "Qwen/Qwen3-32B";

/// Shape of the llm-d shared-prefix ("b2b-saas") workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedPrefix {
    pub groups: u32,
    pub users_per_group: u32,
    pub system_tokens: u32,
    pub question_tokens: u32,
    pub output_tokens: u32,
}

impl SharedPrefix {
    /// **\[src\]** 150 groups × 5 users, 6,000-token system prompt, 1,200-token question,
    /// 1,000 output tokens (GIE `benchmarking/prefix-cache-aware` short-questions config; llm-d
    /// `guides/inference-scheduling/README.md` @086f217; `docs/engines.md`, "Shared-prefix
    /// workload").
    pub const LLMD: SharedPrefix = SharedPrefix {
        groups: 150,
        users_per_group: 5,
        system_tokens: 6000,
        question_tokens: 1200,
        output_tokens: 1000,
    };

    /// Builds the distinct prompts: user `u` of group `g` always sends system prompt `g` followed
    /// by its own fixed question (inference-perf's `shared_prefix` generator draws each request
    /// from this fixed set of `groups × users` prompts).
    pub fn prompts(&self, block_tokens: u32, rng: &mut impl Rng) -> Vec<PromptText> {
        let mut out = Vec::with_capacity((self.groups * self.users_per_group) as usize);
        for _ in 0..self.groups {
            let system = random_text(self.system_tokens as usize, rng);
            for _ in 0..self.users_per_group {
                let q = random_text(self.question_tokens as usize, rng);
                out.push(PromptText::new(MODEL, system.clone(), q, block_tokens));
            }
        }
        out
    }

    /// Poisson arrivals at `qps` for `horizon`, each drawing a prompt uniformly.
    pub fn trace(&self, qps: f64, horizon: Micros, block_tokens: u32, seed: u64) -> Trace {
        let mut rng = SplitMix64::new(seed);
        let prompts = self.prompts(block_tokens, &mut rng);
        let arrivals = poisson_times(qps, horizon, &mut rng)
            .into_iter()
            .map(|at| Arrival {
                at,
                prompt: rng.below(prompts.len() as u64) as u32,
                output_tokens: self.output_tokens,
                priority: 0,
                adapter: None,
            })
            .collect();
        Trace {
            model: MODEL.into(),
            adapters: Vec::new(),
            prompts,
            arrivals,
            next: Vec::new(),
            staging: None,
        }
    }
}

/// ShareGPT-like lengths with no prefix sharing.
///
/// **\[src\]** means: 229.7 input / 203.1 output tokens (vLLM PR #18566, 1000 ShareGPT requests,
/// Llama-3.1 tokenizer; `docs/engines.md`, "ShareGPT-like lengths"). **\[src\]** filter: vLLM
/// `is_valid_sequence` drops prompt < 4 or output < 4, prompt > 1024, prompt + output > 2048.
/// **\[assumption\]** the shape: no citable median or p90 was found, so both lengths are
/// log-normal with σ = 1.0 (log space) and the cited means, resampled until they pass the
/// filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShareGptLike {
    pub mean_in: f64,
    pub mean_out: f64,
    pub sigma: f64,
}

impl ShareGptLike {
    pub const DEFAULT: ShareGptLike = ShareGptLike {
        mean_in: 229.7,
        mean_out: 203.1,
        sigma: 1.0,
    };

    fn lognormal(mean: f64, sigma: f64, rng: &mut impl Rng) -> f64 {
        // Box–Muller; μ chosen so that E[X] = mean.
        let (u1, u2) = (1.0 - rng.unit_f64(), rng.unit_f64());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let mu = mean.ln() - sigma * sigma / 2.0;
        (mu + sigma * z).exp()
    }

    /// `(prompt, output)` tokens passing vLLM's ShareGPT filter.
    pub fn lengths(&self, rng: &mut impl Rng) -> (u32, u32) {
        loop {
            let p = Self::lognormal(self.mean_in, self.sigma, rng).round() as u32;
            let o = Self::lognormal(self.mean_out, self.sigma, rng).round() as u32;
            if (4..=1024).contains(&p) && o >= 4 && p + o <= 2048 {
                return (p, o);
            }
        }
    }

    /// Poisson arrivals, every prompt unique random text.
    pub fn trace(&self, qps: f64, horizon: Micros, block_tokens: u32, seed: u64) -> Trace {
        let mut rng = SplitMix64::new(seed);
        let times = poisson_times(qps, horizon, &mut rng);
        let mut prompts = Vec::with_capacity(times.len());
        let mut arrivals = Vec::with_capacity(times.len());
        let empty: Arc<[u8]> = Arc::from(&[][..]);
        for at in times {
            let (p, o) = self.lengths(&mut rng);
            let text = random_text(p as usize, &mut rng);
            prompts.push(PromptText::new(MODEL, text, empty.clone(), block_tokens));
            arrivals.push(Arrival {
                at,
                prompt: prompts.len() as u32 - 1,
                output_tokens: o,
                priority: 0,
                adapter: None,
            });
        }
        Trace {
            model: MODEL.into(),
            adapters: Vec::new(),
            prompts,
            arrivals,
            next: Vec::new(),
            staging: None,
        }
    }
}

/// On/off arrivals over the shared-prefix prompt set, half of them sheddable: exercises
/// picker-core's admission (GIE legacy shedding of negative-priority requests when the pool's
/// saturation reaches 1, `docs/epp.md`, "Saturation detector and shedding").
///
/// **\[assumption\]** the shape: `on` seconds at `on_factor × qps` alternate with `off` seconds at
/// `off_factor × qps` (mean rate `qps` when the factors average to 1); each request is sheddable
/// (priority −1) with probability `sheddable`, else critical (priority 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bursts {
    pub base: SharedPrefix,
    pub on_s: f64,
    pub off_s: f64,
    pub on_factor: f64,
    pub off_factor: f64,
    pub sheddable: f64,
}

impl Bursts {
    pub const DEFAULT: Bursts = Bursts {
        base: SharedPrefix {
            output_tokens: 300,
            ..SharedPrefix::LLMD
        },
        on_s: 10.0,
        off_s: 10.0,
        on_factor: 1.8,
        off_factor: 0.2,
        sheddable: 0.5,
    };

    /// Arrival times: Poisson within each segment at that segment's rate (memoryless, so
    /// restarting the clock at a boundary is exact).
    pub fn times(&self, qps: f64, horizon: Micros, rng: &mut impl Rng) -> Vec<Micros> {
        let mut out = Vec::new();
        let mut start: Micros = 0;
        let mut on = true;
        while start < horizon {
            let len = ((if on { self.on_s } else { self.off_s }) * 1e6) as Micros;
            let end = (start + len.max(1)).min(horizon);
            let rate = qps * if on { self.on_factor } else { self.off_factor };
            if rate > 0.0 {
                let mut t = start;
                loop {
                    t += exp_gap(rate, rng);
                    if t >= end {
                        break;
                    }
                    out.push(t);
                }
            }
            start = end;
            on = !on;
        }
        out
    }

    pub fn trace(&self, qps: f64, horizon: Micros, block_tokens: u32, seed: u64) -> Trace {
        let mut rng = SplitMix64::new(seed);
        let prompts = self.base.prompts(block_tokens, &mut rng);
        let arrivals = self
            .times(qps, horizon, &mut rng)
            .into_iter()
            .map(|at| Arrival {
                at,
                prompt: rng.below(prompts.len() as u64) as u32,
                output_tokens: self.base.output_tokens,
                priority: if rng.unit_f64() < self.sheddable { -1 } else { 0 },
                adapter: None,
            })
            .collect();
        Trace {
            model: MODEL.into(),
            adapters: Vec::new(),
            prompts,
            arrivals,
            next: Vec::new(),
            staging: None,
        }
    }
}

/// Multi-LoRA traffic: ShareGPT-like requests (no prefix sharing) spread over 15 adapters in
/// three traffic classes. **\[src\]** 15 adapters at 60/30/10 % (12/6/2 % each), GIE
/// `site-src/performance/regression-testing/index.md` @1748e829 `multilora-workload`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MultiLora {
    pub lengths: ShareGptLike,
    /// `(adapters, traffic share of each)` per class.
    pub classes: [(u16, f64); 3],
}

impl MultiLora {
    pub const DEFAULT: MultiLora = MultiLora {
        lengths: ShareGptLike::DEFAULT,
        classes: [(5, 0.12), (5, 0.06), (5, 0.02)],
    };

    pub fn adapter_names(&self) -> Vec<String> {
        let n: u16 = self.classes.iter().map(|c| c.0).sum();
        (0..n).map(|i| format!("lora-{i:02}")).collect()
    }

    fn draw_adapter(&self, rng: &mut impl Rng) -> u16 {
        let mut u = rng.unit_f64();
        let mut idx = 0u16;
        for &(count, share) in &self.classes {
            for _ in 0..count {
                if u < share {
                    return idx;
                }
                u -= share;
                idx += 1;
            }
        }
        idx.saturating_sub(1)
    }

    pub fn trace(&self, qps: f64, horizon: Micros, block_tokens: u32, seed: u64) -> Trace {
        let mut rng = SplitMix64::new(seed);
        let adapters = self.adapter_names();
        let times = poisson_times(qps, horizon, &mut rng);
        let mut prompts = Vec::with_capacity(times.len());
        let mut arrivals = Vec::with_capacity(times.len());
        let empty: Arc<[u8]> = Arc::from(&[][..]);
        for at in times {
            let adapter = self.draw_adapter(&mut rng);
            let (p, o) = self.lengths.lengths(&mut rng);
            let text = random_text(p as usize, &mut rng);
            prompts.push(PromptText::new(
                &adapters[adapter as usize],
                text,
                empty.clone(),
                block_tokens,
            ));
            arrivals.push(Arrival {
                at,
                prompt: prompts.len() as u32 - 1,
                output_tokens: o,
                priority: 0,
                adapter: Some(adapter),
            });
        }
        Trace {
            model: MODEL.into(),
            adapters,
            prompts,
            arrivals,
            next: Vec::new(),
            staging: None,
        }
    }
}

/// A length distribution drawn the way inference-perf's `generate_distribution` draws it
/// (kubernetes-sigs/inference-perf `inference_perf/utils/distribution.py` @4da5ced7): draw, clip
/// to `[min, max]`, round. `LogNormal` is shifted so that `min` maps to 0 and parameterised so
/// that the *shifted* log-normal has mean `mean − min` and standard deviation `sd`. `Exponential`
/// (used by the reasoning catalog entry, but not implemented in that file) is **\[assumption\]**
/// `min + Exp(mean − min)`, clipped, the same shift convention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    Fixed(f64),
    Uniform { min: f64, max: f64 },
    Normal { min: f64, max: f64, mean: f64, sd: f64 },
    LogNormal { min: f64, max: f64, mean: f64, sd: f64 },
    Exponential { min: f64, max: f64, mean: f64 },
}

/// One standard normal draw (Box–Muller).
fn std_normal(rng: &mut impl Rng) -> f64 {
    let (u1, u2) = (1.0 - rng.unit_f64(), rng.unit_f64());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl Dist {
    /// One draw, clipped to the bounds and rounded.
    pub fn sample(&self, rng: &mut impl Rng) -> u32 {
        let (v, lo, hi) = match *self {
            Dist::Fixed(x) => (x, x, x),
            Dist::Uniform { min, max } => (min + (max - min) * rng.unit_f64(), min, max),
            Dist::Normal { min, max, mean, sd } => (mean + sd * std_normal(rng), min, max),
            Dist::LogNormal { min, max, mean, sd } => {
                let m = if mean - min <= 0.0 { 1.0 } else { mean - min };
                let s2 = (1.0 + (sd / m).powi(2)).ln();
                let mu = m.ln() - s2 / 2.0;
                ((mu + s2.sqrt() * std_normal(rng)).exp() + min, min, max)
            }
            Dist::Exponential { min, max, mean } => {
                let m = (mean - min).max(1.0);
                (min - m * (1.0 - rng.unit_f64()).ln(), min, max)
            }
        };
        v.clamp(lo, hi).round() as u32
    }
}

/// Closed-loop multi-turn conversations, as inference-perf's `conversation_replay` data
/// generator with a `concurrent` load (kubernetes-sigs/inference-perf
/// `inference_perf/datagen/conversation_replay_datagen.py` @010c60f2): `C` client slots
/// (`num_conversations = C`, the concurrency), each owning one conversation whose system prompt
/// is a prompt shared by every conversation followed by a per-conversation ("dynamic") part;
/// turn `k`'s prompt is the system prompt, every earlier turn's input and output, and turn `k`'s
/// input; a slot sends its next turn when the previous one ends; after the last turn the slot
/// starts its conversation again from turn 0 (inference-perf resets the session to the same
/// blueprint: same system prompt and turn inputs, but the model's outputs differ, so here every
/// pass gets fresh output text).
///
/// **\[assumption\]** no think or tool-call time between turns (the data generator above does not
/// read `tool_call_latency_sec`); slots start at uniformly random times in the first
/// `stagger_s` seconds; output text is random (only prompt blocks are cached by the simulated
/// engine, so a turn's own output is recomputed in the next turn's prefill, see the crate's
/// known gaps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConversationReplay {
    pub shared_system_tokens: u32,
    pub dynamic_system: Dist,
    pub turns: Dist,
    pub input_per_turn: Dist,
    pub output_per_turn: Dist,
    pub stagger_s: f64,
}

impl ConversationReplay {
    /// **\[src\]** llm-d's code-generation run (llm-d.github.io
    /// `blog/2026-08-17_bottleneck-aware-scheduling-for-llm-inference.mdx` @25e593b2, "Sticky Until
    /// Saturated"), the catalog entry of that time, kubernetes-sigs/inference-perf
    /// @e2c6268c `workload-catalog/code-generation/inference-perf.yaml`: shared system prompt
    /// 3,000 tokens; dynamic system prompt uniform 15,000–120,000; turns normal 2–20 (mean 6,
    /// sd 3.5); input per turn log-normal 100–10,000 (mean 1,500, sd 1,200); output per turn
    /// log-normal 50–4,000 (mean 800, sd 600); concurrency 10 → 100 on 10 servers. (The current
    /// catalog file, @5fb5e1ac, is far larger: dynamic prompt mean 160k, turns mean 540, output
    /// mean 425; it is not the shape llm-d published.)
    pub const CODE_GENERATION: ConversationReplay = ConversationReplay {
        shared_system_tokens: 3000,
        dynamic_system: Dist::Uniform {
            min: 15_000.0,
            max: 120_000.0,
        },
        turns: Dist::Normal {
            min: 2.0,
            max: 20.0,
            mean: 6.0,
            sd: 3.5,
        },
        input_per_turn: Dist::LogNormal {
            min: 100.0,
            max: 10_000.0,
            mean: 1500.0,
            sd: 1200.0,
        },
        output_per_turn: Dist::LogNormal {
            min: 50.0,
            max: 4000.0,
            mean: 800.0,
            sd: 600.0,
        },
        stagger_s: 10.0,
    };

    /// **\[src\]** llm-d's reasoning run (same blog; `docs/engines.md`, "Conversation workloads") and
    /// kubernetes-sigs/inference-perf `workload-catalog/reasoning/inference-perf.yaml` @5cbfb21c:
    /// shared system prompt 250 tokens, no dynamic part, one turn, input log-normal 100–5,000
    /// (mean 1,000, sd 800), output exponential 500–32,000 (mean 8,000; the file's sd 6,500 has
    /// no effect on an exponential, see [`Dist`]); concurrency 50 → 450 on 10 servers.
    pub const REASONING: ConversationReplay = ConversationReplay {
        shared_system_tokens: 250,
        dynamic_system: Dist::Fixed(0.0),
        turns: Dist::Fixed(1.0),
        input_per_turn: Dist::LogNormal {
            min: 100.0,
            max: 5000.0,
            mean: 1000.0,
            sd: 800.0,
        },
        output_per_turn: Dist::Exponential {
            min: 500.0,
            max: 32_000.0,
            mean: 8000.0,
        },
        stagger_s: 10.0,
    };

    /// `concurrency` closed-loop slots for `horizon`. Each slot's chain is generated until the
    /// sum of its requests' shortest possible durations (`output tokens × min_step`, one token
    /// per engine step) covers the horizon, so a chain never runs dry before the horizon.
    pub fn trace(&self, concurrency: u32, horizon: Micros, block_tokens: u32, min_step: Micros, seed: u64) -> Trace {
        let mut rng = SplitMix64::new(seed);
        let shared = random_text(self.shared_system_tokens as usize, &mut rng);
        let mut prompts = Vec::new();
        let mut arrivals = Vec::new();
        let mut untimed = Vec::new();
        let mut next: Vec<Option<u32>> = Vec::new();
        // (slot start, request ids of the chain) per slot; ids are fixed once all are known.
        let mut chains: Vec<(Micros, Vec<(u32, u32)>)> = Vec::new();
        for _ in 0..concurrency {
            let start = (self.stagger_s * 1e6 * rng.unit_f64()) as Micros;
            let dynamic = self.dynamic_system.sample(&mut rng) as usize;
            let mut system = shared.to_vec();
            system.extend_from_slice(&random_text(dynamic, &mut rng));
            let system: Arc<[u8]> = system.into();
            let turns = self.turns.sample(&mut rng).max(1);
            let inputs: Vec<Arc<[u8]>> = (0..turns)
                .map(|_| random_text(self.input_per_turn.sample(&mut rng) as usize, &mut rng))
                .collect();
            let outputs: Vec<u32> = (0..turns)
                .map(|_| self.output_per_turn.sample(&mut rng).max(1))
                .collect();
            let mut chain = Vec::new();
            let mut covered: Micros = start;
            'passes: loop {
                let mut history: Vec<u8> = Vec::new();
                for k in 0..turns as usize {
                    history.extend_from_slice(&inputs[k]);
                    prompts.push(PromptText::new(
                        MODEL,
                        system.clone(),
                        history.clone().into(),
                        block_tokens,
                    ));
                    chain.push((prompts.len() as u32 - 1, outputs[k]));
                    covered = covered.saturating_add(outputs[k] as Micros * min_step.max(1));
                    if covered >= horizon {
                        break 'passes;
                    }
                    history.extend_from_slice(&random_text(outputs[k] as usize, &mut rng));
                }
            }
            chains.push((start, chain));
        }
        // Request ids: every slot's first request is timed (sorted by start), the rest follow.
        let mut firsts: Vec<usize> = (0..chains.len()).collect();
        firsts.sort_by_key(|&i| (chains[i].0, i));
        let mut first_id = vec![0u32; chains.len()];
        for &i in &firsts {
            let (start, chain) = &chains[i];
            first_id[i] = arrivals.len() as u32;
            arrivals.push(Arrival {
                at: *start,
                prompt: chain[0].0,
                output_tokens: chain[0].1,
                priority: 0,
                adapter: None,
            });
        }
        let base = arrivals.len() as u32;
        for (i, (_, chain)) in chains.iter().enumerate() {
            let mut prev = first_id[i];
            for &(prompt, output_tokens) in &chain[1..] {
                let id = base + untimed.len() as u32;
                untimed.push(Arrival {
                    at: UNTIMED,
                    prompt,
                    output_tokens,
                    priority: 0,
                    adapter: None,
                });
                next.resize(next.len().max(id as usize + 1), None);
                next[prev as usize] = Some(id);
                prev = id;
            }
        }
        arrivals.extend(untimed);
        next.resize(arrivals.len(), None);
        Trace {
            model: MODEL.into(),
            adapters: Vec::new(),
            prompts,
            arrivals,
            next,
            staging: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_four_bytes_per_token_and_hashes_chain() {
        let mut rng = SplitMix64::new(1);
        let t = random_text(40, &mut rng);
        assert_eq!(t.len(), 160);
        let empty: Arc<[u8]> = Arc::from(&[][..]);
        let p = PromptText::new(MODEL, t.clone(), empty.clone(), 16);
        assert_eq!(p.tokens, 40);
        assert_eq!(p.hashes.len(), 2, "two full 16-token blocks, the 8-token rest unhashed");
        // Same bytes split differently hash the same; a different first block changes everything.
        let split = PromptText::new(MODEL, t[..100].into(), t[100..].into(), 16);
        assert_eq!(split.hashes, p.hashes);
        let mut other = t.to_vec();
        other[0] ^= 1;
        let q = PromptText::new(MODEL, other.into(), empty, 16);
        assert!(q.hashes.iter().zip(p.hashes.iter()).all(|(a, b)| a != b));
    }

    #[test]
    fn shared_prefix_users_share_exactly_the_system_blocks() {
        let shape = SharedPrefix {
            groups: 2,
            users_per_group: 2,
            system_tokens: 64,
            question_tokens: 32,
            output_tokens: 1,
        };
        let prompts = shape.prompts(16, &mut SplitMix64::new(3));
        assert_eq!(prompts.len(), 4);
        assert_eq!(prompts[0].hashes.len(), 6);
        assert_eq!(prompts[0].hashes[..4], prompts[1].hashes[..4]);
        assert_ne!(prompts[0].hashes[4], prompts[1].hashes[4]);
        assert_ne!(prompts[0].hashes[0], prompts[2].hashes[0]);
    }

    #[test]
    fn poisson_rate_and_determinism() {
        let a = poisson_times(20.0, 100_000_000, &mut SplitMix64::new(9));
        let b = poisson_times(20.0, 100_000_000, &mut SplitMix64::new(9));
        assert_eq!(a, b);
        assert!(
            (1800..2200).contains(&a.len()),
            "{} arrivals for 20 qps × 100 s",
            a.len()
        );
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn sharegpt_lengths_pass_the_filter_and_keep_plausible_means() {
        let mut rng = SplitMix64::new(5);
        let n = 5000;
        let (mut si, mut so) = (0u64, 0u64);
        for _ in 0..n {
            let (p, o) = ShareGptLike::DEFAULT.lengths(&mut rng);
            assert!((4..=1024).contains(&p) && o >= 4 && p + o <= 2048);
            si += p as u64;
            so += o as u64;
        }
        let (mi, mo) = (si as f64 / n as f64, so as f64 / n as f64);
        assert!((180.0..260.0).contains(&mi), "mean in {mi}");
        assert!((160.0..240.0).contains(&mo), "mean out {mo}");
    }

    #[test]
    fn bursts_alternate_rates_and_mark_sheddable_requests() {
        let b = Bursts {
            base: SharedPrefix {
                groups: 2,
                users_per_group: 2,
                system_tokens: 32,
                question_tokens: 16,
                output_tokens: 5,
            },
            ..Bursts::DEFAULT
        };
        let t = b.trace(50.0, 40_000_000, 16, 11);
        let in_window = |lo: u64, hi: u64| {
            t.arrivals
                .iter()
                .filter(|a| a.at >= lo * 1_000_000 && a.at < hi * 1_000_000)
                .count()
        };
        let (on, off) = (
            in_window(0, 10) + in_window(20, 30),
            in_window(10, 20) + in_window(30, 40),
        );
        assert!(on > 5 * off, "on {on} vs off {off}");
        let shed = t.arrivals.iter().filter(|a| a.priority < 0).count();
        let frac = shed as f64 / t.arrivals.len() as f64;
        assert!((0.4..0.6).contains(&frac), "{frac}");
    }

    #[test]
    fn multi_lora_traffic_classes_follow_their_shares() {
        let t = MultiLora::DEFAULT.trace(200.0, 50_000_000, 16, 2);
        assert_eq!(t.adapters.len(), 15);
        let mut per = [0usize; 15];
        for a in &t.arrivals {
            per[a.adapter.unwrap() as usize] += 1;
        }
        let n = t.arrivals.len() as f64;
        let share = |r: std::ops::Range<usize>| per[r].iter().sum::<usize>() as f64 / n;
        assert!((share(0..5) - 0.60).abs() < 0.03, "{per:?}");
        assert!((share(5..10) - 0.30).abs() < 0.03, "{per:?}");
        assert!((share(10..15) - 0.10).abs() < 0.02, "{per:?}");
    }
    #[test]
    fn dists_respect_bounds_and_means() {
        let mut rng = SplitMix64::new(8);
        let n = 20_000;
        let mean = |d: Dist, rng: &mut SplitMix64| {
            let v: Vec<u32> = (0..n).map(|_| d.sample(rng)).collect();
            let (lo, hi) = match d {
                Dist::LogNormal { min, max, .. }
                | Dist::Normal { min, max, .. }
                | Dist::Exponential { min, max, .. } => (min, max),
                Dist::Uniform { min, max } => (min, max),
                Dist::Fixed(x) => (x, x),
            };
            assert!(v.iter().all(|&x| (lo..=hi).contains(&(x as f64))), "{d:?}");
            v.iter().map(|&x| x as f64).sum::<f64>() / n as f64
        };
        let c = ConversationReplay::CODE_GENERATION;
        let m = mean(c.input_per_turn, &mut rng);
        assert!((1400.0..1600.0).contains(&m), "input {m}");
        let m = mean(c.turns, &mut rng);
        assert!((5.5..7.0).contains(&m), "turns {m}");
        let m = mean(ConversationReplay::REASONING.output_per_turn, &mut rng);
        assert!((7200.0..8300.0).contains(&m), "reasoning output {m}");
    }

    #[test]
    fn conversations_chain_turns_that_extend_each_other() {
        let shape = ConversationReplay {
            shared_system_tokens: 32,
            dynamic_system: Dist::Fixed(64.0),
            turns: Dist::Fixed(3.0),
            input_per_turn: Dist::Fixed(20.0),
            output_per_turn: Dist::Fixed(10.0),
            stagger_s: 0.0,
        };
        // 14 ms per step, 10 tokens per request: 7 requests cover one second.
        let t = shape.trace(4, 1_000_000, 16, 14_000, 3);
        assert_eq!(t.arrivals.iter().filter(|a| a.at != UNTIMED).count(), 4);
        assert_eq!(t.next.len(), t.arrivals.len());
        assert!(t.arrivals[..4].windows(2).all(|w| w[0].at <= w[1].at));
        // Follow one chain: turn k+1's prompt starts with turn k's whole prompt.
        let mut id = 0usize;
        let mut seen = 1;
        while let Some(j) = t.next[id] {
            let (a, b) = (
                &t.prompts[t.arrivals[id].prompt as usize],
                &t.prompts[t.arrivals[j as usize].prompt as usize],
            );
            assert_eq!(a.head, b.head, "one system prompt per conversation");
            if b.tail.len() > a.tail.len() {
                assert_eq!(&b.tail[..a.tail.len()], &a.tail[..]);
                assert_eq!(b.tail.len(), a.tail.len() + 30 * BYTES_PER_TOKEN);
            } else {
                assert_eq!(b.tail.len(), 20 * BYTES_PER_TOKEN, "a new pass starts at turn 0");
            }
            id = j as usize;
            seen += 1;
        }
        assert_eq!(seen, 8, "chains cover the horizon at the shortest request time");
        // Different conversations share only the 32-token shared prompt (2 blocks).
        let (p0, p1) = (
            &t.prompts[t.arrivals[0].prompt as usize],
            &t.prompts[t.arrivals[1].prompt as usize],
        );
        assert_eq!(p0.hashes[..2], p1.hashes[..2]);
        assert_ne!(p0.hashes[2], p1.hashes[2]);
    }
}
