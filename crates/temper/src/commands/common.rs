//! The run lifecycle every training command shares: the command line's keys as config overrides,
//! the run's config and directory (a new one, refusing one that holds a run; or `--resume`, which
//! takes no other flag), required keys, the device, the trainer (new or resumed), the policy to
//! train (full or LoRA) with its reference, writing the final adapter or model into place, and the
//! closing line. Holds no algorithm and no command's flags.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Var};
use serde::Serialize;
use tempering_model::loader::save_hf_dir;
use tempering_model::{save_peft, LoraConfig, LoraTarget, ModelFiles, Transformer};
use tempering_train::run_lock::RunLock;
use tempering_train::{checkpoint, FitSummary, TrainConfig, Trainer};

use super::train_flags::RunControl;
use crate::device::device_and_dtype;

/// The command line's keys, for the config resolver.
pub(crate) fn flag_table<T: Serialize>(a: &T) -> Result<toml::Table> {
    toml::Table::try_from(a).context("reading the command-line flags")
}

/// The run's config, directory, lock and whether it resumes: with `--resume`, the saved config of
/// the run it names (`read_saved`; no other flag may be given); else a new run's config from
/// `--config` and the flags (`resolve`), in the directory its `output` names (refused when it
/// already holds a run).
pub(crate) fn open_run<C>(
    control: &RunControl,
    cli: toml::Table,
    resolve: impl FnOnce(Option<&Path>, toml::Table) -> Result<C>,
    read_saved: impl FnOnce(&Path) -> Result<C>,
    output: impl FnOnce(&C) -> Option<&Path>,
) -> Result<(C, PathBuf, bool, RunLock)> {
    if let Some(dir) = &control.resume {
        let (run, resume, lock) = run_dir(Some(dir), &cli, control.config.is_some(), None)?;
        return Ok((read_saved(&run)?, run, resume, lock));
    }
    let cfg = resolve(control.config.as_deref(), cli)?;
    let (run, resume, lock) = run_dir(None, &toml::Table::new(), false, output(&cfg))?;
    Ok((cfg, run, resume, lock))
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

/// The device and dtype of a config's `device` and `dtype` keys (an empty `dtype`: the device's
/// default).
pub(crate) fn device_of(device: &str, dtype: &str) -> Result<(Device, DType)> {
    device_and_dtype(device, (!dtype.is_empty()).then_some(dtype))
}

/// The trainer of an offline run: restored from the run's last checkpoint when it resumes, else a
/// new one, after which `write_config` saves the run's resolved `config.toml`.
pub(crate) fn start_trainer(
    tc: TrainConfig,
    vars: Vec<(String, Var)>,
    run_dir: &Path,
    resume: bool,
    write_config: impl FnOnce(&Path) -> Result<PathBuf>,
) -> Result<Trainer> {
    if resume {
        return Ok(Trainer::resume(tc, vars, run_dir)?);
    }
    let t = Trainer::new(tc, vars, run_dir)?;
    write_config(run_dir)?;
    Ok(t)
}

/// `LoRA: N trainable parameters in K tensors` (or `full fine-tuning: ...`).
pub(crate) fn trainable_summary(lora: bool, vars: &[(String, Var)]) -> String {
    let n: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    format!(
        "{}: {n} trainable parameters in {} tensors",
        if lora { "LoRA" } else { "full fine-tuning" },
        vars.len()
    )
}

/// The closing line of an offline training run.
pub(crate) fn report_done(summary: &FitSummary, written: &Path) {
    eprintln!(
        "done: {} steps, last loss {}{}; {} written",
        summary.steps,
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary
            .last_eval_loss
            .map_or(String::new(), |l| format!(", eval loss {l:.4}")),
        written.display()
    );
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

/// Test support: the config keys `cmd`'s long flags stand for (`--learning-rate` is
/// `learning_rate`), asserting that each of `keys` is one of them.
#[cfg(test)]
pub(crate) fn flags_covering(cmd: clap::Command, keys: &[&str]) -> Vec<String> {
    let flags: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(|s| s.replace('-', "_")))
        .collect();
    for key in keys {
        assert!(
            flags.iter().any(|f| f == key),
            "{}: no flag for config key `{key}`",
            cmd.get_name()
        );
    }
    flags
}
