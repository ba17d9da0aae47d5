//! The typed error of the generation layer: each variant names the request (by index in the slice
//! given to the backend) and the field at fault, with what was expected.

use tempering_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("request {request}: `prompt` is empty: expected at least one token")]
    EmptyPrompt { request: usize },
    #[error(
        "request {request}: `prompt` has {len} tokens: expected fewer than the model's context of {context}"
    )]
    PromptTooLong {
        request: usize,
        len: usize,
        context: usize,
    },
    #[error("request {request}: `{field}` is {got}: expected {expected}")]
    InvalidParam {
        request: usize,
        field: &'static str,
        got: String,
        expected: &'static str,
    },
    #[error(
        "message {index}: unknown role `{role}`: expected one of system, user, assistant, tool"
    )]
    UnknownRole { index: usize, role: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = GenError> = std::result::Result<T, E>;
