//! Run configurations of the reward-model trainers: the outcome reward model (`temper rm`) and the
//! process reward model (`temper prm`). Each is one flat set of TOML keys: the trainer's keys
//! ([`TrainKeys`], shared with every trainer) plus the algorithm's own, resolved like the SFT config (defaults, file,
//! command line; unknown keys suggest the nearest). Knows keys and values; nothing of how training
//! runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{resolve_keys, run_config_path, write_config};
use crate::error::{Result, TrainError};
use crate::train_keys::train_keys;
pub use crate::train_keys::TrainKeys;

/// A Bradley-Terry outcome reward model run (`temper rm`). Defaults follow TRL's `RewardConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RmConfig {
    /// The base model: an HF directory or a GGUF file (a fresh score head is added), or an HF
    /// sequence-classification directory (its head is trained further).
    pub model: Option<PathBuf>,
    /// Preference data (`prompt`/`chosen`/`rejected`, optional `margin`), JSONL or Parquet.
    pub data: Option<PathBuf>,
    pub eval_data: Option<PathBuf>,
    pub output: Option<PathBuf>,
    #[serde(flatten)]
    pub train: TrainKeys,
    /// Pairs whose chosen or rejected side is longer are dropped (as TRL does).
    pub max_length: usize,
    /// Weight of `mean((r_chosen + r_rejected)^2)`, which keeps rewards centred on 0; 0 is off.
    pub center_rewards_coefficient: f64,
    /// cpu, cuda, cuda:N or auto.
    pub device: String,
    /// f32, bf16 or f16; empty: f32 on CPU, bf16 on CUDA.
    pub dtype: String,
}

impl Default for RmConfig {
    fn default() -> Self {
        RmConfig {
            model: None,
            data: None,
            eval_data: None,
            output: None,
            train: TrainKeys::with_learning_rate(1e-4),
            max_length: 1024,
            center_rewards_coefficient: 0.0,
            device: "cpu".into(),
            dtype: String::new(),
        }
    }
}

/// A process reward model run (`temper prm`). Defaults follow TRL's `PRMConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrmConfig {
    pub model: Option<PathBuf>,
    /// Stepwise data (`prompt`/`completions`/`labels`), JSONL or Parquet.
    pub data: Option<PathBuf>,
    pub eval_data: Option<PathBuf>,
    pub output: Option<PathBuf>,
    #[serde(flatten)]
    pub train: TrainKeys,
    /// Sequences are cut to this many tokens (steps past it lose their labels).
    pub max_length: usize,
    /// Written after every step; the step's label is read at its last token.
    pub step_separator: String,
    /// Train on the last step's label only.
    pub train_on_last_step_only: bool,
    /// Train an implicit PRM instead of a classifier: the model stays a causal LM and learns
    /// each row's outcome (its last label) as `beta` times its log-ratio to the starting model.
    pub implicit: bool,
    /// The implicit PRM's reward scale.
    pub beta: f64,
    /// The implicit PRM's reference model (an HF directory or a GGUF file); absent: the starting
    /// model. A reference other than the start lets a model that knows more than the policy (say,
    /// the policy trained further) score the policy's steps by how much likelier it finds them.
    pub reference: Option<PathBuf>,
    pub device: String,
    pub dtype: String,
}

impl Default for PrmConfig {
    fn default() -> Self {
        PrmConfig {
            model: None,
            data: None,
            eval_data: None,
            output: None,
            train: TrainKeys::with_learning_rate(1e-5),
            max_length: 1024,
            step_separator: "\n".into(),
            train_on_last_step_only: false,
            implicit: false,
            beta: 0.05,
            reference: None,
            device: "cpu".into(),
            dtype: String::new(),
        }
    }
}

const IO_KEYS: &[&str] = &["model", "data", "eval_data", "output", "device", "dtype"];

/// Every key of an RM config.
pub fn rm_keys() -> Vec<&'static str> {
    let mut k = IO_KEYS.to_vec();
    k.extend(train_keys());
    k.extend_from_slice(&["max_length", "center_rewards_coefficient"]);
    k
}

/// Every key of a PRM config.
pub fn prm_keys() -> Vec<&'static str> {
    let mut k = IO_KEYS.to_vec();
    k.extend(train_keys());
    k.extend_from_slice(&[
        "max_length",
        "step_separator",
        "train_on_last_step_only",
        "implicit",
        "beta",
        "reference",
    ]);
    k
}

impl RmConfig {
    pub fn resolve(file: Option<&Path>, overrides: toml::Table) -> Result<Self> {
        let flags: Vec<String> = overrides.keys().cloned().collect();
        Self::resolve_unnamed(file, overrides)
            .map_err(|e| crate::config::name_config_file(e, file, &flags))
    }

    fn resolve_unnamed(file: Option<&Path>, overrides: toml::Table) -> Result<Self> {
        let cfg: RmConfig = resolve_keys(file, overrides, &rm_keys())?;
        cfg.train.validate(cfg.max_length)?;
        if !(cfg.center_rewards_coefficient >= 0.0 && cfg.center_rewards_coefficient.is_finite()) {
            return Err(TrainError::config(
                "center_rewards_coefficient",
                format!(
                    "expected 0 (off) or a positive number, got {}",
                    cfg.center_rewards_coefficient
                ),
            ));
        }
        Ok(cfg)
    }

    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        write_config(self, dir)
    }

    pub fn read_run(dir: &Path) -> Result<Self> {
        Self::resolve(Some(&run_config_path(dir)?), toml::Table::new())
    }
}

impl PrmConfig {
    pub fn resolve(file: Option<&Path>, overrides: toml::Table) -> Result<Self> {
        let flags: Vec<String> = overrides.keys().cloned().collect();
        Self::resolve_unnamed(file, overrides)
            .map_err(|e| crate::config::name_config_file(e, file, &flags))
    }

    fn resolve_unnamed(file: Option<&Path>, overrides: toml::Table) -> Result<Self> {
        let cfg: PrmConfig = resolve_keys(file, overrides, &prm_keys())?;
        cfg.train.validate(cfg.max_length)?;
        if cfg.step_separator.is_empty() {
            return Err(TrainError::config(
                "step_separator",
                "expected a non-empty string (the default is a newline)",
            ));
        }
        if !(cfg.beta.is_finite() && cfg.beta > 0.0) {
            return Err(TrainError::config(
                "beta",
                format!("expected a positive number, got {}", cfg.beta),
            ));
        }
        if cfg.reference.is_some() && !cfg.implicit {
            return Err(TrainError::config(
                "reference",
                "only an implicit PRM has a reference model: add `implicit = true` (`--implicit`)",
            ));
        }
        Ok(cfg)
    }

    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        write_config(self, dir)
    }

    pub fn read_run(dir: &Path) -> Result<Self> {
        Self::resolve(Some(&run_config_path(dir)?), toml::Table::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_through_toml_with_every_key_known() {
        let dir = tempfile::tempdir().unwrap();
        let mut rm = RmConfig {
            model: Some("m".into()),
            center_rewards_coefficient: 0.01,
            ..Default::default()
        };
        rm.train.batch_size = 3;
        rm.write(dir.path()).unwrap();
        assert_eq!(RmConfig::read_run(dir.path()).unwrap(), rm);
        let table: toml::Table = std::fs::read_to_string(dir.path().join("config.toml"))
            .unwrap()
            .parse()
            .unwrap();
        for k in table.keys() {
            assert!(rm_keys().contains(&k.as_str()), "{k}");
        }

        let prm = PrmConfig {
            step_separator: "\n\n".into(),
            train_on_last_step_only: true,
            implicit: true,
            beta: 0.2,
            reference: Some("policy".into()),
            ..Default::default()
        };
        prm.write(dir.path()).unwrap();
        assert_eq!(PrmConfig::read_run(dir.path()).unwrap(), prm);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let mut t = toml::Table::new();
        t.insert("center_reward_coefficient".into(), toml::Value::Float(0.1));
        let e = RmConfig::resolve(None, t).unwrap_err().to_string();
        assert!(
            e.contains("did you mean `center_rewards_coefficient`"),
            "{e}"
        );

        let mut t = toml::Table::new();
        t.insert("batch_size".into(), toml::Value::Integer(0));
        let e = PrmConfig::resolve(None, t).unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");

        let mut t = toml::Table::new();
        t.insert("step_separator".into(), toml::Value::String(String::new()));
        let e = PrmConfig::resolve(None, t).unwrap_err().to_string();
        assert!(e.contains("step_separator"), "{e}");

        let mut t = toml::Table::new();
        t.insert("reference".into(), toml::Value::String("policy".into()));
        let e = PrmConfig::resolve(None, t).unwrap_err().to_string();
        assert!(e.contains("reference") && e.contains("implicit"), "{e}");

        let mut t = toml::Table::new();
        t.insert("learning_rate".into(), toml::Value::String("fast".into()));
        let e = RmConfig::resolve(None, t).unwrap_err().to_string();
        assert!(e.contains("learning_rate"), "{e}");
    }
}
