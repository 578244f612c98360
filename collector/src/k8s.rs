//! Kubernetes discovery: a lean list + watch client on hyper (+ rustls for in-cluster HTTPS).
//!
//! The client speaks the documented REST shapes directly: `GET /apis/inference.networking.k8s.io/v1/
//! namespaces/NS/inferencepools/NAME`, `GET /api/v1/namespaces/NS/pods?labelSelector=…`
//! (a `PodList` with `metadata.resourceVersion`) and the same with `watch=true&
//! resourceVersion=RV` (newline-delimited `{"type","object"}` events; `ERROR` or the stream
//! ending means relist).
//!
//! ## Why not kube-rs
//!
//! We need three calls (GET an InferencePool, list pods by label selector, watch them); `kube`
//! gives all of Kubernetes. Measured on 2026-12-07 on this project's machine (2 cores, shared:
//! other builds ran at the same time, load average 6–10, so wall times are inflated about 3×
//! and the CPU seconds are the steadier figure). Each build is a clean `cargo build --release
//! --offline -j2` (cargo's default release profile, no LTO) timed by GNU `time`, in a scratch
//! workspace holding copies of `collector/` and `picker-core/` (with and without the kube
//! dependencies) and a one-module crate for kube alone; packages are `cargo tree -e
//! normal,build --prefix none | sort -u` (dev-dependencies left out):
//!
//! | build | wall | CPU (user + sys) | packages | `cargo tree -e normal,build \| wc -l` |
//! |---|---|---|---|---|
//! | the collector as on main (`-p collector --lib --bins`; this module on hyper, rustls, serde_json) | 695 s | 191 s | 93 | 164 |
//! | the same plus `kube` 5.0.0 (`features = ["runtime"]` on its defaults `client`, `rustls-tls`, `ring`), `k8s-openapi` 0.29.0 (`latest` = v1.37) and `futures`, with one module watching Pods through `kube::runtime::watcher` | 1443 s | 360 s | 175 | 420 |
//! | `kube` alone: a scratch binary with those four dependencies and that module | 906 s | 303 s | 153 | 369 |
//!
//! Adding kube would add 82 packages and 170 CPU-seconds (+89 %) to a clean release build of
//! the collector; alone it costs more than the whole collector does today.
//!
//! What `kube` (with `k8s-openapi`) has that this module lacks, and who needs it:
//!
//! | kube has | here | needed by |
//! |---|---|---|
//! | typed clients for every resource, e.g. an EndpointSlice (`discovery.k8s.io/v1`) watch | Pods and InferencePools only | nobody yet: an InferencePool selects pods by label, so Pods are the resource to watch; EndpointSlices would matter only for discovery through a Service |
//! | kubeconfig exec credential plugins (`aws eks get-token`, `gke-gcloud-auth-plugin`, `kubelogin`) and auth-provider / OIDC | no: `token`, `tokenFile` only | running the collector outside the cluster against a managed cluster; `kubectl proxy` (an `http://` server here) is the workaround |
//! | client-certificate auth (`client-certificate[-data]`, `client-key[-data]`) | no | the same, against kind / minikube / kubeadm admin kubeconfigs, which use client certificates; same workaround |
//! | kubeconfig contexts other than `current-context`, merged `KUBECONFIG` lists, `proxy-url`, `tls-server-name` | current context of the first file only | developers with several clusters (`kubectl config use-context` first) |
//! | `runtime::watcher`: relist with backoff on 410 Gone, bookmarks, streaming lists, a reflector cache | relist after any error with a fixed 2 s pause; bookmarks advance the resourceVersion | large clusters, where a relist of all pods is expensive; a pool's pods are tens |
//! | token files re-read (projected service-account tokens expire, an hour by default) | yes, since this change: the token file is read before every request | every in-cluster user: a token read once would start failing with 401 when it expires (https://github.com/keel-hq/keel/issues/675, https://github.com/kubernetes/kubernetes/pull/72437) |
//!
//! The common case — in-cluster, service-account token and CA, Pods of one namespace — is what
//! this module does; the out-of-cluster credential kinds are the gap that users would notice.
//!
//! Tests: the kubeconfig parse, the API answers' JSON and the watch stream are property-tested
//! below (arbitrary and edited bytes never panic; any chunking of a watch stream gives the
//! model's pods; a damaged or `ERROR` line is an error that changes nothing; kubeconfigs
//! round-trip), and `tests/integration.rs` runs discovery against a stub API server. No fuzz
//! target covers this module (`fuzz/fuzz_targets/` has none for it); the HTTP framing of these
//! requests is hyper's.
//!
//! Configuration: in-cluster (`KUBERNETES_SERVICE_HOST`/`_PORT`, the service-account token and
//! CA under `/var/run/secrets/kubernetes.io/serviceaccount/`), or `KUBECONFIG` (current
//! context: `server`, `certificate-authority[-data]`, `insecure-skip-tls-verify` is refused,
//! user `token` / `tokenFile`; `http://` servers such as `kubectl proxy` work without TLS). A
//! token file (the service account's, or `tokenFile`) is read again before every request, so a
//! rotated projected token is picked up.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::collector::Target;
use crate::engine::{Engine, ENGINE_LABEL, ENGINE_LABEL_DEPRECATED};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Most bytes of one list answer or one watch event.
const MAX_OBJECT: usize = 32 << 20;
const RETRY: Duration = Duration::from_secs(2);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A Kubernetes API endpoint and credentials.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
    token: Option<String>,
    /// Read again before each request when set: projected service-account tokens expire (an
    /// hour by default) and the kubelet rewrites the file before they do.
    token_file: Option<String>,
    pub namespace: String,
}

#[derive(Deserialize)]
struct KubeConfig {
    #[serde(rename = "current-context", default)]
    current_context: String,
    #[serde(default)]
    contexts: Vec<Named<KContext>>,
    #[serde(default)]
    clusters: Vec<Named<KCluster>>,
    #[serde(default)]
    users: Vec<Named<KUser>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Deserialize)]
struct KContext {
    cluster: String,
    #[serde(default)]
    user: String,
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct KCluster {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca_file: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure: bool,
}

#[derive(Deserialize, Default)]
struct KUser {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
}

/// A credential or CA certificate a kubeconfig gives inline or names a file of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Secret {
    None,
    Inline(Vec<u8>),
    File(String),
}

/// What a kubeconfig's current context says, before any file it names is read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KubeTarget {
    server: String,
    ca: Secret,
    token: Secret,
    namespace: Option<String>,
}

/// Reads the current context of a kubeconfig (YAML; JSON is YAML too). Errors say what is
/// missing or refused; nothing here panics on any input (property-tested below).
fn parse_kubeconfig(text: &str) -> Result<KubeTarget, String> {
    let kc: KubeConfig = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == kc.current_context)
        .ok_or_else(|| format!("current-context {:?} not found", kc.current_context))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.value.cluster)
        .ok_or_else(|| format!("cluster {:?} not found", ctx.value.cluster))?;
    if cluster.value.insecure {
        return Err("insecure-skip-tls-verify is not supported".into());
    }
    let user = kc.users.iter().find(|u| u.name == ctx.value.user).map(|u| &u.value);
    let token = match user {
        Some(KUser { token: Some(t), .. }) => Secret::Inline(t.clone().into_bytes()),
        Some(KUser {
            token_file: Some(f), ..
        }) => Secret::File(f.clone()),
        _ => Secret::None,
    };
    let ca = match (&cluster.value.ca_data, &cluster.value.ca_file) {
        (Some(d), _) => Secret::Inline(b64decode(d)?),
        (None, Some(f)) => Secret::File(f.clone()),
        _ => Secret::None,
    };
    Ok(KubeTarget {
        server: cluster.value.server.clone(),
        ca,
        token,
        namespace: ctx.value.namespace.clone(),
    })
}

fn b64decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' | b' ' => continue,
            _ => return Err("bad base64".into()),
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

fn tls_for(
    host: &str,
    ca_pem: &[u8],
) -> Result<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>), String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
        roots.add(cert).map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate found".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("server name {host}: {e}"))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

fn split_server(server: &str) -> Result<(bool, String, u16), String> {
    let (https, rest) = if let Some(r) = server.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = server.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("server {server:?}: want http(s)://host:port"));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or("bad IPv6 server")?;
        (h.to_string(), p.strip_prefix(':').unwrap_or(""))
    } else {
        let (h, p) = authority.rsplit_once(':').unwrap_or((authority, ""));
        (h.to_string(), p)
    };
    let port = if port.is_empty() {
        if https {
            443
        } else {
            80
        }
    } else {
        port.parse().map_err(|_| format!("server {server:?}: bad port"))?
    };
    Ok((https, host, port))
}

impl Client {
    /// A client for `server` (`http://…` or `https://…` with `ca_pem`).
    pub fn new(server: &str, ca_pem: Option<&[u8]>, token: Option<String>, namespace: String) -> Result<Self, String> {
        let (https, host, port) = split_server(server)?;
        let tls = if https {
            Some(tls_for(&host, ca_pem.ok_or("an https server needs a CA certificate")?)?)
        } else {
            None
        };
        Ok(Client {
            host,
            port,
            tls,
            token,
            token_file: None,
            namespace,
        })
    }

    /// Takes the bearer token from `path`, read again before every request (the token given to
    /// [`Client::new`] is used while the file cannot be read).
    pub fn with_token_file(mut self, path: impl Into<String>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// The bearer token for the next request.
    async fn bearer(&self) -> Option<String> {
        if let Some(f) = &self.token_file {
            match tokio::fs::read_to_string(f).await {
                Ok(t) if !t.trim().is_empty() => return Some(t.trim().to_string()),
                Ok(_) => tracing::warn!(file = %f, "token file is empty; using the last token"),
                Err(e) => tracing::warn!(file = %f, error = %e, "token file unreadable; using the last token"),
            }
        }
        self.token.clone()
    }

    /// In-cluster configuration, else `KUBECONFIG` (or `~/.kube/config`).
    pub async fn from_env(namespace: Option<&str>) -> Result<Self, String> {
        if let (Ok(host), Ok(port)) = (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) {
            let token = tokio::fs::read_to_string(format!("{SA_DIR}/token"))
                .await
                .map_err(|e| format!("service-account token: {e}"))?;
            let ca = tokio::fs::read(format!("{SA_DIR}/ca.crt"))
                .await
                .map_err(|e| format!("service-account CA: {e}"))?;
            let ns = match namespace {
                Some(n) => n.to_string(),
                None => tokio::fs::read_to_string(format!("{SA_DIR}/namespace"))
                    .await
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "default".into()),
            };
            let server = if host.contains(':') {
                format!("https://[{host}]:{port}")
            } else {
                format!("https://{host}:{port}")
            };
            return Ok(Client::new(&server, Some(&ca), Some(token.trim().to_string()), ns)?
                .with_token_file(format!("{SA_DIR}/token")));
        }
        let path = std::env::var("KUBECONFIG")
            .ok()
            .and_then(|p| p.split(':').next().map(str::to_string))
            .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.kube/config")))
            .ok_or("no in-cluster config and no KUBECONFIG")?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let kc = parse_kubeconfig(&text).map_err(|e| format!("{path}: {e}"))?;
        let (token, token_file) = match kc.token {
            Secret::None => (None, None),
            Secret::Inline(t) => (Some(String::from_utf8_lossy(&t).into_owned()), None),
            Secret::File(f) => {
                let t = tokio::fs::read_to_string(&f).await.map_err(|e| format!("{f}: {e}"))?;
                (Some(t.trim().to_string()), Some(f))
            }
        };
        let ca = match kc.ca {
            Secret::None => None,
            Secret::Inline(d) => Some(d),
            Secret::File(f) => Some(tokio::fs::read(&f).await.map_err(|e| format!("{f}: {e}"))?),
        };
        let ns = namespace
            .map(str::to_string)
            .or(kc.namespace)
            .unwrap_or_else(|| "default".into());
        let client = Client::new(&kc.server, ca.as_deref(), token, ns)?;
        Ok(match token_file {
            Some(f) => client.with_token_file(f),
            None => client,
        })
    }

    async fn connect(&self) -> Result<Box<dyn Io>, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", self.host, self.port))?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((conn, name)) => {
                let tls = conn.connect(name.clone(), tcp).await.map_err(|e| format!("TLS: {e}"))?;
                Ok(Box::new(tls))
            }
        }
    }

    /// Sends a GET and returns the status and the body stream.
    async fn get(&self, path: &str) -> Result<(u16, hyper::body::Incoming), String> {
        let io = self.connect().await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::get(path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(t) = self.bearer().await {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok((resp.status().as_u16(), resp.into_body()))
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, String> {
        let (status, mut body) = self.get(path).await?;
        let mut buf = BytesMut::new();
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.map_err(|e| e.to_string())?.into_data() {
                if buf.len() + d.len() > MAX_OBJECT {
                    return Err(format!("GET {path}: answer too large"));
                }
                buf.extend_from_slice(&d);
            }
        }
        if status != 200 {
            let msg = String::from_utf8_lossy(&buf[..buf.len().min(300)]).into_owned();
            return Err(format!("GET {path}: HTTP {status}: {msg}"));
        }
        decode(&buf).map_err(|e| format!("GET {path}: {e}"))
    }
}

/// An API answer's JSON as `T` (only the fields we read; unknown ones are ignored).
fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

// === API shapes (only the fields we read) ===

#[derive(Deserialize, Debug)]
struct Pool {
    spec: PoolSpec,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct PoolSpec {
    selector: Selector,
    #[serde(default)]
    target_ports: Vec<PortNumber>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Debug)]
struct PortNumber {
    number: u16,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
}

#[derive(Deserialize, Debug)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    deletion_timestamp: Option<String>,
    #[serde(default)]
    resource_version: String,
}

#[derive(Deserialize, Debug, Clone)]
struct Pod {
    metadata: ObjectMeta,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Deserialize, Debug, Clone)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

#[derive(Deserialize, Debug)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

impl Pool {
    /// The pod label selector (`k=v,…`) and the non-zero target ports; both must be non-empty.
    fn selector_and_ports(&self) -> Result<(String, Vec<u16>), String> {
        let ports: Vec<u16> = self
            .spec
            .target_ports
            .iter()
            .map(|p| p.number)
            .filter(|&p| p != 0)
            .collect();
        if self.spec.selector.match_labels.is_empty() || ports.is_empty() {
            return Err("InferencePool has no selector or no target ports".to_string());
        }
        Ok((selector_string(&self.spec.selector.match_labels), ports))
    }
}

impl Pod {
    fn ip(&self) -> Option<IpAddr> {
        self.status.pod_ip.as_deref()?.parse().ok()
    }

    fn ready(&self) -> bool {
        self.metadata.deletion_timestamp.is_none()
            && self
                .status
                .conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.status == "True")
    }

    fn engine(&self) -> Engine {
        let l = &self.metadata.labels;
        match l.get(ENGINE_LABEL).or_else(|| l.get(ENGINE_LABEL_DEPRECATED)) {
            Some(v) => v.parse().unwrap_or_else(|e| {
                tracing::warn!(pod = %self.metadata.name, error = %e, "unknown engine label; using vllm");
                Engine::Vllm
            }),
            None => Engine::Vllm,
        }
    }
}

/// Percent-encodes a query value (label selectors contain `=`, `,`, `!`).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn targets_of(pods: &HashMap<String, Pod>, ports: &[u16]) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    let mut names: Vec<&String> = pods.keys().collect();
    names.sort();
    for name in names {
        let pod = &pods[name];
        let Some(ip) = pod.ip() else { continue };
        for &port in ports {
            out.push(Target {
                addr: SocketAddr::new(ip, port),
                engine: pod.engine(),
                ready: pod.ready(),
            });
        }
    }
    out
}

/// Lists pods matching `selector`, then follows them with a watch; publishes the target list
/// (one target per pod × port) on every change. Returns when the watch ends (caller relists).
async fn list_and_watch(
    client: &Client,
    selector: &str,
    ports: &[u16],
    tx: &watch::Sender<Vec<Target>>,
) -> Result<(), String> {
    let base = format!(
        "/api/v1/namespaces/{}/pods?labelSelector={}",
        client.namespace,
        query_escape(selector)
    );
    let list: PodList = client.get_json(&base).await?;
    let mut state = PodWatch::from_list(list);
    let publish = |pods: &HashMap<String, Pod>| {
        let t = targets_of(pods, ports);
        if *tx.borrow() != t {
            tracing::info!(
                targets = t.len(),
                ready = t.iter().filter(|t| t.ready).count(),
                "kubernetes targets"
            );
            tx.send_replace(t);
        }
    };
    publish(&state.pods);
    let path = format!(
        "{base}&watch=true&allowWatchBookmarks=true&timeoutSeconds=290&resourceVersion={}",
        state.rv
    );
    let (status, mut body) = client.get(&path).await?;
    if status != 200 {
        return Err(format!("watch pods: HTTP {status}"));
    }
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() else {
            continue;
        };
        if state.feed(&data)? {
            publish(&state.pods);
        }
    }
    tracing::debug!(resource_version = %state.rv, "watch ended; relisting");
    Ok(())
}

/// The pods one list + watch has seen, keyed by UID, fed the watch body as it arrives.
#[derive(Debug, Default)]
struct PodWatch {
    pods: HashMap<String, Pod>,
    /// Newest resourceVersion seen (list, events, bookmarks).
    rv: String,
    /// Bytes of an event line not complete yet.
    buf: BytesMut,
}

impl PodWatch {
    fn from_list(list: PodList) -> Self {
        PodWatch {
            pods: list.items.into_iter().map(|p| (p.metadata.uid.clone(), p)).collect(),
            rv: list.metadata.resource_version,
            buf: BytesMut::new(),
        }
    }

    /// Applies every complete event line (newline-delimited JSON `{"type","object"}`) in the
    /// bytes so far; returns whether any line was applied. An undecodable line, an `ERROR`
    /// event (e.g. 410 Gone: resourceVersion too old) or an unknown type is an error — the
    /// caller relists — as is a line growing past `MAX_OBJECT`. How the body is split into
    /// chunks changes nothing (property-tested below).
    fn feed(&mut self, data: &[u8]) -> Result<bool, String> {
        self.buf.extend_from_slice(data);
        let mut applied = false;
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let line = self.buf.split_to(i + 1);
            applied |= self.apply(&line[..i])?;
        }
        if self.buf.len() > MAX_OBJECT {
            return Err("watch event too large".into());
        }
        Ok(applied)
    }

    /// One event line; `Ok(false)` for a blank line. Decodes before changing anything, so an
    /// error leaves the pods as they were.
    fn apply(&mut self, line: &[u8]) -> Result<bool, String> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(false);
        }
        let ev: WatchEvent = serde_json::from_slice(line).map_err(|e| format!("watch event: {e}"))?;
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                let pod: Pod = serde_json::from_value(ev.object).map_err(|e| format!("watch pod: {e}"))?;
                self.rv = pod.metadata.resource_version.clone();
                self.pods.insert(pod.metadata.uid.clone(), pod);
            }
            "DELETED" => {
                let pod: Pod = serde_json::from_value(ev.object).map_err(|e| format!("watch pod: {e}"))?;
                self.rv = pod.metadata.resource_version.clone();
                self.pods.remove(&pod.metadata.uid);
            }
            "BOOKMARK" => {
                // Only metadata.resourceVersion is meaningful in a bookmark's object.
                if let Some(rv) = ev.object.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()) {
                    self.rv = rv.to_string();
                }
            }
            _ => return Err(format!("watch error event: {}", ev.object)),
        }
        Ok(true)
    }
}

/// Follows InferencePool `name`: its selector and target ports, then its pods.
pub async fn watch_pool(client: Client, name: String, tx: watch::Sender<Vec<Target>>) {
    let path = format!(
        "/apis/inference.networking.k8s.io/v1/namespaces/{}/inferencepools/{}",
        client.namespace,
        query_escape(&name)
    );
    loop {
        let result = async {
            let pool: Pool = client.get_json(&path).await?;
            let (selector, ports) = pool.selector_and_ports()?;
            list_and_watch(&client, &selector, &ports, &tx).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(pool = %name, error = %e, "kubernetes discovery failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = tx.closed() => return,
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Follows the pods matching a label selector (central mode's gateways; port 0).
pub async fn watch_pods(client: Client, selector: String, tx: watch::Sender<Vec<Target>>) {
    loop {
        if let Err(e) = list_and_watch(&client, &selector, &[0], &tx).await {
            tracing::warn!(selector = %selector, error = %e, "gateway discovery failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = tx.closed() => return,
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn helpers() {
        assert_eq!(b64decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(query_escape("app=vllm,tier!=x"), "app%3Dvllm%2Ctier%21%3Dx");
        assert_eq!(
            split_server("https://10.0.0.1:6443").unwrap(),
            (true, "10.0.0.1".into(), 6443)
        );
        assert_eq!(split_server("http://[::1]:8001/").unwrap(), (false, "::1".into(), 8001));
        assert!(split_server("10.0.0.1:6443").is_err());
    }

    fn b64encode(b: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for k in 0..4 {
                if k <= c.len() {
                    out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// A pod as the API server writes it (more fields than we read).
    #[derive(Clone, Debug)]
    struct GenPod {
        uid: String,
        ip: Option<String>,
        ready: bool,
        deleting: bool,
        engine: Option<&'static str>,
        rv: u32,
    }

    impl GenPod {
        fn json(&self) -> serde_json::Value {
            let mut labels = serde_json::json!({"app": "vllm"});
            if let Some(e) = self.engine {
                labels[ENGINE_LABEL] = e.into();
            }
            let mut meta = serde_json::json!({
                "name": format!("pod-{}", self.uid), "namespace": "llm", "uid": self.uid,
                "resourceVersion": self.rv.to_string(), "labels": labels,
                "annotations": {"x": "y"}, "ownerReferences": [{"kind": "ReplicaSet", "name": "rs"}],
            });
            if self.deleting {
                meta["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
            }
            let mut status = serde_json::json!({
                "phase": "Running",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": if self.ready { "True" } else { "False" }},
                ],
            });
            if let Some(ip) = &self.ip {
                status["podIP"] = ip.clone().into();
                status["podIPs"] = serde_json::json!([{"ip": ip}]);
            }
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"containers": [{"name": "vllm"}]}, "status": status})
        }
    }

    fn gen_pod() -> impl Strategy<Value = GenPod> {
        (
            "[a-d]",
            prop_oneof![
                Just(None),
                any::<[u8; 4]>().prop_map(|b| Some(IpAddr::from(b).to_string())),
                any::<[u16; 8]>().prop_map(|b| Some(IpAddr::from(b).to_string())),
                "[0-9a-z.:]{0,12}".prop_map(Some),
            ],
            any::<bool>(),
            any::<bool>(),
            prop_oneof![
                Just(None),
                Just(Some("vllm")),
                Just(Some("sglang")),
                Just(Some("no-such-engine"))
            ],
            any::<u32>(),
        )
            .prop_map(|(uid, ip, ready, deleting, engine, rv)| GenPod {
                uid,
                ip,
                ready,
                deleting,
                engine,
                rv,
            })
    }

    /// One watch event: 0 ADDED, 1 MODIFIED, 2 DELETED, 3 BOOKMARK.
    fn gen_event() -> impl Strategy<Value = (u8, GenPod)> {
        (0u8..4, gen_pod())
    }

    fn event_line((kind, pod): &(u8, GenPod)) -> Vec<u8> {
        let ev = match kind {
            0 | 1 => {
                let kind = if *kind == 0 { "ADDED" } else { "MODIFIED" };
                serde_json::json!({"type": kind, "object": pod.json()})
            }
            2 => serde_json::json!({"type": "DELETED", "object": pod.json()}),
            _ => serde_json::json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"resourceVersion": pod.rv.to_string()}}}),
        };
        let mut line = serde_json::to_vec(&ev).unwrap();
        line.push(b'\n');
        line
    }

    /// (uid, ip, ready, engine) per pod, as the collector sees them; the model the watch must match.
    type View = Vec<(String, Option<IpAddr>, bool, Engine)>;

    fn view(pods: &HashMap<String, Pod>) -> View {
        let mut v: View = pods
            .iter()
            .map(|(u, p)| (u.clone(), p.ip(), p.ready(), p.engine()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn model(list: &[GenPod], events: &[(u8, GenPod)]) -> View {
        let mut m: BTreeMap<String, &GenPod> = list.iter().map(|p| (p.uid.clone(), p)).collect();
        for (k, p) in events {
            match k {
                0 | 1 => {
                    m.insert(p.uid.clone(), p);
                }
                2 => {
                    m.remove(&p.uid);
                }
                _ => {}
            }
        }
        m.into_iter()
            .map(|(u, p)| {
                let engine = match p.engine {
                    Some("sglang") => Engine::Sglang,
                    _ => Engine::Vllm,
                };
                let ip = p.ip.as_deref().and_then(|s| s.parse().ok());
                (u, ip, p.ready && !p.deleting, engine)
            })
            .collect()
    }

    fn list_json(pods: &[GenPod]) -> Vec<u8> {
        // The API server never lists a UID twice.
        let mut seen = std::collections::BTreeSet::new();
        let items: Vec<_> = pods
            .iter()
            .filter(|p| seen.insert(p.uid.clone()))
            .map(GenPod::json)
            .collect();
        serde_json::to_vec(&serde_json::json!({"apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": "100"}, "items": items}))
        .unwrap()
    }

    fn dedup(pods: &[GenPod]) -> Vec<GenPod> {
        let mut seen = std::collections::BTreeSet::new();
        pods.iter().filter(|p| seen.insert(p.uid.clone())).cloned().collect()
    }

    /// Byte edits: (position, byte, 0 replace / 1 delete / 2 insert).
    fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, u8)>> {
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
    }

    fn mutate(mut bytes: Vec<u8>, edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = *byte,
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, *byte),
            }
        }
        bytes
    }

    fn kubeconfig(server: &str, ca: &Secret, token: &Secret, ns: Option<&str>, decoys: usize) -> String {
        let mut cluster = format!("    server: {server:?}\n");
        match ca {
            Secret::Inline(d) => cluster += &format!("    certificate-authority-data: {}\n", b64encode(d)),
            Secret::File(f) => cluster += &format!("    certificate-authority: {f:?}\n"),
            Secret::None => {}
        }
        let user = match token {
            Secret::Inline(t) => format!("    token: {:?}\n", String::from_utf8_lossy(t)),
            Secret::File(f) => format!("    tokenFile: {f:?}\n"),
            Secret::None => "    username: nobody\n".into(),
        };
        let ns = ns.map(|n| format!("    namespace: {n:?}\n")).unwrap_or_default();
        let mut out = String::from("apiVersion: v1\nkind: Config\ncurrent-context: ctx\nclusters:\n");
        for d in 0..decoys {
            out += &format!("- name: decoy{d}\n  cluster:\n    server: https://decoy:1\n");
        }
        out += &format!("- name: c\n  cluster:\n{cluster}contexts:\n");
        for d in 0..decoys {
            out += &format!("- name: decoy{d}\n  context:\n    cluster: decoy{d}\n");
        }
        out += &format!("- name: ctx\n  context:\n    cluster: c\n    user: u\n{ns}users:\n- name: u\n  user:\n{user}");
        out
    }

    #[test]
    fn kubeconfig_examples() {
        let text = kubeconfig(
            "https://10.0.0.1:6443",
            &Secret::Inline(b"-----BEGIN CERTIFICATE-----".to_vec()),
            &Secret::Inline(b"abc".to_vec()),
            Some("llm"),
            1,
        );
        assert_eq!(
            parse_kubeconfig(&text).unwrap(),
            KubeTarget {
                server: "https://10.0.0.1:6443".into(),
                ca: Secret::Inline(b"-----BEGIN CERTIFICATE-----".to_vec()),
                token: Secret::Inline(b"abc".to_vec()),
                namespace: Some("llm".into()),
            }
        );
        let missing = text.replace("current-context: ctx", "current-context: other");
        assert!(parse_kubeconfig(&missing).unwrap_err().contains("\"other\" not found"));
        let insecure = text.replace("    server:", "    insecure-skip-tls-verify: true\n    server:");
        assert!(parse_kubeconfig(&insecure)
            .unwrap_err()
            .contains("insecure-skip-tls-verify"));
        let bad_b64 = text.replace("certificate-authority-data: ", "certificate-authority-data: @@");
        assert!(parse_kubeconfig(&bad_b64).is_err());
    }

    #[tokio::test]
    async fn token_file_is_read_before_each_request() {
        let path = std::env::temp_dir().join(format!("collector-k8s-token-{}", std::process::id()));
        std::fs::write(&path, "first\n").unwrap();
        let c = Client::new("http://127.0.0.1:1", None, Some("given".into()), "ns".into()).unwrap();
        assert_eq!(c.bearer().await.as_deref(), Some("given"));
        let c = c.with_token_file(path.to_string_lossy());
        assert_eq!(c.bearer().await.as_deref(), Some("first"));
        std::fs::write(&path, "rotated").unwrap();
        assert_eq!(c.bearer().await.as_deref(), Some("rotated"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.bearer().await.as_deref(), Some("given"));
    }

    #[test]
    fn watch_error_event_and_bookmark() {
        let mut w = PodWatch::from_list(decode(&list_json(&[])).unwrap());
        assert_eq!(w.rv, "100");
        assert!(w
            .feed(b"{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"123\"}}}\n\n")
            .unwrap());
        assert_eq!(w.rv, "123");
        let gone = b"{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410,\"reason\":\"Expired\"}}\n";
        assert!(w.feed(gone).unwrap_err().contains("410"));
        assert!(!w.feed(b"\n  \n").unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

        /// Arbitrary bytes as any API answer, watch body or kubeconfig: errors, never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode::<PodList>(&bytes);
            if let Ok(p) = decode::<Pool>(&bytes) {
                let _ = p.selector_and_ports();
            }
            let mut w = PodWatch::default();
            let _ = w.feed(&bytes);
            let _ = parse_kubeconfig(&String::from_utf8_lossy(&bytes));
        }

        /// A list then any watch stream, split into any chunks: the pods are exactly the
        /// model's, and the targets follow from them.
        #[test]
        fn list_and_watch_events_match_the_model(
            list in proptest::collection::vec(gen_pod(), 0..5),
            events in proptest::collection::vec(gen_event(), 0..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let list = dedup(&list);
            let mut w = PodWatch::from_list(decode(&list_json(&list)).unwrap());
            let body: Vec<u8> = events.iter().flat_map(event_line).collect();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            cuts.push(0);
            cuts.push(body.len());
            cuts.sort();
            for pair in cuts.windows(2) {
                w.feed(&body[pair[0]..pair[1]]).unwrap();
            }
            prop_assert!(w.buf.is_empty());
            prop_assert_eq!(view(&w.pods), model(&list, &events));
            let targets = targets_of(&w.pods, &[8000]);
            prop_assert_eq!(targets.len(), w.pods.values().filter(|p| p.ip().is_some()).count());
        }

        /// A damaged event line is reported, not skipped: the events before it are applied,
        /// the damaged one changes nothing.
        #[test]
        fn damaged_event_lines_are_errors(
            events in proptest::collection::vec(gen_event(), 1..8),
            which in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
            error_event in any::<bool>(),
        ) {
            let k = which.index(events.len());
            let mut w = PodWatch::default();
            for e in &events[..k] {
                w.feed(&event_line(e)).unwrap();
            }
            let before = view(&w.pods);
            let line = event_line(&events[k]);
            let damaged = if error_event {
                b"{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410}}\n".to_vec()
            } else {
                // A non-empty proper prefix of a JSON object, newline-terminated.
                let n = 1 + cut.index(line.len() - 2);
                let mut d = line[..n].to_vec();
                d.push(b'\n');
                d
            };
            prop_assert!(w.feed(&damaged).is_err());
            prop_assert_eq!(view(&w.pods), before);
            prop_assert_eq!(view(&w.pods), model(&[], &events[..k]));
        }

        /// Edited list answers and watch lines: no panic; whatever decodes is used as is.
        #[test]
        fn mutated_list_and_events_never_panic(
            list in proptest::collection::vec(gen_pod(), 0..4),
            events in proptest::collection::vec(gen_event(), 0..6),
            e1 in edits(),
            e2 in edits(),
        ) {
            if let Ok(l) = decode::<PodList>(&mutate(list_json(&list), &e1)) {
                let mut w = PodWatch::from_list(l);
                let body: Vec<u8> = events.iter().flat_map(event_line).collect();
                let _ = w.feed(&mutate(body, &e2));
                let _ = targets_of(&w.pods, &[8000, 0]);
            }
        }

        /// Generated kubeconfigs read back exactly; edited ones error or parse, never panic.
        #[test]
        fn kubeconfigs_round_trip_and_survive_edits(
            server in "https?://[a-z0-9.]{1,12}(:[0-9]{1,5})?",
            ca in prop_oneof![
                Just(Secret::None),
                proptest::collection::vec(any::<u8>(), 1..40).prop_map(Secret::Inline),
                "/[a-z/]{1,16}".prop_map(Secret::File),
            ],
            token in prop_oneof![
                Just(Secret::None),
                "[A-Za-z0-9._-]{1,24}".prop_map(|t| Secret::Inline(t.into_bytes())),
                "/[a-z/]{1,16}".prop_map(Secret::File),
            ],
            ns in proptest::option::of("[a-z0-9-]{1,12}"),
            decoys in 0usize..3,
            e in edits(),
        ) {
            let text = kubeconfig(&server, &ca, &token, ns.as_deref(), decoys);
            let want = KubeTarget { server, ca, token, namespace: ns };
            prop_assert_eq!(parse_kubeconfig(&text), Ok(want));
            let _ = parse_kubeconfig(&String::from_utf8_lossy(&mutate(text.into_bytes(), &e)));
        }

        /// InferencePool answers: the selector and ports are exactly those listed (zero ports
        /// dropped); an empty selector or no port is an error.
        #[test]
        fn pool_selector_and_ports(
            labels in proptest::collection::btree_map("[a-z.-/]{1,8}", "[a-z0-9]{0,6}", 0..4),
            ports in proptest::collection::vec(any::<u16>(), 0..4),
        ) {
            let json = serde_json::json!({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                "spec": {"selector": {"matchLabels": labels}, "targetPorts": ports.iter().map(|p| serde_json::json!({"number": p})).collect::<Vec<_>>(),
                         "endpointPickerRef": {"name": "epp"}}});
            let pool: Pool = decode(&serde_json::to_vec(&json).unwrap()).unwrap();
            let nonzero: Vec<u16> = ports.iter().copied().filter(|&p| p != 0).collect();
            match pool.selector_and_ports() {
                Ok((sel, p)) => {
                    prop_assert!(!labels.is_empty());
                    prop_assert_eq!(p, nonzero);
                    prop_assert_eq!(sel, selector_string(&labels));
                }
                Err(_) => prop_assert!(labels.is_empty() || nonzero.is_empty()),
            }
        }
    }
}
