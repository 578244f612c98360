//! Kubernetes discovery: a lean list + watch client on hyper (+ rustls for in-cluster HTTPS).
//!
//! Why not kube-rs: kube + k8s-openapi take minutes to compile on CI's two cores, and we need
//! three calls: GET an InferencePool, list pods by label selector, watch them. The client
//! speaks the documented REST shapes directly: `GET /apis/inference.networking.k8s.io/v1/
//! namespaces/NS/inferencepools/NAME`, `GET /api/v1/namespaces/NS/pods?labelSelector=…`
//! (a `PodList` with `metadata.resourceVersion`) and the same with `watch=true&
//! resourceVersion=RV` (newline-delimited `{"type","object"}` events; `ERROR` or the stream
//! ending means relist).
//!
//! Configuration: in-cluster (`KUBERNETES_SERVICE_HOST`/`_PORT`, the service-account token and
//! CA under `/var/run/secrets/kubernetes.io/serviceaccount/`), or `KUBECONFIG` (current
//! context: `server`, `certificate-authority[-data]`, `insecure-skip-tls-verify` is refused,
//! user `token` / `tokenFile`; `http://` servers such as `kubectl proxy` work without TLS).

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
            namespace,
        })
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
            return Client::new(&server, Some(&ca), Some(token.trim().to_string()), ns);
        }
        let path = std::env::var("KUBECONFIG")
            .ok()
            .and_then(|p| p.split(':').next().map(str::to_string))
            .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.kube/config")))
            .ok_or("no in-cluster config and no KUBECONFIG")?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let kc: KubeConfig = serde_saphyr::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        let ctx = kc
            .contexts
            .iter()
            .find(|c| c.name == kc.current_context)
            .ok_or_else(|| format!("{path}: current-context {:?} not found", kc.current_context))?;
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == ctx.value.cluster)
            .ok_or_else(|| format!("{path}: cluster {:?} not found", ctx.value.cluster))?;
        if cluster.value.insecure {
            return Err(format!("{path}: insecure-skip-tls-verify is not supported"));
        }
        let user = kc.users.iter().find(|u| u.name == ctx.value.user).map(|u| &u.value);
        let token = match user {
            Some(KUser { token: Some(t), .. }) => Some(t.clone()),
            Some(KUser {
                token_file: Some(f), ..
            }) => Some(
                tokio::fs::read_to_string(f)
                    .await
                    .map_err(|e| format!("{f}: {e}"))?
                    .trim()
                    .to_string(),
            ),
            _ => None,
        };
        let ca = match (&cluster.value.ca_data, &cluster.value.ca_file) {
            (Some(d), _) => Some(b64decode(d)?),
            (None, Some(f)) => Some(tokio::fs::read(f).await.map_err(|e| format!("{f}: {e}"))?),
            _ => None,
        };
        let ns = namespace
            .map(str::to_string)
            .or_else(|| ctx.value.namespace.clone())
            .unwrap_or_else(|| "default".into());
        Client::new(&cluster.value.server, ca.as_deref(), token, ns)
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
        if let Some(t) = &self.token {
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
        serde_json::from_slice(&buf).map_err(|e| format!("GET {path}: {e}"))
    }
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
    let mut pods: HashMap<String, Pod> = list.items.into_iter().map(|p| (p.metadata.uid.clone(), p)).collect();
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
    publish(&pods);
    let mut rv = list.metadata.resource_version;
    let path = format!("{base}&watch=true&allowWatchBookmarks=true&timeoutSeconds=290&resourceVersion={rv}");
    let (status, mut body) = client.get(&path).await?;
    if status != 200 {
        return Err(format!("watch pods: HTTP {status}"));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(i + 1);
            let line = &line[..i];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let ev: WatchEvent = serde_json::from_slice(line).map_err(|e| format!("watch event: {e}"))?;
            match ev.kind.as_str() {
                "ADDED" | "MODIFIED" => {
                    let pod: Pod = serde_json::from_value(ev.object).map_err(|e| format!("watch pod: {e}"))?;
                    rv = pod.metadata.resource_version.clone();
                    pods.insert(pod.metadata.uid.clone(), pod);
                }
                "DELETED" => {
                    let pod: Pod = serde_json::from_value(ev.object).map_err(|e| format!("watch pod: {e}"))?;
                    pods.remove(&pod.metadata.uid);
                }
                "BOOKMARK" => {}
                // `ERROR` (e.g. 410 Gone: resourceVersion too old): relist.
                _ => return Err(format!("watch error event: {}", ev.object)),
            }
            publish(&pods);
        }
        if buf.len() > MAX_OBJECT {
            return Err("watch event too large".into());
        }
    }
    tracing::debug!(resource_version = %rv, "watch ended; relisting");
    Ok(())
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
            let ports: Vec<u16> = pool
                .spec
                .target_ports
                .iter()
                .map(|p| p.number)
                .filter(|&p| p != 0)
                .collect();
            if pool.spec.selector.match_labels.is_empty() || ports.is_empty() {
                return Err("InferencePool has no selector or no target ports".to_string());
            }
            list_and_watch(&client, &selector_string(&pool.spec.selector.match_labels), &ports, &tx).await
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
}
