//! The typed error of the model layer: every variant names the file or tensor it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    // The io error is in the message, not a `source`, so that error chains print it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("config field `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// A chat template's rendering stopped at one of its limits (`chat::RenderLimits`): a template
    /// from an untrusted model directory that loops or grows without end.
    #[error("{template}: rendering stopped: {limit}")]
    TemplateLimit {
        /// The file the template came from, or `chat template`.
        template: String,
        limit: TemplateLimit,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Which bound of a chat template's rendering was reached, with the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateLimit {
    /// More than this many template instructions.
    Fuel(u64),
    /// More than this many bytes of output.
    OutputBytes(usize),
    /// Still rendering after this long.
    Duration(std::time::Duration),
    /// Holding more than this many bytes of memory.
    Memory(usize),
}

impl std::fmt::Display for TemplateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateLimit::Fuel(n) => write!(f, "more than {n} template instructions (fuel)"),
            TemplateLimit::OutputBytes(n) => write!(f, "output longer than {n} bytes"),
            TemplateLimit::Duration(d) => {
                write!(f, "still rendering after {:.1} s", d.as_secs_f64())
            }
            TemplateLimit::Memory(n) => write!(f, "holding more than {n} bytes of memory"),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            error: source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        ModelError::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ModelError::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
}
