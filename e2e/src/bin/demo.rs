//! `./build.sh demo`: the main job, on embedded defaults.
//!
//! Starts simulated vLLM pods (podsim, calibrated as Qwen3-32B TP2 on H100, run `--speed` × real
//! time), the collector as a sidecar, and the compiled module inside host-sim's gateway; drives a
//! shared-prefix workload (llm-d's shape, scaled down) through the gateway four times, each on
//! fresh pods: with the picker's `wasm-epp-shared` profile (one gateway whose workers share one
//! view), with the faithful baselines' profiles (`gie-default`, `llm-d-optimized-baseline`) in
//! the same module, and with the cluster's plain round-robin; prints TTFT p50/p90, throughput and
//! prefix-cache hit rate side by side. Everything runs in this process, so Ctrl-C or a failure
//! stops all of it. Progress is an indicatif bar on a terminal and a plain
//! line every 10 s otherwise (`e2e::progress`).
//!
//! ```text
//! demo [--pods 4] [--qps 14] [--seconds 150] [--speed 5] [--groups 96] [--users 5]
//!      [--system-tokens 6000] [--question-tokens 1200] [--output-tokens 100] [--seed 7]
//! ```
//! `--qps` and `--seconds` are simulated (requests per simulated second; simulated duration).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use e2e::load::{run_trace, Summary};
use e2e::progress::Progress;
use e2e::stack::{self, Collector, GatewaySpec};
use podsim::workload::{SharedPrefix, MODEL};
use serde_json::json;

#[derive(Clone, Debug)]
struct Args {
    pods: usize,
    qps: f64,
    seconds: f64,
    speed: f64,
    shape: SharedPrefix,
    seed: u64,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        pods: 4,
        qps: 14.0,
        seconds: 150.0,
        speed: 5.0,
        shape: SharedPrefix {
            groups: 96,
            users_per_group: 5,
            system_tokens: 6000,
            question_tokens: 1200,
            output_tokens: 100,
        },
        seed: 7,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        let int = |v: &str| v.parse::<u32>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--pods" => a.pods = int(v)? as usize,
            "--qps" => a.qps = num(v)?,
            "--seconds" => a.seconds = num(v)?,
            "--speed" => a.speed = num(v)?,
            "--groups" => a.shape.groups = int(v)?,
            "--users" => a.shape.users_per_group = int(v)?,
            "--system-tokens" => a.shape.system_tokens = int(v)?,
            "--question-tokens" => a.shape.question_tokens = int(v)?,
            "--output-tokens" => a.shape.output_tokens = int(v)?,
            "--seed" => a.seed = v.parse().map_err(|e| format!("--seed: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let positive = a.qps > 0.0 && a.seconds > 0.0 && a.speed > 0.0 && a.speed <= 50.0;
    if !positive || a.pods == 0 || a.pods > 64 || a.shape.groups == 0 || a.shape.users_per_group == 0 {
        return Err("need --pods 1..64, --qps > 0, --seconds > 0, 0 < --speed <= 50, --groups and --users > 0".into());
    }
    Ok(a)
}

/// One arm of the comparison: a name and the module's picker profile (`None`: the module picks
/// on no path and the route cluster's round-robin routes).
struct Arm {
    name: &'static str,
    profile: Option<&'static str>,
}

async fn run_arm(arm: &Arm, a: &Args) -> Result<(Summary, usize), String> {
    let pods = stack::pods(a.pods, MODEL, a.speed).await?;
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let spec = if let Some(profile) = arm.profile {
        GatewaySpec::picker(json!({"profile": profile, "maxEndpoints": 2}), &addrs)
    } else {
        // Same gateway and module, picking on no path: the route cluster's round-robin routes.
        GatewaySpec::picker(json!({}), &addrs).with("inferencePaths", json!([]))
    };
    let gw = stack::gateway(&spec)?;
    let collector = Collector::sidecar(&addrs, gw.addr(), Duration::from_millis(50)).await?;
    if !e2e::wait_for_ready(&gw, a.pods, Duration::from_secs(10)).await {
        return Err("the collector's first snapshot did not reach the gateway within 10 s".into());
    }
    let trace = a.shape.trace(a.qps, (a.seconds * 1e6) as u64, 16, a.seed);
    let n = trace.arrivals.len();
    eprintln!(
        "  {:<24} gateway http://{}  {} pods  {} requests",
        arm.name,
        gw.addr(),
        a.pods,
        n
    );
    let started = Instant::now();
    let name = arm.name;
    let mut progress = Progress::new(name, n as u64);
    let mut last_done = 0;
    let outcomes = run_trace(gw.addr(), &trace, a.speed, |sent, done| {
        last_done = done as u64;
        progress.update(done as u64, &format!("finished ({sent}/{n} sent)"));
    })
    .await;
    let wall = started.elapsed();
    progress.finish(last_done, &format!("finished in {:.0} s", wall.as_secs_f64()));
    let failed = outcomes.iter().filter(|o| o.status != 200 || !o.complete).count();
    if let Some(o) = outcomes.iter().find(|o| o.status != 200 || !o.complete) {
        eprintln!(
            "  {name}: {failed} request(s) failed; first: status {} {:?}",
            o.status, o.error
        );
    }
    collector.stop().await?;
    gw.shutdown();
    drop(pods);
    Ok((Summary::of(&outcomes, wall, a.speed), failed))
}

async fn demo(a: Args) -> Result<(), String> {
    eprintln!(
        "wasm-epp demo: {} simulated Qwen3-32B TP2 H100 pods at {}x real time; shared-prefix workload \
         ({} groups x {} users, {}-token system prompt, {}-token question, {} output tokens), {} QPS for {} s simulated",
        a.pods,
        a.speed,
        a.shape.groups,
        a.shape.users_per_group,
        a.shape.system_tokens,
        a.shape.question_tokens,
        a.shape.output_tokens,
        a.qps,
        a.seconds
    );
    stack::plugin()?;
    // The baselines run as the same module with their profiles (their scoring inside the proxy,
    // not as central EPPs with a hop; podsim's `bench --ladder` compares the deployments).
    let arms = [
        // One gateway whose workers share their prefix index (`prefixSync`, on by default): one
        // shared view, the deployment `wasm-epp-shared` is for.
        Arm {
            name: "wasm-epp-shared",
            profile: Some("wasm-epp-shared"),
        },
        Arm {
            name: "gie-default",
            profile: Some("gie-default"),
        },
        Arm {
            name: "llm-d-optimized-baseline",
            profile: Some("llm-d-optimized-baseline"),
        },
        Arm {
            name: "round-robin",
            profile: None,
        },
    ];
    let mut rows = Vec::new();
    for arm in &arms {
        rows.push((arm.name, run_arm(arm, &a).await?));
    }
    println!();
    println!("| routing | requests (failed) | TTFT p50 s | TTFT p90 s | E2E p50 s | output tok/s | prefix cache hit |");
    println!("|---|---|---|---|---|---|---|");
    for (name, (s, failed)) in &rows {
        println!(
            "| {name} | {} ({failed}) | {:.2} | {:.2} | {:.2} | {:.0} | {:.0}% |",
            s.requests,
            s.ttft_p50,
            s.ttft_p90,
            s.e2e_p50,
            s.output_tok_s,
            s.cache_hit * 100.0
        );
    }
    println!("\n(times in simulated seconds: measured wall time x {})", a.speed);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        tokio::select! {
            r = demo(a) => match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("\ndemo: {e}");
                    ExitCode::FAILURE
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ndemo: interrupted; stopping the pods, the collector and the gateway");
                ExitCode::from(130)
            }
        }
    });
    // Dropping the runtime stops every task it runs: pods, collector, client.
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}
