//! Rewards and verifiers: every signal that RL and test-time search consume. Two traits carry them:
//! [`Verifier`] scores a whole completion (a rule, a learned outcome reward model, a remote judge),
//! [`StepScorer`] scores each reasoning step (a process reward model, self-evaluation). Rule rewards,
//! learned reward models, ensembles and shaping terms all implement one of them.
//!
//! This crate knows the model layer (to run learned scorers), the tasks layer (the built-in
//! verifiers) and the generation engine (self-evaluation and step labelling by rollouts). It knows
//! nothing of training loops, search strategies or the command line.

pub mod error;
pub mod label_steps;
pub mod learned;
pub mod scorer;

pub use error::{Result, RewardError};
pub use scorer::{ScoreInput, Scored, StepScorer, Verifier};
