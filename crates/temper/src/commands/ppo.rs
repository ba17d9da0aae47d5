//! `temper ppo` and `temper trpo`: actor-critic RL with the GRPO command's flags (`RlArgs`: model,
//! prompts, rewards, sampling, guards, LoRA, checkpoints, resume) plus the critic, GAE, KL
//! controller and the PPO or TRPO settings. Resolves flags into the library's
//! `ActorCriticConfig`, loads the policy, reference and optional critic model, runs
//! `run_actor_critic` and writes the final model or adapter. Holds no algorithm of its own.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use tempering_model::loader::save_hf_dir;
use tempering_model::{save_peft, LoraConfig, LoraTarget, ModelFiles};
use tempering_reward::spec::{build_reward, RewardContext};
use tempering_train::checkpoint;
use tempering_train::rl::{
    run_actor_critic, ActorCriticConfig, ActorCriticInputs, AdvantageEstimator, Algorithm,
    KlControl, Method, OnlineInputs, PpoLossConfig, TrpoConfig,
};
use tempering_train::run_lock::RunLock;

use crate::commands::rl::{prompt_items, sft_data, RlArgs};
use crate::commands::sft::write_final;
use crate::device::device_and_dtype;

/// The critic, GAE and KL-controller flags shared by PPO and TRPO.
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct ActorCriticArgs {
    #[command(flatten)]
    pub rl: RlArgs,
    /// A separate critic model (HF directory or GGUF), trained with its own value head (full or
    /// LoRA as the policy); default: a value head on the policy's last hidden state.
    #[arg(long)]
    pub critic_model: Option<PathBuf>,
    /// Discount of the per-token rewards.
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f64,
    /// GAE's lambda.
    #[arg(long = "lambda", default_value_t = 0.95)]
    pub lam: f64,
    /// The (initial) coefficient of the per-token KL to the reference inside the reward.
    #[arg(long, default_value_t = 0.05)]
    pub kl_coef: f64,
    /// Adapt the KL coefficient towards this KL per completion (summed over tokens); unset: fixed.
    #[arg(long)]
    pub target_kl: Option<f64>,
    /// The adaptive controller's horizon, in completions.
    #[arg(long, default_value_t = 10000.0)]
    pub kl_horizon: f64,
    /// Weight of the value loss.
    #[arg(long, default_value_t = 0.1)]
    pub vf_coef: f64,
    /// How far a value may move from its rollout value before the value loss clips.
    #[arg(long, default_value_t = 0.2)]
    pub cliprange_value: f64,
    /// PPO: passes over each rollout batch; TRPO: the critic's regression passes.
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    /// Minibatches (optimiser steps) per pass.
    #[arg(long, default_value_t = 1)]
    pub num_mini_batches: usize,
    /// The advantages: `gae` (the critic's values and GAE) or `group` (each completion's return
    /// against the other completions of its prompt, GRPO's baseline; needs --num-generations >= 2).
    #[arg(long, default_value = "gae")]
    #[serde(default = "gae")]
    pub advantages: AdvantageEstimator,
    /// Keep the raw GAE advantages (default: whitened over the batch's tokens).
    #[arg(long)]
    pub no_whiten_advantages: bool,
    /// Whiten the per-token rewards over the batch before GAE.
    #[arg(long)]
    pub whiten_rewards: bool,
}

#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct PpoArgs {
    #[command(flatten)]
    pub ac: ActorCriticArgs,
    /// Stop the epochs of a rollout batch once a minibatch's approximate KL (k3) to the rollout
    /// policy exceeds this; 0: never.
    #[arg(long, default_value_t = 0.0)]
    pub kl_stop: f64,
}

#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct TrpoArgs {
    #[command(flatten)]
    pub ac: ActorCriticArgs,
    /// The trust region: the largest mean per-token KL(old || new) a step may reach.
    #[arg(long, default_value_t = 0.01)]
    pub max_kl: f64,
    #[arg(long, default_value_t = 10)]
    pub cg_iterations: usize,
    /// Damping added to the Fisher's diagonal.
    #[arg(long, default_value_t = 0.1)]
    pub cg_damping: f64,
    #[arg(long, default_value_t = 10)]
    pub max_backtracks: usize,
    /// Each backtrack multiplies the step by this.
    #[arg(long, default_value_t = 0.5)]
    pub backtrack_coef: f64,
    /// The finite-difference step of the Fisher-vector products, relative to the weights' norm.
    #[arg(long, default_value_t = 1e-2)]
    pub fd_epsilon: f64,
    /// The share of each batch's samples the Fisher-vector products use (TRPO's subsampling; the
    /// line search still measures the KL on the whole batch).
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "one")]
    pub fisher_fraction: f64,
}

fn gae() -> AdvantageEstimator {
    AdvantageEstimator::Gae
}

fn one() -> f64 {
    1.0
}

impl ActorCriticArgs {
    fn config(&self, method: Method) -> Result<ActorCriticConfig> {
        let a = &self.rl;
        if a.beta != 0.0 {
            bail!(
                "--beta is GRPO's KL penalty; PPO and TRPO put the KL in the reward: use --kl-coef"
            );
        }
        if a.num_iterations != 1 {
            bail!("--num-iterations is GRPO's; PPO uses --epochs and --num-mini-batches");
        }
        if a.dynamic_sampling_rounds != 0 {
            bail!("--dynamic-sampling-rounds is not supported by PPO and TRPO");
        }
        let online = a.online_config(Algorithm::Grpo)?;
        Ok(ActorCriticConfig {
            method,
            loss: PpoLossConfig {
                clip: a.epsilon,
                clip_value: self.cliprange_value,
                vf_coef: self.vf_coef,
                entropy_coef: a.entropy_coef,
                ..PpoLossConfig::default()
            },
            online,
            epochs: self.epochs,
            num_mini_batches: self.num_mini_batches,
            gamma: self.gamma,
            lambda: self.lam,
            kl_coef: self.kl_coef,
            kl_control: match self.target_kl {
                Some(target) => KlControl::Adaptive {
                    target,
                    horizon: self.kl_horizon,
                },
                None => KlControl::Fixed,
            },
            advantages: self.advantages,
            whiten_advantages: !self.no_whiten_advantages,
            whiten_rewards: self.whiten_rewards,
            kl_stop: 0.0,
            trpo: TrpoConfig::default(),
        })
    }
}

fn resolve<T: Serialize + for<'de> Deserialize<'de>>(
    args: T,
    resume: Option<&PathBuf>,
    output: Option<&PathBuf>,
    quiet: bool,
    set_quiet: impl Fn(&mut T, bool),
) -> Result<(T, PathBuf, bool, RunLock)> {
    match resume {
        Some(dir) => {
            let lock = RunLock::acquire(dir)?;
            checkpoint::latest(dir)?;
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut saved: T = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a saved PPO/TRPO config", path.display()))?;
            set_quiet(&mut saved, quiet);
            Ok((saved, dir.clone(), true, lock))
        }
        None => {
            let out = output.cloned().context("--output is required")?;
            let lock = RunLock::acquire(&out)?;
            checkpoint::check_new_run(&out)?;
            Ok((args, out, false, lock))
        }
    }
}

pub fn ppo(a: PpoArgs) -> Result<()> {
    let (resume, output, quiet) = (
        a.ac.rl.resume.clone(),
        a.ac.rl.output.clone(),
        a.ac.rl.quiet,
    );
    let (a, run_dir, resume, _lock) =
        resolve(a, resume.as_ref(), output.as_ref(), quiet, |s, q| {
            s.ac.rl.quiet = q
        })?;
    let mut config = a.ac.config(Method::Ppo)?;
    config.kl_stop = a.kl_stop;
    let saved = serde_json::to_string_pretty(&a)?;
    run(&a.ac, config, &run_dir, resume, &saved)
}

pub fn trpo(a: TrpoArgs) -> Result<()> {
    let (resume, output, quiet) = (
        a.ac.rl.resume.clone(),
        a.ac.rl.output.clone(),
        a.ac.rl.quiet,
    );
    let (a, run_dir, resume, _lock) =
        resolve(a, resume.as_ref(), output.as_ref(), quiet, |s, q| {
            s.ac.rl.quiet = q
        })?;
    let mut config = a.ac.config(Method::Trpo)?;
    config.trpo = TrpoConfig {
        max_kl: a.max_kl,
        cg_iterations: a.cg_iterations,
        damping: a.cg_damping,
        max_backtracks: a.max_backtracks,
        backtrack_coef: a.backtrack_coef,
        fd_epsilon: a.fd_epsilon,
        micro_batch_size: config.online.micro_batch_size,
        fisher_fraction: a.fisher_fraction,
    };
    let saved = serde_json::to_string_pretty(&a)?;
    run(&a.ac, config, &run_dir, resume, &saved)
}

fn run(
    ac: &ActorCriticArgs,
    config: ActorCriticConfig,
    run_dir: &Path,
    resume: bool,
    saved_config: &str,
) -> Result<()> {
    config.validate()?;
    let a = &ac.rl;
    if a.process_reward.is_some() {
        bail!("--process-reward applies to grpo and rloo; ppo and trpo learn a critic instead");
    }
    let model_path = a.model.clone().context("--model is required")?;
    let (device, dtype) = device_and_dtype(&a.device, a.dtype.as_deref())?;
    let files = ModelFiles::open(&model_path, dtype, &device)
        .with_context(|| format!("opening the model {}", model_path.display()))?;
    let tok = files.require_tokenizer()?.clone();
    let template = files.chat_template.as_ref();
    let prompts = prompt_items(a, &tok, template)?;
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
    let retain = match &a.retain_data {
        Some(p) => Some(sft_data(p, &tok, template)?),
        None => None,
    };
    if a.replay_data.is_some() || a.replay_coef != 0.0 {
        bail!(
            "--replay-data is not supported by PPO and TRPO (watch forgetting with --retain-data)"
        );
    }

    let lora = if a.lora_r > 0 {
        Some(LoraConfig::new(
            a.lora_r,
            a.lora_alpha,
            0.0,
            LoraTarget::parse_list(&a.lora_targets)?,
        ))
    } else {
        None
    };
    let base = files.transformer()?;
    let mut policy = base.clone();
    let (params, reference) = match &lora {
        Some(l) => (policy.add_lora(l, a.seed)?, None),
        None => (policy.make_trainable(|_| true)?, Some(base)),
    };
    let critic_model = match &ac.critic_model {
        Some(path) => {
            let files = ModelFiles::open(path, dtype, &device)
                .with_context(|| format!("opening the critic model {}", path.display()))?;
            let mut critic = files.transformer()?;
            let cparams = match &lora {
                Some(l) => critic.add_lora(l, a.seed ^ 0xC417)?,
                None => critic.make_trainable(|_| true)?,
            };
            Some((critic, cparams))
        }
        None => None,
    };
    if !resume {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let path = run_dir.join("config.json");
        tempering_model::write_atomic(&path, saved_config.as_bytes())?;
    }
    let o = &config.online;
    eprintln!(
        "{:?}: {} prompts, {} x {} completions per batch, {} batches, reward `{reward_spec}`, critic: {}",
        config.method,
        prompts.len(),
        o.prompts_per_step,
        o.num_generations,
        o.steps,
        ac.critic_model
            .as_ref()
            .map_or("value head on the policy".to_string(), |p| p.display().to_string())
    );
    let summary = run_actor_critic(
        &config,
        ActorCriticInputs {
            online: OnlineInputs {
                policy: policy.clone(),
                params,
                reference,
                tokenizer: &tok,
                prompts: &prompts,
                reward: reward.as_ref(),
                verifier: verifier.as_deref(),
                prm: None,
                retain: retain.as_deref(),
                replay: None,
            },
            critic_model,
        },
        run_dir,
        resume,
    )?;
    let final_dir = if lora.is_some() {
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
    let fmt = |k: &str, p: usize| get(k).map_or("-".into(), |v| format!("{v:.p$}"));
    eprintln!(
        "done: {} rollout batches; last reward {}, kl {}, value loss {}, explained variance {}; warnings {:?}; {} written (the critic is in the checkpoint)",
        summary.steps,
        fmt("reward", 3),
        fmt("kl", 4),
        fmt("value_loss", 4),
        fmt("explained_variance", 3),
        summary.guards.warnings,
        final_dir.display()
    );
    Ok(())
}
