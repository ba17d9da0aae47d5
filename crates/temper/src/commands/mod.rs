pub mod backend_flags;
pub mod chat;
pub mod common;
pub mod demo;
pub mod demo_report;
pub mod dpo;
pub mod dpo_rewards;
pub mod eval;
pub mod generate;
pub mod label_steps;
pub mod merge;
pub mod model;
pub mod model_arg;
pub mod ppo;
pub mod prm;
pub mod rl;
pub mod rm;
pub mod rollout_server;
pub mod score;
pub mod search;
pub mod serve;
pub mod sft;
pub mod tasks;
pub mod train_flags;

/// A training command stopped by a signal after writing a checkpoint: what `temper` prints (and
/// `128 + signal` is its exit status).
#[derive(Debug)]
pub struct Interrupted {
    pub command: &'static str,
    pub step: usize,
    pub dir: std::path::PathBuf,
    pub signal: i32,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted at step {}; resume with temper {} --resume {}",
            self.step,
            self.command,
            self.dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}
