//! Declarative test cases: a YAML DSL in the spirit of GCP's plugin tester `tests.yaml`
//! (`plugins/test/runner.proto`, docs/proxy-wasm.md#the-plugin-tester) and a Rust builder for the same
//! structures.
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
//!
//! The DSL's types and the builder are here; [`Runner`] (in `run`) drives the cases and checks
//! what they expect.

mod check;
mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use crate::abi::Direction;
use crate::options::{CallResponse, Clock, FailurePolicy, HostOptions, HostProfile};
use crate::Error;

pub use run::{load, run_file, CaseReport, Runner};

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
    pub profile: HostProfile,
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
            profile: HostProfile::Envoy,
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

    /// The headers, body and trailers phases of `dir`, in the order they are sent.
    pub fn phases(&self, dir: Direction) -> [Option<&Phase>; 3] {
        match dir {
            Direction::Request => [
                self.request_headers.as_ref(),
                self.request_body.as_ref(),
                self.request_trailers.as_ref(),
            ],
            Direction::Response => [
                self.response_headers.as_ref(),
                self.response_body.as_ref(),
                self.response_trailers.as_ref(),
            ],
        }
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
