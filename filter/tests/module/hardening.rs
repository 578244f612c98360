//! Defects found by running the module in hosts this project did not write, and hostile input:
//! header maps written only in the phase the host allows, in-flight counts that heal after a VM
//! dies mid-stream, and header values that are always valid field values.

use super::*;
use host_sim::FailurePolicy;

/// RFC 9110 §5.5: a field value is visible ASCII, SP, HTAB and obs-text (0x80-0xFF), with no
/// leading or trailing whitespace; never CR, LF or NUL.
fn valid_field_value(v: &str) -> bool {
    let b = v.as_bytes();
    let vchar = |c: u8| (0x21..=0x7e).contains(&c) || c >= 0x80;
    b.iter().all(|&c| vchar(c) || c == b' ' || c == b'\t')
        && b.first().is_none_or(|&c| vchar(c))
        && b.last().is_none_or(|&c| vchar(c))
}

/// No hostcall of this worker's VMs ever got an answer that the SDK would panic on.
fn no_bad_hostcalls(host: &mut Host, worker: usize) {
    let errors: Vec<_> = host
        .worker(worker)
        .hostcall_errors()
        .into_iter()
        .filter(|e| !matches!(e.status, host_sim::Status::NotFound | host_sim::Status::CasMismatch))
        .collect();
    assert!(errors.is_empty(), "hostcalls failed: {errors:?}");
}

fn headers_only_config(profile: &str) -> String {
    format!(
        r#"{{"hostProfile":"{profile}","mode":"headersOnly","headersOnly":{{"modelHeader":"x-model","affinityHeader":"x-session-id"}},
            "endpoints":["10.0.0.1:8000","10.0.0.2:8000","10.0.0.3:8000"]}}"#
    )
}

/// Sends a headers-only request whose body arrives in `chunks` pieces (0: `end_of_stream` on
/// the headers) and returns the stream.
fn send_headers_only(host: &mut Host, chunks: usize) -> StreamId {
    let body = chat_body(MODEL, "system", "question");
    let wk = host.worker(0);
    let s = wk.new_stream();
    let headers = h(&[
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("x-model", MODEL),
        ("x-session-id", "user-42"),
        ("content-length", &body.len().to_string()),
    ]);
    let st = wk.request_headers(s, headers, chunks == 0);
    assert_eq!(st.flow, Flow::Continued, "headers-only decides at headers");
    if chunks > 0 {
        let step = body.len().div_ceil(chunks);
        let pieces: Vec<&[u8]> = body.chunks(step).collect();
        for (i, piece) in pieces.iter().enumerate() {
            wk.request_body(s, piece, i + 1 == pieces.len());
        }
    }
    let up = wk.upstream(s).cloned().expect("forwarded");
    let dests: Vec<_> = up
        .headers
        .as_ref()
        .unwrap()
        .iter()
        .filter(|(k, _)| k == "x-gateway-destination-endpoint")
        .collect();
    assert_eq!(dests.len(), 1, "one pick: {dests:?}");
    assert!(PODS.iter().any(|p| p.0 == dests[0].1), "{dests:?}");
    if chunks > 0 {
        assert_eq!(up.body, body, "the body passes through untouched");
    }
    s
}

/// Headers-only mode picks at headers and returns Continue; Envoy then drops the request
/// header map but still delivers the body. The body must pass through without a second pick
/// (which wrote a header into the dropped map: BadArgument, SDK panic, trap).
#[test]
fn headers_only_mode_passes_bodies_through_without_a_second_pick() {
    for allow_stop in [false, true] {
        let mut host = host_with(HostProfile::Envoy, &headers_only_config("envoy"), 1, allow_stop);
        for chunks in [0, 1, 2, 7] {
            for _ in 0..3 {
                let s = send_headers_only(&mut host, chunks);
                let wk = host.worker(0);
                wk.response_headers(s, h(&[(":status", "200")]), false);
                wk.response_body(s, b"data: {}\n\n", true);
                wk.finish(s);
            }
            no_traps(&mut host);
            no_bad_hostcalls(&mut host, 0);
            assert_eq!(inflight_total(&host), 0, "chunks {chunks}: one acquire, one release");
        }
    }
}

#[test]
fn gcp_headers_only_passes_bodies_through() {
    let mut host = host_with(HostProfile::Gcp, &headers_only_config("gcp"), 1, false);
    for chunks in [0, 1, 2, 7] {
        let body = chat_body(MODEL, "system", "question");
        let wk = host.worker(0);
        let s = wk.new_stream();
        let st = wk.request_headers(
            s,
            h(&[
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                ("x-model", MODEL),
                ("x-session-id", "user-42"),
            ]),
            chunks == 0,
        );
        assert_eq!(st.flow, Flow::Continued);
        if chunks > 0 {
            let pieces: Vec<&[u8]> = body.chunks(body.len().div_ceil(chunks)).collect();
            for (i, piece) in pieces.iter().enumerate() {
                wk.request_body(s, piece, i + 1 == pieces.len());
            }
        }
        let up = wk.upstream(s).cloned().expect("forwarded");
        let headers = up.headers.unwrap();
        assert!(headers.iter().any(|(k, v)| k == "x-gateway-model-name" && v == MODEL));
        assert_eq!(headers.iter().filter(|(k, _)| k == "x-wasm-epp-affinity").count(), 1);
        wk.response_headers(s, h(&[(":status", "200")]), true);
        wk.finish(s);
        no_traps(&mut host);
        no_bad_hostcalls(&mut host, 0);
    }
}

/// Body mode with a body that ends in trailers (HTTP/2 or HTTP/1.1 chunked with trailers):
/// the body callback never sees end_of_stream, so the pick happens at the trailers. Without it
/// the request went upstream with no destination at all.
#[test]
fn body_mode_picks_when_the_body_ends_with_trailers() {
    let mut host = host("");
    push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
    let wk = host.worker(0);
    let s = wk.new_stream();
    wk.request_headers(
        s,
        h(&[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "gw"),
        ]),
        false,
    );
    let body = chat_body(MODEL, "s", "q");
    wk.request_body(s, &body[..10], false);
    wk.request_body(s, &body[10..], false);
    wk.request_trailers(s, h(&[("x-checksum", "abc")]));
    let up = wk.upstream(s).cloned().expect("forwarded");
    let headers = up.headers.expect("headers forwarded");
    let dest = headers
        .iter()
        .find(|(k, _)| k == "x-gateway-destination-endpoint")
        .map(|(_, v)| v.clone());
    assert!(dest.is_some_and(|d| PODS.iter().any(|p| p.0 == d)), "{headers:?}");
    assert_eq!(up.body, body);
    wk.finish(s);
    no_traps(&mut host);
    no_bad_hostcalls(&mut host, 0);
    assert_eq!(inflight_total(&host), 0);
}

/// One step a client, the proxy or the upstream can take on a stream.
#[derive(Clone, Debug)]
enum Event {
    RequestBody { len: usize, eos: bool },
    RequestTrailers,
    ResponseHeaders { eos: bool },
    ResponseBody { eos: bool },
    ResponseTrailers,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0usize..200, any::<bool>()).prop_map(|(len, eos)| Event::RequestBody { len, eos }),
        1 => Just(Event::RequestTrailers),
        1 => any::<bool>().prop_map(|eos| Event::ResponseHeaders { eos }),
        1 => any::<bool>().prop_map(|eos| Event::ResponseBody { eos }),
        1 => Just(Event::ResponseTrailers),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random phase sequences, in every mode and host profile: no hostcall ever returns an
    /// error the SDK would panic on (BadArgument: a map written outside its phase), the VM
    /// never traps, and in-flight counts end at zero.
    #[test]
    fn no_phase_sequence_writes_a_map_the_host_does_not_allow(
        gcp in any::<bool>(),
        headers_only in any::<bool>(),
        allow_stop in any::<bool>(),
        test_mode in any::<bool>(),
        path in prop_oneof![3 => Just("/v1/chat/completions"), 1 => Just("/v1/completions"), 1 => Just("/healthz"), 1 => Just(SNAPSHOT_PATH)],
        post in prop::bool::weighted(0.8),
        headers_eos in any::<bool>(),
        events in prop::collection::vec(event(), 0..8),
        streams in 1usize..3,
    ) {
        let profile = if gcp { "gcp" } else { "envoy" };
        let mode = if headers_only { "headersOnly" } else { "body" };
        let cfg = format!(
            r#"{{"hostProfile":"{profile}","mode":"{mode}","testMode":{test_mode},"snapshot":{{"token":"{TOKEN}"}},
                "headersOnly":{{"modelHeader":"x-model","affinityHeader":"x-session-id"}},
                "endpoints":["10.0.0.1:8000","10.0.0.2:8000"]}}"#
        );
        let cfg = if gcp { cfg.replace(&format!(r#""snapshot":{{"token":"{TOKEN}"}},"#), "") } else { cfg };
        let mut host = host_with(if gcp { HostProfile::Gcp } else { HostProfile::Envoy }, &cfg, 1, allow_stop);
        let body = chat_body(MODEL, "s", "q");
        for _ in 0..streams {
            let wk = host.worker(0);
            let s = wk.new_stream();
            let auth = format!("Bearer {TOKEN}");
            let headers = h(&[
                (":method", if post { "POST" } else { "GET" }),
                (":path", path),
                ("x-model", MODEL),
                ("x-session-id", "u"),
                ("authorization", &auth),
                ("test-epp-endpoint-selection", "10.0.0.2"),
            ]);
            wk.request_headers(s, headers, headers_eos);
            let mut sent = 0;
            for e in &events {
                match e {
                    Event::RequestBody { len, eos } => {
                        let end = (sent + len).min(body.len());
                        wk.request_body(s, &body[sent..end], *eos);
                        sent = end;
                    }
                    Event::RequestTrailers => { wk.request_trailers(s, h(&[("x-t", "1")])); }
                    Event::ResponseHeaders { eos } => {
                        wk.set_stream_property(s, "upstream.address", b"10.0.0.2:8000");
                        wk.response_headers(s, h(&[(":status", "200")]), *eos);
                    }
                    Event::ResponseBody { eos } => { wk.response_body(s, b"data: x\n\n", *eos); }
                    Event::ResponseTrailers => { wk.response_trailers(s, h(&[("grpc-status", "0")])); }
                }
            }
            wk.finish(s);
        }
        prop_assert!(host.worker(0).failed().is_none(), "trap: {:?}", host.worker(0).failed());
        let errors: Vec<_> = host.worker(0).hostcall_errors().into_iter()
            .filter(|e| !matches!(e.status, host_sim::Status::NotFound | host_sim::Status::CasMismatch))
            .collect();
        prop_assert!(errors.is_empty(), "{errors:?}");
        prop_assert_eq!(inflight_total(&host), 0);
    }
}

// === in-flight counts after a VM dies ===

/// A VM that dies mid-stream never runs `on_done` for its streams; shared data outlives it.
/// Its counts must leave the shared table by themselves within the configured bound, while
/// the other worker's counts stay exact.
#[test]
fn counts_heal_after_a_vm_dies_mid_stream() {
    let ttl_ms = 2_000;
    let mut o = HostOptions::new(HostProfile::Envoy);
    o.vm_id = "wasm-epp".into();
    o.plugin_config = base_config(&format!(r#""inflightTtlMs":{ttl_ms}"#)).into_bytes();
    o.allow_on_headers_stop_iteration = true;
    o.failure_policy = FailurePolicy::FailReload;
    o.properties
        .insert("source.address".into(), b"127.0.0.1:45000".to_vec());
    let mut host = Host::new(plugin(), o, 2).expect("module loads");
    push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
    let mut open = Vec::new();
    for i in 0..8 {
        let w = i % 2;
        let sent = send(&mut host, w, &[], &chat_body(MODEL, &format!("tenant {i}"), "q"));
        assert_eq!(sent.status, None);
        open.push((w, sent.stream));
    }
    assert_eq!(inflight_total_ttl(&host, ttl_ms), 8);

    // Worker 0's VM dies with its 4 streams open: no on_done will ever release them.
    host.worker(0).kill_vm("injected runtime error");
    for (w, s) in &open {
        if *w == 0 {
            host.worker(0).finish(*s);
        }
    }
    // Within the bound (plus one heartbeat), without any new request, the table holds only
    // the live worker's 4 streams.
    host.advance_ms(ttl_ms + ttl_ms / 2);
    assert_eq!(inflight_total_ttl(&host, ttl_ms), 4, "the dead VM's counts expired");

    // The reloaded VM (fail_reload) and the survivor keep exact counts from then on.
    let sent = send(&mut host, 0, &[], &chat_body(MODEL, "after reload", "q"));
    assert_eq!(sent.status, None, "fresh VM routes");
    assert_eq!(host.worker(0).reloads, 1);
    assert_eq!(inflight_total_ttl(&host, ttl_ms), 5);
    // Long streams on live VMs are not expired: heartbeats keep them.
    for _ in 0..5 {
        host.advance_ms(ttl_ms);
    }
    assert_eq!(inflight_total_ttl(&host, ttl_ms), 5, "live streams survive many TTLs");
    host.worker(0).finish(sent.stream);
    for (w, s) in open {
        if w == 1 {
            host.worker(1).finish(s);
        }
    }
    assert_eq!(inflight_total_ttl(&host, ttl_ms), 0);
    no_traps(&mut host);
}

// === header values ===

/// A model name whose JSON escapes decode to CR LF (or NUL, or any other control byte) must not
/// reach a header: 400 with an OpenAI-style error, nothing forwarded, nothing counted.
#[test]
fn a_model_that_is_not_a_header_value_is_refused() {
    let mut host = host("");
    push(&mut host, 0, &snapshot(1, &PODS), TOKEN);
    for model in [
        r"m\r\nx-evil: 1",
        r"m\nx-evil: 1",
        r"m\u0000",
        r"m\u007f",
        r"m\u001b[31m",
        r" m",
        r"m\t",
    ] {
        let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        let sent = send(&mut host, 0, &[], body.as_bytes());
        assert_eq!(sent.status, Some(400), "{model}");
        assert!(sent.upstream.is_none(), "{model}: not forwarded");
        let v: serde_json::Value = serde_json::from_slice(&sent.reply_body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("header"),
            "{model}: {v}"
        );
        host.worker(0).finish(sent.stream);
    }
    // obs-text (non-ASCII UTF-8) and inner spaces are valid field values and pass (the static
    // endpoint serves every model; the snapshot's pods serve only MODEL).
    let mut host = self::host("");
    for model in ["modèle-7b", "my model"] {
        let sent = send(&mut host, 0, &[], &chat_body(model, "s", "q"));
        assert_eq!(sent.status, None, "{model}");
        assert_eq!(sent.header("x-gateway-model-name"), Some(model));
        host.worker(0).finish(sent.stream);
    }
    assert_eq!(inflight_total(&host), 0);
    no_traps(&mut host);
}

#[test]
fn a_rewrite_target_that_is_not_a_header_value_is_a_config_error() {
    let cfg = base_config(r#""models":{"rewrites":[{"model":"a","targets":[{"model":"b\r\nx: 1","weight":1}]}]}"#);
    let mut o = HostOptions::new(HostProfile::Envoy);
    o.plugin_config = cfg.into_bytes();
    assert!(Host::new(plugin(), o, 1).is_err(), "on_configure returns false");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// For any model string in any body, every header the module sends upstream is a valid
    /// field value; a refused model is answered 400.
    #[test]
    fn every_header_sent_upstream_is_a_valid_field_value(
        model in prop::collection::vec(any::<char>(), 1..40),
        raw in prop::collection::vec(any::<u8>(), 0..120),
        use_raw in any::<bool>(),
    ) {
        // Static endpoints serve any model, so every valid model is forwarded.
        let mut host = host("");
        let model: String = model.into_iter().collect();
        let body = if use_raw {
            [&br#"{"model":""#[..], &raw, br#"","prompt":"x"}"#].concat()
        } else {
            serde_json::json!({"model": model, "prompt": "hello"}).to_string().into_bytes()
        };
        let sent = send(&mut host, 0, &[], &body);
        if let Some(up) = &sent.upstream {
            for (k, v) in up {
                prop_assert!(valid_field_value(v), "{k}: {v:?}");
            }
        } else if !use_raw {
            prop_assert_eq!(sent.status, Some(400), "{:?}", model);
        }
        host.worker(0).finish(sent.stream);
        prop_assert!(host.worker(0).failed().is_none());
    }
}
