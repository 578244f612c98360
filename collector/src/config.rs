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
    /// Port of the gateway pods' snapshot listener (with --push-gateways or --relay-peers).
    #[arg(long, value_name = "PORT")]
    pub push_port: Option<u16>,
    /// Path pushed to on --push-gateways pods.
    #[arg(long, default_value = crate::push::DEFAULT_PATH)]
    pub push_path: String,
    /// Push to the --push-gateways and --relay-peers pods over HTTPS (checked with --push-ca).
    #[arg(long)]
    pub push_tls: bool,
    /// CA bundle (PEM) that https:// gateways' certificates must chain to.
    #[arg(long, value_name = "PATH")]
    pub push_ca: Option<PathBuf>,
    /// TLS server name checked on every https:// gateway (default: each URL's host, or the pod
    /// IP for --push-gateways / --relay-peers pods).
    #[arg(long, value_name = "NAME")]
    pub push_server_name: Option<String>,
    /// Own HTTP listener: /snapshot, /snapshot?format=json, /metrics, /healthz, /readyz, and
    /// POST /relay with --relay.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Own HTTPS listener serving the same as --listen (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    pub tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) of --tls-listen.
    #[arg(long, value_name = "PATH", requires = "tls_listen")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-listen.
    #[arg(long, value_name = "PATH", requires = "tls_listen")]
    pub tls_key: Option<PathBuf>,
    /// Relay between gateway replicas: take batches at POST /relay and push them to every
    /// gateway this collector pushes to and to every --relay-peer / --relay-peers gateway.
    #[arg(long)]
    pub relay: bool,
    /// Bearer token file of both relay legs (else the snapshot token).
    #[arg(long, value_name = "PATH", requires = "relay")]
    pub relay_token_file: Option<PathBuf>,
    /// Sources allowed to POST /relay: addresses or CIDR ranges, comma-separated.
    #[arg(long, value_name = "LIST", default_value = "127.0.0.1,::1", requires = "relay")]
    pub relay_allow: String,
    /// A gateway that gets relay batches but no snapshots (repeatable), given by its snapshot
    /// URL; batches go to `<path>/relay`. Sidecar mode: the other gateway pods.
    #[arg(long = "relay-peer", value_name = "URL", requires = "relay")]
    pub relay_peer: Vec<String>,
    /// Kubernetes: every ready pod matching this label selector gets relay batches (no
    /// snapshots), at --push-port and --push-path. Sidecar mode: the gateway pods.
    #[arg(long, value_name = "SELECTOR", requires_all = ["relay", "push_port"])]
    pub relay_peers: Option<String>,
    /// Largest batch taken at /relay and largest body pushed to a gateway's relay path (the
    /// module's relay.maxBytes).
    #[arg(long, default_value = "1MiB", value_parser = parse_size, requires = "relay")]
    pub relay_max_bytes: usize,
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
    /// https:// pushes: the CA bundle (PEM) and the server name override.
    pub push_tls: Option<PushTls>,
    /// --push-gateways / --relay-peers pods over HTTPS.
    pub push_pods_tls: bool,
    /// Port and path of the gateway pods' snapshot listener (--push-gateways, --relay-peers).
    pub push_port: Option<u16>,
    pub push_path: String,
    /// --tls-listen with its certificate chain and key files.
    pub tls_listen: Option<(SocketAddr, PathBuf, PathBuf)>,
    pub relay: Option<RelayConfig>,
}

/// TLS client settings of https:// pushes.
#[derive(Clone, Debug)]
pub struct PushTls {
    pub ca_pem: Vec<u8>,
    pub server_name: Option<String>,
}

/// `--relay` settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub token: String,
    pub allowed: Vec<filter::intake::SourceNet>,
    pub peers: Vec<String>,
    pub peer_selector: Option<String>,
    pub max_bytes: usize,
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
        if cli.push_port.is_some() && cli.push_gateways.is_none() && cli.relay_peers.is_none() {
            return Err("--push-port goes with --push-gateways or --relay-peers".into());
        }
        for u in &cli.relay_peer {
            crate::push::parse_url(u).map_err(|e| format!("--relay-peer {u:?}: {e}"))?;
        }
        let https = cli
            .push
            .iter()
            .chain(&cli.relay_peer)
            .any(|u| u.starts_with("https://"))
            || cli.push_tls;
        let push_tls = match (&cli.push_ca, https) {
            (Some(p), _) => Some(PushTls {
                ca_pem: std::fs::read(p).map_err(|e| format!("--push-ca {}: {e}", p.display()))?,
                server_name: cli.push_server_name.clone(),
            }),
            (None, true) => {
                return Err("https:// gateways need --push-ca (the CA bundle their certificates chain to)".into())
            }
            (None, false) => None,
        };
        let relay = if cli.relay {
            let relay_token = match &cli.relay_token_file {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .map_err(|e| format!("--relay-token-file {}: {e}", p.display()))?
                        .trim()
                        .to_string(),
                ),
                None => token.clone(),
            };
            let token = relay_token
                .filter(|t| t.len() >= 16)
                .ok_or("--relay needs a token of at least 16 bytes: --relay-token-file, or the snapshot token")?;
            let allowed = cli
                .relay_allow
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<filter::intake::SourceNet>()
                        .map_err(|e| format!("--relay-allow: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if cli.listen.is_none() && cli.tls_listen.is_none() {
                return Err("--relay takes batches on --listen or --tls-listen: give one".into());
            }
            Some(RelayConfig {
                token,
                allowed,
                peers: cli.relay_peer.clone(),
                peer_selector: cli.relay_peers.clone(),
                max_bytes: cli.relay_max_bytes,
            })
        } else {
            None
        };
        let tls_listen = match (cli.tls_listen, cli.tls_cert, cli.tls_key) {
            (Some(a), Some(c), Some(k)) => Some((a, c, k)),
            _ => None,
        };
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
                .map(|(sel, port)| (sel, port, cli.push_path.clone())),
            push_port: cli.push_port,
            push_path: cli.push_path,
            namespace: cli.namespace,
            listen: cli.listen,
            once: cli.once.then_some(cli.format),
            push_tls,
            push_pods_tls: cli.push_tls,
            tls_listen,
            relay,
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
        assert!(cli(&["--static", "127.0.0.1:1", "--push-port", "80"]).is_err());
        let d = cli(&["--dns", "pods.local:8000", "--dns-refresh", "1s"]).unwrap();
        assert!(matches!(d.discovery, Discovery::Dns { ref host, port: 8000, .. } if host == "pods.local"));
    }
}

#[cfg(test)]
mod relay_flag_tests {
    use super::*;

    fn cli(args: &[&str], token: Option<&str>) -> Result<Config, String> {
        let cli =
            Cli::try_parse_from(std::iter::once("collector").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        Config::from_cli(cli, token.map(String::from))
    }

    #[test]
    fn relay_flags_validate() {
        let t = Some("a-token-of-16-bytes-or-more");
        let base = ["--static", "127.0.0.1:1", "--listen", "127.0.0.1:0"];
        fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            base.iter().chain(extra).copied().collect()
        }
        let with = |extra: &[&'static str]| with(&base, extra);
        let c = cli(&with(&["--relay", "--relay-peer", "http://10.0.0.2:8080"]), t).unwrap();
        let r = c.relay.unwrap();
        assert_eq!(r.token, "a-token-of-16-bytes-or-more");
        assert_eq!(r.peers, vec!["http://10.0.0.2:8080".to_string()]);
        assert_eq!(r.max_bytes, 1 << 20);
        assert!(r.allowed.iter().any(|n| n.contains("127.0.0.1".parse().unwrap())));
        assert!(cli(&base, t).unwrap().relay.is_none(), "off unless asked");
        // No token, a short one, a relay flag without --relay, no listener, a bad range.
        assert!(cli(&with(&["--relay"]), None).unwrap_err().contains("token"));
        assert!(cli(&with(&["--relay"]), Some("short")).unwrap_err().contains("token"));
        assert!(cli(&with(&["--relay-peer", "http://x:1"]), t).is_err());
        assert!(cli(&["--static", "127.0.0.1:1", "--relay"], t)
            .unwrap_err()
            .contains("listen"));
        assert!(cli(&with(&["--relay", "--relay-allow", "10.0.0.1/8"]), t).is_err());
        assert!(
            cli(&with(&["--relay", "--relay-peers", "app=gw"]), t).is_err(),
            "needs --push-port"
        );
        assert!(cli(&with(&["--relay", "--relay-peers", "app=gw", "--push-port", "8080"]), t).is_ok());
        // https:// needs a CA bundle; a listener over TLS needs its certificate and key.
        assert!(cli(&with(&["--push", "https://gw:8443/x"]), t)
            .unwrap_err()
            .contains("--push-ca"));
        assert!(cli(&with(&["--push-tls"]), t).unwrap_err().contains("--push-ca"));
        assert!(cli(&with(&["--tls-listen", "127.0.0.1:0"]), t).is_err());
    }
}
