//! Header-map and buffer hostcalls as Envoy answers them, driven by hand-written WAT so that no
//! SDK wrapper hides a status or a pointer: each module below checks what one hostcall returns and
//! traps (`$check`) when it differs, and the Rust side checks what the host forwarded. The rules
//! and their public sources are listed in host-sim's crate docs ("Envoy profile: what is
//! modelled").

use host_sim::hostcalls::Callback;
use host_sim::{CallResponse, Forwarded, Headers, Host, HostOptions, HostProfile, Plugin, Status};

/// Imports, memory, a bump allocator and `$check` (traps when its argument is 0), shared by every
/// module below. Modules put their data below 4096 and use 16..48 as out-parameter slots.
const PRELUDE: &str = r#"
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $rep (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $rm (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $size (param i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $bstat (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $bget (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $bset (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 8192))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func $check (param i32) (if (i32.eqz (local.get 0)) (then unreachable)))
"#;

fn plugin(body: &str) -> Plugin {
    Plugin::from_bytes(format!("(module {PRELUDE} {body})").as_bytes()).unwrap()
}

fn hs(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Runs one request with `headers` (and `body`, if any) through the module and returns the host
/// and what it forwarded upstream; panics if a check in the module trapped.
fn forwarded(module: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> (Host, Forwarded) {
    let mut host = Host::new(&plugin(module), HostOptions::new(HostProfile::Envoy), 1).unwrap();
    let w = host.worker(0);
    let s = w.new_stream();
    w.request_headers(s, hs(headers), body.is_none());
    if let Some(b) = body {
        w.request_body(s, b, true);
    }
    assert!(w.failed().is_none(), "a check in the module failed: {:?}", w.failed());
    let up = w.upstream(s).cloned().expect("the request went upstream");
    (host, up)
}

#[test]
fn header_maps_and_body_reads_follow_envoy() {
    let module = r#"
      (data (i32.const 100) "X-Dup")
      (data (i32.const 110) "z")
      (data (i32.const 120) "X-Other")
      (data (i32.const 130) "x-missing")
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
        ;; the serialized map: 2 pairs (:path, x-dup)
        (call $check (i32.eqz (call $pairs (i32.const 0) (i32.const 16) (i32.const 20))))
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
    "#;
    let headers = [
        (":path", "/"),
        ("x-dup", "a"),
        ("x-other", "1"),
        ("X-Dup", "b"),
        ("X-Other", "2"),
    ];
    let (mut host, up) = forwarded(module, &headers, Some(b"hello world"));
    assert_eq!(up.headers, Some(hs(&[(":path", "/"), ("x-dup", "z")])));
    assert_eq!(up.body, b"hello world");
    assert!(host
        .worker(0)
        .hostcall_errors()
        .iter()
        .all(|e| e.call == "proxy_get_header_map_value"));
}

/// Envoy `replaceHeaderMapValue` calls `HeaderMapImpl::setCopy`, which since Envoy 1.19 is
/// `remove(key)` then `addCopy(key, value)`: every occurrence goes and one entry is added where a
/// new header goes (the end of the map, or the end of the pseudo-header block for `:` names).
#[test]
fn replace_removes_every_occurrence_and_adds_one_at_the_end() {
    let module = r#"
      (data (i32.const 100) "X-Dup")
      (data (i32.const 110) "z")
      (data (i32.const 120) ":path")
      (data (i32.const 130) "/new")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $check (i32.eqz (call $rep (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 110) (i32.const 1))))
        (call $check (i32.eqz (call $rep (i32.const 0) (i32.const 120) (i32.const 5) (i32.const 130) (i32.const 4))))
        (i32.const 0))
    "#;
    let headers = [
        (":path", "/"),
        (":method", "GET"),
        ("x-dup", "a"),
        ("x-other", "1"),
        ("X-Dup", "b"),
    ];
    let (_, up) = forwarded(module, &headers, None);
    let want = [(":method", "GET"), (":path", "/new"), ("x-other", "1"), ("x-dup", "z")];
    assert_eq!(up.headers, Some(hs(&want)));
}

/// Envoy `addHeaderMapValue` is `HeaderMapImpl::addCopy`: a new entry for most names (a second
/// `x-dup`, an empty `x-empty`), placed like any new header (`:method` joins the pseudo-headers in
/// front); but for Envoy's O(1) "inline" headers (`x-forwarded-for`, `content-type`, ...) the value
/// is appended to the one existing entry with a comma, and an empty value changes nothing.
#[test]
fn add_appends_an_entry_or_joins_an_inline_header_with_a_comma() {
    let module = r#"
      (data (i32.const 100) "x-dup")
      (data (i32.const 110) "c")
      (data (i32.const 120) ":method")
      (data (i32.const 130) "GET")
      (data (i32.const 140) "X-Forwarded-For")
      (data (i32.const 160) "b")
      (data (i32.const 170) "content-type")
      (data (i32.const 190) "x-empty")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $check (i32.eqz (call $add (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 110) (i32.const 1))))
        (call $check (i32.eqz (call $add (i32.const 0) (i32.const 120) (i32.const 7) (i32.const 130) (i32.const 3))))
        (call $check (i32.eqz (call $add (i32.const 0) (i32.const 140) (i32.const 15) (i32.const 160) (i32.const 1))))
        (call $check (i32.eqz (call $add (i32.const 0) (i32.const 170) (i32.const 12) (i32.const 110) (i32.const 0))))
        (call $check (i32.eqz (call $add (i32.const 0) (i32.const 190) (i32.const 7) (i32.const 110) (i32.const 0))))
        ;; the joined value is what a lookup sees: "a,b"
        (call $check (i32.eqz (call $get (i32.const 0) (i32.const 140) (i32.const 15) (i32.const 16) (i32.const 20))))
        (call $check (i32.eq (i32.load (i32.const 20)) (i32.const 3)))
        (call $check (i32.eq (i32.load8_u (i32.add (i32.load (i32.const 16)) (i32.const 1))) (i32.const 44)))
        (i32.const 0))
    "#;
    let headers = [
        (":path", "/"),
        ("x-forwarded-for", "a"),
        ("content-type", "text/plain"),
        ("x-dup", "a"),
    ];
    let (_, up) = forwarded(module, &headers, None);
    let want = [
        (":path", "/"),
        (":method", "GET"),
        ("x-forwarded-for", "a,b"),
        ("content-type", "text/plain"),
        ("x-dup", "a"),
        ("x-dup", "c"),
        ("x-empty", ""),
    ];
    assert_eq!(up.headers, Some(hs(&want)));
}

/// In request headers Envoy files the HTTP/1 name `host` under `:authority` (the `HostLegacy`
/// entry of the request map's static lookup table), so every hostcall on `host` acts on
/// `:authority`.
#[test]
fn host_is_authority_in_request_headers() {
    let module = r#"
      (data (i32.const 100) "Host")
      (data (i32.const 110) "host")
      (data (i32.const 120) "HOST")
      (data (i32.const 130) "c")
      (data (i32.const 140) "d")
      (data (i32.const 150) "e")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $check (i32.eqz (call $get (i32.const 0) (i32.const 100) (i32.const 4) (i32.const 16) (i32.const 20))))
        (call $check (i32.eq (i32.load (i32.const 20)) (i32.const 11)))
        (call $check (i32.eqz (call $rm (i32.const 0) (i32.const 110) (i32.const 4))))
        (call $check (i32.eq (call $get (i32.const 0) (i32.const 110) (i32.const 4) (i32.const 16) (i32.const 20)) (i32.const 1)))
        (call $check (i32.eqz (call $add (i32.const 0) (i32.const 110) (i32.const 4) (i32.const 130) (i32.const 1))))
        (call $check (i32.eqz (call $rep (i32.const 0) (i32.const 120) (i32.const 4) (i32.const 140) (i32.const 1))))
        (call $check (i32.eqz (call $add (i32.const 0) (i32.const 110) (i32.const 4) (i32.const 150) (i32.const 1))))
        (i32.const 0))
    "#;
    let headers = [(":authority", "example.com"), (":path", "/"), ("x-a", "1")];
    let (_, up) = forwarded(module, &headers, None);
    assert_eq!(
        up.headers,
        Some(hs(&[(":path", "/"), (":authority", "d,e"), ("x-a", "1")]))
    );
}

/// `bytes` as the string of a WAT data segment.
fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// Envoy `setHeaderMapPairs` removes every existing name, then `addCopy`s each pair in order, so
/// the new map follows the add rules: lower-case names, pseudo-headers in front, inline headers
/// joined, `host` filed as `:authority`.
#[test]
fn set_pairs_rebuilds_the_map_with_envoy_add_rules() {
    let pairs = hs(&[
        ("x-a", "1"),
        (":path", "/p"),
        ("X-Forwarded-For", "a"),
        ("x-forwarded-for", "b"),
        ("Host", "h"),
    ]);
    let buf = host_sim::abi::serialize_map(&pairs);
    let module = format!(
        r#"
      (data (i32.const 100) "{}")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $check (i32.eqz (call $set_pairs (i32.const 0) (i32.const 100) (i32.const {}))))
        (i32.const 0))
    "#,
        wat_bytes(&buf),
        buf.len()
    );
    let (_, up) = forwarded(&module, &[(":path", "/"), ("x-old", "1")], None);
    let want = [
        (":path", "/p"),
        (":authority", "h"),
        ("x-a", "1"),
        ("x-forwarded-for", "a,b"),
    ];
    assert_eq!(up.headers, Some(hs(&want)));
}

/// cpp-host parses the guest's buffer with `PairsUtil::toPairs`, which answers "no pairs" for
/// anything malformed (short, a missing NUL terminator, bytes left over); Envoy then clears the
/// map and the call returns Ok.
#[test]
fn malformed_pairs_clear_the_map_and_return_ok() {
    let good = host_sim::abi::serialize_map(&hs(&[("x-a", "1")]));
    let mut trailing = good.clone();
    trailing.push(0);
    let mut no_nul = good.clone();
    let key_end = 4 + 8 + 3; // count, one (key, value) length pair, "x-a"
    no_nul[key_end] = b'!';
    let module = format!(
        r#"
      (data (i32.const 100) "{good}")
      (data (i32.const 200) "{trailing}")
      (data (i32.const 300) "{no_nul}")
      (data (i32.const 400) "x-a")
      (func $set_then_clear (param $bad i32) (param $len i32)
        (call $check (i32.eqz (call $set_pairs (i32.const 0) (i32.const 100) (i32.const {n}))))
        (call $check (i32.eqz (call $get (i32.const 0) (i32.const 400) (i32.const 3) (i32.const 16) (i32.const 20))))
        (call $check (i32.eqz (call $set_pairs (i32.const 0) (local.get $bad) (local.get $len))))
        (call $check (i32.eq (call $get (i32.const 0) (i32.const 400) (i32.const 3) (i32.const 16) (i32.const 20)) (i32.const 1))))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $set_then_clear (i32.const 200) (i32.const {t}))
        (call $set_then_clear (i32.const 300) (i32.const {n}))
        ;; truncated: the good buffer without its last byte
        (call $set_then_clear (i32.const 100) (i32.const {short}))
        (i32.const 0))
    "#,
        good = wat_bytes(&good),
        trailing = wat_bytes(&trailing),
        no_nul = wat_bytes(&no_nul),
        n = good.len(),
        t = trailing.len(),
        short = good.len() - 1,
    );
    let (_, up) = forwarded(&module, &[(":path", "/")], None);
    assert_eq!(up.headers, Some(vec![]));
}

/// cpp-host `get_header_map_pairs` answers an empty map with `copyToPointerSize("")`: a null
/// pointer and size 0, nothing allocated, not a serialized zero count.
#[test]
fn empty_map_pairs_are_a_null_pointer_and_zero_size() {
    let module = r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        ;; an empty buffer is no pairs: the map is cleared
        (call $check (i32.eqz (call $set_pairs (i32.const 0) (i32.const 0) (i32.const 0))))
        (i32.store (i32.const 16) (i32.const 0x7777))
        (i32.store (i32.const 20) (i32.const 0x7777))
        (call $check (i32.eqz (call $pairs (i32.const 0) (i32.const 16) (i32.const 20))))
        (call $check (i32.eqz (i32.load (i32.const 16))))
        (call $check (i32.eqz (i32.load (i32.const 20))))
        (call $check (i32.eq (global.get $next) (i32.const 8192)))
        (i32.const 0))
    "#;
    let (_, up) = forwarded(module, &[(":path", "/")], None);
    assert_eq!(up.headers, Some(vec![]));
}

/// Envoy `getHeaderMapSize` answers `HeaderMap::byteSize()`: the sum of the names' and values'
/// lengths, not the size of the serialized pairs.
#[test]
fn header_map_size_is_envoy_byte_size() {
    let module = r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $check (i32.eqz (call $size (i32.const 0) (i32.const 16))))
        ;; ":path" "/" + "x-a" "bc"
        (call $check (i32.eq (i32.load (i32.const 16)) (i32.const 11)))
        (i32.const 0))
    "#;
    forwarded(module, &[(":path", "/"), ("x-a", "bc")], None);
}

/// Envoy `getHeaderMapSize` looks the map up with `getMap`, the accessor of the writing calls,
/// which has no http-call response maps: BadArgument there, while reading the same map's pairs
/// (`getConstMap`) works.
#[test]
fn header_map_size_of_an_http_call_response_is_bad_argument() {
    let call = host_sim::abi::serialize_map(&hs(&[(":method", "GET"), (":path", "/"), (":authority", "c")]));
    let module = format!(
        r#"
      (data (i32.const 100) "c")
      (data (i32.const 200) "{call}")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $check (i32.eqz (call $call (i32.const 100) (i32.const 1) (i32.const 200) (i32.const {len})
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 16))))
        (i32.const 1))
      (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
        (call $check (i32.eqz (call $pairs (i32.const 6) (i32.const 16) (i32.const 20))))
        (call $check (i32.eq (i32.load (i32.load (i32.const 16))) (i32.const 1)))
        (call $check (i32.eq (call $size (i32.const 6) (i32.const 24)) (i32.const 2))))
    "#,
        call = wat_bytes(&call),
        len = call.len()
    );
    let mut opts = HostOptions::new(HostProfile::Envoy);
    let answer = CallResponse {
        headers: hs(&[(":status", "200")]),
        ..CallResponse::default()
    };
    opts.clusters.insert("c".into(), Some(answer));
    let mut host = Host::new(&plugin(&module), opts, 1).unwrap();
    let w = host.worker(0);
    let s = w.new_stream();
    w.request_headers(s, hs(&[(":path", "/")]), true);
    assert!(w.failed().is_none(), "a check in the module failed: {:?}", w.failed());
    let errors: Vec<_> = w
        .hostcall_errors()
        .iter()
        .map(|e| (e.call, e.status, e.callback))
        .collect();
    assert_eq!(
        errors,
        [(
            "proxy_get_header_map_size",
            Status::BadArgument,
            Callback::HttpCallResponse
        )]
    );
}

/// cpp-host `get_buffer_bytes` clamps the range to the buffer and, when nothing is left (start
/// at or past the end, or length 0), writes a null pointer and size 0 and returns Ok.
#[test]
fn empty_body_range_writes_a_null_pointer_and_zero_size() {
    let module = r#"
      (func $empty (param $start i32) (param $len i32)
        (i32.store (i32.const 16) (i32.const 0x7777))
        (i32.store (i32.const 20) (i32.const 0x7777))
        (call $check (i32.eqz (call $bget (i32.const 0) (local.get $start) (local.get $len) (i32.const 16) (i32.const 20))))
        (call $check (i32.eqz (i32.load (i32.const 16))))
        (call $check (i32.eqz (i32.load (i32.const 20)))))
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
        ;; "hello world" is 11 bytes
        (call $empty (i32.const 11) (i32.const 5))
        (call $empty (i32.const 100) (i32.const 5))
        (call $empty (i32.const 3) (i32.const 0))
        (i32.const 0))
    "#;
    let (_, up) = forwarded(module, &[(":path", "/")], Some(b"hello world"));
    assert_eq!(up.body, b"hello world");
}

/// cpp-host `set_buffer_bytes` asks the host for the buffer before it reads the guest's bytes
/// (no buffer: NotFound, whatever the pointer), and Envoy refuses writes to a buffer that is not
/// an Envoy body (`BufferBase::copyFrom`: the VM and plugin configurations are strings):
/// BadArgument.
#[test]
fn set_buffer_bytes_refuses_configurations_and_checks_the_buffer_first() {
    let module = r#"
      (data (i32.const 100) "x")
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (call $check (i32.eq (call $bset (i32.const 6) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 1)) (i32.const 2)))
        (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (call $check (i32.eq (call $bset (i32.const 7) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 1)) (i32.const 2)))
        ;; no request body in on_configure, and a range outside memory: NotFound
        (call $check (i32.eq (call $bset (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0xffff0000) (i32.const 0x1000)) (i32.const 1)))
        (i32.const 1))
    "#;
    let mut opts = HostOptions::new(HostProfile::Envoy);
    opts.vm_config = b"vm".to_vec();
    opts.plugin_config = b"plugin".to_vec();
    let host = Host::new(&plugin(module), opts, 1);
    assert!(host.is_ok(), "a check in the module failed: {:?}", host.err());
}
