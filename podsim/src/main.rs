//! `podsim` CLI. See the crate documentation (`src/lib.rs`) for what is simulated.
//!
//! ```text
//! podsim validate [--engine FILE] [--out DIR] [workload and ladder flags]
//! podsim ladder   [--engine FILE] [--policies a,b] [workload and ladder flags]
//!   workload: --servers N --groups N --prompts-per-group N --system-tokens N --question-tokens N
//!             --output-tokens N; ladder: --ladder llm-d|RATExSECS,… [--ladder-warmup RATExSECS,…|none]
//!             [--drain harness|none] [--seed N] [--shared-kv-read-once]
//! podsim bench [--engine FILE] --workload shared-prefix|sharegpt|bursts|multi-lora|code-gen|reasoning|b2b-saas [--quick]
//!              [--qps 3,10,60 | --concurrency 10,60] [--horizon S]
//!              [--warmup S] [--policies a,b@4x2] [--picker NAME[@WxR][+TAG]=JSON|@file] [--seed N] [--max-concurrency N]
//!              [--threads N] [--out DIR]
//!              [--ladder llm-d|RATExSECS,… [--ladder-warmup …|none] [--seeds 1,2,3,4] [--reference NAME]]
//!              [--decision-cost-ms X] [--relay-delay-ms X] [--relay-loss P] [--relay-interval-ms X]
//!              [--epp-hop-p50-ms X] [--epp-hop-p95-ms X] [--epp-capacity RPS]
//! ```
#![forbid(unsafe_code)]

use std::process::ExitCode;

use picker_core::Config;
use podsim::bench::{run_ladder_plan, run_plan, LadderPlan, Plan, WorkloadKind};
use podsim::chart;
use podsim::deploy::DeployParams;
use podsim::engine::EngineProfile;
use podsim::ladder::{self, Drain, Ladder};
use podsim::policy::{PolicyKind, PolicySpec};
use podsim::progress::Runs;
use podsim::report;
use podsim::validate;
use podsim::workload::SharedPrefix;

fn usage() -> &'static str {
    "usage: podsim validate [--engine FILE] [--out DIR] [WORKLOAD/LADDER FLAGS]\n       podsim ladder [--engine FILE] [--policies a,b] [WORKLOAD/LADDER FLAGS]\n         \
WORKLOAD/LADDER FLAGS: [--servers N] [--groups N] [--prompts-per-group N] [--system-tokens N] [--question-tokens N] \
[--output-tokens N] [--ladder llm-d|RATExSECS,...] [--ladder-warmup RATExSECS,...|none] [--drain harness|none] [--seed N] \
[--shared-kv-read-once]\n       \
podsim serve [--engine FILE] [--pods N] [--base-port P] [--speed X] [--model M]\n       podsim bench [--engine FILE] --workload shared-prefix|sharegpt|bursts|multi-lora|code-gen|reasoning|b2b-saas [--quick] \
[--qps 3,10,60 | --concurrency 10,60] [--horizon SECS] \
[--warmup SECS] [--policies NAME[@WxR][+TAG],...] [--picker NAME[@WxR][+TAG]=JSON|NAME[@WxR][+TAG]=@FILE]... [--seed N] [--max-concurrency N] [--threads N] [--out DIR] \
[--ladder llm-d|RATExSECS,... [--ladder-warmup RATExSECS,...|none] [--seeds 1,2,3,4] [--reference NAME]] \
[--decision-cost-ms X] [--relay-delay-ms X] [--relay-loss P] [--relay-interval-ms X] [--epp-hop-p50-ms X] [--epp-hop-p95-ms X] [--epp-capacity RPS]\n         \
TAGS: +sync, +proxy, +relay[:DELAY_MS[:LOSS[:INTERVAL_MS]]], +epp[:CAPACITY[:P50_MS[:P95_MS]]]; bound = the upper bound row"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => match serve(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("podsim: {e}\n{}", usage());
                ExitCode::from(2)
            }
        },
        Some(cmd @ ("validate" | "ladder")) => match ladder_cmd(cmd == "validate", &args[1..]) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("podsim: {e}\n{}", usage());
                ExitCode::from(2)
            }
        },
        Some("bench") => match bench(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("podsim: {e}\n{}", usage());
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("{}", usage());
            ExitCode::from(2)
        }
    }
}

/// `podsim serve --pods N --base-port P [--speed X] [--model M]`: fake vLLM pods on 127.0.0.1.
fn serve(args: &[String]) -> Result<(), String> {
    let mut pods = 1usize;
    let mut base_port = 8000u16;
    let mut speed = 1.0f64;
    let mut model = podsim::workload::MODEL.to_string();
    let mut params = podsim::calib::ServerParams::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--pods" => pods = val()?.parse().map_err(|e| format!("--pods: {e}"))?,
            "--base-port" => base_port = val()?.parse().map_err(|e| format!("--base-port: {e}"))?,
            "--speed" => speed = val()?.parse().map_err(|e| format!("--speed: {e}"))?,
            "--model" => model = val()?,
            "--engine" => params = EngineProfile::load(&val()?)?.server_params(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !(speed.is_finite() && speed > 0.0) {
        return Err("--speed must be > 0".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let config = podsim::serve::PodConfig { model, params, speed };
        let addrs = podsim::serve::start(pods, base_port, config)
            .await
            .map_err(|e| e.to_string())?;
        for a in &addrs {
            println!("pod http://{a}  (/v1/completions, /v1/chat/completions, /v1/models, /metrics)");
        }
        std::future::pending::<()>().await;
        Ok(())
    })
}

fn bench(args: &[String]) -> Result<(), String> {
    let mut workload = None;
    let mut quick = false;
    let mut qps: Option<Vec<f64>> = None;
    let mut horizon = None;
    let mut warmup = None;
    let mut policy_names: Option<String> = None;
    let mut pickers: Vec<(String, Config)> = Vec::new();
    let mut seed = None;
    let mut ladder_spec: Option<String> = None;
    let mut ladder_warmup: Option<String> = None;
    let mut seeds: Option<Vec<u64>> = None;
    let mut reference = String::from("wasm-epp-shared+proxy");
    let mut deploy = DeployParams::default();
    let mut max_concurrency = None;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut out_dir = String::from("target/podsim-bench");
    let mut engine: Option<EngineProfile> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--workload" => workload = Some(WorkloadKind::parse(&val()?).ok_or("unknown workload")?),
            "--quick" => quick = true,
            "--qps" | "--concurrency" => {
                qps = Some(
                    val()?
                        .split(',')
                        .map(|s| s.trim().parse::<f64>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("--qps: {e}"))?,
                )
            }
            "--horizon" => horizon = Some(val()?.parse::<u64>().map_err(|e| format!("--horizon: {e}"))?),
            "--warmup" => warmup = Some(val()?.parse::<u64>().map_err(|e| format!("--warmup: {e}"))?),
            "--max-concurrency" => {
                max_concurrency = Some(val()?.parse::<u32>().map_err(|e| format!("--max-concurrency: {e}"))?)
            }
            "--seed" => seed = Some(val()?.parse::<u64>().map_err(|e| format!("--seed: {e}"))?),
            "--threads" => threads = val()?.parse::<usize>().map_err(|e| format!("--threads: {e}"))?,
            "--out" => out_dir = val()?,
            "--engine" => engine = Some(EngineProfile::load(&val()?)?),
            "--policies" => policy_names = Some(val()?),
            "--ladder" => ladder_spec = Some(val()?),
            "--ladder-warmup" => ladder_warmup = Some(val()?),
            "--seeds" => {
                seeds = Some(
                    val()?
                        .split(',')
                        .map(|s| s.trim().parse::<u64>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("--seeds: {e}"))?,
                )
            }
            "--reference" => reference = val()?,
            "--decision-cost-ms" => deploy.decision_cost = ms_flag(a, &val()?)?,
            "--relay-delay-ms" => deploy.relay.delay = ms_flag(a, &val()?)?,
            "--relay-interval-ms" => deploy.relay.interval = ms_flag(a, &val()?)?,
            "--relay-loss" => {
                let p: f64 = val()?.parse().map_err(|e| format!("{a}: {e}"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("{a}: want 0..=1"));
                }
                deploy.relay.loss = p;
            }
            "--epp-hop-p50-ms" => deploy.epp.hop_p50_s = ms_flag(a, &val()?)? as f64 / 1e6,
            "--epp-hop-p95-ms" => deploy.epp.hop_p95_s = ms_flag(a, &val()?)? as f64 / 1e6,
            "--epp-capacity" => {
                deploy.epp.capacity = val()?.parse().map_err(|e| format!("{a}: {e}"))?;
                if !(deploy.epp.capacity.is_finite() && deploy.epp.capacity >= 0.0) {
                    return Err(format!("{a}: want ≥ 0 (0: unlimited)"));
                }
            }
            "--picker" => {
                let v = val()?;
                let (name, json) = v.split_once('=').ok_or("--picker wants NAME=JSON or NAME=@FILE")?;
                let bytes = match json.strip_prefix('@') {
                    Some(path) => std::fs::read(path).map_err(|e| format!("{path}: {e}"))?,
                    None => json.as_bytes().to_vec(),
                };
                let config = Config::from_json(&bytes).map_err(|e| e.to_string())?;
                // `NAME[@WxR][+TAG…]=...`: the config under NAME, with a split and deployment tags
                // exactly as for named policies (`+sync`, `+proxy`, `+relay…`, `+epp…`).
                // Built after every flag is read, so that `--relay-delay-ms` etc. apply wherever they
                // stand.
                pickers.push((name.to_string(), config));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let workload = workload.ok_or("--workload is required")?;
    let extra = pickers
        .iter()
        .map(|(name, config)| {
            let base = name.split(['@', '+']).next().unwrap_or(name);
            PolicySpec::parse_with_custom(name, &deploy, Some((base, config)))
                .ok_or(format!("--picker {name}: bad NAME[@WxR][+TAG…]"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !(deploy.epp.hop_p50_s > 0.0 && deploy.epp.hop_p95_s >= deploy.epp.hop_p50_s) {
        return Err("--epp-hop-p50-ms must be > 0 and ≤ --epp-hop-p95-ms".into());
    }
    let policies: Option<Vec<PolicySpec>> = policy_names
        .map(|names| {
            names
                .split(',')
                .map(|n| PolicySpec::parse_with(n.trim(), &deploy).ok_or(format!("unknown policy {n}")))
                .collect::<Result<_, _>>()
        })
        .transpose()?;
    if let Some(spec) = ladder_spec {
        if workload != WorkloadKind::SharedPrefix {
            return Err("--ladder runs the shared-prefix workload only".into());
        }
        let ladder = Ladder::parse(&spec, ladder_warmup.as_deref())?;
        let seeds = seeds.unwrap_or_else(|| vec![seed.unwrap_or(20_260_817)]);
        let mut plan = LadderPlan::as_deployed(ladder, seeds, &deploy);
        if let Some(p) = policies {
            plan.policies = p;
        }
        plan.policies.extend(extra);
        if let Some(e) = engine {
            plan.params = e.server_params();
        }
        return bench_ladder(&plan, &spec, &deploy, &reference, threads, &out_dir);
    }
    let mut plan = Plan::new(workload, quick);
    if let Some(q) = qps {
        plan.qps = q;
    }
    if let Some(h) = horizon {
        plan.horizon_s = h;
    }
    if let Some(w) = warmup {
        plan.warmup_s = w;
    }
    if plan.warmup_s >= plan.horizon_s {
        return Err("--warmup must be below --horizon".into());
    }
    if let Some(s) = seed {
        plan.seed = s;
    }
    if max_concurrency.is_some() {
        plan.max_concurrency = max_concurrency;
    }
    if let Some(p) = policies {
        plan.policies = p;
    }
    plan.policies.extend(extra);
    let engine = engine.unwrap_or_else(EngineProfile::default_profile);
    plan.params = engine.server_params();

    eprintln!(
        "podsim bench: {} — {} rates × {} policies, {} s per run ({} s warm-up), {} servers, {} threads",
        workload.name(),
        plan.qps.len(),
        plan.policies.len(),
        plan.horizon_s,
        plan.warmup_s,
        plan.servers,
        threads
    );
    #[allow(clippy::disallowed_methods)] // wall time for the progress report only
    let started = std::time::Instant::now();
    let bar = Runs::new(plan.qps.len() * plan.policies.len());
    let progress = |done: usize, _total: usize, s: &report::Summary| {
        bar.finished(
            done,
            &format!(
                "{} @ {} {}: TTFT p90 {:.3} s, {:.0} out tok/s",
                s.policy,
                s.qps,
                workload.rate_unit(),
                s.ttft_p90,
                s.output_tok_s
            ),
        );
    };
    let rows = run_plan(&plan, threads, &progress);
    bar.finish();
    let title = format!(
        "podsim {} ({}{} s per rate, {} s warm-up, {} servers {}, {}, seed {})",
        workload.name(),
        if quick { "quick, " } else { "" },
        plan.horizon_s,
        plan.warmup_s,
        plan.servers,
        engine.label(),
        match (workload.closed_loop(), plan.max_concurrency) {
            (true, _) => "closed loop".to_string(),
            (false, Some(c)) => format!("client concurrency cap {c}"),
            (false, None) => "open-loop Poisson".to_string(),
        },
        plan.seed
    );
    print!("{}", report::markdown_in(&title, &rows, workload.rate_unit()));
    if let Some(published) = workload.published_vs_round_robin() {
        print!(
            "{}",
            report::knee_table(&rows, workload.rate_unit(), "round-robin", Some(published))
        );
    }
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{out_dir}: {e}"))?;
    let stem = format!("{out_dir}/{}{}", workload.name(), if quick { "-quick" } else { "" });
    std::fs::write(format!("{stem}.csv"), report::csv(workload.name(), &rows)).map_err(|e| e.to_string())?;
    std::fs::write(
        format!("{stem}.svg"),
        chart::sweep(&title, &rows, workload.rate_unit())?,
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {stem}.csv and {stem}.svg in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Milliseconds (decimal) → microseconds.
fn ms_flag(flag: &str, v: &str) -> Result<u64, String> {
    let x: f64 = v.parse().map_err(|e| format!("{flag}: {e}"))?;
    if !(x.is_finite() && x >= 0.0) {
        return Err(format!("{flag}: want ≥ 0"));
    }
    Ok((x * 1000.0).round() as u64)
}

/// `bench --ladder`: the as-deployed tables (see [`podsim::bench::LadderPlan`]).
fn bench_ladder(
    plan: &LadderPlan,
    spec: &str,
    deploy: &DeployParams,
    reference: &str,
    threads: usize,
    out_dir: &str,
) -> Result<(), String> {
    eprintln!(
        "podsim bench --ladder {spec}: {} seeds × {} policies, {} servers, {} threads",
        plan.seeds.len(),
        plan.policies.len(),
        plan.servers,
        threads
    );
    #[allow(clippy::disallowed_methods)] // wall time for the progress report only
    let started = std::time::Instant::now();
    let bar = Runs::new(plan.seeds.len() * plan.policies.len());
    let progress = |done: usize, _total: usize, r: &podsim::bench::LadderRun| {
        let peak = r.stages.iter().map(|s| s.output_tok_s).fold(0.0, f64::max);
        bar.finished(done, &format!("seed {} {}: peak {peak:.0} out tok/s", r.seed, r.policy));
    };
    let runs = run_ladder_plan(plan, threads, &progress);
    bar.finish();
    let title = format!(
        "podsim as deployed: shared-prefix ({} groups × {}, {} + {} tokens in, {} out), ladder {spec} drained as inference-perf, {} servers of {}, seeds {:?}; \
decision cost in the proxy {} ms; relay delay {} ms, loss {}, interval {} ms; EPP hop p50 {} ms, p95 {} ms, capacity {} req/s",
        plan.shape.groups,
        plan.shape.users_per_group,
        plan.shape.system_tokens,
        plan.shape.question_tokens,
        plan.shape.output_tokens,
        plan.servers,
        plan.params.profile,
        plan.seeds,
        deploy.decision_cost as f64 / 1e3,
        deploy.relay.delay as f64 / 1e3,
        deploy.relay.loss,
        deploy.relay.interval as f64 / 1e3,
        deploy.epp.hop_p50_s * 1e3,
        deploy.epp.hop_p95_s * 1e3,
        deploy.epp.capacity
    );
    print!("{}", report::ladder_markdown(&title, &runs, reference, "bound"));
    print!("{}", report::baselines_markdown(&runs));
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{out_dir}: {e}"))?;
    let path = format!("{out_dir}/as-deployed.csv");
    std::fs::write(&path, report::ladder_csv(&runs)).map_err(|e| e.to_string())?;
    eprintln!("wrote {path} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `podsim validate` (the published llm-d setup, both arms, compared; `Ok(false)` when outside
/// tolerance) and `podsim ladder` (any ladder and policies, per-stage table only).
fn ladder_cmd(validate_mode: bool, args: &[String]) -> Result<bool, String> {
    let mut engine = EngineProfile::default_profile();
    let mut servers = 8usize;
    let mut shape = SharedPrefix::LLMD;
    let mut ladder_spec = String::from("llm-d");
    let mut warmup: Option<String> = None;
    let mut drain = Drain::Harness;
    let mut seed = 20_260_817u64;
    let mut policies: Option<Vec<PolicySpec>> = None;
    let mut shared_once = false;
    let mut out_dir = String::from("target/podsim-bench");
    let mut it = args.iter();
    let int = |a: &str, v: String| -> Result<u32, String> { v.parse::<u32>().map_err(|e| format!("{a}: {e}")) };
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--engine" => engine = EngineProfile::load(&val()?)?,
            "--shared-kv-read-once" => shared_once = true,
            "--servers" => servers = int(a, val()?)? as usize,
            "--groups" => shape.groups = int(a, val()?)?,
            "--prompts-per-group" => shape.users_per_group = int(a, val()?)?,
            "--system-tokens" => shape.system_tokens = int(a, val()?)?,
            "--question-tokens" => shape.question_tokens = int(a, val()?)?,
            "--output-tokens" => shape.output_tokens = int(a, val()?)?,
            "--ladder" => ladder_spec = val()?,
            "--ladder-warmup" => warmup = Some(val()?),
            "--drain" => drain = Drain::parse(&val()?).ok_or("--drain wants harness or none")?,
            "--seed" => seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--out" if validate_mode => out_dir = val()?,
            "--policies" if !validate_mode => {
                policies = Some(
                    val()?
                        .split(',')
                        .map(|n| match PolicySpec::parse(n.trim()) {
                            Some(p) if matches!(p.kind, PolicyKind::Bound) => {
                                Err("the bound is printed by `bench --ladder`".to_string())
                            }
                            Some(p) => Ok(p),
                            None => Err(format!("unknown policy {n}")),
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if servers == 0 || shape.groups == 0 || shape.users_per_group == 0 || shape.output_tokens == 0 {
        return Err("--servers, --groups, --prompts-per-group and --output-tokens must be > 0".into());
    }
    let ladder = Ladder::parse(&ladder_spec, warmup.as_deref())?;
    engine.shared_kv_read_once |= shared_once;
    let params = engine.server_params();
    let policies = match policies {
        Some(p) => p,
        None if validate_mode => {
            let mut p = vec![PolicySpec::parse(validate::RR).expect("known")];
            match PolicySpec::parse(validate::LLMD) {
                Some(l) => p.push(l),
                None => eprintln!(
                    "podsim validate: picker-core has no `{}` profile yet: the llm-d arm is not run",
                    validate::LLMD
                ),
            }
            p
        }
        None => vec![PolicySpec::parse("round-robin").expect("known")],
    };
    let trace = ladder::shared_prefix_trace(&shape, &ladder, drain, params.block_tokens, seed);
    let cfg = ladder::sim_config(servers, params, seed);
    eprintln!(
        "podsim {}: {} requests in {} stages ({} warm-up), {} servers of {}, {} policies, drain {:?}, shared KV read once: {}",
        if validate_mode { "validate" } else { "ladder" },
        trace.arrivals.len(),
        ladder.stages.len() + ladder.warmup.len(),
        ladder.warmup.len(),
        servers,
        engine.label(),
        policies.len(),
        drain,
        engine.shared_kv_read_once
    );
    #[allow(clippy::disallowed_methods)] // wall time for the progress report only
    let started = std::time::Instant::now();
    let spinner = Runs::spinner(&format!(
        "{} policies on {} requests",
        policies.len(),
        trace.arrivals.len()
    ));
    let results = ladder::run_policies(&cfg, &trace, &policies);
    spinner.finish();
    #[allow(clippy::disallowed_methods)]
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "## podsim {}: {} ({} groups × {} prompts, {} + {} tokens in, {} out), {} servers of {}{}, seed {}\n",
        if validate_mode { "validate" } else { "ladder" },
        ladder_spec,
        shape.groups,
        shape.users_per_group,
        shape.system_tokens,
        shape.question_tokens,
        shape.output_tokens,
        servers,
        engine.label(),
        if engine.shared_kv_read_once {
            ", shared KV read once"
        } else {
            ""
        },
        seed
    );
    let mut ok = true;
    let mut arms = Vec::new();
    for (policy, r) in policies.iter().zip(&results) {
        let reports = ladder::stage_reports(&trace, r);
        if validate_mode {
            let published = validate::published(&policy.name)?;
            let arm = validate::compare(&policy.name, &published, &reports)?;
            ok &= arm.checks.iter().all(|c| c.pass);
            print!("{}", validate::markdown(&arm));
            arms.push(arm);
        } else {
            print!("{}", ladder::markdown(&policy.name, &reports));
        }
        let hit = r.hit_tokens as f64 / r.query_tokens.max(1) as f64;
        println!(
            "{}: prefix hit rate {:.1} %, {} preemptions, simulated {:.0} s\n",
            policy.name,
            hit * 100.0,
            r.preemptions,
            r.end as f64 / 1e6
        );
    }
    eprintln!("ran in {elapsed:.1} s of real time");
    if validate_mode {
        println!("validate: {}", if ok { "PASS" } else { "FAIL" });
        let title = format!(
            "podsim validate vs llm-d published: {ladder_spec} ladder, {servers} servers of {}, seed {seed}",
            engine.name
        );
        let written = chart::write_validate(std::path::Path::new(&out_dir), &title, &arms)?;
        let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        eprintln!("wrote {}", names.join(" and "));
    }
    Ok(ok)
}
