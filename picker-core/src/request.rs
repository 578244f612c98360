//! What the caller knows about one request, and the proxy-side load it passes in.

use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, SocketAddr};

use crate::scan::Prompt;

/// Proxy-side load of one endpoint, counted exactly by the filter across all workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Requests sent to the endpoint and not yet finished.
    pub requests: u32,
    /// Estimated prompt tokens the endpoint still has to prefill: the sum of
    /// [`crate::Decision::uncached_tokens`] of the requests sent to it whose first response
    /// chunk has not arrived (llm-d's in-flight tokens). Callers count them only when
    /// [`crate::Config::reads_inflight_tokens`]; otherwise 0.
    pub tokens: u64,
}

/// One entry of a subset hint (`x-gateway-destination-endpoint-subset`, or the conformance
/// steering header): a bare IP matches every port of that host, `ip:port` matches exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsetEntry {
    /// A bare IP: matches the host on any port.
    Ip(IpAddr),
    /// `ip:port`: matches that endpoint only.
    Addr(SocketAddr),
}

impl SubsetEntry {
    /// Whether the endpoint at `addr` is selected by this entry.
    pub fn matches(&self, addr: &SocketAddr) -> bool {
        match self {
            SubsetEntry::Ip(ip) => addr.ip() == *ip,
            SubsetEntry::Addr(a) => a == addr,
        }
    }
}

/// Why a subset list could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubsetError {
    /// Index of the offending comma-separated item.
    pub item: usize,
}

impl fmt::Display for SubsetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "endpoint subset item {} is not an IP or ip:port", self.item)
    }
}

impl core::error::Error for SubsetError {}

/// Most entries accepted in a subset list.
pub const MAX_SUBSET: usize = 1024;

/// Parses a comma-separated list of `ip`, `ip:port`, `[v6]:port` or bare v6 (as GIE's lwepp
/// accepts). Empty items are skipped; an empty list is valid and selects nothing.
pub fn parse_subset(s: &str) -> Result<Vec<SubsetEntry>, SubsetError> {
    let mut out = Vec::new();
    for (item, raw) in s.split(',').enumerate() {
        let t = raw.trim();
        if t.is_empty() {
            continue;
        }
        if out.len() >= MAX_SUBSET {
            return Err(SubsetError { item });
        }
        let e = if let Ok(a) = t.parse::<SocketAddr>() {
            SubsetEntry::Addr(a)
        } else if let Ok(ip) = t.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            SubsetEntry::Ip(ip)
        } else {
            return Err(SubsetError { item });
        };
        out.push(e);
    }
    Ok(out)
}

/// What the caller knows about one request.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The model the pods must serve (after any rewrite).
    pub model: &'a str,
    /// The body's `cache_salt`, which seeds the prefix hash chain with the model (so tenants
    /// with different salts never share prefix affinity).
    pub cache_salt: Option<&'a str>,
    /// The prompt bytes hashed for prefix affinity.
    pub prompt: Prompt<'a>,
    /// InferenceObjective priority; negative means sheddable (GIE `IsSheddable`).
    pub priority: i32,
    /// Restrict the pick to these endpoints (subset hint); `Some(&[])` selects nothing → 503.
    pub subset: Option<&'a [SubsetEntry]>,
}

impl<'a> Request<'a> {
    /// A request for `model` with this prompt: no salt, priority 0, no subset.
    pub fn new(model: &'a str, prompt: Prompt<'a>) -> Self {
        Request {
            model,
            cache_salt: None,
            prompt,
            priority: 0,
            subset: None,
        }
    }
}
