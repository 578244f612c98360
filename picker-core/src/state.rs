//! The picker's mutable state: the prefix index of one worker, and the insertions it made that
//! [`crate::sync`] replicates to the other workers.

use alloc::vec::Vec;

use crate::config::Config;
use crate::prefix::{EndpointKey, PrefixHashes, PrefixIndex};
use crate::snapshot::Endpoint;

/// One index insertion to replicate: `endpoint` was sent a prompt with these block hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// The endpoint that was sent the prompt.
    pub endpoint: EndpointKey,
    /// The endpoint's LRU capacity in blocks, as the origin used it.
    pub capacity: u32,
    /// The prompt's block hashes, first to last.
    pub hashes: Vec<u64>,
}

/// Mutable picker state: the prefix index. One per worker; [`crate::sync`] replicates it
/// between workers.
#[derive(Clone, Debug)]
pub struct State {
    /// This worker's prefix index: which endpoints were sent which prompt-block hashes.
    pub index: PrefixIndex,
    pub(crate) matches: Vec<(EndpointKey, u32)>,
    /// Insertions not yet replicated; `None` unless [`State::enable_outbox`] was called.
    outbox: Option<Vec<Served>>,
}

/// Most insertions kept for replication between two pushes; older ones are dropped.
pub const OUTBOX_MAX: usize = 8;

impl State {
    /// An empty state whose index has the configuration's `prefix.maxIndexEntries` cap; the
    /// outbox is off.
    pub fn new(config: &Config) -> Self {
        State {
            index: PrefixIndex::new(config.prefix().max_index_entries),
            matches: Vec::new(),
            outbox: None,
        }
    }

    /// Keeps every local insertion for [`crate::sync::PrefixSync::push`].
    pub fn enable_outbox(&mut self) {
        self.outbox.get_or_insert_with(Vec::new);
    }

    /// The insertions made since the last call (empty without an outbox).
    pub fn take_outbox(&mut self) -> Vec<Served> {
        self.outbox.as_mut().map(core::mem::take).unwrap_or_default()
    }

    /// Records that `endpoint` served a request with `hashes` (use when the proxy walked the
    /// fallback list and the served endpoint differs from the primary pick).
    pub fn record_served(&mut self, config: &Config, endpoint: &Endpoint, hashes: &PrefixHashes) {
        let (key, cap) = (
            endpoint.key(),
            endpoint.gpu_blocks.unwrap_or(config.prefix().lru_capacity),
        );
        self.index
            .insert(key, cap, hashes.as_slice(), config.prefix().insert_order);
        // Full hits are replicated too: they refresh the prompt's LRU recency on every worker.
        // (Skipping them cost the shared-prefix benchmark up to 1 point of hit rate and doubled
        // TTFT p90 at some rates: the index evicts by recency.)
        if let (Some(out), false) = (self.outbox.as_mut(), hashes.is_empty()) {
            if out.len() == OUTBOX_MAX {
                out.remove(0);
            }
            out.push(Served {
                endpoint: key,
                capacity: cap,
                hashes: hashes.as_slice().to_vec(),
            });
        }
    }

    /// Applies an insertion (local, or replicated from another worker) to the index.
    pub fn apply_served(&mut self, config: &Config, s: &Served) {
        self.index
            .insert(s.endpoint, s.capacity, &s.hashes, config.prefix().insert_order);
    }
}
