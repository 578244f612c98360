//! `host-sim serve`: a local HTTP/1.1 gateway that runs the plugin like Envoy would.
//!
//! - A listener (hyper 1 on tokio) accepts clients; each request is assigned round-robin to a
//!   worker thread that owns one VM instance ([`Worker`]); all workers share one `vm_id`
//!   namespace ([`VmGroup`]), like Envoy's per-worker VMs (docs/proxy-wasm.md#vms-per-worker-and-vm_id).
//! - After the filter releases the request headers, the router picks the upstream from the
//!   forwarded `x-gateway-destination-endpoint` header (an ordered list, walked on connect
//!   failure, as the GIE contract asks, docs/proxy-wasm.md#how-a-pick-reaches-the-router) or, without it, from the route cluster's own
//!   round-robin. The served endpoint is reported to the filter as property `upstream.address`
//!   before the response headers callback.
//! - Without the header, filter state `envoy.network.transport_socket.original_dst_address`
//!   (set with the `set_envoy_filter_state` foreign function) routes like an ORIGINAL_DST
//!   cluster (docs/proxy-wasm.md#how-a-pick-reaches-the-router, path 2).
//! - Bodies stream both ways; data the filter lets through goes on at once (SSE works).
//! - `dispatch_http_call` to a named cluster performs a real HTTP/1.1 call to that cluster.
//!
//! Only loopback addresses should be configured: this is a developer tool and a test fixture.
//!
//! Modules: this one (configuration, start and stop), `worker_loop` (the worker threads, one
//! VM each) and `proxy` (client connections, routing, upstream requests, callouts).

mod proxy;
mod worker_loop;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc as smpsc, Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::options::{Clock, FailurePolicy, HostOptions, HostProfile};
use crate::shared::VmGroup;
use crate::worker::Worker;
use crate::{Error, Plugin};

use worker_loop::{worker_loop, WCmd};

/// The gateway's YAML configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listen address; use a loopback address (port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The plugin module (relative paths are relative to the config file).
    pub wasm: PathBuf,
    #[serde(default)]
    pub plugin_config: Option<String>,
    #[serde(default)]
    pub plugin_config_file: Option<PathBuf>,
    #[serde(default)]
    pub vm_config: Option<String>,
    #[serde(default)]
    pub vm_id: String,
    #[serde(default)]
    pub root_id: String,
    #[serde(default)]
    pub profile: HostProfile,
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default)]
    pub allow_on_headers_stop_iteration: bool,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    #[serde(default)]
    pub buffer_limit: Option<usize>,
    /// Named clusters: static lists of `ip:port`.
    pub clusters: BTreeMap<String, Vec<String>>,
    /// The cluster requests are routed to.
    pub route_cluster: String,
    /// Header the router reads the endpoint list from.
    #[serde(default = "default_dest_header")]
    pub destination_header: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Print guest logs to stderr.
    #[serde(default)]
    pub echo_logs: bool,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_workers() -> usize {
    2
}
fn default_dest_header() -> String {
    "x-gateway-destination-endpoint".into()
}

impl GatewayConfig {
    pub fn from_file(path: &Path) -> Result<(GatewayConfig, PathBuf), Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let cfg: GatewayConfig =
            serde_saphyr::from_str(&text).map_err(|e| Error::Case(format!("gateway config: {e}")))?;
        Ok((cfg, path.parent().map(Path::to_path_buf).unwrap_or_default()))
    }

    fn host_options(&self, base: &Path) -> Result<HostOptions, Error> {
        let mut o = HostOptions::new(self.profile);
        o.vm_id = self.vm_id.clone();
        o.root_id = self.root_id.clone();
        o.plugin_config =
            crate::options::inline_or_file(self.plugin_config.as_ref(), self.plugin_config_file.as_ref(), base)?;
        o.vm_config = self.vm_config.clone().unwrap_or_default().into_bytes();
        o.allow_on_headers_stop_iteration = self.allow_on_headers_stop_iteration;
        o.failure_policy = self.failure_policy;
        if let Some(b) = self.buffer_limit {
            o.buffer_limit = b;
        }
        o.properties = crate::options::property_bytes(&self.properties);
        // Known clusters answer through real calls (None = no canned response).
        o.clusters = self.clusters.keys().map(|k| (k.clone(), None)).collect();
        o.clock = Clock::Real;
        o.echo_logs = self.echo_logs;
        Ok(o)
    }
}

/// Run a gateway from a config file until Ctrl-C.
pub fn serve_file(path: &Path) -> Result<(), Error> {
    let (cfg, base) = GatewayConfig::from_file(path)?;
    let gw = Gateway::start(cfg, &base)?;
    eprintln!("host-sim gateway listening on http://{}", gw.addr());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Start(format!("runtime: {e}")))?;
    rt.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    gw.shutdown();
    Ok(())
}

/// What the proxy side's tasks share: the worker threads' inboxes, round-robin counters, the
/// clusters and routing settings, and the runtime that runs callouts.
struct ProxyState {
    workers: Vec<smpsc::Sender<WCmd>>,
    rr: AtomicUsize,
    cluster_rr: AtomicUsize,
    clusters: BTreeMap<String, Vec<String>>,
    route_cluster: String,
    dest_header: String,
    rt: tokio::runtime::Handle,
}

// === the gateway ===

/// A running gateway. Dropping it (or `shutdown`) stops the listener and the workers.
pub struct Gateway {
    addr: SocketAddr,
    group: VmGroup,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    worker_threads: Vec<std::thread::JoinHandle<()>>,
    worker_tx: Vec<smpsc::Sender<WCmd>>,
}

impl Gateway {
    /// Load the plugin, start the workers (each runs `on_vm_start`/`on_configure`), bind, serve.
    pub fn start(cfg: GatewayConfig, base: &Path) -> Result<Gateway, Error> {
        let plugin = Plugin::from_file_env_cache(base.join(&cfg.wasm))?;
        Gateway::start_with_plugin(cfg, base, plugin)
    }

    /// Like [`Gateway::start`] with an already compiled module (`cfg.wasm` is ignored).
    pub fn start_with_plugin(cfg: GatewayConfig, base: &Path, plugin: Plugin) -> Result<Gateway, Error> {
        let opts = Arc::new(cfg.host_options(base)?);
        let group = VmGroup::new(opts.vm_id.clone());
        if !cfg.clusters.contains_key(&cfg.route_cluster) {
            return Err(Error::Case(format!(
                "route_cluster {:?} is not in clusters",
                cfg.route_cluster
            )));
        }
        let shared_cell: Arc<OnceLock<Arc<ProxyState>>> = Arc::new(OnceLock::new());
        let mut worker_tx = Vec::new();
        let mut worker_threads = Vec::new();
        for i in 0..cfg.workers.max(1) {
            let w = Worker::start(plugin.clone(), opts.clone(), group.clone(), i)?;
            let (tx, rx) = smpsc::channel();
            let tx2 = tx.clone();
            let cell = shared_cell.clone();
            let h = std::thread::Builder::new()
                .name(format!("wasm-worker-{i}"))
                .spawn(move || worker_loop(w, rx, tx2, cell))
                .map_err(|e| Error::Start(format!("worker thread: {e}")))?;
            worker_tx.push(tx);
            worker_threads.push(h);
        }
        let std_listener =
            std::net::TcpListener::bind(&cfg.listen).map_err(|e| Error::Start(format!("bind {}: {e}", cfg.listen)))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| Error::Start(e.to_string()))?;
        let addr = std_listener.local_addr().map_err(|e| Error::Start(e.to_string()))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = smpsc::channel::<Result<(), String>>();
        let workers = worker_tx.clone();
        let thread = std::thread::Builder::new()
            .name("gateway".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let shared = Arc::new(ProxyState {
                    workers,
                    rr: AtomicUsize::new(0),
                    cluster_rr: AtomicUsize::new(0),
                    clusters: cfg.clusters.clone(),
                    route_cluster: cfg.route_cluster.clone(),
                    dest_header: cfg.destination_header.to_ascii_lowercase(),
                    rt: rt.handle().clone(),
                });
                let _ = shared_cell.set(shared.clone());
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let mut stop_rx = stop_rx;
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            acc = listener.accept() => {
                                let Ok((tcp, peer)) = acc else { continue };
                                tokio::spawn(proxy::serve_connection(tcp, peer, shared.clone()));
                            }
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| Error::Start(format!("gateway thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Start(e)),
            Err(_) => return Err(Error::Start("gateway thread died".into())),
        }
        Ok(Gateway {
            addr,
            group,
            stop: Some(stop_tx),
            thread: Some(thread),
            worker_threads,
            worker_tx,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared-data namespace of the workers (for assertions).
    pub fn group(&self) -> &VmGroup {
        &self.group
    }

    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for tx in &self.worker_tx {
            let _ = tx.send(WCmd::Stop);
        }
        for t in self.worker_threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop_all();
    }
}
