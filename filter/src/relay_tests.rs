use super::*;
use picker_core::sync::{MemSlots, PrefixSync, SyncParams};
use picker_core::{Config, State};
use proptest::prelude::*;

fn served(endpoint: u64, hashes: &[u64]) -> Served {
    Served {
        endpoint,
        capacity: 1000,
        hashes: hashes.to_vec(),
    }
}

fn entry(key: u64, requests: u32, tokens: u32) -> Entry {
    Entry { key, requests, tokens }
}

fn header(sender: u64, sequence: u64) -> BatchHeader {
    BatchHeader {
        replica: 7,
        sender,
        sequence,
        sent_at_ms: 1_700_000_000_000,
    }
}

#[test]
fn a_batch_round_trips() {
    let h = header(42, 3);
    let records = vec![served(1, &[10, 11, 12]), served(2, &[20])];
    let inflight = vec![entry(1, 2, 300), entry(5, 1, 0)];
    let b = encode(&h, &records, &inflight);
    assert_eq!(b.len(), HEADER + 2 * RECORD_HEADER + 8 * 4 + 2 + 2 * INFLIGHT_ENTRY);
    let d = decode(&b, 256).unwrap();
    assert_eq!(
        d,
        Batch {
            header: h,
            records,
            inflight
        }
    );
    assert_eq!(peek_header(&b), Some(h));
}

#[test]
fn a_bundle_is_batches_back_to_back() {
    let a = encode(&header(1, 1), &[served(1, &[1])], &[]);
    let b = encode(&header(2, 9), &[], &[entry(3, 1, 1)]);
    let mut bundle = a.clone();
    bundle.extend_from_slice(&b);
    let d = decode_bundle(&bundle, 256).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[1].header.sender, 2);
    // One batch is exactly one batch: a bundle posted as a batch is refused.
    assert_eq!(decode(&bundle, 256), Err(BatchError::Trailing { offset: a.len() }));
    assert_eq!(decode_bundle(&[], 256), Err(BatchError::Empty));
    // A bundle with a bad tail is refused whole.
    bundle.push(0);
    assert!(decode_bundle(&bundle, 256).is_err());
}

#[test]
fn encode_leaves_out_what_cannot_decode() {
    let many: Vec<Served> = (0..100).map(|i| served(i, &[i])).collect();
    let with_empty = [served(1, &[]), served(2, &[2])];
    let inflight = [entry(1, 0, 5), entry(2, 1, 5)];
    let d = decode(&encode(&header(1, 1), &many, &[]), 256).unwrap();
    assert_eq!(d.records.len(), MAX_RECORDS);
    let d = decode(&encode(&header(1, 1), &with_empty, &inflight), 256).unwrap();
    assert_eq!(d.records, vec![served(2, &[2])]);
    assert_eq!(d.inflight, vec![entry(2, 1, 5)]);
}

#[test]
fn the_largest_batch_is_max_batch_len() {
    let hashes: Vec<u64> = (0..256).collect();
    let records: Vec<Served> = (0..MAX_RECORDS as u64).map(|i| served(i, &hashes)).collect();
    let inflight: Vec<Entry> = (0..MAX_INFLIGHT as u64).map(|k| entry(k, 1, 1)).collect();
    let b = encode(&header(1, 1), &records, &inflight);
    assert_eq!(b.len(), max_batch_len(256));
    assert!(decode(&b, 256).is_ok());
    // The receiver's own bound on hashes per record applies.
    assert!(matches!(
        decode(&b, 255),
        Err(BatchError::TooManyHashes { n: 256, max: 255, .. })
    ));
}

#[test]
fn malformed_batches_are_refused_with_their_reason() {
    let good = encode(&header(1, 1), &[served(1, &[1, 2])], &[entry(1, 1, 1), entry(2, 1, 1)]);
    for cut in 0..good.len() {
        assert!(
            matches!(
                decode(&good[..cut], 256),
                Err(BatchError::Truncated { .. } | BatchError::Empty)
            ),
            "cut at {cut}"
        );
    }
    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(decode(&bad, 256), Err(BatchError::BadMagic { offset: 0 }));

    // n_records past the bound.
    let mut bad = good.clone();
    bad[HEADER - 2..HEADER].copy_from_slice(&(MAX_RECORDS as u16 + 1).to_le_bytes());
    assert!(matches!(decode(&bad, 256), Err(BatchError::TooManyRecords { .. })));

    // A record without hashes.
    let mut bad = encode(&header(1, 1), &[served(1, &[1])], &[]);
    let n_at = HEADER + 12;
    bad[n_at..n_at + 2].copy_from_slice(&0u16.to_le_bytes());
    bad.drain(n_at + 2..n_at + 10);
    assert!(matches!(decode(&bad, 256), Err(BatchError::EmptyRecord { .. })));

    // In-flight entries out of order, repeated, or with no request.
    let entries_at = good.len() - 2 * INFLIGHT_ENTRY;
    let mut bad = good.clone();
    bad[entries_at..entries_at + 8].copy_from_slice(&9u64.to_le_bytes());
    assert!(matches!(decode(&bad, 256), Err(BatchError::BadEntry { .. })));
    let mut bad = good.clone();
    bad[entries_at + 8..entries_at + 12].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(decode(&bad, 256), Err(BatchError::BadEntry { .. })));
    let mut bad = good.clone();
    let n_at = entries_at - 2;
    bad[n_at..n_at + 2].copy_from_slice(&(MAX_INFLIGHT as u16 + 1).to_le_bytes());
    assert!(matches!(decode(&bad, 256), Err(BatchError::TooManyEntries { .. })));
    // Every error has a message.
    assert!(!BatchError::TooManyBatches.to_string().is_empty());
}

fn arb_batch() -> impl Strategy<Value = (BatchHeader, Vec<Served>, Vec<Entry>)> {
    let h = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(replica, sender, sequence, t)| {
        BatchHeader {
            replica,
            sender,
            sequence,
            sent_at_ms: t,
        }
    });
    let rec = (any::<u64>(), any::<u32>(), prop::collection::vec(any::<u64>(), 1..20)).prop_map(
        |(endpoint, capacity, hashes)| Served {
            endpoint,
            capacity,
            hashes,
        },
    );
    let ents = prop::collection::btree_map(any::<u64>(), (1u32.., any::<u32>()), 0..20).prop_map(|m| {
        m.into_iter()
            .map(|(key, (requests, tokens))| Entry { key, requests, tokens })
            .collect::<Vec<_>>()
    });
    (h, prop::collection::vec(rec, 0..10), ents)
}

proptest! {
    #[test]
    fn any_batch_round_trips((h, records, inflight) in arb_batch()) {
        let b = encode(&h, &records, &inflight);
        prop_assert_eq!(b.len(), encoded_len(&records, &inflight));
        let d = decode(&b, 64).unwrap();
        prop_assert_eq!(d, Batch { header: h, records, inflight });
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), max in 0usize..5000) {
        let _ = decode(&bytes, max);
        let _ = decode_bundle(&bytes, max);
        let _ = peek_header(&bytes);
        let seen = seen_entries(&bytes);
        prop_assert!(seen.len() <= MAX_SENDERS);
    }

    /// Valid batches with bytes flipped, cut or appended: an error or a batch, never a panic;
    /// and whatever decodes re-encodes to the same bytes (nothing is accepted loosely).
    #[test]
    fn mutated_batches_decode_exactly_or_not_at_all(
        (h, records, inflight) in arb_batch(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut b = encode(&h, &records, &inflight);
        for (i, v) in flips {
            let at = i.index(b.len());
            b[at] = v;
        }
        let keep = cut.index(b.len() + 1);
        b.truncate(keep);
        b.extend_from_slice(&tail);
        if let Ok(d) = decode(&b, MAX_RECORD_HASHES) {
            prop_assert_eq!(&encode(&d.header, &d.records, &d.inflight), &b);
        }
        if let Ok(all) = decode_bundle(&b, MAX_RECORD_HASHES) {
            let mut again = Vec::new();
            for d in &all {
                encode_into(&mut again, &d.header, &d.records, &d.inflight);
            }
            prop_assert_eq!(&again, &b);
        }
    }
}

// === seen table ===

#[test]
fn the_seen_table_remembers_the_last_sequence_per_sender() {
    let t = seen_update(&[], &[(5, 10), (2, 1)], 1_000, 60_000);
    let s = seen_entries(&t);
    assert_eq!(last_sequence(&s, 5), Some(10));
    assert_eq!(last_sequence(&s, 2), Some(1));
    assert_eq!(last_sequence(&s, 3), None);
    // A sequence never moves back.
    let t = seen_update(&s, &[(5, 4)], 2_000, 60_000);
    assert_eq!(last_sequence(&seen_entries(&t), 5), Some(10));
    // Past the horizon a sender is forgotten.
    let t = seen_update(&seen_entries(&t), &[(9, 1)], 2_000 + 60_001, 60_000);
    let s = seen_entries(&t);
    assert_eq!(s.len(), 1);
    assert_eq!(last_sequence(&s, 9), Some(1));
    for junk in [&b""[..], b"wrs1", b"wrs1\x01\0\0\0", &[0u8; 40]] {
        assert!(seen_entries(junk).is_empty());
    }
}

#[test]
fn the_seen_table_is_bounded_and_drops_the_stalest() {
    let mut s = Vec::new();
    for sender in 0..(MAX_SENDERS as u64 + 10) {
        s = seen_entries(&seen_update(&s, &[(sender, 1)], 1_000 + sender, 1 << 40));
    }
    assert_eq!(s.len(), MAX_SENDERS);
    assert!(s.iter().all(|e| e.sender >= 10), "senders 0..10 were the stalest");
}

// === ring ===

#[test]
fn a_foreign_record_is_applied_by_every_worker_but_its_origin() {
    let cfg = Config::default();
    let params = SyncParams::default();
    let mut ring = MemSlots::default();
    PrefixSync::init_store(&mut ring);
    let mut w1 = PrefixSync::new(1, params);
    let mut s1 = State::new(&cfg);
    w1.pull(&mut ring, &mut s1, &cfg);
    let mut buf = Vec::new();
    assert!(append_foreign(
        &mut ring,
        params.ring,
        777,
        served(42, &[1, 2, 3]),
        &mut buf
    ));
    w1.pull(&mut ring, &mut s1, &cfg);
    assert_eq!(w1.stats().applied, 1);
    let mut m = Vec::new();
    s1.index.match_longest(&[1, 2, 3], &mut m);
    assert_eq!(m, vec![(42, 3)], "the worker's index has it");
    // A worker whose origin is the record's does not apply it again.
    let mut w2 = PrefixSync::new(777, params);
    let mut s2 = State::new(&cfg);
    w2.pull(&mut ring, &mut s2, &cfg);
    assert_eq!(w2.stats().applied, 0);
}

/// A store that notes every record it writes, as the module's ring does for the relay.
struct Noting<'a> {
    inner: &'a mut MemSlots,
    appended: &'a mut Appended,
}

impl SlotStore for Noting<'_> {
    fn get(&mut self, slot: Slot) -> (Option<Vec<u8>>, Option<u32>) {
        self.inner.get(slot)
    }
    fn set(&mut self, slot: Slot, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.inner.set(slot, value, cas)?;
        if matches!(slot, Slot::Record(_)) {
            self.appended.note(value);
        }
        Ok(())
    }
}

#[test]
fn a_vm_reads_back_exactly_its_own_records() {
    let cfg = Config::default();
    let params = SyncParams {
        ring: 4,
        max_catch_up: 4,
    };
    let mut ring = MemSlots::default();
    PrefixSync::init_store(&mut ring);
    let mut mine = Appended::default();
    let mut other = Appended::default();
    let mut buf = Vec::new();
    // A foreign record lands between this VM's two.
    let mut a = PrefixSync::new(1, params);
    let mut state = State::new(&cfg);
    state.enable_outbox();
    let ep = picker_core::Endpoint::new("10.0.0.1:8000".parse().unwrap(), picker_core::Instant::ZERO);
    let hashes =
        |p: &str| picker_core::prefix::hash_prompt("m", None, picker_core::Prompt::from_bytes(p.as_bytes()), 4, 64);
    let first = hashes("abcdefgh");
    state.record_served(&cfg, &ep, &first);
    a.push(
        &mut Noting {
            inner: &mut ring,
            appended: &mut mine,
        },
        &mut state,
    );
    append_foreign(&mut ring, params.ring, 9, served(3, &[9]), &mut buf);
    state.record_served(&cfg, &ep, &hashes("ijkl"));
    a.push(
        &mut Noting {
            inner: &mut ring,
            appended: &mut other,
        },
        &mut state,
    );
    let got = mine.take_records(&mut ring, params.ring, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].hashes, first.as_slice());
    assert!(mine.is_empty(), "taken");
    // A record overwritten since (the ring wrapped) is skipped.
    for i in 0..4 {
        append_foreign(&mut ring, params.ring, 9, served(3, &[i]), &mut buf);
    }
    assert!(other.take_records(&mut ring, params.ring, 1).is_empty());
    // The list keeps the newest MAX_RECORDS.
    let mut many = Appended::default();
    for seq in 0..(MAX_RECORDS as u64 + 3) {
        let mut rec = vec![0u8; 12];
        rec[4..12].copy_from_slice(&seq.to_le_bytes());
        many.note(&rec);
    }
    assert_eq!(many.0.len(), MAX_RECORDS);
    assert_eq!(many.0.front(), Some(&3));
    many.note(b"short");
    assert_eq!(many.0.len(), MAX_RECORDS);
}

/// The checked-in fuzz seeds (`fuzz/corpus/relay`) hold the fuzz target's contracts.
#[test]
fn the_fuzz_seeds_decode_and_re_encode_exactly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/relay");
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    for name in ["batch-records-and-counts.bin", "batch-empty.bin"] {
        let b = read(name);
        let d = decode(&b, 4096).unwrap();
        assert_eq!(encode(&d.header, &d.records, &d.inflight), b, "{name}");
    }
    let bundle = read("bundle-three.bin");
    assert_eq!(decode_bundle(&bundle, 4096).unwrap().len(), 3);
    assert_eq!(seen_entries(&read("seen-table.bin")).len(), 2);
}
