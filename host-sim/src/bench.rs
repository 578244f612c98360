//! `host-sim bench`: run test cases repeatedly and report per-request filter cost.
//!
//! Cost is the time spent inside guest callbacks (all callbacks of one request, including
//! context create/done/log/delete), measured two ways, and separately the wall time of the
//! whole simulated request (host bookkeeping included). Memory is the VM's linear memory.
//!
//! - **time in callbacks**: the monotonic clock read innermost around each call (a vDSO read,
//!   tens of ns). This is the time a proxy worker is busy in the filter per request, and the
//!   figure the latency goals are checked against. It is never below the guest's CPU time:
//!   it also counts any time the thread was descheduled inside a call.
//! - **CPU**: thread CPU time around each call. Each reading includes part of the two
//!   thread-CPU clock reads around it (a syscall, ~0.3 µs each in a KVM guest); the report
//!   prints that overhead beside the figures rather than subtracting it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::case::{load, Runner};
use crate::Error;

/// Figures for one case.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub case: String,
    pub iterations: usize,
    pub guest_cpu_us_p50: f64,
    pub guest_cpu_us_p99: f64,
    /// Monotonic time inside guest callbacks per request.
    pub guest_time_us_p50: f64,
    pub guest_time_us_p99: f64,
    pub request_wall_us_p50: f64,
    pub request_wall_us_p99: f64,
    /// Per callback name: (p50 µs, p99 µs) of time in the callback, then of guest CPU.
    pub per_callback: BTreeMap<&'static str, [f64; 4]>,
    pub vm_memory_bytes: usize,
    /// Linear-memory growth per open stream (slope over 10k..20k streams held after the
    /// request-headers phase).
    pub memory_per_stream_bytes: f64,
    /// Invocations over the GCP 1 ms budget, when the profile has one.
    pub over_budget: usize,
    /// Guest callbacks per request, and the CPU-clock overhead each callback's figure includes
    /// (reported, not subtracted).
    pub callbacks_per_request: f64,
    pub clock_overhead_ns: u64,
    /// The same for the monotonic clock of the time-in-callbacks figure.
    pub wall_clock_overhead_ns: u64,
    /// Wasm operators executed per request (p50), with `HOST_SIM_FUEL=1`; else 0.
    pub fuel_p50: u64,
    /// The same per callback name.
    pub fuel_per_callback: BTreeMap<&'static str, u64>,
    /// The machine's own jitter at this scale: a native arithmetic loop calibrated to the
    /// case's p50 time in callbacks, timed `iterations` times with the same clock, (p50, p99)
    /// µs. Whatever it adds above its p50 at p99 is the host, not the filter.
    pub floor_us: (f64, f64),
}

/// The middle value (0 for none); for counts, where `pct`'s µs conversion does not apply.
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Runs of `spin(n)` for the noise floor: a dependent multiply chain the compiler cannot fold.
fn spin(n: u64) -> u64 {
    let mut x = std::hint::black_box(1u64);
    for _ in 0..n {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    }
    std::hint::black_box(x)
}

/// p50 and p99 (µs) of `iterations` timed native loops each lasting about `target_ns`.
fn noise_floor(target_ns: f64, iterations: usize) -> (f64, f64) {
    // Calibrate: the least time of a few long runs gives the loop's speed.
    let probe = 100_000u64;
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            spin(probe);
            t.elapsed().as_nanos() as f64
        })
        .fold(f64::INFINITY, f64::min)
        .max(1.0);
    let n = ((target_ns / best) * probe as f64).max(1.0) as u64;
    let mut v: Vec<u64> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            spin(n);
            t.elapsed().as_nanos() as u64
        })
        .collect();
    (pct(&mut v, 0.50), pct(&mut v, 0.99))
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)] as f64 / 1000.0
}

/// Run each selected case `iterations` times (after `warmup` runs), then measure memory per
/// open stream with `streams` concurrent streams.
pub fn bench_file(
    case_file: &Path,
    wasm: Option<&Path>,
    config: Option<&Path>,
    iterations: usize,
    warmup: usize,
    streams: usize,
) -> Result<Vec<BenchReport>, Error> {
    let (suite, base, plugin) = load(case_file, wasm, config)?;
    let marked: Vec<_> = suite.test.iter().filter(|c| c.benchmark).collect();
    let cases: Vec<_> = if marked.is_empty() {
        suite.test.iter().collect()
    } else {
        marked
    };
    let mut out = Vec::new();
    for case in cases {
        let mut runner = Runner::new(&plugin, &suite.env, &base)?;
        let budget = runner.host.opts.cpu_budget_ns;
        let wi = case.worker % runner.host.workers.len();
        for _ in 0..warmup {
            runner.drive(case)?;
        }
        runner.host.workers[wi].clear_invocations();
        let mut cpu = Vec::with_capacity(iterations);
        let mut inside = Vec::with_capacity(iterations);
        let mut fuel = Vec::with_capacity(iterations);
        let mut wall = Vec::with_capacity(iterations);
        let mut per: BTreeMap<&'static str, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
        let mut fuel_per: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
        let mut over = 0;
        let mut invocations = 0;
        for _ in 0..iterations {
            let t0 = Instant::now();
            runner.drive(case)?;
            wall.push(t0.elapsed().as_nanos() as u64);
            let w = &mut runner.host.workers[wi];
            let inv = w.invocations();
            w.clear_invocations();
            let (mut total, mut total_inside, mut total_fuel) = (0, 0, 0);
            invocations += inv.len();
            for i in &inv {
                total += i.cpu_ns;
                total_inside += i.wall_ns;
                total_fuel += i.fuel;
                let e = per.entry(i.callback).or_default();
                e.0.push(i.wall_ns);
                e.1.push(i.cpu_ns);
                fuel_per.entry(i.callback).or_default().push(i.fuel);
                if budget.is_some_and(|b| i.cpu_ns > b) {
                    over += 1;
                }
            }
            cpu.push(total);
            inside.push(total_inside);
            fuel.push(total_fuel);
        }
        let guest_time_us_p50 = pct(&mut inside, 0.50);
        let floor_us = noise_floor(guest_time_us_p50 * 1000.0, iterations);
        let vm_memory_bytes = runner.host.workers[wi].vm().map(|v| v.memory_bytes()).unwrap_or(0);
        // After the steady-state figure: memory never shrinks.
        let memory_per_stream_bytes = runner.memory_per_stream(case, streams)?;
        out.push(BenchReport {
            case: case.name.clone(),
            iterations,
            guest_cpu_us_p50: pct(&mut cpu, 0.50),
            guest_cpu_us_p99: pct(&mut cpu, 0.99),
            guest_time_us_p50,
            guest_time_us_p99: pct(&mut inside, 0.99),
            request_wall_us_p50: pct(&mut wall, 0.50),
            request_wall_us_p99: pct(&mut wall, 0.99),
            per_callback: per
                .into_iter()
                .map(|(k, (mut t, mut c))| {
                    (
                        k,
                        [pct(&mut t, 0.5), pct(&mut t, 0.99), pct(&mut c, 0.5), pct(&mut c, 0.99)],
                    )
                })
                .collect(),
            vm_memory_bytes,
            memory_per_stream_bytes,
            over_budget: over,
            callbacks_per_request: invocations as f64 / iterations.max(1) as f64,
            clock_overhead_ns: crate::vm::cpu_clock_overhead_ns(),
            wall_clock_overhead_ns: crate::vm::wall_clock_overhead_ns(),
            fuel_p50: median(&mut fuel),
            floor_us,
            fuel_per_callback: fuel_per.into_iter().map(|(k, mut v)| (k, median(&mut v))).collect(),
        });
    }
    Ok(out)
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} requests: filter time in callbacks p50 {:.1} µs p99 {:.1} µs; filter CPU p50 {:.1} µs p99 {:.1} µs; request wall p50 {:.1} µs p99 {:.1} µs; VM memory {} KiB; {:.0} B per open stream{}",
            self.case,
            self.iterations,
            self.guest_time_us_p50,
            self.guest_time_us_p99,
            self.guest_cpu_us_p50,
            self.guest_cpu_us_p99,
            self.request_wall_us_p50,
            self.request_wall_us_p99,
            self.vm_memory_bytes / 1024,
            self.memory_per_stream_bytes,
            if self.over_budget > 0 {
                format!("; {} invocations over the 1 ms budget", self.over_budget)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "    {:<32} {:>21}  {:>21}",
            "per callback", "time p50 / p99 µs", "CPU p50 / p99 µs"
        )?;
        for (k, [t50, t99, c50, c99]) in &self.per_callback {
            writeln!(f, "    {k:<32} {t50:>10.1} {t99:>10.1}  {c50:>10.1} {c99:>10.1}")?;
        }
        writeln!(
            f,
            "    machine noise floor: a native loop as long as the p50 above, timed {} times the same way: p50 {:.1} µs p99 {:.1} µs",
            self.iterations, self.floor_us.0, self.floor_us.1
        )?;
        if self.fuel_p50 > 0 {
            writeln!(
                f,
                "    wasm operators per request (HOST_SIM_FUEL=1; timings of this run are not comparable): p50 {}",
                self.fuel_p50
            )?;
            for (k, v) in &self.fuel_per_callback {
                writeln!(f, "      {k:<32} p50 {v}")?;
            }
        }
        let per_request = self.callbacks_per_request * self.clock_overhead_ns as f64 / 1000.0;
        writeln!(
            f,
            "    (included above, per callback: the clock reads around it, monotonic {:.3} µs, CPU {:.2} µs; {:.0} callbacks per request ≈ {:.2} / {per_request:.1} µs)",
            self.wall_clock_overhead_ns as f64 / 1000.0,
            self.clock_overhead_ns as f64 / 1000.0,
            self.callbacks_per_request,
            self.callbacks_per_request * self.wall_clock_overhead_ns as f64 / 1000.0,
        )
    }
}
