//! The scrape loop, push, --once and Kubernetes discovery against local HTTP stubs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use collector::collector::{Collector, ScrapeConfig, Sequence, Target};
use collector::config::{Cli, Config};
use collector::engine::Engine;
use collector::metrics::Metrics;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use picker_core::snapshot::Snapshot;
use tokio::net::TcpListener;

const VLLM: &str = "vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 2.0\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.5\n";

type Handler = Arc<dyn Fn(Request<Bytes>) -> futures_like::BoxFut + Send + Sync>;

mod futures_like {
    pub type BoxFut = std::pin::Pin<Box<dyn std::future::Future<Output = super::Resp> + Send>>;
}
type Resp = Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>;

fn full(status: u16, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

/// A one-route-per-closure HTTP/1 stub server on 127.0.0.1.
async fn stub(h: Handler) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let h = h.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        Ok::<_, Infallible>(h(Request::from_parts(parts, body)).await)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

fn fixed(status: u16, body: &'static str) -> Handler {
    Arc::new(move |_| Box::pin(async move { full(status, body) }))
}

fn cfg(interval_ms: u64, timeout_ms: u64) -> ScrapeConfig {
    ScrapeConfig {
        metrics_path: "/metrics".into(),
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        fail_after: 3,
        max_bytes: 4096,
    }
}

#[tokio::test]
async fn dead_garbage_oversized_and_slow_pods() {
    let good = stub(fixed(200, VLLM)).await;
    let garbage = stub(fixed(200, "<html>\u{0}not metrics{{{")).await;
    let big: &'static str = Box::leak(format!("{VLLM}{}", "# padding\n".repeat(1000)).into_boxed_str());
    let oversized = stub(fixed(200, big)).await;
    let slow = stub(Arc::new(|_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            full(200, VLLM)
        })
    }))
    .await;
    // A port nobody listens on.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let metrics = Arc::new(Metrics::default());
    let mut c = Collector::new(cfg(50, 1000), metrics.clone());
    let addrs = [good, garbage, oversized, slow, dead];
    c.set_targets(&addrs.iter().map(|a| Target::new(*a, Engine::Vllm)).collect::<Vec<_>>());
    for round in 1..=3 {
        let r = c.round(Duration::from_millis(40)).await;
        // The slow pod never holds the round past its wait.
        assert!(
            r.duration < Duration::from_millis(150),
            "round {round} took {:?}",
            r.duration
        );
        let s = c.snapshot(round, 1);
        let ep = |a: SocketAddr| s.endpoints.iter().find(|e| e.addr == a).unwrap().clone();
        assert!(ep(good).ready);
        assert_eq!((ep(good).waiting, ep(good).running, ep(good).kv_usage), (2, 3, 0.5));
        assert_eq!(ep(good).models, vec!["m".to_string()]);
        for bad in [garbage, oversized, dead, slow] {
            assert!(!ep(bad).ready, "round {round}: {bad} never answered well");
        }
    }
    assert_eq!(metrics.pod(&garbage).unwrap().errors.get("parse"), Some(&3));
    assert_eq!(metrics.pod(&oversized).unwrap().errors.get("too_large"), Some(&3));
    assert_eq!(metrics.pod(&dead).unwrap().errors.get("connect"), Some(&3));
    // The slow pod finishes in the background and shows up in a later round.
    tokio::time::sleep(Duration::from_millis(450)).await;
    c.round(Duration::from_millis(40)).await;
    let s = c.snapshot(9, 1);
    assert!(s.endpoints.iter().find(|e| e.addr == slow).unwrap().ready);
}

#[tokio::test]
async fn pod_goes_not_ready_after_n_failures_and_comes_back() {
    let healthy = Arc::new(Mutex::new(true));
    let h2 = healthy.clone();
    let pod = stub(Arc::new(move |_| {
        let ok = *h2.lock().unwrap();
        Box::pin(async move {
            if ok {
                full(200, VLLM)
            } else {
                full(500, "boom")
            }
        })
    }))
    .await;
    let mut c = Collector::new(cfg(50, 200), Arc::new(Metrics::default()));
    c.set_targets(&[Target::new(pod, Engine::Vllm)]);
    let ready = |c: &Collector| c.snapshot(1, 1).endpoints[0].ready;
    c.round(Duration::from_millis(100)).await;
    assert!(ready(&c));
    *healthy.lock().unwrap() = false;
    for n in 1..=3 {
        c.round(Duration::from_millis(100)).await;
        assert_eq!(ready(&c), n < 3, "after {n} failures");
    }
    *healthy.lock().unwrap() = true;
    c.round(Duration::from_millis(100)).await;
    assert!(ready(&c), "one success brings it back");
}

fn config(args: &[&str], token: Option<&str>) -> Config {
    let cli = <Cli as clap::Parser>::try_parse_from(std::iter::once("collector").chain(args.iter().copied())).unwrap();
    Config::from_cli(cli, token.map(str::to_string)).unwrap()
}

#[tokio::test]
async fn pushes_with_bearer_token_and_decodable_body_and_handles_409() {
    let pod = stub(fixed(200, VLLM)).await;
    type Seen = Vec<(Option<String>, Option<String>, Bytes)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let seen2 = seen.clone();
    // A gateway that already holds sequence 5_000_000_000_000_000 answers like the filter does.
    let stored = 5_000_000_000_000_000u64;
    let gw = stub(Arc::new(move |req: Request<Bytes>| {
        let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        seen2.lock().unwrap().push((h("authorization"), h("content-type"), req.body().clone()));
        let auth_ok = h("authorization").as_deref() == Some("Bearer s3cret");
        let seq = Snapshot::peek_sequence(req.body()).unwrap_or(0);
        Box::pin(async move {
            if !auth_ok {
                full(401, "{}")
            } else if seq <= stored {
                full(409, format!("{{\"error\":{{\"message\":\"stale snapshot: sequence {seq} is not newer than {stored}\",\"type\":\"service_unavailable\",\"code\":409}}}}"))
            } else {
                full(204, "")
            }
        })
    }))
    .await;
    let url = format!("http://{gw}/.well-known/wasm-epp/snapshot");
    let c = config(
        &["--static", &pod.to_string(), "--push", &url, "--interval", "20ms"],
        Some("s3cret"),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = collector::RunOptions {
        on_pushed: Some(tx),
        sequence: Some(Arc::new(Sequence::starting_at(100))),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(collector::run(c, opts, async move {
        let _ = stop_rx.await;
    }));
    // First pushes get 409; the sequence jumps past the stored one; a later push is stored.
    let (latency, delay) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(latency < Duration::from_secs(1) && delay < Duration::from_secs(1));
    let _ = stop_tx.send(());
    let handles = run.await.unwrap().unwrap();
    assert!(handles.sequence.current() > stored);
    assert!(handles.metrics.push_count(&url, "409") >= 1);
    assert!(handles.metrics.push_count(&url, "204") >= 1);
    let seen = seen.lock().unwrap();
    let (auth, ctype, body) = seen.last().unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
    assert_eq!(ctype.as_deref(), Some("application/octet-stream"));
    let snap = Snapshot::decode(body).unwrap();
    assert!(snap.sequence > stored);
    assert_eq!(snap.endpoints.len(), 1);
    assert_eq!((snap.endpoints[0].addr, snap.endpoints[0].waiting), (pod, 2));
    assert!(snap.generated_at.as_millis() > 1_700_000_000_000, "wall-clock ms");
}

#[tokio::test]
async fn wrong_token_is_counted_as_401() {
    let pod = stub(fixed(200, VLLM)).await;
    let gw = stub(fixed(401, "{}")).await;
    let url = format!("http://{gw}/x");
    let c = config(
        &["--static", &pod.to_string(), "--push", &url, "--interval", "20ms"],
        Some("wrong"),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(collector::run(c, Default::default(), async move {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(());
    let h = run.await.unwrap().unwrap();
    let n = h.metrics.push_count(&url, "401");
    // Retries back off (50 ms doubling), so 300 ms holds a handful, not one per round.
    assert!((1..=6).contains(&n), "{n} pushes");
    assert!(h
        .metrics
        .render()
        .contains(&format!("collector_pushes_total{{url=\"{url}\",status=\"401\"}} {n}")));
}

#[tokio::test]
async fn listener_serves_the_snapshot_as_binary_and_json() {
    let pod = stub(fixed(200, VLLM)).await;
    let listen = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let c = config(
        &[
            "--static",
            &pod.to_string(),
            "--listen",
            &listen.to_string(),
            "--interval",
            "20ms",
        ],
        None,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(collector::run(c, Default::default(), async move {
        let _ = stop_rx.await;
    }));
    let mut binary = collector::http::ScrapeConn::new(listen, "/snapshot");
    let mut json = collector::http::ScrapeConn::new(listen, "/snapshot?format=json");
    let mut tries = 0;
    let snap = loop {
        tries += 1;
        match binary.get(1 << 20).await {
            Ok(r) if r.status == 200 => break Snapshot::decode(r.body).unwrap(),
            _ if tries < 100 => tokio::time::sleep(Duration::from_millis(20)).await,
            r => panic!("no snapshot: {r:?}"),
        }
    };
    assert_eq!((snap.endpoints[0].addr, snap.endpoints[0].waiting), (pod, 2));
    let r = json.get(1 << 20).await.unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(r.body).unwrap();
    assert_eq!(v["endpoints"][0]["addr"], pod.to_string());
    assert_eq!(v["endpoints"][0]["kvUsage"], 0.5);
    let _ = stop_tx.send(());
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn once_json_and_exit_status() {
    let pod = stub(fixed(200, VLLM)).await;
    let c = config(&["--static", &pod.to_string(), "--once", "--format", "json"], None);
    let (out, answered) = collector::run_once(&c).await.unwrap();
    assert!(answered);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["endpoints"][0]["addr"], pod.to_string());
    assert_eq!(v["endpoints"][0]["waiting"], 2);
    assert_eq!(v["endpoints"][0]["kvUsage"], 0.5);
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let c = config(&["--static", &dead.to_string(), "--once", "--format", "binary"], None);
    let (out, answered) = collector::run_once(&c).await.unwrap();
    assert!(!answered);
    assert!(!Snapshot::decode(&out).unwrap().endpoints[0].ready);
}

#[tokio::test]
async fn dns_discovery_resolves_localhost() {
    let (tx, mut rx) = tokio::sync::watch::channel(Vec::new());
    let h = tokio::spawn(collector::targets::watch_dns(
        "localhost".into(),
        8123,
        Engine::Sglang,
        Duration::from_secs(5),
        tx,
    ));
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    let t = rx.borrow().clone();
    assert!(!t.is_empty());
    assert!(t
        .iter()
        .all(|t| t.addr.ip().is_loopback() && t.addr.port() == 8123 && t.engine == Engine::Sglang));
    h.abort();
}

fn pod_json(name: &str, uid: &str, ip: &str, ready: bool, engine: Option<&str>, rv: &str) -> serde_json::Value {
    let mut labels = serde_json::json!({"app": "vllm"});
    if let Some(e) = engine {
        labels["llm-d.ai/engine-type"] = e.into();
    }
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "llm", "uid": uid, "resourceVersion": rv, "labels": labels},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
    })
}

/// A stub of the Kubernetes API: the InferencePool, a PodList, and a watch stream.
#[tokio::test]
async fn inference_pool_discovery_lists_and_watches_pods() {
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let r2 = requests.clone();
    let api = stub(Arc::new(move |req: Request<Bytes>| {
        let uri = req.uri().to_string();
        r2.lock().unwrap().push(uri.clone());
        let authed = req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer kube-token");
        Box::pin(async move {
            if !authed {
                return full(401, "{}");
            }
            if uri.starts_with("/apis/inference.networking.k8s.io/v1/namespaces/llm/inferencepools/pool") {
                return full(200, serde_json::json!({
                    "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                    "metadata": {"name": "pool", "namespace": "llm"},
                    "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}, {"number": 8001}],
                             "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}
                }).to_string());
            }
            if uri.starts_with("/api/v1/namespaces/llm/pods?labelSelector=app%3Dvllm") && !uri.contains("watch=true") {
                return full(200, serde_json::json!({
                    "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "100"},
                    "items": [pod_json("a", "u-a", "10.0.0.1", true, None, "90"),
                              pod_json("b", "u-b", "10.0.0.2", false, Some("sglang"), "91")]
                }).to_string());
            }
            if uri.contains("watch=true") && uri.contains("resourceVersion=100") {
                let events = vec![
                    serde_json::json!({"type": "MODIFIED", "object": pod_json("b", "u-b", "10.0.0.2", true, Some("sglang"), "101")}),
                    serde_json::json!({"type": "DELETED", "object": pod_json("a", "u-a", "10.0.0.1", true, None, "102")}),
                ];
                let mut r = Response::new(watch_body(events).boxed());
                *r.status_mut() = hyper::StatusCode::OK;
                return r;
            }
            // Later relists: hang so the test sees a stable state.
            tokio::time::sleep(Duration::from_secs(30)).await;
            full(500, "")
        })
    }))
    .await;
    let client =
        collector::k8s::Client::new(&format!("http://{api}"), None, Some("kube-token".into()), "llm".into()).unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(Vec::<Target>::new());
    let h = tokio::spawn(collector::k8s::watch_pool(client, "pool".into(), tx));
    let want_final = vec![
        Target {
            addr: "10.0.0.2:8000".parse().unwrap(),
            engine: Engine::Sglang,
            ready: true,
        },
        Target {
            addr: "10.0.0.2:8001".parse().unwrap(),
            engine: Engine::Sglang,
            ready: true,
        },
    ];
    let mut states = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            rx.changed().await.unwrap();
            let t = rx.borrow().clone();
            states.push(t.clone());
            if t == want_final {
                break;
            }
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "states seen: {states:?}; requests: {:?}",
        requests.lock().unwrap()
    );
    // The first published state is the list: a (vllm, ready) and b (sglang, not ready), × 2 ports.
    let first = &states[0];
    assert_eq!(first.len(), 4);
    assert!(first
        .iter()
        .any(|t| t.addr == "10.0.0.1:8001".parse().unwrap() && t.ready && t.engine == Engine::Vllm));
    assert!(first
        .iter()
        .any(|t| t.addr == "10.0.0.2:8000".parse().unwrap() && !t.ready));
    h.abort();
    assert!(requests.lock().unwrap().iter().any(|u| u.contains("watch=true")));
}

struct ChannelBody(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A watch stream: one JSON event per line, then held open like a real API server.
fn watch_body(events: Vec<serde_json::Value>) -> ChannelBody {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        for e in events {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(Bytes::from(format!("{e}\n")));
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    ChannelBody(rx)
}
