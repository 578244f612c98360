//! # collector: scrape model servers, push load snapshots
//!
//! The wasm-epp collector runs beside a gateway (sidecar) or centrally. It discovers
//! model-server pods, scrapes each pod's Prometheus `/metrics` every interval, maps the
//! engine's metric names to one schema, and pushes a binary load snapshot
//! ([`picker_core::snapshot::Snapshot`], picker-core's codec) to the gateway, where the
//! proxy-wasm filter validates and stores it.
//!
//! ```text
//!  discovery (static | file | DNS | InferencePool) ─▶ targets (watch channel)
//!  round every --interval: scrape idle pods concurrently (jitter ≤ min(interval/10, 5 ms),
//!      --timeout each, ≤ --max-scrape-bytes) ─▶ parse (prom) ─▶ map (engine) ─▶ pod table
//!  snapshot ─▶ watch channel (latest wins) ─▶ one push task per gateway ─▶ POST
//!                                         └─▶ --listen: /snapshot, /metrics, /healthz, /readyz
//!  --relay: POST /relay (module worker VMs) ─▶ buffer ─▶ one relay task per gateway ─▶ POST …/relay
//! ```
//!
//! ## Flags
//!
//! | flag | meaning | default |
//! |---|---|---|
//! | `--static ip:port,…` | fixed targets | — |
//! | `--targets-file PATH` | one `ip:port` per line (`#` comments); re-read when its mtime or size changes (polled every second) | — |
//! | `--dns host:port` | A/AAAA records of `host` (a headless Service), re-resolved every `--dns-refresh` | — |
//! | `--dns-refresh D` | DNS re-resolution period | `5s` |
//! | `--inference-pool NAME` | pods of an `inference.networking.k8s.io/v1` InferencePool: `spec.selector.matchLabels`, one target per pod × `spec.targetPorts[].number`; list + watch, readiness from the pod's `Ready` condition | — |
//! | `--namespace NS` | namespace of the pool / gateways (else the service account's, else `default`) | |
//! | `--engine E` | `vllm`, `sglang`, `trtllm-serve`, `triton-tensorrt-llm` for non-Kubernetes targets; Kubernetes pods use their `llm-d.ai/engine-type` label (fallback `inference.networking.k8s.io/engine-type`, then `vllm`) | `vllm` |
//! | `--metrics-path P` | scrape path | `/metrics` |
//! | `--interval D` | scrape round and snapshot period (GIE's default refresh is 50 ms) | `50ms` |
//! | `--timeout D` | per-pod scrape timeout | `200ms` |
//! | `--fail-after N` | consecutive failed scrapes after which the pod is `ready=false`; one success restores it | `3` |
//! | `--max-scrape-bytes S` | cap on one scrape's body (`1MiB`, `512KiB`); more fails that scrape | `1MiB` |
//! | `--push URL` (repeatable) | gateway snapshot URL, `http://host:port/path` (path defaults to `/.well-known/wasm-epp/snapshot`) | — |
//! | `--token-file PATH` | bearer token file; else env `WASM_EPP_SNAPSHOT_TOKEN`; required when pushing | |
//! | `--push-gateways SEL --push-port P` | central mode (Kubernetes): push to every ready pod matching the label selector `k=v,k2=v2`, at `http://podIP:P` + `--push-path` | |
//! | `--push-tls`, `--push-ca PATH`, `--push-server-name N` | `https://` gateways (and `--push-gateways` / `--relay-peers` pods over HTTPS): certificates must chain to the CA bundle; the name checked is the URL's host (the pod IP) unless given | |
//! | `--listen ADDR` | own HTTP listener | off |
//! | `--tls-listen ADDR --tls-cert PATH --tls-key PATH` | own HTTPS listener, same endpoints | off |
//! | `--relay` | take relay batches at `POST /relay` and push them to every gateway ([`relay`]) | off |
//! | `--relay-token-file PATH` | bearer token of both relay legs | the snapshot token |
//! | `--relay-allow LIST` | sources allowed to post batches (addresses or CIDRs, comma-separated) | `127.0.0.1,::1` |
//! | `--relay-peer URL` (repeatable), `--relay-peers SEL` | gateways that get relay batches but no snapshots (sidecar mode: the other gateway pods; `SEL` pods at `--push-port` + `--push-path`) | — |
//! | `--relay-max-bytes S` | largest batch taken and largest body pushed to a gateway's relay path | `1MiB` |
//! | `--once --format json\|binary` | scrape once, print the snapshot, exit 1 if no pod answered | `json` |
//!
//! Durations: `1500us`, `50ms`, `1s`, `2m` (a bare number is ms). Bad flags exit with status 2
//! and a message.
//!
//! ## Metric mapping
//!
//! Source: GIE `docs/proposals/003-model-server-protocol/README.md` (model-server protocol)
//! and llm-d-router's built-in engine configs
//! (`pkg/epp/framework/plugins/datalayer/extractor/metrics/factories.go`), summarised with
//! citations in `docs/engines.md`.
//!
//! | field | vLLM | SGLang | trtllm-serve | Triton TensorRT-LLM |
//! |---|---|---|---|---|
//! | waiting | `vllm:num_requests_waiting` | `sglang:num_queue_reqs` | `trtllm_num_requests_waiting` | `nv_trt_llm_request_metrics{request_type="waiting"}` |
//! | running | `vllm:num_requests_running` | `sglang:num_running_reqs` | `trtllm_num_requests_running` | `nv_trt_llm_request_metrics{request_type="scheduled"}` |
//! | kv_usage (0..1) | `vllm:kv_cache_usage_perc`, else the pre-v1.3 GIE / vLLM v0 name `vllm:gpu_cache_usage_perc` | `sglang:token_usage` | `trtllm_kv_cache_utilization` | `nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}` |
//! | block_size | `vllm:cache_config_info` label `block_size` | `sglang:cache_config_info` label `page_size` | `trtllm_kv_cache_tokens_per_block` | `…{kv_cache_block_type="tokens_per"}` |
//! | gpu_blocks | `vllm:cache_config_info` label `num_gpu_blocks` | `sglang:cache_config_info` label `num_pages` | `trtllm_kv_cache_max_blocks` | `…{kv_cache_block_type="max"}` |
//! | lora | `vllm:lora_requests_info`: the series with the largest value (= last-updated timestamp); labels `max_lora`, `running_lora_adapters`, `waiting_lora_adapters` (comma lists) | — | — | — |
//! | models | distinct `model_name` labels of the waiting/running gauges; empty when LoRA is enabled (`max_lora` > 0: the pod can load any adapter) | same | same | empty (Triton's `model` label is the Triton model) |
//!
//! Counts are summed over series (vLLM data-parallel ranks are series `engine="0"`, `"1"`, …);
//! kv_usage is the maximum over series (the fullest rank). Waiting, running and kv_usage are
//! required: a scrape without them, or with a negative / NaN value, fails. Optional fields that
//! are absent, `None` or 0 are left out.
//!
//! ## Snapshot and sequence
//!
//! Times are milliseconds since the UNIX epoch (`generated_at` = snapshot time, each
//! endpoint's `scraped_at` = its last successful scrape; 0 if never). A pod is `ready` when
//! discovery says so, it has been scraped successfully at least once, and fewer than
//! `--fail-after` scrapes in a row failed; a failing pod keeps its last numbers (the picker
//! ages them out by `scraped_at`).
//!
//! The **sequence** starts at `unix_ms × 1000` when the process starts and grows by 1 per
//! snapshot, so it keeps increasing across restarts (the filter rejects a sequence ≤ the
//! stored one with 409) as long as a collector's life produced fewer than 1,000 snapshots per
//! millisecond — at one per interval it is 50,000× below that. When a gateway answers 409, the
//! stored sequence is read from its message and the counter jumps past it (no retry of the
//! stale snapshot; the next round's is newer).
//!
//! ## Push protocol
//!
//! `POST <url>`, `authorization: Bearer <token>`, `content-type: application/octet-stream`,
//! body = `Snapshot::encode()` (filter side: `filter/src/shared.rs` `validate_push`). 204
//! stored; 401 bad token; 403 source not allowed; 400 invalid; 409 stale sequence (logged at
//! debug); 413 too large. Each gateway has its own task fed by a latest-wins channel, so
//! pushes never block scraping; failures retry with exponential backoff (50 ms → 2 s) using
//! the newest snapshot, are logged when the outcome changes, and are counted in
//! `collector_pushes_total{url,status}`.
//!
//! ## Own metrics (`--listen` `/metrics`)
//!
//! `collector_scrapes_total{pod}`, `collector_scrape_duration_seconds_total{pod}`,
//! `collector_scrape_errors_total{pod,reason}`, `collector_pods_ready`, `collector_pods`,
//! `collector_rounds_total`, `collector_round_duration_seconds` (histogram),
//! `collector_push_duration_seconds` (histogram), `collector_scrape_to_push_seconds`
//! (histogram), `collector_pushes_total{url,status}` (relay pushes under their `…/relay` URL),
//! `collector_relay_batches_total{status}` (`POST /relay` answers). Written by the
//! `prometheus-client` crate's Prometheus text encoder (format 0.0.4); [`metrics`] lists names,
//! types and labels.
//!
//! ## Contracts
//!
//! Nothing fed by network bytes can panic: the Prometheus parser ([`prom`]) and the scrape
//! client's response framing ([`http::ScrapeConn`]) are hand-written and property-tested over
//! arbitrary and mutated input; bodies are capped while read; garbage makes that pod's scrape
//! fail. A scrape parses only the metric families in the table above; other sample lines are
//! checked only up to their name ([`prom::parse_families`]), so garbage after the name of a
//! family the mapping does not read does not fail it. Kubernetes discovery is a lean list + watch client
//! ([`k8s`]) rather than kube-rs, to keep the build within CI's two cores.
//!
//! Both stay hand-written on measurements, with the numbers, commands and date in their module
//! docs: [`prom`] against `prometheus-parse` (which skips every `vllm:` / `sglang:` name and,
//! where it does read a page, takes 13–18× the time; `collector-bench --parsers`), and [`k8s`]
//! against `kube` + `k8s-openapi` (82 more packages, +89 % CPU time for a clean release build),
//! with what kube offers that [`k8s`] lacks and who would need it.

#![forbid(unsafe_code)]

pub mod collector;
pub mod config;
pub mod engine;
pub mod http;
pub mod k8s;
pub mod metrics;
pub mod prom;
pub mod push;
pub mod relay;
pub mod server;
pub mod targets;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::collector::{unix_ms, Collector, ScrapeConfig, Sequence, Target};
use crate::config::{Config, Discovery, OutputFormat};
use crate::metrics::Metrics;
use crate::push::{Published, PushContext, PushUrl};
use crate::relay::RelayHub;

/// Everything a running collector shares.
pub struct Handles {
    pub metrics: Arc<Metrics>,
    pub sequence: Arc<Sequence>,
    pub latest: watch::Receiver<Option<Arc<Published>>>,
}

/// Options not on the command line (tests and the benchmark).
#[derive(Default)]
pub struct RunOptions {
    pub on_pushed: Option<mpsc::UnboundedSender<(Duration, Duration)>>,
    pub on_round: Option<mpsc::UnboundedSender<collector::RoundReport>>,
    pub sequence: Option<Arc<Sequence>>,
    /// Told the bound addresses of `--listen` and `--tls-listen` once both are bound (port 0
    /// picks a free port).
    pub on_listen: Option<tokio::sync::oneshot::Sender<Listening>>,
    /// A listener already bound for `--listen` (its address must be known before the
    /// collector starts, e.g. by the gateway cluster that posts to `/relay`); used instead of
    /// binding `--listen`'s address.
    pub listener: Option<std::net::TcpListener>,
}

/// Where the collector's own listeners are bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listening {
    pub http: Option<std::net::SocketAddr>,
    pub https: Option<std::net::SocketAddr>,
}

/// Starts discovery; returns the targets channel and the task(s) feeding it.
async fn start_discovery(cfg: &Config) -> Result<(watch::Receiver<Vec<Target>>, Vec<JoinHandle<()>>), String> {
    match &cfg.discovery {
        Discovery::Static(addrs) => {
            let (tx, rx) = watch::channel(targets::static_targets(addrs, cfg.engine));
            // Keep the sender alive for the life of the process.
            let h = tokio::spawn(async move {
                tx.closed().await;
            });
            Ok((rx, vec![h]))
        }
        Discovery::File(p) => {
            let (tx, rx) = watch::channel(Vec::new());
            let h = tokio::spawn(targets::watch_file(p.clone(), cfg.engine, Duration::from_secs(1), tx));
            Ok((rx, vec![h]))
        }
        Discovery::Dns { host, port, refresh } => {
            let (tx, rx) = watch::channel(Vec::new());
            let h = tokio::spawn(targets::watch_dns(host.clone(), *port, cfg.engine, *refresh, tx));
            Ok((rx, vec![h]))
        }
        Discovery::InferencePool { name, namespace } => {
            let client = k8s::Client::from_env(namespace.as_deref()).await?;
            let (tx, rx) = watch::channel(Vec::new());
            let h = tokio::spawn(k8s::watch_pool(client, name.clone(), tx));
            Ok((rx, vec![h]))
        }
    }
}

fn publish(snap: picker_core::snapshot::Snapshot, last_scrape: Instant) -> Option<Arc<Published>> {
    let encoded = match snap.encode() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "snapshot cannot be encoded");
            return None;
        }
    };
    Some(Arc::new(Published {
        sequence: snap.sequence,
        encoded: encoded.into(),
        ready: snap.endpoints.iter().filter(|e| e.ready).count(),
        snapshot: snap,
        last_scrape,
    }))
}

fn scrape_config(cfg: &Config) -> ScrapeConfig {
    ScrapeConfig {
        metrics_path: cfg.metrics_path.clone(),
        interval: cfg.interval,
        timeout: cfg.timeout,
        fail_after: cfg.fail_after,
        max_bytes: cfg.max_scrape_bytes,
    }
}

/// `--once`: waits for discovery (up to the timeout + 2 s), scrapes every target once, and
/// returns the encoded output and whether any pod answered.
pub async fn run_once(cfg: &Config) -> Result<(Vec<u8>, bool), String> {
    let (mut targets_rx, tasks) = start_discovery(cfg).await?;
    let deadline = tokio::time::Instant::now() + cfg.timeout + Duration::from_secs(2);
    while targets_rx.borrow().is_empty() {
        if tokio::time::timeout_at(deadline, targets_rx.changed()).await.is_err() {
            break;
        }
    }
    let targets = targets_rx.borrow().clone();
    let metrics = Arc::new(Metrics::default());
    let mut c = Collector::new(scrape_config(cfg), metrics);
    c.set_targets(&targets);
    let report = c.round(cfg.timeout + Duration::from_millis(50)).await;
    let snap = c.snapshot(Sequence::from_clock().next(), unix_ms());
    for t in tasks {
        t.abort();
    }
    let answered = report.completed > report.failed;
    let out = match cfg.once.unwrap_or(OutputFormat::Json) {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&snap).map_err(|e| e.to_string())?;
            s.push('\n');
            s.into_bytes()
        }
        OutputFormat::Binary => snap.encode().map_err(|e| e.to_string())?,
    };
    Ok((out, answered))
}

/// Runs until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Handles, String> {
    let metrics = Arc::new(Metrics::default());
    let sequence = opts.sequence.unwrap_or_else(|| Arc::new(Sequence::from_clock()));
    let (mut targets_rx, mut tasks) = start_discovery(&cfg).await?;
    let (latest_tx, latest_rx) = watch::channel::<Option<Arc<Published>>>(None);

    let hub = cfg
        .relay
        .as_ref()
        .map(|r| Arc::new(RelayHub::new(r.token.clone(), r.allowed.clone(), r.max_bytes)));
    let state = server::ServerState {
        latest: latest_rx.clone(),
        metrics: metrics.clone(),
        relay: hub.clone(),
    };
    let mut listening = Listening::default();
    if let Some(addr) = cfg.listen {
        let listener = match opts.listener {
            Some(l) => l
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(l))
                .map_err(|e| format!("--listen {addr}: {e}"))?,
            None => server::bind(addr).await.map_err(|e| format!("--listen {addr}: {e}"))?,
        };
        let bound = listener.local_addr().map_err(|e| format!("--listen {addr}: {e}"))?;
        tracing::info!(addr = %bound, relay = hub.is_some(), "listening");
        listening.http = Some(bound);
        tasks.push(tokio::spawn(server::serve(listener, state.clone())));
    }
    if let Some((addr, cert, key)) = &cfg.tls_listen {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let acceptor = tls::acceptor(&read(cert)?, &read(key)?).map_err(|e| format!("--tls-listen: {e}"))?;
        let listener = server::bind(*addr)
            .await
            .map_err(|e| format!("--tls-listen {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| format!("--tls-listen {addr}: {e}"))?;
        tracing::info!(addr = %bound, relay = hub.is_some(), "listening (TLS)");
        listening.https = Some(bound);
        tasks.push(tokio::spawn(server::serve_tls(listener, acceptor, state)));
    }
    if let Some(tx) = opts.on_listen {
        let _ = tx.send(listening);
    }

    let tls = match &cfg.push_tls {
        Some(t) => Some(Arc::new(
            tls::TlsClient::new(&t.ca_pem, t.server_name.as_deref()).map_err(|e| format!("--push-ca: {e}"))?,
        )),
        None => None,
    };
    let ctx = PushContext {
        token: cfg.token.clone().unwrap_or_default().into(),
        sequence: sequence.clone(),
        metrics: metrics.clone(),
        on_pushed: opts.on_pushed,
        tls,
    };
    for u in &cfg.push {
        let url = push::parse_url(u)?;
        if let Some(hub) = &hub {
            tasks.push(tokio::spawn(relay::relay_loop(url.clone(), hub.clone(), ctx.clone())));
        }
        tasks.push(tokio::spawn(push::push_loop(url, latest_rx.clone(), ctx.clone())));
    }
    let pods = |selector: String, snapshots: bool, port: u16, path: String| GatewayPods {
        selector,
        port,
        path,
        tls: cfg.push_pods_tls,
        snapshots: snapshots.then(|| latest_rx.clone()),
        relay: hub.clone(),
    };
    let mut watched = Vec::new();
    if let Some((selector, port, path)) = cfg.push_gateways.clone() {
        watched.push(pods(selector, true, port, path));
    }
    if let (Some(hub), Some(r)) = (&hub, &cfg.relay) {
        for u in &r.peers {
            let url = push::parse_url(u)?;
            tasks.push(tokio::spawn(relay::relay_loop(url, hub.clone(), ctx.clone())));
        }
        if let (Some(selector), Some(port)) = (r.peer_selector.clone(), cfg.push_port) {
            watched.push(pods(selector, false, port, cfg.push_path.clone()));
        }
    }
    for g in watched {
        let client = k8s::Client::from_env(cfg.namespace.as_deref()).await?;
        let (gw_tx, gw_rx) = watch::channel(Vec::new());
        tasks.push(tokio::spawn(k8s::watch_pods(client, g.selector.clone(), gw_tx)));
        tasks.push(tokio::spawn(manage_gateway_pushes(gw_rx, g, ctx.clone())));
    }

    let mut collector = Collector::new(scrape_config(&cfg), metrics.clone());
    collector.set_targets(&targets_rx.borrow_and_update().clone());
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let wait = cfg.interval.mul_f64(0.8);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        if targets_rx.has_changed().unwrap_or(false) {
            let t = targets_rx.borrow_and_update().clone();
            tracing::info!(targets = t.len(), "targets updated");
            collector.set_targets(&t);
        }
        let report = collector.round(wait).await;
        let snap = collector.snapshot(sequence.next(), unix_ms());
        if let Some(p) = publish(snap, report.last_scrape.unwrap_or_else(Instant::now)) {
            latest_tx.send_replace(Some(p));
        }
        if let Some(h) = &opts.on_round {
            let _ = h.send(report);
        }
    }
    tracing::info!("shutting down");
    for t in tasks {
        t.abort();
    }
    Ok(Handles {
        metrics,
        sequence,
        latest: latest_rx,
    })
}

/// Gateway pods found by a label selector, and what each gets.
struct GatewayPods {
    selector: String,
    port: u16,
    path: String,
    tls: bool,
    /// Snapshots (`--push-gateways`), or relay batches only (`--relay-peers`).
    snapshots: Option<watch::Receiver<Option<Arc<Published>>>>,
    relay: Option<Arc<RelayHub>>,
}

/// Keeps one snapshot push task (central mode) and one relay push task (`--relay`) per ready
/// gateway pod.
async fn manage_gateway_pushes(mut gateways: watch::Receiver<Vec<Target>>, g: GatewayPods, ctx: PushContext) {
    let mut running: HashMap<std::net::IpAddr, Vec<JoinHandle<()>>> = HashMap::new();
    loop {
        let want: Vec<std::net::IpAddr> = gateways
            .borrow_and_update()
            .iter()
            .filter(|t| t.ready)
            .map(|t| t.addr.ip())
            .collect();
        running.retain(|ip, hs| {
            let keep = want.contains(ip);
            if !keep {
                hs.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        for ip in want {
            running.entry(ip).or_insert_with(|| {
                let url = PushUrl {
                    host: ip.to_string(),
                    port: g.port,
                    path: g.path.clone(),
                    tls: g.tls,
                };
                let mut hs = Vec::new();
                if let Some(latest) = &g.snapshots {
                    tracing::info!(url = %url, "pushing to gateway pod");
                    hs.push(tokio::spawn(push::push_loop(url.clone(), latest.clone(), ctx.clone())));
                }
                if let Some(hub) = &g.relay {
                    tracing::info!(url = %url.relay(), "relaying to gateway pod");
                    hs.push(tokio::spawn(relay::relay_loop(url, hub.clone(), ctx.clone())));
                }
                hs
            });
        }
        if gateways.changed().await.is_err() {
            break;
        }
    }
    for (_, hs) in running {
        hs.iter().for_each(JoinHandle::abort);
    }
}
