//! The `Objective` trait: how an algorithm (SFT, reward modelling, DPO, GRPO, PPO, ...) plugs into the
//! one training loop. An objective turns a batch of its own examples into a summed loss and named
//! metrics; the trainer knows nothing else about it. This module knows nothing of optimisers,
//! schedules or checkpoints.

use candle_core::Tensor;
use tempering_model::lora::DropoutRng;
use tempering_model::Transformer;

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

/// A policy as the offline objectives (SFT, DPO, KTO) hold it: the model the optimiser steps, with
/// LoRA dropout when it has adapters, and the same weights with dropout off (evaluation, saving).
pub struct DropoutPolicy {
    train_model: Transformer,
    model: Transformer,
    dropout: Option<DropoutRng>,
}

impl DropoutPolicy {
    /// `model` must already carry its trainable `Var`s (full fine-tuning or LoRA).
    pub fn new(model: Transformer) -> Self {
        let mut train_model = model.clone();
        let dropout = model.has_lora().then(|| DropoutRng::new(0));
        if let Some(rng) = &dropout {
            train_model.set_lora_dropout(Some(rng.clone()));
        }
        DropoutPolicy {
            train_model,
            model,
            dropout,
        }
    }

    /// The model with dropout off (what to save or evaluate).
    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// The model a loss in `ctx.mode` runs: in training, with dropout masks drawn from the
    /// trainer's checkpointed stream (one draw per call, only when there is dropout).
    pub fn for_step(&self, ctx: &mut StepContext<'_>) -> &Transformer {
        match ctx.mode {
            Mode::Train => {
                if let Some(rng) = &self.dropout {
                    rng.set_state(ctx.rng.next_u64());
                }
                &self.train_model
            }
            Mode::Eval => &self.model,
        }
    }
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
