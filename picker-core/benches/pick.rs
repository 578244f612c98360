//! Criterion benches for the request path: scan, scan + hash, and scan + hash + pick, over
//! chat bodies of 1 KiB, 4 KiB, 64 KiB and 220 KiB and pools of 8, 64 and 256 endpoints.
//!
//! `cargo bench -p picker-core --bench pick` (or `./build.sh bench`). Targets (issue 3, native):
//! scan + hash ≥ 1 GB/s; pick over 64 endpoints ≤ 5 µs.
use std::hint::black_box;
use std::time::Duration as StdDuration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use picker_core::prefix::hash_prompt;
use picker_core::{
    pick, pick_hashed, prefix_hashes, scan, Api, Config, Endpoint, InFlight, Instant, Pool, Profile, Request, Snapshot,
    SplitMix64, State,
};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A chat-completions body of about `size` bytes: a system prompt, then user/assistant turns
/// of English text with escapes and some non-ASCII, as real multi-turn chats look.
fn chat_body(size: usize) -> Vec<u8> {
    let sentence = "The quick brown fox \\\"jumps\\\" over the lazy dog; caf\u{e9} na\u{ef}ve co\u{f6}perate.\\n ";
    let mut messages = vec![format!(
        r#"{{"role":"system","content":"You are a helpful assistant. {}"}}"#,
        sentence.repeat(4)
    )];
    let mut len = messages[0].len() + 120;
    let mut turn = 0;
    while len < size {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        let content = sentence.repeat(8);
        let m = format!(r#"{{"role":"{role}","content":"Turn {turn}: {content}"}}"#);
        len += m.len() + 1;
        messages.push(m);
        turn += 1;
    }
    format!(
        r#"{{"model":"{MODEL}","messages":[{}],"stream":true,"max_tokens":512,"temperature":0.2}}"#,
        messages.join(",")
    )
    .into_bytes()
}

fn pool(n: usize, now: Instant) -> Pool {
    let endpoints = (0..n)
        .map(|i| {
            let mut e = Endpoint::new(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 8000).into(), now);
            e.waiting = (i * 7 % 11) as u32;
            e.running = (i * 5 % 31) as u32;
            e.kv_usage = (i * 13 % 100) as f32 / 100.0;
            e.block_size = Some(16);
            e.gpu_blocks = Some(27_264);
            e.models = vec![MODEL.into()];
            e
        })
        .collect();
    Pool::new(Snapshot {
        sequence: 1,
        generated_at: now,
        endpoints,
    })
}

const SIZES: [(usize, &str); 4] = [(1024, "1KiB"), (4096, "4KiB"), (65_536, "64KiB"), (225_280, "220KiB")];

fn bench_scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan");
    for (size, name) in SIZES {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| scan(black_box(body), Api::ChatCompletions).map(|s| s.prompt.len()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("scan+hash");
    for (size, name) in SIZES {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| {
                let s = scan(black_box(body), Api::ChatCompletions).expect("valid body");
                hash_prompt(&s.model, None, s.prompt, 64, 256).len()
            })
        });
    }
    g.finish();
}

fn bench_pick(c: &mut Criterion) {
    let now = Instant::from_millis(1_000_000);
    let mut g = c.benchmark_group("scan+hash+pick");
    for profile in [Profile::GieDefault, Profile::WasmEppDefault] {
        let config = Config::profile(profile);
        for n in [8usize, 64, 256] {
            for (size, name) in [SIZES[1], SIZES[3]] {
                let body = chat_body(size);
                let pool = pool(n, now);
                let inflight: Vec<InFlight> = (0..n)
                    .map(|i| InFlight {
                        requests: (i % 5) as u32,
                        tokens: 0,
                    })
                    .collect();
                // Warm the prefix index with earlier requests so matching does real work.
                let mut state = State::new(&config);
                let mut rng = SplitMix64::new(7);
                for k in 0..(n as u32 * 4) {
                    let mut other = body.clone();
                    let at = other.len() / 2;
                    other[at..at + 4].copy_from_slice(&k.to_le_bytes().map(|b| b'a' + b % 26));
                    if let Ok(s) = scan(&other, Api::ChatCompletions) {
                        pick(
                            &config,
                            &Request::new(&s.model, s.prompt),
                            &pool,
                            &inflight,
                            &mut state,
                            now,
                            &mut rng,
                        );
                    }
                }
                g.throughput(Throughput::Elements(1));
                g.bench_function(BenchmarkId::new(format!("{}/{n}ep", profile.name()), name), |b| {
                    b.iter(|| {
                        let s = scan(black_box(&body), Api::ChatCompletions).expect("valid body");
                        let d = pick(
                            &config,
                            &Request::new(&s.model, s.prompt),
                            &pool,
                            &inflight,
                            &mut state,
                            now,
                            &mut rng,
                        );
                        d.primary()
                    })
                });
            }
        }
    }
    g.finish();

    // The pick alone (prompt scanned and hashed), the figure the ≤ 5 µs target is about.
    let mut g = c.benchmark_group("pick-only");
    let body = chat_body(4096);
    let scanned = scan(&body, Api::ChatCompletions).expect("valid body");
    for profile in [Profile::GieDefault, Profile::WasmEppDefault] {
        let config = Config::profile(profile);
        for n in [8usize, 64, 256] {
            let pool = pool(n, now);
            let mut state = State::new(&config);
            let mut rng = SplitMix64::new(7);
            let req = Request::new(&scanned.model, scanned.prompt);
            let hashes = prefix_hashes(&config, &req, &pool);
            g.bench_function(BenchmarkId::new(profile.name(), format!("{n}ep")), |b| {
                b.iter(|| pick_hashed(&config, &req, hashes.clone(), &pool, &[], &mut state, now, &mut rng).primary())
            });
        }
    }
    g.finish();
}

/// Prefix sync (picker-core `sync`): a pull that applies one record of another worker, and a
/// push of one record, for 4 KiB (64 blocks) and 220 KiB (256 blocks, the cap) prompts. A
/// worker pays one pull per record the other workers appended since its last request.
fn bench_sync(c: &mut Criterion) {
    use picker_core::sync::{MemSlots, PrefixSync, SyncParams};
    let now = Instant::from_millis(1_000);
    let config = Config::profile(Profile::WasmEppDefault);
    let pool = pool(64, now);
    let mut g = c.benchmark_group("sync");
    for (size, name) in [(4096usize, "4KiB"), (225_280, "220KiB")] {
        let body = chat_body(size);
        let scanned = scan(&body, Api::ChatCompletions).expect("valid body");
        let req = Request::new(&scanned.model, scanned.prompt);
        let hashes = prefix_hashes(&config, &req, &pool);
        let mut store = MemSlots::default();
        PrefixSync::init_store(&mut store);
        // The writer appends a record per iteration; the reader applies it (index warm: the
        // same prefix again, as in steady state).
        let (mut wst, mut rst) = (State::new(&config), State::new(&config));
        wst.enable_outbox();
        let (mut writer, mut reader) = (
            PrefixSync::new(1, SyncParams::default()),
            PrefixSync::new(2, SyncParams::default()),
        );
        let ep = &pool.endpoints()[3];
        // Whether the push+pull case ran (a name filter on the command line may skip it).
        let mut pulled = false;
        g.bench_function(BenchmarkId::new("push+pull 1 record", name), |b| {
            pulled = true;
            b.iter(|| {
                wst.record_served(&config, ep, &hashes);
                writer.push(&mut store, &mut wst);
                reader.pull(&mut store, &mut rst, &config);
            })
        });
        g.bench_function(BenchmarkId::new("push only", name), |b| {
            b.iter(|| {
                wst.record_served(&config, ep, &hashes);
                writer.push(&mut store, &mut wst);
            })
        });
        g.bench_function(BenchmarkId::new("local insert only", name), |b| {
            b.iter(|| wst.record_served(&config, ep, &hashes))
        });
        assert!(!pulled || reader.stats().applied > 0);
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(StdDuration::from_millis(500))
        .measurement_time(StdDuration::from_secs(2))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = bench_xxh, bench_scan, bench_pick, bench_sync }
criterion_main!(benches);

/// The prefix hash chain's inner step (picker-core `xxh`): 55 chained 64-byte blocks (a 3.5 KiB
/// prompt), (a) copying each block and the previous hash into a scratch Vec and hashing it with
/// `xxhash_rust` (as `hash_prompt_into` does), (b) `xxh64_chained` reading the block in place.
fn bench_xxh(c: &mut Criterion) {
    use picker_core::xxh::xxh64_chained;
    use xxhash_rust::xxh64::xxh64;
    const BLOCK: usize = 64;
    const BLOCKS: usize = 55;
    let prompt = chat_body(BLOCK * BLOCKS + 200);
    let prompt = &prompt[..BLOCK * BLOCKS];
    let mut g = c.benchmark_group("xxh");
    g.throughput(Throughput::Bytes(prompt.len() as u64));
    let mut buf: Vec<u8> = Vec::with_capacity(BLOCK + 8);
    g.bench_function("copy+xxhash_rust 55x64B", |b| {
        b.iter(|| {
            let mut prev = black_box(0x0123_4567_89AB_CDEFu64);
            for block in black_box(prompt).chunks(BLOCK) {
                buf.clear();
                buf.extend_from_slice(block);
                buf.extend_from_slice(&prev.to_le_bytes());
                prev = xxh64(&buf, 0);
            }
            prev
        })
    });
    g.bench_function("xxh64_chained 55x64B", |b| {
        b.iter(|| {
            let mut prev = black_box(0x0123_4567_89AB_CDEFu64);
            for block in black_box(prompt).chunks(BLOCK) {
                prev = xxh64_chained([block, &[]], prev);
            }
            prev
        })
    });
    // The same chain with every block straddling the two segments (the general path).
    g.bench_function("xxh64_chained 55x64B straddling", |b| {
        b.iter(|| {
            let mut prev = black_box(0x0123_4567_89AB_CDEFu64);
            for block in black_box(prompt).chunks(BLOCK) {
                let (x, y) = block.split_at(block.len() / 2 + 3);
                prev = xxh64_chained([x, y], prev);
            }
            prev
        })
    });
    let mut check = 0x0123_4567_89AB_CDEFu64;
    let mut want = check;
    for block in prompt.chunks(BLOCK) {
        check = xxh64_chained([block, &[]], check);
        want = xxh64(&[block, &want.to_le_bytes()].concat(), 0);
    }
    assert_eq!(check, want);
    g.finish();
}
