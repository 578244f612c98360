//! Engine metric mapping: from one engine's `/metrics` text to the snapshot's load fields.
//!
//! The table (metric names per engine) is in the crate docs; its source is GIE's model-server
//! protocol (`docs/proposals/003-model-server-protocol/README.md`) and llm-d-router's built-in
//! engine configs, as summarised in `shared/reference/epp.md` §2.

use std::fmt;
use std::str::FromStr;

use picker_core::snapshot::{LoraState, MAX_LIST, MAX_NAME_LEN};

use crate::prom::{self, ParseError, Sample};

/// Pod label that names the engine (llm-d-router; default `vllm`).
pub const ENGINE_LABEL: &str = "llm-d.ai/engine-type";
/// Deprecated fallback label (epp.md §2).
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

/// Parses `text` as `engine`'s exposition and extracts the load fields.
pub fn extract(engine: Engine, text: &[u8]) -> Result<PodMetrics, ExtractError> {
    match engine {
        Engine::Vllm => extract_vllm(text),
        Engine::Sglang => extract_sglang(text),
        Engine::TrtllmServe => extract_trtllm_serve(text),
        Engine::TritonTensorrtLlm => extract_triton(text),
    }
}

fn extract_vllm(text: &[u8]) -> Result<PodMetrics, ExtractError> {
    let (mut waiting, mut running) = (Count::default(), Count::default());
    let (mut kv, mut kv_old) = (Fraction::default(), Fraction::default());
    let mut out = PodMetrics::default();
    // Newest `vllm:lora_requests_info` series: its value is the last-updated timestamp.
    let mut lora: Option<(f64, LoraState)> = None;
    prom::parse(text, |s| match s.name {
        "vllm:num_requests_waiting" => {
            waiting.add(s.value);
            add_model(&mut out.models, s);
        }
        "vllm:num_requests_running" => {
            running.add(s.value);
            add_model(&mut out.models, s);
        }
        "vllm:kv_cache_usage_perc" => kv.add(s.value),
        "vllm:gpu_cache_usage_perc" => kv_old.add(s.value),
        "vllm:cache_config_info" => {
            if let Some(v) = s.label("block_size").and_then(|v| positive_u32(&v)) {
                out.block_size = Some(v);
            }
            if let Some(v) = s.label("num_gpu_blocks").and_then(|v| positive_u32(&v)) {
                out.gpu_blocks = Some(v);
            }
        }
        "vllm:lora_requests_info" if s.value.is_finite() && lora.as_ref().is_none_or(|(t, _)| s.value > *t) => {
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
    out.waiting = waiting.get("vllm:num_requests_waiting")?;
    out.running = running.get("vllm:num_requests_running")?;
    out.kv_usage = if kv.seen {
        kv.get("vllm:kv_cache_usage_perc")?
    } else {
        kv_old
            .get("vllm:gpu_cache_usage_perc")
            .map_err(|_| ExtractError::Missing("vllm:kv_cache_usage_perc"))?
    };
    // A pod with LoRA enabled serves any adapter it can load, so it lists no models (= all).
    out.lora = lora.map(|(_, l)| l).filter(|l| l.max > 0);
    if out.lora.is_some() {
        out.models.clear();
    }
    Ok(out)
}

fn extract_sglang(text: &[u8]) -> Result<PodMetrics, ExtractError> {
    let (mut waiting, mut running, mut kv) = (Count::default(), Count::default(), Fraction::default());
    let mut out = PodMetrics::default();
    prom::parse(text, |s| match s.name {
        "sglang:num_queue_reqs" => {
            waiting.add(s.value);
            add_model(&mut out.models, s);
        }
        "sglang:num_running_reqs" => {
            running.add(s.value);
            add_model(&mut out.models, s);
        }
        "sglang:token_usage" => kv.add(s.value),
        "sglang:cache_config_info" => {
            if let Some(v) = s.label("page_size").and_then(|v| positive_u32(&v)) {
                out.block_size = Some(v);
            }
            if let Some(v) = s.label("num_pages").and_then(|v| positive_u32(&v)) {
                out.gpu_blocks = Some(v);
            }
        }
        _ => {}
    })?;
    out.waiting = waiting.get("sglang:num_queue_reqs")?;
    out.running = running.get("sglang:num_running_reqs")?;
    out.kv_usage = kv.get("sglang:token_usage")?;
    Ok(out)
}

fn extract_trtllm_serve(text: &[u8]) -> Result<PodMetrics, ExtractError> {
    let (mut waiting, mut running, mut kv) = (Count::default(), Count::default(), Fraction::default());
    let mut out = PodMetrics::default();
    prom::parse(text, |s| match s.name {
        "trtllm_num_requests_waiting" => {
            waiting.add(s.value);
            add_model(&mut out.models, s);
        }
        "trtllm_num_requests_running" => {
            running.add(s.value);
            add_model(&mut out.models, s);
        }
        "trtllm_kv_cache_utilization" => kv.add(s.value),
        "trtllm_kv_cache_tokens_per_block" => out.block_size = positive_u32_value(s.value).or(out.block_size),
        "trtllm_kv_cache_max_blocks" => out.gpu_blocks = positive_u32_value(s.value).or(out.gpu_blocks),
        _ => {}
    })?;
    out.waiting = waiting.get("trtllm_num_requests_waiting")?;
    out.running = running.get("trtllm_num_requests_running")?;
    out.kv_usage = kv.get("trtllm_kv_cache_utilization")?;
    Ok(out)
}

fn extract_triton(text: &[u8]) -> Result<PodMetrics, ExtractError> {
    let (mut waiting, mut running, mut kv) = (Count::default(), Count::default(), Fraction::default());
    let mut out = PodMetrics::default();
    prom::parse(text, |s| match s.name {
        "nv_trt_llm_request_metrics" => match s.label("request_type").as_deref() {
            Some("waiting") => waiting.add(s.value),
            Some("scheduled") => running.add(s.value),
            _ => {}
        },
        "nv_trt_llm_kv_cache_block_metrics" => match s.label("kv_cache_block_type").as_deref() {
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
