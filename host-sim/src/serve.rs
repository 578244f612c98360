//! `host-sim serve`: a local HTTP/1.1 gateway that runs the plugin like Envoy would.
//!
//! - A listener (hyper 1 on tokio) accepts clients; each request is assigned round-robin to a
//!   worker thread that owns one VM instance ([`Worker`]); all workers share one `vm_id`
//!   namespace ([`VmGroup`]), like Envoy's per-worker VMs (reference §4.3).
//! - After the filter releases the request headers, the router picks the upstream from the
//!   forwarded `x-gateway-destination-endpoint` header (an ordered list, walked on connect
//!   failure, as the GIE contract asks, §4.9) or, without it, from the route cluster's own
//!   round-robin. The served endpoint is reported to the filter as property `upstream.address`
//!   before the response headers callback.
//! - Without the header, filter state `envoy.network.transport_socket.original_dst_address`
//!   (set with the `set_envoy_filter_state` foreign function) routes like an ORIGINAL_DST
//!   cluster (DESIGN "How the pick reaches the router", path 2).
//! - Bodies stream both ways; data the filter lets through goes on at once (SSE works).
//! - `dispatch_http_call` to a named cluster performs a real HTTP/1.1 call to that cluster.
//!
//! Only loopback addresses should be configured: this is a developer tool and a test fixture.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as smpsc, Arc};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::abi::Headers;
use crate::options::{CallResponse, Clock, FailurePolicy, HostOptions, Profile};
use crate::shared::VmGroup;
use crate::worker::{StreamId, Worker};
use crate::{Error, Plugin};

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
    pub profile: Profile,
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
            serde_yaml::from_str(&text).map_err(|e| Error::Case(format!("gateway config: {e}")))?;
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

// === worker threads ===

enum WCmd {
    New {
        events: mpsc::UnboundedSender<Ev>,
        peer: SocketAddr,
        reply: oneshot::Sender<StreamId>,
    },
    ReqHeaders(StreamId, Headers, bool),
    ReqBody(StreamId, Bytes, bool),
    ReqTrailers(StreamId, Headers),
    RespHeaders(StreamId, Headers, bool, Option<String>),
    RespBody(StreamId, Bytes, bool),
    RespTrailers(StreamId, Headers),
    Finish(StreamId),
    CallDone(u32, CallResponse),
    Stop,
}

/// What the filter released, as deltas for the proxy side.
enum Ev {
    UpStart {
        headers: Headers,
        body: Bytes,
        end: bool,
        /// Filter state `envoy.network.transport_socket.original_dst_address`, if set.
        original_dst: Option<String>,
    },
    UpData(Bytes),
    UpEnd,
    DownStart {
        headers: Headers,
        body: Bytes,
        end: bool,
    },
    DownData(Bytes),
    DownEnd,
    Reset,
}

#[derive(Default)]
struct Track {
    up_started: bool,
    up_sent: usize,
    up_end: bool,
    down_started: bool,
    down_sent: usize,
    down_end: bool,
    reset: bool,
}

struct Shared {
    workers: Vec<smpsc::Sender<WCmd>>,
    rr: AtomicUsize,
    cluster_rr: AtomicUsize,
    clusters: BTreeMap<String, Vec<String>>,
    route_cluster: String,
    dest_header: String,
    rt: tokio::runtime::Handle,
}

fn worker_loop(
    mut w: Worker,
    rx: smpsc::Receiver<WCmd>,
    tx: smpsc::Sender<WCmd>,
    shared: Arc<std::sync::OnceLock<Arc<Shared>>>,
) {
    // A gateway runs until stopped: bounded histories, not every log line and sample.
    w.bound_history();
    let mut tracks: HashMap<StreamId, (mpsc::UnboundedSender<Ev>, Track)> = HashMap::new();
    let mut dispatched: HashSet<u32> = HashSet::new();
    loop {
        let cmd = match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(c) => Some(c),
            Err(smpsc::RecvTimeoutError::Timeout) => None,
            Err(smpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Input for a stream that already finished (e.g. body still arriving after a local
        // reply) is dropped.
        let stale = match &cmd {
            Some(WCmd::ReqHeaders(id, ..))
            | Some(WCmd::ReqBody(id, ..))
            | Some(WCmd::ReqTrailers(id, ..))
            | Some(WCmd::RespHeaders(id, ..))
            | Some(WCmd::RespBody(id, ..))
            | Some(WCmd::RespTrailers(id, ..))
            | Some(WCmd::Finish(id)) => !tracks.contains_key(id),
            _ => false,
        };
        if stale {
            continue;
        }
        match cmd {
            Some(WCmd::Stop) => return,
            Some(WCmd::New { events, peer, reply }) => {
                let id = w.new_stream();
                w.set_stream_property(id, "source.address", peer.to_string().as_bytes());
                tracks.insert(id, (events, Track::default()));
                let _ = reply.send(id);
            }
            Some(WCmd::ReqHeaders(id, h, eos)) => {
                w.request_headers(id, h, eos);
            }
            Some(WCmd::ReqBody(id, b, eos)) => {
                w.request_body(id, &b, eos);
            }
            Some(WCmd::ReqTrailers(id, t)) => {
                w.request_trailers(id, t);
            }
            Some(WCmd::RespHeaders(id, h, eos, served)) => {
                if let Some(ep) = served {
                    w.set_stream_property(id, "upstream.address", ep.as_bytes());
                }
                w.response_headers(id, h, eos);
            }
            Some(WCmd::RespBody(id, b, eos)) => {
                w.response_body(id, &b, eos);
            }
            Some(WCmd::RespTrailers(id, t)) => {
                w.response_trailers(id, t);
            }
            Some(WCmd::Finish(id)) => {
                w.finish(id);
                w.forget(id);
                tracks.remove(&id);
            }
            Some(WCmd::CallDone(token, resp)) => {
                dispatched.remove(&token);
                w.respond_http_call(token, resp);
            }
            None => {}
        }
        w.run_timers_and_queues();
        // Start real calls for new dispatch_http_call requests.
        if let Some(sh) = shared.get() {
            for call in w.pending_calls() {
                if dispatched.insert(call.token) {
                    let tx = tx.clone();
                    let sh2 = sh.clone();
                    sh.rt.spawn(async move {
                        let resp = http_callout(&sh2, &call).await;
                        let _ = tx.send(WCmd::CallDone(call.token, resp));
                    });
                }
            }
        }
        for (id, (ev, t)) in tracks.iter_mut() {
            sync(&w, *id, ev, t);
        }
    }
}

fn sync(w: &Worker, id: StreamId, ev: &mpsc::UnboundedSender<Ev>, t: &mut Track) {
    if t.reset {
        return;
    }
    if w.was_reset(id) {
        t.reset = true;
        let _ = ev.send(Ev::Reset);
        return;
    }
    if let Some(up) = w.upstream(id) {
        if let Some(h) = &up.headers {
            if !t.up_started {
                t.up_started = true;
                t.up_sent = up.body.len();
                t.up_end = up.end;
                let original_dst = w
                    .stream_io(id)
                    .and_then(|io| io.filter_state.get(ORIGINAL_DST_KEY))
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                let _ = ev.send(Ev::UpStart {
                    headers: h.clone(),
                    body: Bytes::copy_from_slice(&up.body),
                    end: up.end,
                    original_dst,
                });
            } else {
                if up.body.len() > t.up_sent {
                    let _ = ev.send(Ev::UpData(Bytes::copy_from_slice(&up.body[t.up_sent..])));
                    t.up_sent = up.body.len();
                }
                if up.end && !t.up_end {
                    t.up_end = true;
                    let _ = ev.send(Ev::UpEnd);
                }
            }
        }
    }
    if let Some(down) = w.downstream(id) {
        if let Some(h) = &down.headers {
            if !t.down_started {
                t.down_started = true;
                t.down_sent = down.body.len();
                t.down_end = down.end;
                let _ = ev.send(Ev::DownStart {
                    headers: h.clone(),
                    body: Bytes::copy_from_slice(&down.body),
                    end: down.end,
                });
            } else {
                if down.body.len() > t.down_sent {
                    let _ = ev.send(Ev::DownData(Bytes::copy_from_slice(&down.body[t.down_sent..])));
                    t.down_sent = down.body.len();
                }
                if down.end && !t.down_end {
                    t.down_end = true;
                    let _ = ev.send(Ev::DownEnd);
                }
            }
        }
    }
}

// === bodies ===

type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Response/request body: either complete, or fed frame by frame through a channel.
enum GwBody {
    Full(Option<Bytes>),
    Chan(mpsc::UnboundedReceiver<Result<Frame<Bytes>, BodyError>>),
}

impl Body for GwBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut *self {
            GwBody::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            GwBody::Chan(rx) => rx.poll_recv(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, GwBody::Full(None)) || matches!(self, GwBody::Full(Some(b)) if b.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GwBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            GwBody::Full(None) => SizeHint::with_exact(0),
            GwBody::Chan(_) => SizeHint::default(),
        }
    }
}

const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

fn simple_response(status: u16, body: &'static str) -> Response<GwBody> {
    let mut r = Response::new(GwBody::Full(Some(Bytes::from_static(body.as_bytes()))));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    r
}

/// Build the client response from the headers the filter released.
fn client_response(headers: &Headers, body: GwBody, full_len: Option<usize>) -> Response<GwBody> {
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| v.parse::<u16>().ok())
        .and_then(|s| hyper::StatusCode::from_u16(s).ok())
        .unwrap_or(hyper::StatusCode::OK);
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        if k.starts_with(':') || HOP.contains(&k.as_str()) || k == "content-length" {
            continue;
        }
        b = b.header(k.as_str(), v.as_str());
    }
    if let Some(n) = full_len {
        b = b.header("content-length", n.to_string());
    }
    b.body(body)
        .unwrap_or_else(|_| simple_response(502, "bad response headers from filter"))
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
        let shared_cell: Arc<std::sync::OnceLock<Arc<Shared>>> = Arc::new(std::sync::OnceLock::new());
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
                let shared = Arc::new(Shared {
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
                                let sh = shared.clone();
                                tokio::spawn(async move {
                                    let svc = hyper::service::service_fn(move |req| {
                                        let sh = sh.clone();
                                        async move { Ok::<_, Infallible>(handle(req, peer, sh).await) }
                                    });
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(TokioIo::new(tcp), svc)
                                        .await;
                                });
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

fn to_proxy_headers(parts: &hyper::http::request::Parts) -> Headers {
    let mut h: Headers = vec![
        (":method".into(), parts.method.as_str().to_string()),
        (
            ":path".into(),
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
        ),
    ];
    let authority = parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    h.push((":authority".into(), authority));
    h.push((":scheme".into(), "http".into()));
    for (k, v) in &parts.headers {
        let k = k.as_str().to_ascii_lowercase();
        if k == "host" || HOP.contains(&k.as_str()) {
            continue;
        }
        h.push((k, String::from_utf8_lossy(v.as_bytes()).into_owned()));
    }
    h
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, sh: Arc<Shared>) -> Response<GwBody> {
    let wi = sh.rr.fetch_add(1, Ordering::Relaxed) % sh.workers.len();
    let wtx = sh.workers[wi].clone();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (id_tx, id_rx) = oneshot::channel();
    if wtx
        .send(WCmd::New {
            events: ev_tx,
            peer,
            reply: id_tx,
        })
        .is_err()
    {
        return simple_response(503, "worker gone");
    }
    let Ok(id) = id_rx.await else {
        return simple_response(503, "worker gone");
    };
    let (parts, mut body) = req.into_parts();
    let eos = body.is_end_stream();
    let _ = wtx.send(WCmd::ReqHeaders(id, to_proxy_headers(&parts), eos));
    if !eos {
        let wtx = wtx.clone();
        tokio::spawn(async move {
            loop {
                match body.frame().await {
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => {
                            let _ = wtx.send(WCmd::ReqBody(id, d, false));
                        }
                        Err(f) => {
                            if let Ok(t) = f.into_trailers() {
                                let t = t
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect();
                                let _ = wtx.send(WCmd::ReqTrailers(id, t));
                                return;
                            }
                        }
                    },
                    Some(Err(_)) => return,
                    None => {
                        let _ = wtx.send(WCmd::ReqBody(id, Bytes::new(), true));
                        return;
                    }
                }
            }
        });
    }
    let (resp_tx, resp_rx) = oneshot::channel();
    tokio::spawn(drive_stream(id, wtx, ev_rx, resp_tx, sh));
    resp_rx.await.unwrap_or_else(|_| simple_response(502, "stream reset"))
}

async fn drive_stream(
    id: StreamId,
    wtx: smpsc::Sender<WCmd>,
    mut ev_rx: mpsc::UnboundedReceiver<Ev>,
    resp_tx: oneshot::Sender<Response<GwBody>>,
    sh: Arc<Shared>,
) {
    let mut resp_tx = Some(resp_tx);
    let mut up_tx: Option<mpsc::UnboundedSender<Result<Frame<Bytes>, BodyError>>> = None;
    let mut down_tx: Option<mpsc::UnboundedSender<Result<Frame<Bytes>, BodyError>>> = None;
    while let Some(ev) = ev_rx.recv().await {
        match ev {
            Ev::UpStart {
                headers,
                body,
                end,
                original_dst,
            } => {
                let (b, len) = if end {
                    let n = body.len();
                    (GwBody::Full(Some(body)), Some(n))
                } else {
                    let (tx, rx) = mpsc::unbounded_channel();
                    if !body.is_empty() {
                        let _ = tx.send(Ok(Frame::data(body)));
                    }
                    up_tx = Some(tx);
                    (GwBody::Chan(rx), None)
                };
                tokio::spawn(upstream_request(
                    id,
                    wtx.clone(),
                    headers,
                    original_dst,
                    b,
                    len,
                    sh.clone(),
                ));
            }
            Ev::UpData(d) => {
                if let Some(tx) = &up_tx {
                    let _ = tx.send(Ok(Frame::data(d)));
                }
            }
            Ev::UpEnd => up_tx = None,
            Ev::DownStart { headers, body, end } => {
                let resp = if end {
                    let n = body.len();
                    client_response(&headers, GwBody::Full(Some(body)), Some(n))
                } else {
                    let (tx, rx) = mpsc::unbounded_channel();
                    if !body.is_empty() {
                        let _ = tx.send(Ok(Frame::data(body)));
                    }
                    down_tx = Some(tx);
                    client_response(&headers, GwBody::Chan(rx), None)
                };
                if let Some(t) = resp_tx.take() {
                    let _ = t.send(resp);
                }
                if end {
                    break;
                }
            }
            Ev::DownData(d) => {
                if let Some(tx) = &down_tx {
                    let _ = tx.send(Ok(Frame::data(d)));
                }
            }
            Ev::DownEnd => {
                down_tx = None;
                break;
            }
            Ev::Reset => {
                if let Some(tx) = down_tx.take() {
                    let _ = tx.send(Err("stream reset by filter".into()));
                }
                up_tx = None;
                break;
            }
        }
    }
    drop(up_tx);
    drop(down_tx);
    let _ = wtx.send(WCmd::Finish(id));
}

/// Filter state read by an ORIGINAL_DST cluster (DESIGN "How the pick reaches the router",
/// path 2; reference §4.9).
const ORIGINAL_DST_KEY: &str = "envoy.network.transport_socket.original_dst_address";

/// Endpoint candidates: the forwarded destination list (override_host header source, or
/// ORIGINAL_DST `use_http_header`), else the `original_dst_address` filter state, else the
/// route cluster's round-robin order.
fn candidates(sh: &Shared, headers: &Headers, original_dst: Option<&str>) -> Vec<String> {
    if let Some((_, v)) = headers.iter().find(|(k, _)| *k == sh.dest_header) {
        let list: Vec<String> = v
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if !list.is_empty() {
            return list;
        }
    }
    if let Some(dst) = original_dst {
        return vec![dst.to_string()];
    }
    let eps = sh.clusters.get(&sh.route_cluster).cloned().unwrap_or_default();
    if eps.is_empty() {
        return eps;
    }
    let start = sh.cluster_rr.fetch_add(1, Ordering::Relaxed) % eps.len();
    eps[start..].iter().chain(eps[..start].iter()).cloned().collect()
}

async fn connect_first(eps: &[String]) -> Option<(String, TcpStream)> {
    for ep in eps {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(ep.as_str())).await {
            return Some((ep.clone(), s));
        }
    }
    None
}

fn build_request(headers: &Headers, body: GwBody, full_len: Option<usize>) -> Option<Request<GwBody>> {
    let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut b = Request::builder()
        .method(get(":method").unwrap_or("GET"))
        .uri(get(":path").unwrap_or("/"));
    if let Some(a) = get(":authority") {
        b = b.header("host", a);
    }
    for (k, v) in headers {
        if k.starts_with(':') || HOP.contains(&k.as_str()) || k == "content-length" || k == "host" {
            continue;
        }
        b = b.header(k.as_str(), v.as_str());
    }
    if let Some(n) = full_len {
        b = b.header("content-length", n.to_string());
    }
    b.body(body).ok()
}

#[allow(clippy::too_many_arguments)]
async fn upstream_request(
    id: StreamId,
    wtx: smpsc::Sender<WCmd>,
    headers: Headers,
    original_dst: Option<String>,
    body: GwBody,
    full_len: Option<usize>,
    sh: Arc<Shared>,
) {
    let fail = |wtx: &smpsc::Sender<WCmd>, msg: &'static str| {
        // Router local reply: passes through the filter's response path like Envoy's.
        let h = vec![
            (":status".to_string(), "503".to_string()),
            ("content-type".to_string(), "text/plain".to_string()),
        ];
        let _ = wtx.send(WCmd::RespHeaders(id, h, false, None));
        let _ = wtx.send(WCmd::RespBody(id, Bytes::from_static(msg.as_bytes()), true));
    };
    let eps = candidates(&sh, &headers, original_dst.as_deref());
    let Some((ep, tcp)) = connect_first(&eps).await else {
        fail(&wtx, "no healthy upstream");
        return;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await else {
        fail(&wtx, "upstream connect error");
        return;
    };
    tokio::spawn(conn);
    let Some(req) = build_request(&headers, body, full_len) else {
        fail(&wtx, "bad request headers from filter");
        return;
    };
    let Ok(resp) = sender.send_request(req).await else {
        fail(&wtx, "upstream reset before response");
        return;
    };
    let (parts, mut rbody) = resp.into_parts();
    let mut h: Headers = vec![(":status".into(), parts.status.as_u16().to_string())];
    for (k, v) in &parts.headers {
        let k = k.as_str().to_ascii_lowercase();
        if HOP.contains(&k.as_str()) {
            continue;
        }
        h.push((k, String::from_utf8_lossy(v.as_bytes()).into_owned()));
    }
    let eos = rbody.is_end_stream();
    let _ = wtx.send(WCmd::RespHeaders(id, h, eos, Some(ep)));
    if eos {
        return;
    }
    loop {
        match rbody.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    let _ = wtx.send(WCmd::RespBody(id, d, false));
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        let t = t
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.as_str().to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect();
                        let _ = wtx.send(WCmd::RespTrailers(id, t));
                        return;
                    }
                }
            },
            Some(Err(_)) | None => {
                let _ = wtx.send(WCmd::RespBody(id, Bytes::new(), true));
                return;
            }
        }
    }
}

/// A real `dispatch_http_call`: one HTTP/1.1 request to the cluster's next endpoint.
async fn http_callout(sh: &Shared, call: &crate::host::PendingCall) -> CallResponse {
    let failed = CallResponse {
        fail: true,
        ..Default::default()
    };
    let eps = sh.clusters.get(&call.cluster).cloned().unwrap_or_default();
    let work = async {
        let (_, tcp) = connect_first(&eps).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(conn);
        let n = call.body.len();
        let req = build_request(
            &call.headers,
            GwBody::Full(Some(Bytes::from(call.body.clone()))),
            Some(n),
        )?;
        let resp = sender.send_request(req).await.ok()?;
        let (parts, body) = resp.into_parts();
        let mut headers: Headers = vec![(":status".into(), parts.status.as_u16().to_string())];
        for (k, v) in &parts.headers {
            headers.push((
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
        let body = body.collect().await.ok()?.to_bytes();
        Some(CallResponse {
            headers,
            body: body.to_vec(),
            trailers: Vec::new(),
            fail: false,
        })
    };
    let r = if call.timeout_ms > 0 {
        tokio::time::timeout(Duration::from_millis(u64::from(call.timeout_ms)), work)
            .await
            .ok()
            .flatten()
    } else {
        work.await
    };
    r.unwrap_or(failed)
}
