//! Host options: which host is modelled and how (profile, failure policy, limits, fixtures).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use crate::abi::{Headers, LogLevel};

/// Which real host is modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostProfile {
    /// Envoy (also Istio): proxy-wasm-cpp-host inside Envoy's HTTP wasm filter.
    #[default]
    Envoy,
    /// GCP Service Extensions plugins: the documented ABI subset only (docs/proxy-wasm.md#gcp-service-extensions).
    Gcp,
}

/// Envoy `PluginConfig.failure_policy` (data-plane-api `wasm.proto`; docs/proxy-wasm.md#failure-policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// `FAIL_CLOSED` (also `UNSPECIFIED`): every stream of a failed VM gets a 503.
    #[default]
    FailClosed,
    /// `FAIL_OPEN`: the filter is skipped once the VM has failed.
    FailOpen,
    /// `FAIL_RELOAD`: the failing stream gets a 503, the next stream gets a fresh VM.
    FailReload,
}

/// A canned answer for `dispatch_http_call` to one cluster.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallResponse {
    #[serde(default)]
    pub headers: Headers,
    /// Raw bytes (a pulled snapshot is binary); YAML gives it as a string.
    #[serde(default, deserialize_with = "string_bytes")]
    pub body: Vec<u8>,
    #[serde(default)]
    pub trailers: Headers,
    /// Simulate a failed call (reset): `on_http_call_response(token, 0, 0, 0)` (spec).
    #[serde(default)]
    pub fail: bool,
}

/// Plugin configuration given inline or as a file relative to `base` (the DSL `env` and the
/// gateway config both accept either).
pub fn inline_or_file(
    inline: Option<&String>,
    file: Option<&std::path::PathBuf>,
    base: &std::path::Path,
) -> Result<Vec<u8>, crate::Error> {
    match (inline, file) {
        (Some(c), _) => Ok(c.clone().into_bytes()),
        (None, Some(f)) => {
            let p = base.join(f);
            std::fs::read(&p).map_err(|e| crate::Error::Io {
                path: p.display().to_string(),
                source: e,
            })
        }
        (None, None) => Ok(Vec::new()),
    }
}

/// Properties given as text in YAML, as the byte values the host serves.
pub fn property_bytes(props: &BTreeMap<String, String>) -> BTreeMap<String, Vec<u8>> {
    props.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect()
}

fn string_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    <String as Deserialize>::deserialize(d).map(String::into_bytes)
}

/// The clock the host reads. Tests use a virtual clock that only moves when told to.
#[derive(Debug, Clone)]
pub enum Clock {
    Virtual(Arc<AtomicU64>),
    Real,
}

impl Clock {
    pub fn virtual_at_secs(secs: u64) -> Clock {
        Clock::Virtual(Arc::new(AtomicU64::new(secs.saturating_mul(1_000_000_000))))
    }

    /// Nanoseconds since the Unix epoch.
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Virtual(t) => t.load(Ordering::SeqCst),
            Clock::Real => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        }
    }

    /// Advance a virtual clock; a real clock ignores this.
    pub fn advance_ms(&self, ms: u64) {
        if let Clock::Virtual(t) = self {
            t.fetch_add(ms.saturating_mul(1_000_000), Ordering::SeqCst);
        }
    }
}

/// Everything that configures one plugin on one host.
#[derive(Debug, Clone)]
pub struct HostOptions {
    pub profile: HostProfile,
    /// Shared-data namespace (Envoy `vm_config.vm_id`; Istio sets none, docs/proxy-wasm.md#wasmplugin-rendering).
    pub vm_id: String,
    pub root_id: String,
    pub plugin_name: String,
    /// `PluginConfig.configuration`, delivered raw (a StringValue arrives unwrapped,
    /// docs/proxy-wasm.md#plugin-configuration).
    pub plugin_config: Vec<u8>,
    /// `vm_config.configuration`, readable in `on_vm_start`.
    pub vm_config: Vec<u8>,
    /// Envoy `allow_on_headers_stop_iteration` (docs/proxy-wasm.md#the-allow_on_headers_stop_iteration-field).
    /// Default false, as in Envoy.
    pub allow_on_headers_stop_iteration: bool,
    pub failure_policy: FailurePolicy,
    /// Per-stream body buffer limit: Envoy's default `per_connection_buffer_limit_bytes` is
    /// 1 MiB (docs/proxy-wasm.md#body-buffering-and-limits).
    pub buffer_limit: usize,
    /// Linear memory cap per VM: cpp-host allows 1 GiB (docs/proxy-wasm.md#memory-limits), GCP 16 MiB
    /// (docs/proxy-wasm.md#limits).
    pub memory_limit: usize,
    /// GCP: 1 ms of CPU per invocation (docs/proxy-wasm.md#limits). Invocations over it are reported.
    pub cpu_budget_ns: Option<u64>,
    /// The level `proxy_get_log_level` reports.
    pub log_level: LogLevel,
    /// Properties by dotted path (`source.address`, `metadata.filter_metadata.x`).
    pub properties: BTreeMap<String, Vec<u8>>,
    /// Clusters known to `dispatch_http_call`; `Some` answers automatically.
    pub clusters: BTreeMap<String, Option<CallResponse>>,
    pub clock: Clock,
    /// Seed of WASI `random_get` (deterministic in tests).
    pub random_seed: u64,
    /// Print guest logs to stderr as they happen.
    pub echo_logs: bool,
}

impl HostOptions {
    pub fn new(profile: HostProfile) -> HostOptions {
        HostOptions {
            profile,
            vm_id: String::new(),
            root_id: String::new(),
            plugin_name: "plugin".into(),
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            allow_on_headers_stop_iteration: false,
            failure_policy: FailurePolicy::FailClosed,
            buffer_limit: 1 << 20,
            memory_limit: match profile {
                HostProfile::Envoy => 1 << 30,
                HostProfile::Gcp => 16 << 20,
            },
            cpu_budget_ns: match profile {
                HostProfile::Envoy => None,
                HostProfile::Gcp => Some(1_000_000),
            },
            log_level: LogLevel::Trace,
            properties: BTreeMap::new(),
            clusters: BTreeMap::new(),
            clock: Clock::virtual_at_secs(1_700_000_000),
            random_seed: 0x5eed,
            echo_logs: false,
        }
    }
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions::new(HostProfile::Envoy)
    }
}
