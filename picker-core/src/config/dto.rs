//! The configuration as users write it (JSON, camelCase, unknown fields rejected), before
//! validation into [`super::Config`].

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{FilterKind, Profile, ScorerKind};
use crate::prefix::InsertOrder;

/// Raw configuration as written by users (JSON). Validated by [`Config::try_from`].
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigDto {
    /// Starting profile; default `wasm-epp-default`.
    pub profile: Option<Profile>,
    /// Replaces the profile's scorers (1..=8 entries, weights finite and > 0; default weight 1).
    pub scorers: Option<Vec<ScorerDto>>,
    /// Replaces the profile's filters.
    pub filters: Option<Vec<FilterDto>>,
    /// Endpoints returned as an ordered fallback list (1..=16; GIE default 1).
    pub max_endpoints: Option<u32>,
    /// Overrides the saturation detector's thresholds (admission and the utilization filter).
    pub saturation: Option<SaturationDto>,
    /// Overrides the approximate prefix cache's hashing and index parameters.
    pub prefix: Option<PrefixDto>,
    /// Overrides the prefix-cache-affinity filter's parameters.
    pub affinity: Option<AffinityDto>,
    /// Overrides the token-load scorer's threshold.
    pub token_load: Option<TokenLoadDto>,
    /// Overrides the consistent-hash scorer's parameters.
    pub consistent_hash: Option<ConsistentHashDto>,
    /// Snapshot age (ms) past which the picker degrades to consistent hashing + in-flight
    /// counts only (default 5000; 0 disables degradation).
    pub degrade_after_ms: Option<u64>,
}

/// One entry of `scorers`: `{"type": "<scorer>", "weight": <w>}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScorerDto {
    /// The scorer (JSON `type`, e.g. `"queue-scorer"`).
    #[serde(rename = "type")]
    pub kind: ScorerKind,
    /// Its weight in the total; finite and > 0; absent means 1.0 (GIE's default scorer weight).
    pub weight: Option<f64>,
}

/// One entry of `filters`: `{"type": "<filter>"}` (at most 4 entries).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterDto {
    /// The filter (JSON `type`, e.g. `"utilization-filter"`).
    #[serde(rename = "type")]
    pub kind: FilterKind,
}

/// GIE `utilization-detector` parameters (defaults 5 / 0.8 / 200 ms / 0).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaturationDto {
    /// Waiting requests at which a pod counts as saturated (5; must be > 0).
    pub queue_depth_threshold: Option<u32>,
    /// KV-cache utilisation fraction at which a pod counts as saturated (0.8; in (0, 1]).
    pub kv_cache_util_threshold: Option<f64>,
    /// Age in ms past which a pod's metrics are stale: it counts as fully saturated (1.0) and
    /// the utilization filter drops it (200; must be > 0).
    pub metrics_staleness_threshold_ms: Option<u64>,
    /// Slack on both thresholds for the utilization *filter*, which keeps a pod below
    /// `threshold × (1 + headroom)` (0.0; in [0, 10]). Admission does not read it.
    pub headroom: Option<f64>,
}

/// Approximate prefix-cache parameters (GIE names where GIE has them).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixDto {
    /// Tokens per block (16).
    pub block_size_tokens: Option<u32>,
    /// Bytes per token estimate (4).
    pub chars_per_token: Option<u32>,
    /// Blocks hashed at most (256).
    pub max_prefix_blocks_to_match: Option<u32>,
    /// Take the block size from the first candidate's `block_size` metric (true).
    pub auto_tune: Option<bool>,
    /// Per-endpoint LRU capacity when the pod reports no `num_gpu_blocks` (31,250).
    pub lru_capacity_per_server: Option<u32>,
    /// Cap on index entries per picker state, shared equally by the pods (0: no cap, each pod
    /// keeps its own LRU capacity, as GIE and llm-d do). A memory budget for the proxy:
    /// `wasm-epp-default` sets 49,152 (≈ 2 MiB); the baselines set none.
    pub max_index_entries: Option<u32>,
    /// `gie` (first block least recent) or `headMostRecent`.
    pub insert_order: Option<InsertOrder>,
    /// Floor on the block size in tokens, whatever the pods report (llm-d 64, GIE none = 0).
    pub min_block_size_tokens: Option<u32>,
    /// Cap on hashed prompt tokens; when > 0 it sets the block cap to this / block size,
    /// overriding `maxPrefixBlocksToMatch` (llm-d 131,072; GIE none = 0).
    pub max_prefix_tokens_to_match: Option<u32>,
}

/// llm-d `prefix-cache-affinity-filter` parameters (defaults as llm-d-router's `DefaultConfig`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityDto {
    /// Prefix score a pod needs to be sticky (0.8; in (0, 1]).
    pub threshold: Option<f64>,
    /// The TTFT gate (llm-d `maxTTFTPenaltyMs`, 18,000): stickiness breaks when the best sticky
    /// pod's estimated TTFT exceeds the best non-sticky pod's by more than this; 0 never breaks
    /// (finite, ≥ 0).
    #[serde(rename = "maxTTFTPenaltyMs")]
    pub max_ttft_penalty_ms: Option<f64>,
    /// Prefill throughput (tokens/s) that turns in-flight tokens into an estimated TTFT (llm-d
    /// `peakPrefillThroughput`, 15,928, calibrated for Qwen3-32B on 2×H100; finite, > 0).
    pub peak_prefill_throughput: Option<f64>,
    /// Probability of skipping the filter to explore (llm-d default 0; in [0, 1]).
    pub exploration_probability: Option<f64>,
}

/// llm-d `token-load-scorer` parameters.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenLoadDto {
    /// In-flight tokens at which the score reaches 0 (llm-d default 4,194,304; must be > 0).
    pub threshold_tokens: Option<u64>,
}

/// Parameters of our bounded-load consistent-hash scorer (see [`crate::chash`]).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashDto {
    /// Load bound: no endpoint takes a request while at ≥ ⌈(1+ε) × average⌉ in flight (0.5;
    /// in (0, 10]).
    pub epsilon: Option<f64>,
    /// Most leading prompt blocks in the hashing key (256 = 16 KiB). The key covers the first
    /// half of the prompt's blocks, capped here: a tenant's shared system prompt or document
    /// leads the prompt and its new question trails it, so the half is shared within a tenant
    /// or conversation and differs between them (`PrefixHashes::affinity_key`). In 1..=256.
    pub prefix_blocks: Option<u32>,
    /// In-flight requests an endpoint may always take before the (1+ε) bound applies (8;
    /// at most 100,000).
    pub min_bound: Option<u32>,
}
