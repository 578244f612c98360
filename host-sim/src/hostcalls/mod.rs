//! Per-VM host state (`Store<HostState>`) and the ABI v0.2.1 + WASI preview1 imports.
//!
//! Every hostcall either returns a proxy-wasm status to the guest (guest misbehaviour such as a
//! bad pointer or an unknown map type is a status, never a host panic) or propagates a trap that
//! happened while the host called back into the guest allocator.
//!
//! - [`state`]: [`HostState`], the `Store` data, and the records it keeps ([`StreamIo`], …).
//! - `guest`: guest memory helpers; `hostcall`: the GCP gate, error recording and the
//!   `hostcall!` registration macro.
//! - One module per hostcall family, each with its own registration function: `lifecycle`
//!   (logging, time, ticks, contexts), `buffers`, `header_maps` (with `header_map_impl`, Envoy's
//!   `HeaderMapImpl` rules), `stream_control`, `calls` (http/gRPC), `shared_data` (shared data
//!   and queues), `metrics`, `properties`, `foreign` (foreign functions), `wasi`.

mod buffers;
mod calls;
mod foreign;
mod guest;
mod header_map_impl;
mod header_maps;
mod hostcall;
mod lifecycle;
mod metrics;
mod properties;
mod shared_data;
pub mod state;
mod stream_control;
mod wasi;

use wasmtime::Linker;

pub use state::{
    Callback, ContextIdHasher, HalfStream, HostState, HostcallError, LocalReply, LogLine, MemLimiter, PendingCall,
    StreamIo, Streams,
};
pub(crate) use wasi::{ERRNO_NOSYS, WASI_DEFINED};

/// Define every `env.proxy_*` import of ABI v0.2.1 and the WASI subset, family by family.
pub fn define_imports(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    lifecycle::define(l)?;
    buffers::define(l)?;
    header_maps::define(l)?;
    stream_control::define(l)?;
    calls::define(l)?;
    shared_data::define(l)?;
    metrics::define(l)?;
    properties::define(l)?;
    foreign::define(l)?;
    wasi::define(l)?;
    Ok(())
}
