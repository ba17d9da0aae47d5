//! `temper grpo` and `temper rloo`: online RL with verifiable rewards. Resolves the run config
//! (defaults, then `--config FILE`, then flags; `--resume` takes its saved `config.toml`) into the
//! library's `GrpoConfig`, loads the policy (full or LoRA), the reference, the prompts (a dataset or
//! a built-in task), the reward spec and the guards' data, runs `run_online`, and writes the final
//! model or adapter. Also the pieces `temper ppo`/`trpo` share: the RL flags, prompts, rewards and
//! the run's opening. Holds no algorithm of its own.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Var};
use clap::Args;
use serde::Serialize;
use tempering_generate::render_chat;
use tempering_model::{ChatMessage, ModelFiles, Tokenizer, Transformer};
use tempering_reward::learned::open_step_scorer;
use tempering_reward::spec::{build_reward, RewardContext};
use tempering_reward::{StepScorer, Verifier};
use tempering_tasks::dataset::{load_rl_prompts, TextOrChat};
use tempering_tasks::{generate, task_by_name, GenerateSpec, Split};
use tempering_train::rl::run_config::{legacy_json_overrides, GrpoRunConfig, RlKeys};
use tempering_train::rl::{
    run_online, KlEstimator, LossType, OnlineInputs, PromptItem, ScaleRewards,
};
use tempering_train::run_lock::RunLock;
use tempering_train::sft::{load_sft_sequences, SftDataOptions, SftSequence};

use crate::commands::common::{
    flag_table, lora_config, open_run, required, save_policy, trainable_policy,
};
use crate::commands::train_flags::{DeviceFlags, RunControl, StepFlags};
use crate::device::device_and_dtype;

/// The flags of every online RL command; each is a config key (`num_generations` is
/// `--num-generations`) and, when given, overrides the config file.
#[derive(Args, Serialize, Default, Debug, Clone)]
pub struct RlFlags {
    #[command(flatten)]
    #[serde(skip)]
    pub control: RunControl,

    /// The policy to start from: an HF directory or a GGUF file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// RL prompts (JSONL or Parquet): `prompt` (text or messages) and the reference answer.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// The column holding the reference answer (default: answer).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_column: Option<String>,
    /// Or prompts from a built-in task's train split (with its verifier as the default reward).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    /// Built-in task prompts to draw (default 2000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_prompts: Option<usize>,
    /// The run directory to create.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// The training reward, e.g. `task_verifier`, `math_answer`, `0.8*math_answer+0.2*format=...`
    /// (default: task_verifier with --task, math_answer otherwise).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<String>,
    /// A held-out verifier logged beside the reward on the same rollouts; the run warns when the
    /// reward rises while this falls (reward hacking).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,

    #[command(flatten)]
    #[serde(flatten)]
    pub train: StepFlags,

    /// Completions per prompt (default 8).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_generations: Option<usize>,
    /// Prompts per rollout batch (default 8).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompts_per_step: Option<usize>,
    /// Rollout batches (default 100).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Completions per micro-batch of the update (default 16).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_batch_size: Option<usize>,
    /// Sampling temperature (default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// (default 256)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_length: Option<usize>,
    /// Sample exactly --max-completion-length tokens, past EOS (fixed benchmark workloads).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    /// Leave truncated completions out of the loss (overlong filtering).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_truncated_completions: Option<bool>,
    /// The ratio's clip (default 0.2).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// k1, k2 or k3 (default k3).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_estimator: Option<KlEstimator>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy_coef: Option<f64>,
    /// Write rollouts to rollouts.jsonl every this many batches (0: never; default 10).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_rollouts_every: Option<usize>,
    /// SFT-format data whose loss is watched for forgetting.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_data: Option<PathBuf>,
    /// (default 10)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_every: Option<usize>,
    /// Warn when the retain loss rises by more than this fraction (default 0.1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forgetting_threshold: Option<f64>,
    /// Warn when the per-token KL to the reference exceeds this (default 0.5).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_limit: Option<f64>,
    /// At --beta 0 (grpo, rloo), run the reference forward that the KL guard needs every this many
    /// rollout batches only (0: never, the KL guard off; default 4). With --beta > 0 the loss needs
    /// it every batch.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_every: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hacking_window: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length_drift_ratio: Option<f64>,
    /// LoRA rank; 0: full fine-tuning (with a frozen copy as the reference).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_r: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    /// q,k,v,o,gate,up,down or all (default q,v).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_targets: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceFlags,
}

/// `temper grpo` and `temper rloo`: the shared RL flags plus the GRPO family's.
#[derive(Args, Serialize, Default, Debug, Clone)]
pub struct GrpoArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub rl: RlFlags,
    /// Generate the rollouts on an OpenAI-compatible server running the same base model that
    /// loads LoRA adapters at run time (`temper serve --allow-runtime-lora`, or vLLM with
    /// --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) and reads this run directory:
    /// each new adapter is loaded there as policy-step-N. With LoRA.
    #[arg(long, value_name = "URL")]
    #[serde(skip)]
    pub rollout_backend: Option<String>,
    /// REINFORCE++ (grpo only): batch-whitened returns with the per-token KL in the reward.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reinforce_pp: Option<bool>,
    /// Optimiser steps over each rollout batch (default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_iterations: Option<usize>,
    /// grpo, dr_grpo, dapo or bnpo (default dapo).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_type: Option<LossType>,
    /// Upper clip bound (clip-higher); default: --epsilon.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_high: Option<f64>,
    /// KL penalty to the reference (default 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// group, batch or none (default group).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_rewards: Option<ScaleRewards>,
    /// Dynamic sampling: refill groups whose rewards all tie, at most this many extra rounds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_sampling_rounds: Option<usize>,
    /// Process supervision: score every step with `rule` (the task's rule step checker, which
    /// sees no reference answer) or a PRM directory from `temper prm`. The outcome reward joins the
    /// last step's score; a token's advantage sums the group-normalised scores of its step and the
    /// steps after it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_reward: Option<String>,
    /// SFT-format data replayed into the loss against forgetting.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_data: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_coef: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_batch_size: Option<usize>,
}

/// The run's config, directory, lock and whether it resumes: a new run's config from the file and
/// the flags, or the saved one of the run `--resume` names (its `config.toml`, or the `config.json`
/// of a run started before there was one, read through `legacy` into the command's keys).
pub(crate) fn open_rl_run<C>(
    flags: &RlFlags,
    cli: toml::Table,
    resolve: impl Fn(Option<&Path>, toml::Table) -> tempering_train::Result<C>,
    keys: &[&str],
    output: impl Fn(&C) -> Option<&Path>,
) -> Result<(C, PathBuf, bool, RunLock)> {
    open_run(
        &flags.control,
        cli,
        |file, cli| Ok(resolve(file, cli)?),
        |dir| {
            let toml_path = dir.join("config.toml");
            let json_path = dir.join("config.json");
            if !toml_path.is_file() && json_path.is_file() {
                let text = std::fs::read_to_string(&json_path)
                    .with_context(|| format!("reading {}", json_path.display()))?;
                let json: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a saved RL config", json_path.display()))?;
                Ok(resolve(None, legacy_json_overrides(&json, keys)?)
                    .with_context(|| format!("{}", json_path.display()))?)
            } else {
                Ok(resolve(
                    Some(&tempering_train::config::run_config_path(dir)?),
                    toml::Table::new(),
                )?)
            }
        },
        output,
    )
}

/// What every online RL command opens before its algorithm runs: the model, device, tokenizer,
/// prompts, rewards, retain data and the policy to train with its reference.
pub(crate) struct RlRun {
    pub model_path: PathBuf,
    pub files: ModelFiles,
    pub device: Device,
    pub dtype: DType,
    pub tok: Tokenizer,
    pub prompts: Vec<PromptItem>,
    pub reward_spec: String,
    pub reward: Box<dyn Verifier>,
    pub verifier: Option<Box<dyn Verifier>>,
    pub retain: Option<Vec<SftSequence>>,
    pub lora: Option<tempering_model::LoraConfig>,
    pub policy: Transformer,
    pub params: Vec<(String, Var)>,
    pub reference: Option<Transformer>,
}

impl RlRun {
    pub(crate) fn open(k: &RlKeys) -> Result<Self> {
        let model_path = required(&k.model, "model")?.to_path_buf();
        let (device, dtype) = device_and_dtype(&k.device, k.dtype.as_deref())?;
        let files = ModelFiles::open(&model_path, dtype, &device)
            .with_context(|| format!("opening the model {}", model_path.display()))?;
        let tok = files.require_tokenizer()?.clone();
        let template = files.chat_template.as_ref();
        let prompts = prompt_items(k, &tok, template)?;
        let ctx = RewardContext {
            task: k.task.clone(),
            level: k.level,
        };
        let reward_spec = k.reward_spec();
        let reward = build_reward(&reward_spec, &ctx).with_context(|| "--reward")?;
        let verifier = match &k.verifier {
            Some(s) => Some(build_reward(s, &ctx).with_context(|| "--verifier")?),
            None => None,
        };
        let retain = match &k.retain_data {
            Some(p) => Some(sft_data(p, &tok, template)?),
            None => None,
        };
        let lora = lora_config(k.lora_r, k.lora_alpha, &k.lora_targets)?;
        let (policy, params, reference) =
            trainable_policy(files.transformer()?, lora.as_ref(), k.train.seed)?;
        Ok(RlRun {
            model_path,
            files,
            device,
            dtype,
            tok,
            prompts,
            reward_spec,
            reward,
            verifier,
            retain,
            lora,
            policy,
            params,
            reference,
        })
    }

    /// The driver's inputs (no process reward or replay; GRPO adds those).
    pub(crate) fn inputs(&self) -> OnlineInputs<'_> {
        OnlineInputs::new(
            self.policy.clone(),
            self.params.clone(),
            self.reference.clone(),
            &self.tok,
            &self.prompts,
            self.reward.as_ref(),
        )
        .with_verifier(self.verifier.as_deref())
        .with_retain(self.retain.as_deref())
    }

    /// Writes the trained policy (adapter or model) into `run_dir`.
    pub(crate) fn save(&self, run_dir: &Path) -> Result<PathBuf> {
        save_policy(
            run_dir,
            &self.policy,
            self.lora.is_some(),
            &self.model_path,
            &self.files,
            self.dtype,
        )
    }
}

/// Prompts as the policy sees them: chat prompts through the model's template.
pub(crate) fn prompt_items(
    a: &RlKeys,
    tok: &Tokenizer,
    template: Option<&tempering_model::ChatTemplate>,
) -> Result<Vec<PromptItem>> {
    if let Some(name) = &a.task {
        let task = task_by_name(name)?;
        let level = a.level.unwrap_or(task.default_level());
        let problems = generate(
            task.as_ref(),
            &GenerateSpec {
                level,
                n: a.num_prompts,
                seed: a.train.seed,
                split: Split::Train,
                unique: false,
            },
        )?;
        return problems
            .iter()
            .map(|p| {
                Ok(PromptItem {
                    text: p.prompt.clone(),
                    ids: tok.encode(&p.prompt, false)?,
                    reference: Some(p.answer.clone()),
                })
            })
            .collect();
    }
    let path = a
        .data
        .as_ref()
        .context("give the prompts: --data FILE or --task NAME")?;
    let rows = load_rl_prompts(path, Some(&a.answer_column))?;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let text = match &r.prompt {
                TextOrChat::Text(t) => t.clone(),
                TextOrChat::Chat(m) => {
                    let t = template.with_context(|| {
                        format!(
                            "{}: row {} is conversational but the model has no chat template",
                            path.display(),
                            i + 1
                        )
                    })?;
                    let msgs: Vec<ChatMessage> = m
                        .iter()
                        .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
                        .collect();
                    render_chat(t, &msgs, true)?
                }
            };
            Ok(PromptItem {
                ids: tok.encode(&text, false)?,
                text,
                reference: r.answer.clone(),
            })
        })
        .collect()
}

/// The step scorer of `--process-reward`: `rule` (the task's rule step checker) or a PRM
/// directory.
pub(crate) fn process_scorer(
    spec: &str,
    task: Option<&str>,
    device: &Device,
) -> Result<Box<dyn StepScorer>> {
    if spec == "rule" {
        return crate::commands::search::rule_step_checker("--process-reward rule", task);
    }
    let dir = Path::new(spec);
    if !dir.is_dir() {
        bail!("--process-reward {spec}: expected `rule` or a PRM directory written by temper prm");
    }
    open_step_scorer(dir, device).with_context(|| format!("--process-reward {spec}"))
}

pub(crate) fn sft_data(
    path: &Path,
    tok: &Tokenizer,
    template: Option<&tempering_model::ChatTemplate>,
) -> Result<Vec<SftSequence>> {
    let (seqs, _) = load_sft_sequences(path, tok, template, &SftDataOptions::default())
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(seqs)
}

/// `temper grpo` (`rloo` false) or `temper rloo`.
pub fn run(a: GrpoArgs, rloo: bool) -> Result<()> {
    let cli = flag_table(&a)?;
    let keys = tempering_train::rl::run_config::grpo_keys();
    let (cfg, run_dir, resume, _lock) =
        open_rl_run(&a.rl, cli, GrpoRunConfig::resolve, &keys, |c| {
            c.rl.output.as_deref()
        })?;
    let config = cfg.grpo_config(rloo, !a.rl.control.quiet)?;
    config.validate()?;
    let run = RlRun::open(&cfg.rl)?;
    let template = run.files.chat_template.as_ref();
    let process = match &cfg.process_reward {
        Some(spec) => Some(process_scorer(spec, cfg.rl.task.as_deref(), &run.device)?),
        None => None,
    };
    let replay = match &cfg.replay_data {
        Some(p) => Some(sft_data(p, &run.tok, template)?),
        None => None,
    };
    if !resume {
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        cfg.write(&run_dir)?;
    }
    eprintln!(
        "{:?}: {} prompts, {} x {} completions per batch, {} batches, reward `{}`",
        config.algorithm,
        run.prompts.len(),
        config.online.prompts_per_step,
        config.online.num_generations,
        config.online.steps,
        run.reward_spec
    );
    let mut server = match &a.rollout_backend {
        Some(url) => Some(crate::commands::rollout_server::ServerPolicy::connect(
            url,
            &run.model_path,
            &run_dir,
            run.lora.is_some(),
        )?),
        None => None,
    };
    let mut inputs = run
        .inputs()
        .with_prm(process.as_deref())
        .with_replay(replay.as_deref());
    inputs.rollout_server = server
        .as_mut()
        .map(|s| s as &mut dyn tempering_train::rl::RolloutServer);
    let summary = run_online(&config, inputs, &run_dir, resume)?;
    let final_dir = run.save(&run_dir)?;
    let get = |k: &str| summary.last.get(k).and_then(|v| v.as_f64());
    eprintln!(
        "done: {} rollout batches; last reward {}, kl {}; warnings {:?}; {} written",
        summary.steps,
        get("reward").map_or("-".into(), |v| format!("{v:.3}")),
        get("kl").map_or("-".into(), |v| format!("{v:.4}")),
        summary.guards.warnings,
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
        a: GrpoArgs,
    }

    #[test]
    fn every_config_key_is_a_flag_and_flags_override_the_file() {
        super::super::common::flags_covering(
            Cli::command(),
            &tempering_train::rl::run_config::grpo_keys(),
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grpo.toml");
        std::fs::write(&file, "learning_rate = 0.001\nbeta = 0.1\nsteps = 7\n").unwrap();
        let cli =
            Cli::try_parse_from(["x", "--beta", "0.2", "--ignore-eos", "--seed", "3"]).unwrap();
        let cfg = GrpoRunConfig::resolve(Some(&file), flag_table(&cli.a).unwrap()).unwrap();
        assert_eq!(cfg.rl.train.learning_rate, 0.001);
        assert_eq!(cfg.rl.steps, 7);
        assert_eq!(cfg.beta, 0.2);
        assert!(cfg.rl.ignore_eos);
        assert_eq!(cfg.rl.train.seed, 3);
    }
}
