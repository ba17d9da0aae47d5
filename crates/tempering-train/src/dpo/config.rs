//! The run configuration of `temper dpo` and `temper kto`: the SFT run's training keys (same names,
//! same meaning) plus the preference keys, read from TOML, overridden by flags, validated with errors
//! naming the key, and written back resolved into the run directory. Defaults follow TRL's
//! `DPOConfig` / `KTOConfig` where they have one. Knows keys and values; nothing of how training runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tempering_model::{LoraConfig, LoraTarget};

use crate::config::resolve_keys as resolve_table;
use crate::dpo::data::PreferenceDataOptions;
use crate::dpo::kto::KtoParams;
use crate::dpo::loss::{LossParams, PreferenceLoss};
use crate::error::{Result, TrainError};
use crate::optim::AdamWConfig;
use crate::schedule::ScheduleKind;
use crate::trainer::TrainConfig;

/// Every key of a preference run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreferenceConfig {
    /// The policy to start from (usually the SFT model): an HF directory or a GGUF file.
    pub model: Option<PathBuf>,
    /// A separate reference model (full fine-tuning; default: a frozen copy of `model`).
    pub ref_model: Option<PathBuf>,
    /// Training data: `prompt`/`chosen`/`rejected` (DPO) or `prompt`/`completion`/`label` (KTO).
    pub data: Option<PathBuf>,
    pub eval_data: Option<PathBuf>,
    /// The run directory.
    pub output: Option<PathBuf>,

    /// sigmoid, ipo, hinge, robust, simpo, orpo (`temper dpo`) or kto (`temper kto`).
    pub loss_type: String,
    pub beta: f64,
    pub label_smoothing: f64,
    pub simpo_gamma: f64,
    /// Weight of the NLL of the chosen completions (RPO); 0: off.
    pub rpo_alpha: f64,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    /// Compute the reference log-probs once before training (frees a full fine-tuning copy).
    pub precompute_ref: bool,

    pub learning_rate: f64,
    pub lr_scheduler: ScheduleKind,
    pub warmup_steps: usize,
    pub min_lr_ratio: f64,
    pub max_steps: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub eval_every: usize,
    pub eval_batch_size: usize,
    pub save_every: usize,
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub shuffle: bool,

    /// Prompt plus completion, in tokens; prompts are shortened from the start, completions never.
    pub max_length: usize,
    /// 0: no separate prompt limit.
    pub max_prompt_length: usize,

    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub lora_targets: String,

    pub device: String,
    pub dtype: String,
}

impl Default for PreferenceConfig {
    fn default() -> Self {
        let t = TrainConfig::default();
        let l = LoraConfig::default();
        let d = PreferenceDataOptions::default();
        PreferenceConfig {
            model: None,
            ref_model: None,
            data: None,
            eval_data: None,
            output: None,
            // The command's default (sigmoid or kto), filled in by `resolve`.
            loss_type: String::new(),
            beta: 0.1,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            rpo_alpha: 0.0,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            precompute_ref: false,
            // TRL's DPOConfig and KTOConfig default.
            learning_rate: 1e-6,
            lr_scheduler: t.schedule,
            warmup_steps: t.warmup_steps,
            min_lr_ratio: t.min_lr_ratio,
            max_steps: t.max_steps,
            epochs: t.epochs,
            batch_size: t.batch_size,
            grad_accum: t.grad_accum,
            max_grad_norm: t.max_grad_norm,
            weight_decay: t.adamw.weight_decay,
            adam_beta1: t.adamw.beta1,
            adam_beta2: t.adamw.beta2,
            adam_eps: t.adamw.eps,
            eval_every: t.eval_every,
            eval_batch_size: t.eval_batch_size,
            save_every: t.save_every,
            keep_checkpoints: t.keep_checkpoints,
            seed: t.seed,
            shuffle: t.shuffle,
            max_length: d.max_length,
            max_prompt_length: d.max_prompt_length,
            lora_r: 0,
            lora_alpha: l.alpha,
            lora_dropout: l.dropout,
            lora_targets: "q,v".into(),
            device: "cpu".into(),
            dtype: String::new(),
        }
    }
}

/// Every key a preference config may hold.
pub const PREFERENCE_KEYS: &[&str] = &[
    "model",
    "ref_model",
    "data",
    "eval_data",
    "output",
    "loss_type",
    "beta",
    "label_smoothing",
    "simpo_gamma",
    "rpo_alpha",
    "desirable_weight",
    "undesirable_weight",
    "precompute_ref",
    "learning_rate",
    "lr_scheduler",
    "warmup_steps",
    "min_lr_ratio",
    "max_steps",
    "epochs",
    "batch_size",
    "grad_accum",
    "max_grad_norm",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_eps",
    "eval_every",
    "eval_batch_size",
    "save_every",
    "keep_checkpoints",
    "seed",
    "shuffle",
    "max_length",
    "max_prompt_length",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
    "device",
    "dtype",
];

/// Which command a config is for: the paired losses or KTO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferenceKind {
    Paired,
    Unpaired,
}

/// The loss a config asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PreferenceObjective {
    Paired(LossParams),
    Kto(KtoParams),
}

impl PreferenceConfig {
    /// Defaults, then the TOML file's keys, then `overrides`, validated for `kind`. An unset
    /// `loss_type` becomes the command's default: `sigmoid` (DPO) or `kto`.
    pub fn resolve(
        file: Option<&Path>,
        overrides: toml::Table,
        kind: PreferenceKind,
    ) -> Result<Self> {
        let flags: Vec<String> = overrides.keys().cloned().collect();
        let mut cfg: PreferenceConfig = resolve_table(file, overrides, PREFERENCE_KEYS)?;
        if cfg.loss_type.is_empty() {
            cfg.loss_type = match kind {
                PreferenceKind::Paired => "sigmoid",
                PreferenceKind::Unpaired => "kto",
            }
            .into();
        }
        cfg.validate(kind)
            .map_err(|e| crate::config::name_config_file(e, file, &flags))?;
        Ok(cfg)
    }

    /// Checks every value that can be checked without touching files.
    pub fn validate(&self, kind: PreferenceKind) -> Result<()> {
        self.train_config().validate()?;
        if self.max_length < 2 {
            return Err(TrainError::config(
                "max_length",
                "expected at least 2 tokens",
            ));
        }
        if self.keep_checkpoints == 0 {
            return Err(TrainError::config(
                "keep_checkpoints",
                "expected at least 1",
            ));
        }
        match (kind, self.objective()?) {
            (PreferenceKind::Paired, PreferenceObjective::Kto(_)) => {
                return Err(TrainError::config(
                    "loss_type",
                    "kto trains on unpaired data: use `temper kto`",
                ))
            }
            (PreferenceKind::Unpaired, PreferenceObjective::Paired(_)) => {
                return Err(TrainError::config(
                    "loss_type",
                    format!(
                        "`temper kto` trains the kto loss; `{}` is a paired loss for `temper dpo`",
                        self.loss_type
                    ),
                ))
            }
            _ => {}
        }
        if let Some(l) = self.lora()? {
            l.validate()
                .map_err(|e| TrainError::config("lora", e.to_string()))?;
        }
        Ok(())
    }

    /// The loss and its settings.
    pub fn objective(&self) -> Result<PreferenceObjective> {
        if self.loss_type == "kto" {
            let p = KtoParams {
                beta: self.beta,
                desirable_weight: self.desirable_weight,
                undesirable_weight: self.undesirable_weight,
            };
            p.validate()?;
            return Ok(PreferenceObjective::Kto(p));
        }
        let loss: PreferenceLoss = self
            .loss_type
            .parse()
            .map_err(|e: String| TrainError::config("loss_type", format!("{e}, or kto")))?;
        let p = LossParams {
            loss,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            simpo_gamma: self.simpo_gamma,
            rpo_alpha: self.rpo_alpha,
        };
        p.validate()?;
        Ok(PreferenceObjective::Paired(p))
    }

    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            learning_rate: self.learning_rate,
            schedule: self.lr_scheduler,
            warmup_steps: self.warmup_steps,
            min_lr_ratio: self.min_lr_ratio,
            max_steps: self.max_steps,
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_grad_norm: self.max_grad_norm,
            adamw: AdamWConfig {
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_eps,
                weight_decay: self.weight_decay,
            },
            eval_every: self.eval_every,
            eval_batch_size: self.eval_batch_size,
            save_every: self.save_every,
            keep_checkpoints: self.keep_checkpoints,
            seed: self.seed,
            shuffle: self.shuffle,
            progress: true,
        }
    }

    pub fn data_options(&self) -> PreferenceDataOptions {
        PreferenceDataOptions {
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
        }
    }

    /// The LoRA configuration, or `None` for full fine-tuning (`lora_r = 0`).
    pub fn lora(&self) -> Result<Option<LoraConfig>> {
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

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| TrainError::config("<config>", format!("cannot write as TOML: {e}")))
    }

    /// Writes `config.toml` into `dir` (temporary name, then rename).
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        crate::config::write_config(self, dir)
    }

    /// Reads a run directory's `config.toml`.
    pub fn read_run(dir: &Path, kind: PreferenceKind) -> Result<Self> {
        let path = dir.join("config.toml");
        if !path.is_file() {
            return Err(TrainError::NoCheckpoint {
                dir: dir.to_path_buf(),
            });
        }
        Self::resolve(Some(&path), toml::Table::new(), kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_every_field_is_a_known_key() {
        let cfg = PreferenceConfig {
            model: Some("m".into()),
            ref_model: Some("r".into()),
            data: Some("d.jsonl".into()),
            eval_data: Some("e.jsonl".into()),
            output: Some("runs/x".into()),
            loss_type: "ipo".into(),
            lora_r: 4,
            ..Default::default()
        };
        let table: toml::Table = cfg.to_toml().unwrap().parse().unwrap();
        let mut keys: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
        let mut known = PREFERENCE_KEYS.to_vec();
        keys.sort();
        known.sort();
        assert_eq!(keys, known);
        let back = PreferenceConfig::resolve(None, table, PreferenceKind::Paired).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_values_and_wrong_commands_name_their_key() {
        let one = |k: &str, v: toml::Value| {
            let mut t = toml::Table::new();
            t.insert(k.into(), v);
            t
        };
        for (table, kind, expect) in [
            (
                one("loss_type", "dpo".into()),
                PreferenceKind::Paired,
                "unknown loss `dpo`",
            ),
            (one("beta", 0.0.into()), PreferenceKind::Paired, "`beta`"),
            (
                one("label_smoothing", 0.5.into()),
                PreferenceKind::Paired,
                "`label_smoothing`",
            ),
            (
                one("loss_type", "kto".into()),
                PreferenceKind::Paired,
                "use `temper kto`",
            ),
            (
                one("loss_type", "sigmoid".into()),
                PreferenceKind::Unpaired,
                "paired loss",
            ),
            (
                one("desirable_weight", (-1.0).into()),
                PreferenceKind::Unpaired,
                "`desirable_weight`",
            ),
            (
                one("bta", 0.1.into()),
                PreferenceKind::Paired,
                "did you mean `beta`",
            ),
        ] {
            let e = PreferenceConfig::resolve(None, table, kind)
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{e}");
        }
        let kto =
            PreferenceConfig::resolve(None, toml::Table::new(), PreferenceKind::Unpaired).unwrap();
        assert_eq!(kto.loss_type, "kto");
    }
}
