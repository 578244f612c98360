//! proxy-wasm ABI v0.2.1 constants and the header-map wire format.
//!
//! Source: proxy-wasm/spec `abi-versions/v0.2.1/README.md` (docs/proxy-wasm.md#the-abi) and the
//! discriminants the Rust SDK 0.2.5 uses (`src/types.rs`).

use std::fmt;

/// Hostcall status (`WasmResult` in cpp-host). `Unimplemented` (12) exists in the spec but not in
/// the Rust SDK's enum (docs/proxy-wasm.md#unexpected-statuses-panic), so a guest that receives it panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    /// Statuses that are ordinary answers rather than errors (a missing key, an empty queue, a
    /// lost CAS race). Strict mode only fails on the others.
    pub fn is_benign(self) -> bool {
        matches!(
            self,
            Status::Ok | Status::NotFound | Status::Empty | Status::CasMismatch
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self, *self as u32)
    }
}

/// `proxy_on_*` callbacks return `Action` (spec: CONTINUE=0, PAUSE=1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    pub fn from_raw(v: i32) -> Action {
        // Any non-zero value is treated as a stop by cpp-host; 1 is the only one the SDK emits.
        if v == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    HttpRequestHeaders,
    HttpRequestTrailers,
    HttpResponseHeaders,
    HttpResponseTrailers,
    GrpcReceiveInitialMetadata,
    GrpcReceiveTrailingMetadata,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    pub fn from_raw(v: i32) -> Option<MapType> {
        Some(match v {
            0 => MapType::HttpRequestHeaders,
            1 => MapType::HttpRequestTrailers,
            2 => MapType::HttpResponseHeaders,
            3 => MapType::HttpResponseTrailers,
            4 => MapType::GrpcReceiveInitialMetadata,
            5 => MapType::GrpcReceiveTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferType {
    HttpRequestBody,
    HttpResponseBody,
    DownstreamData,
    UpstreamData,
    HttpCallResponseBody,
    GrpcReceiveBuffer,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    pub fn from_raw(v: i32) -> Option<BufferType> {
        Some(match v {
            0 => BufferType::HttpRequestBody,
            1 => BufferType::HttpResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

/// One direction of an HTTP stream: the request (client to upstream) or the response (upstream
/// to client). The ABI names the two in pairs (`HttpRequestHeaders`/`HttpResponseHeaders`,
/// `proxy_on_request_body`/`proxy_on_response_body`, `StreamType::HttpRequest`/`HttpResponse`);
/// host-sim keeps one record per direction and parameterises the code by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    /// Both directions, request first (the order Envoy runs them in after a VM call).
    pub const BOTH: [Direction; 2] = [Direction::Request, Direction::Response];

    /// The direction of an HTTP-stream header or trailer map and whether it is the trailers;
    /// None for other maps (gRPC metadata, http-call responses).
    pub fn of_map(t: MapType) -> Option<(Direction, bool)> {
        match t {
            MapType::HttpRequestHeaders => Some((Direction::Request, false)),
            MapType::HttpRequestTrailers => Some((Direction::Request, true)),
            MapType::HttpResponseHeaders => Some((Direction::Response, false)),
            MapType::HttpResponseTrailers => Some((Direction::Response, true)),
            _ => None,
        }
    }

    /// The direction whose body `t` is, if it is an HTTP-stream body.
    pub fn of_body(t: BufferType) -> Option<Direction> {
        match t {
            BufferType::HttpRequestBody => Some(Direction::Request),
            BufferType::HttpResponseBody => Some(Direction::Response),
            _ => None,
        }
    }

    /// The direction `proxy_continue_stream`/`proxy_close_stream` name, if an HTTP one.
    pub fn of_stream(t: StreamType) -> Option<Direction> {
        match t {
            StreamType::HttpRequest => Some(Direction::Request),
            StreamType::HttpResponse => Some(Direction::Response),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamType {
    HttpRequest,
    HttpResponse,
    Downstream,
    Upstream,
}

impl StreamType {
    pub fn from_raw(v: i32) -> Option<StreamType> {
        Some(match v {
            0 => StreamType::HttpRequest,
            1 => StreamType::HttpResponse,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub fn from_raw(v: i32) -> Option<MetricType> {
        Some(match v {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    pub fn from_raw(v: i32) -> Option<LogLevel> {
        Some(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// An ordered header map, as the host keeps it. Keys are stored lower-case, as Envoy's
/// `LowerCaseString` does for every key a plugin adds or looks up.
pub type Headers = Vec<(String, String)>;

/// `h` with every name lower-cased, as Envoy keeps names (`LowerCaseString`); values as given.
pub fn lower_names(h: Headers) -> Headers {
    h.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()
}

/// Serialize pairs in the v0.2.1 wire format: `u32` count, then `(u32 key_len, u32 value_len)` per
/// pair, then each key and value followed by a NUL byte (spec "Header maps"; little-endian).
pub fn serialize_map(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = vec![0; serialized_len(pairs)];
    serialize_map_into(pairs, &mut out);
    out
}

/// Size of [`serialize_map`]'s output.
pub fn serialized_len(pairs: &[(String, String)]) -> usize {
    pairs.iter().map(|(k, v)| 8 + k.len() + v.len() + 2).sum::<usize>() + 4
}

/// [`serialize_map`] into `out`, which must be [`serialized_len`] bytes long (the host writes
/// straight into the guest's allocation).
pub fn serialize_map_into(pairs: &[(String, String)], out: &mut [u8]) {
    let mut at = 0;
    let mut put = |b: &[u8]| {
        out[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    put(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        put(&(k.len() as u32).to_le_bytes());
        put(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        put(k.as_bytes());
        put(&[0]);
        put(v.as_bytes());
        put(&[0]);
    }
}

/// cpp-host caps deserialized maps at 1 MiB and 1024 pairs (`include/proxy-wasm/limits.h`,
/// docs/proxy-wasm.md#memory-limits).
pub const MAX_MAP_BYTES: usize = 1 << 20;
pub const MAX_MAP_PAIRS: usize = 1024;

/// Parse the wire format produced by a guest. Malformed input is a guest error, never a panic.
pub fn deserialize_map(bytes: &[u8]) -> Result<Headers, Status> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.len() > MAX_MAP_BYTES || bytes.len() < 4 {
        return Err(Status::BadArgument);
    }
    let rd = |at: usize| -> Result<usize, Status> {
        let b = bytes.get(at..at + 4).ok_or(Status::BadArgument)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = rd(0)?;
    if n > MAX_MAP_PAIRS {
        return Err(Status::BadArgument);
    }
    let mut lens = Vec::with_capacity(n);
    for i in 0..n {
        lens.push((rd(4 + i * 8)?, rd(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (kl, vl) in lens {
        let k = bytes
            .get(at..at.checked_add(kl).ok_or(Status::BadArgument)?)
            .ok_or(Status::BadArgument)?;
        at += kl + 1;
        let v = bytes
            .get(at..at.checked_add(vl).ok_or(Status::BadArgument)?)
            .ok_or(Status::BadArgument)?;
        at += vl + 1;
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Ok(out)
}

/// The pairs proxy-wasm-cpp-host hands to the host for `proxy_set_header_map_pairs`:
/// `PairsUtil::toPairs` (`src/pairs_util.cc`, proxy-wasm/proxy-wasm-cpp-host commit 52a02917b301)
/// answers an empty list, not an error, for anything it cannot read in full: under 4 bytes, over
/// [`MAX_MAP_BYTES`] or [`MAX_MAP_PAIRS`], a length past the end, a key or value not followed by
/// a NUL, or bytes left over. The caller then applies the empty list (Envoy clears the map).
pub fn to_pairs_or_empty(bytes: &[u8]) -> Headers {
    to_pairs(bytes).unwrap_or_default()
}

fn to_pairs(bytes: &[u8]) -> Option<Headers> {
    if bytes.len() > MAX_MAP_BYTES {
        return None;
    }
    let rd = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = rd(0)?;
    if n > MAX_MAP_PAIRS {
        return None;
    }
    let mut at = 4 + n * 8;
    if at > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut field = |len: usize| -> Option<String> {
            let end = at.checked_add(len)?;
            let s = bytes.get(at..end)?;
            if *bytes.get(end)? != 0 {
                return None;
            }
            at = end + 1;
            Some(String::from_utf8_lossy(s).into_owned())
        };
        let k = field(rd(4 + i * 8)?)?;
        let v = field(rd(8 + i * 8)?)?;
        out.push((k, v));
    }
    (at == bytes.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip() {
        let m = vec![(":path".to_string(), "/x".to_string()), ("a".into(), "".into())];
        let b = serialize_map(&m);
        assert_eq!(b.len(), serialized_len(&m));
        assert_eq!(b.len(), 4 + 2 * 8 + (5 + 2 + 2) + (1 + 2));
        assert_eq!(deserialize_map(&b).unwrap(), m);
        assert_eq!(serialize_map(&[]), 0u32.to_le_bytes());
    }

    #[test]
    fn map_truncated_is_bad_argument() {
        let m = vec![("key".to_string(), "value".to_string())];
        let b = serialize_map(&m);
        assert_eq!(deserialize_map(&b[..b.len() - 3]), Err(Status::BadArgument));
        assert_eq!(deserialize_map(&[1, 0, 0]), Err(Status::BadArgument));
        // count says 2000 pairs: over the cpp-host cap
        assert_eq!(deserialize_map(&2000u32.to_le_bytes()), Err(Status::BadArgument));
    }

    #[test]
    fn cpp_host_pairs_are_all_or_nothing() {
        let m = vec![("key".to_string(), "value".to_string()), ("".into(), "".into())];
        let b = serialize_map(&m);
        assert_eq!(to_pairs_or_empty(&b), m);
        assert_eq!(to_pairs_or_empty(&b[..b.len() - 1]), vec![]);
        assert_eq!(to_pairs_or_empty(&[b.as_slice(), &[0]].concat()), vec![]);
        assert_eq!(to_pairs_or_empty(&2000u32.to_le_bytes()), vec![]);
        assert_eq!(to_pairs_or_empty(&[]), vec![]);
        assert_eq!(to_pairs_or_empty(&0u32.to_le_bytes()), vec![]);
    }
}
