//! Stream-control hostcalls: `proxy_continue_stream`, `proxy_close_stream`, `proxy_get_status`,
//! `proxy_send_local_response`. Their effect is taken by the worker after the callback returns.

use wasmtime::Linker;

use crate::abi::{deserialize_map, lower_names, Direction, Status, StreamType};
use crate::options::HostProfile;

use super::guest::{copy_out, read, read_str, write_u32};
use super::hostcall::hostcall;
use super::{Callback, HostState, LocalReply};

/// Stream control and local replies.
pub(super) fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    hostcall!(l, "proxy_continue_stream", |c, t| {
        let t = StreamType::from_raw(t).ok_or(Status::BadArgument)?;
        let s = c.data_mut().stream().ok_or(Status::NotFound)?;
        let dir = Direction::of_stream(t).ok_or(Status::BadArgument)?;
        s.half_mut(dir).continue_requested = true;
        Ok(())
    });
    hostcall!(l, "proxy_close_stream", |c, t| {
        let t = StreamType::from_raw(t).ok_or(Status::BadArgument)?;
        let s = c.data_mut().stream().ok_or(Status::NotFound)?;
        let dir = Direction::of_stream(t).ok_or(Status::BadArgument)?;
        s.half_mut(dir).close_requested = true;
        Ok(())
    });
    hostcall!(l, "proxy_get_status", |c, code_ptr, msg_ptr_ptr, msg_size_ptr| {
        let failed = c.data().call_response.as_ref().map(|r| r.fail).unwrap_or(false);
        // Envoy sets BrokenConnection (14) / "reset" for a failed call (onHttpCallFailure).
        let (code, msg): (u32, &[u8]) = if failed { (14, b"reset") } else { (0, b"") };
        write_u32(c, code_ptr, code)?;
        copy_out(c, msg, msg_ptr_ptr, msg_size_ptr)
    });
    hostcall!(
        l,
        "proxy_send_local_response",
        |c, status, dp, dl, bp, bl, hp, hl, grpc| {
            let details = read_str(c, dp, dl)?;
            let body = read(c, bp, bl)?;
            let headers = lower_names(deserialize_map(&read(c, hp, hl)?)?);
            let st = c.data_mut();
            let gcp = st.opts.profile == HostProfile::Gcp;
            // GCP's tester allows local replies in request headers, request body and response
            // headers only (docs/proxy-wasm.md#the-plugin-tester); we answer BadArgument elsewhere (assumption).
            if gcp
                && !matches!(
                    st.callback,
                    Callback::RequestHeaders | Callback::RequestBody | Callback::ResponseHeaders
                )
            {
                return Err(Status::BadArgument.into());
            }
            let s = st.stream().ok_or(Status::NotFound)?;
            // Envoy defers the reply until the VM call returns (addAfterVmCallAction,
            // docs/proxy-wasm.md#local-replies).
            s.local_reply = Some(LocalReply {
                status: status as u32,
                details,
                body,
                headers,
                grpc_status: grpc,
            });
            Ok(())
        }
    );
    Ok(())
}
