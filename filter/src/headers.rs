//! Header maps as the proxy-wasm ABI carries them, and the header values this module writes.
//! No hostcalls here, so everything is unit-, property- and fuzz-tested natively.
//!
//! * [`decode_map`] / [`encode_map`]: the ABI v0.2.1 serialized map (`proxy_get_header_map_pairs`,
//!   `proxy_send_local_response`'s headers): `count u32`, then `count × (name_len u32, value_len
//!   u32)`, then each name and value followed by a NUL byte, little-endian. The SDK's own decoder
//!   indexes slices and unwraps UTF-8, so a host that sends a malformed map or a non-UTF-8 name
//!   would make it panic; ours never does.
//! * [`FieldValue`]: the only way to hand a value to a header write. It exists only for a valid
//!   field value (RFC 9110 §5.5, [`picker_core::scan::is_field_value`]) of bounded length, so no
//!   request data can put CR, LF or NUL into a header.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;

use picker_core::scan::is_field_value;

/// A request or response header map: names as the host gives them (lower case in Envoy),
/// values as raw bytes (Envoy can deliver non-UTF-8 values).
pub type HeaderMap = Vec<(String, Vec<u8>)>;

/// Longest header value this module writes: the ordered endpoint list at its bound (16
/// endpoints of at most 47 bytes for `[IPv6]:port`, plus commas) fits, and so does a model name
/// ([`picker_core::scan::MAX_NAME_LEN`], 256 bytes).
pub const MAX_VALUE_LEN: usize = 1024;

/// A value that may be written into a header: a valid RFC 9110 field value of at most
/// [`MAX_VALUE_LEN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldValue<'a>(&'a str);

/// Why a value cannot be a header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidFieldValue {
    /// A control byte (CR, LF, NUL, …), DEL, or whitespace at either end.
    Characters,
    /// Longer than [`MAX_VALUE_LEN`].
    TooLong,
}

impl std::fmt::Display for InvalidFieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvalidFieldValue::Characters => f.write_str(
                "not a valid HTTP header value (control characters such as CR, LF or NUL, or whitespace at either end)",
            ),
            InvalidFieldValue::TooLong => write!(f, "longer than {MAX_VALUE_LEN} bytes"),
        }
    }
}

impl<'a> FieldValue<'a> {
    pub fn new(v: &'a str) -> Result<FieldValue<'a>, InvalidFieldValue> {
        if v.len() > MAX_VALUE_LEN {
            Err(InvalidFieldValue::TooLong)
        } else if !is_field_value(v.as_bytes()) {
            Err(InvalidFieldValue::Characters)
        } else {
            Ok(FieldValue(v))
        }
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

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

/// The first value of header `name` (names compared case-insensitively, as Envoy's lower-case
/// names make them), like `proxy_get_header_map_value`. Non-UTF-8 bytes become U+FFFD.
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

/// Most pairs accepted from a host: Envoy's default limit is 100 request headers, and even its
/// configurable maximum is far below this.
pub const MAX_PAIRS: usize = 8192;

/// Decodes a serialized header map. `None` if the bytes are not a well-formed map (short,
/// lengths past the end, missing NUL terminators, too many pairs); an empty input is the empty
/// map. Names that are not UTF-8 are decoded lossily.
pub fn decode_map(bytes: &[u8]) -> Option<HeaderMap> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    if count > MAX_PAIRS {
        return None;
    }
    let mut at = 4usize.checked_add(count.checked_mul(8)?)?;
    if at > bytes.len() {
        return None;
    }
    let mut map = Vec::with_capacity(count);
    for i in 0..count {
        let (klen, vlen) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let mut take = |len: usize| -> Option<&[u8]> {
            let end = at.checked_add(len)?;
            let s = bytes.get(at..end)?;
            if bytes.get(end) != Some(&0) {
                return None;
            }
            at = end + 1;
            Some(s)
        };
        let k = take(klen)?;
        let v = take(vlen)?;
        map.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
    }
    (at == bytes.len()).then_some(map)
}

/// Serializes pairs as [`decode_map`] reads them.
pub fn encode_map(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let body: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + body);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn field_values() {
        assert_eq!(
            FieldValue::new("10.0.0.1:8000,10.0.0.2:8000").map(|v| v.as_str()),
            Ok("10.0.0.1:8000,10.0.0.2:8000")
        );
        assert_eq!(FieldValue::new("m\r\nx-evil: 1"), Err(InvalidFieldValue::Characters));
        assert_eq!(FieldValue::new("m\0"), Err(InvalidFieldValue::Characters));
        assert_eq!(FieldValue::new(" m"), Err(InvalidFieldValue::Characters));
        assert!(FieldValue::new(&"x".repeat(MAX_VALUE_LEN)).is_ok());
        assert_eq!(
            FieldValue::new(&"x".repeat(MAX_VALUE_LEN + 1)),
            Err(InvalidFieldValue::TooLong)
        );
        // The longest routing list the module can write fits.
        let v6 = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        assert!(FieldValue::new(&vec![v6; 16].join(",")).is_ok());
    }

    #[test]
    fn map_wire_format() {
        let pairs: [(&str, &[u8]); 2] = [(":path", b"/v1"), ("x-b", b"")];
        let bytes = encode_map(&pairs);
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        let map = decode_map(&bytes).unwrap();
        assert_eq!(
            map,
            vec![(":path".to_string(), b"/v1".to_vec()), ("x-b".to_string(), Vec::new())]
        );
        assert_eq!(decode_map(&[]), Some(Vec::new()));
        // Truncated, a missing NUL, trailing bytes, an absurd count, lengths that overflow.
        assert_eq!(decode_map(&bytes[..bytes.len() - 1]), None);
        let mut no_nul = bytes.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert_eq!(decode_map(&no_nul), None);
        assert_eq!(decode_map(&[bytes.clone(), vec![0]].concat()), None);
        assert_eq!(decode_map(&u32::MAX.to_le_bytes()), None);
        let mut huge = 1u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_map(&huge), None);
        // A non-UTF-8 name decodes lossily instead of failing.
        let odd = encode_map(&[("x", b"1")]);
        let mut odd = odd.clone();
        let name_at = 4 + 8;
        odd[name_at] = 0xff;
        assert_eq!(decode_map(&odd).unwrap()[0].0, "\u{fffd}");
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
        fn map_round_trips(pairs in prop::collection::vec(("[a-z:-]{0,12}", prop::collection::vec(any::<u8>(), 0..20)), 0..10)) {
            let refs: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            let map = decode_map(&encode_map(&refs)).unwrap();
            let want: HeaderMap = pairs.into_iter().collect();
            prop_assert_eq!(map, want);
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_map(&bytes);
        }

        #[test]
        fn field_value_accepts_exactly_rfc_9110(v in prop::collection::vec(any::<u8>(), 0..12)) {
            if let Ok(s) = std::str::from_utf8(&v) {
                let ok = FieldValue::new(s).is_ok();
                let rfc = v.iter().all(|&c| (0x21..=0x7e).contains(&c) || c >= 0x80 || c == b' ' || c == b'\t')
                    && v.first().is_none_or(|&c| c != b' ' && c != b'\t')
                    && v.last().is_none_or(|&c| c != b' ' && c != b'\t');
                prop_assert_eq!(ok, rfc);
            }
        }
    }
}
