pub mod chat;
pub mod eval;
pub mod generate;
pub mod merge;
pub mod model;
pub mod search;
pub mod sft;
pub mod tasks;
