//! Snapshot intake: the collector pushes (or the module pulls) a load snapshot, which is
//! checked (bearer token, source address, size) and fully decoded before it is stored. No
//! hostcalls here, so everything is unit- and property-tested natively.

use std::net::IpAddr;

use picker_core::Snapshot;

/// Shared-data keys (one namespace per `vm_id`, shared by every worker VM): the encoded
/// snapshot, and its sequence (read per request, so a worker decodes the snapshot only when it
/// changed).
pub const KEY_SNAPSHOT: &str = "wasm-epp/snapshot";
pub const KEY_SNAPSHOT_SEQ: &str = "wasm-epp/snapshot-seq";

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
    /// 400: the bytes are not a valid relay bundle (`crate::relay`).
    InvalidRelay(crate::relay::BatchError),
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
            IntakeError::Invalid(_) | IntakeError::InvalidRelay(_) => 400,
            IntakeError::Stale { .. } => 409,
        }
    }

    pub fn message(&self) -> String {
        match self {
            IntakeError::Unauthorized => "missing or invalid bearer token".into(),
            IntakeError::Forbidden => "source address not allowed to push here".into(),
            IntakeError::MethodNotAllowed => "snapshots and relay batches are pushed with POST".into(),
            IntakeError::TooLarge => "body too large".into(),
            IntakeError::Invalid(e) => format!("invalid snapshot: {e}"),
            IntakeError::InvalidRelay(e) => format!("invalid relay batch: {e}"),
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

    proptest! {
        #[test]
        fn push_validation_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_push(&bytes, Some(&bytes), 1 << 20);
        }
    }
}
