//! One training loop and the algorithms plugged into it. The [`Trainer`] owns the loop (AdamW with
//! f32 moments, warm-up and decay schedules, gradient accumulation and clipping, evaluation,
//! checkpoints with exact resume, `metrics.jsonl`, a progress bar); an algorithm is an [`Objective`]
//! that turns a batch into a summed loss and metrics: [`sft`], and the preference family in [`dpo`]
//! (DPO, IPO, hinge, robust, SimPO, ORPO, KTO).
//!
//! This crate knows the model layer (the decoder, LoRA, tokenizer, chat templates) and the tasks
//! layer (datasets). It knows nothing of generation engines, search or the command line.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dpo;
pub mod error;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod rng;
pub mod schedule;
pub mod sft;
pub mod tiny;
pub mod trainer;

pub use config::SftConfig;
pub use error::{Result, TrainError};
pub use objective::{LossOutput, Mode, Objective, StepContext};
pub use optim::{AdamW, AdamWConfig};
pub use rng::Rng;
pub use schedule::{Schedule, ScheduleKind};
pub use sft::{SftDataOptions, SftObjective, SftSequence};
pub use trainer::{FitSummary, TrainConfig, Trainer};
