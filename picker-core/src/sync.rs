//! Prefix-index replication between proxy workers through a bounded shared ring.
//!
//! Envoy runs one VM per worker thread, so each worker has its own [`State`] and, alone, knows
//! only the prefixes *it* routed: a prompt prefix sent to pod P by worker A looks new to worker
//! B, which may send it elsewhere and pay the full prefill again. proxy-wasm gives workers one
//! thing in common, shared data (a key → bytes map with compare-and-swap; `docs/proxy-wasm.md`,
//! "shared data").
//! This module replicates index insertions through it as a journal:
//!
//! ```text
//! head   "…/px/head"  = le64 next sequence number (CAS-claimed by the appender)
//! slot i "…/px/<i>"   = the record with sequence s, i = s mod ring
//! record = "WPX1" | seq u64 | origin u64 | endpoint u64 | capacity u32 | n u16 | n × hash u64
//! ```
//!
//! * **push** (after a pick): for each insertion the picker made ([`State`]'s outbox), claim a
//!   sequence number by CAS on the head, then write the record into its slot.
//! * **pull** (before a pick): read the head; read the slots between this worker's cursor and
//!   the head (at most `max_catch_up`, the newest ones); apply every record written by another
//!   worker to the local index exactly as the origin applied it.
//!
//! Every worker's index then holds the same entries as one global index would, so prefix
//! affinity no longer depends on which worker a connection landed on (podsim measures this as
//! `policy@Wx1` against `policy`). The cost is 3 hostcalls per routed request plus one read
//! per record from other workers since the worker's last request (about W − 1 under even
//! load), capped by `max_catch_up`.
//!
//! It is lossy by design and never blocks: a record overwritten before a worker reads it (the
//! worker was idle for more than `ring` appends, or more than `max_catch_up` arrived), a slot
//! read between another worker's claim and its write, or a CAS race lost [`CAS_RETRIES`] times
//! are skipped and counted ([`SyncStats`]). Memory is bounded: `ring` slots of at most
//! [`record_len`]`(max_blocks)` bytes each. Garbage in any slot decodes as an error and is
//! skipped; a head that moves backwards (shared data reset) resets the cursor.
//!
//! Gateway *replicas* share nothing; consistent hashing on the prompt prefix is what makes them
//! agree (see [`crate::chash`]).

use alloc::vec::Vec;

pub use crate::state::Served;
use crate::state::State;
use crate::Config;

/// Record magic and version: "WPX1".
const MAGIC: [u8; 4] = *b"WPX1";
const HEADER: usize = 4 + 8 + 8 + 8 + 4 + 2;
/// Most hashes a record may carry (the config bound of `maxPrefixBlocksToMatch`).
pub const MAX_RECORD_HASHES: usize = 4096;
/// CAS attempts to claim a sequence number before the record is dropped.
pub const CAS_RETRIES: u32 = 4;
/// Default ring slots: 256 records of at most 2 KiB (256 hashes) each = 512 KiB of shared data.
pub const DEFAULT_RING: u32 = 256;
/// Default records read per pull. A worker reads about W − 1 records per request, but the gap
/// between two requests of one worker is random: with 8 workers chosen uniformly it exceeds 32
/// requests for 1.4 % of requests and 64 for 0.02 % ((7/8)^n). With 32, podsim's 8-worker split
/// lost enough records to differ from one view; with 64 it matched it exactly.
pub const DEFAULT_MAX_CATCH_UP: u32 = 64;

/// Bytes of a record carrying `hashes` hashes.
pub const fn record_len(hashes: usize) -> usize {
    HEADER + 8 * hashes
}

/// A decoded ring record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record's sequence number; it lives in slot `seq mod ring`.
    pub seq: u64,
    /// The worker that appended it (its own records are already in its index).
    pub origin: u64,
    /// The index insertion it carries.
    pub served: Served,
}

/// Why a slot did not hold a usable record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than a record header.
    Truncated,
    /// Does not start with the record magic `"WPX1"`.
    BadMagic,
    /// Claims more than [`MAX_RECORD_HASHES`] hashes (the count found).
    TooManyHashes(usize),
    /// The length is not the header plus 8 bytes per claimed hash.
    LengthMismatch {
        /// [`record_len`] of the claimed hash count.
        expected: usize,
        /// The slot's actual length.
        got: usize,
    },
}

impl Record {
    /// Encodes the record into `out` (cleared first), keeping at most [`MAX_RECORD_HASHES`]
    /// hashes.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let n = self.served.hashes.len().min(MAX_RECORD_HASHES);
        out.clear();
        out.reserve(record_len(n));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.origin.to_le_bytes());
        out.extend_from_slice(&self.served.endpoint.to_le_bytes());
        out.extend_from_slice(&self.served.capacity.to_le_bytes());
        out.extend_from_slice(&(n as u16).to_le_bytes());
        // One resize, then a plain 8-byte store per hash (no capacity check per hash).
        let start = out.len();
        out.resize(start + 8 * n, 0);
        let (words, _) = out[start..].as_chunks_mut::<8>();
        for (w, h) in words.iter_mut().zip(&self.served.hashes[..n]) {
            *w = h.to_le_bytes();
        }
    }

    /// Decodes a slot's bytes; anything but an exact, well-formed record is an error.
    pub fn decode(b: &[u8]) -> Result<Record, RecordError> {
        if b.len() < HEADER {
            return Err(RecordError::Truncated);
        }
        if b[..4] != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let capacity = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        let n = u16::from_le_bytes([b[32], b[33]]) as usize;
        if n > MAX_RECORD_HASHES {
            return Err(RecordError::TooManyHashes(n));
        }
        if b.len() != record_len(n) {
            return Err(RecordError::LengthMismatch {
                expected: record_len(n),
                got: b.len(),
            });
        }
        Ok(Record {
            seq: u64_at(4),
            origin: u64_at(12),
            served: Served {
                endpoint: u64_at(20),
                capacity,
                hashes: (0..n).map(|i| u64_at(HEADER + 8 * i)).collect(),
            },
        })
    }
}

/// Which shared-data entry of the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The head: the next sequence number to claim (le64).
    Head,
    /// Ring slot `i` (0..ring), holding the record with sequence ≡ i mod ring.
    Record(u32),
}

/// A `set` with a stale CAS token, or another host failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The entry changed since the CAS token was read.
    CasMismatch,
    /// Any other host failure.
    Failed,
}

/// The shared store the ring lives in: proxy-wasm shared data in the filter, [`MemSlots`] in
/// tests and podsim. Semantics are proxy-wasm's: `get` returns the value and its CAS token;
/// `set` with `Some(cas)` fails with [`StoreError::CasMismatch`] if the entry changed since.
pub trait SlotStore {
    /// The slot's bytes and CAS token; `(None, None)` when the slot was never written.
    fn get(&mut self, slot: Slot) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes the slot; with `Some(cas)`, only if its token is still `cas`.
    fn set(&mut self, slot: Slot, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// Ring parameters (filter config `prefixSync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncParams {
    /// Slots in the ring (records kept).
    pub ring: u32,
    /// Most records one pull reads; older unread ones are skipped.
    pub max_catch_up: u32,
}

impl Default for SyncParams {
    fn default() -> Self {
        SyncParams {
            ring: DEFAULT_RING,
            max_catch_up: DEFAULT_MAX_CATCH_UP,
        }
    }
}

/// Counters of one worker's replication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Records of other workers applied to the local index.
    pub applied: u64,
    /// Records skipped: overwritten, not yet written, unreadable, or past the catch-up cap.
    pub missed: u64,
    /// Records this worker appended.
    pub appended: u64,
    /// Records this worker dropped (CAS lost every retry, or a store failure).
    pub dropped: u64,
}

/// One worker's end of the ring.
#[derive(Clone, Debug)]
pub struct PrefixSync {
    origin: u64,
    params: SyncParams,
    /// Next sequence this worker has not read; `None` before its first pull.
    next: Option<u64>,
    /// The head and its CAS token from the last pull, tried first by the next push.
    head: Option<(u64, Option<u32>)>,
    stats: SyncStats,
    buf: Vec<u8>,
}

fn decode_head(b: Option<&[u8]>) -> u64 {
    b.and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

impl PrefixSync {
    /// `origin` must differ between the workers sharing a ring (a random id per VM).
    pub fn new(origin: u64, params: SyncParams) -> Self {
        PrefixSync {
            origin,
            params: SyncParams {
                ring: params.ring.max(1),
                max_catch_up: params.max_catch_up,
            },
            next: None,
            head: None,
            stats: SyncStats::default(),
            buf: Vec::new(),
        }
    }

    /// Creates the head if the store has none. Call once before any worker appends (the filter
    /// does it in the root context's configure): proxy-wasm cannot create a key atomically, and
    /// appenders racing on an absent head would claim the same sequence.
    pub fn init_store(store: &mut impl SlotStore) {
        if store.get(Slot::Head).0.is_none() {
            let _ = store.set(Slot::Head, &0u64.to_le_bytes(), None);
        }
    }

    /// This worker's replication counters so far.
    pub fn stats(&self) -> SyncStats {
        self.stats
    }

    /// Applies the records other workers appended since the last pull to `state`'s index.
    pub fn pull(&mut self, store: &mut impl SlotStore, state: &mut State, config: &Config) {
        let (bytes, cas) = store.get(Slot::Head);
        let head = decode_head(bytes.as_deref());
        self.head = Some((head, cas));
        let window = self.params.ring.min(self.params.max_catch_up) as u64;
        let next = match self.next {
            // A fresh worker learns the recent past; a head behind us means the store was reset.
            None => head.saturating_sub(window),
            Some(n) if n > head => head,
            Some(n) => n,
        };
        let from = next.max(head.saturating_sub(window));
        self.stats.missed += from - next;
        for seq in from..head {
            let (bytes, _) = store.get(Slot::Record((seq % self.params.ring as u64) as u32));
            match bytes.as_deref().map(Record::decode) {
                Some(Ok(r)) if r.seq == seq => {
                    if r.origin != self.origin {
                        state.apply_served(config, &r.served);
                        self.stats.applied += 1;
                    }
                }
                _ => self.stats.missed += 1,
            }
        }
        self.next = Some(head);
    }

    /// Appends the insertions `state` made since the last push.
    pub fn push(&mut self, store: &mut impl SlotStore, state: &mut State) {
        for served in state.take_outbox() {
            self.append(store, served);
        }
    }

    fn append(&mut self, store: &mut impl SlotStore, served: Served) {
        for _ in 0..CAS_RETRIES {
            let (head, cas) = match self.head.take() {
                Some(h) => h,
                None => {
                    let (b, cas) = store.get(Slot::Head);
                    (decode_head(b.as_deref()), cas)
                }
            };
            match store.set(Slot::Head, &(head + 1).to_le_bytes(), cas) {
                Ok(()) => {
                    let record = Record {
                        seq: head,
                        origin: self.origin,
                        served,
                    };
                    record.encode_into(&mut self.buf);
                    let slot = Slot::Record((head % self.params.ring as u64) as u32);
                    match store.set(slot, &self.buf, None) {
                        Ok(()) => self.stats.appended += 1,
                        Err(_) => self.stats.dropped += 1,
                    }
                    // Caught up when it claimed: skip re-reading its own record next pull.
                    if self.next == Some(head) {
                        self.next = Some(head + 1);
                    }
                    return;
                }
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Failed) => break,
            }
        }
        self.stats.dropped += 1;
    }
}

/// An in-memory [`SlotStore`] with proxy-wasm CAS semantics (for tests and podsim).
#[derive(Clone, Debug, Default)]
pub struct MemSlots {
    entries: hashbrown::HashMap<Slot, (Vec<u8>, u32)>,
    cas_counter: u32,
}

impl SlotStore for MemSlots {
    fn get(&mut self, slot: Slot) -> (Option<Vec<u8>>, Option<u32>) {
        match self.entries.get(&slot) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&mut self, slot: Slot, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if cas.is_some() && cas != self.entries.get(&slot).map(|e| e.1) {
            return Err(StoreError::CasMismatch);
        }
        self.cas_counter = self.cas_counter.wrapping_add(1).max(1);
        self.entries.insert(slot, (value.to_vec(), self.cas_counter));
        Ok(())
    }
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
