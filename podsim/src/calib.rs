//! The simulated server's parameters. They are no longer constants in code: they are derived
//! from an engine profile (see [`crate::engine`]); the default is the embedded
//! `engines/qwen3-32b-h100-tp2.json`, the server of llm-d's optimized-baseline benchmark.

use crate::engine::{EngineProfile, StepModel};

/// Microseconds: the simulator's time unit.
pub type Micros = u64;

/// Everything that determines how fast one simulated server runs and how much it holds: derived
/// from an engine profile ([`crate::engine::EngineProfile`], `podsim/engines/*.json`), where every
/// value carries its source.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerParams {
    /// Tokens per KV block (vLLM `block_size`).
    pub block_tokens: u32,
    /// KV blocks on the GPUs (`num_gpu_blocks`), derived from HBM, weights and the reserve.
    pub gpu_blocks: u32,
    /// Token budget of one engine step (`max_num_batched_tokens`).
    pub max_batched_tokens: u32,
    /// Most sequences in one step (`max_num_seqs`).
    pub max_seqs: u32,
    /// Distinct LoRA adapters one batch may hold (vLLM `--max-loras`).
    pub max_loras: u32,
    /// vLLM `gpu_memory_utilization` (reported in `vllm:cache_config_info`).
    pub gpu_memory_utilization: f64,
    /// The roofline step-time model.
    pub step: StepModel,
    /// Name of the engine profile these came from.
    pub profile: String,
}

impl ServerParams {
    /// The default engine profile (Qwen3-32B, vLLM, TP=2 on 2×H100-80GB), embedded.
    pub fn qwen3_32b_tp2_h100() -> Self {
        EngineProfile::default_profile().server_params()
    }

    /// Duration of one engine step, seconds (see [`StepModel::step_seconds`]).
    pub fn step_seconds(&self, seqs: u32, decode_ctx_tokens: u64, prefill: impl Iterator<Item = (u32, u32)>) -> f64 {
        self.step.step_seconds(seqs, decode_ctx_tokens, prefill)
    }

    /// The shortest step: one decoding sequence with no context.
    pub fn min_step_s(&self) -> f64 {
        self.step.step_seconds(1, 0, std::iter::empty())
    }

    /// KV capacity in tokens.
    pub fn kv_tokens(&self) -> u64 {
        self.gpu_blocks as u64 * self.block_tokens as u64
    }
}

impl Default for ServerParams {
    fn default() -> Self {
        ServerParams::qwen3_32b_tp2_h100()
    }
}

/// Seconds → simulator microseconds (rounded, at least 1 µs so time always advances).
pub fn micros(s: f64) -> Micros {
    ((s * 1e6).round() as Micros).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_params_come_from_the_default_profile() {
        let p = ServerParams::default();
        assert_eq!(p.profile, "qwen3-32b-h100-tp2");
        assert_eq!((p.block_tokens, p.max_batched_tokens, p.max_seqs), (16, 8192, 1024));
        assert_eq!(p.kv_tokens(), 307_328);
        assert!(p.min_step_s() > 0.01 && p.min_step_s() < 0.02, "{}", p.min_step_s());
    }
}
