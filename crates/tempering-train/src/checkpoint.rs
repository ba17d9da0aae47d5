//! Checkpoints: everything a run needs to continue exactly (trainable weights, optimiser moments,
//! step, data position, RNG state), written into a temporary directory and renamed, so a kill at any
//! moment leaves the previous checkpoint intact. Knows files and tensors; nothing of objectives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::DataPosition;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::rng::Rng;

const STATE: &str = "state.json";
const PARAMS: &str = "params.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";

/// The scalar part of a checkpoint (`state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: usize,
    pub data: DataPosition,
    pub rng: Rng,
    /// AdamW's step counter (bias corrections).
    pub optimizer_steps: u64,
    /// Tokens processed so far.
    pub tokens_seen: u64,
    /// State of the algorithm driving the trainer (online RL: rollout counter, monitors); `Null`
    /// for offline objectives.
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// `run_dir/checkpoints`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_dir(run_dir: &Path, step: usize) -> PathBuf {
    checkpoints_dir(run_dir).join(format!("step-{step:07}"))
}

/// Complete checkpoints under `run_dir`, oldest first.
pub fn list(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(checkpoints_dir(run_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<(usize, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<usize>().ok()?;
            e.path().join(STATE).is_file().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// What a run writes into its directory before its first checkpoint: the config (`config.json`
/// for ppo and trpo), the metrics, the lock and `checkpoints/` (with at most a partial `.tmp-*`).
const BEFORE_FIRST_CHECKPOINT: &[&str] = &[
    "config.toml",
    "config.json",
    "metrics.jsonl",
    crate::run_lock::LOCK_FILE,
    "checkpoints",
];

/// Checks that a new run may start in `run_dir`, which the caller has locked
/// ([`crate::run_lock::RunLock`]). A directory holding a run (a checkpoint, a final model, or any
/// file a run does not write) is refused ([`TrainError::RunExists`]). One whose run stopped before
/// its first checkpoint (killed, or out of disk: a config and nothing to resume from) is taken over
/// with a warning; the new run rewrites its config and metrics.
pub fn check_new_run(run_dir: &Path) -> Result<()> {
    let exists = || TrainError::RunExists {
        dir: run_dir.to_path_buf(),
    };
    let entries: Vec<String> = std::fs::read_dir(run_dir)
        .map_err(|e| TrainError::io(run_dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    let started = entries
        .iter()
        .any(|n| n == "config.toml" || n == "config.json");
    if !started {
        // A new or empty directory; other files there are the user's business, as before.
        return if list(run_dir).is_empty() {
            Ok(())
        } else {
            Err(exists())
        };
    }
    let only_run_files = entries
        .iter()
        .all(|n| BEFORE_FIRST_CHECKPOINT.contains(&n.as_str()) || is_interrupted_write(n));
    let partial_checkpoints_only = std::fs::read_dir(checkpoints_dir(run_dir))
        .map(|d| {
            d.flatten()
                .all(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        })
        .unwrap_or(true);
    if !only_run_files || !partial_checkpoints_only {
        return Err(exists());
    }
    eprintln!(
        "warning: {}: the run started here stopped before its first checkpoint (nothing to \
         resume); starting afresh",
        run_dir.display()
    );
    for leftover in entries.iter().filter(|n| is_interrupted_write(n)) {
        let path = run_dir.join(leftover);
        std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, e))?;
    }
    Ok(())
}

/// Whether `entry` is what a killed process left of an atomic write of a run file
/// (`tempering_model::write_atomic` writes `.NAME.tmpPID` and renames it over `NAME`).
fn is_interrupted_write(entry: &str) -> bool {
    let Some(rest) = entry.strip_prefix('.') else {
        return false;
    };
    BEFORE_FIRST_CHECKPOINT.iter().any(|name| {
        rest.strip_prefix(name)
            .and_then(|r| r.strip_prefix(".tmp"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The newest complete checkpoint, or an error naming the run directory.
pub fn latest(run_dir: &Path) -> Result<PathBuf> {
    list(run_dir)
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| TrainError::NoCheckpoint {
            dir: run_dir.to_path_buf(),
        })
}

/// Writes a checkpoint for `state.step` and keeps only the newest `keep` (at least one). The files
/// go to a temporary directory renamed into place once complete; if writing fails (a full disk, a
/// file-size limit, an unwritable directory) the partial directory is removed and the older
/// checkpoints are left as they were.
pub fn save(run_dir: &Path, state: &TrainState, opt: &AdamW, keep: usize) -> Result<PathBuf> {
    let final_dir = step_dir(run_dir, state.step);
    let tmp = checkpoints_dir(run_dir).join(format!(".tmp-step-{:07}", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    if let Err(e) = write_files(&tmp, state, opt) {
        let _ = std::fs::remove_dir_all(&tmp);
        let kept = list(run_dir)
            .pop()
            .map(|(_, p)| format!("the last complete checkpoint, {}, is kept", p.display()))
            .unwrap_or_else(|| "no earlier checkpoint".into());
        return Err(TrainError::CheckpointWrite {
            step: state.step,
            msg: format!("{e}; {kept}"),
        });
    }

    // Replace an older checkpoint of the same step (a re-run) only once the new one is complete.
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;

    let all = list(run_dir);
    let excess = all.len().saturating_sub(keep.max(1));
    for (_, old) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(final_dir)
}

/// The checkpoint's files in `tmp` (created).
fn write_files(tmp: &Path, state: &TrainState, opt: &AdamW) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| TrainError::io(tmp, e))?;
    let cpu = Device::Cpu;
    let mut params: HashMap<String, Tensor> = HashMap::new();
    let mut moments: HashMap<String, Tensor> = HashMap::new();
    for (i, p) in opt.params().iter().enumerate() {
        params.insert(p.name.clone(), p.var.as_tensor().to_device(&cpu)?);
        let (m, v) = opt.moments(i)?;
        moments.insert(format!("{}.exp_avg", p.name), m);
        moments.insert(format!("{}.exp_avg_sq", p.name), v);
    }
    let path = tmp.join(PARAMS);
    candle_core::safetensors::save(&params, &path)
        .map_err(|e| TrainError::format(&path, e.to_string()))?;
    let path = tmp.join(OPTIMIZER);
    candle_core::safetensors::save(&moments, &path)
        .map_err(|e| TrainError::format(&path, e.to_string()))?;
    let path = tmp.join(STATE);
    let text = serde_json::to_string_pretty(state)
        .map_err(|e| TrainError::format(&path, e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
}

/// Reads the checkpoint in `dir` into `opt` (weights and moments) and returns its state. Every
/// trainable parameter must be present with the same shape.
pub fn load(dir: &Path, opt: &mut AdamW) -> Result<TrainState> {
    let path = dir.join(STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| TrainError::format(&path, format!("not a checkpoint state: {e}")))?;
    let cpu = Device::Cpu;
    let ppath = dir.join(PARAMS);
    let params = candle_core::safetensors::load(&ppath, &cpu)
        .map_err(|e| TrainError::format(&ppath, e.to_string()))?;
    let opath = dir.join(OPTIMIZER);
    let moments = candle_core::safetensors::load(&opath, &cpu)
        .map_err(|e| TrainError::format(&opath, e.to_string()))?;
    let mismatch = |path: &Path, msg: String| TrainError::CheckpointMismatch {
        path: path.to_path_buf(),
        msg,
    };
    if params.len() != opt.params().len() {
        return Err(mismatch(
            &ppath,
            format!(
                "it holds {} trainable tensors, the model has {}",
                params.len(),
                opt.params().len()
            ),
        ));
    }
    for i in 0..opt.params().len() {
        let p = &opt.params()[i];
        let name = p.name.clone();
        let w = params
            .get(&name)
            .ok_or_else(|| mismatch(&ppath, format!("no tensor `{name}`")))?;
        if w.dims() != p.var.dims() {
            return Err(mismatch(
                &ppath,
                format!(
                    "`{name}` has shape {:?}, expected {:?}",
                    w.dims(),
                    p.var.dims()
                ),
            ));
        }
        p.var
            .set(&w.to_dtype(p.var.dtype())?.to_device(p.var.device())?)?;
        let get = |suffix: &str| {
            moments
                .get(&format!("{name}.{suffix}"))
                .ok_or_else(|| mismatch(&opath, format!("no tensor `{name}.{suffix}`")))
        };
        let (m, v) = (get("exp_avg")?.clone(), get("exp_avg_sq")?.clone());
        opt.set_moments(i, &m, &v)?;
    }
    opt.steps = state.optimizer_steps;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_killed_before_its_first_checkpoint_is_taken_over_and_others_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path();
        // Empty, or files of the user's own: a new run may start.
        check_new_run(run).unwrap();
        // Killed before its first checkpoint: a config, metrics, a partial checkpoint.
        std::fs::write(run.join("config.toml"), "max_steps = 3\n").unwrap();
        std::fs::write(run.join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
        std::fs::create_dir_all(checkpoints_dir(run).join(".tmp-step-0000002")).unwrap();
        // Killed while writing its config atomically: the temporary file is left beside it.
        std::fs::write(run.join(".config.toml.tmp4000000"), "max_st").unwrap();
        check_new_run(run).unwrap();
        assert!(!run.join(".config.toml.tmp4000000").exists());
        assert!(is_interrupted_write(".metrics.jsonl.tmp12"));
        assert!(!is_interrupted_write(".notes.txt.tmp12"));
        assert!(!is_interrupted_write(".config.toml.tmp"));
        // A complete checkpoint: refused.
        std::fs::create_dir_all(step_dir(run, 2)).unwrap();
        std::fs::write(step_dir(run, 2).join(STATE), "{}").unwrap();
        let err = check_new_run(run).unwrap_err().to_string();
        assert!(err.contains("already holds a run"), "{err}");
        std::fs::remove_dir_all(step_dir(run, 2)).unwrap();
        check_new_run(run).unwrap();
        // A final model, or a file no run writes (a model directory chosen by mistake): refused.
        for extra in ["model", "tokenizer.json"] {
            std::fs::create_dir_all(run.join(extra)).unwrap();
            assert!(matches!(
                check_new_run(run),
                Err(TrainError::RunExists { .. })
            ));
            std::fs::remove_dir_all(run.join(extra)).unwrap();
        }
    }
}
