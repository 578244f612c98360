//! Bounded-load consistent hashing on the prompt prefix.
//!
//! Rendezvous (highest-random-weight) hashing ranks the candidates by `mix(key, endpoint)`;
//! the first in rank whose in-flight count is below the bound
//!
//! ```text
//! bound = max(min_bound, ⌈(1 + ε) × (total in flight + 1) / candidates⌉)
//! ```
//!
//! takes the request (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads",
//! SODA 2018, applied to rendezvous ranking). Properties the tests check:
//!
//! * the same key and the same candidates give the same endpoint on every worker and replica,
//!   with no shared state: the ranking depends only on the key and the endpoint keys;
//! * after taking the request, the chosen endpoint holds at most `bound` requests, so no endpoint
//!   exceeds (1 + ε) × the average load (rounded up) once the pool is busier than `min_bound`
//!   per endpoint. The floor exists because a model server batches many requests at once: with
//!   3 requests in flight over 8 pods the plain bound is 1, which would scatter every shared
//!   prefix and give up the cache hits the hashing is for;
//! * a bound always exists: if every candidate were at the bound, the total would exceed itself;
//! * removing an endpoint only moves the keys that ranked it first (rendezvous minimal disruption).

use crate::prefix::EndpointKey;

/// Seed of the ranking mix. Changing it moves every prefix to another pod, fleet-wide.
pub const RANK_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// The rendezvous weight of `endpoint` for `key` (a SplitMix64 finaliser over both).
#[inline]
pub fn rank(key: u64, endpoint: EndpointKey) -> u64 {
    let mut z = key ^ endpoint.rotate_left(32) ^ RANK_SEED;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `⌈x⌉` for finite non-negative `x` (core has no `f64::ceil` without std); saturates.
fn ceil_u64(x: f64) -> u64 {
    let t = x as u64;
    if (t as f64) < x {
        t.saturating_add(1)
    } else {
        t
    }
}

/// Chooses among `(id, endpoint key, in-flight requests)` candidates; `None` only when there
/// are none. `epsilon` must be > 0 (validated config).
pub fn choose<I, T>(key: u64, epsilon: f64, min_bound: u32, candidates: I) -> Option<T>
where
    I: Iterator<Item = (T, EndpointKey, u32)> + Clone,
    T: Copy,
{
    let (n, total) = candidates
        .clone()
        .fold((0u64, 0u64), |(n, t), (_, _, l)| (n + 1, t + l as u64));
    if n == 0 {
        return None;
    }
    let bound = ceil_u64((1.0 + epsilon) * (total + 1) as f64 / n as f64).max(min_bound as u64);
    // Walk the ranking from the top without sorting: repeatedly take the best-ranked candidate
    // not yet rejected. n is small (≤ a pool), and usually the first choice fits.
    let mut floor = u64::MAX; // ranks ≥ floor were already considered
    let mut floor_key = EndpointKey::MAX;
    loop {
        let mut best: Option<(u64, EndpointKey, T, u32)> = None;
        for (id, ep, l) in candidates.clone() {
            let r = rank(key, ep);
            // Strict order on (rank, endpoint key) so equal ranks cannot loop.
            let below_floor = (r, ep) < (floor, floor_key);
            if below_floor && best.is_none_or(|(br, bk, _, _)| (r, ep) > (br, bk)) {
                best = Some((r, ep, id, l));
            }
        }
        let (r, ep, id, l) = best?;
        if (l as u64) < bound {
            return Some(id);
        }
        floor = r;
        floor_key = ep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32-unknown-unknown the same tests run under wasm-bindgen-test (Node).
    use alloc::vec::Vec;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn eps(n: u64) -> Vec<(usize, EndpointKey, u32)> {
        (0..n)
            .map(|i| {
                (
                    i as usize,
                    crate::rng::Rng::next_u64(&mut crate::rng::SplitMix64::new(i + 1)),
                    0,
                )
            })
            .collect()
    }

    #[test]
    fn same_key_same_choice_regardless_of_candidate_order() {
        let c = eps(8);
        let mut rev = c.clone();
        rev.reverse();
        for key in 0..200u64 {
            let a = choose(key, 0.25, 0, c.iter().copied());
            let b = choose(key, 0.25, 0, rev.iter().copied());
            assert_eq!(a, b);
        }
    }

    #[test]
    fn removal_moves_only_keys_of_the_removed_endpoint() {
        let c = eps(8);
        let without: Vec<_> = c.iter().copied().filter(|e| e.0 != 3).collect();
        let mut moved = 0;
        for key in 0..2000u64 {
            let a = choose(key, 0.25, 0, c.iter().copied()).unwrap();
            let b = choose(key, 0.25, 0, without.iter().copied()).unwrap();
            if a != 3 {
                assert_eq!(a, b, "key {key} moved although its endpoint stayed");
            } else {
                moved += 1;
            }
        }
        // About 1/8 of the keys ranked endpoint 3 first.
        assert!((150..350).contains(&moved), "moved {moved}");
    }

    #[test]
    fn load_never_exceeds_the_bound() {
        // One hot key: every request has the same prefix. The bound spreads it.
        let mut c = eps(8);
        for step in 0..400u32 {
            let total: u64 = c.iter().map(|e| e.2 as u64).sum();
            let bound = ((1.25 * (total + 1) as f64) / 8.0).ceil() as u32;
            let id = choose(42, 0.25, 0, c.iter().copied()).unwrap();
            c[id].2 += 1;
            assert!(c[id].2 <= bound, "step {step}: load {} > bound {bound}", c[id].2);
        }
        let max = c.iter().map(|e| e.2).max().unwrap();
        assert!(max as f64 <= (1.25 * 400.0 / 8.0_f64).ceil() + 1.0);
    }

    #[test]
    fn min_bound_keeps_a_hot_prefix_together_at_low_load() {
        let mut c = eps(8);
        let first = choose(42, 0.25, 4, c.iter().copied()).unwrap();
        for _ in 0..4 {
            assert_eq!(choose(42, 0.25, 4, c.iter().copied()), Some(first));
            c[first].2 += 1;
        }
        // At the floor the next request moves on.
        assert_ne!(choose(42, 0.25, 4, c.iter().copied()), Some(first));
    }

    #[test]
    fn empty_candidates_give_none() {
        assert_eq!(choose::<_, usize>(1, 0.25, 0, core::iter::empty()), None);
    }
}
