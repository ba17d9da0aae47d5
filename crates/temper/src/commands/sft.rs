//! `temper sft`: supervised fine-tuning, full or LoRA. Resolves the run config (defaults, then
//! `--config sft.toml`, then flags), prepares the data, hands the model and the SFT objective to the
//! trainer, and writes the final model (HF directory) or adapter (PEFT). Holds no training logic.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use tempering_model::ModelFiles;
use tempering_train::sft::{load_sft_sequences, PrepareReport};
use tempering_train::{SftConfig, SftObjective};

use super::common::{
    device_of, flag_table, open_run, report_done, required, save_policy, start_trainer,
    trainable_summary,
};
use super::train_flags::{DeviceFlags, LoraFlags, RunControl, RunPathFlags, TrainFlags};

/// Every config key is also a flag (`learning_rate` is `--learning-rate`); flags win over the file.
#[derive(Args, Serialize, Default, Debug)]
pub struct SftArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub control: RunControl,

    /// The model: an HF directory or a GGUF file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// Training data (JSONL or Parquet; `text`, `prompt`/`completion` or `messages`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub paths: RunPathFlags,

    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainFlags,

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

    #[command(flatten)]
    #[serde(flatten)]
    pub lora: LoraFlags,

    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceFlags,
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
    let (cfg, run_dir, resume, _lock) = open_run(
        &a.control,
        flag_table(&a)?,
        |file, cli| Ok(SftConfig::resolve(file, cli)?),
        |dir| Ok(SftConfig::read_run(dir)?),
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
        Some(l) => model.add_lora(l, cfg.train.step.seed)?,
        None => model.make_trainable(|_| true)?,
    };
    eprintln!("{}", trainable_summary(lora.is_some(), &vars));
    let pad = tokenizer.pad_id();

    let mut tc = cfg.train_config();
    tc.progress = !a.control.quiet;
    let mut trainer = start_trainer(tc, vars, &run_dir, resume, |d| Ok(cfg.write(d)?))?;
    let mut objective = SftObjective::new(model, pad);
    let summary = trainer.fit(&mut objective, &train, eval.as_deref())?;

    let written = save_policy(
        &run_dir,
        objective.model(),
        lora.is_some(),
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
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: SftArgs,
    }

    #[test]
    fn every_config_key_is_a_flag() {
        super::super::common::flags_covering(Cli::command(), &tempering_train::config::sft_keys());
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
        let cfg = SftConfig::resolve(Some(&file), flag_table(&cli.a).unwrap()).unwrap();
        assert_eq!(cfg.train.step.learning_rate, 0.001);
        assert_eq!(cfg.train.batch_size, 5);
        assert!(!cfg.completion_only_loss);
        assert!(cfg.packing);
        assert_eq!(cfg.lora.lora_targets, "q,k");
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
