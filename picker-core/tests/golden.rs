//! Golden decisions: a fixed set of scenarios run through every profile, rendered as a table
//! and compared with `tests/golden/decisions.txt`. A change in scoring shows up as a reviewable
//! diff of that file, like any other change of behaviour. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p picker-core --test golden` and review the diff.
use std::fmt::Write as _;

use picker_core::{pick, Config, Endpoint, Instant, Pool, Profile, Prompt, Request, Snapshot, SplitMix64, State};
use picker_core::{InFlight, Outcome};

const MODEL: &str = "Qwen/Qwen3-32B";
const NOW: Instant = Instant::from_millis(1_750_000_000_000);

fn pod(last_octet: u8, waiting: u32, running: u32, kv: f32) -> Endpoint {
    let mut e = Endpoint::new(([10, 2, 0, last_octet], 8000).into(), NOW);
    e.waiting = waiting;
    e.running = running;
    e.kv_usage = kv;
    e.block_size = Some(16);
    e.gpu_blocks = Some(20_000);
    e.models = vec![MODEL.into()];
    e
}

/// Deterministic prompt text: a group's shared system prompt, then a user's question.
fn prompt(group: u32, user: u32) -> Vec<u8> {
    let mut p = format!("[system {group}] ").repeat(60).into_bytes();
    p.extend(format!("question {user} from group {group}. ").repeat(6).bytes());
    p
}

fn render(profile: Profile) -> String {
    let config = Config::profile(profile);
    let pool = Pool::new(Snapshot {
        sequence: 1,
        generated_at: NOW,
        endpoints: vec![
            pod(1, 0, 4, 0.10),
            pod(2, 3, 20, 0.55),
            pod(3, 1, 9, 0.30),
            pod(4, 7, 31, 0.92),
        ],
    });
    let mut state = State::new(&config);
    let mut rng = SplitMix64::new(2024);
    let mut inflight = vec![InFlight::default(); pool.endpoints().len()];
    let mut out = format!("## {}\n", profile.name());
    // 4 groups × 3 users, interleaved as they would arrive; the proxy's in-flight counts grow.
    for user in 0..3 {
        for group in 0..4 {
            let text = prompt(group, user);
            let mut req = Request::new(MODEL, Prompt::from_bytes(&text));
            req.priority = if group == 3 { -1 } else { 0 };
            let d = pick(&config, &req, &pool, &inflight, &mut state, NOW, &mut rng);
            let scores: Vec<String> = d.scored.iter().map(|s| format!("{:.3}", s.total)).collect();
            let verdict = match &d.outcome {
                Outcome::Route(list) => {
                    let first = list[0];
                    inflight[first].requests += 1;
                    inflight[first].tokens += text.len() as u64 / 4;
                    format!("-> {}", pool.endpoints()[first].addr)
                }
                Outcome::Reject(r) => format!("-> {} ({r})", r.http_status()),
            };
            writeln!(
                out,
                "g{group} u{user} prio {:>2} blocks {:>2} best-match {:>2} sat {:.2} drops {} totals [{}] {verdict}",
                req.priority,
                d.hashes.len(),
                d.best_prefix_match,
                d.saturation,
                d.drops.len(),
                scores.join(" ")
            )
            .unwrap();
        }
    }
    out
}

#[test]
fn decisions_match_golden_file() {
    let mut all = String::from("# Golden decisions (tests/golden.rs). Review diffs of this file like code.\n\n");
    for p in [
        Profile::GieDefault,
        Profile::LlmdOptimizedBaseline,
        Profile::WasmEppDefault,
    ] {
        all.push_str(&render(p));
        all.push('\n');
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/decisions.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &all).unwrap();
    }
    let want = std::fs::read_to_string(path).expect("golden file exists; run with UPDATE_GOLDEN=1 once");
    let changed: Vec<String> = all
        .lines()
        .zip(want.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("- {b}\n+ {a}"))
        .collect();
    assert!(
        changed.is_empty() && all.lines().count() == want.lines().count(),
        "decisions changed; if intended, regenerate with UPDATE_GOLDEN=1 and review the diff:\n{}",
        changed.join("\n")
    );
}
