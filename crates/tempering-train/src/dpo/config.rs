//! The run configuration of `temper dpo` and `temper kto`: the trainer's keys (`TrainKeys`, shared
//! with SFT and the reward models), the adapter's (`LoraKeys`, shared with SFT) and the preference
//! keys, read from TOML, overridden by flags, validated with errors naming the key, and written back
//! resolved into the run directory. Defaults follow TRL's `DPOConfig` / `KTOConfig` where they have
//! one. Knows keys and values; nothing of how training runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tempering_model::LoraConfig;

use crate::config::{resolve_keys as resolve_table, run_config_path};
use crate::dpo::data::PreferenceDataOptions;
use crate::dpo::kto::KtoParams;
use crate::dpo::loss::{LossParams, PreferenceLoss};
use crate::error::{Result, TrainError};
use crate::train_keys::{train_keys, LoraKeys, TrainKeys, LORA_KEYS};
use crate::trainer::TrainConfig;

/// Every key of a preference run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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

    #[serde(flatten)]
    pub train: TrainKeys,

    /// Prompt plus completion, in tokens; prompts are shortened from the start, completions never.
    pub max_length: usize,
    /// 0: no separate prompt limit.
    pub max_prompt_length: usize,

    #[serde(flatten)]
    pub lora: LoraKeys,

    pub device: String,
    pub dtype: String,
}

impl Default for PreferenceConfig {
    fn default() -> Self {
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
            train: TrainKeys::with_learning_rate(1e-6),
            max_length: d.max_length,
            max_prompt_length: d.max_prompt_length,
            lora: LoraKeys::default(),
            device: "cpu".into(),
            dtype: String::new(),
        }
    }
}

/// Every key a preference config may hold.
pub fn preference_keys() -> Vec<&'static str> {
    let mut k = vec![
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
    ];
    k.extend(train_keys());
    k.extend_from_slice(&["max_length", "max_prompt_length"]);
    k.extend_from_slice(LORA_KEYS);
    k.extend_from_slice(&["device", "dtype"]);
    k
}

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
        let mut cfg: PreferenceConfig = resolve_table(file, overrides, &preference_keys())?;
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
        self.train.validate(self.max_length)?;
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
        self.lora.validate()
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
        self.train.train_config()
    }

    pub fn data_options(&self) -> PreferenceDataOptions {
        PreferenceDataOptions {
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
        }
    }

    /// The LoRA configuration, or `None` for full fine-tuning (`lora_r = 0`).
    pub fn lora(&self) -> Result<Option<LoraConfig>> {
        self.lora.config()
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
        Self::resolve(Some(&run_config_path(dir)?), toml::Table::new(), kind)
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
            lora: LoraKeys {
                lora_r: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let table: toml::Table = cfg.to_toml().unwrap().parse().unwrap();
        let mut keys: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
        let mut known = preference_keys();
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
