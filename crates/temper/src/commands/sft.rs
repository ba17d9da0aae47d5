//! `temper sft`: supervised fine-tuning, full or LoRA. Resolves the run config (defaults, then
//! `--config sft.toml`, then flags), prepares the data, hands the model and the SFT objective to the
//! trainer, and writes the final model (HF directory) or adapter (PEFT). Holds no training logic.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tempering_model::loader::save_hf_dir;
use tempering_model::{save_peft, ModelFiles};
use tempering_train::run_lock::RunLock;
use tempering_train::sft::{load_sft_sequences, PrepareReport};
use tempering_train::{checkpoint, SftConfig, SftObjective, Trainer};

use crate::commands::common::{required, write_final};
use crate::device::device_and_dtype;

/// Every config key is also a flag (`learning_rate` is `--learning-rate`); flags win over the file.
#[derive(Args, Serialize, Default, Debug)]
pub struct SftArgs {
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

    /// The model: an HF directory or a GGUF file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// Training data (JSONL or Parquet; `text`, `prompt`/`completion` or `messages`).
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

    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// Loss on completion / assistant tokens only (default true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_only_loss: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packing: Option<bool>,

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

fn overrides(a: &SftArgs) -> Result<toml::Table> {
    toml::Table::try_from(a).context("reading the command-line flags")
}

fn print_report(what: &Path, r: &PrepareReport, max_length: usize) {
    eprintln!(
        "{}: {} rows -> {} sequences, {} tokens ({} targets); {} truncated at max_length {}, {} dropped \
         without target tokens",
        what.display(),
        r.rows,
        r.sequences,
        r.tokens,
        r.target_tokens,
        r.truncated,
        max_length,
        r.dropped
    );
}

pub fn sft(a: SftArgs) -> Result<()> {
    let cli = overrides(&a)?;
    let (cfg, run_dir, resume, _lock) = match &a.resume {
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
            let cfg = SftConfig::read_run(dir)?;
            (cfg, dir.clone(), true, lock)
        }
        None => {
            let cfg = SftConfig::resolve(a.config.as_deref(), cli)?;
            let out = required(&cfg.output, "output")?.to_path_buf();
            let lock = RunLock::acquire(&out)?;
            checkpoint::check_new_run(&out)?;
            (cfg, out, false, lock)
        }
    };
    let model_path = required(&cfg.model, "model")?;
    let data_path = required(&cfg.data, "data")?;
    let dtype = (!cfg.dtype.is_empty()).then_some(cfg.dtype.as_str());
    let (device, dtype) = device_and_dtype(&cfg.device, dtype)?;

    let files = ModelFiles::open(model_path, dtype, &device)
        .with_context(|| format!("opening the model {}", model_path.display()))?;
    let tokenizer = files.require_tokenizer()?;
    let template = files.chat_template.as_ref();
    let opts = cfg.data_options();
    let (train, report) = load_sft_sequences(data_path, tokenizer, template, &opts)?;
    print_report(data_path, &report, opts.max_length);
    let eval = match &cfg.eval_data {
        Some(p) => {
            let (e, r) = load_sft_sequences(p, tokenizer, template, &opts)?;
            print_report(p, &r, opts.max_length);
            Some(e)
        }
        None => None,
    };

    let mut model = files.transformer()?;
    let lora = cfg.lora()?;
    let vars = match &lora {
        Some(l) => model.add_lora(l, cfg.seed)?,
        None => model.make_trainable(|_| true)?,
    };
    let n_params: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    eprintln!(
        "{}: {} trainable parameters in {} tensors",
        if lora.is_some() {
            "LoRA"
        } else {
            "full fine-tuning"
        },
        n_params,
        vars.len()
    );
    let pad = tokenizer.pad_id();

    let mut tc = cfg.train_config();
    tc.progress = !a.quiet;
    let mut trainer = if resume {
        Trainer::resume(tc, vars, &run_dir)?
    } else {
        let t = Trainer::new(tc, vars, &run_dir)?;
        cfg.write(&run_dir)?;
        t
    };
    let mut objective = SftObjective::new(model, pad);
    let summary = trainer.fit(&mut objective, &train, eval.as_deref())?;

    let trained = objective.model();
    let final_dir = match &lora {
        Some(_) => {
            let out = run_dir.join("adapter");
            let base = model_path.display().to_string();
            write_final(&out, |tmp| Ok(save_peft(tmp, trained, &base)?))?;
            out
        }
        None => {
            let out = run_dir.join("model");
            write_final(&out, |tmp| {
                Ok(save_hf_dir(tmp, trained, Some(tokenizer), template, dtype)?)
            })?;
            out
        }
    };
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
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: SftArgs,
    }

    #[test]
    fn every_config_key_is_a_flag() {
        let cmd = Cli::command();
        let flags: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(|s| s.replace('-', "_")))
            .collect();
        for key in tempering_train::config::SFT_KEYS {
            assert!(
                flags.iter().any(|f| f == key),
                "no flag for config key `{key}`"
            );
        }
    }

    #[test]
    fn flags_override_the_file_and_bools_take_values() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sft.toml");
        std::fs::write(
            &file,
            "learning_rate = 0.001\nbatch_size = 3\npacking = true\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "x",
            "--batch-size",
            "5",
            "--completion-only-loss",
            "false",
            "--packing",
            "--lora-targets",
            "q,k",
        ])
        .unwrap();
        let cfg = SftConfig::resolve(Some(&file), overrides(&cli.a).unwrap()).unwrap();
        assert_eq!(cfg.learning_rate, 0.001);
        assert_eq!(cfg.batch_size, 5);
        assert!(!cfg.completion_only_loss);
        assert!(cfg.packing);
        assert_eq!(cfg.lora_targets, "q,k");
        std::fs::write(&file, "learning_rat = 0.001\n").unwrap();
        let e = SftConfig::resolve(Some(&file), toml::Table::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sft.toml") && e.contains("did you mean `learning_rate`"),
            "{e}"
        );
    }
}
