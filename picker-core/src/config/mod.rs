//! Picker configuration: a raw DTO (serde, camelCase, unknown fields rejected) validated into
//! the domain type [`Config`] with private fields and a typed error ([`ConfigError`]).
//!
//! A config starts from a named profile and may override any part of it:
//!
//! ```json
//! {
//!   "profile": "gie-default",
//!   "scorers": [{"type": "queue-scorer", "weight": 2}, {"type": "prefix-cache-scorer", "weight": 3}],
//!   "filters": [{"type": "utilization-filter"}],
//!   "maxEndpoints": 1,
//!   "saturation": {"queueDepthThreshold": 5, "kvCacheUtilThreshold": 0.8,
//!                  "metricsStalenessThresholdMs": 200, "headroom": 0.0},
//!   "prefix": {"blockSizeTokens": 16, "charsPerToken": 4, "maxPrefixBlocksToMatch": 256,
//!              "autoTune": true, "lruCapacityPerServer": 31250, "maxIndexEntries": 0,
//!              "insertOrder": "gie", "minBlockSizeTokens": 0, "maxPrefixTokensToMatch": 0},
//!   "affinity": {"threshold": 0.8, "maxTTFTPenaltyMs": 18000, "peakPrefillThroughput": 15928,
//!                "explorationProbability": 0},
//!   "tokenLoad": {"thresholdTokens": 4194304},
//!   "consistentHash": {"epsilon": 0.5, "prefixBlocks": 256, "minBound": 8},
//!   "degradeAfterMs": 5000
//! }
//! ```
//!
//! Every field is optional; see [`ConfigDto`] for what each one means.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::prefix::{
    InsertOrder, DEFAULT_BLOCK_SIZE_TOKENS, DEFAULT_CHARS_PER_TOKEN, DEFAULT_LRU_CAPACITY, DEFAULT_MAX_BLOCKS,
};
use crate::time::Duration;

mod dto;
pub use dto::{
    AffinityDto, ConfigDto, ConsistentHashDto, FilterDto, PrefixDto, SaturationDto, ScorerDto, TokenLoadDto,
};

/// Most scorers one profile may hold (fixed so that per-candidate scores live inline).
pub const MAX_SCORERS: usize = 8;
/// Most endpoints the picker may return as an ordered fallback list.
pub const MAX_FALLBACK: u32 = 16;
/// The token-load threshold of every profile: in-flight plus uncached tokens at which the score
/// reaches 0. llm-d `tokenQueueThresholdDefault` (token_load.go @ebab687). `wasm-epp-shared`
/// keeps it too: below the pods' in-flight range the scorer is linear, and what matters is its
/// slope (weight / threshold). A steeper slope (65,536 at weight 2, the first tuning) outvotes
/// the prefix scorer once clients keep ~100 requests per pod in flight, and routing collapses
/// (README, "Routing quality").
pub const TOKEN_LOAD_THRESHOLD: u64 = 4_194_304;

/// `wasm-epp-default`'s prefix-index budget per worker VM: 49,152 entries of at most
/// [`crate::PrefixIndex::ENTRY_BYTES`] bytes, ≈ 2 MiB (32,768 entries fitted before the index
/// was made compact).
pub const WASM_EPP_MAX_INDEX_ENTRIES: u32 = 49_152;

/// A named starting point for the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Profile {
    /// GIE's default scheduling profile, reproduced exactly: queue-scorer 2,
    /// kv-cache-utilization-scorer 2, prefix-cache-scorer 3, max-score picker with one endpoint,
    /// utilization saturation detector 5 / 0.8 / 200 ms for admission, and GIE's approximate
    /// prefix index: one LRU per pod of `num_gpu_blocks` entries (31,250 when unknown), no
    /// global cap (kubernetes-sigs/gateway-api-inference-extension @1748e82,
    /// `pkg/epp/config/loader/defaults.go`, `.../approximateprefix/plugin.go` `makeserver`).
    /// llm-d-router's built-in and Helm-chart default is this same blend.
    #[serde(rename = "gie-default")]
    GieDefault,
    /// The llm-d optimized-baseline guide's router configuration (llm-d/llm-d
    /// `guides/optimized-baseline/router/optimized-baseline.values.yaml` @0a3b0c9):
    /// `prefix-cache-affinity-filter` (threshold 0.8; exploration 0; a *relative* TTFT gate that
    /// keeps every pod when the best sticky pod's in-flight uncached tokens lead the best
    /// non-sticky pod's by more than `maxTTFTPenaltyMs` 18,000 × `peakPrefillThroughput` 15,928
    /// tok/s) and `token-load-scorer` (threshold 4,194,304 tokens, plus this request's uncached
    /// tokens on each pod), max-score picker; llm-d's approximate hashing (4-byte tokens, blocks
    /// of at least 64 tokens, at most 131,072 tokens), no index cap (llm-d/llm-d-router @ebab687,
    /// `pkg/epp/framework/plugins/scheduling/filter/prefixcacheaffinity/plugin.go`,
    /// `.../scorer/tokenload/token_load.go`, `.../dataproducer/approximateprefix/plugin.go`,
    /// `types.go`). In-flight tokens mean *uncached prompt tokens, released at the first
    /// streamed chunk* (`.../dataproducer/inflightload/producer.go`); see
    /// [`crate::Decision::uncached_tokens`].
    #[serde(rename = "llm-d-optimized-baseline")]
    LlmdOptimizedBaseline,
    /// Ours: GIE's signals plus exact proxy-side in-flight counts and bounded-load consistent
    /// hashing on the prompt prefix, so that every worker and replica sends a new prefix to the
    /// same pod without sharing state. Weights tuned with podsim: prefix 6, KV 2, in-flight 4,
    /// consistent hash 4 (ε 0.5, key = the first half of the prompt, at most 256 blocks, min bound 8).
    #[serde(rename = "wasm-epp-default")]
    WasmEppDefault,
    /// Ours for pickers that share one view: the workers of a gateway with `prefixSync`, and its
    /// replicas through the relay (docs/replicas.md). GIE's blend (queue 2, KV 2, prefix 3) plus
    /// llm-d's token-load scorer weighted 2 on the proxy's exact in-flight tokens (uncached
    /// prompt tokens until the first response chunk) with llm-d's threshold of 4,194,304 tokens.
    /// Tuned with podsim on shared-prefix seeds 1–4, `bench --ladder llm-d` and the 800-client
    /// open loop (README, "Routing quality"). Without a shared view (replicas that do not relay) it spreads each prefix
    /// over the replicas' choices and loses to `wasm-epp-default`.
    #[serde(rename = "wasm-epp-shared")]
    WasmEppShared,
}

impl Profile {
    /// Every profile, in the order tables list them.
    pub const ALL: [Profile; 4] = [
        Profile::GieDefault,
        Profile::LlmdOptimizedBaseline,
        Profile::WasmEppDefault,
        Profile::WasmEppShared,
    ];

    /// The profile's configuration name (`"gie-default"`, `"llm-d-optimized-baseline"`,
    /// `"wasm-epp-default"`), as the `profile` field of the JSON config spells it.
    pub fn name(self) -> &'static str {
        match self {
            Profile::GieDefault => "gie-default",
            Profile::LlmdOptimizedBaseline => "llm-d-optimized-baseline",
            Profile::WasmEppDefault => "wasm-epp-default",
            Profile::WasmEppShared => "wasm-epp-shared",
        }
    }

    /// The profile of a name; the error says what a retired name became.
    pub fn from_name(name: &str) -> Result<Profile, String> {
        match Profile::ALL.iter().find(|p| p.name() == name) {
            Some(p) => Ok(*p),
            None if name == "llm-d-default" => Err(String::from(
                "profile \"llm-d-default\" was renamed \"llm-d-optimized-baseline\" (the llm-d optimized-baseline guide's configuration); llm-d-router's built-in default is the \"gie-default\" blend",
            )),
            None => Err(format!(
                "unknown profile {name:?} (gie-default, llm-d-optimized-baseline, wasm-epp-default, wasm-epp-shared)"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Profile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Profile, D::Error> {
        let name = String::deserialize(d)?;
        Profile::from_name(&name).map_err(serde::de::Error::custom)
    }
}

/// A scoring signal. Each yields a score in [0, 1] per candidate; see `pick.rs` for formulas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum ScorerKind {
    /// GIE `queue-scorer`: min-max over candidates of waiting requests.
    #[serde(rename = "queue-scorer")]
    Queue,
    /// GIE `kv-cache-utilization-scorer`: 1 − KV utilisation.
    #[serde(rename = "kv-cache-utilization-scorer")]
    KvCache,
    /// GIE `prefix-cache-scorer`: matched blocks / request blocks.
    #[serde(rename = "prefix-cache-scorer")]
    Prefix,
    /// GIE `lora-affinity-scorer`: 1 / 0.8 / 0.6 / 0.
    #[serde(rename = "lora-affinity-scorer")]
    Lora,
    /// GIE `running-requests-size-scorer`: min-max of running requests.
    #[serde(rename = "running-requests-size-scorer")]
    RunningRequests,
    /// llm-d `token-load-scorer`: 1 − min(1, in-flight tokens / threshold).
    #[serde(rename = "token-load-scorer")]
    TokenLoad,
    /// Ours: min-max of the proxy's exact in-flight request counts.
    #[serde(rename = "in-flight-scorer")]
    InFlight,
    /// Ours: 1 for the bounded-load consistent-hash choice for the prompt prefix, else 0.
    #[serde(rename = "consistent-hash-scorer")]
    ConsistentHash,
}

/// A candidate filter, applied in order before scoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum FilterKind {
    /// GIE `utilization-detector` used as a filter: keep pods with fresh metrics, queue below the
    /// threshold and KV below the threshold; if none remain, keep all (fail-open).
    #[serde(rename = "utilization-filter")]
    Utilization,
    /// llm-d `prefix-cache-affinity-filter`: keep pods whose prefix score ≥ threshold unless none
    /// do, the exploration draw skips it, or the TTFT gate opens (the best sticky pod's estimated
    /// TTFT exceeds the best non-sticky pod's by more than `maxTTFTPenaltyMs`).
    #[serde(rename = "prefix-cache-affinity-filter")]
    PrefixAffinity,
}

// === domain ===

/// Why a configuration was rejected; names the offending field.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigError {
    /// The JSON did not parse or had an unknown field (serde's message names it).
    Json(String),
    /// A field's value is out of range.
    Invalid {
        /// The field's JSON path, e.g. `"saturation.kvCacheUtilThreshold"`.
        field: &'static str,
        /// What is wrong with the value, and the accepted range.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Json(m) => write!(f, "invalid picker config: {m}"),
            ConfigError::Invalid { field, reason } => {
                write!(f, "invalid picker config: {field}: {reason}")
            }
        }
    }
}

impl core::error::Error for ConfigError {}

/// A scorer of the profile with its weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightedScorer {
    /// The scoring signal.
    pub kind: ScorerKind,
    /// Its weight in `total = Σ weight × score`: finite and > 0.
    pub weight: f64,
}

/// Validated saturation-detector parameters (see [`SaturationDto`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Saturation {
    /// Waiting requests at which a pod counts as saturated (> 0; default 5).
    pub queue_threshold: u32,
    /// KV-cache utilisation fraction at which a pod counts as saturated (in (0, 1]; default 0.8).
    pub kv_threshold: f64,
    /// Metrics older than this count as fully saturated (1.0) in the pool saturation and are
    /// dropped by the utilization filter; default 200 ms.
    pub staleness: Duration,
    /// The utilization filter's slack on both thresholds (in [0, 10]; default 0).
    pub headroom: f64,
}

/// Validated approximate prefix-cache parameters (see [`PrefixDto`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrefixParams {
    /// Tokens per block when the pods report none or autoTune is off (1..=4096; default 16).
    pub block_size_tokens: u32,
    /// Bytes per token estimate (1..=64; default 4).
    pub chars_per_token: u32,
    /// Blocks hashed at most (1..=4096; default 256).
    pub max_blocks: u32,
    /// Take the block size from the first candidate's reported `block_size` (default true).
    pub auto_tune: bool,
    /// Per-endpoint LRU capacity in entries when the pod reports no `num_gpu_blocks`
    /// (> 0; default 31,250).
    pub lru_capacity: u32,
    /// Cap on index entries per picker state; `None`: no global cap.
    pub max_index_entries: Option<u32>,
    /// Which end of a prompt stays most recent in an endpoint's LRU.
    pub insert_order: InsertOrder,
    /// Floor on the block size in tokens (0..=4096); 0: no floor.
    pub min_block_size_tokens: u32,
    /// Cap on hashed prompt tokens (0..=4,194,304); 0: `max_blocks` applies.
    pub max_prefix_tokens: u32,
}

/// Validated prefix-cache-affinity filter parameters (see [`AffinityDto`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affinity {
    /// Prefix score (matched / request blocks) a pod needs to be sticky (in (0, 1]; default 0.8).
    pub threshold: f64,
    /// TTFT lead in ms of the best sticky pod over the best non-sticky pod past which the
    /// filter keeps every pod (≥ 0; 0 disables the gate; default 18,000).
    pub max_ttft_penalty_ms: f64,
    /// Prefill tokens per second that turn in-flight tokens into an estimated TTFT (> 0;
    /// default 15,928).
    pub peak_prefill_throughput: f64,
    /// Probability in [0, 1] that the filter is skipped for a pick (default 0).
    pub exploration: f64,
}

/// Validated consistent-hash scorer parameters (see [`ConsistentHashDto`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConsistentHash {
    /// Load bound ε: an endpoint at ≥ ⌈(1+ε) × average⌉ in-flight requests is passed over
    /// (in (0, 10]; default 0.5).
    pub epsilon: f64,
    /// Most leading prompt blocks in the hashing key (1..=256; default 256).
    pub prefix_blocks: u32,
    /// In-flight requests an endpoint may always take (0..=100,000; default 8).
    pub min_bound: u32,
}

/// A validated picker configuration. Construct with [`Config::profile`] or
/// [`Config::from_json`] / `TryFrom<ConfigDto>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    profile: Profile,
    scorers: Vec<WeightedScorer>,
    filters: Vec<FilterKind>,
    max_endpoints: u32,
    saturation: Saturation,
    prefix: PrefixParams,
    affinity: Affinity,
    token_load_threshold: u64,
    chash: ConsistentHash,
    degrade_after: Option<Duration>,
}

impl Config {
    /// The named profile with all defaults.
    pub fn profile(p: Profile) -> Config {
        let (scorers, filters, insert_order): (&[(ScorerKind, f64)], &[FilterKind], InsertOrder) = match p {
            Profile::GieDefault => (
                &[
                    (ScorerKind::Queue, 2.0),
                    (ScorerKind::KvCache, 2.0),
                    (ScorerKind::Prefix, 3.0),
                ],
                &[],
                InsertOrder::Gie,
            ),
            Profile::LlmdOptimizedBaseline => (
                &[(ScorerKind::TokenLoad, 1.0)],
                &[FilterKind::PrefixAffinity],
                InsertOrder::Gie,
            ),
            // Tuned with podsim (README "Routing quality"; podsim crate docs): the lagged, min-max
            // queue scorer is left out and the prefix match dominates. The exact in-flight count
            // weighs as much as consistent hashing: with in-flight below it, a group's pods are
            // chosen by the hash instead of by load once the pool is 3–6× over capacity, the hot
            // pods run out of KV and preempt (TTFT p90 up to 4–11 s at 20–60 QPS shared-prefix,
            // client cap 800, depending on the seed); with it equal, p90 stays ≤ 1 s there on
            // three seeds.
            Profile::WasmEppDefault => (
                &[
                    (ScorerKind::Prefix, 6.0),
                    (ScorerKind::KvCache, 2.0),
                    (ScorerKind::InFlight, 4.0),
                    (ScorerKind::ConsistentHash, 4.0),
                ],
                &[],
                InsertOrder::HeadMostRecent,
            ),
            Profile::WasmEppShared => (
                &[
                    (ScorerKind::Queue, 2.0),
                    (ScorerKind::KvCache, 2.0),
                    (ScorerKind::Prefix, 3.0),
                    (ScorerKind::TokenLoad, 2.0),
                ],
                &[],
                InsertOrder::HeadMostRecent,
            ),
        };
        Config {
            profile: p,
            scorers: scorers
                .iter()
                .map(|&(kind, weight)| WeightedScorer { kind, weight })
                .collect(),
            filters: filters.to_vec(),
            max_endpoints: 1,
            saturation: Saturation {
                queue_threshold: 5,
                kv_threshold: 0.8,
                staleness: Duration::from_millis(200),
                headroom: 0.0,
            },
            prefix: PrefixParams {
                block_size_tokens: DEFAULT_BLOCK_SIZE_TOKENS,
                chars_per_token: DEFAULT_CHARS_PER_TOKEN,
                max_blocks: DEFAULT_MAX_BLOCKS,
                auto_tune: true,
                lru_capacity: DEFAULT_LRU_CAPACITY,
                // The baselines keep GIE's and llm-d's unbounded index (one LRU per pod); ours
                // runs inside the proxy with a memory budget (`PrefixIndex::ENTRY_BYTES` each).
                max_index_entries: match p {
                    Profile::WasmEppDefault | Profile::WasmEppShared => Some(WASM_EPP_MAX_INDEX_ENTRIES),
                    _ => None,
                },
                insert_order,
                // llm-d `minBlockSizeTokens` 64 and `defaultMaxPrefixTokens` 131,072
                // (approximateprefix/plugin.go, types.go @ebab687).
                min_block_size_tokens: match p {
                    Profile::LlmdOptimizedBaseline => 64,
                    _ => 0,
                },
                max_prefix_tokens: match p {
                    Profile::LlmdOptimizedBaseline => 131_072,
                    _ => 0,
                },
            },
            // llm-d `prefixcacheaffinity.DefaultConfig` @ebab687.
            affinity: Affinity {
                threshold: 0.8,
                max_ttft_penalty_ms: 18_000.0,
                peak_prefill_throughput: 15_928.0,
                exploration: 0.0,
            },
            token_load_threshold: TOKEN_LOAD_THRESHOLD,
            chash: ConsistentHash {
                epsilon: 0.5,
                // The whole matched window (`maxPrefixBlocksToMatch`), not the first few blocks:
                // a system prompt shared by every request (the inference-perf code-generation and
                // reasoning shapes: 3,000 and 250 tokens) would otherwise give every request the
                // same key and send them all to one pod until its load bound.
                prefix_blocks: 256,
                min_bound: 8,
            },
            degrade_after: Some(Duration::from_secs(5)),
        }
    }

    /// Parses and validates JSON config bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let dto: ConfigDto = serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(format!("{e}")))?;
        Config::try_from(dto)
    }

    /// The profile this configuration started from.
    pub fn profile_kind(&self) -> Profile {
        self.profile
    }
    /// The scorers, in the order their columns appear in a [`crate::Decision`] (1..=8).
    pub fn scorers(&self) -> &[WeightedScorer] {
        &self.scorers
    }
    /// The filters, in the order they run (0..=4).
    pub fn filters(&self) -> &[FilterKind] {
        &self.filters
    }
    /// Endpoints returned per pick: the primary plus fallbacks (1..=[`MAX_FALLBACK`]; default 1).
    pub fn max_endpoints(&self) -> u32 {
        self.max_endpoints
    }
    /// The saturation detector's parameters.
    pub fn saturation(&self) -> &Saturation {
        &self.saturation
    }
    /// The approximate prefix cache's parameters.
    pub fn prefix(&self) -> &PrefixParams {
        &self.prefix
    }
    /// The prefix-cache-affinity filter's parameters.
    pub fn affinity(&self) -> &Affinity {
        &self.affinity
    }
    /// In-flight tokens at which the token-load score reaches 0 (> 0; default 4,194,304).
    pub fn token_load_threshold(&self) -> u64 {
        self.token_load_threshold
    }
    /// The consistent-hash scorer's parameters.
    pub fn consistent_hash(&self) -> &ConsistentHash {
        &self.chash
    }
    /// Snapshot age past which the picker degrades to consistent hashing plus in-flight counts;
    /// `None`: never (default 5 s).
    pub fn degrade_after(&self) -> Option<Duration> {
        self.degrade_after
    }

    /// Whether a configured scorer or filter reads in-flight *tokens* (token-load, or the
    /// affinity filter's TTFT gate); callers that keep counts need to track tokens only then.
    pub fn reads_inflight_tokens(&self) -> bool {
        self.scorers.iter().any(|s| s.kind == ScorerKind::TokenLoad)
            || (self.filters.contains(&FilterKind::PrefixAffinity) && self.affinity.max_ttft_penalty_ms > 0.0)
    }

    /// Tokens per prefix block for a pool whose first candidate reports `block_size` tokens
    /// (autoTune), never below `minBlockSizeTokens`.
    pub fn block_tokens(&self, reported_block_size: Option<u32>) -> u32 {
        let tokens = match reported_block_size {
            Some(b) if self.prefix.auto_tune && b > 0 => b,
            _ => self.prefix.block_size_tokens,
        };
        tokens.max(self.prefix.min_block_size_tokens)
    }

    /// Bytes per prefix block for a pool whose first candidate reports `block_size` tokens.
    pub fn block_bytes(&self, reported_block_size: Option<u32>) -> usize {
        (self.block_tokens(reported_block_size) as usize).saturating_mul(self.prefix.chars_per_token as usize)
    }

    /// Most blocks hashed for blocks of `block_tokens` tokens: `maxPrefixTokensToMatch /
    /// block_tokens` when that cap is set, else `maxPrefixBlocksToMatch`.
    pub fn max_blocks(&self, block_tokens: u32) -> u32 {
        if self.prefix.max_prefix_tokens > 0 && block_tokens > 0 {
            self.prefix.max_prefix_tokens / block_tokens
        } else {
            self.prefix.max_blocks
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::profile(Profile::WasmEppDefault)
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn fraction(field: &'static str, v: f64, allow_zero: bool) -> Result<f64, ConfigError> {
    let ok = v.is_finite() && v <= 1.0 && if allow_zero { v >= 0.0 } else { v > 0.0 };
    if ok {
        Ok(v)
    } else {
        Err(invalid(
            field,
            format!("{v} is not in {}0, 1]", if allow_zero { "[" } else { "(" }),
        ))
    }
}

impl TryFrom<ConfigDto> for Config {
    type Error = ConfigError;

    fn try_from(d: ConfigDto) -> Result<Config, ConfigError> {
        let mut c = Config::profile(d.profile.unwrap_or(Profile::WasmEppDefault));
        if let Some(scorers) = d.scorers {
            c.apply_scorers(scorers)?;
        }
        if let Some(filters) = d.filters {
            if filters.len() > 4 {
                return Err(invalid("filters", "at most 4 filters"));
            }
            c.filters = filters.into_iter().map(|f| f.kind).collect();
        }
        if let Some(n) = d.max_endpoints {
            if n == 0 || n > MAX_FALLBACK {
                return Err(invalid("maxEndpoints", format!("{n} is not in 1..={MAX_FALLBACK}")));
            }
            c.max_endpoints = n;
        }
        if let Some(s) = d.saturation {
            c.apply_saturation(s)?;
        }
        if let Some(p) = d.prefix {
            c.apply_prefix(p)?;
        }
        if let Some(a) = d.affinity {
            c.apply_affinity(a)?;
        }
        if let Some(t) = d.token_load.and_then(|t| t.threshold_tokens) {
            if t == 0 {
                return Err(invalid("tokenLoad.thresholdTokens", "must be > 0"));
            }
            c.token_load_threshold = t;
        }
        if let Some(ch) = d.consistent_hash {
            c.apply_consistent_hash(ch)?;
        }
        if let Some(ms) = d.degrade_after_ms {
            c.degrade_after = if ms == 0 { None } else { Some(Duration::from_millis(ms)) };
        }
        Ok(c)
    }
}

// === one function per section of the configuration ===

impl Config {
    fn apply_scorers(&mut self, scorers: Vec<ScorerDto>) -> Result<(), ConfigError> {
        if scorers.is_empty() || scorers.len() > MAX_SCORERS {
            return Err(invalid(
                "scorers",
                format!("need 1..={MAX_SCORERS} scorers, got {}", scorers.len()),
            ));
        }
        self.scorers.clear();
        for s in scorers {
            // GIE `DefaultScorerWeight`: a scorer without a weight counts 1.0.
            let weight = s.weight.unwrap_or(1.0);
            if !(weight.is_finite() && weight > 0.0) {
                return Err(invalid(
                    "scorers[].weight",
                    format!("{weight} is not a finite number > 0"),
                ));
            }
            if self.scorers.iter().any(|w| w.kind == s.kind) {
                return Err(invalid("scorers[].type", "each scorer may appear once"));
            }
            self.scorers.push(WeightedScorer { kind: s.kind, weight });
        }

        Ok(())
    }

    fn apply_saturation(&mut self, s: SaturationDto) -> Result<(), ConfigError> {
        if let Some(q) = s.queue_depth_threshold {
            if q == 0 {
                return Err(invalid("saturation.queueDepthThreshold", "must be > 0"));
            }
            self.saturation.queue_threshold = q;
        }
        if let Some(kv) = s.kv_cache_util_threshold {
            self.saturation.kv_threshold = fraction("saturation.kvCacheUtilThreshold", kv, false)?;
        }
        if let Some(ms) = s.metrics_staleness_threshold_ms {
            if ms == 0 {
                return Err(invalid("saturation.metricsStalenessThresholdMs", "must be > 0"));
            }
            self.saturation.staleness = Duration::from_millis(ms);
        }
        if let Some(h) = s.headroom {
            if !(h.is_finite() && (0.0..=10.0).contains(&h)) {
                return Err(invalid("saturation.headroom", format!("{h} is not in [0, 10]")));
            }
            self.saturation.headroom = h;
        }

        Ok(())
    }

    fn apply_prefix(&mut self, p: PrefixDto) -> Result<(), ConfigError> {
        if let Some(v) = p.block_size_tokens {
            if !(1..=4096).contains(&v) {
                return Err(invalid("prefix.blockSizeTokens", format!("{v} is not in 1..=4096")));
            }
            self.prefix.block_size_tokens = v;
        }
        if let Some(v) = p.chars_per_token {
            if !(1..=64).contains(&v) {
                return Err(invalid("prefix.charsPerToken", format!("{v} is not in 1..=64")));
            }
            self.prefix.chars_per_token = v;
        }
        if let Some(v) = p.max_prefix_blocks_to_match {
            if !(1..=4096).contains(&v) {
                return Err(invalid(
                    "prefix.maxPrefixBlocksToMatch",
                    format!("{v} is not in 1..=4096"),
                ));
            }
            self.prefix.max_blocks = v;
        }
        if let Some(v) = p.auto_tune {
            self.prefix.auto_tune = v;
        }
        if let Some(v) = p.lru_capacity_per_server {
            if v == 0 {
                return Err(invalid("prefix.lruCapacityPerServer", "must be > 0"));
            }
            self.prefix.lru_capacity = v;
        }
        if let Some(v) = p.max_index_entries {
            if v > 1 << 24 {
                return Err(invalid(
                    "prefix.maxIndexEntries",
                    format!("{v} is not in 0..=16777216 (0: no cap)"),
                ));
            }
            self.prefix.max_index_entries = (v > 0).then_some(v);
        }
        if let Some(v) = p.insert_order {
            self.prefix.insert_order = v;
        }
        if let Some(v) = p.min_block_size_tokens {
            if v > 4096 {
                return Err(invalid("prefix.minBlockSizeTokens", format!("{v} is not in 0..=4096")));
            }
            self.prefix.min_block_size_tokens = v;
        }
        if let Some(v) = p.max_prefix_tokens_to_match {
            if v > 1 << 22 {
                return Err(invalid(
                    "prefix.maxPrefixTokensToMatch",
                    format!("{v} is not in 0..=4194304 (0: maxPrefixBlocksToMatch applies)"),
                ));
            }
            self.prefix.max_prefix_tokens = v;
        }

        Ok(())
    }

    fn apply_affinity(&mut self, a: AffinityDto) -> Result<(), ConfigError> {
        if let Some(t) = a.threshold {
            self.affinity.threshold = fraction("affinity.threshold", t, false)?;
        }
        if let Some(v) = a.max_ttft_penalty_ms {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(
                    "affinity.maxTTFTPenaltyMs",
                    format!("{v} is not a finite number >= 0"),
                ));
            }
            self.affinity.max_ttft_penalty_ms = v;
        }
        if let Some(v) = a.peak_prefill_throughput {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(
                    "affinity.peakPrefillThroughput",
                    format!("{v} is not a finite number > 0"),
                ));
            }
            self.affinity.peak_prefill_throughput = v;
        }
        if let Some(p) = a.exploration_probability {
            self.affinity.exploration = fraction("affinity.explorationProbability", p, true)?;
        }

        Ok(())
    }

    fn apply_consistent_hash(&mut self, ch: ConsistentHashDto) -> Result<(), ConfigError> {
        if let Some(e) = ch.epsilon {
            if !(e.is_finite() && e > 0.0 && e <= 10.0) {
                return Err(invalid("consistentHash.epsilon", format!("{e} is not in (0, 10]")));
            }
            self.chash.epsilon = e;
        }
        if let Some(m) = ch.min_bound {
            if m > 100_000 {
                return Err(invalid("consistentHash.minBound", format!("{m} is not in 0..=100000")));
            }
            self.chash.min_bound = m;
        }
        if let Some(b) = ch.prefix_blocks {
            if !(1..=256).contains(&b) {
                return Err(invalid("consistentHash.prefixBlocks", format!("{b} is not in 1..=256")));
            }
            self.chash.prefix_blocks = b;
        }

        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32-unknown-unknown the same tests run under wasm-bindgen-test (Node).
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn gie_default_matches_epp_defaults() {
        let c = Config::profile(Profile::GieDefault);
        let w: Vec<(ScorerKind, f64)> = c.scorers().iter().map(|s| (s.kind, s.weight)).collect();
        assert_eq!(
            w,
            [
                (ScorerKind::Queue, 2.0),
                (ScorerKind::KvCache, 2.0),
                (ScorerKind::Prefix, 3.0)
            ]
        );
        assert!(c.filters().is_empty());
        assert_eq!(c.max_endpoints(), 1);
        assert_eq!(c.saturation().queue_threshold, 5);
        assert_eq!(c.saturation().kv_threshold, 0.8);
        assert_eq!(c.saturation().staleness, Duration::from_millis(200));
        assert_eq!(c.block_bytes(None), 64);
        assert_eq!(c.block_bytes(Some(32)), 128, "autoTune takes the pod's block size");
        assert_eq!(c.prefix().max_blocks, 256);
        assert_eq!(c.prefix().lru_capacity, 31_250);
    }

    #[test]
    fn wasm_epp_shared_is_gies_blend_with_token_load_on_exact_tokens() {
        let c = Config::from_json(br#"{"profile":"wasm-epp-shared"}"#).unwrap();
        assert_eq!(c, Config::profile(Profile::WasmEppShared));
        let w: Vec<(ScorerKind, f64)> = c.scorers().iter().map(|s| (s.kind, s.weight)).collect();
        assert_eq!(
            w,
            [
                (ScorerKind::Queue, 2.0),
                (ScorerKind::KvCache, 2.0),
                (ScorerKind::Prefix, 3.0),
                (ScorerKind::TokenLoad, 2.0),
            ]
        );
        assert_eq!(c.token_load_threshold(), 4_194_304, "llm-d's threshold");
        assert!(c.reads_inflight_tokens(), "the filter must count its in-flight tokens");
        assert_eq!(c.prefix().max_index_entries, Some(WASM_EPP_MAX_INDEX_ENTRIES));
        assert_eq!(Profile::from_name("wasm-epp-shared"), Ok(Profile::WasmEppShared));
        // So does every other profile.
        assert_eq!(
            Config::profile(Profile::WasmEppDefault).token_load_threshold(),
            4_194_304
        );
    }

    #[test]
    fn json_overrides_and_defaults() {
        let c = Config::from_json(br#"{"profile":"gie-default","scorers":[{"type":"queue-scorer"},{"type":"prefix-cache-scorer","weight":5}],"maxEndpoints":3}"#).unwrap();
        assert_eq!(
            c.scorers()[0],
            WeightedScorer {
                kind: ScorerKind::Queue,
                weight: 1.0
            }
        );
        assert_eq!(c.scorers()[1].weight, 5.0);
        assert_eq!(c.max_endpoints(), 3);
        assert_eq!(Config::from_json(b"{}").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_json(br#"{"maxEndpionts":2}"#).unwrap_err();
        assert!(matches!(&e, ConfigError::Json(m) if m.contains("maxEndpionts")), "{e}");
        let e = Config::from_json(br#"{"maxEndpoints":0}"#).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Invalid {
                field: "maxEndpoints",
                ..
            }
        ));
        let e = Config::from_json(br#"{"saturation":{"kvCacheUtilThreshold":1.5}}"#).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Invalid {
                field: "saturation.kvCacheUtilThreshold",
                ..
            }
        ));
        let e = Config::from_json(br#"{"scorers":[{"type":"queue-scorer","weight":-1}]}"#).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Invalid {
                field: "scorers[].weight",
                ..
            }
        ));
        let e = Config::from_json(br#"{"scorers":[{"type":"nope"}]}"#).unwrap_err();
        assert!(matches!(&e, ConfigError::Json(m) if m.contains("nope")), "{e}");
        let e = Config::from_json(br#"{"scorers":[]}"#).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { field: "scorers", .. }));
        assert!(Config::from_json(b"not json").is_err());
        let e = Config::from_json(br#"{"prefix":{"blockSizeTokens":0}}"#).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Invalid {
                field: "prefix.blockSizeTokens",
                ..
            }
        ));
    }
}
