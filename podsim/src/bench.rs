//! The routing-quality benchmark: a sweep of (rate × policy) runs over one workload, run in
//! parallel on independent threads (each run is a pure function of its inputs, so the table does
//! not depend on the thread count).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::calib::ServerParams;
use crate::ladder::{self, Drain, Ladder, StageReport};
use crate::policy::{PolicyKind, PolicySpec};
use crate::report::Summary;
use crate::sim::{run, SimConfig};
use crate::workload::{Bursts, ConversationReplay, MultiLora, ShareGptLike, SharedPrefix, Trace};

/// Which workload to sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// llm-d shared-prefix (b2b-saas): 150 groups × 5 users, 6000 + 1200 tokens in, 1000 out.
    SharedPrefix,
    /// No prefix sharing, ShareGPT-like lengths.
    ShareGpt,
    /// On/off bursts over the shared-prefix prompts, half the requests sheddable.
    Bursts,
    /// ShareGPT-like requests over 15 LoRA adapters (60/30/10 % classes).
    MultiLora,
    /// inference-perf catalog `code-generation` as llm-d ran it: closed-loop multi-turn
    /// conversations with ≈ 58k-token system prompts, concurrency 10 → 100, 10 servers
    /// ([`ConversationReplay::CODE_GENERATION`]).
    CodeGen,
    /// inference-perf catalog `reasoning`: closed loop, one turn, ≈ 1.3k tokens in, 8k out,
    /// concurrency 50 → 450, 10 servers ([`ConversationReplay::REASONING`]).
    Reasoning,
    /// llm-d's `b2b-saas`: the shared-prefix shape (150 × 5, 6000 + 1200 in, 1000 out) at
    /// 10 → 60 QPS with the knee rates 18 and 38 and a client cap of 800 (see [`Plan::new`]).
    B2bSaas,
}

impl WorkloadKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shared-prefix" => Some(WorkloadKind::SharedPrefix),
            "sharegpt" | "no-sharing" => Some(WorkloadKind::ShareGpt),
            "bursts" => Some(WorkloadKind::Bursts),
            "multi-lora" => Some(WorkloadKind::MultiLora),
            "code-gen" | "code-generation" => Some(WorkloadKind::CodeGen),
            "reasoning" => Some(WorkloadKind::Reasoning),
            "b2b-saas" => Some(WorkloadKind::B2bSaas),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::SharedPrefix => "shared-prefix",
            WorkloadKind::ShareGpt => "sharegpt",
            WorkloadKind::Bursts => "bursts",
            WorkloadKind::MultiLora => "multi-lora",
            WorkloadKind::CodeGen => "code-gen",
            WorkloadKind::Reasoning => "reasoning",
            WorkloadKind::B2bSaas => "b2b-saas",
        }
    }

    /// Closed-loop workloads sweep client concurrency instead of an arrival rate.
    pub fn closed_loop(self) -> bool {
        matches!(self, WorkloadKind::CodeGen | WorkloadKind::Reasoning)
    }

    /// What the sweep's rates are: `QPS` or `concurrency`.
    pub fn rate_unit(self) -> &'static str {
        if self.closed_loop() {
            "concurrency"
        } else {
            "QPS"
        }
    }

    /// llm-d's published result for the inference-perf catalog shapes: matched-router
    /// throughput vs round-robin, each at its own knee ("Sticky Until Saturated", llm-d.github.io
    /// `blog/2026-08-17_bottleneck-aware-scheduling-for-llm-inference.mdx` @25e593b2; `docs/epp.md`,
    /// "Published EPP performance figures").
    pub fn published_vs_round_robin(self) -> Option<&'static str> {
        match self {
            WorkloadKind::CodeGen => Some("2.9× (46k vs 16k input tok/s; knee at concurrency 60 vs 30)"),
            WorkloadKind::Reasoning => Some("≈1× (7.0k vs 6.8k output tok/s; knee at concurrency 350 vs 250)"),
            WorkloadKind::B2bSaas => Some("2.0× (90k vs 45k input tok/s; knee at 38 vs 18 QPS)"),
            _ => None,
        }
    }
}

/// A sweep.
#[derive(Clone, Debug)]
pub struct Plan {
    pub workload: WorkloadKind,
    pub qps: Vec<f64>,
    pub horizon_s: u64,
    pub warmup_s: u64,
    pub servers: usize,
    pub seed: u64,
    pub policies: Vec<PolicySpec>,
    /// See [`SimConfig::max_concurrency`].
    pub max_concurrency: Option<u32>,
    /// The simulated server (from `--engine`; the embedded default profile otherwise).
    pub params: ServerParams,
}

impl Plan {
    /// The default sweep, or the CI-sized `quick` one.
    ///
    /// shared-prefix: rates 3 → 60 QPS as llm-d (`docs/engines.md`, "Shared-prefix workload"),
    /// each run 90 s of Poisson arrivals
    /// (the first 30 s are warm-up) then drained. llm-d's stages ramp one cluster through the
    /// rates; here each rate starts cold and runs for 90 s, which keeps the whole sweep well under
    /// two minutes. Quick: 5 and 25 QPS, 25 s (5 s warm-up).
    ///
    /// bursts: mean rates 10 → 40 QPS, 80 s (20 s warm-up); quick: 30 QPS, 30 s (10 s).
    ///
    /// code-gen: concurrency 10 → 100, 600 s (200 s warm-up); reasoning: 50 → 450, 1,500 s
    /// (500 s): a reasoning request runs for minutes, so the window must hold several.
    /// b2b-saas: the shared-prefix shape at 10 → 60 QPS with llm-d's knees (18, 38), 240 s
    /// (90 s warm-up): a request lives ≈ 75 s under load, longer than the shared-prefix sweep's
    /// 60 s window, which makes input tok/s there swing by ±20 % between rates.
    pub fn new(workload: WorkloadKind, quick: bool) -> Plan {
        let (qps, horizon_s, warmup_s) = match (workload, quick) {
            (WorkloadKind::SharedPrefix, false) => (vec![3.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0], 90, 30),
            (WorkloadKind::SharedPrefix, true) => (vec![5.0, 25.0], 25, 5),
            (WorkloadKind::ShareGpt, false) => (vec![200.0, 400.0, 600.0, 800.0, 1000.0], 40, 10),
            (WorkloadKind::ShareGpt, true) => (vec![100.0, 400.0], 10, 2),
            (WorkloadKind::Bursts, false) => (vec![10.0, 20.0, 30.0, 40.0], 80, 20),
            (WorkloadKind::Bursts, true) => (vec![30.0], 30, 10),
            (WorkloadKind::MultiLora, false) => (vec![100.0, 300.0, 500.0, 700.0], 30, 10),
            (WorkloadKind::MultiLora, true) => (vec![200.0], 10, 2),
            (WorkloadKind::CodeGen, false) => (vec![10.0, 20.0, 30.0, 40.0, 60.0, 80.0, 100.0], 600, 200),
            (WorkloadKind::CodeGen, true) => (vec![20.0, 60.0], 200, 60),
            (WorkloadKind::Reasoning, false) => (vec![50.0, 150.0, 250.0, 350.0, 450.0], 1500, 500),
            (WorkloadKind::Reasoning, true) => (vec![100.0, 300.0], 500, 200),
            (WorkloadKind::B2bSaas, false) => (vec![10.0, 18.0, 30.0, 38.0, 50.0, 60.0], 240, 90),
            (WorkloadKind::B2bSaas, true) => (vec![18.0, 38.0], 40, 10),
        };
        let catalog = matches!(
            workload,
            WorkloadKind::CodeGen | WorkloadKind::Reasoning | WorkloadKind::B2bSaas
        );
        let mut policies = if catalog {
            [
                "round-robin",
                "gie-default",
                "llm-d-optimized-baseline",
                "wasm-epp-default",
            ]
            .iter()
            .map(|n| PolicySpec::parse(n).expect("known policy"))
            .collect()
        } else {
            PolicySpec::standard()
        };
        if !quick && !catalog {
            policies.push(PolicySpec::parse("gie-default@4x2").expect("known"));
            policies.push(PolicySpec::parse("wasm-epp-default@4x2").expect("known"));
            policies.push(PolicySpec::parse("wasm-epp-default@4x1+sync").expect("known"));
            policies.push(PolicySpec::parse("wasm-epp-default@4x2+sync").expect("known"));
            policies.push(PolicySpec::parse("wasm-epp-tuned@4x2").expect("known"));
        }
        if !catalog {
            // The upper bound every policy is measured against (crate::bound), where `oracle` was.
            policies.push(PolicySpec::parse("bound").expect("known"));
        }
        Plan {
            workload,
            qps,
            horizon_s,
            warmup_s,
            // llm-d ran code-gen and reasoning on 10 servers, b2b-saas on 8 (`docs/engines.md`,
            // "Shared-prefix workload").
            servers: if workload.closed_loop() { 10 } else { 8 },
            seed: 20_260_817,
            policies,
            // b2b-saas: the client cap of the README's shared-prefix table (a load generator with
            // a fixed sender pool, as inference-perf's); `--max-concurrency` overrides it.
            max_concurrency: (workload == WorkloadKind::B2bSaas).then_some(800),
            params: ServerParams::default(),
        }
    }

    pub fn sim_config(&self) -> SimConfig {
        SimConfig {
            servers: self.servers,
            max_concurrency: self.max_concurrency,
            params: self.params.clone(),
            ..SimConfig::llmd_cluster(self.horizon_s, self.warmup_s, self.seed)
        }
    }

    /// The trace for one rate (the same for every policy).
    pub fn trace(&self, qps: f64) -> Trace {
        let horizon = self.horizon_s * 1_000_000;
        let bt = self.params.block_tokens;
        let seed = self.seed ^ (qps * 1000.0) as u64;
        let min_step = (self.params.min_step_s() * 1e6) as u64;
        match self.workload {
            WorkloadKind::SharedPrefix | WorkloadKind::B2bSaas => SharedPrefix::LLMD.trace(qps, horizon, bt, seed),
            WorkloadKind::CodeGen => ConversationReplay::CODE_GENERATION.trace(qps as u32, horizon, bt, min_step, seed),
            WorkloadKind::Reasoning => ConversationReplay::REASONING.trace(qps as u32, horizon, bt, min_step, seed),
            WorkloadKind::ShareGpt => ShareGptLike::DEFAULT.trace(qps, horizon, bt, seed),
            WorkloadKind::Bursts => Bursts::DEFAULT.trace(qps, horizon, bt, seed),
            WorkloadKind::MultiLora => MultiLora::DEFAULT.trace(qps, horizon, bt, seed),
        }
    }
}

/// Runs every (rate, policy) pair on `threads` threads; `progress(done, total, summary)` is
/// called as runs finish. Results are in (rate, policy) order.
pub fn run_plan(plan: &Plan, threads: usize, progress: &(dyn Fn(usize, usize, &Summary) + Sync)) -> Vec<Summary> {
    let cfg = plan.sim_config();
    // Traces are built when a rate's first run starts and dropped after its last (the
    // conversation workloads hold hundreds of MB of prompt text per rate).
    let traces: Vec<Mutex<Option<Arc<Trace>>>> = plan.qps.iter().map(|_| Mutex::new(None)).collect();
    let left: Vec<AtomicUsize> = plan.qps.iter().map(|_| AtomicUsize::new(plan.policies.len())).collect();
    let jobs: Vec<(usize, usize)> = (0..plan.qps.len())
        .flat_map(|q| (0..plan.policies.len()).map(move |p| (q, p)))
        .collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Summary>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(q, p)) = jobs.get(j) else { break };
                let policy = &plan.policies[p];
                let trace = {
                    let mut slot = traces[q].lock().expect("no panics while held");
                    slot.get_or_insert_with(|| Arc::new(plan.trace(plan.qps[q]))).clone()
                };
                let summary = if matches!(policy.kind, PolicyKind::Bound) {
                    crate::bound::window_summary(&policy.name, plan.qps[q], &trace, &cfg)
                } else {
                    Summary::of(&policy.name, plan.qps[q], &run(&cfg, &trace, policy))
                };
                drop(trace);
                if left[q].fetch_sub(1, Ordering::Relaxed) == 1 {
                    *traces[q].lock().expect("no panics while held") = None;
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(d, jobs.len(), &summary);
                results.lock().expect("no panics while held")[j] = Some(summary);
            });
        }
    });
    results
        .into_inner()
        .expect("no panics while held")
        .into_iter()
        .map(|s| s.expect("every job ran"))
        .collect()
}

/// The as-deployed comparison (`bench --ladder`): llm-d's shared-prefix benchmark as
/// inference-perf runs it ([`crate::ladder`]: drained Poisson stages, per-stage figures), over
/// several seeds, with each policy in its deployment shape ([`crate::deploy`]).
#[derive(Clone, Debug)]
pub struct LadderPlan {
    pub shape: SharedPrefix,
    pub ladder: Ladder,
    pub drain: Drain,
    pub servers: usize,
    pub params: ServerParams,
    pub seeds: Vec<u64>,
    pub policies: Vec<PolicySpec>,
}

impl LadderPlan {
    /// The deployment shapes side by side: round-robin (a Kubernetes Service), GIE's and llm-d's
    /// profiles as central EPPs, ours (`wasm-epp-shared`, then `wasm-epp-default`) as a central
    /// EPP, in the proxy as one global view (each profile's reference), split over 4 workers × 2
    /// and × 4 replicas with the relay, and the same splits without it (the relay down), and the
    /// bound.
    pub fn as_deployed(ladder: Ladder, seeds: Vec<u64>, deploy: &crate::deploy::DeployParams) -> LadderPlan {
        let policies = [
            "round-robin",
            "gie-default+epp",
            "llm-d-optimized-baseline+epp",
            "wasm-epp-shared+epp",
            "wasm-epp-shared+proxy",
            "wasm-epp-shared@4x2+relay",
            "wasm-epp-shared@4x4+relay",
            "wasm-epp-shared@4x4+sync+proxy",
            "wasm-epp-default+proxy",
            "wasm-epp-default@4x2+relay",
            "wasm-epp-default@4x4+relay",
            "wasm-epp-default@4x2+sync+proxy",
            "wasm-epp-default@4x4+sync+proxy",
            "bound",
        ]
        .iter()
        .map(|n| PolicySpec::parse_with(n, deploy).expect("known policy"))
        .collect();
        LadderPlan {
            shape: SharedPrefix::LLMD,
            ladder,
            drain: Drain::Harness,
            servers: 8,
            params: ServerParams::default(),
            seeds,
            policies,
        }
    }
}

/// One policy's reported stages on one seed.
#[derive(Clone, Debug)]
pub struct LadderRun {
    pub seed: u64,
    pub policy: String,
    pub stages: Vec<StageReport>,
    /// Prefix-cache hit rate over the whole run (NaN for the bound).
    pub hit_rate: f64,
    pub preemptions: u64,
}

/// Runs every (seed, policy) pair on `threads` threads; results in (seed, policy) order.
pub fn run_ladder_plan(
    plan: &LadderPlan,
    threads: usize,
    progress: &(dyn Fn(usize, usize, &LadderRun) + Sync),
) -> Vec<LadderRun> {
    let traces: Vec<Mutex<Option<Arc<Trace>>>> = plan.seeds.iter().map(|_| Mutex::new(None)).collect();
    let jobs: Vec<(usize, usize)> = (0..plan.seeds.len())
        .flat_map(|k| (0..plan.policies.len()).map(move |p| (k, p)))
        .collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<LadderRun>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(k, p)) = jobs.get(j) else { break };
                let seed = plan.seeds[k];
                let policy = &plan.policies[p];
                let trace = {
                    let mut slot = traces[k].lock().expect("no panics while held");
                    slot.get_or_insert_with(|| {
                        Arc::new(ladder::shared_prefix_trace(
                            &plan.shape,
                            &plan.ladder,
                            plan.drain,
                            plan.params.block_tokens,
                            seed,
                        ))
                    })
                    .clone()
                };
                let cfg = ladder::sim_config(plan.servers, plan.params.clone(), seed);
                let out = if matches!(policy.kind, PolicyKind::Bound) {
                    LadderRun {
                        seed,
                        policy: policy.name.clone(),
                        stages: crate::bound::stage_reports(&trace, &cfg),
                        hit_rate: f64::NAN,
                        preemptions: 0,
                    }
                } else {
                    let r = run(&cfg, &trace, policy);
                    LadderRun {
                        seed,
                        policy: policy.name.clone(),
                        stages: ladder::stage_reports(&trace, &r),
                        hit_rate: r.hit_tokens as f64 / r.query_tokens.max(1) as f64,
                        preemptions: r.preemptions,
                    }
                };
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(d, jobs.len(), &out);
                results.lock().expect("no panics while held")[j] = Some(out);
            });
        }
    });
    results
        .into_inner()
        .expect("no panics while held")
        .into_iter()
        .map(|s| s.expect("every job ran"))
        .collect()
}
