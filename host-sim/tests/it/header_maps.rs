//! Header-map and buffer hostcalls as Envoy answers them, driven by hand-written WAT: names match
//! whatever their letter case, a lookup sees the first of repeated values, replace leaves one
//! occurrence in place, remove drops all, the serialized map has the size `get_header_map_size`
//! announced, and a body read is clamped to the buffer.

use host_sim::{Host, HostOptions, Plugin, Profile};

const WAT: &str = r#"
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $rep (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $rm (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $size (param i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $bstat (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $bget (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "X-Dup")
  (data (i32.const 110) "z")
  (data (i32.const 120) "X-Other")
  (data (i32.const 130) "x-missing")
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func $check (param i32) (if (i32.eqz (local.get 0)) (then unreachable)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; the first of two x-dup values, looked up as "X-Dup"
    (call $check (i32.eqz (call $get (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 16) (i32.const 20))))
    (call $check (i32.eq (i32.load (i32.const 20)) (i32.const 1)))
    (call $check (i32.eq (i32.load8_u (i32.load (i32.const 16))) (i32.const 97)))
    ;; a missing name: NotFound
    (call $check (i32.eq (call $get (i32.const 0) (i32.const 130) (i32.const 9) (i32.const 16) (i32.const 20)) (i32.const 1)))
    ;; replace "X-Dup" with "z"; remove "X-Other" (both occurrences)
    (call $check (i32.eqz (call $rep (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 110) (i32.const 1))))
    (call $check (i32.eqz (call $rm (i32.const 0) (i32.const 120) (i32.const 7))))
    ;; the serialized map: as long as announced, and 2 pairs (:path, x-dup)
    (call $check (i32.eqz (call $size (i32.const 0) (i32.const 24))))
    (call $check (i32.eqz (call $pairs (i32.const 0) (i32.const 16) (i32.const 20))))
    (call $check (i32.eq (i32.load (i32.const 20)) (i32.load (i32.const 24))))
    (call $check (i32.eq (i32.load (i32.load (i32.const 16))) (i32.const 2)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    ;; "hello world": status says 11 bytes; bytes 6.. with a max past the end are "world"
    (call $check (i32.eqz (call $bstat (i32.const 0) (i32.const 20) (i32.const 24))))
    (call $check (i32.eq (i32.load (i32.const 20)) (i32.const 11)))
    (call $check (i32.eqz (call $bget (i32.const 0) (i32.const 6) (i32.const 100) (i32.const 16) (i32.const 20))))
    (call $check (i32.eq (i32.load (i32.const 20)) (i32.const 5)))
    (call $check (i32.eq (i32.load8_u (i32.load (i32.const 16))) (i32.const 119)))
    (call $check (i32.eq (i32.load8_u (i32.add (i32.load (i32.const 16)) (i32.const 4))) (i32.const 100)))
    (i32.const 0))
)
"#;

#[test]
fn header_maps_and_body_reads_follow_envoy() {
    let plugin = Plugin::from_bytes(WAT.as_bytes()).unwrap();
    let mut host = Host::new(&plugin, HostOptions::new(Profile::Envoy), 1).unwrap();
    let w = host.worker(0);
    let s = w.new_stream();
    let headers = [
        (":path", "/"),
        ("x-dup", "a"),
        ("x-other", "1"),
        ("X-Dup", "b"),
        ("X-Other", "2"),
    ];
    w.request_headers(
        s,
        headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        false,
    );
    w.request_body(s, b"hello world", true);
    assert!(w.failed().is_none(), "a check in the module failed: {:?}", w.failed());
    let up = w.upstream(s).unwrap();
    assert_eq!(
        up.headers.as_deref(),
        Some(
            &[
                (":path".to_string(), "/".to_string()),
                ("x-dup".to_string(), "z".to_string())
            ][..]
        )
    );
    assert_eq!(up.body, b"hello world");
    assert!(w
        .hostcall_errors()
        .iter()
        .all(|e| e.call == "proxy_get_header_map_value"));
}
