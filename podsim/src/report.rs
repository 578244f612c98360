//! Summaries of runs: percentiles, the markdown tables and CSV (charts: [`crate::chart`]).

use std::fmt::Write as _;

use crate::bench::LadderRun;
use crate::sim::RunResult;

/// What one (policy, rate) run measured, over requests arriving in `[warmup, horizon)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub policy: String,
    pub qps: f64,
    /// Requests in the measurement window.
    pub requests: usize,
    pub completed: usize,
    pub shed: usize,
    /// Dropped by a server (could never fit) or still running at the drain cap.
    pub failed: usize,
    pub ttft_p50: f64,
    pub ttft_p90: f64,
    pub ttft_p99: f64,
    pub e2e_p50: f64,
    pub e2e_p90: f64,
    /// Output tokens per second generated during the window.
    pub output_tok_s: f64,
    /// Prompt tokens per second (cached or not) of requests whose prefill finished in the window
    /// (inference-perf's input tokens per second).
    pub input_tok_s: f64,
    /// Prompt tokens served from the prefix cache / prompt tokens looked up (whole run).
    pub hit_rate: f64,
    pub preemptions: u64,
}

/// Nearest-rank percentile of sorted `v` (`q` in 0..=100); NaN when empty.
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

impl Summary {
    pub fn of(policy: &str, qps: f64, r: &RunResult) -> Summary {
        let in_window: Vec<_> = r
            .records
            .iter()
            .filter(|x| x.arrival >= r.warmup && x.arrival < r.horizon)
            .collect();
        let mut ttft: Vec<f64> = Vec::new();
        let mut e2e: Vec<f64> = Vec::new();
        let (mut shed, mut failed, mut completed) = (0, 0, 0);
        for x in &in_window {
            if x.shed {
                shed += 1;
                continue;
            }
            match (x.first_token, x.finish) {
                (Some(f), Some(e)) => {
                    completed += 1;
                    ttft.push((f - x.sent) as f64 / 1e6);
                    e2e.push((e - x.sent) as f64 / 1e6);
                }
                _ => failed += 1,
            }
        }
        ttft.sort_by(f64::total_cmp);
        e2e.sort_by(f64::total_cmp);
        Summary {
            policy: policy.to_string(),
            qps,
            requests: in_window.len(),
            completed,
            shed,
            failed,
            ttft_p50: percentile(&ttft, 50.0),
            ttft_p90: percentile(&ttft, 90.0),
            ttft_p99: percentile(&ttft, 99.0),
            e2e_p50: percentile(&e2e, 50.0),
            e2e_p90: percentile(&e2e, 90.0),
            output_tok_s: if r.window == 0 {
                0.0
            } else {
                r.window_tokens as f64 / (r.window as f64 / 1e6)
            },
            input_tok_s: if r.window == 0 {
                0.0
            } else {
                r.window_prompt_tokens as f64 / (r.window as f64 / 1e6)
            },
            hit_rate: if r.query_tokens == 0 {
                0.0
            } else {
                r.hit_tokens as f64 / r.query_tokens as f64
            },
            preemptions: r.preemptions,
        }
    }
}

/// Seconds with a precision that suits the magnitude (stable text for snapshot tests).
fn secs(s: f64) -> String {
    if s.is_nan() {
        "-".into()
    } else if s < 10.0 {
        format!("{s:.3}")
    } else {
        format!("{s:.1}")
    }
}

/// One markdown table per rate, one row per policy.
pub fn markdown(title: &str, rows: &[Summary]) -> String {
    markdown_in(title, rows, "QPS")
}

/// [`markdown`] with the rate in `unit` (`QPS`, or `concurrency` for closed-loop workloads).
pub fn markdown_in(title: &str, rows: &[Summary], unit: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {title}\n");
    let mut rates: Vec<f64> = rows.iter().map(|r| r.qps).collect();
    rates.dedup();
    for q in rates {
        let _ = writeln!(out, "### {q} {unit}\n");
        let _ = writeln!(
            out,
            "| policy | req | done | shed | fail | TTFT p50 s | TTFT p90 s | TTFT p99 s | E2E p50 s | E2E p90 s | out tok/s | prefix hit | preempt |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in rows.iter().filter(|r| r.qps == q) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
                r.policy,
                r.requests,
                r.completed,
                r.shed,
                r.failed,
                secs(r.ttft_p50),
                secs(r.ttft_p90),
                secs(r.ttft_p99),
                secs(r.e2e_p50),
                secs(r.e2e_p90),
                r.output_tok_s,
                if r.hit_rate.is_nan() {
                    "-".to_string()
                } else {
                    format!("{:.1}%", r.hit_rate * 100.0)
                },
                r.preemptions
            );
        }
        if rows.iter().any(|r| r.qps == q && r.hit_rate.is_nan()) {
            let _ = writeln!(
                out,
                "\n`bound`: TTFT and E2E are floors no policy that completes every request can go under, out tok/s a ceiling (crate::bound); its other columns are not bounded."
            );
        }
        out.push('\n');
    }
    out
}

/// Mean of the finite values, NaN when there is none.
fn mean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        f64::NAN
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}

fn lo_hi(v: &[f64]) -> (f64, f64) {
    v.iter()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)))
}

/// Whether a split deployment is within `tol` of the reference at one stage: TTFT p90 at most
/// `(1 + tol)` × the reference's and out tok/s at least `(1 − tol)` × the reference's.
pub fn within(p90: f64, tok: f64, ref_p90: f64, ref_tok: f64, tol: f64) -> bool {
    p90 <= (1.0 + tol) * ref_p90 && tok >= (1.0 - tol) * ref_tok
}

/// The as-deployed tables of `bench --ladder`: per stage (rate), one row per policy with TTFT
/// p50/p90 and out tok/s as means over the seeds (p90 and tok/s with their range), out tok/s as a
/// share of the bound's ceiling, and TTFT p90 and tok/s as ratios to `reference` (one global
/// view). Then, for every `+relay` policy, the 5 % goal per rate against the same profile as one
/// view (`NAME+proxy`) when it ran, else against `reference`.
pub fn ladder_markdown(title: &str, runs: &[LadderRun], reference: &str, bound: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {title}\n");
    let mut policies: Vec<&str> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    for r in runs {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
        if !seeds.contains(&r.seed) {
            seeds.push(r.seed);
        }
    }
    let Some(stages) = runs.first().map(|r| r.stages.len()) else {
        return out;
    };
    // (policy, stage) → per-seed (p50, p90, tok/s)
    let values = |p: &str, k: usize| -> Vec<(u64, f64, f64, f64)> {
        runs.iter()
            .filter(|r| r.policy == p)
            .filter_map(|r| {
                r.stages.get(k).map(|s| {
                    (
                        r.seed,
                        s.ttft_p50.unwrap_or(f64::NAN),
                        s.ttft_p90.unwrap_or(f64::NAN),
                        s.output_tok_s,
                    )
                })
            })
            .collect()
    };
    let col =
        |v: &[(u64, f64, f64, f64)], f: fn(&(u64, f64, f64, f64)) -> f64| -> Vec<f64> { v.iter().map(f).collect() };
    let has_ref = policies.contains(&reference);
    let has_bound = policies.contains(&bound);
    for k in 0..stages {
        let st = &runs[0].stages[k];
        let _ = writeln!(
            out,
            "### rate {} ({} s, {} requests)\n",
            st.rate, st.duration_s, st.requests
        );
        let _ = writeln!(
            out,
            "| deployment | TTFT p50 s | TTFT p90 s (range) | out tok/s (range) | % of bound tok/s | p90 ÷ one view | tok/s ÷ one view | hit % |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let rv = values(reference, k);
        let (ref_p90, ref_tok) = (mean(&col(&rv, |x| x.2)), mean(&col(&rv, |x| x.3)));
        let bound_tok = mean(&col(&values(bound, k), |x| x.3));
        for p in &policies {
            let v = values(p, k);
            let (p50, p90, tok) = (col(&v, |x| x.1), col(&v, |x| x.2), col(&v, |x| x.3));
            let (m90, mtok) = (mean(&p90), mean(&tok));
            let (l90, h90) = lo_hi(&p90);
            let (ltok, htok) = lo_hi(&tok);
            let hit = mean(
                &runs
                    .iter()
                    .filter(|r| r.policy == *p)
                    .map(|r| r.hit_rate)
                    .collect::<Vec<_>>(),
            );
            let ratio = |a: f64, b: f64, on: bool| {
                if on && b > 0.0 && a.is_finite() {
                    format!("{:.2}", a / b)
                } else {
                    "-".into()
                }
            };
            let _ = writeln!(
                out,
                "| {p} | {} | {} ({}–{}) | {mtok:.0} ({ltok:.0}–{htok:.0}) | {} | {} | {} | {} |",
                secs(mean(&p50)),
                secs(m90),
                secs(l90),
                secs(h90),
                if has_bound && *p != bound {
                    format!("{:.0}", 100.0 * mtok / bound_tok)
                } else {
                    "-".into()
                },
                ratio(m90, ref_p90, has_ref && *p != bound),
                ratio(mtok, ref_tok, has_ref && *p != bound),
                if hit.is_nan() {
                    "-".into()
                } else {
                    format!("{:.1}", hit * 100.0)
                },
            );
        }
        out.push('\n');
    }
    if has_bound {
        let _ = writeln!(
            out,
            "`{bound}`: TTFT columns are floors, out tok/s a ceiling (crate::bound); means over seeds {seeds:?}.\n"
        );
    }
    for p in policies.iter().filter(|p| p.contains("+relay")) {
        // The same profile as one view when it ran (`NAME+proxy`), else `reference`.
        let own = format!("{}+proxy", p.split(['@', '+']).next().unwrap_or(p));
        let reference = if policies.contains(&own.as_str()) {
            own.as_str()
        } else {
            reference
        };
        if policies.contains(&reference) {
            let _ = writeln!(out, "### 5 % goal: {p} vs {reference}\n");
            let _ = writeln!(
                out,
                "| rate | p90 ÷ one view (mean) | tok/s ÷ one view (mean) | within 5 % (means) | seeds within 5 % | worst seed p90 ÷ | worst seed tok/s ÷ |"
            );
            let _ = writeln!(out, "|---:|---:|---:|---|---:|---:|---:|");
            let mut failing: Vec<f64> = Vec::new();
            for k in 0..stages {
                let (v, rv) = (values(p, k), values(reference, k));
                let (m90, mtok) = (mean(&col(&v, |x| x.2)), mean(&col(&v, |x| x.3)));
                let (r90, rtok) = (mean(&col(&rv, |x| x.2)), mean(&col(&rv, |x| x.3)));
                let ok = within(m90, mtok, r90, rtok, 0.05);
                if !ok {
                    failing.push(runs[0].stages[k].rate);
                }
                let mut seeds_ok = 0;
                let (mut worst90, mut worsttok) = (0.0f64, f64::INFINITY);
                for &(seed, _, p90, tok) in &v {
                    if let Some(&(_, _, q90, qtok)) = rv.iter().find(|x| x.0 == seed) {
                        seeds_ok += within(p90, tok, q90, qtok, 0.05) as usize;
                        worst90 = worst90.max(p90 / q90);
                        worsttok = worsttok.min(tok / qtok);
                    }
                }
                let _ = writeln!(
                    out,
                    "| {} | {:.3} | {:.3} | {} | {seeds_ok}/{} | {worst90:.3} | {worsttok:.3} |",
                    runs[0].stages[k].rate,
                    m90 / r90,
                    mtok / rtok,
                    if ok { "yes" } else { "**no**" },
                    v.len(),
                );
            }
            let _ = writeln!(
                out,
                "\n{p}: {}\n",
                if failing.is_empty() {
                    "within 5 % of one view at every rate (means over seeds)".to_string()
                } else {
                    format!("not within 5 % at rates {failing:?} (means over seeds)")
                }
            );
        }
    }
    out
}

/// The faithful baselines as deployed, `gie-default+epp` and `llm-d-optimized-baseline+epp`.
pub const DEPLOYED_BASELINES: [&str; 2] = ["gie-default+epp", "llm-d-optimized-baseline+epp"];

/// Ours against the faithful baselines as deployed: for every `wasm-epp-*` row and rate, TTFT
/// p90 and out tok/s (means over seeds) as ratios to the better baseline at that rate (the lower
/// p90, the higher tok/s), and whether ours is at least as good in both. Empty unless both
/// baselines ran.
pub fn baselines_markdown(runs: &[LadderRun]) -> String {
    let mut out = String::new();
    let mut policies: Vec<&str> = Vec::new();
    for r in runs {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    if !DEPLOYED_BASELINES.iter().all(|b| policies.contains(b)) {
        return out;
    }
    let Some(stages) = runs.first().map(|r| r.stages.len()) else {
        return out;
    };
    // Mean (TTFT p90, out tok/s) of a policy at stage k over the seeds.
    let means = |p: &str, k: usize| -> (f64, f64) {
        let v: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.policy == p)
            .filter_map(|r| {
                r.stages
                    .get(k)
                    .map(|s| (s.ttft_p90.unwrap_or(f64::NAN), s.output_tok_s))
            })
            .collect();
        (mean(&col2(&v, 0)), mean(&col2(&v, 1)))
    };
    for p in policies.iter().filter(|p| p.starts_with("wasm-epp")) {
        let _ = writeln!(out, "### {p} vs the faithful baselines as deployed\n");
        let _ = writeln!(
            out,
            "| rate | p90 ÷ best baseline | tok/s ÷ best baseline | at least as good in both |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---|");
        let mut losing: Vec<f64> = Vec::new();
        for k in 0..stages {
            let (m90, mtok) = means(p, k);
            let (g, l) = (means(DEPLOYED_BASELINES[0], k), means(DEPLOYED_BASELINES[1], k));
            let (b90, btok) = (g.0.min(l.0), g.1.max(l.1));
            let ok = m90 <= b90 && mtok >= btok;
            if !ok {
                losing.push(runs[0].stages[k].rate);
            }
            let _ = writeln!(
                out,
                "| {} | {:.3} | {:.3} | {} |",
                runs[0].stages[k].rate,
                m90 / b90,
                mtok / btok,
                if ok { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(
            out,
            "\n{p}: {}\n",
            if losing.is_empty() {
                "at least as good as both baselines at every rate (means over seeds)".to_string()
            } else {
                format!("behind the better baseline at rates {losing:?} (means over seeds)")
            }
        );
    }
    out
}

fn col2(v: &[(f64, f64)], i: usize) -> Vec<f64> {
    v.iter().map(|x| if i == 0 { x.0 } else { x.1 }).collect()
}

/// Every (seed, policy, stage) of a ladder plan as CSV.
pub fn ladder_csv(runs: &[LadderRun]) -> String {
    let mut out = String::from("seed,policy,rate,duration_s,requests,successes,output_tok_s,ttft_p50_s,ttft_p90_s,ntpot_p50_s,hit_rate,preemptions\n");
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.5}"));
    for r in runs {
        for s in &r.stages {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{:.1},{},{},{},{:.4},{}",
                r.seed,
                r.policy,
                s.rate,
                s.duration_s,
                s.requests,
                s.successes,
                s.output_tok_s,
                f(s.ttft_p50),
                f(s.ttft_p90),
                f(s.ntpot_p50),
                r.hit_rate,
                r.preemptions
            );
        }
    }
    out
}

pub fn csv(workload: &str, rows: &[Summary]) -> String {
    let mut out = String::from(
        "workload,policy,qps,requests,completed,shed,failed,ttft_p50_s,ttft_p90_s,ttft_p99_s,e2e_p50_s,e2e_p90_s,output_tok_s,input_tok_s,prefix_hit_rate,preemptions\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{workload},{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.1},{:.1},{:.4},{}",
            r.policy,
            r.qps,
            r.requests,
            r.completed,
            r.shed,
            r.failed,
            r.ttft_p50,
            r.ttft_p90,
            r.ttft_p99,
            r.e2e_p50,
            r.e2e_p90,
            r.output_tok_s,
            r.input_tok_s,
            r.hit_rate,
            r.preemptions
        );
    }
    out
}

/// Where a policy's throughput stops growing: the lowest rate at which its `metric` reaches
/// 95 % of the policy's best over the sweep. llm-d's catalog runs compare each router's
/// throughput at its own knee with round-robin's (`docs/epp.md`, "Published EPP performance
/// figures"); the blog does not define
/// the knee numerically, so this threshold is ours.
pub fn knee<'a>(rows: &'a [Summary], policy: &str, metric: fn(&Summary) -> f64) -> Option<&'a Summary> {
    let mine: Vec<&Summary> = rows.iter().filter(|r| r.policy == policy).collect();
    let best = mine.iter().map(|r| metric(r)).fold(0.0_f64, f64::max);
    mine.into_iter().find(|r| metric(r) >= 0.95 * best)
}

/// Per policy: throughput at every rate, and at the knee (see [`knee`]) as a multiple of
/// `baseline`'s throughput at its knee, next to llm-d's published ratio when given.
pub fn knee_table(rows: &[Summary], unit: &str, baseline: &str, published: Option<&str>) -> String {
    let mut out = String::new();
    let mut policies: Vec<&str> = Vec::new();
    for r in rows {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let mut rates: Vec<f64> = rows.iter().map(|r| r.qps).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let _ = writeln!(out, "### Throughput (input / output tok/s) and knee\n");
    let mut head = String::from("| policy |");
    let mut rule = String::from("|---|");
    for q in &rates {
        let _ = write!(head, " {q} {unit} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(
        out,
        "{head} knee | in tok/s at knee | × {baseline} | out tok/s at knee | × {baseline} |"
    );
    let _ = writeln!(out, "{rule}---:|---:|---:|---:|---:|");
    let input = |r: &Summary| r.input_tok_s;
    let output = |r: &Summary| r.output_tok_s;
    let base_in = knee(rows, baseline, input).map(|r| r.input_tok_s);
    let base_out = knee(rows, baseline, output).map(|r| r.output_tok_s);
    let ratio = |x: f64, b: Option<f64>| match b {
        Some(b) if b > 0.0 => format!("{:.2}", x / b),
        _ => "-".into(),
    };
    for p in policies {
        let mut line = format!("| {p} |");
        for q in &rates {
            match rows.iter().find(|r| r.policy == p && r.qps == *q) {
                Some(r) => {
                    let _ = write!(line, " {:.0} / {:.0} |", r.input_tok_s, r.output_tok_s);
                }
                None => line.push_str(" - |"),
            }
        }
        let (ki, ko) = (knee(rows, p, input), knee(rows, p, output));
        let _ = writeln!(
            out,
            "{line} {} | {:.0} | {} | {:.0} | {} |",
            ki.map_or("-".into(), |r| format!("{}", r.qps)),
            ki.map_or(f64::NAN, |r| r.input_tok_s),
            ki.map_or("-".into(), |r| ratio(r.input_tok_s, base_in)),
            ko.map_or(f64::NAN, |r| r.output_tok_s),
            ko.map_or("-".into(), |r| ratio(r.output_tok_s, base_out)),
        );
    }
    if let Some(p) = published {
        let _ = writeln!(out, "\nllm-d published (vs round-robin at the knee): {p}");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(policy: &str, qps: f64, p90: f64) -> Summary {
        Summary {
            policy: policy.into(),
            qps,
            requests: 10,
            completed: 10,
            shed: 0,
            failed: 0,
            ttft_p50: p90 / 2.0,
            ttft_p90: p90,
            ttft_p99: p90 * 2.0,
            e2e_p50: 1.0,
            e2e_p90: 2.0,
            output_tok_s: 100.0 * qps,
            input_tok_s: 700.0 * qps.min(4.0),
            hit_rate: 0.5,
            preemptions: 0,
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v, 99.0), 10.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn outputs_have_one_line_per_row() {
        let rows = vec![
            row("a", 1.0, 0.1),
            row("b", 1.0, 10.0),
            row("a", 5.0, 0.2),
            row("b", 5.0, f64::NAN),
        ];
        let md = markdown("t", &rows);
        assert_eq!(md.matches("| a |").count(), 2);
        assert!(md.contains("| b | 10 | 10 | 0 | 0 | 5.000 | 10.0 | 20.0 |"), "{md}");
        assert_eq!(csv("w", &rows).lines().count(), 5);
    }

    #[test]
    fn knee_is_the_first_rate_near_the_best_throughput() {
        let rows = vec![
            row("a", 1.0, 0.1),
            row("a", 4.0, 0.1),
            row("a", 5.0, 0.1),
            row("b", 1.0, 0.1),
        ];
        // input: 700, 2800, 2800 → knee at 4; output 100, 400, 500 → knee at 5.
        assert_eq!(knee(&rows, "a", |r| r.input_tok_s).map(|r| r.qps), Some(4.0));
        assert_eq!(knee(&rows, "a", |r| r.output_tok_s).map(|r| r.qps), Some(5.0));
        let t = knee_table(&rows, "QPS", "b", Some("x"));
        assert!(
            t.contains("| a | 700 / 100 | 2800 / 400 | 2800 / 500 | 4 | 2800 | 4.00 | 500 | 5.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| b | 700 / 100 | - | - | 1 | 700 | 1.00 | 100 | 1.00 |"),
            "{t}"
        );
    }
}
