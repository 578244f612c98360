//! Pure helpers for the state the filter keeps in proxy shared data, and for snapshot intake.
//! No hostcalls here, so everything is unit- and property-tested natively.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use picker_core::Snapshot;

/// Shared-data keys (one namespace per `vm_id`, shared by every worker VM; proxywasm.md §4.3).
pub const KEY_SNAPSHOT: &str = "wasm-epp/snapshot";
pub const KEY_SNAPSHOT_SEQ: &str = "wasm-epp/snapshot-seq";

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
        fn push_validation_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_push(&bytes, Some(&bytes), 1 << 20);
        }
    }
}
