//! The HTTP context: one per stream. Its [`Phase`] says where the stream stands, and the right
//! to write the request header map ([`RequestMap`]) travels inside the phases in which the host
//! allows it, so no code path can write that map anywhere else.
//!
//! ```text
//!                 request headers callback (RequestMap made here, and only here)
//!   Start ─┬─ snapshot or relay push ───────▶ Intake(kind, map) ──body/trailers──▶ Answered
//!          ├─ inference POST, body mode ────▶ Buffering(api, map) ─┬─ pick ─▶ Forwarded
//!          │                                                       └─ error ▶ Answered
//!          ├─ inference POST, headers-only ─ pick at headers ─────┬────────▶ Forwarded
//!          │                                                       └───────▶ Answered
//!          └─ anything else ────────────────────────────────────────────────▶ Forwarded
//! ```
//! Envoy keeps the request header map only while the headers are held (`Pause` from the
//! headers callback, with `allow_on_headers_stop_iteration`); after `Continue` it is gone and a
//! write answers `BadArgument` (Envoy `source/extensions/common/wasm/context.cc`
//! `decodeHeaders`: `request_headers_ = nullptr`). GCP Service Extensions allows a header map
//! only inside its own callback. `Intake` and `Buffering` exist only where headers are held,
//! and `Forwarded` / `Answered` carry nothing: a body that arrives after the pick (headers-only
//! mode) passes through untouched and is never decided again.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use log::{debug, warn};
use picker_core::prefix::EndpointKey;
use picker_core::request::{parse_subset, SubsetEntry};
use picker_core::{scan, Api, Prompt};
use picker_core::{Inbound, Routing};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::abi::{self, Buffer, HostError, Map};
use super::metrics::Metrics;
use super::{relay, store_snapshot, Worker};
use crate::config::{FailureMode, InputMode};
use crate::headers::{has_header, header_value, FieldValue, HeaderMap};
use crate::inflight::KEY_INFLIGHT;
use crate::intake::{bearer_matches, source_allowed, IntakeError};
use crate::reply::error_body;

/// Headers a client must never set: they choose or report the upstream pod.
const ROUTING_HEADERS: [&str; 3] = [
    "x-gateway-destination-endpoint",
    "x-gateway-destination-endpoint-served",
    "x-gateway-destination-endpoint-subset",
];
const TEST_STEERING_HEADER: &str = "test-epp-endpoint-selection";
const TEST_SERVED_HEADER: &str = "x-conformance-test-served-endpoint";
/// InferenceObjective binding headers: GIE's name and the llm-d alias.
const OBJECTIVE_HEADERS: [&str; 2] = ["x-gateway-inference-objective", "x-llm-d-inference-objective"];
const AFFINITY_OUT_HEADER: &str = "x-wasm-epp-affinity";
/// Envoy filter state read by an ORIGINAL_DST cluster; a client cannot set it.
const ORIGINAL_DST_KEY: &str = "envoy.network.transport_socket.original_dst_address";

/// Protobuf `SetEnvoyFilterStateArguments { string path = 1; string value = 2; LifeSpan span = 3; }`
/// (Envoy `source/extensions/common/wasm/ext/set_envoy_filter_state.proto`), span
/// `DownstreamRequest` = 1.
fn filter_state_args(path: &str, value: &str) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag);
        let mut n = bytes.len();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(path.len() + value.len() + 8);
    field(&mut out, 0x0a, path.as_bytes());
    field(&mut out, 0x12, value.as_bytes());
    out.extend_from_slice(&[0x18, 1]);
    out
}

// === the right to write the request header map ===

/// The right to write the request header map. Made only at the start of the request-headers
/// callback; afterwards it lives only inside [`Phase::Intake`] and [`Phase::Buffering`], the
/// states in which the headers are held by the host.
pub(super) struct RequestMap(());

impl RequestMap {
    /// Sets `name` to `value`. Envoy's replace changes the first occurrence and keeps later
    /// ones, so every name written here was stripped of client copies in the headers callback
    /// (`strip_client_routing_headers`), or is `content-length`, which a valid request carries
    /// once.
    fn set(&self, name: &str, value: FieldValue<'_>) -> Result<(), HostError> {
        abi::replace_header(Map::Request, name, value)
    }

    fn remove(&self, name: &str) -> Result<(), HostError> {
        abi::remove_header(Map::Request, name)
    }
}

/// What a push to the module carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Intake {
    /// A load snapshot (`snapshot.path`).
    Snapshot,
    /// Other gateway replicas' relay batches (`<snapshot.path>/relay`).
    Relay,
}

/// Where a stream stands on the request path (see the module docs).
enum Phase {
    /// Request headers not seen yet.
    Start,
    /// A snapshot or relay push: headers held while its body is buffered.
    Intake(Intake, RequestMap),
    /// An inference request in body mode: headers held while its body is buffered.
    Buffering(Api, RequestMap),
    /// The request went on (picked, or passed through): nothing more to write on it.
    Forwarded,
    /// A local reply was sent.
    Answered,
}

/// How a pick ended.
enum Routed {
    /// Headers written; the target model (after any rewrite).
    Forward(String),
    /// A local reply was sent.
    Answered,
}

pub(super) struct Stream {
    worker: Rc<RefCell<Worker>>,
    phase: Phase,
    /// An inference request (its response headers are reported in test mode).
    inference: bool,
    /// In-flight entry taken at the pick: (endpoint key, tokens still counted). The tokens
    /// (the primary's uncached prompt tokens) leave at the first response body chunk, the
    /// request in `on_done`.
    acquired: Option<(EndpointKey, u32)>,
    primary: Option<SocketAddr>,
    /// Read with the other request headers in the headers callback and used at the pick: the
    /// InferenceObjective header and, in test mode, the steering one.
    objective: Option<String>,
    steering: Option<String>,
}

impl Stream {
    pub(super) fn new(worker: Rc<RefCell<Worker>>) -> Stream {
        Stream {
            worker,
            phase: Phase::Start,
            inference: false,
            acquired: None,
            primary: None,
            objective: None,
            steering: None,
        }
    }
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        self.release();
        true
    }
}

impl Stream {
    /// Sends an OpenAI-style local reply and ends the request path.
    fn reply(&mut self, status: u32, message: &str, extra: &[(&str, &str)]) -> Action {
        if self.inference {
            self.count(|m| m.error(status));
        }
        self.phase = Phase::Answered;
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(extra);
        if let Err(e) = abi::send_local_response(status, &headers, &error_body(status, message)) {
            warn!("wasm-epp: local reply {status} failed: {e:?}");
        }
        Action::Pause
    }

    fn count(&self, f: impl FnOnce(&Metrics)) {
        if let Some(m) = self.worker.borrow().metrics.as_ref() {
            f(m);
        }
    }

    fn envoy(&self) -> bool {
        self.worker.borrow().envoy()
    }

    fn release(&mut self) {
        if let Some((key, tokens)) = self.acquired.take() {
            self.worker.borrow_mut().account(key, tokens, false, None);
        }
    }

    /// The first response body chunk: prefill is over, so the request's uncached tokens stop
    /// counting (llm-d's in-flight producer does the same at the first streamed chunk).
    fn prefill_done(&mut self) {
        if let Some((key, tokens)) = self.acquired.as_mut() {
            if *tokens > 0 {
                let t = core::mem::take(tokens);
                self.worker.borrow_mut().prefill_done(*key, t);
            }
        }
    }

    /// Removes every client-set routing header. `headers` is the request's header map, read
    /// once: only names present cost a remove (which drops every occurrence), and the local
    /// copy drops them too, so later lookups see what the host map holds.
    fn strip_client_routing_headers(&self, map: &RequestMap, headers: &mut HeaderMap) -> Result<(), HostError> {
        let w = self.worker.borrow();
        let steering = (!w.config.test_mode).then_some(TEST_STEERING_HEADER);
        let names = ROUTING_HEADERS
            .iter()
            .copied()
            .chain([w.config.model_header.as_str(), w.config.destination_header.as_str()])
            .chain(steering);
        for name in names {
            if has_header(headers, name) {
                map.remove(name)?;
                headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            }
        }
        Ok(())
    }

    fn on_headers_gcp(&mut self, map: &RequestMap, headers: &HeaderMap) -> Action {
        // GCP: headers-only, no shared data / metrics / properties; every write happens here,
        // inside the header callback, the only place GCP allows it.
        let (hint, affinity, model_header) = {
            let w = self.worker.borrow();
            (
                w.config.headers_only_model.clone(),
                w.config.headers_only_affinity.clone(),
                w.config.model_header.clone(),
            )
        };
        if let Some(model) = header_value(headers, &hint) {
            match FieldValue::new(&model) {
                Ok(v) => {
                    if let Err(e) = map.set(&model_header, v) {
                        warn!("wasm-epp: writing {model_header} failed: {e:?}");
                    }
                }
                Err(e) => return self.reply(400, &format!("{hint}: {e}"), &[]),
            }
        }
        let _ = map.remove(AFFINITY_OUT_HEADER);
        if let Some(value) = affinity.and_then(|a| header_value(headers, &a)) {
            let h = picker_core::prefix::hash_prompt("", None, Prompt::from_bytes(value.as_bytes()), 1, 64);
            if let Some(k) = h.as_slice().last() {
                let hex = format!("{k:016x}");
                if let Ok(v) = FieldValue::new(&hex) {
                    let _ = map.set(AFFINITY_OUT_HEADER, v);
                }
            }
        }
        self.phase = Phase::Forwarded;
        Action::Continue
    }

    /// The request headers of a snapshot or relay push: answer an unauthorized push at once,
    /// otherwise hold the headers for the body.
    fn intake_headers(
        &mut self,
        kind: Intake,
        map: RequestMap,
        headers: &HeaderMap,
        method: &str,
        end_of_stream: bool,
    ) -> Action {
        let (token, allowed) = {
            let w = self.worker.borrow();
            let s = w.config.snapshot.as_ref();
            let token = match (kind, w.config.relay.as_ref()) {
                (Intake::Relay, Some(r)) => r.token.clone(),
                _ => s.map(|s| s.token.clone()).unwrap_or_default(),
            };
            (token, s.map(|s| s.allowed_sources.clone()).unwrap_or_default())
        };
        let source = abi::property(&["source", "address"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok());
        let err = if method != "POST" {
            Some(IntakeError::MethodNotAllowed)
        } else if !source_allowed(source.as_deref(), &allowed) {
            Some(IntakeError::Forbidden)
        } else if !bearer_matches(header_value(headers, "authorization").as_deref(), &token) {
            Some(IntakeError::Unauthorized)
        } else if end_of_stream {
            Some(match kind {
                Intake::Snapshot => IntakeError::Invalid(picker_core::snapshot::DecodeError::Truncated { offset: 0 }),
                Intake::Relay => IntakeError::InvalidRelay(crate::relay::BatchError::Empty),
            })
        } else {
            None
        };
        match err {
            Some(e) => self.reply(e.status(), &e.message(), &[]),
            None => {
                self.phase = Phase::Intake(kind, map);
                Action::Pause
            }
        }
    }

    /// The whole body of a relay push is in: take it (`wasm::relay`), answer 204 with what was
    /// applied, or the refusal.
    fn relay_body(&mut self) -> Action {
        let body = match abi::buffer(Buffer::RequestBody) {
            Ok(b) => b,
            Err(e) => return self.reply(503, &format!("relay body unreadable: {e:?}"), &[]),
        };
        let taken = relay::take(&self.worker.borrow(), &body);
        match taken {
            Ok(t) => {
                debug!("wasm-epp: relay push taken: {}", t.header_value());
                self.count(|m| {
                    Metrics::add(m.relay_applied, t.applied);
                    Metrics::add(m.relay_dropped, t.stale + t.echo);
                });
                self.phase = Phase::Answered;
                let value = t.header_value();
                if let Err(e) = abi::send_local_response(204, &[("x-wasm-epp-relay", value.as_str())], &[]) {
                    warn!("wasm-epp: local reply 204 failed: {e:?}");
                }
                Action::Pause
            }
            Err(e) => {
                warn!("wasm-epp: relay push refused ({}): {}", e.status(), e.message());
                self.count(|m| Metrics::inc(m.relay_rejected));
                self.reply(e.status(), &e.message(), &[])
            }
        }
    }

    fn intake_body(&mut self) -> Action {
        let body = match abi::buffer(Buffer::RequestBody) {
            Ok(b) => b,
            Err(e) => return self.reply(503, &format!("snapshot body unreadable: {e:?}"), &[]),
        };
        let max = self.worker.borrow().config.snapshot.as_ref().map_or(0, |s| s.max_bytes);
        match store_snapshot(&body, max) {
            Ok(seq) => {
                debug!("wasm-epp: snapshot {seq} stored");
                self.count(|m| Metrics::inc(m.pushes_accepted));
                self.phase = Phase::Answered;
                if let Err(e) = abi::send_local_response(204, &[], &[]) {
                    warn!("wasm-epp: local reply 204 failed: {e:?}");
                }
                Action::Pause
            }
            Err(e) => {
                warn!("wasm-epp: snapshot push refused ({}): {}", e.status(), e.message());
                self.count(|m| Metrics::inc(m.pushes_rejected));
                self.reply(e.status(), &e.message(), &[])
            }
        }
    }

    /// The whole body of an inference request is in: scan, pick, write, go on.
    fn inference_body(&mut self, api: Api, map: RequestMap) -> Action {
        let body = match abi::buffer(Buffer::RequestBody) {
            Ok(b) => b,
            Err(e) => return self.reply(503, &format!("request body unreadable: {e:?}"), &[]),
        };
        let max = self.worker.borrow().config.max_body_bytes;
        if body.len() > max {
            return self.reply(413, &format!("body larger than {max} bytes"), &[]);
        }
        let s = match scan(&body, api) {
            Ok(s) => s,
            Err(e) => return self.reply(400, &e.to_string(), &[]),
        };
        let target = match self.route(&map, &s.model, s.cache_salt.as_deref(), s.prompt) {
            Routed::Forward(target) => target,
            Routed::Answered => return Action::Pause,
        };
        if target != s.model {
            // The model server serves what the body names: splice the rewritten model in (as
            // GIE's EPP does) and fix the length while the headers still wait.
            let quoted = serde_json::Value::String(target).to_string();
            let mut out = Vec::with_capacity(body.len() + quoted.len());
            out.extend_from_slice(&body[..s.model_range.start]);
            out.extend_from_slice(quoted.as_bytes());
            out.extend_from_slice(&body[s.model_range.end..]);
            let len = out.len().to_string();
            let written = abi::set_buffer(Buffer::RequestBody, 0, body.len(), &out).and_then(|()| {
                FieldValue::new(&len)
                    .map_err(|_| HostError::BadArgument)
                    .and_then(|v| map.set("content-length", v))
            });
            if let Err(e) = written {
                self.release();
                return self.reply(503, &format!("rewriting the body failed: {e:?}"), &[]);
            }
        }
        self.phase = Phase::Forwarded;
        Action::Continue
    }

    /// Routes a scanned (or header-derived) request through picker-core's pipeline and
    /// translates the outcome: headers and in-flight accounting, or a local reply.
    fn route(&mut self, map: &RequestMap, model: &str, cache_salt: Option<&str>, prompt: Prompt<'_>) -> Routed {
        let envoy = self.envoy();
        if envoy {
            self.worker.borrow_mut().refresh_pool();
        }
        let objective = self.objective.take();
        let steering = self.steering.take();
        // One read of the in-flight table (bytes and cas) serves the pick and the acquire.
        let inflight_read = if envoy {
            abi::shared_data(KEY_INFLIGHT).ok().map(Option::unwrap_or_default)
        } else {
            None
        };
        let admitted = {
            let mut guard = self.worker.borrow_mut();
            let w = &mut *guard;
            w.router.admit(model, &mut w.rng)
        };
        let Some(target) = admitted else {
            self.reply(404, &format!("model {model:?} is not served here"), &[]);
            return Routed::Answered;
        };
        // Every value written into a header is a valid field value (the scanner refuses such
        // models in the body; this covers the headers-only model header).
        if let Err(e) = FieldValue::new(&target) {
            self.reply(400, &format!("model {target:?} cannot be sent as a header: {e}"), &[]);
            return Routed::Answered;
        }
        let test_mode = self.worker.borrow().config.test_mode;
        let subset: Option<Vec<SubsetEntry>> = match (test_mode, steering) {
            (true, Some(s)) => match parse_subset(&s) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.reply(400, &format!("{TEST_STEERING_HEADER}: {e}"), &[]);
                    return Routed::Answered;
                }
            },
            _ => None,
        };
        let fail_open = {
            let w = self.worker.borrow();
            w.pool.endpoints().is_empty() && w.config.failure_mode == FailureMode::FailOpen
        };
        if fail_open {
            // No snapshot yet and no static endpoints: GIE's FailOpen lets the cluster pick.
            return self.write_routing(map, None, &target);
        }
        let mut req = Inbound::new(model, prompt);
        req.cache_salt = cache_salt;
        req.objective = objective.as_deref();
        req.subset = subset.as_deref();
        let inflight_bytes = inflight_read.as_ref().map_or(&[][..], |r| r.0.as_slice());
        let routing = self.worker.borrow_mut().decide(&req, target, inflight_bytes);
        match routing {
            Routing::Picked {
                target,
                decision,
                account: Some((key, tokens)),
            } => {
                let list = self.worker.borrow().destination_list(&decision);
                self.primary = list.1;
                let routed = self.write_routing(map, Some(&list.0), &target);
                if let (Routed::Forward(_), true) = (&routed, envoy) {
                    let tokens = tokens.min(u32::MAX as u64) as u32;
                    self.worker.borrow_mut().account(key, tokens, true, inflight_read);
                    self.acquired = Some((key, tokens));
                }
                routed
            }
            other => {
                let (status, message) = match other.rejection() {
                    Some(r) => (r.http_status() as u32, r.to_string()),
                    None => (503, String::from("no endpoint picked")),
                };
                let extra: &[(&str, &str)] = if status == 429 { &[("retry-after", "1")] } else { &[] };
                self.reply(status, &message, extra);
                Routed::Answered
            }
        }
    }

    /// Writes the destination list (when there is one) and the model header; the ORIGINAL_DST
    /// filter state too when configured. A write the host refuses answers 503: forwarding a
    /// request whose routing headers are half written would route it blind.
    fn write_routing(&mut self, map: &RequestMap, destinations: Option<&str>, target: &str) -> Routed {
        let (destination_header, model_header, filter_state) = {
            let w = self.worker.borrow();
            (
                w.config.destination_header.clone(),
                w.config.model_header.clone(),
                w.config.original_dst_filter_state,
            )
        };
        let written = (|| -> Result<(), String> {
            if let Some(list) = destinations {
                let v = FieldValue::new(list).map_err(|e| format!("destination list {e}"))?;
                map.set(&destination_header, v).map_err(|e| format!("{e:?}"))?;
            }
            let model = FieldValue::new(target).map_err(|e| format!("model {e}"))?;
            map.set(&model_header, model).map_err(|e| format!("{e:?}"))
        })();
        if let Err(e) = written {
            self.reply(503, &format!("writing the routing headers failed: {e}"), &[]);
            return Routed::Answered;
        }
        if let (true, Some(list)) = (filter_state, destinations) {
            // The list's first entry is the primary's `ip:port`, already formatted.
            let first = list.split(',').next().unwrap_or_default();
            let args = filter_state_args(ORIGINAL_DST_KEY, first);
            if let Err(s) = self.call_foreign_function("set_envoy_filter_state", Some(&args)) {
                warn!("wasm-epp: set_envoy_filter_state failed: {s:?} (needs Envoy >= 1.26)");
            }
        }
        Routed::Forward(target.to_string())
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !matches!(self.phase, Phase::Start) {
            return Action::Continue;
        }
        // The only place the right to write the request header map is made.
        let map = RequestMap(());
        // One hostcall for the whole map instead of one per header read or removed.
        let mut headers = match abi::map_pairs(Map::Request) {
            Ok(h) => h,
            Err(e) => return self.reply(503, &format!("request headers unreadable: {e:?}"), &[]),
        };
        // A client must never choose the pod: if stripping fails, nothing is forwarded.
        if let Err(e) = self.strip_client_routing_headers(&map, &mut headers) {
            return self.reply(503, &format!("removing client routing headers failed: {e:?}"), &[]);
        }
        if !self.envoy() {
            return self.on_headers_gcp(&map, &headers);
        }
        let path = header_value(&headers, ":path").unwrap_or_default();
        let method = header_value(&headers, ":method").unwrap_or_default();
        let bare = path.split('?').next().unwrap_or("");
        // Compared in place: no copy of the configured paths per request.
        let (intake, mode, api, max_body, test_mode) = {
            let w = self.worker.borrow();
            let c = &w.config;
            let intake = if c.snapshot.as_ref().is_some_and(|s| s.path == bare) {
                Some(Intake::Snapshot)
            } else if c.relay.as_ref().is_some_and(|r| r.intake_path == bare) {
                Some(Intake::Relay)
            } else {
                None
            };
            (intake, c.mode, c.api_for(&path), c.max_body_bytes, c.test_mode)
        };
        if let Some(kind) = intake {
            return self.intake_headers(kind, map, &headers, &method, end_of_stream);
        }
        let Some(api) = api.filter(|_| method == "POST") else {
            self.phase = Phase::Forwarded;
            return Action::Continue;
        };
        self.inference = true;
        // Taken now for the pick, from the map as it stands after stripping: the values a read
        // at pick time would get.
        self.objective = OBJECTIVE_HEADERS
            .iter()
            .find_map(|h| header_value(&headers, h))
            .map(Cow::into_owned);
        if test_mode {
            self.steering = header_value(&headers, TEST_STEERING_HEADER).map(Cow::into_owned);
        }
        if mode == InputMode::HeadersOnly {
            let (hint, affinity) = {
                let w = self.worker.borrow();
                (
                    w.config.headers_only_model.clone(),
                    w.config.headers_only_affinity.clone(),
                )
            };
            let Some(model) = header_value(&headers, &hint) else {
                return self.reply(
                    400,
                    &format!("headers-only mode needs the model in the {hint} header"),
                    &[],
                );
            };
            let affinity_value = affinity.and_then(|a| header_value(&headers, &a)).unwrap_or_default();
            // Decided here, once: the body (if any) passes through in `Forwarded`.
            return match self.route(&map, &model, None, Prompt::from_bytes(affinity_value.as_bytes())) {
                Routed::Forward(_) => {
                    self.phase = Phase::Forwarded;
                    Action::Continue
                }
                Routed::Answered => Action::Pause,
            };
        }
        if end_of_stream {
            return self.reply(400, "an inference request needs a JSON body", &[]);
        }
        let too_big = header_value(&headers, "content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_some_and(|n| n > max_body);
        if too_big {
            return self.reply(413, &format!("request body larger than {max_body} bytes"), &[]);
        }
        // Hold headers until the body is scanned (needs allow_on_headers_stop_iteration).
        self.phase = Phase::Buffering(api, map);
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let max = {
            let w = self.worker.borrow();
            match self.phase {
                Phase::Intake(Intake::Snapshot, _) => w.config.snapshot.as_ref().map_or(0, |s| s.max_bytes),
                Phase::Intake(Intake::Relay, _) => w.config.relay.as_ref().map_or(0, |r| r.max_bytes),
                Phase::Buffering(..) => w.config.max_body_bytes,
                Phase::Start | Phase::Forwarded => return Action::Continue,
                Phase::Answered => return Action::Pause,
            }
        };
        if body_size > max {
            return self.reply(413, &format!("body larger than {max} bytes"), &[]);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.body_complete()
    }

    /// Trailers end the body (HTTP/2, or HTTP/1.1 chunked with trailers): the body callback
    /// never saw `end_of_stream`, so the held request is decided here.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.phase {
            Phase::Intake(..) | Phase::Buffering(..) => self.body_complete(),
            Phase::Answered => Action::Pause,
            Phase::Start | Phase::Forwarded => Action::Continue,
        }
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.prefill_done();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.inference || !self.envoy() || !self.worker.borrow().config.test_mode {
            return Action::Continue;
        }
        // Only conformance test mode reports the served endpoint; otherwise no property read.
        let served = abi::property(&["upstream", "address"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<SocketAddr>().ok())
            .or(self.primary);
        if let Some(a) = served {
            let s = a.to_string();
            if let Ok(v) = FieldValue::new(&s) {
                // Written inside the response-headers callback, where the map is live.
                let _ = abi::replace_header(Map::Response, TEST_SERVED_HEADER, v);
            }
        }
        Action::Continue
    }
}

impl Stream {
    /// The held request's body is complete (end of stream, or trailers).
    fn body_complete(&mut self) -> Action {
        match std::mem::replace(&mut self.phase, Phase::Answered) {
            Phase::Intake(Intake::Snapshot, _map) => self.intake_body(),
            Phase::Intake(Intake::Relay, _map) => self.relay_body(),
            Phase::Buffering(api, map) => self.inference_body(api, map),
            other => {
                self.phase = other;
                Action::Continue
            }
        }
    }
}
