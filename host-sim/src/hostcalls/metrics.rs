//! Metric hostcalls, answered by the worker's [`crate::VmGroup`].

use wasmtime::{Caller, Linker};

use crate::abi::{MetricType, Status};

use super::guest::{read_str, write_bytes, write_u32, HcErr};
use super::hostcall::{finish, gcp_gate, hostcall};
use super::HostState;

/// `proxy_define_metric`, `proxy_get_metric`, `proxy_increment_metric`, `proxy_record_metric`.
pub(super) fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    hostcall!(l, "proxy_define_metric", |c, t, np, nl, ret| {
        let t = MetricType::from_raw(t).ok_or(Status::BadArgument)?;
        let name = read_str(c, np, nl)?;
        let id = c.data().group.define_metric(t, &name);
        write_u32(c, ret, id)?;
        Ok(())
    });
    hostcall!(l, "proxy_get_metric", |c, id, ret| {
        let v = c.data().group.get_metric(id as u32)?;
        write_bytes(c, ret, &v.to_le_bytes())?;
        Ok(())
    });
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Caller<'_, HostState>, id: i32, delta: i64| -> wasmtime::Result<i32> {
            let r = gcp_gate(&c, "proxy_increment_metric")
                .and_then(|()| c.data().group.increment_metric(id as u32, delta).map_err(HcErr::from));
            finish(&mut c, "proxy_increment_metric", r)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: Caller<'_, HostState>, id: i32, value: i64| -> wasmtime::Result<i32> {
            let r = gcp_gate(&c, "proxy_record_metric").and_then(|()| {
                c.data()
                    .group
                    .record_metric(id as u32, value as u64)
                    .map_err(HcErr::from)
            });
            finish(&mut c, "proxy_record_metric", r)
        },
    )?;
    Ok(())
}
