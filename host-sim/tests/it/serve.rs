//! `host-sim serve` end to end over 127.0.0.1 with local stub upstreams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use host_sim::serve::{Gateway, GatewayConfig};

use crate::common::*;

type StubBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A stub model server: echoes who it is, the path, the request headers and body. `/sse`
/// sends one event, waits until the test says go, then sends a second.
async fn stub(name: &'static str, go: Arc<Notify>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let go = go.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let go = go.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        if path == "/sse" {
                            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                            tokio::spawn(async move {
                                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n")))).await;
                                go.notified().await;
                                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: 2\n\n")))).await;
                            });
                            let body = ChanBody(rx);
                            let r = Response::builder()
                                .header("content-type", "text/event-stream")
                                .header("x-upstream", name)
                                .body(BodyExt::boxed(body))
                                .unwrap();
                            return Ok::<Response<StubBody>, Infallible>(r);
                        }
                        let mut text = format!("name={name}\npath={path}\n");
                        for (k, v) in req.headers() {
                            text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("")));
                        }
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        text.push_str("body=");
                        text.push_str(&String::from_utf8_lossy(&body));
                        let r = Response::builder()
                            .header("x-upstream", name)
                            .body(BodyExt::boxed(Full::new(Bytes::from(text))))
                            .unwrap();
                        Ok(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// A body fed from an mpsc receiver.
struct ChanBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

fn gateway(cluster: &[SocketAddr], extra_clusters: &str, allow_stop: bool, workers: usize) -> Gateway {
    let eps: Vec<String> = cluster.iter().map(|a| format!("\"{a}\"")).collect();
    let yaml = format!(
        "listen: 127.0.0.1:0\nwasm: {wasm}\nvm_id: gw\nworkers: {workers}\nallow_on_headers_stop_iteration: {allow_stop}\nroute_cluster: models\nclusters:\n  models: [{eps}]\n{extra_clusters}",
        wasm = module_path("probe").display(),
        eps = eps.join(", "),
    );
    let cfg: GatewayConfig = serde_saphyr::from_str(&yaml).unwrap();
    Gateway::start_with_plugin(cfg, std::path::Path::new("."), plugin("probe")).expect("gateway starts")
}

struct Resp {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

async fn send(gw: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let tcp = TcpStream::connect(gw).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(path).header("host", "gw.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), s.send_request(req))
        .await
        .expect("response in time")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn hv<'a>(r: &'a Resp, k: &str) -> &'a str {
    r.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[test]
fn routes_to_filter_picked_endpoint_and_walks_the_list() {
    let rt = rt();
    rt.block_on(async {
        let go = Arc::new(Notify::new());
        let a = stub("A", go.clone()).await;
        let b = stub("B", go.clone()).await;
        // A port with nothing listening: bind then drop.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let gw = gateway(&[a], "", false, 2);
        let r = send(gw.addr(), "GET", "/x", &[("x-probe", &format!("route:{b}"))], "").await;
        assert_eq!(r.status, 200);
        assert_eq!(hv(&r, "x-upstream"), "B");
        // The served endpoint reached the filter as upstream.address.
        assert_eq!(hv(&r, "x-served-by"), b.to_string());
        let r = send(gw.addr(), "GET", "/x", &[("x-probe", &format!("route:{dead},{b}"))], "").await;
        assert_eq!(hv(&r, "x-upstream"), "B");
        assert_eq!(hv(&r, "x-served-by"), b.to_string());
        // Path 2: filter state original_dst_address (set through set_envoy_filter_state)
        // routes like an ORIGINAL_DST cluster when no header names an endpoint.
        let r = send(gw.addr(), "GET", "/x", &[("x-probe", &format!("filter_state:{b}"))], "").await;
        assert_eq!(hv(&r, "x-upstream"), "B");
        assert_eq!(hv(&r, "x-served-by"), b.to_string());
        // Every candidate dead: the router's 503 goes through the filter's response path.
        let r = send(gw.addr(), "GET", "/x", &[("x-probe", &format!("route:{dead}"))], "").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "no healthy upstream");
        gw.shutdown();
    });
}

#[test]
fn without_the_header_the_cluster_round_robins_and_client_header_is_ignored() {
    let rt = rt();
    rt.block_on(async {
        let go = Arc::new(Notify::new());
        let a = stub("A", go.clone()).await;
        let b = stub("B", go.clone()).await;
        let gw = gateway(&[a, b], "", false, 1);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let r = send(gw.addr(), "GET", "/", &[], "").await;
            seen.push(hv(&r, "x-upstream").to_string());
        }
        assert_eq!(seen, ["A", "B", "A", "B"]);
        // The probe strips a client-chosen endpoint: the client cannot pick the pod.
        let gw2 = gateway(&[a], "", false, 1);
        let r = send(
            gw2.addr(),
            "GET",
            "/",
            &[("x-gateway-destination-endpoint", &b.to_string())],
            "",
        )
        .await;
        assert_eq!(hv(&r, "x-upstream"), "A");
        gw.shutdown();
        gw2.shutdown();
    });
}

#[test]
fn buffered_body_pick_sets_header_before_routing() {
    let rt = rt();
    rt.block_on(async {
        let go = Arc::new(Notify::new());
        let a = stub("A", go.clone()).await;
        let gw = gateway(&[a], "", true, 2);
        let body = "{\"model\":\"llama\",\"prompt\":\"hi\"}";
        let r = send(
            gw.addr(),
            "POST",
            "/v1/completions",
            &[("x-probe", "pause_headers")],
            body,
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains(&format!("x-body-size: {}\n", body.len())), "{}", r.body);
        assert!(r.body.ends_with(&format!("body={body}")), "{}", r.body);
        gw.shutdown();
    });
}

#[test]
fn sse_streams_unbuffered() {
    let rt = rt();
    rt.block_on(async {
        let go = Arc::new(Notify::new());
        let a = stub("A", go.clone()).await;
        let gw = gateway(&[a], "", false, 1);
        let tcp = TcpStream::connect(gw.addr()).await.unwrap();
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri("/sse")
            .header("host", "gw")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), s.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.headers().get("content-type").unwrap(), "text/event-stream");
        let mut body = resp.into_body();
        // The first event arrives while the upstream is still holding the second one back:
        // nothing buffers the stream.
        let first = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("first event not buffered");
        let first = first.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"data: 1\n\n");
        go.notify_one();
        let rest = tokio::time::timeout(Duration::from_secs(20), body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(&rest[..], b"data: 2\n\n");
        gw.shutdown();
    });
}

#[test]
fn shared_data_across_gateway_workers_and_real_callouts() {
    let rt = rt();
    rt.block_on(async {
        let go = Arc::new(Notify::new());
        let a = stub("A", go.clone()).await;
        let authz = stub("AUTHZ", go.clone()).await;
        let gw = gateway(&[a], &format!("  authz: [\"{authz}\"]\n"), false, 2);
        let r = send(gw.addr(), "GET", "/", &[("x-probe", "shared_set:snap=v9")], "").await;
        assert_eq!(r.status, 200);
        // Round-robin: the next request lands on the other worker VM.
        let r = send(gw.addr(), "GET", "/", &[("x-probe", "shared_get:snap")], "").await;
        assert!(r.body.contains("x-shared: v9\n"), "{}", r.body);
        assert_eq!(gw.group().get_data("snap").unwrap().0, b"v9");
        // dispatch_http_call to cluster authz really reaches the AUTHZ stub.
        let r = send(gw.addr(), "GET", "/", &[("x-probe", "call:authz")], "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("x-call-status: 200\n"), "{}", r.body);
        gw.shutdown();
    });
}

#[test]
fn cli_serve_runs_a_gateway_from_a_yaml_file() {
    let rt = rt();
    rt.block_on(async {
        let go = Arc::new(Notify::new());
        let a = stub("A", go.clone()).await;
        // Pick a free loopback port for the gateway.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("host-sim-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("gw.yaml");
        std::fs::write(
            &cfg,
            format!(
                "listen: 127.0.0.1:{port}\nwasm: {}\nworkers: 1\nroute_cluster: m\nclusters:\n  m: [\"{a}\"]\n",
                module_path("headers").display()
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_host-sim"))
            .env("HOST_SIM_CACHE", modules_dir().join(".cache"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let gw: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Wait (bounded) until the gateway accepts connections.
        let mut up = false;
        for _ in 0..600 {
            if TcpStream::connect(gw).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let result = if up {
            let hello = send(gw, "GET", "/hello", &[], "").await;
            let other = send(gw, "GET", "/other", &[], "").await;
            Some((hello.status, hello.body, hv(&other, "x-upstream").to_string()))
        } else {
            None
        };
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        let (status, body, upstream) = result.expect("gateway came up");
        // The headers module answers /hello itself and lets everything else through.
        assert_eq!((status, body.as_str()), (200, "hello from the filter\n"));
        assert_eq!(upstream, "A");
    });
}
