//! Engine metric mapping: from one engine's `/metrics` text to the snapshot's load fields.
//!
//! The table (metric names per engine) is in the crate docs; its source is GIE's model-server
//! protocol (`docs/proposals/003-model-server-protocol/README.md`) and llm-d-router's built-in
//! engine configs, summarised with citations in `docs/engines.md`.

use std::fmt;
use std::str::FromStr;

use picker_core::snapshot::{LoraState, MAX_LIST, MAX_NAME_LEN};

use crate::prom::{self, ParseError, Sample};

/// Pod label that names the engine (llm-d-router; default `vllm`).
pub const ENGINE_LABEL: &str = "llm-d.ai/engine-type";
/// Deprecated fallback label, still read by llm-d-router (`docs/engines.md`, "Engine selection").
pub const ENGINE_LABEL_DEPRECATED: &str = "inference.networking.k8s.io/engine-type";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Engine {
    #[default]
    Vllm,
    Sglang,
    TrtllmServe,
    TritonTensorrtLlm,
}

impl Engine {
    pub const ALL: [Engine; 4] = [
        Engine::Vllm,
        Engine::Sglang,
        Engine::TrtllmServe,
        Engine::TritonTensorrtLlm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Sglang => "sglang",
            Engine::TrtllmServe => "trtllm-serve",
            Engine::TritonTensorrtLlm => "triton-tensorrt-llm",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Engine::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown engine {s:?} (vllm, sglang, trtllm-serve, triton-tensorrt-llm)"))
    }
}

/// What one scrape says about a pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodMetrics {
    pub waiting: u32,
    pub running: u32,
    pub kv_usage: f32,
    pub block_size: Option<u32>,
    pub gpu_blocks: Option<u32>,
    pub lora: Option<LoraState>,
    pub models: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExtractError {
    #[error("not Prometheus text: {0}")]
    Parse(#[from] ParseError),
    #[error("required metric {0} is missing")]
    Missing(&'static str),
    #[error("metric {0} has an invalid value")]
    BadValue(&'static str),
}

/// Sums a count gauge over its series (vLLM data-parallel ranks are series `engine="0"`, `"1"`…).
#[derive(Default)]
struct Count {
    seen: bool,
    bad: bool,
    sum: f64,
}

impl Count {
    fn add(&mut self, v: f64) {
        self.seen = true;
        if !v.is_finite() || v < 0.0 {
            self.bad = true;
        } else {
            self.sum += v;
        }
    }

    fn get(&self, name: &'static str) -> Result<u32, ExtractError> {
        if !self.seen {
            return Err(ExtractError::Missing(name));
        }
        if self.bad {
            return Err(ExtractError::BadValue(name));
        }
        Ok(self.sum.round().min(u32::MAX as f64) as u32)
    }
}

/// Takes the highest fraction over series (the fullest rank bounds what the pod can admit).
#[derive(Default)]
struct Fraction {
    seen: bool,
    bad: bool,
    max: f64,
}

impl Fraction {
    fn add(&mut self, v: f64) {
        if !v.is_finite() || v < 0.0 {
            self.bad = true;
        } else if !self.seen || v > self.max {
            self.max = v;
        }
        self.seen = true;
    }

    fn get(&self, name: &'static str) -> Result<f32, ExtractError> {
        if !self.seen {
            return Err(ExtractError::Missing(name));
        }
        if self.bad {
            return Err(ExtractError::BadValue(name));
        }
        // Engines report a fraction in [0, 1]; a rounding overshoot is clamped.
        Ok(self.max.min(1.0) as f32)
    }
}

/// A positive integer from a label value or gauge ("None", "0", garbage → absent).
fn positive_u32(s: &str) -> Option<u32> {
    let v = prom::parse_float(s.trim())?;
    (v.is_finite() && v >= 1.0 && v <= u32::MAX as f64).then_some(v.round() as u32)
}

fn positive_u32_value(v: f64) -> Option<u32> {
    (v.is_finite() && v >= 1.0 && v <= u32::MAX as f64).then_some(v.round() as u32)
}

fn add_model(models: &mut Vec<String>, s: &Sample<'_, '_>) {
    if let Some(m) = s.label("model_name") {
        if !m.is_empty() && m.len() <= MAX_NAME_LEN && models.len() < MAX_LIST && !models.iter().any(|x| *x == m) {
            models.push(m.into_owned());
        }
    }
}

fn adapter_list(s: Option<std::borrow::Cow<'_, str>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(s) = s {
        for name in s.split(',').map(str::trim) {
            if !name.is_empty() && name.len() <= MAX_NAME_LEN && out.len() < MAX_LIST && !out.iter().any(|x| x == name)
            {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// How an extractor runs the parser: [`prom::parse_families`] with its family list (the
/// scrape path), or [`prom::parse`] over every line (tests compare the two).
type Parse = for<'a> fn(&'a [u8], &[&str], &mut dyn FnMut(&Sample<'a, '_>)) -> Result<(), ParseError>;

fn parse_listed<'a>(
    text: &'a [u8],
    families: &[&str],
    visit: &mut dyn FnMut(&Sample<'a, '_>),
) -> Result<(), ParseError> {
    prom::parse_families(text, families, visit)
}

/// Parses `text` as `engine`'s exposition and extracts the load fields. Only the families the
/// mapping reads are parsed; other sample lines are checked up to their name ([`prom`]).
pub fn extract(engine: Engine, text: &[u8]) -> Result<PodMetrics, ExtractError> {
    extract_with(engine, text, parse_listed)
}

fn extract_with(engine: Engine, text: &[u8], parse: Parse) -> Result<PodMetrics, ExtractError> {
    match engine {
        Engine::Vllm => extract_vllm(text, parse),
        Engine::Sglang => extract_sglang(text, parse),
        Engine::TrtllmServe => extract_trtllm_serve(text, parse),
        Engine::TritonTensorrtLlm => extract_triton(text, parse),
    }
}

// === vLLM ===

const VLLM_WAITING: &str = "vllm:num_requests_waiting";
const VLLM_RUNNING: &str = "vllm:num_requests_running";
const VLLM_KV: &str = "vllm:kv_cache_usage_perc";
const VLLM_KV_OLD: &str = "vllm:gpu_cache_usage_perc";
const VLLM_CACHE_CONFIG: &str = "vllm:cache_config_info";
const VLLM_LORA: &str = "vllm:lora_requests_info";
/// Every family `extract_vllm` reads; the parser skips all others.
const VLLM_FAMILIES: &[&str] = &[
    VLLM_WAITING,
    VLLM_RUNNING,
    VLLM_KV,
    VLLM_KV_OLD,
    VLLM_CACHE_CONFIG,
    VLLM_LORA,
];

fn extract_vllm(text: &[u8], parse: Parse) -> Result<PodMetrics, ExtractError> {
    let (mut waiting, mut running) = (Count::default(), Count::default());
    let (mut kv, mut kv_old) = (Fraction::default(), Fraction::default());
    let mut out = PodMetrics::default();
    // Newest `vllm:lora_requests_info` series: its value is the last-updated timestamp.
    let mut lora: Option<(f64, LoraState)> = None;
    parse(text, VLLM_FAMILIES, &mut |s| match s.name {
        VLLM_WAITING => {
            waiting.add(s.value);
            add_model(&mut out.models, s);
        }
        VLLM_RUNNING => {
            running.add(s.value);
            add_model(&mut out.models, s);
        }
        VLLM_KV => kv.add(s.value),
        VLLM_KV_OLD => kv_old.add(s.value),
        VLLM_CACHE_CONFIG => {
            if let Some(v) = s.label("block_size").and_then(|v| positive_u32(&v)) {
                out.block_size = Some(v);
            }
            if let Some(v) = s.label("num_gpu_blocks").and_then(|v| positive_u32(&v)) {
                out.gpu_blocks = Some(v);
            }
        }
        VLLM_LORA if s.value.is_finite() && lora.as_ref().is_none_or(|(t, _)| s.value > *t) => {
            let max = s
                .label("max_lora")
                .and_then(|v| prom::parse_float(&v))
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map_or(0, |v| v.min(u16::MAX as f64) as u16);
            let state = LoraState {
                running: adapter_list(s.label("running_lora_adapters")),
                waiting: adapter_list(s.label("waiting_lora_adapters")),
                max,
            };
            lora = Some((s.value, state));
        }
        _ => {}
    })?;
    out.waiting = waiting.get(VLLM_WAITING)?;
    out.running = running.get(VLLM_RUNNING)?;
    out.kv_usage = if kv.seen {
        kv.get(VLLM_KV)?
    } else {
        kv_old.get(VLLM_KV_OLD).map_err(|_| ExtractError::Missing(VLLM_KV))?
    };
    // A pod with LoRA enabled serves any adapter it can load, so it lists no models (= all).
    out.lora = lora.map(|(_, l)| l).filter(|l| l.max > 0);
    if out.lora.is_some() {
        out.models.clear();
    }
    Ok(out)
}

// === SGLang ===

const SGLANG_WAITING: &str = "sglang:num_queue_reqs";
const SGLANG_RUNNING: &str = "sglang:num_running_reqs";
const SGLANG_KV: &str = "sglang:token_usage";
const SGLANG_CACHE_CONFIG: &str = "sglang:cache_config_info";
/// Every family `extract_sglang` reads.
const SGLANG_FAMILIES: &[&str] = &[SGLANG_WAITING, SGLANG_RUNNING, SGLANG_KV, SGLANG_CACHE_CONFIG];

fn extract_sglang(text: &[u8], parse: Parse) -> Result<PodMetrics, ExtractError> {
    let (mut waiting, mut running, mut kv) = (Count::default(), Count::default(), Fraction::default());
    let mut out = PodMetrics::default();
    parse(text, SGLANG_FAMILIES, &mut |s| match s.name {
        SGLANG_WAITING => {
            waiting.add(s.value);
            add_model(&mut out.models, s);
        }
        SGLANG_RUNNING => {
            running.add(s.value);
            add_model(&mut out.models, s);
        }
        SGLANG_KV => kv.add(s.value),
        SGLANG_CACHE_CONFIG => {
            if let Some(v) = s.label("page_size").and_then(|v| positive_u32(&v)) {
                out.block_size = Some(v);
            }
            if let Some(v) = s.label("num_pages").and_then(|v| positive_u32(&v)) {
                out.gpu_blocks = Some(v);
            }
        }
        _ => {}
    })?;
    out.waiting = waiting.get(SGLANG_WAITING)?;
    out.running = running.get(SGLANG_RUNNING)?;
    out.kv_usage = kv.get(SGLANG_KV)?;
    Ok(out)
}

// === trtllm-serve ===

const TRTLLM_WAITING: &str = "trtllm_num_requests_waiting";
const TRTLLM_RUNNING: &str = "trtllm_num_requests_running";
const TRTLLM_KV: &str = "trtllm_kv_cache_utilization";
const TRTLLM_BLOCK_SIZE: &str = "trtllm_kv_cache_tokens_per_block";
const TRTLLM_BLOCKS: &str = "trtllm_kv_cache_max_blocks";
/// Every family `extract_trtllm_serve` reads.
const TRTLLM_FAMILIES: &[&str] = &[
    TRTLLM_WAITING,
    TRTLLM_RUNNING,
    TRTLLM_KV,
    TRTLLM_BLOCK_SIZE,
    TRTLLM_BLOCKS,
];

fn extract_trtllm_serve(text: &[u8], parse: Parse) -> Result<PodMetrics, ExtractError> {
    let (mut waiting, mut running, mut kv) = (Count::default(), Count::default(), Fraction::default());
    let mut out = PodMetrics::default();
    parse(text, TRTLLM_FAMILIES, &mut |s| match s.name {
        TRTLLM_WAITING => {
            waiting.add(s.value);
            add_model(&mut out.models, s);
        }
        TRTLLM_RUNNING => {
            running.add(s.value);
            add_model(&mut out.models, s);
        }
        TRTLLM_KV => kv.add(s.value),
        TRTLLM_BLOCK_SIZE => out.block_size = positive_u32_value(s.value).or(out.block_size),
        TRTLLM_BLOCKS => out.gpu_blocks = positive_u32_value(s.value).or(out.gpu_blocks),
        _ => {}
    })?;
    out.waiting = waiting.get(TRTLLM_WAITING)?;
    out.running = running.get(TRTLLM_RUNNING)?;
    out.kv_usage = kv.get(TRTLLM_KV)?;
    Ok(out)
}

// === Triton TensorRT-LLM ===

const TRITON_REQUESTS: &str = "nv_trt_llm_request_metrics";
const TRITON_KV_BLOCKS: &str = "nv_trt_llm_kv_cache_block_metrics";
/// Every family `extract_triton` reads.
const TRITON_FAMILIES: &[&str] = &[TRITON_REQUESTS, TRITON_KV_BLOCKS];

fn extract_triton(text: &[u8], parse: Parse) -> Result<PodMetrics, ExtractError> {
    let (mut waiting, mut running, mut kv) = (Count::default(), Count::default(), Fraction::default());
    let mut out = PodMetrics::default();
    parse(text, TRITON_FAMILIES, &mut |s| match s.name {
        TRITON_REQUESTS => match s.label("request_type").as_deref() {
            Some("waiting") => waiting.add(s.value),
            Some("scheduled") => running.add(s.value),
            _ => {}
        },
        TRITON_KV_BLOCKS => match s.label("kv_cache_block_type").as_deref() {
            Some("fraction") => kv.add(s.value),
            Some("tokens_per") => out.block_size = positive_u32_value(s.value).or(out.block_size),
            Some("max") => out.gpu_blocks = positive_u32_value(s.value).or(out.gpu_blocks),
            _ => {}
        },
        _ => {}
    })?;
    // Triton's `model` label names the Triton model (e.g. "tensorrt_llm"), not the served
    // OpenAI model, so Triton pods list no models (= serve any).
    out.waiting = waiting.get("nv_trt_llm_request_metrics{request_type=\"waiting\"}")?;
    out.running = running.get("nv_trt_llm_request_metrics{request_type=\"scheduled\"}")?;
    out.kv_usage = kv.get("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\"}")?;
    Ok(out)
}

/// The scraped-page fuzz target (`fuzz/fuzz_targets/prom_engine.rs`) and the unit tests
/// that replay its seeds: not a public API.
#[doc(hidden)]
pub mod fuzz_logic {
    use std::net::SocketAddr;

    use picker_core::snapshot::{Endpoint, Snapshot, MAX_LIST, MAX_NAME_LEN};
    use picker_core::time::Instant as PInstant;

    use super::{extract, extract_with, Engine, ExtractError, PodMetrics, VLLM_FAMILIES};
    use super::{SGLANG_FAMILIES, TRITON_FAMILIES, TRTLLM_FAMILIES};
    use crate::prom::{self, ParseError, Sample};

    /// The families each engine's mapping reads (what `extract` asks the parser for).
    pub fn families(engine: Engine) -> &'static [&'static str] {
        match engine {
            Engine::Vllm => VLLM_FAMILIES,
            Engine::Sglang => SGLANG_FAMILIES,
            Engine::TrtllmServe => TRTLLM_FAMILIES,
            Engine::TritonTensorrtLlm => TRITON_FAMILIES,
        }
    }

    /// One visited sample, owned; the value as bits so that NaN equals NaN.
    type Owned = (String, Vec<(String, String)>, u64);

    fn owned(s: &Sample<'_, '_>) -> Owned {
        let labels = s
            .labels
            .iter()
            .map(|l| (l.name.to_string(), l.value().into_owned()))
            .collect();
        (s.name.to_string(), labels, s.value.to_bits())
    }

    /// The parser before the family skip: every sample line parsed and visited.
    fn parse_all<'a>(text: &'a [u8], _: &[&str], visit: &mut dyn FnMut(&Sample<'a, '_>)) -> Result<(), ParseError> {
        prom::parse(text, visit)
    }

    /// The load record a successful scrape puts in the snapshot (the fields
    /// `Collector::snapshot` copies from [`PodMetrics`]).
    pub fn endpoint(m: &PodMetrics) -> Endpoint {
        let addr: SocketAddr = ([10, 0, 0, 1], 8000).into();
        let mut ep = Endpoint::new(addr, PInstant::from_millis(1_700_000_000_000));
        ep.waiting = m.waiting;
        ep.running = m.running;
        ep.kv_usage = m.kv_usage;
        ep.block_size = m.block_size;
        ep.gpu_blocks = m.gpu_blocks;
        ep.lora = m.lora.clone();
        ep.models = m.models.clone();
        ep
    }

    #[track_caller]
    fn check_names(what: &str, names: &[String]) {
        assert!(names.len() <= MAX_LIST, "{what}: {} names", names.len());
        for (i, n) in names.iter().enumerate() {
            assert!(
                !n.is_empty() && n.len() <= MAX_NAME_LEN,
                "{what}: name of {} bytes",
                n.len()
            );
            assert!(!names[..i].contains(n), "{what}: {n:?} twice");
        }
    }

    /// `parse_float` accepts Go's ParseFloat spellings as Prometheus writes them and nothing
    /// Rust alone would take ("inf", "nan", "infinity", hex).
    fn check_float_token(t: &str) {
        let Some(v) = prom::parse_float(t) else { return };
        match t {
            "NaN" => assert!(v.is_nan()),
            "+Inf" | "Inf" => assert_eq!(v, f64::INFINITY),
            "-Inf" => assert_eq!(v, f64::NEG_INFINITY),
            _ => {
                assert!(
                    t.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)),
                    "parse_float accepted {t:?}"
                );
                assert_eq!(t.parse::<f64>().map(f64::to_bits), Ok(v.to_bits()), "{t:?}");
            }
        }
    }

    /// One scraped page (the body of a `/metrics` answer) through every engine's mapping to
    /// the load record, checking the contracts of [`prom`] and of this module; panics when
    /// one fails. Returns how many engines accepted the page.
    pub fn check_page(page: &[u8]) -> usize {
        let mut all = Vec::new();
        let full = prom::parse(page, |s| all.push(owned(s)));
        if let Ok(text) = std::str::from_utf8(page) {
            for t in text.split_ascii_whitespace().take(4096) {
                check_float_token(t);
            }
        }
        let mut accepted = 0;
        for engine in Engine::ALL {
            let wanted = families(engine);
            // prom: what the full parse accepts, the skipping parse accepts too and visits
            // exactly the samples of the wanted families, in order; what the skipping parse
            // rejects, the full parse rejects.
            let mut got = Vec::new();
            let skipping = prom::parse_families(page, wanted, |s| got.push(owned(s)));
            if full.is_ok() {
                assert!(
                    skipping.is_ok(),
                    "{engine}: full parse accepts, skipping fails: {skipping:?}"
                );
                let want: Vec<&Owned> = all.iter().filter(|s| wanted.contains(&s.0.as_str())).collect();
                assert!(
                    want.iter().copied().eq(got.iter()),
                    "{engine}: skipping visits other samples"
                );
            }
            if skipping.is_err() {
                assert!(full.is_err(), "{engine}: skipping fails, full parse accepts");
            }
            // engine: skipping unread families never changes the result where the full
            // parse gets that far.
            let result = extract(engine, page);
            let reference = extract_with(engine, page, parse_all);
            if !matches!(reference, Err(ExtractError::Parse(_))) {
                assert_eq!(result, reference, "{engine}: skipping changed the result");
            }
            let Ok(m) = result else { continue };
            accepted += 1;
            // The load record: kv_usage a fraction, optional fields left out when absent or 0,
            // name lists the snapshot codec can carry, no model list when LoRA is enabled.
            assert!(
                m.kv_usage.is_finite() && (0.0..=1.0).contains(&m.kv_usage),
                "{engine}: kv {}",
                m.kv_usage
            );
            assert_ne!(m.block_size, Some(0), "{engine}");
            assert_ne!(m.gpu_blocks, Some(0), "{engine}");
            check_names("models", &m.models);
            if let Some(l) = &m.lora {
                assert!(
                    l.max > 0 && m.models.is_empty(),
                    "{engine}: {l:?} with models {:?}",
                    m.models
                );
                check_names("running adapters", &l.running);
                check_names("waiting adapters", &l.waiting);
                for n in l.running.iter().chain(&l.waiting) {
                    assert!(!n.contains(',') && n.trim() == n, "{engine}: adapter {n:?}");
                }
            }
            if engine == Engine::TritonTensorrtLlm {
                assert!(m.models.is_empty(), "Triton's model label is not a served model");
            }
            // …which the snapshot codec encodes and the filter decodes back unchanged.
            let snap = Snapshot {
                sequence: 1,
                generated_at: PInstant::from_millis(1_700_000_000_001),
                endpoints: vec![endpoint(&m)],
            };
            let bytes = snap
                .encode()
                .unwrap_or_else(|e| panic!("{engine}: {m:?} does not encode: {e}"));
            let back = Snapshot::decode(&bytes).unwrap_or_else(|e| panic!("{engine}: {m:?} does not decode: {e}"));
            assert_eq!(back, snap, "{engine}");
        }
        accepted
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The captured fixtures, plus the inline vLLM V1 shapes (LoRA series, ranks) and trtllm-serve.
    const DOCS: [&[u8]; 5] = [
        include_bytes!("../tests/fixtures/vllm-v0-aibrix-runtime-doc.txt"),
        include_bytes!("../tests/fixtures/sglang-production-metrics-doc.txt"),
        include_bytes!("../tests/fixtures/triton-tensorrt-llm-readme.txt"),
        b"# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 2.0\n\
vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 3.0\n\
vllm:e2e_request_latency_seconds_bucket{engine=\"0\",le=\"0.3\",model_name=\"m\"} 7.0\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 4.0\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n\
vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"a,b\",waiting_lora_adapters=\"\"} 1.7e9\n\
vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"c\",waiting_lora_adapters=\"d\"} 1.8e9\n\
vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"19208\"} 1.0\n",
        b"trtllm_num_requests_waiting{model_name=\"m\"} 1\ntrtllm_num_requests_running{model_name=\"m\"} 2\n\
trtllm_kv_cache_utilization 0.5\ntrtllm_kv_cache_tokens_per_block 32\ntrtllm_kv_cache_max_blocks 1000\n\
trtllm_request_latency_seconds_count 12\n",
    ];

    /// The parser as it was before the family skip: every sample line parsed and visited.
    fn parse_all<'a>(text: &'a [u8], _: &[&str], visit: &mut dyn FnMut(&Sample<'a, '_>)) -> Result<(), ParseError> {
        prom::parse(text, visit)
    }

    #[test]
    fn skipping_unread_families_changes_no_result() {
        for doc in DOCS {
            for e in Engine::ALL {
                assert_eq!(extract(e, doc), extract_with(e, doc, parse_all), "{e}");
            }
        }
        // The documents exercise every family the mappings read (a family missing from a
        // `*_FAMILIES` list would be skipped, and these results would differ).
        let vllm = extract(Engine::Vllm, DOCS[3]).unwrap();
        assert_eq!((vllm.waiting, vllm.running, vllm.kv_usage), (5, 4, 0.25));
        assert_eq!((vllm.block_size, vllm.gpu_blocks), (Some(16), Some(19208)));
        let lora = vllm.lora.unwrap();
        assert_eq!(
            (lora.running, lora.waiting, lora.max),
            (vec!["c".to_string()], vec!["d".to_string()], 2)
        );
        let trt = extract(Engine::TrtllmServe, DOCS[4]).unwrap();
        assert_eq!(
            (trt.waiting, trt.running, trt.block_size, trt.gpu_blocks),
            (1, 2, Some(32), Some(1000))
        );
    }

    #[test]
    fn a_skipped_family_never_changes_the_result_and_a_read_one_still_parses() {
        let doc = DOCS[3];
        let want = extract(Engine::Vllm, doc).unwrap();
        // Any text after the name of a family the mapping does not read is ignored…
        for junk in ["{le=\"0.3\"} 1", "{oops", " not a number", "{a=\"1\",a=\"1\"} x y z"] {
            let mut more = doc.to_vec();
            more.extend_from_slice(format!("vllm:time_to_first_token_seconds_bucket{junk}\n").as_bytes());
            assert_eq!(extract(Engine::Vllm, &more), Ok(want.clone()), "{junk}");
        }
        // …while the same junk in a family it reads still fails the scrape.
        for read in VLLM_FAMILIES {
            let mut more = doc.to_vec();
            more.extend_from_slice(format!("{read}{{oops\n").as_bytes());
            assert!(
                matches!(extract(Engine::Vllm, &more), Err(ExtractError::Parse(_))),
                "{read}"
            );
        }
    }

    /// `fuzz/corpus/exposition/<name>`.
    fn seed(name: &str) -> Vec<u8> {
        let path = format!("{}/../fuzz/corpus/exposition/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_exposition_fuzz_seeds_hold_its_contracts_and_reach_every_mapping() {
        let dir = format!("{}/../fuzz/corpus/exposition", env!("CARGO_MANIFEST_DIR"));
        let mut seeds = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            fuzz_logic::check_page(&std::fs::read(&path).unwrap());
            seeds += 1;
        }
        assert!(seeds >= 8, "{seeds} seeds in {dir}");
        // Every engine's mapping accepts at least one seed, so the fuzzer starts past the parser.
        for (name, engine) in [
            ("vllm-v0-aibrix-runtime-doc.txt", Engine::Vllm),
            ("vllm-v1-ranks-lora-inline.txt", Engine::Vllm),
            ("sglang-production-metrics-doc.txt", Engine::Sglang),
            ("trtllm-serve-inline.txt", Engine::TrtllmServe),
            ("triton-tensorrt-llm-readme.txt", Engine::TritonTensorrtLlm),
        ] {
            assert!(extract(engine, &seed(name)).is_ok(), "{name}");
        }
        // The vLLM V1 and Triton documentation excerpts lack the gauges a scrape needs.
        assert_eq!(
            extract(Engine::Vllm, &seed("vllm-v1-design-doc.txt")),
            Err(ExtractError::Missing(VLLM_WAITING))
        );
        assert!(matches!(
            extract(Engine::TritonTensorrtLlm, &seed("triton-server-metrics-doc.txt")),
            Err(ExtractError::Missing(_))
        ));
        // The seeds copied from tests/fixtures are still the fixtures.
        for name in [
            "vllm-v0-aibrix-runtime-doc.txt",
            "sglang-production-metrics-doc.txt",
            "triton-tensorrt-llm-readme.txt",
        ] {
            let fixture = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
            assert_eq!(seed(name), std::fs::read(fixture).unwrap(), "{name}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

        /// Mutated documents: wherever the full parse succeeds, skipping gives the same result.
        #[test]
        fn skipping_matches_the_full_parse_on_mutated_documents(
            which in 0..DOCS.len(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let mut bytes = DOCS[which].to_vec();
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
                let full = extract_with(e, &bytes, parse_all);
                if !matches!(full, Err(ExtractError::Parse(_))) {
                    prop_assert_eq!(extract(e, &bytes), full);
                }
            }
        }
    }
}
