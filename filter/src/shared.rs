//! Pure helpers for the state the filter keeps in proxy shared data, and for snapshot intake.
//! No hostcalls here, so everything is unit- and property-tested natively.

use std::net::IpAddr;

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

    proptest! {
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

        #[test]
        fn push_validation_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_push(&bytes, Some(&bytes), 1 << 20);
        }
    }
}
