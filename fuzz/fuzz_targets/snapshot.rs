//! Snapshot decoder over arbitrary bytes; whatever decodes must re-encode to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use picker_core::Snapshot;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(s) = Snapshot::decode(bytes) {
        assert_eq!(s.encode().expect("a decoded snapshot re-encodes"), bytes);
    }
});
