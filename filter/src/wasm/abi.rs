//! The hostcalls this module makes, imported from the ABI directly so that every status comes
//! back as a value.
//!
//! The SDK's wrappers (`proxy_wasm::hostcalls`, proxy-wasm 0.2.5) `panic!` on any status they
//! do not expect, and its `Status` enum has no `Unimplemented` (12), so a host that answers
//! differently from the SDK's expectation (a header map written outside its phase, a restricted
//! host, another host library) kills the VM and fails every later request on it. Here each call
//! returns `Result<_, HostError>` with the raw status, the caller decides, and data coming back
//! from the host is decoded without panicking ([`crate::headers::decode_map`]). Signatures are
//! those of ABI v0.2.1 (proxy-wasm/spec `abi-versions/v0.2.1/README.md`); host-allocated
//! results arrive through the SDK's `proxy_on_memory_allocate` and are freed here.
//!
//! The SDK still dispatches callbacks, logs, reads the clock and the plugin configuration, and
//! makes `dispatch_http_call` (its dispatcher must know the call's token).

use std::ptr::null_mut;

use crate::headers::{decode_map, encode_map, FieldValue, HeaderMap};

/// A non-Ok status from the host (spec v0.2.1 "Status codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    NotFound,
    BadArgument,
    CasMismatch,
    Unimplemented,
    /// Any other code, and malformed data returned with Ok.
    Other(u32),
}

impl HostError {
    fn from_raw(code: u32) -> Result<(), HostError> {
        match code {
            0 => Ok(()),
            1 => Err(HostError::NotFound),
            2 => Err(HostError::BadArgument),
            8 => Err(HostError::CasMismatch),
            12 => Err(HostError::Unimplemented),
            c => Err(HostError::Other(c)),
        }
    }
}

/// Header maps (spec `proxy_header_map_type_e`): request, response and callout-response headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Map {
    Request = 0,
    Response = 2,
    HttpCallResponse = 6,
}

/// Buffers (spec `proxy_buffer_type_e`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Buffer {
    RequestBody = 0,
    HttpCallResponseBody = 4,
}

/// Metric kinds (spec `proxy_metric_type_e`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_len: usize) -> u32;
    fn proxy_get_buffer_status(buffer: u32, len: *mut usize, flags: *mut u32) -> u32;
    fn proxy_get_buffer_bytes(buffer: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_set_buffer_bytes(buffer: u32, start: usize, size: usize, data: *const u8, len: usize) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_len: usize,
        body: *const u8,
        body_len: usize,
        headers: *const u8,
        headers_len: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_len: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_len: usize, value: *const u8, value_len: usize, cas: u32) -> u32;
    fn proxy_get_property(path: *const u8, path_len: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_len: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
}

/// Takes ownership of a host-allocated result (allocated by the SDK's
/// `proxy_on_memory_allocate`, as `Vec<u8>` with capacity `size`; the SDK frees it the same way).
///
/// # Safety
/// `data` is null or was returned by the host for exactly `size` bytes.
unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: per the contract above, the allocation came from `Vec::with_capacity(size)`
        // in `proxy_on_memory_allocate` and the host filled `size` bytes.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

/// The whole header map. A map the host serialized wrongly is an error, never a panic.
pub fn map_pairs(map: Map) -> Result<HeaderMap, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals; the result is taken per `take`'s contract.
    let bytes = unsafe {
        HostError::from_raw(proxy_get_header_map_pairs(map as u32, &mut data, &mut size))?;
        take(data, size)
    };
    decode_map(&bytes).ok_or(HostError::Other(0))
}

/// `proxy_replace_header_map_value`: sets `name` to `value` (Envoy `setCopy`: the first
/// occurrence is replaced, others stay; remove first for a single value).
pub fn replace_header(map: Map, name: &str, value: FieldValue<'_>) -> Result<(), HostError> {
    let v = value.as_str();
    // SAFETY: pointers and lengths of live slices.
    HostError::from_raw(unsafe {
        proxy_replace_header_map_value(map as u32, name.as_ptr(), name.len(), v.as_ptr(), v.len())
    })
}

/// `proxy_remove_header_map_value`: removes every occurrence of `name`.
pub fn remove_header(map: Map, name: &str) -> Result<(), HostError> {
    // SAFETY: pointer and length of a live slice.
    HostError::from_raw(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// The whole buffer: its length from `proxy_get_buffer_status`, then its bytes.
pub fn buffer(buffer: Buffer) -> Result<Vec<u8>, HostError> {
    let (mut len, mut flags) = (0usize, 0u32);
    // SAFETY: out-pointers to locals.
    HostError::from_raw(unsafe { proxy_get_buffer_status(buffer as u32, &mut len, &mut flags) })?;
    buffer_range(buffer, 0, len)
}

/// Up to `max` bytes of a buffer from `start` (the host clamps to the buffer's end).
pub fn buffer_range(buffer: Buffer, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals; the result is taken per `take`'s contract.
    unsafe {
        HostError::from_raw(proxy_get_buffer_bytes(buffer as u32, start, max, &mut data, &mut size))?;
        Ok(take(data, size))
    }
}

/// Replaces `size` bytes from `start` with `value` (Envoy accepts start 0, or start at the end
/// to append).
pub fn set_buffer(buffer: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointer and length of a live slice.
    HostError::from_raw(unsafe { proxy_set_buffer_bytes(buffer as u32, start, size, value.as_ptr(), value.len()) })
}

/// A local reply; the host sends it after the current callback returns.
pub fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    let h = encode_map(&pairs);
    // SAFETY: pointers and lengths of live slices; -1 means "no gRPC status".
    HostError::from_raw(unsafe {
        proxy_send_local_response(
            status,
            null_mut(),
            0,
            body.as_ptr(),
            body.len(),
            h.as_ptr(),
            h.len(),
            -1,
        )
    })
}

/// A shared-data value and its CAS token; `Ok(None)` when the key does not exist.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: out-pointers to locals; the result is taken per `take`'s contract.
    let r = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match HostError::from_raw(r) {
        // SAFETY: the host returned Ok with this allocation.
        Ok(()) => Ok(Some((unsafe { take(data, size) }, cas))),
        Err(HostError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a shared-data value; `cas` 0 writes unconditionally, any other value only if the
/// stored value still has that token (`CasMismatch` otherwise).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: pointers and lengths of live slices.
    HostError::from_raw(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

/// A property (`path` segments joined by NUL, as the spec serializes them).
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    let joined = path.join("\0");
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals; the result is taken per `take`'s contract.
    let r = unsafe { proxy_get_property(joined.as_ptr(), joined.len(), &mut data, &mut size) };
    match HostError::from_raw(r) {
        // SAFETY: the host returned Ok with this allocation.
        Ok(()) => Ok(Some(unsafe { take(data, size) })),
        Err(HostError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn define_metric(kind: MetricKind, name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: pointer and length of a live slice, out-pointer to a local.
    HostError::from_raw(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), HostError> {
    // SAFETY: plain values.
    HostError::from_raw(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: plain values.
    HostError::from_raw(unsafe { proxy_record_metric(id, value) })
}

pub fn set_tick_period_ms(ms: u32) -> Result<(), HostError> {
    // SAFETY: a plain value.
    HostError::from_raw(unsafe { proxy_set_tick_period_milliseconds(ms) })
}
