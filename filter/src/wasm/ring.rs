//! The prefix-sync ring (picker-core `sync`) in proxy shared data, Envoy / Istio only.
//!
//! Keys: [`KEY_RING_HEAD`] holds the next sequence number; `wasm-epp/px/<i>` holds the record
//! whose sequence is ≡ i mod `prefixSync.ringSlots`. Each worker VM pulls the other workers'
//! records before a pick and pushes its own after it, so every worker's prefix index holds
//! what one shared index would.

use picker_core::sync::{Slot, SlotStore, StoreError};

use super::abi::{self, HostError};
use crate::relay::Appended;

/// The ring head: le64 next sequence.
pub const KEY_RING_HEAD: &str = "wasm-epp/px/head";

/// The record keys of a ring of `n` slots, built once at configure time (no formatting per
/// request).
pub fn ring_keys(n: u32) -> Vec<String> {
    (0..n).map(|i| format!("wasm-epp/px/{i}")).collect()
}

/// [`SlotStore`] over the host's shared data.
pub struct HostRing<'a> {
    pub keys: &'a [String],
    /// With the relay on: notes the sequence of every record this VM writes (its own
    /// insertions, appended by picker-core's `PrefixSync` after a pick), for its next batch.
    pub appended: Option<&'a mut Appended>,
}

impl HostRing<'_> {
    fn key(&self, slot: Slot) -> Option<&str> {
        match slot {
            Slot::Head => Some(KEY_RING_HEAD),
            Slot::Record(i) => self.keys.get(i as usize).map(String::as_str),
        }
    }
}

impl SlotStore for HostRing<'_> {
    fn get(&mut self, slot: Slot) -> (Option<Vec<u8>>, Option<u32>) {
        match self.key(slot) {
            Some(k) => match abi::shared_data(k) {
                Ok(Some((v, cas))) => (Some(v), Some(cas)),
                // A failed read looks like an empty slot: sync is best effort.
                Ok(None) | Err(_) => (None, None),
            },
            None => (None, None),
        }
    }

    fn set(&mut self, slot: Slot, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let Some(k) = self.key(slot) else {
            return Err(StoreError::Failed);
        };
        match abi::set_shared_data(k, value, cas.unwrap_or(0)) {
            Ok(()) => {
                if let (Slot::Record(_), Some(a)) = (slot, self.appended.as_deref_mut()) {
                    a.note(value);
                }
                Ok(())
            }
            Err(HostError::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Failed),
        }
    }
}
