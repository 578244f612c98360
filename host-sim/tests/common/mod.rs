//! Shared fixtures: where the test modules live, and a per-process cache of compiled plugins.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use host_sim::{Headers, Host, HostOptions, HostProfile, Plugin};

/// Directory of the built modules: `$HOST_SIM_MODULES`, else `<repo>/target/host-sim-modules`.
pub fn modules_dir() -> PathBuf {
    match std::env::var_os("HOST_SIM_MODULES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/host-sim-modules"),
    }
}

#[track_caller]
pub fn module_path(name: &str) -> PathBuf {
    let p = modules_dir().join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `bash host-sim/build-test-modules.sh` first",
        p.display()
    );
    p
}

/// Compile each module once per test process.
#[track_caller]
pub fn plugin(name: &str) -> Plugin {
    static CACHE: OnceLock<Mutex<HashMap<String, Plugin>>> = OnceLock::new();
    let path = module_path(name);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut g = cache.lock().unwrap_or_else(|e| e.into_inner());
    g.entry(name.to_string())
        .or_insert_with(|| Plugin::from_file_cached(&path, &modules_dir().join(".cache")).expect("module loads"))
        .clone()
}

pub fn envoy() -> HostOptions {
    HostOptions::new(HostProfile::Envoy)
}

pub fn gcp() -> HostOptions {
    HostOptions::new(HostProfile::Gcp)
}

#[track_caller]
pub fn host(name: &str, opts: HostOptions) -> Host {
    Host::new(&plugin(name), opts, 1).expect("host starts")
}

pub fn hdrs(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn get<'a>(h: &'a Headers, k: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

pub fn get_req() -> Headers {
    hdrs(&[
        (":method", "GET"),
        (":path", "/"),
        (":authority", "example.com"),
        (":scheme", "http"),
    ])
}

pub fn post(path: &str) -> Headers {
    hdrs(&[
        (":method", "POST"),
        (":path", path),
        (":authority", "example.com"),
        (":scheme", "http"),
    ])
}

pub fn with(mut h: Headers, k: &str, v: &str) -> Headers {
    h.push((k.to_string(), v.to_string()));
    h
}

pub fn log_messages(host: &Host) -> Vec<String> {
    host.logs().into_iter().map(|l| l.message).collect()
}
