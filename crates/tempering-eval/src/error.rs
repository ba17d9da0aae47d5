//! The typed error of the evaluation layer: each variant names the file, line or field at fault
//! and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Row {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{0}")]
    Empty(String),
    #[error("plotting {path}: {msg}")]
    Plot { path: PathBuf, msg: String },
    #[error(transparent)]
    Search(#[from] tempering_search::SearchError),
    #[error(transparent)]
    Task(#[from] tempering_tasks::TaskError),
}

impl EvalError {
    pub fn io(path: &std::path::Path, error: std::io::Error) -> Self {
        EvalError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// Writes `bytes` to a temporary name beside `path`, syncs it and renames it into place
/// (`tempering_model::write_atomic`, with the error as an [`EvalError`] naming `path`).
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    tempering_model::write_atomic(path, bytes).map_err(|e| match e {
        tempering_model::ModelError::Io { error, .. } => EvalError::io(path, error),
        other => EvalError::io(path, std::io::Error::other(other.to_string())),
    })
}
