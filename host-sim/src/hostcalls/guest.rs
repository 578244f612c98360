//! Guest memory as the hostcalls see it: bounds-checked reads, writes, in-place borrows, and
//! copies into memory the guest allocates (`proxy_on_memory_allocate`).

use wasmtime::{Caller, Memory};

use crate::abi::Status;

use super::HostState;

/// Outcome of a hostcall body: a status for the guest, or a trap.
pub(crate) enum HcErr {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for HcErr {
    fn from(s: Status) -> Self {
        HcErr::Status(s)
    }
}

pub(super) type Hc = Result<(), HcErr>;
pub(super) type C<'a> = Caller<'a, HostState>;

// === memory helpers ===

pub(super) fn mem(c: &mut C<'_>) -> Result<Memory, Status> {
    c.data().memory.ok_or(Status::InvalidMemoryAccess)
}

pub(super) fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let len = len as u32 as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let m = mem(c)?;
    // Bounds first: a guest-chosen length must not make the host allocate beyond memory.
    let end = (ptr as u32 as usize)
        .checked_add(len)
        .ok_or(Status::InvalidMemoryAccess)?;
    if end > m.data_size(&*c) {
        return Err(Status::InvalidMemoryAccess);
    }
    let mut buf = vec![0u8; len];
    m.read(&*c, ptr as u32 as usize, &mut buf)
        .map_err(|_| Status::InvalidMemoryAccess)?;
    Ok(buf)
}

pub(super) fn read_str(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String, Status> {
    // One allocation for valid UTF-8 (`from_utf8_lossy(..).into_owned()` would copy again).
    Ok(String::from_utf8(read(c, ptr, len)?).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// `ptr..ptr + len` of guest memory, bounds-checked.
pub(super) fn slice_at(data: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    if len == 0 {
        return Ok(&[]);
    }
    let end = ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    data.get(ptr..end).ok_or(Status::InvalidMemoryAccess)
}

/// Guest bytes borrowed in place (no copy) together with the host state: for keys and values
/// that the host only compares or copies into its own structures.
pub(super) fn guest<'a>(c: &'a mut C<'_>, ptr: i32, len: i32) -> Result<(&'a [u8], &'a mut HostState), Status> {
    let m = mem(c)?;
    let (data, st) = m.data_and_store_mut(c);
    Ok((slice_at(data, ptr, len)?, st))
}

/// Two guest ranges borrowed in place, with the host state.
pub(super) fn guest2<'a>(
    c: &'a mut C<'_>,
    (p1, l1): (i32, i32),
    (p2, l2): (i32, i32),
) -> Result<(&'a [u8], &'a [u8], &'a mut HostState), Status> {
    let m = mem(c)?;
    let (data, st) = m.data_and_store_mut(c);
    let data: &'a [u8] = data;
    Ok((slice_at(data, p1, l1)?, slice_at(data, p2, l2)?, st))
}

/// A shared-data key or queue name as the host map stores it (lossy only for invalid UTF-8).
pub(super) fn key_str(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

pub(super) fn write_bytes(c: &mut C<'_>, ptr: i32, data: &[u8]) -> Result<(), Status> {
    let m = mem(c)?;
    m.write(&mut *c, ptr as u32 as usize, data)
        .map_err(|_| Status::InvalidMemoryAccess)
}

pub(super) fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> Result<(), Status> {
    write_bytes(c, ptr, &v.to_le_bytes())
}

/// `proxy_on_memory_allocate(len)` in the guest; a null result is `InvalidMemoryAccess`.
pub(super) fn guest_alloc(c: &mut C<'_>, len: usize) -> Result<i32, HcErr> {
    let alloc = c.data().alloc.clone().ok_or(Status::InternalFailure)?;
    let p = alloc.call(&mut *c, len as i32).map_err(HcErr::Trap)?;
    if p == 0 {
        return Err(Status::InvalidMemoryAccess.into());
    }
    Ok(p)
}

/// The `len` bytes of guest memory at `p` (just allocated by the guest).
pub(super) fn guest_dst(data: &mut [u8], p: i32, len: usize) -> Result<&mut [u8], Status> {
    let start = p as u32 as usize;
    let end = start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    data.get_mut(start..end).ok_or(Status::InvalidMemoryAccess)
}

/// Copy `data` into guest memory allocated with `proxy_on_memory_allocate` and write the
/// pointer and size (cpp-host `copyToPointerSize`: empty data writes a null pointer).
pub(super) fn copy_out(c: &mut C<'_>, data: &[u8], ptr_ptr: i32, size_ptr: i32) -> Hc {
    let mut p: i32 = 0;
    if !data.is_empty() {
        p = guest_alloc(c, data.len())?;
        write_bytes(c, p, data)?;
    }
    write_u32(c, ptr_ptr, p as u32)?;
    write_u32(c, size_ptr, data.len() as u32)?;
    Ok(())
}

/// [`copy_out`] of bytes that live in the host state (a header value, a body), copied straight
/// from there into the guest's allocation, as cpp-host copies from Envoy's own buffers: no
/// intermediate host copy. `src` is asked twice (to size the allocation, then to copy), so it
/// must give the same bytes both times; the guest allocator runs in between and cannot change
/// host state without a hostcall, which the SDK allocator never makes.
pub(super) fn copy_out_from<F>(c: &mut C<'_>, ptr_ptr: i32, size_ptr: i32, src: F) -> Hc
where
    F: for<'s> Fn(&'s HostState) -> Result<&'s [u8], Status>,
{
    let len = src(c.data())?.len();
    let mut p: i32 = 0;
    if len > 0 {
        p = guest_alloc(c, len)?;
        let m = mem(c)?;
        let (data, st) = m.data_and_store_mut(&mut *c);
        let bytes = src(st)?;
        if bytes.len() != len {
            return Err(Status::InternalFailure.into());
        }
        guest_dst(data, p, len)?.copy_from_slice(bytes);
    }
    write_u32(c, ptr_ptr, p as u32)?;
    write_u32(c, size_ptr, len as u32)?;
    Ok(())
}
