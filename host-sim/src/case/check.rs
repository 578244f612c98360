//! Checking a case's expectations against what the worker did.

use crate::abi::Direction;
use crate::worker::{Flow, StreamId, Worker};
use crate::Error;

use super::{After, Expect};

#[allow(clippy::too_many_arguments)]
pub(super) fn check_phase(
    w: &Worker,
    s: StreamId,
    phase: &str,
    dir: Direction,
    e: &Expect,
    flow: Flow,
    logs: &[String],
    failures: &mut Vec<String>,
) -> Result<(), Error> {
    let imm = w.immediate(s);
    // Which message do header/body checks look at?
    let (headers, body) = if imm.is_some() || dir == Direction::Response {
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

/// After the stream's phases: in strict mode, header writes that never reached the upstream;
/// then the filter state the case expects.
pub(super) fn check_stream(w: &Worker, s: StreamId, strict: bool, after: Option<&After>, failures: &mut Vec<String>) {
    if strict {
        if let Some(io) = w.stream_io(s) {
            for m in &io.late_mutations {
                failures.push(format!(
                    "strict: {m}: Envoy returns Ok but the change never reaches the upstream"
                ));
            }
        }
    }
    if let Some(a) = after {
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
