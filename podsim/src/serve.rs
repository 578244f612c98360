//! HTTP mode: fake vLLM pods on loopback, each driven by the same [`Server`] simulator in
//! (optionally sped-up) real time. This is the edge of the crate: the only place with sockets,
//! sleeps and a wall clock (`created` timestamps).
//!
//! ```text
//!  POST /v1/completions, /v1/chat/completions ──▶ enqueue SeqSpec ──▶ engine task: start_step,
//!      (stream: SSE chunks per token)            ◀── tokens ────── sleep(step / speed), finish_step
//!  GET /metrics  (vLLM Prometheus text)   GET /v1/models   GET /health
//! ```
//!
//! Response shapes follow the OpenAI API as vLLM serves it: `text_completion` /
//! `chat.completion` objects, `chat.completion.chunk` SSE events ending in `data: [DONE]`, and
//! with `stream_options.include_usage` a final chunk with empty `choices` and the `usage` (with
//! `prompt_tokens_details.cached_tokens`). The `/metrics` text follows vLLM V1's exposition:
//! families and HELP strings as in vLLM's output quoted in vllm-project/production-stack#318
//! and vllm-project/vllm#22227 (`{engine="0",model_name=…}` labels), and
//! `vllm:cache_config_info` as added in vllm-project/vllm#3100 (labels `block_size`,
//! `num_gpu_blocks`, … with value 1.0).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

use crate::calib::ServerParams;
use crate::model_server::{EngineEvent, SeqSpec, Server};
use crate::workload::{block_hashes, BYTES_PER_TOKEN};

/// Largest request body accepted (bytes).
pub const MAX_BODY: usize = 16 << 20;
/// Response header naming the pod (`ip:port`) that served the request. vLLM sends no such
/// header; podsim adds it so tests can check routing without trusting the gateway.
pub const ENDPOINT_HEADER: &str = "x-podsim-endpoint";
/// `max_tokens` when the request gives none (vLLM's completions default is 16).
pub const DEFAULT_MAX_TOKENS: u32 = 16;

/// Settings shared by every pod.
#[derive(Clone, Debug)]
pub struct PodConfig {
    pub model: String,
    pub params: ServerParams,
    /// Simulated seconds per real second (1.0 = real time; tests use 1000).
    pub speed: f64,
}

#[derive(Debug)]
enum TokenEvent {
    /// `n` more output tokens.
    Tokens(u32),
    /// The request finished; prompt tokens that hit the prefix cache.
    Done { cached: u32 },
    /// The request can never fit in this pod's KV cache.
    Aborted,
}

#[derive(Debug)]
struct Pending {
    tx: mpsc::UnboundedSender<TokenEvent>,
    sent: u32,
    output: u32,
    cached: u32,
}

#[derive(Debug, Default)]
struct Counters {
    success: u64,
    prompt_tokens: u64,
}

#[derive(Debug)]
struct PodInner {
    server: Server,
    next_id: usize,
    pending: HashMap<usize, Pending>,
    counters: Counters,
}

/// One fake vLLM pod.
#[derive(Debug)]
pub struct Pod {
    config: PodConfig,
    inner: Mutex<PodInner>,
    wake: Notify,
}

impl Pod {
    pub fn new(config: PodConfig) -> Arc<Pod> {
        let server = Server::new(config.params.clone());
        Arc::new(Pod {
            config,
            inner: Mutex::new(PodInner {
                server,
                next_id: 0,
                pending: HashMap::new(),
                counters: Counters::default(),
            }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PodInner> {
        // A panic while holding the lock would be a bug in this module; keep serving regardless.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn submit(&self, prompt: &[u8], max_tokens: u32) -> mpsc::UnboundedReceiver<TokenEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let bt = self.config.params.block_tokens as usize;
        let hashes = block_hashes(&self.config.model, prompt, &[], bt * BYTES_PER_TOKEN);
        let tokens = prompt.len().div_ceil(BYTES_PER_TOKEN).max(1) as u32;
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.counters.prompt_tokens += tokens as u64;
        g.server.enqueue(SeqSpec {
            id,
            prompt_tokens: tokens,
            output_tokens: max_tokens,
            hashes: hashes.into(),
            adapter: None,
        });
        g.pending.insert(
            id,
            Pending {
                tx,
                sent: 0,
                output: max_tokens,
                cached: 0,
            },
        );
        drop(g);
        self.wake.notify_one();
        rx
    }

    /// The engine loop: runs steps back to back while there is work, sleeping each step's
    /// simulated duration scaled by `speed`, and parks when idle.
    pub async fn run_engine(self: Arc<Self>) {
        let mut out = Vec::new();
        loop {
            let step = {
                let mut g = self.lock();
                let d = g.server.start_step(&mut out);
                deliver(&mut g, &mut out);
                d
            };
            let Some(d) = step else {
                self.wake.notified().await;
                continue;
            };
            tokio::time::sleep(std::time::Duration::from_secs_f64(d / self.config.speed.max(1e-9))).await;
            let mut g = self.lock();
            g.server.finish_step(&mut out);
            deliver(&mut g, &mut out);
            // Stream progress of the requests still running.
            let progress: Vec<(usize, u32)> = g.server.running_progress().collect();
            for (id, generated) in progress {
                if let Some(p) = g.pending.get_mut(&id) {
                    if generated > p.sent {
                        let _ = p.tx.send(TokenEvent::Tokens(generated - p.sent));
                        p.sent = generated;
                    }
                }
            }
        }
    }

    /// vLLM-style Prometheus exposition of this pod.
    pub fn metrics_text(&self) -> String {
        let g = self.lock();
        let s = &g.server;
        let m = self.config.model.replace('\\', "\\\\").replace('"', "\\\"");
        let l = format!("{{engine=\"0\",model_name=\"{m}\"}}");
        let mut t = String::new();
        let mut family = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(t, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{l} {value}");
        };
        family(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            format!("{:.1}", s.num_running() as f64),
        );
        family(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            format!("{:.1}", s.num_waiting() as f64),
        );
        family(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            prom_float(s.kv_usage()),
        );
        family(
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            format!("{:.1}", s.stats.query_tokens as f64),
        );
        family(
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prefix cache hits, in terms of number of cached tokens.",
            format!("{:.1}", s.stats.hit_tokens as f64),
        );
        family(
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemption from the engine.",
            format!("{:.1}", s.stats.preemptions as f64),
        );
        family(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            format!("{:.1}", g.counters.prompt_tokens as f64),
        );
        family(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            format!("{:.1}", s.stats.output_tokens as f64),
        );
        let _ = writeln!(
            t,
            "# HELP vllm:request_success_total Count of successfully processed requests.\n# TYPE vllm:request_success_total counter\n\
             vllm:request_success_total{{engine=\"0\",finished_reason=\"length\",model_name=\"{m}\"}} {:.1}",
            g.counters.success as f64
        );
        let p = s.params();
        let _ = writeln!(
            t,
            "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n# TYPE vllm:cache_config_info gauge\n\
             vllm:cache_config_info{{block_size=\"{}\",cache_dtype=\"auto\",enable_prefix_caching=\"True\",engine=\"0\",\
             gpu_memory_utilization=\"{}\",num_cpu_blocks=\"0\",num_gpu_blocks=\"{}\"}} 1.0",
            p.block_tokens, p.gpu_memory_utilization, p.gpu_blocks
        );
        t
    }
}

/// A float as Python's `prometheus_client` prints it (`0.0`, `0.25`).
fn prom_float(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Routes engine events to the waiting requests.
fn deliver(g: &mut PodInner, out: &mut Vec<EngineEvent>) {
    for e in out.drain(..) {
        match e {
            EngineEvent::FirstToken { id, cached } => {
                if let Some(p) = g.pending.get_mut(&id) {
                    p.cached = cached;
                }
            }
            EngineEvent::Finished { id } => {
                g.counters.success += 1;
                if let Some(p) = g.pending.remove(&id) {
                    if p.output > p.sent {
                        let _ = p.tx.send(TokenEvent::Tokens(p.output - p.sent));
                    }
                    let _ = p.tx.send(TokenEvent::Done { cached: p.cached });
                }
            }
            EngineEvent::Aborted { id } => {
                if let Some(p) = g.pending.remove(&id) {
                    let _ = p.tx.send(TokenEvent::Aborted);
                }
            }
        }
    }
}

// === HTTP ===

type RespBody = BoxBody<Bytes, Infallible>;

/// A response body fed by a channel (SSE streaming).
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", content_type.parse().expect("static header value"));
    r
}

/// OpenAI-style error body.
fn error(status: StatusCode, message: &str, kind: &str) -> Response<RespBody> {
    let body = json!({"object": "error", "message": message, "type": kind, "param": null, "code": status.as_u16()});
    full(status, "application/json", body.to_string())
}

#[allow(clippy::disallowed_methods)] // the wall clock, for OpenAI's `created` field only
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Deterministic filler text for output token `i` (one 4-byte token each).
fn token_text(i: u32) -> &'static str {
    const WORDS: [&str; 8] = ["the ", "sim ", "pod ", "say ", "yes ", "and ", "gpu ", "kv. "];
    WORDS[(i % 8) as usize]
}

/// The prompt bytes the engine hashes: `prompt` (string or list of strings) for completions;
/// the messages' text contents, in order, for chat.
fn prompt_bytes(v: &Value, chat: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if chat {
        for m in v.get("messages")?.as_array()? {
            match m.get("content") {
                Some(Value::String(s)) => out.extend_from_slice(s.as_bytes()),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        if let Some(t) = p.get("text").and_then(Value::as_str) {
                            out.extend_from_slice(t.as_bytes());
                        }
                    }
                }
                _ => {}
            }
        }
    } else {
        match v.get("prompt")? {
            Value::String(s) => out.extend_from_slice(s.as_bytes()),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .for_each(|s| out.extend_from_slice(s.as_bytes())),
            _ => return None,
        }
    }
    Some(out)
}

async fn handle(pod: Arc<Pod>, id: u64, req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path().to_string();
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::GET, "/metrics") => full(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            pod.metrics_text(),
        ),
        (Method::GET, "/health") => full(StatusCode::OK, "application/json", ""),
        (Method::GET, "/v1/models") => {
            let body = json!({"object": "list", "data": [{"id": pod.config.model, "object": "model",
                "created": unix_now(), "owned_by": "vllm", "root": pod.config.model, "parent": null,
                "max_model_len": pod.config.params.kv_tokens()}]});
            full(StatusCode::OK, "application/json", body.to_string())
        }
        (Method::POST, "/v1/completions") | (Method::POST, "/v1/chat/completions") => {
            let chat = path == "/v1/chat/completions";
            let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Ok(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                        "BadRequestError",
                    ))
                }
            };
            let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "body is not valid JSON",
                    "BadRequestError",
                ));
            };
            let model = v.get("model").and_then(Value::as_str).unwrap_or_default();
            if model != pod.config.model {
                return Ok(error(
                    StatusCode::NOT_FOUND,
                    &format!("The model `{model}` does not exist."),
                    "NotFoundError",
                ));
            }
            let Some(prompt) = prompt_bytes(&v, chat) else {
                let what = if chat { "messages" } else { "prompt" };
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    &format!("`{what}` is missing or malformed"),
                    "BadRequestError",
                ));
            };
            let max_tokens = v
                .get("max_completion_tokens")
                .or_else(|| v.get("max_tokens"))
                .and_then(Value::as_u64)
                .map_or(DEFAULT_MAX_TOKENS, |n| n.clamp(1, 1 << 20) as u32);
            let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
            let include_usage = v
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let prompt_tokens = prompt.len().div_ceil(BYTES_PER_TOKEN).max(1) as u32;
            let rx = pod.submit(&prompt, max_tokens);
            let ctx = Completion {
                chat,
                id: format!("{}-{id}", if chat { "chatcmpl" } else { "cmpl" }),
                created: unix_now(),
                model: pod.config.model.clone(),
                prompt_tokens,
            };
            if stream {
                let (tx, body_rx) = mpsc::unbounded_channel();
                tokio::spawn(ctx.stream(rx, tx, include_usage));
                let mut r = Response::new(BoxBody::new(ChannelBody(body_rx)));
                r.headers_mut().insert(
                    "content-type",
                    "text/event-stream; charset=utf-8".parse().expect("static"),
                );
                r
            } else {
                ctx.whole(rx).await
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found", "NotFoundError"),
    })
}

struct Completion {
    chat: bool,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: u32,
}

impl Completion {
    fn usage(&self, completion: u32, cached: u32) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens + completion,
               "completion_tokens": completion, "prompt_tokens_details": {"cached_tokens": cached}})
    }

    async fn whole(self, mut rx: mpsc::UnboundedReceiver<TokenEvent>) -> Response<RespBody> {
        let mut n = 0u32;
        let mut text = String::new();
        loop {
            match rx.recv().await {
                Some(TokenEvent::Tokens(k)) => {
                    for i in n..n + k {
                        text.push_str(token_text(i));
                    }
                    n += k;
                }
                Some(TokenEvent::Done { cached }) => {
                    let choice = if self.chat {
                        json!({"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                               "logprobs": null, "finish_reason": "length", "stop_reason": null})
                    } else {
                        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "length", "stop_reason": null})
                    };
                    let body = json!({"id": self.id, "object": if self.chat { "chat.completion" } else { "text_completion" },
                        "created": self.created, "model": self.model, "choices": [choice], "usage": self.usage(n, cached)});
                    return full(StatusCode::OK, "application/json", body.to_string());
                }
                Some(TokenEvent::Aborted) | None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "the prompt does not fit in the KV cache",
                        "BadRequestError",
                    )
                }
            }
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let mut c = json!({"id": self.id, "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created, "model": self.model, "choices": choices});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        Bytes::from(format!("data: {c}\n\n"))
    }

    async fn stream(
        self,
        mut rx: mpsc::UnboundedReceiver<TokenEvent>,
        tx: mpsc::UnboundedSender<Bytes>,
        include_usage: bool,
    ) {
        let mut n = 0u32;
        if self.chat {
            let first = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            let _ = tx.send(self.chunk(first, None));
        }
        while let Some(ev) = rx.recv().await {
            match ev {
                TokenEvent::Tokens(k) => {
                    for i in n..n + k {
                        let choice = if self.chat {
                            json!([{"index": 0, "delta": {"content": token_text(i)}, "logprobs": null, "finish_reason": null}])
                        } else {
                            json!([{"index": 0, "text": token_text(i), "logprobs": null, "finish_reason": null}])
                        };
                        if tx.send(self.chunk(choice, None)).is_err() {
                            return; // client went away
                        }
                    }
                    n += k;
                }
                TokenEvent::Done { cached } => {
                    let last = if self.chat {
                        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length", "stop_reason": null}])
                    } else {
                        json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": "length", "stop_reason": null}])
                    };
                    let _ = tx.send(self.chunk(last, None));
                    if include_usage {
                        let _ = tx.send(self.chunk(json!([]), Some(self.usage(n, cached))));
                    }
                    break;
                }
                TokenEvent::Aborted => {
                    let e = json!({"error": {"object": "error", "message": "the prompt does not fit in the KV cache", "type": "BadRequestError", "code": 400}});
                    let _ = tx.send(Bytes::from(format!("data: {e}\n\n")));
                    break;
                }
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n"));
    }
}

/// Binds `pods` listeners on 127.0.0.1 (`base_port + i`; 0 picks free ports) and spawns their
/// engines and accept loops on the current tokio runtime. Returns the bound addresses; the pods
/// run until the runtime stops (use [`start_pods`] to stop one).
pub async fn start(pods: usize, base_port: u16, config: PodConfig) -> std::io::Result<Vec<SocketAddr>> {
    let handles = start_pods(pods, base_port, config).await?;
    Ok(handles
        .into_iter()
        .map(|h| {
            let addr = h.addr;
            h.detach();
            addr
        })
        .collect())
}

/// A running pod. [`PodHandle::kill`] (or dropping the handle) stops it the way a crashed pod
/// stops: the listener closes, so new connections are refused, and open connections, streams
/// included, are cut mid-response.
#[derive(Debug)]
pub struct PodHandle {
    pub addr: SocketAddr,
    pod: Arc<Pod>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl PodHandle {
    /// The pod's Prometheus text right now (what `/metrics` would answer).
    pub fn metrics_text(&self) -> String {
        self.pod.metrics_text()
    }

    /// Requests this pod has finished.
    pub fn finished(&self) -> u64 {
        self.pod.lock().counters.success
    }

    /// Stops the pod: refuses new connections and cuts open ones.
    pub fn kill(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }

    /// Leaves the pod running for the life of the runtime.
    fn detach(mut self) {
        if let Some(s) = self.stop.take() {
            std::mem::forget(s);
        }
    }
}

impl Drop for PodHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }
}

/// Like [`start`], returning a handle per pod.
pub async fn start_pods(pods: usize, base_port: u16, config: PodConfig) -> std::io::Result<Vec<PodHandle>> {
    let mut binds = Vec::with_capacity(pods);
    for i in 0..pods {
        let port = if base_port == 0 {
            0
        } else {
            base_port
                .checked_add(i as u16)
                .ok_or(std::io::ErrorKind::InvalidInput)?
        };
        binds.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    start_pods_at(&binds, config).await
}

/// One pod per bind address (port 0 picks a free port). Any 127.0.0.0/8 address works on
/// Linux, which lets tests give pods distinct IPs, several ports each, like data-parallel ranks.
pub async fn start_pods_at(binds: &[SocketAddr], config: PodConfig) -> std::io::Result<Vec<PodHandle>> {
    let mut handles = Vec::with_capacity(binds.len());
    for bind in binds {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let pod = Pod::new(config.clone());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let engine = tokio::spawn(pod.clone().run_engine());
        let accept_pod = pod.clone();
        tokio::spawn(async move {
            let pod = accept_pod;
            let mut stop = stop_rx.clone();
            let mut next = 0u64;
            loop {
                let accepted = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let pod = pod.clone();
                next += 1;
                let base = next << 20;
                let counter = Arc::new(std::sync::atomic::AtomicU64::new(base));
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let id = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let pod = pod.clone();
                        async move {
                            let mut r = handle(pod, id, req).await?;
                            r.headers_mut().insert(
                                ENDPOINT_HEADER,
                                addr.to_string().parse().expect("an address is a valid header value"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    // Dropping the connection future closes the socket: a killed pod cuts streams.
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.wait_for(|s| *s) => {}
                    }
                });
            }
            engine.abort();
        });
        handles.push(PodHandle {
            addr,
            pod,
            stop: Some(stop_tx),
        });
    }
    Ok(handles)
}
