//! End-to-end tests over loopback: podsim pods ⇄ collector ⇄ the compiled module in host-sim's
//! gateway ⇄ a real HTTP client. The first group reproduces the data-plane assertions of the GIE
//! conformance suite (`docs/epp.md`, "Conformance suite: data-plane assertions") against this
//! stack; the second injects faults.
//!
//! Which pod served a request is read from podsim's own `x-podsim-endpoint` response header,
//! never from the gateway, so routing is checked against ground truth.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use e2e::load::{run_closed, send, Call, Outcome};
use e2e::stack::{self, Collector, GatewaySpec, SNAPSHOT_PATH, TOKEN};
use e2e::{inflight_total, stored_snapshot, wait_for_ready};
use podsim::serve::{PodConfig, PodHandle};
use serde_json::{json, Value};

/// The GIE conformance suite's model and prompt (`docs/epp.md`, "Conformance suite: data-plane
/// assertions").
const MODEL: &str = "conformance-fake-model";
const PROMPT: &str = "Write as if you were a critic: San Francisco";
const STEER: &str = "test-epp-endpoint-selection";
const INTERVAL: Duration = Duration::from_millis(50);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Pods at the given addresses (port 0: any), serving `model` at 1000× real time.
async fn pods_at(binds: &[&str], model: &str) -> Vec<PodHandle> {
    let binds: Vec<SocketAddr> = binds.iter().map(|b| b.parse().expect("bind address")).collect();
    let config = PodConfig {
        model: model.into(),
        params: podsim::calib::ServerParams::default(),
        speed: 1000.0,
    };
    podsim::serve::start_pods_at(&binds, config).await.expect("pods start")
}

fn addrs(pods: &[PodHandle]) -> Vec<SocketAddr> {
    pods.iter().map(|p| p.addr).collect()
}

fn conformance_call(steer: Option<&str>) -> Call {
    let c = Call::completion(MODEL, PROMPT, 4);
    match steer {
        Some(s) => c.header(STEER, s),
        None => c,
    }
}

fn served(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        *m.entry(
            o.served_by
                .clone()
                .unwrap_or_else(|| format!("none (status {})", o.status)),
        )
        .or_insert(0) += 1;
    }
    m
}

#[track_caller]
fn all_ok(outcomes: &[Outcome]) {
    let bad: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200 || !o.complete).collect();
    assert!(
        bad.is_empty(),
        "{} of {} failed, first: {:?}",
        bad.len(),
        outcomes.len(),
        bad.first()
    );
}

/// Gateway in test mode + collector sidecar over `pods`, waiting for the first snapshot.
async fn conformance_stack(pods: &[SocketAddr], extra: &[(&str, Value)]) -> (host_sim::serve::Gateway, Collector) {
    let mut spec = GatewaySpec::picker(json!({"maxEndpoints": 1}), pods).with("testMode", json!(true));
    for (k, v) in extra {
        spec = spec.with(k, v.clone());
    }
    let gw = stack::gateway(&spec).expect("gateway starts");
    let col = Collector::sidecar(pods, gw.addr(), INTERVAL)
        .await
        .expect("collector starts");
    assert!(
        wait_for_ready(&gw, pods.len(), Duration::from_secs(10)).await,
        "first snapshot"
    );
    (gw, col)
}

// === conformance-style ===

/// `GatewayFollowingEPPRouting` + `GatewayDestinationEndpointServed`: each pod pinned alone,
/// then allow-lists of one, two and all pods; 100 requests at concurrency 10 per list.
#[test]
fn gateway_follows_the_picker_and_reports_the_served_endpoint() {
    rt().block_on(async {
        let pods = pods_at(&["127.0.0.1:0"; 3], MODEL).await;
        let a = addrs(&pods);
        let (gw, col) = conformance_stack(&a, &[]).await;
        for p in &a {
            let o = send(gw.addr(), &conformance_call(Some(&p.to_string()))).await;
            assert_eq!(o.status, 200, "{o:?}");
            assert_eq!(o.served_by.as_deref(), Some(p.to_string().as_str()), "pinned to {p}");
            assert_eq!(
                o.reported_served.as_deref(),
                Some(p.to_string().as_str()),
                "served endpoint reported"
            );
        }
        let lists: [Vec<SocketAddr>; 3] = [vec![a[2]], vec![a[0], a[1]], a.clone()];
        for list in lists {
            let header = list.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
            let calls = vec![conformance_call(Some(&header)); 100];
            let out = run_closed(gw.addr(), calls, 10).await;
            all_ok(&out);
            let allowed: BTreeSet<String> = list.iter().map(|p| p.to_string()).collect();
            let hits = served(&out);
            assert!(hits.keys().all(|k| allowed.contains(k)), "list {header}: {hits:?}");
            if list.len() > 1 {
                // The picker spreads load inside the list (GIE's lwepp round-robins there).
                assert!(hits.len() > 1, "list {header}: all on one pod: {hits:?}");
            }
        }
        col.stop().await.expect("collector stops");
        gw.shutdown();
    });
}

/// `GatewayFollowingEPPRoutingWithDataParallelism`: two hosts × three ports; the list mixes a
/// bare IP (any of its ports) and one `ip:port`.
#[test]
fn data_parallel_ranks_bare_ip_and_ip_port_entries() {
    rt().block_on(async {
        let pods = pods_at(
            &[
                "127.0.0.2:0",
                "127.0.0.2:0",
                "127.0.0.2:0",
                "127.0.0.3:0",
                "127.0.0.3:0",
                "127.0.0.3:0",
            ],
            MODEL,
        )
        .await;
        let a = addrs(&pods);
        let (gw, col) = conformance_stack(&a, &[]).await;
        let header = format!("127.0.0.2,{}", a[4]);
        let out = run_closed(gw.addr(), vec![conformance_call(Some(&header)); 100], 10).await;
        all_ok(&out);
        let allowed: BTreeSet<String> = [a[0], a[1], a[2], a[4]].iter().map(|p| p.to_string()).collect();
        let hits = served(&out);
        assert!(hits.keys().all(|k| allowed.contains(k)), "{hits:?}");
        assert!(hits.len() >= 2, "more than one rank used: {hits:?}");
        col.stop().await.expect("collector stops");
        gw.shutdown();
    });
}

/// `GatewayWeightedAcrossTwoInferencePools`, in this stack's terms: one route, a weighted model
/// rewrite 70/30 onto two pools serving different models; the steering list names all six pods,
/// so the pick must filter to the pool of the chosen model. 200 requests at concurrency 5;
/// the primary share must be within max(0.10, 4.5σ) of 0.70 (the suite's tolerance).
#[test]
fn weighted_split_across_two_pools() {
    rt().block_on(async {
        let mut pods = pods_at(&["127.0.0.1:0"; 3], "pool-a-model").await;
        pods.extend(pods_at(&["127.0.0.1:0"; 3], "pool-b-model").await);
        let a = addrs(&pods);
        let rewrite = json!({"rewrites": [{"model": MODEL, "targets": [
            {"model": "pool-a-model", "weight": 70}, {"model": "pool-b-model", "weight": 30}]}]});
        let (gw, col) = conformance_stack(&a, &[("models", rewrite)]).await;
        let all = a.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let out = run_closed(gw.addr(), vec![conformance_call(Some(&all)); 200], 5).await;
        // podsim answers 404 for a model it does not serve, so 200 proves the right pool.
        all_ok(&out);
        let pool_a: BTreeSet<String> = a[..3].iter().map(|p| p.to_string()).collect();
        let primary = out
            .iter()
            .filter(|o| o.served_by.as_ref().is_some_and(|s| pool_a.contains(s)))
            .count() as f64
            / out.len() as f64;
        let sigma = (0.7f64 * 0.3 / out.len() as f64).sqrt();
        let tol = (4.5 * sigma).max(0.10);
        assert!(
            (primary - 0.7).abs() <= tol,
            "primary share {primary:.3}, tolerance {tol:.3}"
        );
        col.stop().await.expect("collector stops");
        gw.shutdown();
    });
}

/// `EppUnAvailableFailOpen`: pinned routing works while the picker has a view; with no view at
/// all (no collector has ever pushed) a FailOpen module lets the cluster serve every request;
/// and when the collector dies, the stale view degrades but keeps routing.
#[test]
fn picker_unavailable_requests_are_still_served() {
    rt().block_on(async {
        let pods = pods_at(&["127.0.0.1:0"; 3], MODEL).await;
        let a = addrs(&pods);
        let extra = [("failureMode", json!("FailOpen"))];
        let (gw, col) = conformance_stack(&a, &extra).await;
        let o = send(gw.addr(), &conformance_call(Some(&a[0].to_string()))).await;
        assert_eq!(o.served_by.as_deref(), Some(a[0].to_string().as_str()));
        // The collector dies; the view goes stale (degradeAfterMs 300 here) and still routes.
        col.stop().await.expect("collector stops");
        gw.shutdown();

        let spec = GatewaySpec::picker(json!({"degradeAfterMs": 300}), &a).with("failureMode", json!("FailOpen"));
        let gw = stack::gateway(&spec).expect("gateway starts");
        // Never a snapshot: FailOpen, the cluster round-robins.
        let out = run_closed(gw.addr(), vec![conformance_call(None); 30], 5).await;
        all_ok(&out);
        assert_eq!(
            served(&out).len(),
            3,
            "cluster round-robin reaches every pod: {:?}",
            served(&out)
        );
        // A collector comes and goes: after it dies the module degrades and keeps serving.
        let col = Collector::sidecar(&a, gw.addr(), INTERVAL).await.expect("collector");
        assert!(wait_for_ready(&gw, 3, Duration::from_secs(10)).await);
        col.stop().await.expect("collector stops");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let out = run_closed(gw.addr(), vec![conformance_call(None); 30], 5).await;
        all_ok(&out);
        let degraded = gw.group().metric("wasm_epp_degraded").map(|m| m.value);
        assert_eq!(degraded, Some(1), "the module says it runs degraded");
        gw.shutdown();
    });
}

// === faults ===

/// A pod killed mid-run: the collector marks it not ready within two scrape rounds of noticing,
/// and no request sent after the kill is lost (the gateway walks the two-entry fallback list).
#[test]
fn killed_pod_is_excluded_and_later_requests_are_not_lost() {
    rt().block_on(async {
        let mut pods = pods_at(&["127.0.0.1:0"; 4], MODEL).await;
        let a = addrs(&pods);
        let spec = GatewaySpec::picker(json!({"maxEndpoints": 2}), &a);
        let gw = stack::gateway(&spec).expect("gateway starts");
        let col = Collector::sidecar(&a, gw.addr(), INTERVAL).await.expect("collector");
        assert!(wait_for_ready(&gw, 4, Duration::from_secs(10)).await);

        let warm = run_closed(gw.addr(), vec![Call::chat(MODEL, "You are terse.", "Hi", 8); 40], 8).await;
        all_ok(&warm);
        let victim = pods.pop().expect("four pods");
        let victim_addr = victim.addr;
        let seq_at_kill = stored_snapshot(&gw).expect("stored").sequence;
        // Watch the stored snapshots from the kill on: the first sequence that says "not ready".
        let group = gw.group().clone();
        let watcher = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                if let Some(s) = e2e::stored_in(&group) {
                    if s.endpoints.iter().any(|e| e.addr == victim_addr && !e.ready) {
                        return Some(s.sequence);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        });
        victim.kill();
        // Requests right after the kill, before any snapshot says so: the list is walked.
        let after = run_closed(
            gw.addr(),
            vec![Call::chat(MODEL, "You are terse.", "Hi again", 8); 200],
            8,
        )
        .await;
        all_ok(&after);
        assert!(
            after.iter().all(|o| o.served_by != Some(victim_addr.to_string())),
            "nothing is served by a dead pod"
        );
        let excluded_at = watcher.await.expect("watcher").expect("never marked not ready");
        // --fail-after 2: two failed rounds; +1 for the round already running at the kill.
        assert!(
            excluded_at - seq_at_kill <= 3,
            "excluded {} rounds after the kill",
            excluded_at - seq_at_kill
        );
        col.stop().await.expect("collector stops");
        gw.shutdown();
    });
}

/// Collector restarted: the new process's sequence (from the wall clock) is above the old one,
/// so its snapshots are accepted at once; a corrupt push or a wrong token changes nothing.
#[test]
fn collector_restart_and_bad_pushes() {
    rt().block_on(async {
        let pods = pods_at(&["127.0.0.1:0"; 2], MODEL).await;
        let a = addrs(&pods);
        let gw = stack::gateway(&GatewaySpec::picker(json!({}), &a)).expect("gateway starts");
        let col = Collector::sidecar(&a, gw.addr(), INTERVAL).await.expect("collector");
        assert!(wait_for_ready(&gw, 2, Duration::from_secs(10)).await);
        col.stop().await.expect("collector stops");
        let before = stored_snapshot(&gw).expect("stored").sequence;

        // Corrupt bytes with the right token: 400; wrong token: 401; the stored view is unchanged.
        let (raw_before, _) = gw.group().get_data("wasm-epp/snapshot").expect("stored");
        let garbage = Call {
            path: SNAPSHOT_PATH,
            headers: vec![("authorization".into(), format!("Bearer {TOKEN}"))],
            body: bytes::Bytes::from_static(b"WEPS\x01 definitely not a snapshot"),
            stream: false,
        };
        assert_eq!(send(gw.addr(), &garbage).await.status, 400);
        let mut wrong = garbage.clone();
        wrong.headers = vec![("authorization".into(), "Bearer not-the-token-at-all".into())];
        assert_eq!(send(gw.addr(), &wrong).await.status, 401);
        let (raw_after, _) = gw.group().get_data("wasm-epp/snapshot").expect("stored");
        assert_eq!(raw_before, raw_after, "a rejected push changes nothing");

        let col = Collector::sidecar(&a, gw.addr(), INTERVAL)
            .await
            .expect("collector again");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stored_snapshot(&gw).expect("stored").sequence <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "restarted collector never accepted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let out = run_closed(gw.addr(), vec![Call::chat(MODEL, "s", "q", 4); 20], 4).await;
        all_ok(&out);
        col.stop().await.expect("collector stops");
        gw.shutdown();
    });
}

/// 1,000 concurrent streams, 100,000 requests: every one answered, and the shared in-flight
/// counts return to zero (released on every end of stream).
#[test]
fn no_inflight_leak_over_100k_requests_at_1000_concurrent_streams() {
    let total: usize = std::env::var("E2E_LEAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    rt().block_on(async {
        let pods = pods_at(&["127.0.0.1:0"; 4], MODEL).await;
        let a = addrs(&pods);
        let gw = stack::gateway(&GatewaySpec::picker(json!({"maxEndpoints": 2}), &a)).expect("gateway");
        let col = Collector::sidecar(&a, gw.addr(), INTERVAL).await.expect("collector");
        assert!(wait_for_ready(&gw, 4, Duration::from_secs(10)).await);
        let calls: Vec<Call> = (0..total)
            .map(|i| Call::chat(MODEL, &format!("tenant {}", i % 50), &format!("question {i}"), 2))
            .collect();
        let out = run_closed(gw.addr(), calls, 1000).await;
        all_ok(&out);
        assert_eq!(out.len(), total);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while inflight_total(&gw) != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "in-flight leak: {}",
                inflight_total(&gw)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let finished: u64 = pods.iter().map(|p| p.finished()).sum();
        assert_eq!(finished, total as u64, "every request reached a pod exactly once");
        col.stop().await.expect("collector stops");
        gw.shutdown();
    });
}
