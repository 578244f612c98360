//! Load ladders run and reported the way inference-perf does it.
//!
//! Source: kubernetes-sigs/inference-perf **v0.4.0**, the version llm-d-benchmark v0.5.2's image
//! installs (`build/Dockerfile` @v0.5.2: `INFERENCE_PERF_COMMIT=v0.4.0`), which is the harness
//! image of llm-d's optimized-baseline benchmark (`benchmark-templates/shared_prefix.yaml`
//! @9084370b: `image: ghcr.io/llm-d/llm-d-benchmark:v0.5.2`).
//!
//! * **Arrivals** (`loadgen/load_timer.py`, `PoissonLoadTimer`): a stage of rate `r` and duration
//!   `d` sends exactly `int(r·d)` requests. Time is cut into 1-second slots from the stage's start;
//!   each slot draws `k ~ Poisson(r)` and places `k` requests with exponential gaps normalised to
//!   sum to the slot (the last one lands on the slot's end); a slot with `k = 0` is skipped.
//! * **Stages are drained** (`loadgen/load_generator.py`, `run_stage` with `num_workers > 0`, the
//!   default `max(1, cpu_count())`): after queueing a stage's requests the generator polls once a
//!   second (`await sleep(1)`) until every one of them has finished, then sleeps the stage
//!   `interval` (`LoadConfig.interval`, default 1.0 s) and starts the next stage's timer one second
//!   after it begins (`start_time = time.perf_counter() + 1`). So a stage starts on an idle (but
//!   warm-cached) cluster. [`Drain::None`] instead starts each stage `d` seconds after the previous
//!   one (back to back), for comparison.
//! * **Prompts** (`datagen/shared_prefix_datagen.py`): `num_groups × num_prompts_per_group` prompts
//!   (system prompt of the group + a space + the question) are generated once and shuffled; every
//!   stage gets a fresh generator, so stage requests `0, 1, 2, …` use prompts `0, 1, 2, …` of the
//!   shuffled list (mod its length).
//! * **Client**: `num_workers × worker_max_concurrency` = `cpu_count() × 100` sender slots
//!   (thousands on a harness pod) never bind here: requests are sent at their scheduled time.
//! * **Per-stage figures** (`reportgen/base.py`, `summarize_requests`, with the requests whose
//!   `stage_id` is the stage, i.e. that were *scheduled in* it): `output_tokens_per_sec` = output
//!   tokens of the stage's successful requests / (latest end − earliest start over the stage's
//!   requests); `time_to_first_token` over streamed successes = first chunk − start;
//!   percentiles by `numpy.percentile` (linear interpolation); `achieved_rate` = requests /
//!   (latest start − earliest start). A stage with no streamed success has an empty latency
//!   summary, which llm-d's table prints as 0.0.

use picker_core::{Rng, SplitMix64};

use crate::calib::{Micros, ServerParams};
use crate::policy::PolicySpec;
use crate::sim::{run, RunResult, SimConfig};
use crate::workload::{Arrival, SharedPrefix, Trace, MODEL};

/// One stage: Poisson `rate` requests/s for `duration_s` seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage {
    pub rate: f64,
    pub duration_s: f64,
}

impl Stage {
    /// Requests the stage sends: `int(rate · duration)` as inference-perf.
    pub fn requests(&self) -> usize {
        (self.rate * self.duration_s) as usize
    }
}

/// A ladder: `warmup` leading stages (run, not reported) and the stages to report.
#[derive(Clone, Debug, PartialEq)]
pub struct Ladder {
    pub warmup: Vec<Stage>,
    pub stages: Vec<Stage>,
}

/// How one stage follows the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// inference-perf v0.4.0: wait until every request of the stage has finished (polled once a
    /// second), then the 1 s stage interval, then the 1 s timer lead.
    Harness,
    /// Back to back: stage k+1's timer starts `duration` after stage k's (or at stage k's last
    /// send, if later).
    None,
}

impl Drain {
    pub fn parse(s: &str) -> Option<Drain> {
        match s {
            "harness" | "inference-perf" => Some(Drain::Harness),
            "none" => Some(Drain::None),
            _ => None,
        }
    }
}

/// inference-perf's poll period while waiting for a stage (`await sleep(1)`).
pub const POLL: Micros = 1_000_000;
/// `LoadConfig.interval` default: sleep between stages.
pub const INTERVAL: Micros = 1_000_000;
/// A stage's timer starts this long after the stage begins (`time.perf_counter() + 1`).
pub const LEAD: Micros = 1_000_000;

impl Ladder {
    /// llm-d's optimized-baseline ladder (`benchmark-templates/shared_prefix.yaml` @9084370b):
    /// warm-up 15 QPS × 50 s, then 3×20, 10×20, 15×20, 20×38, 22×34, 25×30, 30×25, 35×21, 40×38,
    /// 43×36, 46×33, 49×30, 52×29, 55×27, 57×26, 60×25 (rate × seconds).
    pub fn llmd() -> Ladder {
        Ladder::parse_stages(
            "3x20,10x20,15x20,20x38,22x34,25x30,30x25,35x21,40x38,43x36,46x33,49x30,52x29,55x27,57x26,60x25",
        )
        .map(|stages| Ladder {
            warmup: vec![Stage {
                rate: 15.0,
                duration_s: 50.0,
            }],
            stages,
        })
        .expect("valid ladder")
    }

    /// `RATExSECONDS,RATExSECONDS,…` (e.g. `3x20,10x20`).
    pub fn parse_stages(s: &str) -> Result<Vec<Stage>, String> {
        if s.trim().is_empty() || s == "none" {
            return Ok(Vec::new());
        }
        s.split(',')
            .map(|part| {
                let (r, d) = part
                    .trim()
                    .split_once('x')
                    .ok_or_else(|| format!("stage {part:?}: want RATExSECONDS"))?;
                let rate: f64 = r.parse().map_err(|e| format!("stage {part:?}: {e}"))?;
                let duration_s: f64 = d.parse().map_err(|e| format!("stage {part:?}: {e}"))?;
                if !(rate > 0.0 && duration_s > 0.0 && rate.is_finite() && duration_s.is_finite()) {
                    return Err(format!("stage {part:?}: rate and duration must be > 0"));
                }
                Ok(Stage { rate, duration_s })
            })
            .collect()
    }

    /// `llm-d`, or stages as in [`Ladder::parse_stages`] with `warmup` stages before them.
    pub fn parse(spec: &str, warmup: Option<&str>) -> Result<Ladder, String> {
        let mut l = if spec == "llm-d" {
            Ladder::llmd()
        } else {
            Ladder {
                warmup: Vec::new(),
                stages: Ladder::parse_stages(spec)?,
            }
        };
        if let Some(w) = warmup {
            l.warmup = Ladder::parse_stages(w)?;
        }
        if l.stages.is_empty() {
            return Err("the ladder has no stages".into());
        }
        Ok(l)
    }

    /// Every stage in run order (warm-up first).
    pub fn all(&self) -> impl Iterator<Item = &Stage> {
        self.warmup.iter().chain(&self.stages)
    }
}

/// Where each stage's requests sit in [`Trace::arrivals`], and how stages follow each other.
#[derive(Clone, Debug, PartialEq)]
pub struct Staging {
    pub spans: Vec<StageSpan>,
    /// Stages reported (the rest are warm-up): `spans[warmup..]`.
    pub warmup: usize,
    pub drain: Drain,
}

/// One stage's requests: `arrivals[first..first + len]`; with [`Drain::Harness`] their `at` is the
/// offset from the stage's timer start, otherwise absolute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageSpan {
    pub first: usize,
    pub len: usize,
    pub stage: Stage,
}

impl Staging {
    /// Index of the stage request `id` belongs to.
    pub fn stage_of(&self, id: usize) -> usize {
        self.spans.partition_point(|s| s.first + s.len <= id)
    }

    /// With [`Drain::Harness`]: the next stage's timer start, given the previous stage's timer
    /// start and the instant its last request ended (poll ticks at `start − LEAD + k·POLL`).
    pub fn next_start(prev_start: Micros, last_end: Micros) -> Micros {
        let origin = prev_start.saturating_sub(LEAD);
        let k = last_end.saturating_sub(origin).div_ceil(POLL);
        origin + k * POLL + INTERVAL + LEAD
    }
}

/// Draws from Poisson(`mean`) by counting unit-rate exponential arrivals in `[0, mean)`.
fn poisson(mean: f64, rng: &mut impl Rng) -> u32 {
    let mut t = 0.0;
    let mut k = 0;
    loop {
        t += -(1.0 - rng.unit_f64()).ln();
        if t >= mean {
            return k;
        }
        k += 1;
    }
}

/// Send offsets (µs from the stage's timer start) of inference-perf's `PoissonLoadTimer` for `n`
/// requests at `rate`.
pub fn poisson_offsets(rate: f64, n: usize, rng: &mut impl Rng) -> Vec<Micros> {
    let mut out = Vec::with_capacity(n);
    let mut second = 0.0f64;
    while out.len() < n {
        let k = poisson(rate, rng) as usize;
        if k > 0 {
            let gaps: Vec<f64> = (0..k).map(|_| -(1.0 - rng.unit_f64()).ln()).collect();
            let sum: f64 = gaps.iter().sum();
            let mut t = second;
            for g in gaps {
                t += g / sum;
                if out.len() < n {
                    out.push((t * 1e6).round() as Micros);
                }
            }
        }
        second += 1.0;
    }
    out
}

/// The shared-prefix workload run through `ladder`: prompts built and shuffled once, each stage
/// cycling through them from the start, inference-perf Poisson times.
pub fn shared_prefix_trace(shape: &SharedPrefix, ladder: &Ladder, drain: Drain, block_tokens: u32, seed: u64) -> Trace {
    let mut rng = SplitMix64::new(seed);
    let prompts = shape.prompts(block_tokens, &mut rng);
    let mut order: Vec<u32> = (0..prompts.len() as u32).collect();
    picker_core::rng::shuffle(&mut order, &mut rng);
    let mut arrivals = Vec::new();
    let mut spans = Vec::new();
    let mut start: Micros = LEAD;
    for stage in ladder.all() {
        let n = stage.requests();
        let offsets = poisson_offsets(stage.rate, n, &mut rng);
        spans.push(StageSpan {
            first: arrivals.len(),
            len: n,
            stage: *stage,
        });
        for (j, off) in offsets.into_iter().enumerate() {
            arrivals.push(Arrival {
                at: if drain == Drain::Harness { off } else { start + off },
                prompt: order[j % order.len()],
                output_tokens: shape.output_tokens,
                priority: 0,
                adapter: None,
            });
        }
        // Back to back; a stage whose `int(r·d)` requests overran `d` pushes the next one later
        // (inference-perf's generator would overlap them by a few requests).
        let last = arrivals.last().map_or(start, |a: &Arrival| a.at);
        start = (start + (stage.duration_s * 1e6) as Micros).max(last);
    }
    Trace {
        model: MODEL.into(),
        adapters: Vec::new(),
        prompts,
        arrivals,
        next: Vec::new(),
        staging: Some(Staging {
            spans,
            warmup: ladder.warmup.len(),
            drain,
        }),
    }
}

/// Cluster settings for a ladder: `servers` of `params`, open-loop client, no time cap other than
/// one simulated hour after the last stage could have ended.
pub fn sim_config(servers: usize, params: ServerParams, seed: u64) -> SimConfig {
    SimConfig {
        servers,
        params,
        warmup: 0,
        horizon: 48 * 3_600 * 1_000_000,
        drain_cap: 3_600 * 1_000_000,
        max_concurrency: None,
        ..SimConfig::llmd_cluster(1, 0, seed)
    }
}

/// Runs `trace` under each policy on its own thread; results in policy order.
pub fn run_policies(cfg: &SimConfig, trace: &Trace, policies: &[PolicySpec]) -> Vec<RunResult> {
    std::thread::scope(|s| {
        let handles: Vec<_> = policies.iter().map(|p| s.spawn(move || run(cfg, trace, p))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread panicked"))
            .collect()
    })
}

/// Markdown table of one policy's stages.
pub fn markdown(policy: &str, reports: &[StageReport]) -> String {
    let mut s = format!(
        "### {policy}\n\n| rate | s | requests | done | out tok/s | achieved rate | TTFT p50 s | TTFT p90 s | NTPOT p50 ms | stage span s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    );
    let f = |v: Option<f64>| v.map_or("—".to_string(), |x| format!("{x:.2}"));
    for r in reports {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {} | {} | {} | {:.0}–{:.0} |\n",
            r.rate,
            r.duration_s,
            r.requests,
            r.successes,
            r.output_tok_s,
            r.achieved_rate,
            f(r.ttft_p50),
            f(r.ttft_p90),
            r.ntpot_p50.map_or("—".to_string(), |x| format!("{:.1}", x * 1e3)),
            r.span_s.0,
            r.span_s.1
        ));
    }
    s.push('\n');
    s
}

/// `numpy.percentile` (default linear interpolation) of sorted `v`; `None` when empty.
pub fn np_percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// One stage's figures, as inference-perf's `stage_N_lifecycle_metrics.json` has them.
#[derive(Clone, Debug, PartialEq)]
pub struct StageReport {
    pub rate: f64,
    pub duration_s: f64,
    pub requests: usize,
    pub successes: usize,
    /// Output tokens of successes / (latest end − earliest start), tokens/s.
    pub output_tok_s: f64,
    /// Requests / (latest start − earliest start).
    pub achieved_rate: f64,
    /// `None`: empty latency summary (0.0 in llm-d's table).
    pub ttft_p50: Option<f64>,
    pub ttft_p90: Option<f64>,
    /// Normalised time per output token, p50, seconds/token.
    pub ntpot_p50: Option<f64>,
    /// Earliest start and latest end of the stage's requests, seconds of simulated time.
    pub span_s: (f64, f64),
}

/// Per-stage figures of a staged run (reported stages only, warm-up excluded).
pub fn stage_reports(trace: &Trace, r: &RunResult) -> Vec<StageReport> {
    let Some(st) = &trace.staging else { return Vec::new() };
    st.spans[st.warmup..]
        .iter()
        .map(|span| {
            let recs = &r.records[span.first..span.first + span.len];
            let mut min_start = Micros::MAX;
            let mut max_start = 0;
            let mut max_end = 0;
            let mut out_tokens = 0u64;
            let mut ttft = Vec::new();
            let mut ntpot = Vec::new();
            let mut successes = 0;
            for (i, x) in recs.iter().enumerate() {
                let start = x.sent;
                min_start = min_start.min(start);
                max_start = max_start.max(start);
                let out = trace.arrivals[span.first + i].output_tokens as u64;
                match (x.first_token, x.finish) {
                    (Some(f), Some(e)) if !x.shed && !x.aborted => {
                        successes += 1;
                        max_end = max_end.max(e);
                        out_tokens += out;
                        if out > 1 {
                            ttft.push((f - start) as f64 / 1e6);
                        }
                        ntpot.push((e - start) as f64 / 1e6 / out.max(1) as f64);
                    }
                    // A failure ends when it failed; podsim records none, so use its start.
                    _ => max_end = max_end.max(start),
                }
            }
            ttft.sort_by(f64::total_cmp);
            ntpot.sort_by(f64::total_cmp);
            let total = max_end.saturating_sub(min_start) as f64 / 1e6;
            let send = max_start.saturating_sub(min_start) as f64 / 1e6;
            StageReport {
                rate: span.stage.rate,
                duration_s: span.stage.duration_s,
                requests: span.len,
                successes,
                output_tok_s: if total > 0.0 { out_tokens as f64 / total } else { 0.0 },
                achieved_rate: if send > 0.0 { span.len as f64 / send } else { 0.0 },
                ttft_p50: np_percentile(&ttft, 50.0),
                ttft_p90: np_percentile(&ttft, 90.0),
                ntpot_p50: np_percentile(&ntpot, 50.0),
                span_s: (min_start as f64 / 1e6, max_end as f64 / 1e6),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llmd_ladder_is_the_published_one() {
        let l = Ladder::llmd();
        assert_eq!(
            l.warmup,
            vec![Stage {
                rate: 15.0,
                duration_s: 50.0
            }]
        );
        assert_eq!(l.stages.len(), 16);
        assert_eq!(
            l.stages[0],
            Stage {
                rate: 3.0,
                duration_s: 20.0
            }
        );
        assert_eq!(
            l.stages[15],
            Stage {
                rate: 60.0,
                duration_s: 25.0
            }
        );
        let total: usize = l.all().map(Stage::requests).sum();
        assert_eq!(
            total,
            750 + 60 + 200 + 300 + 760 + 748 + 750 + 750 + 735 + 1520 + 1548 + 1518 + 1470 + 1508 + 1485 + 1482 + 1500
        );
        assert!(Ladder::parse("3x20,bad", None).is_err());
        assert_eq!(Ladder::parse("2x5", Some("1x3")).unwrap().warmup.len(), 1);
    }

    #[test]
    fn poisson_timer_sends_exactly_n_over_about_the_duration() {
        let mut rng = SplitMix64::new(7);
        let off = poisson_offsets(60.0, 1500, &mut rng);
        assert_eq!(off.len(), 1500);
        assert!(off.windows(2).all(|w| w[0] <= w[1]));
        let span = *off.last().unwrap() as f64 / 1e6;
        assert!((23.0..27.0).contains(&span), "{span}");
        // Rate 3: 60 requests; slots with no arrival are skipped, not compressed.
        let off = poisson_offsets(3.0, 60, &mut SplitMix64::new(1));
        assert!((15.0..26.0).contains(&(*off.last().unwrap() as f64 / 1e6)));
    }

    #[test]
    fn harness_polls_once_a_second_then_waits_two() {
        // Timer started at 10 s (stage began at 9 s); last request ended at 31.2 s: seen at the
        // poll of 32 s, interval to 33 s, next timer at 34 s.
        assert_eq!(Staging::next_start(10_000_000, 31_200_000), 34_000_000);
        assert_eq!(Staging::next_start(10_000_000, 32_000_000), 34_000_000);
    }

    #[test]
    fn numpy_percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(np_percentile(&v, 50.0), Some(2.5));
        assert!((np_percentile(&v, 90.0).unwrap() - 3.7).abs() < 1e-12);
        assert_eq!(np_percentile(&[], 50.0), None);
    }

    #[test]
    fn every_stage_restarts_the_prompt_cycle() {
        let shape = SharedPrefix {
            groups: 4,
            users_per_group: 2,
            system_tokens: 32,
            question_tokens: 16,
            output_tokens: 3,
        };
        let l = Ladder::parse("2x5,2x5", Some("1x4")).unwrap();
        let t = shared_prefix_trace(&shape, &l, Drain::Harness, 16, 3);
        let st = t.staging.as_ref().unwrap();
        assert_eq!(st.spans.iter().map(|s| s.len).collect::<Vec<_>>(), [4, 10, 10]);
        let prompts = |k: usize| -> Vec<u32> {
            let s = st.spans[k];
            t.arrivals[s.first..s.first + s.len].iter().map(|a| a.prompt).collect()
        };
        assert_eq!(prompts(1), prompts(2));
        assert_eq!(prompts(1)[..4], prompts(0)[..]);
        assert_eq!(prompts(1)[8..], prompts(1)[..2], "cycles through the 8 prompts");
        assert_eq!(st.stage_of(3), 0);
        assert_eq!(st.stage_of(4), 1);
        assert_eq!(st.stage_of(23), 2);
    }
}
