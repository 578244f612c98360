//! A model server's `/metrics` page, the way a scrape takes it: the Prometheus text parser,
//! every engine's mapping (vLLM, SGLang, trtllm-serve, Triton TensorRT-LLM) and the load record
//! through the snapshot codec. Checks: no panic; the family-skipping parse agrees with the
//! full parse; kv_usage in [0, 1], optional fields never 0, name lists the codec carries, no
//! models with LoRA; the record encodes and decodes unchanged (collector::engine::fuzz_logic).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|page: &[u8]| {
    collector::engine::fuzz_logic::check_page(page);
});
