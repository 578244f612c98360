//! The gateway's worker threads: each owns one [`Worker`] (one VM instance), takes the
//! stream events the proxy side sends, and reports back what the filter released.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{mpsc as smpsc, Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::abi::{Direction, Headers};
use crate::options::CallResponse;
use crate::worker::{StreamId, Worker};

use super::proxy::{http_callout, ORIGINAL_DST_KEY};
use super::ProxyState;

/// What the proxy side asks of a worker thread.
pub(super) enum WCmd {
    New {
        events: mpsc::UnboundedSender<Ev>,
        peer: SocketAddr,
        reply: oneshot::Sender<StreamId>,
    },
    Headers {
        id: StreamId,
        dir: Direction,
        headers: Headers,
        eos: bool,
        /// Response headers: the endpoint that served the request (property `upstream.address`).
        served: Option<String>,
    },
    Body(StreamId, Direction, Bytes, bool),
    Trailers(StreamId, Direction, Headers),
    Finish(StreamId),
    CallDone(u32, CallResponse),
    Stop,
}

/// What the filter released in one direction, as deltas for the proxy side.
pub(super) enum Ev {
    Start {
        dir: Direction,
        headers: Headers,
        body: Bytes,
        end: bool,
        /// Request: filter state `envoy.network.transport_socket.original_dst_address`, if set.
        original_dst: Option<String>,
    },
    Data(Direction, Bytes),
    End(Direction),
    Reset,
}

/// How much of one direction's [`crate::Forwarded`] the proxy side has been sent.
#[derive(Default)]
struct Relay {
    started: bool,
    sent: usize,
    end: bool,
}

#[derive(Default)]
struct Track {
    /// Request, then response.
    relay: [Relay; 2],
    reset: bool,
}

pub(super) fn worker_loop(
    mut w: Worker,
    rx: smpsc::Receiver<WCmd>,
    tx: smpsc::Sender<WCmd>,
    shared: Arc<OnceLock<Arc<ProxyState>>>,
) {
    // A gateway runs until stopped: bounded histories, not every log line and sample.
    w.bound_history();
    let mut tracks: HashMap<StreamId, (mpsc::UnboundedSender<Ev>, Track)> = HashMap::new();
    let mut dispatched: HashSet<u32> = HashSet::new();
    loop {
        let cmd = match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(c) => Some(c),
            Err(smpsc::RecvTimeoutError::Timeout) => None,
            Err(smpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Input for a stream that already finished (e.g. body still arriving after a local
        // reply) is dropped.
        let stale = match &cmd {
            Some(WCmd::Headers { id, .. })
            | Some(WCmd::Body(id, ..))
            | Some(WCmd::Trailers(id, ..))
            | Some(WCmd::Finish(id)) => !tracks.contains_key(id),
            _ => false,
        };
        if stale {
            continue;
        }
        match cmd {
            Some(WCmd::Stop) => return,
            Some(WCmd::New { events, peer, reply }) => {
                let id = w.new_stream();
                w.set_stream_property(id, "source.address", peer.to_string().as_bytes());
                tracks.insert(id, (events, Track::default()));
                let _ = reply.send(id);
            }
            Some(WCmd::Headers {
                id,
                dir,
                headers,
                eos,
                served,
            }) => {
                if let Some(ep) = served {
                    w.set_stream_property(id, "upstream.address", ep.as_bytes());
                }
                w.headers(id, dir, headers, eos);
            }
            Some(WCmd::Body(id, dir, b, eos)) => {
                w.body(id, dir, &b, eos);
            }
            Some(WCmd::Trailers(id, dir, t)) => {
                w.trailers(id, dir, t);
            }
            Some(WCmd::Finish(id)) => {
                w.finish(id);
                w.forget(id);
                tracks.remove(&id);
            }
            Some(WCmd::CallDone(token, resp)) => {
                dispatched.remove(&token);
                w.respond_http_call(token, resp);
            }
            None => {}
        }
        w.run_timers_and_queues();
        start_callouts(&w, &tx, &shared, &mut dispatched);
        for (id, (ev, t)) in tracks.iter_mut() {
            sync(&w, *id, ev, t);
        }
    }
}

/// Start real calls for new `dispatch_http_call` requests.
fn start_callouts(
    w: &Worker,
    tx: &smpsc::Sender<WCmd>,
    shared: &OnceLock<Arc<ProxyState>>,
    dispatched: &mut HashSet<u32>,
) {
    let Some(sh) = shared.get() else { return };
    for call in w.pending_calls() {
        if dispatched.insert(call.token) {
            let tx = tx.clone();
            let sh2 = sh.clone();
            sh.rt.spawn(async move {
                let resp = http_callout(&sh2, &call).await;
                let _ = tx.send(WCmd::CallDone(call.token, resp));
            });
        }
    }
}

/// Send the proxy side what the filter released since the last call, request then response.
fn sync(w: &Worker, id: StreamId, ev: &mpsc::UnboundedSender<Ev>, t: &mut Track) {
    if t.reset {
        return;
    }
    if w.was_reset(id) {
        t.reset = true;
        let _ = ev.send(Ev::Reset);
        return;
    }
    for dir in Direction::BOTH {
        let Some(out) = w.forwarded(id, dir) else { continue };
        let Some(h) = &out.headers else { continue };
        let r = &mut t.relay[dir as usize];
        if !r.started {
            r.started = true;
            r.sent = out.body.len();
            r.end = out.end;
            let original_dst = match dir {
                Direction::Request => w
                    .stream_io(id)
                    .and_then(|io| io.filter_state.get(ORIGINAL_DST_KEY))
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
                Direction::Response => None,
            };
            let _ = ev.send(Ev::Start {
                dir,
                headers: h.clone(),
                body: Bytes::copy_from_slice(&out.body),
                end: out.end,
                original_dst,
            });
        } else {
            if out.body.len() > r.sent {
                let _ = ev.send(Ev::Data(dir, Bytes::copy_from_slice(&out.body[r.sent..])));
                r.sent = out.body.len();
            }
            if out.end && !r.end {
                r.end = true;
                let _ = ev.send(Ev::End(dir));
            }
        }
    }
}
