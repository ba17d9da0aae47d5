//! Offline preference optimisation: DPO and its family (IPO, hinge, robust DPO, SimPO, ORPO, with an
//! optional RPO-style NLL term) on paired data, and KTO on unpaired data, as objectives of the one
//! trainer.
//!
//! - [`data`]: preference rows to token sequences (prompt truncation that never cuts a completion).
//! - [`logps`]: summed completion log-probs of a batch in one forward pass.
//! - [`loss`]: the paired losses on log-probs, TRL's conventions; [`kto`]: KTO's loss and objective.
//! - [`objective`]: the paired objective and its reference (adapters off, frozen copy, precomputed).
//! - [`config`]: the run configuration of `temper dpo` and `temper kto`.
//!
//! Knows the model layer and the datasets; nothing of generation, optimisers or the command line.

pub mod config;
pub mod data;
pub mod kto;
pub mod logps;
pub mod loss;
pub mod objective;

pub use config::{preference_keys, PreferenceConfig, PreferenceKind, PreferenceObjective};
pub use data::{
    load_pairs, load_unpaired, prepare_pairs, prepare_unpaired, PairSequence,
    PreferenceDataOptions, PreferenceReport, PromptCompletion, UnpairedSequence,
};
pub use kto::{kto_loss, KtoLoss, KtoObjective, KtoParams, UnpairedLogps};
pub use loss::{pair_loss, LossParams, PairLogps, PairLoss, PreferenceLoss};
pub use objective::{DpoObjective, PairRewards, Reference};
