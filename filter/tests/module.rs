//! The compiled module (`dist/wasm-epp.wasm`, built by `./build.sh wasm`) inside host-sim's
//! Envoy and GCP profiles. Every assertion here is about what the proxy would do: headers sent
//! upstream, local replies, shared data, traps.
use std::sync::OnceLock;

use host_sim::{Flow, Host, HostOptions, HostProfile, Plugin, StreamId};
use picker_core::{Endpoint, Instant, Snapshot};
use proptest::prelude::*;

const TOKEN: &str = "test-token-0123456789";
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const SNAPSHOT_PATH: &str = "/.well-known/wasm-epp/snapshot";
/// host-sim's default virtual clock starts at 1,700,000,000 s.
const NOW_MS: u64 = 1_700_000_000_000;

fn plugin() -> &'static Plugin {
    static P: OnceLock<Plugin> = OnceLock::new();
    P.get_or_init(|| {
        let path = std::env::var("WASM_EPP_WASM")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/wasm-epp.wasm").to_string());
        // Each nextest process would otherwise compile the module again with a debug-built
        // cranelift; the content-addressed cache shares the compiled code between processes.
        let cache = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/host-sim-modules/.cache");
        Plugin::from_file_cached(&path, std::path::Path::new(cache))
            .unwrap_or_else(|e| panic!("{path}: {e}; build it first with ./build.sh wasm"))
    })
}

fn base_config(extra: &str) -> String {
    format!(
        r#"{{"snapshot":{{"token":"{TOKEN}"}},"endpoints":["10.9.9.9:8000"]{}{extra}}}"#,
        if extra.is_empty() { "" } else { "," }
    )
}

fn host_with(profile: HostProfile, config: &str, workers: usize, allow_stop: bool) -> Host {
    let mut o = HostOptions::new(profile);
    o.vm_id = "wasm-epp".into();
    o.plugin_config = config.as_bytes().to_vec();
    o.allow_on_headers_stop_iteration = allow_stop;
    o.properties
        .insert("source.address".into(), b"127.0.0.1:45000".to_vec());
    Host::new(plugin(), o, workers).expect("module loads and configures")
}

fn host(extra: &str) -> Host {
    host_with(HostProfile::Envoy, &base_config(extra), 1, true)
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn snapshot(seq: u64, pods: &[(&str, u32, f32)]) -> Vec<u8> {
    let endpoints = pods
        .iter()
        .map(|(addr, waiting, kv)| {
            let mut e = Endpoint::new(addr.parse().unwrap(), Instant::from_millis(NOW_MS));
            e.waiting = *waiting;
            e.kv_usage = *kv;
            e.models = vec![MODEL.into()];
            e
        })
        .collect();
    Snapshot {
        sequence: seq,
        generated_at: Instant::from_millis(NOW_MS),
        endpoints,
    }
    .encode()
    .unwrap()
}

const PODS: [(&str, u32, f32); 3] = [
    ("10.0.0.1:8000", 0, 0.1),
    ("10.0.0.2:8000", 0, 0.1),
    ("10.0.0.3:8000", 0, 0.1),
];

/// Pushes snapshot bytes; returns the reply status.
fn push(host: &mut Host, worker: usize, bytes: &[u8], token: &str) -> u32 {
    let w = host.worker(worker);
    let s = w.new_stream();
    let auth = format!("Bearer {token}");
    let len = bytes.len().to_string();
    w.request_headers(
        s,
        h(&[
            (":method", "POST"),
            (":path", SNAPSHOT_PATH),
            ("authorization", &auth),
            ("content-length", &len),
        ]),
        false,
    );
    if w.immediate(s).is_none() {
        w.request_body(s, bytes, true);
    }
    let status = w.immediate(s).map(|i| i.status).expect("intake always answers locally");
    assert!(
        w.upstream(s).and_then(|u| u.headers.as_ref()).is_none(),
        "a push is never forwarded"
    );
    w.finish(s);
    status
}

struct Sent {
    stream: StreamId,
    /// Upstream request headers (None if not forwarded).
    upstream: Option<Vec<(String, String)>>,
    status: Option<u32>,
    reply_body: Vec<u8>,
}

impl Sent {
    fn header(&self, name: &str) -> Option<&str> {
        self.upstream
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn chat_body(model: &str, system: &str, question: &str) -> Vec<u8> {
    format!(r#"{{"model":"{model}","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{question}"}}],"stream":true}}"#).into_bytes()
}

/// Sends one request through worker `w` and leaves the stream open (call `finish` to end it).
fn send(host: &mut Host, w: usize, headers: &[(&str, &str)], body: &[u8]) -> Sent {
    let wk = host.worker(w);
    let s = wk.new_stream();
    let mut hs = h(&[
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "gw"),
    ]);
    hs.extend(h(headers));
    wk.request_headers(s, hs, body.is_empty());
    if !body.is_empty() && wk.immediate(s).is_none() {
        // Two chunks, as a client streaming its body would send.
        let mid = body.len() / 2;
        wk.request_body(s, &body[..mid], false);
        if wk.immediate(s).is_none() {
            wk.request_body(s, &body[mid..], true);
        }
    }
    Sent {
        stream: s,
        upstream: wk.upstream(s).and_then(|u| u.headers.clone()),
        status: wk.immediate(s).map(|i| i.status),
        reply_body: wk.downstream(s).map(|d| d.body.clone()).unwrap_or_default(),
    }
}

fn no_traps(host: &mut Host) {
    for i in 0..host.workers.len() {
        assert!(
            host.worker(i).failed().is_none(),
            "worker {i} trapped: {:?}",
            host.worker(i).failed()
        );
    }
}

/// Requests in flight over every live worker VM, as a pick at the host's current time reads
/// them (sections of VMs dead for longer than the default time-to-live do not count).
fn inflight_total(host: &Host) -> u64 {
    inflight_total_ttl(host, filter::config::DEFAULT_INFLIGHT_TTL_MS)
}

fn inflight_total_ttl(host: &Host, ttl_ms: u64) -> u64 {
    let now_ms = host.opts.clock.now_ns() / 1_000_000;
    match host.group.get_data(filter::inflight::KEY_INFLIGHT) {
        Ok((bytes, _)) => filter::inflight::total_requests(&bytes, now_ms, ttl_ms),
        Err(_) => 0,
    }
}

// === routing ===

#[test]
fn routes_to_a_snapshot_endpoint_and_sets_headers() {
    let mut host = host("");
    assert_eq!(push(&mut host, 0, &snapshot(1, &PODS), TOKEN), 204);
    let sent = send(&mut host, 0, &[], &chat_body(MODEL, "You are helpful.", "Hi"));
    assert_eq!(sent.status, None, "no local reply");
    let dest = sent
        .header("x-gateway-destination-endpoint")
        .expect("destination header set");
    assert!(PODS.iter().any(|p| p.0 == dest), "{dest}");
    assert_eq!(sent.header("x-gateway-model-name"), Some(MODEL));
    no_traps(&mut host);
}

#[test]
fn client_cannot_choose_the_pod() {
    let mut host = host("");
    push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
    for _ in 0..10 {
        let sent = send(
            &mut host,
            0,
            &[
                ("x-gateway-destination-endpoint", "6.6.6.6:1"),
                ("test-epp-endpoint-selection", "6.6.6.6"),
                ("x-gateway-model-name", "evil"),
            ],
            &chat_body(MODEL, "s", "q"),
        );
        let dest = sent.header("x-gateway-destination-endpoint").unwrap();
        assert_ne!(dest, "6.6.6.6:1");
        assert!(!dest.contains("6.6.6.6"));
        assert_eq!(sent.header("x-gateway-model-name"), Some(MODEL));
        assert_eq!(
            sent.header("test-epp-endpoint-selection"),
            None,
            "steering header stripped outside test mode"
        );
    }
    // A GET to an inference path passes through, still stripped.
    let w = host.worker(0);
    let s = w.new_stream();
    w.request_headers(
        s,
        h(&[
            (":method", "GET"),
            (":path", "/v1/models"),
            ("x-gateway-destination-endpoint", "6.6.6.6:1"),
        ]),
        true,
    );
    let up = w.upstream(s).and_then(|u| u.headers.clone()).unwrap();
    assert!(up.iter().all(|(k, _)| k != "x-gateway-destination-endpoint"));
}

/// The filter reads the header map once and removes only the routing headers it holds: every
/// occurrence, in any letter case, of each of them must still be gone.
#[test]
fn spoofed_routing_headers_are_stripped_in_any_case_and_repetition() {
    let mut host = host("");
    push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
    let spoofed = [
        ("X-Gateway-Destination-Endpoint", "6.6.6.6:1"),
        ("x-gateway-destination-endpoint", "7.7.7.7:1"),
        ("x-gateway-destination-endpoint-served", "6.6.6.6:1"),
        ("X-GATEWAY-DESTINATION-ENDPOINT-SUBSET", "6.6.6.6:1"),
        ("X-Gateway-Model-Name", "evil"),
        ("x-gateway-model-name", "evil2"),
        ("test-epp-endpoint-selection", "6.6.6.6:1"),
    ];
    let count = |up: &[(String, String)], name: &str| up.iter().filter(|(k, _)| k == name).count();
    let sent = send(&mut host, 0, &spoofed, &chat_body(MODEL, "s", "q"));
    let up = sent.upstream.clone().expect("forwarded");
    assert_eq!(count(&up, "x-gateway-destination-endpoint"), 1, "{up:?}");
    let dest = sent.header("x-gateway-destination-endpoint").unwrap();
    assert!(PODS.iter().any(|p| p.0 == dest), "{dest}");
    assert_eq!(count(&up, "x-gateway-model-name"), 1, "{up:?}");
    assert_eq!(sent.header("x-gateway-model-name"), Some(MODEL));
    for gone in [
        "x-gateway-destination-endpoint-served",
        "x-gateway-destination-endpoint-subset",
        "test-epp-endpoint-selection",
    ] {
        assert_eq!(count(&up, gone), 0, "{gone} in {up:?}");
    }
    host.worker(0).finish(sent.stream);

    // A pass-through request (not an inference path) is stripped the same way.
    let w = host.worker(0);
    let s = w.new_stream();
    let mut headers = h(&[(":method", "GET"), (":path", "/v1/models")]);
    headers.extend(h(&spoofed));
    w.request_headers(s, headers, true);
    let up = w.upstream(s).and_then(|u| u.headers.clone()).unwrap();
    assert!(
        up.iter()
            .all(|(k, _)| !k.starts_with("x-gateway-") && k != "test-epp-endpoint-selection"),
        "{up:?}"
    );
    w.finish(s);
    no_traps(&mut host);
}

#[test]
fn a_custom_destination_header_is_stripped_too() {
    // FailOpen with no endpoints forwards without a pick: a client's value of the configured
    // destination header must not survive to the router.
    let config =
        format!(r#"{{"snapshot":{{"token":"{TOKEN}"}},"destinationHeader":"x-pod","failureMode":"FailOpen"}}"#);
    let mut host = host_with(HostProfile::Envoy, &config, 1, true);
    let sent = send(&mut host, 0, &[("x-pod", "10.6.6.6:80")], &chat_body(MODEL, "s", "q"));
    assert_eq!(sent.status, None, "forwarded");
    assert_eq!(sent.header("x-pod"), None);
    host.worker(0).finish(sent.stream);
    no_traps(&mut host);
}

#[test]
fn static_endpoints_serve_until_the_first_snapshot() {
    let mut host = host("");
    let sent = send(&mut host, 0, &[], &chat_body(MODEL, "s", "q"));
    assert_eq!(sent.header("x-gateway-destination-endpoint"), Some("10.9.9.9:8000"));
}

#[test]
fn with_no_load_view_fail_close_answers_503_and_fail_open_lets_the_cluster_pick() {
    let no_endpoints = |mode: &str| format!(r#"{{"snapshot":{{"token":"{TOKEN}"}}{mode}}}"#);
    let mut closed = host_with(HostProfile::Envoy, &no_endpoints(""), 1, true);
    let sent = send(&mut closed, 0, &[], &chat_body(MODEL, "s", "q"));
    assert_eq!(sent.status, Some(503), "FailClose is the default");

    let mut open = host_with(
        HostProfile::Envoy,
        &no_endpoints(r#","failureMode":"FailOpen""#),
        1,
        true,
    );
    let sent = send(
        &mut open,
        0,
        &[("x-gateway-destination-endpoint", "10.6.6.6:80")],
        &chat_body(MODEL, "s", "q"),
    );
    assert_eq!(sent.status, None, "forwarded");
    assert_eq!(
        sent.header("x-gateway-destination-endpoint"),
        None,
        "no pick, client value stripped"
    );
    assert_eq!(sent.header("x-gateway-model-name"), Some(MODEL));
    open.worker(0).finish(sent.stream);
    // Once a snapshot arrives, the module picks again.
    assert_eq!(push(&mut open, 0, &snapshot(1, &PODS), TOKEN), 204);
    let sent = send(&mut open, 0, &[], &chat_body(MODEL, "s", "q"));
    assert!(sent.header("x-gateway-destination-endpoint").is_some());
    no_traps(&mut open);
}

#[test]
fn prefix_affinity_holds_across_workers() {
    let mut host = host_with(HostProfile::Envoy, &base_config(""), 2, true);
    let pods: Vec<(String, u32, f32)> = (1..=8).map(|i| (format!("10.0.1.{i}:8000"), 0, 0.1)).collect();
    let pods_ref: Vec<(&str, u32, f32)> = pods.iter().map(|(a, q, k)| (a.as_str(), *q, *k)).collect();
    assert_eq!(push(&mut host, 0, &snapshot(1, &pods_ref), TOKEN), 204);
    for g in 0..10 {
        let system = format!("You are the assistant of tenant {g}. ").repeat(20);
        let a = send(&mut host, 0, &[], &chat_body(MODEL, &system, "first question"));
        let b = send(&mut host, 1, &[], &chat_body(MODEL, &system, "another question"));
        assert_eq!(
            a.header("x-gateway-destination-endpoint"),
            b.header("x-gateway-destination-endpoint"),
            "group {g}"
        );
        host.worker(0).finish(a.stream);
        host.worker(1).finish(b.stream);
    }
    no_traps(&mut host);
}

/// A prefix routed by worker 0 is matched by worker 1 through the shared ring (`prefixSync`),
/// with a profile that has no consistent hashing to agree on. With the ring off, worker 1 picks
/// among 8 equally loaded pods without knowing the prefix.
#[test]
fn prefix_sync_shares_the_index_between_workers() {
    let pods: Vec<(String, u32, f32)> = (1..=8).map(|i| (format!("10.0.1.{i}:8000"), 0, 0.1)).collect();
    let pods_ref: Vec<(&str, u32, f32)> = pods.iter().map(|(a, q, k)| (a.as_str(), *q, *k)).collect();
    let run = |sync: bool| -> (usize, u64) {
        let extra = format!(r#""picker":{{"profile":"gie-default"}},"prefixSync":{{"enabled":{sync}}}"#);
        let mut host = host_with(HostProfile::Envoy, &base_config(&extra), 2, true);
        assert_eq!(push(&mut host, 0, &snapshot(1, &pods_ref), TOKEN), 204);
        let mut same = 0;
        for g in 0..12 {
            let system = format!("You are the assistant of tenant {g}. ").repeat(20);
            let a = send(&mut host, 0, &[], &chat_body(MODEL, &system, "first question"));
            host.worker(0).finish(a.stream);
            let b = send(&mut host, 1, &[], &chat_body(MODEL, &system, "another question"));
            host.worker(1).finish(b.stream);
            same += (a.header("x-gateway-destination-endpoint") == b.header("x-gateway-destination-endpoint")) as usize;
        }
        no_traps(&mut host);
        let head = host
            .group
            .get_data("wasm-epp/px/head")
            .ok()
            .and_then(|(b, _)| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        (same, head)
    };
    assert_eq!(run(true), (12, 24), "every group on one pod; 24 records appended");
    let (same, head) = run(false);
    // 12 independent 1-in-8 draws all agreeing has probability 8^-12.
    assert!(
        same < 12,
        "without sync worker 1 cannot know the prefix ({same}/12 agreed)"
    );
    assert_eq!(head, 0, "nothing written to the ring when off");
}

// === snapshot intake ===

#[test]
fn intake_rejects_and_changes_nothing() {
    let mut host = host(r#""picker":{"profile":"gie-default"}"#);
    assert_eq!(push(&mut host, 0, &snapshot(5, &PODS[..1]), TOKEN), 204);
    let stored = host.group.get_data("wasm-epp/snapshot").unwrap().0;
    assert_eq!(push(&mut host, 0, &snapshot(6, &PODS), "wrong-token-0123456789"), 401);
    assert_eq!(push(&mut host, 0, &snapshot(4, &PODS), TOKEN), 409, "older sequence");
    assert_eq!(push(&mut host, 0, &snapshot(5, &PODS), TOKEN), 409, "same sequence");
    let mut corrupt = snapshot(7, &PODS);
    corrupt[30] ^= 0xff;
    assert_eq!(push(&mut host, 0, &corrupt, TOKEN), 400);
    assert_eq!(push(&mut host, 0, b"not a snapshot", TOKEN), 400);
    assert_eq!(
        host.group.get_data("wasm-epp/snapshot").unwrap().0,
        stored,
        "rejected pushes changed nothing"
    );
    // Still routing on the one-pod snapshot.
    let sent = send(&mut host, 0, &[], &chat_body(MODEL, "s", "q"));
    assert_eq!(sent.header("x-gateway-destination-endpoint"), Some("10.0.0.1:8000"));
    // A newer one replaces it.
    assert_eq!(push(&mut host, 0, &snapshot(8, &PODS[1..2]), TOKEN), 204);
    let sent = send(&mut host, 0, &[], &chat_body(MODEL, "s", "q"));
    assert_eq!(sent.header("x-gateway-destination-endpoint"), Some("10.0.0.2:8000"));
    no_traps(&mut host);
}

#[test]
fn intake_checks_source_method_and_size() {
    let mut o = HostOptions::new(HostProfile::Envoy);
    o.vm_id = "wasm-epp".into();
    o.plugin_config = base_config(r#""picker":{}"#)
        .replace(r#"{"token""#, r#"{"maxBytes":200,"token""#)
        .into_bytes();
    o.allow_on_headers_stop_iteration = true;
    o.properties.insert("source.address".into(), b"192.0.2.7:5000".to_vec());
    let mut remote = Host::new(plugin(), o, 1).unwrap();
    assert_eq!(
        push(&mut remote, 0, &snapshot(1, &PODS), TOKEN),
        403,
        "non-loopback source"
    );

    let mut host = host(r#""picker":{}"#);
    let w = host.worker(0);
    let s = w.new_stream();
    w.request_headers(
        s,
        h(&[
            (":method", "GET"),
            (":path", SNAPSHOT_PATH),
            ("authorization", &format!("Bearer {TOKEN}")),
        ]),
        true,
    );
    assert_eq!(w.immediate(s).map(|i| i.status), Some(405));
    let big: Vec<(String, u32, f32)> = (0..200)
        .map(|i| (format!("10.1.{}.{}:8000", i / 250, i % 250 + 1), 0, 0.0))
        .collect();
    let big_ref: Vec<(&str, u32, f32)> = big.iter().map(|(a, q, k)| (a.as_str(), *q, *k)).collect();
    let bytes = snapshot(1, &big_ref);
    assert!(bytes.len() > 1024);
    let mut small = host_with(
        HostProfile::Envoy,
        &format!(r#"{{"snapshot":{{"token":"{TOKEN}","maxBytes":1024}}}}"#),
        1,
        true,
    );
    assert_eq!(push(&mut small, 0, &bytes, TOKEN), 413);
}

// === errors ===

#[test]
fn errors_are_openai_json_local_replies() {
    let mut host = host(r#""models":{"allow":["meta-llama/Llama-3.1-8B-Instruct"]},"maxBodyBytes":2048"#);
    push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
    let cases: [(&[u8], u32); 4] = [
        (b"{not json", 400),
        (br#"{"messages":[]}"#, 400),
        (br#"{"model":"gpt-unknown","messages":[]}"#, 404),
        (&[b' '; 4096], 413),
    ];
    for (body, want) in cases {
        let sent = send(&mut host, 0, &[], body);
        assert_eq!(
            sent.status,
            Some(want),
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
        assert!(sent.upstream.is_none(), "not forwarded");
        let v: serde_json::Value = serde_json::from_slice(&sent.reply_body).expect("JSON error body");
        assert_eq!(v["error"]["code"], want);
        host.worker(0).finish(sent.stream);
    }
    // Body-less inference POST.
    let sent = send(&mut host, 0, &[], b"");
    assert_eq!(sent.status, Some(400));
    assert_eq!(inflight_total(&host), 0, "local replies hold no in-flight count");
    no_traps(&mut host);
}

#[test]
fn no_endpoint_is_503_and_saturation_sheds_sheddable_with_429() {
    let mut host = host(r#""objectives":{"batch":-1}"#);
    // Only unready pods → 503.
    let mut s = Snapshot::decode(&snapshot(1, &PODS)).unwrap();
    for e in &mut s.endpoints {
        e.ready = false;
    }
    assert_eq!(push(&mut host, 0, &s.encode().unwrap(), TOKEN), 204);
    let sent = send(&mut host, 0, &[], &chat_body(MODEL, "s", "q"));
    assert_eq!(sent.status, Some(503));
    // Saturated pool (queues 10 > 5): a `batch` objective request (priority -1) gets 429.
    assert_eq!(
        push(
            &mut host,
            0,
            &snapshot(2, &[("10.0.0.1:8000", 10, 0.9), ("10.0.0.2:8000", 12, 0.9)]),
            TOKEN
        ),
        204
    );
    let sent = send(
        &mut host,
        0,
        &[("x-gateway-inference-objective", "batch")],
        &chat_body(MODEL, "s", "q"),
    );
    assert_eq!(sent.status, Some(429));
    let w = host.worker(0);
    let retry = w
        .downstream(sent.stream)
        .and_then(|d| d.headers.clone())
        .unwrap_or_default();
    assert!(retry.iter().any(|(k, v)| k == "retry-after" && v == "1"), "{retry:?}");
    // The llm-d alias header works too; a critical request still goes through.
    let sent = send(
        &mut host,
        0,
        &[("x-llm-d-inference-objective", "batch")],
        &chat_body(MODEL, "s", "q"),
    );
    assert_eq!(sent.status, Some(429));
    let sent = send(&mut host, 0, &[], &chat_body(MODEL, "s", "q"));
    assert_eq!(sent.status, None);
    no_traps(&mut host);
}

// === host behaviour the module depends on ===

#[test]
fn body_mode_needs_allow_on_headers_stop_iteration() {
    // Without the flag Envoy stops all iteration at Pause: the body never reaches the module
    // and the request waits (it would time out in Envoy). This is why the configure-time log
    // says so.
    let mut host = host_with(HostProfile::Envoy, &base_config(""), 1, false);
    let sent = send(&mut host, 0, &[], &chat_body(MODEL, "s", "q"));
    assert!(sent.upstream.is_none() && sent.status.is_none(), "request is held");
    let logs = host.worker(0).logs();
    assert!(
        logs.iter()
            .any(|l| l.message.contains("allow_on_headers_stop_iteration")),
        "configure-time log explains the mode"
    );
}

#[test]
fn headers_only_mode_works_without_the_flag() {
    // Snapshot intake pauses for its body too, so without the flag the pool comes from the
    // static endpoint list.
    let cfg = r#"{"mode":"headersOnly","headersOnly":{"modelHeader":"x-model","affinityHeader":"x-session-id"},
                  "endpoints":["10.0.0.1:8000","10.0.0.2:8000","10.0.0.3:8000"]}"#;
    let mut host = host_with(HostProfile::Envoy, cfg, 1, false);
    let wk = host.worker(0);
    let s = wk.new_stream();
    let st = wk.request_headers(
        s,
        h(&[
            (":method", "POST"),
            (":path", "/v1/completions"),
            ("x-model", MODEL),
            ("x-session-id", "user-42"),
        ]),
        false,
    );
    assert_eq!(st.flow, Flow::Continued);
    let up = wk.upstream(s).and_then(|u| u.headers.clone()).unwrap();
    assert!(up
        .iter()
        .any(|(k, v)| k == "x-gateway-destination-endpoint" && PODS.iter().any(|p| p.0 == v)));
}

#[test]
fn test_mode_steers_and_reports_the_served_endpoint() {
    let mut host = host(r#""testMode":true"#);
    push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
    for (allow, expect) in [("10.0.0.2", "10.0.0.2:8000"), ("10.0.0.3:8000", "10.0.0.3:8000")] {
        for _ in 0..5 {
            let sent = send(
                &mut host,
                0,
                &[("test-epp-endpoint-selection", allow)],
                &chat_body(MODEL, "s", "q"),
            );
            assert_eq!(sent.header("x-gateway-destination-endpoint"), Some(expect));
            let w = host.worker(0);
            w.set_stream_property(sent.stream, "upstream.address", expect.as_bytes());
            w.response_headers(sent.stream, h(&[(":status", "200")]), true);
            let down = w.downstream(sent.stream).and_then(|d| d.headers.clone()).unwrap();
            assert!(
                down.iter()
                    .any(|(k, v)| k == "x-conformance-test-served-endpoint" && v == expect),
                "{down:?}"
            );
            w.finish(sent.stream);
        }
    }
    // A steering list naming no pool member: 503.
    let sent = send(
        &mut host,
        0,
        &[("test-epp-endpoint-selection", "192.0.2.1")],
        &chat_body(MODEL, "s", "q"),
    );
    assert_eq!(sent.status, Some(503));
}

#[test]
fn inflight_counts_track_open_streams_and_never_leak() {
    let mut host = host_with(HostProfile::Envoy, &base_config(""), 2, true);
    push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
    let mut open = vec![];
    for i in 0..20 {
        let w = i % 2;
        let sent = send(&mut host, w, &[], &chat_body(MODEL, &format!("tenant {i}"), "q"));
        open.push((w, sent.stream));
    }
    assert_eq!(inflight_total(&host), 20);
    for (w, s) in open.drain(..10) {
        host.worker(w).finish(s);
    }
    assert_eq!(inflight_total(&host), 10);
    for (w, s) in open {
        host.worker(w).finish(s);
    }
    assert_eq!(inflight_total(&host), 0);
}

// === GCP ===

#[test]
fn gcp_profile_makes_no_unsupported_hostcall() {
    let cfg = r#"{"hostProfile":"gcp","headersOnly":{"modelHeader":"x-model","affinityHeader":"x-session-id"}}"#;
    let mut host = host_with(HostProfile::Gcp, cfg, 1, false);
    let wk = host.worker(0);
    let s = wk.new_stream();
    wk.request_headers(
        s,
        h(&[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("x-model", MODEL),
            ("x-session-id", "u1"),
            ("x-gateway-destination-endpoint", "6.6.6.6:1"),
        ]),
        false,
    );
    wk.request_body(s, &chat_body(MODEL, "s", "q"), true);
    let up = wk.upstream(s).and_then(|u| u.headers.clone()).unwrap();
    assert!(up.iter().any(|(k, v)| k == "x-gateway-model-name" && v == MODEL));
    assert!(up.iter().any(|(k, v)| k == "x-wasm-epp-affinity" && v.len() == 16));
    assert!(up.iter().all(|(k, _)| k != "x-gateway-destination-endpoint"));
    wk.response_headers(s, h(&[(":status", "200")]), true);
    wk.finish(s);
    let errors = wk.hostcall_errors();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(wk.failed().is_none());
}

#[test]
fn bad_plugin_config_is_rejected_at_configure() {
    let mut o = HostOptions::new(HostProfile::Envoy);
    o.plugin_config = br#"{"maxBodyBytes":"lots"}"#.to_vec();
    assert!(Host::new(plugin(), o, 1).is_err(), "on_configure returns false");
}

// === never panic ===

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Arbitrary bodies, headers and pushes never trap the VM and never leak in-flight counts.
    #[test]
    fn arbitrary_input_never_traps(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6),
        pushes in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..3),
        steering in ".{0,40}",
        objective in ".{0,20}",
    ) {
        let mut host = host(r#""testMode":true"#);
        push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
        for p in &pushes {
            push(&mut host, 0, p, TOKEN);
        }
        for b in &bodies {
            let mut body = b.clone();
            // Half the time, a valid prefix so the scanner gets deeper.
            if b.first().is_some_and(|x| x % 2 == 0) {
                body = [&br#"{"model":"m","messages":["#[..], b].concat();
            }
            let sent = send(&mut host, 0, &[("test-epp-endpoint-selection", steering.as_str()), ("x-gateway-inference-objective", objective.as_str())], &body);
            host.worker(0).finish(sent.stream);
        }
        prop_assert!(host.worker(0).failed().is_none(), "{:?}", host.worker(0).failed());
        prop_assert_eq!(inflight_total(&host), 0);
    }
}

// === observability and ORIGINAL_DST ===

#[test]
fn metrics_count_requests_errors_and_pool_state() {
    let mut host = host(r#""objectives":{"batch":-1}"#);
    assert_eq!(
        push(
            &mut host,
            0,
            &snapshot(1, &[("10.0.0.1:8000", 2, 0.5), ("10.0.0.2:8000", 4, 0.3)]),
            TOKEN
        ),
        204
    );
    for _ in 0..3 {
        let sent = send(&mut host, 0, &[], &chat_body(MODEL, "s", "q"));
        host.worker(0).finish(sent.stream);
    }
    let sent = send(&mut host, 0, &[], b"{bad");
    host.worker(0).finish(sent.stream);
    assert_eq!(push(&mut host, 0, b"junk", TOKEN), 400);
    let metric = |name: &str| {
        host.group
            .metric(name)
            .map(|m| m.value)
            .unwrap_or_else(|| panic!("metric {name} defined"))
    };
    assert_eq!(metric("inference_objective_request_total"), 3);
    assert_eq!(
        metric("inference_objective_request_total.model_name.meta-llama_Llama-3_1-8B-Instruct"),
        3
    );
    assert_eq!(metric("inference_objective_request_error_total.error_code.400"), 1);
    assert_eq!(metric("inference_objective_request_error_total.error_code.503"), 0);
    assert_eq!(metric("inference_pool_ready_pods"), 2);
    assert_eq!(metric("inference_pool_average_queue_size"), 3);
    assert_eq!(metric("inference_pool_average_kv_cache_utilization_percent"), 40);
    assert_eq!(metric("wasm_epp_snapshot_accepted_total"), 1);
    assert_eq!(metric("wasm_epp_snapshot_rejected_total"), 1);
    let hist = host
        .group
        .metric("wasm_epp_decision_duration_us")
        .expect("histogram defined");
    assert_eq!(hist.samples.len(), 3, "one sample per decision");
}

#[test]
fn original_dst_filter_state_carries_the_pick() {
    let mut host = host(r#""originalDstFilterState":true"#);
    push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
    let sent = send(&mut host, 0, &[], &chat_body(MODEL, "s", "q"));
    let dest = sent.header("x-gateway-destination-endpoint").unwrap().to_string();
    let io = host.worker(0).stream_io(sent.stream).expect("stream io").clone();
    let state = io
        .filter_state
        .get("envoy.network.transport_socket.original_dst_address")
        .expect("filter state set");
    assert_eq!(std::str::from_utf8(state).unwrap(), dest);
    let errors: Vec<_> = host
        .worker(0)
        .hostcall_errors()
        .into_iter()
        .filter(|e| {
            e.call.contains("foreign")
                || !matches!(e.status, host_sim::Status::NotFound | host_sim::Status::CasMismatch)
        })
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

// === model rewrite and pull mode ===

#[test]
fn model_rewrite_splices_the_body_and_splits_by_weight() {
    let cfg = base_config(
        r#""models":{"rewrites":[{"model":"llama","targets":[{"model":"llama-a","weight":70},{"model":"llama-b","weight":30}]}]}"#,
    );
    let mut host = host_with(HostProfile::Envoy, &cfg, 1, true);
    // Pods that list no models serve any model.
    let mut s = Snapshot::decode(&snapshot(1, &PODS)).unwrap();
    for e in &mut s.endpoints {
        e.models.clear();
    }
    assert_eq!(push(&mut host, 0, &s.encode().unwrap(), TOKEN), 204);
    let mut a = 0;
    let n = 300;
    for _ in 0..n {
        let body = br#"{"messages":[{"role":"user","content":"hi"}], "model" : "llama", "stream":false}"#;
        let sent = send(&mut host, 0, &[("content-length", &body.len().to_string())], body);
        let w = host.worker(0);
        let up = w.upstream(sent.stream).cloned().expect("forwarded");
        let v: serde_json::Value = serde_json::from_slice(&up.body).expect("rewritten body is JSON");
        let target = v["model"].as_str().unwrap().to_string();
        assert!(target == "llama-a" || target == "llama-b", "{target}");
        assert_eq!(v["messages"][0]["content"], "hi", "the rest of the body is untouched");
        assert_eq!(sent.header("x-gateway-model-name"), Some(target.as_str()));
        assert_eq!(sent.header("content-length"), Some(up.body.len().to_string().as_str()));
        a += (target == "llama-a") as u32;
        w.finish(sent.stream);
    }
    // GIE conformance tolerance for weighted splits: max(0.10, 4.5σ).
    let share = a as f64 / n as f64;
    let sigma = (0.7f64 * 0.3 / n as f64).sqrt();
    assert!((share - 0.7).abs() <= (4.5 * sigma).max(0.10), "share {share}");
}

#[test]
fn pull_mode_fetches_the_snapshot_on_a_tick() {
    let cfg = format!(
        r#"{{"snapshot":{{"token":"{TOKEN}","pull":{{"cluster":"collector","intervalMs":50}}}},"endpoints":["10.9.9.9:8000"]}}"#
    );
    let mut o = HostOptions::new(HostProfile::Envoy);
    o.vm_id = "wasm-epp".into();
    o.plugin_config = cfg.into_bytes();
    o.allow_on_headers_stop_iteration = true;
    o.clusters.insert(
        "collector".into(),
        Some(host_sim::CallResponse {
            headers: vec![(":status".into(), "200".into())],
            body: snapshot(3, &PODS[2..3]),
            ..Default::default()
        }),
    );
    let mut host = Host::new(plugin(), o, 1).unwrap();
    let before = send(&mut host, 0, &[], &chat_body(MODEL, "s", "q"));
    assert_eq!(before.header("x-gateway-destination-endpoint"), Some("10.9.9.9:8000"));
    host.advance_ms(60);
    host.pump();
    let stored = host
        .group
        .get_data("wasm-epp/snapshot")
        .expect("pulled snapshot stored")
        .0;
    assert_eq!(Snapshot::decode(&stored).unwrap().sequence, 3);
    let after = send(&mut host, 0, &[], &chat_body(MODEL, "s", "q"));
    assert_eq!(after.header("x-gateway-destination-endpoint"), Some("10.0.0.3:8000"));
    no_traps(&mut host);
}

#[path = "module/hardening.rs"]
mod hardening;

/// llm-d's in-flight accounting, for the profile that reads it: the primary's uncached prompt
/// tokens count from the pick to the first response body chunk, the request until the end.
#[test]
fn llmd_profile_counts_uncached_tokens_until_the_first_chunk() {
    let mut host = host(r#""picker":{"profile":"llm-d-optimized-baseline"}"#);
    push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
    let totals = |host: &Host| {
        let (bytes, _) = host.group.get_data(filter::inflight::KEY_INFLIGHT).unwrap();
        let now_ms = host.opts.clock.now_ns() / 1_000_000;
        filter::inflight::totals(&bytes, now_ms, filter::config::DEFAULT_INFLIGHT_TTL_MS)
    };
    let system = "s".repeat(2000);
    let body = chat_body(MODEL, &system, "q");
    let sent = send(&mut host, 0, &[], &body);
    assert_eq!(sent.status, None);
    let (requests, tokens) = totals(&host);
    assert_eq!(requests, 1);
    // A cold pod: every hashed block of 64 four-byte tokens, the last one partial.
    let scanned = picker_core::scan(&body, picker_core::Api::ChatCompletions).unwrap();
    let prompt_tokens = scanned.prompt.len().div_ceil(4) as u64;
    assert_eq!(tokens, prompt_tokens.div_ceil(64) * 64, "prompt {prompt_tokens} tokens");
    let w = host.worker(0);
    w.response_headers(sent.stream, h(&[(":status", "200")]), false);
    assert_eq!(totals(&host).1, tokens, "headers alone do not end prefill");
    let w = host.worker(0);
    w.response_body(sent.stream, b"data: {}\n\n", false);
    assert_eq!(
        totals(&host),
        (1, 0),
        "first chunk: prefill done, request still in flight"
    );
    let w = host.worker(0);
    w.response_body(sent.stream, b"data: [DONE]\n\n", true);
    w.finish(sent.stream);
    assert_eq!(totals(&host), (0, 0));
    // Our profile reads no token counts: none are kept.
    let mut ours = host_with(HostProfile::Envoy, &base_config(""), 1, true);
    push(&mut ours, 0, &snapshot(1, &PODS), TOKEN);
    let sent = send(&mut ours, 0, &[], &body);
    assert_eq!(totals(&ours), (1, 0));
    ours.worker(0).finish(sent.stream);
    no_traps(&mut host);
}
