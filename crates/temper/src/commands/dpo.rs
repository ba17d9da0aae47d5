//! `temper dpo` and `temper kto`: offline preference optimisation, full or LoRA, with the run directory
//! conventions of `temper sft` (resolved `config.toml`, `metrics.jsonl`, checkpoints, `--resume`).
//! Resolves the config, prepares the data, builds the reference (adapters off with LoRA, a frozen
//! copy or `--ref-model` otherwise, or log-probs precomputed once), hands the objective to the
//! trainer and writes the final adapter or model. Holds no training logic.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use serde::Serialize;
use tempering_model::{ModelFiles, Transformer};
use tempering_train::dpo::{
    load_pairs, load_unpaired, DpoObjective, KtoObjective, PreferenceConfig, PreferenceDataOptions,
    PreferenceKind, PreferenceObjective, PreferenceReport, Reference,
};

use super::common::{
    device_of, flag_table, open_run, report_done, required, save_policy, start_trainer,
    trainable_summary,
};
use super::train_flags::{DeviceFlags, LoraFlags, RunControl, RunPathFlags, TrainFlags};

/// Every config key is also a flag (`beta` is `--beta`); flags win over the file.
#[derive(Args, Serialize, Default, Debug)]
pub struct PreferenceArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub control: RunControl,

    /// The policy to start from (usually the SFT model): an HF directory or a GGUF file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// Reference model for full fine-tuning (default: a frozen copy of --model).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_model: Option<PathBuf>,
    /// Training data: prompt/chosen/rejected (dpo) or prompt/completion/label (kto); JSONL or Parquet.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub paths: RunPathFlags,

    /// sigmoid, ipo, hinge, robust, simpo or orpo (dpo); kto (kto).
    #[arg(long, visible_alias = "loss")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_type: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// Probability of a flipped label (robust; SimPO's conservative form).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_smoothing: Option<f64>,
    /// SimPO's target reward margin.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simpo_gamma: Option<f64>,
    /// Weight of an NLL term on the chosen completions (RPO); 0: off.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_alpha: Option<f64>,
    /// KTO: weight of the desirable examples' loss.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desirable_weight: Option<f64>,
    /// KTO: weight of the undesirable examples' loss.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undesirable_weight: Option<f64>,
    /// Compute the reference log-probs once before training.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precompute_ref: Option<bool>,

    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainFlags,

    /// Prompt plus completion, in tokens: prompts lose their first tokens, completions are never cut
    /// (rows whose completion cannot fit are dropped and reported).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// Prompts longer than this lose their first tokens (0: no separate limit).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prompt_length: Option<u64>,

    #[command(flatten)]
    #[serde(flatten)]
    pub lora: LoraFlags,

    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceFlags,
}

fn print_report(what: &Path, r: &PreferenceReport, opts: &PreferenceDataOptions) {
    eprintln!("{}", r.summary(what, opts));
}

/// The training set and the evaluation set (if any), each read by `load` and its report printed.
fn load_sets<T>(
    data: &Path,
    eval_data: Option<&Path>,
    opts: &PreferenceDataOptions,
    load: impl Fn(&Path) -> Result<(Vec<T>, PreferenceReport)>,
) -> Result<(Vec<T>, Option<Vec<T>>)> {
    let (train, report) = load(data)?;
    print_report(data, &report, opts);
    let eval = match eval_data {
        Some(p) => {
            let (e, r) = load(p)?;
            print_report(p, &r, opts);
            Some(e)
        }
        None => None,
    };
    Ok((train, eval))
}

/// The training set and any evaluation set, for precomputing their reference log-probs.
fn all_sets<'a, T>(train: &'a mut [T], eval: &'a mut Option<Vec<T>>) -> Vec<&'a mut [T]> {
    let mut sets = vec![train];
    if let Some(e) = eval.as_mut() {
        sets.push(e.as_mut_slice());
    }
    sets
}

/// The policy with its trainable `Var`s, and the frozen model full fine-tuning compares against.
struct Policy {
    model: Transformer,
    vars: Vec<(String, candle_core::Var)>,
    frozen_reference: Option<Transformer>,
}

fn policy(
    cfg: &PreferenceConfig,
    files: &ModelFiles,
    needs_reference: bool,
    (device, dtype): (&Device, DType),
) -> Result<Policy> {
    let mut model = files.transformer()?;
    let lora = cfg.lora()?;
    let frozen_reference = match (&lora, needs_reference, &cfg.ref_model) {
        (_, false, _) => None,
        (Some(_), true, None) => None,
        (_, true, Some(path)) => Some(
            ModelFiles::open(path, dtype, device)
                .and_then(|f| f.transformer())
                .with_context(|| format!("opening the reference model {}", path.display()))?,
        ),
        // Taken before the weights become Vars: make_trainable copies them, so this keeps the
        // original values.
        (None, true, None) => Some(model.clone()),
    };
    let vars = match &lora {
        Some(l) => model.add_lora(l, cfg.train.step.seed)?,
        None => model.make_trainable(|_| true)?,
    };
    eprintln!(
        "{}; reference: {}",
        trainable_summary(lora.is_some(), &vars),
        match (&frozen_reference, needs_reference, lora.is_some()) {
            (_, false, _) => "none (reference-free loss)",
            (None, true, true) => "the base model, adapters off",
            (Some(_), true, _) if cfg.ref_model.is_some() => "--ref-model",
            _ => "a frozen copy of --model",
        }
    );
    Ok(Policy {
        model,
        vars,
        frozen_reference,
    })
}

/// `temper dpo` (`kind` paired) and `temper kto` (unpaired).
pub fn run(a: PreferenceArgs, kind: PreferenceKind) -> Result<()> {
    let (cfg, run_dir, resume, _lock) = open_run(
        &a.control,
        flag_table(&a)?,
        |file, cli| Ok(PreferenceConfig::resolve(file, cli, kind)?),
        |dir| Ok(PreferenceConfig::read_run(dir, kind)?),
        |cfg| cfg.output.as_deref(),
    )?;
    let model_path = required(&cfg.model, "model")?;
    let data_path = required(&cfg.data, "data")?;
    let (device, dtype) = device_of(&cfg.device, &cfg.dtype)?;
    let files = ModelFiles::open(model_path, dtype, &device)
        .with_context(|| format!("opening the model {}", model_path.display()))?;
    let tokenizer = files.require_tokenizer()?;
    let template = files.chat_template.as_ref();
    let opts = cfg.data_options();
    let objective = cfg.objective()?;
    let needs_reference = match objective {
        PreferenceObjective::Paired(p) => p.loss.needs_reference(),
        PreferenceObjective::Kto(_) => true,
    };
    let Policy {
        model,
        vars,
        frozen_reference,
    } = policy(&cfg, &files, needs_reference, (&device, dtype))?;

    let mut tc = cfg.train_config();
    tc.progress = !a.control.quiet;
    let mut trainer = start_trainer(tc, vars, &run_dir, resume, |d| Ok(cfg.write(d)?))?;
    let pad = tokenizer.pad_id();
    let batch = cfg.train.eval_batch_size;

    let (summary, trained) = match objective {
        PreferenceObjective::Paired(params) => {
            let (mut train, mut eval) =
                load_sets(data_path, cfg.eval_data.as_deref(), &opts, |p| {
                    Ok(load_pairs(p, tokenizer, template, &opts)?)
                })?;
            let reference = Reference::for_policy(&params, &model, frozen_reference)?;
            let mut o = DpoObjective::new(model, reference, params, pad)?;
            if cfg.precompute_ref {
                o.precompute_reference(&mut all_sets(&mut train, &mut eval), batch)?;
            }
            let s = trainer.fit(&mut o, &train, eval.as_deref())?;
            (s, o.model().clone())
        }
        PreferenceObjective::Kto(params) => {
            let (mut train, mut eval) =
                load_sets(data_path, cfg.eval_data.as_deref(), &opts, |p| {
                    Ok(load_unpaired(p, tokenizer, template, &opts)?)
                })?;
            let reference = match frozen_reference {
                Some(m) => Reference::Model(Box::new(m)),
                None => Reference::Model(Box::new(model.without_adapters())),
            };
            let mut o = KtoObjective::new(model, reference, params, pad)?;
            if cfg.precompute_ref {
                o.precompute_reference(&mut all_sets(&mut train, &mut eval), batch)?;
            }
            let s = trainer.fit(&mut o, &train, eval.as_deref())?;
            (s, o.model().clone())
        }
    };
    let written = save_policy(
        &run_dir,
        &trained,
        cfg.lora.lora_r > 0,
        model_path,
        &files,
        dtype,
    )?;
    report_done(&summary, &written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: PreferenceArgs,
    }

    #[test]
    fn every_config_key_is_a_flag_and_loss_is_an_alias() {
        super::super::common::flags_covering(
            Cli::command(),
            &tempering_train::dpo::preference_keys(),
        );
        let cli = Cli::try_parse_from(["x", "--loss", "ipo", "--beta", "0.2", "--precompute-ref"])
            .unwrap();
        let cfg = PreferenceConfig::resolve(
            None,
            toml::Table::try_from(&cli.a).unwrap(),
            PreferenceKind::Paired,
        )
        .unwrap();
        assert_eq!((cfg.loss_type.as_str(), cfg.beta), ("ipo", 0.2));
        assert!(cfg.precompute_ref);
    }
}
