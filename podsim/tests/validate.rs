//! The ladder and `validate` machinery end to end: a shortened drained ladder (stage gating,
//! per-stage figures, determinism), and the published round-robin arm on the full llm-d ladder
//! (≈ 1.5 s in an optimised build).

use podsim::calib::ServerParams;
use podsim::ladder::{self, Drain, Ladder, INTERVAL, LEAD};
use podsim::policy::PolicySpec;
use podsim::validate;
use podsim::workload::SharedPrefix;

fn small_shape() -> SharedPrefix {
    SharedPrefix {
        groups: 10,
        users_per_group: 3,
        system_tokens: 1000,
        question_tokens: 200,
        output_tokens: 50,
    }
}

#[test]
fn drained_stages_start_after_the_previous_stage_ends() {
    let ladder = Ladder::parse("2x5,8x5,1x3", Some("4x5")).unwrap();
    let params = ServerParams::default();
    let trace = ladder::shared_prefix_trace(&small_shape(), &ladder, Drain::Harness, params.block_tokens, 5);
    let cfg = ladder::sim_config(2, params, 5);
    let rr = PolicySpec::parse("round-robin").unwrap();
    let runs = ladder::run_policies(&cfg, &trace, &[rr.clone(), rr]);
    assert_eq!(runs[0], runs[1], "deterministic");
    let r = &runs[0];
    let st = trace.staging.as_ref().unwrap();
    let mut prev_end = 0;
    for span in &st.spans {
        let recs = &r.records[span.first..span.first + span.len];
        assert!(recs.iter().all(|x| x.finish.is_some()), "every request finishes");
        let first_send = recs.iter().map(|x| x.sent).min().unwrap();
        // The harness sees the end at its next 1 s poll, then waits the interval and the lead.
        // The stage's timer start: its first send minus that request's offset.
        let start = first_send - trace.arrivals[span.first].at;
        if prev_end == 0 {
            assert_eq!(start, LEAD);
        } else {
            // Seen at the next 1 s poll (at most 1 s late), then the interval and the lead.
            let wait = start - prev_end;
            assert!(
                (INTERVAL + LEAD..=INTERVAL + LEAD + 1_000_000).contains(&wait),
                "stage timer {wait} µs after the previous stage's last end"
            );
        }
        prev_end = recs.iter().map(|x| x.finish.unwrap()).max().unwrap();
    }
    let reports = ladder::stage_reports(&trace, r);
    assert_eq!(reports.len(), 3, "warm-up not reported");
    assert_eq!(reports.iter().map(|s| s.requests).collect::<Vec<_>>(), [10, 40, 3]);
    for s in &reports {
        assert_eq!(s.successes, s.requests);
        // output tok/s = tokens / (last end − first start), exactly as inference-perf.
        let want = (s.requests * 50) as f64 / (s.span_s.1 - s.span_s.0);
        assert!(
            (s.output_tok_s - want).abs() < 1e-6 * want,
            "{} vs {want}",
            s.output_tok_s
        );
        assert!(s.ttft_p50.unwrap() <= s.ttft_p90.unwrap());
    }
}

#[test]
fn back_to_back_stages_do_not_wait() {
    let ladder = Ladder::parse("6x5,6x5", None).unwrap();
    let params = ServerParams::default();
    let trace = ladder::shared_prefix_trace(&small_shape(), &ladder, Drain::None, params.block_tokens, 9);
    let cfg = ladder::sim_config(1, params, 9);
    let r = &ladder::run_policies(&cfg, &trace, &[PolicySpec::parse("round-robin").unwrap()])[0];
    let st = trace.staging.as_ref().unwrap();
    let s1 = st.spans[1];
    let first_send_2 = r.records[s1.first].sent;
    let last_end_1 = r.records[..s1.first].iter().map(|x| x.finish.unwrap()).max().unwrap();
    assert!(first_send_2 < last_end_1, "stage 2 starts while stage 1 still runs");
}

/// The round-robin arm on the published ladder: peak, median and TTFT-regime checks pass on the
/// default seed. The per-stage 35 % bound is reported, not asserted: the published rate-20 stage
/// (4,555 tok/s, below its neighbours 6,066 and 6,239) is 33–35 % under the simulation on every
/// seed tried, and fails on the default one (see lib.rs, "Validation").
#[test]
fn round_robin_arm_reproduces_the_published_shape() {
    let params = ServerParams::default();
    let trace = ladder::shared_prefix_trace(
        &SharedPrefix::LLMD,
        &Ladder::llmd(),
        Drain::Harness,
        params.block_tokens,
        20_260_817,
    );
    let cfg = ladder::sim_config(8, params, 20_260_817);
    let r = &ladder::run_policies(&cfg, &trace, &[PolicySpec::parse(validate::RR).unwrap()])[0];
    let reports = ladder::stage_reports(&trace, r);
    let arm = validate::compare(validate::RR, &validate::published(validate::RR).unwrap(), &reports).unwrap();
    let report = validate::markdown(&arm);
    for c in &arm.checks {
        if c.name.starts_with("every stage") {
            assert!(
                c.detail.contains("rate 20"),
                "the worst stage is the published dip: {report}"
            );
            continue;
        }
        assert!(c.pass, "{}: {}\n{report}", c.name, c.detail);
    }
}

/// The llm-d arm (picker-core's `llm-d-optimized-baseline`) on the published ladder: its TTFT
/// p90 stays in the published regime (under 2 s), but its throughput is 25–33 % below the
/// published figures with the default engine (see lib.rs, "Validation"); reading shared KV
/// blocks once per step (the upper bound) lifts it to within 10 % of the published peak.
#[test]
fn llmd_arm_keeps_its_ttft_regime_and_is_bracketed_by_kv_reuse() {
    let run = |shared_once: bool| {
        let mut engine = podsim::engine::EngineProfile::default_profile();
        engine.shared_kv_read_once = shared_once;
        let params = engine.server_params();
        let trace = ladder::shared_prefix_trace(
            &SharedPrefix::LLMD,
            &Ladder::llmd(),
            Drain::Harness,
            params.block_tokens,
            20_260_817,
        );
        let cfg = ladder::sim_config(8, params, 20_260_817);
        let r = &ladder::run_policies(&cfg, &trace, &[PolicySpec::parse(validate::LLMD).unwrap()])[0];
        let reports = ladder::stage_reports(&trace, r);
        validate::compare(validate::LLMD, &validate::published(validate::LLMD).unwrap(), &reports).unwrap()
    };
    let base = run(false);
    let regime = base.checks.last().unwrap();
    assert!(regime.pass, "{}", validate::markdown(&base));
    let peak = |a: &validate::ArmResult| a.rows.iter().map(|(_, s)| s.output_tok_s).fold(0.0, f64::max);
    let shared = run(true);
    assert!(
        peak(&shared) > peak(&base) * 1.2,
        "{} vs {}",
        peak(&shared),
        peak(&base)
    );
    assert!(shared.checks[0].pass, "{}", validate::markdown(&shared));
}
