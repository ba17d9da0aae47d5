//! Online reinforcement learning: advantages, KL estimators, the clipped policy objective, the
//! guards and the driver that samples, scores and updates. Knows the generation engine and the
//! scorers' traits; nothing of the command line.

pub mod advantage;
pub mod guards;
pub mod kl;
pub mod online;
pub mod policy_loss;

pub use advantage::ScaleRewards;
pub use guards::{GuardConfig, GuardState};
pub use kl::KlEstimator;
pub use online::{run_online, Algorithm, OnlineConfig, OnlineInputs, OnlineSummary, PromptItem};
pub use policy_loss::{LossType, PolicyLossConfig, PolicyObjective, RolloutSample};
