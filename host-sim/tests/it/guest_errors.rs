//! Guest misbehaviour is a status or a reported trap, never a host panic (hand-written WAT).

use host_sim::{Host, HostOptions, HostProfile, Plugin, Status};

const WAT: &str = r#"
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $ghv (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $gbb (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $dm (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    ;; a log message pointer outside linear memory: InvalidMemoryAccess (6)
    (if (i32.ne (call $log (i32.const 2) (i32.const 0xFFFFFF00) (i32.const 1000)) (i32.const 6))
      (then (return (i32.const 0))))
    ;; a 2 GiB length: rejected before the host allocates anything
    (if (i32.ne (call $log (i32.const 2) (i32.const 0) (i32.const 0x7FFFFFFF)) (i32.const 6))
      (then (return (i32.const 0))))
    ;; an unknown map type: BadArgument (2)
    (if (i32.ne (call $ghv (i32.const 99) (i32.const 0) (i32.const 1) (i32.const 16) (i32.const 20)) (i32.const 2))
      (then (return (i32.const 0))))
    ;; plugin configuration outside on_configure: NotFound (1)
    (if (i32.ne (call $gbb (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 16) (i32.const 20)) (i32.const 1))
      (then (return (i32.const 0))))
    ;; a metric type that does not exist: BadArgument (2)
    (if (i32.ne (call $dm (i32.const 7) (i32.const 0) (i32.const 1) (i32.const 16)) (i32.const 2))
      (then (return (i32.const 0))))
    (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    unreachable)
)
"#;

#[test]
fn bad_guest_arguments_get_statuses_and_a_trap_is_contained() {
    let plugin = Plugin::from_bytes(WAT.as_bytes()).unwrap();
    let mut h =
        Host::new(&plugin, HostOptions::new(HostProfile::Envoy), 1).expect("on_vm_start saw the right statuses");
    let errs: Vec<(&str, Status)> = h.workers[0]
        .hostcall_errors()
        .iter()
        .map(|e| (e.call, e.status))
        .collect();
    assert_eq!(
        errs,
        [
            ("proxy_log", Status::InvalidMemoryAccess),
            ("proxy_log", Status::InvalidMemoryAccess),
            ("proxy_get_header_map_value", Status::BadArgument),
            ("proxy_get_buffer_bytes", Status::NotFound),
            ("proxy_define_metric", Status::BadArgument),
        ]
    );
    let w = h.worker(0);
    let s = w.new_stream();
    w.request_headers(s, vec![(":path".into(), "/".into())], true);
    assert_eq!(w.immediate(s).unwrap().status, 503);
    let t = w.failed().unwrap();
    assert_eq!(t.callback, "proxy_on_request_headers");
    assert!(t.message.contains("unreachable"), "{}", t.message);
}

#[test]
fn gcp_answers_unimplemented_for_metrics() {
    let plugin = Plugin::from_bytes(WAT.as_bytes()).unwrap();
    // Under GCP define_metric is not in the documented subset: 12, so on_vm_start fails.
    let r = Host::new(&plugin, HostOptions::new(HostProfile::Gcp), 1);
    assert!(matches!(r, Err(host_sim::Error::Rejected(_))), "{:?}", r.err());
}
