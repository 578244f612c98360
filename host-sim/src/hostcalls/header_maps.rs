//! Header-map hostcalls (`proxy_*_header_map_*`): which map a call reaches in which callback,
//! and the hostcalls themselves. What each call does to the map is in [`super::header_map_impl`].

use wasmtime::Linker;

use crate::abi::{serialize_map_into, serialized_len, to_pairs_or_empty, Direction, Headers, MapType, Status};
use crate::options::HostProfile;

use super::guest::{copy_out_from, guest, guest2, guest_alloc, guest_dst, mem, read, write_u32};
use super::header_map_impl::{add_copy, first_of, remove_all, set_copy, set_pairs};
use super::hostcall::hostcall;
use super::{Callback, HostState};

pub(super) enum MapAccess {
    Live,
    /// Map exists but was already forwarded (Envoy keeps the pointer when headers paused and
    /// were later continued: writes succeed but have no effect upstream).
    Late,
}

/// Envoy `getMap`/`getConstMap`: a null map gives `BadArgument` (docs/proxy-wasm.md#header-and-body-phases).
/// GCP: a header map is reachable only during its own header callback
/// (docs/proxy-wasm.md#the-plugin-tester).
pub(super) fn map_access(st: &HostState, t: MapType, write: bool) -> Result<MapAccess, Status> {
    if let (MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers, false) = (t, write) {
        return if st.call_response.is_some() {
            Ok(MapAccess::Live)
        } else {
            Err(Status::BadArgument)
        };
    }
    if matches!(t, MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers) {
        return Err(Status::BadArgument);
    }
    let s = st.streams.get(&st.effective).ok_or(Status::BadArgument)?;
    if st.opts.profile == HostProfile::Gcp {
        let ok = matches!(
            (t, st.callback),
            (MapType::HttpRequestHeaders, Callback::RequestHeaders)
                | (MapType::HttpResponseHeaders, Callback::ResponseHeaders)
        );
        return if ok {
            Ok(MapAccess::Live)
        } else {
            Err(Status::BadArgument)
        };
    }
    // on_log reads the access-log copies of the headers (read only).
    if st.callback == Callback::Log && !write {
        return Ok(MapAccess::Live);
    }
    let (dir, trailers) = Direction::of_map(t).ok_or(Status::BadArgument)?;
    let h = s.half(dir);
    let (live, sent) = if trailers {
        (h.trailers_live, false)
    } else {
        (h.headers_live, h.headers_sent)
    };
    match (live, sent) {
        (false, _) => Err(Status::BadArgument),
        (true, true) => Ok(MapAccess::Late),
        (true, false) => Ok(MapAccess::Live),
    }
}

pub(super) fn map_ref(st: &HostState, t: MapType) -> Option<&Headers> {
    match t {
        MapType::HttpCallResponseHeaders => st.call_response.as_ref().map(|r| &r.headers),
        MapType::HttpCallResponseTrailers => st.call_response.as_ref().map(|r| &r.trailers),
        _ => {
            let s = st.streams.get(&st.effective)?;
            let (dir, trailers) = Direction::of_map(t)?;
            let h = s.half(dir);
            Some(if trailers { &h.trailers } else { &h.headers })
        }
    }
}

pub(super) fn map_mut<'a>(st: &'a mut HostState, t: MapType, call: &str) -> Result<&'a mut Headers, Status> {
    let late = matches!(map_access(st, t, true)?, MapAccess::Late);
    let eff = st.effective;
    let s = st.streams.get_mut(&eff).ok_or(Status::BadArgument)?;
    if late {
        s.late_mutations.push(format!("{call} on {t:?} after it was forwarded"));
    }
    if t == MapType::HttpRequestHeaders && st.opts.profile == HostProfile::Envoy && !late {
        // ABI 0.2.1: Envoy clears the route cache on request-header mutation (docs/proxy-wasm.md#route-cache).
        s.route_cache_clears += 1;
    }
    let (dir, trailers) = Direction::of_map(t).ok_or(Status::BadArgument)?;
    let h = s.half_mut(dir);
    Ok(if trailers { &mut h.trailers } else { &mut h.headers })
}

pub(super) fn map_type(v: i32) -> Result<MapType, Status> {
    MapType::from_raw(v).ok_or(Status::BadArgument)
}

/// `proxy_get_header_map_pairs`, `proxy_set_header_map_pairs`, `proxy_get_header_map_size`,
/// `proxy_get_header_map_value`, `proxy_add_header_map_value`,
/// `proxy_replace_header_map_value`, `proxy_remove_header_map_value`.
pub(super) fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    hostcall!(l, "proxy_get_header_map_pairs", |c, t, ptr_ptr, size_ptr| {
        let t = map_type(t)?;
        map_access(c.data(), t, false)?;
        let pairs = map_ref(c.data(), t).ok_or(Status::BadArgument)?;
        // cpp-host get_header_map_pairs: no pairs is `copyToPointerSize("")`, a null pointer and
        // size 0 with nothing allocated (not a serialized zero count).
        if pairs.is_empty() {
            write_u32(c, ptr_ptr, 0)?;
            write_u32(c, size_ptr, 0)?;
            return Ok(());
        }
        // Serialized straight into the guest's allocation (cpp-host sizes, allocates, then
        // writes the pairs into the VM).
        let len = serialized_len(pairs);
        let p = guest_alloc(c, len)?;
        let m = mem(c)?;
        let (data, st) = m.data_and_store_mut(&mut *c);
        let pairs = map_ref(st, t).ok_or(Status::BadArgument)?;
        if serialized_len(pairs) != len {
            return Err(Status::InternalFailure.into());
        }
        serialize_map_into(pairs, guest_dst(data, p, len)?);
        write_u32(c, ptr_ptr, p as u32)?;
        write_u32(c, size_ptr, len as u32)?;
        Ok(())
    });
    hostcall!(l, "proxy_set_header_map_pairs", |c, t, ptr, len| {
        let t = map_type(t)?;
        let pairs = to_pairs_or_empty(&read(c, ptr, len)?);
        let m = map_mut(c.data_mut(), t, "set_header_map_pairs")?;
        set_pairs(m, t, &pairs);
        Ok(())
    });
    hostcall!(l, "proxy_get_header_map_size", |c, t, ret| {
        let t = map_type(t)?;
        // Envoy getHeaderMapSize takes the map with `getMap`, the accessor of the writing calls
        // (no http-call response maps, no access-log copies), and answers
        // `HeaderMap::byteSize()`: names plus values, not the serialized size.
        map_access(c.data(), t, true)?;
        let m = map_ref(c.data(), t).ok_or(Status::BadArgument)?;
        let n: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
        write_u32(c, ret, n as u32)?;
        Ok(())
    });
    hostcall!(l, "proxy_get_header_map_value", |c, t, kp, kl, ptr_ptr, size_ptr| {
        let t = map_type(t)?;
        let (key, st) = guest(c, kp, kl)?;
        map_access(st, t, false)?;
        let i = first_of(map_ref(st, t).ok_or(Status::BadArgument)?, t, key).ok_or(Status::NotFound)?;
        copy_out_from(c, ptr_ptr, size_ptr, |st| {
            map_ref(st, t)
                .and_then(|m| m.get(i))
                .map(|(_, v)| v.as_bytes())
                .ok_or(Status::InternalFailure)
        })
    });
    hostcall!(l, "proxy_add_header_map_value", |c, t, kp, kl, vp, vl| {
        let t = map_type(t)?;
        let (key, val, st) = guest2(c, (kp, kl), (vp, vl))?;
        let val = String::from_utf8_lossy(val);
        add_copy(map_mut(st, t, "add_header_map_value")?, t, key, &val);
        Ok(())
    });
    hostcall!(l, "proxy_replace_header_map_value", |c, t, kp, kl, vp, vl| {
        let t = map_type(t)?;
        let (key, val, st) = guest2(c, (kp, kl), (vp, vl))?;
        let val = String::from_utf8_lossy(val);
        set_copy(map_mut(st, t, "replace_header_map_value")?, t, key, &val);
        Ok(())
    });
    hostcall!(l, "proxy_remove_header_map_value", |c, t, kp, kl| {
        let t = map_type(t)?;
        let (key, st) = guest(c, kp, kl)?;
        remove_all(map_mut(st, t, "remove_header_map_value")?, t, key);
        Ok(())
    });
    Ok(())
}
