//! An upper bound on what any routing policy can get from the simulated cluster.
//!
//! The `oracle` policy (true cache contents, no lag, greedy scoring) was reported as if it were
//! the best possible; it is not (shared-prefix, client cap 800, 60 QPS, seeds 1–4: 10,101 out
//! tok/s where `gie-default` generated 13,280). This module replaces it with a bound derived from the
//! trace and the engine's own step-time model ([`crate::engine::StepModel`]), which no policy can
//! beat, whatever it knows:
//!
//! **Step-time floors.** The roofline step time is non-decreasing in everything a step contains
//! (sequences, new tokens, context read, attention pairs), so a step is never shorter than the
//! same step with only part of its work.
//!
//! * *One output token of request i* needs one step in which i's sequence decodes with context
//!   ≥ its prompt `Pᵢ`: `t₁ᵢ = step(1 sequence, context Pᵢ)`; its tokens come from distinct steps
//!   of one server, so they are at least `t₁ᵢ` apart.
//! * *Prefill of request i*: a request can reuse at most the blocks of its prompt that an
//!   earlier-sent request's prompt also had (chained hashes: a block matches only with its whole
//!   prefix), and vLLM always computes at least the last block's tokens (`(P − 1) / 16` blocks
//!   cached at most, as [`crate::model_server`] admits); the `uᵢ` uncached tokens take at least
//!   the steps of `uᵢ` cut into `max_num_batched_tokens` chunks, each alone on an idle server.
//!   So `TTFTᵢ ≥ Σ chunk steps` and `E2Eᵢ ≥ TTFTᵢ + (outᵢ − 1)·t₁ᵢ`, with infinite KV, no queue,
//!   no metric lag, and the best server every time.
//! * *A server's output rate*: a step that yields G tokens schedules ≥ G sequences (each yields
//!   one: a decode, or the chunk completing a prefill), each with ≥ one new token and ≥ `P_min`
//!   tokens of context and KV read (a completing chunk `(n, s)` has `n(s + (n+1)/2) ≥ s + n ≥
//!   P_min` attention pairs), so it lasts at least `step(G sequences, G·P_min context)`; G ≤
//!   `max_num_seqs`. One server therefore generates at most `cap = max over G ≤ max_num_seqs of
//!   G / step(G, G·P_min)` tokens/s (the *whole* KV read by every sequence, as the engine
//!   charges it; `--shared-kv-read-once` charges nothing for the context read). For the default
//!   engine and 7,200-token prompts: ≈ 2,250 tok/s at G = 1,024 (≈ 18,000 for 8 servers). This
//!   ignores prefill work entirely and the KV limit on the batch (perfect prefix sharing), so it
//!   is loose when prompts are long and outputs short.
//!
//! **What is bounded** (for each trace, i.e. each rate and seed):
//!
//! * *Output tok/s in a `bench` window `[W, H)`*: ≤ min(Σᵢ tokens request i can produce before
//!   H — at most `outᵢ` and at most those after `aᵢ + TTFTᵢ` spaced `t₁ᵢ` apart —, N × (cap × (H −
//!   W) + max_num_seqs)) / (H − W) (the `max_num_seqs` term is one step straddling W). This is
//!   the analytic ceiling `min(offered load × output tokens, servers × decode ceiling)` made
//!   exact for a finite window.
//! * *Output tok/s of a ladder stage* (inference-perf: stage tokens / (last end − first send)):
//!   the span is at least `maxᵢ(sendᵢ + E2Eᵢ) − minᵢ sendᵢ` (sends are fixed offsets of the
//!   stage start) and at least `(tokens − N·max_num_seqs) / (N·cap)`.
//! * *TTFT and E2E percentiles*: each request's value is ≥ its floor, so every order statistic
//!   over the same requests is ≥ the same order statistic of the floors (nearest-rank and numpy's
//!   interpolation alike). This holds for a policy that completes every request of the set (no
//!   shedding, no failures); a policy that sheds drops requests from its own percentiles. In
//!   closed-loop workloads the set of requests in a window depends on the policy, so only the
//!   smallest floor over the trace is reported there.
//!
//! *Assumption*: a request can only reuse prompts sent before it. That holds when requests reach
//! the servers in the order they were sent (ideal and in-proxy deployments, round-robin); a
//! central EPP's random hop can let a later request overtake an earlier one, which could then
//! reuse its blocks. The bound's TTFT floors are then not proven for such a request, though the
//! overtaken request has paid the hop.

use std::collections::HashSet;

use crate::calib::{micros, Micros, ServerParams};
use crate::ladder::{np_percentile, StageReport};
use crate::report::{percentile, Summary};
use crate::sim::SimConfig;
use crate::workload::{Trace, UNTIMED};

/// The floors of one request, seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestFloor {
    /// Prompt tokens that no earlier request had (at least the last block's).
    pub uncached: u32,
    pub ttft: f64,
    /// Shortest step that decodes one of its tokens.
    pub token_step: f64,
    pub e2e: f64,
    /// Server time its prefill and one of its decoded tokens occupy at least, by the two
    /// additive readings of a step ([`Work`]): `[0]` compute-side, `[1]` memory-side.
    pub prefill_work: [f64; 2],
    pub token_work: [f64; 2],
}

/// Two additive lower bounds on a step's duration: the roofline's `max(compute, memory)` terms
/// are each at least one branch, and the remaining terms (all-reduce, per-sequence, per-step)
/// add up over what the step holds, so a step lasts at least the sum, over its sequences, of
///
/// * `[0]`: linear-layer and lm_head FLOPs + attention FLOPs (pairs + decode context) +
///   all-reduce + per-sequence overhead (the compute-side reading), or
/// * `[1]`: linear-layer and lm_head FLOPs + KV bytes read (decode context, prefill KV, new
///   tokens) + all-reduce + per-sequence overhead (the memory-side reading of attention).
///
/// Summed over a server's steps, each bounds the work a server can do in a given time.
#[derive(Clone, Copy, Debug)]
pub struct Work;

/// A step's duration as the simulator applies it (rounded to its microsecond clock, which is
/// monotone, so a floor stays a floor), seconds.
fn sim_step(seconds: f64) -> f64 {
    micros(seconds) as f64 / 1e6
}

/// Step time of `seqs` sequences decoding with `ctx` tokens of context in all.
fn decode_step(p: &ServerParams, seqs: u32, ctx: u64) -> f64 {
    let read = if p.step.shared_kv_read_once { 0 } else { ctx };
    sim_step(p.step.step_seconds_read(seqs, ctx, read, std::iter::empty()))
}

/// Per-request floors, in trace order (see the module docs).
pub fn floors(trace: &Trace, p: &ServerParams) -> Vec<RequestFloor> {
    let bt = p.block_tokens.max(1);
    let budget = p.max_batched_tokens.max(1);
    // Open loop (and ladders): requests are sent in trace order, so only earlier prompts count.
    // Closed loop: send order depends on the run, so any other request's prompt counts.
    let open = trace.next.is_empty();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut count: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    if !open {
        for a in &trace.arrivals {
            for h in trace.prompts[a.prompt as usize].hashes.iter() {
                *count.entry(*h).or_default() += 1;
            }
        }
    }
    trace
        .arrivals
        .iter()
        .map(|a| {
            let prompt = &trace.prompts[a.prompt as usize];
            let tokens = prompt.tokens.max(1);
            let reusable = if open {
                prompt.hashes.iter().take_while(|h| seen.contains(h)).count()
            } else {
                prompt.hashes.iter().take_while(|h| count[h] >= 2).count()
            };
            if open {
                seen.extend(prompt.hashes.iter().copied());
            }
            let cached = (reusable as u32).min((tokens - 1) / bt) * bt;
            let uncached = tokens - cached;
            let m = &p.step;
            let mut ttft = 0.0;
            let mut prefill_work = [0.0; 2];
            let (mut done, mut left) = (cached, uncached);
            while left > 0 {
                let n = left.min(budget);
                ttft += sim_step(m.step_seconds_read(1, 0, 0, std::iter::once((n, done))));
                let (nf, sf) = (n as f64, done as f64);
                let common = m.linear_flops_per_token * nf / m.flops + m.allreduce_s_per_token * nf + m.per_seq_s;
                prefill_work[0] += common + m.attn_flops_per_pair * nf * (sf + (nf + 1.0) / 2.0) / m.flops;
                prefill_work[1] += common + m.kv_bytes_per_token * (sf + 2.0 * nf) / m.bandwidth;
                done += n;
                left -= n;
            }
            for w in &mut prefill_work {
                *w += m.lm_head_flops_per_seq / m.flops;
            }
            let ctx = tokens as f64;
            let read = if m.shared_kv_read_once { 0.0 } else { ctx };
            let common =
                (m.linear_flops_per_token + m.lm_head_flops_per_seq) / m.flops + m.allreduce_s_per_token + m.per_seq_s;
            let token_work = [
                common + m.attn_flops_per_pair * ctx / m.flops,
                common + m.kv_bytes_per_token * (read + 1.0) / m.bandwidth,
            ];
            let token_step = decode_step(p, 1, tokens as u64);
            RequestFloor {
                uncached,
                ttft,
                token_step,
                e2e: ttft + a.output_tokens.max(1).saturating_sub(1) as f64 * token_step,
                prefill_work,
                token_work,
            }
        })
        .collect()
}

/// The most output tokens per second one server can generate when every prompt has at least
/// `min_prompt` tokens, and the batch size that reaches it.
pub fn server_rate_cap(p: &ServerParams, min_prompt: u32) -> (f64, u32) {
    (1..=p.max_seqs.max(1))
        .map(|g| (g as f64 / decode_step(p, g, g as u64 * min_prompt as u64), g))
        .fold((0.0, 1), |best, x| if x.0 > best.0 { x } else { best })
}

fn min_prompt(trace: &Trace) -> u32 {
    trace
        .arrivals
        .iter()
        .map(|a| trace.prompts[a.prompt as usize].tokens)
        .min()
        .unwrap_or(1)
        .max(1)
}

/// The most value `(value, cost)` items fit in `budget`, items divisible (an upper bound on the
/// same choice in whole items).
fn fractional_knapsack(items: &mut [(f64, f64)], budget: f64) -> f64 {
    items.sort_by(|a, b| (b.0 * a.1).total_cmp(&(a.0 * b.1)));
    let (mut value, mut left) = (0.0, budget);
    for &(v, c) in items.iter() {
        if c <= left {
            value += v;
            left -= c;
        } else {
            value += v * left / c;
            break;
        }
    }
    value
}

/// The bound as a `bench` row: TTFT and E2E columns are floors, out tok/s is a ceiling; the
/// other columns are not bounded (prefix hit and input tok/s are NaN, printed "-").
pub fn window_summary(name: &str, qps: f64, trace: &Trace, cfg: &SimConfig) -> Summary {
    let f = floors(trace, &cfg.params);
    let (cap, _) = server_rate_cap(&cfg.params, min_prompt(trace));
    let (w, h) = (cfg.warmup, cfg.horizon);
    let window_s = h.saturating_sub(w) as f64 / 1e6;
    let mut tokens = 0.0;
    let mut ttft = Vec::new();
    let mut e2e = Vec::new();
    // (tokens it can produce in the window, server time they take at least), per reading.
    let mut items: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for (a, fl) in trace.arrivals.iter().zip(&f) {
        let out = a.output_tokens.max(1) as f64;
        let first = if a.at == UNTIMED { 0.0 } else { a.at as f64 / 1e6 } + fl.ttft;
        let end = h as f64 / 1e6;
        if first < end {
            let k = out.min(((end - first) / fl.token_step).floor() + 1.0);
            tokens += k;
            // Sent in the window: its prefill is in the window too. Before it: it may be done.
            let sent_in_window = a.at != UNTIMED && a.at >= w;
            for (j, list) in items.iter_mut().enumerate() {
                let prefill = if sent_in_window { fl.prefill_work[j] } else { 0.0 };
                list.push((k, prefill + (k - 1.0) * fl.token_work[j]));
            }
        }
        if a.at != UNTIMED && a.at >= w && a.at < h {
            ttft.push(fl.ttft);
            e2e.push(fl.e2e);
        }
    }
    // Server time in the window. A request sent in the window has all its prefill there; one
    // step per server may straddle the window's start: its tokens (≤ max_num_seqs) are counted
    // free below instead of charged. Steps are rounded to the simulator's microsecond: each may
    // be up to 0.5 µs shorter.
    let rounding = window_s / cfg.params.min_step_s() * 0.5e-6;
    let work_budget = cfg.servers as f64 * (window_s + rounding);
    let by_work = items
        .iter_mut()
        .map(|list| fractional_knapsack(list, work_budget))
        .fold(f64::INFINITY, f64::min)
        + cfg.servers as f64 * cfg.params.max_seqs as f64;
    if !trace.next.is_empty() {
        // Closed loop: which requests fall in the window depends on the run.
        let lo = |v: fn(&RequestFloor) -> f64| f.iter().map(v).fold(f64::INFINITY, f64::min);
        let (t, e) = (lo(|x| x.ttft), lo(|x| x.e2e));
        ttft = vec![t];
        e2e = vec![e];
    }
    ttft.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);
    let servers = cfg.servers as f64;
    let capacity = servers * (cap * window_s + cfg.params.max_seqs as f64);
    let in_window = trace
        .arrivals
        .iter()
        .filter(|a| a.at != UNTIMED && a.at >= w && a.at < h)
        .count();
    Summary {
        policy: name.to_string(),
        qps,
        requests: in_window,
        completed: in_window,
        shed: 0,
        failed: 0,
        ttft_p50: percentile(&ttft, 50.0),
        ttft_p90: percentile(&ttft, 90.0),
        ttft_p99: percentile(&ttft, 99.0),
        e2e_p50: percentile(&e2e, 50.0),
        e2e_p90: percentile(&e2e, 90.0),
        output_tok_s: if window_s > 0.0 {
            tokens.min(capacity).min(by_work) / window_s
        } else {
            0.0
        },
        input_tok_s: f64::NAN,
        hit_rate: f64::NAN,
        preemptions: 0,
    }
}

/// The bound for each reported stage of a staged (ladder) trace, in [`crate::ladder`]'s terms:
/// TTFT percentiles are floors, out tok/s a ceiling; NTPOT is not bounded (`None`).
pub fn stage_reports(trace: &Trace, cfg: &SimConfig) -> Vec<StageReport> {
    let Some(st) = &trace.staging else { return Vec::new() };
    let f = floors(trace, &cfg.params);
    let (cap, _) = server_rate_cap(&cfg.params, min_prompt(trace));
    let servers = cfg.servers as f64;
    st.spans[st.warmup..]
        .iter()
        .map(|span| {
            let range = span.first..span.first + span.len;
            let arrivals = &trace.arrivals[range.clone()];
            let fl = &f[range];
            // With drained stages `at` is the offset from the stage's timer start; otherwise
            // absolute. Either way sends differ by the same amounts.
            let first: Micros = arrivals.iter().map(|a| a.at).min().unwrap_or(0);
            let last_send: Micros = arrivals.iter().map(|a| a.at).max().unwrap_or(0);
            let tokens: f64 = arrivals.iter().map(|a| a.output_tokens as f64).sum();
            let e2e_span = arrivals
                .iter()
                .zip(fl)
                .map(|(a, x)| (a.at - first) as f64 / 1e6 + x.e2e)
                .fold(0.0, f64::max);
            // The stage's work happens after its first send, on `servers` servers.
            let cap_span = tokens / (servers * cap);
            let work: f64 = (0..2)
                .map(|j| {
                    arrivals
                        .iter()
                        .zip(fl)
                        .map(|(a, x)| {
                            x.prefill_work[j] + a.output_tokens.max(1).saturating_sub(1) as f64 * x.token_work[j]
                        })
                        .sum::<f64>()
                })
                .fold(0.0, f64::max);
            let span_s = e2e_span
                .max(cap_span)
                .max(work / servers * (1.0 - 0.5e-6 / cfg.params.min_step_s()));
            let mut ttft: Vec<f64> = arrivals
                .iter()
                .zip(fl)
                .filter(|(a, _)| a.output_tokens > 1)
                .map(|(_, x)| x.ttft)
                .collect();
            ttft.sort_by(f64::total_cmp);
            let send = (last_send - first) as f64 / 1e6;
            StageReport {
                rate: span.stage.rate,
                duration_s: span.stage.duration_s,
                requests: span.len,
                successes: span.len,
                output_tok_s: if span_s > 0.0 { tokens / span_s } else { 0.0 },
                achieved_rate: if send > 0.0 { span.len as f64 / send } else { 0.0 },
                ttft_p50: np_percentile(&ttft, 50.0),
                ttft_p90: np_percentile(&ttft, 90.0),
                ntpot_p50: None,
                span_s: (0.0, span_s),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySpec;
    use crate::report::Summary;
    use crate::sim::run;
    use crate::workload::SharedPrefix;

    #[test]
    fn floors_follow_reuse_and_the_engine() {
        let p = ServerParams::default();
        let shape = SharedPrefix {
            groups: 2,
            users_per_group: 2,
            system_tokens: 512,
            question_tokens: 256,
            output_tokens: 10,
        };
        let mut trace = shape.trace(1.0, 1, 16, 1);
        let arrival = |at, prompt| crate::workload::Arrival {
            at,
            prompt,
            output_tokens: 10,
            priority: 0,
            adapter: None,
        };
        trace.arrivals = vec![arrival(0, 0), arrival(1, 0), arrival(2, 1)];
        let f = floors(&trace, &p);
        let tokens = trace.prompts[0].tokens;
        assert_eq!(f[0].uncached, tokens, "nothing seen before");
        assert_eq!(f[1].uncached, 16, "the same prompt: all but the last block");
        assert!(f[0].ttft > f[1].ttft);
        assert!((f[0].e2e - f[0].ttft - 9.0 * f[0].token_step).abs() < 1e-12);
        // A decode step never beats the engine's shortest step.
        assert!(f[0].token_step >= p.min_step_s());
        let (cap, g) = server_rate_cap(&p, 7200);
        assert!(cap > 1000.0 && cap < 4000.0 && g > 1, "{cap} tok/s at {g}");
    }

    /// The bound bounds: no standard policy beats it at any rate of a small run.
    #[test]
    fn no_policy_beats_the_bound() {
        let cfg = SimConfig {
            servers: 4,
            ..SimConfig::llmd_cluster(20, 5, 1)
        };
        let shape = SharedPrefix {
            groups: 12,
            users_per_group: 3,
            system_tokens: 2000,
            question_tokens: 200,
            output_tokens: 50,
        };
        for qps in [2.0, 8.0, 30.0] {
            let trace = shape.trace(qps, cfg.horizon, 16, 42);
            let b = window_summary("bound", qps, &trace, &cfg);
            let mut names: Vec<String> = PolicySpec::standard().into_iter().map(|p| p.name).collect();
            names.extend(["oracle", "wasm-epp-default@2x2+relay:0", "gie-default+epp"].map(String::from));
            for name in names {
                let r = run(&cfg, &trace, &PolicySpec::parse(&name).unwrap());
                let s = Summary::of(&name, qps, &r);
                assert!(
                    s.output_tok_s <= b.output_tok_s,
                    "{name} at {qps}: {} > {}",
                    s.output_tok_s,
                    b.output_tok_s
                );
                for (got, floor) in [
                    (s.ttft_p50, b.ttft_p50),
                    (s.ttft_p90, b.ttft_p90),
                    (s.ttft_p99, b.ttft_p99),
                    (s.e2e_p50, b.e2e_p50),
                    (s.e2e_p90, b.e2e_p90),
                ] {
                    assert!(got >= floor, "{name} at {qps}: {got} < {floor}");
                }
            }
        }
    }
}
