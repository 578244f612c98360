//! The relay endpoint and its fan-out against local gateway stubs, and TLS on both legs: pushes
//! to https:// gateways and the `--tls-listen` listener, with a CA made here (rcgen).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use collector::http::Conn;
use collector::tls::TlsClient;
use filter::relay::{encode, BatchHeader};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const TOKEN: &str = "relay-test-token-0123456789";

/// What a gateway stub was sent: path, authorization, body.
type Seen = Arc<Mutex<Vec<(String, Option<String>, Bytes)>>>;

/// A gateway stub on 127.0.0.1 that answers 204 to everything and records it; over TLS when
/// given an acceptor.
async fn gateway(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { continue };
            let (seen, tls) = (s2.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let auth = parts
                            .headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(String::from);
                        seen.lock().unwrap().push((parts.uri.path().to_string(), auth, body));
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = hyper::StatusCode::NO_CONTENT;
                        Ok::<_, Infallible>(r)
                    }
                });
                match tls {
                    None => {
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(a) => {
                        if let Ok(s) = a.accept(tcp).await {
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn batch(sender: u64, seq: u64) -> Bytes {
    Bytes::from(encode(
        &BatchHeader {
            replica: 9,
            sender,
            sequence: seq,
            sent_at_ms: 1,
        },
        &[picker_core::sync::Served {
            endpoint: 7,
            capacity: 100,
            hashes: vec![1, 2, 3],
        }],
        &[],
    ))
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<collector::Handles, String>>,
    listening: collector::Listening,
}

async fn start(args: &[String]) -> Running {
    let argv = std::iter::once("collector".to_string()).chain(args.iter().cloned());
    let cli = collector::config::Cli::try_parse_from(argv).unwrap();
    let cfg = collector::config::Config::from_cli(cli, Some(TOKEN.into())).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let opts = collector::RunOptions {
        on_listen: Some(tx),
        ..Default::default()
    };
    let task = tokio::spawn(collector::run(cfg, opts, async move {
        let _ = stopped.await;
    }));
    let listening = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("listening in time")
        .expect("listening");
    Running { stop, task, listening }
}

impl Running {
    async fn stop(self) -> collector::Handles {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap()
    }
}

/// A pod address nobody listens on: the collector needs a discovery source, not a live pod.
async fn dead_pod() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

async fn post(conn: &mut Conn, path: &str, method: &str, auth: &str, body: Bytes) -> u16 {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "collector")
        .header("authorization", auth)
        .body(Full::new(body))
        .unwrap();
    match conn.send(req, 1 << 16).await {
        Ok(r) => r.status.as_u16(),
        Err(_) => 0,
    }
}

/// Waits until `seen` holds a request to `path` whose body contains `needle`.
async fn wait_for(seen: &Seen, path: &str, needle: &[u8]) -> bool {
    for _ in 0..200 {
        let hit = seen
            .lock()
            .unwrap()
            .iter()
            .any(|(p, _, b)| p == path && (needle.is_empty() || b.windows(needle.len()).any(|w| w == needle)));
        if hit {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test]
async fn batches_reach_every_gateway_and_refused_ones_none() {
    let (g1, seen1) = gateway(None).await;
    let (g2, seen2) = gateway(None).await;
    let pod = dead_pod().await;
    let c = start(&s(&[
        "--static",
        &pod,
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "50ms",
        "--push",
        &format!("http://{g1}/in"),
        "--relay",
        "--relay-peer",
        &format!("http://{g2}/in"),
        "--relay-max-bytes",
        "4KiB",
    ]))
    .await;
    let mut conn = Conn::new(c.listening.http.unwrap());
    let auth = format!("Bearer {TOKEN}");
    let good = batch(41, 1);
    assert_eq!(post(&mut conn, "/relay", "POST", &auth, good.clone()).await, 204);
    // Both gateways get it at <path>/relay with the relay token; only the --push one gets
    // snapshots.
    for seen in [&seen1, &seen2] {
        assert!(wait_for(seen, "/in/relay", &good).await, "relayed");
        let s = seen.lock().unwrap();
        assert!(s
            .iter()
            .filter(|(p, _, _)| p == "/in/relay")
            .all(|(_, a, _)| a.as_deref() == Some(auth.as_str())));
    }
    assert!(wait_for(&seen1, "/in", b"").await, "snapshots");
    assert!(
        seen2.lock().unwrap().iter().all(|(p, _, _)| p != "/in"),
        "a peer gets no snapshot"
    );

    // Refused batches: none of them reaches a gateway.
    let marked = |seq| batch(0xbad, seq);
    let cases: [(&str, String, Bytes, u16); 5] = [
        ("POST", "Bearer wrong-token-0123456789".into(), marked(1), 401),
        ("GET", auth.clone(), marked(2), 405),
        ("POST", auth.clone(), Bytes::from_static(b"WRB1 junk"), 400),
        (
            "POST",
            auth.clone(),
            Bytes::from([&marked(3)[..], &marked(4)[..]].concat()),
            400,
        ),
        ("POST", auth.clone(), Bytes::from(vec![0u8; 5000]), 413),
    ];
    for (method, a, body, want) in cases {
        assert_eq!(post(&mut conn, "/relay", method, &a, body).await, want, "{method} {a}");
        conn = Conn::new(c.listening.http.unwrap());
    }
    let later = batch(42, 1);
    assert_eq!(post(&mut conn, "/relay", "POST", &auth, later.clone()).await, 204);
    assert!(wait_for(&seen2, "/in/relay", &later).await);
    let sender_bad = 0xbadu64.to_le_bytes();
    for seen in [&seen1, &seen2] {
        assert!(
            !seen
                .lock()
                .unwrap()
                .iter()
                .any(|(_, _, b)| b.windows(8).any(|w| w == sender_bad)),
            "a refused batch reached a gateway"
        );
    }
    let h = c.stop().await;
    assert_eq!(h.metrics.relay_count(204), 2);
    assert_eq!(h.metrics.relay_count(400), 2);
    assert!(h
        .metrics
        .render()
        .contains("collector_relay_batches_total{status=\"401\"} 1"));
}

#[tokio::test]
async fn sources_outside_the_allow_list_are_refused() {
    let pod = dead_pod().await;
    let c = start(&s(&[
        "--static",
        &pod,
        "--listen",
        "127.0.0.1:0",
        "--relay",
        "--relay-allow",
        "10.0.0.0/8",
    ]))
    .await;
    let mut conn = Conn::new(c.listening.http.unwrap());
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(post(&mut conn, "/relay", "POST", &auth, batch(1, 1)).await, 403);
    c.stop().await;
}

/// A CA, and a certificate it signed for `names`, all PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki(names: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "wasm-epp test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        ca: ca_cert.pem(),
        cert: leaf.pem(),
        key: key.serialize_pem(),
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p: PathBuf = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("collector-relay-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Both legs over TLS: the collector takes batches on its HTTPS listener and pushes snapshots
/// and batches to an https:// gateway whose certificate chains to `--push-ca`. A collector
/// trusting another CA delivers nothing; plain HTTP to the TLS listener gets no answer.
#[tokio::test]
async fn tls_on_both_legs() {
    let gw_pki = pki(&["gateway.test", "127.0.0.1"]);
    let col_pki = pki(&["collector.test"]);
    let other = pki(&["gateway.test"]);
    let dir = tempdir("tls");
    let gw_acceptor = collector::tls::acceptor(gw_pki.cert.as_bytes(), gw_pki.key.as_bytes()).unwrap();
    let (g, seen) = gateway(Some(gw_acceptor)).await;
    let pod = dead_pod().await;
    let c = start(&s(&[
        "--static",
        &pod,
        "--interval",
        "50ms",
        "--push",
        &format!("https://127.0.0.1:{}/in", g.port()),
        "--push-ca",
        &write(&dir, "gw-ca.pem", &gw_pki.ca),
        "--relay",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &write(&dir, "col.pem", &col_pki.cert),
        "--tls-key",
        &write(&dir, "col.key", &col_pki.key),
    ]))
    .await;
    let https = c.listening.https.unwrap();
    assert!(c.listening.http.is_none());
    let client = TlsClient::new(col_pki.ca.as_bytes(), Some("collector.test")).unwrap();
    let mut conn = Conn::with_tls(https, Some(client.for_host("collector.test").unwrap()));
    let auth = format!("Bearer {TOKEN}");
    let b = batch(77, 1);
    assert_eq!(post(&mut conn, "/relay", "POST", &auth, b.clone()).await, 204);
    assert!(wait_for(&seen, "/in/relay", &b).await, "batch relayed over TLS");
    assert!(wait_for(&seen, "/in", b"").await, "snapshots pushed over TLS");
    // The wrong CA, or no TLS at all: nothing.
    let wrong = TlsClient::new(other.ca.as_bytes(), Some("collector.test")).unwrap();
    let mut bad = Conn::with_tls(https, Some(wrong.for_host("collector.test").unwrap()));
    assert_eq!(post(&mut bad, "/relay", "POST", &auth, batch(78, 1)).await, 0);
    let mut plain = Conn::new(https);
    let plain_status = tokio::time::timeout(
        Duration::from_secs(2),
        post(&mut plain, "/relay", "POST", &auth, batch(79, 1)),
    )
    .await
    .unwrap_or(0);
    assert_eq!(plain_status, 0, "plain HTTP to the TLS listener");
    c.stop().await;

    // A collector that trusts another CA never delivers to that gateway.
    let before = seen.lock().unwrap().len();
    let url = format!("https://127.0.0.1:{}/in", g.port());
    let c = start(&s(&[
        "--static",
        &pod,
        "--interval",
        "20ms",
        "--push",
        &url,
        "--push-ca",
        &write(&dir, "other-ca.pem", &other.ca),
        "--listen",
        "127.0.0.1:0",
    ]))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let h = c.stop().await;
    assert_eq!(seen.lock().unwrap().len(), before, "nothing delivered");
    assert!(h.metrics.push_count(&url, "error") > 0);
    let _ = std::fs::remove_dir_all(&dir);
}
