//! Runs the picker on a sample pool and sample OpenAI requests and prints every decision with
//! its reasons: per-endpoint load, per-scorer scores, drops, admission.
//!
//! ```text
//! cargo run -p picker-core --example explain                      # built-in sample, all profiles
//! cargo run -p picker-core --example explain -- --profile gie-default
//! cargo run -p picker-core --example explain -- --body req.json --path /v1/chat/completions
//! ```
use std::process::ExitCode;

use picker_core::config::ScorerKind;
use picker_core::Outcome;
use picker_core::{
    pick, Api, Config, Endpoint, InFlight, Instant, Pool, Profile, Request, Snapshot, SplitMix64, State,
};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A pool of four vLLM pods as the collector would report them: one busy, one with a hot KV
/// cache, one idle, one not ready.
fn sample_pool(now: Instant) -> Pool {
    let pod = |ip: [u8; 4], waiting: u32, running: u32, kv: f32, ready: bool| {
        let mut e = Endpoint::new((ip, 8000).into(), now);
        e.waiting = waiting;
        e.running = running;
        e.kv_usage = kv;
        e.ready = ready;
        e.block_size = Some(16);
        e.gpu_blocks = Some(27_264);
        e.models = vec![MODEL.into()];
        e
    };
    Pool::new(Snapshot {
        sequence: 1,
        generated_at: now,
        endpoints: vec![
            pod([10, 0, 0, 11], 4, 24, 0.61, true),
            pod([10, 0, 0, 12], 0, 9, 0.83, true),
            pod([10, 0, 0, 13], 1, 12, 0.35, true),
            pod([10, 0, 0, 14], 0, 0, 0.0, false),
        ],
    })
}

/// Two chat requests of the same tenant: same long system prompt, different questions
/// (OpenAI `POST /v1/chat/completions` shape).
fn sample_bodies() -> Vec<String> {
    let system = "You are a support assistant for ACME Corp. ".repeat(100);
    ["How do I reset my password?", "Where can I download my invoices?"]
        .iter()
        .map(|q| {
            format!(
                r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{q}"}}],"stream":true,"max_tokens":512}}"#
            )
        })
        .collect()
}

fn scorer_name(k: ScorerKind) -> &'static str {
    match k {
        ScorerKind::Queue => "queue",
        ScorerKind::KvCache => "kv",
        ScorerKind::Prefix => "prefix",
        ScorerKind::Lora => "lora",
        ScorerKind::RunningRequests => "running",
        ScorerKind::TokenLoad => "tokens",
        ScorerKind::InFlight => "inflight",
        ScorerKind::ConsistentHash => "chash",
    }
}

fn explain(profile: Profile, pool: &Pool, bodies: &[String], api: Api, now: Instant) -> Result<(), String> {
    let config = Config::profile(profile);
    let mut state = State::new(&config);
    let mut rng = SplitMix64::new(42);
    // In-flight counts as the proxy keeps them: each routed request adds one request, and its
    // uncached prompt tokens while its prefill runs (none of these requests has answered yet).
    let mut inflight = vec![InFlight::default(); pool.endpoints().len()];
    println!("## profile `{}`\n", profile.name());
    for (n, body) in bodies.iter().enumerate() {
        let scanned = picker_core::scan(body.as_bytes(), api).map_err(|e| format!("request {}: {e}", n + 1))?;
        let mut req = Request::new(&scanned.model, scanned.prompt);
        req.cache_salt = scanned.cache_salt.as_deref();
        let d = pick(&config, &req, pool, &inflight, &mut state, now, &mut rng);
        println!(
            "request {}: model `{}`, stream {:?}, {} prompt bytes, {} prefix blocks, pool saturation {:.2}, mode {:?}",
            n + 1,
            scanned.model,
            scanned.stream,
            scanned.prompt.len(),
            d.hashes.len(),
            d.saturation,
            d.mode
        );
        let header: Vec<String> = d
            .scorers
            .iter()
            .map(|(k, w)| format!("{}×{w}", scorer_name(*k)))
            .collect();
        println!(
            "\n| endpoint | waiting | kv | in flight (req / tok) | {} | total | |",
            header.join(" | ")
        );
        println!("|---|---|---|---|{}---|---|", "---|".repeat(header.len()));
        let picked = match &d.outcome {
            Outcome::Route(list) => list.clone(),
            Outcome::Reject(_) => vec![],
        };
        for s in &d.scored {
            let e = &pool.endpoints()[s.index];
            let cols: Vec<String> = s.scores[..d.scorers.len()].iter().map(|x| format!("{x:.3}")).collect();
            let mark = if picked.first() == Some(&s.index) {
                "**picked**"
            } else {
                ""
            };
            let load = inflight[s.index];
            println!(
                "| {} | {} | {:.2} | {} / {} | {} | {:.3} | {mark} |",
                e.addr,
                e.waiting,
                e.kv_usage,
                load.requests,
                load.tokens,
                cols.join(" | "),
                s.total
            );
        }
        for (i, why) in &d.drops {
            println!("| {} | — | — | dropped: {why:?} |", pool.endpoints()[*i].addr);
        }
        if let Some(g) = d.affinity {
            let gate = match g.ttft_ms {
                Some((sticky, other)) => format!(
                    "; TTFT gate: best sticky {sticky:.0} ms − best other {other:.0} ms = {:.0} ms vs {:.0} ms allowed",
                    sticky - other,
                    config.affinity().max_ttft_penalty_ms
                ),
                None => String::new(),
            };
            println!(
                "\naffinity filter: {} sticky (prefix score ≥ {}){gate}{}",
                g.sticky,
                config.affinity().threshold,
                if g.explored {
                    " — exploration: kept all"
                } else if g.kept_all {
                    " — kept all"
                } else {
                    " — kept the sticky pods only"
                }
            );
        }
        if let Some(p) = d.primary() {
            println!(
                "the pick must prefill {} uncached prompt tokens (counted in flight until its first response chunk)",
                d.uncached_tokens
            );
            inflight[p].requests += 1;
            inflight[p].tokens += d.uncached_tokens;
        }
        match &d.outcome {
            Outcome::Route(list) => {
                let hdr: Vec<String> = list.iter().map(|&i| pool.endpoints()[i].addr.to_string()).collect();
                println!("\n→ x-gateway-destination-endpoint: {}\n", hdr.join(","));
            }
            Outcome::Reject(r) => println!("\n→ HTTP {}: {r}\n", r.http_status()),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut profiles = vec![
        Profile::GieDefault,
        Profile::LlmdOptimizedBaseline,
        Profile::WasmEppDefault,
    ];
    let mut bodies = sample_bodies();
    let mut api = Api::ChatCompletions;
    while let Some(a) = args.next() {
        let val = args.next();
        let result = match (a.as_str(), val) {
            ("--profile", Some(p)) => Profile::from_name(&p).map(|p| profiles = vec![p]),
            ("--body", Some(f)) => std::fs::read_to_string(&f)
                .map(|b| bodies = vec![b])
                .map_err(|e| format!("{f}: {e}")),
            ("--path", Some(p)) => Api::from_path(&p)
                .map(|x| api = x)
                .ok_or(format!("not an inference path: {p}")),
            (other, _) => Err(format!(
                "unknown or incomplete argument {other:?}; see the example's docs"
            )),
        };
        if let Err(e) = result {
            eprintln!("explain: {e}");
            return ExitCode::from(2);
        }
    }
    let now = Instant::from_millis(1_700_000_000_000);
    let pool = sample_pool(now);
    println!("# wasm-epp picker: sample decisions\n");
    println!(
        "Pool: {} pods of `{MODEL}` (one not ready). Two requests share a 4,300-byte system prompt;",
        pool.endpoints().len()
    );
    println!("the second one shows prefix affinity from the first pick.\n");
    for p in profiles {
        if let Err(e) = explain(p, &pool, &bodies, api, now) {
            eprintln!("explain: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
