//! One-shot XXH64 over a logical concatenation of byte slices, without copying them together.
//!
//! The prefix hash chain ([`crate::prefix`]) hashes `blockᵢ ‖ le64(hᵢ₋₁)` for every block of the
//! prompt, and a block may straddle the prompt's two segments. [`xxh64_chained`] computes exactly
//! `xxh64(parts[0] ‖ parts[1] ‖ le64(prev), seed 0)` (bit-identical to `xxhash_rust`'s one-shot
//! `xxh64`) reading the block in place: no scratch buffer, no copy of the block.
//!
//! XXH64 in brief (the reference specification, `xxhash_spec.md`):
//!
//! * inputs of 32 bytes or more are consumed in 32-byte stripes by four lanes
//!   (`v ← rotl(v + w·P2, 31)·P1`, one little-endian 64-bit word `w` per lane), started at
//!   `seed + P1 + P2`, `seed + P2`, `seed`, `seed − P1`, then converged
//!   (`rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)`) and each lane merged in;
//!   shorter inputs start from `seed + P5`;
//! * the total length is added;
//! * the remaining (< 32) bytes are consumed as 8-byte words, then one 4-byte word, then single
//!   bytes;
//! * a final avalanche spreads the bits.
//!
//! Fast path: a block wholly inside one segment (all blocks but the one straddling the two
//! segments). Its whole 8-byte words are read in place; the word that straddles the block's end
//! and `le64(prev)`, and the bytes of `prev` after it, are formed in registers (shifts of one
//! 8-byte load of the block's end and of `prev`), so nothing is copied and no byte loop runs
//! over the block. A block straddling the segments (at most one per prompt) goes through the
//! streaming engine behind [`xxh64_concat`], which also reads whole stripes and words in place
//! and assembles only the word crossing each boundary in a register. That engine is slower per
//! block than the fast path (2–3×) and than copying into a buffer (1.5–2×), which is
//! negligible at one block per prompt.
//!
//! Nothing here can panic: every read goes through `as_chunks`, `split_first_chunk`,
//! `split_last_chunk`, `split_at_checked` or `get_mut`, which return what is there instead of
//! indexing; shifts stay below 64 and lengths are counted in `u64` with wrapping arithmetic.
//! The tests check every split point of every length up to 200 bytes against `xxhash_rust`.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// Bytes per stripe (four lanes of one 64-bit word each).
const STRIPE: usize = 32;

/// `xxh64(parts[0] ‖ parts[1] ‖ prev.to_le_bytes(), seed 0)`, reading the parts in place.
///
/// Either part may be empty (a block inside one prompt segment passes `[block, &[]]`).
#[inline]
pub fn xxh64_chained(parts: [&[u8]; 2], prev: u64) -> u64 {
    let [a, b] = parts;
    let one = match (a.is_empty(), b.is_empty()) {
        (_, true) => a,
        (true, false) => b,
        (false, false) => return straddling(a, b, prev),
    };
    one_then_word(one, prev, 0)
}

/// The block straddling the two segments (at most one per prompt). Out of line so that the fast
/// path stays small enough to inline into the caller's loop; the stream's methods are all
/// inlined here, so its state is not passed around by pointer.
#[inline(never)]
fn straddling(a: &[u8], b: &[u8], prev: u64) -> u64 {
    let mut s = WordStream::new(0);
    s.feed(a);
    s.feed(b);
    s.feed_u64(prev);
    s.finish()
}

/// `xxh64(parts[0] ‖ parts[1] ‖ …, seed)`, reading the parts in place: whole stripes and words
/// are read where they lie, and a word that straddles part boundaries is assembled in a
/// register.
pub fn xxh64_concat(parts: &[&[u8]], seed: u64) -> u64 {
    let mut s = WordStream::new(seed);
    for part in parts {
        s.feed(part);
    }
    s.finish()
}

/// XXH64 over a stream of parts. Every 4 words make a stripe; the words left over at the end
/// (< 4) are the tail words, and the bytes left over (< 8) the tail bytes, so the stripe count
/// needs no look-ahead. Stripes lying wholly inside a part are read in place.
struct WordStream {
    seed: u64,
    v: [u64; 4],
    /// Whether any stripe went into the lanes (i.e. total ≥ 32).
    striped: bool,
    /// Words of the current, incomplete stripe: `queue[..queued]`, `queued < 4`.
    queue: [u64; 4],
    queued: usize,
    /// Bytes of the current, incomplete word (little-endian): `acc_len < 8`.
    acc: u64,
    acc_len: usize,
    total: u64,
}

impl WordStream {
    #[inline(always)]
    fn new(seed: u64) -> Self {
        WordStream {
            seed,
            v: lanes_init(seed),
            striped: false,
            queue: [0; 4],
            queued: 0,
            acc: 0,
            acc_len: 0,
            total: 0,
        }
    }

    #[inline(always)]
    fn push(&mut self, w: u64) {
        if let Some(slot) = self.queue.get_mut(self.queued) {
            *slot = w;
        }
        self.queued += 1;
        if self.queued >= 4 {
            stripe(&mut self.v, self.queue);
            self.striped = true;
            self.queued = 0;
        }
    }

    /// Whole words: first those completing the queued stripe, then whole stripes in place,
    /// then the rest into the queue.
    #[inline(always)]
    fn push_words(&mut self, mut words: &[[u8; 8]]) {
        while self.queued != 0 {
            let Some((w, rest)) = words.split_first() else { return };
            self.push(le(w));
            words = rest;
        }
        let (stripes, rest) = words.as_chunks::<4>();
        for [w0, w1, w2, w3] in stripes {
            stripe(&mut self.v, [le(w0), le(w1), le(w2), le(w3)]);
        }
        self.striped |= !stripes.is_empty();
        for w in rest {
            self.push(le(w));
        }
    }

    #[inline(always)]
    fn feed(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.acc_len != 0 {
            // 1..=7 bytes pending: complete the word from the front of `data` if it can.
            let have = self.acc_len.min(7);
            let (head, rest) = data.split_at_checked(8 - have).unwrap_or((data, &[]));
            self.acc |= load_partial(head) << (8 * have);
            self.acc_len += head.len();
            data = rest;
            if self.acc_len < 8 {
                return;
            }
            self.push(self.acc);
            (self.acc, self.acc_len) = (0, 0);
        }
        let (words, rest) = data.as_chunks::<8>();
        self.push_words(words);
        (self.acc, self.acc_len) = (load_partial(rest), rest.len());
    }

    /// Feeds the 8 bytes of `x` (little-endian) without going through memory.
    #[inline(always)]
    fn feed_u64(&mut self, x: u64) {
        self.total = self.total.wrapping_add(8);
        if self.acc_len == 0 {
            self.push(x);
        } else {
            let have = self.acc_len.min(7);
            self.push(self.acc | (x << (8 * have)));
            self.acc = x >> (64 - 8 * have);
        }
    }

    #[inline(always)]
    fn finish(&self) -> u64 {
        let mut h = if self.striped {
            converge(&self.v)
        } else {
            self.seed.wrapping_add(P5)
        };
        h = h.wrapping_add(self.total);
        for &w in self.queue.iter().take(self.queued) {
            h = tail_word(h, w);
        }
        avalanche(tail_partial(h, self.acc, self.acc_len))
    }
}

/// The little-endian value of `s` (at most 7 bytes; a longer `s` is cut at 7), without a byte
/// loop.
#[inline(always)]
fn load_partial(mut s: &[u8]) -> u64 {
    let (mut x, mut shift) = (0u64, 0u32);
    if let Some((c, rest)) = s.split_first_chunk::<4>() {
        x = u64::from(u32::from_le_bytes(*c));
        shift = 32;
        s = rest;
    }
    if let Some((c, rest)) = s.split_first_chunk::<2>() {
        x |= u64::from(u16::from_le_bytes(*c)) << shift;
        shift += 16;
        s = rest;
    }
    if let Some(&c) = s.first() {
        x |= u64::from(c) << shift;
    }
    x
}

/// The last `len` (< 8) bytes of the message, held little-endian in `x`: a 4-byte step if there
/// are 4, then byte steps.
#[inline(always)]
fn tail_partial(mut h: u64, mut x: u64, mut len: usize) -> u64 {
    if len >= 4 {
        h = tail_u32(h, x as u32);
        x >>= 32;
        len -= 4;
    }
    for _ in 0..len.min(3) {
        h = tail_byte(h, x as u8);
        x >>= 8;
    }
    h
}

/// `xxh64(data ‖ le64(last), seed)` for one contiguous `data`. The message is
/// `stripes ‖ words ‖ w ‖ x`: whole stripes and words of `data` read in place; one word `w`
/// made of the last `k = len % 8` bytes of `data` and the low `8 − k` bytes of `last`; and the
/// `k` high bytes `x` of `last`. Everything past `data`'s whole words is in registers, and no
/// byte of `data` is read one at a time unless `data` is shorter than 8 bytes.
#[inline(always)]
fn one_then_word(data: &[u8], last: u64, seed: u64) -> u64 {
    // Wrapping: XXH64 adds the length modulo 2^64, and overflow checks are on in tests.
    let total = (data.len() as u64).wrapping_add(8);
    let (stripes, rem) = data.as_chunks::<STRIPE>();
    let (words, t) = rem.as_chunks::<8>();
    let k = t.len(); // < 8
    let (w, x) = if k == 0 {
        (last, 0)
    } else {
        // The last k bytes of data, low in a u64: one load of data's last 8 bytes when there
        // are 8, else (data is those k bytes) a partial load.
        let tv = match data.split_last_chunk::<8>() {
            Some((_, last8)) => le(last8) >> (8 * (8 - k)),
            None => load_partial(t),
        };
        (tv | (last << (8 * k)), last >> (64 - 8 * k))
    };
    let mut v = lanes_init(seed);
    for s in stripes {
        stripe(&mut v, stripe_words(s));
    }
    let h = match words {
        // 24 bytes + `w` make one more full stripe; only `x` is left over.
        [w0, w1, w2] => {
            stripe(&mut v, [le(w0), le(w1), le(w2), w]);
            converge(&v).wrapping_add(total)
        }
        // Otherwise at most 16 + 8 + 7 = 31 bytes follow the stripes, so total ≥ 32 exactly
        // when there was a stripe.
        _ => {
            let h = if stripes.is_empty() {
                seed.wrapping_add(P5)
            } else {
                converge(&v)
            };
            let mut h = h.wrapping_add(total);
            for word in words {
                h = tail_word(h, le(word));
            }
            tail_word(h, w)
        }
    };
    avalanche(tail_partial(h, x, k))
}

#[inline(always)]
fn le(w: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*w)
}

#[inline(always)]
fn stripe_words(s: &[u8; STRIPE]) -> [u64; 4] {
    let mut out = [0u64; 4];
    let (words, _) = s.as_chunks::<8>();
    for (o, w) in out.iter_mut().zip(words) {
        *o = le(w);
    }
    out
}

#[inline(always)]
fn lanes_init(seed: u64) -> [u64; 4] {
    [
        seed.wrapping_add(P1).wrapping_add(P2),
        seed.wrapping_add(P2),
        seed,
        seed.wrapping_sub(P1),
    ]
}

#[inline(always)]
fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline(always)]
fn stripe(v: &mut [u64; 4], w: [u64; 4]) {
    for (lane, word) in v.iter_mut().zip(w) {
        *lane = round(*lane, word);
    }
}

#[inline(always)]
fn merge(h: u64, lane: u64) -> u64 {
    (h ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P4)
}

/// Converges the four lanes into one (inputs of ≥ 32 bytes), before the length is added.
#[inline(always)]
fn converge(v: &[u64; 4]) -> u64 {
    let [v1, v2, v3, v4] = *v;
    let h = v1
        .rotate_left(1)
        .wrapping_add(v2.rotate_left(7))
        .wrapping_add(v3.rotate_left(12))
        .wrapping_add(v4.rotate_left(18));
    merge(merge(merge(merge(h, v1), v2), v3), v4)
}

#[inline(always)]
fn tail_word(h: u64, w: u64) -> u64 {
    (h ^ round(0, w)).rotate_left(27).wrapping_mul(P1).wrapping_add(P4)
}

#[inline(always)]
fn tail_u32(h: u64, x: u32) -> u64 {
    (h ^ u64::from(x).wrapping_mul(P1))
        .rotate_left(23)
        .wrapping_mul(P2)
        .wrapping_add(P3)
}

#[inline(always)]
fn tail_byte(h: u64, x: u8) -> u64 {
    (h ^ u64::from(x).wrapping_mul(P5)).rotate_left(11).wrapping_mul(P1)
}

#[inline(always)]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32-unknown-unknown the same tests run under wasm-bindgen-test (Node).
    use alloc::vec::Vec;
    use proptest::prelude::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;
    use xxhash_rust::xxh64::xxh64;

    /// The reference: copy everything together and hash with `xxhash_rust`.
    fn reference(a: &[u8], b: &[u8], prev: u64) -> u64 {
        xxh64(&[a, b, &prev.to_le_bytes()].concat(), 0)
    }

    /// Deterministic non-trivial bytes (every byte value, varying position).
    fn bytes(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(151).wrapping_add((i >> 8) as u8) ^ 0x5A)
            .collect()
    }

    const EDGES: [usize; 15] = [0, 1, 3, 4, 7, 8, 31, 32, 33, 63, 64, 72, 95, 96, 100];

    #[test]
    fn known_answers() {
        assert_eq!(xxh64_concat(&[], 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64_concat(&[b""], 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64_concat(&[b"", b"", b""], 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64_concat(&[b"a"], 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64_concat(&[b"ab", b"c"], 0), 0x44BC_2CF5_AD77_0999);
        // The chain's first step over an empty block: xxh64(le64(prev)).
        assert_eq!(xxh64_chained([b"", b""], 0), xxh64(&[0u8; 8], 0));
    }

    /// Every edge length, every split point, a few `prev` values: the fast path (one segment,
    /// either side), the straddling path, and the partial-block tails all agree with the
    /// reference.
    #[test]
    fn edge_lengths_all_splits() {
        for &n in &EDGES {
            let data = bytes(n);
            for prev in [0, 1, u64::MAX, 0x0123_4567_89AB_CDEF] {
                for split in 0..=n {
                    let (a, b) = data.split_at(split);
                    assert_eq!(
                        xxh64_chained([a, b], prev),
                        reference(a, b, prev),
                        "n={n} split={split}"
                    );
                }
                assert_eq!(xxh64_chained([&data, &[]], prev), reference(&data, &[], prev), "n={n}");
                assert_eq!(xxh64_chained([&[], &data], prev), reference(&[], &data, prev), "n={n}");
            }
        }
    }

    /// Every length 0..=200 (every remainder mod 32 and mod 8, with and without stripes), all
    /// splits, against `xxhash_rust`; and `xxh64_concat` with three parts and a seed.
    #[test]
    fn every_length_every_split() {
        let data = bytes(200);
        for n in 0..=200 {
            let d = &data[..n];
            for split in 0..=n {
                let (a, b) = d.split_at(split);
                assert_eq!(
                    xxh64_chained([a, b], 0xDEAD_BEEF),
                    reference(a, b, 0xDEAD_BEEF),
                    "n={n} split={split}"
                );
            }
            for seed in [0, 7, u64::MAX] {
                let (x, y) = d.split_at(n / 3);
                let (y, z) = y.split_at(y.len() / 2);
                assert_eq!(xxh64_concat(&[x, y, z], seed), xxh64(d, seed), "n={n} seed={seed}");
                assert_eq!(xxh64_concat(&[d], seed), xxh64(d, seed), "n={n} seed={seed}");
            }
        }
    }

    /// Many small parts (including empty ones), so that words and stripes straddle several
    /// parts and part boundaries fall on every offset of a word.
    #[test]
    fn many_small_parts() {
        let data = bytes(300);
        for width in 1..=40 {
            let parts: Vec<&[u8]> = data.chunks(width).flat_map(|c| [c, &[][..]]).collect();
            assert_eq!(xxh64_concat(&parts, 3), xxh64(&data, 3), "width={width}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn chained_matches_reference(
            a in proptest::collection::vec(any::<u8>(), 0..300),
            b in proptest::collection::vec(any::<u8>(), 0..300),
            prev in any::<u64>(),
        ) {
            prop_assert_eq!(xxh64_chained([&a, &b], prev), reference(&a, &b, prev));
        }

        /// One empty segment (the fast path, every block but a straddling one) is rare among
        /// arbitrary pairs; force it, on either side, at every length up to 320.
        #[test]
        fn chained_one_segment_matches_reference(
            len in 0usize..=320,
            data in proptest::collection::vec(any::<u8>(), 320),
            prev in any::<u64>(),
            second in any::<bool>(),
        ) {
            let block = &data[..len];
            let parts: [&[u8]; 2] = if second { [&[], block] } else { [block, &[]] };
            prop_assert_eq!(xxh64_chained(parts, prev), reference(block, &[], prev));
        }

        #[test]
        fn concat_matches_reference(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..6),
            seed in any::<u64>(),
        ) {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(xxh64_concat(&refs, seed), xxh64(&parts.concat(), seed));
        }
    }
}
