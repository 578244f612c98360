use super::*;
// On wasm32-unknown-unknown the same tests run under wasm-bindgen-test (Node).
use alloc::vec;
use proptest::prelude::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[test]
fn xxh64_known_answers() {
    // Reference vectors of XXH64 with seed 0 (xxHash's own test suite / cespare/xxhash tests).
    assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
    assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
    assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
}

/// The GIE chain written out literally, as a second implementation to compare against.
fn reference_chain(model: &str, salt: &str, input: &[u8], block: usize, max_blocks: usize) -> Vec<u64> {
    if input.len() < block {
        return vec![];
    }
    let input = &input[..input.len().min(block * max_blocks)];
    let mut seed = Vec::from(model.as_bytes());
    seed.extend_from_slice(salt.as_bytes());
    let mut prev = xxh64(&seed, 0);
    let mut out = vec![];
    for chunk in input.chunks(block) {
        let mut b = Vec::from(chunk);
        b.extend_from_slice(&prev.to_le_bytes());
        prev = xxh64(&b, 0);
        out.push(prev);
    }
    out
}

#[test]
fn chain_follows_gie_rules() {
    let text: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
    // Shorter than one block: no hashes.
    assert!(hash_prompt("m", None, Prompt::from_bytes(&text[..63]), 64, 256).is_empty());
    // Exactly one block.
    assert_eq!(
        hash_prompt("m", None, Prompt::from_bytes(&text[..64]), 64, 256).as_slice(),
        reference_chain("m", "", &text[..64], 64, 256)
    );
    // Trailing partial block is hashed: 1000 bytes = 15 full + 1 partial.
    let h = hash_prompt("m", None, Prompt::from_bytes(&text), 64, 256);
    assert_eq!(h.len(), 16);
    assert_eq!(h.as_slice(), reference_chain("m", "", &text, 64, 256));
    // Truncation at max blocks: no partial block past the limit.
    let h = hash_prompt("m", None, Prompt::from_bytes(&text), 64, 4);
    assert_eq!(h.len(), 4);
    assert_eq!(h.as_slice(), reference_chain("m", "", &text, 64, 4));
    // Model and salt seed the chain.
    let a = hash_prompt("m1", None, Prompt::from_bytes(&text), 64, 256);
    let b = hash_prompt("m2", None, Prompt::from_bytes(&text), 64, 256);
    let c = hash_prompt("m1", Some("tenant"), Prompt::from_bytes(&text), 64, 256);
    assert_ne!(a.as_slice()[0], b.as_slice()[0]);
    assert_ne!(a.as_slice()[0], c.as_slice()[0]);
    assert_eq!(c.as_slice(), reference_chain("m1", "tenant", &text, 64, 256));
}

#[test]
fn shared_prefix_shares_leading_hashes() {
    let system = [b'S'; 640];
    let mut a = Vec::from(&system[..]);
    a.extend_from_slice(b"question one, which is long enough to fill a block or more of text here....");
    let mut b = Vec::from(&system[..]);
    b.extend_from_slice(b"another question entirely, also long enough to make a block of its own.....");
    let ha = hash_prompt("m", None, Prompt::from_bytes(&a), 64, 256);
    let hb = hash_prompt("m", None, Prompt::from_bytes(&b), 64, 256);
    assert_eq!(ha.as_slice()[..10], hb.as_slice()[..10]);
    assert_ne!(ha.as_slice()[10], hb.as_slice()[10]);
    assert_eq!(ha.prefix_key(4), hb.prefix_key(4));
    assert_eq!(PrefixHashes::default().prefix_key(4), None);
}

#[test]
fn affinity_key_covers_the_first_half_capped() {
    // 10 system blocks + 2 question blocks: the key is block 6's hash, inside the system
    // prompt, so both tenants' users agree; the cap wins when it is smaller.
    let system = [b'S'; 640];
    let ask = |q: &[u8]| {
        let mut v = Vec::from(&system[..]);
        v.extend_from_slice(q);
        hash_prompt("m", None, Prompt::from_bytes(&v), 64, 256)
    };
    let a = ask(&[b'a'; 128]);
    let b = ask(&[b'b'; 128]);
    assert_eq!(a.affinity_key(256), Some(a.as_slice()[5]));
    assert_eq!(a.affinity_key(256), b.affinity_key(256));
    assert_eq!(a.affinity_key(3), Some(a.as_slice()[2]));
    // A prompt past the hashing cap still halves its full length: 600 blocks, 256 hashed,
    // key = the cap (block 256), not half of what was hashed.
    let long = hash_prompt("m", None, Prompt::from_bytes(&[b'x'; 600 * 64]), 64, 256);
    assert_eq!(long.len(), 256);
    assert_eq!(long.affinity_key(256), Some(long.as_slice()[255]));
    // One block: the key is that block; none: no key.
    let one = hash_prompt("m", None, Prompt::from_bytes(&[b'x'; 64]), 64, 256);
    assert_eq!(one.affinity_key(256), Some(one.as_slice()[0]));
    assert_eq!(PrefixHashes::default().affinity_key(256), None);
}

#[test]
fn empty_or_zero_block_gives_no_hashes() {
    assert!(hash_prompt("m", None, Prompt::default(), 64, 256).is_empty());
    assert!(hash_prompt("m", None, Prompt::from_bytes(b"abc"), 0, 256).is_empty());
}

// === index ===

fn ep(n: u64) -> EndpointKey {
    1000 + n
}

#[test]
fn longest_prefix_match_counts_blocks_per_endpoint() {
    let mut idx = PrefixIndex::new(Some(1 << 16));
    idx.insert(ep(1), 100, &[1, 2, 3, 4], InsertOrder::Gie);
    idx.insert(ep(2), 100, &[1, 2], InsertOrder::Gie);
    let mut m = vec![];
    idx.match_longest(&[1, 2, 3, 9, 4], &mut m);
    m.sort();
    // Stops at 9 (nobody holds it): ep1 matched 3 blocks, ep2 matched 2.
    assert_eq!(m, vec![(ep(1), 3), (ep(2), 2)]);
    idx.match_longest(&[7, 1, 2], &mut m);
    assert!(m.is_empty(), "first block missing everywhere: no match");
}

#[test]
fn per_endpoint_lru_evicts_least_recent() {
    let mut idx = PrefixIndex::new(Some(1 << 16));
    idx.insert(ep(1), 3, &[1, 2, 3], InsertOrder::Gie);
    idx.insert(ep(1), 3, &[1], InsertOrder::Gie); // refresh 1: LRU order now 2, 3, 1
    idx.insert(ep(1), 3, &[4], InsertOrder::Gie); // evicts 2
    assert_eq!(idx.endpoint_len(ep(1)), 3);
    let mut m = vec![];
    idx.match_longest(&[2], &mut m);
    assert!(m.is_empty());
    idx.match_longest(&[1], &mut m);
    assert_eq!(m, vec![(ep(1), 1)]);
}

#[test]
fn insert_order_decides_which_end_survives() {
    let mut gie = PrefixIndex::new(Some(1 << 16));
    gie.insert(ep(1), 2, &[1, 2, 3, 4], InsertOrder::Gie);
    let mut head = PrefixIndex::new(Some(1 << 16));
    head.insert(ep(1), 2, &[1, 2, 3, 4], InsertOrder::HeadMostRecent);
    let mut m = vec![];
    gie.match_longest(&[1, 2, 3, 4], &mut m);
    assert!(
        m.is_empty(),
        "GIE order keeps the tail (3, 4), so the walk stops at block 1"
    );
    head.match_longest(&[1, 2, 3, 4], &mut m);
    assert_eq!(m, vec![(ep(1), 2)], "head-most-recent keeps blocks 1 and 2");
}

#[test]
fn global_bound_holds_with_many_endpoints() {
    let mut idx = PrefixIndex::new(Some(1000));
    for e in 0..50u64 {
        let hashes: Vec<u64> = (0..500).map(|i| e * 10_000 + i).collect();
        idx.insert(ep(e), DEFAULT_LRU_CAPACITY, &hashes, InsertOrder::HeadMostRecent);
        assert!(idx.len() <= 1000, "after endpoint {e}: {} entries", idx.len());
    }
    assert!(idx.memory_bound_bytes().unwrap() >= 1000 * PrefixIndex::ENTRY_BYTES);
    assert_eq!(PrefixIndex::new(None).memory_bound_bytes(), None);
}

/// The documented bound is what the index allocates: a capped index filled with distinct
/// hashes, and a GIE-sized uncapped one (8 pods × 19,208 blocks, as GIE keeps for Qwen3-32B on
/// 2×H100), stay within `ENTRY_BYTES` per entry plus the arena's minimum growth step.
#[test]
fn allocation_stays_within_the_entry_bound() {
    let mut capped = PrefixIndex::new(Some(49_152));
    for e in 0..64u64 {
        let hashes: Vec<u64> = (0..2_000)
            .map(|i| (e << 32 | i).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        capped.insert(ep(e), DEFAULT_LRU_CAPACITY, &hashes, InsertOrder::HeadMostRecent);
    }
    assert_eq!(capped.len(), 49_152);
    assert!(
        capped.allocated_bytes() <= capped.memory_bound_bytes().unwrap(),
        "{}",
        capped.allocated_bytes()
    );
    let mut gie = PrefixIndex::new(None);
    for e in 0..8u64 {
        let hashes: Vec<u64> = (0..19_208)
            .map(|i| (e << 32 | i).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        gie.insert(ep(e), 19_208, &hashes, InsertOrder::Gie);
    }
    assert_eq!(gie.len(), 8 * 19_208);
    let bound = gie.len() * PrefixIndex::ENTRY_BYTES + 4096 * 24;
    assert!(gie.allocated_bytes() <= bound, "{} > {bound}", gie.allocated_bytes());
}

#[test]
fn retain_drops_departed_endpoints_and_reuses_slots() {
    let mut idx = PrefixIndex::new(Some(1 << 16));
    idx.insert(ep(1), 100, &[1, 2], InsertOrder::Gie);
    idx.insert(ep(2), 100, &[1, 3], InsertOrder::Gie);
    idx.insert(ep(3), 100, &[1, 4], InsertOrder::Gie);
    idx.retain_endpoints(&[ep(3), ep(2)]);
    assert_eq!(idx.endpoint_len(ep(1)), 0);
    assert_eq!(idx.len(), 4);
    let mut m = vec![];
    idx.match_longest(&[1, 4], &mut m);
    let mut sorted = m.clone();
    sorted.sort();
    assert_eq!(sorted, vec![(ep(2), 1), (ep(3), 2)]);
    // Freed nodes are reused.
    idx.insert(ep(4), 100, &[9, 8], InsertOrder::Gie);
    assert_eq!(idx.len(), 6);
}

/// The index as a plain model: one most-recent-first list per endpoint, the same capacity rules.
#[derive(Default)]
struct Model {
    eps: Vec<(EndpointKey, u32, Vec<u64>)>,
    max: Option<u32>,
}

impl Model {
    fn effective(&self, own: u32) -> u32 {
        match self.max {
            Some(m) => own.min(m / (self.eps.len() as u32).max(1)),
            None => own,
        }
    }

    fn insert(&mut self, ep: EndpointKey, capacity: u32, hashes: &[u64], order: InsertOrder) {
        let slot = match self.eps.iter().position(|e| e.0 == ep) {
            Some(s) => {
                self.eps[s].1 = capacity.max(1);
                s
            }
            None => {
                self.eps.push((ep, capacity.max(1), Vec::new()));
                if self.max.is_some() {
                    for o in 0..self.eps.len() - 1 {
                        let cap = self.effective(self.eps[o].1) as usize;
                        self.eps[o].2.truncate(cap);
                    }
                }
                self.eps.len() - 1
            }
        };
        let cap = self.effective(self.eps[slot].1) as usize;
        self.eps[slot].2.truncate(cap);
        let mut touch = |h: u64| {
            if cap == 0 {
                return;
            }
            let list = &mut self.eps[slot].2;
            if let Some(i) = list.iter().position(|&x| x == h) {
                list.remove(i);
            } else if list.len() >= cap {
                list.pop();
            }
            list.insert(0, h);
        };
        match order {
            InsertOrder::Gie => hashes.iter().for_each(|&h| touch(h)),
            InsertOrder::HeadMostRecent => hashes.iter().rev().for_each(|&h| touch(h)),
        }
    }

    fn retain(&mut self, keep: &[EndpointKey]) {
        self.eps.retain(|e| keep.contains(&e.0));
    }

    fn matches(&self, hashes: &[u64]) -> Vec<(EndpointKey, u32)> {
        let mut counts: Vec<(EndpointKey, u32)> = self.eps.iter().map(|e| (e.0, 0)).collect();
        for h in hashes {
            let holders: Vec<usize> = (0..self.eps.len()).filter(|&i| self.eps[i].2.contains(h)).collect();
            if holders.is_empty() {
                break;
            }
            for i in holders {
                counts[i].1 += 1;
            }
        }
        let mut out: Vec<_> = counts.into_iter().filter(|c| c.1 > 0).collect();
        out.sort();
        out
    }
}

proptest! {
    /// The index agrees with the plain model after any sequence of inserts (both orders) and
    /// retains, capped or not: same matches for every probe, same entry counts. Hashes come
    /// from a small range, so chains, table collisions, deletions and slot reuse all happen.
    #[test]
    fn index_matches_a_plain_lru_model(
        ops in prop::collection::vec(
            (0u64..10, 1u32..24, prop::collection::vec(0u64..48, 0..20), 0u8..6, any::<bool>()),
            1..120,
        ),
        max in prop::option::of(1u32..120),
        spread in any::<bool>(),
    ) {
        // `spread` maps hashes far apart (distinct table homes) or onto a few homes (long
        // probe runs and backward shifts).
        let h = |x: u64| if spread { x.wrapping_mul(0x9e37_79b9_7f4a_7c15) } else { x << 40 | (x % 3) };
        let mut idx = PrefixIndex::new(max);
        let mut model = Model { max, ..Model::default() };
        let mut m = vec![];
        for (e, cap, raw, kind, head_first) in ops {
            let hashes: Vec<u64> = raw.iter().map(|&x| h(x)).collect();
            let order = if head_first { InsertOrder::HeadMostRecent } else { InsertOrder::Gie };
            if kind == 0 {
                let keep: Vec<u64> = model.eps.iter().map(|x| x.0).filter(|k| k % 3 != e % 3).collect();
                idx.retain_endpoints(&keep);
                model.retain(&keep);
            } else {
                idx.insert(ep(e), cap, &hashes, order);
                model.insert(ep(e), cap, &hashes, order);
            }
            let total: usize = model.eps.iter().map(|x| x.2.len()).sum();
            prop_assert_eq!(idx.len(), total);
            for x in &model.eps {
                prop_assert_eq!(idx.endpoint_len(x.0), x.2.len());
            }
            if let Some(max) = max {
                prop_assert!(idx.len() <= max as usize);
            }
            for probe in [hashes.clone(), (0..48).map(h).collect::<Vec<u64>>()] {
                idx.match_longest(&probe, &mut m);
                m.sort();
                prop_assert_eq!(&m, &model.matches(&probe));
            }
        }
    }

    /// The bound holds after any sequence of inserts and retains, and matches never name an
    /// endpoint that was not inserted.
    #[test]
    fn index_bounded_and_consistent(
        ops in prop::collection::vec((0u64..12, 1u32..40, prop::collection::vec(0u64..64, 0..30), any::<bool>()), 1..80),
        max in 1u32..200,
    ) {
        let mut idx = PrefixIndex::new(Some(max));
        let mut seen = alloc::collections::BTreeSet::new();
        let mut m = vec![];
        for (e, cap, hashes, retain) in ops {
            if retain {
                let keep: Vec<u64> = seen.iter().copied().filter(|k| k % 2 == e % 2).collect();
                idx.retain_endpoints(&keep);
                seen.retain(|k| keep.contains(k));
            } else {
                idx.insert(ep(e), cap, &hashes, InsertOrder::Gie);
                seen.insert(ep(e));
                prop_assert!(idx.endpoint_len(ep(e)) <= cap as usize);
            }
            prop_assert!(idx.len() <= max as usize, "{} > {}", idx.len(), max);
            idx.match_longest(&hashes, &mut m);
            for (k, n) in &m {
                prop_assert!(seen.contains(k));
                prop_assert!(*n as usize <= hashes.len());
            }
        }
    }

    /// Hashing is a pure function of (model, salt, bytes), regardless of how the bytes are
    /// split between the two prompt segments, and equals the GIE chain built by copying each
    /// block and the previous hash together (`reference_chain`), for any block size and cap.
    #[test]
    fn segment_split_does_not_change_hashes(
        bytes in prop::collection::vec(any::<u8>(), 0..700),
        split in any::<prop::sample::Index>(),
        block in 1usize..130,
        max_blocks in 1usize..20,
        salt in prop::option::of("[a-z]{0,12}"),
    ) {
        let at = split.index(bytes.len() + 1);
        let salt = salt.as_deref();
        let whole = hash_prompt("m", salt, Prompt::from_bytes(&bytes), block, max_blocks);
        let parts = hash_prompt("m", salt, Prompt::from_parts(&bytes[..at], &bytes[at..]), block, max_blocks);
        prop_assert_eq!(whole.as_slice(), parts.as_slice());
        let reference = reference_chain("m", salt.unwrap_or(""), &bytes, block, max_blocks);
        prop_assert_eq!(whole.as_slice(), &reference[..]);
    }
}
