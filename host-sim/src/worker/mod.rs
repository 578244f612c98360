//! One worker: a VM instance plus the HTTP filter state machine that drives it the way Envoy's
//! wasm filter (or GCP's host) would.
//!
//! Envoy rules modelled here, each with its section of `docs/proxy-wasm.md`:
//! - headers callback returns Continue → the header map is gone (`request_headers_ = nullptr`),
//!   later reads/writes get `BadArgument` (docs/proxy-wasm.md#header-and-body-phases);
//! - Pause at headers → `StopAllIterationAndWatermark` unless `allow_on_headers_stop_iteration`
//!   (then `StopIteration`): body and trailers are not delivered to the plugin while stopped-all
//!   (docs/proxy-wasm.md#header-and-body-phases, #trailers);
//! - Pause in a body callback → `StopIterationAndBuffer`: the host accumulates the body and the
//!   next callback sees the whole buffer; over the buffer limit → 413
//!   (docs/proxy-wasm.md#body-buffering-and-limits);
//! - `send_local_response` runs after the VM call returns and the reply passes through the
//!   plugin's own response callbacks (Envoy `encodeHeaders`, skipped only for `failStream`;
//!   docs/proxy-wasm.md#local-replies);
//! - a trap follows the failure policy (docs/proxy-wasm.md#failure-policies).
//!
//! Layout: this module (the [`Worker`], its streams, views, timers and queues), `filter` (the
//! filter state machine, one path for both directions) and `replies` (what happens after a VM
//! call: local replies, continue/close, http-call answers, the failure policy).

mod filter;
mod replies;

use std::collections::HashMap;
use std::sync::Arc;

use crate::abi::{Action, Direction, Headers};
use crate::history::{keep_recent, HISTORY_CAP};
use crate::hostcalls::{HostcallError, LogLine, StreamIo};
use crate::options::{FailurePolicy, HostOptions, HostProfile};
use crate::shared::VmGroup;
use crate::vm::{Invocation, Plugin, TrapInfo, Vm};
use crate::Error;

/// What one side of the filter forwarded (upstream request or downstream response).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forwarded {
    pub headers: Option<Headers>,
    pub body: Vec<u8>,
    pub trailers: Option<Headers>,
    /// End of stream was forwarded.
    pub end: bool,
}

/// How the stream stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The data of this step went on (to the upstream or to the client).
    Continued,
    /// The filter holds the stream (paused, buffering, or waiting for a call).
    Paused,
    /// The stream ended with a local reply (plugin-sent, 413, or failure 503).
    LocalReply,
    /// The stream was reset.
    Reset,
}

/// The result of one input step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// What the plugin's callback returned, if it was called.
    pub action: Option<Action>,
    pub flow: Flow,
}

/// A final local reply as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Immediate {
    pub status: u32,
    pub details: String,
    /// Sent by `failStream` (wasm_fail_stream) or by the host's buffer limit, not the plugin.
    pub by_host: bool,
}

/// One direction of a stream as the worker drives it: where the filter stands on that side,
/// and what went on to the next hop (the upstream for the request, the client for the response).
#[derive(Debug, Default, Clone)]
struct Side {
    /// Headers went on.
    headers_sent: bool,
    /// The headers callback ran.
    headers_seen: bool,
    /// Pause at headers without `allow_on_headers_stop_iteration`.
    stop_all: bool,
    /// Headers paused (either kind), not yet continued.
    headers_paused: bool,
    /// The last body callback paused: the host accumulates.
    buffering: bool,
    /// Body bytes held back from the next hop.
    held: Vec<u8>,
    /// Source end of stream was seen.
    eos_in: bool,
    trailers_in: Option<Headers>,
    /// What went on.
    out: Forwarded,
}

#[derive(Debug, Default)]
struct StreamDriver {
    ctx: Option<u32>,
    /// The VM generation (`Worker::reloads`) the context belongs to: a context dies with its
    /// VM, so a stream opened before a reload never reaches the new VM.
    vm_gen: u32,
    /// The filter is skipped (fail-open after a trap).
    bypass: bool,
    request: Side,
    response: Side,
    immediate: Option<Immediate>,
    /// Ended by local reply or reset: further input is ignored.
    ended: bool,
    reset: bool,
    in_local_reply: bool,
    finished: bool,
    trap: Option<TrapInfo>,
}

impl StreamDriver {
    fn side(&mut self, dir: Direction) -> &mut Side {
        match dir {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }
}

/// Handle of a stream on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId(pub u32);

#[derive(Debug, Default)]
struct TickState {
    period_ms: u32,
    next_ns: u64,
}

/// A worker: one VM instance (replaced on FAIL_RELOAD) and its streams.
pub struct Worker {
    plugin: Plugin,
    opts: Arc<HostOptions>,
    group: VmGroup,
    index: usize,
    vm: Option<Vm>,
    failed: Option<TrapInfo>,
    streams: HashMap<StreamId, StreamDriver>,
    next_stream: u32,
    tick: TickState,
    /// Every trap seen on this worker.
    pub traps: Vec<TrapInfo>,
    /// VM reloads done under FAIL_RELOAD.
    pub reloads: u32,
    retired_logs: Vec<LogLine>,
    retired_errors: Vec<HostcallError>,
    retired_invocations: Vec<Invocation>,
    /// Long-running use (`serve`): see [`Worker::bound_history`].
    bounded_history: bool,
}

impl Worker {
    /// For a worker that runs until stopped (the `serve` gateway): no per-invocation history,
    /// and log lines, hostcall errors and histogram samples kept to the most recent
    /// [`HISTORY_CAP`]..2× that, also across VM reloads. Tests and benches keep
    /// everything (the default).
    pub fn bound_history(&mut self) {
        self.bounded_history = true;
        self.group.bound_histograms(HISTORY_CAP);
        if let Some(vm) = self.vm.as_mut() {
            vm.record_invocations = false;
            vm.store.data_mut().bounded_history = true;
        }
    }

    pub fn start(plugin: Plugin, opts: Arc<HostOptions>, group: VmGroup, index: usize) -> Result<Worker, Error> {
        let vm = Vm::start(&plugin, opts.clone(), group.clone(), index)?;
        let mut w = Worker {
            plugin,
            opts,
            group,
            index,
            vm: Some(vm),
            failed: None,
            streams: HashMap::new(),
            next_stream: 1,
            tick: TickState::default(),
            traps: Vec::new(),
            reloads: 0,
            bounded_history: false,
            retired_logs: Vec::new(),
            retired_errors: Vec::new(),
            retired_invocations: Vec::new(),
        };
        w.rearm_tick();
        Ok(w)
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn vm(&self) -> Option<&Vm> {
        self.vm.as_ref()
    }

    pub fn vm_mut(&mut self) -> Option<&mut Vm> {
        self.vm.as_mut()
    }

    pub fn failed(&self) -> Option<&TrapInfo> {
        self.failed.as_ref()
    }

    /// Every log line of this worker, including those of VMs replaced by a reload.
    pub fn logs(&self) -> Vec<LogLine> {
        let mut v = self.retired_logs.clone();
        if let Some(vm) = &self.vm {
            v.extend(vm.state().logs.iter().cloned());
        }
        v
    }

    pub fn log_count(&self) -> usize {
        self.retired_logs.len() + self.vm.as_ref().map(|v| v.state().logs.len()).unwrap_or(0)
    }

    pub fn hostcall_errors(&self) -> Vec<HostcallError> {
        let mut v = self.retired_errors.clone();
        if let Some(vm) = &self.vm {
            v.extend(vm.state().errors.iter().cloned());
        }
        v
    }

    pub fn invocations(&self) -> Vec<Invocation> {
        let mut v = self.retired_invocations.clone();
        if let Some(vm) = &self.vm {
            v.extend(vm.invocations.iter().cloned());
        }
        v
    }

    pub fn clear_invocations(&mut self) {
        self.retired_invocations.clear();
        if let Some(vm) = &mut self.vm {
            vm.invocations.clear();
        }
    }

    /// Fault injection: the VM dies now, as on a runtime error the module did not cause
    /// (Envoy fails the VM for any `RuntimeError`, docs/proxy-wasm.md#failure-policies). Its open streams get no further
    /// callback, not even `on_done`; the failure policy applies to them and to new streams
    /// (`FailReload`: the next stream starts a fresh VM). Shared data outlives the VM, as in
    /// Envoy, so this is how tests check that shared state heals after a VM dies mid-stream.
    pub fn kill_vm(&mut self, reason: &str) {
        let t = TrapInfo {
            callback: "injected",
            message: reason.to_string(),
        };
        if let Some(vm) = self.vm.as_mut() {
            vm.trap = Some(t.clone());
        }
        self.mark_failed(t);
    }

    fn mark_failed(&mut self, t: TrapInfo) {
        self.traps.push(t.clone());
        self.failed = Some(t);
    }

    // === streams ===

    /// Open a stream. Depending on the worker's failure state the filter is live, skipped
    /// (fail-open), replaced by a fresh VM (fail-reload) or the stream is answered 503
    /// (fail-closed: every stream of the failed VM is answered 503, docs/proxy-wasm.md#failure-policies).
    pub fn new_stream(&mut self) -> StreamId {
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        let mut d = StreamDriver::default();
        if self.failed.is_some() {
            match self.opts.failure_policy {
                FailurePolicy::FailOpen => d.bypass = true,
                FailurePolicy::FailClosed => {}
                FailurePolicy::FailReload => {
                    if let Some(old) = self.vm.take() {
                        self.retired_logs.extend(old.state().logs.iter().cloned());
                        self.retired_errors.extend(old.state().errors.iter().cloned());
                        self.retired_invocations.extend(old.invocations.iter().cloned());
                        if self.bounded_history {
                            keep_recent(&mut self.retired_logs, HISTORY_CAP);
                            keep_recent(&mut self.retired_errors, HISTORY_CAP);
                        }
                    }
                    match Vm::start(&self.plugin, self.opts.clone(), self.group.clone(), self.index) {
                        Ok(vm) => {
                            self.vm = Some(vm);
                            if self.bounded_history {
                                self.bound_history();
                            }
                            self.failed = None;
                            self.reloads += 1;
                            self.rearm_tick();
                        }
                        Err(e) => {
                            self.failed = Some(TrapInfo {
                                callback: "reload",
                                message: e.to_string(),
                            });
                        }
                    }
                }
            }
        }
        if self.failed.is_none() && !d.bypass {
            if let Some(vm) = self.vm.as_mut() {
                match vm.create_http_context() {
                    Ok(ctx) => {
                        d.ctx = Some(ctx);
                        d.vm_gen = self.reloads;
                    }
                    Err(t) => {
                        self.traps.push(t.clone());
                        self.failed = Some(t);
                    }
                }
            }
        }
        self.streams.insert(id, d);
        id
    }

    fn drv(&mut self, id: StreamId) -> &mut StreamDriver {
        self.streams.entry(id).or_insert_with(|| StreamDriver {
            ended: true,
            ..Default::default()
        })
    }

    /// Is the plugin live for this stream? Handles a VM that failed earlier.
    fn live(&mut self, id: StreamId) -> Option<u32> {
        let failed = self.failed.is_some();
        let policy = self.opts.failure_policy;
        let generation = self.reloads;
        let d = self.drv(id);
        if d.bypass || d.ended {
            return None;
        }
        if failed || d.ctx.is_none() || d.vm_gen != generation {
            // The VM failed under this stream (or before it): apply the policy.
            match policy {
                FailurePolicy::FailOpen => {
                    d.bypass = true;
                }
                _ => {
                    self.fail_closed(id);
                }
            }
            return None;
        }
        d.ctx
    }

    fn io(&mut self, ctx: u32) -> Option<&mut StreamIo> {
        self.vm.as_mut()?.state_mut().streams.get_mut(&ctx)
    }

    /// End the stream: `on_done`, `on_log` (Envoy only; not in GCP's list, docs/proxy-wasm.md#supported-subset),
    /// `on_delete`. Spec order: on_log runs after done and before delete (docs/proxy-wasm.md#context-lifecycle).
    pub fn finish(&mut self, id: StreamId) {
        let d = self.drv(id);
        if d.finished {
            return;
        }
        d.finished = true;
        let (ctx, vm_gen) = (d.ctx, d.vm_gen);
        let Some(ctx) = ctx else { return };
        // A context that died with its VM (trap, kill, reload) gets no on_done: this is the
        // case a module's shared state must survive.
        if vm_gen != self.reloads || self.vm.as_ref().map(|v| v.trap.is_some()).unwrap_or(true) {
            return;
        }
        let gcp = self.opts.profile == HostProfile::Gcp;
        let Some(vm) = self.vm.as_mut() else { return };
        let r = (|| -> Result<(), TrapInfo> {
            let done = vm.on_done(ctx)?;
            if !gcp {
                vm.on_log(ctx)?;
            }
            if done || vm.state().done_contexts.contains(&ctx) {
                vm.on_delete(ctx)?;
            }
            Ok(())
        })();
        if let Err(t) = r {
            self.mark_failed(t);
        }
    }

    // === views ===

    /// What went upstream (the request as the filter let it through).
    pub fn upstream(&self, id: StreamId) -> Option<&Forwarded> {
        self.forwarded(id, Direction::Request)
    }

    /// What went to the client (the response as the filter let it through).
    pub fn downstream(&self, id: StreamId) -> Option<&Forwarded> {
        self.forwarded(id, Direction::Response)
    }

    /// What went on in direction `dir`: [`Worker::upstream`] or [`Worker::downstream`].
    pub fn forwarded(&self, id: StreamId, dir: Direction) -> Option<&Forwarded> {
        self.streams.get(&id).map(|d| match dir {
            Direction::Request => &d.request.out,
            Direction::Response => &d.response.out,
        })
    }

    pub fn immediate(&self, id: StreamId) -> Option<&Immediate> {
        self.streams.get(&id).and_then(|d| d.immediate.as_ref())
    }

    pub fn was_reset(&self, id: StreamId) -> bool {
        self.streams.get(&id).map(|d| d.reset).unwrap_or(false)
    }

    pub fn stream_trap(&self, id: StreamId) -> Option<&TrapInfo> {
        self.streams.get(&id).and_then(|d| d.trap.as_ref())
    }

    pub fn context_of(&self, id: StreamId) -> Option<u32> {
        self.streams.get(&id).and_then(|d| d.ctx)
    }

    /// Host-side data of the stream's context (headers maps, filter state, …).
    pub fn stream_io(&self, id: StreamId) -> Option<&StreamIo> {
        let ctx = self.context_of(id)?;
        self.vm.as_ref()?.state().streams.get(&ctx)
    }

    /// Set a per-stream property (e.g. `upstream.address` once the router picked a host).
    pub fn set_stream_property(&mut self, id: StreamId, path: &str, value: &[u8]) {
        if let Some(ctx) = self.context_of(id) {
            if let Some(io) = self.io(ctx) {
                io.stream_properties.insert(path.to_string(), value.to_vec());
            }
        }
    }

    /// Drop a finished stream's bookkeeping (serve mode).
    pub fn forget(&mut self, id: StreamId) {
        self.streams.remove(&id);
    }

    // === timers and queues ===

    fn rearm_tick(&mut self) {
        let period = self.vm.as_ref().map(|v| v.state().tick_period_ms).unwrap_or(0);
        if period != self.tick.period_ms {
            self.tick.period_ms = period;
            self.tick.next_ns = self.opts.clock.now_ns() + u64::from(period) * 1_000_000;
        }
    }

    /// Fire due ticks (re-armed after each callback, docs/proxy-wasm.md#timers) and deliver posted queue-ready
    /// notifications. Returns the number of callbacks run. Bounded.
    pub fn run_timers_and_queues(&mut self) -> usize {
        let mut n = 0;
        if self.opts.profile == HostProfile::Gcp {
            // No timers or queues on GCP (docs/proxy-wasm.md#supported-subset).
            return 0;
        }
        self.rearm_tick();
        for _ in 0..10_000 {
            let now = self.opts.clock.now_ns();
            if self.tick.period_ms == 0 || now < self.tick.next_ns || self.failed.is_some() {
                break;
            }
            let Some(vm) = self.vm.as_mut() else { break };
            if let Err(t) = vm.on_tick() {
                self.mark_failed(t);
                break;
            }
            n += 1;
            while self.answer_one_call() {}
            let period = self.vm.as_ref().map(|v| v.state().tick_period_ms).unwrap_or(0);
            self.tick.period_ms = period;
            self.tick.next_ns += u64::from(period) * 1_000_000;
        }
        for _ in 0..1000 {
            let ready = self.group.take_ready(self.index);
            if ready.is_empty() || self.failed.is_some() {
                break;
            }
            for (ctx, token) in ready {
                let Some(vm) = self.vm.as_mut() else { break };
                if let Err(t) = vm.on_queue_ready(ctx, token) {
                    self.mark_failed(t);
                    break;
                }
                n += 1;
            }
        }
        n
    }
}
