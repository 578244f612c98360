//! The relay between gateway replicas (docs/replicas.md) in the compiled module: two simulated
//! proxies with separate shared data, the batches one sends carried by hand to the other's
//! relay path, as a collector would.
use std::sync::OnceLock;

use filter::relay::{self, BatchHeader};
use host_sim::{CallResponse, Host, HostOptions, HostProfile, Plugin, StreamId};
use picker_core::{Endpoint, Instant, Snapshot};

const TOKEN: &str = "test-token-0123456789";
const RELAY_TOKEN: &str = "relay-token-0123456789";
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const SNAPSHOT_PATH: &str = "/.well-known/wasm-epp/snapshot";
const RELAY_PATH: &str = "/.well-known/wasm-epp/snapshot/relay";
const NOW_MS: u64 = 1_700_000_000_000;
const TTL_MS: u64 = 10_000;

fn plugin() -> &'static Plugin {
    static P: OnceLock<Plugin> = OnceLock::new();
    P.get_or_init(|| {
        let path = std::env::var("WASM_EPP_WASM")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/wasm-epp.wasm").to_string());
        let cache = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/host-sim-modules/.cache");
        Plugin::from_file_cached(&path, std::path::Path::new(cache))
            .unwrap_or_else(|e| panic!("{path}: {e}; build it first with ./build.sh wasm"))
    })
}

fn config(relay: bool, extra: &str) -> String {
    let relay = if relay {
        format!(r#","relay":{{"cluster":"collector","intervalMs":50,"token":"{RELAY_TOKEN}"}}"#)
    } else {
        String::new()
    };
    format!(
        r#"{{"snapshot":{{"token":"{TOKEN}"}},"picker":{{"profile":"gie-default"}},"testMode":true{relay}{extra}}}"#
    )
}

/// A proxy with `workers` worker VMs; relay calls to cluster `collector` stay pending until the
/// test answers them. Each proxy gets its own randomness (host-sim's is seeded; a real proxy's
/// is not), hence its own replica and VM ids.
fn proxy(relay: bool, workers: usize, extra: &str) -> Host {
    static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut o = HostOptions::new(HostProfile::Envoy);
    o.random_seed = SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 0x1000_0001;
    o.vm_id = "wasm-epp".into();
    o.plugin_config = config(relay, extra).into_bytes();
    o.allow_on_headers_stop_iteration = true;
    o.properties
        .insert("source.address".into(), b"127.0.0.1:45000".to_vec());
    o.clusters.insert("collector".into(), None);
    Host::new(plugin(), o, workers).expect("module loads and configures")
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn pods() -> Vec<String> {
    (1..=8).map(|i| format!("10.0.1.{i}:8000")).collect()
}

fn snapshot(seq: u64) -> Vec<u8> {
    let endpoints = pods()
        .iter()
        .map(|a| {
            let mut e = Endpoint::new(a.parse().unwrap(), Instant::from_millis(NOW_MS));
            e.kv_usage = 0.1;
            e.models = vec![MODEL.into()];
            e
        })
        .collect();
    Snapshot {
        sequence: seq,
        generated_at: Instant::from_millis(NOW_MS),
        endpoints,
    }
    .encode()
    .unwrap()
}

struct Reply {
    status: u32,
    headers: Vec<(String, String)>,
}

/// POSTs `body` to `path` on worker `w` with `token`.
fn post(host: &mut Host, w: usize, path: &str, method: &str, token: &str, body: &[u8]) -> Reply {
    let wk = host.worker(w);
    let s = wk.new_stream();
    let auth = format!("Bearer {token}");
    let len = body.len().to_string();
    wk.request_headers(
        s,
        h(&[
            (":method", method),
            (":path", path),
            ("authorization", &auth),
            ("content-length", &len),
        ]),
        body.is_empty(),
    );
    if wk.immediate(s).is_none() {
        wk.request_body(s, body, true);
    }
    let status = wk
        .immediate(s)
        .map(|i| i.status)
        .expect("intake always answers locally");
    assert!(
        wk.upstream(s).and_then(|u| u.headers.as_ref()).is_none(),
        "a push is never forwarded"
    );
    let headers = wk.downstream(s).and_then(|d| d.headers.clone()).unwrap_or_default();
    wk.finish(s);
    Reply { status, headers }
}

fn push_snapshot(host: &mut Host) {
    assert_eq!(post(host, 0, SNAPSHOT_PATH, "POST", TOKEN, &snapshot(1)).status, 204);
}

fn relay_push(host: &mut Host, w: usize, body: &[u8]) -> Reply {
    post(host, w, RELAY_PATH, "POST", RELAY_TOKEN, body)
}

fn chat(system: &str, question: &str) -> Vec<u8> {
    format!(r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{question}"}}],"stream":true}}"#).into_bytes()
}

/// Sends one chat request through worker `w` (pinned to `pin` if given); the stream stays open.
fn send(host: &mut Host, w: usize, body: &[u8], pin: Option<&str>) -> (StreamId, String) {
    let wk = host.worker(w);
    let s = wk.new_stream();
    let mut hs = h(&[
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "gw"),
    ]);
    if let Some(p) = pin {
        hs.push(("test-epp-endpoint-selection".into(), p.into()));
    }
    wk.request_headers(s, hs, false);
    wk.request_body(s, body, true);
    let dest = wk
        .upstream(s)
        .and_then(|u| u.headers.as_ref())
        .and_then(|hs| hs.iter().find(|(k, _)| k == "x-gateway-destination-endpoint"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("not routed: {:?}", wk.immediate(s)));
    (s, dest)
}

/// A relay call a worker made: its headers and body.
type Call = (Vec<(String, String)>, Vec<u8>);

/// Ticks the proxy past one relay interval and takes the relay calls its workers made, each
/// answered with `status`.
fn relay_calls(host: &mut Host, status: &str) -> Vec<Call> {
    host.advance_ms(60);
    let mut out = Vec::new();
    for i in 0..host.workers.len() {
        let w = host.worker(i);
        for call in w.pending_calls() {
            assert_eq!(call.cluster, "collector");
            w.respond_http_call(
                call.token,
                CallResponse {
                    headers: vec![(":status".into(), status.into())],
                    ..Default::default()
                },
            );
            out.push((call.headers, call.body));
        }
    }
    out
}

fn ring_head(host: &Host) -> u64 {
    host.group
        .get_data("wasm-epp/px/head")
        .ok()
        .and_then(|(b, _)| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
}

fn inflight_totals(host: &Host) -> (u64, u64) {
    let now_ms = host.opts.clock.now_ns() / 1_000_000;
    match host.group.get_data(filter::inflight::KEY_INFLIGHT) {
        Ok((bytes, _)) => filter::inflight::totals(&bytes, now_ms, TTL_MS),
        Err(_) => (0, 0),
    }
}

fn no_traps(host: &mut Host) {
    for i in 0..host.workers.len() {
        assert!(host.worker(i).failed().is_none(), "worker {i} trapped");
    }
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The owner of the first local (not relayed) section of an in-flight table (layout in
/// `filter::inflight`).
fn local_owner(table: &[u8]) -> u64 {
    let u32_at = |at: usize| u32::from_le_bytes(table[at..at + 4].try_into().unwrap());
    let n_sections = u32_at(8) as usize;
    let mut at = 16 + 16 * u32_at(4) as usize;
    for _ in 0..n_sections {
        let (owner, n, flags) = (
            u64::from_le_bytes(table[at..at + 8].try_into().unwrap()),
            u32_at(at + 16) as usize,
            u32_at(at + 20),
        );
        if flags & filter::inflight::RELAYED == 0 {
            return owner;
        }
        at += 24 + 16 * n;
    }
    panic!("no local section")
}

#[test]
fn each_worker_sends_its_own_insertions_and_counts_on_its_tick() {
    let mut a = proxy(true, 2, "");
    push_snapshot(&mut a);
    let pod = pods()[3].clone();
    let (s0, d0) = send(&mut a, 0, &chat("tenant zero", "q"), Some(&pod));
    let (s1, d1) = send(&mut a, 1, &chat("tenant one", "q"), Some(&pod));
    assert_eq!((d0.as_str(), d1.as_str()), (pod.as_str(), pod.as_str()));
    let calls = relay_calls(&mut a, "204");
    assert_eq!(calls.len(), 2, "one call per worker VM");
    let mut senders = Vec::new();
    for (headers, body) in &calls {
        assert_eq!(header(headers, ":method"), Some("POST"));
        assert_eq!(header(headers, ":path"), Some("/relay"));
        assert_eq!(header(headers, ":authority"), Some("collector"));
        assert_eq!(
            header(headers, "authorization"),
            Some(format!("Bearer {RELAY_TOKEN}").as_str())
        );
        let b = relay::decode(body, 4096).expect("a well-formed batch");
        assert_ne!(b.header.replica, 0);
        assert_eq!(b.header.sequence, 1);
        assert_eq!(b.records.len(), 1, "its own insertion only, not its neighbour's");
        let key = Endpoint::new(pod.parse().unwrap(), Instant::ZERO).key();
        assert_eq!(b.records[0].endpoint, key);
        assert_eq!(b.inflight.len(), 1);
        assert_eq!((b.inflight[0].key, b.inflight[0].requests), (key, 1));
        senders.push(b.header);
    }
    assert_ne!(senders[0].sender, senders[1].sender);
    assert_eq!(senders[0].replica, senders[1].replica, "one replica id per proxy");

    // Nothing new: nothing sent.
    assert!(relay_calls(&mut a, "204").is_empty());
    // A stream ends: that worker sends its emptied counts, with the next sequence.
    a.worker(0).finish(s0);
    let calls = relay_calls(&mut a, "204");
    assert_eq!(calls.len(), 1);
    let b = relay::decode(&calls[0].1, 4096).unwrap();
    assert_eq!((b.header.sequence, b.records.len(), b.inflight.len()), (2, 0, 0));
    // Counts unchanged for a quarter of the time-to-live: a heartbeat batch keeps them alive.
    let mut beats = 0;
    for _ in 0..(TTL_MS / 4 / 60 + 2) {
        beats += relay_calls(&mut a, "204").len();
    }
    assert_eq!(beats, 1, "one heartbeat from the worker with a stream open");
    a.worker(1).finish(s1);
    no_traps(&mut a);
}

#[test]
fn a_failing_collector_never_fails_a_request() {
    let mut a = proxy(true, 1, "");
    push_snapshot(&mut a);
    for i in 0..5 {
        let (s, _) = send(&mut a, 0, &chat(&format!("tenant {i}"), "q"), None);
        a.worker(0).finish(s);
        let calls = relay_calls(&mut a, "503");
        assert_eq!(calls.len(), 1);
    }
    // A reset (no answer at all), then a call the host refuses (unknown cluster): both values.
    let (s, _) = send(&mut a, 0, &chat("tenant x", "q"), None);
    a.worker(0).finish(s);
    a.advance_ms(60);
    let w = a.worker(0);
    for c in w.pending_calls() {
        w.respond_http_call(
            c.token,
            CallResponse {
                fail: true,
                ..Default::default()
            },
        );
    }
    let logs: Vec<String> = a.logs().iter().map(|l| l.message.clone()).collect();
    assert_eq!(
        logs.iter()
            .filter(|m| m.contains("relay to cluster collector /relay:"))
            .count(),
        2,
        "logged once per change of outcome: {logs:?}"
    );
    let mut b = proxy(false, 1, r#","relay":{"cluster":"nowhere"}"#);
    push_snapshot(&mut b);
    let (s, _) = send(&mut b, 0, &chat("t", "q"), None);
    b.worker(0).finish(s);
    b.advance_ms(60);
    assert!(b.worker(0).pending_calls().is_empty());
    no_traps(&mut a);
    no_traps(&mut b);
}

/// Replica A's batches carried to replica B: every worker of B then routes A's prefixes where A
/// sent them. With gie-default (no consistent hashing) and 8 equally loaded pods, B alone would
/// agree with A one time in 8.
#[test]
fn another_replicas_prefixes_reach_every_worker() {
    let run = |relay_on: bool| -> (usize, u64) {
        let mut a = proxy(true, 1, "");
        let mut b = proxy(true, 2, "");
        push_snapshot(&mut a);
        push_snapshot(&mut b);
        let mut same = 0;
        let mut pinned = Vec::new();
        for g in 0..12 {
            let system = format!("You are the assistant of tenant {g}. ").repeat(20);
            let pod = pods()[g % 8].clone();
            let (s, _) = send(&mut a, 0, &chat(&system, "first question"), Some(&pod));
            a.worker(0).finish(s);
            pinned.push((system, pod));
        }
        let head_before = ring_head(&b);
        if relay_on {
            for (_, body) in relay_calls(&mut a, "204") {
                let r = relay_push(&mut b, 0, &body);
                assert_eq!(r.status, 204);
                assert!(
                    header(&r.headers, "x-wasm-epp-relay").is_some_and(|v| v.starts_with("applied=1 ")),
                    "{:?}",
                    r.headers
                );
            }
        }
        // Worker 1 took no push: it learns A's prefixes through B's ring.
        for (system, pod) in &pinned {
            let (s, dest) = send(&mut b, 1, &chat(system, "another question"), None);
            b.worker(1).finish(s);
            same += usize::from(&dest == pod);
        }
        no_traps(&mut a);
        no_traps(&mut b);
        (same, ring_head(&b) - head_before)
    };
    let (same, head) = run(true);
    assert_eq!(same, 12, "every prefix goes where replica A sent it");
    // 12 relayed records, then B's own 12 insertions.
    assert_eq!(head, 24);
    let (same, _) = run(false);
    assert!(
        same < 12,
        "without the relay B cannot know A's prefixes ({same}/12 agreed)"
    );
}

#[test]
fn relayed_counts_add_to_the_receivers_view_and_expire() {
    let mut a = proxy(true, 1, "");
    let mut b = proxy(true, 1, "");
    push_snapshot(&mut a);
    push_snapshot(&mut b);
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(send(&mut a, 0, &chat(&format!("t{i}"), "q"), Some(&pods()[0])).0);
    }
    let (mine, _) = send(&mut b, 0, &chat("local", "q"), Some(&pods()[1]));
    let calls = relay_calls(&mut a, "204");
    assert_eq!(relay_push(&mut b, 0, &calls[0].1).status, 204);
    assert_eq!(inflight_totals(&b).0, 4, "B's own stream plus A's three");
    // The sender's next batch replaces its section.
    a.worker(0).finish(open.pop().unwrap());
    let calls = relay_calls(&mut a, "204");
    assert_eq!(relay_push(&mut b, 0, &calls[0].1).status, 204);
    assert_eq!(inflight_totals(&b).0, 3);
    // A goes silent (dies): its section leaves B's view one time-to-live later; B's own stays.
    b.advance_ms(TTL_MS + 100);
    assert_eq!(inflight_totals(&b).0, 1);
    b.worker(0).finish(mine);
    assert_eq!(inflight_totals(&b).0, 0);
    no_traps(&mut b);
}

/// Duplicates (the same batch through two collectors), reordered batches, a replica's own
/// batches pushed back to it, and a sender that claims a local VM's identity: all dropped, and
/// nothing in shared data changes.
#[test]
fn duplicates_stale_batches_and_echoes_change_nothing() {
    let mut a = proxy(true, 1, "");
    let mut b = proxy(true, 2, "");
    push_snapshot(&mut a);
    push_snapshot(&mut b);
    let (s, _) = send(&mut a, 0, &chat("t1", "q"), Some(&pods()[2]));
    let first = relay_calls(&mut a, "204").remove(0).1;
    a.worker(0).finish(s);
    let (s, _) = send(&mut a, 0, &chat("t2", "q"), Some(&pods()[2]));
    let second = relay_calls(&mut a, "204").remove(0).1;
    assert_eq!(relay_push(&mut b, 0, &second).status, 204);
    let snapshot_of = |h: &Host| {
        let mut keys = h.group.data_keys();
        keys.sort();
        keys.into_iter()
            .map(|k| (k.clone(), h.group.get_data(&k).ok().map(|d| d.0)))
            .collect::<Vec<_>>()
    };
    let before = snapshot_of(&b);
    let applied = |r: &Reply| header(&r.headers, "x-wasm-epp-relay").map(str::to_string);
    // The same batch again (a second collector), on the other worker; then an older one.
    let r = relay_push(&mut b, 1, &second);
    assert_eq!(
        (r.status, applied(&r).as_deref()),
        (204, Some("applied=0 stale=1 echo=0 records=0 lost=0"))
    );
    let r = relay_push(&mut b, 0, &first);
    assert_eq!(
        applied(&r).as_deref(),
        Some("applied=0 stale=1 echo=0 records=0 lost=0")
    );
    assert_eq!(snapshot_of(&b), before, "dropped batches change nothing");
    // A's own batch pushed back to A.
    let r = relay_push(&mut a, 0, &second);
    assert_eq!(
        applied(&r).as_deref(),
        Some("applied=0 stale=0 echo=1 records=0 lost=0")
    );
    // A batch naming one of B's own VMs as its sender.
    let (local, _) = send(&mut b, 0, &chat("local", "q"), None);
    let table = b.group.get_data(filter::inflight::KEY_INFLIGHT).unwrap().0;
    let owner = local_owner(&table);
    let forged = relay::encode(
        &BatchHeader {
            replica: 1,
            sender: owner,
            sequence: 99,
            sent_at_ms: NOW_MS,
        },
        &[],
        &[filter::inflight::Entry {
            key: 5,
            requests: 9,
            tokens: 0,
        }],
    );
    let table_before = b.group.get_data(filter::inflight::KEY_INFLIGHT).unwrap().0;
    let r = relay_push(&mut b, 1, &forged);
    assert_eq!(
        applied(&r).as_deref(),
        Some("applied=0 stale=0 echo=1 records=0 lost=0")
    );
    assert_eq!(
        b.group.get_data(filter::inflight::KEY_INFLIGHT).unwrap().0,
        table_before
    );
    b.worker(0).finish(local);
    a.worker(0).finish(s);
    no_traps(&mut a);
    no_traps(&mut b);
}

#[test]
fn refused_relay_pushes_change_nothing() {
    let mut b = proxy(true, 1, "");
    push_snapshot(&mut b);
    let good = relay::encode(
        &BatchHeader {
            replica: 3,
            sender: 4,
            sequence: 1,
            sent_at_ms: NOW_MS,
        },
        &[picker_core::sync::Served {
            endpoint: 1,
            capacity: 10,
            hashes: vec![1, 2, 3],
        }],
        &[],
    );
    let state = |h: &Host| {
        let mut keys = h.group.data_keys();
        keys.sort();
        keys.into_iter()
            .map(|k| (k.clone(), h.group.get_data(&k).ok().map(|d| d.0)))
            .collect::<Vec<_>>()
    };
    let before = state(&b);
    let mut truncated = good.clone();
    truncated.pop();
    let huge = vec![0u8; filter::config::DEFAULT_RELAY_MAX_BYTES + 1];
    let cases: [(&str, &str, &[u8], u32); 7] = [
        ("POST", "not-the-relay-token-at-all", &good, 401),
        ("POST", TOKEN, &good, 401),
        ("GET", RELAY_TOKEN, &good, 405),
        ("POST", RELAY_TOKEN, &truncated, 400),
        ("POST", RELAY_TOKEN, b"WRB1 junk", 400),
        ("POST", RELAY_TOKEN, &[], 400),
        ("POST", RELAY_TOKEN, &huge, 413),
    ];
    for (method, token, body, want) in cases {
        let r = post(&mut b, 0, RELAY_PATH, method, token, body);
        assert_eq!(r.status, want, "{method} {token} {} bytes", body.len());
    }
    // From a source that may not push.
    let mut o = HostOptions::new(HostProfile::Envoy);
    o.vm_id = "wasm-epp".into();
    o.plugin_config = config(true, "").into_bytes();
    o.allow_on_headers_stop_iteration = true;
    o.properties.insert("source.address".into(), b"10.9.9.9:1".to_vec());
    o.random_seed = 0xfa4;
    o.clusters.insert("collector".into(), None);
    let mut far = Host::new(plugin(), o, 1).unwrap();
    assert_eq!(relay_push(&mut far, 0, &good).status, 403);
    assert_eq!(state(&b), before, "a refused push changes nothing");
    // The snapshot token is not the relay token, and a batch is not a snapshot.
    assert_eq!(post(&mut b, 0, SNAPSHOT_PATH, "POST", TOKEN, &good).status, 400);
    // Accepted at last, it changes the ring.
    assert_eq!(relay_push(&mut b, 0, &good).status, 204);
    assert_eq!(ring_head(&b), 1);
    no_traps(&mut b);
}

#[test]
fn without_relay_config_nothing_is_sent_and_the_path_is_not_taken() {
    let mut a = proxy(false, 1, "");
    push_snapshot(&mut a);
    let (s, _) = send(&mut a, 0, &chat("t", "q"), None);
    a.worker(0).finish(s);
    a.advance_ms(200);
    assert!(a.worker(0).pending_calls().is_empty());
    assert!(a.group.get_data(relay::KEY_REPLICA).is_err());
    // The relay path is an ordinary request then (forwarded, not answered).
    let w = a.worker(0);
    let s = w.new_stream();
    w.request_headers(s, h(&[(":method", "POST"), (":path", RELAY_PATH)]), true);
    assert!(w.immediate(s).is_none());
    no_traps(&mut a);
}
