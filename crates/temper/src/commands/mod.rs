pub mod chat;
pub mod generate;
pub mod merge;
pub mod model;
pub mod ppo;
pub mod rl;
pub mod sft;
pub mod tasks;
