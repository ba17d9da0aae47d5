pub mod chat;
pub mod dpo;
pub mod dpo_rewards;
pub mod generate;
pub mod merge;
pub mod model;
pub mod sft;
pub mod tasks;
