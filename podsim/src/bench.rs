//! The routing-quality benchmark: a sweep of (rate × policy) runs over one workload, run in
//! parallel on independent threads (each run is a pure function of its inputs, so the table does
//! not depend on the thread count).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::calib::ServerParams;
use crate::policy::PolicySpec;
use crate::report::Summary;
use crate::sim::{run, SimConfig};
use crate::workload::{Bursts, MultiLora, ShareGptLike, SharedPrefix, Trace};

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
}

impl WorkloadKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shared-prefix" => Some(WorkloadKind::SharedPrefix),
            "sharegpt" | "no-sharing" => Some(WorkloadKind::ShareGpt),
            "bursts" => Some(WorkloadKind::Bursts),
            "multi-lora" => Some(WorkloadKind::MultiLora),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::SharedPrefix => "shared-prefix",
            WorkloadKind::ShareGpt => "sharegpt",
            WorkloadKind::Bursts => "bursts",
            WorkloadKind::MultiLora => "multi-lora",
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
}

impl Plan {
    /// The default sweep, or the CI-sized `quick` one.
    ///
    /// shared-prefix: rates 3 → 60 QPS as llm-d (epp.md §6.4), each run 90 s of Poisson arrivals
    /// (the first 30 s are warm-up) then drained. llm-d's stages ramp one cluster through the
    /// rates; here each rate starts cold and runs for 90 s, which keeps the whole sweep well under
    /// two minutes. Quick: 5 and 25 QPS, 25 s (5 s warm-up).
    ///
    /// bursts: mean rates 10 → 40 QPS, 80 s (20 s warm-up); quick: 30 QPS, 30 s (10 s).
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
        };
        let mut policies = PolicySpec::standard();
        if !quick {
            policies.push(PolicySpec::parse("gie-default@4x2").expect("known"));
            policies.push(PolicySpec::parse("wasm-epp-default@4x2").expect("known"));
            policies.push(PolicySpec::parse("wasm-epp-tuned@4x2").expect("known"));
        }
        Plan {
            workload,
            qps,
            horizon_s,
            warmup_s,
            servers: 8,
            seed: 20_260_817,
            policies,
            max_concurrency: None,
        }
    }

    pub fn sim_config(&self) -> SimConfig {
        SimConfig {
            servers: self.servers,
            max_concurrency: self.max_concurrency,
            ..SimConfig::llmd_cluster(self.horizon_s, self.warmup_s, self.seed)
        }
    }

    /// The trace for one rate (the same for every policy).
    pub fn trace(&self, qps: f64) -> Trace {
        let horizon = self.horizon_s * 1_000_000;
        let bt = ServerParams::default().block_tokens;
        let seed = self.seed ^ (qps * 1000.0) as u64;
        match self.workload {
            WorkloadKind::SharedPrefix => SharedPrefix::LLMD.trace(qps, horizon, bt, seed),
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
    let traces: Vec<Arc<Trace>> = plan.qps.iter().map(|&q| Arc::new(plan.trace(q))).collect();
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
                let r = run(&cfg, &traces[q], policy);
                let summary = Summary::of(&policy.name, plan.qps[q], &r);
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
