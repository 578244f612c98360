//! Running cases: [`Runner`] drives each case's phases through a worker, then checks what the
//! case expects.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::abi::{Direction, Headers};
use crate::worker::{Flow, Step, StreamId, Worker};
use crate::{Error, Host, Plugin};

use super::check::{check_phase, check_stream};
use super::{Case, Env, Input, KeyValue, Phase, Suite};

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub name: String,
    pub failures: Vec<String>,
    /// Observations that do not fail the case (GCP: invocations over the 1 ms CPU budget;
    /// timing never fails a test, since our CPUs are not GCP's).
    pub notes: Vec<String>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl Suite {
    pub fn from_yaml(text: &str) -> Result<Suite, Error> {
        serde_saphyr::from_str(text).map_err(|e| Error::Case(format!("parsing YAML: {e}")))
    }

    pub fn from_file(path: &Path) -> Result<Suite, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Suite::from_yaml(&text)
    }
}

/// Runs cases against one host (one VM group). Cases run in order on the same host, so
/// shared data and VM state carry over between cases, as on a real proxy.
pub struct Runner {
    pub host: Host,
    pub strict: bool,
    base: PathBuf,
}

impl Runner {
    pub fn new(plugin: &Plugin, env: &Env, base: &Path) -> Result<Runner, Error> {
        let opts = env.host_options(base)?;
        let host = Host::new(plugin, opts, env.workers)?;
        Ok(Runner {
            host,
            strict: env.strict,
            base: base.to_path_buf(),
        })
    }

    /// Run one case and check every expectation.
    pub fn run(&mut self, case: &Case) -> CaseReport {
        let mut failures = Vec::new();
        let inv0: Vec<usize> = self.host.workers.iter().map(|w| w.invocations().len()).collect();
        if let Err(e) = self.run_inner(case, &mut failures) {
            failures.push(e.to_string());
        }
        let mut notes = Vec::new();
        if let Some(budget) = self.host.opts.cpu_budget_ns {
            for (i, w) in self.host.workers.iter().enumerate() {
                for inv in w.invocations().into_iter().skip(inv0.get(i).copied().unwrap_or(0)) {
                    if inv.cpu_ns > budget {
                        notes.push(format!(
                            "{} used {:.0} µs of CPU, over the {:.0} µs budget",
                            inv.callback,
                            inv.cpu_ns as f64 / 1e3,
                            budget as f64 / 1e3
                        ));
                    }
                }
            }
        }
        CaseReport {
            name: case.name.clone(),
            failures,
            notes,
        }
    }

    /// Open `n` streams that each run the case's request-headers phase and stay open, and
    /// return the VM's linear-memory growth per stream in bytes, as the slope between the
    /// memory after `n/2` and after `n` streams (linear memory grows in 64 KiB pages and
    /// starts with free heap, so a single reading would say 0); then finish them.
    pub fn memory_per_stream(&mut self, case: &Case, n: usize) -> Result<f64, Error> {
        let wi = case.worker % self.host.workers.len();
        let w = &mut self.host.workers[wi];
        let half = (n / 2).max(1);
        let mut ids = Vec::with_capacity(n);
        let mut at_half = 0;
        if let Some(p) = &case.request_headers {
            let more = case.request_body.is_some() || case.request_trailers.is_some();
            for i in 0..n.max(2) {
                if i == half {
                    at_half = w.vm().map(|v| v.memory_bytes()).unwrap_or(0);
                }
                let s = w.new_stream();
                w.request_headers(s, kv(&p.input.header), p.input.end_of_stream.unwrap_or(!more));
                ids.push(s);
            }
        }
        let at_end = w.vm().map(|v| v.memory_bytes()).unwrap_or(0);
        let count = ids.len();
        for s in ids {
            w.finish(s);
            w.forget(s);
        }
        Ok(at_end.saturating_sub(at_half) as f64 / (count - half.min(count)).max(1) as f64)
    }

    /// Drive the case's phases without checking expectations (benchmarks).
    pub fn drive(&mut self, case: &Case) -> Result<(), Error> {
        let mut ignore = Vec::new();
        self.run_phases(case, &mut ignore, false)
    }

    fn run_inner(&mut self, case: &Case, failures: &mut Vec<String>) -> Result<(), Error> {
        let traps0: usize = self.host.workers.iter().map(|w| w.traps.len()).sum();
        let errs0: Vec<usize> = self.host.workers.iter().map(|w| w.hostcall_errors().len()).collect();
        let logs0: Vec<usize> = self.host.workers.iter().map(|w| w.log_count()).collect();
        self.run_phases(case, failures, true)?;
        // Strict mode: unexpected hostcall errors and traps fail the case.
        if self.strict {
            let traps: Vec<_> = self
                .host
                .workers
                .iter()
                .flat_map(|w| w.traps.iter().cloned())
                .skip(traps0)
                .collect();
            if !case.expect_trap {
                for t in &traps {
                    failures.push(format!("strict: VM trapped in {}: {}", t.callback, t.message));
                }
            } else if traps.is_empty() {
                failures.push("expected a trap, none happened".into());
            }
            for (i, w) in self.host.workers.iter().enumerate() {
                for e in w.hostcall_errors().into_iter().skip(errs0.get(i).copied().unwrap_or(0)) {
                    if !e.status.is_benign() && !case.allow_errors.iter().any(|a| a == e.call) {
                        failures.push(format!(
                            "strict: {} returned {} in {:?} (context {})",
                            e.call, e.status, e.callback, e.context_id
                        ));
                    }
                }
            }
        }
        if let Some(a) = &case.after {
            for (k, v) in &a.shared_data {
                match self.host.group.get_data(k) {
                    Ok((got, _)) if got == v.as_bytes() => {}
                    Ok((got, _)) => failures.push(format!(
                        "after: shared data {k:?} = {:?}, want {v:?}",
                        String::from_utf8_lossy(&got)
                    )),
                    Err(_) => failures.push(format!("after: shared data {k:?} missing, want {v:?}")),
                }
            }
            for (k, v) in &a.metrics {
                match self.host.group.metric(k) {
                    Some(m) if m.value == *v => {}
                    Some(m) => failures.push(format!("after: metric {k} = {}, want {v}", m.value)),
                    None => failures.push(format!("after: metric {k} not defined")),
                }
            }
            let lines: Vec<String> = self
                .host
                .workers
                .iter()
                .enumerate()
                .flat_map(|(i, w)| w.logs().into_iter().skip(logs0.get(i).copied().unwrap_or(0)))
                .map(|l| l.message)
                .collect();
            for m in &a.log {
                if !m.check(&lines)? {
                    failures.push(format!("after: expected {} in logs {lines:?}", m.describe()));
                }
            }
        }
        Ok(())
    }

    fn run_phases(&mut self, case: &Case, failures: &mut Vec<String>, check: bool) -> Result<(), Error> {
        if case.advance_ms > 0 {
            self.host.advance_ms(case.advance_ms);
        }
        let wi = case.worker % self.host.workers.len();
        let strict = self.strict;
        let w = &mut self.host.workers[wi];
        let s = w.new_stream();
        for (k, v) in &case.properties {
            w.set_stream_property(s, k, v.as_bytes());
        }
        let run = PhaseRun {
            s,
            base: &self.base,
            check,
        };
        for dir in Direction::BOTH {
            let [headers, body, trailers] = case.phases(dir);
            if let Some(p) = headers {
                let more = body.is_some() || trailers.is_some();
                run.phase(w, dir, &with_status(dir, p), Kind::Headers(more), failures)?;
            }
            if let Some(p) = body {
                run.phase(w, dir, p, Kind::Body(trailers.is_some()), failures)?;
            }
            if let Some(p) = trailers {
                run.phase(w, dir, p, Kind::Trailers, failures)?;
            }
        }
        if check {
            check_stream(w, s, strict, case.after.as_ref(), failures);
        }
        w.finish(s);
        w.forget(s);
        Ok(())
    }
}

/// Response headers without any header get `:status: 200`; other phases go as written.
fn with_status(dir: Direction, p: &Phase) -> Cow<'_, Phase> {
    if dir == Direction::Request || !p.input.header.is_empty() {
        return Cow::Borrowed(p);
    }
    let mut p = p.clone();
    p.input.header.push(KeyValue {
        key: ":status".into(),
        value: "200".into(),
    });
    Cow::Owned(p)
}

/// What every phase of one case's stream shares.
struct PhaseRun<'a> {
    s: StreamId,
    /// Relative body files are read from here.
    base: &'a Path,
    /// Check each phase's expectations (off for benchmarks).
    check: bool,
}

impl PhaseRun<'_> {
    /// Send one phase's input in direction `dir` and check its expectations.
    fn phase(
        &self,
        w: &mut Worker,
        dir: Direction,
        p: &Phase,
        kind: Kind,
        failures: &mut Vec<String>,
    ) -> Result<(), Error> {
        let s = self.s;
        let l0 = w.log_count();
        let step = match kind {
            Kind::Headers(more) => {
                let eos = p.input.end_of_stream.unwrap_or(!more);
                w.headers(s, dir, kv(&p.input.header), eos)
            }
            Kind::Body(more) => {
                let chunks = body_chunks(&p.input, self.base)?;
                let n = chunks.len();
                let mut last = None;
                for (i, c) in chunks.iter().enumerate() {
                    let eos = i + 1 == n && !more;
                    last = Some(w.body(s, dir, c, eos));
                }
                last.unwrap_or(Step {
                    action: None,
                    flow: Flow::Continued,
                })
            }
            Kind::Trailers => w.trailers(s, dir, kv(&p.input.header)),
        };
        if self.check {
            let logs: Vec<String> = w.logs().into_iter().skip(l0).map(|l| l.message).collect();
            check_phase(w, s, &kind.name(dir), dir, &p.result, step.flow, &logs, failures)?;
        }
        Ok(())
    }
}

enum Kind {
    /// Headers; `true` when body/trailers follow.
    Headers(bool),
    Body(bool),
    Trailers,
}

fn kv(h: &[KeyValue]) -> Headers {
    h.iter().map(|p| (p.key.clone(), p.value.clone())).collect()
}

fn body_chunks(i: &Input, base: &Path) -> Result<Vec<Vec<u8>>, Error> {
    let mut v: Vec<Vec<u8>> = Vec::new();
    if let Some(c) = &i.content {
        v.push(c.clone().into_bytes());
    }
    v.extend(i.chunks.iter().map(|c| c.clone().into_bytes()));
    if let Some(f) = &i.file {
        let p = base.join(f);
        v.push(std::fs::read(&p).map_err(|e| Error::Io {
            path: p.display().to_string(),
            source: e,
        })?);
    }
    if v.is_empty() {
        v.push(Vec::new());
    }
    Ok(v)
}

impl Kind {
    /// The phase's name in the DSL (`request_headers`, `response_body`, …).
    fn name(&self, dir: Direction) -> String {
        let d = match dir {
            Direction::Request => "request",
            Direction::Response => "response",
        };
        let k = match self {
            Kind::Headers(_) => "headers",
            Kind::Body(_) => "body",
            Kind::Trailers => "trailers",
        };
        format!("{d}_{k}")
    }
}

/// Load a suite file, resolve the module and config (CLI overrides win) and run every case.
pub fn run_file(
    case_file: &Path,
    wasm_override: Option<&Path>,
    config_override: Option<&Path>,
) -> Result<Vec<CaseReport>, Error> {
    let (suite, base, plugin) = load(case_file, wasm_override, config_override)?;
    let mut runner = Runner::new(&plugin, &suite.env, &base)?;
    Ok(suite.test.iter().map(|c| runner.run(c)).collect())
}

/// Parse a suite and compile its module.
pub fn load(
    case_file: &Path,
    wasm_override: Option<&Path>,
    config_override: Option<&Path>,
) -> Result<(Suite, PathBuf, Plugin), Error> {
    let mut suite = Suite::from_file(case_file)?;
    let base = case_file.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Some(c) = config_override {
        let bytes = std::fs::read(c).map_err(|e| Error::Io {
            path: c.display().to_string(),
            source: e,
        })?;
        suite.env.config = Some(String::from_utf8_lossy(&bytes).into_owned());
    }
    let wasm = match (wasm_override, &suite.env.wasm) {
        (Some(w), _) => w.to_path_buf(),
        (None, Some(w)) => base.join(w),
        (None, None) => return Err(Error::Case("no wasm: give --wasm or env.wasm".into())),
    };
    let plugin = Plugin::from_file_env_cache(&wasm)?;
    Ok((suite, base, plugin))
}
