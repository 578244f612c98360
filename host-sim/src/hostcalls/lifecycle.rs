//! Logging, time, ticks and context hostcalls: `proxy_log`, `proxy_get_log_level`,
//! `proxy_get_current_time_nanoseconds`, `proxy_set_tick_period_milliseconds`, `proxy_done`,
//! `proxy_set_effective_context`.

use wasmtime::Linker;

use crate::abi::{LogLevel, Status};

use super::guest::{read_str, write_bytes, write_u32};
use super::hostcall::hostcall;
use super::HostState;

/// Logging, time, ticks and contexts.
pub(super) fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    hostcall!(l, "proxy_log", |c, level, ptr, len| {
        let msg = read_str(c, ptr, len)?;
        let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
        let st = c.data_mut();
        if st.opts.echo_logs {
            eprintln!("[wasm {:?} #{}] {}", level, st.effective, msg);
        }
        st.push_log(level, msg);
        Ok(())
    });
    hostcall!(l, "proxy_get_log_level", |c, ret| {
        let lvl = c.data().opts.log_level as u32;
        write_u32(c, ret, lvl)?;
        Ok(())
    });
    hostcall!(l, "proxy_get_current_time_nanoseconds", |c, ret| {
        let now = c.data().now_ns();
        write_bytes(c, ret, &now.to_le_bytes())?;
        Ok(())
    });
    hostcall!(l, "proxy_set_tick_period_milliseconds", |c, period| {
        // Per root context timer, re-armed after each on_tick; 0 disables (docs/proxy-wasm.md#timers).
        c.data_mut().tick_period_ms = period as u32;
        Ok(())
    });
    hostcall!(l, "proxy_done", |c| {
        let st = c.data_mut();
        let eff = st.effective;
        st.done_contexts.push(eff);
        Ok(())
    });
    hostcall!(l, "proxy_set_effective_context", |c, ctx| {
        let st = c.data_mut();
        let ctx = ctx as u32;
        if ctx != st.root_context && !st.streams.contains_key(&ctx) {
            return Err(Status::BadArgument.into());
        }
        st.effective = ctx;
        Ok(())
    });
    Ok(())
}
