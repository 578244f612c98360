//! Prompt-prefix hashing and the approximate prefix-cache index.
//!
//! Hashing follows GIE's approximate prefix cache exactly (`docs/epp.md`, "Approximate prefix
//! cache"; llm-d-router `approximateprefix/hashing.go`): the prompt bytes are cut into blocks of
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
//! LRU per endpoint. Memory is bounded per endpoint by its capacity (the pod's `num_gpu_blocks`,
//! else 31,250 as in GIE) and, when configured (our profile, for the proxy's memory budget), by
//! a global `max_entries`, which caps every endpoint at `max_entries / endpoints` so the total
//! never exceeds `max_entries` entries of [`PrefixIndex::ENTRY_BYTES`] bytes each (hash-table
//! slot included). A GIE-sized index (8 pods × 19,208 blocks) is ≈ 5 MiB.

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
/// (80 GB − 16 GB) / 128 KB per token = 500K tokens / 16 = 31,250 blocks (`docs/epp.md`,
/// "Approximate prefix cache").
pub const DEFAULT_LRU_CAPACITY: u32 = 31_250;

/// The chained block hashes of one request's prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixHashes {
    hashes: Vec<u64>,
    /// Blocks in the whole prompt, including those past the hashing cap.
    prompt_blocks: usize,
    /// Tokens per block and estimated prompt tokens (bytes / chars per token, rounded up), for
    /// [`PrefixHashes::uncached_tokens`]; set by [`crate::pick::prefix_hashes`].
    block_tokens: u32,
    prompt_tokens: u64,
}

impl PrefixHashes {
    /// Records the block size in tokens and the prompt's estimated token count.
    pub fn set_token_sizes(&mut self, block_tokens: u32, prompt_tokens: u64) {
        self.block_tokens = block_tokens;
        self.prompt_tokens = prompt_tokens;
    }

    /// The prompt tokens a pod holding the first `matched_blocks` blocks must still prefill,
    /// as llm-d's in-flight producer computes them (`uncachedInputTokens`,
    /// llm-d/llm-d-router @ebab687 `.../dataproducer/inflightload/producer.go`):
    /// `(blocks − matched) × block tokens + max(0, prompt tokens − blocks × block tokens)`, the
    /// second term being the tail past the hashing cap.
    pub fn uncached_tokens(&self, matched_blocks: u32) -> u64 {
        let bt = self.block_tokens as u64;
        let blocks = self.hashes.len() as u64;
        let indexed = blocks * bt;
        blocks.saturating_sub(matched_blocks as u64) * bt + self.prompt_tokens.saturating_sub(indexed)
    }

    /// The block hashes, first block first (at most the hashing cap's number of blocks).
    pub fn as_slice(&self) -> &[u64] {
        &self.hashes
    }

    /// Blocks hashed (the prefix score's denominator).
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether no block was hashed (a prompt shorter than one block, or no prompt).
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
    out.block_tokens = 0;
    out.prompt_tokens = 0;
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

/// One (hash, endpoint) entry: 24 bytes. The hash is kept as two words so the node aligns to 4.
#[derive(Clone, Copy, Debug)]
struct Node {
    hash: [u32; 2],
    prev: u32,
    next: u32,      // per-endpoint LRU list, most recent at head; the free list when unused
    same_hash: u32, // next node with the same hash (chain from the head table)
    ep: u16,        // slot in `eps`
}

impl Node {
    fn hash(&self) -> u64 {
        (self.hash[1] as u64) << 32 | self.hash[0] as u64
    }
}

/// The node arena grows by an eighth of its size, at least this many nodes at a time, instead
/// of a `Vec`'s doubling: at most max(4,096, len / 8) nodes are ever allocated beyond the
/// entries held.
const GROW_MIN: usize = 4096;

#[derive(Clone, Debug)]
struct EpList {
    key: EndpointKey,
    head: u32,
    tail: u32,
    len: u32,
    capacity: u32,
}

/// Longest-prefix index over chained block hashes with a per-endpoint LRU (GIE's indexer: one
/// LRU of `capacity` entries per pod) and an optional global bound. Sans-IO and deterministic;
/// one instance per worker.
///
/// Memory: each (hash, endpoint) entry is a 24-byte node in an arena that grows by an eighth,
/// and each distinct hash has a 4-byte slot (the head of its node chain) in an open-addressing
/// table kept at most half full; the table doubles, so it is at least a quarter full: at most
/// 24 × 9/8 + 4 × 4 = 43 bytes per entry ([`PrefixIndex::ENTRY_BYTES`]), plus 4,096 nodes.
#[derive(Clone, Debug)]
pub struct PrefixIndex {
    /// The arena: every node ever allocated; freed ones are on `free`.
    nodes: Vec<Node>,
    free: u32,
    /// Open addressing, linear probing, keyed by the node's hash (already uniform: xxh64).
    heads: Vec<u32>,
    /// Distinct hashes in `heads`.
    distinct: usize,
    eps: Vec<EpList>,
    ep_slot: HashMap<EndpointKey, u32, BuildIdentity>,
    max_entries: Option<u32>,
}

impl PrefixIndex {
    /// Upper bound of bytes per entry: the 24-byte node with the arena's growth slack (1/8),
    /// plus the head-table slot of its hash at the table's lowest load after growth (4 bytes /
    /// (1/4)).
    pub const ENTRY_BYTES: usize = 43;

    /// Most endpoints one index tracks (`u16` slots; a snapshot holds fewer).
    pub const MAX_ENDPOINTS: usize = u16::MAX as usize;

    /// `max_entries` caps (hash, endpoint) pairs held at once, shared equally by the endpoints;
    /// `None` leaves each endpoint its own capacity only, as GIE and llm-d do.
    pub fn new(max_entries: Option<u32>) -> Self {
        PrefixIndex {
            nodes: Vec::new(),
            free: NIL,
            heads: Vec::new(),
            distinct: 0,
            eps: Vec::new(),
            ep_slot: HashMap::with_hasher(BuildIdentity),
            max_entries: max_entries.map(|m| m.max(1)),
        }
    }

    /// The global cap on entries (at least 1), or `None` without one.
    pub fn max_entries(&self) -> Option<u32> {
        self.max_entries
    }

    /// Entries currently held.
    pub fn len(&self) -> usize {
        self.eps.iter().map(|e| e.len as usize).sum()
    }

    /// Whether the index holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Worst-case bytes held for `max_entries` entries (the documented memory bound); `None`
    /// without a cap.
    pub fn memory_bound_bytes(&self) -> Option<usize> {
        self.max_entries
            .map(|m| m as usize * Self::ENTRY_BYTES + GROW_MIN * core::mem::size_of::<Node>())
    }

    /// Bytes allocated now: the node arena and the head table (the endpoint lists aside).
    pub fn allocated_bytes(&self) -> usize {
        self.nodes.capacity() * core::mem::size_of::<Node>() + self.heads.capacity() * 4
    }

    /// Entries held for one endpoint.
    pub fn endpoint_len(&self, ep: EndpointKey) -> usize {
        self.ep_slot.get(&ep).map_or(0, |&s| self.eps[s as usize].len as usize)
    }

    /// Effective capacity of an endpoint: its own capacity, capped (when there is a global
    /// bound) by an equal share of it among the endpoints the index knows.
    fn effective_capacity(&self, own: u32) -> u32 {
        match self.max_entries {
            // Zero when there are more endpoints than entries: the bound wins over coverage.
            Some(m) => own.min(m / (self.eps.len() as u32).max(1)),
            None => own,
        }
    }

    fn node(&self, n: u32) -> &Node {
        &self.nodes[n as usize]
    }

    fn node_mut(&mut self, n: u32) -> &mut Node {
        &mut self.nodes[n as usize]
    }

    /// The head-table slot of `h`: where its chain head is, or the empty slot where it would go.
    fn probe(&self, h: u64) -> usize {
        let mask = self.heads.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let n = self.heads[i];
            if n == NIL || self.node(n).hash() == h {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// The first node of `h`'s chain.
    fn head(&self, h: u64) -> Option<u32> {
        if self.heads.is_empty() {
            return None;
        }
        let n = self.heads[self.probe(h)];
        (n != NIL).then_some(n)
    }

    /// Grows the head table so one more distinct hash keeps it at most half full (linear
    /// probing stays short: ≈ 2.5 probes for a miss at that load).
    fn reserve_head(&mut self) {
        if (self.distinct + 1) * 2 <= self.heads.len() {
            return;
        }
        let old = core::mem::take(&mut self.heads);
        self.heads = alloc::vec![NIL; (old.len() * 2).max(16)];
        for n in old.into_iter().filter(|&n| n != NIL) {
            let i = self.probe(self.node(n).hash());
            self.heads[i] = n;
        }
    }

    /// Removes the table slot at `i` (backward-shift deletion: no tombstones).
    fn remove_head_slot(&mut self, mut i: usize) {
        let mask = self.heads.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let n = self.heads[j];
            if n == NIL {
                break;
            }
            let home = self.node(n).hash() as usize & mask;
            // Move the entry at j back to i unless its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.heads[i] = n;
                i = j;
            }
        }
        self.heads[i] = NIL;
        self.distinct -= 1;
    }

    /// GIE's `matchLongestPrefix`: walk the hashes in order, stop at the first hash that no
    /// endpoint holds, and give every endpoint holding the current hash one more matched block.
    /// Writes `(endpoint, matched_blocks)` into `out` for endpoints with at least one match.
    pub fn match_longest(&self, hashes: &[u64], out: &mut Vec<(EndpointKey, u32)>) {
        out.clear();
        // Count per endpoint slot: O(hashes × holders), no search per node.
        let mut counts: Vec<u32> = Vec::new();
        for &h in hashes {
            let Some(first) = self.head(h) else {
                break;
            };
            if counts.is_empty() {
                counts.resize(self.eps.len(), 0);
            }
            let mut n = first;
            while n != NIL {
                let node = self.node(n);
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
        let Some(slot) = self.slot_for(ep, capacity) else {
            return;
        };
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
        if cap == 0 {
            return;
        }
        if let Some(n) = self.find(h, slot) {
            self.unlink_lru(n);
            self.push_front(slot, n);
            return;
        }
        // Make room first, so the new node never evicts itself (and `h`'s chain is stable).
        if self.eps[slot as usize].len >= cap {
            self.evict_tail(slot);
        }
        self.reserve_head();
        let i = self.probe(h);
        let chain = self.heads[i];
        let n = self.alloc(Node {
            hash: [h as u32, (h >> 32) as u32],
            prev: NIL,
            next: NIL,
            same_hash: chain,
            ep: slot as u16,
        });
        if chain == NIL {
            self.distinct += 1;
        }
        self.heads[i] = n;
        self.push_front(slot, n);
        self.eps[slot as usize].len += 1;
    }

    /// The endpoint's slot, created if new; `None` past [`PrefixIndex::MAX_ENDPOINTS`].
    fn slot_for(&mut self, ep: EndpointKey, capacity: u32) -> Option<u32> {
        if let Some(&s) = self.ep_slot.get(&ep) {
            self.eps[s as usize].capacity = capacity.max(1);
            return Some(s);
        }
        if self.eps.len() >= Self::MAX_ENDPOINTS {
            return None;
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
        if self.max_entries.is_some() {
            for o in 0..s {
                let cap = self.effective_capacity(self.eps[o as usize].capacity);
                while self.eps[o as usize].len > cap {
                    self.evict_tail(o);
                }
            }
        }
        Some(s)
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
                self.node_mut(n).ep = s as u16;
                n = self.node(n).next;
            }
        }
    }

    fn find(&self, h: u64, slot: u32) -> Option<u32> {
        let mut n = self.head(h)?;
        while n != NIL {
            let node = self.node(n);
            if node.ep as u32 == slot {
                return Some(n);
            }
            n = node.same_hash;
        }
        None
    }

    fn alloc(&mut self, node: Node) -> u32 {
        if self.free != NIL {
            let n = self.free;
            self.free = self.node(n).next;
            *self.node_mut(n) = node;
            return n;
        }
        if self.nodes.len() == self.nodes.capacity() {
            self.nodes.reserve_exact((self.nodes.len() / 8).max(GROW_MIN));
        }
        self.nodes.push(node);
        self.nodes.len() as u32 - 1
    }

    fn push_front(&mut self, slot: u32, n: u32) {
        let head = self.eps[slot as usize].head;
        {
            let node = self.node_mut(n);
            node.prev = NIL;
            node.next = head;
        }
        if head != NIL {
            self.node_mut(head).prev = n;
        } else {
            self.eps[slot as usize].tail = n;
        }
        self.eps[slot as usize].head = n;
    }

    fn unlink_lru(&mut self, n: u32) {
        let Node { prev, next, ep, .. } = *self.node(n);
        if prev != NIL {
            self.node_mut(prev).next = next;
        } else {
            self.eps[ep as usize].head = next;
        }
        if next != NIL {
            self.node_mut(next).prev = prev;
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
        let h = self.node(n).hash();
        let after = self.node(n).same_hash;
        let i = self.probe(h);
        if self.heads[i] == n {
            if after == NIL {
                self.remove_head_slot(i);
            } else {
                self.heads[i] = after;
            }
        } else {
            let mut p = self.heads[i];
            while p != NIL {
                let next = self.node(p).same_hash;
                if next == n {
                    self.node_mut(p).same_hash = after;
                    break;
                }
                p = next;
            }
        }
        self.node_mut(n).next = self.free;
        self.free = n;
    }
}

/// Keys here are already xxh64 outputs (uniform), so hashing them again is wasted work.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildIdentity;

/// The [`core::hash::Hasher`] of [`BuildIdentity`]: returns a `u64` key unchanged.
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
