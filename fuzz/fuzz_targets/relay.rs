//! The relay batch and bundle decoders (filter::relay: the module's relay intake and the
//! collector's /relay take the same bytes) and the senders table over arbitrary bytes. Checks:
//! no panic; whatever decodes re-encodes to exactly the same bytes (nothing is accepted
//! loosely); a table read from any bytes stays bounded and writes back well-formed.
#![no_main]
use filter::relay::{decode, decode_bundle, encode_into, peek_header, seen_entries, seen_update, MAX_SENDERS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(b) = decode(bytes, 4096) {
        let mut again = Vec::new();
        encode_into(&mut again, &b.header, &b.records, &b.inflight);
        assert_eq!(again, bytes);
        assert_eq!(peek_header(bytes), Some(b.header));
    }
    if let Ok(all) = decode_bundle(bytes, 4096) {
        let mut again = Vec::new();
        for b in &all {
            encode_into(&mut again, &b.header, &b.records, &b.inflight);
        }
        assert_eq!(again, bytes);
    }
    let seen = seen_entries(bytes);
    assert!(seen.len() <= MAX_SENDERS);
    let table = seen_update(&seen, &[(1, 2)], 1_000, 500);
    assert!(!seen_entries(&table).is_empty());
});
