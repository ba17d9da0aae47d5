//! The trainer's keys, defined once and flattened into every training command's config (and, as
//! flags, into its command line): [`StepKeys`], what every trainer reads (learning rate, schedule,
//! warm-up, clipping, weight decay, checkpoints, seed; the online RL commands read only these), and
//! [`TrainKeys`], those plus the data-pass and optimiser keys of the offline trainers (steps, epochs,
//! batch, accumulation, Adam's betas, evaluation, shuffling); and [`LoraKeys`], the adapter keys of
//! the offline policy trainers (SFT, DPO, KTO). Knows keys and values; nothing of how training runs.

use serde::{Deserialize, Serialize};
use tempering_model::{LoraConfig, LoraTarget};

use crate::error::{Result, TrainError};
use crate::optim::AdamWConfig;
use crate::schedule::ScheduleKind;
use crate::trainer::TrainConfig;

/// The keys every trainer reads, offline and online.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepKeys {
    pub learning_rate: f64,
    /// constant, linear or cosine (after warm-up).
    pub lr_scheduler: ScheduleKind,
    pub warmup_steps: usize,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    /// 0: checkpoint only at the end.
    pub save_every: usize,
    pub keep_checkpoints: usize,
    pub seed: u64,
}

/// The keys of [`StepKeys`].
pub const STEP_KEYS: &[&str] = &[
    "learning_rate",
    "lr_scheduler",
    "warmup_steps",
    "max_grad_norm",
    "weight_decay",
    "save_every",
    "keep_checkpoints",
    "seed",
];

impl StepKeys {
    /// The trainer's defaults with this learning rate.
    pub fn with_learning_rate(learning_rate: f64) -> Self {
        let t = TrainConfig::default();
        StepKeys {
            learning_rate,
            lr_scheduler: t.schedule,
            warmup_steps: t.warmup_steps,
            max_grad_norm: t.max_grad_norm,
            weight_decay: t.adamw.weight_decay,
            save_every: t.save_every,
            keep_checkpoints: t.keep_checkpoints,
            seed: t.seed,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.keep_checkpoints == 0 {
            return Err(TrainError::config(
                "keep_checkpoints",
                "expected at least 1",
            ));
        }
        Ok(())
    }
}

/// The offline trainers' keys: [`StepKeys`] plus the data passes, batches and optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainKeys {
    #[serde(flatten)]
    pub step: StepKeys,
    pub min_lr_ratio: f64,
    /// Optimiser steps; 0: `epochs` passes over the data.
    pub max_steps: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// 0: evaluate only at the end.
    pub eval_every: usize,
    pub eval_batch_size: usize,
    pub shuffle: bool,
}

/// The keys of [`TrainKeys`].
pub fn train_keys() -> Vec<&'static str> {
    let mut k = STEP_KEYS.to_vec();
    k.extend_from_slice(&[
        "min_lr_ratio",
        "max_steps",
        "epochs",
        "batch_size",
        "grad_accum",
        "adam_beta1",
        "adam_beta2",
        "adam_eps",
        "eval_every",
        "eval_batch_size",
        "shuffle",
    ]);
    k
}

impl TrainKeys {
    /// The trainer's defaults with this learning rate.
    pub fn with_learning_rate(learning_rate: f64) -> Self {
        let t = TrainConfig::default();
        TrainKeys {
            step: StepKeys::with_learning_rate(learning_rate),
            min_lr_ratio: t.min_lr_ratio,
            max_steps: t.max_steps,
            epochs: t.epochs,
            batch_size: t.batch_size,
            grad_accum: t.grad_accum,
            adam_beta1: t.adamw.beta1,
            adam_beta2: t.adamw.beta2,
            adam_eps: t.adamw.eps,
            eval_every: t.eval_every,
            eval_batch_size: t.eval_batch_size,
            shuffle: t.shuffle,
        }
    }

    pub fn train_config(&self) -> TrainConfig {
        let s = &self.step;
        TrainConfig {
            learning_rate: s.learning_rate,
            schedule: s.lr_scheduler,
            warmup_steps: s.warmup_steps,
            min_lr_ratio: self.min_lr_ratio,
            max_steps: self.max_steps,
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_grad_norm: s.max_grad_norm,
            adamw: AdamWConfig {
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_eps,
                weight_decay: s.weight_decay,
            },
            eval_every: self.eval_every,
            eval_batch_size: self.eval_batch_size,
            save_every: s.save_every,
            keep_checkpoints: s.keep_checkpoints,
            seed: s.seed,
            shuffle: self.shuffle,
            progress: true,
        }
    }

    /// The trainer's checks, and `max_length` (the command's) at least 2 tokens.
    pub(crate) fn validate(&self, max_length: usize) -> Result<()> {
        self.train_config().validate()?;
        if max_length < 2 {
            return Err(TrainError::config(
                "max_length",
                "expected at least 2 tokens",
            ));
        }
        self.step.validate()
    }
}

/// The LoRA keys of the commands that train a policy offline (`temper sft`, `dpo`, `kto`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraKeys {
    /// LoRA rank; 0 means full fine-tuning.
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Comma-separated: q,k,v,o,gate,up,down or all.
    pub lora_targets: String,
}

/// The keys of [`LoraKeys`].
pub const LORA_KEYS: &[&str] = &["lora_r", "lora_alpha", "lora_dropout", "lora_targets"];

impl Default for LoraKeys {
    fn default() -> Self {
        let l = LoraConfig::default();
        LoraKeys {
            lora_r: 0,
            lora_alpha: l.alpha,
            lora_dropout: l.dropout,
            lora_targets: "q,v".into(),
        }
    }
}

impl LoraKeys {
    /// The LoRA configuration, or `None` for full fine-tuning (`lora_r = 0`).
    pub fn config(&self) -> Result<Option<LoraConfig>> {
        if self.lora_r == 0 {
            return Ok(None);
        }
        let targets = LoraTarget::parse_list(&self.lora_targets)
            .map_err(|e| TrainError::config("lora_targets", e.to_string()))?;
        Ok(Some(LoraConfig::new(
            self.lora_r,
            self.lora_alpha,
            self.lora_dropout,
            targets,
        )))
    }

    /// The adapter's own checks (after the trainer's: see [`TrainKeys::validate`]).
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(l) = self.config()? {
            l.validate()
                .map_err(|e| TrainError::config("lora", e.to_string()))?;
        }
        Ok(())
    }
}
