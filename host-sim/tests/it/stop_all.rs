//! While a headers callback's Pause stops all iteration (no `allow_on_headers_stop_iteration`),
//! the plugin's trailers callback is not called: trailers wait in the host with the body
//! (Envoy `FilterManager::decodeTrailers`/`encodeTrailers` return at a filter that `stoppedAll()`,
//! `source/common/http/filter_manager.cc`). Hand-written WAT: a trailers callback traps.

use host_sim::{Flow, Headers, Host, HostOptions, HostProfile, Plugin};

/// Request and response headers callbacks return `req`/`resp` (0 Continue, 1 Pause); both
/// trailers callbacks trap.
fn module(req: u32, resp: u32) -> Plugin {
    let wat = format!(
        r#"(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const {req}))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const {resp}))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) unreachable)
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32) unreachable))"#
    );
    Plugin::from_bytes(wat.as_bytes()).unwrap()
}

fn hs(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn request_trailers_wait_while_request_headers_stop_all() {
    let mut host = Host::new(&module(1, 0), HostOptions::new(HostProfile::Envoy), 1).unwrap();
    let w = host.worker(0);
    let s = w.new_stream();
    assert_eq!(w.request_headers(s, hs(&[(":path", "/")]), false).flow, Flow::Paused);
    assert_eq!(w.request_body(s, b"body", false).flow, Flow::Paused);
    let step = w.request_trailers(s, hs(&[("x-t", "1")]));
    assert_eq!((step.action, step.flow), (None, Flow::Paused));
    assert!(w.failed().is_none(), "the trailers callback ran: {:?}", w.failed());
    assert_eq!(w.upstream(s).unwrap().trailers, None);
}

#[test]
fn response_trailers_wait_while_response_headers_stop_all() {
    let mut host = Host::new(&module(0, 1), HostOptions::new(HostProfile::Envoy), 1).unwrap();
    let w = host.worker(0);
    let s = w.new_stream();
    assert_eq!(w.request_headers(s, hs(&[(":path", "/")]), true).flow, Flow::Continued);
    assert_eq!(
        w.response_headers(s, hs(&[(":status", "200")]), false).flow,
        Flow::Paused
    );
    assert_eq!(w.response_body(s, b"body", false).flow, Flow::Paused);
    let step = w.response_trailers(s, hs(&[("grpc-status", "0")]));
    assert_eq!((step.action, step.flow), (None, Flow::Paused));
    assert!(w.failed().is_none(), "the trailers callback ran: {:?}", w.failed());
    assert_eq!(w.downstream(s).unwrap().trailers, None);
}
