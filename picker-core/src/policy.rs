//! The pool's request policy, decided before the pick: which models it serves (others get 404),
//! weighted model rewrites (GIE `InferenceModelRewrite`), and request priority from the
//! InferenceObjective the request names or from its model (negative: sheddable).
//!
//! Pure functions of (policy, request, rng): the filter and podsim call the same code through
//! [`crate::router::Router`].

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::rng::Rng;
use crate::scan::is_field_value;
use crate::scan::MAX_NAME_LEN;

/// Most targets one rewrite may split over.
pub const MAX_REWRITE_TARGETS: usize = 16;
/// Largest weight of one rewrite target (GIE's bound on `InferenceModelRewrite` weights).
pub const MAX_REWRITE_WEIGHT: u32 = 1_000_000;

/// A weighted model rewrite: requests for `model` go to one of `targets`, chosen with
/// probability weight / Σ weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// The model name requests arrive with.
    pub model: String,
    /// `(target model, weight)`, in the order the draw walks them.
    pub targets: Vec<(String, u32)>,
}

/// Why a policy could not be built; names the offending field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The configuration field, as users write it.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl core::error::Error for PolicyError {}

/// The validated request policy of one pool. The default serves every model, rewrites none and
/// gives every request priority 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelPolicy {
    allow: Vec<String>,
    priorities: BTreeMap<String, i32>,
    rewrites: Vec<Rewrite>,
    objectives: BTreeMap<String, i32>,
}

impl ModelPolicy {
    /// Validates a policy: rewrites need 1..=16 targets with weights ≤ 1,000,000, and every
    /// target model is written into a header, so it must be a valid field value of at most
    /// [`MAX_NAME_LEN`] bytes.
    pub fn try_new(
        allow: Vec<String>,
        priorities: BTreeMap<String, i32>,
        rewrites: Vec<Rewrite>,
        objectives: BTreeMap<String, i32>,
    ) -> Result<ModelPolicy, PolicyError> {
        let err = |field, reason: String| PolicyError { field, reason };
        for r in &rewrites {
            if r.targets.is_empty() || r.targets.len() > MAX_REWRITE_TARGETS {
                return Err(err(
                    "models.rewrites[].targets",
                    format!("need 1..={MAX_REWRITE_TARGETS} targets"),
                ));
            }
            for (model, weight) in &r.targets {
                if *weight > MAX_REWRITE_WEIGHT {
                    return Err(err(
                        "models.rewrites[].targets[].weight",
                        format!("{weight} is not in 0..={MAX_REWRITE_WEIGHT}"),
                    ));
                }
                if model.is_empty() || model.len() > MAX_NAME_LEN || !is_field_value(model.as_bytes()) {
                    return Err(err(
                        "models.rewrites[].targets[].model",
                        format!(
                            "{model:?} is written into the model header: it must be 1..={MAX_NAME_LEN} bytes of a valid HTTP field value (no control characters, no whitespace at either end)"
                        ),
                    ));
                }
            }
        }
        Ok(ModelPolicy {
            allow,
            priorities,
            rewrites,
            objectives,
        })
    }

    /// Whether the pool serves `model` (no allow-list: every model).
    pub fn admits(&self, model: &str) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|m| m == model)
    }

    /// The model a request for `model` is sent as: a rewrite's target drawn by weight with
    /// `rng` (one draw per rewritten request), else `model` itself.
    pub fn rewrite(&self, model: &str, rng: &mut impl Rng) -> String {
        let Some(r) = self.rewrites.iter().find(|r| r.model == model) else {
            return String::from(model);
        };
        let total: u64 = r.targets.iter().map(|t| t.1 as u64).sum();
        if total == 0 {
            // Every weight is 0: split evenly, as llm-d-router's `selectWeightedModel` does
            // (llm-d/llm-d-router @ebab687 `pkg/epp/requestcontrol/director.go`).
            let i = rng.below(r.targets.len().max(1) as u64) as usize;
            return r.targets.get(i).map_or_else(|| String::from(model), |t| t.0.clone());
        }
        let mut x = rng.below(total);
        for (target, weight) in &r.targets {
            if x < *weight as u64 {
                return target.clone();
            }
            x -= *weight as u64;
        }
        // Unreachable: x < total = Σ weights.
        r.targets.last().map_or_else(|| String::from(model), |t| t.0.clone())
    }

    /// The request's priority: its InferenceObjective's, else its target model's, else 0.
    pub fn priority(&self, objective: Option<&str>, target: &str) -> i32 {
        objective
            .and_then(|o| self.objectives.get(o).copied())
            .or_else(|| self.priorities.get(target).copied())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32-unknown-unknown the same tests run under wasm-bindgen-test (Node).
    use crate::rng::SplitMix64;
    use alloc::vec;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn policy(rewrites: Vec<Rewrite>) -> Result<ModelPolicy, PolicyError> {
        ModelPolicy::try_new(vec!["a".into(), "b".into()], BTreeMap::new(), rewrites, BTreeMap::new())
    }

    #[test]
    fn allow_list() {
        let p = policy(vec![]).unwrap();
        assert!(p.admits("a") && p.admits("b") && !p.admits("c"));
        assert!(ModelPolicy::default().admits("anything"));
    }

    /// The split is exact for a seeded RNG: the draw is `below(Σ weights)` walked over the
    /// targets in order, so seed by seed the target is known (checked against the same draw
    /// made by hand) and over 10,000 seeds the 70/30 split lands within 1 %.
    #[test]
    fn rewrite_draws_by_weight_with_the_injected_rng() {
        let p = policy(vec![Rewrite {
            model: "llama".into(),
            targets: vec![("llama-a".into(), 70), ("llama-b".into(), 30)],
        }])
        .unwrap();
        let mut a = 0;
        for seed in 0..10_000u64 {
            let want = if SplitMix64::new(seed).below(100) < 70 {
                "llama-a"
            } else {
                "llama-b"
            };
            let got = p.rewrite("llama", &mut SplitMix64::new(seed));
            assert_eq!(got, want, "seed {seed}");
            a += (got == "llama-a") as u32;
        }
        assert!((6_900..=7_100).contains(&a), "{a}");
        assert_eq!(
            p.rewrite("other", &mut SplitMix64::new(1)),
            "other",
            "no rewrite: unchanged"
        );
    }

    #[test]
    fn priority_prefers_the_objective_then_the_model() {
        let mut prio = BTreeMap::new();
        prio.insert(String::from("batch-model"), -1);
        let mut obj = BTreeMap::new();
        obj.insert(String::from("interactive"), 2);
        let p = ModelPolicy::try_new(vec![], prio, vec![], obj).unwrap();
        assert_eq!(p.priority(Some("interactive"), "batch-model"), 2);
        assert_eq!(p.priority(Some("unknown"), "batch-model"), -1);
        assert_eq!(p.priority(None, "batch-model"), -1);
        assert_eq!(p.priority(None, "other"), 0);
    }

    #[test]
    fn invalid_rewrites_name_the_field() {
        let bad = |targets: Vec<(String, u32)>| {
            policy(vec![Rewrite {
                model: "a".into(),
                targets,
            }])
            .unwrap_err()
            .field
        };
        assert_eq!(bad(vec![]), "models.rewrites[].targets");
        assert_eq!(bad(vec![("b".into(), 2_000_000)]), "models.rewrites[].targets[].weight");
        assert_eq!(bad(vec![("b\r\nx: 1".into(), 1)]), "models.rewrites[].targets[].model");
        assert_eq!(bad(vec![(String::new(), 1)]), "models.rewrites[].targets[].model");
    }
}
