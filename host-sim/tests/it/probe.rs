//! Host semantics checked with host-sim's own probe module (testdata/probe).

use host_sim::{CallResponse, FailurePolicy, Flow, Host, HostOptions, HostProfile, LogLevel, Status};

use crate::common::*;

fn probe_req(cmds: &str) -> host_sim::Headers {
    with(post("/v1/chat/completions"), "x-probe", cmds)
}

fn probe(opts: HostOptions) -> Host {
    host("probe", opts)
}

fn has_log(h: &Host, needle: &str) -> bool {
    h.logs().iter().any(|l| l.message.contains(needle))
}

// === Envoy header/body timing (docs/proxy-wasm.md#header-and-body-phases) ===

#[test]
fn envoy_header_write_after_continue_is_bad_argument_and_panics_the_sdk() {
    let mut h = probe(envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    assert_eq!(
        w.request_headers(s, probe_req("set_header_in_body"), false).flow,
        Flow::Continued
    );
    let st = w.request_body(s, b"{}", true);
    assert_eq!(st.flow, Flow::LocalReply);
    assert_eq!(w.immediate(s).unwrap().status, 503);
    let errs = w.hostcall_errors();
    assert!(
        errs.iter()
            .any(|e| e.call == "proxy_replace_header_map_value" && e.status == Status::BadArgument),
        "{errs:?}"
    );
}

#[test]
fn envoy_pause_at_headers_without_flag_blocks_body_delivery() {
    let mut h = probe(envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    let st = w.request_headers(s, probe_req("pause_headers"), false);
    assert_eq!((st.action, st.flow), (Some(host_sim::Action::Pause), Flow::Paused));
    let st = w.request_body(s, b"{\"model\":\"m\"}", true);
    // StopAllIterationAndWatermark: the plugin's body callback is never called.
    assert_eq!((st.action, st.flow), (None, Flow::Paused));
    assert!(!has_log(&h, "request body"), "{:?}", log_messages(&h));
    let w = h.worker(0);
    assert!(w.upstream(s).unwrap().headers.is_none(), "request hangs upstream-wise");
}

#[test]
fn envoy_pause_at_headers_with_flag_buffers_body_then_sets_header() {
    let mut o = envoy();
    o.allow_on_headers_stop_iteration = true;
    let mut h = probe(o);
    let w = h.worker(0);
    let s = w.new_stream();
    assert_eq!(
        w.request_headers(s, probe_req("pause_headers"), false).flow,
        Flow::Paused
    );
    assert_eq!(w.request_body(s, b"hello ", false).flow, Flow::Paused);
    assert_eq!(w.request_body(s, b"world", true).flow, Flow::Continued);
    let up = w.upstream(s).unwrap();
    // The last callback saw the whole buffered body (11 bytes) and could still set a header.
    assert_eq!(get(up.headers.as_ref().unwrap(), "x-body-size"), Some("11"));
    assert_eq!(up.body, b"hello world");
    assert!(up.end);
    assert!(has_log(&h, "request body size=6 eos=false"));
    assert!(has_log(&h, "request body size=11 eos=true"));
}

#[test]
fn envoy_body_over_buffer_limit_gives_413() {
    let mut o = envoy();
    o.buffer_limit = 16;
    let mut h = probe(o);
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("buffer_body"), false);
    assert_eq!(w.request_body(s, b"0123456789", false).flow, Flow::Paused);
    let st = w.request_body(s, b"0123456789", true);
    assert_eq!(st.flow, Flow::LocalReply);
    let imm = w.immediate(s).unwrap();
    assert_eq!((imm.status, imm.by_host), (413, true));
    assert!(w.upstream(s).unwrap().body.is_empty());
}

#[test]
fn envoy_body_rewrite_reaches_upstream() {
    let mut h = probe(envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("buffer_body;upper_body"), false);
    w.request_body(s, b"abc", false);
    w.request_body(s, b"def", true);
    assert_eq!(w.upstream(s).unwrap().body, b"ABCDEF");
}

#[test]
fn client_routing_header_is_stripped() {
    let mut h = probe(envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(
        s,
        with(probe_req(""), "x-gateway-destination-endpoint", "6.6.6.6:80"),
        true,
    );
    assert_eq!(
        get(
            w.upstream(s).unwrap().headers.as_ref().unwrap(),
            "x-gateway-destination-endpoint"
        ),
        None
    );
    // A request-header mutation clears the route cache under ABI 0.2.1 (docs/proxy-wasm.md#route-cache).
    assert!(w.stream_io(s).unwrap().route_cache_clears >= 1);
}

// === failure policy (docs/proxy-wasm.md#failure-policies) ===

#[test]
fn fail_open_skips_the_filter() {
    let mut o = envoy();
    o.failure_policy = FailurePolicy::FailOpen;
    let mut h = probe(o);
    let w = h.worker(0);
    let s = w.new_stream();
    let st = w.request_headers(s, probe_req("panic"), true);
    assert_eq!(st.flow, Flow::Continued);
    assert!(w.upstream(s).unwrap().headers.is_some());
    assert!(w.stream_trap(s).is_some());
    // Later streams bypass the failed VM.
    let s2 = w.new_stream();
    w.request_headers(s2, probe_req("local:418"), true);
    assert!(w.immediate(s2).is_none());
    assert!(w.upstream(s2).unwrap().headers.is_some());
}

#[test]
fn fail_open_body_panic_forwards_held_data() {
    let mut o = envoy();
    o.failure_policy = FailurePolicy::FailOpen;
    let mut h = probe(o);
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("body_panic"), false);
    w.request_body(s, b"payload", true);
    let up = w.upstream(s).unwrap();
    assert_eq!(up.body, b"payload");
    assert!(up.end);
}

#[test]
fn fail_reload_gives_503_then_a_fresh_vm() {
    let mut o = envoy();
    o.failure_policy = FailurePolicy::FailReload;
    let mut h = probe(o);
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("panic"), true);
    assert_eq!(w.immediate(s).unwrap().status, 503);
    let s2 = w.new_stream();
    assert_eq!(w.reloads, 1);
    assert_eq!(w.request_headers(s2, probe_req(""), true).flow, Flow::Continued);
    // Logs of the replaced VM are kept: "vm start" twice.
    assert_eq!(h.logs().iter().filter(|l| l.message == "vm start").count(), 2);
}

#[test]
fn on_configure_false_rejects_the_config() {
    let mut o = envoy();
    o.plugin_config = b"reject".to_vec();
    let r = Host::new(&plugin("probe"), o, 1);
    assert!(matches!(r, Err(host_sim::Error::Rejected(_))), "{:?}", r.err());
}

// === shared data, queues, ticks, metrics (docs/proxy-wasm.md#shared-data and the sections after it) ===

#[test]
fn shared_data_is_shared_by_workers_with_cas() {
    let mut o = envoy();
    o.vm_id = "picker".into();
    let mut h = Host::new(&plugin("probe"), o, 2).unwrap();
    let w0 = h.worker(0);
    let s = w0.new_stream();
    w0.request_headers(s, probe_req("shared_set:snap=v1"), true);
    let w1 = h.worker(1);
    let s = w1.new_stream();
    w1.request_headers(s, probe_req("shared_get:snap;cas_stale:snap"), true);
    assert_eq!(
        get(w1.upstream(s).unwrap().headers.as_ref().unwrap(), "x-shared"),
        Some("v1")
    );
    assert!(has_log(&h, "stale cas set -> Err(CasMismatch)"));
    assert_eq!(h.group.get_data("snap").unwrap().0, b"v1");
    // A missing key is NotFound → (None, None) in the SDK, header removed.
    let w1 = h.worker(1);
    let s = w1.new_stream();
    w1.request_headers(s, probe_req("shared_get:nope"), true);
    assert!(has_log(&h, "shared nope = None cas=None"));
}

#[test]
fn shared_queue_notifies_the_last_registrant_only() {
    let mut o = envoy();
    o.vm_id = "q".into();
    o.plugin_config = b"queue=snapshots".to_vec();
    let mut h = Host::new(&plugin("probe"), o, 2).unwrap();
    let w0 = h.worker(0);
    let s = w0.new_stream();
    w0.request_headers(s, probe_req("enqueue:snapshots=seq7"), true);
    assert!(has_log(&h, "enqueue snapshots -> Ok(())"));
    assert_eq!(h.pump(), 1);
    // Worker 1 registered last: it alone dequeued.
    assert!(h.workers[1].logs().iter().any(|l| l.message == "dequeued seq7"));
    assert!(!h.workers[0].logs().iter().any(|l| l.message.starts_with("dequeued")));
    assert_eq!(h.group.get_data("queue_last").unwrap().0, b"seq7");
}

#[test]
fn ticks_fire_per_worker_and_cas_counter_is_exact() {
    let mut o = envoy();
    o.plugin_config = b"tick_ms=100".to_vec();
    let mut h = Host::new(&plugin("probe"), o, 2).unwrap();
    assert_eq!(h.advance_ms(99), 0);
    assert_eq!(h.advance_ms(1), 2);
    assert_eq!(h.advance_ms(900), 18);
    assert_eq!(h.group.get_data("ticks").unwrap().0, b"20");
}

#[test]
fn metrics_follow_envoy_rules() {
    let mut h = probe(envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("metrics"), true);
    assert!(has_log(&h, "counter now 1"));
    let c = h.group.metric("probe_requests").unwrap();
    assert_eq!(c.value, 1);
    assert_eq!(h.group.metric("probe_size").unwrap().samples, vec![42]);
    assert_eq!(h.group.metric("probe_gauge").unwrap().value, -2);
    // A zero counter delta is BadArgument: the SDK panics and the stream fails closed.
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("metric_zero"), true);
    assert_eq!(w.immediate(s).unwrap().status, 503);
    assert!(w
        .hostcall_errors()
        .iter()
        .any(|e| e.call == "proxy_increment_metric" && e.status == Status::BadArgument));
}

// === properties and foreign functions ===

#[test]
fn properties_from_options_and_stream() {
    let mut o = envoy();
    o.vm_id = "vm-a".into();
    o.properties.insert("source.address".into(), b"127.0.0.1:5555".to_vec());
    let mut h = probe(o);
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("property:source.address"), true);
    assert_eq!(
        get(w.upstream(s).unwrap().headers.as_ref().unwrap(), "x-property"),
        Some("127.0.0.1:5555")
    );
    let s = w.new_stream();
    w.request_headers(s, probe_req("property:plugin_vm_id"), true);
    assert_eq!(
        get(w.upstream(s).unwrap().headers.as_ref().unwrap(), "x-property"),
        Some("vm-a")
    );
    let s = w.new_stream();
    w.request_headers(s, probe_req("property:request.path"), true);
    assert_eq!(
        get(w.upstream(s).unwrap().headers.as_ref().unwrap(), "x-property"),
        Some("/v1/chat/completions")
    );
    // upstream.address is reported on the response path.
    w.set_stream_property(s, "upstream.address", b"10.1.2.3:8000");
    w.response_headers(s, hdrs(&[(":status", "200")]), true);
    assert_eq!(
        get(w.downstream(s).unwrap().headers.as_ref().unwrap(), "x-served-by"),
        Some("10.1.2.3:8000")
    );
}

#[test]
fn foreign_functions() {
    let mut h = probe(envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(
        s,
        probe_req("filter_state:10.0.0.7:8000;clear_route_cache;ffi_unknown"),
        true,
    );
    let io = w.stream_io(s).unwrap();
    assert_eq!(
        io.filter_state
            .get("envoy.network.transport_socket.original_dst_address")
            .map(Vec::as_slice),
        Some(&b"10.0.0.7:8000"[..])
    );
    assert!(has_log(&h, "set_envoy_filter_state -> Ok(())"));
    assert!(has_log(&h, "clear_route_cache -> Ok(())"));
    assert!(has_log(&h, "no_such_function -> Err(NotFound)"));
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("filter_state:not-an-address"), true);
    assert!(has_log(&h, "set_envoy_filter_state -> Err(BadArgument)"));
}

// === http calls ===

#[test]
fn http_call_answer_resumes_and_failure_is_reported() {
    let mut o = envoy();
    o.clusters.insert(
        "authz".into(),
        Some(CallResponse {
            headers: hdrs(&[(":status", "204")]),
            ..Default::default()
        }),
    );
    o.clusters.insert(
        "down".into(),
        Some(CallResponse {
            fail: true,
            ..Default::default()
        }),
    );
    let mut h = probe(o);
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("call:authz"), true);
    // Header set from the call response callback while headers were paused (StopAll).
    assert_eq!(
        get(w.upstream(s).unwrap().headers.as_ref().unwrap(), "x-call-status"),
        Some("204")
    );
    let s = w.new_stream();
    w.request_headers(s, probe_req("call:down"), true);
    assert_eq!(w.immediate(s).unwrap().status, 502);
    let s = w.new_stream();
    w.request_headers(s, probe_req("call:nowhere"), true);
    assert_eq!(w.immediate(s).unwrap().status, 500);
    assert!(has_log(&h, "dispatch failed: BadArgument"));
}

#[test]
fn local_reply_passes_through_response_callbacks() {
    let mut h = probe(envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("local:418"), true);
    let d = w.downstream(s).unwrap();
    assert_eq!(get(d.headers.as_ref().unwrap(), ":status"), Some("418"));
    assert_eq!(get(d.headers.as_ref().unwrap(), "x-local"), Some("yes"));
    assert_eq!(d.body, b"local reply");
    assert!(has_log(&h, "response headers upstream=None"));
    w_finish(&mut h, s);
    assert!(has_log(&h, "#2 log"));
}

fn w_finish(h: &mut Host, s: host_sim::StreamId) {
    h.worker(0).finish(s);
}

// === GCP profile (docs/proxy-wasm.md#gcp-service-extensions) ===

#[test]
fn gcp_unsupported_hostcalls_are_unimplemented() {
    let mut h = probe(gcp());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("shared_get:k"), true);
    // Status 12 is not in the SDK's enum: the SDK panics, the stream fails.
    assert_eq!(w.immediate(s).unwrap().status, 503);
    assert!(w
        .hostcall_errors()
        .iter()
        .any(|e| e.call == "proxy_get_shared_data" && e.status == Status::Unimplemented));
}

#[test]
fn gcp_header_map_only_in_its_own_callback() {
    let mut h = probe(gcp());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("pause_headers"), false);
    // GCP delivers the body; setting a request header from the body callback is BadArgument.
    w.request_body(s, b"x", true);
    assert_eq!(w.immediate(s).unwrap().status, 503);
    assert!(w
        .hostcall_errors()
        .iter()
        .any(|e| e.call == "proxy_replace_header_map_value" && e.status == Status::BadArgument));
}

#[test]
fn gcp_clock_is_frozen_per_stream_envoy_is_not() {
    for (opts, frozen) in [(gcp(), true), (envoy(), false)] {
        let mut h = probe(opts);
        let t0 = h.opts.clock.now_ns();
        let w = h.worker(0);
        let s = w.new_stream();
        h.opts.clock.advance_ms(5_000);
        let w = h.worker(0);
        w.request_headers(s, probe_req("time"), true);
        let t: u64 = get(w.upstream(s).unwrap().headers.as_ref().unwrap(), "x-time")
            .unwrap()
            .parse()
            .unwrap();
        let want = if frozen { t0 } else { t0 + 5_000_000_000 };
        assert_eq!(t, want, "frozen={frozen}");
    }
}

#[test]
fn gcp_memory_cap_traps_the_vm() {
    let mut h = probe(gcp());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("grow:32"), true);
    assert_eq!(w.immediate(s).unwrap().status, 503);
    let t = w.failed().unwrap();
    assert!(
        t.message.contains("memory limit of 16777216 bytes exceeded"),
        "{}",
        t.message
    );
    // The same request is fine under Envoy's 1 GiB cap.
    let mut h = probe(envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("grow:32"), true);
    assert!(w.immediate(s).is_none());
}

#[test]
fn gcp_reports_cpu_per_invocation_and_has_no_on_log() {
    let mut h = probe(gcp());
    let w = h.worker(0);
    w.clear_invocations();
    let s = w.new_stream();
    w.request_headers(s, probe_req(""), true);
    w.response_headers(s, hdrs(&[(":status", "200")]), true);
    w.finish(s);
    let inv = w.invocations();
    let names: Vec<&str> = inv.iter().map(|i| i.callback).collect();
    assert_eq!(
        names,
        [
            "proxy_on_context_create",
            "proxy_on_request_headers",
            "proxy_on_response_headers",
            "proxy_on_done",
            "proxy_on_delete"
        ]
    );
    assert!(inv.iter().all(|i| i.cpu_ns > 0 || i.wall_ns > 0));
    assert!(!h
        .logs()
        .iter()
        .any(|l| l.message.ends_with(" log") && l.level == LogLevel::Info));
    assert_eq!(h.opts.profile, HostProfile::Gcp);
}

#[test]
fn gcp_body_pause_does_not_accumulate_but_forwards_everything() {
    let mut h = probe(gcp());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("buffer_body"), false);
    w.request_body(s, b"abc", false);
    w.request_body(s, b"defg", true);
    // The second callback sees only its own chunk (GCP tester semantics,
    // docs/proxy-wasm.md#the-plugin-tester)...
    assert!(has_log(&h, "request body size=3 eos=false"));
    assert!(has_log(&h, "request body size=4 eos=true"));
    // ...and nothing is lost on the way upstream.
    let w = h.worker(0);
    assert_eq!(w.upstream(s).unwrap().body, b"abcdefg");
}

#[test]
fn envoy_body_pause_accumulates() {
    let mut h = probe(envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("buffer_body"), false);
    w.request_body(s, b"abc", false);
    w.request_body(s, b"defg", true);
    assert!(has_log(&h, "request body size=7 eos=true"));
    let w = h.worker(0);
    assert_eq!(w.upstream(s).unwrap().body, b"abcdefg");
}

#[test]
fn envoy_late_request_header_write_is_ok_but_has_no_effect() {
    let mut o = envoy();
    o.allow_on_headers_stop_iteration = true;
    let mut h = probe(o);
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req("pause_headers;late_header"), false);
    w.request_body(s, b"{}", true);
    w.response_headers(s, hdrs(&[(":status", "200")]), true);
    // Headers paused then continued: Envoy keeps the map pointer, so the write is Ok (no
    // panic, no 503) but the upstream never sees it.
    assert!(w.immediate(s).is_none());
    assert_eq!(get(w.upstream(s).unwrap().headers.as_ref().unwrap(), "x-late"), None);
    let late = &w.stream_io(s).unwrap().late_mutations;
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(late[0].contains("HttpRequestHeaders"), "{late:?}");
}

#[test]
fn trailers_pass_through_and_end_the_stream() {
    let mut h = probe(envoy());
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, probe_req(""), false);
    w.request_body(s, b"data", false);
    assert!(!w.upstream(s).unwrap().end);
    w.request_trailers(s, hdrs(&[("x-checksum", "abc")]));
    let up = w.upstream(s).unwrap();
    assert_eq!(up.body, b"data");
    assert_eq!(get(up.trailers.as_ref().unwrap(), "x-checksum"), Some("abc"));
    assert!(up.end);
    w.response_headers(s, hdrs(&[(":status", "200")]), false);
    w.response_body(s, b"ok", false);
    w.response_trailers(s, hdrs(&[("grpc-status", "0")]));
    let down = w.downstream(s).unwrap();
    assert_eq!(get(down.trailers.as_ref().unwrap(), "grpc-status"), Some("0"));
    assert!(down.end);
}
