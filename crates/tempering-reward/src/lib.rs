//! Rewards and verifiers: every signal that RL and test-time search consume. Two traits carry them:
//! [`Verifier`] scores a whole completion (a rule, a learned outcome reward model, a remote judge),
//! [`StepScorer`] scores each reasoning step (a process reward model, self-evaluation). Rule rewards,
//! learned reward models, ensembles and shaping terms all implement one of them.
//!
//! This crate knows the model layer (to run learned scorers), the tasks layer (the built-in
//! verifiers) and the generation engine (self-evaluation and step labelling by rollouts). It knows
//! nothing of training loops, search strategies or the command line.
//!
//! - [`scorer`]: the two traits and what they take and return.
//! - [`rules`]: rule rewards by name (`math_answer`, `task_verifier`, `format`, `length_penalty`,
//!   `overlong_penalty`, `chrf`); [`spec`] parses what a user types (`0.8*math_answer+0.2*format`)
//!   and builds it; [`compose`] holds weighted sums.
//! - [`answer`]: final-answer extraction and equivalence (also for majority votes).
//! - [`ensemble`]: conservative aggregates over several scorers, with their disagreement.
//! - [`self_eval`]: the policy judging its own answers and steps from its verdict-token logprobs.
//! - [`learned`]: trained outcome and process reward models (HF classifier directories), and
//!   [`label_steps`]: Math-Shepherd step labels by rollouts, the PRM's training data.

pub mod answer;
pub mod compose;
pub mod ensemble;
pub mod error;
pub mod label_steps;
pub mod learned;
pub mod rules;
pub mod scorer;
pub mod self_eval;
pub mod spec;

pub use compose::WeightedSum;
pub use ensemble::{Aggregate, Ensemble, EnsembleScore, StepEnsemble};
pub use error::{Result, RewardError};
pub use rules::RULE_NAMES;
pub use scorer::{ScoreInput, Scored, StepScorer, Verifier};
pub use self_eval::{SelfEvalConfig, SelfEvaluator};
pub use spec::{build_reward, RewardContext, RewardSpec};
