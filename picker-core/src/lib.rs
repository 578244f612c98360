//! # picker-core: the scheduling brain of wasm-epp
//!
//! Everything wasm-epp decides is decided here, as pure functions over plain data; the proxy-wasm
//! filter only translates hostcalls into these calls and back. The crate is
//! `#![no_std]` + `alloc`, sans-IO, reads no clock and owns no RNG: time (`now`) and randomness
//! (`&mut impl Rng`) are parameters, so every decision is reproducible from its inputs.
//!
//! ## Pipeline
//!
//! ```text
//! body bytes ──scan::scan──▶ model, stream, cache_salt, prompt bytes (borrowed, one pass)
//! snapshot bytes ──Snapshot::decode──▶ Snapshot ──Pool::new──▶ Pool (keys precomputed)
//! pick::pick(&Config, &Request, &Pool, &[InFlight], &mut State, now, &mut rng) ──▶ Decision
//!        hashes the prompt (GIE xxh64 block chain), matches the prefix index, admits or sheds,
//!        filters, scores, picks; records the pick in the prefix index; says why.
//! ```
//!
//! ## Modules
//!
//! | module | what |
//! |---|---|
//! | [`scan`](mod@scan) | one-pass validating JSON scanner for `/v1/completions`, `/v1/chat/completions`, `/v1/responses`, `/v1/embeddings` |
//! | [`prefix`] | GIE-compatible prefix block hashing and the bounded prefix index (per-endpoint LRU) |
//! | [`snapshot`] | the load snapshot, its versioned binary codec, and [`Pool`] |
//! | [`config`] | DTO → validated [`Config`]; profiles `gie-default`, `llm-d-optimized-baseline`, `wasm-epp-default` |
//! | [`pick`](mod@pick) | candidates, admission, filters, scorers, max-score picker, [`Decision`] |
//! | [`chash`] | bounded-load rendezvous hashing on the prompt prefix |
//! | [`sync`] | replicating the prefix index between proxy workers through a shared-data ring |
//! | [`rng`], [`time`] | the injected randomness and time types |
//!
//! ## Contracts
//!
//! * No public function panics on any input. Parsers of untrusted bytes ([`scan::scan`],
//!   [`Snapshot::decode`], [`request::parse_subset`], [`Config::from_json`]) return typed errors and
//!   are property-tested over arbitrary bytes.
//! * Memory is bounded: the scanner allocates only the model and salt (≤ 256 bytes each); the
//!   prefix index holds at most `prefix.maxIndexEntries` entries of at most
//!   [`PrefixIndex::ENTRY_BYTES`] bytes when capped (our profile), and each pod's LRU capacity
//!   otherwise (the baselines, as GIE and llm-d); a snapshot holds at most 1,024 endpoints.
//! * `pick` returns endpoints only from the candidate set (ready, serving the model, inside the
//!   subset), scores in [0, 1], and the same decision for the same inputs and RNG seed.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod chash;
pub mod config;
pub mod decision;
pub mod pick;
pub mod policy;
pub mod prefix;
pub mod request;
pub mod rng;
pub mod router;
pub mod scan;
pub mod snapshot;
pub mod state;
pub mod sync;
pub mod time;
pub mod xxh;

pub use config::{Config, ConfigError, Profile};
pub use decision::{Decision, Outcome, Rejection};
pub use pick::{pick, pick_hashed, prefix_hashes};
pub use policy::ModelPolicy;
pub use prefix::PrefixIndex;
pub use request::{InFlight, Request};
pub use rng::{Rng, SplitMix64};
pub use router::{Inbound, Router, Routing};
pub use scan::{scan, Api, Prompt, ScanError, Scanned};
pub use snapshot::{Endpoint, Pool, Snapshot};
pub use state::State;
pub use time::{Duration, Instant};
