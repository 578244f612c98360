//! Paged KV cache with automatic prefix caching, after vLLM V1's `BlockPool` / `KVCacheManager`.
//!
//! ```text
//!  blocks: [0][1][2] … [N-1]       ref_count > 0: held by running sequences
//!  free queue (LRU → MRU): ─▶ b7 ─ b3 ─ b9 ─▶   ref_count == 0; may still carry a hash
//!  cached: hash → block            a block is found by its hash until it is reallocated
//! ```
//!
//! * A full block of prompt tokens gets the chained hash of everything up to it; a later request
//!   with the same leading hashes reuses those blocks (a hit), taking them off the free queue if
//!   no one held them.
//! * Allocation pops the least recently freed block; if it carried a hash the hash is evicted.
//! * Releasing a sequence returns its blocks to the MRU end in *reverse* order, so a prompt's
//!   tail is evicted before its head (vLLM `free_blocks(reversed(...))`).
//! * Usage, as exported by `vllm:kv_cache_usage_perc`, is `1 − free / total`: cached but
//!   unreferenced blocks count as free.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const NIL: u32 = u32::MAX;

/// The keys are already xxh64 outputs: hashing them again (SipHash) only costs time.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type HashIndex = HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>;

/// The block pool of one server.
#[derive(Clone, Debug)]
pub struct KvCache {
    ref_count: Vec<u32>,
    hash: Vec<Option<u64>>,
    prev: Vec<u32>,
    next: Vec<u32>,
    in_free: Vec<bool>,
    head: u32,
    tail: u32,
    free_len: u32,
    cached: HashIndex,
    /// Blocks evicted from the cache so far (a hash lost on reallocation).
    pub evictions: u64,
}

impl KvCache {
    pub fn new(num_blocks: u32) -> Self {
        let n = num_blocks as usize;
        let mut kv = KvCache {
            ref_count: vec![0; n],
            hash: vec![None; n],
            prev: vec![NIL; n],
            next: vec![NIL; n],
            in_free: vec![false; n],
            head: NIL,
            tail: NIL,
            free_len: 0,
            cached: HashIndex::default(),
            evictions: 0,
        };
        for b in 0..num_blocks {
            kv.push_back(b);
        }
        kv
    }

    pub fn num_blocks(&self) -> u32 {
        self.ref_count.len() as u32
    }

    /// Blocks that can be allocated now (unreferenced, cached or not).
    pub fn free_blocks(&self) -> u32 {
        self.free_len
    }

    /// `vllm:kv_cache_usage_perc`: fraction of blocks referenced by sequences.
    pub fn usage(&self) -> f64 {
        if self.ref_count.is_empty() {
            return 0.0;
        }
        1.0 - self.free_len as f64 / self.ref_count.len() as f64
    }

    /// Number of leading `hashes` whose blocks are resident.
    pub fn lookup_prefix(&self, hashes: &[u64]) -> usize {
        hashes.iter().take_while(|h| self.cached.contains_key(h)).count()
    }

    /// [`lookup_prefix`](Self::lookup_prefix) and, of those leading resident blocks, how many sit
    /// in the free queue (taking them reduces the free count), in one pass.
    pub fn lookup_prefix_free(&self, hashes: &[u64]) -> (usize, u32) {
        let mut n = 0;
        let mut free = 0;
        for h in hashes {
            let Some(&b) = self.cached.get(h) else { break };
            n += 1;
            free += self.in_free[b as usize] as u32;
        }
        (n, free)
    }

    /// Whether the block with this hash is resident.
    pub fn contains(&self, hash: u64) -> bool {
        self.cached.contains_key(&hash)
    }

    /// Takes a reference on the resident blocks of `hashes` (all must be resident: call
    /// [`lookup_prefix`](Self::lookup_prefix) first) and appends them to `out`.
    pub fn acquire_cached(&mut self, hashes: &[u64], out: &mut Vec<u32>) {
        for h in hashes {
            let b = self.cached[h];
            if self.ref_count[b as usize] == 0 {
                self.unlink(b);
            }
            self.ref_count[b as usize] += 1;
            out.push(b);
        }
    }

    /// Allocates one block (the least recently freed), evicting its hash. `None` when full.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        if let Some(h) = self.hash[b as usize].take() {
            if self.cached.get(&h) == Some(&b) {
                self.cached.remove(&h);
                self.evictions += 1;
            }
        }
        self.ref_count[b as usize] = 1;
        Some(b)
    }

    /// Marks a held block as holding the full prompt block `hash` (first writer wins, as in
    /// vLLM, which keeps one block per hash).
    pub fn set_hash(&mut self, block: u32, hash: u64) {
        if self.hash[block as usize].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(block);
            self.hash[block as usize] = Some(hash);
        }
    }

    /// Drops one reference on each block, returning unreferenced ones to the free queue's MRU
    /// end in reverse order (tail blocks are evicted first).
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            let rc = &mut self.ref_count[b as usize];
            debug_assert!(*rc > 0, "double free of block {b}");
            *rc = rc.saturating_sub(1);
            if *rc == 0 {
                self.push_back(b);
            }
        }
    }

    fn push_back(&mut self, b: u32) {
        let i = b as usize;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail != NIL {
            self.next[self.tail as usize] = b;
        } else {
            self.head = b;
        }
        self.tail = b;
        self.in_free[i] = true;
        self.free_len += 1;
    }

    fn unlink(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.in_free[i]);
        let (p, n) = (self.prev[i], self.next[i]);
        if p != NIL {
            self.next[p as usize] = n;
        } else {
            self.head = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        } else {
            self.tail = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.in_free[i] = false;
        self.free_len -= 1;
    }

    /// Invariant check for tests: the free list, the flags and the counts agree.
    #[cfg(test)]
    pub fn check(&self) {
        let mut n = 0;
        let mut b = self.head;
        while b != NIL {
            assert!(self.in_free[b as usize]);
            assert_eq!(self.ref_count[b as usize], 0);
            n += 1;
            b = self.next[b as usize];
        }
        assert_eq!(n, self.free_len);
        for (h, &b) in &self.cached {
            assert_eq!(self.hash[b as usize], Some(*h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc_n(kv: &mut KvCache, n: usize) -> Vec<u32> {
        (0..n).map(|_| kv.allocate().expect("space")).collect()
    }

    #[test]
    fn cached_prefix_survives_release_and_is_reused() {
        let mut kv = KvCache::new(8);
        let a = alloc_n(&mut kv, 3);
        for (i, &b) in a.iter().enumerate() {
            kv.set_hash(b, 100 + i as u64);
        }
        assert_eq!(kv.usage(), 3.0 / 8.0);
        kv.release(&a);
        assert_eq!(kv.free_blocks(), 8);
        assert_eq!(kv.lookup_prefix(&[100, 101, 102, 103]), 3);
        assert_eq!(kv.lookup_prefix(&[999, 101]), 0, "the match stops at the first miss");
        let mut held = Vec::new();
        kv.acquire_cached(&[100, 101], &mut held);
        assert_eq!(held, &a[..2]);
        assert_eq!(kv.free_blocks(), 6);
        kv.check();
    }

    #[test]
    fn allocation_evicts_least_recent_and_tail_first() {
        let mut kv = KvCache::new(4);
        let a = alloc_n(&mut kv, 4);
        for (i, &b) in a.iter().enumerate() {
            kv.set_hash(b, i as u64);
        }
        assert!(kv.allocate().is_none(), "full");
        kv.release(&a); // tail (hash 3) becomes least recent
        let b = kv.allocate().unwrap();
        assert_eq!(b, a[3]);
        assert_eq!(kv.evictions, 1);
        assert_eq!(kv.lookup_prefix(&[0, 1, 2, 3]), 3, "the head survives");
        let _ = kv.allocate().unwrap();
        assert_eq!(kv.lookup_prefix(&[0, 1, 2, 3]), 2);
        kv.check();
    }

    #[test]
    fn shared_blocks_are_refcounted() {
        let mut kv = KvCache::new(4);
        let a = alloc_n(&mut kv, 2);
        kv.set_hash(a[0], 7);
        kv.set_hash(a[1], 8);
        let mut other = Vec::new();
        kv.acquire_cached(&[7, 8], &mut other);
        kv.release(&a);
        assert_eq!(kv.free_blocks(), 2, "still held by the second sequence");
        kv.release(&other);
        assert_eq!(kv.free_blocks(), 4);
        kv.check();
    }

    #[test]
    fn first_writer_of_a_hash_wins() {
        let mut kv = KvCache::new(4);
        let a = alloc_n(&mut kv, 2);
        kv.set_hash(a[0], 5);
        kv.set_hash(a[1], 5);
        kv.release(&a);
        let mut held = Vec::new();
        kv.acquire_cached(&[5], &mut held);
        assert_eq!(held, [a[0]]);
        kv.check();
    }
}
