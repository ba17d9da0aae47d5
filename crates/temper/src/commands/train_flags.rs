//! The flags every training command shares, one per key of `tempering_train::train_keys`
//! (`learning_rate` is `--learning-rate`); when given, each overrides the config file.
//! [`StepFlags`] are every training command's (the online RL commands take only these);
//! [`TrainFlags`] add the offline trainers' data-pass flags; [`LoraFlags`], [`RunPathFlags`] and
//! [`DeviceFlags`] the adapter, paths and device keys several commands spell alike; [`RunControl`]
//! is `--config`, `--resume` and `--quiet`. Holds no logic beyond turning the given flags into
//! config keys.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

/// The keys every trainer reads (`tempering_train::train_keys::StepKeys`).
#[derive(Args, Serialize, Default, Debug, Clone)]
pub struct StepFlags {
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// constant, linear or cosine.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_scheduler: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_every: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_checkpoints: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The offline trainers' flags (`tempering_train::train_keys::TrainKeys`).
#[derive(Args, Serialize, Default, Debug)]
pub struct TrainFlags {
    #[command(flatten)]
    #[serde(flatten)]
    pub step: StepFlags,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u64>,
    /// Examples per micro-batch (pairs for dpo and rm).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_accum: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adam_beta1: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adam_beta2: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adam_eps: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_batch_size: Option<u64>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shuffle: Option<bool>,
}

/// How a training command runs rather than what it trains: `--config`, `--resume`, `--quiet`
/// (none of them a config key).
#[derive(Args, Default, Debug, Clone)]
pub struct RunControl {
    /// A TOML file with any of the command's config keys (unknown keys are an error).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint, with its saved config.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The evaluation data and the run directory of the offline trainers.
#[derive(Args, Serialize, Default, Debug)]
pub struct RunPathFlags {
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_data: Option<PathBuf>,
    /// The run directory to create.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
}

/// Where the model runs.
#[derive(Args, Serialize, Default, Debug, Clone)]
pub struct DeviceFlags {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// f32, bf16 or f16.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}

/// The adapter of the offline policy trainers (`tempering_train::train_keys::LoraKeys`).
#[derive(Args, Serialize, Default, Debug)]
pub struct LoraFlags {
    /// LoRA rank (0: full fine-tuning).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_r: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_dropout: Option<f64>,
    /// q,k,v,o,gate,up,down or all.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_targets: Option<String>,
}
