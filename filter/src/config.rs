//! Plugin configuration: the JSON the proxy hands to `on_configure` (Envoy `PluginConfig.configuration`,
//! Istio `WasmPlugin.spec.pluginConfig`, GCP `--plugin-config`), validated into [`FilterConfig`].
//!
//! ```json
//! {
//!   "hostProfile": "envoy",
//!   "mode": "body",
//!   "picker": {"profile": "wasm-epp-default"},
//!   "inferencePaths": ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"],
//!   "maxBodyBytes": 4194304,
//!   "destinationHeader": "x-gateway-destination-endpoint",
//!   "modelHeader": "x-gateway-model-name",
//!   "snapshot": {"path": "/.well-known/wasm-epp/snapshot", "token": "s3cret-token-of-16+",
//!                "allowedSources": ["127.0.0.1", "::1", "10.0.0.0/8"], "maxBytes": 1048576},
//!   "endpoints": ["10.0.0.1:8000", "10.0.0.2:8000"],
//!   "models": {"allow": ["meta-llama/Llama-3.1-8B-Instruct"], "priorities": {"batch-model": -1},
//!              "rewrites": [{"model": "llama", "targets": [{"model": "meta-llama/Llama-3.1-8B-Instruct", "weight": 90},
//!                                                           {"model": "llama-canary", "weight": 10}]}]},
//!   "objectives": {"batch": -1, "interactive": 2},
//!   "headersOnly": {"modelHeader": "x-model", "affinityHeader": "x-session-id"},
//!   "testMode": false,
//!   "failureMode": "FailClose",
//!   "prefixSync": {"enabled": true, "ringSlots": 256, "maxCatchUp": 64},
//!   "inflightTtlMs": 10000,
//!   "relay": {"cluster": "wasm-epp-collector", "path": "/relay", "intervalMs": 50}
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use picker_core::sync::SyncParams;

use crate::intake::SourceNet;
use picker_core::policy::Rewrite;
use picker_core::{Api, Config as PickerConfig, ConfigError, ModelPolicy};
use serde::Deserialize;

/// Which proxy the module runs in; decides which hostcalls it may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostProfile {
    /// Envoy and Istio: shared data, metrics, properties, foreign functions.
    Envoy,
    /// GCP Service Extensions: none of those (the SDK would panic on their Unimplemented status).
    Gcp,
}

/// How the model and prompt are learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InputMode {
    /// Pause at headers, buffer the body, scan it. Needs Envoy ≥ 1.35 with
    /// `allow_on_headers_stop_iteration: true` (docs/proxy-wasm.md#the-allow_on_headers_stop_iteration-field); without it the request hangs.
    Body,
    /// Pick from headers only: the model from `headersOnly.modelHeader`, affinity from
    /// `headersOnly.affinityHeader`. For proxies where pausing at headers is not allowed.
    HeadersOnly,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterConfigDto {
    pub host_profile: Option<HostProfile>,
    pub mode: Option<InputMode>,
    /// The picker-core configuration (see picker-core's `ConfigDto`).
    pub picker: Option<serde_json::Value>,
    pub inference_paths: Option<Vec<String>>,
    pub max_body_bytes: Option<usize>,
    pub destination_header: Option<String>,
    pub model_header: Option<String>,
    pub snapshot: Option<SnapshotDto>,
    /// Static endpoints used until the first snapshot arrives (and on GCP, always).
    pub endpoints: Option<Vec<String>>,
    pub models: Option<ModelsDto>,
    pub objectives: Option<BTreeMap<String, i32>>,
    pub headers_only: Option<HeadersOnlyDto>,
    /// Honour the GIE conformance steering header `test-epp-endpoint-selection` and report
    /// `x-conformance-test-served-endpoint`. Never enable in production.
    pub test_mode: Option<bool>,
    /// Also set Envoy filter state `envoy.network.transport_socket.original_dst_address` to the
    /// picked `ip:port` (foreign function `set_envoy_filter_state`), for an ORIGINAL_DST cluster
    /// that must not trust a header. Envoy only.
    pub original_dst_filter_state: Option<bool>,
    /// Define and update Envoy custom metrics (Envoy only; default true).
    pub metrics: Option<bool>,
    /// What to do while the module knows no endpoint at all (no snapshot yet and no static
    /// `endpoints`): `FailClose` (default) answers 503; `FailOpen` forwards without a destination
    /// header, so the cluster's own load balancer picks. The values and the default are GIE's
    /// `InferencePool.spec.endpointPickerRef.failureMode` (docs/epp.md#failuremode).
    pub failure_mode: Option<FailureMode>,
    /// Replicate the prefix index between worker VMs through shared data, so a prefix routed
    /// by one worker is recognised by the others (picker-core `sync`). Envoy only; on by
    /// default there.
    pub prefix_sync: Option<PrefixSyncDto>,
    /// How long the in-flight counts of a worker VM outlive its last heartbeat (ms). A VM that
    /// dies mid-stream (trap, reload) never releases its requests; its counts leave the shared
    /// table this long after its last write. Live VMs refresh theirs every quarter of it.
    pub inflight_ttl_ms: Option<u64>,
    /// Share prefix insertions and in-flight counts with the other gateway replicas through the
    /// collector (docs/replicas.md). Envoy only; off unless given.
    pub relay: Option<RelayDto>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayDto {
    /// Envoy cluster of the collector's `/relay` endpoint (e.g. a STATIC cluster at
    /// 127.0.0.1:9090 beside a sidecar collector, or the central collector's Service).
    pub cluster: String,
    /// Path on the collector (default `/relay`).
    pub path: Option<String>,
    /// `:authority` of the call (default the cluster name).
    pub authority: Option<String>,
    /// How often each worker VM sends what it learned (ms, default 50: the collector's
    /// interval).
    pub interval_ms: Option<u64>,
    /// Bearer token of both relay legs (module → collector, collector → gateway); default
    /// `snapshot.token`.
    pub token: Option<String>,
    /// Largest relay body taken at `<snapshot.path>/relay` and largest batch sent (default
    /// 1 MiB).
    pub max_bytes: Option<usize>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixSyncDto {
    /// Default true on the Envoy profile (one worker gains nothing; turn it off there).
    pub enabled: Option<bool>,
    /// Records kept in the shared ring (default 256; each at most 34 + 8 × maxPrefixBlocksToMatch
    /// bytes, 2 KiB at the default 256 blocks).
    pub ring_slots: Option<u32>,
    /// Most records one request reads from other workers (default 64; a worker reads about
    /// workers − 1 per request, more after an idle spell).
    pub max_catch_up: Option<u32>,
}

/// GIE's failure mode, applied when the module has no load view at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum FailureMode {
    #[default]
    FailClose,
    FailOpen,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotDto {
    pub path: Option<String>,
    pub token: String,
    /// Addresses or CIDR ranges that may push (default loopback `127.0.0.1`, `::1`); a central
    /// collector needs its pod range, e.g. `10.0.0.0/8`.
    pub allowed_sources: Option<Vec<String>>,
    pub max_bytes: Option<usize>,
    /// Pull mode: fetch the snapshot from the collector on a root-context tick instead of (or as
    /// well as) accepting pushes.
    pub pull: Option<PullDto>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PullDto {
    /// Envoy cluster of the collector (e.g. a STATIC cluster at 127.0.0.1:9090).
    pub cluster: String,
    /// Path on the collector (default `/snapshot`, the collector's binary endpoint).
    pub path: Option<String>,
    /// `:authority` of the call (default the cluster name).
    pub authority: Option<String>,
    /// Tick period in ms (default 50, GIE's scrape interval).
    pub interval_ms: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelsDto {
    pub allow: Option<Vec<String>>,
    pub priorities: Option<BTreeMap<String, i32>>,
    pub rewrites: Option<Vec<RewriteDto>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RewriteDto {
    pub model: String,
    pub targets: Vec<TargetDto>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetDto {
    pub model: String,
    pub weight: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeadersOnlyDto {
    pub model_header: Option<String>,
    pub affinity_header: Option<String>,
}

/// Snapshot intake settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotIntake {
    pub path: String,
    pub token: String,
    pub allowed_sources: Vec<SourceNet>,
    pub max_bytes: usize,
    pub pull: Option<Pull>,
}

/// Pull-mode settings (see [`PullDto`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Pull {
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub interval_ms: u64,
}

/// Relay settings (see [`RelayDto`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Relay {
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub interval_ms: u64,
    pub token: String,
    /// Where the collector pushes other replicas' batches: `<snapshot.path>/relay`.
    pub intake_path: String,
    pub max_bytes: usize,
}

/// The validated plugin configuration.
#[derive(Clone, Debug)]
pub struct FilterConfig {
    pub host: HostProfile,
    pub mode: InputMode,
    pub picker: PickerConfig,
    pub inference_paths: Vec<(String, Api)>,
    pub max_body_bytes: usize,
    pub destination_header: String,
    pub model_header: String,
    pub snapshot: Option<SnapshotIntake>,
    pub endpoints: Vec<SocketAddr>,
    /// The pool's request policy: served models, rewrites, priorities (picker-core).
    pub policy: ModelPolicy,
    pub headers_only_model: String,
    pub headers_only_affinity: Option<String>,
    pub test_mode: bool,
    pub original_dst_filter_state: bool,
    pub metrics: bool,
    pub failure_mode: FailureMode,
    /// Prefix-index replication between workers; `None` when off (always on GCP).
    pub prefix_sync: Option<SyncParams>,
    /// See [`FilterConfigDto::inflight_ttl_ms`].
    pub inflight_ttl_ms: u64,
    /// The relay between gateway replicas; `None` when off.
    pub relay: Option<Relay>,
}

#[derive(Debug, PartialEq)]
pub enum FilterConfigError {
    Json(String),
    Picker(ConfigError),
    Invalid { field: &'static str, reason: String },
}

impl fmt::Display for FilterConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterConfigError::Json(m) => write!(f, "invalid plugin config: {m}"),
            FilterConfigError::Picker(e) => write!(f, "picker: {e}"),
            FilterConfigError::Invalid { field, reason } => {
                write!(f, "invalid plugin config: {field}: {reason}")
            }
        }
    }
}

impl std::error::Error for FilterConfigError {}

fn invalid(field: &'static str, reason: impl Into<String>) -> FilterConfigError {
    FilterConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// GIE's default body bound is 4 MiB (Higress's picker uses the same; docs/proxy-wasm.md#body-buffering-and-limits).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_SNAPSHOT_PATH: &str = "/.well-known/wasm-epp/snapshot";
pub const DEFAULT_SNAPSHOT_MAX_BYTES: usize = 1024 * 1024;
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// BBR's model header (docs/epp.md#model-name-header).
pub const MODEL_HEADER: &str = "x-gateway-model-name";
/// Default [`FilterConfig::inflight_ttl_ms`]: a phantom request from a dead VM lasts at most
/// 10 s, and a live VM writes a heartbeat every 2.5 s (a few shared-data writes a second over
/// all workers).
pub const DEFAULT_INFLIGHT_TTL_MS: u64 = 10_000;
/// Shortest accepted bearer token: 128 bits of base64/hex-ish text.
pub const MIN_TOKEN_LEN: usize = 16;
/// Default [`Relay::max_bytes`]: 7 batches of 64 records of 256 hashes with 1,024 in-flight
/// entries each.
pub const DEFAULT_RELAY_MAX_BYTES: usize = 1024 * 1024;

fn header_name(field: &'static str, v: Option<String>, default: &str) -> Result<String, FilterConfigError> {
    let v = v.unwrap_or_else(|| default.to_string()).to_ascii_lowercase();
    let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(v)
    } else {
        Err(invalid(field, format!("{v:?} is not a valid header name")))
    }
}

impl FilterConfig {
    pub fn from_json(bytes: &[u8]) -> Result<FilterConfig, FilterConfigError> {
        let dto: FilterConfigDto = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            serde_json::from_slice(b"{}")
        } else {
            serde_json::from_slice(bytes)
        }
        .map_err(|e| FilterConfigError::Json(e.to_string()))?;
        FilterConfig::try_from(dto)
    }
}

impl TryFrom<FilterConfigDto> for FilterConfig {
    type Error = FilterConfigError;

    fn try_from(d: FilterConfigDto) -> Result<Self, FilterConfigError> {
        let picker = match d.picker {
            Some(v) => {
                let bytes = serde_json::to_vec(&v).map_err(|e| FilterConfigError::Json(e.to_string()))?;
                PickerConfig::from_json(&bytes).map_err(FilterConfigError::Picker)?
            }
            None => PickerConfig::default(),
        };
        let max_body_bytes = d.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1024..=64 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(invalid(
                "maxBodyBytes",
                format!("{max_body_bytes} is not in 1 KiB..=64 MiB"),
            ));
        }
        let host = d.host_profile.unwrap_or(HostProfile::Envoy);
        let snapshot = match d.snapshot {
            Some(_) if host == HostProfile::Gcp => {
                return Err(invalid(
                    "snapshot",
                    "GCP Service Extensions has no shared data: snapshot intake is Envoy/Istio only",
                ))
            }
            Some(s) => Some(snapshot_intake(s)?),
            None => None,
        };
        let ho = d.headers_only;
        let headers_only_affinity = match ho.as_ref().and_then(|h| h.affinity_header.clone()) {
            Some(h) => Some(header_name("headersOnly.affinityHeader", Some(h), "")?),
            None => None,
        };
        let inflight_ttl_ms = d.inflight_ttl_ms.unwrap_or(DEFAULT_INFLIGHT_TTL_MS);
        if !(1_000..=600_000).contains(&inflight_ttl_ms) {
            return Err(invalid(
                "inflightTtlMs",
                format!("{inflight_ttl_ms} is not in 1000..=600000"),
            ));
        }
        let prefix_sync = prefix_sync(d.prefix_sync, host)?;
        let relay = match d.relay {
            Some(r) => Some(relay(r, host, snapshot.as_ref(), prefix_sync.is_some())?),
            None => None,
        };
        Ok(FilterConfig {
            inflight_ttl_ms,
            relay,
            prefix_sync,
            host,
            mode: d.mode.unwrap_or(InputMode::Body),
            picker,
            inference_paths: inference_paths(d.inference_paths)?,
            max_body_bytes,
            destination_header: header_name("destinationHeader", d.destination_header, DESTINATION_HEADER)?,
            model_header: header_name("modelHeader", d.model_header, MODEL_HEADER)?,
            snapshot,
            endpoints: static_endpoints(d.endpoints)?,
            policy: model_policy(d.models, d.objectives)?,
            headers_only_model: header_name("headersOnly.modelHeader", ho.and_then(|h| h.model_header), "x-model")?,
            headers_only_affinity,
            test_mode: d.test_mode.unwrap_or(false),
            original_dst_filter_state: d.original_dst_filter_state.unwrap_or(false) && host == HostProfile::Envoy,
            metrics: d.metrics.unwrap_or(true) && host == HostProfile::Envoy,
            failure_mode: d.failure_mode.unwrap_or_default(),
        })
    }
}

// === one function per section of the configuration ===

fn inference_paths(paths: Option<Vec<String>>) -> Result<Vec<(String, Api)>, FilterConfigError> {
    let paths = paths.unwrap_or_else(|| {
        [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/responses",
            "/v1/embeddings",
        ]
        .map(String::from)
        .to_vec()
    });
    paths
        .into_iter()
        .map(|p| {
            let api = Api::from_path(&p).ok_or_else(|| {
                invalid("inferencePaths", format!("{p:?} is not an OpenAI API path (/v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings)"))
            })?;
            Ok((p, api))
        })
        .collect()
}

fn snapshot_intake(s: SnapshotDto) -> Result<SnapshotIntake, FilterConfigError> {
    if s.token.len() < MIN_TOKEN_LEN {
        return Err(invalid(
            "snapshot.token",
            format!("must be at least {MIN_TOKEN_LEN} bytes"),
        ));
    }
    let path = s.path.unwrap_or_else(|| DEFAULT_SNAPSHOT_PATH.to_string());
    if !path.starts_with('/') {
        return Err(invalid("snapshot.path", "must start with '/'"));
    }
    let allowed_sources = s
        .allowed_sources
        .unwrap_or_else(|| vec!["127.0.0.1".into(), "::1".into()])
        .into_iter()
        .map(|src| {
            src.parse::<SourceNet>()
                .map_err(|e| invalid("snapshot.allowedSources", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_bytes = s.max_bytes.unwrap_or(DEFAULT_SNAPSHOT_MAX_BYTES);
    if !(64..=16 * 1024 * 1024).contains(&max_bytes) {
        return Err(invalid(
            "snapshot.maxBytes",
            format!("{max_bytes} is not in 64..=16 MiB"),
        ));
    }
    let pull = match s.pull {
        None => None,
        Some(p) => {
            if p.cluster.is_empty() {
                return Err(invalid("snapshot.pull.cluster", "must name an Envoy cluster"));
            }
            let interval_ms = p.interval_ms.unwrap_or(50);
            if !(10..=60_000).contains(&interval_ms) {
                return Err(invalid(
                    "snapshot.pull.intervalMs",
                    format!("{interval_ms} is not in 10..=60000"),
                ));
            }
            Some(Pull {
                authority: p.authority.unwrap_or_else(|| p.cluster.clone()),
                path: p.path.unwrap_or_else(|| "/snapshot".into()),
                cluster: p.cluster,
                interval_ms,
            })
        }
    };
    Ok(SnapshotIntake {
        path,
        token: s.token,
        allowed_sources,
        max_bytes,
        pull,
    })
}

fn relay(
    r: RelayDto,
    host: HostProfile,
    snapshot: Option<&SnapshotIntake>,
    prefix_sync: bool,
) -> Result<Relay, FilterConfigError> {
    if host == HostProfile::Gcp {
        return Err(invalid(
            "relay",
            "GCP Service Extensions has no shared data or callouts: the relay is Envoy/Istio only",
        ));
    }
    let Some(snapshot) = snapshot else {
        return Err(invalid(
            "relay",
            "needs snapshot intake (the relay path, token and allowed sources are the snapshot's)",
        ));
    };
    if !prefix_sync {
        return Err(invalid(
            "relay",
            "needs prefixSync: relayed records reach every worker through its ring",
        ));
    }
    if r.cluster.is_empty() {
        return Err(invalid("relay.cluster", "must name an Envoy cluster"));
    }
    let path = r.path.unwrap_or_else(|| "/relay".into());
    if !path.starts_with('/') {
        return Err(invalid("relay.path", "must start with '/'"));
    }
    let interval_ms = r.interval_ms.unwrap_or(50);
    if !(10..=60_000).contains(&interval_ms) {
        return Err(invalid(
            "relay.intervalMs",
            format!("{interval_ms} is not in 10..=60000"),
        ));
    }
    let token = match r.token {
        Some(t) if t.len() < MIN_TOKEN_LEN => {
            return Err(invalid(
                "relay.token",
                format!("must be at least {MIN_TOKEN_LEN} bytes"),
            ))
        }
        Some(t) => t,
        None => snapshot.token.clone(),
    };
    let max_bytes = r.max_bytes.unwrap_or(DEFAULT_RELAY_MAX_BYTES);
    if !(64 * 1024..=64 * 1024 * 1024).contains(&max_bytes) {
        return Err(invalid(
            "relay.maxBytes",
            format!("{max_bytes} is not in 64 KiB..=64 MiB"),
        ));
    }
    let intake_path = format!("{}/relay", snapshot.path.trim_end_matches('/'));
    Ok(Relay {
        authority: r.authority.unwrap_or_else(|| r.cluster.clone()),
        cluster: r.cluster,
        path,
        interval_ms,
        token,
        intake_path,
        max_bytes,
    })
}

fn static_endpoints(endpoints: Option<Vec<String>>) -> Result<Vec<SocketAddr>, FilterConfigError> {
    let endpoints = endpoints
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            e.parse::<SocketAddr>()
                .map_err(|_| invalid("endpoints", format!("{e:?} is not ip:port")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.len() > picker_core::snapshot::MAX_ENDPOINTS {
        return Err(invalid("endpoints", "too many endpoints"));
    }
    Ok(endpoints)
}

fn model_policy(
    models: Option<ModelsDto>,
    objectives: Option<BTreeMap<String, i32>>,
) -> Result<ModelPolicy, FilterConfigError> {
    let models = models.unwrap_or(ModelsDto {
        allow: None,
        priorities: None,
        rewrites: None,
    });
    let rewrites = models
        .rewrites
        .unwrap_or_default()
        .into_iter()
        .map(|r| Rewrite {
            model: r.model,
            targets: r.targets.into_iter().map(|t| (t.model, t.weight)).collect(),
        })
        .collect();
    ModelPolicy::try_new(
        models.allow.unwrap_or_default(),
        models.priorities.unwrap_or_default(),
        rewrites,
        objectives.unwrap_or_default(),
    )
    .map_err(|e| invalid(e.field, e.reason))
}

fn prefix_sync(ps: Option<PrefixSyncDto>, host: HostProfile) -> Result<Option<SyncParams>, FilterConfigError> {
    match ps {
        Some(ps) if host == HostProfile::Gcp && ps.enabled == Some(true) => Err(invalid(
            "prefixSync.enabled",
            "GCP Service Extensions has no shared data: prefix sync is Envoy/Istio only",
        )),
        _ if host == HostProfile::Gcp => Ok(None),
        Some(PrefixSyncDto {
            enabled: Some(false), ..
        }) => Ok(None),
        ps => {
            let ps = ps.unwrap_or(PrefixSyncDto {
                enabled: None,
                ring_slots: None,
                max_catch_up: None,
            });
            let defaults = SyncParams::default();
            let ring = ps.ring_slots.unwrap_or(defaults.ring);
            if !(1..=65_536).contains(&ring) {
                return Err(invalid("prefixSync.ringSlots", format!("{ring} is not in 1..=65536")));
            }
            let max_catch_up = ps.max_catch_up.unwrap_or(defaults.max_catch_up);
            if max_catch_up > 1024 {
                return Err(invalid(
                    "prefixSync.maxCatchUp",
                    format!("{max_catch_up} is not in 0..=1024"),
                ));
            }
            Ok(Some(SyncParams { ring, max_catch_up }))
        }
    }
}

impl FilterConfig {
    /// The API of an inference path (query string ignored), if configured.
    pub fn api_for(&self, path: &str) -> Option<Api> {
        let bare = path.split(['?', '#']).next().unwrap_or("");
        self.inference_paths.iter().find(|(p, _)| p == bare).map(|(_, a)| *a)
    }

    /// One line for the log at configure time: which mode runs, and what it needs from the host.
    pub fn describe(&self) -> String {
        let mode = match (self.host, self.mode) {
            (HostProfile::Gcp, _) => "gcp profile: no shared data, metrics, timers or callouts; model header + affinity header for URL-map and consistent-hash routing".to_string(),
            (HostProfile::Envoy, InputMode::Body) => "body mode: pauses at request headers and buffers the body; REQUIRES Envoy >= 1.35 with allow_on_headers_stop_iteration: true, otherwise requests hang".to_string(),
            (HostProfile::Envoy, InputMode::HeadersOnly) => format!(
                "headers-only mode: model from '{}'{}, no body buffering{}",
                self.headers_only_model,
                self.headers_only_affinity.as_ref().map(|a| format!(", affinity from '{a}'")).unwrap_or_default(),
                if self.snapshot.is_some() {
                    "; NOTE snapshot intake still pauses for the pushed body and needs allow_on_headers_stop_iteration: true"
                } else {
                    ""
                }
            ),
        };
        format!(
            "wasm-epp: {mode}; picker profile {}; snapshot intake {}; relay {}; {} static endpoints; test mode {}",
            self.picker.profile_kind().name(),
            self.snapshot.as_ref().map(|s| s.path.as_str()).unwrap_or("off"),
            self.relay
                .as_ref()
                .map(|r| format!(
                    "to cluster {} {} every {} ms, from other replicas at {}",
                    r.cluster, r.path, r.interval_ms, r.intake_path
                ))
                .unwrap_or_else(|| "off".into()),
            self.endpoints.len(),
            if self.test_mode {
                "ON (conformance steering header honoured)"
            } else {
                "off"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_envoy_body_mode_with_defaults() {
        let c = FilterConfig::from_json(b"").unwrap();
        assert_eq!(c.host, HostProfile::Envoy);
        assert_eq!(c.mode, InputMode::Body);
        assert_eq!(c.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(c.destination_header, "x-gateway-destination-endpoint");
        assert_eq!(c.model_header, "x-gateway-model-name");
        assert!(!c.test_mode);
        assert!(c.snapshot.is_none());
        assert_eq!(c.api_for("/v1/chat/completions?x=1"), Some(Api::ChatCompletions));
        assert_eq!(c.api_for("/v1/models"), None);
        assert!(c.describe().contains("allow_on_headers_stop_iteration"));
        assert_eq!(c.prefix_sync, Some(SyncParams::default()));
    }

    #[test]
    fn prefix_sync_switches() {
        let c = |j: &str| FilterConfig::from_json(j.as_bytes()).unwrap().prefix_sync;
        assert_eq!(c(r#"{"prefixSync":{"enabled":false}}"#), None);
        assert_eq!(c(r#"{"hostProfile":"gcp"}"#), None);
        assert_eq!(
            c(r#"{"prefixSync":{"ringSlots":64,"maxCatchUp":8}}"#),
            Some(SyncParams {
                ring: 64,
                max_catch_up: 8
            })
        );
    }

    #[test]
    fn relay_settings_and_their_requirements() {
        let t = r#""snapshot":{"token":"0123456789abcdef","path":"/in"}"#;
        let c = FilterConfig::from_json(format!(r#"{{{t},"relay":{{"cluster":"col"}}}}"#).as_bytes()).unwrap();
        let r = c.relay.unwrap();
        assert_eq!(
            r,
            Relay {
                cluster: "col".into(),
                path: "/relay".into(),
                authority: "col".into(),
                interval_ms: 50,
                token: "0123456789abcdef".into(),
                intake_path: "/in/relay".into(),
                max_bytes: DEFAULT_RELAY_MAX_BYTES,
            }
        );
        assert!(
            FilterConfig::from_json(b"{}").unwrap().relay.is_none(),
            "off by default"
        );
        let err = |j: String| match FilterConfig::from_json(j.as_bytes()) {
            Err(FilterConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(err(r#"{"relay":{"cluster":"col"}}"#.into()), "relay");
        assert_eq!(
            err(format!(
                r#"{{{t},"prefixSync":{{"enabled":false}},"relay":{{"cluster":"col"}}}}"#
            )),
            "relay"
        );
        assert_eq!(
            err(r#"{"hostProfile":"gcp","relay":{"cluster":"col"}}"#.into()),
            "relay"
        );
        assert_eq!(err(format!(r#"{{{t},"relay":{{"cluster":""}}}}"#)), "relay.cluster");
        assert_eq!(
            err(format!(r#"{{{t},"relay":{{"cluster":"c","path":"x"}}}}"#)),
            "relay.path"
        );
        assert_eq!(
            err(format!(r#"{{{t},"relay":{{"cluster":"c","intervalMs":5}}}}"#)),
            "relay.intervalMs"
        );
        assert_eq!(
            err(format!(r#"{{{t},"relay":{{"cluster":"c","token":"short"}}}}"#)),
            "relay.token"
        );
        assert_eq!(
            err(format!(r#"{{{t},"relay":{{"cluster":"c","maxBytes":1000}}}}"#)),
            "relay.maxBytes"
        );
        assert!(matches!(
            FilterConfig::from_json(format!(r#"{{{t},"relay":{{"cluster":"c","colour":1}}}}"#).as_bytes()),
            Err(FilterConfigError::Json(_))
        ));
    }

    #[test]
    fn full_config_parses() {
        let c = FilterConfig::from_json(
            br#"{"hostProfile":"envoy","mode":"headersOnly","picker":{"profile":"gie-default"},
                 "snapshot":{"token":"0123456789abcdef","allowedSources":["10.0.0.9"]},
                 "endpoints":["10.0.0.1:8000","[fd00::1]:8000"],
                 "models":{"allow":["a"],"priorities":{"a":-1},"rewrites":[{"model":"a","targets":[{"model":"b","weight":1}]}]},
                 "objectives":{"batch":-1},"headersOnly":{"modelHeader":"X-Model","affinityHeader":"x-session"},"testMode":true}"#,
        )
        .unwrap();
        assert_eq!(c.mode, InputMode::HeadersOnly);
        assert_eq!(c.picker.profile_kind(), picker_core::Profile::GieDefault);
        assert_eq!(c.snapshot.as_ref().unwrap().path, DEFAULT_SNAPSHOT_PATH);
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.headers_only_model, "x-model");
        assert!(c.policy.admits("a") && !c.policy.admits("b"));
        assert_eq!(c.policy.priority(Some("batch"), "a"), -1);
    }

    #[test]
    fn errors_name_the_field() {
        let err = |j: &str| FilterConfig::from_json(j.as_bytes()).unwrap_err();
        assert!(matches!(
            err(r#"{"maxBodyBytes":1}"#),
            FilterConfigError::Invalid {
                field: "maxBodyBytes",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"snapshot":{"token":"short"}}"#),
            FilterConfigError::Invalid {
                field: "snapshot.token",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"hostProfile":"gcp","snapshot":{"token":"0123456789abcdef"}}"#),
            FilterConfigError::Invalid { field: "snapshot", .. }
        ));
        assert!(matches!(
            err(r#"{"inflightTtlMs":999}"#),
            FilterConfigError::Invalid {
                field: "inflightTtlMs",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"models":{"rewrites":[{"model":"a","targets":[{"model":"b\r\nx: 1","weight":1}]}]}}"#),
            FilterConfigError::Invalid {
                field: "models.rewrites[].targets[].model",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"endpoints":["pod-a"]}"#),
            FilterConfigError::Invalid { field: "endpoints", .. }
        ));
        assert!(matches!(
            err(r#"{"inferencePaths":["/v1/models"]}"#),
            FilterConfigError::Invalid {
                field: "inferencePaths",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"picker":{"maxEndpoints":0}}"#),
            FilterConfigError::Picker(_)
        ));
        assert!(matches!(
            err(r#"{"destinationHeader":"bad header"}"#),
            FilterConfigError::Invalid {
                field: "destinationHeader",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"snapshot":{"token":"0123456789abcdef","allowedSources":["10.0.0.1/8"]}}"#),
            FilterConfigError::Invalid {
                field: "snapshot.allowedSources",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"prefixSync":{"ringSlots":0}}"#),
            FilterConfigError::Invalid {
                field: "prefixSync.ringSlots",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"hostProfile":"gcp","prefixSync":{"enabled":true}}"#),
            FilterConfigError::Invalid {
                field: "prefixSync.enabled",
                ..
            }
        ));
        match err(r#"{"tstMode":true}"#) {
            FilterConfigError::Json(m) => assert!(m.contains("tstMode"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
