//! One training loop and the algorithms plugged into it. The [`Trainer`] owns the loop (AdamW with
//! f32 moments, warm-up and decay schedules, gradient accumulation and clipping, evaluation,
//! checkpoints with exact resume, `metrics.jsonl`, a progress bar); an algorithm is an [`Objective`]
//! that turns a batch into a summed loss and metrics: [`sft`], [`reward_model`] (Bradley-Terry),
//! [`prm`] (step classification) and the preference family in [`dpo`] (DPO, IPO, hinge, robust,
//! SimPO, ORPO, KTO). Every objective reads its log-probabilities through the decoder's one gather
//! (`Transformer::token_logprobs_at`, `Transformer::hidden_at`).
//!
//! [`rl`] holds online RL: one driver ([`rl::driver`]: rollouts through [`rl::rollout`], scores,
//! guards, logs, checkpoints, resume) with the algorithm as a plug-in ([`rl::RlAlgorithm`]):
//! [`rl::grpo`] (GRPO and its loss types, RLOO, REINFORCE++, process supervision) and
//! [`rl::actor_critic`] (PPO and TRPO with their critic and GAE).
//!
//! Run configurations are flat TOML keys resolved from defaults, a file and the command line:
//! [`config`] (SFT, and the shared resolver), [`dpo::config`], [`reward_config`] (RM, PRM) and
//! [`rl::run_config`] (GRPO, RLOO, PPO, TRPO), each flattening the trainer's keys defined once in
//! [`train_keys`].
//!
//! This crate knows the model layer (the decoder, LoRA, tokenizer, chat templates), the tasks
//! layer (datasets), the generation engine (rollouts) and the reward layer (the scorers' traits, and
//! its tokenisation of reward-model inputs, so that a reward model is trained on exactly what it
//! scores). It knows nothing of search strategies or the command line.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dpo;
pub mod error;
pub mod implicit_prm;
pub mod interrupt;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod prm;
pub mod reward_config;
pub mod reward_model;
pub mod rl;
pub mod rng;
pub mod run_lock;
pub mod schedule;
pub mod sft;
pub mod tiny;
pub mod train_keys;
pub mod trainer;

pub use config::SftConfig;
pub use error::{Result, TrainError};
pub use objective::{LossOutput, Mode, Objective, StepContext};
pub use optim::{AdamW, AdamWConfig};
pub use prm::{PrmObjective, StepSequence};
pub use reward_config::{PrmConfig, RmConfig};
pub use reward_model::{PreferencePair, RewardModelObjective};
pub use rng::Rng;
pub use schedule::{Schedule, ScheduleKind};
pub use sft::{SftDataOptions, SftObjective, SftSequence};
pub use trainer::{FitSummary, TrainConfig, Trainer};
