//! `proxy_call_foreign_function`: the foreign functions Envoy registers that host-sim models.

use wasmtime::Linker;

use crate::abi::Status;

use super::guest::{copy_out, read, read_str};
use super::hostcall::hostcall;
use super::HostState;

/// Decode the `SetEnvoyFilterStateArguments` protobuf (`path`=1, `value`=2, `span`=3) used by
/// the SDK's `envoy_tcp_routing` example.
pub(super) fn decode_filter_state_args(b: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut i = 0;
    let (mut path, mut value) = (None, Vec::new());
    let varint = |i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    while i < b.len() {
        let key = varint(&mut i)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut i)?;
            }
            2 => {
                let n = varint(&mut i)? as usize;
                let bytes = b.get(i..i.checked_add(n)?)?.to_vec();
                i += n;
                match field {
                    1 => path = Some(String::from_utf8(bytes).ok()?),
                    2 => value = bytes,
                    _ => {}
                }
            }
            _ => return None,
        }
    }
    Some((path?, value))
}

/// Filter-state keys with a registered object factory in Envoy. Unknown keys give `NotFound`
/// (Envoy `setEnvoyFilterState`: no factory → NotFound; bad bytes → BadArgument).
pub(super) fn filter_state_factory(key: &str, value: &[u8]) -> Result<(), Status> {
    match key {
        "envoy.network.transport_socket.original_dst_address" => {
            let s = std::str::from_utf8(value).map_err(|_| Status::BadArgument)?;
            s.parse::<std::net::SocketAddr>()
                .map(|_| ())
                .map_err(|_| Status::BadArgument)
        }
        "envoy.tcp_proxy.cluster"
        | "envoy.upstream.dynamic_host"
        | "envoy.network.upstream_server_name"
        | "envoy.network.application_protocols" => Ok(()),
        "envoy.upstream.dynamic_port" => {
            let s = std::str::from_utf8(value).map_err(|_| Status::BadArgument)?;
            s.parse::<u16>().map(|_| ()).map_err(|_| Status::BadArgument)
        }
        _ => Err(Status::NotFound),
    }
}

/// `proxy_call_foreign_function` (`clear_route_cache`, `set_envoy_filter_state`).
pub(super) fn define(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    hostcall!(
        l,
        "proxy_call_foreign_function",
        |c, np, nl, ap, al, res_ptr, res_size| {
            let name = read_str(c, np, nl)?;
            let args = read(c, ap, al)?;
            match name.as_str() {
                // envoy source/extensions/common/wasm/foreign.cc (docs/proxy-wasm.md#route-cache)
                "clear_route_cache" => {
                    let s = c.data_mut().stream().ok_or(Status::NotFound)?;
                    s.route_cache_clears += 1;
                }
                "set_envoy_filter_state" => {
                    let (key, value) = decode_filter_state_args(&args).ok_or(Status::BadArgument)?;
                    filter_state_factory(&key, &value)?;
                    let s = c.data_mut().stream().ok_or(Status::NotFound)?;
                    s.filter_state.insert(key, value);
                }
                // cpp-host exports.cc call_foreign_function: unknown name → NotFound
                // (docs/proxy-wasm.md#foreign-functions-and-filter-state).
                _ => return Err(Status::NotFound.into()),
            }
            copy_out(c, &[], res_ptr, res_size)
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_state_args_decode() {
        // path = "a", value = "1.2.3.4:80", span = 1
        let mut b = vec![0x0a, 1, b'a', 0x12, 10];
        b.extend_from_slice(b"1.2.3.4:80");
        b.extend_from_slice(&[0x18, 1]);
        assert_eq!(decode_filter_state_args(&b), Some(("a".into(), b"1.2.3.4:80".to_vec())));
        assert_eq!(decode_filter_state_args(&[0x0a, 5, b'a']), None);
    }

    #[test]
    fn filter_state_factories() {
        let k = "envoy.network.transport_socket.original_dst_address";
        assert_eq!(filter_state_factory(k, b"10.0.0.1:8000"), Ok(()));
        assert_eq!(filter_state_factory(k, b"nope"), Err(Status::BadArgument));
        assert_eq!(filter_state_factory("made.up", b"x"), Err(Status::NotFound));
    }
}
