//! Property hostcalls (`proxy_get_property`, `proxy_set_property`): the paths host-sim answers.

use wasmtime::Linker;

use crate::abi::Status;
use crate::options::HostProfile;

use super::guest::{copy_out, read};
use super::hostcall::hostcall;
use super::HostState;

pub(super) fn property(st: &HostState, path: &str) -> Result<Vec<u8>, Status> {
    let o = &st.opts;
    if path == "plugin_root_id" {
        return Ok(o.root_id.clone().into_bytes());
    }
    let s = st.streams.get(&st.effective);
    if let Some(s) = s {
        if let Some(v) = s.set_properties.get(path) {
            return Ok(v.clone());
        }
    }
    if let Some(v) = o.properties.get(path) {
        // GCP's tester answers from Test.properties (docs/proxy-wasm.md#the-plugin-tester); production answers only
        // plugin_root_id. Test-supplied properties are served in both profiles.
        return Ok(v.clone());
    }
    if o.profile == HostProfile::Gcp {
        return Err(Status::NotFound);
    }
    match path {
        "plugin_name" => return Ok(o.plugin_name.clone().into_bytes()),
        "plugin_vm_id" => return Ok(o.vm_id.clone().into_bytes()),
        _ => {}
    }
    if let Some(s) = s {
        if let Some(v) = s.stream_properties.get(path) {
            return Ok(v.clone());
        }
        let hdr = |k: &str| {
            s.request
                .headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone().into_bytes())
        };
        let r = match path {
            "request.path" => hdr(":path"),
            "request.url_path" => hdr(":path").map(|p| {
                let p = String::from_utf8_lossy(&p).into_owned();
                p.split('?').next().unwrap_or("").as_bytes().to_vec()
            }),
            "request.method" => hdr(":method"),
            "request.host" => hdr(":authority"),
            "request.scheme" => hdr(":scheme"),
            "request.id" => hdr("x-request-id"),
            "request.protocol" => Some(b"HTTP/1.1".to_vec()),
            "response.code" => s
                .response
                .headers
                .iter()
                .find(|(n, _)| n == ":status")
                .and_then(|(_, v)| v.parse::<i64>().ok())
                // CEL ints are serialized as 8-byte little-endian integers.
                .map(|c| c.to_le_bytes().to_vec()),
            _ => None,
        };
        if let Some(v) = r {
            return Ok(v);
        }
    }
    Err(Status::NotFound)
}

/// A property path as the guest sends it: NUL-separated segments (docs/proxy-wasm.md#properties), joined with `.`; a
/// trailing NUL is allowed.
fn dotted_path(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches('\0')
        .split('\0')
        .collect::<Vec<_>>()
        .join(".")
}

/// `proxy_get_property`, `proxy_set_property`.
pub(super) fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    hostcall!(l, "proxy_get_property", |c, pp, pl, ptr_ptr, size_ptr| {
        let raw = read(c, pp, pl)?;
        let path = dotted_path(&raw);
        let v = property(c.data(), &path)?;
        copy_out(c, &v, ptr_ptr, size_ptr)
    });
    hostcall!(l, "proxy_set_property", |c, pp, pl, vp, vl| {
        let raw = read(c, pp, pl)?;
        let path = dotted_path(&raw);
        let v = read(c, vp, vl)?;
        // Envoy setProperty needs a stream (filter state `wasm.<path>`): NotFound otherwise.
        let s = c.data_mut().stream().ok_or(Status::NotFound)?;
        s.set_properties.insert(path, v);
        Ok(())
    });
    Ok(())
}
