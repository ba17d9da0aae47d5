//! `temper rm`: trains a Bradley-Terry outcome reward model on preference pairs and writes it as an
//! HF sequence-classification directory (`runs/x/model`, `score.weight`). Also holds what `temper
//! prm` shares with it: starting or resuming a run, and opening a base model with a score head.
//! Holds no training logic.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use serde::Serialize;
use tempering_model::{
    save_classifier, ChatTemplate, Classifier, ClassifierSave, HeadKind, ModelFiles, ScoreHead,
    Tokenizer, Transformer,
};
use tempering_train::reward_model::load_preference_pairs;
use tempering_train::{RewardModelObjective, RmConfig, Trainer};

use super::common::{flag_table, required, run_dir, write_final};
use super::train_flags::TrainFlags;
use crate::device::device_and_dtype;

/// Every config key is also a flag; flags win over the file.
#[derive(Args, Serialize, Default, Debug)]
pub struct RmArgs {
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
    /// Weight of the reward-centering term mean((r_chosen + r_rejected)^2); 0 is off.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub center_rewards_coefficient: Option<f64>,
}

/// A decoder with a score head to train: a classifier directory's own head when `path` is one
/// (of the right kind and size), else the base model with a fresh head.
pub(crate) struct Scored {
    pub model: Transformer,
    pub head: ScoreHead,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

pub(crate) fn open_with_head(
    path: &Path,
    kind: HeadKind,
    num_labels: usize,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Scored> {
    let has_head = path.is_dir()
        && tempering_model::weights::list_hf_dir(path)
            .with_context(|| format!("opening the model {}", path.display()))?
            .iter()
            .any(|t| t.name == "score.weight");
    let (model, head, tokenizer, template) = if has_head {
        let c = Classifier::open(path, dtype, device)?;
        if c.kind != kind || c.head.num_labels() != num_labels {
            bail!(
                "{}: its score head is a {:?} classifier of {} labels; this command trains a {:?} \
                 classifier of {num_labels} (give the base model instead)",
                path.display(),
                c.kind,
                c.head.num_labels(),
                kind
            );
        }
        (c.model, c.head, c.tokenizer, c.chat_template)
    } else {
        let files = ModelFiles::open(path, dtype, device)
            .with_context(|| format!("opening the model {}", path.display()))?;
        let model = files.transformer()?;
        let head = ScoreHead::init(
            model.config.hidden_size,
            num_labels,
            kind == HeadKind::Token,
            seed,
            device,
            dtype,
        )?;
        (model, head, files.tokenizer, files.chat_template)
    };
    let tokenizer =
        tokenizer.with_context(|| format!("{}: the model has no tokenizer", path.display()))?;
    Ok(Scored {
        model,
        head,
        tokenizer,
        template,
    })
}

pub fn rm(a: RmArgs) -> Result<()> {
    let cli = flag_table(&a)?;
    let (cfg, run_dir, resume, _lock) = match &a.resume {
        Some(dir) => {
            let (d, r, l) = run_dir(Some(dir), &cli, a.config.is_some(), None)?;
            (RmConfig::read_run(&d)?, d, r, l)
        }
        None => {
            let cfg = RmConfig::resolve(a.config.as_deref(), cli.clone())?;
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
        HeadKind::Sequence,
        1,
        cfg.train.step.seed,
        dtype,
        &device,
    )?;
    let load = |p: &Path| -> Result<_> {
        let (pairs, r) =
            load_preference_pairs(p, &s.tokenizer, s.template.as_ref(), cfg.max_length)?;
        eprintln!(
            "{}: {} rows -> {} pairs; {} skipped because `chosen` equals `rejected`, {} dropped \
             as longer than max_length {}",
            p.display(),
            r.rows,
            r.kept,
            r.identical,
            r.too_long,
            cfg.max_length
        );
        Ok(pairs)
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
    let mut objective = RewardModelObjective::new(
        s.model.clone(),
        s.head.clone(),
        pad,
        cfg.center_rewards_coefficient,
    );
    let summary = trainer.fit(&mut objective, &train, eval.as_deref())?;
    let out = run_dir.join("model");
    write_final(&out, |tmp| {
        Ok(save_classifier(
            tmp,
            objective.model(),
            objective.head(),
            &ClassifierSave {
                kind: HeadKind::Sequence,
                label_names: &[],
                tokenizer: Some(&s.tokenizer),
                chat_template: s.template.as_ref(),
                extra_config: Default::default(),
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Rm {
        #[command(flatten)]
        a: super::RmArgs,
    }

    #[derive(Parser)]
    struct Prm {
        #[command(flatten)]
        a: super::super::prm::PrmArgs,
    }

    fn flags(cmd: clap::Command) -> Vec<String> {
        cmd.get_arguments()
            .filter_map(|a| a.get_long().map(|s| s.replace('-', "_")))
            .collect()
    }

    #[test]
    fn every_config_key_is_a_flag_and_flags_become_keys() {
        let rm = flags(Rm::command());
        for key in tempering_train::reward_config::rm_keys() {
            assert!(
                rm.iter().any(|f| f == key),
                "temper rm: no flag for `{key}`"
            );
        }
        let prm = flags(Prm::command());
        for key in tempering_train::reward_config::prm_keys() {
            assert!(
                prm.iter().any(|f| f == key),
                "temper prm: no flag for `{key}`"
            );
        }
        let cli = Prm::try_parse_from([
            "x",
            "--learning-rate",
            "0.01",
            "--train-on-last-step-only",
            "--step-separator",
            "\n\n",
        ])
        .unwrap();
        let cfg = tempering_train::PrmConfig::resolve(
            None,
            super::super::common::flag_table(&cli.a).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg.train.step.learning_rate, 0.01);
        assert!(cfg.train_on_last_step_only);
        assert_eq!(cfg.step_separator, "\n\n");
        assert_eq!(cfg.train.batch_size, 8);
    }
}
