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
}

impl GatewaySpec {
    /// The module on the snapshot intake with [`TOKEN`], the given picker settings, metrics on.
    pub fn picker(picker: Value, cluster: &[SocketAddr]) -> GatewaySpec {
        GatewaySpec {
            plugin_config: json!({"snapshot": {"token": TOKEN}, "picker": picker, "metrics": true}),
            cluster: cluster.to_vec(),
            workers: 2,
        }
    }

    /// Adds or replaces a top-level field of the module configuration.
    pub fn with(mut self, key: &str, value: Value) -> GatewaySpec {
        self.plugin_config[key] = value;
        self
    }
}

/// Starts host-sim's gateway on a free loopback port with the compiled module, Envoy profile,
/// `allow_on_headers_stop_iteration` on (body-aware picking).
pub fn gateway(spec: &GatewaySpec) -> Result<Gateway, String> {
    let cluster: Vec<String> = spec.cluster.iter().map(|a| a.to_string()).collect();
    let cfg: GatewayConfig = serde_json::from_value(json!({
        "listen": "127.0.0.1:0",
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
