//! # e2e: wasm-epp end to end, over loopback
//!
//! The whole data path (README "Layout") with nothing mocked:
//!
//! ```text
//!  load (this crate) ──HTTP──▶ host-sim gateway ──▶ podsim pods (fake vLLM, simulated H100 timing)
//!                              │ dist/wasm-epp.wasm           ▲ /metrics
//!                              ▲ POST snapshot                │
//!                              └──────────── collector ───────┘
//! ```
//!
//! - [`stack`] starts the parts in this process: podsim pods ([`podsim::serve::start_pods`]),
//!   the compiled module in host-sim's gateway (Envoy profile, `allow_on_headers_stop_iteration`
//!   on, two workers sharing one VM id), and the collector (`collector::run`, sidecar mode,
//!   static targets, pushing to the gateway's snapshot path with a bearer token). Everything it
//!   starts stops when its handle drops or the process ends, Ctrl-C included.
//! - [`load`] is the client: streaming OpenAI chat requests, time to first token read off the SSE
//!   stream, and a replayer for podsim traces in scaled real time.
//! - `src/bin/demo.rs` is `./build.sh demo`; `tests/e2e.rs` holds the conformance-style tests.
//!
//! Times reported by the demo are simulated seconds: the pods run `speed` × faster than real
//! time, and every measured duration is multiplied back by `speed`.

#![forbid(unsafe_code)]

pub mod load;
pub mod progress;
pub mod stack;

use picker_core::snapshot::Snapshot;

/// The snapshot the gateway's module has stored, if any.
pub fn stored_snapshot(gw: &host_sim::serve::Gateway) -> Option<Snapshot> {
    stored_in(gw.group())
}

/// The snapshot stored in a gateway's shared-data namespace, if any.
pub fn stored_in(group: &host_sim::VmGroup) -> Option<Snapshot> {
    let (bytes, _) = group.get_data(filter::intake::KEY_SNAPSHOT).ok()?;
    Snapshot::decode(&bytes).ok()
}

/// Requests the module counts as in flight, summed over endpoints (0 when nothing is stored).
pub fn inflight_total(gw: &host_sim::serve::Gateway) -> u64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match gw.group().get_data(filter::inflight::KEY_INFLIGHT) {
        Ok((bytes, _)) => filter::inflight::total_requests(&bytes, now_ms, filter::config::DEFAULT_INFLIGHT_TTL_MS),
        Err(_) => 0,
    }
}

/// Waits until the stored snapshot has `ready` ready endpoints; false on timeout.
pub async fn wait_for_ready(gw: &host_sim::serve::Gateway, ready: usize, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if stored_snapshot(gw).is_some_and(|s| s.endpoints.iter().filter(|e| e.ready).count() == ready) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
