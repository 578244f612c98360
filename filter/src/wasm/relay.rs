//! The relay between gateway replicas, module side (docs/replicas.md; the codec and the pure
//! parts are in [`crate::relay`]). Envoy / Istio only.
//!
//! * **send** ([`Sender::tick`], on the root context's timer, every `relay.intervalMs`): each
//!   worker VM reads back the ring records it appended itself since its last batch (their
//!   sequences were noted as it wrote them, [`crate::relay::Appended`]) and posts them with its
//!   exact in-flight counts to the collector with `dispatch_http_call`, at most one call in
//!   flight. A VM with nothing new (no record, counts unchanged, no heartbeat due) sends
//!   nothing. The request path does no relay work beyond noting each record's sequence.
//! * **take** ([`take`], a POST to `<snapshot.path>/relay`, authenticated and bounded like a
//!   snapshot push by the stream): the whole bundle is decoded first; then, per batch, the
//!   proxy's own batches (echoes) and those of a sender that owns a local in-flight section are
//!   skipped, a sequence not newer than the last one applied from that sender is dropped, and
//!   the rest are applied: records appended to the prefix-sync ring with the sender as origin
//!   (every worker applies them on its next pick), in-flight sections upserted as relayed
//!   sections stamped now.

use std::time::Duration as StdDuration;

use log::{info, warn};
use picker_core::sync::{Served, MAX_RECORD_HASHES};

use super::abi::{self, HostError};
use super::ring::HostRing;
use super::{cas_update, now_ms, Worker, CAS_RETRIES};
use crate::config::Relay;
use crate::inflight::{self, Entry, KEY_INFLIGHT};
use crate::intake::IntakeError;
use crate::relay::{self, BatchHeader, KEY_REPLICA, KEY_SEEN};

/// How long a sender's last sequence is remembered after its last batch, in in-flight
/// time-to-lives (a sender silent for longer starts over; its next sequence is newer anyway).
const SEEN_HORIZON_TTLS: u64 = 10;

/// This proxy's replica id (0 if it cannot be read: then no batch is taken for an echo).
pub(super) fn replica_id() -> u64 {
    match abi::shared_data(KEY_REPLICA) {
        Ok(Some((b, _))) => <[u8; 8]>::try_from(b.as_slice()).map_or(0, u64::from_le_bytes),
        _ => 0,
    }
}

/// Creates the relay's shared keys at configure time: the replica id (random, once per proxy)
/// and the table of senders heard from. A missing key is created unconditionally (cas 0), so
/// two workers configuring at once may both write the id; every use reads it again, so they
/// agree from then on.
pub(super) fn init_shared(random: u64) {
    if matches!(abi::shared_data(KEY_REPLICA), Ok(None)) {
        let _ = abi::set_shared_data(KEY_REPLICA, &random.max(1).to_le_bytes(), 0);
    }
    if matches!(abi::shared_data(KEY_SEEN), Ok(None)) {
        let _ = abi::set_shared_data(KEY_SEEN, &[], 0);
    }
}

/// One worker VM's sending side (owned by its root context).
#[derive(Default)]
pub(super) struct Sender {
    sequence: u64,
    next_ms: u64,
    /// The token of the call in flight; never more than one per VM.
    call: Option<u32>,
    /// The in-flight counts the last batch carried, and when it was sent.
    last_inflight: Vec<Entry>,
    last_sent_ms: u64,
    /// The last outcome logged (a change is logged, a repeat is not).
    last_outcome: Option<String>,
}

/// `records` (oldest first) cut from the front until a batch with `inflight` fits `max`.
fn fitting<'a>(records: &'a [Served], inflight: &[Entry], max: usize) -> &'a [Served] {
    let mut from = 0;
    while from < records.len() && relay::encoded_len(&records[from..], inflight) > max {
        from += 1;
    }
    &records[from..]
}

impl Sender {
    /// Sends this VM's batch if one is due and there is something to say.
    pub(super) fn tick(&mut self, w: &mut Worker, now: u64) {
        let Some(cfg) = w.config.relay.clone() else { return };
        if self.call.is_some() || now < self.next_ms {
            return;
        }
        // Half a timer period early is on time: a host whose ticks come at a fixed rate (or a
        // ms clock that truncates) may deliver the next one a little under a period after this
        // one, and skipping it would double the interval.
        self.next_ms = now + cfg.interval_ms - super::tick_period_ms(&w.config) / 2;
        let ring = w.config.prefix_sync.map_or(1, |p| p.ring);
        let records = match w.appended.as_mut() {
            Some(a) if !a.is_empty() => a.take_records(
                &mut HostRing {
                    keys: &w.ring_keys,
                    appended: None,
                },
                ring,
                w.sync_origin,
            ),
            _ => Vec::new(),
        };
        let inflight = w.local.entries();
        let heartbeat = !inflight.is_empty() && now.saturating_sub(self.last_sent_ms) >= w.config.inflight_ttl_ms / 4;
        if records.is_empty() && inflight == self.last_inflight.as_slice() && !heartbeat {
            return;
        }
        self.sequence += 1;
        let header = BatchHeader {
            replica: replica_id(),
            sender: w.owner,
            sequence: self.sequence,
            sent_at_ms: now,
        };
        let body = relay::encode(&header, fitting(&records, inflight, cfg.max_bytes), inflight);
        match dispatch(&cfg, &body) {
            Ok(token) => {
                self.call = Some(token);
                self.last_inflight = inflight.to_vec();
                self.last_sent_ms = now;
                if let Some(m) = w.metrics.as_ref() {
                    super::metrics::Metrics::inc(m.relay_sent);
                }
            }
            Err(e) => self.outcome(&cfg, format!("call not sent: {e:?}")),
        }
    }

    /// Takes the answer to this VM's relay call; false if `token` is not its call.
    pub(super) fn response(&mut self, w: &Worker, token: u32, num_headers: usize) -> bool {
        if self.call != Some(token) {
            return false;
        }
        self.call = None;
        let Some(cfg) = w.config.relay.as_ref() else {
            return true;
        };
        let status = if num_headers == 0 {
            String::from("no response")
        } else {
            let headers = abi::map_pairs(abi::Map::HttpCallResponse).unwrap_or_default();
            let status = crate::headers::header_value(&headers, ":status").unwrap_or_default();
            if status.starts_with('2') {
                String::from("ok")
            } else {
                format!("HTTP {status}")
            }
        };
        if status != "ok" {
            if let Some(m) = w.metrics.as_ref() {
                super::metrics::Metrics::inc(m.relay_failed);
            }
        }
        self.outcome(cfg, status);
        true
    }

    fn outcome(&mut self, cfg: &Relay, outcome: String) {
        if self.last_outcome.as_deref() == Some(outcome.as_str()) {
            return;
        }
        if outcome == "ok" {
            if self.last_outcome.is_some() {
                info!("wasm-epp: relay to cluster {} works again", cfg.cluster);
            }
        } else {
            warn!("wasm-epp: relay to cluster {} {}: {outcome}", cfg.cluster, cfg.path);
        }
        self.last_outcome = Some(outcome);
    }
}

/// The relay call through the SDK (its dispatcher must know the token to route the answer to
/// this root context); a failure to send is a status value.
fn dispatch(cfg: &Relay, body: &[u8]) -> Result<u32, proxy_wasm::types::Status> {
    let auth = format!("Bearer {}", cfg.token);
    let headers = vec![
        (":method", "POST"),
        (":path", cfg.path.as_str()),
        (":authority", cfg.authority.as_str()),
        ("authorization", auth.as_str()),
        ("content-type", "application/octet-stream"),
    ];
    proxy_wasm::hostcalls::dispatch_http_call(
        &cfg.cluster,
        headers,
        Some(body),
        vec![],
        StdDuration::from_millis(cfg.interval_ms.max(1000)),
    )
}

/// What one relay push did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Taken {
    /// Batches applied.
    pub applied: u32,
    /// Batches dropped: not newer than the last one applied from their sender.
    pub stale: u32,
    /// Batches skipped: this proxy's own (sent back by a collector), or from a sender that is
    /// a local worker VM.
    pub echo: u32,
    /// Records appended to the ring, and records that could not be.
    pub records: u32,
    pub records_lost: u32,
}

impl Taken {
    pub(super) fn header_value(&self) -> String {
        format!(
            "applied={} stale={} echo={} records={} lost={}",
            self.applied, self.stale, self.echo, self.records, self.records_lost
        )
    }
}

/// Takes a relay push (already authenticated): decodes it whole, then applies what is new.
/// A body that does not decode changes nothing.
pub(super) fn take(w: &Worker, body: &[u8]) -> Result<Taken, IntakeError> {
    let Some(cfg) = w.config.relay.as_ref() else {
        return Err(IntakeError::MethodNotAllowed);
    };
    if body.len() > cfg.max_bytes {
        return Err(IntakeError::TooLarge);
    }
    let batches = relay::decode_bundle(body, MAX_RECORD_HASHES).map_err(IntakeError::InvalidRelay)?;
    let now = now_ms();
    let own = replica_id();
    let mut taken = Taken::default();
    let table = abi::shared_data(KEY_INFLIGHT).ok().flatten().unwrap_or_default();
    let candidates: Vec<&relay::Batch> = batches
        .iter()
        .filter(|b| {
            let echo = b.header.replica == own || inflight::owned_locally(&table.0, b.header.sender);
            taken.echo += u32::from(echo);
            !echo
        })
        .collect();
    let fresh = claim(&candidates, now, w.config.inflight_ttl_ms * SEEN_HORIZON_TTLS);
    taken.applied = fresh.len() as u32;
    taken.stale = (candidates.len() - fresh.len()) as u32;
    // Records, in arrival order, into this proxy's ring.
    let ring = w.config.prefix_sync.map_or(1, |p| p.ring);
    let mut store = HostRing {
        keys: &w.ring_keys,
        appended: None,
    };
    let mut buf = Vec::new();
    for b in &fresh {
        for r in &b.records {
            if relay::append_foreign(&mut store, ring, b.header.sender, r.clone(), &mut buf) {
                taken.records += 1;
            } else {
                taken.records_lost += 1;
            }
        }
    }
    // In-flight sections: each sender's newest batch in this push.
    let mut newest: Vec<&relay::Batch> = Vec::new();
    for b in fresh.iter().rev() {
        if !newest.iter().any(|n| n.header.sender == b.header.sender) {
            newest.push(b);
        }
    }
    upsert_sections(&newest, Some(table), now, w.config.inflight_ttl_ms);
    Ok(taken)
}

/// Records the batches that are newer than what was applied from their senders in the table
/// of senders heard from (CAS), and returns them: a batch claimed here is applied by this call
/// only, even when another worker takes the same batch from another collector at once.
fn claim<'a>(candidates: &[&'a relay::Batch], now: u64, horizon_ms: u64) -> Vec<&'a relay::Batch> {
    if candidates.is_empty() {
        return Vec::new();
    }
    for _ in 0..CAS_RETRIES {
        let (bytes, cas) = match abi::shared_data(KEY_SEEN) {
            Ok(Some(r)) => r,
            Ok(None) => (Vec::new(), 0),
            Err(e) => {
                warn!("wasm-epp: reading the relay senders failed: {e:?}");
                return Vec::new();
            }
        };
        let seen = relay::seen_entries(&bytes);
        let mut last: Vec<(u64, u64)> = Vec::new();
        let mut fresh = Vec::new();
        for b in candidates {
            let h = b.header;
            let prev = match last.iter().find(|(s, _)| *s == h.sender) {
                Some((_, q)) => Some(*q),
                None => relay::last_sequence(&seen, h.sender),
            };
            if prev.is_none_or(|p| h.sequence > p) {
                last.retain(|(s, _)| *s != h.sender);
                last.push((h.sender, h.sequence));
                fresh.push(*b);
            }
        }
        if fresh.is_empty() {
            return fresh;
        }
        match abi::set_shared_data(KEY_SEEN, &relay::seen_update(&seen, &last, now, horizon_ms), cas) {
            Ok(()) => return fresh,
            Err(HostError::CasMismatch) => continue,
            Err(e) => {
                warn!("wasm-epp: recording the relay senders failed: {e:?}");
                return Vec::new();
            }
        }
    }
    warn!("wasm-epp: relay push dropped: the senders table stayed contended for {CAS_RETRIES} retries");
    Vec::new()
}

/// Upserts each batch's in-flight section as a relayed section, with CAS retries (`read` is a
/// read of the table already made).
fn upsert_sections(batches: &[&relay::Batch], read: Option<(Vec<u8>, u32)>, now: u64, ttl: u64) {
    if batches.is_empty() {
        return;
    }
    cas_update(KEY_INFLIGHT, read, "relayed in-flight", |table| {
        let mut out: Option<Vec<u8>> = None;
        for b in batches {
            let current = out.as_deref().unwrap_or(table);
            if let Some(next) = inflight::upsert_relayed(current, b.header.sender, &b.inflight, now, ttl) {
                out = Some(next);
            }
        }
        out
    });
}
