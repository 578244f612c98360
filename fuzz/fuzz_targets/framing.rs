//! The scrape client's HTTP/1.1 response framing (status line, content-length, chunked decoded
//! in place, connection: close; MAX_HEAD, MAX_CHUNK_META and the body cap) over in-memory bytes,
//! split into reads the input chooses. Checks: no panic; no read asked that cannot progress;
//! the buffer stays under its bound; a body never exceeds the cap; the split changes nothing
//! but connection reuse; well-formed framings of a body give it back exactly. Input layout:
//! collector::http::fuzz_logic::run.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    collector::http::fuzz_logic::run(input);
});
