//! Prompt-prefix hashing and the approximate prefix-cache index.
//!
//! Hashing follows GIE's approximate prefix cache exactly (epp.md §3.6; llm-d-router
//! `approximateprefix/hashing.go`): the prompt bytes are cut into blocks of
//! `block_size_tokens × chars_per_token` bytes (default 16 × 4 = 64); input longer than
//! `max_blocks` blocks is truncated; input shorter than one block yields no hashes; otherwise
//!
//! ```text
//! h0 = xxh64(model ‖ cache_salt, seed 0)
//! hᵢ = xxh64(blockᵢ ‖ le64(hᵢ₋₁), seed 0)        (a trailing partial block is hashed the same way)
//! ```
//!
//! Because each hash covers everything before it, "pod P holds hᵢ" approximates "P has the first
//! i blocks cached", and matching walks the hashes in order until the first miss.
//!
//! The index ([`PrefixIndex`]) maps block hashes to the endpoints that were sent them, with one
//! LRU per endpoint. Memory is bounded twice: per endpoint by its capacity (the pod's
//! `num_gpu_blocks`, else 31,250 as in GIE) and globally by `max_entries`, which caps every
//! endpoint at `max_entries / endpoints` so the total never exceeds `max_entries` entries of
//! [`PrefixIndex::ENTRY_BYTES`] bytes each (hash-table slot included).

use alloc::vec::Vec;
use hashbrown::HashMap;
use xxhash_rust::xxh64::xxh64;

use crate::xxh::{xxh64_chained, xxh64_concat};

use crate::scan::Prompt;

/// GIE's default block size in tokens (`defaultBlockSizeTokens`).
pub const DEFAULT_BLOCK_SIZE_TOKENS: u32 = 16;
/// GIE's characters-per-token estimate (`averageCharactersPerToken`).
pub const DEFAULT_CHARS_PER_TOKEN: u32 = 4;
/// GIE's `maxPrefixBlocksToMatch` code default.
pub const DEFAULT_MAX_BLOCKS: u32 = 256;
/// GIE's per-pod LRU capacity when the pod does not report `num_gpu_blocks`:
/// (80 GB − 16 GB) / 128 KB per token = 500K tokens / 16 = 31,250 blocks (epp.md §3.6).
pub const DEFAULT_LRU_CAPACITY: u32 = 31_250;

/// The chained block hashes of one request's prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixHashes {
    hashes: Vec<u64>,
    /// Blocks in the whole prompt, including those past the hashing cap.
    prompt_blocks: usize,
}

impl PrefixHashes {
    pub fn as_slice(&self) -> &[u64] {
        &self.hashes
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The hash covering the first `min(n, len)` blocks; `None` when there are no blocks.
    /// Consistent hashing keys on this so that requests sharing a leading prefix agree.
    pub fn prefix_key(&self, n: usize) -> Option<u64> {
        let n = n.min(self.hashes.len());
        if n == 0 {
            None
        } else {
            Some(self.hashes[n - 1])
        }
    }

    /// The consistent-hashing key: the hash covering the first half of the prompt's blocks, at
    /// most `max` blocks. Half, because what requests of one tenant or conversation share (a
    /// system prompt, a document, earlier turns) leads the prompt and the new question trails
    /// it: a fixed short key gives every request with a common preamble one key (one pod), a
    /// fixed long one gives requests sharing a short system prompt different keys (no agreement
    /// between workers and replicas).
    pub fn affinity_key(&self, max: usize) -> Option<u64> {
        self.prefix_key(max.min(self.prompt_blocks.div_ceil(2).max(1)))
    }
}

/// Computes the GIE block-hash chain of `prompt`. `block_bytes` must be > 0 (callers pass a
/// validated config); a zero block size yields no hashes rather than a panic.
pub fn hash_prompt(
    model: &str,
    cache_salt: Option<&str>,
    prompt: Prompt<'_>,
    block_bytes: usize,
    max_blocks: usize,
) -> PrefixHashes {
    let mut out = PrefixHashes::default();
    hash_prompt_into(model, cache_salt, prompt, block_bytes, max_blocks, &mut out);
    out
}

/// As [`hash_prompt`], reusing `out`'s allocation.
pub fn hash_prompt_into(
    model: &str,
    cache_salt: Option<&str>,
    prompt: Prompt<'_>,
    block_bytes: usize,
    max_blocks: usize,
    out: &mut PrefixHashes,
) {
    out.hashes.clear();
    out.prompt_blocks = 0;
    let total = prompt.len();
    if block_bytes == 0 || total < block_bytes || max_blocks == 0 {
        return;
    }
    out.prompt_blocks = total.div_ceil(block_bytes);
    let limit = total.min(block_bytes.saturating_mul(max_blocks));
    out.hashes.reserve(limit.div_ceil(block_bytes));

    let mut prev = seed_hash(model, cache_salt);
    // Each block is hashed where it lies (`xxh64_chained` reads it in place and appends the
    // previous hash in registers); only a block straddling the two segments has two parts.
    let [a, b] = *prompt.parts();
    let mut consumed = 0;
    while consumed < limit {
        let end = consumed + block_bytes.min(limit - consumed);
        let parts: [&[u8]; 2] = if end <= a.len() {
            [a.get(consumed..end).unwrap_or_default(), &[]]
        } else if consumed >= a.len() {
            [b.get(consumed - a.len()..end - a.len()).unwrap_or_default(), &[]]
        } else {
            [
                a.get(consumed..).unwrap_or_default(),
                b.get(..end - a.len()).unwrap_or_default(),
            ]
        };
        prev = xxh64_chained(parts, prev);
        out.hashes.push(prev);
        consumed = end;
    }
}

fn seed_hash(model: &str, cache_salt: Option<&str>) -> u64 {
    match cache_salt {
        Some(salt) if !salt.is_empty() => xxh64_concat(&[model.as_bytes(), salt.as_bytes()], 0),
        _ => xxh64(model.as_bytes(), 0),
    }
}

/// Stable identity of an endpoint across snapshots, workers and gateway replicas:
/// xxh64 (seed [`ENDPOINT_KEY_SEED`]) of its canonical `ip:port` text.
pub type EndpointKey = u64;

/// Seed for endpoint keys. It defines consistent-hashing placement across every worker and
/// replica; changing it reshuffles affinity fleet-wide, so it must never change.
pub const ENDPOINT_KEY_SEED: u64 = 0x7761_736d_2d65_7070; // "wasm-epp"

/// Which end of a prompt is most recent in an endpoint's LRU after [`PrefixIndex::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum InsertOrder {
    /// As GIE: first block least recent.
    Gie,
    /// First block most recent (ours).
    HeadMostRecent,
}

// === impl PrefixIndex ===

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    hash: u64,
    ep: u32, // slot in `eps`
    prev: u32,
    next: u32,      // per-endpoint LRU list, most recent at head
    same_hash: u32, // next node with the same hash (singly linked chain from `by_hash`)
}

#[derive(Clone, Debug)]
struct EpList {
    key: EndpointKey,
    head: u32,
    tail: u32,
    len: u32,
    capacity: u32,
}

/// Longest-prefix index over chained block hashes with a per-endpoint LRU and a hard global
/// bound. Sans-IO and deterministic; one instance per worker (or rebuilt from shared data).
#[derive(Clone, Debug)]
pub struct PrefixIndex {
    nodes: Vec<Node>,
    free: u32,
    by_hash: HashMap<u64, u32, BuildIdentity>,
    eps: Vec<EpList>,
    ep_slot: HashMap<EndpointKey, u32, BuildIdentity>,
    max_entries: u32,
}

impl PrefixIndex {
    /// Upper bound of bytes per entry: the node (32 bytes) plus a hash-table slot for its hash
    /// (8-byte key + 4-byte value + control byte, at hashbrown's worst-case 1/2 load after
    /// growth ≈ 26 bytes), rounded up.
    pub const ENTRY_BYTES: usize = 64;

    /// `max_entries` is the hard cap on (hash, endpoint) pairs held at once.
    pub fn new(max_entries: u32) -> Self {
        PrefixIndex {
            nodes: Vec::new(),
            free: NIL,
            by_hash: HashMap::with_hasher(BuildIdentity),
            eps: Vec::new(),
            ep_slot: HashMap::with_hasher(BuildIdentity),
            max_entries: max_entries.max(1),
        }
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    /// Entries currently held.
    pub fn len(&self) -> usize {
        self.eps.iter().map(|e| e.len as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Worst-case bytes held for `max_entries` entries (the documented memory bound).
    pub fn memory_bound_bytes(&self) -> usize {
        self.max_entries as usize * Self::ENTRY_BYTES
    }

    /// Entries held for one endpoint.
    pub fn endpoint_len(&self, ep: EndpointKey) -> usize {
        self.ep_slot.get(&ep).map_or(0, |&s| self.eps[s as usize].len as usize)
    }

    /// Effective capacity of an endpoint: its own capacity, capped by an equal share of the
    /// global bound among the endpoints the index knows.
    fn effective_capacity(&self, own: u32) -> u32 {
        let n = (self.eps.len() as u32).max(1);
        // Zero when there are more endpoints than entries: the bound wins over coverage.
        own.min(self.max_entries / n)
    }

    /// GIE's `matchLongestPrefix`: walk the hashes in order, stop at the first hash that no
    /// endpoint holds, and give every endpoint holding the current hash one more matched block.
    /// Writes `(endpoint, matched_blocks)` into `out` for endpoints with at least one match.
    pub fn match_longest(&self, hashes: &[u64], out: &mut Vec<(EndpointKey, u32)>) {
        out.clear();
        // Count per endpoint slot: O(hashes × holders), no search per node.
        let mut counts: Vec<u32> = Vec::new();
        for h in hashes {
            let Some(&first) = self.by_hash.get(h) else {
                break;
            };
            if counts.is_empty() {
                counts.resize(self.eps.len(), 0);
            }
            let mut n = first;
            while n != NIL {
                let node = &self.nodes[n as usize];
                if let Some(c) = counts.get_mut(node.ep as usize) {
                    *c += 1;
                }
                n = node.same_hash;
            }
        }
        out.extend(
            counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(slot, c)| (self.eps[slot].key, *c)),
        );
    }

    /// Records that `ep` was sent a request with these hashes: each hash becomes (or is
    /// refreshed as) the most recent entry of `ep`'s LRU; least recent entries beyond the
    /// endpoint's capacity are evicted. `capacity` is the pod's `num_gpu_blocks` (or the default).
    ///
    /// With [`InsertOrder::Gie`] hashes are touched first to last, as GIE does, so the *first*
    /// blocks become least recent and are evicted first. [`InsertOrder::HeadMostRecent`] touches
    /// them last to first, so a prompt's head (the part other requests share) outlives its tail.
    pub fn insert(&mut self, ep: EndpointKey, capacity: u32, hashes: &[u64], order: InsertOrder) {
        let slot = self.slot_for(ep, capacity);
        let cap = self.effective_capacity(self.eps[slot as usize].capacity);
        // The pod may report fewer GPU blocks than before.
        while self.eps[slot as usize].len > cap {
            self.evict_tail(slot);
        }
        // Evict as we go, so the bound holds at every instant, not just between calls.
        match order {
            InsertOrder::Gie => hashes.iter().for_each(|&h| self.touch(slot, h, cap)),
            InsertOrder::HeadMostRecent => hashes.iter().rev().for_each(|&h| self.touch(slot, h, cap)),
        }
    }

    /// Drops every endpoint not in `keep` (pods that left the pool), freeing their entries.
    pub fn retain_endpoints(&mut self, keep: &[EndpointKey]) {
        let mut s = 0;
        while (s as usize) < self.eps.len() {
            if keep.contains(&self.eps[s as usize].key) {
                s += 1;
            } else {
                while self.eps[s as usize].len > 0 {
                    self.evict_tail(s);
                }
                self.remove_slot(s);
            }
        }
    }

    /// Makes `h` the most recent entry of endpoint slot `slot`, adding it if absent.
    fn touch(&mut self, slot: u32, h: u64, cap: u32) {
        if let Some(n) = self.find(h, slot) {
            self.unlink_lru(n);
            self.push_front(slot, n);
        } else {
            let n = self.alloc(Node {
                hash: h,
                ep: slot,
                prev: NIL,
                next: NIL,
                same_hash: NIL,
            });
            let head = self.by_hash.entry(h).or_insert(NIL);
            self.nodes[n as usize].same_hash = *head;
            *head = n;
            self.push_front(slot, n);
            self.eps[slot as usize].len += 1;
            if self.eps[slot as usize].len > cap {
                self.evict_tail(slot);
            }
        }
    }

    fn slot_for(&mut self, ep: EndpointKey, capacity: u32) -> u32 {
        if let Some(&s) = self.ep_slot.get(&ep) {
            self.eps[s as usize].capacity = capacity.max(1);
            return s;
        }
        let s = self.eps.len() as u32;
        self.eps.push(EpList {
            key: ep,
            head: NIL,
            tail: NIL,
            len: 0,
            capacity: capacity.max(1),
        });
        self.ep_slot.insert(ep, s);
        // A new endpoint shrinks everyone's share of the global bound; trim the others now so
        // the total stays within `max_entries`.
        let cap_each = self.max_entries / self.eps.len() as u32;
        for o in 0..s {
            let cap = self.eps[o as usize].capacity.min(cap_each);
            while self.eps[o as usize].len > cap {
                self.evict_tail(o);
            }
        }
        s
    }

    /// Removes an empty endpoint slot by moving the last slot into its place.
    fn remove_slot(&mut self, s: u32) {
        let key = self.eps[s as usize].key;
        self.ep_slot.remove(&key);
        let last = self.eps.len() as u32 - 1;
        self.eps.swap_remove(s as usize);
        if s != last {
            let moved_key = self.eps[s as usize].key;
            self.ep_slot.insert(moved_key, s);
            let mut n = self.eps[s as usize].head;
            while n != NIL {
                self.nodes[n as usize].ep = s;
                n = self.nodes[n as usize].next;
            }
        }
    }

    fn find(&self, h: u64, slot: u32) -> Option<u32> {
        let mut n = *self.by_hash.get(&h)?;
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.ep == slot {
                return Some(n);
            }
            n = node.same_hash;
        }
        None
    }

    fn alloc(&mut self, node: Node) -> u32 {
        if self.free != NIL {
            let n = self.free;
            self.free = self.nodes[n as usize].next;
            self.nodes[n as usize] = node;
            n
        } else {
            self.nodes.push(node);
            self.nodes.len() as u32 - 1
        }
    }

    fn push_front(&mut self, slot: u32, n: u32) {
        let head = self.eps[slot as usize].head;
        self.nodes[n as usize].prev = NIL;
        self.nodes[n as usize].next = head;
        if head != NIL {
            self.nodes[head as usize].prev = n;
        } else {
            self.eps[slot as usize].tail = n;
        }
        self.eps[slot as usize].head = n;
    }

    fn unlink_lru(&mut self, n: u32) {
        let Node { prev, next, ep, .. } = self.nodes[n as usize];
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.eps[ep as usize].head = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            self.eps[ep as usize].tail = prev;
        }
    }

    fn evict_tail(&mut self, slot: u32) {
        let n = self.eps[slot as usize].tail;
        if n == NIL {
            return;
        }
        self.unlink_lru(n);
        self.eps[slot as usize].len -= 1;
        // Unlink from the same-hash chain.
        let h = self.nodes[n as usize].hash;
        if let Some(head) = self.by_hash.get_mut(&h) {
            if *head == n {
                let next = self.nodes[n as usize].same_hash;
                if next == NIL {
                    self.by_hash.remove(&h);
                } else {
                    *head = next;
                }
            } else {
                let mut p = *head;
                while p != NIL {
                    let next = self.nodes[p as usize].same_hash;
                    if next == n {
                        self.nodes[p as usize].same_hash = self.nodes[n as usize].same_hash;
                        break;
                    }
                    p = next;
                }
            }
        }
        self.nodes[n as usize].next = self.free;
        self.free = n;
    }
}

/// Keys here are already xxh64 outputs (uniform), so hashing them again is wasted work.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildIdentity;

#[derive(Debug, Default)]
pub struct IdentityHasher(u64);

impl core::hash::BuildHasher for BuildIdentity {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

impl core::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u64 keys, which this crate never uses; fold them anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
#[path = "prefix_tests.rs"]
mod tests;
