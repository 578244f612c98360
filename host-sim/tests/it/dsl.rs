//! The YAML DSL, the builder API and the `host-sim test` command.

use std::path::PathBuf;
use std::process::Command;

use host_sim::case::{run_file, Case, Env, Matcher, Phase, Runner, Suite};

use crate::common::*;

fn case_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/cases")
        .join(name)
}

#[track_caller]
fn assert_all_pass(file: &str, module: &str) {
    let path = case_file(file);
    let suite = Suite::from_file(&path).expect("suite parses");
    let mut runner = Runner::new(&plugin(module), &suite.env, path.parent().unwrap()).expect("host starts");
    let reports: Vec<_> = suite.test.iter().map(|c| runner.run(c)).collect();
    assert!(!reports.is_empty());
    for r in &reports {
        assert!(r.passed(), "{file} / {}: {:#?}", r.name, r.failures);
    }
}

#[test]
fn yaml_suites_for_example_modules_pass() {
    assert_all_pass("headers.yaml", "headers");
    assert_all_pass("body.yaml", "body");
    assert_all_pass("config.yaml", "config");
    assert_all_pass("auth.yaml", "auth");
    assert_all_pass("auth_denied.yaml", "auth");
}

#[test]
fn yaml_probe_suites_pass() {
    assert_all_pass("probe_strict.yaml", "probe");
    assert_all_pass("probe_gcp.yaml", "probe");
    assert_all_pass("probe_no_stop_iteration.yaml", "probe");
}

#[test]
fn cli_bench_prints_per_request_cost_and_memory() {
    let out = Command::new(env!("CARGO_BIN_EXE_host-sim"))
        .env("HOST_SIM_CACHE", modules_dir().join(".cache"))
        .args([
            "bench",
            "--iterations",
            "20",
            "--warmup",
            "2",
            "--streams",
            "200",
            "--wasm",
        ])
        .arg(module_path("headers"))
        .arg("--case")
        .arg(case_file("headers.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for name in ["HelloGetsLocalReply", "OtherPathPasses"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains(": 20 requests: filter time in callbacks p50 "), "{line}");
        assert!(line.contains("; filter CPU p50 "), "{line}");
        assert!(line.contains("VM memory "), "{line}");
    }
    assert!(stdout.contains("proxy_on_request_headers"), "{stdout}");
}

#[test]
fn strict_mode_fails_on_hostcall_errors_traps_and_wrong_expectations() {
    let reports = run_file(&case_file("probe_strict_fails.yaml"), Some(&module_path("probe")), None).unwrap();
    assert_eq!(reports.len(), 3);
    let f0 = reports[0].failures.join("\n");
    assert!(
        f0.contains("strict: proxy_replace_header_map_value returned BadArgument(2) in RequestBody"),
        "{f0}"
    );
    assert!(f0.contains("strict: VM trapped in proxy_on_request_body"), "{f0}");
    // After the trap the VM is failed (fail-closed): the next case gets 503 without running
    // the plugin, so its own trap does not happen here; it fails on nothing else.
    let f2 = reports[2].failures.join("\n");
    assert!(f2.contains("expected header x-nope: \"1\""), "{f2}");
    assert!(
        f2.contains("immediate status 503, want 404") || f2.contains("expected an immediate response 404"),
        "{f2}"
    );
}

#[test]
fn builder_api_runs_the_same_checks() {
    let env = Env {
        allow_on_headers_stop_iteration: true,
        ..Env::default()
    };
    let mut r = Runner::new(&plugin("probe"), &env, &PathBuf::from(".")).unwrap();
    let ok = Case::new("buffered pick")
        .request_headers(
            Phase::headers(&[
                (":method", "POST"),
                (":path", "/v1/completions"),
                ("x-probe", "pause_headers"),
            ])
            .end_of_stream(false)
            .flow("paused"),
        )
        .request_body(
            Phase::body(&["ab", "cd"])
                .has_header("x-body-size", "4")
                .body_is(Matcher::exact("abcd"))
                .log(Matcher::regex(r"request body size=4 eos=true")),
        );
    let rep = r.run(&ok);
    assert!(rep.passed(), "{:?}", rep.failures);
    let bad = Case::new("wrong").request_headers(
        Phase::headers(&[(":path", "/")])
            .has_header("x-missing", "1")
            .immediate(418),
    );
    let rep = r.run(&bad);
    assert_eq!(rep.failures.len(), 2, "{:?}", rep.failures);
}

#[test]
fn cli_test_command_reports_and_sets_exit_code() {
    let bin = env!("CARGO_BIN_EXE_host-sim");
    let out = Command::new(bin)
        .env("HOST_SIM_CACHE", modules_dir().join(".cache"))
        .args(["test", "--wasm"])
        .arg(module_path("headers"))
        .arg("--case")
        .arg(case_file("headers.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("PASS HelloGetsLocalReply"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "2 passed, 0 failed"), "{stdout}");

    let cfg = std::env::temp_dir().join(format!("host-sim-cfg-{}.txt", std::process::id()));
    std::fs::write(&cfg, "other-value").unwrap();
    let out = Command::new(bin)
        .env("HOST_SIM_CACHE", modules_dir().join(".cache"))
        .args(["test", "--wasm"])
        .arg(module_path("config"))
        .arg("--config")
        .arg(&cfg)
        .arg("--case")
        .arg(case_file("config.yaml"))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // --config overrides env.config: the expected header value no longer matches.
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL AddsConfiguredHeader"), "{stdout}");
    assert!(stdout.contains("other-value"), "{stdout}");
}

#[test]
fn strict_mode_flags_late_header_writes() {
    let env = Env {
        allow_on_headers_stop_iteration: true,
        ..Env::default()
    };
    let mut r = Runner::new(&plugin("probe"), &env, &PathBuf::from(".")).unwrap();
    let case = Case::new("late")
        .request_headers(Phase::headers(&[
            (":path", "/"),
            ("x-probe", "pause_headers;late_header"),
        ]))
        .request_body(Phase::body(&["{}"]))
        .response_headers(Phase::headers(&[(":status", "200")]));
    let rep = r.run(&case);
    assert_eq!(rep.failures.len(), 1, "{:?}", rep.failures);
    assert!(
        rep.failures[0].starts_with("strict: replace_header_map_value on HttpRequestHeaders after it was forwarded"),
        "{:?}",
        rep.failures
    );
    r.strict = false;
    assert!(r.run(&case).passed());
}
