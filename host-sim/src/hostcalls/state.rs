//! The state of one VM instance (the wasmtime `Store` data) and the host-side records the
//! hostcalls keep: stream contexts, log lines, hostcall errors, local replies, pending calls.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use crate::abi::{Direction, Headers, LogLevel, Status};
use crate::history::{keep_recent, HISTORY_CAP};
use crate::options::{CallResponse, HostOptions, HostProfile};
use crate::shared::VmGroup;

/// A guest callback, as the host tracks which one is running ([`HostState::callback`]; `Idle`
/// between calls). Drives the buffer and map access rules. Not to be confused with a test
/// case's `case::Phase` (an input step and what it should produce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callback {
    Idle,
    Init,
    ContextCreate,
    VmStart,
    Configure,
    Tick,
    QueueReady,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    HttpCallResponse,
    Log,
    Done,
    Delete,
}

impl Callback {
    /// The headers callback of `dir`.
    pub fn headers(dir: Direction) -> Callback {
        match dir {
            Direction::Request => Callback::RequestHeaders,
            Direction::Response => Callback::ResponseHeaders,
        }
    }

    /// The body callback of `dir`.
    pub fn body(dir: Direction) -> Callback {
        match dir {
            Direction::Request => Callback::RequestBody,
            Direction::Response => Callback::ResponseBody,
        }
    }

    /// The trailers callback of `dir`.
    pub fn trailers(dir: Direction) -> Callback {
        match dir {
            Direction::Request => Callback::RequestTrailers,
            Direction::Response => Callback::ResponseTrailers,
        }
    }
}

/// One line the guest logged (`proxy_log`, or WASI stdout/stderr at `Info`/`Error`).
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: LogLevel,
    pub context_id: u32,
    pub message: String,
}

/// A hostcall that returned an error status to the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct HostcallError {
    pub call: &'static str,
    pub status: Status,
    pub callback: Callback,
    pub context_id: u32,
}

/// A local reply requested with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalReply {
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Headers,
    pub grpc_status: i32,
}

/// An outstanding `proxy_http_call`.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCall {
    pub token: u32,
    pub context_id: u32,
    pub cluster: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout_ms: u32,
}

/// Host-side data of one direction of an HTTP stream context: its header map, trailers and
/// body buffer as the guest sees them, and what the guest asked the host to do with it.
#[derive(Debug, Clone, Default)]
pub struct HalfStream {
    pub headers: Headers,
    /// Envoy keeps `request_headers_` (`response_headers_`) only until `decodeHeaders`
    /// (`encodeHeaders`) returns Continue (docs/proxy-wasm.md#header-and-body-phases).
    pub headers_live: bool,
    /// Headers already went on (to the router, or to the client): later writes have no effect
    /// there.
    pub headers_sent: bool,
    pub trailers: Headers,
    pub trailers_live: bool,
    /// The body buffer the guest sees (`getBuffer(HttpRequestBody)` / `HttpResponseBody`).
    pub body: Vec<u8>,
    pub body_live: bool,
    /// `proxy_continue_stream` was called for this direction.
    pub continue_requested: bool,
    /// `proxy_close_stream` was called for this direction.
    pub close_requested: bool,
}

/// Host-side data of one HTTP stream context.
#[derive(Debug, Clone, Default)]
pub struct StreamIo {
    pub request: HalfStream,
    pub response: HalfStream,
    pub local_reply: Option<LocalReply>,
    /// `set_envoy_filter_state` writes (key → bytes).
    pub filter_state: BTreeMap<String, Vec<u8>>,
    /// `proxy_set_property` writes (dotted path → bytes).
    pub set_properties: BTreeMap<String, Vec<u8>>,
    /// Properties the host knows about this stream (`upstream.address`, …).
    pub stream_properties: BTreeMap<String, Vec<u8>>,
    /// Envoy with ABI 0.2.1 clears the route cache on every request-header mutation, and the
    /// `clear_route_cache` foreign function does it explicitly (docs/proxy-wasm.md#route-cache).
    pub route_cache_clears: u32,
    /// Header writes made after the headers were forwarded (they return Ok in Envoy but change
    /// nothing upstream).
    pub late_mutations: Vec<String>,
    /// GCP: the clock is frozen at stream creation (docs/proxy-wasm.md#supported-subset).
    pub frozen_ns: u64,
}

/// Stream contexts by context id. Almost every hostcall looks up the effective context, so the
/// map hashes the host-assigned `u32` id with one multiply instead of SipHash (Envoy holds a
/// pointer to the context; no untrusted input chooses these keys).
pub type Streams = HashMap<u32, StreamIo, BuildHasherDefault<ContextIdHasher>>;

/// Fibonacci hashing of a context id (see [`Streams`]).
#[derive(Default)]
pub struct ContextIdHasher(u64);

impl Hasher for ContextIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = (u64::from(id) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Memory cap per VM (wasmtime `ResourceLimiter`).
#[derive(Debug)]
pub struct MemLimiter {
    pub max_bytes: usize,
    pub denied: bool,
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The state of one VM instance (one `Store`).
pub struct HostState {
    pub opts: Arc<HostOptions>,
    pub group: VmGroup,
    pub worker: usize,
    pub memory: Option<Memory>,
    /// The guest allocator. An `Arc` because cloning a `TypedFunc` clones its registered type
    /// (several atomic reference counts), and every value copied out to the guest calls it.
    pub alloc: Option<Arc<TypedFunc<i32, i32>>>,
    /// The context hostcalls act on (`proxy_set_effective_context` changes it).
    pub effective: u32,
    /// The guest callback that is running.
    pub callback: Callback,
    pub root_context: u32,
    pub streams: Streams,
    pub tick_period_ms: u32,
    pub logs: Vec<LogLine>,
    pub errors: Vec<HostcallError>,
    /// Keep only the most recent [`HISTORY_CAP`]..2×[`HISTORY_CAP`] log lines and hostcall
    /// errors (the `serve` gateway, which runs for as long as it is left running); tests and
    /// benches keep everything.
    pub bounded_history: bool,
    pub next_call_token: u32,
    pub calls: Vec<PendingCall>,
    /// The response being delivered by `on_http_call_response`.
    pub call_response: Option<CallResponse>,
    pub rng: u64,
    pub limiter: MemLimiter,
    pub done_contexts: Vec<u32>,
    /// Bytes written to WASI stdout/stderr that do not yet end in a newline.
    pub stdio_partial: [Vec<u8>; 2],
}

impl StreamIo {
    pub fn half(&self, dir: Direction) -> &HalfStream {
        match dir {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        }
    }

    pub fn half_mut(&mut self, dir: Direction) -> &mut HalfStream {
        match dir {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }
}

impl HostState {
    pub fn new(opts: Arc<HostOptions>, group: VmGroup, worker: usize) -> HostState {
        let max = opts.memory_limit;
        let seed = opts.random_seed ^ ((worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        HostState {
            opts,
            group,
            worker,
            memory: None,
            alloc: None,
            effective: 0,
            callback: Callback::Idle,
            root_context: 0,
            streams: Streams::default(),
            tick_period_ms: 0,
            logs: Vec::new(),
            errors: Vec::new(),
            bounded_history: false,
            next_call_token: 0,
            calls: Vec::new(),
            call_response: None,
            rng: seed | 1,
            limiter: MemLimiter {
                max_bytes: max,
                denied: false,
            },
            done_contexts: Vec::new(),
            stdio_partial: [Vec::new(), Vec::new()],
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        if self.opts.profile == HostProfile::Gcp {
            if let Some(s) = self.streams.get(&self.effective) {
                // GCP: the clock is set at context creation and kept frozen (docs/proxy-wasm.md#supported-subset).
                return s.frozen_ns;
            }
        }
        self.opts.clock.now_ns()
    }

    pub(crate) fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic per seed and worker.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Record a line the guest logged, on the effective context (bounded when
    /// [`HostState::bounded_history`] is on).
    pub(crate) fn push_log(&mut self, level: LogLevel, message: String) {
        let context_id = self.effective;
        self.logs.push(LogLine {
            level,
            context_id,
            message,
        });
        if self.bounded_history {
            keep_recent(&mut self.logs, HISTORY_CAP);
        }
    }

    pub(crate) fn stream(&mut self) -> Option<&mut StreamIo> {
        self.streams.get_mut(&self.effective)
    }
}
