//! `temper prm`: trains a process reward model on stepwise rows (`prompt`/`completions`/`labels`)
//! and writes it as an HF token-classification directory (`runs/x/model`, two labels, with its
//! `step_separator` in `config.json`); with `--implicit`, an implicit PRM: the causal LM trained
//! on the rows' outcomes against its starting model (or `--reference`), written as an HF causal-LM directory with
//! `implicit_prm.json` (the reference's path, `beta`, the separator). Holds no training logic.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use tempering_model::loader::save_hf_dir;
use tempering_model::{HeadKind, ModelFiles};
use tempering_reward::learned::ImplicitPrmSpec;
use tempering_train::implicit_prm::{
    load_outcome_sequences, precompute_reference, ImplicitPrmObjective,
};
use tempering_train::prm::{load_step_sequences, StepDataOptions};
use tempering_train::{PrmConfig, PrmObjective};

use super::common::{
    device_of, flag_table, open_run, report_done, required, start_trainer, write_final,
};
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
    /// An implicit PRM (Yuan et al. 2024): no score head; the model learns each row's outcome
    /// (its last label) as beta times its log-probability ratio to the starting model, and a
    /// step's score is that ratio summed up to the step. Data from `label-steps --labels outcome`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub implicit: Option<bool>,
    /// The implicit PRM's reward scale (default 0.05).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// The implicit PRM's reference (default: the starting model): with a model that knows more
    /// than the policy as --model and the policy as --reference, a step scores by how much
    /// likelier the stronger model finds it than the policy did.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<PathBuf>,
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
    if cfg.implicit {
        return implicit(&a, &cfg, model_path, data_path, (&run_dir, resume));
    }
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

/// `temper prm --implicit`: the causal LM trained on the rows' outcomes against a frozen copy of
/// itself (whose log-probs are computed once), saved with `implicit_prm.json`.
fn implicit(
    a: &PrmArgs,
    cfg: &PrmConfig,
    model_path: &Path,
    data_path: &Path,
    (run_dir, resume): (&Path, bool),
) -> Result<()> {
    let (device, dtype) = device_of(&cfg.device, &cfg.dtype)?;
    let files = ModelFiles::open(model_path, dtype, &device)
        .with_context(|| format!("opening the model {}", model_path.display()))?;
    let tokenizer = files
        .tokenizer
        .clone()
        .with_context(|| format!("{}: the model has no tokenizer", model_path.display()))?;
    let opts = StepDataOptions {
        max_length: cfg.max_length,
        separator: cfg.step_separator.clone(),
        last_step_only: true,
    };
    let pad = tokenizer.pad_id();
    // The reference: the starting model, or --reference (which must read the same tokens).
    let reference_path = cfg.reference.as_deref().unwrap_or(model_path);
    let reference = match &cfg.reference {
        None => files.transformer()?,
        Some(r) => {
            let rf = ModelFiles::open(r, dtype, &device)
                .with_context(|| format!("opening the reference {}", r.display()))?;
            let same = rf
                .tokenizer
                .as_ref()
                .is_some_and(|t| t.vocab_size() == tokenizer.vocab_size());
            if !same {
                bail!(
                    "the reference {} does not share the tokenizer of the model {} (an implicit \
                     PRM compares their log-probs token by token)",
                    r.display(),
                    model_path.display()
                );
            }
            rf.transformer()?
        }
    };
    let load = |p: &Path| -> Result<_> {
        let (mut seqs, r) = load_outcome_sequences(p, &tokenizer, &opts)?;
        eprintln!(
            "{}: {} rows -> {} solutions ({} correct); {} longer than max_length {} and {} \
             without a label dropped",
            p.display(),
            r.rows,
            r.steps,
            r.positive,
            r.truncated,
            cfg.max_length,
            r.dropped
        );
        precompute_reference(&reference, &mut seqs, cfg.train.batch_size.max(8), pad)?;
        Ok(seqs)
    };
    let train = load(data_path)?;
    let eval = cfg.eval_data.as_deref().map(load).transpose()?;
    let mut policy = match &cfg.reference {
        None => reference.clone(),
        Some(_) => files.transformer()?,
    };
    let vars = policy.make_trainable(|_| true)?;
    let mut tc = cfg.train.train_config();
    tc.progress = !a.control.quiet;
    let mut trainer = start_trainer(tc, vars, run_dir, resume, |d| Ok(cfg.write(d)?))?;
    let mut objective = ImplicitPrmObjective::new(policy, cfg.beta, pad)?;
    let summary = trainer.fit(&mut objective, &train, eval.as_deref())?;
    // The reference by absolute path: the PRM reads it wherever the PRM is used from.
    let reference_path = std::fs::canonicalize(reference_path)
        .with_context(|| format!("resolving {}", reference_path.display()))?;
    let spec = ImplicitPrmSpec {
        reference: reference_path,
        beta: cfg.beta,
        step_separator: cfg.step_separator.clone(),
    };
    let out = run_dir.join("model");
    write_final(&out, |tmp| {
        save_hf_dir(
            tmp,
            objective.model(),
            Some(&tokenizer),
            files.chat_template.as_ref(),
            dtype,
        )?;
        Ok(spec.write(tmp)?)
    })?;
    report_done(&summary, &out);
    Ok(())
}
