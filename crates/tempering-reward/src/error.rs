//! The typed error of the reward layer: each variant names the reward, file, line or field it is
//! about and what was expected. Knows nothing of how callers report errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    #[error("{path}:{line}: {msg}")]
    Row {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    /// A reward spec or parameter is wrong: `reward` names it, `msg` says what was expected.
    #[error("reward `{reward}`: {msg}")]
    Spec { reward: String, msg: String },

    #[error(transparent)]
    Model(#[from] tempering_model::ModelError),

    #[error(transparent)]
    Task(#[from] tempering_tasks::TaskError),

    #[error(transparent)]
    Generate(#[from] tempering_generate::GenError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl RewardError {
    pub fn spec(reward: impl Into<String>, msg: impl Into<String>) -> Self {
        RewardError::Spec {
            reward: reward.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, RewardError>;
