//! The relay between gateway replicas, collector side (docs/replicas.md; the batch codec is the
//! module's, `filter::relay`).
//!
//! ```text
//!  module worker VM ──POST /relay (bearer, one batch)──▶ RelayHub: checked, decoded whole, kept
//!                                                         in a bounded buffer (newest last)
//!  one task per gateway ◀── wake on every new batch ─────┘
//!    └─▶ POST <gateway snapshot path>/relay: the batches it has not had yet, back to back
//!        (a bundle, at most --relay-max-bytes), one request in flight per gateway
//! ```
//!
//! * **Intake** answers like the module's snapshot intake: 405 not a POST, 403 source not in
//!   `--relay-allow`, 401 bad bearer token (constant-time compare), 413 larger than
//!   `--relay-max-bytes`, 400 not exactly one well-formed batch, 204 kept. A refused batch is
//!   not kept.
//! * **Buffer**: at most [`MAX_BATCHES`] batches and [`MAX_BUFFER_BYTES`] bytes; the oldest go
//!   first. A gateway that falls behind (down, slow) skips what was evicted and anything older
//!   than [`MAX_AGE`]: an old insertion is worth little, and an old in-flight section would be
//!   stamped fresh by the receiver.
//! * **Fan-out**: every gateway this collector pushes snapshots to (`--push`,
//!   `--push-gateways`), plus `--relay-peer` / `--relay-peers` gateways that get relay batches
//!   only (sidecar mode: the other gateway pods). A gateway also gets its own replica's batches
//!   back (central mode, or a peer list that includes itself); the module drops them by replica
//!   id. Every collector replica fans out what it was given, so with several replicas a batch
//!   reaches every gateway from whichever replica took it.
//! * **Push answers**: 204 delivered; 400 / 409 / 413 are final for those batches (retrying
//!   cannot help); anything else (401, 403, 5xx, connection errors) is retried with backoff
//!   50 ms → 2 s, with whatever the buffer holds by then.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use filter::intake::{bearer_matches, SourceNet};
use hyper::StatusCode;
use picker_core::sync::MAX_RECORD_HASHES;
use tokio::sync::watch;

use crate::http::Conn;
use crate::push::{count_outcome, post_once, PushContext, PushUrl};

/// Most batches kept.
pub const MAX_BATCHES: usize = 4096;
/// Most bytes kept.
pub const MAX_BUFFER_BYTES: usize = 32 << 20;
/// Batches older than this are not pushed any more.
pub const MAX_AGE: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

struct Kept {
    id: u64,
    at: Instant,
    bytes: Bytes,
}

#[derive(Default)]
struct Buffer {
    batches: VecDeque<Kept>,
    bytes: usize,
    next_id: u64,
}

/// What `/relay` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub message: &'static str,
}

impl Answer {
    fn new(status: StatusCode, message: &'static str) -> Answer {
        Answer { status, message }
    }
}

/// The relay's state: settings and the buffer of recent batches.
pub struct RelayHub {
    token: String,
    allowed: Vec<SourceNet>,
    max_bytes: usize,
    buffer: Mutex<Buffer>,
    /// The id the next batch will get; push tasks wait on it.
    head: watch::Sender<u64>,
}

impl RelayHub {
    pub fn new(token: String, allowed: Vec<SourceNet>, max_bytes: usize) -> RelayHub {
        RelayHub {
            token,
            allowed,
            max_bytes,
            buffer: Mutex::new(Buffer::default()),
            head: watch::Sender::new(0),
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Checks a request's method, source, token and declared size before its body is read.
    pub fn check_head(
        &self,
        post: bool,
        source: IpAddr,
        authorization: Option<&str>,
        content_length: Option<u64>,
    ) -> Result<(), Answer> {
        if !post {
            return Err(Answer::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "relay batches are POSTed\n",
            ));
        }
        if !self.allowed.iter().any(|n| n.contains(source)) {
            return Err(Answer::new(StatusCode::FORBIDDEN, "source address not allowed\n"));
        }
        if !bearer_matches(authorization, &self.token) {
            return Err(Answer::new(
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token\n",
            ));
        }
        if content_length.is_some_and(|n| n > self.max_bytes as u64) {
            return Err(Answer::new(StatusCode::PAYLOAD_TOO_LARGE, "batch too large\n"));
        }
        Ok(())
    }

    /// Takes a checked request's body: exactly one well-formed batch is kept, anything else
    /// changes nothing.
    pub fn take(&self, body: Bytes) -> Answer {
        if body.len() > self.max_bytes {
            return Answer::new(StatusCode::PAYLOAD_TOO_LARGE, "batch too large\n");
        }
        if filter::relay::decode(&body, MAX_RECORD_HASHES).is_err() {
            return Answer::new(StatusCode::BAD_REQUEST, "not a relay batch\n");
        }
        self.keep(body);
        Answer::new(StatusCode::NO_CONTENT, "")
    }

    fn keep(&self, bytes: Bytes) {
        let Ok(mut b) = self.buffer.lock() else { return };
        let id = b.next_id;
        b.next_id += 1;
        b.bytes += bytes.len();
        b.batches.push_back(Kept {
            id,
            at: Instant::now(),
            bytes,
        });
        while b.batches.len() > MAX_BATCHES || b.bytes > MAX_BUFFER_BYTES {
            match b.batches.pop_front() {
                Some(k) => b.bytes -= k.bytes.len(),
                None => break,
            }
        }
        let next = b.next_id;
        drop(b);
        self.head.send_replace(next);
    }

    /// Batches kept so far (for tests and metrics).
    pub fn kept(&self) -> u64 {
        *self.head.borrow()
    }

    /// The bundles a gateway that has had every batch before `cursor` gets now (each at most
    /// `max_bytes`, a batch larger than that alone is skipped), and the cursor after them.
    pub fn bundles_since(&self, cursor: u64) -> (Vec<Bytes>, u64) {
        let Ok(b) = self.buffer.lock() else {
            return (Vec::new(), cursor);
        };
        let fresh = |k: &&Kept| k.id >= cursor && k.at.elapsed() <= MAX_AGE;
        let mut out = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        for k in b.batches.iter().filter(fresh) {
            if k.bytes.len() > self.max_bytes {
                continue;
            }
            if cur.len() + k.bytes.len() > self.max_bytes {
                out.push(Bytes::from(std::mem::take(&mut cur)));
            }
            cur.extend_from_slice(&k.bytes);
        }
        if !cur.is_empty() {
            out.push(Bytes::from(cur));
        }
        (out, b.next_id)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }
}

/// Pushes every batch the hub keeps to `url`'s relay path (`<path>/relay`) until `hub` is
/// dropped or the task aborted. Starts with what the buffer holds younger than [`MAX_AGE`].
pub async fn relay_loop(url: PushUrl, hub: Arc<RelayHub>, ctx: PushContext) {
    let url = url.relay();
    let label = url.to_string();
    let mut rx = hub.subscribe();
    let mut cursor = 0;
    let mut conn: Option<Conn> = None;
    let mut backoff = BACKOFF_MIN;
    let mut last_status: Option<String> = None;
    loop {
        let (bodies, next) = hub.bundles_since(cursor);
        let mut failed = false;
        for body in bodies {
            let outcome = post_once(&url, &mut conn, body, &hub.token, &ctx)
                .await
                .map(|r| r.status.as_u16());
            let (status, changed) = count_outcome(&ctx, &label, &outcome, &last_status);
            match outcome {
                // Delivered, or final: the gateway will never take these batches.
                Ok(200..=299 | 400 | 409 | 413) => {
                    if changed && last_status.is_some() {
                        tracing::info!(url = %label, status = %status, "gateway takes relay batches");
                    }
                }
                Ok(code) => {
                    if changed {
                        tracing::warn!(url = %label, status = code, "gateway refused relay batches");
                    }
                    failed = true;
                }
                Err(e) => {
                    if changed {
                        tracing::warn!(url = %label, error = %e, "relay push failed");
                    }
                    failed = true;
                }
            }
            last_status = Some(status);
            if failed {
                break;
            }
        }
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = BACKOFF_MIN;
        cursor = next;
        if *rx.borrow_and_update() != cursor {
            continue;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter::relay::{encode, BatchHeader};

    fn hub(max: usize) -> RelayHub {
        RelayHub::new("relay-token-0123456789".into(), vec!["127.0.0.1".parse().unwrap()], max)
    }

    fn batch(sender: u64, seq: u64, hashes: usize) -> Bytes {
        let served = picker_core::sync::Served {
            endpoint: 1,
            capacity: 1,
            hashes: (0..hashes as u64).collect(),
        };
        Bytes::from(encode(
            &BatchHeader {
                replica: 1,
                sender,
                sequence: seq,
                sent_at_ms: 0,
            },
            &[served],
            &[],
        ))
    }

    #[test]
    fn intake_checks_in_the_modules_order() {
        let h = hub(1 << 20);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let ok = Some("Bearer relay-token-0123456789");
        let status = |r: Result<(), Answer>| r.err().map(|a| a.status.as_u16());
        assert_eq!(status(h.check_head(false, lo, ok, None)), Some(405));
        assert_eq!(
            status(h.check_head(true, "10.0.0.1".parse().unwrap(), ok, None)),
            Some(403)
        );
        assert_eq!(status(h.check_head(true, lo, Some("Bearer nope"), None)), Some(401));
        assert_eq!(status(h.check_head(true, lo, None, None)), Some(401));
        assert_eq!(status(h.check_head(true, lo, ok, Some(2 << 20))), Some(413));
        assert_eq!(status(h.check_head(true, lo, ok, Some(10))), None);
        assert_eq!(h.take(Bytes::from_static(b"WRB1 junk")).status.as_u16(), 400);
        let mut two = batch(1, 1, 1).to_vec();
        two.extend_from_slice(&batch(1, 2, 1));
        assert_eq!(h.take(Bytes::from(two)).status.as_u16(), 400, "one batch per post");
        assert_eq!(h.kept(), 0, "refused batches are not kept");
        assert_eq!(h.take(batch(1, 1, 1)).status.as_u16(), 204);
        assert_eq!(h.kept(), 1);
    }

    #[test]
    fn bundles_respect_the_body_bound_and_the_cursor() {
        let one = batch(1, 1, 10).len();
        let h = hub(2 * one + one / 2);
        for seq in 1..=5 {
            assert_eq!(h.take(batch(1, seq, 10)).status.as_u16(), 204);
        }
        let (bodies, next) = h.bundles_since(0);
        assert_eq!(next, 5);
        assert_eq!(bodies.iter().map(|b| b.len() / one).collect::<Vec<_>>(), vec![2, 2, 1]);
        let all: Vec<u8> = bodies.concat();
        let decoded = filter::relay::decode_bundle(&all, 4096).unwrap();
        let seqs: Vec<u64> = decoded.iter().map(|b| b.header.sequence).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5], "in arrival order");
        let (bodies, _) = h.bundles_since(3);
        assert_eq!(bodies.concat().len(), 2 * one);
        assert!(h.bundles_since(5).0.is_empty());
    }

    #[test]
    fn the_buffer_is_bounded_by_count() {
        let h = hub(1 << 20);
        for seq in 0..(MAX_BATCHES as u64 + 10) {
            h.keep(batch(2, seq, 1));
        }
        let (bodies, next) = h.bundles_since(0);
        let all: Vec<u8> = bodies.concat();
        let decoded = filter::relay::decode_bundle(&all, 4096).unwrap();
        assert_eq!(decoded.len(), MAX_BATCHES);
        assert_eq!(decoded[0].header.sequence, 10, "the oldest went first");
        assert_eq!(next, MAX_BATCHES as u64 + 10);
    }
}
