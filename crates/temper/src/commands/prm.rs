//! `temper prm`: trains a process reward model on stepwise rows (`prompt`/`completions`/`labels`)
//! and writes it as an HF token-classification directory (`runs/x/model`, two labels, with its
//! `step_separator` in `config.json`). Holds no training logic.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use serde_json::json;
use tempering_model::HeadKind;
use tempering_train::prm::{load_step_sequences, StepDataOptions};
use tempering_train::{PrmConfig, PrmObjective};

use super::common::{flag_table, open_run, report_done, required};
use super::rm::{open_scored, save_scored, scored_trainer, ScoreTrainFlags};
use super::train_flags::RunControl;

/// Every config key is also a flag; flags win over the file.
#[derive(Args, Serialize, Default, Debug)]
pub struct PrmArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub control: RunControl,
    #[command(flatten)]
    #[serde(flatten)]
    pub common: ScoreTrainFlags,
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
    let (cfg, run_dir, resume, _lock) = open_run(
        &a.control,
        flag_table(&a)?,
        |file, cli| Ok(PrmConfig::resolve(file, cli)?),
        |dir| Ok(PrmConfig::read_run(dir)?),
        |cfg| cfg.output.as_deref(),
    )?;
    let model_path = required(&cfg.model, "model")?;
    let data_path = required(&cfg.data, "data")?;
    let (mut s, dtype) = open_scored(
        model_path,
        (&cfg.device, &cfg.dtype),
        HeadKind::Token,
        2,
        cfg.train.step.seed,
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

    let tc = cfg.train.train_config();
    let mut trainer = scored_trainer(&mut s, tc, a.control.quiet, (&run_dir, resume), |d| {
        Ok(cfg.write(d)?)
    })?;
    let pad = s.tokenizer.pad_id();
    let mut objective = PrmObjective::new(s.model.clone(), s.head.clone(), pad);
    let summary = trainer.fit(&mut objective, &train, eval.as_deref())?;
    let mut extra = serde_json::Map::new();
    extra.insert("step_separator".into(), json!(cfg.step_separator));
    let written = save_scored(
        &run_dir,
        (objective.model(), objective.head()),
        &s,
        HeadKind::Token,
        extra,
        dtype,
    )?;
    report_done(&summary, &written);
    Ok(())
}
