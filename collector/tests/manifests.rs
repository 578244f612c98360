//! The collector containers in `manifests/` must start with the flags they carry: each one's
//! `args` go through the real command-line parser and config validation.

use std::path::{Path, PathBuf};

use clap::Parser;
use collector::config::{Cli, Config};
use serde_json::Value;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("manifests dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            if !p.ends_with("validate") {
                yaml_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

/// Every container named `collector` in a pod template.
fn collector_args(doc: &Value) -> Vec<Vec<String>> {
    let containers = doc
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("spec"))
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    containers
        .into_iter()
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some("collector"))
        .map(|c| {
            c.get("args")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn every_collector_container_in_the_manifests_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    let token = std::env::temp_dir().join(format!("wasm-epp-manifest-token-{}", std::process::id()));
    std::fs::write(&token, "a-token-read-from-the-mounted-secret\n").expect("token file");
    let mut checked = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read manifest");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for doc in &docs {
            for args in collector_args(doc) {
                // The token file is a mounted Secret in the cluster; point it at a local file.
                let args: Vec<String> = args
                    .into_iter()
                    .map(|a| match a.strip_prefix("--token-file=") {
                        Some(_) => format!("--token-file={}", token.display()),
                        None => a,
                    })
                    .collect();
                let argv = std::iter::once("collector".to_string()).chain(args.iter().cloned());
                let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{}: {args:?}: {e}", f.display()));
                Config::from_cli(cli, None).unwrap_or_else(|e| panic!("{}: {args:?}: {e}", f.display()));
                checked += 1;
            }
        }
    }
    let _ = std::fs::remove_file(&token);
    assert!(
        checked >= 2,
        "expected the sidecar and the central collector, found {checked}"
    );
}
