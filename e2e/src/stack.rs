//! The local stack: podsim pods, the compiled module inside host-sim's gateway, and the collector,
//! all on loopback and all in this process, so that everything stops when the process does
//! (Ctrl-C included) and tests own their state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use host_sim::serve::{Gateway, GatewayConfig};
use host_sim::Plugin;
use podsim::serve::{PodConfig, PodHandle};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Bearer token the demo and the tests configure on both sides of the snapshot push.
pub const TOKEN: &str = "e2e-snapshot-token-0123456789";
/// The filter's default snapshot intake path.
pub const SNAPSHOT_PATH: &str = "/.well-known/wasm-epp/snapshot";

/// Workspace root (this crate lives in `e2e/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The compiled module: `$WASM_EPP_WASM` or `dist/wasm-epp.wasm` (`./build.sh wasm`), compiled
/// once per process; the compiled code is cached on disk so the next process skips cranelift.
pub fn plugin() -> Result<Plugin, String> {
    static P: OnceLock<Result<Plugin, String>> = OnceLock::new();
    P.get_or_init(|| {
        let path = std::env::var_os("WASM_EPP_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("dist/wasm-epp.wasm"));
        let cache = workspace_root().join("target/host-sim-modules/.cache");
        Plugin::from_file_cached(&path, &cache)
            .map_err(|e| format!("{}: {e} (build it with ./build.sh wasm)", path.display()))
    })
    .clone()
}

/// Starts `n` simulated vLLM pods serving `model` at `speed` × real time.
pub async fn pods(n: usize, model: &str, speed: f64) -> Result<Vec<PodHandle>, String> {
    let config = PodConfig {
        model: model.to_string(),
        params: podsim::calib::ServerParams::default(),
        speed,
    };
    podsim::serve::start_pods(n, 0, config)
        .await
        .map_err(|e| format!("starting pods: {e}"))
}

/// What the gateway runs: the module's JSON configuration and the route cluster's endpoints.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    pub plugin_config: Value,
    pub cluster: Vec<SocketAddr>,
    pub workers: usize,
    /// Where the gateway listens (port 0 picks a free port).
    pub listen: SocketAddr,
}

impl GatewaySpec {
    /// The module on the snapshot intake with [`TOKEN`], the given picker settings, metrics on.
    pub fn picker(picker: Value, cluster: &[SocketAddr]) -> GatewaySpec {
        GatewaySpec {
            plugin_config: json!({"snapshot": {"token": TOKEN}, "picker": picker, "metrics": true}),
            cluster: cluster.to_vec(),
            workers: 2,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Adds or replaces a top-level field of the module configuration.
    pub fn with(mut self, key: &str, value: Value) -> GatewaySpec {
        self.plugin_config[key] = value;
        self
    }
}

/// Starts host-sim's gateway on `spec.listen` (a free loopback port by default) with the compiled
/// module, Envoy profile, `allow_on_headers_stop_iteration` on (body-aware picking).
pub fn gateway(spec: &GatewaySpec) -> Result<Gateway, String> {
    let cluster: Vec<String> = spec.cluster.iter().map(|a| a.to_string()).collect();
    let cfg: GatewayConfig = serde_json::from_value(json!({
        "listen": spec.listen.to_string(),
        "wasm": "unused.wasm",
        "plugin_config": spec.plugin_config.to_string(),
        "vm_id": "wasm-epp",
        "workers": spec.workers,
        "allow_on_headers_stop_iteration": true,
        "clusters": {"pool": cluster},
        "route_cluster": "pool",
    }))
    .map_err(|e| format!("gateway config: {e}"))?;
    Gateway::start_with_plugin(cfg, &workspace_root(), plugin()?).map_err(|e| format!("gateway: {e}"))
}

/// A collector running in this process until stopped.
pub struct Collector {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Collector {
    /// Starts `collector ARGS...` (the binary's own flags, token [`TOKEN`]) on the current runtime.
    pub async fn start(args: &[String]) -> Result<Collector, String> {
        use clap::Parser;
        let argv = std::iter::once("collector").chain(args.iter().map(String::as_str));
        let cli = collector::config::Cli::try_parse_from(argv).map_err(|e| format!("collector flags: {e}"))?;
        let cfg = collector::config::Config::from_cli(cli, Some(TOKEN.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            collector::run(cfg, collector::RunOptions::default(), async {
                let _ = stopped.await;
            })
            .await
            .map(|_| ())
        });
        Ok(Collector {
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Sidecar mode: pods by static list, pushing to `gateway` every `interval`.
    pub async fn sidecar(pods: &[SocketAddr], gateway: SocketAddr, interval: Duration) -> Result<Collector, String> {
        let list: Vec<String> = pods.iter().map(|a| a.to_string()).collect();
        let args = vec![
            "--static".to_string(),
            list.join(","),
            "--interval".into(),
            format!("{}ms", interval.as_millis()),
            "--fail-after".into(),
            "2".into(),
            "--push".into(),
            format!("http://{gateway}{SNAPSHOT_PATH}"),
        ];
        Collector::start(&args).await
    }

    /// Stops the collector and waits for it.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await.map_err(|e| format!("collector task: {e}"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// How the gateway routes inference requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// The module picks (`x-gateway-destination-endpoint`, an ordered fallback list).
    Picker,
    /// The same gateway, module and collector, but the module picks on no path
    /// (`inferencePaths: []`): the route cluster's own round-robin routes every request.
    RoundRobin,
}

impl Routing {
    pub fn name(self) -> &'static str {
        match self {
            Routing::Picker => "wasm-epp",
            Routing::RoundRobin => "round-robin",
        }
    }
}

/// Everything [`Stack::start`] needs; [`StackOptions::default`] is `./build.sh serve`.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub pods: usize,
    /// The model every pod serves (podsim answers 404 for any other).
    pub model: String,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Gateway listen address (port 0: a free port).
    pub gateway: SocketAddr,
    /// First pod port on 127.0.0.1; pod `i` listens on `pod_port + i` (0: free ports).
    pub pod_port: u16,
    pub routing: Routing,
    /// Picker profile (`wasm-epp-default`, `gie-default`, `llm-d-optimized-baseline`).
    pub profile: String,
    /// Length of the ordered fallback list the picker returns.
    pub max_endpoints: u32,
    /// `models.allow`: other models get 404 from the module. Empty: the served model only.
    pub allow: Vec<String>,
    /// Collector scrape and push interval.
    pub interval: Duration,
    /// Run the collector (without it the module never has a snapshot: 503, FailClose).
    pub collector: bool,
    /// Module configuration merged over the generated one (objects merge key by key).
    pub extra: Value,
}

impl Default for StackOptions {
    fn default() -> StackOptions {
        StackOptions {
            pods: 4,
            model: podsim::workload::MODEL.to_string(),
            speed: 1.0,
            gateway: SocketAddr::from(([127, 0, 0, 1], 8080)),
            pod_port: 8100,
            routing: Routing::Picker,
            profile: "wasm-epp-default".into(),
            max_endpoints: 2,
            allow: Vec::new(),
            interval: Duration::from_millis(50),
            collector: true,
            extra: json!({}),
        }
    }
}

impl StackOptions {
    /// The module's JSON configuration for these options.
    pub fn module_config(&self, cluster: &[SocketAddr]) -> GatewaySpec {
        let picker = json!({"profile": self.profile, "maxEndpoints": self.max_endpoints});
        let mut spec = GatewaySpec::picker(picker, cluster);
        match self.routing {
            Routing::Picker => {
                let allow = if self.allow.is_empty() {
                    vec![self.model.clone()]
                } else {
                    self.allow.clone()
                };
                spec = spec.with("models", json!({ "allow": allow }));
            }
            Routing::RoundRobin => spec = spec.with("inferencePaths", json!([])),
        }
        merge(&mut spec.plugin_config, &self.extra);
        spec.listen = self.gateway;
        spec
    }
}

/// Merges `over` into `base`: objects key by key, recursively; anything else replaces.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Pods, the module in the gateway and the collector, started together and stopped together.
pub struct Stack {
    pub pods: Vec<PodHandle>,
    pub gateway: Gateway,
    pub collector: Option<Collector>,
    /// The module configuration the gateway runs.
    pub module_config: Value,
}

impl Stack {
    /// Starts the pods, the gateway and (unless disabled) the collector, and waits until the
    /// collector's first snapshot, with every pod ready, has reached the module.
    pub async fn start(o: &StackOptions) -> Result<Stack, String> {
        let config = PodConfig {
            model: o.model.clone(),
            params: podsim::calib::ServerParams::default(),
            speed: o.speed,
        };
        let pods = podsim::serve::start_pods(o.pods, o.pod_port, config)
            .await
            .map_err(|e| format!("starting {} pods from 127.0.0.1:{}: {e}", o.pods, o.pod_port))?;
        let addrs: Vec<SocketAddr> = pods.iter().map(|p| p.addr).collect();
        let spec = o.module_config(&addrs);
        let gateway = gateway(&spec).map_err(|e| format!("{e} (listen {})", o.gateway))?;
        let collector = if o.collector {
            let c = Collector::sidecar(&addrs, gateway.addr(), o.interval).await?;
            if !crate::wait_for_ready(&gateway, o.pods, Duration::from_secs(10)).await {
                return Err("the collector's first snapshot did not reach the gateway within 10 s".into());
            }
            Some(c)
        } else {
            None
        };
        Ok(Stack {
            pods,
            gateway,
            collector,
            module_config: spec.plugin_config,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway.addr()
    }

    /// What each pod served so far.
    pub fn pod_stats(&self) -> Vec<PodStats> {
        self.pods.iter().map(PodStats::of).collect()
    }

    /// Stops the collector, then the gateway, then the pods.
    pub async fn stop(self) -> Result<(), String> {
        let Stack {
            pods,
            gateway,
            collector,
            ..
        } = self;
        let stopped = match collector {
            Some(c) => c.stop().await,
            None => Ok(()),
        };
        // Gateway::shutdown joins its threads: off the async workers.
        tokio::task::spawn_blocking(move || gateway.shutdown())
            .await
            .map_err(|e| format!("gateway shutdown: {e}"))?;
        drop(pods);
        stopped
    }
}

/// One pod's totals, read off its own `/metrics` text (what a Prometheus scrape would see).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodStats {
    pub addr: String,
    /// Requests finished (`vllm:request_success_total`).
    pub finished: u64,
    /// Prompt tokens queried in / found in the prefix cache.
    pub prefix_queries: f64,
    pub prefix_hits: f64,
}

impl PodStats {
    pub fn of(pod: &PodHandle) -> PodStats {
        let text = pod.metrics_text();
        PodStats {
            addr: pod.addr.to_string(),
            finished: pod.finished(),
            prefix_queries: sample(&text, "vllm:prefix_cache_queries_total"),
            prefix_hits: sample(&text, "vllm:prefix_cache_hits_total"),
        }
    }

    /// Prefix-cache hit rate over several pods (hits / queried tokens); 0 with no queries.
    pub fn hit_rate(stats: &[PodStats]) -> f64 {
        let q: f64 = stats.iter().map(|s| s.prefix_queries).sum();
        let h: f64 = stats.iter().map(|s| s.prefix_hits).sum();
        if q > 0.0 {
            h / q
        } else {
            0.0
        }
    }
}

/// The value of the first sample of `family` in Prometheus text (0 when absent).
fn sample(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_recursive_for_objects_and_replaces_the_rest() {
        let mut base = json!({"picker": {"profile": "a", "maxEndpoints": 2}, "metrics": true, "x": [1]});
        merge(
            &mut base,
            &json!({"picker": {"maxEndpoints": 1}, "x": [2, 3], "failureMode": "FailOpen"}),
        );
        assert_eq!(
            base,
            json!({"picker": {"profile": "a", "maxEndpoints": 1}, "metrics": true, "x": [2, 3], "failureMode": "FailOpen"})
        );
    }

    #[test]
    fn round_robin_picks_on_no_path_and_picker_allows_the_served_model() {
        let o = StackOptions::default();
        let pods = [SocketAddr::from(([127, 0, 0, 1], 9))];
        let c = o.module_config(&pods).plugin_config;
        assert_eq!(c["models"]["allow"], json!([podsim::workload::MODEL]));
        assert!(c.get("inferencePaths").is_none());
        let rr = StackOptions {
            routing: Routing::RoundRobin,
            ..StackOptions::default()
        };
        let c = rr.module_config(&pods).plugin_config;
        assert_eq!(c["inferencePaths"], json!([]));
        assert!(c.get("models").is_none());
    }

    #[test]
    fn samples_are_read_by_family_name() {
        let text = "# HELP vllm:prefix_cache_hits_total x\nvllm:prefix_cache_hits_total{engine=\"0\"} 12.0\n\
                    vllm:prefix_cache_queries_total{engine=\"0\"} 48.0\n";
        assert_eq!(sample(text, "vllm:prefix_cache_hits_total"), 12.0);
        assert_eq!(sample(text, "vllm:prefix_cache_queries_total"), 48.0);
        assert_eq!(sample(text, "vllm:prefix_cache"), 0.0);
    }
}
