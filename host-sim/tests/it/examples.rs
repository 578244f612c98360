//! The behaviours the proxy-wasm SDK's examples demonstrate (header logging and local reply,
//! body buffering to end of stream, configuration, a callout that gates the request, a timer
//! with WASI clock/random), re-created as our own modules (testdata/modules) on the crates.io
//! SDK 0.2.5, and asserted against host-sim.

use host_sim::{CallResponse, FailurePolicy, Flow};

use crate::common::*;

#[test]
fn headers_hello_gets_local_reply_that_runs_through_response_callbacks() {
    let mut h = host("headers", envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    let req = with(
        hdrs(&[
            (":authority", "localhost:10000"),
            (":path", "/hello"),
            (":method", "GET"),
        ]),
        "user-agent",
        "curl",
    );
    let step = w.request_headers(s, req, true);
    assert_eq!(step.flow, Flow::LocalReply);
    assert_eq!(w.immediate(s).map(|i| i.status), Some(200));
    let down = w.downstream(s).unwrap().clone();
    let dh = down.headers.unwrap();
    assert_eq!(get(&dh, "greeting"), Some("hello"));
    assert_eq!(get(&dh, "x-answered-by"), Some("headers-module"));
    assert_eq!(down.body, b"hello from the filter\n");
    assert!(w.upstream(s).unwrap().headers.is_none(), "nothing went upstream");
    w.finish(s);
    // Envoy runs a local reply through the filter's own encode path (Context::encodeHeaders
    // is skipped only after failStream), with content-length and content-type added.
    let want = [
        "[2] request :authority=localhost:10000",
        "[2] request :path=/hello",
        "[2] request :method=GET",
        "[2] request user-agent=curl",
        "[2] response :status=200",
        "[2] response greeting=hello",
        "[2] response x-answered-by=headers-module",
        "[2] response content-length=22",
        "[2] response content-type=text/plain",
        "[2] done",
    ];
    assert_eq!(log_messages(&h), want);
}

#[test]
fn headers_other_path_is_forwarded_and_response_logged() {
    let mut h = host("headers", envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    assert_eq!(w.request_headers(s, get_req(), true).flow, Flow::Continued);
    let up = w.upstream(s).unwrap();
    assert_eq!(get(up.headers.as_ref().unwrap(), ":path"), Some("/"));
    assert!(up.end);
    w.response_headers(s, hdrs(&[(":status", "204")]), true);
    w.finish(s);
    let logs = log_messages(&h);
    assert!(logs.contains(&"[2] response :status=204".to_string()), "{logs:?}");
    assert_eq!(logs.last().map(String::as_str), Some("[2] done"));
}

#[test]
fn body_redacts_secret_after_buffering_to_end_of_stream() {
    let mut h = host("body", envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, get_req(), true);
    w.response_headers(s, hdrs(&[(":status", "200"), ("content-length", "24")]), false);
    let dh = w.downstream(s).unwrap().headers.clone().unwrap();
    assert_eq!(get(&dh, "content-length"), None, "module removes content-length");
    // First chunk: Pause (buffer), nothing reaches the client yet.
    let st = w.response_body(s, b"this is a ", false);
    assert_eq!(st.flow, Flow::Paused);
    assert!(w.downstream(s).unwrap().body.is_empty());
    // Last chunk: the callback sees the whole buffered body (24 bytes) and replaces it.
    let st = w.response_body(s, b"secret message", true);
    assert_eq!(st.flow, Flow::Continued);
    let down = w.downstream(s).unwrap();
    assert_eq!(down.body, b"[redacted 24 bytes]\n");
    assert!(down.end);
}

#[test]
fn body_leaves_other_bodies_alone() {
    let mut h = host("body", envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, get_req(), true);
    w.response_headers(s, hdrs(&[(":status", "200")]), false);
    w.response_body(s, b"hello ", false);
    w.response_body(s, b"world", true);
    assert_eq!(w.downstream(s).unwrap().body, b"hello world");
}

#[test]
fn config_adds_configured_header_and_rejects_bad_config() {
    let mut o = envoy();
    o.plugin_config = b"my-value".to_vec();
    let mut h = host("config", o);
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, get_req(), true);
    w.response_headers(s, hdrs(&[(":status", "200")]), true);
    let dh = w.downstream(s).unwrap().headers.clone().unwrap();
    assert_eq!(get(&dh, "x-config"), Some("my-value"));
    // on_configure returns false: Envoy NACKs the config (docs/proxy-wasm.md#plugin-configuration).
    let mut o = envoy();
    o.plugin_config = vec![0xff, 0xfe];
    let r = host_sim::Host::new(&plugin("config"), o, 1);
    assert!(matches!(r, Err(host_sim::Error::Rejected(_))), "{:?}", r.err());
}

fn auth_host(body: &[u8], policy: FailurePolicy) -> host_sim::Host {
    let mut o = envoy();
    o.failure_policy = policy;
    o.clusters.insert(
        "authz".into(),
        Some(CallResponse {
            headers: hdrs(&[(":status", "200")]),
            body: body.to_vec(),
            ..Default::default()
        }),
    );
    host("auth", o)
}

#[test]
fn auth_even_byte_lets_the_request_through() {
    let mut h = auth_host(b"\x02", FailurePolicy::FailClosed);
    let w = h.worker(0);
    let s = w.new_stream();
    let st = w.request_headers(s, get_req(), true);
    // The headers callback paused; the callout answer resumed the request.
    assert_eq!(st.action, Some(host_sim::Action::Pause));
    assert_eq!(st.flow, Flow::Continued);
    assert!(w.upstream(s).unwrap().headers.is_some());
    w.response_headers(s, hdrs(&[(":status", "200")]), true);
    let dh = w.downstream(s).unwrap().headers.clone().unwrap();
    assert_eq!(get(&dh, "x-auth"), Some("checked"));
    assert!(log_messages(&h).contains(&"allowed".to_string()));
}

#[test]
fn auth_odd_byte_denies() {
    let mut h = auth_host(b"\x03", FailurePolicy::FailClosed);
    let w = h.worker(0);
    let s = w.new_stream();
    let st = w.request_headers(s, get_req(), true);
    assert_eq!(st.flow, Flow::LocalReply);
    assert_eq!(w.immediate(s).unwrap().status, 403);
    assert_eq!(w.downstream(s).unwrap().body, b"denied\n");
    assert!(w.upstream(s).unwrap().headers.is_none());
    assert!(log_messages(&h).contains(&"denied".to_string()));
}

#[test]
fn auth_waits_for_a_manual_answer() {
    let mut o = envoy();
    o.clusters.insert("authz".into(), None);
    let mut h = host("auth", o);
    let w = h.worker(0);
    let s = w.new_stream();
    assert_eq!(w.request_headers(s, get_req(), true).flow, Flow::Paused);
    let calls = w.pending_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "authz");
    assert_eq!(get(&calls[0].headers, ":path"), Some("/decide"));
    assert_eq!(calls[0].timeout_ms, 500);
    assert!(w.upstream(s).unwrap().headers.is_none());
    let answer = CallResponse {
        headers: hdrs(&[(":status", "200")]),
        body: vec![4],
        ..Default::default()
    };
    assert!(w.respond_http_call(calls[0].token, answer));
    assert!(w.upstream(s).unwrap().headers.is_some());
}

#[test]
fn auth_unknown_cluster_panics_and_fails_closed() {
    // No cluster "authz": Envoy's httpCall returns BadArgument, the module's expect panics.
    let mut h = host("auth", envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    let st = w.request_headers(s, get_req(), true);
    assert_eq!(st.flow, Flow::LocalReply);
    let imm = w.immediate(s).unwrap();
    assert_eq!(
        (imm.status, imm.details.as_str(), imm.by_host),
        (503, "wasm_fail_stream", true)
    );
    assert!(w.failed().is_some());
    // The panic message was logged at critical by the SDK's panic hook.
    let logs = h.logs();
    assert!(
        logs.iter()
            .any(|l| l.level == host_sim::LogLevel::Critical && l.message.contains("dispatch to authz: BadArgument")),
        "{logs:?}"
    );
    // Fail-closed: every later stream of this VM gets 503 without running the plugin.
    let w = h.worker(0);
    let s2 = w.new_stream();
    w.request_headers(s2, get_req(), true);
    assert_eq!(w.immediate(s2).unwrap().status, 503);
}

#[test]
fn tick_fires_every_five_seconds_with_wasi_clock_and_random() {
    let mut h = host("tick", envoy());
    assert_eq!(log_messages(&h), vec!["ticker started".to_string()]);
    assert_eq!(h.advance_ms(4_999), 0);
    assert_eq!(h.advance_ms(1), 1);
    assert_eq!(h.advance_ms(10_000), 2);
    let logs = log_messages(&h);
    assert_eq!(logs.len(), 4);
    // Virtual clock starts at 1_700_000_000 s; ticks at +5, +10, +15 s (re-armed after each).
    assert!(logs[1].starts_with("tick 1 at 1700000005 random "), "{}", logs[1]);
    assert!(logs[3].starts_with("tick 3 at 1700000015 random "), "{}", logs[3]);
    // random_get answered (not an error), deterministically for a fixed seed.
    assert!(!logs[1].contains("error"), "{}", logs[1]);
    let again = host("tick", envoy());
    let mut again = again;
    again.advance_ms(5_000);
    assert_eq!(log_messages(&again)[1], logs[1]);
}
