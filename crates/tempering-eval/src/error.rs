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

/// Writes `bytes` to a temporary name beside `path`, then renames it.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| EvalError::io(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EvalError::io(path, e)
    })
}
