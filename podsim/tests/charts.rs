//! The SVG charts (`podsim::chart`) are well-formed XML with the expected titles, axis
//! descriptions and series labels, written where the CLI says; and the CLI's progress, off a
//! terminal, is plain lines on stderr with the tables alone on stdout.

use std::process::Command;

use podsim::chart;
use podsim::ladder::StageReport;
use podsim::report::Summary;
use podsim::validate;

/// Every `<text>` of a well-formed SVG document (panics if it is not well-formed).
fn texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{svg}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.tag_name().namespace(), Some("http://www.w3.org/2000/svg"));
    root.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

fn summary(policy: &str, qps: f64, p90: f64, tok: f64) -> Summary {
    Summary {
        policy: policy.into(),
        qps,
        requests: 10,
        completed: 10,
        shed: 0,
        failed: 0,
        ttft_p50: p90 / 2.0,
        ttft_p90: p90,
        ttft_p99: p90,
        e2e_p50: 1.0,
        e2e_p90: 2.0,
        output_tok_s: tok,
        input_tok_s: tok * 7.0,
        hit_rate: 0.5,
        preemptions: 0,
    }
}

#[test]
fn the_sweep_chart_has_both_panels_and_every_policy() {
    let rows = vec![
        summary("round-robin", 3.0, 0.4, 2000.0),
        summary("a<b & c", 3.0, 0.2, 2100.0),
        summary("round-robin", 30.0, 40.0, 6000.0),
        // NaN and zero TTFTs are left off the log axis, not drawn at infinity.
        summary("a<b & c", 30.0, f64::NAN, 9000.0),
        summary("bound", 3.0, 0.0, 2500.0),
    ];
    let svg = chart::sweep("sweep <title>", &rows, "QPS").unwrap();
    let t = texts(&svg);
    for want in [
        "sweep <title>",
        "TTFT p90",
        "output throughput",
        "TTFT p90 (s, log scale)",
        "output tokens/s",
        "offered QPS",
        "round-robin",
        "a<b & c",
        "bound",
    ] {
        assert!(t.iter().any(|x| x == want), "no text {want:?} in {t:?}");
    }
    assert!(
        !svg.contains("NaN") && !svg.contains("inf"),
        "no non-finite coordinates"
    );
}

fn arm(name: &str, scale: f64) -> validate::ArmResult {
    let published = validate::published(name).unwrap();
    let sim: Vec<StageReport> = published
        .iter()
        .map(|p| StageReport {
            rate: p.rate,
            duration_s: 50.0,
            requests: 100,
            successes: 100,
            output_tok_s: p.output_tok_s * scale,
            achieved_rate: p.rate,
            ttft_p50: Some(0.1),
            ttft_p90: Some(0.2 * p.rate),
            ntpot_p50: Some(0.05),
            span_s: (0.0, 50.0),
        })
        .collect();
    validate::compare(name, &published, &sim).unwrap()
}

#[test]
fn validate_charts_show_each_arm_against_the_published_figures() {
    let dir = tempfile::tempdir().unwrap();
    let arms = [arm(validate::RR, 0.95), arm(validate::LLMD, 0.9)];
    let written = chart::write_validate(dir.path(), "validate title", &arms).unwrap();
    let names: Vec<_> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["validate-ttft-p90.svg", "validate-throughput.svg"]);
    for (path, caption, y) in [
        (&written[0], "TTFT p90 vs request rate", "TTFT p90 (s, log scale)"),
        (&written[1], "output throughput vs request rate", "output tokens/s"),
    ] {
        let t = texts(&std::fs::read_to_string(path).unwrap());
        for want in [
            "validate title",
            caption,
            y,
            "request rate (QPS)",
            "round-robin (podsim)",
            "round-robin (llm-d published)",
            "llm-d-optimized-baseline (podsim)",
            "llm-d-optimized-baseline (llm-d published)",
        ] {
            assert!(
                t.iter().any(|x| x == want),
                "{}: no text {want:?} in {t:?}",
                path.display()
            );
        }
    }
}

#[test]
fn bench_writes_its_chart_and_keeps_progress_off_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_podsim"))
        .args(["bench", "--workload", "shared-prefix", "--quick", "--policies"])
        .args(["round-robin,wasm-epp-default", "--threads", "2", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(stdout.starts_with("## podsim shared-prefix (quick"), "{stdout}");
    assert!(
        !stdout.contains("runs") && !stdout.contains("/4 "),
        "progress stays on stderr"
    );
    // stderr is a pipe here: the bar is hidden, one plain line per run, no escape codes.
    assert!(!stderr.contains('\u{1b}') && !stderr.contains('\r'), "{stderr:?}");
    for k in 1..=4 {
        assert!(stderr.contains(&format!("\n{k}/4 ")), "run {k}: {stderr}");
    }
    let t = texts(&std::fs::read_to_string(dir.path().join("shared-prefix-quick.svg")).unwrap());
    assert!(t.iter().any(|x| x == "wasm-epp-default"), "{t:?}");
    assert!(dir.path().join("shared-prefix-quick.csv").exists());
}
