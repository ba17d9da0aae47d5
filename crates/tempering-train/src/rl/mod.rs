//! Online reinforcement learning: advantages, KL estimators, the clipped policy objective, the
//! guards and the driver that samples, scores and updates (GRPO and relatives); and the
//! actor-critic methods, PPO and TRPO, with their critic, GAE and trust-region solver. Knows the generation engine and the
//! scorers' traits; nothing of the command line.

pub mod actor_critic;
pub mod advantage;
pub mod cg;
pub mod gae;
pub mod guards;
pub mod kl;
pub mod online;
pub mod policy_loss;
pub mod ppo;
pub mod trpo;
pub mod value;

pub use actor_critic::{
    run_actor_critic, ActorCriticConfig, ActorCriticInputs, AdvantageEstimator, Method,
};
pub use advantage::ScaleRewards;
pub use gae::{KlControl, KlController};
pub use guards::{GuardConfig, GuardState};
pub use kl::KlEstimator;
pub use online::{run_online, Algorithm, OnlineConfig, OnlineInputs, OnlineSummary, PromptItem};
pub use policy_loss::{LossType, PolicyLossConfig, PolicyObjective, RolloutSample};
pub use ppo::{PpoLossConfig, PpoObjective, PpoSample};
pub use trpo::{trpo_update, TrpoConfig, TrpoOutcome};
pub use value::{Critic, ValueHead};
