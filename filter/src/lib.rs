//! # wasm-epp filter: the proxy-wasm module
//!
//! Loaded by Envoy (`envoy.filters.http.wasm`), Istio (`WasmPlugin`) or GCP Service Extensions,
//! this module translates hostcalls into picker-core calls and back; every decision is made by
//! `picker_core::pick`. Build it with `./build.sh wasm` (→ `dist/wasm-epp.wasm`).
//!
//! ## Request path (Envoy / Istio, body mode)
//!
//! 1. Request headers: strip client-supplied routing headers (`x-gateway-destination-endpoint`,
//!    `…-served`, `…-subset`, the model header, and the conformance steering header unless
//!    `testMode`), so a client can never choose the pod. Snapshot pushes are taken here (below).
//!    Inference requests (`inferencePaths`, POST) return `Pause`: Envoy must run with
//!    `allow_on_headers_stop_iteration: true` (docs/proxy-wasm.md#the-allow_on_headers_stop_iteration-field).
//! 2. Request body: `Pause` until end of stream (Envoy buffers), 413 above `maxBodyBytes`; then
//!    scan once, pick, set `x-gateway-destination-endpoint` (ordered list) and the model header,
//!    `Continue`. Errors are OpenAI-style local replies: 400, 404, 413, 429 (`Retry-After`), 503.
//! 3. Response headers: learn the served endpoint from `upstream.address`; in `testMode` report
//!    it as `x-conformance-test-served-endpoint`.
//! 4. Done: release the in-flight count taken at the pick (also after resets and local replies).
//!
//! A body that ends with trailers is decided in the trailers callback. In headers-only mode
//! (`mode: headersOnly`) the pick happens in the headers callback and the headers go on; any
//! body then passes through untouched. Each stream is a state machine (`wasm::stream`) whose
//! states carry the right to write the request header map, so a write can only happen where
//! the host still holds the map.
//!
//! ## Shared data (Envoy / Istio only)
//!
//! * `wasm-epp/snapshot`: the encoded load snapshot, written only by a validated push whose
//!   sequence is newer (CAS); `wasm-epp/snapshot-seq`: its sequence, read per request so a worker
//!   decodes the snapshot only when it changed.
//! * `wasm-epp/inflight`: per-endpoint in-flight requests and tokens of all workers, one section
//!   per worker VM stamped with its last write, plus their sum ([`inflight`]). A VM that dies
//!   mid-stream leaves the table within `inflightTtlMs`: live VMs refresh their section on a
//!   timer, and sections past the time-to-live are ignored by readers and dropped by writers.
//!
//! * `wasm-epp/px/head`, `wasm-epp/px/<i>` (`prefixSync`, on by default): a ring of the prefix
//!   index insertions of all workers (picker-core `sync`). Each worker applies the others'
//!   records before it picks and appends its own after, so a prefix routed by one worker is
//!   matched by every other; 3 hostcalls per request plus one read per record from other
//!   workers since the last request (capped by `maxCatchUp`).
//!
//! Gateway replicas share nothing; cross-replica affinity comes from bounded-load consistent
//! hashing on the prompt prefix (picker-core `chash`).
//!
//! ## Snapshot intake
//!
//! `POST snapshot.path` with `Authorization: Bearer <token>` from an allowed source address
//! (default loopback): the body (≤ `snapshot.maxBytes`) is fully decoded and validated before it
//! is stored; replies 204, 400, 401, 403, 405, 409 (stale sequence) or 413. Never forwarded.
//!
//! ## GCP Service Extensions (`hostProfile: gcp`)
//!
//! The host has no shared data, timers, metrics or callouts, and header maps are reachable only
//! in their own header callback, so the module runs headers-only there: it copies the model hint
//! header into the model header (for URL-map routing to a backend service) and writes
//! `x-wasm-epp-affinity`, a hash of the affinity header, for the backend service's
//! `consistentHash.httpHeaderName`. It never calls an unsupported hostcall.
//!
//! ## Panics
//!
//! The module never calls `unwrap`/`expect` on host or request data. The SDK's hostcall wrappers
//! panic on any status they do not expect, so the module imports the hostcalls it makes itself
//! (`wasm::abi`) and treats every status as a value; only callback dispatch, logging, the clock,
//! the plugin configuration and `dispatch_http_call` go through the SDK. Unsupported hostcalls
//! are never made (GCP profile), and request headers are only written while the host still
//! holds them.
//!
//! ## Header values
//!
//! Every value written into a header is a [`headers::FieldValue`]: a valid RFC 9110 field value
//! of at most 1 KiB. A model name that is not one (CR, LF, NUL, other control bytes, leading or
//! trailing whitespace) is refused with 400 by the scanner; rewrite targets are checked at
//! configure time.

pub mod config;
pub mod headers;
pub mod inflight;
pub mod intake;
pub mod relay;
pub mod reply;

#[cfg(target_family = "wasm")]
mod wasm;
