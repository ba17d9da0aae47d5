//! `temper dpo` and `temper kto`: offline preference optimisation, full or LoRA, with the run directory
//! conventions of `temper sft` (resolved `config.toml`, `metrics.jsonl`, checkpoints, `--resume`).
//! Resolves the config, prepares the data, builds the reference (adapters off with LoRA, a frozen
//! copy or `--ref-model` otherwise, or log-probs precomputed once), hands the objective to the
//! trainer and writes the final adapter or model. Holds no training logic.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use serde::Serialize;
use tempering_model::loader::save_hf_dir;
use tempering_model::{save_peft, ModelFiles, Transformer};
use tempering_train::dpo::{
    load_pairs, load_unpaired, DpoObjective, KtoObjective, PreferenceConfig, PreferenceDataOptions,
    PreferenceKind, PreferenceObjective, PreferenceReport, Reference,
};
use tempering_train::run_lock::RunLock;
use tempering_train::{checkpoint, Trainer};

use crate::commands::common::{required, write_final};
use crate::device::device_and_dtype;

/// Every config key is also a flag (`beta` is `--beta`); flags win over the file.
#[derive(Args, Serialize, Default, Debug)]
pub struct PreferenceArgs {
    /// A TOML file with any of the keys below (unknown keys are an error).
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
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_data: Option<PathBuf>,
    /// The run directory to create.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,

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

    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// constant, linear or cosine.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_scheduler: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u64>,
    /// Pairs (dpo) or examples (kto) per micro-batch.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_accum: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adam_beta1: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adam_beta2: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adam_eps: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_batch_size: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_every: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_checkpoints: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shuffle: Option<bool>,

    /// Prompt plus completion, in tokens: prompts lose their first tokens, completions are never cut
    /// (rows whose completion cannot fit are dropped and reported).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// Prompts longer than this lose their first tokens (0: no separate limit).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prompt_length: Option<u64>,

    /// LoRA rank (0: full fine-tuning).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_r: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_dropout: Option<f64>,
    /// q,k,v,o,gate,up,down or all.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_targets: Option<String>,

    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// f32, bf16 or f16.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}

/// The config of a new run or of the run being resumed, its directory, and whether it resumes.
fn resolve(
    a: &PreferenceArgs,
    kind: PreferenceKind,
) -> Result<(PreferenceConfig, PathBuf, bool, RunLock)> {
    let cli = toml::Table::try_from(a).context("reading the command-line flags")?;
    match &a.resume {
        Some(dir) => {
            if !cli.is_empty() || a.config.is_some() {
                let keys: Vec<&String> = cli.keys().collect();
                bail!(
                    "--resume continues {} with its saved config.toml; remove {}",
                    dir.display(),
                    if a.config.is_some() {
                        "--config".to_string()
                    } else {
                        format!("{keys:?}")
                    }
                );
            }
            let lock = RunLock::acquire(dir)?;
            checkpoint::latest(dir)?;
            Ok((
                PreferenceConfig::read_run(dir, kind)?,
                dir.clone(),
                true,
                lock,
            ))
        }
        None => {
            let cfg = PreferenceConfig::resolve(a.config.as_deref(), cli, kind)?;
            let out = required(&cfg.output, "output")?.to_path_buf();
            let lock = RunLock::acquire(&out)?;
            checkpoint::check_new_run(&out)?;
            Ok((cfg, out, false, lock))
        }
    }
}

fn print_report(what: &Path, r: &PreferenceReport, opts: &PreferenceDataOptions) {
    eprintln!("{}", r.summary(what, opts));
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
        Some(l) => model.add_lora(l, cfg.seed)?,
        None => model.make_trainable(|_| true)?,
    };
    let n: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    eprintln!(
        "{}: {n} trainable parameters in {} tensors; reference: {}",
        if lora.is_some() {
            "LoRA"
        } else {
            "full fine-tuning"
        },
        vars.len(),
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

/// Writes the trained adapter (LoRA) or model into the run directory.
fn save(
    cfg: &PreferenceConfig,
    run_dir: &Path,
    trained: &Transformer,
    files: &ModelFiles,
    dtype: DType,
) -> Result<PathBuf> {
    let model_path = required(&cfg.model, "model")?;
    let tokenizer = files.tokenizer.as_ref();
    let template = files.chat_template.as_ref();
    if cfg.lora_r > 0 {
        let out = run_dir.join("adapter");
        let base = model_path.display().to_string();
        write_final(&out, |tmp| Ok(save_peft(tmp, trained, &base)?))?;
        Ok(out)
    } else {
        let out = run_dir.join("model");
        write_final(&out, |tmp| {
            Ok(save_hf_dir(tmp, trained, tokenizer, template, dtype)?)
        })?;
        Ok(out)
    }
}

/// `temper dpo` (`kind` paired) and `temper kto` (unpaired).
pub fn run(a: PreferenceArgs, kind: PreferenceKind) -> Result<()> {
    let (cfg, run_dir, resume, _lock) = resolve(&a, kind)?;
    let model_path = required(&cfg.model, "model")?;
    let data_path = required(&cfg.data, "data")?;
    let dtype = (!cfg.dtype.is_empty()).then_some(cfg.dtype.as_str());
    let (device, dtype) = device_and_dtype(&cfg.device, dtype)?;
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
    tc.progress = !a.quiet;
    let mut trainer = if resume {
        Trainer::resume(tc, vars, &run_dir)?
    } else {
        let t = Trainer::new(tc, vars, &run_dir)?;
        cfg.write(&run_dir)?;
        t
    };
    let pad = tokenizer.pad_id();
    let batch = cfg.eval_batch_size;

    let (summary, trained) = match objective {
        PreferenceObjective::Paired(params) => {
            let (mut train, report) = load_pairs(data_path, tokenizer, template, &opts)?;
            print_report(data_path, &report, &opts);
            let mut eval = match &cfg.eval_data {
                Some(p) => {
                    let (e, r) = load_pairs(p, tokenizer, template, &opts)?;
                    print_report(p, &r, &opts);
                    Some(e)
                }
                None => None,
            };
            let reference = Reference::for_policy(&params, &model, frozen_reference)?;
            let mut o = DpoObjective::new(model, reference, params, pad)?;
            if cfg.precompute_ref {
                let mut sets: Vec<&mut [_]> = vec![&mut train];
                if let Some(e) = eval.as_mut() {
                    sets.push(e);
                }
                o.precompute_reference(&mut sets, batch)?;
            }
            let s = trainer.fit(&mut o, &train, eval.as_deref())?;
            (s, o.model().clone())
        }
        PreferenceObjective::Kto(params) => {
            let (mut train, report) = load_unpaired(data_path, tokenizer, template, &opts)?;
            print_report(data_path, &report, &opts);
            let mut eval = match &cfg.eval_data {
                Some(p) => {
                    let (e, r) = load_unpaired(p, tokenizer, template, &opts)?;
                    print_report(p, &r, &opts);
                    Some(e)
                }
                None => None,
            };
            let reference = match frozen_reference {
                Some(m) => Reference::Model(Box::new(m)),
                None => Reference::Model(Box::new(model.without_adapters())),
            };
            let mut o = KtoObjective::new(model, reference, params, pad)?;
            if cfg.precompute_ref {
                let mut sets: Vec<&mut [_]> = vec![&mut train];
                if let Some(e) = eval.as_mut() {
                    sets.push(e);
                }
                o.precompute_reference(&mut sets, batch)?;
            }
            let s = trainer.fit(&mut o, &train, eval.as_deref())?;
            (s, o.model().clone())
        }
    };
    let final_dir = save(&cfg, &run_dir, &trained, &files, dtype)?;
    eprintln!(
        "done: {} steps, last loss {}{}; {} written",
        summary.steps,
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary
            .last_eval_loss
            .map_or(String::new(), |l| format!(", eval loss {l:.4}")),
        final_dir.display()
    );
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
        let cmd = Cli::command();
        let flags: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(|s| s.replace('-', "_")))
            .collect();
        for key in tempering_train::dpo::PREFERENCE_KEYS {
            assert!(
                flags.iter().any(|f| f == key),
                "no flag for config key `{key}`"
            );
        }
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
