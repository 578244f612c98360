//! The relay between gateway replicas (docs/replicas.md): the batch a worker VM sends, the
//! table of senders already heard from, and the ring operations that move records between a
//! batch and the prefix-sync ring. No hostcalls here: everything is tested natively, and the
//! decoders are property-tested and fuzzed over arbitrary bytes.
//!
//! ## Batch (little-endian)
//! ```text
//! batch   = "WRB1" | replica u64 | sender u64 | sequence u64 | sent_at_ms u64
//!           | n_records u16 | n_records × record
//!           | n_inflight u16 | n_inflight × (endpoint u64 | requests u32 | tokens u32)
//! record  = endpoint u64 | capacity u32 | n u16 | n × block hash u64      (as prefixSync's)
//! bundle  = batch | batch | …     (what the collector pushes: batches back to back)
//! ```
//! * `replica` is the sending proxy's id (one per proxy, in its shared data): a replica drops
//!   its own batches when a collector pushes them back (central mode pushes to every gateway).
//! * `sender` is the sending VM's owner id in its in-flight table (random per VM instance);
//!   `sequence` grows by one per batch of that sender, so receivers drop duplicates (several
//!   collectors) and batches older than one already applied.
//! * The records are the VM's own prefix-index insertions since its last batch (at most
//!   [`MAX_RECORDS`]); the in-flight entries are its exact counts, sorted by endpoint, each with
//!   at least one request (at most [`MAX_INFLIGHT`]). Every batch carries the whole section, so
//!   a lost batch costs one refresh.
//!
//! Anything but an exact, well-formed batch is refused whole ([`BatchError`]).

use std::collections::VecDeque;
use std::fmt;

use picker_core::sync::{Record, Served, Slot, SlotStore, StoreError, CAS_RETRIES, MAX_RECORD_HASHES};

use crate::inflight::Entry;

/// Batch magic and version.
pub const MAGIC: [u8; 4] = *b"WRB1";
/// magic, replica, sender, sequence, sent_at_ms, n_records.
const HEADER: usize = 4 + 8 + 8 + 8 + 8 + 2;
const RECORD_HEADER: usize = 8 + 4 + 2;
const INFLIGHT_ENTRY: usize = 16;
/// Most records in one batch.
pub const MAX_RECORDS: usize = 64;
/// Most in-flight entries in one batch (the in-flight table's bound per section).
pub const MAX_INFLIGHT: usize = crate::inflight::MAX_ENTRIES;
/// Most batches in one bundle.
pub const MAX_BUNDLE_BATCHES: usize = 4096;

/// Bytes of the largest batch whose records carry at most `max_hashes` hashes each.
pub const fn max_batch_len(max_hashes: usize) -> usize {
    HEADER + MAX_RECORDS * (RECORD_HEADER + 8 * max_hashes) + 2 + MAX_INFLIGHT * INFLIGHT_ENTRY
}

/// The fixed part of a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchHeader {
    pub replica: u64,
    pub sender: u64,
    pub sequence: u64,
    pub sent_at_ms: u64,
}

/// A decoded batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub header: BatchHeader,
    pub records: Vec<Served>,
    pub inflight: Vec<Entry>,
}

/// Why bytes are not a batch (or a bundle of batches). `offset` is where in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchError {
    Empty,
    Truncated {
        offset: usize,
    },
    BadMagic {
        offset: usize,
    },
    TooManyRecords {
        offset: usize,
        n: usize,
    },
    TooManyHashes {
        offset: usize,
        n: usize,
        max: usize,
    },
    EmptyRecord {
        offset: usize,
    },
    TooManyEntries {
        offset: usize,
        n: usize,
    },
    /// In-flight entries out of order, repeated, or with zero requests.
    BadEntry {
        offset: usize,
    },
    TooManyBatches,
    /// Bytes after the one batch a sender posts.
    Trailing {
        offset: usize,
    },
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Empty => write!(f, "empty body"),
            BatchError::Truncated { offset } => write!(f, "truncated at byte {offset}"),
            BatchError::BadMagic { offset } => write!(f, "no batch magic at byte {offset}"),
            BatchError::TooManyRecords { offset, n } => {
                write!(f, "{n} records at byte {offset} (at most {MAX_RECORDS})")
            }
            BatchError::TooManyHashes { offset, n, max } => {
                write!(f, "record at byte {offset} has {n} hashes (at most {max})")
            }
            BatchError::EmptyRecord { offset } => write!(f, "record at byte {offset} has no hash"),
            BatchError::TooManyEntries { offset, n } => {
                write!(f, "{n} in-flight entries at byte {offset} (at most {MAX_INFLIGHT})")
            }
            BatchError::BadEntry { offset } => write!(
                f,
                "in-flight entry at byte {offset} is out of order, repeated or has no request"
            ),
            BatchError::TooManyBatches => write!(f, "more than {MAX_BUNDLE_BATCHES} batches"),
            BatchError::Trailing { offset } => write!(f, "bytes after the batch, from byte {offset}"),
        }
    }
}

impl std::error::Error for BatchError {}

/// Appends the encoding of one batch to `out`. At most [`MAX_RECORDS`] records (the first
/// ones), [`MAX_RECORD_HASHES`] hashes per record and [`MAX_INFLIGHT`] entries are written;
/// records without hashes and entries without requests are left out, so the result always
/// decodes. `inflight` must be sorted by key (as [`crate::inflight::Local`] keeps it).
pub fn encode_into(out: &mut Vec<u8>, h: &BatchHeader, records: &[Served], inflight: &[Entry]) {
    let records: Vec<&Served> = records
        .iter()
        .filter(|r| !r.hashes.is_empty())
        .take(MAX_RECORDS)
        .collect();
    let entries: Vec<&Entry> = inflight.iter().filter(|e| e.requests > 0).take(MAX_INFLIGHT).collect();
    out.extend_from_slice(&MAGIC);
    for v in [h.replica, h.sender, h.sequence, h.sent_at_ms] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(records.len() as u16).to_le_bytes());
    for r in records {
        let n = r.hashes.len().min(MAX_RECORD_HASHES);
        out.extend_from_slice(&r.endpoint.to_le_bytes());
        out.extend_from_slice(&r.capacity.to_le_bytes());
        out.extend_from_slice(&(n as u16).to_le_bytes());
        for x in &r.hashes[..n] {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.key.to_le_bytes());
        out.extend_from_slice(&e.requests.to_le_bytes());
        out.extend_from_slice(&e.tokens.to_le_bytes());
    }
}

/// Bytes of the batch [`encode_into`] writes for these records and entries.
pub fn encoded_len(records: &[Served], inflight: &[Entry]) -> usize {
    let records: usize = records
        .iter()
        .filter(|r| !r.hashes.is_empty())
        .take(MAX_RECORDS)
        .map(|r| RECORD_HEADER + 8 * r.hashes.len().min(MAX_RECORD_HASHES))
        .sum();
    let entries = inflight.iter().filter(|e| e.requests > 0).take(MAX_INFLIGHT).count();
    HEADER + records + 2 + INFLIGHT_ENTRY * entries
}

/// One batch's encoding.
pub fn encode(h: &BatchHeader, records: &[Served], inflight: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, h, records, inflight);
    out
}

/// A bounds-checked little-endian reader over the whole body.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BatchError> {
        let end = self
            .at
            .checked_add(N)
            .ok_or(BatchError::Truncated { offset: self.at })?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(BatchError::Truncated { offset: self.at })?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        self.at = end;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, BatchError> {
        self.take::<2>().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, BatchError> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, BatchError> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    /// Fails early when fewer than `n` bytes remain (no allocation sized by untrusted counts
    /// beyond what the body holds).
    fn need(&self, n: usize) -> Result<(), BatchError> {
        if self.b.len().saturating_sub(self.at) < n {
            Err(BatchError::Truncated { offset: self.at })
        } else {
            Ok(())
        }
    }
}

fn read_batch(r: &mut Reader<'_>, max_hashes: usize) -> Result<Batch, BatchError> {
    let start = r.at;
    if r.take::<4>()? != MAGIC {
        return Err(BatchError::BadMagic { offset: start });
    }
    let header = BatchHeader {
        replica: r.u64()?,
        sender: r.u64()?,
        sequence: r.u64()?,
        sent_at_ms: r.u64()?,
    };
    let at = r.at;
    let n_records = r.u16()? as usize;
    if n_records > MAX_RECORDS {
        return Err(BatchError::TooManyRecords {
            offset: at,
            n: n_records,
        });
    }
    let max = max_hashes.min(MAX_RECORD_HASHES);
    let mut records = Vec::with_capacity(n_records);
    for _ in 0..n_records {
        let at = r.at;
        let endpoint = r.u64()?;
        let capacity = r.u32()?;
        let n = r.u16()? as usize;
        if n == 0 {
            return Err(BatchError::EmptyRecord { offset: at });
        }
        if n > max {
            return Err(BatchError::TooManyHashes { offset: at, n, max });
        }
        r.need(8 * n)?;
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            hashes.push(r.u64()?);
        }
        records.push(Served {
            endpoint,
            capacity,
            hashes,
        });
    }
    let at = r.at;
    let n_inflight = r.u16()? as usize;
    if n_inflight > MAX_INFLIGHT {
        return Err(BatchError::TooManyEntries {
            offset: at,
            n: n_inflight,
        });
    }
    r.need(INFLIGHT_ENTRY * n_inflight)?;
    let mut inflight: Vec<Entry> = Vec::with_capacity(n_inflight);
    for _ in 0..n_inflight {
        let at = r.at;
        let e = Entry {
            key: r.u64()?,
            requests: r.u32()?,
            tokens: r.u32()?,
        };
        if e.requests == 0 || inflight.last().is_some_and(|p| p.key >= e.key) {
            return Err(BatchError::BadEntry { offset: at });
        }
        inflight.push(e);
    }
    Ok(Batch {
        header,
        records,
        inflight,
    })
}

/// Decodes exactly one batch: the whole body, nothing after it. Records may carry at most
/// `max_hashes` hashes (the receiver's `maxPrefixBlocksToMatch`).
pub fn decode(body: &[u8], max_hashes: usize) -> Result<Batch, BatchError> {
    if body.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut r = Reader { b: body, at: 0 };
    let batch = read_batch(&mut r, max_hashes)?;
    if r.at != body.len() {
        return Err(BatchError::Trailing { offset: r.at });
    }
    Ok(batch)
}

/// Decodes a bundle: one or more batches back to back, every byte accounted for.
pub fn decode_bundle(body: &[u8], max_hashes: usize) -> Result<Vec<Batch>, BatchError> {
    if body.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut r = Reader { b: body, at: 0 };
    let mut out = Vec::new();
    while r.at < body.len() {
        if out.len() == MAX_BUNDLE_BATCHES {
            return Err(BatchError::TooManyBatches);
        }
        out.push(read_batch(&mut r, max_hashes)?);
    }
    Ok(out)
}

/// The sender and sequence of a well-formed batch's header, without decoding the rest.
pub fn peek_header(body: &[u8]) -> Option<BatchHeader> {
    let mut r = Reader { b: body, at: 0 };
    if r.take::<4>().ok()? != MAGIC {
        return None;
    }
    Some(BatchHeader {
        replica: r.u64().ok()?,
        sender: r.u64().ok()?,
        sequence: r.u64().ok()?,
        sent_at_ms: r.u64().ok()?,
    })
}

// === the senders a replica has heard from ===

/// Shared-data key of [`seen_update`]'s table (one per proxy, every worker VM reads it).
pub const KEY_SEEN: &str = "wasm-epp/relay/seen";
/// Shared-data key of the proxy's replica id (random, created at configure).
pub const KEY_REPLICA: &str = "wasm-epp/relay/replica";
/// Most senders remembered; past it the one heard from longest ago goes.
pub const MAX_SENDERS: usize = 1024;
const SEEN_MAGIC: &[u8; 4] = b"wrs1";
const SEEN_ENTRY: usize = 24;

/// One remembered sender: its last applied sequence and when (receiver's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub sender: u64,
    pub sequence: u64,
    pub stamp_ms: u64,
}

/// The table's entries, sorted by sender; anything malformed reads as empty (the next write
/// replaces it: at worst one duplicate batch is applied again).
pub fn seen_entries(bytes: &[u8]) -> Vec<Seen> {
    let parse = || -> Option<Vec<Seen>> {
        let (head, rest) = bytes.split_at_checked(8)?;
        if &head[..4] != SEEN_MAGIC {
            return None;
        }
        let n = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
        if n > MAX_SENDERS || rest.len() != n * SEEN_ENTRY {
            return None;
        }
        let u = |c: &[u8], i: usize| u64::from_le_bytes(c[i..i + 8].try_into().unwrap_or_default());
        let v: Vec<Seen> = rest
            .chunks_exact(SEEN_ENTRY)
            .map(|c| Seen {
                sender: u(c, 0),
                sequence: u(c, 8),
                stamp_ms: u(c, 16),
            })
            .collect();
        v.windows(2).all(|w| w[0].sender < w[1].sender).then_some(v)
    };
    parse().unwrap_or_default()
}

/// The last sequence applied from `sender`, if remembered.
pub fn last_sequence(seen: &[Seen], sender: u64) -> Option<u64> {
    seen.binary_search_by_key(&sender, |s| s.sender)
        .ok()
        .map(|i| seen[i].sequence)
}

/// The table with each `(sender, sequence)` recorded at `now_ms` (a sequence only ever moves
/// forward), entries older than `horizon_ms` dropped, and at most [`MAX_SENDERS`] kept (the
/// stalest go first).
pub fn seen_update(seen: &[Seen], applied: &[(u64, u64)], now_ms: u64, horizon_ms: u64) -> Vec<u8> {
    let mut v: Vec<Seen> = seen
        .iter()
        .copied()
        .filter(|s| now_ms.saturating_sub(s.stamp_ms) <= horizon_ms)
        .collect();
    for &(sender, sequence) in applied {
        match v.binary_search_by_key(&sender, |s| s.sender) {
            Ok(i) => {
                v[i].sequence = v[i].sequence.max(sequence);
                v[i].stamp_ms = now_ms;
            }
            Err(i) => v.insert(
                i,
                Seen {
                    sender,
                    sequence,
                    stamp_ms: now_ms,
                },
            ),
        }
    }
    if v.len() > MAX_SENDERS {
        let mut stamps: Vec<u64> = v.iter().map(|s| s.stamp_ms).collect();
        stamps.sort_unstable();
        let cutoff = stamps[v.len() - MAX_SENDERS - 1];
        let mut excess = v.len() - MAX_SENDERS;
        v.retain(|s| {
            let drop = excess > 0 && s.stamp_ms <= cutoff;
            excess -= usize::from(drop);
            !drop
        });
    }
    let mut out = Vec::with_capacity(8 + v.len() * SEEN_ENTRY);
    out.extend_from_slice(SEEN_MAGIC);
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for s in &v {
        out.extend_from_slice(&s.sender.to_le_bytes());
        out.extend_from_slice(&s.sequence.to_le_bytes());
        out.extend_from_slice(&s.stamp_ms.to_le_bytes());
    }
    out
}

// === records between a batch and the prefix-sync ring ===

/// Appends `served` to the prefix-sync ring as a record of `origin` (the sending VM), exactly
/// as picker-core's `PrefixSync` appends its own: claim a sequence by CAS on the head, write
/// the slot. Every worker of this proxy then applies it on its next pull (its origin is none
/// of theirs). False if the head could not be claimed or the slot not written.
pub fn append_foreign(store: &mut impl SlotStore, ring: u32, origin: u64, served: Served, buf: &mut Vec<u8>) -> bool {
    let ring = u64::from(ring.max(1));
    for _ in 0..CAS_RETRIES {
        let (bytes, cas) = store.get(Slot::Head);
        let head = bytes
            .as_deref()
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes);
        match store.set(Slot::Head, &(head + 1).to_le_bytes(), cas) {
            Ok(()) => {
                let record = Record {
                    seq: head,
                    origin,
                    served,
                };
                record.encode_into(buf);
                return store.set(Slot::Record((head % ring) as u32), buf, None).is_ok();
            }
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Failed) => return false,
        }
    }
    false
}

/// The sequences of the ring records a VM appended itself and has not relayed yet, newest
/// last; at most [`MAX_RECORDS`] (older ones are dropped: a batch carries no more).
#[derive(Clone, Debug, Default)]
pub struct Appended(VecDeque<u64>);

impl Appended {
    /// Notes the record just written to a ring slot (its bytes as written).
    pub fn note(&mut self, record: &[u8]) {
        if let Some(seq) = record.get(4..12).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            if self.0.len() == MAX_RECORDS {
                self.0.pop_front();
            }
            self.0.push_back(u64::from_le_bytes(seq));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads back this VM's records (`origin`) from the ring and empties the list. A record
    /// overwritten since (the ring wrapped) is skipped.
    pub fn take_records(&mut self, store: &mut impl SlotStore, ring: u32, origin: u64) -> Vec<Served> {
        let ring = u64::from(ring.max(1));
        let mut out = Vec::with_capacity(self.0.len());
        for seq in self.0.drain(..) {
            let (bytes, _) = store.get(Slot::Record((seq % ring) as u32));
            if let Some(Ok(r)) = bytes.as_deref().map(Record::decode) {
                if r.seq == seq && r.origin == origin {
                    out.push(r.served);
                }
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
