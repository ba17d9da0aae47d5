//! `temper prm`: trains a process reward model on stepwise rows (`prompt`/`completions`/`labels`)
//! and writes it as an HF token-classification directory (`runs/x/model`, two labels, with its
//! `step_separator` in `config.json`). Holds no training logic.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use serde_json::json;
use tempering_model::{save_classifier, ClassifierSave, HeadKind};
use tempering_train::prm::{load_step_sequences, StepDataOptions};
use tempering_train::{PrmConfig, PrmObjective, Trainer};

use super::common::{flag_table, required, run_dir, write_final};
use super::rm::open_with_head;
use super::train_flags::TrainFlags;
use crate::device::device_and_dtype;

/// Every config key is also a flag; flags win over the file.
#[derive(Args, Serialize, Default, Debug)]
pub struct PrmArgs {
    /// A TOML file with any of the config keys (unknown keys are an error).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint, with its saved config.
    #[arg(long)]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    #[serde(skip)]
    pub quiet: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainFlags,
    /// Written after every step; each step's label is read at its last token (default: newline).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_separator: Option<String>,
    /// Train on the last step's label only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_on_last_step_only: Option<bool>,
}

pub fn prm(a: PrmArgs) -> Result<()> {
    let cli = flag_table(&a)?;
    let (cfg, run_dir, resume, _lock) = match &a.resume {
        Some(dir) => {
            let (d, r, l) = run_dir(Some(dir), &cli, a.config.is_some(), None)?;
            (PrmConfig::read_run(&d)?, d, r, l)
        }
        None => {
            let cfg = PrmConfig::resolve(a.config.as_deref(), cli.clone())?;
            let (d, r, l) = run_dir(None, &cli, false, cfg.output.as_deref())?;
            (cfg, d, r, l)
        }
    };
    let model_path = required(&cfg.model, "model")?;
    let data_path = required(&cfg.data, "data")?;
    let dtype = (!cfg.dtype.is_empty()).then_some(cfg.dtype.as_str());
    let (device, dtype) = device_and_dtype(&cfg.device, dtype)?;
    let mut s = open_with_head(
        model_path,
        HeadKind::Token,
        2,
        cfg.train.step.seed,
        dtype,
        &device,
    )?;
    let opts = StepDataOptions {
        max_length: cfg.max_length,
        separator: cfg.step_separator.clone(),
        last_step_only: cfg.train_on_last_step_only,
    };
    let load = |p: &Path| -> Result<_> {
        let (seqs, r) = load_step_sequences(p, &s.tokenizer, &opts)?;
        eprintln!(
            "{}: {} rows -> {} labelled steps ({} correct); {} cut at max_length {}, {} dropped",
            p.display(),
            r.rows,
            r.steps,
            r.positive,
            r.truncated,
            cfg.max_length,
            r.dropped
        );
        Ok(seqs)
    };
    let train = load(data_path)?;
    let eval = cfg.eval_data.as_deref().map(load).transpose()?;

    let mut vars = s.model.make_trainable(|_| true)?;
    vars.extend(s.head.make_trainable()?);
    let mut tc = cfg.train.train_config();
    tc.progress = !a.quiet;
    let mut trainer = if resume {
        Trainer::resume(tc, vars, &run_dir)?
    } else {
        let t = Trainer::new(tc, vars, &run_dir)?;
        cfg.write(&run_dir)?;
        t
    };
    let pad = s.tokenizer.pad_id();
    let mut objective = PrmObjective::new(s.model.clone(), s.head.clone(), pad);
    let summary = trainer.fit(&mut objective, &train, eval.as_deref())?;
    let out = run_dir.join("model");
    let mut extra = serde_json::Map::new();
    extra.insert("step_separator".into(), json!(cfg.step_separator));
    write_final(&out, |tmp| {
        Ok(save_classifier(
            tmp,
            objective.model(),
            objective.head(),
            &ClassifierSave {
                kind: HeadKind::Token,
                label_names: &[],
                tokenizer: Some(&s.tokenizer),
                chat_template: s.template.as_ref(),
                extra_config: extra,
                dtype,
            },
        )?)
    })?;
    eprintln!(
        "done: {} steps, last loss {}{}; {} written",
        summary.steps,
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary
            .last_eval_loss
            .map_or(String::new(), |l| format!(", eval loss {l:.4}")),
        out.display()
    );
    Ok(())
}
