//! `temper grpo` and `temper rloo`: online RL with verifiable rewards. Resolves flags into the
//! library's `OnlineConfig`, loads the policy (full or LoRA), the reference, the prompts (a dataset
//! or a built-in task), the reward spec and the guards' data, runs `run_online`, and writes the
//! final model or adapter. Holds no algorithm of its own.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use tempering_generate::render_chat;
use tempering_model::loader::save_hf_dir;
use tempering_model::{save_peft, ChatMessage, LoraConfig, LoraTarget, ModelFiles, Tokenizer};
use tempering_reward::learned::ProcessRewardModel;
use tempering_reward::spec::{build_reward, RewardContext};
use tempering_reward::StepScorer;
use tempering_tasks::dataset::{load_rl_prompts, TextOrChat};
use tempering_tasks::{generate, task_by_name, GenerateSpec, Split};
use tempering_train::checkpoint;
use tempering_train::rl::{
    run_online, Algorithm, GuardConfig, KlEstimator, LossType, OnlineConfig, OnlineInputs,
    PolicyLossConfig, PromptItem, ScaleRewards,
};
use tempering_train::run_lock::RunLock;
use tempering_train::sft::{load_sft_sequences, SftDataOptions, SftSequence};
use tempering_train::ScheduleKind;

use crate::commands::sft::write_final;
use crate::device::device_and_dtype;

/// Flags of an online RL run; saved as the run's `config.json` so `--resume` continues it as it was.
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct RlArgs {
    /// Continue the run in this directory from its last checkpoint, with its saved config.
    #[arg(long)]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    #[serde(skip)]
    pub quiet: bool,

    /// The policy to start from: an HF directory or a GGUF file.
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// RL prompts (JSONL or Parquet): `prompt` (text or messages) and the reference answer.
    #[arg(long, conflicts_with = "task")]
    pub data: Option<PathBuf>,
    /// The column holding the reference answer.
    #[arg(long, default_value = "answer")]
    pub answer_column: String,
    /// Or prompts from a built-in task's train split (with its verifier as the default reward).
    #[arg(long)]
    pub task: Option<String>,
    #[arg(long)]
    pub level: Option<u32>,
    /// Built-in task prompts to draw.
    #[arg(long, default_value_t = 2000)]
    pub num_prompts: usize,
    /// The run directory to create.
    #[arg(long, required_unless_present = "resume")]
    pub output: Option<PathBuf>,

    /// The training reward, e.g. `task_verifier`, `math_answer`, `0.8*math_answer+0.2*format=...`
    /// (default: task_verifier with --task, math_answer otherwise).
    #[arg(long)]
    pub reward: Option<String>,
    /// A held-out verifier logged beside the reward on the same rollouts; the run warns when the
    /// reward rises while this falls (reward hacking).
    #[arg(long)]
    pub verifier: Option<String>,

    #[arg(long, default_value_t = 8)]
    pub num_generations: usize,
    /// Prompts per rollout batch.
    #[arg(long, default_value_t = 8)]
    pub prompts_per_step: usize,
    /// Rollout batches.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Optimiser steps over each rollout batch.
    #[arg(long, default_value_t = 1)]
    pub num_iterations: usize,
    #[arg(long, default_value_t = 16)]
    pub micro_batch_size: usize,
    #[arg(long, default_value_t = 1e-6)]
    pub learning_rate: f64,
    /// constant, linear or cosine.
    #[arg(long, default_value = "constant")]
    pub lr_scheduler: String,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,

    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 256)]
    pub max_completion_length: usize,
    /// Sample exactly --max-completion-length tokens, past EOS (fixed benchmark workloads).
    #[arg(long)]
    #[serde(default)]
    pub ignore_eos: bool,

    /// grpo, dr_grpo, dapo or bnpo.
    #[arg(long, default_value = "dapo")]
    pub loss_type: String,
    #[arg(long, default_value_t = 0.2)]
    pub epsilon: f64,
    /// Upper clip bound (clip-higher); default: --epsilon.
    #[arg(long)]
    pub epsilon_high: Option<f64>,
    /// KL penalty to the reference.
    #[arg(long, default_value_t = 0.0)]
    pub beta: f64,
    /// k1, k2 or k3.
    #[arg(long, default_value = "k3")]
    pub kl_estimator: String,
    #[arg(long, default_value_t = 0.0)]
    pub entropy_coef: f64,
    /// group, batch or none.
    #[arg(long, default_value = "group")]
    pub scale_rewards: String,
    /// Leave truncated completions out of the loss (overlong filtering).
    #[arg(long)]
    pub mask_truncated_completions: bool,
    /// Dynamic sampling: refill groups whose rewards all tie, at most this many extra rounds.
    #[arg(long, default_value_t = 0)]
    pub dynamic_sampling_rounds: usize,

    /// Process supervision (grpo, rloo): score every step with `rule` (the task's rule step
    /// checker, which sees no reference answer) or a PRM directory from `temper prm`. The outcome
    /// reward joins the last step's score; a token's advantage sums the group-normalised scores
    /// of its step and the steps after it.
    #[arg(long)]
    #[serde(default)]
    pub process_reward: Option<String>,

    /// Write rollouts to rollouts.jsonl every this many batches (0: never).
    #[arg(long, default_value_t = 10)]
    pub log_rollouts_every: usize,
    /// SFT-format data whose loss is watched for forgetting.
    #[arg(long)]
    pub retain_data: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub retain_every: usize,
    /// Warn when the retain loss rises by more than this fraction.
    #[arg(long, default_value_t = 0.1)]
    pub forgetting_threshold: f64,
    /// SFT-format data replayed into the loss against forgetting.
    #[arg(long)]
    pub replay_data: Option<PathBuf>,
    #[arg(long, default_value_t = 0.0)]
    pub replay_coef: f64,
    #[arg(long, default_value_t = 8)]
    pub replay_batch_size: usize,
    /// Warn when the per-token KL to the reference exceeds this.
    #[arg(long, default_value_t = 0.5)]
    pub kl_limit: f64,
    #[arg(long, default_value_t = 6)]
    pub hacking_window: usize,
    #[arg(long, default_value_t = 1.5)]
    pub length_drift_ratio: f64,

    /// LoRA rank; 0: full fine-tuning (with a frozen copy as the reference).
    #[arg(long, default_value_t = 0)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    #[arg(long, default_value = "q,v")]
    pub lora_targets: String,

    /// Checkpoint every this many rollout batches (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub dtype: Option<String>,
}

fn parse<T: std::str::FromStr<Err = String>>(flag: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|e: String| anyhow::anyhow!("--{flag}: {e}"))
}

impl RlArgs {
    /// The library config for `algorithm`.
    pub fn online_config(&self, algorithm: Algorithm) -> Result<OnlineConfig> {
        let schedule: ScheduleKind = self
            .lr_scheduler
            .parse()
            .map_err(|e| anyhow::anyhow!("--lr-scheduler: {e}"))?;
        Ok(OnlineConfig {
            algorithm,
            num_generations: self.num_generations,
            prompts_per_step: self.prompts_per_step,
            steps: self.steps,
            num_iterations: self.num_iterations,
            micro_batch_size: self.micro_batch_size,
            learning_rate: self.learning_rate,
            schedule,
            warmup_steps: self.warmup_steps,
            max_grad_norm: self.max_grad_norm,
            weight_decay: self.weight_decay,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_completion_length: self.max_completion_length,
            ignore_eos: self.ignore_eos,
            loss: PolicyLossConfig {
                loss_type: parse::<LossType>("loss-type", &self.loss_type)?,
                epsilon_low: self.epsilon,
                epsilon_high: self.epsilon_high.unwrap_or(self.epsilon),
                beta: self.beta,
                kl_estimator: parse::<KlEstimator>("kl-estimator", &self.kl_estimator)?,
                entropy_coef: self.entropy_coef,
                max_completion_length: self.max_completion_length,
            },
            scale_rewards: parse::<ScaleRewards>("scale-rewards", &self.scale_rewards)?,
            mask_truncated_completions: self.mask_truncated_completions,
            dynamic_sampling_rounds: self.dynamic_sampling_rounds,
            log_rollouts_every: self.log_rollouts_every,
            retain_every: if self.retain_data.is_some() {
                self.retain_every
            } else {
                0
            },
            replay_coef: self.replay_coef,
            replay_batch_size: self.replay_batch_size,
            guards: GuardConfig {
                hacking_window: self.hacking_window,
                length_drift_ratio: self.length_drift_ratio,
                kl_limit: self.kl_limit,
                forgetting_threshold: self.forgetting_threshold,
                ..GuardConfig::default()
            },
            save_every: self.save_every,
            seed: self.seed,
            progress: !self.quiet,
            ..OnlineConfig::default()
        })
    }
}

/// Prompts as the policy sees them: chat prompts through the model's template.
pub(crate) fn prompt_items(
    a: &RlArgs,
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
                seed: a.seed,
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
    device: &candle_core::Device,
) -> Result<Box<dyn StepScorer>> {
    if spec == "rule" {
        return crate::commands::search::rule_step_checker("--process-reward rule", task);
    }
    let dir = Path::new(spec);
    if !dir.is_dir() {
        bail!("--process-reward {spec}: expected `rule` or a PRM directory written by temper prm");
    }
    Ok(Box::new(
        ProcessRewardModel::open(dir, device)
            .with_context(|| format!("--process-reward {spec}"))?,
    ))
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

pub fn run(a: RlArgs, algorithm: Algorithm) -> Result<()> {
    let (a, run_dir, resume, _lock) = match &a.resume {
        Some(dir) => {
            let lock = RunLock::acquire(dir)?;
            checkpoint::latest(dir)?;
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut saved: RlArgs = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a saved RL config", path.display()))?;
            saved.quiet = a.quiet;
            (saved, dir.clone(), true, lock)
        }
        None => {
            let out = a.output.clone().context("--output is required")?;
            let lock = RunLock::acquire(&out)?;
            if out.join("config.json").exists() || !checkpoint::list(&out).is_empty() {
                bail!(
                    "{} already holds a run: continue it with --resume {}, or choose another --output",
                    out.display(),
                    out.display()
                );
            }
            (a, out, false, lock)
        }
    };
    let config = a.online_config(algorithm)?;
    config.validate()?;
    let model_path = a.model.clone().context("--model is required")?;
    let (device, dtype) = device_and_dtype(&a.device, a.dtype.as_deref())?;
    let files = ModelFiles::open(&model_path, dtype, &device)
        .with_context(|| format!("opening the model {}", model_path.display()))?;
    let tok = files
        .tokenizer
        .clone()
        .with_context(|| format!("{}: the model has no tokenizer", model_path.display()))?;
    let template = files.chat_template.as_ref();
    let prompts = prompt_items(&a, &tok, template)?;
    let ctx = RewardContext {
        task: a.task.clone(),
        level: a.level,
    };
    let reward_spec = a.reward.clone().unwrap_or_else(|| {
        if a.task.is_some() {
            "task_verifier".into()
        } else {
            "math_answer".into()
        }
    });
    let reward = build_reward(&reward_spec, &ctx).with_context(|| "--reward")?;
    let verifier = match &a.verifier {
        Some(s) => Some(build_reward(s, &ctx).with_context(|| "--verifier")?),
        None => None,
    };
    let process = match &a.process_reward {
        Some(spec) => Some(process_scorer(spec, a.task.as_deref(), &device)?),
        None => None,
    };
    let retain = match &a.retain_data {
        Some(p) => Some(sft_data(p, &tok, template)?),
        None => None,
    };
    let replay = match &a.replay_data {
        Some(p) => Some(sft_data(p, &tok, template)?),
        None => None,
    };

    let base = files.transformer()?;
    let mut policy = base.clone();
    let (params, reference) = if a.lora_r > 0 {
        let lora = LoraConfig::new(
            a.lora_r,
            a.lora_alpha,
            0.0,
            LoraTarget::parse_list(&a.lora_targets)?,
        );
        (policy.add_lora(&lora, a.seed)?, None)
    } else {
        (policy.make_trainable(|_| true)?, Some(base))
    };
    if !resume {
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let text = serde_json::to_string_pretty(&a)?;
        let path = run_dir.join("config.json");
        let tmp = run_dir.join(".config.json.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "{:?}: {} prompts, {} x {} completions per batch, {} batches, reward `{reward_spec}`",
        algorithm,
        prompts.len(),
        config.prompts_per_step,
        config.num_generations,
        config.steps
    );
    let summary = run_online(
        &config,
        OnlineInputs {
            policy: policy.clone(),
            params,
            reference,
            tokenizer: &tok,
            prompts: &prompts,
            reward: reward.as_ref(),
            verifier: verifier.as_deref(),
            prm: process.as_deref(),
            retain: retain.as_deref(),
            replay: replay.as_deref(),
        },
        &run_dir,
        resume,
    )?;
    let final_dir = if a.lora_r > 0 {
        let out = run_dir.join("adapter");
        let base = model_path.display().to_string();
        write_final(&out, |tmp| Ok(save_peft(tmp, &policy, &base)?))?;
        out
    } else {
        let out = run_dir.join("model");
        write_final(&out, |tmp| {
            Ok(save_hf_dir(tmp, &policy, Some(&tok), template, dtype)?)
        })?;
        out
    };
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
