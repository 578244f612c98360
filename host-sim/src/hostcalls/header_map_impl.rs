//! What each header-map hostcall does to a map: the `HeaderMapImpl` operation Envoy's wasm
//! `Context` calls for it, on host-sim's ordered [`Headers`] (names already lower-case).

use crate::abi::{Headers, MapType};

/// Header-name match as Envoy does it: the stored names are lower-case (`LowerCaseString`) and
/// a looked-up name is lower-cased before the compare.
pub(super) fn name_eq(stored: &str, key: &[u8]) -> bool {
    stored.len() == key.len() && stored.bytes().zip(key).all(|(s, k)| s == k.to_ascii_lowercase())
}

// Envoy's wasm `Context` (envoyproxy/envoy `source/extensions/common/wasm/context.cc`) turns each
// header-map hostcall into one `HeaderMapImpl` call (`source/common/http/header_map_impl.cc`) on
// `LowerCaseString(key)`. The functions below are those calls on host-sim's ordered `Headers`,
// whose names are already lower-case.

/// Where `HeaderMapImpl::HeaderList::insert` puts a new entry (`header_map_impl.h`): the list
/// keeps pseudo-headers in front, so a `:` name goes after the last pseudo-header and any other
/// name at the end.
pub(super) fn insert_at(m: &Headers, key: &str) -> usize {
    if key.starts_with(':') {
        m.iter().position(|(k, _)| !k.starts_with(':')).unwrap_or(m.len())
    } else {
        m.len()
    }
}

/// Envoy's default O(1) ("inline") headers: the `INLINE_*_HEADERS` lists of envoyproxy/envoy
/// `envoy/http/header_map.h` (commit e05a2af4b8e1), with the names of
/// `source/common/http/headers.h` and the default `x-envoy` prefix. A header map holds at most
/// one entry of each; extensions can register more (`RegisterCustomInlineHeader`), which depends
/// on the Envoy build and is not modelled.
pub(super) const INLINE_REQUEST: &[&str] = &[
    // INLINE_REQ_STRING_HEADERS
    "x-client-trace-id",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-alt-response",
    "expect",
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "grpc-timeout",
    ":authority",
    ":method",
    ":path",
    ":protocol",
    ":scheme",
    "te",
    "user-agent",
    // INLINE_REQ_NUMERIC_HEADERS
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-stream-duration-ms",
];
/// `INLINE_RESP_HEADERS` (string and numeric).
pub(super) const INLINE_RESPONSE: &[&str] = &[
    "date",
    "x-envoy-degraded",
    "x-envoy-immediate-health-check-fail",
    "x-envoy-ratelimited",
    "x-envoy-upstream-canary",
    "x-envoy-upstream-healthchecked-cluster",
    "location",
    "server",
    "x-envoy-upstream-service-time",
    ":status",
];
/// `INLINE_REQ_RESP_HEADERS`: inline in request and response header maps.
pub(super) const INLINE_REQUEST_RESPONSE: &[&str] = &[
    "connection",
    "content-type",
    "x-envoy-decorator-operation",
    "keep-alive",
    "proxy-connection",
    "proxy-status",
    "x-request-id",
    "transfer-encoding",
    "upgrade",
    "via",
    "content-length",
    "x-envoy-attempt-count",
];
/// `INLINE_RESP_HEADERS_TRAILERS`: inline in response headers and response trailers.
pub(super) const INLINE_RESPONSE_TRAILERS: &[&str] = &["grpc-message", "grpc-status"];

/// Whether `key` (lower-case) is an inline header of map `t`: request headers register
/// REQ + REQ_RESP, response headers RESP + REQ_RESP + RESP_HEADERS_TRAILERS, response trailers
/// RESP_HEADERS_TRAILERS, request trailers none (the `StaticLookupTable` constructors in
/// `header_map_impl.cc`). The http-call response maps are Envoy response maps.
pub(super) fn is_inline(t: MapType, key: &str) -> bool {
    let lists: &[&[&str]] = match t {
        MapType::HttpRequestHeaders => &[INLINE_REQUEST, INLINE_REQUEST_RESPONSE],
        MapType::HttpResponseHeaders | MapType::HttpCallResponseHeaders => {
            &[INLINE_RESPONSE, INLINE_REQUEST_RESPONSE, INLINE_RESPONSE_TRAILERS]
        }
        MapType::HttpResponseTrailers | MapType::HttpCallResponseTrailers => &[INLINE_RESPONSE_TRAILERS],
        _ => &[],
    };
    lists.iter().any(|l| l.contains(&key))
}

/// The name Envoy files `key` under in map `t`: the request-header lookup table maps the HTTP/1
/// name `host` onto the `:authority` slot (`HostLegacy` in the
/// `StaticLookupTable<RequestHeaderMap>` constructor, `header_map_impl.cc`), so a guest's `host`
/// reads, adds to, replaces and removes `:authority`. Response maps have no such alias.
pub(super) fn filed_name(t: MapType, key: &[u8]) -> &[u8] {
    if t == MapType::HttpRequestHeaders && key.eq_ignore_ascii_case(b"host") {
        b":authority"
    } else {
        key
    }
}

/// `HeaderMapImpl::get(LowerCaseString(key))[0]`, the only value getHeaderMapValue returns: the
/// first entry of that name.
pub(super) fn first_of(m: &Headers, t: MapType, key: &[u8]) -> Option<usize> {
    let key = filed_name(t, key);
    m.iter().position(|(k, _)| name_eq(k, key))
}

/// `HeaderMapImpl::addCopy(LowerCaseString(key), value)` (via `insertByKey`): an inline header
/// that is already present gets the value appended by `appendToHeader` (nothing for an empty
/// value, a `,` between two non-empty ones); any other add inserts a new entry.
pub(super) fn add_copy(m: &mut Headers, t: MapType, key: &[u8], value: &str) {
    let key = String::from_utf8_lossy(filed_name(t, key)).to_ascii_lowercase();
    if is_inline(t, &key) {
        if let Some((_, v)) = m.iter_mut().find(|(k, _)| *k == key) {
            if !value.is_empty() {
                if !v.is_empty() {
                    v.push(',');
                }
                v.push_str(value);
            }
            return;
        }
    }
    m.insert(insert_at(m, &key), (key, value.to_string()));
}

/// `HeaderMapImpl::remove(LowerCaseString(key))`: every entry of that name.
pub(super) fn remove_all(m: &mut Headers, t: MapType, key: &[u8]) {
    let key = filed_name(t, key);
    m.retain(|(k, _)| !name_eq(k, key));
}

/// Envoy `setHeaderMapPairs`: `remove` every name in the map, then `addCopy` each pair in order,
/// so the pairs are stored by the add rules (lower-case names, pseudo-headers in front, inline
/// headers joined, `host` as `:authority`), not copied as given.
pub(super) fn set_pairs(m: &mut Headers, t: MapType, pairs: &Headers) {
    m.clear();
    for (k, v) in pairs {
        add_copy(m, t, k.as_bytes(), v);
    }
}

/// `HeaderMapImpl::setCopy`, which replaceHeaderMapValue calls: `remove(key)` then
/// `addCopy(key, value)` since Envoy 1.19 (envoyproxy/envoy#16209 removed the runtime guard
/// `http_set_copy_replace_all_headers` and the older "overwrite the first occurrence, keep the
/// rest" path). So every occurrence goes, and the one new entry lands where a new header would,
/// not where the first old one was.
pub(super) fn set_copy(m: &mut Headers, t: MapType, key: &[u8], value: &str) {
    remove_all(m, t, key);
    add_copy(m, t, key, value);
}
