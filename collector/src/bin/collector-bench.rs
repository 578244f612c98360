//! Collector benchmark: `collector-bench --pods 256 --interval 50ms --seconds 10`.
//!
//! Starts `podsim serve --pods N` (fake vLLM pods) and a stub gateway (this binary with
//! `--stub-gateway PORT`) as child processes, runs the collector in this process against them,
//! and prints this process's CPU use (utime + stime from /proc/self/stat, in USER_HZ = 100
//! ticks/s, over the measured window), scrape-round duration and last-scrape → push-done
//! latency percentiles.
//!
//! `collector-bench --parsers [--iterations N]` instead times one scrape's parse of each captured
//! exposition in `collector/tests/fixtures/` (real vLLM, SGLang and Triton output, see SOURCES.md),
//! in this process, no network: our parser ([`collector::prom::parse`], every sample), the
//! scrape path ([`collector::engine::extract`]: families the mapping reads, then the mapping) and,
//! built with `--features compare-parsers`, the `prometheus-parse` crate (on the page as is, and
//! with `:` made `_` so that it reads vLLM's and SGLang's names), side by side, p50 and p99 per
//! scrape. The parsers run interleaved, so machine noise hits them alike.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the ")" that closes the command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn stub_gateway(port: u16) {
    let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await else {
        return;
    };
    loop {
        let Ok((s, _)) = l.accept().await else { continue };
        tokio::spawn(async move {
            // The body is read, as the filter does: hyper closes a connection whose request
            // body was left unread, which would make every push open a new one.
            let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let _ = req.into_body().collect().await;
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = hyper::StatusCode::NO_CONTENT;
                Ok::<_, Infallible>(r)
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
        });
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pods = 256usize;
    let mut interval = Duration::from_millis(50);
    let mut seconds = 10u64;
    let mut base_port = 21000u16;
    let mut gw_port = 20999u16;
    let mut stub: Option<u16> = None;
    let mut iterations = 20_000usize;
    if args.first().is_some_and(|a| a == "--parsers") {
        let mut it = args[1..].iter();
        while let Some(a) = it.next() {
            match (a.as_str(), it.next().map(|v| v.parse())) {
                ("--iterations", Some(Ok(n))) => iterations = n,
                _ => {
                    eprintln!("usage: collector-bench --parsers [--iterations N]");
                    return ExitCode::from(2);
                }
            }
        }
        bench_parsers(iterations);
        return ExitCode::SUCCESS;
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().cloned().unwrap_or_default();
        let r: Result<(), String> = match a.as_str() {
            "--pods" => v.parse().map(|x| pods = x).map_err(|e| e.to_string()),
            "--interval" => collector::config::parse_duration(&v).map(|x| interval = x),
            "--seconds" => v.parse().map(|x| seconds = x).map_err(|e| e.to_string()),
            "--base-port" => v.parse().map(|x| base_port = x).map_err(|e| e.to_string()),
            "--gateway-port" => v.parse().map(|x| gw_port = x).map_err(|e| e.to_string()),
            "--stub-gateway" => v.parse().map(|x| stub = Some(x)).map_err(|e| e.to_string()),
            _ => Err(format!("unknown argument {a}")),
        };
        if let Err(e) = r {
            eprintln!("collector-bench: {a}: {e}\nusage: collector-bench [--pods N] [--interval 50ms] [--seconds S] [--base-port P] [--gateway-port P]\n       collector-bench --parsers [--iterations N]");
            return ExitCode::from(2);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(port) = stub {
        rt.block_on(stub_gateway(port));
        return ExitCode::SUCCESS;
    }
    match rt.block_on(bench(pods, interval, seconds, base_port, gw_port)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("collector-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(pods: usize, interval: Duration, seconds: u64, base_port: u16, gw_port: u16) -> Result<(), String> {
    let target_dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    eprintln!("building podsim (cargo build --release -p podsim)…");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "podsim"])
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !st.success() {
        return Err("building podsim failed".into());
    }
    let podsim = format!("{target_dir}/release/podsim");
    let _podsim = Kill(
        Command::new(&podsim)
            .args([
                "serve",
                "--pods",
                &pods.to_string(),
                "--base-port",
                &base_port.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("{podsim}: {e}"))?,
    );
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let _gw = Kill(
        Command::new(me)
            .args(["--stub-gateway", &gw_port.to_string()])
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    // Wait for the last pod and the gateway to listen.
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in [base_port + pods as u16 - 1, gw_port] {
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!("port {port} never opened"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let targets: Vec<String> = (0..pods)
        .map(|i| format!("127.0.0.1:{}", base_port + i as u16))
        .collect();
    let cli = <collector::config::Cli as clap::Parser>::try_parse_from([
        "collector".to_string(),
        "--static".into(),
        targets.join(","),
        "--interval".into(),
        format!("{}us", interval.as_micros()),
        "--push".into(),
        format!("http://127.0.0.1:{gw_port}/.well-known/wasm-epp/snapshot"),
    ])
    .map_err(|e| e.to_string())?;
    let cfg = collector::config::Config::from_cli(cli, Some("bench-token".into()))?;
    let (push_tx, mut push_rx) = tokio::sync::mpsc::unbounded_channel();
    let (round_tx, mut round_rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = collector::RunOptions {
        on_pushed: Some(push_tx),
        on_round: Some(round_tx),
        sequence: None,
        on_listen: None,
        listener: None,
    };
    let warmup = Duration::from_secs(2);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(collector::run(cfg, opts, async move {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(warmup).await;
    while push_rx.try_recv().is_ok() {}
    while round_rx.try_recv().is_ok() {}
    let (cpu0, t0) = (cpu_seconds().ok_or("no /proc/self/stat")?, Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, elapsed) = (cpu_seconds().ok_or("no /proc/self/stat")?, t0.elapsed());
    let _ = stop_tx.send(());
    let _ = run.await;
    let (mut rounds, mut scraped, mut failed) = (Vec::new(), 0usize, 0usize);
    while let Ok(r) = round_rx.try_recv() {
        rounds.push(r.duration);
        scraped += r.completed;
        failed += r.failed;
    }
    let (mut push_lat, mut delay) = (Vec::new(), Vec::new());
    while let Ok((l, d)) = push_rx.try_recv() {
        push_lat.push(l);
        delay.push(d);
    }
    let cpu = (cpu1 - cpu0) / elapsed.as_secs_f64() * 100.0;
    println!(
        "collector-bench: {pods} pods, interval {interval:?}, {:.1} s measured ({} rounds, {scraped} scrapes, {failed} failed)",
        elapsed.as_secs_f64(),
        rounds.len()
    );
    println!("  collector CPU: {cpu:.1}% of one core (this process only; podsim and the gateway run in children)");
    println!(
        "  scrape round duration: p50 {:?}  p99 {:?}",
        pct(&mut rounds, 0.5),
        pct(&mut rounds, 0.99)
    );
    println!(
        "  last scrape -> push done: p50 {:?}  p99 {:?}  ({} pushes; push request p50 {:?} p99 {:?})",
        pct(&mut delay, 0.5),
        pct(&mut delay, 0.99),
        delay.len(),
        pct(&mut push_lat, 0.5),
        pct(&mut push_lat, 0.99)
    );
    Ok(())
}

/// Captured expositions (tests/fixtures/SOURCES.md) and the engine whose mapping reads each.
const FIXTURES: [(&str, collector::engine::Engine, &str); 3] = [
    (
        "vllm-v0-aibrix-runtime-doc.txt",
        collector::engine::Engine::Vllm,
        include_str!("../../tests/fixtures/vllm-v0-aibrix-runtime-doc.txt"),
    ),
    (
        "sglang-production-metrics-doc.txt",
        collector::engine::Engine::Sglang,
        include_str!("../../tests/fixtures/sglang-production-metrics-doc.txt"),
    ),
    (
        "triton-tensorrt-llm-readme.txt",
        collector::engine::Engine::TritonTensorrtLlm,
        include_str!("../../tests/fixtures/triton-tensorrt-llm-readme.txt"),
    ),
];

/// One page as each parser gets it.
struct Input {
    text: &'static str,
    /// `text` with every `:` made `_`: prometheus-parse's name pattern is `\w+`, so it skips
    /// (silently) every `vllm:…` / `sglang:…` line; this copy makes it read them.
    #[cfg_attr(not(feature = "compare-parsers"), allow(dead_code))]
    no_colons: String,
    engine: collector::engine::Engine,
}

/// One parser under test: returns what it read (kept, so nothing is optimised away, and
/// printed, so the parsers can be seen to read the same page).
type Parser = (&'static str, fn(&Input) -> usize);

fn ours_full(i: &Input) -> usize {
    let (mut n, mut sum) = (0usize, 0f64);
    let r = collector::prom::parse(i.text.as_bytes(), |s| {
        n += 1;
        sum += s.value;
    });
    std::hint::black_box(sum);
    r.map_or(usize::MAX, |()| n)
}

fn ours_scrape(i: &Input) -> usize {
    collector::engine::extract(i.engine, i.text.as_bytes()).map_or(usize::MAX, |m| m.running as usize)
}

#[cfg(feature = "compare-parsers")]
fn prometheus_parse(text: &str) -> usize {
    // The crate's documented input: an iterator of owned lines.
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).map_or(usize::MAX, |s| s.samples.len())
}

#[cfg(feature = "compare-parsers")]
fn prometheus_parse_as_is(i: &Input) -> usize {
    prometheus_parse(i.text)
}

#[cfg(feature = "compare-parsers")]
fn prometheus_parse_no_colons(i: &Input) -> usize {
    prometheus_parse(&i.no_colons)
}

fn bench_parsers(iterations: usize) {
    #[cfg_attr(not(feature = "compare-parsers"), allow(unused_mut))]
    let mut parsers: Vec<Parser> = vec![
        ("prom::parse (ours, all samples)", ours_full),
        ("engine::extract (ours, scrape path)", ours_scrape),
    ];
    #[cfg(feature = "compare-parsers")]
    parsers.extend([
        (
            "prometheus-parse 0.2.5, page as is",
            prometheus_parse_as_is as fn(&Input) -> usize,
        ),
        ("prometheus-parse 0.2.5, `:` -> `_`", prometheus_parse_no_colons),
    ]);
    #[cfg(not(feature = "compare-parsers"))]
    eprintln!("(built without --features compare-parsers: the prometheus-parse crate is left out)");
    println!("collector-bench --parsers: {iterations} iterations per parser and fixture, interleaved; time per scrape");
    println!("| fixture | bytes | parser | read | p50 | p99 |");
    println!("|---|---|---|---|---|---|");
    for (name, engine, text) in FIXTURES {
        let input = Input {
            text,
            no_colons: text.replace(':', "_"),
            engine,
        };
        let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(iterations); parsers.len()];
        let mut results = vec![0usize; parsers.len()];
        for i in 0..iterations + iterations / 10 {
            for (j, (_, f)) in parsers.iter().enumerate() {
                let t = Instant::now();
                let r = std::hint::black_box(f(std::hint::black_box(&input)));
                let d = t.elapsed();
                results[j] = r;
                // The first tenth warms caches and is not counted.
                if i >= iterations / 10 {
                    times[j].push(d);
                }
            }
        }
        for (j, (pname, _)) in parsers.iter().enumerate() {
            let result = match results[j] {
                usize::MAX => "error".to_string(),
                n if pname.starts_with("engine::extract") => format!("running={n}"),
                n => format!("{n} samples"),
            };
            println!(
                "| {name} | {} | {pname} | {result} | {:?} | {:?} |",
                text.len(),
                pct(&mut times[j], 0.5),
                pct(&mut times[j], 0.99)
            );
        }
    }
}
