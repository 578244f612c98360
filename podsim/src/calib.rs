//! Calibrated model-server parameters, each with its source.
//!
//! Tags follow `shared/reference/calibration.md`: **\[src\]** quoted as published, **\[derived\]**
//! computed from a cited source (method stated), **\[assumption\]** our own choice.
//!
//! The default server is **Qwen3-32B, vLLM, TP=2 on 2×H100-80GB**, the configuration of the llm-d
//! shared-prefix ("b2b-saas") benchmark (epp.md §6.4; calibration.md §3, §5.1–5.2).

/// Microseconds: the simulator's time unit.
pub type Micros = u64;

/// Everything that determines how fast one simulated server runs and how much it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerParams {
    /// Tokens per KV block. **\[src\]** vLLM on CUDA sets 16 (`vllm/platforms/cuda.py`
    /// `check_and_update_config`; calibration.md §2 "vLLM defaults").
    pub block_tokens: u32,
    /// KV blocks on the GPU (`num_gpu_blocks`). **\[src\]** "Each instance holds a 307,328-tokens
    /// KV-cache" for Qwen3-32B on 2×H100 (llm-d.github.io `blog/2025-09-24_kvcache-wins-you-can-see.mdx`
    /// §A.1) = 19,208 blocks of 16; the capacity formula of llm-d-benchmark gives ≈19.5k
    /// (calibration.md §2).
    pub gpu_blocks: u32,
    /// Token budget of one engine step. **\[src\]** `max_num_batched_tokens` = 8192 for the OpenAI
    /// API server on ≥ 70 GiB non-A100 GPUs (`vllm/engine/arg_utils.py` @99d7eb5d; the llm-d
    /// configuration matrix runs at that default).
    pub max_batched_tokens: u32,
    /// Most sequences in one step. **\[src\]** `max_num_seqs` = 1024 on the same devices (ibid.).
    pub max_seqs: u32,
    /// Distinct LoRA adapters one batch may hold (vLLM `--max-loras`). **\[assumption\]** 4, a
    /// typical multi-LoRA deployment value; only the multi-lora workload uses adapters.
    pub max_loras: u32,
    /// Fixed cost of every step, seconds (the decode floor `c`). **\[derived\]** ≈ 14.0 ms for
    /// Qwen3-32B TP=2 from the BLIS iter29 trained-physics coefficients on H100
    /// (inference-sim/inference-sim @f90a1e3a `defaults.yaml`; calibration.md §1.3 table).
    pub step_fixed_s: f64,
    /// Cost per sequence in the step, seconds (`d`). **\[derived\]** BLIS β6 = 4.4168 µs/request
    /// (calibration.md §1.3).
    pub per_seq_s: f64,
    /// Decode cost per context token of the decoding sequences, seconds (`e`). **\[derived\]**
    /// ≈ 0.076 µs/token from BLIS's KV-read term (calibration.md §1.3).
    pub per_ctx_token_s: f64,
    /// Linear prefill cost per new prompt token, seconds. **\[derived\]** anchored so that one full
    /// 8192-token chunk with no cached prefix costs `prefill_anchor_s` (see
    /// [`ServerParams::qwen3_32b_tp2_h100`]).
    pub prefill_per_token_s: f64,
    /// Attention cost of prefill, seconds per (new token × context token): the term
    /// `4·L·H·d_h·n·(s + n/2) / (TP·MFU·peak)` of calibration.md §1.3 "Recommended prefill model".
    pub attn_per_token_pair_s: f64,
}

/// Qwen3-32B architecture (Hugging Face `Qwen/Qwen3-32B` config): 64 layers, 64 query heads,
/// head dim 128. **\[src\]** calibration.md §2 table (layers, head_dim) and the model card.
pub const QWEN3_32B_LAYERS: f64 = 64.0;
pub const QWEN3_32B_Q_HEADS: f64 = 64.0;
pub const QWEN3_32B_HEAD_DIM: f64 = 128.0;
/// H100 dense BF16 peak, FLOP/s. **\[src\]** BLIS `hardware_config.json` (calibration.md §1.3).
pub const H100_PEAK_FLOPS: f64 = 989.5e12;
/// Fraction of peak the attention kernels reach in prefill. **\[assumption\]** 0.5; the linear
/// layers run at ~60–65 % of peak in Vidur's H100 profiles (calibration.md §1.2).
pub const ATTN_MFU: f64 = 0.5;
/// Time to prefill one full 8192-token chunk of Qwen3-32B TP=2 on H100. **\[src\]** 0.40 s,
/// R_peak = 20,480 tok/s (llm-d.github.io `blog/2026-08-17_sticky-until-saturated-token-aware-routing.mdx`,
/// "Calibration for Qwen3-32B / H100"). The through-the-proxy median of 0.514 s (15,928 tok/s,
/// llm-d configuration-matrix.md) includes API overhead the engine model does not.
pub const QWEN3_32B_TP2_CHUNK_8192_S: f64 = 0.40;

impl ServerParams {
    /// Qwen3-32B, vLLM defaults, TP=2 on 2×H100-80GB.
    pub fn qwen3_32b_tp2_h100() -> Self {
        let tp = 2.0;
        let attn = 4.0 * QWEN3_32B_LAYERS * QWEN3_32B_Q_HEADS * QWEN3_32B_HEAD_DIM / (tp * ATTN_MFU * H100_PEAK_FLOPS);
        let step_fixed_s = 14.0e-3;
        let per_seq_s = 4.4168e-6;
        // T(8192) = c + d + 8192·p + attn·8192·(0 + 8192/2)  ⇒  p ≈ 38.4 µs/token (≈ 26k tok/s linear).
        let n = 8192.0;
        let prefill_per_token_s = (QWEN3_32B_TP2_CHUNK_8192_S - step_fixed_s - per_seq_s - attn * n * n / 2.0) / n;
        ServerParams {
            block_tokens: 16,
            gpu_blocks: 19_208,
            max_batched_tokens: 8192,
            max_seqs: 1024,
            max_loras: 4,
            step_fixed_s,
            per_seq_s,
            per_ctx_token_s: 0.076e-6,
            prefill_per_token_s,
            attn_per_token_pair_s: attn,
        }
    }

    /// Duration of one engine step, seconds: `c + d·seqs + e·Σ decode context + Σ prefill chunks`,
    /// where a chunk of `n` new tokens after `s` already-computed tokens costs
    /// `n·p + attn·n·(s + n/2)`.
    pub fn step_seconds(&self, seqs: u32, decode_ctx_tokens: u64, prefill: impl Iterator<Item = (u32, u32)>) -> f64 {
        let mut t = self.step_fixed_s + self.per_seq_s * seqs as f64 + self.per_ctx_token_s * decode_ctx_tokens as f64;
        for (n, s) in prefill {
            let (n, s) = (n as f64, s as f64);
            t += n * self.prefill_per_token_s + self.attn_per_token_pair_s * n * (s + n / 2.0);
        }
        t
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

    #[track_caller]
    fn close(got: f64, want: f64, tol: f64) {
        assert!(
            (got - want).abs() <= tol * want,
            "got {got}, want {want} ± {:.0}%",
            tol * 100.0
        );
    }

    /// The decode model reproduces the BLIS-derived Qwen3-32B TP2 examples of calibration.md
    /// §1.3 (B1/1k 14.1 ms; B16/8k 23.9; B64/1k 19.2; B64/8k 53.4) within 2 %.
    #[test]
    fn decode_steps_match_blis_table() {
        let p = ServerParams::qwen3_32b_tp2_h100();
        let none = || std::iter::empty();
        close(p.step_seconds(1, 1024, none()) * 1e3, 14.1, 0.02);
        close(p.step_seconds(16, 16 * 8192, none()) * 1e3, 23.9, 0.02);
        close(p.step_seconds(64, 64 * 1024, none()) * 1e3, 19.2, 0.02);
        close(p.step_seconds(64, 64 * 8192, none()) * 1e3, 53.4, 0.02);
    }

    /// One cold 8192-token chunk takes the measured 0.40 s (R_peak 20,480 tok/s), and a cached
    /// prefix makes the remaining prefill far cheaper than a cold one.
    #[test]
    fn prefill_anchor_and_cache_benefit() {
        let p = ServerParams::qwen3_32b_tp2_h100();
        close(p.step_seconds(1, 0, [(8192, 0)].into_iter()), 0.40, 1e-9);
        let cold = p.step_seconds(1, 0, [(7200, 0)].into_iter());
        let warm = p.step_seconds(1, 0, [(1200, 6000)].into_iter());
        assert!(cold > 0.3 && cold < 0.4, "cold 7200-token prefill {cold}");
        assert!(warm < cold / 3.0, "warm {warm} vs cold {cold}");
        // Linear part ≈ 26k tok/s: faster than the end-to-end R_peak since attention is separate.
        let rate = 1.0 / p.prefill_per_token_s;
        assert!((24_000.0..28_000.0).contains(&rate), "{rate}");
        assert_eq!(p.kv_tokens(), 307_328);
    }

    /// Peer comparison on one case, a 256-token prompt alone on an idle server (TTFT = one
    /// prefill step). podsim: ≈ 24 ms. llm-d-inference-sim's profile table says 160–280 ms for
    /// 30–34B TP2 on H100, but that table is tuned for short prompts and charges 0.30–0.50 ms per
    /// token, ≈ 10× the measured compute-bound rate (calibration.md §1.4 caution). BLIS's prefill
    /// (β1a) is ≈ 7× faster than the measured 8192-token chunk (§1.3 caution). podsim sits
    /// between the two, anchored to the measured chunk time; its floor (one weight pass, 14 ms)
    /// is the BLIS-derived decode floor.
    #[test]
    fn short_prompt_ttft_between_peer_simulators() {
        let p = ServerParams::qwen3_32b_tp2_h100();
        let ttft = p.step_seconds(1, 0, [(256, 0)].into_iter());
        assert!((0.020..0.030).contains(&ttft), "{ttft}");
        let inference_sim_low = 0.160; // llm-d-inference-sim docs/latency-profiles.md, 30–34B TP2 H100
        assert!(ttft < inference_sim_low);
        assert!(ttft > p.step_fixed_s, "above the BLIS-derived floor");
    }
}
