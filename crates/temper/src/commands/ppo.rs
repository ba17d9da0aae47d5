//! `temper ppo` and `temper trpo`: actor-critic RL. The shared RL flags (model, prompts, rewards,
//! sampling, guards, LoRA, checkpoints, `--config`, `--resume`) plus the critic's, GAE's and the KL
//! controller's, PPO's or TRPO's own, and `--rollout-backend` (rollouts on a server, as `temper
//! grpo`'s); nothing of GRPO's. Resolves them into the library's `ActorCriticConfig`, opens the run
//! as `temper grpo` does, loads the optional critic model, runs `run_actor_critic` and writes the
//! final model or adapter. Holds no algorithm of its own.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tempering_model::ModelFiles;
use tempering_train::rl::run_config::{ppo_keys, trpo_keys, PpoRunConfig, RlKeys, TrpoRunConfig};
use tempering_train::rl::{
    run_actor_critic, ActorCriticConfig, ActorCriticInputs, AdvantageEstimator, RolloutServer,
};

use crate::commands::common::flag_table;
use crate::commands::rl::{open_rl_run, RlFlags, RlRun};
use crate::commands::rollout_server::ServerPolicy;

/// GRPO's flags that PPO and TRPO do not read: hidden from `--help`, and refused naming what to
/// use instead (rather than clap's bare "unexpected argument").
#[derive(Args, Default, Debug, Clone)]
pub struct NotActorCritic {
    #[arg(long, hide = true)]
    beta: Option<f64>,
    #[arg(long, hide = true)]
    num_iterations: Option<usize>,
    #[arg(long, hide = true)]
    dynamic_sampling_rounds: Option<usize>,
    #[arg(long, hide = true)]
    process_reward: Option<String>,
    #[arg(long, hide = true)]
    replay_data: Option<std::path::PathBuf>,
    #[arg(long, hide = true)]
    replay_coef: Option<f64>,
}

impl NotActorCritic {
    fn check(&self) -> Result<()> {
        if self.beta.is_some_and(|b| b != 0.0) {
            bail!(
                "--beta is GRPO's KL penalty; PPO and TRPO put the KL in the reward: use --kl-coef"
            );
        }
        if self.num_iterations.is_some_and(|n| n != 1) {
            bail!("--num-iterations is GRPO's; PPO uses --epochs and --num-mini-batches");
        }
        if self.dynamic_sampling_rounds.is_some_and(|n| n != 0) {
            bail!("--dynamic-sampling-rounds is not supported by PPO and TRPO");
        }
        if self.process_reward.is_some() {
            bail!("--process-reward applies to grpo and rloo; ppo and trpo learn a critic instead");
        }
        if self.replay_data.is_some() || self.replay_coef.is_some_and(|c| c != 0.0) {
            bail!(
                "--replay-data is not supported by PPO and TRPO (watch forgetting with --retain-data)"
            );
        }
        Ok(())
    }
}

/// The critic, GAE and KL-controller flags shared by PPO and TRPO.
#[derive(Args, Serialize, Default, Debug, Clone)]
pub struct ActorCriticFlags {
    /// A separate critic model (HF directory or GGUF), trained with its own value head (full or
    /// LoRA as the policy); default: a value head on the policy's last hidden state.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critic_model: Option<PathBuf>,
    /// Discount of the per-token rewards (default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// GAE's lambda (default 0.95).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// The (initial) coefficient of the per-token KL to the reference inside the reward (default 0.05).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_coef: Option<f64>,
    /// Adapt the KL coefficient towards this KL per completion (summed over tokens); unset: fixed.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_kl: Option<f64>,
    /// The adaptive controller's horizon, in completions (default 10000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_horizon: Option<f64>,
    /// Weight of the value loss (default 0.1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vf_coef: Option<f64>,
    /// How far a value may move from its rollout value before the value loss clips (default 0.2).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cliprange_value: Option<f64>,
    /// PPO: passes over each rollout batch; TRPO: the critic's regression passes (default 4).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Minibatches (optimiser steps) per pass (default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_mini_batches: Option<usize>,
    /// The advantages: `gae` (the critic's values and GAE) or `group` (each completion's return
    /// against the other completions of its prompt, GRPO's baseline; needs --num-generations >= 2).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advantages: Option<AdvantageEstimator>,
    /// Keep the raw GAE advantages (default: whitened over the batch's tokens).
    #[arg(long)]
    #[serde(skip)]
    pub no_whiten_advantages: bool,
    /// Whiten the per-token rewards over the batch before GAE.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whiten_rewards: Option<bool>,
}

/// Where the rollouts are generated: `--rollout-backend` (not a config key: a run's place, not
/// its recipe).
#[derive(Args, Default, Debug, Clone)]
pub struct RolloutBackendFlag {
    /// Generate the rollouts on an OpenAI-compatible server running the same base model that
    /// loads LoRA adapters at run time (`temper serve --allow-runtime-lora`, or vLLM with
    /// --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) and reads this run directory:
    /// each new policy adapter is loaded there as policy-step-N (the critic stays here). With LoRA.
    #[arg(long, value_name = "URL")]
    pub rollout_backend: Option<String>,
}

/// `temper ppo`.
#[derive(Args, Serialize, Default, Debug, Clone)]
pub struct PpoArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub rl: RlFlags,
    #[command(flatten)]
    #[serde(flatten)]
    pub ac: ActorCriticFlags,
    #[command(flatten)]
    #[serde(skip)]
    pub rollout: RolloutBackendFlag,
    #[command(flatten)]
    #[serde(skip)]
    pub not: NotActorCritic,
    /// Stop the epochs of a rollout batch once a minibatch's approximate KL (k3) to the rollout
    /// policy exceeds this; 0: never.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_stop: Option<f64>,
}

/// `temper trpo`.
#[derive(Args, Serialize, Default, Debug, Clone)]
pub struct TrpoArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub rl: RlFlags,
    #[command(flatten)]
    #[serde(flatten)]
    pub ac: ActorCriticFlags,
    #[command(flatten)]
    #[serde(skip)]
    pub rollout: RolloutBackendFlag,
    #[command(flatten)]
    #[serde(skip)]
    pub not: NotActorCritic,
    /// The trust region: the largest mean per-token KL(old || new) a step may reach (default 0.01).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_kl: Option<f64>,
    /// (default 10)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cg_iterations: Option<usize>,
    /// Damping added to the Fisher's diagonal (default 0.1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cg_damping: Option<f64>,
    /// (default 10)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backtracks: Option<usize>,
    /// Each backtrack multiplies the step by this (default 0.5).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backtrack_coef: Option<f64>,
    /// The finite-difference step of the Fisher-vector products, relative to the weights' norm.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_epsilon: Option<f64>,
    /// The share of each batch's samples the Fisher-vector products use (TRPO's subsampling; the
    /// line search still measures the KL on the whole batch; default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fisher_fraction: Option<f64>,
}

/// The command line's keys: the flags given, with `--no-whiten-advantages` as
/// `whiten_advantages = false`.
fn overrides<T: Serialize>(a: &T, ac: &ActorCriticFlags) -> Result<toml::Table> {
    let mut t = flag_table(a)?;
    if ac.no_whiten_advantages {
        t.insert("whiten_advantages".into(), toml::Value::Boolean(false));
    }
    Ok(t)
}

pub fn ppo(a: PpoArgs) -> Result<()> {
    a.not.check()?;
    let cli = overrides(&a, &a.ac)?;
    let (cfg, run_dir, resume, _lock) =
        open_rl_run(&a.rl, cli, PpoRunConfig::resolve, &ppo_keys(), |c| {
            c.rl.output.as_deref()
        })?;
    let config = cfg.config(!a.rl.control.quiet);
    run(
        &cfg.rl,
        cfg.ac.critic_model.as_deref(),
        a.rollout.rollout_backend.as_deref(),
        config,
        &run_dir,
        resume,
        |dir| {
            cfg.write(dir)?;
            Ok(())
        },
    )
}

pub fn trpo(a: TrpoArgs) -> Result<()> {
    a.not.check()?;
    let cli = overrides(&a, &a.ac)?;
    let (cfg, run_dir, resume, _lock) =
        open_rl_run(&a.rl, cli, TrpoRunConfig::resolve, &trpo_keys(), |c| {
            c.rl.output.as_deref()
        })?;
    let config = cfg.config(!a.rl.control.quiet);
    run(
        &cfg.rl,
        cfg.ac.critic_model.as_deref(),
        a.rollout.rollout_backend.as_deref(),
        config,
        &run_dir,
        resume,
        |dir| {
            cfg.write(dir)?;
            Ok(())
        },
    )
}

fn run(
    keys: &RlKeys,
    critic_path: Option<&std::path::Path>,
    rollout_backend: Option<&str>,
    config: ActorCriticConfig,
    run_dir: &std::path::Path,
    resume: bool,
    write_config: impl FnOnce(&std::path::Path) -> Result<()>,
) -> Result<()> {
    config.validate()?;
    let run = RlRun::open(keys)?;
    let critic_model = match critic_path {
        Some(path) => {
            let files = ModelFiles::open(path, run.dtype, &run.device)
                .with_context(|| format!("opening the critic model {}", path.display()))?;
            let mut critic = files.transformer()?;
            let cparams = match &run.lora {
                Some(l) => critic.add_lora(l, keys.train.seed ^ 0xC417)?,
                None => critic.make_trainable(|_| true)?,
            };
            Some((critic, cparams))
        }
        None => None,
    };
    if !resume {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        write_config(run_dir)?;
    }
    let o = &config.online;
    eprintln!(
        "{:?}: {} prompts, {} x {} completions per batch, {} batches, reward `{}`, critic: {}",
        config.method,
        run.prompts.len(),
        o.prompts_per_step,
        o.num_generations,
        o.steps,
        run.reward_spec,
        critic_path.map_or("value head on the policy".to_string(), |p| p
            .display()
            .to_string())
    );
    let mut server = match rollout_backend {
        Some(url) => Some(ServerPolicy::connect(
            url,
            &run.model_path,
            run_dir,
            run.lora.is_some(),
        )?),
        None => None,
    };
    let mut online = run.inputs();
    online.rollout_server = server.as_mut().map(|s| s as &mut dyn RolloutServer);
    let summary = run_actor_critic(
        &config,
        ActorCriticInputs {
            online,
            critic_model,
        },
        run_dir,
        resume,
    )?;
    let final_dir = run.save(run_dir)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Ppo {
        #[command(flatten)]
        a: PpoArgs,
    }

    #[derive(clap::Parser)]
    struct Trpo {
        #[command(flatten)]
        a: TrpoArgs,
    }

    fn flags(cmd: clap::Command) -> Vec<String> {
        cmd.get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(|s| s.replace('-', "_")))
            // Not recipe keys: how the command runs (`rollout_backend`: where it samples).
            .filter(|f| {
                ![
                    "config",
                    "resume",
                    "quiet",
                    "no_whiten_advantages",
                    "rollout_backend",
                ]
                .contains(&f.as_str())
            })
            .collect()
    }

    #[test]
    fn the_flags_are_exactly_the_config_keys() {
        // `temper ppo --help` lists only what PPO reads: every flag is a PPO key and back.
        for (mut f, mut k) in [
            (flags(Ppo::command()), ppo_keys()),
            (flags(Trpo::command()), trpo_keys()),
        ] {
            f.sort();
            k.retain(|k| *k != "whiten_advantages");
            k.sort();
            assert_eq!(f, k);
        }
        let ppo = flags(Ppo::command());
        for grpo_only in [
            "beta",
            "num_iterations",
            "loss_type",
            "replay_data",
            "process_reward",
        ] {
            assert!(!ppo.iter().any(|f| f == grpo_only), "{grpo_only}");
        }
    }
}
