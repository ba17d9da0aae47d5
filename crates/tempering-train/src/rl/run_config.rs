//! Run configurations of the online RL commands (`temper grpo`/`rloo`, `temper ppo`, `temper
//! trpo`): one flat set of TOML keys each, resolved like the SFT config (defaults, then
//! `--config FILE`, then the command line; unknown keys suggest the nearest) and written to the run
//! directory as `config.toml`. Every command has the run's inputs and the shared online keys
//! ([`RlKeys`], with the trainer's [`StepKeys`] flattened in); each adds its algorithm's own keys.
//! Turns them into the drivers' configs ([`GrpoConfig`], [`ActorCriticConfig`]). Knows keys and
//! values; nothing of how training runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{resolve_keys, run_config_path, write_config};
use crate::error::{Result, TrainError};
use crate::rl::actor_critic::{ActorCriticConfig, AdvantageEstimator, Method};
use crate::rl::advantage::ScaleRewards;
use crate::rl::driver::OnlineConfig;
use crate::rl::gae::KlControl;
use crate::rl::grpo::{Algorithm, GrpoConfig};
use crate::rl::guards::GuardConfig;
use crate::rl::kl::KlEstimator;
use crate::rl::policy_loss::{LossType, PolicyLossConfig};
use crate::rl::ppo::PpoLossConfig;
use crate::rl::trpo::TrpoConfig;
use crate::train_keys::{StepKeys, STEP_KEYS};

/// The keys every online RL command reads: its inputs, the trainer's keys, rollouts, the clip, the
/// guards, LoRA and the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RlKeys {
    /// The policy to start from: an HF directory or a GGUF file.
    pub model: Option<PathBuf>,
    /// RL prompts (JSONL or Parquet): `prompt` (text or messages) and the reference answer.
    pub data: Option<PathBuf>,
    /// The column holding the reference answer.
    pub answer_column: String,
    /// Or prompts from a built-in task's train split (with its verifier as the default reward).
    pub task: Option<String>,
    pub level: Option<u32>,
    /// Built-in task prompts to draw.
    pub num_prompts: usize,
    /// The run directory.
    pub output: Option<PathBuf>,
    /// The training reward (default: task_verifier with a task, math_answer otherwise).
    pub reward: Option<String>,
    /// A held-out verifier logged beside the reward (the reward-hacking monitor).
    pub verifier: Option<String>,

    #[serde(flatten)]
    pub train: StepKeys,

    pub num_generations: usize,
    pub prompts_per_step: usize,
    pub steps: usize,
    pub micro_batch_size: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub max_completion_length: usize,
    pub ignore_eos: bool,
    pub mask_truncated_completions: bool,
    /// The ratio's clip (GRPO's lower bound, PPO's `cliprange`).
    pub epsilon: f64,
    pub kl_estimator: KlEstimator,
    pub entropy_coef: f64,

    pub log_rollouts_every: usize,
    pub retain_data: Option<PathBuf>,
    pub retain_every: usize,
    pub forgetting_threshold: f64,
    pub kl_limit: f64,
    /// At `beta = 0` (GRPO's family), the KL guard's reference forward every this many batches.
    pub kl_every: usize,
    pub hacking_window: usize,
    pub length_drift_ratio: f64,

    /// LoRA rank; 0: full fine-tuning (with a frozen copy as the reference).
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_targets: String,
    pub device: String,
    /// f32, bf16 or f16; unset: f32 on CPU, bf16 on CUDA.
    pub dtype: Option<String>,
}

impl Default for RlKeys {
    fn default() -> Self {
        let o = OnlineConfig::default();
        let g = GuardConfig::default();
        RlKeys {
            model: None,
            data: None,
            answer_column: "answer".into(),
            task: None,
            level: None,
            num_prompts: 2000,
            output: None,
            reward: None,
            verifier: None,
            train: StepKeys {
                learning_rate: o.learning_rate,
                lr_scheduler: o.schedule,
                warmup_steps: o.warmup_steps,
                max_grad_norm: o.max_grad_norm,
                weight_decay: o.weight_decay,
                save_every: o.save_every,
                keep_checkpoints: o.keep_checkpoints,
                seed: o.seed,
            },
            num_generations: o.num_generations,
            prompts_per_step: o.prompts_per_step,
            steps: o.steps,
            micro_batch_size: o.micro_batch_size,
            temperature: o.temperature,
            top_p: o.top_p,
            top_k: o.top_k,
            max_completion_length: o.max_completion_length,
            ignore_eos: o.ignore_eos,
            mask_truncated_completions: o.mask_truncated_completions,
            epsilon: 0.2,
            kl_estimator: KlEstimator::K3,
            entropy_coef: 0.0,
            log_rollouts_every: o.log_rollouts_every,
            retain_data: None,
            retain_every: 10,
            forgetting_threshold: g.forgetting_threshold,
            kl_limit: g.kl_limit,
            kl_every: g.kl_every,
            hacking_window: g.hacking_window,
            length_drift_ratio: g.length_drift_ratio,
            lora_r: 0,
            lora_alpha: 16.0,
            lora_targets: "q,v".into(),
            device: "cpu".into(),
            dtype: None,
        }
    }
}

/// The keys of [`RlKeys`].
fn rl_keys() -> Vec<&'static str> {
    let mut k = vec![
        "model",
        "data",
        "answer_column",
        "task",
        "level",
        "num_prompts",
        "output",
        "reward",
        "verifier",
    ];
    k.extend_from_slice(STEP_KEYS);
    k.extend_from_slice(&[
        "num_generations",
        "prompts_per_step",
        "steps",
        "micro_batch_size",
        "temperature",
        "top_p",
        "top_k",
        "max_completion_length",
        "ignore_eos",
        "mask_truncated_completions",
        "epsilon",
        "kl_estimator",
        "entropy_coef",
        "log_rollouts_every",
        "retain_data",
        "retain_every",
        "forgetting_threshold",
        "kl_limit",
        "kl_every",
        "hacking_window",
        "length_drift_ratio",
        "lora_r",
        "lora_alpha",
        "lora_targets",
        "device",
        "dtype",
    ]);
    k
}

impl RlKeys {
    /// The shared online config (`progress`: draw the progress bar).
    pub fn online_config(&self, progress: bool) -> OnlineConfig {
        let t = &self.train;
        OnlineConfig {
            num_generations: self.num_generations,
            prompts_per_step: self.prompts_per_step,
            steps: self.steps,
            micro_batch_size: self.micro_batch_size,
            learning_rate: t.learning_rate,
            schedule: t.lr_scheduler,
            warmup_steps: t.warmup_steps,
            max_grad_norm: t.max_grad_norm,
            weight_decay: t.weight_decay,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_completion_length: self.max_completion_length,
            ignore_eos: self.ignore_eos,
            mask_truncated_completions: self.mask_truncated_completions,
            log_rollouts_every: self.log_rollouts_every,
            retain_every: if self.retain_data.is_some() {
                self.retain_every
            } else {
                0
            },
            guards: GuardConfig {
                hacking_window: self.hacking_window,
                length_drift_ratio: self.length_drift_ratio,
                kl_limit: self.kl_limit,
                kl_every: self.kl_every,
                forgetting_threshold: self.forgetting_threshold,
                ..GuardConfig::default()
            },
            save_every: t.save_every,
            keep_checkpoints: t.keep_checkpoints,
            seed: t.seed,
            progress,
        }
    }

    /// The reward spec: `reward`, or the task's verifier with a task and `math_answer` without.
    pub fn reward_spec(&self) -> String {
        self.reward.clone().unwrap_or_else(|| {
            if self.task.is_some() {
                "task_verifier".into()
            } else {
                "math_answer".into()
            }
        })
    }
}

/// A GRPO-family run (`temper grpo`, `temper rloo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpoRunConfig {
    #[serde(flatten)]
    pub rl: RlKeys,
    /// REINFORCE++ (`temper grpo` only): batch-whitened returns with the per-token KL in the reward.
    pub reinforce_pp: bool,
    pub num_iterations: usize,
    pub loss_type: LossType,
    /// Upper clip bound (clip-higher); unset: `epsilon`.
    pub epsilon_high: Option<f64>,
    /// KL penalty to the reference.
    pub beta: f64,
    pub scale_rewards: ScaleRewards,
    pub dynamic_sampling_rounds: usize,
    /// Process supervision: `rule` or a PRM directory.
    pub process_reward: Option<String>,
    pub replay_data: Option<PathBuf>,
    pub replay_coef: f64,
    pub replay_batch_size: usize,
}

impl Default for GrpoRunConfig {
    fn default() -> Self {
        let g = GrpoConfig::default();
        GrpoRunConfig {
            rl: RlKeys::default(),
            reinforce_pp: false,
            num_iterations: g.num_iterations,
            loss_type: LossType::Dapo,
            epsilon_high: None,
            beta: 0.0,
            scale_rewards: g.scale_rewards,
            dynamic_sampling_rounds: g.dynamic_sampling_rounds,
            process_reward: None,
            replay_data: None,
            replay_coef: g.replay_coef,
            replay_batch_size: g.replay_batch_size,
        }
    }
}

/// Every key of a GRPO config.
pub fn grpo_keys() -> Vec<&'static str> {
    let mut k = rl_keys();
    k.extend_from_slice(&[
        "reinforce_pp",
        "num_iterations",
        "loss_type",
        "epsilon_high",
        "beta",
        "scale_rewards",
        "dynamic_sampling_rounds",
        "process_reward",
        "replay_data",
        "replay_coef",
        "replay_batch_size",
    ]);
    k
}

impl GrpoRunConfig {
    pub fn resolve(file: Option<&Path>, overrides: toml::Table) -> Result<Self> {
        let cfg: GrpoRunConfig = resolve_keys(file, overrides, &grpo_keys())?;
        cfg.rl.train.validate()?;
        Ok(cfg)
    }

    /// The driver's config: GRPO (REINFORCE++ with `reinforce_pp`), or RLOO when `rloo`.
    pub fn grpo_config(&self, rloo: bool, progress: bool) -> Result<GrpoConfig> {
        let r = &self.rl;
        let algorithm = match (rloo, self.reinforce_pp) {
            (false, false) => Algorithm::Grpo,
            (false, true) => Algorithm::ReinforcePp,
            (true, false) => Algorithm::Rloo,
            (true, true) => {
                return Err(TrainError::config(
                    "reinforce_pp",
                    "REINFORCE++ is `temper grpo --reinforce-pp`, not rloo",
                ))
            }
        };
        Ok(GrpoConfig {
            online: r.online_config(progress),
            algorithm,
            num_iterations: self.num_iterations,
            loss: PolicyLossConfig {
                loss_type: self.loss_type,
                epsilon_low: r.epsilon,
                epsilon_high: self.epsilon_high.unwrap_or(r.epsilon),
                beta: self.beta,
                kl_estimator: r.kl_estimator,
                entropy_coef: r.entropy_coef,
                max_completion_length: r.max_completion_length,
            },
            scale_rewards: self.scale_rewards,
            dynamic_sampling_rounds: self.dynamic_sampling_rounds,
            replay_coef: self.replay_coef,
            replay_batch_size: self.replay_batch_size,
        })
    }

    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        write_config(self, dir)
    }

    pub fn read_run(dir: &Path) -> Result<Self> {
        Self::resolve(Some(&run_config_path(dir)?), toml::Table::new())
    }
}

/// The critic's, GAE's and the KL controller's keys, shared by PPO and TRPO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ActorCriticKeys {
    /// A separate critic model (HF directory or GGUF); unset: a value head on the policy.
    pub critic_model: Option<PathBuf>,
    pub gamma: f64,
    pub lambda: f64,
    pub kl_coef: f64,
    /// Adapt the KL coefficient towards this KL per completion; unset: fixed.
    pub target_kl: Option<f64>,
    pub kl_horizon: f64,
    pub vf_coef: f64,
    pub cliprange_value: f64,
    /// PPO: passes over each rollout batch; TRPO: the critic's regression passes.
    pub epochs: usize,
    pub num_mini_batches: usize,
    pub advantages: AdvantageEstimator,
    pub whiten_advantages: bool,
    pub whiten_rewards: bool,
}

impl Default for ActorCriticKeys {
    fn default() -> Self {
        let a = ActorCriticConfig::default();
        ActorCriticKeys {
            critic_model: None,
            gamma: a.gamma,
            lambda: a.lambda,
            kl_coef: a.kl_coef,
            target_kl: None,
            kl_horizon: 10000.0,
            vf_coef: a.loss.vf_coef,
            cliprange_value: a.loss.clip_value,
            epochs: a.epochs,
            num_mini_batches: a.num_mini_batches,
            advantages: a.advantages,
            whiten_advantages: a.whiten_advantages,
            whiten_rewards: a.whiten_rewards,
        }
    }
}

const ACTOR_CRITIC_KEYS: &[&str] = &[
    "critic_model",
    "gamma",
    "lambda",
    "kl_coef",
    "target_kl",
    "kl_horizon",
    "vf_coef",
    "cliprange_value",
    "epochs",
    "num_mini_batches",
    "advantages",
    "whiten_advantages",
    "whiten_rewards",
];

impl ActorCriticKeys {
    fn config(&self, rl: &RlKeys, method: Method, progress: bool) -> ActorCriticConfig {
        ActorCriticConfig {
            method,
            online: rl.online_config(progress),
            loss: PpoLossConfig {
                clip: rl.epsilon,
                clip_value: self.cliprange_value,
                vf_coef: self.vf_coef,
                entropy_coef: rl.entropy_coef,
                ..PpoLossConfig::default()
            },
            kl_estimator: rl.kl_estimator,
            epochs: self.epochs,
            num_mini_batches: self.num_mini_batches,
            gamma: self.gamma,
            lambda: self.lambda,
            kl_coef: self.kl_coef,
            kl_control: match self.target_kl {
                Some(target) => KlControl::Adaptive {
                    target,
                    horizon: self.kl_horizon,
                },
                None => KlControl::Fixed,
            },
            advantages: self.advantages,
            whiten_advantages: self.whiten_advantages,
            whiten_rewards: self.whiten_rewards,
            kl_stop: 0.0,
            trpo: TrpoConfig::default(),
        }
    }
}

/// A PPO run (`temper ppo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PpoRunConfig {
    #[serde(flatten)]
    pub rl: RlKeys,
    #[serde(flatten)]
    pub ac: ActorCriticKeys,
    /// Stop a batch's epochs once a minibatch's approximate KL (k3) exceeds this; 0: never.
    pub kl_stop: f64,
}

/// Every key of a PPO config.
pub fn ppo_keys() -> Vec<&'static str> {
    let mut k = rl_keys();
    k.extend_from_slice(ACTOR_CRITIC_KEYS);
    k.push("kl_stop");
    k
}

impl PpoRunConfig {
    pub fn resolve(file: Option<&Path>, overrides: toml::Table) -> Result<Self> {
        let cfg: PpoRunConfig = resolve_keys(file, overrides, &ppo_keys())?;
        cfg.rl.train.validate()?;
        Ok(cfg)
    }

    pub fn config(&self, progress: bool) -> ActorCriticConfig {
        ActorCriticConfig {
            kl_stop: self.kl_stop,
            ..self.ac.config(&self.rl, Method::Ppo, progress)
        }
    }

    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        write_config(self, dir)
    }

    pub fn read_run(dir: &Path) -> Result<Self> {
        Self::resolve(Some(&run_config_path(dir)?), toml::Table::new())
    }
}

/// A TRPO run (`temper trpo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrpoRunConfig {
    #[serde(flatten)]
    pub rl: RlKeys,
    #[serde(flatten)]
    pub ac: ActorCriticKeys,
    /// The trust region: the largest mean per-token KL(old || new) a step may reach.
    pub max_kl: f64,
    pub cg_iterations: usize,
    /// Damping added to the Fisher's diagonal.
    pub cg_damping: f64,
    pub max_backtracks: usize,
    pub backtrack_coef: f64,
    pub fd_epsilon: f64,
    /// The share of each batch's samples the Fisher-vector products use.
    pub fisher_fraction: f64,
}

impl Default for TrpoRunConfig {
    fn default() -> Self {
        let t = TrpoConfig::default();
        TrpoRunConfig {
            rl: RlKeys::default(),
            ac: ActorCriticKeys::default(),
            max_kl: t.max_kl,
            cg_iterations: t.cg_iterations,
            cg_damping: t.damping,
            max_backtracks: t.max_backtracks,
            backtrack_coef: t.backtrack_coef,
            fd_epsilon: t.fd_epsilon,
            fisher_fraction: t.fisher_fraction,
        }
    }
}

/// Every key of a TRPO config.
pub fn trpo_keys() -> Vec<&'static str> {
    let mut k = rl_keys();
    k.extend_from_slice(ACTOR_CRITIC_KEYS);
    k.extend_from_slice(&[
        "max_kl",
        "cg_iterations",
        "cg_damping",
        "max_backtracks",
        "backtrack_coef",
        "fd_epsilon",
        "fisher_fraction",
    ]);
    k
}

impl TrpoRunConfig {
    pub fn resolve(file: Option<&Path>, overrides: toml::Table) -> Result<Self> {
        let cfg: TrpoRunConfig = resolve_keys(file, overrides, &trpo_keys())?;
        cfg.rl.train.validate()?;
        Ok(cfg)
    }

    pub fn config(&self, progress: bool) -> ActorCriticConfig {
        let c = self.ac.config(&self.rl, Method::Trpo, progress);
        ActorCriticConfig {
            trpo: TrpoConfig {
                max_kl: self.max_kl,
                cg_iterations: self.cg_iterations,
                damping: self.cg_damping,
                max_backtracks: self.max_backtracks,
                backtrack_coef: self.backtrack_coef,
                fd_epsilon: self.fd_epsilon,
                micro_batch_size: c.online.micro_batch_size,
                fisher_fraction: self.fisher_fraction,
            },
            ..c
        }
    }

    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        write_config(self, dir)
    }

    pub fn read_run(dir: &Path) -> Result<Self> {
        Self::resolve(Some(&run_config_path(dir)?), toml::Table::new())
    }
}

/// The keys of a run saved before `config.toml` (a `config.json` of the command's flags, with
/// PPO's and TRPO's nested under `ac` and `rl`), as overrides for `resolve`: nulls and keys not
/// in `keys` (another algorithm's flags the old command carried unused) dropped, `lam` read as
/// `lambda` and `no_whiten_advantages` as `whiten_advantages`.
pub fn legacy_json_overrides(json: &serde_json::Value, keys: &[&str]) -> Result<toml::Table> {
    fn flatten(v: &serde_json::Value, out: &mut serde_json::Map<String, serde_json::Value>) {
        if let Some(obj) = v.as_object() {
            for (k, v) in obj {
                match (k.as_str(), v) {
                    ("ac" | "rl", serde_json::Value::Object(_)) => flatten(v, out),
                    (_, serde_json::Value::Null) => {}
                    ("lam", _) => {
                        out.insert("lambda".into(), v.clone());
                    }
                    ("no_whiten_advantages", serde_json::Value::Bool(b)) => {
                        out.insert("whiten_advantages".into(), (!b).into());
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    let mut flat = serde_json::Map::new();
    flatten(json, &mut flat);
    flat.retain(|k, _| keys.contains(&k.as_str()));
    toml::Table::try_from(flat)
        .map_err(|e| TrainError::config("<config>", format!("an unreadable config.json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_configs_round_trip_through_toml_with_every_key_known() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = GrpoRunConfig {
            beta: 0.04,
            process_reward: Some("rule".into()),
            ..Default::default()
        };
        g.rl.model = Some("m".into());
        g.rl.train.learning_rate = 1e-3;
        g.write(dir.path()).unwrap();
        assert_eq!(GrpoRunConfig::read_run(dir.path()).unwrap(), g);
        let mut t = TrpoRunConfig::default();
        t.ac.lambda = 0.9;
        t.max_kl = 0.02;
        t.write(dir.path()).unwrap();
        assert_eq!(TrpoRunConfig::read_run(dir.path()).unwrap(), t);
        let text = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let known = trpo_keys();
        assert!(table.keys().all(|k| known.contains(&k.as_str())), "{text}");
        // A PPO key is unknown to GRPO, with the nearest known one suggested.
        let mut o = toml::Table::new();
        o.insert("kl_coef".into(), toml::Value::Float(0.1));
        let e = GrpoRunConfig::resolve(None, o).unwrap_err().to_string();
        assert!(e.contains("kl_coef"), "{e}");
    }

    #[test]
    fn a_legacy_config_json_reads_as_overrides() {
        let json = serde_json::json!({
            "ac": {"rl": {"model": "m", "steps": 3, "dtype": null}, "lam": 0.9,
                   "no_whiten_advantages": true},
            "kl_stop": 0.5, "beta": 0.0
        });
        let o = legacy_json_overrides(&json, &ppo_keys()).unwrap();
        assert!(!o.contains_key("beta") && !o.contains_key("dtype"), "{o:?}");
        let cfg = PpoRunConfig::resolve(None, o).unwrap();
        assert_eq!(cfg.rl.model.as_deref(), Some(Path::new("m")));
        assert_eq!(cfg.rl.steps, 3);
        assert_eq!(cfg.ac.lambda, 0.9);
        assert!(!cfg.ac.whiten_advantages);
        assert_eq!(cfg.kl_stop, 0.5);
    }
}
