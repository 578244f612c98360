//! Buffer hostcalls (`proxy_get_buffer_status`, `proxy_get_buffer_bytes`,
//! `proxy_set_buffer_bytes`): which buffer a call reaches, and Envoy's read and write rules.

use wasmtime::Linker;

use crate::abi::{BufferType, Direction, Status};
use crate::options::HostProfile;

use super::guest::{copy_out_from, read, write_u32};
use super::hostcall::hostcall;
use super::{Callback, HostState};

/// The buffer the guest asks for, borrowed: Envoy hands out a pointer to its own buffer and
/// copies only the requested range into the VM.
pub(super) fn buffer_ref(st: &HostState, t: BufferType) -> Result<&[u8], Status> {
    let gcp = st.opts.profile == HostProfile::Gcp;
    match t {
        // Spec v0.2.1 "Buffers": VM configuration only in on_vm_start, plugin configuration
        // only in on_configure; elsewhere there is no buffer (NotFound).
        BufferType::VmConfiguration if gcp => Err(Status::Unimplemented),
        BufferType::VmConfiguration if st.callback == Callback::VmStart => Ok(&st.opts.vm_config),
        BufferType::PluginConfiguration if st.callback == Callback::Configure => Ok(&st.opts.plugin_config),
        BufferType::VmConfiguration | BufferType::PluginConfiguration => Err(Status::NotFound),
        BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
            let dir = Direction::of_body(t).ok_or(Status::NotFound)?;
            let s = st.streams.get(&st.effective).ok_or(Status::NotFound)?;
            if gcp && st.callback != Callback::body(dir) {
                return Err(Status::NotFound);
            }
            let h = s.half(dir);
            if h.body_live {
                Ok(&h.body)
            } else {
                Err(Status::NotFound)
            }
        }
        BufferType::HttpCallResponseBody if !gcp => st
            .call_response
            .as_ref()
            .map(|r| r.body.as_slice())
            .ok_or(Status::NotFound),
        _ if gcp => Err(Status::Unimplemented),
        _ => Err(Status::NotFound),
    }
}

/// `proxy_get_buffer_status`, `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`.
pub(super) fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    hostcall!(l, "proxy_get_buffer_status", |c, t, len_ptr, flags_ptr| {
        let t = BufferType::from_raw(t).ok_or(Status::BadArgument)?;
        let len = buffer_ref(c.data(), t)?.len();
        write_u32(c, len_ptr, len as u32)?;
        write_u32(c, flags_ptr, 0)?;
        Ok(())
    });
    hostcall!(l, "proxy_get_buffer_bytes", |c, t, start, max, ptr_ptr, size_ptr| {
        let t = BufferType::from_raw(t).ok_or(Status::BadArgument)?;
        let len = buffer_ref(c.data(), t)?.len();
        // cpp-host get_buffer_bytes: overflow → BadArgument, clamp to the buffer, and an
        // empty range writes a null pointer and size 0 and returns Ok (the SDK then yields
        // None).
        let (start, max) = (start as u32 as usize, max as u32 as usize);
        let end = start.checked_add(max).ok_or(Status::BadArgument)?.min(len);
        if start >= end {
            write_u32(c, ptr_ptr, 0)?;
            write_u32(c, size_ptr, 0)?;
            return Ok(());
        }
        copy_out_from(c, ptr_ptr, size_ptr, |st| {
            buffer_ref(st, t)?.get(start..end).ok_or(Status::InternalFailure)
        })
    });
    hostcall!(l, "proxy_set_buffer_bytes", |c, t, start, size, ptr, len| {
        let t = BufferType::from_raw(t).ok_or(Status::BadArgument)?;
        let st = c.data();
        let gcp = st.opts.profile == HostProfile::Gcp;
        let body_of = Direction::of_body(t);
        let is_body = body_of.is_some();
        if gcp && !is_body {
            return Err(Status::Unimplemented.into());
        }
        // cpp-host set_buffer_bytes looks the buffer up before it reads the guest's bytes: no
        // buffer is NotFound whatever the pointer. A buffer that is there but is not an Envoy
        // body (a configuration, an http-call response body: `BufferBase` over a string)
        // refuses writes in `BufferBase::copyFrom` with BadArgument.
        buffer_ref(st, t)?;
        let Some(dir) = body_of else {
            return Err(Status::BadArgument.into());
        };
        let data = read(c, ptr, len)?;
        let s = c.data_mut().stream().ok_or(Status::NotFound)?;
        let buf = &mut s.half_mut(dir).body;
        // Envoy Buffer::copyFrom: start 0 drains `size` bytes then prepends; start >= len
        // appends; anything else is BadArgument (docs/proxy-wasm.md#buffers).
        let (start, size) = (start as u32 as usize, size as u32 as usize);
        if start == 0 {
            let n = size.min(buf.len());
            buf.drain(..n);
            buf.splice(0..0, data);
        } else if start >= buf.len() {
            buf.extend_from_slice(&data);
        } else {
            return Err(Status::BadArgument.into());
        }
        Ok(())
    });
    Ok(())
}
