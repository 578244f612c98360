use super::*;
use picker_core::{Endpoint, Instant, Snapshot};
use proptest::prelude::*;

const TTL: u64 = 10_000;

fn pool(n: usize) -> Pool {
    let endpoints = (0..n)
        .map(|i| Endpoint::new(format!("10.0.0.{}:8000", i + 1).parse().unwrap(), Instant::ZERO))
        .collect();
    Pool::new(Snapshot {
        sequence: 1,
        generated_at: Instant::ZERO,
        endpoints,
    })
}

fn counts(bytes: &[u8], p: &Pool, now: u64) -> Vec<(u32, u64)> {
    let mut out = vec![InFlight { requests: 9, tokens: 9 }; 7];
    for_pool(bytes, p, now, TTL, &mut out);
    out.iter().map(|c| (c.requests, c.tokens)).collect()
}

/// The aggregate a well-formed table must carry: the sum of its sections.
fn recomputed_aggregate(bytes: &[u8]) -> Vec<Entry> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let v = view(bytes).expect("well-formed");
    let mut sum: Vec<Entry> = Vec::new();
    for s in v.sections() {
        for e in s.entries() {
            adjust(&mut sum, e, true);
        }
    }
    sum
}

fn aggregate(bytes: &[u8]) -> Vec<Entry> {
    if bytes.is_empty() {
        return Vec::new();
    }
    view(bytes)
        .expect("well-formed")
        .aggregate
        .chunks_exact(RECORD)
        .map(record)
        .collect()
}

#[test]
fn local_counts_add_and_release_to_empty() {
    let mut l = Local::default();
    l.apply(7, 100, true);
    l.apply(7, 50, true);
    l.apply(3, 10, true);
    assert_eq!(
        l.entries(),
        &[
            Entry {
                key: 3,
                requests: 1,
                tokens: 10
            },
            Entry {
                key: 7,
                requests: 2,
                tokens: 150
            }
        ]
    );
    l.apply(7, 100, false);
    l.apply(7, 50, false);
    l.apply(3, 10, false);
    // A release with nothing in flight is a no-op, not an underflow.
    l.apply(9, 5, false);
    assert!(l.is_empty());
}

#[test]
fn tokens_leave_at_the_first_chunk_and_requests_at_the_end() {
    let mut l = Local::default();
    l.apply(7, 300, true);
    l.apply(7, 200, true);
    l.release_tokens(7, 300);
    assert_eq!(
        l.entries(),
        &[Entry {
            key: 7,
            requests: 2,
            tokens: 200
        }]
    );
    // The request's own release then takes the tokens it has left (none).
    l.apply(7, 0, false);
    l.release_tokens(7, 200);
    l.apply(7, 0, false);
    assert!(l.is_empty());
    l.release_tokens(9, 5);
    assert!(l.is_empty());
}

#[test]
fn two_vms_sum_and_a_dead_one_expires() {
    let p = pool(3);
    let (k0, k1) = (p.key(0), p.key(1));
    let (mut a, mut b) = (Local::default(), Local::default());
    a.apply(k0, 100, true);
    a.apply(k1, 10, true);
    b.apply(k0, 40, true);
    let t = publish(&[], 1, &a, 1_000, TTL);
    let t = publish(&t, 2, &b, 2_000, TTL);
    assert_eq!(counts(&t, &p, 2_000), vec![(2, 140), (1, 10), (0, 0)]);
    assert_eq!(total_requests(&t, 2_000, TTL), 3);

    // VM 1 dies; past the time-to-live its section no longer counts for readers...
    let later = 1_000 + TTL + 1;
    assert_eq!(counts(&t, &p, later), vec![(1, 40), (0, 0), (0, 0)]);
    assert_eq!(total_requests(&t, later, TTL), 1);
    // ...VM 2's own stamp is 2,000, still live; the next write by VM 2 drops VM 1's section.
    assert!(needs_write(&t, 2, &b, later, TTL, TTL / 4));
    let t = publish(&t, 2, &b, later, TTL);
    assert_eq!(view(&t).unwrap().n_sections, 1);
    assert_eq!(aggregate(&t), recomputed_aggregate(&t));
    assert_eq!(counts(&t, &p, later), vec![(1, 40), (0, 0), (0, 0)]);

    // Releasing everything leaves an empty table.
    b.apply(k0, 40, false);
    let t = publish(&t, 2, &b, later + 1, TTL);
    assert_eq!(total_requests(&t, later + 1, TTL), 0);
    assert!(aggregate(&t).is_empty());
    assert_eq!(view(&t).unwrap().n_sections, 0);
}

#[test]
fn a_section_dropped_while_its_vm_lived_comes_back_on_its_next_write() {
    // A VM stalled past the time-to-live loses its section to another writer; its local
    // counts are still the truth, and its next write publishes them again.
    let p = pool(2);
    let mut slow = Local::default();
    slow.apply(p.key(0), 5, true);
    let t = publish(&[], 1, &slow, 0, TTL);
    let t = publish(&t, 2, &Local::default(), TTL + 1, TTL);
    assert_eq!(counts(&t, &p, TTL + 1), vec![(0, 0), (0, 0)]);
    assert!(needs_write(&t, 1, &slow, TTL + 2, TTL, TTL / 4));
    let t = publish(&t, 1, &slow, TTL + 2, TTL);
    assert_eq!(counts(&t, &p, TTL + 2), vec![(1, 5), (0, 0)]);
}

#[test]
fn heartbeats_and_idle_writes() {
    let p = pool(1);
    let mut l = Local::default();
    l.apply(p.key(0), 1, true);
    let t = publish(&[], 1, &l, 1_000, TTL);
    // Unchanged and fresh: nothing to write.
    assert!(!needs_write(&t, 1, &l, 1_000 + TTL / 4 - 1, TTL, TTL / 4));
    // Due for a heartbeat.
    assert!(needs_write(&t, 1, &l, 1_000 + TTL / 4, TTL, TTL / 4));
    // Changed.
    let mut l2 = l.clone();
    l2.apply(p.key(0), 1, true);
    assert!(needs_write(&t, 1, &l2, 1_001, TTL, TTL / 4));
    // A VM with nothing in flight and no section never writes, unless a section expired.
    assert!(!needs_write(&t, 2, &Local::default(), 1_001, TTL, TTL / 4));
    assert!(needs_write(&t, 2, &Local::default(), 1_001 + TTL, TTL, TTL / 4));
    assert!(needs_write(b"junk", 2, &Local::default(), 0, TTL, TTL / 4));
}

#[test]
fn malformed_tables_read_as_empty_and_are_replaced() {
    let p = pool(2);
    for junk in [
        &b""[..],
        b"junk",
        b"wei1",
        &[0u8; 64],
        b"wei1\xff\xff\xff\xff\0\0\0\0\0\0\0\0",
    ] {
        assert_eq!(counts(junk, &p, 0), vec![(0, 0), (0, 0)]);
        assert_eq!(total_requests(junk, 0, TTL), 0);
        let mut l = Local::default();
        l.apply(p.key(1), 3, true);
        let t = publish(junk, 1, &l, 0, TTL);
        assert_eq!(counts(&t, &p, 0), vec![(0, 0), (1, 3)]);
    }
}

#[test]
fn the_section_bound_drops_the_stalest_first() {
    let p = pool(1);
    let mut l = Local::default();
    l.apply(p.key(0), 1, true);
    let mut t = Vec::new();
    for owner in 0..(MAX_SECTIONS as u64 + 5) {
        t = publish(&t, owner, &l, 1_000 + owner, TTL);
    }
    let v = view(&t).unwrap();
    assert_eq!(v.n_sections, MAX_SECTIONS);
    assert!(v.sections().all(|s| s.owner >= 5), "owners 0..5 were the stalest");
    assert_eq!(counts(&t, &p, 2_000), vec![(MAX_SECTIONS as u32, MAX_SECTIONS as u64)]);
    assert_eq!(aggregate(&t), recomputed_aggregate(&t));
}

#[derive(Clone, Debug)]
enum Op {
    Acquire { vm: usize, ep: usize, tokens: u32 },
    Release { vm: usize, nth: usize },
    Tick { vm: usize },
    Advance { ms: u64 },
    Die { vm: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..4, 0usize..5, 0u32..5000).prop_map(|(vm, ep, tokens)| Op::Acquire { vm, ep, tokens }),
        3 => (0usize..4, 0usize..64).prop_map(|(vm, nth)| Op::Release { vm, nth }),
        1 => (0usize..4).prop_map(|vm| Op::Tick { vm }),
        2 => (0u64..4_000).prop_map(|ms| Op::Advance { ms }),
        1 => (0usize..4).prop_map(|vm| Op::Die { vm }),
    ]
}

proptest! {
    /// Any mix of acquires, releases, heartbeats, clock advances and VM deaths (a dead VM is
    /// replaced by a new owner and never writes again): after every step the aggregate equals
    /// the sum of the sections, and what readers see equals the live VMs' own counts, except
    /// for VMs dead for at most the time-to-live.
    #[test]
    fn readers_see_live_truth_and_the_aggregate_matches(ops in prop::collection::vec(op(), 1..80)) {
        let p = pool(5);
        let refresh = TTL / 4;
        let mut now = 1_000u64;
        // Per VM slot: owner id, open requests (endpoint, tokens), and local counts.
        let mut owners = [10u64, 20, 30, 40];
        let mut open: Vec<Vec<(usize, u32)>> = vec![Vec::new(); 4];
        let mut local: Vec<Local> = vec![Local::default(); 4];
        // Dead VMs' counts, and when each died.
        let mut dead: Vec<(u64, Local)> = Vec::new();
        let mut last_write = [0u64; 4];
        let mut t: Vec<u8> = Vec::new();
        for op in ops {
            let mut wrote = None;
            match op {
                Op::Acquire { vm, ep, tokens } => {
                    local[vm].apply(p.key(ep), tokens, true);
                    open[vm].push((ep, tokens));
                    wrote = Some(vm);
                }
                Op::Release { vm, nth } => {
                    if !open[vm].is_empty() {
                        let n = open[vm].len();
                        let (ep, tokens) = open[vm].remove(nth % n);
                        local[vm].apply(p.key(ep), tokens, false);
                        wrote = Some(vm);
                    }
                }
                Op::Tick { vm } => {
                    if needs_write(&t, owners[vm], &local[vm], now, TTL, refresh) {
                        wrote = Some(vm);
                    }
                }
                Op::Advance { ms } => {
                    now += ms;
                    // Live VMs tick at least every `refresh` ms, as the module's timer does.
                    for vm in 0..4 {
                        if now - last_write[vm] >= refresh && needs_write(&t, owners[vm], &local[vm], now, TTL, refresh) {
                            t = publish(&t, owners[vm], &local[vm], now, TTL);
                            last_write[vm] = now;
                        }
                    }
                }
                Op::Die { vm } => {
                    dead.push((last_write[vm], std::mem::take(&mut local[vm])));
                    open[vm].clear();
                    owners[vm] += 1000;
                    last_write[vm] = now;
                }
            }
            if let Some(vm) = wrote {
                t = publish(&t, owners[vm], &local[vm], now, TTL);
                last_write[vm] = now;
            }
            prop_assert_eq!(aggregate(&t), recomputed_aggregate(&t));
            // Readers: exactly the live VMs' truth, plus dead VMs whose last write is within
            // the time-to-live (their bound).
            let mut seen = Vec::new();
            for_pool(&t, &p, now, TTL, &mut seen);
            for (i, c) in seen.iter().enumerate() {
                let key = p.key(i);
                let live: u32 = local.iter().flat_map(|l| l.entries()).filter(|e| e.key == key).map(|e| e.requests).sum();
                let ghosts: u32 = dead.iter()
                    .filter(|(at, _)| now.saturating_sub(*at) <= TTL)
                    .flat_map(|(_, l)| l.entries())
                    .filter(|e| e.key == key)
                    .map(|e| e.requests)
                    .sum();
                prop_assert!(c.requests >= live && c.requests <= live + ghosts,
                    "endpoint {}: read {} live {} ghosts {}", i, c.requests, live, ghosts);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), owner in 0u64..4, now in 0u64..100_000) {
        let p = pool(3);
        let mut out = Vec::new();
        for_pool(&bytes, &p, now, TTL, &mut out);
        prop_assert_eq!(out.len(), 3);
        let _ = total_requests(&bytes, now, TTL);
        let _ = needs_write(&bytes, owner, &Local::default(), now, TTL, TTL / 4);
        let mut l = Local::default();
        l.apply(p.key(0), 1, true);
        let t = publish(&bytes, owner, &l, now, TTL);
        prop_assert!(view(&t).is_some(), "a write always leaves a well-formed table");
    }

    /// Structurally valid headers over arbitrary records (unsorted, zero counts, duplicate
    /// owners) still never panic, and a write repairs nothing it should not touch.
    #[test]
    fn well_framed_garbage_never_panics(
        agg in prop::collection::vec((0u64..8, any::<u32>(), any::<u32>()), 0..6),
        secs in prop::collection::vec((0u64..3, 0u64..20_000, prop::collection::vec((0u64..8, any::<u32>(), any::<u32>()), 0..4)), 0..4),
        now in 0u64..40_000,
    ) {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&(agg.len() as u32).to_le_bytes());
        b.extend_from_slice(&(secs.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for (k, r, t) in &agg {
            put_record(&mut b, &Entry { key: *k, requests: *r, tokens: *t });
        }
        for (owner, stamp, recs) in &secs {
            b.extend_from_slice(&owner.to_le_bytes());
            b.extend_from_slice(&stamp.to_le_bytes());
            b.extend_from_slice(&(recs.len() as u32).to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            for (k, r, t) in recs {
                put_record(&mut b, &Entry { key: *k, requests: *r, tokens: *t });
            }
        }
        prop_assert!(view(&b).is_some());
        let p = pool(3);
        let mut out = Vec::new();
        for_pool(&b, &p, now, TTL, &mut out);
        let t = publish(&b, 1, &Local::default(), now, TTL);
        prop_assert!(view(&t).is_some());
    }
}

// === relayed sections (other gateway replicas' VMs) ===

fn entries(l: &Local) -> Vec<Entry> {
    l.entries().to_vec()
}

#[test]
fn relayed_sections_sum_with_local_ones_and_never_replace_them() {
    let p = pool(2);
    let (k0, k1) = (p.key(0), p.key(1));
    let mut mine = Local::default();
    mine.apply(k0, 10, true);
    let t = publish(&[], 1, &mine, 1_000, TTL);
    let mut remote = Local::default();
    remote.apply(k0, 5, true);
    remote.apply(k1, 7, true);
    let t = upsert_relayed(&t, 99, &entries(&remote), 1_000, TTL).expect("a new sender");
    assert_eq!(counts(&t, &p, 1_000), vec![(2, 15), (1, 7)]);
    assert_eq!(aggregate(&t), recomputed_aggregate(&t));
    assert!(owned_locally(&t, 1) && !owned_locally(&t, 99));

    // A relayed section that names a local VM is refused: nothing to write.
    assert_eq!(upsert_relayed(&t, 1, &entries(&remote), 1_000, TTL), None);

    // The sender's next batch replaces its section; an empty one removes it.
    remote.apply(k1, 7, false);
    let t = upsert_relayed(&t, 99, &entries(&remote), 1_050, TTL).unwrap();
    assert_eq!(counts(&t, &p, 1_050), vec![(2, 15), (0, 0)]);
    let t2 = upsert_relayed(&t, 99, &[], 1_100, TTL).unwrap();
    assert_eq!(counts(&t2, &p, 1_100), vec![(1, 10), (0, 0)]);
    assert_eq!(view(&t2).unwrap().n_sections, 1);

    // A local write keeps the relayed section and its flag.
    mine.apply(k1, 1, true);
    let t = publish(&t, 1, &mine, 1_200, TTL);
    assert!(!owned_locally(&t, 99), "still relayed after a local write");
    assert_eq!(counts(&t, &p, 1_200), vec![(2, 15), (1, 1)]);

    // A sender that stops refreshing expires like a dead local VM, and the next write drops it.
    let later = 1_050 + TTL + 1;
    assert_eq!(counts(&t, &p, later), vec![(1, 10), (1, 1)]);
    assert!(needs_write(&t, 1, &mine, later, TTL, TTL / 4));
    let t = publish(&t, 1, &mine, later, TTL);
    assert_eq!(view(&t).unwrap().n_sections, 1);
    assert_eq!(aggregate(&t), recomputed_aggregate(&t));
}

#[derive(Clone, Debug)]
enum RelayOp {
    Local { vm: u64, ep: usize, add: bool },
    Relayed { sender: u64, counts: Vec<(usize, u32)> },
    Advance { ms: u64 },
}

fn relay_op() -> impl Strategy<Value = RelayOp> {
    prop_oneof![
        3 => (0u64..3, 0usize..4, any::<bool>()).prop_map(|(vm, ep, add)| RelayOp::Local { vm, ep, add }),
        3 => (1u64..5, prop::collection::vec((0usize..4, 1u32..4), 0..4))
            .prop_map(|(sender, counts)| RelayOp::Relayed { sender, counts }),
        1 => (0u64..6_000).prop_map(|ms| RelayOp::Advance { ms }),
    ]
}

proptest! {
    /// Local writes and relayed upserts in any order, senders that collide with local owners
    /// included (owners 1 and 2 are both): the aggregate always equals the sum of the sections,
    /// a local VM's section is never replaced by a relayed one, and readers see every live
    /// local VM's truth.
    #[test]
    fn relayed_upserts_keep_the_table_consistent(ops in prop::collection::vec(relay_op(), 1..60)) {
        let p = pool(4);
        let mut now = 1_000u64;
        let mut local: Vec<Local> = vec![Local::default(); 3];
        let mut t: Vec<u8> = Vec::new();
        for op in ops {
            match op {
                RelayOp::Local { vm, ep, add } => {
                    local[vm as usize].apply(p.key(ep), 1, add);
                    t = publish(&t, vm, &local[vm as usize], now, TTL);
                }
                RelayOp::Relayed { sender, counts } => {
                    let mut l = Local::default();
                    for (ep, n) in counts {
                        for _ in 0..n {
                            l.apply(p.key(ep), 2, true);
                        }
                    }
                    let before = t.clone();
                    match upsert_relayed(&t, sender, &entries(&l), now, TTL) {
                        Some(next) => {
                            prop_assert!(!owned_locally(&before, sender));
                            t = next;
                        }
                        None => prop_assert!(owned_locally(&before, sender)),
                    }
                }
                RelayOp::Advance { ms } => {
                    now += ms;
                    for vm in 0..3u64 {
                        if needs_write(&t, vm, &local[vm as usize], now, TTL, TTL / 4) {
                            t = publish(&t, vm, &local[vm as usize], now, TTL);
                        }
                    }
                }
            }
            if !t.is_empty() {
                prop_assert_eq!(aggregate(&t), recomputed_aggregate(&t));
            }
            let mut seen = Vec::new();
            for_pool(&t, &p, now, TTL, &mut seen);
            for (i, c) in seen.iter().enumerate() {
                let key = p.key(i);
                let live: u32 = local.iter().flat_map(|l| l.entries()).filter(|e| e.key == key).map(|e| e.requests).sum();
                prop_assert!(c.requests >= live, "endpoint {}: read {} < local {}", i, c.requests, live);
            }
        }
    }
}
