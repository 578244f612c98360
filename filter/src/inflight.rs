//! The shared in-flight table: per-endpoint requests and prompt tokens in flight, over every
//! worker VM of the proxy, kept correct when a VM dies mid-stream.
//!
//! A VM that traps (or is killed, or reloaded) never runs `on_done` for its open streams, and
//! proxy shared data outlives the VM, so a plain shared counter keeps their phantom requests
//! forever. Here nothing in the table is anonymous: every count belongs to the VM that took
//! it, in that VM's *section*, stamped with the time the VM last wrote it. Each VM keeps its
//! own exact counts locally ([`Local`]) and publishes them as its section on every change and
//! on a heartbeat tick; a section whose stamp is older than the time-to-live belongs to a VM
//! that is gone, and is dropped by the next writer and ignored by every reader meanwhile. So
//! the table returns to the truth within one time-to-live of any host fault, by itself.
//!
//! Readers need the sum over sections per endpoint, on every request, so the value also
//! carries that sum (the *aggregate*), kept equal to the sum of its sections by every write
//! (property-tested). A reader looks up the aggregate (one binary search per pool endpoint, as
//! with a plain counter) and subtracts any expired section it sees (rare).
//!
//! ## Encoding (little-endian)
//! ```text
//! magic "wei1" | aggregate entries u32 | sections u32 | 0 u32
//! aggregate:  n × record                       sorted by key, requests > 0
//! section:    owner u64 | stamp_ms u64 | n u32 | flags u32, then n × record (sorted by key)
//! record:     key u64 | requests u32 | tokens u32
//! ```
//! `flags` is 0 for a section of a worker VM of this proxy and [`RELAYED`] for the section of
//! a VM of another gateway replica, taken from the relay ([`upsert_relayed`], docs/replicas.md).
//! Readers sum both alike; a relayed section never replaces a local one.
//! Anything malformed (another build's format, corruption) reads as empty, and the next write
//! replaces it: counts are load hints, and a bad value must never fail a request.

use picker_core::prefix::EndpointKey;
use picker_core::{InFlight, Pool};

/// Shared-data key of the table (one namespace per `vm_id`, shared by every worker VM).
pub const KEY_INFLIGHT: &str = "wasm-epp/inflight";

/// Most endpoints one section (or the aggregate) tracks; matches the snapshot bound.
pub const MAX_ENTRIES: usize = picker_core::snapshot::MAX_ENDPOINTS;
/// Most sections kept: far more VMs than any proxy runs workers. Past it the stalest section
/// goes first, so the bound never drops a live VM's counts while dead ones remain.
pub const MAX_SECTIONS: usize = 256;

/// Section flag: the section belongs to a VM of another gateway replica (relayed).
pub const RELAYED: u32 = 1;

const MAGIC: &[u8; 4] = b"wei1";
const HEADER: usize = 16;
const SECTION_HEADER: usize = 24;
const RECORD: usize = 16;

/// One endpoint's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub key: EndpointKey,
    pub requests: u32,
    pub tokens: u32,
}

/// A VM's own in-flight counts: the truth for the streams it holds, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Local {
    entries: Vec<Entry>,
}

impl Local {
    /// Adds one request of `tokens` to `key`, or removes one (saturating at zero; an entry at
    /// zero requests is dropped).
    pub fn apply(&mut self, key: EndpointKey, tokens: u32, add: bool) {
        match self.entries.binary_search_by_key(&key, |e| e.key) {
            Ok(i) => {
                let e = &mut self.entries[i];
                if add {
                    e.requests = e.requests.saturating_add(1);
                    e.tokens = e.tokens.saturating_add(tokens);
                } else if e.requests <= 1 {
                    self.entries.remove(i);
                } else {
                    e.requests -= 1;
                    e.tokens = e.tokens.saturating_sub(tokens);
                }
            }
            Err(i) if add && self.entries.len() < MAX_ENTRIES => self.entries.insert(
                i,
                Entry {
                    key,
                    requests: 1,
                    tokens,
                },
            ),
            Err(_) => {}
        }
    }

    /// Removes `tokens` from `key` but keeps its requests: the prefill of one request is done
    /// (its first response chunk arrived), its decode goes on.
    pub fn release_tokens(&mut self, key: EndpointKey, tokens: u32) {
        if let Ok(i) = self.entries.binary_search_by_key(&key, |e| e.key) {
            let e = &mut self.entries[i];
            e.tokens = e.tokens.saturating_sub(tokens);
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

// === reading ===

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn record(b: &[u8]) -> Entry {
    Entry {
        key: u64_at(b, 0),
        requests: u32_at(b, 8),
        tokens: u32_at(b, 12),
    }
}

/// A section as stored: its owner, when it was last written, and its records.
#[derive(Clone, Copy, Debug)]
struct Section<'a> {
    owner: u64,
    stamp_ms: u64,
    flags: u32,
    records: &'a [u8],
}

impl<'a> Section<'a> {
    fn entries(self) -> impl Iterator<Item = Entry> + 'a {
        self.records.chunks_exact(RECORD).map(record)
    }

    fn expired(&self, now_ms: u64, ttl_ms: u64) -> bool {
        now_ms.saturating_sub(self.stamp_ms) > ttl_ms
    }
}

/// A well-formed encoded table, borrowed: the aggregate's records and the section area.
#[derive(Clone, Copy)]
struct View<'a> {
    aggregate: &'a [u8],
    sections: &'a [u8],
    n_sections: usize,
}

impl<'a> View<'a> {
    /// The sections, in stored order (already bounds-checked by [`view`]).
    fn sections(&self) -> impl Iterator<Item = Section<'a>> + 'a {
        let mut rest = self.sections;
        (0..self.n_sections).map_while(move |_| {
            let (s, tail) = split_section(rest)?;
            rest = tail;
            Some(s)
        })
    }
}

/// The first section of `b` and what follows it; `None` if `b` is too short.
fn split_section(b: &[u8]) -> Option<(Section<'_>, &[u8])> {
    let head = b.get(..SECTION_HEADER)?;
    let n = u32_at(head, 16) as usize;
    if n > MAX_ENTRIES {
        return None;
    }
    let end = SECTION_HEADER + n * RECORD;
    let records = b.get(SECTION_HEADER..end)?;
    Some((
        Section {
            owner: u64_at(head, 0),
            stamp_ms: u64_at(head, 8),
            flags: u32_at(head, 20),
            records,
        },
        &b[end..],
    ))
}

/// Parses `bytes` without allocating; `None` for anything malformed (which reads as an empty
/// table).
fn view(bytes: &[u8]) -> Option<View<'_>> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return None;
    }
    let n_agg = u32_at(bytes, 4) as usize;
    let n_sections = u32_at(bytes, 8) as usize;
    if n_agg > MAX_ENTRIES || n_sections > MAX_SECTIONS {
        return None;
    }
    let agg_end = HEADER + n_agg * RECORD;
    let aggregate = bytes.get(HEADER..agg_end)?;
    let sections = &bytes[agg_end..];
    let mut rest = sections;
    for _ in 0..n_sections {
        rest = split_section(rest)?.1;
    }
    rest.is_empty().then_some(View {
        aggregate,
        sections,
        n_sections,
    })
}

fn lookup(records: &[u8], key: EndpointKey) -> Option<Entry> {
    let n = records.len() / RECORD;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let k = u64_at(records, mid * RECORD);
        if k == key {
            return Some(record(&records[mid * RECORD..]));
        }
        if k < key {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    None
}

/// The counts of every live VM, aligned with `pool.endpoints()` as `picker_core::pick` takes
/// them, into a buffer the caller reuses. Sections older than `ttl_ms` at `now_ms` (VMs that
/// died) do not count, even before a writer drops them.
pub fn for_pool(bytes: &[u8], pool: &Pool, now_ms: u64, ttl_ms: u64, out: &mut Vec<InFlight>) {
    out.clear();
    let Some(v) = view(bytes) else {
        out.resize(pool.keys().len(), InFlight::default());
        return;
    };
    out.extend(pool.keys().iter().map(|&k| match lookup(v.aggregate, k) {
        Some(e) => InFlight {
            requests: e.requests,
            tokens: e.tokens as u64,
        },
        None => InFlight::default(),
    }));
    for s in v.sections().filter(|s| s.expired(now_ms, ttl_ms)) {
        for e in s.entries() {
            if let Some(i) = pool.index_of(e.key) {
                let c = &mut out[i];
                c.requests = c.requests.saturating_sub(e.requests);
                c.tokens = c.tokens.saturating_sub(e.tokens as u64);
            }
        }
    }
}

/// Requests and tokens in flight over every live VM (for tests and metrics).
pub fn totals(bytes: &[u8], now_ms: u64, ttl_ms: u64) -> (u64, u64) {
    view(bytes).map_or((0, 0), |v| {
        v.sections()
            .filter(|s| !s.expired(now_ms, ttl_ms))
            .flat_map(|s| s.entries())
            .fold((0, 0), |(r, t), e| (r + e.requests as u64, t + e.tokens as u64))
    })
}

/// Requests in flight over every live VM (for tests and metrics).
pub fn total_requests(bytes: &[u8], now_ms: u64, ttl_ms: u64) -> u64 {
    totals(bytes, now_ms, ttl_ms).0
}

/// Whether a write from `owner` would change anything: its section differs from `local` (or is
/// due for a heartbeat, older than `refresh_ms`), or some other section has expired.
pub fn needs_write(bytes: &[u8], owner: u64, local: &Local, now_ms: u64, ttl_ms: u64, refresh_ms: u64) -> bool {
    let Some(v) = view(bytes) else { return true };
    let mut mine = None;
    for s in v.sections() {
        if s.owner == owner {
            mine = Some(s);
        } else if s.expired(now_ms, ttl_ms) {
            return true;
        }
    }
    match mine {
        None => !local.is_empty(),
        Some(s) => {
            local.is_empty()
                || now_ms.saturating_sub(s.stamp_ms) >= refresh_ms
                || !s.entries().eq(local.entries().iter().copied())
        }
    }
}

// === writing ===

/// Adds (`add`) or subtracts `e`'s counts in the sorted `agg`; an entry at zero requests goes.
fn adjust(agg: &mut Vec<Entry>, e: Entry, add: bool) {
    match agg.binary_search_by_key(&e.key, |a| a.key) {
        Ok(i) => {
            let a = &mut agg[i];
            if add {
                a.requests = a.requests.saturating_add(e.requests);
                a.tokens = a.tokens.saturating_add(e.tokens);
            } else {
                a.requests = a.requests.saturating_sub(e.requests);
                a.tokens = a.tokens.saturating_sub(e.tokens);
                if a.requests == 0 {
                    agg.remove(i);
                }
            }
        }
        Err(i) if add && e.requests > 0 && agg.len() < MAX_ENTRIES => agg.insert(i, e),
        Err(_) => {}
    }
}

fn put_record(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(&e.key.to_le_bytes());
    out.extend_from_slice(&e.requests.to_le_bytes());
    out.extend_from_slice(&e.tokens.to_le_bytes());
}

fn put_section_header(out: &mut Vec<u8>, owner: u64, stamp_ms: u64, n: usize, flags: u32) {
    out.extend_from_slice(&owner.to_le_bytes());
    out.extend_from_slice(&stamp_ms.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
}

/// The table `bytes` with `owner`'s section replaced by `local` stamped `now_ms` (removed when
/// `local` is empty) and every section older than `ttl_ms` dropped, the aggregate adjusted to
/// match. Malformed `bytes` start over from an empty table.
pub fn publish(bytes: &[u8], owner: u64, local: &Local, now_ms: u64, ttl_ms: u64) -> Vec<u8> {
    write_section(bytes, owner, local.entries(), 0, now_ms, ttl_ms)
}

/// Whether the table holds a section of `owner` written by a worker VM of this proxy.
pub fn owned_locally(bytes: &[u8], owner: u64) -> bool {
    view(bytes).is_some_and(|v| v.sections().any(|s| s.owner == owner && s.flags & RELAYED == 0))
}

/// The table `bytes` with the relayed section of `owner` (a VM of another gateway replica)
/// replaced by `entries` (sorted by key, as a relay batch carries them) stamped `now_ms`, or
/// removed when `entries` is empty; expired sections dropped, as [`publish`] does. `None`, and
/// nothing to write, when `owner` has a local section: a relayed section never takes a local
/// VM's place. Relayed sections expire `ttl_ms` after their last refresh like local ones.
pub fn upsert_relayed(bytes: &[u8], owner: u64, entries: &[Entry], now_ms: u64, ttl_ms: u64) -> Option<Vec<u8>> {
    if owned_locally(bytes, owner) {
        return None;
    }
    let n = entries.len().min(MAX_ENTRIES);
    Some(write_section(bytes, owner, &entries[..n], RELAYED, now_ms, ttl_ms))
}

/// The table with `owner`'s section replaced by `entries` (flags `flags`), see [`publish`].
fn write_section(bytes: &[u8], owner: u64, entries: &[Entry], flags: u32, now_ms: u64, ttl_ms: u64) -> Vec<u8> {
    let v = view(bytes).unwrap_or(View {
        aggregate: &[],
        sections: &[],
        n_sections: 0,
    });
    let mut aggregate: Vec<Entry> = v.aggregate.chunks_exact(RECORD).map(record).collect();
    // Sections kept as they are; the others (this VM's old one, expired ones, and past the
    // bound the stalest) leave the aggregate.
    let mine = usize::from(!entries.is_empty());
    let live = v
        .sections()
        .filter(|s| s.owner != owner && !s.expired(now_ms, ttl_ms))
        .count();
    let mut evict = live.saturating_sub(MAX_SECTIONS - mine);
    let cutoff = if evict > 0 {
        let mut stamps: Vec<u64> = v
            .sections()
            .filter(|s| s.owner != owner && !s.expired(now_ms, ttl_ms))
            .map(|s| s.stamp_ms)
            .collect();
        stamps.sort_unstable();
        stamps[evict - 1]
    } else {
        0
    };
    let mut kept: Vec<Section<'_>> = Vec::with_capacity(live.min(MAX_SECTIONS));
    for s in v.sections() {
        let stale = s.owner == owner || s.expired(now_ms, ttl_ms);
        let over_bound = !stale && evict > 0 && s.stamp_ms <= cutoff;
        if stale || over_bound {
            evict -= usize::from(over_bound);
            for e in s.entries() {
                adjust(&mut aggregate, e, false);
            }
        } else {
            kept.push(s);
        }
    }
    for e in entries {
        adjust(&mut aggregate, *e, true);
    }

    let records: usize = kept.iter().map(|s| s.records.len()).sum();
    let mut out = Vec::with_capacity(
        HEADER + (aggregate.len() + entries.len()) * RECORD + records + (kept.len() + mine) * SECTION_HEADER,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(aggregate.len() as u32).to_le_bytes());
    out.extend_from_slice(&((kept.len() + mine) as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for e in &aggregate {
        put_record(&mut out, e);
    }
    for s in &kept {
        put_section_header(&mut out, s.owner, s.stamp_ms, s.records.len() / RECORD, s.flags);
        out.extend_from_slice(s.records);
    }
    if mine == 1 {
        put_section_header(&mut out, owner, now_ms, entries.len(), flags);
        for e in entries {
            put_record(&mut out, e);
        }
    }
    out
}

#[cfg(test)]
#[path = "inflight_tests.rs"]
mod tests;
