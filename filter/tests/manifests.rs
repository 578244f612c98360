//! Every plugin configuration shipped in `manifests/` must be accepted by the module's own
//! config validation: Istio `WasmPlugin.spec.pluginConfig` objects, the JSON strings in Envoy and
//! EnvoyFilter `configuration` (`google.protobuf.StringValue`), Envoy Gateway
//! `EnvoyExtensionPolicy.spec.wasm[].config`, and GCP's `plugin-config.json`.

use std::path::{Path, PathBuf};

use filter::config::FilterConfig;
use serde_json::Value;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("manifests dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            if !p.ends_with("validate") {
                files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "json") {
            out.push(p);
        }
    }
}

/// Plugin configurations found anywhere inside a YAML value, as JSON bytes.
fn configs(v: &Value, out: &mut Vec<Vec<u8>>) {
    match v {
        Value::Object(m) => {
            if let Some(pc) = m.get("pluginConfig") {
                out.push(serde_json::to_vec(pc).expect("YAML to JSON"));
            }
            // Envoy Gateway's Wasm extension: `{name, rootID, code, config}`.
            if let (Some(pc), true) = (m.get("config"), m.contains_key("code")) {
                out.push(serde_json::to_vec(pc).expect("YAML to JSON"));
            }
            let string_value =
                m.get("@type").and_then(Value::as_str) == Some("type.googleapis.com/google.protobuf.StringValue");
            if let (true, Some(s)) = (string_value, m.get("value").and_then(Value::as_str)) {
                // Envoy's wasm `configuration`; the VM configuration is not JSON and is skipped.
                if s.trim_start().starts_with('{') {
                    out.push(s.as_bytes().to_vec());
                }
            }
            m.values().for_each(|x| configs(x, out));
        }
        Value::Array(s) => s.iter().for_each(|x| configs(x, out)),
        _ => {}
    }
}

#[test]
fn every_plugin_config_in_the_manifests_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut paths = Vec::new();
    files(&root, &mut paths);
    let mut checked = 0;
    for p in &paths {
        let text = std::fs::read_to_string(p).expect("read manifest");
        let mut found = Vec::new();
        if p.extension().is_some_and(|x| x == "json") {
            // Other JSON in manifests/ (the Grafana dashboard) is not a plugin configuration.
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("plugin-config"))
            {
                found.push(text.into_bytes());
            }
        } else {
            // A manifest that does not parse is a defect of its own, not something to skip.
            let docs: Vec<Value> =
                serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            docs.iter().for_each(|v| configs(v, &mut found));
        }
        for c in found {
            if let Err(e) = FilterConfig::from_json(&c) {
                panic!("{}: {e}\n{}", p.display(), String::from_utf8_lossy(&c));
            }
            checked += 1;
        }
    }
    // Envoy bootstrap, the WasmPlugins, the body-mode EnvoyFilter, the Envoy Gateway policies
    // and GCP at least.
    assert!(checked >= 7, "found only {checked} plugin configs");
}
