//! Command line: the raw clap DTO ([`Cli`]) and the validated [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::engine::Engine;

/// Parses `50ms`, `1s`, `2m`, `1500us` (a bare number is milliseconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (use e.g. 50ms, 1s)"))?;
    let secs = match unit {
        "" | "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (us, ms, s, m)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `1MiB`, `512KiB`, `65536`, `1MB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: usize = num.parse().map_err(|_| format!("bad size {s:?} (use e.g. 1MiB)"))?;
    let mult = match unit {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "KB" | "kB" => 1000,
        "MiB" | "M" => 1 << 20,
        "MB" => 1_000_000,
        _ => return Err(format!("bad size unit in {s:?} (B, KiB, MiB)")),
    };
    v.checked_mul(mult)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("size {s:?} out of range"))
}

fn parse_static(s: &str) -> Result<Vec<SocketAddr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<SocketAddr>()
                .map_err(|e| format!("--static {p:?}: {e} (want ip:port)"))
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Json,
    Binary,
}

/// Discovers model-server pods, scrapes their Prometheus /metrics and pushes load snapshots to
/// the wasm-epp gateway filter.
#[derive(Debug, Parser)]
#[command(name = "collector", version, about, long_about = None)]
pub struct Cli {
    /// Static targets: ip:port,ip:port
    #[arg(long = "static", value_name = "ADDRS", group = "discovery")]
    pub static_targets: Option<String>,
    /// File with one ip:port per line (# comments allowed), re-read when it changes.
    #[arg(long, value_name = "PATH", group = "discovery")]
    pub targets_file: Option<PathBuf>,
    /// host:port whose A/AAAA records are the targets (e.g. a headless Service), re-resolved.
    #[arg(long, value_name = "HOST:PORT", group = "discovery")]
    pub dns: Option<String>,
    /// How often --dns is re-resolved.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub dns_refresh: Duration,
    /// InferencePool (inference.networking.k8s.io/v1) whose pods are the targets.
    #[arg(long, value_name = "NAME", group = "discovery")]
    pub inference_pool: Option<String>,
    /// Namespace of the InferencePool and of --push-gateways (default: the pod's own, or "default").
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Engine of non-Kubernetes targets (Kubernetes pods use their llm-d.ai/engine-type label).
    #[arg(long, default_value = "vllm", value_parser = |s: &str| s.parse::<Engine>())]
    pub engine: Engine,
    #[arg(long, default_value = "/metrics")]
    pub metrics_path: String,
    /// Scrape and snapshot interval.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Per-pod scrape timeout.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Consecutive failed scrapes after which a pod is marked not ready.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub fail_after: u32,
    /// Most bytes read from one scrape; a larger answer fails that scrape.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub max_scrape_bytes: usize,
    /// Gateway snapshot URL (repeatable), e.g. http://127.0.0.1:8080/.well-known/wasm-epp/snapshot
    #[arg(long = "push", value_name = "URL")]
    pub push: Vec<String>,
    /// File holding the bearer token (else env WASM_EPP_SNAPSHOT_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Central mode: push to every ready pod matching this label selector (Kubernetes).
    #[arg(long, value_name = "SELECTOR", requires = "push_port")]
    pub push_gateways: Option<String>,
    /// Port of the gateway pods' snapshot listener (with --push-gateways).
    #[arg(long, value_name = "PORT", requires = "push_gateways")]
    pub push_port: Option<u16>,
    /// Path pushed to on --push-gateways pods.
    #[arg(long, default_value = crate::push::DEFAULT_PATH)]
    pub push_path: String,
    /// Own HTTP listener: /snapshot, /snapshot?format=json, /metrics, /healthz, /readyz.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Scrape once, print the snapshot to stdout and exit (non-zero if no pod answered).
    #[arg(long)]
    pub once: bool,
    /// Output of --once.
    #[arg(long, value_enum, default_value = "json")]
    pub format: OutputFormat,
}

/// Where targets come from.
#[derive(Clone, Debug)]
pub enum Discovery {
    Static(Vec<SocketAddr>),
    File(PathBuf),
    Dns { host: String, port: u16, refresh: Duration },
    InferencePool { name: String, namespace: Option<String> },
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub discovery: Discovery,
    pub engine: Engine,
    pub metrics_path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub fail_after: u32,
    pub max_scrape_bytes: usize,
    pub push: Vec<String>,
    pub token: Option<String>,
    pub push_gateways: Option<(String, u16, String)>,
    pub namespace: Option<String>,
    pub listen: Option<SocketAddr>,
    pub once: Option<OutputFormat>,
}

/// Env var holding the bearer token when --token-file is not given.
pub const TOKEN_ENV: &str = "WASM_EPP_SNAPSHOT_TOKEN";

impl Config {
    /// Validates the CLI; `env_token` is the value of [`TOKEN_ENV`] (passed in for tests).
    pub fn from_cli(cli: Cli, env_token: Option<String>) -> Result<Config, String> {
        let discovery = if let Some(t) = cli.static_targets {
            let t = parse_static(&t)?;
            if t.is_empty() {
                return Err("--static needs at least one ip:port".into());
            }
            Discovery::Static(t)
        } else if let Some(p) = cli.targets_file {
            Discovery::File(p)
        } else if let Some(d) = cli.dns {
            let (host, port) = d
                .rsplit_once(':')
                .ok_or_else(|| format!("--dns {d:?}: want host:port"))?;
            let port: u16 = port.parse().map_err(|_| format!("--dns {d:?}: bad port"))?;
            if host.is_empty() || port == 0 {
                return Err(format!("--dns {d:?}: want host:port"));
            }
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            Discovery::Dns {
                host,
                port,
                refresh: cli.dns_refresh,
            }
        } else if let Some(name) = cli.inference_pool {
            Discovery::InferencePool {
                name,
                namespace: cli.namespace.clone(),
            }
        } else {
            return Err("no discovery given: use one of --static, --targets-file, --dns, --inference-pool".into());
        };
        if !cli.metrics_path.starts_with('/') {
            return Err("--metrics-path must start with '/'".into());
        }
        for u in &cli.push {
            crate::push::parse_url(u).map_err(|e| format!("--push {u:?}: {e}"))?;
        }
        let token = match &cli.token_file {
            Some(p) => {
                let t = std::fs::read_to_string(p).map_err(|e| format!("--token-file {}: {e}", p.display()))?;
                Some(t.trim().to_string())
            }
            None => env_token.map(|t| t.trim().to_string()),
        };
        if token.as_ref().is_some_and(|t| t.is_empty()) {
            return Err("the snapshot token is empty".into());
        }
        let pushes = !cli.push.is_empty() || cli.push_gateways.is_some();
        if pushes && token.is_none() && !cli.once {
            return Err(format!("pushing needs a token: --token-file PATH or env {TOKEN_ENV}"));
        }
        if cli.timeout.is_zero() || cli.interval.is_zero() {
            return Err("--interval and --timeout must be > 0".into());
        }
        Ok(Config {
            discovery,
            engine: cli.engine,
            metrics_path: cli.metrics_path,
            interval: cli.interval,
            timeout: cli.timeout,
            fail_after: cli.fail_after,
            max_scrape_bytes: cli.max_scrape_bytes,
            push: cli.push,
            token,
            push_gateways: cli
                .push_gateways
                .zip(cli.push_port)
                .map(|(sel, port)| (sel, port, cli.push_path)),
            namespace: cli.namespace,
            listen: cli.listen,
            once: cli.once.then_some(cli.format),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0ms").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("0").is_err());
    }

    fn cli(args: &[&str]) -> Result<Config, String> {
        let cli =
            Cli::try_parse_from(std::iter::once("collector").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        Config::from_cli(cli, None)
    }

    #[test]
    fn flags_validate() {
        let c = cli(&["--static", "127.0.0.1:8000,10.0.0.2:8001", "--once"]).unwrap();
        assert!(matches!(c.discovery, Discovery::Static(ref v) if v.len() == 2));
        assert_eq!(c.interval, Duration::from_millis(50));
        assert_eq!(c.timeout, Duration::from_millis(200));
        assert_eq!(c.fail_after, 3);
        assert_eq!(c.max_scrape_bytes, 1 << 20);
        assert_eq!(c.once, Some(OutputFormat::Json));
        // Two discoveries at once, none, bad address, push without a token, bad engine.
        assert!(cli(&["--static", "127.0.0.1:1", "--dns", "x:1"]).is_err());
        assert!(cli(&[]).unwrap_err().contains("no discovery"));
        assert!(cli(&["--static", "nope"]).is_err());
        assert!(cli(&["--static", "127.0.0.1:1", "--push", "http://127.0.0.1:9/x"])
            .unwrap_err()
            .contains("token"));
        assert!(cli(&["--static", "127.0.0.1:1", "--engine", "llamacpp"]).is_err());
        assert!(cli(&["--static", "127.0.0.1:1", "--push-gateways", "app=gw"]).is_err());
        let d = cli(&["--dns", "pods.local:8000", "--dns-refresh", "1s"]).unwrap();
        assert!(matches!(d.discovery, Discovery::Dns { ref host, port: 8000, .. } if host == "pods.local"));
    }
}
