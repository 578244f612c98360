//! Endpoint subset lists (a header a client or proxy sends) over arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = picker_core::request::parse_subset(s);
    }
});
