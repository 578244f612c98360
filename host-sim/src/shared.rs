//! State shared by every VM instance with the same `vm_id`: shared data, shared queues and
//! metrics. One [`VmGroup`] stands for one `vm_id` namespace; worker VMs hold an `Arc` of it.
//!
//! Envoy keeps shared data in one process-global map keyed by `(vm_id, key)` behind a mutex
//! (cpp-host `src/shared_data.cc`; docs/proxy-wasm.md#shared-data). Here the group *is* that
//! namespace, so tests get isolation without globals.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::{MetricType, Status};

#[derive(Debug, Default)]
struct SharedData {
    map: HashMap<String, (Vec<u8>, u32)>,
    /// cpp-host `SharedData::nextCas`: starts at 1 and skips 0 on wrap.
    cas: u32,
}

#[derive(Debug)]
struct Queue {
    name: String,
    vm_id: String,
    /// Which worker VM and which (root) context receive `on_queue_ready`. Every registration
    /// overwrites these: the last registrant wins (cpp-host `src/shared_queue.cc`,
    /// docs/proxy-wasm.md#shared-queues).
    owner_worker: usize,
    owner_context: u32,
    items: VecDeque<Vec<u8>>,
}

/// One metric as Envoy's stats store would hold it (names live under the `wasmcustom`
/// namespace in Envoy, docs/proxy-wasm.md#metrics; we keep the plugin's own name).
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub kind: MetricType,
    /// Counter total or gauge value.
    pub value: i64,
    /// Histogram samples (histograms record only).
    pub samples: Vec<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    data: SharedData,
    queues: HashMap<u32, Queue>,
    next_queue: u32,
    metrics: Vec<Metric>,
    /// Pending `on_queue_ready(context, token)` per worker: the dispatcher posts of
    /// docs/proxy-wasm.md#shared-queues.
    ready: HashMap<usize, Vec<(u32, u32)>>,
    /// When set, each histogram keeps only its most recent samples (see `bound_histograms`).
    sample_cap: Option<usize>,
}

/// The namespace of one `vm_id`. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct VmGroup {
    vm_id: String,
    inner: Arc<Mutex<Inner>>,
}

impl VmGroup {
    pub fn new(vm_id: impl Into<String>) -> VmGroup {
        VmGroup {
            vm_id: vm_id.into(),
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another test thread panicked; the data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    // === shared data (cpp-host src/shared_data.cc) ===

    /// `get`: `NotFound` for a missing key, else the value and its cas.
    pub fn get_data(&self, key: &str) -> Result<(Vec<u8>, u32), Status> {
        self.lock().data.map.get(key).cloned().ok_or(Status::NotFound)
    }

    /// `set`: a non-zero `cas` on an *existing* key must equal its current cas, otherwise
    /// `CasMismatch`; a missing key is always created; every set assigns a fresh cas. A `None`
    /// value (SDK `remove_shared_data`) stores an empty value, it does not delete
    /// (docs/proxy-wasm.md#shared-data).
    pub fn set_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
        let mut g = self.lock();
        let d = &mut g.data;
        if let Some((_, cur)) = d.map.get(key) {
            if cas != 0 && cas != *cur {
                return Err(Status::CasMismatch);
            }
        }
        if d.cas == 0 {
            d.cas = 1;
        }
        let next = d.cas;
        d.cas = d.cas.wrapping_add(1);
        if d.cas == 0 {
            d.cas = 1;
        }
        match d.map.get_mut(key) {
            // Overwrite in place: the common update of an existing key allocates nothing.
            Some(e) => {
                e.0.clear();
                e.0.extend_from_slice(value);
                e.1 = next;
            }
            None => {
                d.map.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        Ok(())
    }

    /// Snapshot of all keys, for assertions.
    pub fn data_keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.lock().data.map.keys().cloned().collect();
        k.sort();
        k
    }

    // === shared queues (cpp-host src/shared_queue.cc, docs/proxy-wasm.md#shared-queues) ===

    pub fn register_queue(&self, name: &str, worker: usize, context: u32) -> u32 {
        let mut g = self.lock();
        let vm_id = self.vm_id.clone();
        if let Some((tok, q)) = g.queues.iter_mut().find(|(_, q)| q.name == name && q.vm_id == vm_id) {
            q.owner_worker = worker;
            q.owner_context = context;
            return *tok;
        }
        g.next_queue += 1;
        let tok = g.next_queue;
        g.queues.insert(
            tok,
            Queue {
                name: name.to_string(),
                vm_id,
                owner_worker: worker,
                owner_context: context,
                items: VecDeque::new(),
            },
        );
        tok
    }

    /// `resolve_shared_queue(vm_id, name)`: `NotFound` for an unknown queue. Only this group's
    /// `vm_id` is visible here (another vm_id is another group).
    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Result<u32, Status> {
        let g = self.lock();
        g.queues
            .iter()
            .find(|(_, q)| q.name == name && q.vm_id == vm_id)
            .map(|(t, _)| *t)
            .ok_or(Status::NotFound)
    }

    pub fn enqueue(&self, token: u32, value: &[u8]) -> Result<(), Status> {
        let mut g = self.lock();
        let q = g.queues.get_mut(&token).ok_or(Status::NotFound)?;
        q.items.push_back(value.to_vec());
        let (w, c) = (q.owner_worker, q.owner_context);
        g.ready.entry(w).or_default().push((c, token));
        Ok(())
    }

    /// `Empty` when the queue has no item, `NotFound` for an unknown token.
    pub fn dequeue(&self, token: u32) -> Result<Vec<u8>, Status> {
        let mut g = self.lock();
        let q = g.queues.get_mut(&token).ok_or(Status::NotFound)?;
        q.items.pop_front().ok_or(Status::Empty)
    }

    /// Take the `on_queue_ready` notifications posted to `worker`.
    pub fn take_ready(&self, worker: usize) -> Vec<(u32, u32)> {
        self.lock().ready.remove(&worker).unwrap_or_default()
    }

    // === metrics (Envoy context.cc defineMetric/incrementMetric/recordMetric, docs/proxy-wasm.md#metrics) ===

    /// Same name and type give the same id, as the underlying Envoy stat is shared by name.
    /// Ids encode the type in the low 2 bits, like Envoy's `kMetricTypeMask`.
    pub fn define_metric(&self, kind: MetricType, name: &str) -> u32 {
        let mut g = self.lock();
        if let Some(i) = g.metrics.iter().position(|m| m.name == name && m.kind == kind) {
            return metric_id(i, kind);
        }
        g.metrics.push(Metric {
            name: name.to_string(),
            kind,
            value: 0,
            samples: Vec::new(),
        });
        metric_id(g.metrics.len() - 1, kind)
    }

    /// Counters reject deltas <= 0 (`BadArgument`); gauges take +/-; histograms do not
    /// support increment (`BadArgument`).
    pub fn increment_metric(&self, id: u32, delta: i64) -> Result<(), Status> {
        let mut g = self.lock();
        let m = metric_mut(&mut g.metrics, id)?;
        match m.kind {
            MetricType::Counter if delta > 0 => m.value = m.value.saturating_add(delta),
            MetricType::Counter => return Err(Status::BadArgument),
            MetricType::Gauge => m.value = m.value.saturating_add(delta),
            MetricType::Histogram => return Err(Status::BadArgument),
        }
        Ok(())
    }

    /// `record` on a counter *adds*, on a gauge sets, on a histogram records a sample.
    pub fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        let mut g = self.lock();
        let sample_cap = g.sample_cap;
        let m = metric_mut(&mut g.metrics, id)?;
        let v = i64::try_from(value).unwrap_or(i64::MAX);
        match m.kind {
            MetricType::Counter => m.value = m.value.saturating_add(v),
            MetricType::Gauge => m.value = v,
            MetricType::Histogram => {
                m.samples.push(value);
                if let Some(cap) = sample_cap {
                    crate::history::keep_recent(&mut m.samples, cap);
                }
            }
        }
        Ok(())
    }

    /// From now on each histogram keeps only its `cap`..2×`cap` most recent samples (the
    /// `serve` gateway; tests keep every sample).
    pub fn bound_histograms(&self, cap: usize) {
        self.lock().sample_cap = Some(cap);
    }

    /// Histograms cannot be read back (`BadArgument`).
    pub fn get_metric(&self, id: u32) -> Result<u64, Status> {
        let mut g = self.lock();
        let m = metric_mut(&mut g.metrics, id)?;
        match m.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(m.value.max(0) as u64),
        }
    }

    pub fn metrics(&self) -> Vec<Metric> {
        self.lock().metrics.clone()
    }

    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.lock().metrics.iter().find(|m| m.name == name).cloned()
    }
}

fn metric_id(index: usize, kind: MetricType) -> u32 {
    let t = match kind {
        MetricType::Counter => 0,
        MetricType::Gauge => 1,
        MetricType::Histogram => 2,
    };
    (((index as u32) + 1) << 2) | t
}

fn metric_mut(metrics: &mut [Metric], id: u32) -> Result<&mut Metric, Status> {
    let idx = (id >> 2) as usize;
    if idx == 0 {
        return Err(Status::NotFound);
    }
    let m = metrics.get_mut(idx - 1).ok_or(Status::NotFound)?;
    if metric_id(idx - 1, m.kind) != id {
        return Err(Status::NotFound);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_histograms_keep_the_newest_samples() {
        let g = VmGroup::new("vm");
        let id = g.define_metric(MetricType::Histogram, "h");
        g.bound_histograms(50);
        for v in 0..1_000u64 {
            g.record_metric(id, v).unwrap();
        }
        let samples = g.metric("h").unwrap().samples;
        assert!((50..=100).contains(&samples.len()), "{}", samples.len());
        assert_eq!(samples.last(), Some(&999));
    }

    #[test]
    fn cas_semantics_match_cpp_host() {
        let g = VmGroup::new("vm");
        assert_eq!(g.get_data("k"), Err(Status::NotFound));
        // a set on a missing key always succeeds, even with a cas
        g.set_data("k", b"a", 77).unwrap();
        let (v, cas) = g.get_data("k").unwrap();
        assert_eq!(v, b"a");
        assert_eq!(g.set_data("k", b"b", cas + 1), Err(Status::CasMismatch));
        g.set_data("k", b"b", cas).unwrap();
        let (v2, cas2) = g.get_data("k").unwrap();
        assert_eq!(v2, b"b");
        assert_ne!(cas2, cas);
        // the old cas is now stale
        assert_eq!(g.set_data("k", b"c", cas), Err(Status::CasMismatch));
        // cas 0 = unconditional
        g.set_data("k", b"", 0).unwrap();
        assert_eq!(g.get_data("k").unwrap().0, b"");
    }

    #[test]
    fn cas_increments_from_threads_lose_nothing() {
        let g = VmGroup::new("vm");
        // Seed the key: a set with cas 0 is unconditional (cpp-host), so a thread that read
        // "missing" and was then descheduled would overwrite the count. Plugins that count in
        // shared data must create the key once first, as the wasm-epp filter does at configure.
        g.set_data("n", b"0", 0).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            let (cur, cas) = match g.get_data("n") {
                                Ok((v, c)) => (String::from_utf8(v).unwrap().parse::<u64>().unwrap(), c),
                                Err(_) => (0, 0),
                            };
                            if g.set_data("n", (cur + 1).to_string().as_bytes(), cas).is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(g.get_data("n").unwrap().0, b"2000");
    }

    #[test]
    fn groups_are_isolated_and_clones_share() {
        let a = VmGroup::new("a");
        let a2 = a.clone();
        let b = VmGroup::new("a");
        a.set_data("k", b"1", 0).unwrap();
        assert!(a2.get_data("k").is_ok());
        assert_eq!(b.get_data("k"), Err(Status::NotFound));
    }

    #[test]
    fn queue_last_registrant_wins() {
        let g = VmGroup::new("vm");
        let t1 = g.register_queue("q", 0, 1);
        let t2 = g.register_queue("q", 1, 5);
        assert_eq!(t1, t2);
        assert_eq!(g.resolve_queue("vm", "q"), Ok(t1));
        assert_eq!(g.resolve_queue("other", "q"), Err(Status::NotFound));
        assert_eq!(g.dequeue(t1), Err(Status::Empty));
        g.enqueue(t1, b"x").unwrap();
        assert!(g.take_ready(0).is_empty());
        assert_eq!(g.take_ready(1), vec![(5, t1)]);
        assert_eq!(g.dequeue(t1).unwrap(), b"x");
        assert_eq!(g.enqueue(999, b"x"), Err(Status::NotFound));
    }

    #[test]
    fn metric_rules() {
        let g = VmGroup::new("vm");
        let c = g.define_metric(MetricType::Counter, "c");
        let h = g.define_metric(MetricType::Histogram, "h");
        let ga = g.define_metric(MetricType::Gauge, "g");
        assert_eq!(g.increment_metric(c, 0), Err(Status::BadArgument));
        assert_eq!(g.increment_metric(c, -1), Err(Status::BadArgument));
        g.increment_metric(c, 2).unwrap();
        g.record_metric(c, 3).unwrap();
        assert_eq!(g.get_metric(c), Ok(5));
        assert_eq!(g.increment_metric(h, 1), Err(Status::BadArgument));
        g.record_metric(h, 42).unwrap();
        assert_eq!(g.get_metric(h), Err(Status::BadArgument));
        g.increment_metric(ga, -3).unwrap();
        g.record_metric(ga, 7).unwrap();
        assert_eq!(g.get_metric(ga), Ok(7));
        assert_eq!(g.get_metric(12345), Err(Status::NotFound));
        assert_eq!(g.define_metric(MetricType::Counter, "c"), c);
    }
}
