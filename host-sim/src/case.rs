//! Declarative test cases: a YAML DSL in the spirit of GCP's plugin tester `tests.yaml`
//! (`plugins/test/runner.proto`, reference §6.4) and a Rust builder for the same structures.
//!
//! ```yaml
//! env:
//!   wasm: ../../../target/host-sim-modules/headers.wasm   # relative to this file
//!   config: "plugin configuration string"                # or config_file: path
//!   profile: envoy            # envoy | gcp
//!   time_secs: 1700000000
//!   workers: 1
//!   strict: true              # unexpected hostcall errors and traps fail the case
//!   allow_on_headers_stop_iteration: false
//!   failure_policy: fail_closed
//!   properties: { source.address: "10.0.0.1:4444" }
//!   clusters: { httpbin: { headers: [[":status", "200"]], body: "\u0002" } }
//! test:
//!   - name: hello
//!     request_headers:
//!       input: { header: [{ key: ":path", value: "/hello" }] }
//!       result:
//!         immediate: { http_status: 200 }
//!         has_header: [{ key: greeting, value: hello }]  # checked on the client's response
//!         log: [{ regex: "request :path=/hello" }]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use crate::abi::Headers;
use crate::options::{CallResponse, Clock, FailurePolicy, HostOptions, Profile};
use crate::worker::{Flow, StreamId, Worker};
use crate::{Error, Host, Plugin};

/// A test file: environment plus cases.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    #[serde(default)]
    pub env: Env,
    #[serde(default)]
    pub test: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Env {
    #[serde(default)]
    pub wasm: Option<PathBuf>,
    #[serde(default)]
    pub config: Option<String>,
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    #[serde(default)]
    pub vm_config: Option<String>,
    #[serde(default)]
    pub profile: Profile,
    #[serde(default = "default_time")]
    pub time_secs: u64,
    #[serde(default = "one")]
    pub workers: usize,
    #[serde(default = "yes")]
    pub strict: bool,
    #[serde(default)]
    pub vm_id: String,
    #[serde(default)]
    pub root_id: String,
    #[serde(default)]
    pub allow_on_headers_stop_iteration: bool,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    #[serde(default)]
    pub buffer_limit: Option<usize>,
    #[serde(default)]
    pub memory_limit: Option<usize>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub clusters: BTreeMap<String, Option<CallResponse>>,
    #[serde(default)]
    pub random_seed: Option<u64>,
}

fn default_time() -> u64 {
    1_700_000_000
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

impl Default for Env {
    fn default() -> Self {
        Env {
            wasm: None,
            config: None,
            config_file: None,
            vm_config: None,
            profile: Profile::Envoy,
            time_secs: default_time(),
            workers: 1,
            strict: true,
            vm_id: String::new(),
            root_id: String::new(),
            allow_on_headers_stop_iteration: false,
            failure_policy: FailurePolicy::FailClosed,
            buffer_limit: None,
            memory_limit: None,
            properties: BTreeMap::new(),
            clusters: BTreeMap::new(),
            random_seed: None,
        }
    }
}

impl Env {
    /// Host options for this environment (`base` resolves relative paths).
    pub fn host_options(&self, base: &Path) -> Result<HostOptions, Error> {
        let mut o = HostOptions::new(self.profile);
        o.vm_id = self.vm_id.clone();
        o.root_id = self.root_id.clone();
        o.plugin_config = crate::options::inline_or_file(self.config.as_ref(), self.config_file.as_ref(), base)?;
        o.vm_config = self.vm_config.clone().unwrap_or_default().into_bytes();
        o.allow_on_headers_stop_iteration = self.allow_on_headers_stop_iteration;
        o.failure_policy = self.failure_policy;
        if let Some(b) = self.buffer_limit {
            o.buffer_limit = b;
        }
        if let Some(m) = self.memory_limit {
            o.memory_limit = m;
        }
        o.properties = crate::options::property_bytes(&self.properties);
        o.clusters = self.clusters.clone();
        o.clock = Clock::virtual_at_secs(self.time_secs);
        if let Some(s) = self.random_seed {
            o.random_seed = s;
        }
        Ok(o)
    }
}

/// One case: phases in order. A phase that is absent is not sent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// Run under `host-sim bench` (every case is benchmarkable; this marks the default set).
    #[serde(default)]
    pub benchmark: bool,
    /// Which worker VM serves the stream.
    #[serde(default)]
    pub worker: usize,
    /// Advance the virtual clock (and fire ticks) before the stream starts.
    #[serde(default)]
    pub advance_ms: u64,
    /// Per-stream properties the host reports (e.g. `upstream.address` on the response path).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The case expects the VM to trap (strict mode otherwise fails on a trap).
    #[serde(default)]
    pub expect_trap: bool,
    /// Hostcall errors this case expects (by hostcall name), exempt from strict mode.
    #[serde(default)]
    pub allow_errors: Vec<String>,
    #[serde(default)]
    pub request_headers: Option<Phase>,
    #[serde(default)]
    pub request_body: Option<Phase>,
    #[serde(default)]
    pub request_trailers: Option<Phase>,
    #[serde(default)]
    pub response_headers: Option<Phase>,
    #[serde(default)]
    pub response_body: Option<Phase>,
    #[serde(default)]
    pub response_trailers: Option<Phase>,
    /// Checks after the stream completed.
    #[serde(default)]
    pub after: Option<After>,
}

/// Input and expected result of one phase.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    #[serde(default)]
    pub input: Input,
    #[serde(default)]
    pub result: Expect,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Headers or trailers.
    #[serde(default)]
    pub header: Vec<KeyValue>,
    /// Body as one chunk.
    #[serde(default)]
    pub content: Option<String>,
    /// Body as several chunks (end of stream on the last).
    #[serde(default)]
    pub chunks: Vec<String>,
    /// Body read from a file (relative to the case file).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Override end-of-stream for a headers phase (default: true when no body/trailers follow).
    #[serde(default)]
    pub end_of_stream: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// GCP tester `StringMatcher{exact|regex, invert}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub invert: bool,
}

impl Matcher {
    pub fn exact(s: impl Into<String>) -> Matcher {
        Matcher {
            exact: Some(s.into()),
            ..Default::default()
        }
    }
    pub fn regex(s: impl Into<String>) -> Matcher {
        Matcher {
            regex: Some(s.into()),
            ..Default::default()
        }
    }
    pub fn inverted(mut self) -> Matcher {
        self.invert = !self.invert;
        self
    }

    /// Does any of `items` match? (`invert`: none may match.)
    fn check(&self, items: &[String]) -> Result<bool, Error> {
        let any = match (&self.exact, &self.regex) {
            (Some(e), _) => items.iter().any(|i| i == e),
            (None, Some(r)) => {
                let re = Regex::new(r).map_err(|e| Error::Case(format!("bad regex {r:?}: {e}")))?;
                items.iter().any(|i| re.is_match(i))
            }
            (None, None) => return Err(Error::Case("matcher needs exact or regex".into())),
        };
        Ok(any != self.invert)
    }

    fn describe(&self) -> String {
        let m = match (&self.exact, &self.regex) {
            (Some(e), _) => format!("exact {e:?}"),
            (None, Some(r)) => format!("regex {r:?}"),
            _ => "empty matcher".into(),
        };
        if self.invert {
            format!("no line matching {m}")
        } else {
            format!("a line matching {m}")
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Immediate {
    pub http_status: u32,
    #[serde(default)]
    pub details: Option<String>,
}

/// Expected result of a phase. Header checks look at the request headers as forwarded
/// upstream (request phases) or at the response as the client gets it (response phases, and
/// any phase that produced a local reply).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub has_header: Vec<KeyValue>,
    #[serde(default)]
    pub no_header: Vec<KeyValue>,
    /// Matchers over `key: value` lines.
    #[serde(default)]
    pub headers: Vec<Matcher>,
    /// Matchers over the forwarded body as one string.
    #[serde(default)]
    pub body: Vec<Matcher>,
    #[serde(default)]
    pub immediate: Option<Immediate>,
    /// Matchers over the log lines emitted during this phase.
    #[serde(default)]
    pub log: Vec<Matcher>,
    /// `continue`, `paused`, `local_reply`, `reset`.
    #[serde(default)]
    pub flow: Option<String>,
}

/// Checks after the stream finished.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct After {
    /// Shared data values (key → exact value).
    #[serde(default)]
    pub shared_data: BTreeMap<String, String>,
    /// Counter/gauge values by metric name.
    #[serde(default)]
    pub metrics: BTreeMap<String, i64>,
    /// Envoy filter state set through `set_envoy_filter_state`.
    #[serde(default)]
    pub filter_state: BTreeMap<String, String>,
    /// Log lines over the whole case.
    #[serde(default)]
    pub log: Vec<Matcher>,
}

// === builder API ===

impl Case {
    pub fn new(name: impl Into<String>) -> Case {
        Case {
            name: name.into(),
            ..Default::default()
        }
    }
    pub fn worker(mut self, w: usize) -> Case {
        self.worker = w;
        self
    }
    pub fn property(mut self, k: &str, v: &str) -> Case {
        self.properties.insert(k.into(), v.into());
        self
    }
    pub fn expect_trap(mut self) -> Case {
        self.expect_trap = true;
        self
    }
    pub fn request_headers(mut self, p: Phase) -> Case {
        self.request_headers = Some(p);
        self
    }
    pub fn request_body(mut self, p: Phase) -> Case {
        self.request_body = Some(p);
        self
    }
    pub fn response_headers(mut self, p: Phase) -> Case {
        self.response_headers = Some(p);
        self
    }
    pub fn response_body(mut self, p: Phase) -> Case {
        self.response_body = Some(p);
        self
    }
    pub fn after(mut self, a: After) -> Case {
        self.after = Some(a);
        self
    }
}

impl Phase {
    /// Headers (or trailers) input.
    pub fn headers(pairs: &[(&str, &str)]) -> Phase {
        Phase {
            input: Input {
                header: pairs
                    .iter()
                    .map(|(k, v)| KeyValue {
                        key: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }
    /// Body input in chunks.
    pub fn body(chunks: &[&str]) -> Phase {
        Phase {
            input: Input {
                chunks: chunks.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }
    pub fn end_of_stream(mut self, eos: bool) -> Phase {
        self.input.end_of_stream = Some(eos);
        self
    }
    pub fn has_header(mut self, k: &str, v: &str) -> Phase {
        self.result.has_header.push(KeyValue {
            key: k.into(),
            value: v.into(),
        });
        self
    }
    pub fn no_header(mut self, k: &str) -> Phase {
        self.result.no_header.push(KeyValue {
            key: k.into(),
            value: String::new(),
        });
        self
    }
    pub fn header_line(mut self, m: Matcher) -> Phase {
        self.result.headers.push(m);
        self
    }
    pub fn body_is(mut self, m: Matcher) -> Phase {
        self.result.body.push(m);
        self
    }
    pub fn immediate(mut self, status: u32) -> Phase {
        self.result.immediate = Some(Immediate {
            http_status: status,
            details: None,
        });
        self
    }
    pub fn log(mut self, m: Matcher) -> Phase {
        self.result.log.push(m);
        self
    }
    pub fn flow(mut self, f: &str) -> Phase {
        self.result.flow = Some(f.into());
        self
    }
}

// === running ===

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
        serde_yaml::from_str(text).map_err(|e| Error::Case(format!("parsing YAML: {e}")))
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
                            e.call, e.status, e.phase, e.context_id
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
        let base = self.base.clone();
        let after = case.after.clone();
        let strict = self.strict;
        let w = &mut self.host.workers[wi];
        let s = w.new_stream();
        for (k, v) in &case.properties {
            w.set_stream_property(s, k, v.as_bytes());
        }
        let has_req_body = case.request_body.is_some() || case.request_trailers.is_some();
        let has_resp_body = case.response_body.is_some() || case.response_trailers.is_some();

        let run = |w: &mut Worker,
                   name: &str,
                   p: &Phase,
                   request: bool,
                   kind: Kind,
                   failures: &mut Vec<String>|
         -> Result<(), Error> {
            let l0 = w.log_count();
            let step = match kind {
                Kind::Headers(more) => {
                    let eos = p.input.end_of_stream.unwrap_or(!more);
                    let h = kv(&p.input.header);
                    if request {
                        w.request_headers(s, h, eos)
                    } else {
                        w.response_headers(s, h, eos)
                    }
                }
                Kind::Body(more) => {
                    let chunks = body_chunks(&p.input, &base)?;
                    let n = chunks.len();
                    let mut last = None;
                    for (i, c) in chunks.iter().enumerate() {
                        let eos = i + 1 == n && !more;
                        last = Some(if request {
                            w.request_body(s, c, eos)
                        } else {
                            w.response_body(s, c, eos)
                        });
                    }
                    last.unwrap_or(crate::worker::Step {
                        action: None,
                        flow: Flow::Continued,
                    })
                }
                Kind::Trailers => {
                    let h = kv(&p.input.header);
                    if request {
                        w.request_trailers(s, h)
                    } else {
                        w.response_trailers(s, h)
                    }
                }
            };
            if check {
                let logs: Vec<String> = w.logs().into_iter().skip(l0).map(|l| l.message).collect();
                check_phase(w, s, name, request, &p.result, step.flow, &logs, failures)?;
            }
            Ok(())
        };

        if let Some(p) = &case.request_headers {
            run(w, "request_headers", p, true, Kind::Headers(has_req_body), failures)?;
        }
        if let Some(p) = &case.request_body {
            run(
                w,
                "request_body",
                p,
                true,
                Kind::Body(case.request_trailers.is_some()),
                failures,
            )?;
        }
        if let Some(p) = &case.request_trailers {
            run(w, "request_trailers", p, true, Kind::Trailers, failures)?;
        }
        if let Some(p) = &case.response_headers {
            let mut p = p.clone();
            if p.input.header.is_empty() {
                p.input.header.push(KeyValue {
                    key: ":status".into(),
                    value: "200".into(),
                });
            }
            run(w, "response_headers", &p, false, Kind::Headers(has_resp_body), failures)?;
        }
        if let Some(p) = &case.response_body {
            run(
                w,
                "response_body",
                p,
                false,
                Kind::Body(case.response_trailers.is_some()),
                failures,
            )?;
        }
        if let Some(p) = &case.response_trailers {
            run(w, "response_trailers", p, false, Kind::Trailers, failures)?;
        }
        if check && strict {
            if let Some(io) = w.stream_io(s) {
                for m in &io.late_mutations {
                    failures.push(format!(
                        "strict: {m}: Envoy returns Ok but the change never reaches the upstream"
                    ));
                }
            }
        }
        if check {
            if let Some(a) = &after {
                if let Some(io) = w.stream_io(s) {
                    for (k, v) in &a.filter_state {
                        let got = io.filter_state.get(k).map(|b| String::from_utf8_lossy(b).into_owned());
                        if got.as_deref() != Some(v.as_str()) {
                            failures.push(format!("after: filter state {k:?} = {got:?}, want {v:?}"));
                        }
                    }
                } else if !a.filter_state.is_empty() {
                    failures.push("after: stream has no context to read filter state from".into());
                }
            }
        }
        w.finish(s);
        w.forget(s);
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

#[allow(clippy::too_many_arguments)]
fn check_phase(
    w: &Worker,
    s: StreamId,
    phase: &str,
    request: bool,
    e: &Expect,
    flow: Flow,
    logs: &[String],
    failures: &mut Vec<String>,
) -> Result<(), Error> {
    let imm = w.immediate(s);
    // Which message do header/body checks look at?
    let (headers, body) = if imm.is_some() || !request {
        let d = w.downstream(s).cloned().unwrap_or_default();
        (d.headers.unwrap_or_default(), d.body)
    } else {
        // The request as it stands: forwarded headers, else the host-side map.
        let up = w.upstream(s).cloned().unwrap_or_default();
        let h = match up.headers {
            Some(h) => h,
            None => w.stream_io(s).map(|io| io.request.headers.clone()).unwrap_or_default(),
        };
        (h, up.body)
    };
    let mut fail = |m: String| failures.push(format!("{phase}: {m}"));
    for kv in &e.has_header {
        let got: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&kv.key))
            .map(|(_, v)| v.as_str())
            .collect();
        if !got.contains(&kv.value.as_str()) {
            fail(format!(
                "expected header {}: {:?}, got {:?} (headers {headers:?})",
                kv.key, kv.value, got
            ));
        }
    }
    for kv in &e.no_header {
        if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(&kv.key)) {
            fail(format!("expected no header {} (headers {headers:?})", kv.key));
        }
    }
    let lines: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    for m in &e.headers {
        if !m.check(&lines)? {
            fail(format!("expected {} in headers {lines:?}", m.describe()));
        }
    }
    let body_s = vec![String::from_utf8_lossy(&body).into_owned()];
    for m in &e.body {
        if !m.check(&body_s)? {
            fail(format!("expected body {}; body is {:?}", m.describe(), body_s[0]));
        }
    }
    match (&e.immediate, imm) {
        (Some(want), Some(got)) => {
            if want.http_status != got.status {
                fail(format!("immediate status {}, want {}", got.status, want.http_status));
            }
            if let Some(d) = &want.details {
                if *d != got.details {
                    fail(format!("immediate details {:?}, want {d:?}", got.details));
                }
            }
        }
        (Some(want), None) => fail(format!(
            "expected an immediate response {}, none was sent",
            want.http_status
        )),
        (None, _) => {}
    }
    for m in &e.log {
        if !m.check(logs)? {
            fail(format!("expected {} in logs {logs:?}", m.describe()));
        }
    }
    if let Some(f) = &e.flow {
        let got = match flow {
            Flow::Continued => "continue",
            Flow::Paused => "paused",
            Flow::LocalReply => "local_reply",
            Flow::Reset => "reset",
        };
        if f != got {
            fail(format!("flow {got}, want {f}"));
        }
    }
    Ok(())
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
