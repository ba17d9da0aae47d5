//! The run lifecycle every training command shares: the command line's keys as config overrides,
//! the run directory (a new one, refusing one that holds a run; or `--resume`, which takes no other
//! flag), required keys, the policy to train (full or LoRA) with its reference, and writing the
//! final adapter or model into place. Holds no algorithm and no command's flags.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Var};
use serde::Serialize;
use tempering_model::loader::save_hf_dir;
use tempering_model::{save_peft, LoraConfig, LoraTarget, ModelFiles, Transformer};
use tempering_train::checkpoint;
use tempering_train::run_lock::RunLock;

/// The command line's keys, for the config resolver.
pub(crate) fn flag_table<T: Serialize>(a: &T) -> Result<toml::Table> {
    toml::Table::try_from(a).context("reading the command-line flags")
}

/// A new run's directory, refusing one that already holds a run; or, with `--resume`, the run to
/// continue (which takes no other flags).
pub(crate) fn run_dir(
    resume: Option<&Path>,
    cli: &toml::Table,
    config_file: bool,
    output: Option<&Path>,
) -> Result<(PathBuf, bool, RunLock)> {
    if let Some(dir) = resume {
        refuse_flags_with_resume(dir, cli, config_file)?;
        let lock = RunLock::acquire(dir)?;
        checkpoint::latest(dir)?;
        return Ok((dir.to_path_buf(), true, lock));
    }
    let out = output.context("`output` is not set: give --output or put it in --config")?;
    let lock = RunLock::acquire(out)?;
    checkpoint::check_new_run(out)?;
    Ok((out.to_path_buf(), false, lock))
}

/// `--resume` continues a run with its saved config: any other flag, or `--config`, is an error.
pub(crate) fn refuse_flags_with_resume(
    dir: &Path,
    cli: &toml::Table,
    config_file: bool,
) -> Result<()> {
    if !cli.is_empty() || config_file {
        let keys: Vec<&String> = cli.keys().collect();
        bail!(
            "--resume continues {} with its saved config.toml; remove {}",
            dir.display(),
            if config_file {
                "--config".to_string()
            } else {
                format!("{keys:?}")
            }
        );
    }
    Ok(())
}

pub(crate) fn required<'a>(v: &'a Option<PathBuf>, key: &str) -> Result<&'a Path> {
    v.as_deref().with_context(|| {
        format!(
            "`{key}` is not set: give --{} or put it in --config",
            key.replace('_', "-")
        )
    })
}

/// Writes the final model through a temporary directory renamed into place.
pub(crate) fn write_final(out: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = out.parent().unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = parent.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    write(&tmp)?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))
}

/// Writes the trained policy into `run_dir`: a PEFT adapter (`adapter/`, naming `base`) when it
/// was trained with LoRA, else the whole model (`model/`, with the tokenizer and chat template
/// of `files`). Returns the directory written.
pub(crate) fn save_policy(
    run_dir: &Path,
    policy: &Transformer,
    lora: bool,
    base: &Path,
    files: &ModelFiles,
    dtype: DType,
) -> Result<PathBuf> {
    if lora {
        let out = run_dir.join("adapter");
        let base = base.display().to_string();
        write_final(&out, |tmp| Ok(save_peft(tmp, policy, &base)?))?;
        Ok(out)
    } else {
        let out = run_dir.join("model");
        write_final(&out, |tmp| {
            Ok(save_hf_dir(
                tmp,
                policy,
                files.tokenizer.as_ref(),
                files.chat_template.as_ref(),
                dtype,
            )?)
        })?;
        Ok(out)
    }
}

/// The LoRA config of `lora_r` (0: none, full fine-tuning), without dropout.
pub(crate) fn lora_config(lora_r: usize, alpha: f64, targets: &str) -> Result<Option<LoraConfig>> {
    if lora_r == 0 {
        return Ok(None);
    }
    Ok(Some(LoraConfig::new(
        lora_r,
        alpha,
        0.0,
        LoraTarget::parse_list(targets)?,
    )))
}

/// A policy, its trainable weights and its reference (`None`: the policy with adapters off).
pub(crate) type TrainablePolicy = (Transformer, Vec<(String, Var)>, Option<Transformer>);

/// The policy to train (a copy of `base`), its trainable weights and its reference: LoRA adapters
/// with no reference (the policy with adapters off is one), or every weight with `base` frozen as
/// the reference.
pub(crate) fn trainable_policy(
    base: Transformer,
    lora: Option<&LoraConfig>,
    seed: u64,
) -> Result<TrainablePolicy> {
    let mut policy = base.clone();
    Ok(match lora {
        Some(l) => {
            let params = policy.add_lora(l, seed)?;
            (policy, params, None)
        }
        None => {
            let params = policy.make_trainable(|_| true)?;
            (policy, params, Some(base))
        }
    })
}
