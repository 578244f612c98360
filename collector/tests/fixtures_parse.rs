//! Each captured fixture parses into the numbers it contains (SOURCES.md names the origins),
//! and the parser survives arbitrary and mutated bytes.

use collector::engine::{extract, Engine, ExtractError};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn vllm_v0_with_gpu_cache_usage_and_cache_config() {
    let m = extract(Engine::Vllm, &fixture("vllm-v0-aibrix-runtime-doc.txt")).unwrap();
    assert_eq!((m.waiting, m.running), (0, 0));
    assert_eq!(m.kv_usage, 0.0);
    assert_eq!(m.block_size, Some(16));
    assert_eq!(m.gpu_blocks, Some(81767));
    // max_lora="0": LoRA disabled, so no LoRA state and the served model is listed.
    assert_eq!(m.lora, None);
    assert_eq!(m.models, vec!["Qwen/Qwen2.5-Coder-1.5B-Instruct".to_string()]);
}

#[test]
fn sglang_production_metrics_doc() {
    let m = extract(Engine::Sglang, &fixture("sglang-production-metrics-doc.txt")).unwrap();
    assert_eq!(m.waiting, 2826);
    assert_eq!(m.running, 162);
    assert_eq!(m.kv_usage, 0.28);
    assert_eq!((m.block_size, m.gpu_blocks), (None, None));
    assert_eq!(m.models, vec!["meta-llama/Llama-3.1-8B-Instruct".to_string()]);
}

#[test]
fn triton_tensorrt_llm_readme() {
    let m = extract(Engine::TritonTensorrtLlm, &fixture("triton-tensorrt-llm-readme.txt")).unwrap();
    assert_eq!(m.waiting, 1);
    assert_eq!(m.running, 1);
    assert_eq!(m.kv_usage, 0.4875);
    assert_eq!(m.block_size, Some(64));
    assert_eq!(m.gpu_blocks, Some(6239));
    assert!(m.models.is_empty());
}

#[test]
fn wrong_engine_is_a_missing_metric() {
    let e = extract(Engine::Vllm, &fixture("sglang-production-metrics-doc.txt")).unwrap_err();
    assert_eq!(e, ExtractError::Missing("vllm:num_requests_waiting"));
}

#[test]
fn vllm_lora_takes_the_newest_series_and_sums_ranks() {
    // Shape of vLLM's output (label names from vllm-project/vllm#9477 after review,
    // data-parallel `engine` label as in vLLM V1); values chosen for the test.
    let text = b"vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 2.0\n\
vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 3.0\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 4.0\n\
vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 1.0\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n\
vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.5\n\
vllm:gpu_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.9\n\
vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"a\",waiting_lora_adapters=\"\"} 1.7e+09\n\
vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"a,b\",waiting_lora_adapters=\"c\"} 1.8e+09\n\
vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 1.75e+09\n";
    let m = extract(Engine::Vllm, text).unwrap();
    assert_eq!((m.waiting, m.running), (5, 5));
    assert_eq!(m.kv_usage, 0.5, "the v1 name wins over the old one; max over ranks");
    let l = m.lora.unwrap();
    assert_eq!(l.running, vec!["a", "b"]);
    assert_eq!(l.waiting, vec!["c"]);
    assert_eq!(l.max, 2);
    assert!(m.models.is_empty(), "a LoRA pod serves any adapter");
}

#[test]
fn negative_or_nan_counts_fail() {
    let t = b"vllm:num_requests_waiting -1\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n";
    assert_eq!(
        extract(Engine::Vllm, t).unwrap_err(),
        ExtractError::BadValue("vllm:num_requests_waiting")
    );
    let t = b"vllm:num_requests_waiting 1\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc NaN\n";
    assert!(extract(Engine::Vllm, t).is_err());
}

#[test]
fn podsim_exposition_parses() {
    // podsim's fake vLLM text is what the end-to-end demo and the benchmark scrape.
    let text = b"# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\",model_name=\"x\"} 3.0\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"x\"} 0.0\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"x\"} 0.125\n";
    let m = extract(Engine::Vllm, text).unwrap();
    assert_eq!((m.running, m.kv_usage), (3, 0.125));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for e in Engine::ALL {
            let _ = extract(e, &bytes);
        }
        let _ = collector::prom::parse(&bytes, |_| {});
    }

    #[test]
    fn never_panics_on_mutated_fixtures(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..16),
    ) {
        let name = ["vllm-v0-aibrix-runtime-doc.txt", "sglang-production-metrics-doc.txt", "triton-tensorrt-llm-readme.txt"][which];
        let mut bytes = fixture(name);
        for (at, byte, op) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        for e in Engine::ALL {
            if let Ok(m) = extract(e, &bytes) {
                prop_assert!(m.kv_usage.is_finite() && (0.0..=1.0).contains(&m.kv_usage));
            }
        }
    }
}
