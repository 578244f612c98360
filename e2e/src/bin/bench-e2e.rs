//! `./build.sh bench-e2e`: inference-perf (kubernetes-sigs, PyPI `inference-perf`) against the
//! local stack, once with the picker and once with round-robin, reports side by side.
//!
//! Each arm gets a fresh stack in this process (podsim pods, the collector, the module in
//! host-sim's gateway, on free loopback ports) and one run of inference-perf as a child process:
//! its shared-prefix data generator, the completions API with streaming (`stream_options.
//! include_usage`), a constant request rate, server type `vllm`. The round-robin arm runs the same
//! gateway, module and collector with `inferencePaths: []`: the module picks on no path and the
//! route cluster's round-robin routes, so the only difference between the arms is the pick.
//!
//! inference-perf's shared-prefix generator needs a tokenizer; none can be downloaded here, so
//! `--tokenizer` is the directory `e2e/python/make_tokenizer.py` writes (4 bytes a token, as podsim
//! counts). inference-perf runs with the Hugging Face libraries offline.
//!
//! At the end it prints inference-perf's own summary tables for each arm, then one table with the
//! arms side by side whose rows are read from inference-perf's report
//! (`summary_lifecycle_metrics.json`, in seconds of wall time), plus the pods' prefix-cache hit
//! rate from their `/metrics`. At `--speed 1` (the default) wall time is simulated H100 time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use e2e::progress::Progress;
use e2e::stack::{PodStats, Routing, Stack, StackOptions};
use serde_json::{json, Value};

/// inference-perf against the local stack: the picker, then round-robin, side by side.
#[derive(Debug, Parser)]
#[command(name = "bench-e2e")]
struct Args {
    /// The inference-perf executable (build.sh installs it into a venv under the target dir)
    #[arg(long)]
    inference_perf: PathBuf,
    /// Tokenizer directory for inference-perf (e2e/python/make_tokenizer.py writes one)
    #[arg(long)]
    tokenizer: PathBuf,
    /// Where configs, logs and inference-perf's reports go
    #[arg(long, default_value = "target/bench-e2e")]
    out: PathBuf,
    /// Simulated vLLM pods per arm
    #[arg(long, default_value_t = 4)]
    pods: usize,
    /// Simulated seconds per real second (1: inference-perf's wall times are H100 times)
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Requests per second (inference-perf's constant load)
    #[arg(long, default_value_t = 14.0)]
    qps: f64,
    /// Seconds of load per arm
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// Shared-prefix groups (distinct system prompts)
    #[arg(long, default_value_t = 96)]
    groups: u32,
    /// Prompts per group
    #[arg(long, default_value_t = 5)]
    users: u32,
    /// System prompt (shared prefix) tokens
    #[arg(long, default_value_t = 6000)]
    system_tokens: u32,
    /// Question tokens
    #[arg(long, default_value_t = 1200)]
    question_tokens: u32,
    /// Output tokens
    #[arg(long, default_value_t = 100)]
    output_tokens: u32,
    /// Prompt generator seed
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// inference-perf's configuration for one arm (JSON, which its YAML loader reads).
fn inference_perf_config(a: &Args, gateway: SocketAddr, reports: &Path) -> Value {
    json!({
        "api": {"type": "completion", "streaming": true},
        "data": {"type": "shared_prefix", "shared_prefix": {
            "num_groups": a.groups,
            "num_prompts_per_group": a.users,
            "system_prompt_len": a.system_tokens,
            "question_len": a.question_tokens,
            "output_len": a.output_tokens,
            "seed": a.seed,
        }},
        "load": {
            "type": "constant",
            "stages": [{"rate": a.qps, "duration": a.seconds}],
            "num_workers": 1,
            "worker_max_concurrency": 512,
            "request_timeout": 300,
        },
        "server": {
            "type": "vllm",
            "model_name": podsim::workload::MODEL,
            "base_url": format!("http://{gateway}"),
            "ignore_eos": true,
        },
        "tokenizer": {"pretrained_model_name_or_path": a.tokenizer.display().to_string()},
        "report": {"request_lifecycle": {"summary": true, "per_stage": true, "per_request": false}},
        "storage": {"local_storage": {"path": reports.display().to_string()}},
    })
}

/// inference-perf's log lines (`inference_perf.loadgen.load_generator`) around its one stage.
const LOAD_STARTED: &str = "Stage 0 - run started";
const LOAD_COMPLETED: &str = "Stage 0 - run completed";
/// Where inference-perf's own summary tables start in its output.
const OWN_SUMMARY: &str = "Throughput and Goodput Summary";

/// What one arm produced.
struct ArmResult {
    name: &'static str,
    summary: Value,
    pods: Vec<PodStats>,
    reports: PathBuf,
    /// inference-perf's own summary tables, as it printed them.
    printed: String,
}

async fn run_arm(a: &Args, routing: Routing) -> Result<ArmResult, String> {
    let name = routing.name();
    let dir = a.out.join(name);
    let reports = dir.join("reports");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let o = StackOptions {
        pods: a.pods,
        speed: a.speed,
        gateway: SocketAddr::from(([127, 0, 0, 1], 0)),
        pod_port: 0,
        routing,
        ..StackOptions::default()
    };
    let stack = Stack::start(&o).await?;
    let config_path = dir.join("config.yaml");
    let config = inference_perf_config(a, stack.addr(), &reports);
    std::fs::write(&config_path, format!("{config:#}\n")).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let log_path = dir.join("inference-perf.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| format!("{}: {e}", log_path.display()))?;
    eprintln!(
        "  {name:<12} gateway http://{}  {} pods  inference-perf log {}",
        stack.addr(),
        a.pods,
        log_path.display()
    );
    let mut child = tokio::process::Command::new(&a.inference_perf)
        .arg("--config_file")
        .arg(&config_path)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        // rich sizes its tables to this; 80 columns cut the numbers.
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", a.inference_perf.display()))?;
    let expected = (a.qps * f64::from(a.seconds)).round() as u64;
    let mut progress = Progress::new(name, expected);
    let started = Instant::now();
    // Load, then draining, then inference-perf's report: generous, but bounded.
    let deadline = Duration::from_secs(u64::from(a.seconds) + 600);
    let mut load_started: Option<Instant> = None;
    let status = loop {
        let done: u64 = stack.pods.iter().map(|p| p.finished()).sum();
        let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if load_started.is_none() && log_text.contains(LOAD_STARTED) {
            load_started = Some(Instant::now());
        }
        let phase = match load_started {
            None => "finished; inference-perf starting (imports, prompts)".to_string(),
            Some(_) if log_text.contains(LOAD_COMPLETED) => "finished; inference-perf writing its report".to_string(),
            Some(t) if t.elapsed().as_secs() < u64::from(a.seconds) => {
                format!("finished; load {}/{} s", t.elapsed().as_secs(), a.seconds)
            }
            Some(_) => "finished; load sent, the last requests running".to_string(),
        };
        progress.update(done, &phase);
        if let Some(s) = child.try_wait().map_err(|e| format!("inference-perf: {e}"))? {
            break s;
        }
        if started.elapsed() > deadline {
            let _ = child.kill().await;
            return Err(format!(
                "inference-perf still running after {deadline:?}; log: {}",
                log_path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let pods = stack.pod_stats();
    let done: u64 = pods.iter().map(|p| p.finished).sum();
    progress.finish(done, &format!("finished; inference-perf exited ({status})"));
    stack.stop().await?;
    if !status.success() {
        return Err(format!(
            "inference-perf failed ({status}); the end of its log ({}):\n{}",
            log_path.display(),
            tail(&log_path, 25)
        ));
    }
    let summary_path = find(&reports, "summary_lifecycle_metrics.json").ok_or_else(|| {
        format!(
            "inference-perf wrote no summary_lifecycle_metrics.json under {}",
            reports.display()
        )
    })?;
    let text = std::fs::read_to_string(&summary_path).map_err(|e| format!("{}: {e}", summary_path.display()))?;
    let summary = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", summary_path.display()))?;
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let printed = log_text
        .find(OWN_SUMMARY)
        .map(|i| log_text[log_text[..i].rfind('\n').map_or(0, |n| n + 1)..].to_string())
        .unwrap_or_default();
    Ok(ArmResult {
        name,
        summary,
        pods,
        printed,
        reports: summary_path.parent().map(Path::to_path_buf).unwrap_or(reports),
    })
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first file called `name` under `dir`, depth first.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in &entries {
        if p.file_name().is_some_and(|f| f == name) {
            return Some(p.clone());
        }
    }
    entries.iter().filter(|p| p.is_dir()).find_map(|p| find(p, name))
}

/// Rows of the side-by-side table: label, JSON pointer into inference-perf's summary, scale.
const ROWS: &[(&str, &str, f64, u8)] = &[
    ("requests", "/load_summary/count", 1.0, 0),
    ("successes", "/successes/count", 1.0, 0),
    ("failures", "/failures/count", 1.0, 0),
    ("TTFT mean (s)", "/successes/latency/time_to_first_token/mean", 1.0, 3),
    (
        "TTFT median (s)",
        "/successes/latency/time_to_first_token/median",
        1.0,
        3,
    ),
    ("TTFT p90 (s)", "/successes/latency/time_to_first_token/p90", 1.0, 3),
    (
        "TPOT median (ms)",
        "/successes/latency/time_per_output_token/median",
        1000.0,
        1,
    ),
    (
        "ITL median (ms)",
        "/successes/latency/inter_token_latency/median",
        1000.0,
        1,
    ),
    (
        "request latency median (s)",
        "/successes/latency/request_latency/median",
        1.0,
        3,
    ),
    (
        "request latency p90 (s)",
        "/successes/latency/request_latency/p90",
        1.0,
        3,
    ),
    ("output tokens/s", "/successes/throughput/output_tokens_per_sec", 1.0, 1),
    ("requests/s", "/successes/throughput/requests_per_sec", 1.0, 2),
];

fn cell(v: Option<f64>, scale: f64, digits: u8) -> String {
    match v {
        Some(x) => format!("{:.*}", digits as usize, x * scale),
        None => "-".to_string(),
    }
}

fn print_table(a: &Args, arms: &[ArmResult]) {
    for r in arms {
        println!(
            "\n=== inference-perf's own summary: {} ===\n{}",
            r.name,
            r.printed.trim_end()
        );
    }
    println!();
    println!(
        "inference-perf {} s at {} QPS per arm, shared prefix ({} groups x {} prompts, {}-token system prompt, \
         {}-token question, {} output tokens), {} pods at {}x real time",
        a.seconds, a.qps, a.groups, a.users, a.system_tokens, a.question_tokens, a.output_tokens, a.pods, a.speed
    );
    println!();
    let head: Vec<&str> = arms.iter().map(|r| r.name).collect();
    println!("| metric (inference-perf's report) | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(arms.len()));
    for (label, ptr, scale, digits) in ROWS {
        let cells: Vec<String> = arms
            .iter()
            .map(|r| cell(r.summary.pointer(ptr).and_then(Value::as_f64), *scale, *digits))
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    let cached: Vec<String> = arms
        .iter()
        .map(|r| {
            let p = |k: &str| {
                r.summary
                    .pointer(&format!("/successes/prompt_tokens/{k}"))
                    .and_then(Value::as_f64)
            };
            match (p("cached"), p("total")) {
                (Some(c), Some(t)) if t > 0.0 => format!("{:.0}%", c / t * 100.0),
                _ => "-".to_string(),
            }
        })
        .collect();
    println!("| prompt tokens cached (server usage) | {} |", cached.join(" | "));
    let hits: Vec<String> = arms
        .iter()
        .map(|r| format!("{:.0}%", PodStats::hit_rate(&r.pods) * 100.0))
        .collect();
    println!("| prefix cache hit (pods' /metrics) | {} |", hits.join(" | "));
    let spread: Vec<String> = arms
        .iter()
        .map(|r| {
            r.pods
                .iter()
                .map(|p| p.finished.to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    println!("| requests per pod | {} |", spread.join(" | "));
    println!();
    for r in arms {
        println!("{}: {}", r.name, r.reports.display());
    }
    if (a.speed - 1.0).abs() > f64::EPSILON {
        println!(
            "(pods ran at {}x real time: inference-perf's seconds are wall seconds; x {} for simulated H100 time)",
            a.speed, a.speed
        );
    }
}

async fn bench(a: Args) -> Result<(), String> {
    e2e::stack::plugin()?;
    if !a.tokenizer.join("tokenizer.json").is_file() {
        return Err(format!(
            "{}: no tokenizer.json (write one with e2e/python/make_tokenizer.py)",
            a.tokenizer.display()
        ));
    }
    eprintln!(
        "bench-e2e: inference-perf, shared prefix, {} QPS for {} s per arm; {} pods at {}x real time",
        a.qps, a.seconds, a.pods, a.speed
    );
    let mut arms = Vec::new();
    for routing in [Routing::Picker, Routing::RoundRobin] {
        arms.push(run_arm(&a, routing).await?);
    }
    print_table(&a, &arms);
    Ok(())
}

fn main() -> ExitCode {
    let mut a = Args::parse();
    let positive = a.qps > 0.0 && a.seconds > 0 && a.speed > 0.0 && a.speed <= 50.0;
    if !positive || a.pods == 0 || a.pods > 64 || a.groups == 0 || a.users == 0 {
        eprintln!(
            "bench-e2e: need --pods 1..64, --qps > 0, --seconds > 0, 0 < --speed <= 50, --groups and --users > 0"
        );
        return ExitCode::from(2);
    }
    // inference-perf runs in another directory's terms: hand it absolute paths.
    for p in [&mut a.tokenizer, &mut a.out] {
        if let Ok(abs) = std::path::absolute(&*p) {
            *p = abs;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-e2e: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        tokio::select! {
            r = bench(a) => match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("\nbench-e2e: {e}");
                    ExitCode::FAILURE
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\nbench-e2e: interrupted; stopping inference-perf and the stack");
                ExitCode::from(130)
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}
