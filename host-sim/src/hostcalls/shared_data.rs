//! Shared data and shared queue hostcalls, answered by the worker's [`crate::VmGroup`].

use wasmtime::Linker;

use super::guest::{copy_out, guest, guest2, key_str, read, read_str, write_u32};
use super::hostcall::hostcall;
use super::HostState;

/// `proxy_get_shared_data`, `proxy_set_shared_data` and the `proxy_*_shared_queue` calls.
pub(super) fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    hostcall!(l, "proxy_get_shared_data", |c, kp, kl, ptr_ptr, size_ptr, cas_ptr| {
        let (key, st) = guest(c, kp, kl)?;
        // A copy taken under the lock, as cpp-host's SharedData::get returns one.
        let (v, cas) = st.group.get_data(&key_str(key))?;
        copy_out(c, &v, ptr_ptr, size_ptr)?;
        write_u32(c, cas_ptr, cas)?;
        Ok(())
    });
    hostcall!(l, "proxy_set_shared_data", |c, kp, kl, vp, vl, cas| {
        let (key, v, st) = guest2(c, (kp, kl), (vp, vl))?;
        st.group.set_data(&key_str(key), v, cas as u32)?;
        Ok(())
    });
    hostcall!(l, "proxy_register_shared_queue", |c, np, nl, ret| {
        let name = read_str(c, np, nl)?;
        let st = c.data();
        // A registration from a stream context uses its root context (docs/proxy-wasm.md#shared-queues).
        let tok = st.group.register_queue(&name, st.worker, st.root_context);
        write_u32(c, ret, tok)?;
        Ok(())
    });
    hostcall!(l, "proxy_resolve_shared_queue", |c, vp, vl, np, nl, ret| {
        let vm_id = read_str(c, vp, vl)?;
        let name = read_str(c, np, nl)?;
        let tok = c.data().group.resolve_queue(&vm_id, &name)?;
        write_u32(c, ret, tok)?;
        Ok(())
    });
    hostcall!(l, "proxy_enqueue_shared_queue", |c, tok, vp, vl| {
        let v = read(c, vp, vl)?;
        c.data().group.enqueue(tok as u32, &v)?;
        Ok(())
    });
    hostcall!(l, "proxy_dequeue_shared_queue", |c, tok, ptr_ptr, size_ptr| {
        let v = c.data().group.dequeue(tok as u32)?;
        copy_out(c, &v, ptr_ptr, size_ptr)
    });
    Ok(())
}
