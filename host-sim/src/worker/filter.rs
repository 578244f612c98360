//! The HTTP filter state machine, one code path for both directions: headers, body and
//! trailers as Envoy's wasm filter (`decodeHeaders`/`encodeHeaders`, `decodeData`/`encodeData`,
//! …) hands them to the plugin, and what goes on to the next hop.

use crate::abi::{lower_names, Action, Direction, Headers};
use crate::options::HostProfile;

use super::{Flow, Side, Step, StreamDriver, StreamId, Worker};

impl Worker {
    // --- the request and response inputs ---

    pub fn request_headers(&mut self, id: StreamId, headers: Headers, eos: bool) -> Step {
        self.headers(id, Direction::Request, headers, eos)
    }

    pub fn request_body(&mut self, id: StreamId, chunk: &[u8], eos: bool) -> Step {
        self.body(id, Direction::Request, chunk, eos)
    }

    pub fn request_trailers(&mut self, id: StreamId, trailers: Headers) -> Step {
        self.trailers(id, Direction::Request, trailers)
    }

    pub fn response_headers(&mut self, id: StreamId, headers: Headers, eos: bool) -> Step {
        self.headers(id, Direction::Response, headers, eos)
    }

    pub fn response_body(&mut self, id: StreamId, chunk: &[u8], eos: bool) -> Step {
        self.body(id, Direction::Response, chunk, eos)
    }

    pub fn response_trailers(&mut self, id: StreamId, trailers: Headers) -> Step {
        self.trailers(id, Direction::Response, trailers)
    }

    /// Headers of `dir` arrive (from the client, or from the upstream).
    pub fn headers(&mut self, id: StreamId, dir: Direction, headers: Headers, eos: bool) -> Step {
        let headers = lower_names(headers);
        if dir == Direction::Response && self.drv(id).in_local_reply {
            return Step {
                action: None,
                flow: Flow::LocalReply,
            };
        }
        let Some(ctx) = self.live(id) else {
            return self.pass_headers(id, dir, headers, eos);
        };
        self.run_headers(id, ctx, dir, headers, eos)
    }

    /// The plugin's headers callback and Envoy's handling of what it returns.
    pub(super) fn run_headers(&mut self, id: StreamId, ctx: u32, dir: Direction, headers: Headers, eos: bool) -> Step {
        let n = headers.len();
        if let Some(io) = self.io(ctx) {
            let h = io.half_mut(dir);
            h.headers = headers;
            h.headers_live = true;
        }
        let side = self.drv(id).side(dir);
        side.headers_seen = true;
        side.eos_in = eos;
        let r = self.vm.as_mut().map(|vm| vm.on_headers(dir, ctx, n, eos));
        let action = match r {
            Some(Ok(a)) => a,
            Some(Err(t)) => {
                self.on_trap(id, t);
                return self.step(id, None, dir);
            }
            None => Action::Continue,
        };
        let stop_iteration_ok = self.opts.allow_on_headers_stop_iteration || self.opts.profile == HostProfile::Gcp;
        match action {
            Action::Continue => {
                // Envoy decodeHeaders/encodeHeaders: Continue → request_headers_ (response_headers_)
                // = nullptr (docs/proxy-wasm.md#header-and-body-phases).
                let hdrs = self.io(ctx).map(|io| {
                    let h = io.half_mut(dir);
                    h.headers_live = false;
                    h.headers_sent = true;
                    h.headers.clone()
                });
                let side = self.drv(id).side(dir);
                side.headers_sent = true;
                side.out.headers = hdrs;
                side.out.end = eos;
            }
            Action::Pause => {
                let side = self.drv(id).side(dir);
                side.headers_paused = true;
                // cpp-host convertVmCallResultToFilterHeadersStatus: StopIteration becomes
                // StopAllIterationAndWatermark unless allow_on_headers_stop_iteration
                // (docs/proxy-wasm.md#header-and-body-phases). GCP's tester delivers body chunks regardless
                // (docs/proxy-wasm.md#the-plugin-tester); we model that.
                side.stop_all = !stop_iteration_ok;
            }
        }
        self.after_vm_call(id, ctx);
        self.step(id, Some(action), dir)
    }

    /// A body chunk of `dir` arrives.
    pub fn body(&mut self, id: StreamId, dir: Direction, chunk: &[u8], eos: bool) -> Step {
        let Some(ctx) = self.live(id) else {
            let d = self.drv(id);
            // A skipped filter passes the chunk on. The request side stops at any end of the
            // stream; the response side still passes after a reset (no reply was sent), but not
            // into or after a local reply.
            let passes = d.bypass
                && match dir {
                    Direction::Request => !d.ended,
                    Direction::Response => !d.in_local_reply && (!d.ended || d.immediate.is_none()),
                };
            if passes {
                let out = &mut d.side(dir).out;
                out.body.extend_from_slice(chunk);
                out.end |= eos;
                return Step {
                    action: None,
                    flow: Flow::Continued,
                };
            }
            return self.step(id, None, dir);
        };
        let side = self.drv(id).side(dir);
        side.eos_in |= eos;
        if side.stop_all {
            // StopAllIterationAndWatermark: the plugin's body callback is not called; data
            // waits in the host (flow control, no 413) until the stream is continued
            // (docs/proxy-wasm.md#header-and-body-phases).
            side.held.extend_from_slice(chunk);
            return Step {
                action: None,
                flow: Flow::Paused,
            };
        }
        self.deliver_body(id, ctx, dir, chunk.to_vec(), eos)
    }

    /// Trailers of `dir` arrive (they end that direction).
    pub fn trailers(&mut self, id: StreamId, dir: Direction, trailers: Headers) -> Step {
        let trailers = lower_names(trailers);
        let Some(ctx) = self.live(id) else {
            let d = self.drv(id);
            if d.bypass && !d.ended {
                let out = &mut d.side(dir).out;
                out.trailers = Some(trailers);
                out.end = true;
            }
            return self.step(id, None, dir);
        };
        if self.opts.profile == HostProfile::Gcp {
            // "HTTP trailer events are not supported" (docs/proxy-wasm.md#supported-subset): trailers pass
            // untouched.
            let side = self.drv(id).side(dir);
            side.trailers_in = Some(trailers);
            side.eos_in = true;
            return self.finish_side(id, dir);
        }
        let side = self.drv(id).side(dir);
        side.eos_in = true;
        if side.stop_all {
            // StopAllIteration holds trailers too: the plugin's callback is not called
            // (docs/proxy-wasm.md#trailers).
            side.trailers_in = Some(trailers);
            return Step {
                action: None,
                flow: Flow::Paused,
            };
        }
        let n = trailers.len();
        if let Some(io) = self.io(ctx) {
            let h = io.half_mut(dir);
            h.trailers = trailers;
            h.trailers_live = true;
        }
        let r = self.vm.as_mut().map(|vm| vm.on_trailers(dir, ctx, n));
        let action = match r {
            Some(Ok(a)) => a,
            Some(Err(t)) => {
                self.on_trap(id, t);
                return self.step(id, None, dir);
            }
            None => Action::Continue,
        };
        let tr = self.io(ctx).map(|io| {
            let h = io.half_mut(dir);
            if action == Action::Continue {
                h.trailers_live = false;
            }
            h.trailers.clone()
        });
        let side = self.drv(id).side(dir);
        side.trailers_in = tr;
        let stopped_all = side.stop_all;
        // Continue from trailers resumes everything held, headers paused by StopIteration
        // included (docs/proxy-wasm.md#trailers).
        if action == Action::Continue && !stopped_all {
            self.forward_held(id, ctx, dir);
        }
        self.after_vm_call(id, ctx);
        self.step(id, Some(action), dir)
    }

    /// GCP: trailers end the direction without a callback; they go on once the headers did and
    /// nothing is being buffered.
    fn finish_side(&mut self, id: StreamId, dir: Direction) -> Step {
        let side = self.drv(id).side(dir);
        if side.headers_sent && !side.buffering {
            side.out.trailers = side.trailers_in.clone();
            side.out.end = true;
        }
        self.step(id, None, dir)
    }

    /// Body chunk delivery, modelled on Envoy `decodeData`/`encodeData`.
    pub(super) fn deliver_body(&mut self, id: StreamId, ctx: u32, dir: Direction, chunk: Vec<u8>, eos: bool) -> Step {
        let accumulate = self.opts.profile == HostProfile::Envoy;
        let limit = self.opts.buffer_limit;
        let side = self.drv(id).side(dir);
        let mut visible = Vec::new();
        // Data held back but not shown to the plugin again (GCP), forwarded before `visible`.
        let mut prefix = Vec::new();
        if side.buffering && accumulate {
            // addDecodedData: the new chunk joins the buffered body; overflow → local reply
            // 413 (request) before the VM is called (docs/proxy-wasm.md#body-buffering-and-limits).
            if side.held.len() + chunk.len() > limit {
                let (status, details) = match dir {
                    Direction::Request => (413, "request_payload_too_large"),
                    Direction::Response => (500, "response_payload_too_large"),
                };
                self.host_local_reply(id, ctx, status, details);
                return self.step(id, None, dir);
            }
            visible.append(&mut side.held);
        } else {
            // GCP's tester keeps no body across Pause: each chunk replaces the buffer the
            // plugin sees (docs/proxy-wasm.md#the-plugin-tester); what was held still goes on, in order.
            prefix = std::mem::take(&mut side.held);
        }
        visible.extend_from_slice(&chunk);
        let size = visible.len();
        if let Some(io) = self.io(ctx) {
            let h = io.half_mut(dir);
            h.body = visible;
            h.body_live = true;
        }
        let r = self.vm.as_mut().map(|vm| vm.on_body(dir, ctx, size, eos));
        let action = match r {
            Some(Ok(a)) => a,
            Some(Err(t)) => {
                // Keep the data for fail-open forwarding.
                let body = self.take_body(ctx, dir);
                self.drv(id).side(dir).held = body;
                self.on_trap(id, t);
                return self.step(id, None, dir);
            }
            None => Action::Continue,
        };
        let body = self.take_body(ctx, dir);
        let mut all = prefix;
        all.extend_from_slice(&body);
        let side = self.drv(id).side(dir);
        side.held = all;
        // Pause is StopIterationAndBuffer: the host goes on buffering.
        side.buffering = action == Action::Pause;
        match action {
            Action::Continue => {
                if let Some(io) = self.io(ctx) {
                    io.half_mut(dir).body_live = false;
                }
                // Continue from the body callback also resumes headers held by StopIteration.
                self.forward_held(id, ctx, dir);
            }
            Action::Pause => {
                // Keep the (possibly rewritten) buffer visible.
                if let Some(io) = self.io(ctx) {
                    io.half_mut(dir).body = body;
                }
            }
        }
        self.after_vm_call(id, ctx);
        self.step(id, Some(action), dir)
    }

    fn take_body(&mut self, ctx: u32, dir: Direction) -> Vec<u8> {
        match self.io(ctx) {
            Some(io) => io.half(dir).body.clone(),
            None => Vec::new(),
        }
    }

    /// Forward headers (if still held), held body, and trailers/end if the source ended.
    fn forward_held(&mut self, id: StreamId, ctx: u32, dir: Direction) {
        let hdrs = self.io(ctx).map(|io| {
            let h = io.half_mut(dir);
            h.headers_sent = true;
            h.headers.clone()
        });
        let side = self.drv(id).side(dir);
        if !side.headers_seen {
            return;
        }
        if !side.headers_sent {
            side.headers_sent = true;
            side.out.headers = hdrs;
        }
        side.headers_paused = false;
        side.stop_all = false;
        side.out.body.append(&mut side.held);
        if side.eos_in {
            if side.trailers_in.is_some() {
                side.out.trailers = side.trailers_in.clone();
            }
            side.out.end = true;
        }
    }

    /// `proxy_continue_stream` (after the VM call): continueDecoding/continueEncoding.
    pub(super) fn resume(&mut self, id: StreamId, ctx: u32, dir: Direction) {
        let d = self.drv(id);
        if d.ended {
            return;
        }
        let side = d.side(dir);
        if side.stop_all && !side.held.is_empty() {
            // After StopAll the buffered data is dispatched to this filter's data callback on
            // continue (iteration restarts at the current filter, docs/proxy-wasm.md#header-and-body-phases).
            side.stop_all = false;
            side.headers_paused = false;
            let held = std::mem::take(&mut side.held);
            let eos = side.eos_in;
            let hdrs = match self.io(ctx) {
                Some(io) => {
                    let h = io.half_mut(dir);
                    h.headers_sent = true;
                    h.headers.clone()
                }
                None => Vec::new(),
            };
            let side = self.drv(id).side(dir);
            side.headers_sent = true;
            side.out.headers = Some(hdrs);
            self.deliver_body(id, ctx, dir, held, eos);
            return;
        }
        self.forward_held(id, ctx, dir);
        self.drv(id).side(dir).buffering = false;
    }

    fn pass_headers(&mut self, id: StreamId, dir: Direction, headers: Headers, eos: bool) -> Step {
        let d = self.drv(id);
        if d.bypass && !(d.ended && d.immediate.is_some()) {
            let side = d.side(dir);
            side.headers_seen = true;
            side.headers_sent = true;
            side.out.headers = Some(headers);
            side.out.end = eos;
            return Step {
                action: None,
                flow: Flow::Continued,
            };
        }
        self.step(id, None, dir)
    }

    pub(super) fn step(&mut self, id: StreamId, action: Option<Action>, dir: Direction) -> Step {
        let d = self.drv(id);
        let flow = if d.reset {
            Flow::Reset
        } else if d.immediate.is_some() {
            Flow::LocalReply
        } else {
            let side = d.side(dir);
            if side.headers_paused || side.stop_all || side.buffering || !side.headers_sent {
                Flow::Paused
            } else {
                Flow::Continued
            }
        };
        Step { action, flow }
    }
}

/// Fail-open after a trap: whatever the filter held goes on, in both directions.
pub(super) fn flush_bypass(d: &mut StreamDriver) {
    for dir in Direction::BOTH {
        let side: &mut Side = d.side(dir);
        if side.headers_seen && !side.headers_sent {
            side.headers_sent = true;
        }
        side.out.body.append(&mut side.held);
        if side.eos_in {
            side.out.end = true;
        }
    }
}
