//! The load snapshot: what the collector observed of every model-server pod, and its compact
//! versioned binary codec.
//!
//! The collector encodes a [`Snapshot`] and pushes it to the gateway; the filter decodes it
//! once per change (never per request) and hands it to the picker. The decoder validates every
//! field before anything is returned, so a corrupt or hostile push is rejected whole and can
//! never replace a good snapshot. It never panics on any input (property-tested).
//!
//! # Wire format, version 1 (all integers little-endian)
//!
//! ```text
//! header   magic "WEPS" | version u8 = 1 | flags u8 = 0 | name_count u16 | endpoint_count u16
//!          | reserved u16 = 0 | sequence u64 | generated_at_ms u64                  (28 bytes)
//! names    name_count × ( len u16 (1..=256) | UTF-8 bytes )        model / adapter names, unique
//! endpoint family u8 (4 | 6) | ip (4 | 16 bytes) | port u16 (≠ 0)
//!          | flags u8 (bit0 ready, bit1 lora, bit2 block_size, bit3 gpu_blocks; others 0)
//!          | waiting u32 | running u32 | kv_usage f32 (finite, 0..=1)
//!          | [block_size u32 > 0] | [gpu_blocks u32 > 0]
//!          | [lora: max u16 | n_running u8 | n × name u16 | n_waiting u8 | n × name u16]
//!          | n_models u8 | n × name u16 | scraped_at_ms u64
//! trailer  xxh64(every preceding byte, seed 0) u64
//! ```
//!
//! Names are indices into the name table, so a model served by 256 pods is sent once.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use xxhash_rust::xxh64::xxh64;

use hashbrown::HashMap;

use crate::prefix::{BuildIdentity, EndpointKey, ENDPOINT_KEY_SEED};
use crate::time::Instant;

/// The first four bytes of an encoded snapshot.
pub const MAGIC: [u8; 4] = *b"WEPS";
/// The wire-format version this build encodes and decodes.
pub const VERSION: u8 = 1;
/// Most endpoints one snapshot may carry (an InferencePool is one Deployment; 1,024 is far
/// beyond any pool we know of, and bounds decode work and memory).
pub const MAX_ENDPOINTS: usize = 1024;
/// Most distinct names (models and adapters) in one snapshot.
pub const MAX_NAMES: usize = 4096;
/// Longest name, matching the scanner's bound on `model`.
pub const MAX_NAME_LEN: usize = crate::scan::MAX_NAME_LEN;
/// Most names in one per-endpoint list (served models, running or waiting adapters).
pub const MAX_LIST: usize = 255;

/// LoRA adapter state of a pod (vLLM `vllm:lora_requests_info`, newest series; see
/// `docs/engines.md`, "LoRA adapters").
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoraState {
    /// Adapters loaded and serving requests (`running_lora_adapters`).
    pub running: Vec<String>,
    /// Adapters requested but waiting to be loaded (`waiting_lora_adapters`).
    pub waiting: Vec<String>,
    /// `max_lora`: adapters the pod can hold at once.
    pub max: u16,
}

/// One model-server endpoint (`ip:port`) as last scraped.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The pod's `ip:port` (port ≠ 0), unique within a snapshot.
    pub addr: SocketAddr,
    /// Whether the collector considers the pod ready (its readiness and recent scrapes).
    pub ready: bool,
    /// Requests waiting in the engine's queue (`vllm:num_requests_waiting`).
    pub waiting: u32,
    /// Requests running (`vllm:num_requests_running`).
    pub running: u32,
    /// KV-cache utilisation as a fraction in [0, 1] (`vllm:kv_cache_usage_perc`).
    pub kv_usage: f32,
    /// KV block size in tokens (`vllm:cache_config_info{block_size}`), if reported.
    pub block_size: Option<u32>,
    /// KV blocks on the GPU (`vllm:cache_config_info{num_gpu_blocks}`), if reported.
    pub gpu_blocks: Option<u32>,
    /// LoRA adapter state, if the engine reports it.
    pub lora: Option<LoraState>,
    /// Model names the pod serves (base model and adapters). Empty means unknown: serve any.
    pub models: Vec<String>,
    /// When the collector last scraped the pod successfully (ms since the Unix epoch, the
    /// collector's clock); older than the staleness threshold means stale.
    pub scraped_at: Instant,
}

impl Endpoint {
    /// A ready endpoint with no load, no models listed and the given scrape time.
    pub fn new(addr: SocketAddr, scraped_at: Instant) -> Self {
        Endpoint {
            addr,
            ready: true,
            waiting: 0,
            running: 0,
            kv_usage: 0.0,
            block_size: None,
            gpu_blocks: None,
            lora: None,
            models: Vec::new(),
            scraped_at,
        }
    }

    /// The endpoint's stable key (see [`endpoint_key`]); [`Pool`] caches it.
    pub fn key(&self) -> EndpointKey {
        endpoint_key(&self.addr)
    }

    /// Whether the pod serves `model`: it is listed, or the pod lists no models.
    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// Stable endpoint identity: xxh64 (seed [`ENDPOINT_KEY_SEED`]) of the address in binary form
/// (`4 | octets | port-le` or `6 | octets | port-le`). Every worker and replica computes the same
/// key for the same `ip:port`, which is what consistent hashing and the shared in-flight counts
/// need.
pub fn endpoint_key(addr: &SocketAddr) -> EndpointKey {
    let mut buf = [0u8; 19];
    let n = match addr.ip() {
        IpAddr::V4(ip) => {
            buf[0] = 4;
            buf[1..5].copy_from_slice(&ip.octets());
            5
        }
        IpAddr::V6(ip) => {
            buf[0] = 6;
            buf[1..17].copy_from_slice(&ip.octets());
            17
        }
    };
    buf[n..n + 2].copy_from_slice(&addr.port().to_le_bytes());
    xxh64(&buf[..n + 2], ENDPOINT_KEY_SEED)
}

/// Everything the picker knows about the pool at one moment.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Monotonic per collector; an older sequence never replaces a newer one.
    pub sequence: u64,
    /// When the collector built the snapshot (ms since the Unix epoch); the picker degrades
    /// when it is older than `degradeAfterMs`.
    pub generated_at: Instant,
    /// Every pod of the pool (at most [`MAX_ENDPOINTS`], addresses unique).
    pub endpoints: Vec<Endpoint>,
}

/// A snapshot prepared for picking: built once per snapshot change, off the request path, with
/// each endpoint's key precomputed so no request hashes an address.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pool {
    snapshot: Snapshot,
    keys: Vec<EndpointKey>,
    by_key: HashMap<EndpointKey, u32, BuildIdentity>,
}

impl Pool {
    /// Prepares `snapshot`: computes every endpoint's key and the key → index map.
    pub fn new(snapshot: Snapshot) -> Self {
        let keys: Vec<EndpointKey> = snapshot.endpoints.iter().map(Endpoint::key).collect();
        let by_key = keys.iter().enumerate().map(|(i, k)| (*k, i as u32)).collect();
        Pool { snapshot, keys, by_key }
    }

    /// The snapshot the pool was built from.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The endpoints, in snapshot order (the indices every [`crate::Decision`] uses).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.snapshot.endpoints
    }

    /// Key of endpoint `i` (0 if out of range; callers index from `endpoints()`).
    pub fn key(&self, i: usize) -> EndpointKey {
        self.keys.get(i).copied().unwrap_or(0)
    }

    /// Every endpoint's key, indexed like [`Pool::endpoints`].
    pub fn keys(&self) -> &[EndpointKey] {
        &self.keys
    }

    /// Index of the endpoint with this key.
    pub fn index_of(&self, key: EndpointKey) -> Option<usize> {
        self.by_key.get(&key).map(|&i| i as usize)
    }

    /// Index of the endpoint with this address.
    pub fn position(&self, addr: &SocketAddr) -> Option<usize> {
        self.snapshot.endpoints.iter().position(|e| e.addr == *addr)
    }

    /// Gives the snapshot back.
    pub fn into_snapshot(self) -> Snapshot {
        self.snapshot
    }
}

/// Why bytes were not accepted as a snapshot. Offsets are byte positions in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ends inside a field.
    Truncated {
        /// Where the missing bytes should have started.
        offset: usize,
    },
    /// The input does not start with [`MAGIC`].
    BadMagic,
    /// The version byte is not [`VERSION`] (the value found).
    UnsupportedVersion(u8),
    /// The trailing xxh64 does not match the bytes before it.
    Checksum,
    /// A field holds a value the format forbids.
    Invalid {
        /// Position of the field.
        offset: usize,
        /// Which rule it breaks.
        what: &'static str,
    },
    /// A count exceeds its bound ([`MAX_NAMES`], [`MAX_ENDPOINTS`]).
    TooMany {
        /// What there are too many of.
        what: &'static str,
    },
    /// Bytes remain after the last endpoint, before the checksum.
    TrailingBytes {
        /// Position of the first extra byte.
        offset: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { offset } => write!(f, "snapshot truncated at byte {offset}"),
            DecodeError::BadMagic => f.write_str("not a wasm-epp snapshot (bad magic)"),
            DecodeError::UnsupportedVersion(v) => {
                write!(f, "unsupported snapshot version {v} (this build reads {VERSION})")
            }
            DecodeError::Checksum => f.write_str("snapshot checksum mismatch"),
            DecodeError::Invalid { offset, what } => {
                write!(f, "invalid snapshot at byte {offset}: {what}")
            }
            DecodeError::TooMany { what } => write!(f, "snapshot has too many {what}"),
            DecodeError::TrailingBytes { offset } => {
                write!(f, "unexpected bytes after the snapshot at byte {offset}")
            }
        }
    }
}

impl core::error::Error for DecodeError {}

/// Why a snapshot could not be encoded (it would not decode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// More than [`MAX_ENDPOINTS`] endpoints.
    TooManyEndpoints,
    /// More than [`MAX_NAMES`] distinct model and adapter names.
    TooManyNames,
    /// A per-endpoint name list longer than [`MAX_LIST`].
    ListTooLong,
    /// A name that is empty or longer than [`MAX_NAME_LEN`] bytes.
    BadName,
    /// A field the decoder would reject (port 0, `kv_usage` outside [0, 1], a zero block count).
    BadField(&'static str),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooManyEndpoints => write!(f, "more than {MAX_ENDPOINTS} endpoints"),
            EncodeError::TooManyNames => write!(f, "more than {MAX_NAMES} distinct names"),
            EncodeError::ListTooLong => write!(f, "a name list is longer than {MAX_LIST}"),
            EncodeError::BadName => {
                write!(f, "a name is empty or longer than {MAX_NAME_LEN} bytes")
            }
            EncodeError::BadField(what) => write!(f, "invalid field: {what}"),
        }
    }
}

impl core::error::Error for EncodeError {}

const FLAG_READY: u8 = 1;
const FLAG_LORA: u8 = 2;
const FLAG_BLOCK: u8 = 4;
const FLAG_GPU_BLOCKS: u8 = 8;

// === encode ===

impl Snapshot {
    /// Encodes to the v1 wire format. Fails on values the decoder would reject.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(EncodeError::TooManyEndpoints);
        }
        let mut names: BTreeMap<&str, u16> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        for ep in &self.endpoints {
            let lists = ep
                .models
                .iter()
                .chain(ep.lora.iter().flat_map(|l| l.running.iter().chain(l.waiting.iter())));
            for name in lists {
                if name.is_empty() || name.len() > MAX_NAME_LEN {
                    return Err(EncodeError::BadName);
                }
                if !names.contains_key(name.as_str()) {
                    if order.len() >= MAX_NAMES {
                        return Err(EncodeError::TooManyNames);
                    }
                    names.insert(name.as_str(), order.len() as u16);
                    order.push(name.as_str());
                }
            }
        }

        let mut out = Vec::with_capacity(64 + self.endpoints.len() * 48);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(0);
        out.extend_from_slice(&(order.len() as u16).to_le_bytes());
        out.extend_from_slice(&(self.endpoints.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.generated_at.as_millis().to_le_bytes());
        for name in &order {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        let put_list = |out: &mut Vec<u8>, list: &[String]| -> Result<(), EncodeError> {
            if list.len() > MAX_LIST {
                return Err(EncodeError::ListTooLong);
            }
            out.push(list.len() as u8);
            for n in list {
                // Every name was interned above.
                let idx = names.get(n.as_str()).copied().ok_or(EncodeError::BadName)?;
                out.extend_from_slice(&idx.to_le_bytes());
            }
            Ok(())
        };
        for ep in &self.endpoints {
            match ep.addr.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            if ep.addr.port() == 0 {
                return Err(EncodeError::BadField("port 0"));
            }
            out.extend_from_slice(&ep.addr.port().to_le_bytes());
            let mut flags = 0;
            if ep.ready {
                flags |= FLAG_READY;
            }
            if ep.lora.is_some() {
                flags |= FLAG_LORA;
            }
            if ep.block_size.is_some() {
                flags |= FLAG_BLOCK;
            }
            if ep.gpu_blocks.is_some() {
                flags |= FLAG_GPU_BLOCKS;
            }
            out.push(flags);
            out.extend_from_slice(&ep.waiting.to_le_bytes());
            out.extend_from_slice(&ep.running.to_le_bytes());
            if !(ep.kv_usage.is_finite() && (0.0..=1.0).contains(&ep.kv_usage)) {
                return Err(EncodeError::BadField("kv_usage outside [0, 1]"));
            }
            out.extend_from_slice(&ep.kv_usage.to_le_bytes());
            for v in [ep.block_size, ep.gpu_blocks].into_iter().flatten() {
                if v == 0 {
                    return Err(EncodeError::BadField("block_size or gpu_blocks is 0"));
                }
                out.extend_from_slice(&v.to_le_bytes());
            }
            if let Some(l) = &ep.lora {
                out.extend_from_slice(&l.max.to_le_bytes());
                put_list(&mut out, &l.running)?;
                put_list(&mut out, &l.waiting)?;
            }
            put_list(&mut out, &ep.models)?;
            out.extend_from_slice(&ep.scraped_at.as_millis().to_le_bytes());
        }
        let sum = xxh64(&out, 0);
        out.extend_from_slice(&sum.to_le_bytes());
        Ok(out)
    }

    /// Decodes and validates v1 bytes; see the module docs for every rule enforced.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
        if bytes.len() < 4 {
            return Err(DecodeError::Truncated { offset: bytes.len() });
        }
        if bytes[..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if bytes.len() < 5 {
            return Err(DecodeError::Truncated { offset: 4 });
        }
        if bytes[4] != VERSION {
            return Err(DecodeError::UnsupportedVersion(bytes[4]));
        }
        if bytes.len() < 28 + 8 {
            return Err(DecodeError::Truncated { offset: bytes.len() });
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 8);
        let mut t = [0u8; 8];
        t.copy_from_slice(trailer);
        if xxh64(body, 0) != u64::from_le_bytes(t) {
            return Err(DecodeError::Checksum);
        }

        let mut r = Reader { b: body, i: 5 };
        if r.u8()? != 0 {
            return Err(r.invalid(1, "reserved header flags set"));
        }
        let name_count = r.u16()? as usize;
        let ep_count = r.u16()? as usize;
        if r.u16()? != 0 {
            return Err(r.invalid(2, "reserved header field set"));
        }
        if name_count > MAX_NAMES {
            return Err(DecodeError::TooMany { what: "names" });
        }
        if ep_count > MAX_ENDPOINTS {
            return Err(DecodeError::TooMany { what: "endpoints" });
        }
        let sequence = r.u64()?;
        let generated_at = Instant::from_millis(r.u64()?);

        let mut names: Vec<String> = Vec::with_capacity(name_count.min(body.len() / 3));
        for _ in 0..name_count {
            let len = r.u16()? as usize;
            if len == 0 || len > MAX_NAME_LEN {
                return Err(r.invalid(2, "name length outside 1..=256"));
            }
            let raw = r.take(len)?;
            let s = core::str::from_utf8(raw).map_err(|_| r.invalid(len, "name is not UTF-8"))?;
            if names.iter().any(|n| n == s) {
                return Err(r.invalid(len, "duplicate name"));
            }
            names.push(String::from(s));
        }

        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(ep_count.min(body.len() / 32));
        for _ in 0..ep_count {
            let e = decode_endpoint(&mut r, &names, &endpoints)?;
            endpoints.push(e);
        }
        if r.i != body.len() {
            return Err(DecodeError::TrailingBytes { offset: r.i });
        }
        Ok(Snapshot {
            sequence,
            generated_at,
            endpoints,
        })
    }

    /// Reads only the sequence number of encoded bytes (after checking magic and version), so a
    /// stale push can be refused before the full decode.
    pub fn peek_sequence(bytes: &[u8]) -> Option<u64> {
        if bytes.len() < 20 || bytes[..4] != MAGIC || bytes[4] != VERSION {
            return None;
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&bytes[12..20]);
        Some(u64::from_le_bytes(s))
    }
}

// === impl Reader ===

/// One endpoint record of the body (see the module docs for the layout); `seen` are the
/// endpoints decoded before it (an address may appear once).
fn decode_endpoint(r: &mut Reader<'_>, names: &[String], seen: &[Endpoint]) -> Result<Endpoint, DecodeError> {
    let ip = match r.u8()? {
        4 => {
            let mut o = [0u8; 4];
            o.copy_from_slice(r.take(4)?);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(r.take(16)?);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(r.invalid(1, "address family is not 4 or 6")),
    };
    let port = r.u16()?;
    if port == 0 {
        return Err(r.invalid(2, "port 0"));
    }
    let addr = SocketAddr::new(ip, port);
    if seen.iter().any(|e| e.addr == addr) {
        return Err(r.invalid(2, "duplicate endpoint"));
    }
    let flags = r.u8()?;
    if flags & !(FLAG_READY | FLAG_LORA | FLAG_BLOCK | FLAG_GPU_BLOCKS) != 0 {
        return Err(r.invalid(1, "unknown endpoint flags"));
    }
    let waiting = r.u32()?;
    let running = r.u32()?;
    let kv_usage = f32::from_le_bytes(r.array::<4>()?);
    if !(kv_usage.is_finite() && (0.0..=1.0).contains(&kv_usage)) {
        return Err(r.invalid(4, "kv_usage outside [0, 1]"));
    }
    let positive = |present: bool, r: &mut Reader<'_>| -> Result<Option<u32>, DecodeError> {
        if !present {
            return Ok(None);
        }
        match r.u32()? {
            0 => Err(r.invalid(4, "block_size or gpu_blocks is 0")),
            v => Ok(Some(v)),
        }
    };
    let block_size = positive(flags & FLAG_BLOCK != 0, r)?;
    let gpu_blocks = positive(flags & FLAG_GPU_BLOCKS != 0, r)?;
    let lora = if flags & FLAG_LORA != 0 {
        let max = r.u16()?;
        let running = r.names(names)?;
        let waiting = r.names(names)?;
        Some(LoraState { running, waiting, max })
    } else {
        None
    };
    let models = r.names(names)?;
    let scraped_at = Instant::from_millis(r.u64()?);
    Ok(Endpoint {
        addr,
        ready: flags & FLAG_READY != 0,
        waiting,
        running,
        kv_usage,
        block_size,
        gpu_blocks,
        lora,
        models,
        scraped_at,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.i.checked_add(n).ok_or(DecodeError::Truncated { offset: self.i })?;
        let s = self
            .b
            .get(self.i..end)
            .ok_or(DecodeError::Truncated { offset: self.i })?;
        self.i = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// An error about the field of `width` bytes just read.
    fn invalid(&self, width: usize, what: &'static str) -> DecodeError {
        DecodeError::Invalid {
            offset: self.i.saturating_sub(width),
            what,
        }
    }

    fn names(&mut self, table: &[String]) -> Result<Vec<String>, DecodeError> {
        let n = self.u8()? as usize;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let idx = self.u16()? as usize;
            let name = table
                .get(idx)
                .ok_or_else(|| self.invalid(2, "name index out of range"))?;
            out.push(name.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
