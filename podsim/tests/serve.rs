//! HTTP mode over loopback: real sockets on 127.0.0.1, bounded by timeouts, simulated time sped
//! up 1000× so each test takes milliseconds of wall time.

use std::net::SocketAddr;
use std::time::Duration;

use podsim::calib::ServerParams;
use podsim::serve::{start, PodConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODEL: &str = "Qwen/Qwen3-32B";

async fn pods(n: usize) -> Vec<SocketAddr> {
    let config = PodConfig {
        model: MODEL.into(),
        params: ServerParams::default(),
        speed: 1000.0,
    };
    start(n, 0, config).await.expect("bind loopback")
}

/// One HTTP/1.1 exchange with `Connection: close`; returns (status, headers, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("bounded");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// De-chunks a `transfer-encoding: chunked` body.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

fn prompt(tokens: usize) -> String {
    (0..tokens).map(|i| format!("w{:02} ", i % 100)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_returns_openai_shape_and_second_request_hits_the_cache() {
    let addr = pods(1).await[0];
    let body = format!(r#"{{"model":"{MODEL}","prompt":"{}","max_tokens":5}}"#, prompt(200));
    let (status, _, b) = http(addr, "POST", "/v1/completions", &body).await;
    assert_eq!(status, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["prompt_tokens"], 200);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap().len(),
        20,
        "5 tokens × 4 bytes"
    );

    let (_, _, b) = http(addr, "POST", "/v1/completions", &body).await;
    let v: Value = serde_json::from_str(&b).unwrap();
    // 200 tokens = 12 full blocks + 8; all 12 are cached, the last full one is recomputed only
    // when the prompt is block-aligned, so 12 × 16 = 192 tokens hit.
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 192);

    let (status, _, m) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(m.contains("# TYPE vllm:num_requests_running gauge"), "{m}");
    assert!(
        m.contains(&format!(
            "vllm:num_requests_waiting{{engine=\"0\",model_name=\"{MODEL}\"}} 0.0"
        )),
        "{m}"
    );
    assert!(m.contains("vllm:kv_cache_usage_perc{"), "{m}");
    assert!(
        m.contains(r#"block_size="16""#) && m.contains(r#"num_gpu_blocks="19208""#),
        "{m}"
    );
    assert!(
        m.contains("vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"Qwen/Qwen3-32B\"} 192.0"),
        "{m}"
    );
    assert!(
        m.contains("finished_reason=\"length\",model_name=\"Qwen/Qwen3-32B\"} 2.0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_sse_chunks_with_usage_and_done() {
    let addr = pods(1).await[0];
    let body = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"{}"}},{{"role":"user","content":"hi there"}}],"max_tokens":4,"stream":true,"stream_options":{{"include_usage":true}}}}"#,
        prompt(50)
    );
    let (status, head, b) = http(addr, "POST", "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/event-stream"),
        "{head}"
    );
    let text = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(&b)
    } else {
        b
    };
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    // role chunk, 4 content chunks, finish chunk, usage chunk
    assert_eq!(chunks.len(), 7, "{text}");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks[1..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content.len(), 16);
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[6]["choices"].as_array().unwrap().len(), 0);
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 4);
    assert_eq!(chunks[6]["usage"]["prompt_tokens"], 52, "50 tokens + 8 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_models_and_several_pods() {
    let addrs = pods(2).await;
    assert_ne!(addrs[0], addrs[1]);
    let (status, _, b) = http(addrs[1], "GET", "/v1/models", "").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["data"][0]["id"], MODEL);
    let (status, _, b) = http(addrs[0], "POST", "/v1/completions", r#"{"model":"nope","prompt":"x"}"#).await;
    assert_eq!(status, 404);
    assert!(b.contains("does not exist"));
    let (status, _, _) = http(addrs[0], "POST", "/v1/completions", "{not json").await;
    assert_eq!(status, 400);
    let (status, _, _) = http(
        addrs[0],
        "POST",
        "/v1/chat/completions",
        &format!(r#"{{"model":"{MODEL}"}}"#),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = http(addrs[0], "GET", "/nope", "").await;
    assert_eq!(status, 404);
}
