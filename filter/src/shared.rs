//! Pure helpers for the state the filter keeps in proxy shared data, and for snapshot intake.
//! No hostcalls here, so everything is unit- and property-tested natively.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use picker_core::prefix::EndpointKey;
use picker_core::{InFlight, Pool, Snapshot};

/// Shared-data keys (one namespace per `vm_id`, shared by every worker VM; proxywasm.md §4.3).
pub const KEY_SNAPSHOT: &str = "wasm-epp/snapshot";
pub const KEY_SNAPSHOT_SEQ: &str = "wasm-epp/snapshot-seq";
pub const KEY_INFLIGHT: &str = "wasm-epp/inflight";

// === in-flight table ===

/// Per-endpoint in-flight counts shared by all workers: `n × (key u64 | requests u32 | tokens u32)`,
/// little-endian, sorted by key. Small (16 bytes per endpoint) because every request reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InFlightTable {
    entries: Vec<(EndpointKey, u32, u32)>,
}

/// Most endpoints tracked (matches the snapshot bound).
pub const MAX_INFLIGHT_ENTRIES: usize = picker_core::snapshot::MAX_ENDPOINTS;

impl InFlightTable {
    /// Decodes; anything malformed (a value written by another build, or corruption) decodes as
    /// empty rather than failing requests: counts are advisory load hints.
    pub fn decode(bytes: &[u8]) -> InFlightTable {
        if !bytes.len().is_multiple_of(16) || bytes.len() / 16 > MAX_INFLIGHT_ENTRIES {
            return InFlightTable::default();
        }
        let entries = bytes
            .chunks_exact(16)
            .map(|c| {
                let mut k = [0u8; 8];
                k.copy_from_slice(&c[..8]);
                let mut r = [0u8; 4];
                r.copy_from_slice(&c[8..12]);
                let mut t = [0u8; 4];
                t.copy_from_slice(&c[12..16]);
                (u64::from_le_bytes(k), u32::from_le_bytes(r), u32::from_le_bytes(t))
            })
            .collect();
        InFlightTable { entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 16);
        for (k, r, t) in &self.entries {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&r.to_le_bytes());
            out.extend_from_slice(&t.to_le_bytes());
        }
        out
    }

    /// Adds (`sign > 0`) or removes one request of `tokens` for `key`, saturating at zero; entries
    /// that reach zero are dropped so departed endpoints do not accumulate.
    pub fn apply(&mut self, key: EndpointKey, tokens: u32, add: bool) {
        match self.entries.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => {
                let e = &mut self.entries[i];
                if add {
                    e.1 = e.1.saturating_add(1);
                    e.2 = e.2.saturating_add(tokens);
                } else {
                    e.1 = e.1.saturating_sub(1);
                    e.2 = e.2.saturating_sub(tokens);
                    if e.1 == 0 {
                        self.entries.remove(i);
                    }
                }
            }
            Err(i) if add && self.entries.len() < MAX_INFLIGHT_ENTRIES => self.entries.insert(i, (key, 1, tokens)),
            Err(_) => {}
        }
    }

    pub fn get(&self, key: EndpointKey) -> InFlight {
        match self.entries.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => InFlight {
                requests: self.entries[i].1,
                tokens: self.entries[i].2 as u64,
            },
            Err(_) => InFlight::default(),
        }
    }

    /// Counts aligned with `pool.endpoints()`, as `picker_core::pick` takes them.
    pub fn for_pool(&self, pool: &Pool) -> Vec<InFlight> {
        pool.keys().iter().map(|k| self.get(*k)).collect()
    }

    pub fn total_requests(&self) -> u64 {
        self.entries.iter().map(|e| e.1 as u64).sum()
    }
}

// The request path works on the encoded bytes directly (below): one lookup per pool endpoint and
// one in-place update per acquire or release, with no decode into a `Vec` and no re-encode.
// Each function gives exactly what `InFlightTable` gives for the same bytes (property-tested).

type InFlightRecord = [u8; 16];

/// The 16-byte records of an encoded table, or none if the bytes are malformed (as `decode`).
fn inflight_records(bytes: &[u8]) -> &[InFlightRecord] {
    let (records, rest) = bytes.as_chunks::<16>();
    if !rest.is_empty() || records.len() > MAX_INFLIGHT_ENTRIES {
        return &[];
    }
    records
}

fn record_key(r: &InFlightRecord) -> EndpointKey {
    let mut k = [0u8; 8];
    k.copy_from_slice(&r[..8]);
    u64::from_le_bytes(k)
}

fn record_counts(r: &InFlightRecord) -> (u32, u32) {
    let (mut q, mut t) = ([0u8; 4], [0u8; 4]);
    q.copy_from_slice(&r[8..12]);
    t.copy_from_slice(&r[12..16]);
    (u32::from_le_bytes(q), u32::from_le_bytes(t))
}

fn set_record_counts(r: &mut InFlightRecord, requests: u32, tokens: u32) {
    r[8..12].copy_from_slice(&requests.to_le_bytes());
    r[12..16].copy_from_slice(&tokens.to_le_bytes());
}

/// `InFlightTable::decode(bytes).get(key)`, read straight from the encoded bytes.
pub fn inflight_get(bytes: &[u8], key: EndpointKey) -> InFlight {
    let records = inflight_records(bytes);
    match records.binary_search_by_key(&key, record_key) {
        Ok(i) => {
            let (requests, tokens) = record_counts(&records[i]);
            InFlight {
                requests,
                tokens: tokens as u64,
            }
        }
        Err(_) => InFlight::default(),
    }
}

/// `InFlightTable::decode(bytes).for_pool(pool)`, into a buffer the caller reuses.
pub fn inflight_for_pool(bytes: &[u8], pool: &Pool, out: &mut Vec<InFlight>) {
    out.clear();
    out.extend(pool.keys().iter().map(|k| inflight_get(bytes, *k)));
}

/// `InFlightTable::apply` on the encoded bytes, in place: the result is byte for byte
/// `decode(bytes)` + `apply` + `encode`.
pub fn inflight_apply(bytes: &mut Vec<u8>, key: EndpointKey, tokens: u32, add: bool) {
    if inflight_records(bytes).is_empty() {
        bytes.clear();
    }
    let found = inflight_records(bytes).binary_search_by_key(&key, record_key);
    match found {
        Ok(i) => {
            let r = &mut bytes.as_chunks_mut::<16>().0[i];
            let (requests, toks) = record_counts(r);
            if add {
                set_record_counts(r, requests.saturating_add(1), toks.saturating_add(tokens));
            } else if requests.saturating_sub(1) == 0 {
                bytes.drain(i * 16..(i + 1) * 16);
            } else {
                set_record_counts(r, requests - 1, toks.saturating_sub(tokens));
            }
        }
        Err(i) if add && bytes.len() / 16 < MAX_INFLIGHT_ENTRIES => {
            let mut r = [0u8; 16];
            r[..8].copy_from_slice(&key.to_le_bytes());
            set_record_counts(&mut r, 1, tokens);
            bytes.splice(i * 16..i * 16, r);
        }
        Err(_) => {}
    }
}

// === routing header ===

/// Appends `addr` as `addr.to_string()` would. IPv4 (every address a snapshot or a static list
/// holds today) is written digit by digit: this runs for every address of the routing list of
/// every request, and `core::fmt` costs several times more in the module.
pub fn push_addr(out: &mut String, addr: &SocketAddr) {
    fn push_decimal(out: &mut String, mut n: u16) {
        let mut digits = [0u8; 5];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for d in &digits[i..] {
            out.push(char::from(*d));
        }
    }
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, u16::from(octet));
            }
            out.push(':');
            push_decimal(out, a.port());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

// === request headers ===

/// The first value of header `name` in a header map as the host returns it (names compared
/// case-insensitively, as Envoy's lower-case header names make them), like
/// `proxy_get_header_map_value`. Non-UTF-8 bytes become U+FFFD instead of failing.
pub fn header_value<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<Cow<'a, str>> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v))
}

/// Whether header `name` is present (case-insensitive).
pub fn has_header(headers: &[(String, Vec<u8>)], name: &str) -> bool {
    headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

// === snapshot intake ===

/// Why a snapshot push was refused, with the HTTP status the filter answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntakeError {
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 403: the source address is not allowed.
    Forbidden,
    /// 405: not a POST.
    MethodNotAllowed,
    /// 413: body larger than `snapshot.maxBytes`.
    TooLarge,
    /// 400: the bytes are not a valid snapshot.
    Invalid(picker_core::snapshot::DecodeError),
    /// 409: the stored snapshot has the same or a newer sequence.
    Stale { stored: u64, pushed: u64 },
}

impl IntakeError {
    pub fn status(&self) -> u32 {
        match self {
            IntakeError::Unauthorized => 401,
            IntakeError::Forbidden => 403,
            IntakeError::MethodNotAllowed => 405,
            IntakeError::TooLarge => 413,
            IntakeError::Invalid(_) => 400,
            IntakeError::Stale { .. } => 409,
        }
    }

    pub fn message(&self) -> String {
        match self {
            IntakeError::Unauthorized => "missing or invalid bearer token".into(),
            IntakeError::Forbidden => "source address not allowed to push snapshots".into(),
            IntakeError::MethodNotAllowed => "snapshots are pushed with POST".into(),
            IntakeError::TooLarge => "snapshot too large".into(),
            IntakeError::Invalid(e) => format!("invalid snapshot: {e}"),
            IntakeError::Stale { stored, pushed } => {
                format!("stale snapshot: sequence {pushed} is not newer than {stored}")
            }
        }
    }
}

/// Compares a presented `Authorization` header with the configured token in time that depends
/// only on the lengths, so the token cannot be guessed byte by byte from response timing.
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (presented.as_bytes(), token.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for (i, want) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ want;
    }
    diff == 0
}

/// An allowed source network: an address and a prefix length (`10.0.0.0/8`, `fd00::/8`; a bare
/// address is a /32 or /128). IPv4-mapped IPv6 addresses match as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for SourceNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = a
            .parse::<IpAddr>()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
            },
        };
        if SourceNet::mask(addr, prefix) != addr {
            return Err(format!("{s:?}: address has bits set past the /{prefix} prefix"));
        }
        Ok(SourceNet { addr, prefix })
    }
}

impl SourceNet {
    fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
        match ip {
            IpAddr::V4(v) => {
                let m = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
                IpAddr::V4((u32::from(v) & m).into())
            }
            IpAddr::V6(v) => {
                let m = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
                IpAddr::V6((u128::from(v) & m).into())
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && SourceNet::mask(ip, self.prefix) == self.addr
    }
}

/// Parses the `source.address` property (`ip:port`, or a bare IP) and checks it against the list.
pub fn source_allowed(source: Option<&str>, allowed: &[SourceNet]) -> bool {
    let Some(s) = source else { return false };
    let ip = s
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| s.parse::<IpAddr>())
        .ok();
    ip.is_some_and(|ip| allowed.iter().any(|n| n.contains(ip)))
}

/// Validates a pushed body against the stored snapshot bytes; returns the decoded snapshot.
/// Nothing is written here: the caller stores only what this accepted (a rejected push changes
/// nothing).
pub fn validate_push(body: &[u8], stored: Option<&[u8]>, max_bytes: usize) -> Result<Snapshot, IntakeError> {
    if body.len() > max_bytes {
        return Err(IntakeError::TooLarge);
    }
    let snap = Snapshot::decode(body).map_err(IntakeError::Invalid)?;
    if let Some(stored_seq) = stored.and_then(Snapshot::peek_sequence) {
        if snap.sequence <= stored_seq {
            return Err(IntakeError::Stale {
                stored: stored_seq,
                pushed: snap.sequence,
            });
        }
    }
    Ok(snap)
}

/// OpenAI-style error body (`{"error": {"message", "type", "code"}}`), as vLLM and OpenAI return.
pub fn error_body(status: u32, message: &str) -> Vec<u8> {
    let kind = match status {
        400 => "invalid_request_error",
        401 | 403 => "authentication_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_exceeded",
        _ => "service_unavailable",
    };
    serde_json::json!({"error": {"message": message, "type": kind, "code": status}})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use picker_core::{Endpoint, Instant};
    use proptest::prelude::*;

    #[test]
    fn inflight_add_release_never_leaks() {
        let mut t = InFlightTable::default();
        t.apply(7, 100, true);
        t.apply(7, 50, true);
        t.apply(3, 10, true);
        assert_eq!(
            t.get(7),
            InFlight {
                requests: 2,
                tokens: 150
            }
        );
        let t = InFlightTable::decode(&t.encode());
        let mut t2 = t.clone();
        t2.apply(7, 100, false);
        t2.apply(7, 50, false);
        t2.apply(3, 10, false);
        assert_eq!(t2, InFlightTable::default());
        assert_eq!(t2.encode(), Vec::<u8>::new());
        // A release with nothing in flight is a no-op, not an underflow.
        t2.apply(9, 5, false);
        assert_eq!(t2.total_requests(), 0);
        assert_eq!(InFlightTable::decode(b"garbage"), InFlightTable::default());
    }

    #[test]
    fn inflight_in_place_update_and_pool_view() {
        let mut bytes = Vec::new();
        inflight_apply(&mut bytes, 7, 100, true);
        inflight_apply(&mut bytes, 3, 10, true);
        inflight_apply(&mut bytes, 7, 50, true);
        let mut want = InFlightTable::default();
        want.apply(7, 100, true);
        want.apply(3, 10, true);
        want.apply(7, 50, true);
        assert_eq!(bytes, want.encode());
        assert_eq!(
            inflight_get(&bytes, 7),
            InFlight {
                requests: 2,
                tokens: 150
            }
        );
        assert_eq!(inflight_get(&bytes, 4), InFlight::default());

        let a = Endpoint::new("10.0.0.1:8000".parse().unwrap(), Instant::ZERO);
        let b = Endpoint::new("10.0.0.2:8000".parse().unwrap(), Instant::ZERO);
        let (ka, kb) = (a.key(), b.key());
        let pool = Pool::new(Snapshot {
            sequence: 1,
            generated_at: Instant::ZERO,
            endpoints: vec![a, b],
        });
        // The buffer is reused: old contents go.
        let mut out = vec![InFlight { requests: 9, tokens: 9 }; 5];
        inflight_for_pool(&bytes, &pool, &mut out);
        assert_eq!(out, vec![InFlight::default(); 2]);
        inflight_apply(&mut bytes, kb, 40, true);
        inflight_for_pool(&bytes, &pool, &mut out);
        assert_eq!(out, InFlightTable::decode(&bytes).for_pool(&pool));
        assert_eq!(
            out,
            vec![
                InFlight::default(),
                InFlight {
                    requests: 1,
                    tokens: 40
                }
            ]
        );
        assert_ne!(ka, kb);

        // Releases drop entries at zero and never underflow; malformed bytes read as empty.
        for (k, t) in [(7, 100), (7, 50), (3, 10), (kb, 40), (9, 5)] {
            inflight_apply(&mut bytes, k, t, false);
        }
        assert!(bytes.is_empty());
        let mut junk = b"garbage".to_vec();
        assert_eq!(inflight_get(&junk, 7), InFlight::default());
        inflight_apply(&mut junk, 7, 1, false);
        assert!(junk.is_empty());
    }

    #[test]
    fn header_lookup_is_case_insensitive_first_value_and_lossy() {
        let hs = vec![
            ("x-a".to_string(), b"1".to_vec()),
            ("X-B".to_string(), vec![0xff, b'k']),
            ("x-a".to_string(), b"2".to_vec()),
        ];
        assert_eq!(header_value(&hs, "x-a").as_deref(), Some("1"));
        assert_eq!(header_value(&hs, "x-b").as_deref(), Some("\u{fffd}k"));
        assert!(has_header(&hs, "X-A") && has_header(&hs, "x-b"));
        assert_eq!(header_value(&hs, "x-c"), None);
        assert!(!has_header(&hs, "x-c"));
    }

    #[test]
    fn bearer_compare() {
        assert!(bearer_matches(Some("Bearer 0123456789abcdef"), "0123456789abcdef"));
        assert!(!bearer_matches(Some("Bearer 0123456789abcdeF"), "0123456789abcdef"));
        assert!(!bearer_matches(Some("Bearer 0123456789abcde"), "0123456789abcdef"));
        assert!(!bearer_matches(Some("Bearer 0123456789abcdef0"), "0123456789abcdef"));
        assert!(!bearer_matches(Some("0123456789abcdef"), "0123456789abcdef"));
        assert!(!bearer_matches(None, "0123456789abcdef"));
    }

    #[test]
    fn source_ranges() {
        let n = |s: &str| s.parse::<SourceNet>();
        let allowed = [n("10.0.0.0/8").unwrap(), n("fd00::/8").unwrap()];
        assert!(source_allowed(Some("10.200.3.4:5000"), &allowed));
        assert!(source_allowed(Some("[::ffff:10.1.2.3]:1"), &allowed));
        assert!(source_allowed(Some("[fd12::7]:80"), &allowed));
        assert!(!source_allowed(Some("11.0.0.1:5000"), &allowed));
        assert!(!source_allowed(Some("[fe80::1]:80"), &allowed));
        assert!(n("0.0.0.0/0").unwrap().contains("203.0.113.9".parse().unwrap()));
        assert!(!n("0.0.0.0/0").unwrap().contains("2001:db8::1".parse().unwrap()));
        assert!(n("10.0.0.1/8").unwrap_err().contains("bits set"));
        assert!(n("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(n("::/129").unwrap_err().contains("0..=128"));
        assert!(n("pod-a").unwrap_err().contains("not an IP"));
        assert!(n("10.0.0.0/x").is_err());
    }

    #[test]
    fn source_checks() {
        let allowed = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert!(source_allowed(Some("127.0.0.1:5000"), &allowed));
        assert!(source_allowed(Some("[::1]:5000"), &allowed));
        assert!(source_allowed(Some("127.0.0.1"), &allowed));
        assert!(source_allowed(Some("[::ffff:127.0.0.1]:1"), &allowed));
        assert!(!source_allowed(Some("10.0.0.1:5000"), &allowed));
        assert!(!source_allowed(Some("nonsense"), &allowed));
        assert!(!source_allowed(None, &allowed));
    }

    #[test]
    fn push_validation() {
        let mut s = Snapshot {
            sequence: 5,
            generated_at: Instant::from_millis(1),
            endpoints: vec![],
        };
        s.endpoints
            .push(Endpoint::new("10.0.0.1:8000".parse().unwrap(), Instant::from_millis(1)));
        let five = s.encode().unwrap();
        assert_eq!(validate_push(&five, None, 1 << 20).unwrap().sequence, 5);
        assert_eq!(
            validate_push(&five, Some(&five), 1 << 20),
            Err(IntakeError::Stale { stored: 5, pushed: 5 })
        );
        s.sequence = 6;
        let six = s.encode().unwrap();
        assert!(validate_push(&six, Some(&five), 1 << 20).is_ok());
        assert_eq!(validate_push(&five, Some(&six), 1 << 20).unwrap_err().status(), 409);
        assert_eq!(validate_push(&six, None, 10), Err(IntakeError::TooLarge));
        assert_eq!(validate_push(b"junk", None, 1 << 20).unwrap_err().status(), 400);
    }

    #[test]
    fn error_bodies_are_openai_shaped() {
        let v: serde_json::Value = serde_json::from_slice(&error_body(404, "model \"x\" not served")).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["message"], "model \"x\" not served");
    }

    #[test]
    fn addresses_format_like_display() {
        for a in [
            "0.0.0.0:0",
            "10.1.0.1:8000",
            "255.255.255.255:65535",
            "[::1]:80",
            "[fe80::1%2]:8000",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut s = String::from("x,");
            push_addr(&mut s, &addr);
            assert_eq!(s, format!("x,{addr}"));
        }
    }

    proptest! {
        #[test]
        fn push_addr_is_display(ip in any::<[u8; 4]>(), port in any::<u16>(), v6 in any::<[u16; 8]>()) {
            for addr in [SocketAddr::from((ip, port)), SocketAddr::from((v6, port))] {
                let mut s = String::new();
                push_addr(&mut s, &addr);
                prop_assert_eq!(s, addr.to_string());
            }
        }

        #[test]
        fn inflight_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let t = InFlightTable::decode(&bytes);
            let _ = t.encode();
        }

        /// Any interleaving of acquires and their releases ends at zero.
        #[test]
        fn inflight_balanced_ops_end_empty(ops in prop::collection::vec((0u64..5, 0u32..1000), 0..60)) {
            let mut t = InFlightTable::default();
            for (k, tok) in &ops {
                t.apply(*k, *tok, true);
                t = InFlightTable::decode(&t.encode());
            }
            for (k, tok) in ops.iter().rev() {
                t.apply(*k, *tok, false);
            }
            prop_assert_eq!(t, InFlightTable::default());
        }

        /// The in-place functions agree with decode / apply / encode on any bytes: well-formed
        /// tables (sorted or not), wrong lengths, and tables at the entry cap.
        #[test]
        fn inflight_in_place_matches_decode_apply_encode(
            table in prop::collection::vec((0u64..12, 0u32..4, any::<u32>()), 0..20),
            sorted in any::<bool>(),
            junk in prop::collection::vec(any::<u8>(), 0..40),
            malformed in any::<bool>(),
            full in any::<bool>(),
            ops in prop::collection::vec((0u64..14, any::<u32>(), any::<bool>()), 1..30),
        ) {
            let mut entries = table;
            if sorted {
                entries.sort_by_key(|e| e.0);
                entries.dedup_by_key(|e| e.0);
            }
            if full {
                entries = (0..MAX_INFLIGHT_ENTRIES as u64).map(|k| (k * 2, 1, 7)).collect();
            }
            let mut bytes: Vec<u8> = entries
                .iter()
                .flat_map(|(k, r, t)| [&k.to_le_bytes()[..], &r.to_le_bytes(), &t.to_le_bytes()].concat())
                .collect();
            if malformed {
                bytes = junk;
            }
            for (key, tokens, add) in ops {
                let table = InFlightTable::decode(&bytes);
                for probe in 0..14 {
                    prop_assert_eq!(inflight_get(&bytes, probe), table.get(probe));
                }
                let mut want = table.clone();
                want.apply(key, tokens, add);
                inflight_apply(&mut bytes, key, tokens, add);
                prop_assert_eq!(&bytes, &want.encode());
            }
        }

        #[test]
        fn push_validation_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_push(&bytes, Some(&bytes), 1 << 20);
        }
    }
}
