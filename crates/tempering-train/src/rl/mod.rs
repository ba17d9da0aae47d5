//! Online reinforcement learning. [`driver`] is the one loop every online algorithm runs in
//! (rollouts through [`rollout`], scores, guards, logs, checkpoints, resume); an algorithm plugs in
//! its update: [`grpo`] (GRPO and its loss types, RLOO, REINFORCE++, process supervision) or
//! [`actor_critic`] (PPO and TRPO, with the critic in [`value`], GAE in [`gae`], the PPO loss in
//! [`ppo`] and the trust-region solver in [`trpo`] and [`cg`]). The pure pieces: advantages, KL
//! estimators, the clipped policy loss and the guards. Knows the generation backend and the
//! scorers' traits; nothing of the command line.

pub mod actor_critic;
pub mod advantage;
pub mod cg;
pub mod driver;
pub mod gae;
pub mod grpo;
pub mod guards;
pub mod kl;
pub mod policy_loss;
pub mod ppo;
pub mod rollout;
pub mod run_config;
pub mod trpo;
pub mod value;

pub use actor_critic::{
    run_actor_critic, ActorCriticConfig, ActorCriticInputs, AdvantageEstimator, Method,
};
pub use advantage::ScaleRewards;
pub use driver::{OnlineConfig, OnlineInputs, OnlineSummary, RlAlgorithm, RolloutServer};
pub use gae::{KlControl, KlController};
pub use grpo::{run_online, Algorithm, GrpoConfig};
pub use guards::{GuardConfig, GuardState};
pub use kl::KlEstimator;
pub use policy_loss::{LossType, PolicyLossConfig, PolicyObjective, RolloutSample};
pub use ppo::{PpoLossConfig, PpoObjective, PpoSample};
pub use rollout::PromptItem;
pub use trpo::{trpo_update, TrpoConfig, TrpoOutcome};
pub use value::{Critic, ValueHead};
