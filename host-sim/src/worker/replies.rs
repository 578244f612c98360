//! What the worker does after a VM call and when the filter fails: local replies (the plugin's
//! and the host's), `proxy_continue_stream`/`proxy_close_stream`, answers to http calls, and the
//! failure policy after a trap.

use crate::abi::{Direction, Headers};
use crate::hostcalls::{LocalReply, PendingCall};
use crate::options::{CallResponse, FailurePolicy};
use crate::vm::TrapInfo;

use super::filter::flush_bypass;
use super::{Forwarded, Immediate, Side, StreamId, Worker};

impl Worker {
    /// `failStream`: 503 with details `wasm_fail_stream`, not passed through the filter.
    pub(super) fn fail_closed(&mut self, id: StreamId) {
        let d = self.drv(id);
        if d.ended {
            return;
        }
        d.ended = true;
        if d.response.headers_sent || d.response.out.headers.is_some() {
            d.reset = true;
            return;
        }
        d.immediate = Some(Immediate {
            status: 503,
            details: "wasm_fail_stream".into(),
            by_host: true,
        });
        d.response.out = Forwarded {
            headers: Some(vec![
                (":status".into(), "503".into()),
                ("content-length".into(), "0".into()),
            ]),
            body: Vec::new(),
            trailers: None,
            end: true,
        };
    }

    pub(super) fn on_trap(&mut self, id: StreamId, t: TrapInfo) {
        self.mark_failed(t.clone());
        let policy = self.opts.failure_policy;
        let ctx = self.drv(id).ctx;
        let headers: [Headers; 2] = ctx
            .and_then(|c| self.io(c))
            .map(|io| Direction::BOTH.map(|dir| io.half(dir).headers.clone()))
            .unwrap_or_default();
        let d = self.drv(id);
        d.trap = Some(t);
        match policy {
            FailurePolicy::FailOpen => {
                // CHECK_FAIL_HTTP returns Continue under fail-open: the filter is skipped and
                // whatever it held goes on (docs/proxy-wasm.md#failure-policies).
                d.bypass = true;
                for (dir, h) in Direction::BOTH.into_iter().zip(headers) {
                    let side: &mut Side = d.side(dir);
                    if side.headers_seen && !side.headers_sent {
                        side.out.headers = Some(h);
                    }
                }
                flush_bypass(d);
            }
            _ => self.fail_closed(id),
        }
    }

    /// Run Envoy's after-VM-call actions: local reply, continue/close, and answers to
    /// http calls whose cluster has a canned response (delivered asynchronously, i.e. after
    /// the callback that dispatched them returned).
    pub(super) fn after_vm_call(&mut self, id: StreamId, ctx: u32) {
        for _ in 0..64 {
            let Some(io) = self.io(ctx) else { return };
            let reply = io.local_reply.take();
            let resumed = Direction::BOTH.map(|dir| std::mem::take(&mut io.half_mut(dir).continue_requested));
            let close = io.request.close_requested || io.response.close_requested;
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
            for (dir, resume) in Direction::BOTH.into_iter().zip(resumed) {
                if resume {
                    self.resume(id, ctx, dir);
                }
            }
            if !self.answer_one_call() {
                return;
            }
        }
    }

    /// Answer the first pending call whose cluster has a canned response. Returns whether
    /// one was delivered.
    pub(super) fn answer_one_call(&mut self) -> bool {
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

    pub fn pending_calls(&self) -> Vec<PendingCall> {
        self.vm.as_ref().map(|v| v.state().calls.clone()).unwrap_or_default()
    }

    fn plugin_local_reply(&mut self, id: StreamId, ctx: u32, r: LocalReply) {
        let d = self.drv(id);
        if d.in_local_reply {
            // A second reply while one is being encoded is dropped.
            return;
        }
        if d.response.headers_sent {
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
    pub(super) fn host_local_reply(&mut self, id: StreamId, ctx: u32, status: u32, details: &str) {
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
        if d.response.headers_sent {
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
            d.request.held.clear();
            d.request.buffering = false;
            d.response = Side::default();
        }
        if let Some(io) = self.io(ctx) {
            io.request.body_live = false;
        }
        let eos = body.is_empty();
        self.run_headers(id, ctx, Direction::Response, h, eos);
        let d = self.drv(id);
        if !eos && !d.ended {
            d.response.eos_in = true;
            if d.response.stop_all {
                d.response.held.extend_from_slice(&body);
            } else {
                self.deliver_body(id, ctx, Direction::Response, body, true);
            }
        }
        let d = self.drv(id);
        d.ended = true;
    }
}
