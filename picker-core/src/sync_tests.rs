use super::*;
// On wasm32-unknown-unknown the same tests run under wasm-bindgen-test (Node).
use crate::config::Profile;
use crate::prefix::EndpointKey;
use crate::prefix::PrefixHashes;
use crate::snapshot::Endpoint;
use crate::time::Instant;
use alloc::vec;
use core::net::SocketAddr;
use proptest::prelude::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn endpoint(n: u8) -> Endpoint {
    let mut e = Endpoint::new(SocketAddr::from(([10, 0, 0, n], 8000)), Instant::ZERO);
    e.gpu_blocks = Some(1000);
    e
}

fn hashes(h: &[u64]) -> PrefixHashes {
    // PrefixHashes has no public constructor from raw hashes; build it through the hasher and
    // then compare on what `match_longest` reports, so tests use real chains.
    let prompt: alloc::string::String = h.iter().map(|x| alloc::format!("{x:064}")).collect();
    crate::prefix::hash_prompt("m", None, crate::scan::Prompt::from_bytes(prompt.as_bytes()), 64, 256)
}

fn matches(state: &State, h: &PrefixHashes) -> Vec<(EndpointKey, u32)> {
    let mut out = Vec::new();
    state.index.match_longest(h.as_slice(), &mut out);
    out.sort_unstable();
    out
}

fn worker(cfg: &Config, origin: u64, params: SyncParams) -> (State, PrefixSync) {
    let mut st = State::new(cfg);
    st.enable_outbox();
    (st, PrefixSync::new(origin, params))
}

/// What the filter does around each pick: pull, insert (the pick), push.
fn serve(store: &mut MemSlots, cfg: &Config, w: &mut (State, PrefixSync), ep: &Endpoint, h: &PrefixHashes) {
    w.1.pull(store, &mut w.0, cfg);
    w.0.record_served(cfg, ep, h);
    w.1.push(store, &mut w.0);
}

#[test]
fn record_round_trip_and_rejects() {
    let r = Record {
        seq: 7,
        origin: 0xfeed,
        served: Served {
            endpoint: 42,
            capacity: 31_250,
            hashes: vec![1, 2, u64::MAX],
        },
    };
    let mut b = Vec::new();
    r.encode_into(&mut b);
    assert_eq!(b.len(), record_len(3));
    assert_eq!(Record::decode(&b), Ok(r));
    assert_eq!(Record::decode(&b[..10]), Err(RecordError::Truncated));
    assert_eq!(
        Record::decode(&b[..b.len() - 1]),
        Err(RecordError::LengthMismatch {
            expected: record_len(3),
            got: record_len(3) - 1
        })
    );
    let mut bad = b.clone();
    bad[0] = b'X';
    assert_eq!(Record::decode(&bad), Err(RecordError::BadMagic));
    let mut many = b.clone();
    many[32..34].copy_from_slice(&5000u16.to_le_bytes());
    assert_eq!(Record::decode(&many), Err(RecordError::TooManyHashes(5000)));
}

#[test]
fn a_prefix_routed_by_one_worker_is_known_to_another() {
    let cfg = Config::profile(Profile::WasmEppDefault);
    let mut store = MemSlots::default();
    let mut a = worker(&cfg, 1, SyncParams::default());
    let mut b = worker(&cfg, 2, SyncParams::default());
    let h = hashes(&[1, 2, 3, 4]);
    let ep = endpoint(3);
    serve(&mut store, &cfg, &mut a, &ep, &h);
    assert_eq!(matches(&b.0, &h), vec![]);
    b.1.pull(&mut store, &mut b.0, &cfg);
    assert_eq!(matches(&b.0, &h), vec![(ep.key(), 4)]);
    assert_eq!(b.1.stats().applied, 1);
    // A does not re-apply its own record.
    a.1.pull(&mut store, &mut a.0, &cfg);
    assert_eq!(a.1.stats().applied, 0);
    assert_eq!(a.1.stats().appended, 1);
    assert_eq!(matches(&a.0, &h), vec![(ep.key(), 4)]);
}

#[test]
fn without_sync_nothing_is_shared() {
    // The control for the test above: no outbox, no records.
    let cfg = Config::profile(Profile::WasmEppDefault);
    let mut store = MemSlots::default();
    let mut a = (State::new(&cfg), PrefixSync::new(1, SyncParams::default()));
    let mut b = worker(&cfg, 2, SyncParams::default());
    let h = hashes(&[1, 2]);
    serve(&mut store, &cfg, &mut a, &endpoint(1), &h);
    b.1.pull(&mut store, &mut b.0, &cfg);
    assert_eq!(matches(&b.0, &h), vec![]);
    assert_eq!(store.get(Slot::Head).0, None);
}

#[test]
fn catch_up_is_capped_and_overwritten_records_are_missed() {
    let cfg = Config::profile(Profile::WasmEppDefault);
    let params = SyncParams {
        ring: 8,
        max_catch_up: 32,
    };
    let mut store = MemSlots::default();
    let mut a = worker(&cfg, 1, params);
    let mut b = worker(&cfg, 2, params);
    b.1.pull(&mut store, &mut b.0, &cfg);
    for i in 0..20u64 {
        serve(&mut store, &cfg, &mut a, &endpoint(1), &hashes(&[i]));
    }
    b.1.pull(&mut store, &mut b.0, &cfg);
    // The ring keeps 8: the 12 oldest are gone.
    assert_eq!((b.1.stats().applied, b.1.stats().missed), (8, 12));
    assert_eq!(matches(&b.0, &hashes(&[19])).len(), 1);
    assert_eq!(matches(&b.0, &hashes(&[0])).len(), 0);

    let params = SyncParams {
        ring: 64,
        max_catch_up: 5,
    };
    let mut c = worker(&cfg, 3, params);
    let mut d = worker(&cfg, 4, params);
    let mut store = MemSlots::default();
    d.1.pull(&mut store, &mut d.0, &cfg);
    for i in 0..20u64 {
        serve(&mut store, &cfg, &mut c, &endpoint(1), &hashes(&[i]));
    }
    d.1.pull(&mut store, &mut d.0, &cfg);
    assert_eq!((d.1.stats().applied, d.1.stats().missed), (5, 15));
}

#[test]
fn racing_appenders_get_distinct_sequences() {
    let cfg = Config::profile(Profile::WasmEppDefault);
    let mut store = MemSlots::default();
    PrefixSync::init_store(&mut store);
    let mut a = worker(&cfg, 1, SyncParams::default());
    let mut b = worker(&cfg, 2, SyncParams::default());
    // Both pull at head 0 (same CAS token), then both push: B's cached token is stale.
    a.1.pull(&mut store, &mut a.0, &cfg);
    b.1.pull(&mut store, &mut b.0, &cfg);
    let (ha, hb) = (hashes(&[10]), hashes(&[20]));
    a.0.record_served(&cfg, &endpoint(1), &ha);
    b.0.record_served(&cfg, &endpoint(2), &hb);
    a.1.push(&mut store, &mut a.0);
    b.1.push(&mut store, &mut b.0);
    assert_eq!(decode_head(store.get(Slot::Head).0.as_deref()), 2);
    let seqs: Vec<u64> = (0..2)
        .map(|i| Record::decode(&store.get(Slot::Record(i)).0.unwrap()).unwrap().seq)
        .collect();
    assert_eq!(seqs, vec![0, 1]);
    a.1.pull(&mut store, &mut a.0, &cfg);
    b.1.pull(&mut store, &mut b.0, &cfg);
    assert_eq!(matches(&a.0, &hb), vec![(endpoint(2).key(), 1)]);
    assert_eq!(matches(&b.0, &ha), vec![(endpoint(1).key(), 1)]);
}

#[test]
fn garbage_slots_and_a_reset_head_are_survived() {
    let cfg = Config::profile(Profile::WasmEppDefault);
    let mut store = MemSlots::default();
    let mut b = worker(&cfg, 2, SyncParams::default());
    b.1.pull(&mut store, &mut b.0, &cfg);
    store.set(Slot::Head, &3u64.to_le_bytes(), None).unwrap();
    store.set(Slot::Record(0), b"not a record", None).unwrap();
    store.set(Slot::Record(2), &[0xff; 100], None).unwrap();
    b.1.pull(&mut store, &mut b.0, &cfg);
    assert_eq!((b.1.stats().applied, b.1.stats().missed), (0, 3));
    // A head that goes backwards (shared data reset) resets the cursor instead of waiting.
    store.set(Slot::Head, &[], None).unwrap();
    b.1.pull(&mut store, &mut b.0, &cfg);
    let mut a = worker(&cfg, 1, SyncParams::default());
    serve(&mut store, &cfg, &mut a, &endpoint(1), &hashes(&[5]));
    b.1.pull(&mut store, &mut b.0, &cfg);
    assert_eq!(b.1.stats().applied, 1);
}

#[test]
fn outbox_is_bounded() {
    let cfg = Config::profile(Profile::WasmEppDefault);
    let mut st = State::new(&cfg);
    st.enable_outbox();
    for i in 0..20u64 {
        st.record_served(&cfg, &endpoint(1), &hashes(&[i]));
    }
    // An empty prompt is indexed (as before) but never replicated.
    st.record_served(&cfg, &endpoint(1), &PrefixHashes::default());
    let out = st.take_outbox();
    assert_eq!(out.len(), crate::state::OUTBOX_MAX);
    assert_eq!(out.last().unwrap().hashes, hashes(&[19]).as_slice());
    assert!(st.take_outbox().is_empty());
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Record::decode(&bytes);
    }

    #[test]
    fn encode_decode_round_trips(seq: u64, origin: u64, ep: u64, cap: u32,
                                 hs in prop::collection::vec(any::<u64>(), 0..300)) {
        let r = Record { seq, origin, served: Served { endpoint: ep, capacity: cap, hashes: hs } };
        let mut b = Vec::new();
        r.encode_into(&mut b);
        prop_assert_eq!(Record::decode(&b), Ok(r));
    }

    /// Workers that pull before and push after every insertion end with exactly the matches of
    /// one global index (within the ring and catch-up bounds).
    #[test]
    fn synced_workers_equal_one_global_index(
        ops in prop::collection::vec((0usize..3, 0u64..6, 1u8..5, 1usize..6), 1..60)
    ) {
        let cfg = Config::profile(Profile::WasmEppDefault);
        let mut store = MemSlots::default();
        let mut ws: Vec<(State, PrefixSync)> = (0..3).map(|i| worker(&cfg, 100 + i, SyncParams::default())).collect();
        let mut global = State::new(&cfg);
        let prompt = |p: u64, len: usize| hashes(&(0..len as u64).map(|i| p * 10 + i).collect::<Vec<_>>());
        for &(w, p, e, len) in &ops {
            let h = prompt(p, len);
            serve(&mut store, &cfg, &mut ws[w], &endpoint(e), &h);
            global.record_served(&cfg, &endpoint(e), &h);
        }
        for w in ws.iter_mut() {
            w.1.pull(&mut store, &mut w.0, &cfg);
            for p in 0..6 {
                let h = prompt(p, 5);
                prop_assert_eq!(matches(&w.0, &h), matches(&global, &h));
            }
        }
    }
}
