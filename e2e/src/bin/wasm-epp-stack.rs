//! `./build.sh serve`: the local stack any OpenAI client can use, until Ctrl-C.
//!
//! Starts simulated vLLM pods (podsim: OpenAI API and Prometheus `/metrics`), the collector as a
//! sidecar, and the compiled module inside host-sim's gateway, all on fixed loopback ports;
//! prints how to point curl, the OpenAI SDK and inference-perf at the gateway; on Ctrl-C (or
//! SIGTERM) stops everything and prints what each pod served.
//!
//! The gateway passes every path through: `POST /v1/chat/completions` and `/v1/completions` are
//! picked for (streaming or not), `GET /v1/models` and anything else go to a pod by the route
//! cluster's round-robin. Errors are OpenAI-style JSON: the module's local replies (400, 404 for
//! a model outside `--allow-models`, 413, 429, 503) and the pods' own (vLLM's shape).

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use e2e::stack::{PodStats, Routing, Stack, StackOptions};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoutingArg {
    /// the module picks (prefix affinity, load, in-flight counts)
    Picker,
    /// same gateway and module, picking on no path: the cluster's round-robin routes
    RoundRobin,
}

/// The wasm-epp stack on loopback: podsim pods, the collector, the module in host-sim's gateway.
#[derive(Debug, Parser)]
#[command(name = "wasm-epp-stack")]
struct Args {
    /// Gateway listen address (the OpenAI base URL is http://ADDR/v1); port 0 picks a free port
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway: SocketAddr,
    /// Number of simulated vLLM pods
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pods: u16,
    /// First pod port on 127.0.0.1 (pod i listens on PORT + i); 0 picks free ports
    #[arg(long, default_value_t = 8100)]
    pod_port: u16,
    /// The model the pods serve
    #[arg(long, default_value = podsim::workload::MODEL)]
    model: String,
    /// Simulated seconds per real second (1: Qwen3-32B TP2 on H100 timing, as is)
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// How the gateway routes inference requests
    #[arg(long, value_enum, default_value = "picker")]
    routing: RoutingArg,
    /// Picker profile: wasm-epp-default, gie-default, llm-d-optimized-baseline
    #[arg(long, default_value = "wasm-epp-default")]
    profile: String,
    /// Endpoints the picker returns, as an ordered fallback list
    #[arg(long, default_value_t = 2)]
    max_endpoints: u32,
    /// Models the module accepts (others: 404), comma-separated; default: the served model
    #[arg(long, value_delimiter = ',')]
    allow_models: Vec<String>,
    /// Collector scrape and push interval, milliseconds
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Run without the collector: the module never gets a snapshot and answers 503 (FailClose)
    #[arg(long)]
    no_collector: bool,
    /// Module configuration (JSON) merged over the generated one, e.g. '{"picker": {"profile": "gie-default"}}'
    #[arg(long, value_name = "JSON")]
    module_config: Option<String>,
    /// Print the module configuration the gateway runs
    #[arg(long)]
    print_config: bool,
}

fn options(a: &Args) -> Result<StackOptions, String> {
    if !(a.speed > 0.0 && a.speed <= 1000.0) {
        return Err("--speed must be in (0, 1000]".into());
    }
    if a.interval_ms == 0 {
        return Err("--interval-ms must be > 0".into());
    }
    let extra = match &a.module_config {
        Some(s) => serde_json::from_str(s).map_err(|e| format!("--module-config: {e}"))?,
        None => serde_json::json!({}),
    };
    Ok(StackOptions {
        pods: a.pods as usize,
        model: a.model.clone(),
        speed: a.speed,
        gateway: a.gateway,
        pod_port: a.pod_port,
        routing: match a.routing {
            RoutingArg::Picker => Routing::Picker,
            RoutingArg::RoundRobin => Routing::RoundRobin,
        },
        profile: a.profile.clone(),
        max_endpoints: a.max_endpoints,
        allow: a.allow_models.clone(),
        interval: Duration::from_millis(a.interval_ms),
        collector: !a.no_collector,
        extra,
    })
}

/// How to reach the stack, printed once it is up.
fn banner(o: &StackOptions, s: &Stack) -> String {
    let gw = s.addr();
    let base = format!("http://{gw}/v1");
    let pods: Vec<String> = s.pods.iter().map(|p| p.addr.to_string()).collect();
    let routing = match o.routing {
        Routing::Picker => format!("wasm-epp picks (profile {}, {} endpoints)", o.profile, o.max_endpoints),
        Routing::RoundRobin => "round-robin (the module picks on no path)".to_string(),
    };
    let collector = match &s.collector {
        Some(_) => format!("sidecar, scrape and push every {} ms", o.interval.as_millis()),
        None => "off (no snapshot: inference requests get 503)".to_string(),
    };
    let m = &o.model;
    format!(
        "wasm-epp stack\n\
         \x20 gateway         http://{gw}   (host-sim, dist/wasm-epp.wasm; routing: {routing})\n\
         \x20 OpenAI base URL {base}\n\
         \x20 model           {m}   (podsim: Qwen3-32B TP2 on H100 timing, {speed}x real time)\n\
         \x20 pods            {pods}   (each: /v1/*, /metrics)\n\
         \x20 collector       {collector}\n\
         \n\
         curl:\n\
         \x20 curl -s {base}/chat/completions -H 'content-type: application/json' \\\n\
         \x20   -d '{{\"model\": \"{m}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}], \"max_tokens\": 16}}'\n\
         \x20 curl -sN {base}/completions -H 'content-type: application/json' \\\n\
         \x20   -d '{{\"model\": \"{m}\", \"prompt\": \"Hello\", \"max_tokens\": 16, \"stream\": true, \"stream_options\": {{\"include_usage\": true}}}}'\n\
         \x20 curl -s {base}/models\n\
         OpenAI Python SDK:\n\
         \x20 from openai import OpenAI\n\
         \x20 client = OpenAI(base_url=\"{base}\", api_key=\"unused\")\n\
         \x20 client.chat.completions.create(model=\"{m}\", messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}], max_tokens=16)\n\
         inference-perf (config file):\n\
         \x20 server: {{type: vllm, base_url: \"http://{gw}\", model_name: \"{m}\", ignore_eos: true}}\n\
         \x20 (./build.sh bench-e2e runs it on a fresh stack, picker against round-robin)\n",
        pods = pods.join(" "),
        speed = o.speed,
    )
}

async fn run(o: StackOptions, print_config: bool) -> Result<(), String> {
    e2e::stack::plugin()?;
    let stack = Stack::start(&o).await?;
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", banner(&o, &stack));
    if print_config {
        let _ = writeln!(out, "module configuration:\n  {}", stack.module_config);
    }
    let _ = writeln!(
        out,
        "\nwasm-epp-stack: ready at http://{}/v1  (Ctrl-C stops everything)",
        stack.addr()
    );
    let _ = out.flush();
    drop(out);
    let signal = stop_signal().await;
    eprintln!("\nwasm-epp-stack: {signal}; stopping the collector, the gateway and the pods");
    let stats = stack.pod_stats();
    stack.stop().await?;
    print_stats(&stats);
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM; names the one that came.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = term.recv() => "terminated",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "interrupted"
}

fn print_stats(stats: &[PodStats]) {
    let total: u64 = stats.iter().map(|s| s.finished).sum();
    println!("served {total} requests");
    for s in stats {
        let rate = PodStats::hit_rate(std::slice::from_ref(s));
        println!(
            "  {:<21} {:>7} requests  prefix cache hit {:>3.0}%",
            s.addr,
            s.finished,
            rate * 100.0
        );
    }
    println!("  all pods: prefix cache hit {:.0}%", PodStats::hit_rate(stats) * 100.0);
}

fn main() -> ExitCode {
    let a = Args::parse();
    let o = match options(&a) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("wasm-epp-stack: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wasm-epp-stack: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(run(o, a.print_config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasm-epp-stack: {e}");
            ExitCode::FAILURE
        }
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}
