//! `temper rm`: trains a Bradley-Terry outcome reward model on preference pairs and writes it as an
//! HF sequence-classification directory (`runs/x/model`, `score.weight`). Also holds what `temper
//! prm` shares with it: the flags, opening a base model with a score head, its trainer and saving
//! the classifier.
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
use tempering_train::{RewardModelObjective, RmConfig, TrainConfig, Trainer};

use super::common::{
    device_of, flag_table, open_run, report_done, required, start_trainer, write_final,
};
use super::train_flags::{DeviceFlags, RunControl, RunPathFlags, TrainFlags};

/// The flags `temper rm` and `temper prm` share: the base model, the data and run paths, the
/// trainer's keys, the length limit and the device.
#[derive(Args, Serialize, Default, Debug)]
pub struct ScoreTrainFlags {
    /// The model: an HF directory or a GGUF file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// Training data (JSONL or Parquet).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub paths: RunPathFlags,
    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainFlags,
    /// Sequences longer than this many tokens are dropped (rm) or cut (prm).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceFlags,
}

/// Every config key is also a flag; flags win over the file.
#[derive(Args, Serialize, Default, Debug)]
pub struct RmArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub control: RunControl,
    #[command(flatten)]
    #[serde(flatten)]
    pub common: ScoreTrainFlags,
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

/// The base model of a reward-model run with its score head, on the device its `device` and `dtype`
/// keys name; and the dtype it runs in.
pub(crate) fn open_scored(
    path: &Path,
    (device, dtype): (&str, &str),
    kind: HeadKind,
    num_labels: usize,
    seed: u64,
) -> Result<(Scored, DType)> {
    let (device, dtype) = device_of(device, dtype)?;
    Ok((
        open_with_head(path, kind, num_labels, seed, dtype, &device)?,
        dtype,
    ))
}

/// The trainer of every weight of `s` (the decoder and its head), new or resumed.
pub(crate) fn scored_trainer(
    s: &mut Scored,
    mut tc: TrainConfig,
    quiet: bool,
    (run_dir, resume): (&Path, bool),
    write_config: impl FnOnce(&Path) -> Result<PathBuf>,
) -> Result<Trainer> {
    let mut vars = s.model.make_trainable(|_| true)?;
    vars.extend(s.head.make_trainable()?);
    tc.progress = !quiet;
    start_trainer(tc, vars, run_dir, resume, write_config)
}

/// Writes the trained decoder and head as the HF classifier directory `model/` of the run, with the
/// tokenizer and chat template of `s`.
pub(crate) fn save_scored(
    run_dir: &Path,
    (model, head): (&Transformer, &ScoreHead),
    s: &Scored,
    kind: HeadKind,
    extra_config: serde_json::Map<String, serde_json::Value>,
    dtype: DType,
) -> Result<PathBuf> {
    let out = run_dir.join("model");
    write_final(&out, |tmp| {
        Ok(save_classifier(
            tmp,
            model,
            head,
            &ClassifierSave {
                kind,
                label_names: &[],
                tokenizer: Some(&s.tokenizer),
                chat_template: s.template.as_ref(),
                extra_config,
                dtype,
            },
        )?)
    })?;
    Ok(out)
}

pub fn rm(a: RmArgs) -> Result<()> {
    let (cfg, run_dir, resume, _lock) = open_run(
        &a.control,
        flag_table(&a)?,
        |file, cli| Ok(RmConfig::resolve(file, cli)?),
        |dir| Ok(RmConfig::read_run(dir)?),
        |cfg| cfg.output.as_deref(),
    )?;
    let model_path = required(&cfg.model, "model")?;
    let data_path = required(&cfg.data, "data")?;
    let (mut s, dtype) = open_scored(
        model_path,
        (&cfg.device, &cfg.dtype),
        HeadKind::Sequence,
        1,
        cfg.train.step.seed,
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

    let tc = cfg.train.train_config();
    let mut trainer = scored_trainer(&mut s, tc, a.control.quiet, (&run_dir, resume), |d| {
        Ok(cfg.write(d)?)
    })?;
    let pad = s.tokenizer.pad_id();
    let mut objective = RewardModelObjective::new(
        s.model.clone(),
        s.head.clone(),
        pad,
        cfg.center_rewards_coefficient,
    );
    let summary = trainer.fit(&mut objective, &train, eval.as_deref())?;
    let written = save_scored(
        &run_dir,
        (objective.model(), objective.head()),
        &s,
        HeadKind::Sequence,
        Default::default(),
        dtype,
    )?;
    report_done(&summary, &written);
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

    #[test]
    fn every_config_key_is_a_flag_and_flags_become_keys() {
        use super::super::common::flags_covering;
        flags_covering(Rm::command(), &tempering_train::reward_config::rm_keys());
        flags_covering(Prm::command(), &tempering_train::reward_config::prm_keys());
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
