//! The `Objective` trait: how an algorithm (SFT, reward modelling, DPO, GRPO, PPO, ...) plugs into the
//! one training loop. An objective turns a batch of its own examples into a summed loss and named
//! metrics; the trainer knows nothing else about it. This module knows nothing of optimisers,
//! schedules or checkpoints.

use candle_core::Tensor;

use crate::error::Result;
use crate::rng::Rng;

/// Whether the loss feeds a backward pass (dropout on) or only an evaluation (dropout off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// What an objective may use besides its batch: the mode, the optimiser step it is computed for,
/// and the trainer's random stream (checkpointed, so a resumed run draws the same numbers).
pub struct StepContext<'a> {
    pub mode: Mode,
    pub step: usize,
    pub rng: &'a mut Rng,
}

/// The loss of one (micro-)batch.
///
/// Losses are *sums* with a *weight* (e.g. the number of target tokens, or of preference pairs): the
/// trainer divides the summed losses of all micro-batches of a step by their summed weights, so that
/// gradient accumulation of 4 x 2 equals one batch of 8 whatever each micro-batch holds.
pub struct LossOutput {
    /// A scalar tensor: the summed loss, differentiable w.r.t. the trainable parameters.
    pub loss_sum: Tensor,
    /// What `loss_sum` is a sum over (target tokens, pairs, ...); positive.
    pub weight: f64,
    /// Tokens processed (prompt and target, no padding): what tokens/s counts.
    pub tokens: usize,
    /// Further metrics as sums over the same units as `weight`; the trainer reports each divided by the
    /// summed weight (e.g. `("accuracy", correct_pairs)`).
    pub metrics: Vec<(String, f64)>,
}

/// An algorithm as the trainer sees it.
pub trait Objective {
    /// One training example, already prepared (tokenised) by the objective's own code.
    type Example;

    /// A short name for logs (`sft`, `dpo`, ...).
    fn name(&self) -> &str;

    /// The loss of `batch` (one micro-batch).
    fn loss(&mut self, batch: &[&Self::Example], ctx: &mut StepContext<'_>) -> Result<LossOutput>;

    /// Metrics that are not averages of per-unit sums (an F1 score), computed from the averaged
    /// metrics of a step or an evaluation; logged beside them.
    fn derived_metrics(&self, _averaged: &[(String, f64)]) -> Vec<(String, f64)> {
        Vec::new()
    }
}
