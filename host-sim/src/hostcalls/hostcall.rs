//! What every hostcall shares: the GCP gate, recording error statuses, and the `hostcall!`
//! registration macro.

use crate::abi::Status;
use crate::history::{keep_recent, HISTORY_CAP};
use crate::options::HostProfile;

use super::guest::{Hc, HcErr, C};
use super::HostcallError;

/// Hostcalls GCP Service Extensions documents (docs/proxy-wasm.md#supported-subset); every other call
/// answers `Unimplemented` (12), as GCP's plugin tester does for calls cpp-host leaves
/// unimplemented (docs/proxy-wasm.md#the-plugin-tester). WASI is handled separately.
pub(super) const GCP_ALLOWED: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_get_property",
    "proxy_get_buffer_status",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_send_local_response",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_size",
    "proxy_done",
    "proxy_set_effective_context",
];

pub(super) fn finish(c: &mut C<'_>, call: &'static str, r: Hc) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(0),
        Err(HcErr::Trap(e)) => Err(e),
        Err(HcErr::Status(s)) => {
            if s != Status::Ok {
                let st = c.data_mut();
                let (callback, context_id) = (st.callback, st.effective);
                st.errors.push(HostcallError {
                    call,
                    status: s,
                    callback,
                    context_id,
                });
                if st.bounded_history {
                    keep_recent(&mut st.errors, HISTORY_CAP);
                }
            }
            Ok(s as u32 as i32)
        }
    }
}

pub(super) fn gcp_gate(c: &C<'_>, call: &'static str) -> Hc {
    if c.data().opts.profile == HostProfile::Gcp && !GCP_ALLOWED.contains(&call) {
        return Err(Status::Unimplemented.into());
    }
    Ok(())
}

/// Register a hostcall: `hostcall!(linker, "name", |c, a: i32, ...| body)` where body yields `Hc`.
macro_rules! hostcall {
    ($l:expr, $name:literal, |$c:ident $(, $a:ident)*| $body:expr) => {
        $l.func_wrap(
            "env",
            $name,
            |mut $c: ::wasmtime::Caller<'_, $crate::hostcalls::HostState> $(, $a: i32)*| -> ::wasmtime::Result<i32> {
                #[allow(clippy::redundant_closure_call)] // the closure scopes `?` to one hostcall
                let r = match $crate::hostcalls::hostcall::gcp_gate(&$c, $name) {
                    Ok(()) => (|| -> $crate::hostcalls::guest::Hc {
                        let $c = &mut $c;
                        $body
                    })(),
                    Err(e) => Err(e),
                };
                $crate::hostcalls::hostcall::finish(&mut $c, $name, r)
            },
        )?;
    };
}
pub(super) use hostcall;
