//! `temper dpo-rewards RUN`: the implicit reward of every pair under a finished `temper dpo` run's
//! policy (`beta` times the policy-to-reference log-ratio; SimPO and ORPO: `beta` times the averaged
//! log-prob), one JSON line per pair, for inspection or as a signal elsewhere. Reads the run's
//! config and final adapter or model; holds no training logic.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use tempering_model::ModelFiles;
use tempering_train::dpo::{
    load_pairs, DpoObjective, PreferenceConfig, PreferenceKind, PreferenceObjective, Reference,
};

use crate::commands::common::required;
use crate::device::device_and_dtype;

#[derive(Args)]
pub struct DpoRewardsArgs {
    /// A `temper dpo` run directory (its config.toml and its adapter/ or model/).
    pub run: PathBuf,
    /// Preference pairs to score (default: the run's training data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// JSONL to write (default: standard output).
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

pub fn run(a: DpoRewardsArgs) -> Result<()> {
    let cfg = PreferenceConfig::read_run(&a.run, PreferenceKind::Paired)
        .with_context(|| format!("reading the run {}", a.run.display()))?;
    let PreferenceObjective::Paired(params) = cfg.objective()? else {
        anyhow::bail!("{}: not a paired-preference run", a.run.display());
    };
    let base_path = required(&cfg.model, "model")?;
    let dtype = (!cfg.dtype.is_empty()).then_some(cfg.dtype.as_str());
    let (device, dtype) = device_and_dtype(&cfg.device, dtype)?;
    let base = ModelFiles::open(base_path, dtype, &device)
        .with_context(|| format!("opening the model {}", base_path.display()))?;
    let tokenizer = base.require_tokenizer()?;

    let (policy, frozen) = if cfg.lora.lora_r > 0 {
        let dir = a.run.join("adapter");
        let mut m = base.transformer()?;
        m.apply_peft(&dir)
            .with_context(|| format!("loading the run's adapter {}", dir.display()))?;
        (m, None)
    } else {
        let dir = a.run.join("model");
        let m = ModelFiles::open(&dir, dtype, &device)
            .and_then(|f| f.transformer())
            .with_context(|| format!("loading the run's model {}", dir.display()))?;
        let reference = match &cfg.ref_model {
            Some(p) => ModelFiles::open(p, dtype, &device)
                .and_then(|f| f.transformer())
                .with_context(|| format!("opening the reference model {}", p.display()))?,
            None => base.transformer()?,
        };
        (m, Some(reference))
    };
    let reference = Reference::for_policy(&params, &policy, frozen)?;
    let pad = tokenizer.pad_id();
    let objective = DpoObjective::new(policy, reference, params, pad)?;

    let data_path = match &a.data {
        Some(p) => p.clone(),
        None => required(&cfg.data, "data")?.to_path_buf(),
    };
    let opts = cfg.data_options();
    let (pairs, report) = load_pairs(&data_path, tokenizer, base.chat_template.as_ref(), &opts)?;
    eprintln!("{}", report.summary(&data_path, &opts));
    let rewards = objective.rewards(&pairs, a.batch_size)?;

    let mut text = String::new();
    for r in &rewards {
        let row = json!({
            "line": r.line,
            "chosen_reward": r.chosen_reward,
            "rejected_reward": r.rejected_reward,
            "margin": r.chosen_reward - r.rejected_reward,
            "chosen_logps": r.chosen_logps,
            "rejected_logps": r.rejected_logps,
        });
        text.push_str(&row.to_string());
        text.push('\n');
    }
    match &a.output {
        Some(path) => {
            tempering_model::write_atomic(path, text.as_bytes())?;
        }
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .context("writing to standard output")?,
    }
    let n = rewards.len().max(1) as f64;
    let mean = |f: &dyn Fn(&tempering_train::dpo::PairRewards) -> f64| {
        rewards.iter().map(f).sum::<f64>() / n
    };
    eprintln!(
        "{} pairs ({} loss, beta {}): mean chosen reward {:.4}, rejected {:.4}, margin {:.4}, accuracy {:.1}%",
        rewards.len(),
        params.loss,
        params.beta,
        mean(&|r| r.chosen_reward),
        mean(&|r| r.rejected_reward),
        mean(&|r| r.chosen_reward - r.rejected_reward),
        100.0 * mean(&|r| f64::from(u8::from(r.chosen_reward > r.rejected_reward)))
    );
    Ok(())
}
