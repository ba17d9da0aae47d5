//! The typed error of the tasks layer: every variant names the task, file, line or column it is about
//! and what was expected. Knows nothing of how callers report errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("unknown task `{name}`; known tasks: {}", known.join(", "))]
    UnknownTask { name: String, known: Vec<String> },

    #[error("task `{task}`: level {level} is out of range; expected {min}..={max}")]
    LevelOutOfRange {
        task: String,
        level: u32,
        min: u32,
        max: u32,
    },

    #[error("task `{task}`: parameter `{field}`: {msg}")]
    InvalidParameter {
        task: String,
        field: String,
        msg: String,
    },

    #[error(
        "task `{task}` level {level}: found only {found} of {wanted} {split} problems after {attempts} \
         attempts{}; lower n or use a higher level",
        if *.unique { " (unique)" } else { "" }
    )]
    Exhausted {
        task: String,
        level: u32,
        split: String,
        wanted: usize,
        found: usize,
        attempts: u64,
        unique: bool,
    },

    #[error("task `{task}`: cannot read prompt {prompt:?}: expected {expected}")]
    BadPrompt {
        task: String,
        prompt: String,
        expected: String,
    },

    #[error("split check: {0}")]
    SplitCheck(String),

    // The io error is in the message, not a `source`, so that error chains print it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path}: the dataset is empty (no rows)")]
    EmptyDataset { path: PathBuf },

    #[error("{path}:{line}: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    #[error("{path}:{line}: missing column `{column}` ({expected}); columns found: {}", found_list(.found))]
    MissingColumn {
        path: PathBuf,
        line: usize,
        column: String,
        expected: String,
        found: Vec<String>,
    },

    #[error("{path}:{line}: column `{column}`: expected {expected}, found {found}")]
    BadColumn {
        path: PathBuf,
        line: usize,
        column: String,
        expected: String,
        found: String,
    },

    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
}

fn found_list(found: &[String]) -> String {
    if found.is_empty() {
        "(none)".to_string()
    } else {
        found.join(", ")
    }
}

pub type Result<T, E = TaskError> = std::result::Result<T, E>;

impl TaskError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TaskError::Io {
            path: path.into(),
            error: source,
        }
    }

    pub fn param(task: &str, field: &str, msg: impl Into<String>) -> Self {
        TaskError::InvalidParameter {
            task: task.to_string(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }

    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        TaskError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
