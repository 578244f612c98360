//! Deployment shapes: where the picker runs and what a decision costs.
//!
//! A policy name says *what* is decided; its deployment tag says *where*, and so what each
//! decision costs and what the deciding view knows:
//!
//! | tag | shape | the request reaches its server | views |
//! |---|---|---|---|
//! | none | idealised picker (every table before issue 16) | at once | one per (worker, replica), `@WxR` |
//! | `+proxy` | the picker inside the proxy | after [`DeployParams::decision_cost`] | as above |
//! | `+relay[:D[:L[:I]]]` | in the proxy, replicas sharing through the collector relay (implies `+sync` and `+proxy`) | after the decision cost | W × R, each replica also seeing the others' insertions and in-flight counts `D` ms late ([`RelayParams`]) |
//! | `+epp[:C[:P50[:P95]]]` | a central Endpoint Picker (`ext_proc`) | after queueing for the EPP's capacity and a per-decision hop ([`EppParams`]) | one global view |
//!
//! Every parameter is a flag of `podsim bench` with the default and source given here.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;

use picker_core::sync::{MemSlots, Record, Slot, SlotStore};
use picker_core::{InFlight, Rng, SplitMix64};

use crate::calib::Micros;

/// Standard normal quantile at 0.95 (used to fit a log-normal to a p50 and a p95).
pub const Z95: f64 = 1.644_853_626_951_472_2;

/// All deployment parameters (the defaults of `podsim bench`'s flags).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeployParams {
    /// What one in-proxy decision costs before the request is forwarded (`--decision-cost-ms`).
    ///
    /// Default **50 µs**: the order of the module's measured time in callbacks per request
    /// (`./build.sh bench-filter`, README "The module's cost": p50 15–32 µs for a 4.7 KiB body,
    /// 221–229 µs for 220 KiB; the shared-prefix prompts here are ≈ 28 KiB). It is paid by
    /// `+proxy` and `+relay` policies; untagged policies keep the idealised zero.
    pub decision_cost: Micros,
    pub relay: RelayParams,
    pub epp: EppParams,
}

impl Default for DeployParams {
    fn default() -> Self {
        DeployParams {
            decision_cost: 50,
            relay: RelayParams::default(),
            epp: EppParams::default(),
        }
    }
}

/// The replica relay (docs/replicas.md): each replica's prefix-index insertions and its exact
/// in-flight section, sent in batches through the collector to every other replica.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RelayParams {
    /// From a batch leaving its replica to its application at every other replica
    /// (`--relay-delay-ms`, default **100 ms**: docs/replicas.md's bound of two collector
    /// intervals, relay interval + push interval, at the collector's default 50 ms).
    pub delay: Micros,
    /// Probability that one batch does not reach one receiver (`--relay-loss`, default 0),
    /// drawn independently per (batch, receiver). A lost batch loses its insertions there and one
    /// refresh of the sender's counts (the next batch carries them whole).
    pub loss: f64,
    /// Batching period per replica (`--relay-interval-ms`, default **0**: every change leaves at
    /// once, so a receiver sees every insertion, and the sender's counts as they were, exactly
    /// `delay` ago). With `interval > 0` each replica sends a batch every `interval` (replica `r`
    /// at `r·interval/R + k·interval`), carrying the insertions since its previous batch and its
    /// counts at that instant: information is then `delay` to `delay + interval` old.
    pub interval: Micros,
}

impl Default for RelayParams {
    fn default() -> Self {
        RelayParams {
            delay: 100_000,
            loss: 0.0,
            interval: 0,
        }
    }
}

/// A central EPP: one view, paid for by a hop per decision and by the EPP's throughput.
///
/// Sources (each excerpt read in the public thread):
///
/// * **Hop latency**: llm-d/llm-d-router issue #1348 ("\[Scalability\] Load test precise prefix
///   scorer HA", report of 2026-07-17): llm-d's `optimized-baseline` EPP, one replica, 10
///   simulator replicas, a 100k-token shared-prefix prompt (`shared_prefix_100k-1k-10qps.yaml`)
///   at 10 QPS: **P50 1.80 ms, P95 30.06 ms** latency, EPP peak CPU 3,781 m (≈ 3.8 cores). The
///   report's table does not say more precisely which span it timed; it is used here as the
///   time from the request reaching the gateway to the request leaving it for the model server.
///   Its prompts are 14× longer than the shared-prefix workload's 7,200 tokens, so for these
///   prompts the figure is, if anything, pessimistic for the EPP.
/// * **Capacity**: llm-d/llm-d-router PR #2024 ("\[Draft\] Shared Scheduling State for
///   Horizontally Scalable EPP", comment of 2026-07-17): one classic EPP replica reaches
///   **324.2 req/s** at concurrency 25 and 388.1 req/s at 100 (llm-d-inference-sim backends;
///   prompt size not stated). The default takes the lower figure.
///   kubernetes-sigs/gateway-api-inference-extension issue #2928 ("Long-context requests see
///   \>1s TTFT overhead in EPP request path"): GIE EPP v1.5.0, default config, 4 ×
///   llm-d-inference-sim, **220 KB prompts**: throughput 120–133 req/s from concurrency 20 to
///   150, TTFT p50 156 ms → 1,153 ms as concurrency grows: a plateau near **130 req/s**
///   (`+epp:130` runs it).
///
/// Model: the hop is log-normal with the given p50 and p95 (σ = ln(p95 / p50) / z₀.₉₅ = 1.71 for
/// the defaults; mean 7.8 ms, p99 96 ms), drawn per request; before it, the request queues FIFO
/// for the EPP, a single server of `capacity` decisions/s with deterministic service
/// `1 / capacity`. The pick is made, and counted in flight, when the hop ends, and the request
/// reaches its server then (the most favourable placement of the decision for the EPP: its view
/// is not older than the request's arrival at the model server).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EppParams {
    /// Median hop, seconds (`--epp-hop-p50-ms`, default 1.8 ms).
    pub hop_p50_s: f64,
    /// 95th percentile hop, seconds (`--epp-hop-p95-ms`, default 30 ms).
    pub hop_p95_s: f64,
    /// Decisions per second the EPP sustains (`--epp-capacity`, default 324).
    pub capacity: f64,
}

impl Default for EppParams {
    fn default() -> Self {
        EppParams {
            hop_p50_s: 0.0018,
            hop_p95_s: 0.030,
            capacity: 324.0,
        }
    }
}

impl EppParams {
    /// Log-normal (μ, σ) of the hop in seconds.
    pub fn lognormal(&self) -> (f64, f64) {
        let mu = self.hop_p50_s.ln();
        let sigma = ((self.hop_p95_s / self.hop_p50_s).ln() / Z95).max(0.0);
        (mu, sigma)
    }
}

/// A standard normal draw (Box–Muller; one of the pair).
pub fn std_normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - rng.unit_f64(); // (0, 1]
    let u2 = rng.unit_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The EPP's queue and hop draws for one run.
#[derive(Debug)]
pub struct Epp {
    params: EppParams,
    mu: f64,
    sigma: f64,
    /// When the EPP can start its next decision.
    free_at: Micros,
    rng: SplitMix64,
}

impl Epp {
    pub fn new(params: EppParams, seed: u64) -> Self {
        let (mu, sigma) = params.lognormal();
        Epp {
            params,
            mu,
            sigma,
            free_at: 0,
            rng: SplitMix64::new(seed),
        }
    }

    /// For a request reaching the gateway at `now`: how long until the EPP's pick (queueing for
    /// capacity, then the hop).
    pub fn delay(&mut self, now: Micros) -> Micros {
        let service = if self.params.capacity > 0.0 {
            (1e6 / self.params.capacity).round() as Micros
        } else {
            0
        };
        let start = self.free_at.max(now);
        self.free_at = start + service;
        let hop = (self.mu + self.sigma * std_normal(&mut self.rng)).exp();
        (start - now) + ((hop * 1e6).round() as Micros).max(1)
    }
}

/// One batch on its way to one receiver, ordered by (arrival, send order).
#[derive(Debug)]
struct Delivery {
    at: Micros,
    seq: u64,
    to: usize,
    from: usize,
    records: Rc<[Record]>,
    counts: Rc<[InFlight]>,
}

impl PartialEq for Delivery {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delivery {}
impl PartialOrd for Delivery {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delivery {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Counters of one run's relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// (batch, receiver) pairs sent.
    pub sent: u64,
    /// Of those, lost.
    pub lost: u64,
    /// Insertions appended to another replica's ring.
    pub records_applied: u64,
}

/// The relay between gateway replicas during one run (docs/replicas.md, as modelled here):
///
/// * a replica's insertions are the records its workers append to its prefix-sync ring (the
///   `Served` records of picker-core's `State` outbox, with their origin worker); the relay
///   appends them, origin unchanged, to every other replica's ring, where every worker of that
///   replica applies them through `prefixSync` as it applies its neighbours' records;
/// * a replica's in-flight section is its own exact counts; each receiver keeps the last
///   section it got from each sender and routes on its own counts plus those sections.
///
/// Deterministic: batches leave at simulated instants (every change, or on the replica's tick),
/// arrive `delay` later in the order they left, and are lost by a seeded draw.
#[derive(Debug)]
pub struct Relay {
    params: RelayParams,
    ring_size: u32,
    /// `sections[r][s]`: replica `s`'s counts as replica `r` last received them.
    sections: Vec<Vec<Rc<[InFlight]>>>,
    /// Insertions of each replica not yet sent (`interval > 0`).
    pending: Vec<Vec<Record>>,
    next_tick: Vec<Micros>,
    queue: BinaryHeap<Reverse<Delivery>>,
    seq: u64,
    rng: SplitMix64,
    buf: Vec<u8>,
    pub stats: RelayStats,
}

fn read_head(ring: &mut MemSlots) -> u64 {
    ring.get(Slot::Head)
        .0
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
}

impl Relay {
    /// `ring_size` must be the `SyncParams::ring` the workers use.
    pub fn new(params: RelayParams, replicas: usize, servers: usize, ring_size: u32, seed: u64) -> Self {
        let zero: Rc<[InFlight]> = vec![InFlight::default(); servers].into();
        let interval = params.interval;
        Relay {
            params,
            ring_size: ring_size.max(1),
            sections: vec![vec![zero; replicas]; replicas],
            pending: vec![Vec::new(); replicas],
            next_tick: (0..replicas as u64)
                .map(|r| r * interval / replicas.max(1) as u64)
                .collect(),
            queue: BinaryHeap::new(),
            seq: 0,
            rng: SplitMix64::new(seed),
            buf: Vec::new(),
            stats: RelayStats::default(),
        }
    }

    /// The ring's next sequence number (take it before a pick, pass it to [`Relay::changed`]).
    pub fn head(ring: &mut MemSlots) -> u64 {
        read_head(ring)
    }

    /// Replica `from` changed at `now`: its workers appended records to `ring` from sequence
    /// `since` on (none when `since` is the head), and/or its counts are now `own`. With
    /// `interval == 0` a batch leaves at once; otherwise the records wait for the next tick.
    pub fn changed(&mut self, from: usize, now: Micros, ring: &mut MemSlots, since: u64, own: &[InFlight]) {
        let head = read_head(ring);
        for seq in since..head {
            let (bytes, _) = ring.get(Slot::Record((seq % self.ring_size as u64) as u32));
            if let Some(Ok(r)) = bytes.as_deref().map(Record::decode) {
                if r.seq == seq {
                    self.pending[from].push(r);
                }
            }
        }
        if self.params.interval == 0 {
            self.send(from, now, own);
        }
    }

    /// Sends every periodic batch due strictly before `t` (`own[r]`: replica `r`'s counts, which
    /// have not changed since the previous event).
    pub fn tick_until(&mut self, t: Micros, own: &[Vec<InFlight>]) {
        if self.params.interval == 0 {
            return;
        }
        for (from, counts) in own.iter().enumerate() {
            while self.next_tick[from] < t {
                let at = self.next_tick[from];
                self.send(from, at, counts);
                self.next_tick[from] += self.params.interval;
            }
        }
    }

    fn send(&mut self, from: usize, at: Micros, own: &[InFlight]) {
        let records: Rc<[Record]> = std::mem::take(&mut self.pending[from]).into();
        let counts: Rc<[InFlight]> = own.into();
        for to in 0..self.sections.len() {
            if to == from {
                continue;
            }
            self.stats.sent += 1;
            if self.params.loss > 0.0 && self.rng.unit_f64() < self.params.loss {
                self.stats.lost += 1;
                continue;
            }
            self.seq += 1;
            self.queue.push(Reverse(Delivery {
                at: at + self.params.delay,
                seq: self.seq,
                to,
                from,
                records: records.clone(),
                counts: counts.clone(),
            }));
        }
    }

    /// Applies every batch that has arrived by `now`, in arrival order.
    pub fn deliver(&mut self, now: Micros, rings: &mut [MemSlots]) {
        while self.queue.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Reverse(d) = self.queue.pop().expect("peeked");
            for r in d.records.iter() {
                self.append(&mut rings[d.to], r);
            }
            self.sections[d.to][d.from] = d.counts;
        }
    }

    /// What the relay receiver does with a record: append it to the replica's ring with its
    /// origin, as `PrefixSync::push` appends a local one (nothing races in the simulation).
    fn append(&mut self, ring: &mut MemSlots, r: &Record) {
        let (bytes, cas) = ring.get(Slot::Head);
        let head = bytes
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        ring.set(Slot::Head, &(head + 1).to_le_bytes(), cas)
            .expect("no concurrent appender in the simulation");
        let rec = Record {
            seq: head,
            origin: r.origin,
            served: r.served.clone(),
        };
        rec.encode_into(&mut self.buf);
        ring.set(Slot::Record((head % self.ring_size as u64) as u32), &self.buf, None)
            .expect("in-memory store");
        self.stats.records_applied += 1;
    }

    /// Replica `r`'s in-flight view: its own exact counts plus every other replica's last
    /// received section.
    pub fn view(&self, r: usize, own: &[InFlight], out: &mut Vec<InFlight>) {
        out.clear();
        out.extend_from_slice(own);
        for (s, sec) in self.sections[r].iter().enumerate() {
            if s != r {
                for (o, x) in out.iter_mut().zip(sec.iter()) {
                    o.requests += x.requests;
                    o.tokens += x.tokens;
                }
            }
        }
    }
}

/// Where a policy runs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Deployment {
    /// Decides at once, for free (the model of every table before issue 16).
    Ideal,
    /// Inside the proxy: each decision costs `decision_cost` before the request leaves.
    InProxy { decision_cost: Micros },
    /// A central EPP with one global view.
    CentralEpp(EppParams),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lognormal_hop_has_the_quoted_median_and_p95() {
        let mut epp = Epp::new(
            EppParams {
                capacity: 0.0,
                ..EppParams::default()
            },
            7,
        );
        let mut v: Vec<Micros> = (0..200_000).map(|_| epp.delay(0)).collect();
        v.sort_unstable();
        let q = |p: f64| v[(p * v.len() as f64) as usize] as f64 / 1e3;
        assert!((q(0.5) - 1.8).abs() < 0.05, "p50 {} ms", q(0.5));
        assert!((q(0.95) - 30.0).abs() < 1.5, "p95 {} ms", q(0.95));
    }

    #[test]
    fn the_epp_queues_past_its_capacity() {
        let mut epp = Epp::new(
            EppParams {
                hop_p50_s: 0.001,
                hop_p95_s: 0.001,
                capacity: 100.0,
            },
            1,
        );
        // Ten requests at the same instant: the k-th waits k × 10 ms, then the 1 ms hop.
        let d: Vec<Micros> = (0..10).map(|_| epp.delay(5_000)).collect();
        for (k, x) in d.iter().enumerate() {
            assert_eq!(*x, k as Micros * 10_000 + 1_000);
        }
        // Idle again later: no wait.
        assert_eq!(epp.delay(1_000_000), 1_000);
    }
}
