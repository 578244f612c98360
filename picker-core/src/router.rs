//! The one request pipeline, used by the proxy module and by the simulator alike, so the
//! simulator runs the code the proxy runs:
//!
//! ```text
//! admit (model allow-list: 404) → rewrite (weighted, injected RNG) → priority → hash the prompt
//!   → sync pull (other workers' prefix insertions) → pick → sync push (ours) → what to account
//! ```
//!
//! [`Router`] holds everything one worker keeps between requests (picker config, request
//! policy, prefix index, prefix-sync cursor). The caller supplies the inputs it reads from its
//! world (the request, the pool, in-flight counts, the shared ring, time and randomness) and
//! applies the outputs (headers or a reply, and the in-flight accounting) itself.

use alloc::string::String;

use crate::config::Config;
use crate::decision::{Decision, Outcome, Rejection};
use crate::pick::{pick_hashed, prefix_hashes};
use crate::policy::ModelPolicy;
use crate::prefix::EndpointKey;
use crate::request::{InFlight, Request, SubsetEntry};
use crate::rng::Rng;
use crate::scan::Prompt;
use crate::snapshot::Pool;
use crate::state::State;
use crate::sync::{PrefixSync, SlotStore};
use crate::time::Instant;

/// A request as it arrives, before the policy has looked at it.
#[derive(Clone, Copy, Debug)]
pub struct Inbound<'a> {
    /// The model the client asked for.
    pub model: &'a str,
    /// vLLM's `cache_salt`, if any.
    pub cache_salt: Option<&'a str>,
    /// The prompt bytes used for prefix hashing.
    pub prompt: Prompt<'a>,
    /// The InferenceObjective the request names (`x-gateway-inference-objective`), if any.
    pub objective: Option<&'a str>,
    /// A subset hint (the conformance steering header in test mode), if any.
    pub subset: Option<&'a [SubsetEntry]>,
}

impl<'a> Inbound<'a> {
    /// A request for `model` with `prompt` and nothing else.
    pub fn new(model: &'a str, prompt: Prompt<'a>) -> Self {
        Inbound {
            model,
            cache_salt: None,
            prompt,
            objective: None,
            subset: None,
        }
    }
}

/// What the pipeline decided.
// One value per request, returned and matched at once, never stored: boxing the decision would
// only add an allocation to the request path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Routing {
    /// The model is not served by this pool (HTTP 404).
    ModelNotAllowed,
    /// The pick ran. `target` is the model after any rewrite (the body and the model header
    /// carry it); the decision is a route or a rejection.
    Picked {
        /// The model the request is sent as.
        target: String,
        /// The pick and its reasons.
        decision: Decision,
        /// For a route, what the caller adds to its in-flight counts: the primary endpoint and
        /// the uncached prompt tokens (0 unless the configuration reads tokens). The caller
        /// removes the tokens at the first response chunk and the request when it ends.
        account: Option<(EndpointKey, u64)>,
    },
}

impl Routing {
    /// The pick's rejection, if the pipeline refused with one.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Routing::Picked { decision, .. } => match decision.outcome {
                Outcome::Reject(r) => Some(r),
                Outcome::Route(_) => None,
            },
            Routing::ModelNotAllowed => None,
        }
    }
}

/// One worker's router: its configuration and everything it learns between requests.
#[derive(Debug)]
pub struct Router {
    config: Config,
    policy: ModelPolicy,
    state: State,
    sync: Option<PrefixSync>,
}

impl Router {
    /// A router with a fresh prefix index; `sync` replicates it with other workers.
    pub fn new(config: Config, policy: ModelPolicy, sync: Option<PrefixSync>) -> Router {
        let mut state = State::new(&config);
        if sync.is_some() {
            state.enable_outbox();
        }
        Router {
            config,
            policy,
            state,
            sync,
        }
    }

    /// The picker configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The request policy.
    pub fn policy(&self) -> &ModelPolicy {
        &self.policy
    }

    /// The picker state (the prefix index), e.g. to drop endpoints that left the pool.
    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// Admits or refuses the model, and draws its rewrite: the first two steps, for a caller
    /// that must act between them and the pick (e.g. answer without a pool).
    pub fn admit(&self, model: &str, rng: &mut impl Rng) -> Option<String> {
        self.policy.admits(model).then(|| self.policy.rewrite(model, rng))
    }

    /// The whole pipeline for one request. `inflight` is indexed like `pool.endpoints()`;
    /// `store` is the shared ring of prefix insertions (ignored without sync).
    #[allow(clippy::too_many_arguments)]
    pub fn route(
        &mut self,
        req: &Inbound<'_>,
        pool: &Pool,
        inflight: &[InFlight],
        store: &mut impl SlotStore,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Routing {
        let Some(target) = self.admit(req.model, rng) else {
            return Routing::ModelNotAllowed;
        };
        self.pick_for(req, target, pool, inflight, store, now, rng)
    }

    /// The pipeline after admission and rewrite (see [`Router::admit`]).
    #[allow(clippy::too_many_arguments)]
    pub fn pick_for(
        &mut self,
        req: &Inbound<'_>,
        target: String,
        pool: &Pool,
        inflight: &[InFlight],
        store: &mut impl SlotStore,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Routing {
        let mut request = Request::new(&target, req.prompt);
        request.cache_salt = req.cache_salt;
        request.priority = self.policy.priority(req.objective, &target);
        request.subset = req.subset;
        let hashes = prefix_hashes(&self.config, &request, pool);
        if let Some(sync) = self.sync.as_mut() {
            sync.pull(store, &mut self.state, &self.config);
        }
        let decision = pick_hashed(
            &self.config,
            &request,
            hashes,
            pool,
            inflight,
            &mut self.state,
            now,
            rng,
        );
        if let Some(sync) = self.sync.as_mut() {
            sync.push(store, &mut self.state);
        }
        let account = decision.primary().map(|p| {
            let tokens = if self.config.reads_inflight_tokens() {
                decision.uncached_tokens
            } else {
                0
            };
            (pool.key(p), tokens)
        });
        Routing::Picked {
            target,
            decision,
            account,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32-unknown-unknown the same tests run under wasm-bindgen-test (Node).
    use crate::config::Profile;
    use crate::policy::Rewrite;
    use crate::rng::SplitMix64;
    use crate::snapshot::{Endpoint, Snapshot};
    use crate::sync::{MemSlots, SyncParams};
    use alloc::collections::BTreeMap;
    use alloc::vec;
    use alloc::vec::Vec;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: Instant = Instant::from_millis(10_000);

    fn pool() -> Pool {
        let endpoints = (1..=4u8)
            .map(|n| Endpoint::new(([10, 0, 0, n], 8000).into(), NOW))
            .collect();
        Pool::new(Snapshot {
            sequence: 1,
            generated_at: NOW,
            endpoints,
        })
    }

    fn policy() -> ModelPolicy {
        let mut objectives = BTreeMap::new();
        objectives.insert(String::from("batch"), -1);
        ModelPolicy::try_new(
            vec!["m".into(), "alias".into()],
            BTreeMap::new(),
            vec![Rewrite {
                model: "alias".into(),
                targets: vec![("m".into(), 1)],
            }],
            objectives,
        )
        .unwrap()
    }

    #[test]
    fn the_pipeline_admits_rewrites_picks_and_says_what_to_account() {
        let mut r = Router::new(Config::profile(Profile::GieDefault), policy(), None);
        let p = pool();
        let mut rng = SplitMix64::new(1);
        let prompt = [b'p'; 512];
        let mut ring = MemSlots::default();
        let refused = r.route(
            &Inbound::new("other", Prompt::from_bytes(&prompt)),
            &p,
            &[],
            &mut ring,
            NOW,
            &mut rng,
        );
        assert_eq!(refused, Routing::ModelNotAllowed);
        let Routing::Picked {
            target,
            decision,
            account,
        } = r.route(
            &Inbound::new("alias", Prompt::from_bytes(&prompt)),
            &p,
            &[],
            &mut ring,
            NOW,
            &mut rng,
        )
        else {
            panic!("picked")
        };
        assert_eq!(target, "m", "rewritten");
        let primary = decision.primary().unwrap();
        assert_eq!(account, Some((p.key(primary), 0)), "gie-default reads no token counts");
    }

    #[test]
    fn priority_comes_from_the_objective() {
        let mut r = Router::new(Config::profile(Profile::GieDefault), policy(), None);
        let mut saturated = pool();
        let eps: Vec<Endpoint> = saturated
            .endpoints()
            .iter()
            .cloned()
            .map(|mut e| {
                e.waiting = 50;
                e
            })
            .collect();
        saturated = Pool::new(Snapshot {
            sequence: 2,
            generated_at: NOW,
            endpoints: eps,
        });
        let mut req = Inbound::new("m", Prompt::default());
        req.objective = Some("batch");
        let routing = r.route(
            &req,
            &saturated,
            &[],
            &mut MemSlots::default(),
            NOW,
            &mut SplitMix64::new(2),
        );
        assert!(
            matches!(routing.rejection(), Some(Rejection::Shed { .. })),
            "{routing:?}"
        );
    }

    #[test]
    fn llmd_profile_accounts_uncached_tokens() {
        let mut r = Router::new(Config::profile(Profile::LlmdOptimizedBaseline), policy(), None);
        let p = pool();
        let prompt = [b'q'; 1024]; // 256 tokens, 4 blocks of 64
        let routing = r.route(
            &Inbound::new("m", Prompt::from_bytes(&prompt)),
            &p,
            &[],
            &mut MemSlots::default(),
            NOW,
            &mut SplitMix64::new(3),
        );
        let Routing::Picked { account, .. } = routing else {
            panic!()
        };
        assert_eq!(account.map(|a| a.1), Some(256));
    }

    #[test]
    fn two_workers_share_prefixes_through_the_ring() {
        let params = SyncParams::default();
        let cfg = Config::profile(Profile::GieDefault);
        let mut a = Router::new(cfg.clone(), ModelPolicy::default(), Some(PrefixSync::new(1, params)));
        let mut b = Router::new(cfg, ModelPolicy::default(), Some(PrefixSync::new(2, params)));
        let mut ring = MemSlots::default();
        PrefixSync::init_store(&mut ring);
        let p = pool();
        let prompt = [b's'; 2048];
        let req = Inbound::new("m", Prompt::from_bytes(&prompt));
        let Routing::Picked { decision: first, .. } = a.route(&req, &p, &[], &mut ring, NOW, &mut SplitMix64::new(4))
        else {
            panic!()
        };
        let Routing::Picked { decision: second, .. } = b.route(&req, &p, &[], &mut ring, NOW, &mut SplitMix64::new(5))
        else {
            panic!()
        };
        assert_eq!(
            second.best_prefix_match,
            second.hashes.len() as u32,
            "b sees a's insertion"
        );
        assert_eq!(second.primary(), first.primary());
    }
}
