//! One worker: a VM instance plus the HTTP filter state machine that drives it the way Envoy's
//! wasm filter (or GCP's host) would.
//!
//! Envoy rules modelled here, each cited where it is applied (reference `proxywasm.md`):
//! - headers callback returns Continue → the header map is gone (`request_headers_ = nullptr`),
//!   later reads/writes get `BadArgument` (§0.3, §4.7.3);
//! - Pause at headers → `StopAllIterationAndWatermark` unless `allow_on_headers_stop_iteration`
//!   (then `StopIteration`): body is not delivered to the plugin while stopped-all (§4.7.1-2, §4.7.4);
//! - Pause in a body callback → `StopIterationAndBuffer`: the host accumulates the body and the
//!   next callback sees the whole buffer; over the buffer limit → 413 (§1.3, §4.10);
//! - `send_local_response` runs after the VM call returns and the reply passes through the
//!   plugin's own response callbacks (Envoy `encodeHeaders`, skipped only for `failStream`);
//! - a trap follows the failure policy (§4.2).

use std::collections::HashMap;
use std::sync::Arc;

use crate::abi::{lower_names, Action, Headers};
use crate::host::{LocalReply, LogLine};
use crate::options::{CallResponse, FailurePolicy, HostOptions, Profile};
use crate::shared::VmGroup;
use crate::vm::{Plugin, TrapInfo, Vm};
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

#[derive(Debug, Default, Clone)]
struct Dir {
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
}

#[derive(Debug, Default)]
struct StreamDriver {
    ctx: Option<u32>,
    /// The VM generation (`Worker::reloads`) the context belongs to: a context dies with its
    /// VM, so a stream opened before a reload never reaches the new VM.
    vm_gen: u32,
    /// The filter is skipped (fail-open after a trap).
    bypass: bool,
    req: Dir,
    resp: Dir,
    upstream: Forwarded,
    downstream: Forwarded,
    immediate: Option<Immediate>,
    /// Ended by local reply or reset: further input is ignored.
    ended: bool,
    reset: bool,
    in_local_reply: bool,
    finished: bool,
    trap: Option<TrapInfo>,
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
    retired_errors: Vec<crate::host::HostcallError>,
    retired_invocations: Vec<crate::vm::Invocation>,
    /// Long-running use (`serve`): see [`Worker::bound_history`].
    bounded_history: bool,
}

impl Worker {
    /// For a worker that runs until stopped (the `serve` gateway): no per-invocation history,
    /// and log lines, hostcall errors and histogram samples kept to the most recent
    /// [`crate::history::HISTORY_CAP`]..2× that, also across VM reloads. Tests and benches keep
    /// everything (the default).
    pub fn bound_history(&mut self) {
        self.bounded_history = true;
        self.group.bound_histograms(crate::history::HISTORY_CAP);
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

    pub fn hostcall_errors(&self) -> Vec<crate::host::HostcallError> {
        let mut v = self.retired_errors.clone();
        if let Some(vm) = &self.vm {
            v.extend(vm.state().errors.iter().cloned());
        }
        v
    }

    pub fn invocations(&self) -> Vec<crate::vm::Invocation> {
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
    /// (Envoy fails the VM for any `RuntimeError`, §4.2). Its open streams get no further
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
    /// (fail-closed: "All plugins associated with the VM will return an HTTP 503", §4.2).
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
                            crate::history::keep_recent(&mut self.retired_logs, crate::history::HISTORY_CAP);
                            crate::history::keep_recent(&mut self.retired_errors, crate::history::HISTORY_CAP);
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

    /// `failStream`: 503 with details `wasm_fail_stream`, not passed through the filter.
    fn fail_closed(&mut self, id: StreamId) {
        let d = self.drv(id);
        if d.ended {
            return;
        }
        d.ended = true;
        if d.resp.headers_sent || d.downstream.headers.is_some() {
            d.reset = true;
            return;
        }
        d.immediate = Some(Immediate {
            status: 503,
            details: "wasm_fail_stream".into(),
            by_host: true,
        });
        d.downstream = Forwarded {
            headers: Some(vec![
                (":status".into(), "503".into()),
                ("content-length".into(), "0".into()),
            ]),
            body: Vec::new(),
            trailers: None,
            end: true,
        };
    }

    fn on_trap(&mut self, id: StreamId, t: TrapInfo) {
        self.mark_failed(t.clone());
        let policy = self.opts.failure_policy;
        let ctx = self.drv(id).ctx;
        let (rq, rs) = ctx
            .and_then(|c| self.io(c))
            .map(|io| (io.req_headers.clone(), io.resp_headers.clone()))
            .unwrap_or_default();
        let d = self.drv(id);
        d.trap = Some(t);
        match policy {
            FailurePolicy::FailOpen => {
                // CHECK_FAIL_HTTP returns Continue under fail-open: the filter is skipped and
                // whatever it held goes on (§4.2).
                d.bypass = true;
                if d.req.headers_seen && !d.req.headers_sent {
                    d.upstream.headers = Some(rq);
                }
                if d.resp.headers_seen && !d.resp.headers_sent {
                    d.downstream.headers = Some(rs);
                }
                flush_bypass(d);
            }
            _ => self.fail_closed(id),
        }
    }

    fn io(&mut self, ctx: u32) -> Option<&mut crate::host::StreamIo> {
        self.vm.as_mut()?.state_mut().streams.get_mut(&ctx)
    }

    // --- request path ---

    pub fn request_headers(&mut self, id: StreamId, headers: Headers, eos: bool) -> Step {
        let headers = lower_names(headers);
        let Some(ctx) = self.live(id) else {
            return self.pass_headers(id, true, headers, eos);
        };
        let n = headers.len();
        if let Some(io) = self.io(ctx) {
            io.req_headers = headers;
            io.req_headers_live = true;
        }
        let d = self.drv(id);
        d.req.headers_seen = true;
        d.req.eos_in = eos;
        let r = self.vm.as_mut().map(|vm| vm.on_request_headers(ctx, n, eos));
        let action = match r {
            Some(Ok(a)) => a,
            Some(Err(t)) => {
                self.on_trap(id, t);
                return self.step(id, None, true);
            }
            None => Action::Continue,
        };
        let stop_iteration_ok = self.opts.allow_on_headers_stop_iteration || self.opts.profile == Profile::Gcp;
        match action {
            Action::Continue => {
                // Envoy decodeHeaders: Continue → request_headers_ = nullptr (§4.7.3).
                let hdrs = self.io(ctx).map(|io| {
                    io.req_headers_live = false;
                    io.req_headers_sent = true;
                    io.req_headers.clone()
                });
                let d = self.drv(id);
                d.req.headers_sent = true;
                d.upstream.headers = hdrs;
                d.upstream.end = eos;
            }
            Action::Pause => {
                let d = self.drv(id);
                d.req.headers_paused = true;
                // cpp-host convertVmCallResultToFilterHeadersStatus: StopIteration becomes
                // StopAllIterationAndWatermark unless allow_on_headers_stop_iteration (§4.7.1).
                // GCP's tester delivers body chunks regardless (§6.4); we model that.
                d.req.stop_all = !stop_iteration_ok;
            }
        }
        self.after_vm_call(id, ctx);
        self.step(id, Some(action), true)
    }

    pub fn request_body(&mut self, id: StreamId, chunk: &[u8], eos: bool) -> Step {
        let Some(ctx) = self.live(id) else {
            let d = self.drv(id);
            if !d.ended && d.bypass {
                d.upstream.body.extend_from_slice(chunk);
                d.upstream.end |= eos;
                return Step {
                    action: None,
                    flow: Flow::Continued,
                };
            }
            return self.step(id, None, true);
        };
        let d = self.drv(id);
        d.req.eos_in |= eos;
        if d.req.stop_all {
            // StopAllIterationAndWatermark: the plugin's body callback is not called; data
            // waits in the host (flow control, no 413) until the stream is continued (§4.7.2).
            d.req.held.extend_from_slice(chunk);
            return Step {
                action: None,
                flow: Flow::Paused,
            };
        }
        self.deliver_body(id, ctx, true, chunk.to_vec(), eos)
    }

    pub fn request_trailers(&mut self, id: StreamId, trailers: Headers) -> Step {
        let trailers = lower_names(trailers);
        let Some(ctx) = self.live(id) else {
            let d = self.drv(id);
            if !d.ended && d.bypass {
                d.upstream.trailers = Some(trailers);
                d.upstream.end = true;
            }
            return self.step(id, None, true);
        };
        if self.opts.profile == Profile::Gcp {
            // "HTTP trailer events are not supported" (§6.1): trailers pass untouched.
            let d = self.drv(id);
            d.req.trailers_in = Some(trailers);
            d.req.eos_in = true;
            return self.try_finish_dir(id, true);
        }
        let d = self.drv(id);
        d.req.eos_in = true;
        if d.req.stop_all {
            // StopAllIteration holds trailers too: the plugin's callback is not called.
            d.req.trailers_in = Some(trailers);
            return Step {
                action: None,
                flow: Flow::Paused,
            };
        }
        let n = trailers.len();
        if let Some(io) = self.io(ctx) {
            io.req_trailers = trailers;
            io.req_trailers_live = true;
        }
        let r = self.vm.as_mut().map(|vm| vm.on_request_trailers(ctx, n));
        let action = match r {
            Some(Ok(a)) => a,
            Some(Err(t)) => {
                self.on_trap(id, t);
                return self.step(id, None, true);
            }
            None => Action::Continue,
        };
        let tr = self.io(ctx).map(|io| {
            let t = io.req_trailers.clone();
            if action == Action::Continue {
                io.req_trailers_live = false;
            }
            t
        });
        let d = self.drv(id);
        d.req.trailers_in = tr;
        // Continue from trailers resumes everything held, headers paused by StopIteration
        // included (Envoy `source/common/http/filter_manager.cc`,
        // `ActiveStreamFilterBase::commonHandleAfterTrailersCallback`: Continue while
        // `StopSingleIteration` calls `commonContinue()`).
        if action == Action::Continue && !d.req.stop_all {
            self.forward_held(id, ctx, true);
        }
        self.after_vm_call(id, ctx);
        self.step(id, Some(action), true)
    }

    // --- response path ---

    pub fn response_headers(&mut self, id: StreamId, headers: Headers, eos: bool) -> Step {
        let headers = lower_names(headers);
        {
            let d = self.drv(id);
            if d.in_local_reply {
                return Step {
                    action: None,
                    flow: Flow::LocalReply,
                };
            }
        }
        let Some(ctx) = self.live(id) else {
            return self.pass_headers(id, false, headers, eos);
        };
        self.response_headers_inner(id, ctx, headers, eos)
    }

    fn response_headers_inner(&mut self, id: StreamId, ctx: u32, headers: Headers, eos: bool) -> Step {
        let n = headers.len();
        if let Some(io) = self.io(ctx) {
            io.resp_headers = headers;
            io.resp_headers_live = true;
        }
        let d = self.drv(id);
        d.resp.headers_seen = true;
        d.resp.eos_in = eos;
        let r = self.vm.as_mut().map(|vm| vm.on_response_headers(ctx, n, eos));
        let action = match r {
            Some(Ok(a)) => a,
            Some(Err(t)) => {
                self.on_trap(id, t);
                return self.step(id, None, false);
            }
            None => Action::Continue,
        };
        let stop_iteration_ok = self.opts.allow_on_headers_stop_iteration || self.opts.profile == Profile::Gcp;
        match action {
            Action::Continue => {
                // Envoy encodeHeaders: Continue → response_headers_ = nullptr.
                let hdrs = self.io(ctx).map(|io| {
                    io.resp_headers_live = false;
                    io.resp_headers_sent = true;
                    io.resp_headers.clone()
                });
                let d = self.drv(id);
                d.resp.headers_sent = true;
                d.downstream.headers = hdrs;
                d.downstream.end = eos;
            }
            Action::Pause => {
                let d = self.drv(id);
                d.resp.headers_paused = true;
                d.resp.stop_all = !stop_iteration_ok;
            }
        }
        self.after_vm_call(id, ctx);
        self.step(id, Some(action), false)
    }

    pub fn response_body(&mut self, id: StreamId, chunk: &[u8], eos: bool) -> Step {
        let Some(ctx) = self.live(id) else {
            let d = self.drv(id);
            if d.bypass && !d.in_local_reply && (!d.ended || d.immediate.is_none()) {
                d.downstream.body.extend_from_slice(chunk);
                d.downstream.end |= eos;
                return Step {
                    action: None,
                    flow: Flow::Continued,
                };
            }
            return self.step(id, None, false);
        };
        let d = self.drv(id);
        d.resp.eos_in |= eos;
        if d.resp.stop_all {
            d.resp.held.extend_from_slice(chunk);
            return Step {
                action: None,
                flow: Flow::Paused,
            };
        }
        self.deliver_body(id, ctx, false, chunk.to_vec(), eos)
    }

    pub fn response_trailers(&mut self, id: StreamId, trailers: Headers) -> Step {
        let trailers = lower_names(trailers);
        let Some(ctx) = self.live(id) else {
            let d = self.drv(id);
            if d.bypass && !d.ended {
                d.downstream.trailers = Some(trailers);
                d.downstream.end = true;
            }
            return self.step(id, None, false);
        };
        if self.opts.profile == Profile::Gcp {
            let d = self.drv(id);
            d.resp.trailers_in = Some(trailers);
            d.resp.eos_in = true;
            return self.try_finish_dir(id, false);
        }
        let d = self.drv(id);
        d.resp.eos_in = true;
        if d.resp.stop_all {
            // StopAllIteration holds trailers too: the plugin's callback is not called.
            d.resp.trailers_in = Some(trailers);
            return Step {
                action: None,
                flow: Flow::Paused,
            };
        }
        let n = trailers.len();
        if let Some(io) = self.io(ctx) {
            io.resp_trailers = trailers;
            io.resp_trailers_live = true;
        }
        let r = self.vm.as_mut().map(|vm| vm.on_response_trailers(ctx, n));
        let action = match r {
            Some(Ok(a)) => a,
            Some(Err(t)) => {
                self.on_trap(id, t);
                return self.step(id, None, false);
            }
            None => Action::Continue,
        };
        let tr = self.io(ctx).map(|io| {
            if action == Action::Continue {
                io.resp_trailers_live = false;
            }
            io.resp_trailers.clone()
        });
        let d = self.drv(id);
        d.resp.trailers_in = tr;
        // Continue from trailers resumes everything held, headers paused by StopIteration
        // included (Envoy `source/common/http/filter_manager.cc`,
        // `ActiveStreamFilterBase::commonHandleAfterTrailersCallback`: Continue while
        // `StopSingleIteration` calls `commonContinue()`).
        if action == Action::Continue && !d.resp.stop_all {
            self.forward_held(id, ctx, false);
        }
        self.after_vm_call(id, ctx);
        self.step(id, Some(action), false)
    }

    fn try_finish_dir(&mut self, id: StreamId, request: bool) -> Step {
        let d = self.drv(id);
        let dir = if request { &d.req } else { &d.resp };
        if dir.headers_sent && !dir.buffering {
            let tr = dir.trailers_in.clone();
            let out = if request { &mut d.upstream } else { &mut d.downstream };
            out.trailers = tr;
            out.end = true;
        }
        self.step(id, None, request)
    }

    /// Body chunk delivery (both directions), modelled on Envoy `decodeData`/`encodeData`.
    fn deliver_body(&mut self, id: StreamId, ctx: u32, request: bool, chunk: Vec<u8>, eos: bool) -> Step {
        let accumulate = self.opts.profile == Profile::Envoy;
        let limit = self.opts.buffer_limit;
        let d = self.drv(id);
        let dir = if request { &mut d.req } else { &mut d.resp };
        let mut visible = Vec::new();
        // Data held back but not shown to the plugin again (GCP), forwarded before `visible`.
        let mut prefix = Vec::new();
        if dir.buffering && accumulate {
            // addDecodedData: the new chunk joins the buffered body; overflow → local reply
            // 413 (request) before the VM is called (§4.10, Envoy decodeData "local reply (413)").
            if dir.held.len() + chunk.len() > limit {
                let status = if request { 413 } else { 500 };
                let details = if request {
                    "request_payload_too_large"
                } else {
                    "response_payload_too_large"
                };
                self.host_local_reply(id, ctx, status, details);
                return self.step(id, None, request);
            }
            visible.append(&mut dir.held);
        } else {
            // GCP's tester keeps no body across Pause: each chunk replaces the buffer the
            // plugin sees (§6.4); what was held still goes on, in order.
            prefix = std::mem::take(&mut dir.held);
        }
        visible.extend_from_slice(&chunk);
        let size = visible.len();
        if let Some(io) = self.io(ctx) {
            if request {
                io.req_body = visible;
                io.req_body_live = true;
            } else {
                io.resp_body = visible;
                io.resp_body_live = true;
            }
        }
        let r = self.vm.as_mut().map(|vm| {
            if request {
                vm.on_request_body(ctx, size, eos)
            } else {
                vm.on_response_body(ctx, size, eos)
            }
        });
        let action = match r {
            Some(Ok(a)) => a,
            Some(Err(t)) => {
                // Keep the data for fail-open forwarding.
                let body = self.take_body(ctx, request);
                let d = self.drv(id);
                let dir = if request { &mut d.req } else { &mut d.resp };
                dir.held = body;
                self.on_trap(id, t);
                return self.step(id, None, request);
            }
            None => Action::Continue,
        };
        let body = self.take_body(ctx, request);
        let d = self.drv(id);
        let dir = if request { &mut d.req } else { &mut d.resp };
        let mut all = prefix;
        all.extend_from_slice(&body);
        match action {
            Action::Continue => {
                dir.buffering = false;
                dir.held = all;
                if let Some(io) = self.io(ctx) {
                    if request {
                        io.req_body_live = false;
                    } else {
                        io.resp_body_live = false;
                    }
                }
                // Continue from the body callback also resumes headers held by StopIteration.
                self.forward_held(id, ctx, request);
            }
            Action::Pause => {
                // StopIterationAndBuffer: keep the (possibly rewritten) buffer visible.
                dir.buffering = true;
                dir.held = all;
                if let Some(io) = self.io(ctx) {
                    if request {
                        io.req_body = body;
                    } else {
                        io.resp_body = body;
                    }
                }
            }
        }
        self.after_vm_call(id, ctx);
        self.step(id, Some(action), request)
    }

    fn take_body(&mut self, ctx: u32, request: bool) -> Vec<u8> {
        match self.io(ctx) {
            Some(io) if request => io.req_body.clone(),
            Some(io) => io.resp_body.clone(),
            None => Vec::new(),
        }
    }

    /// Forward headers (if still held), held body, and trailers/end if the source ended.
    fn forward_held(&mut self, id: StreamId, ctx: u32, request: bool) {
        let hdrs = self.io(ctx).map(|io| {
            if request {
                io.req_headers_sent = true;
                io.req_headers.clone()
            } else {
                io.resp_headers_sent = true;
                io.resp_headers.clone()
            }
        });
        let d = self.drv(id);
        let (dir, out) = if request {
            (&mut d.req, &mut d.upstream)
        } else {
            (&mut d.resp, &mut d.downstream)
        };
        if !dir.headers_seen {
            return;
        }
        if !dir.headers_sent {
            dir.headers_sent = true;
            out.headers = hdrs;
        }
        dir.headers_paused = false;
        dir.stop_all = false;
        out.body.append(&mut dir.held);
        if dir.eos_in {
            if dir.trailers_in.is_some() {
                out.trailers = dir.trailers_in.clone();
            }
            out.end = true;
        }
    }

    /// `proxy_continue_stream` (after the VM call): continueDecoding/continueEncoding.
    fn resume(&mut self, id: StreamId, ctx: u32, request: bool) {
        let d = self.drv(id);
        if d.ended {
            return;
        }
        let dir = if request { &mut d.req } else { &mut d.resp };
        if dir.stop_all && !dir.held.is_empty() {
            // After StopAll the buffered data is dispatched to this filter's data callback on
            // continue (iteration restarts at the current filter).
            dir.stop_all = false;
            dir.headers_paused = false;
            let held = std::mem::take(&mut dir.held);
            let eos = dir.eos_in;
            let hdrs = match self.io(ctx) {
                Some(io) if request => {
                    io.req_headers_sent = true;
                    io.req_headers.clone()
                }
                Some(io) => {
                    io.resp_headers_sent = true;
                    io.resp_headers.clone()
                }
                None => Vec::new(),
            };
            let d = self.drv(id);
            let (dir, out) = if request {
                (&mut d.req, &mut d.upstream)
            } else {
                (&mut d.resp, &mut d.downstream)
            };
            dir.headers_sent = true;
            out.headers = Some(hdrs);
            self.deliver_body(id, ctx, request, held, eos);
            return;
        }
        self.forward_held(id, ctx, request);
        let d = self.drv(id);
        let dir = if request { &mut d.req } else { &mut d.resp };
        dir.buffering = false;
    }

    /// Run Envoy's after-VM-call actions: local reply, continue/close, and answers to
    /// http calls whose cluster has a canned response (delivered asynchronously, i.e. after
    /// the callback that dispatched them returned).
    fn after_vm_call(&mut self, id: StreamId, ctx: u32) {
        for _ in 0..64 {
            let Some(io) = self.io(ctx) else { return };
            let reply = io.local_reply.take();
            let (cont_req, cont_resp) = (io.continue_request, io.continue_response);
            io.continue_request = false;
            io.continue_response = false;
            let close = io.close_request || io.close_response;
            if let Some(r) = reply {
                self.plugin_local_reply(id, ctx, r);
                return;
            }
            if close {
                let d = self.drv(id);
                d.reset = true;
                d.ended = true;
                return;
            }
            if cont_req {
                self.resume(id, ctx, true);
            }
            if cont_resp {
                self.resume(id, ctx, false);
            }
            if !self.answer_one_call() {
                return;
            }
        }
    }

    /// Answer the first pending call whose cluster has a canned response. Returns whether
    /// one was delivered.
    fn answer_one_call(&mut self) -> bool {
        let Some(vm) = self.vm.as_mut() else {
            return false;
        };
        let opts = self.opts.clone();
        let st = vm.state_mut();
        let Some(pos) = st
            .calls
            .iter()
            .position(|c| matches!(opts.clusters.get(&c.cluster), Some(Some(_))))
        else {
            return false;
        };
        let call = st.calls.remove(pos);
        let resp = opts.clusters.get(&call.cluster).cloned().flatten().unwrap_or_default();
        self.deliver_call(call.context_id, call.token, resp);
        true
    }

    fn deliver_call(&mut self, ctx: u32, token: u32, resp: CallResponse) {
        let Some(vm) = self.vm.as_mut() else { return };
        let r = vm.on_http_call_response(ctx, token, resp);
        let sid = self.streams.iter().find(|(_, d)| d.ctx == Some(ctx)).map(|(k, _)| *k);
        match (r, sid) {
            (Err(t), Some(sid)) => self.on_trap(sid, t),
            (Err(t), None) => self.mark_failed(t),
            (Ok(()), Some(sid)) => self.after_vm_call(sid, ctx),
            (Ok(()), None) => while self.answer_one_call() {},
        }
    }

    /// Answer an outstanding `dispatch_http_call` by token (for clusters without a canned
    /// response). Returns false for an unknown token.
    pub fn respond_http_call(&mut self, token: u32, resp: CallResponse) -> bool {
        let Some(vm) = self.vm.as_mut() else {
            return false;
        };
        let st = vm.state_mut();
        let Some(pos) = st.calls.iter().position(|c| c.token == token) else {
            return false;
        };
        let call = st.calls.remove(pos);
        self.deliver_call(call.context_id, token, resp);
        true
    }

    pub fn pending_calls(&self) -> Vec<crate::host::PendingCall> {
        self.vm.as_ref().map(|v| v.state().calls.clone()).unwrap_or_default()
    }

    fn plugin_local_reply(&mut self, id: StreamId, ctx: u32, r: LocalReply) {
        let d = self.drv(id);
        if d.in_local_reply {
            // A second reply while one is being encoded is dropped.
            return;
        }
        if d.resp.headers_sent {
            // Response headers already went to the client: Envoy can only reset.
            d.reset = true;
            d.ended = true;
            return;
        }
        d.immediate = Some(Immediate {
            status: r.status,
            details: r.details.clone(),
            by_host: false,
        });
        self.encode_local_reply(id, ctx, r.status, r.headers, r.body);
    }

    /// A host-generated local reply (413 on buffer overflow).
    fn host_local_reply(&mut self, id: StreamId, ctx: u32, status: u32, details: &str) {
        let d = self.drv(id);
        d.immediate = Some(Immediate {
            status,
            details: details.into(),
            by_host: true,
        });
        let body = match status {
            413 => b"Payload Too Large".to_vec(),
            _ => b"Internal Server Error".to_vec(),
        };
        if d.resp.headers_sent {
            d.reset = true;
            d.ended = true;
            return;
        }
        self.encode_local_reply(id, ctx, status, Vec::new(), body);
    }

    /// sendLocalReply: the request side stops, and the reply runs through this filter's
    /// encode path (the SDK `http_headers` example logs the local reply's headers).
    fn encode_local_reply(&mut self, id: StreamId, ctx: u32, status: u32, extra: Headers, body: Vec<u8>) {
        let mut h: Headers = vec![(":status".into(), status.to_string())];
        h.extend(extra);
        h.push(("content-length".into(), body.len().to_string()));
        if !body.is_empty() {
            h.push(("content-type".into(), "text/plain".into()));
        }
        {
            let d = self.drv(id);
            d.in_local_reply = true;
            d.req.held.clear();
            d.req.buffering = false;
            d.resp = Dir::default();
            d.downstream = Forwarded::default();
        }
        if let Some(io) = self.io(ctx) {
            io.req_body_live = false;
        }
        let eos = body.is_empty();
        self.response_headers_inner(id, ctx, h, eos);
        let d = self.drv(id);
        if !eos && !d.ended {
            d.resp.eos_in = true;
            if d.resp.stop_all {
                d.resp.held.extend_from_slice(&body);
            } else {
                self.deliver_body(id, ctx, false, body, true);
            }
        }
        let d = self.drv(id);
        d.ended = true;
    }

    fn pass_headers(&mut self, id: StreamId, request: bool, headers: Headers, eos: bool) -> Step {
        let d = self.drv(id);
        if d.bypass && !(d.ended && d.immediate.is_some()) {
            let (dir, out) = if request {
                (&mut d.req, &mut d.upstream)
            } else {
                (&mut d.resp, &mut d.downstream)
            };
            dir.headers_seen = true;
            dir.headers_sent = true;
            out.headers = Some(headers);
            out.end = eos;
            return Step {
                action: None,
                flow: Flow::Continued,
            };
        }
        self.step(id, None, request)
    }

    fn step(&mut self, id: StreamId, action: Option<Action>, request: bool) -> Step {
        let d = self.drv(id);
        let flow = if d.reset {
            Flow::Reset
        } else if d.immediate.is_some() {
            Flow::LocalReply
        } else {
            let dir = if request { &d.req } else { &d.resp };
            if dir.headers_paused || dir.stop_all || dir.buffering || !dir.headers_sent {
                Flow::Paused
            } else {
                Flow::Continued
            }
        };
        Step { action, flow }
    }

    /// End the stream: `on_done`, `on_log` (Envoy only; not in GCP's list, §6.1), `on_delete`.
    /// Spec order: on_log runs after done and before delete (§1.3 lifecycle row).
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
        let gcp = self.opts.profile == Profile::Gcp;
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

    pub fn upstream(&self, id: StreamId) -> Option<&Forwarded> {
        self.streams.get(&id).map(|d| &d.upstream)
    }

    pub fn downstream(&self, id: StreamId) -> Option<&Forwarded> {
        self.streams.get(&id).map(|d| &d.downstream)
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
    pub fn stream_io(&self, id: StreamId) -> Option<&crate::host::StreamIo> {
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

    /// Fire due ticks (re-armed after each callback, §4.5) and deliver posted queue-ready
    /// notifications. Returns the number of callbacks run. Bounded.
    pub fn run_timers_and_queues(&mut self) -> usize {
        let mut n = 0;
        if self.opts.profile == Profile::Gcp {
            // No timers or queues on GCP (§6.1).
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

fn flush_bypass(d: &mut StreamDriver) {
    for (dir, out) in [(&mut d.req, &mut d.upstream), (&mut d.resp, &mut d.downstream)] {
        if dir.headers_seen && !dir.headers_sent {
            dir.headers_sent = true;
        }
        out.body.append(&mut dir.held);
        if dir.eos_in {
            out.end = true;
        }
    }
}
