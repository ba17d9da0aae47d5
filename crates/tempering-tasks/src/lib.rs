//! Plain data: datasets in TRL's column conventions and the built-in verifiable task families.
//! Knows nothing of models, tokenizers or training, so every layer above can use it.
//!
//! - [`dataset`]: JSONL (and Parquet) rows and their typed views for SFT, preference, unpaired,
//!   stepwise and RL-prompt datasets.
//! - [`task`], [`arithmetic`], [`countdown`], [`base`]: seeded generators with difficulty levels,
//!   worked step-by-step solutions and verifiers; [`record`] writes them as JSONL; [`expr`] holds
//!   the integer expressions arithmetic and countdown share, [`rng`] the crate's own seeded PRNG.

pub mod arithmetic;
pub mod base;
pub mod countdown;
pub mod dataset;
pub mod error;
pub mod expr;
pub mod record;
pub mod rng;
pub mod task;

pub use error::{Result, TaskError};
pub use record::{check_records, records, write_jsonl, TaskRecord};
pub use rng::SplitMix64;
pub use task::{
    check_disjoint, extract_answer, generate, split_of, GenerateSpec, Problem, Spec, Split, Task,
    Verdict, ANSWER_MARKER, STEP_SEPARATOR, TEST_PER_MILLE,
};

/// Every built-in task, in a stable order.
pub fn list_tasks() -> Vec<Box<dyn Task>> {
    vec![
        Box::new(arithmetic::Arithmetic),
        Box::new(countdown::Countdown),
        Box::new(base::BaseConversion),
    ]
}

/// The built-in task called `name`; the error lists the known names.
pub fn task_by_name(name: &str) -> Result<Box<dyn Task>> {
    let all = list_tasks();
    let known: Vec<String> = all.iter().map(|t| t.name().to_string()).collect();
    all.into_iter()
        .find(|t| t.name() == name)
        .ok_or(TaskError::UnknownTask {
            name: name.to_string(),
            known,
        })
}

/// Rebuilds the problem behind a generated record, so a verifier can judge completions for it.
pub fn problem_from_record(record: &TaskRecord) -> Result<Problem> {
    task_by_name(&record.task)?.problem_from_record(&record.prompt, &record.answer, record.level)
}
