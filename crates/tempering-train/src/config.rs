//! The SFT run configuration: one flat set of keys (the trainer's and the adapter's shared through
//! `train_keys`, and SFT's own), read from TOML (`--config sft.toml`), overridden key by key (the
//! command line), validated with errors naming the key, and written back resolved into the run
//! directory. An unknown key is an error suggesting the nearest known one. Also the resolver every
//! run config uses. Knows keys and values; nothing of how training runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tempering_model::LoraConfig;

use crate::error::{Result, TrainError};
use crate::sft::SftDataOptions;
use crate::train_keys::{train_keys, LoraKeys, TrainKeys, LORA_KEYS};
use crate::trainer::TrainConfig;

/// Every key of an SFT run: the trainer's ([`TrainKeys`], shared with every offline trainer), the
/// adapter's ([`LoraKeys`]) and SFT's own. Defaults follow TRL's `SFTConfig` where it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SftConfig {
    /// The model: an HF directory or a GGUF file.
    pub model: Option<PathBuf>,
    /// Training data: JSONL or Parquet in TRL's columns (`text`, `prompt`/`completion`, `messages`).
    pub data: Option<PathBuf>,
    pub eval_data: Option<PathBuf>,
    /// The run directory.
    pub output: Option<PathBuf>,

    #[serde(flatten)]
    pub train: TrainKeys,

    pub max_length: usize,
    pub completion_only_loss: bool,
    pub packing: bool,

    #[serde(flatten)]
    pub lora: LoraKeys,

    /// cpu, cuda, cuda:N or auto.
    pub device: String,
    /// f32, bf16 or f16; empty: f32 on CPU, bf16 on CUDA.
    pub dtype: String,
}

impl Default for SftConfig {
    fn default() -> Self {
        let d = SftDataOptions::default();
        SftConfig {
            model: None,
            data: None,
            eval_data: None,
            output: None,
            train: TrainKeys::with_learning_rate(TrainConfig::default().learning_rate),
            max_length: d.max_length,
            completion_only_loss: d.completion_only_loss,
            packing: d.packing,
            lora: LoraKeys::default(),
            device: "cpu".into(),
            dtype: String::new(),
        }
    }
}

/// Every key an SFT config may hold.
pub fn sft_keys() -> Vec<&'static str> {
    let mut k = vec!["model", "data", "eval_data", "output"];
    k.extend(train_keys());
    k.extend_from_slice(&["max_length", "completion_only_loss", "packing"]);
    k.extend_from_slice(LORA_KEYS);
    k.extend_from_slice(&["device", "dtype"]);
    k
}

/// Edit distance, for "did you mean".
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known key of an SFT config nearest to `key`, if it is near enough to be a plausible typo.
pub fn nearest_key(key: &str) -> Option<String> {
    nearest_in(key, &sft_keys())
}

/// The key of `keys` nearest to `key`, if it is near enough to be a plausible typo.
pub fn nearest_in(key: &str, keys: &[&str]) -> Option<String> {
    let norm = key.replace('-', "_").to_ascii_lowercase();
    keys.iter()
        .map(|k| (levenshtein(&norm, k), *k))
        .min()
        .filter(|(d, k)| *d <= (k.len() / 2).max(2))
        .map(|(_, k)| k.to_string())
}

fn check_keys(table: &toml::Table, file: Option<&Path>, keys: &[&str]) -> Result<()> {
    for key in table.keys() {
        if !keys.contains(&key.as_str()) {
            return Err(TrainError::UnknownKey {
                file: file.map(Path::to_path_buf),
                key: key.clone(),
                suggestion: nearest_in(key, keys),
                known: keys.iter().map(|s| s.to_string()).collect(),
            });
        }
    }
    Ok(())
}

/// A run config of any algorithm: its defaults, then the TOML file's keys, then `overrides` (the
/// command line's). Every key must be one of `keys`; a value that does not fit names its key.
pub fn resolve_keys<T: serde::de::DeserializeOwned + Serialize + Default>(
    file: Option<&Path>,
    overrides: toml::Table,
    keys: &[&str],
) -> Result<T> {
    let defaults = toml::Table::try_from(T::default())
        .map_err(|e| TrainError::config("<config>", format!("cannot write as TOML: {e}")))?;
    let mut given = match file {
        None => toml::Table::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
            let t: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| TrainError::format(path, e.to_string()))?;
            check_keys(&t, Some(path), keys)?;
            t
        }
    };
    check_keys(&overrides, None, keys)?;
    given.extend(overrides);
    let mut table = defaults.clone();
    table.extend(given.clone());
    match toml::Value::Table(table).try_into() {
        Ok(c) => Ok(c),
        Err(e) => {
            // Name the key whose value does not fit: the first one that fails on its own.
            let e: toml::de::Error = e;
            let bad = given.iter().find(|(k, v)| {
                let mut one = defaults.clone();
                one.insert((*k).clone(), (*v).clone());
                toml::Value::Table(one).try_into::<T>().is_err()
            });
            let key = bad
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| "<config>".into());
            Err(TrainError::config(
                key,
                format!(
                    "{} (from {})",
                    e.message(),
                    file.map(|f| f.display().to_string())
                        .unwrap_or_else(|| "the command line".into())
                ),
            ))
        }
    }
}

/// `e` with the config file named when it is about a key set there (not by a flag): a value that
/// parses but fails validation (`batch_size = 0`) is then traced to its file like a syntax error.
pub fn name_config_file(e: TrainError, file: Option<&Path>, flags: &[String]) -> TrainError {
    let (TrainError::Config { key, msg }, Some(path)) = (&e, file) else {
        return e;
    };
    let in_file = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key(key));
    if !in_file || flags.contains(key) || msg.contains("(from ") {
        return e;
    }
    TrainError::Config {
        key: key.clone(),
        msg: format!("{msg} (from {})", path.display()),
    }
}

/// Writes `cfg` as `config.toml` into `dir` (temporary name, then rename).
pub fn write_config<T: Serialize>(cfg: &T, dir: &Path) -> Result<PathBuf> {
    let text = toml::to_string_pretty(cfg)
        .map_err(|e| TrainError::config("<config>", format!("cannot write as TOML: {e}")))?;
    let path = dir.join("config.toml");
    tempering_model::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// The path of a run directory's `config.toml`, or the error saying there is no run to resume.
pub fn run_config_path(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("config.toml");
    if !path.is_file() {
        return Err(TrainError::NoCheckpoint {
            dir: dir.to_path_buf(),
        });
    }
    Ok(path)
}

impl SftConfig {
    /// Defaults, then the TOML file's keys, then `overrides` (the command line's), validated.
    pub fn resolve(file: Option<&Path>, overrides: toml::Table) -> Result<Self> {
        let flags: Vec<String> = overrides.keys().cloned().collect();
        let cfg: SftConfig = resolve_keys(file, overrides, &sft_keys())?;
        cfg.validate()
            .map_err(|e| name_config_file(e, file, &flags))?;
        Ok(cfg)
    }

    /// Checks every value that can be checked without touching files.
    pub fn validate(&self) -> Result<()> {
        self.train.validate(self.max_length)?;
        self.lora.validate()
    }

    pub fn train_config(&self) -> TrainConfig {
        self.train.train_config()
    }

    pub fn data_options(&self) -> SftDataOptions {
        SftDataOptions {
            max_length: self.max_length,
            completion_only_loss: self.completion_only_loss,
            packing: self.packing,
        }
    }

    /// The LoRA configuration, or `None` for full fine-tuning (`lora_r = 0`).
    pub fn lora(&self) -> Result<Option<LoraConfig>> {
        self.lora.config()
    }

    /// The resolved config as TOML (what `config.toml` in the run directory holds).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| TrainError::config("<config>", format!("cannot write as TOML: {e}")))
    }

    /// Writes `config.toml` into `dir` (temporary name, then rename).
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        write_config(self, dir)
    }

    /// Reads a run directory's `config.toml` (as written by [`SftConfig::write`]).
    pub fn read_run(dir: &Path) -> Result<Self> {
        Self::resolve(Some(&run_config_path(dir)?), toml::Table::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_a_known_key_and_round_trips() {
        let cfg = SftConfig {
            model: Some("m".into()),
            data: Some("d.jsonl".into()),
            eval_data: Some("e.jsonl".into()),
            output: Some("runs/x".into()),
            lora: LoraKeys {
                lora_r: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let text = cfg.to_toml().unwrap();
        let table: toml::Table = text.parse().unwrap();
        let mut keys: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
        let mut known = sft_keys();
        keys.sort();
        known.sort();
        assert_eq!(keys, known);
        let back = SftConfig::resolve(None, table).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn unknown_key_suggests_the_nearest() {
        let mut t = toml::Table::new();
        t.insert("learnig_rate".into(), toml::Value::Float(1e-4));
        let err = SftConfig::resolve(None, t).unwrap_err().to_string();
        assert!(err.contains("unknown config key `learnig_rate`"), "{err}");
        assert!(err.contains("did you mean `learning_rate`"), "{err}");
        assert_eq!(nearest_key("batch-size").as_deref(), Some("batch_size"));
        assert_eq!(nearest_key("zzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (key, value, expect) in [
            ("learning_rate", toml::Value::Float(0.0), "learning_rate"),
            ("learning_rate", toml::Value::Float(-1e-3), "learning_rate"),
            ("batch_size", toml::Value::Integer(0), "batch_size"),
            (
                "lora_targets",
                toml::Value::String("q,x".into()),
                "lora_targets",
            ),
            (
                "lr_scheduler",
                toml::Value::String("exp".into()),
                "lr_scheduler",
            ),
        ] {
            let mut t = toml::Table::new();
            t.insert(key.into(), value);
            if key == "lora_targets" {
                t.insert("lora_r".into(), toml::Value::Integer(8));
            }
            let err = SftConfig::resolve(None, t).unwrap_err().to_string();
            assert!(err.contains(expect), "{key}: {err}");
        }
    }
}
