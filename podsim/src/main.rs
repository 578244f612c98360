//! `podsim` CLI. See the crate documentation (`src/lib.rs`) for what is simulated.
//!
//! ```text
//! podsim bench --workload shared-prefix|sharegpt|bursts|multi-lora|code-gen|reasoning|b2b-saas [--quick]
//!              [--qps 3,10,60 | --concurrency 10,60] [--horizon S]
//!              [--warmup S] [--policies a,b@4x2] [--picker NAME=JSON|@file] [--seed N] [--max-concurrency N]
//!              [--threads N] [--out DIR]
//! ```
#![forbid(unsafe_code)]

use std::process::ExitCode;

use picker_core::Config;
use podsim::bench::{run_plan, Plan, WorkloadKind};
use podsim::policy::{PolicyKind, PolicySpec};
use podsim::report;

fn usage() -> &'static str {
    "usage: podsim serve [--pods N] [--base-port P] [--speed X] [--model M]\n       podsim bench --workload shared-prefix|sharegpt|bursts|multi-lora|code-gen|reasoning|b2b-saas [--quick] \
[--qps 3,10,60 | --concurrency 10,60] [--horizon SECS] \
[--warmup SECS] [--policies NAME[@WxR],...] [--picker NAME=JSON|NAME=@FILE]... [--seed N] [--max-concurrency N] [--threads N] [--out DIR]"
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
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--pods" => pods = val()?.parse().map_err(|e| format!("--pods: {e}"))?,
            "--base-port" => base_port = val()?.parse().map_err(|e| format!("--base-port: {e}"))?,
            "--speed" => speed = val()?.parse().map_err(|e| format!("--speed: {e}"))?,
            "--model" => model = val()?,
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
        let config = podsim::serve::PodConfig {
            model,
            params: podsim::calib::ServerParams::default(),
            speed,
        };
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
    let mut policies: Option<Vec<PolicySpec>> = None;
    let mut extra: Vec<PolicySpec> = Vec::new();
    let mut seed = None;
    let mut max_concurrency = None;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut out_dir = String::from("target/podsim-bench");
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
            "--policies" => {
                policies = Some(
                    val()?
                        .split(',')
                        .map(|n| PolicySpec::parse(n.trim()).ok_or(format!("unknown policy {n}")))
                        .collect::<Result<_, _>>()?,
                )
            }
            "--picker" => {
                let v = val()?;
                let (name, json) = v.split_once('=').ok_or("--picker wants NAME=JSON or NAME=@FILE")?;
                let bytes = match json.strip_prefix('@') {
                    Some(path) => std::fs::read(path).map_err(|e| format!("{path}: {e}"))?,
                    None => json.as_bytes().to_vec(),
                };
                let config = Config::from_json(&bytes).map_err(|e| e.to_string())?;
                // `NAME@WxR=...` runs the config split over W workers × R replicas.
                let (name, sync) = match name.strip_suffix("+sync") {
                    Some(n) => (n, true),
                    None => (name, false),
                };
                let spec = match name.split_once('@') {
                    Some((base, split)) => {
                        let (w, r) = split.split_once('x').ok_or("--picker NAME@WxR: bad split")?;
                        let (w, r) = (w.parse().map_err(|_| "bad W")?, r.parse().map_err(|_| "bad R")?);
                        PolicySpec::new(base, PolicyKind::Picker(Box::new(config))).split(w, r)
                    }
                    None => PolicySpec::new(name, PolicyKind::Picker(Box::new(config))),
                };
                let spec = if sync { spec.synced() } else { spec };
                extra.push(spec);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let workload = workload.ok_or("--workload is required")?;
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
    let progress = |done: usize, total: usize, s: &report::Summary| {
        let width = 30;
        let filled = done * width / total.max(1);
        eprintln!(
            "[{}{}] {done}/{total} {:>7.1}s  {} @ {} {}: TTFT p90 {:.3} s, {:.0} out tok/s",
            "#".repeat(filled),
            ".".repeat(width - filled),
            started.elapsed().as_secs_f64(),
            s.policy,
            s.qps,
            workload.rate_unit(),
            s.ttft_p90,
            s.output_tok_s
        );
    };
    let rows = run_plan(&plan, threads, &progress);
    let title = format!(
        "podsim {} ({}{} s per rate, {} s warm-up, {} servers Qwen3-32B TP2 H100, {}, seed {})",
        workload.name(),
        if quick { "quick, " } else { "" },
        plan.horizon_s,
        plan.warmup_s,
        plan.servers,
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
    std::fs::write(format!("{stem}.svg"), report::svg(&title, &rows)).map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {stem}.csv and {stem}.svg in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
