//! The client side: OpenAI-style requests sent through the gateway over real HTTP/1.1, with
//! time to first token measured on the SSE stream, and the workload driver that replays a podsim
//! trace in (scaled) real time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use podsim::workload::{PromptText, Trace};
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// What one request produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// HTTP status; 0 when the connection failed before a response.
    pub status: u16,
    /// Time to the first content token (streaming) or to the whole response.
    pub ttft: Duration,
    pub e2e: Duration,
    pub output_tokens: u32,
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    /// `x-podsim-endpoint`: the pod that really served the request.
    pub served_by: Option<String>,
    /// `x-conformance-test-served-endpoint`: what the filter was told served it (test mode).
    pub reported_served: Option<String>,
    /// The response ended cleanly (`data: [DONE]` for streams).
    pub complete: bool,
    pub error: Option<String>,
}

/// One request to send.
#[derive(Clone, Debug)]
pub struct Call {
    pub path: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub stream: bool,
}

impl Call {
    /// A streaming chat completion with usage in the last chunk, as the OpenAI Python client
    /// sends it (`stream=True, stream_options={"include_usage": True}`).
    pub fn chat(model: &str, system: &str, user: &str, max_tokens: u32) -> Call {
        let body = json!({
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        Call {
            path: "/v1/chat/completions",
            headers: Vec::new(),
            body: Bytes::from(body.to_string()),
            stream: true,
        }
    }

    /// A non-streaming completion, the request shape of the GIE conformance suite.
    pub fn completion(model: &str, prompt: &str, max_tokens: u32) -> Call {
        let body = json!({"model": model, "prompt": prompt, "max_tokens": max_tokens});
        Call {
            path: "/v1/completions",
            headers: Vec::new(),
            body: Bytes::from(body.to_string()),
            stream: false,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Call {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    /// The chat call for a podsim prompt: the shared head as the system message, the tail as
    /// the user message.
    pub fn from_prompt(model: &str, p: &PromptText, max_tokens: u32) -> Call {
        Call::chat(
            model,
            &String::from_utf8_lossy(&p.head),
            &String::from_utf8_lossy(&p.tail),
            max_tokens,
        )
    }
}

/// A client connection to the gateway, kept alive across requests and re-opened when the
/// gateway closes it.
#[derive(Default)]
pub struct Conn {
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// Sends one request and reads the whole response.
    pub async fn send(&mut self, gateway: SocketAddr, call: &Call) -> Outcome {
        let started = Instant::now();
        let mut out = Outcome::default();
        if let Err(e) = self.send_inner(gateway, call, started, &mut out).await {
            out.error = Some(e);
            self.sender = None;
        }
        out.e2e = started.elapsed();
        out
    }

    async fn sender(
        &mut self,
        gateway: SocketAddr,
    ) -> Result<&mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let reusable = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            let tcp = TcpStream::connect(gateway).await.map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| "no connection".to_string())
    }

    async fn send_inner(
        &mut self,
        gateway: SocketAddr,
        call: &Call,
        started: Instant,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let mut b = Request::builder()
            .method("POST")
            .uri(call.path)
            .header("host", "gateway")
            .header("content-type", "application/json");
        for (k, v) in &call.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b
            .body(Full::new(call.body.clone()))
            .map_err(|e| format!("request: {e}"))?;
        let resp = self
            .sender(gateway)
            .await?
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        out.status = resp.status().as_u16();
        let header = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        out.served_by = header(podsim::serve::ENDPOINT_HEADER);
        out.reported_served = header("x-conformance-test-served-endpoint");
        let sse = header("content-type").is_some_and(|c| c.starts_with("text/event-stream"));
        let mut body = resp.into_body();
        if !sse {
            let bytes = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            out.ttft = started.elapsed();
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                read_usage(&v, out);
            }
            out.complete = true;
            return Ok(());
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("stream: {e}"))?;
            let Some(data) = frame.data_ref() else { continue };
            pending.extend_from_slice(data);
            while let Some(end) = find(&pending, b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let Some(payload) = event.strip_prefix(b"data: ") else {
                    continue;
                };
                let payload = &payload[..payload.len() - 2];
                if payload == b"[DONE]" {
                    out.complete = true;
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<Value>(payload) else {
                    return Err("stream carried an event that is not JSON".into());
                };
                if out.output_tokens == 0 && out.ttft.is_zero() && has_content(&v) {
                    out.ttft = started.elapsed();
                }
                read_usage(&v, out);
            }
        }
        Ok(())
    }
}

/// Sends one request on a fresh connection.
pub async fn send(gateway: SocketAddr, call: &Call) -> Outcome {
    Conn::default().send(gateway, call).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn has_content(v: &Value) -> bool {
    let Some(c) = v.pointer("/choices/0") else { return false };
    let text = c
        .pointer("/delta/content")
        .or_else(|| c.get("text"))
        .and_then(Value::as_str);
    text.is_some_and(|t| !t.is_empty())
}

fn read_usage(v: &Value, out: &mut Outcome) {
    let Some(u) = v.get("usage").filter(|u| u.is_object()) else {
        return;
    };
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0) as u32;
    out.output_tokens = n("/completion_tokens");
    out.prompt_tokens = n("/prompt_tokens");
    out.cached_tokens = n("/prompt_tokens_details/cached_tokens");
}

/// Sends `calls` with at most `concurrency` in flight, one kept-alive connection per slot;
/// outcomes in call order.
pub async fn run_closed(gateway: SocketAddr, calls: Vec<Call>, concurrency: usize) -> Vec<Outcome> {
    let calls = Arc::new(calls);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let calls = calls.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut conn = Conn::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = calls.get(i) else { break };
                got.push((i, conn.send(gateway, c).await));
            }
            got
        }));
    }
    let mut all: Vec<Option<Outcome>> = vec![None; calls.len()];
    for t in tasks {
        if let Ok(got) = t.await {
            for (i, o) in got {
                all[i] = Some(o);
            }
        }
    }
    all.into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Outcome {
                error: Some("client task failed".into()),
                ..Outcome::default()
            })
        })
        .collect()
}

/// Replays a podsim trace's arrivals open-loop: request `i` leaves at `arrival.at / speed`.
/// `progress` is called with (sent, finished) about once a second.
pub async fn run_trace(
    gateway: SocketAddr,
    trace: &Trace,
    speed: f64,
    mut progress: impl FnMut(usize, usize),
) -> Vec<Outcome> {
    let start = tokio::time::Instant::now();
    let finished = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(trace.arrivals.len());
    let mut last_report = Instant::now();
    for (sent, a) in trace.arrivals.iter().enumerate() {
        let at = start + Duration::from_secs_f64(a.at as f64 / 1e6 / speed);
        loop {
            let now = tokio::time::Instant::now();
            if now >= at {
                break;
            }
            tokio::time::sleep((at - now).min(Duration::from_millis(250))).await;
            if last_report.elapsed() >= Duration::from_secs(1) {
                progress(sent, finished.load(Ordering::Relaxed));
                last_report = Instant::now();
            }
        }
        let call = Call::from_prompt(&trace.model, &trace.prompts[a.prompt as usize], a.output_tokens);
        let done = finished.clone();
        tasks.push(tokio::spawn(async move {
            let o = send(gateway, &call).await;
            done.fetch_add(1, Ordering::Relaxed);
            o
        }));
    }
    let total = tasks.len();
    let mut out = Vec::with_capacity(total);
    let mut pending = tasks.into_iter();
    for t in pending.by_ref() {
        while !t.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if last_report.elapsed() >= Duration::from_secs(1) {
                progress(total, finished.load(Ordering::Relaxed));
                last_report = Instant::now();
            }
        }
        out.push(t.await.unwrap_or_else(|e| Outcome {
            error: Some(format!("client task: {e}")),
            ..Outcome::default()
        }));
    }
    progress(total, finished.load(Ordering::Relaxed));
    out
}

/// Summary of a run, in simulated time (real time × speed).
#[derive(Clone, Debug)]
pub struct Summary {
    pub requests: usize,
    pub ok: usize,
    pub ttft_p50: f64,
    pub ttft_p90: f64,
    pub e2e_p50: f64,
    /// Output tokens per simulated second, over the span of the run.
    pub output_tok_s: f64,
    /// Cached prompt tokens / prompt tokens, over successful requests.
    pub cache_hit: f64,
}

impl Summary {
    pub fn of(outcomes: &[Outcome], wall: Duration, speed: f64) -> Summary {
        let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200 && o.complete).collect();
        let mut ttft: Vec<f64> = ok.iter().map(|o| o.ttft.as_secs_f64() * speed).collect();
        let mut e2e: Vec<f64> = ok.iter().map(|o| o.e2e.as_secs_f64() * speed).collect();
        let out_tokens: u64 = ok.iter().map(|o| o.output_tokens as u64).sum();
        let prompt: u64 = ok.iter().map(|o| o.prompt_tokens as u64).sum();
        let cached: u64 = ok.iter().map(|o| o.cached_tokens as u64).sum();
        Summary {
            requests: outcomes.len(),
            ok: ok.len(),
            ttft_p50: quantile(&mut ttft, 0.5),
            ttft_p90: quantile(&mut ttft, 0.9),
            e2e_p50: quantile(&mut e2e, 0.5),
            output_tok_s: out_tokens as f64 / (wall.as_secs_f64() * speed).max(1e-9),
            cache_hit: if prompt == 0 {
                0.0
            } else {
                cached as f64 / prompt as f64
            },
        }
    }
}

/// Nearest-rank quantile; NaN for an empty sample.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut v, 0.9), 5.0);
        assert_eq!(quantile(&mut v, 0.2), 1.0);
        assert!(quantile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn content_detection_skips_the_role_chunk() {
        let role = json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]});
        let tok = json!({"choices": [{"index": 0, "delta": {"content": "the "}}]});
        let text = json!({"choices": [{"index": 0, "text": "the "}]});
        assert!(!has_content(&role));
        assert!(has_content(&tok));
        assert!(has_content(&text));
    }
}
