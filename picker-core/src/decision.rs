//! The picker's answer and every reason for it.

use alloc::vec::Vec;
use core::fmt;

use crate::config::{ScorerKind, MAX_SCORERS};
use crate::prefix::PrefixHashes;

/// Why the picker refused to route.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rejection {
    /// No ready endpoint serves the model (or the snapshot is empty).
    NoEndpoints,
    /// A subset was given and no eligible endpoint is in it.
    SubsetEmpty,
    /// Sheddable request while the pool is saturated.
    Shed {
        /// The pool saturation that triggered the drop (≥ 1.0).
        saturation: f64,
    },
}

impl Rejection {
    /// The HTTP status the proxy should answer with: 503 for no endpoint or an empty subset,
    /// 429 for a shed request, as the Endpoint Picker protocol and GIE's admission code use them
    /// (`docs/epp.md`, "Destination endpoint" and "Saturation detector and shedding").
    pub fn http_status(&self) -> u16 {
        match self {
            Rejection::NoEndpoints | Rejection::SubsetEmpty => 503,
            Rejection::Shed { .. } => 429,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoEndpoints => f.write_str("no ready endpoint serves the requested model"),
            Rejection::SubsetEmpty => f.write_str("no eligible endpoint in the requested subset"),
            Rejection::Shed { saturation } => {
                write!(f, "pool saturated ({saturation:.2}), sheddable request dropped")
            }
        }
    }
}

/// Why an endpoint of the snapshot was not a candidate, or was filtered out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The collector reports the endpoint not ready.
    NotReady,
    /// The endpoint lists the models it serves and the request's model is not among them.
    ModelNotServed,
    /// A subset hint was given and the endpoint is not in it.
    NotInSubset,
    /// Removed by the utilization filter (stale metrics, queue or KV over threshold).
    Saturated,
    /// Removed by the prefix-affinity filter (not sticky).
    NotSticky,
}

/// What the prefix-cache-affinity filter saw and did (llm-d's reasons, for logs and `explain`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffinityGate {
    /// Candidates whose prefix score reached the threshold.
    pub sticky: u32,
    /// The exploration draw skipped the filter.
    pub explored: bool,
    /// Best (lowest) estimated TTFT in ms of the sticky and of the non-sticky candidates, when
    /// both kinds exist (TTFT = in-flight tokens / peak prefill throughput × 1000).
    pub ttft_ms: Option<(f64, f64)>,
    /// The filter kept every candidate: no sticky pod, exploration, or the TTFT gate opened
    /// (the sticky pods' lead exceeded `maxTTFTPenaltyMs`).
    pub kept_all: bool,
}

/// How the decision was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The configured profile over a fresh snapshot.
    Normal,
    /// The snapshot is older than `degradeAfterMs`: consistent hashing + in-flight counts only.
    Degraded,
}

/// One scored candidate. `scores[i]` belongs to `Decision::scorers[i]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// Index into `snapshot.endpoints`.
    pub index: usize,
    /// Each scorer's score in [0, 1] (after clamping; non-finite scores count 0); slots past
    /// `Decision::scorers.len()` are 0.
    pub scores: [f32; MAX_SCORERS],
    /// `Σ weight × score` over the scorers, not normalised by the total weight.
    pub total: f64,
}

/// What the picker decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Ordered endpoints (indices into `snapshot.endpoints`): the first is the pick, the rest
    /// the fallback list.
    Route(Vec<usize>),
    /// No endpoint: the proxy answers locally with [`Rejection::http_status`].
    Reject(Rejection),
}

/// The pick and every reason for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Route (ordered endpoints) or reject (why).
    pub outcome: Outcome,
    /// Whether the configured profile ran or the stale-snapshot fallback did.
    pub mode: Mode,
    /// Pool saturation over the candidates (GIE utilization detector): the mean over candidates
    /// of max(waiting / queue threshold, KV / KV threshold), stale pods counting 1.0, no
    /// candidate 1.0; ≥ 1.0 means saturated. Not bounded above.
    pub saturation: f64,
    /// The scorers that produced `Scored::scores`, in order, with weights.
    pub scorers: Vec<(ScorerKind, f64)>,
    /// Candidates that reached scoring, in snapshot order.
    pub scored: Vec<Scored>,
    /// Endpoints dropped before scoring and why.
    pub drops: Vec<(usize, DropReason)>,
    /// The request's prefix block hashes (for recording the served endpoint later).
    pub hashes: PrefixHashes,
    /// Best prefix match among candidates, in blocks.
    pub best_prefix_match: u32,
    /// The affinity filter's verdict, when the profile has that filter and it ran.
    pub affinity: Option<AffinityGate>,
    /// Prompt tokens the primary endpoint must still prefill (its uncached tokens, as llm-d's
    /// in-flight producer counts them; [`PrefixHashes::uncached_tokens`]); 0 when rejected. A
    /// caller that keeps in-flight token counts adds this at dispatch and removes it at the
    /// first streamed response chunk, as llm-d does: the counters then measure pending
    /// prefill, which the token-load scorer and the affinity filter's TTFT gate read.
    pub uncached_tokens: u64,
}

impl Decision {
    /// The chosen endpoint (first of the list), if routed.
    pub fn primary(&self) -> Option<usize> {
        match &self.outcome {
            Outcome::Route(v) => v.first().copied(),
            Outcome::Reject(_) => None,
        }
    }
}
