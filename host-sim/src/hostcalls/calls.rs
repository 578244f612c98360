//! Outbound calls: `proxy_http_call` (answered later by the worker) and the gRPC calls, which
//! host-sim does not simulate.

use wasmtime::Linker;

use crate::abi::{deserialize_map, lower_names, Status};

use super::guest::{read, read_str, write_u32};
use super::hostcall::hostcall;
use super::{HostState, PendingCall};

/// `proxy_http_call` and the `proxy_grpc_*` calls.
pub(super) fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    hostcall!(l, "proxy_http_call", |c,
                                     up,
                                     ul,
                                     hp,
                                     hl,
                                     bp,
                                     bl,
                                     tp,
                                     tl,
                                     timeout,
                                     tok_ptr| {
        let cluster = read_str(c, up, ul)?;
        let headers = lower_names(deserialize_map(&read(c, hp, hl)?)?);
        let body = read(c, bp, bl)?;
        let trailers = lower_names(deserialize_map(&read(c, tp, tl)?)?);
        let st = c.data_mut();
        // Envoy httpCall: unknown cluster or missing :path/:method/host → BadArgument.
        if !st.opts.clusters.contains_key(&cluster) {
            return Err(Status::BadArgument.into());
        }
        let has = |k: &str| headers.iter().any(|(n, _)| n == k);
        if !has(":path") || !has(":method") || !(has(":authority") || has("host")) {
            return Err(Status::BadArgument.into());
        }
        st.next_call_token += 1;
        let token = st.next_call_token;
        let context_id = st.effective;
        st.calls.push(PendingCall {
            token,
            context_id,
            cluster,
            headers,
            body,
            trailers,
            timeout_ms: timeout as u32,
        });
        write_u32(c, tok_ptr, token)?;
        Ok(())
    });
    // gRPC is not simulated: a known cluster fails to send (InternalFailure), an unknown one
    // is ParseFailure (Envoy grpcCall with a cluster name that does not resolve).
    hostcall!(l, "proxy_grpc_call", |c,
                                     up,
                                     ul,
                                     _a,
                                     _b,
                                     _d,
                                     _e,
                                     _f,
                                     _g,
                                     _h,
                                     _i,
                                     _timeout,
                                     _tok| {
        let cluster = read_str(c, up, ul)?;
        if c.data().opts.clusters.contains_key(&cluster) {
            Err(Status::InternalFailure.into())
        } else {
            Err(Status::ParseFailure.into())
        }
    });
    hostcall!(l, "proxy_grpc_stream", |c, up, ul, _a, _b, _d, _e, _f, _g, _tok| {
        let cluster = read_str(c, up, ul)?;
        if c.data().opts.clusters.contains_key(&cluster) {
            Err(Status::InternalFailure.into())
        } else {
            Err(Status::ParseFailure.into())
        }
    });
    hostcall!(l, "proxy_grpc_send", |_c, _t, _p, _l2, _e| Err(
        Status::BadArgument.into()
    ));
    hostcall!(l, "proxy_grpc_cancel", |_c, _t| Err(Status::BadArgument.into()));
    hostcall!(l, "proxy_grpc_close", |_c, _t| Err(Status::BadArgument.into()));
    Ok(())
}
