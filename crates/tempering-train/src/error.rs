//! The typed error of the training layer: every variant names the file, config key, step or
//! parameter it is about and what was expected. Knows nothing of how callers report errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    // The io error is in the message, not a `source`, so that error chains print it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    #[error("config key `{key}`: {msg}")]
    Config { key: String, msg: String },

    #[error("{}unknown config key `{key}`{}; known keys: {}",
        .file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default(),
        .suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
        .known.join(", "))]
    UnknownKey {
        file: Option<PathBuf>,
        key: String,
        suggestion: Option<String>,
        known: Vec<String>,
    },

    #[error(
        "{dir}: no checkpoint to resume from (expected {dir}/checkpoints/step-*/state.json); a run \
         that stopped before its first checkpoint is started afresh by its command again, with \
         --output {dir}"
    )]
    NoCheckpoint { dir: PathBuf },

    /// A checkpoint could not be written; `msg` names the file, the cause and what was kept.
    #[error("writing the checkpoint of step {step} failed: {msg}")]
    CheckpointWrite { step: usize, msg: String },

    #[error(
        "{dir} already holds a run: continue it with --resume {dir}, or choose another --output"
    )]
    RunExists { dir: PathBuf },

    #[error("{path}: checkpoint does not match the model: {msg}")]
    CheckpointMismatch { path: PathBuf, msg: String },

    #[error("{what}: the dataset is empty{}", .why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default())]
    EmptyData { what: String, why: Option<String> },

    #[error("{path}:{line}: {msg}")]
    Example {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    #[error(
        "step {step}: the loss is not finite ({value}); lower the learning rate or check the data"
    )]
    NonFinite { step: usize, value: f64 },

    /// A signal stopped the loop after step `step`; the checkpoint of that step is in `dir`.
    #[error("interrupted at step {step} of {total}; continue with --resume {}", .dir.display())]
    Interrupted {
        step: usize,
        total: usize,
        dir: PathBuf,
        /// The signal's number (2 for SIGINT, 15 for SIGTERM).
        signal: i32,
    },

    /// Another live process holds the run directory's lock.
    #[error("{}: in use by another run (pid {pid}{}); wait for it to finish or stop it",
        .dir.display(), .command.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Locked {
        dir: PathBuf,
        pid: String,
        command: Option<String>,
    },

    #[error("parameter `{name}`: {msg}")]
    Param { name: String, msg: String },

    #[error(transparent)]
    Model(#[from] tempering_model::ModelError),

    #[error(transparent)]
    Task(#[from] tempering_tasks::TaskError),

    #[error(transparent)]
    Generate(#[from] tempering_generate::GenError),

    #[error(transparent)]
    Reward(#[from] tempering_reward::RewardError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            error: source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        TrainError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn config(key: impl Into<String>, msg: impl Into<String>) -> Self {
        TrainError::Config {
            key: key.into(),
            msg: msg.into(),
        }
    }
}
