use super::*;
// On wasm32-unknown-unknown the same tests run under wasm-bindgen-test (Node).
use crate::config::Profile;
use crate::request::{parse_subset, SubsetEntry, SubsetError};
use crate::rng::SplitMix64;
use crate::scan::Prompt;
use crate::snapshot::{LoraState, Snapshot};
use crate::time::Duration;
use alloc::string::String;
use alloc::vec;
use core::net::{IpAddr, SocketAddr};
use proptest::prelude::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const NOW: Instant = Instant::from_millis(10_000);

/// A ready endpoint `10.0.0.<n>:8000` scraped at NOW with the given queue and KV.
fn ep(n: u8, waiting: u32, kv: f32) -> Endpoint {
    let mut e = Endpoint::new(SocketAddr::new(IpAddr::V4([10, 0, 0, n].into()), 8000), NOW);
    e.waiting = waiting;
    e.kv_usage = kv;
    e.models = vec![MODEL.into()];
    e
}

fn pool(eps: Vec<Endpoint>) -> Pool {
    Pool::new(Snapshot {
        sequence: 1,
        generated_at: NOW,
        endpoints: eps,
    })
}

fn run(config: &Config, req: &Request<'_>, pool: &Pool, state: &mut State, seed: u64) -> Decision {
    pick(config, req, pool, &[], state, NOW, &mut SplitMix64::new(seed))
}

fn scores_of(d: &Decision, kind: ScorerKind) -> Vec<f32> {
    let slot = d.scorers.iter().position(|s| s.0 == kind).expect("scorer present");
    d.scored.iter().map(|s| s.scores[slot]).collect()
}

#[test]
fn gie_queue_and_kv_scores_by_hand() {
    // Queues 0, 5, 10 → min-max scores 1, 0.5, 0; KV 0.2, 0.5, 0.9 → 0.8, 0.5, 0.1.
    let cfg = Config::profile(Profile::GieDefault);
    let p = pool(vec![ep(1, 0, 0.2), ep(2, 5, 0.5), ep(3, 10, 0.9)]);
    let mut st = State::new(&cfg);
    let d = run(&cfg, &Request::new(MODEL, Prompt::default()), &p, &mut st, 1);
    assert_eq!(scores_of(&d, ScorerKind::Queue), [1.0, 0.5, 0.0]);
    let kv = scores_of(&d, ScorerKind::KvCache);
    for (got, want) in kv.iter().zip([0.8, 0.5, 0.1]) {
        assert!((got - want).abs() < 1e-6, "{kv:?}");
    }
    // Totals: 2·q + 2·kv + 3·0 = 3.6, 2.0, 0.2 → endpoint 0 wins.
    let totals: Vec<f64> = d.scored.iter().map(|s| s.total).collect();
    assert!(
        (totals[0] - 3.6).abs() < 1e-6 && (totals[1] - 2.0).abs() < 1e-6 && (totals[2] - 0.2).abs() < 1e-6,
        "{totals:?}"
    );
    assert_eq!(d.outcome, Outcome::Route(vec![0]));
    assert_eq!(d.mode, Mode::Normal);
}

#[test]
fn equal_queues_score_one() {
    let cfg = Config::profile(Profile::GieDefault);
    let p = pool(vec![ep(1, 4, 0.0), ep(2, 4, 0.0)]);
    let d = run(
        &cfg,
        &Request::new(MODEL, Prompt::default()),
        &p,
        &mut State::new(&cfg),
        1,
    );
    assert_eq!(scores_of(&d, ScorerKind::Queue), [1.0, 1.0]);
}

#[test]
fn prefix_affinity_after_first_pick() {
    // Same 640-byte system prompt twice: the second request goes where the first went, and its
    // prefix score there is matched/total = 10/11 (the question differs in the last block).
    let cfg = Config::profile(Profile::GieDefault);
    let p = pool(vec![ep(1, 0, 0.0), ep(2, 0, 0.0), ep(3, 0, 0.0), ep(4, 0, 0.0)]);
    let sys = [b'S'; 640];
    let mut a = Vec::from(&sys[..]);
    a.extend_from_slice(b"first question");
    let mut b = Vec::from(&sys[..]);
    b.extend_from_slice(b"other question");
    for seed in 1..10 {
        let mut st = State::new(&cfg);
        let d1 = run(&cfg, &Request::new(MODEL, Prompt::from_bytes(&a)), &p, &mut st, seed);
        let first = d1.primary().unwrap();
        let d2 = run(
            &cfg,
            &Request::new(MODEL, Prompt::from_bytes(&b)),
            &p,
            &mut st,
            seed + 100,
        );
        assert_eq!(d2.primary(), Some(first), "seed {seed}");
        let prefix = scores_of(&d2, ScorerKind::Prefix);
        assert!((prefix[first] - 10.0 / 11.0).abs() < 1e-6, "{prefix:?}");
        assert_eq!(d2.best_prefix_match, 10);
        // The same prompt again now matches all 11 blocks.
        let d3 = run(
            &cfg,
            &Request::new(MODEL, Prompt::from_bytes(&b)),
            &p,
            &mut st,
            seed + 200,
        );
        assert_eq!(scores_of(&d3, ScorerKind::Prefix)[first], 1.0);
    }
}

#[test]
fn ties_break_randomly_but_reproducibly() {
    let cfg = Config::profile(Profile::GieDefault);
    let p = pool(vec![ep(1, 0, 0.0), ep(2, 0, 0.0), ep(3, 0, 0.0), ep(4, 0, 0.0)]);
    let mut seen = [0u32; 4];
    for seed in 0..200 {
        let d = run(
            &cfg,
            &Request::new(MODEL, Prompt::default()),
            &p,
            &mut State::new(&cfg),
            seed,
        );
        let again = run(
            &cfg,
            &Request::new(MODEL, Prompt::default()),
            &p,
            &mut State::new(&cfg),
            seed,
        );
        assert_eq!(d, again);
        seen[d.primary().unwrap()] += 1;
    }
    assert!(seen.iter().all(|&n| n > 20), "all tied endpoints get picked: {seen:?}");
}

#[test]
fn candidates_exclude_not_ready_unserved_and_outside_subset() {
    let cfg = Config::profile(Profile::GieDefault);
    let mut down = ep(1, 0, 0.0);
    down.ready = false;
    let mut other = ep(2, 0, 0.0);
    other.models = vec!["other-model".into()];
    let mut any = ep(4, 0, 0.0);
    any.models.clear(); // unknown models: serves anything
    let p = pool(vec![down, other, ep(3, 9, 0.0), any]);
    let d = run(
        &cfg,
        &Request::new(MODEL, Prompt::default()),
        &p,
        &mut State::new(&cfg),
        1,
    );
    assert_eq!(
        d.drops,
        vec![(0, DropReason::NotReady), (1, DropReason::ModelNotServed)]
    );
    assert_eq!(d.primary(), Some(3));

    let subset = parse_subset("10.0.0.3").unwrap();
    let mut req = Request::new(MODEL, Prompt::default());
    req.subset = Some(&subset);
    let d = run(&cfg, &req, &p, &mut State::new(&cfg), 1);
    assert_eq!(d.primary(), Some(2));
    assert!(d.drops.contains(&(3, DropReason::NotInSubset)));

    let empty: Vec<SubsetEntry> = vec![];
    req.subset = Some(&empty);
    let d = run(&cfg, &req, &p, &mut State::new(&cfg), 1);
    assert_eq!(d.outcome, Outcome::Reject(Rejection::SubsetEmpty));
    assert_eq!(Rejection::SubsetEmpty.http_status(), 503);

    let d = run(
        &cfg,
        &Request::new("unknown", Prompt::default()),
        &pool(vec![ep(1, 0, 0.0)]),
        &mut State::new(&cfg),
        1,
    );
    assert_eq!(d.outcome, Outcome::Reject(Rejection::NoEndpoints));
}

#[test]
fn subset_parsing() {
    let s = parse_subset(" 10.0.0.1, 10.0.0.2:8000,[fd00::1]:9000,fd00::2 ,").unwrap();
    assert_eq!(s.len(), 4);
    assert!(s[0].matches(&"10.0.0.1:1234".parse().unwrap()));
    assert!(s[1].matches(&"10.0.0.2:8000".parse().unwrap()));
    assert!(!s[1].matches(&"10.0.0.2:8001".parse().unwrap()));
    assert!(s[2].matches(&"[fd00::1]:9000".parse().unwrap()));
    assert!(s[3].matches(&"[fd00::2]:1".parse().unwrap()));
    assert_eq!(parse_subset("10.0.0.1,pod-a"), Err(SubsetError { item: 1 }));
    assert_eq!(parse_subset("").unwrap(), vec![]);
}

#[test]
fn sheddable_requests_are_shed_at_saturation_only() {
    let cfg = Config::profile(Profile::GieDefault);
    // max(q/5, kv/0.8): 10/5 = 2.0 and 0/5 = 0 → mean 1.0 → saturated.
    let p = pool(vec![ep(1, 10, 0.0), ep(2, 0, 0.0)]);
    let mut req = Request::new(MODEL, Prompt::default());
    req.priority = -1;
    let d = run(&cfg, &req, &p, &mut State::new(&cfg), 1);
    assert_eq!(d.outcome, Outcome::Reject(Rejection::Shed { saturation: 1.0 }));
    assert_eq!(Rejection::Shed { saturation: 1.0 }.http_status(), 429);
    req.priority = 0;
    assert!(
        run(&cfg, &req, &p, &mut State::new(&cfg), 1).primary().is_some(),
        "critical requests are never shed"
    );
    // Below saturation: 0.4 → admitted.
    req.priority = -1;
    let p = pool(vec![ep(1, 2, 0.0), ep(2, 0, 0.64)]);
    let d = run(&cfg, &req, &p, &mut State::new(&cfg), 1);
    assert!((d.saturation - 0.6).abs() < 1e-6, "{}", d.saturation);
    assert!(d.primary().is_some());
}

#[test]
fn stale_pods_count_as_saturated() {
    let cfg = Config::profile(Profile::GieDefault);
    let mut old = ep(1, 0, 0.0);
    old.scraped_at = NOW - Duration::from_millis(201);
    let p = pool(vec![old, ep(2, 0, 0.0)]);
    assert_eq!(pool_saturation(&cfg, &p, &[0, 1], NOW), 0.5);
    assert_eq!(pool_saturation(&cfg, &p, &[], NOW), 1.0);
}

#[test]
fn utilization_filter_drops_saturated_and_fails_open() {
    let cfg = Config::from_json(br#"{"profile":"gie-default","filters":[{"type":"utilization-filter"}]}"#).unwrap();
    let p = pool(vec![ep(1, 5, 0.0), ep(2, 0, 0.85), ep(3, 4, 0.79)]);
    let d = run(
        &cfg,
        &Request::new(MODEL, Prompt::default()),
        &p,
        &mut State::new(&cfg),
        1,
    );
    assert_eq!(d.primary(), Some(2));
    assert_eq!(d.drops, vec![(0, DropReason::Saturated), (1, DropReason::Saturated)]);
    // All saturated: keep all.
    let p = pool(vec![ep(1, 9, 0.0), ep(2, 0, 0.99)]);
    let d = run(
        &cfg,
        &Request::new(MODEL, Prompt::default()),
        &p,
        &mut State::new(&cfg),
        1,
    );
    assert!(d.drops.is_empty());
    assert_eq!(d.scored.len(), 2);
}

#[test]
fn lora_affinity_scores() {
    let cfg_dto = crate::config::ConfigDto {
        scorers: Some(vec![crate::config::ScorerDto {
            kind: ScorerKind::Lora,
            weight: None,
        }]),
        ..Default::default()
    };
    let cfg = Config::try_from(cfg_dto).unwrap();
    let lora = |running: &[&str], waiting: &[&str], max: u16| {
        let mut e = ep(1, 0, 0.0);
        e.models.clear();
        e.lora = Some(LoraState {
            running: running.iter().map(|s| String::from(*s)).collect(),
            waiting: waiting.iter().map(|s| String::from(*s)).collect(),
            max,
        });
        e
    };
    let mut eps = vec![
        lora(&["sql"], &[], 2),
        lora(&["a"], &[], 2),
        lora(&["a", "b"], &["sql"], 2),
        lora(&["a", "b"], &[], 2),
        ep(9, 0, 0.0),
    ];
    eps[4].models.clear();
    for (i, e) in eps.iter_mut().enumerate() {
        e.addr.set_port(8000 + i as u16);
    }
    let d = run(
        &cfg,
        &Request::new("sql", Prompt::default()),
        &pool(eps),
        &mut State::new(&cfg),
        1,
    );
    assert_eq!(scores_of(&d, ScorerKind::Lora), [1.0, 0.8, 0.6, 0.0, 0.0]);
}

#[test]
fn fallback_list_is_ordered_by_score() {
    let cfg = Config::from_json(br#"{"profile":"gie-default","maxEndpoints":3}"#).unwrap();
    let p = pool(vec![ep(1, 8, 0.5), ep(2, 0, 0.1), ep(3, 4, 0.3), ep(4, 9, 0.9)]);
    let d = run(
        &cfg,
        &Request::new(MODEL, Prompt::default()),
        &p,
        &mut State::new(&cfg),
        1,
    );
    assert_eq!(d.outcome, Outcome::Route(vec![1, 2, 0]));
}

#[test]
fn degraded_mode_uses_consistent_hash_and_inflight() {
    let cfg = Config::profile(Profile::WasmEppDefault);
    let eps = vec![ep(1, 0, 0.0), ep(2, 0, 0.0), ep(3, 0, 0.0)];
    let p = Pool::new(Snapshot {
        sequence: 1,
        generated_at: NOW - Duration::from_secs(6),
        endpoints: eps,
    });
    let prompt = [b'x'; 512];
    let req = Request::new(MODEL, Prompt::from_bytes(&prompt));
    let mut picks = vec![];
    for seed in 0..5 {
        // Fresh state each time: no prefix index, so only consistent hashing can agree.
        let d = pick(
            &cfg,
            &req,
            &p,
            &[],
            &mut State::new(&cfg),
            NOW,
            &mut SplitMix64::new(seed),
        );
        assert_eq!(d.mode, Mode::Degraded);
        assert_eq!(
            d.scorers,
            vec![(ScorerKind::ConsistentHash, 1.0), (ScorerKind::InFlight, 1.0)]
        );
        picks.push(d.primary().unwrap());
    }
    assert!(picks.windows(2).all(|w| w[0] == w[1]), "{picks:?}");
    // Load on the hashed pod pushes past the bound: the next one takes it.
    let mut inflight = vec![InFlight::default(); 3];
    inflight[picks[0]].requests = 10;
    let d = pick(
        &cfg,
        &req,
        &p,
        &inflight,
        &mut State::new(&cfg),
        NOW,
        &mut SplitMix64::new(1),
    );
    assert_ne!(d.primary(), Some(picks[0]));
    // No shedding while degraded.
    let mut shed = req;
    shed.priority = -5;
    assert!(pick(
        &cfg,
        &shed,
        &p,
        &[],
        &mut State::new(&cfg),
        NOW,
        &mut SplitMix64::new(1)
    )
    .primary()
    .is_some());
}

#[test]
fn workers_agree_on_a_new_prefix_without_shared_state() {
    // Two workers (separate State) and a new prompt: wasm-epp-default sends both to the same pod.
    let cfg = Config::profile(Profile::WasmEppDefault);
    let p = pool((1..=8).map(|n| ep(n, 0, 0.0)).collect());
    for g in 0..20u8 {
        let prompt = vec![b'a' + g; 700];
        let req = Request::new(MODEL, Prompt::from_bytes(&prompt));
        let a = run(&cfg, &req, &p, &mut State::new(&cfg), 1).primary();
        let b = run(&cfg, &req, &p, &mut State::new(&cfg), 999).primary();
        assert_eq!(a, b, "group {g}");
    }
}

/// llm-d optimized-baseline, by hand from llm-d-router @ebab687: `prefixcacheaffinity/plugin.go`
/// `Filter` (sticky = prefix score ≥ 0.8; gate opens when bestStickyTTFT − bestNonStickyTTFT >
/// 18,000 ms, TTFT = in-flight tokens / 15,928 × 1000, only when a non-sticky pod exists).
#[test]
fn llmd_affinity_filter_and_relative_ttft_gate() {
    let cfg = Config::profile(Profile::LlmdOptimizedBaseline);
    assert_eq!(cfg.affinity().exploration, 0.0);
    let p = pool(vec![ep(1, 0, 0.0), ep(2, 0, 0.0), ep(3, 0, 0.0)]);
    let mut st = State::new(&cfg);
    let prompt = [b'q'; 1024];
    let req = Request::new(MODEL, Prompt::from_bytes(&prompt));
    let first = run(&cfg, &req, &p, &mut st, 1).primary().unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let mut inflight = vec![InFlight::default(); 3];
    // Sticky pod 286,000 tokens ahead of idle pods: 286,000 / 15,928 × 1000 = 17,955.8 ms of
    // TTFT lead, under 18,000: the filter keeps only the sticky pod.
    inflight[first].tokens = 286_000;
    let d = pick(&cfg, &req, &p, &inflight, &mut st, NOW, &mut SplitMix64::new(2));
    assert_eq!(d.primary(), Some(first));
    assert_eq!(d.drops.iter().filter(|x| x.1 == DropReason::NotSticky).count(), 2);
    // 300,000 tokens: 18,834.6 ms > 18,000: the gate opens and token load decides. (On a copy
    // of the state: the pod picked now becomes sticky too.)
    inflight[first].tokens = 300_000;
    let d = pick(&cfg, &req, &p, &inflight, &mut st.clone(), NOW, &mut SplitMix64::new(3));
    assert_ne!(d.primary(), Some(first));
    assert!(d.drops.is_empty());
    // Relative, not absolute: the same 300,000 with the least loaded non-sticky pod at 20,000
    // is a lead of 280,000 tokens = 17,579.1 ms: sticky again.
    inflight[others[0]].tokens = 20_000;
    inflight[others[1]].tokens = 50_000;
    let d = pick(&cfg, &req, &p, &inflight, &mut st, NOW, &mut SplitMix64::new(4));
    assert_eq!(d.primary(), Some(first));
}

/// llm-d `token-load-scorer` (token_load.go @ebab687) and `uncachedInputTokens`
/// (inflightload/producer.go): score = 1 − min(τ, in-flight + uncached) / τ with τ = 4,194,304;
/// uncached = (blocks − matched) × block tokens + the tail past the hashed blocks.
#[test]
fn llmd_token_load_with_uncached_lookahead_by_hand() {
    let cfg = Config::profile(Profile::LlmdOptimizedBaseline);
    // llm-d hashing: 4-byte tokens, blocks of at least 64 tokens (256 bytes), at most
    // 131,072 tokens (2,048 blocks of 64).
    assert_eq!(cfg.block_tokens(Some(16)), 64);
    assert_eq!(cfg.block_bytes(Some(16)), 256);
    assert_eq!(cfg.max_blocks(64), 2048);
    assert_eq!(cfg.token_load_threshold(), 4_194_304);
    let p = pool(vec![ep(1, 0, 0.0), ep(2, 0, 0.0)]);
    let mut st = State::new(&cfg);
    // 1,000 bytes = 250 tokens: blocks of 256 bytes → 4 hashes (the last one partial).
    let prompt = [b'z'; 1000];
    let req = Request::new(MODEL, Prompt::from_bytes(&prompt));
    let d = run(&cfg, &req, &p, &mut st, 1);
    assert_eq!(d.hashes.len(), 4);
    // Cold: (4 − 0) × 64 + max(0, 250 − 256) = 256 uncached tokens.
    assert_eq!(d.uncached_tokens, 256);
    let warm = d.primary().unwrap();
    let cold = 1 - warm;
    // Now warm holds all 4 blocks: its uncached tokens are 0, the cold pod's 256.
    let mut inflight = vec![InFlight::default(); 2];
    // 100,000 tokens ahead is 6,278 ms of estimated TTFT: the filter keeps the warm pod...
    inflight[warm].tokens = 100_000;
    let d = pick(&cfg, &req, &p, &inflight, &mut st.clone(), NOW, &mut SplitMix64::new(2));
    assert_eq!(d.primary(), Some(warm), "sticky filter keeps the warm pod");
    assert_eq!(d.uncached_tokens, 0);
    // ...1,048,576 ahead is 65,833 ms: the gate opens and the cold pod's lower load wins.
    inflight[warm].tokens = 1_048_576;
    let d = pick(&cfg, &req, &p, &inflight, &mut st.clone(), NOW, &mut SplitMix64::new(2));
    assert_eq!(d.primary(), Some(cold));
    // Token-load scores with the filter out of the way (scorer only).
    let scorer_only = Config::from_json(br#"{"profile":"llm-d-optimized-baseline","filters":[]}"#).unwrap();
    let mut st2 = st.clone();
    let d = pick(
        &scorer_only,
        &req,
        &p,
        &inflight,
        &mut st2,
        NOW,
        &mut SplitMix64::new(3),
    );
    let scores = scores_of(&d, ScorerKind::TokenLoad);
    let by_index = |i: usize| scores[d.scored.iter().position(|s| s.index == i).unwrap()];
    // warm: 1 − 1,048,576 / 4,194,304 = 0.75; cold: 1 − 256 / 4,194,304.
    assert!((by_index(warm) - 0.75).abs() < 1e-6);
    assert!((by_index(cold) as f64 - (1.0 - 256.0 / 4_194_304.0)).abs() < 1e-6);
    assert_eq!(d.primary(), Some(cold));
    assert_eq!(d.uncached_tokens, 256);
    // Past τ the score is 0, not negative.
    inflight[cold].tokens = 5_000_000;
    let d = pick(
        &scorer_only,
        &req,
        &p,
        &inflight,
        &mut st2,
        NOW,
        &mut SplitMix64::new(4),
    );
    let scores = scores_of(&d, ScorerKind::TokenLoad);
    assert_eq!(scores[d.scored.iter().position(|s| s.index == cold).unwrap()], 0.0);
}

/// The tail past the hashing cap counts as uncached on every pod.
#[test]
fn uncached_tokens_include_the_tail_past_the_cap() {
    let cfg = Config::from_json(br#"{"profile":"llm-d-optimized-baseline","prefix":{"maxPrefixTokensToMatch":128}}"#)
        .unwrap();
    let p = pool(vec![ep(1, 0, 0.0)]);
    let prompt = [b'y'; 2000]; // 500 tokens; cap 128 tokens = 2 blocks of 64
    let req = Request::new(MODEL, Prompt::from_bytes(&prompt));
    let mut st = State::new(&cfg);
    let d = run(&cfg, &req, &p, &mut st, 1);
    assert_eq!(d.hashes.len(), 2);
    assert_eq!(d.uncached_tokens, 2 * 64 + (500 - 128));
    let d = run(&cfg, &req, &p, &mut st, 2);
    assert_eq!(d.uncached_tokens, 500 - 128, "both blocks cached now");
}

#[test]
fn baselines_keep_an_unbounded_index_and_ours_a_budget() {
    assert_eq!(Config::profile(Profile::GieDefault).prefix().max_index_entries, None);
    assert_eq!(
        Config::profile(Profile::LlmdOptimizedBaseline)
            .prefix()
            .max_index_entries,
        None
    );
    assert_eq!(
        Config::profile(Profile::WasmEppDefault).prefix().max_index_entries,
        Some(crate::config::WASM_EPP_MAX_INDEX_ENTRIES)
    );
    let e = Config::from_json(br#"{"profile":"llm-d-default"}"#).unwrap_err();
    assert!(alloc::format!("{e}").contains("llm-d-optimized-baseline"), "{e}");
}

// === properties ===

fn endpoint_strategy() -> impl Strategy<Value = Endpoint> {
    (
        0u32..20,
        0u32..40,
        0f32..=1.0,
        any::<bool>(),
        0u64..400,
        prop::bool::weighted(0.9),
    )
        .prop_map(|(waiting, running, kv, ready, age, serves)| {
            let mut e = ep(0, waiting, kv);
            e.running = running;
            e.ready = ready;
            e.scraped_at = NOW - Duration::from_millis(age);
            if !serves {
                e.models = vec!["other".into()];
            }
            e
        })
}

fn pool_strategy() -> impl Strategy<Value = Pool> {
    prop::collection::vec(endpoint_strategy(), 0..12).prop_map(|mut eps| {
        for (i, e) in eps.iter_mut().enumerate() {
            e.addr = SocketAddr::new(IpAddr::V4([10, 0, 1, i as u8].into()), 8000);
        }
        pool(eps)
    })
}

fn profile_strategy() -> impl Strategy<Value = Config> {
    prop_oneof![
        Just(Config::profile(Profile::GieDefault)),
        Just(Config::profile(Profile::LlmdOptimizedBaseline)),
        Just(Config::profile(Profile::WasmEppDefault)),
        Just(Config::from_json(br#"{"profile":"gie-default","filters":[{"type":"utilization-filter"}],"maxEndpoints":3,"scorers":[{"type":"queue-scorer"},{"type":"lora-affinity-scorer"},{"type":"running-requests-size-scorer"},{"type":"token-load-scorer"}]}"#).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pick_is_eligible_scores_bounded_and_deterministic(
        cfg in profile_strategy(),
        p in pool_strategy(),
        prompt in prop::collection::vec(any::<u8>(), 0..400),
        inflight in prop::collection::vec((0u32..50, 0u64..400_000), 0..12),
        priority in -2i32..2,
        seed in any::<u64>(),
        warmup in 0usize..4,
    ) {
        let inflight: Vec<InFlight> = inflight.into_iter().map(|(r, t)| InFlight { requests: r, tokens: t }).collect();
        let mut req = Request::new(MODEL, Prompt::from_bytes(&prompt));
        req.priority = priority;
        let mut st = State::new(&cfg);
        for w in 0..warmup {
            pick(&cfg, &req, &p, &inflight, &mut st, NOW, &mut SplitMix64::new(w as u64));
        }
        let mut st2 = st.clone();
        let d = pick(&cfg, &req, &p, &inflight, &mut st, NOW, &mut SplitMix64::new(seed));
        let d2 = pick(&cfg, &req, &p, &inflight, &mut st2, NOW, &mut SplitMix64::new(seed));
        prop_assert_eq!(&d, &d2, "same inputs and seed, same decision");

        for s in &d.scored {
            for &x in &s.scores[..d.scorers.len()] {
                prop_assert!(x.is_finite() && (0.0..=1.0).contains(&x));
            }
            prop_assert!(s.total.is_finite());
        }
        let eligible = |i: usize| {
            let e = &p.endpoints()[i];
            e.ready && e.serves(MODEL)
        };
        match &d.outcome {
            Outcome::Route(list) => {
                prop_assert!(!list.is_empty() && list.len() <= cfg.max_endpoints() as usize);
                for &i in list {
                    prop_assert!(eligible(i), "picked ineligible endpoint {}", i);
                }
                // Max-score: nothing scored strictly higher than the pick.
                let best = d.scored.iter().map(|s| s.total).fold(f64::MIN, f64::max);
                let chosen = d.scored.iter().find(|s| s.index == list[0]).unwrap().total;
                prop_assert!(chosen >= best);
                // With the utilization filter on, no saturated pod is picked while an
                // unsaturated one exists.
                if cfg.filters().contains(&FilterKind::Utilization) && d.mode == Mode::Normal {
                    let unsaturated = |i: usize| {
                        let e = &p.endpoints()[i];
                        !is_stale(&cfg, e, NOW) && e.waiting < 5 && e.kv_usage < 0.8
                    };
                    if (0..p.endpoints().len()).any(|i| eligible(i) && unsaturated(i)) {
                        prop_assert!(unsaturated(list[0]));
                    }
                }
            }
            Outcome::Reject(Rejection::NoEndpoints) => {
                prop_assert!(!(0..p.endpoints().len()).any(eligible));
            }
            Outcome::Reject(Rejection::Shed { saturation }) => {
                prop_assert!(priority < 0 && *saturation >= 1.0);
            }
            Outcome::Reject(Rejection::SubsetEmpty) => prop_assert!(false, "no subset given"),
        }
    }

    /// Admission is monotone in queue depth: if a sheddable request is shed, it stays shed
    /// when any pod's queue grows.
    #[test]
    fn admission_monotone_in_queue_depth(p in pool_strategy(), grow in 0usize..12, by in 1u32..20) {
        let cfg = Config::profile(Profile::GieDefault);
        let mut req = Request::new(MODEL, Prompt::default());
        req.priority = -1;
        let shed = |p: &Pool| matches!(pick(&cfg, &req, p, &[], &mut State::new(&cfg), NOW, &mut SplitMix64::new(1)).outcome, Outcome::Reject(Rejection::Shed { .. }));
        let before = shed(&p);
        let mut s = p.snapshot().clone();
        if let Some(e) = s.endpoints.get_mut(grow) {
            e.waiting += by;
        }
        let after = shed(&Pool::new(s));
        prop_assert!(!before || after);
    }

    #[test]
    fn parse_subset_never_panics(s in ".{0,80}") {
        let _ = parse_subset(&s);
    }
}

#[test]
fn running_token_load_and_inflight_scores_by_hand() {
    let cfg = Config::from_json(
        br#"{"scorers":[{"type":"running-requests-size-scorer"},{"type":"token-load-scorer"},{"type":"in-flight-scorer"}],"tokenLoad":{"thresholdTokens":1000}}"#,
    )
    .unwrap();
    let mut eps = vec![ep(1, 0, 0.0), ep(2, 0, 0.0), ep(3, 0, 0.0)];
    for (e, r) in eps.iter_mut().zip([10, 20, 30]) {
        e.running = r;
    }
    let inflight = [
        InFlight {
            requests: 2,
            tokens: 250,
        },
        InFlight {
            requests: 6,
            tokens: 1500,
        },
        InFlight { requests: 4, tokens: 0 },
    ];
    let d = pick(
        &cfg,
        &Request::new(MODEL, Prompt::default()),
        &pool(eps),
        &inflight,
        &mut State::new(&cfg),
        NOW,
        &mut SplitMix64::new(1),
    );
    // running min-max: (30-10)/20 = 1, 0.5, 0; tokens: 1 - 250/1000, 1 - min(1, 1.5), 1 - 0;
    // in-flight over 2, 6, 4: spread 4 is under the floor of 8, so (6 - v) / 8: 0.5, 0, 0.25.
    assert_eq!(scores_of(&d, ScorerKind::RunningRequests), [1.0, 0.5, 0.0]);
    assert_eq!(scores_of(&d, ScorerKind::TokenLoad), [0.75, 0.0, 1.0]);
    assert_eq!(scores_of(&d, ScorerKind::InFlight), [0.5, 0.0, 0.25]);
    assert_eq!(d.primary(), Some(0), "totals 2.25, 0.5, 1.25");
}
