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
    /// The caller gave up (say, its client hung up) and the local engine stopped generating.
    #[error("cancelled: the caller stopped waiting, so generation stopped")]
    Cancelled,
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = GenError> = std::result::Result<T, E>;

/// What went wrong talking to a remote OpenAI-compatible server. Each message says what was
/// expected or what to do; the server's own error message is quoted where it gave one.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("`{url}` is not a server URL: {why} (expected e.g. http://127.0.0.1:8000)")]
    BadUrl { url: String, why: String },
    #[error("cannot reach {url}: {detail} (tried {tries} times; is the server running?)")]
    Connect {
        url: String,
        detail: String,
        tries: u32,
    },
    #[error("{url} answered {status}{}: {message}", if *.tries > 1 { format!(" after {} tries", .tries) } else { String::new() })]
    Status {
        url: String,
        status: u16,
        message: String,
        tries: u32,
    },
    #[error("{url}: {detail}")]
    Io { url: String, detail: String },
    #[error("the server's response is not what the OpenAI API says: {what}")]
    BadResponse { what: String },
    #[error("{url} serves no model named `{wanted}`; it serves: {}", .available.join(", "))]
    UnknownModel {
        url: String,
        wanted: String,
        available: Vec<String>,
    },
    #[error("{url} serves several models ({}): name one with --backend-model", .available.join(", "))]
    WhichModel { url: String, available: Vec<String> },
    #[error("{server} cannot {what}")]
    Unsupported { server: String, what: String },
    #[error("token ids: {detail}")]
    TokenMismatch { detail: String },
    /// The caller gave up (say, its client hung up): the requests in flight were dropped, their
    /// connections closed, so the server stops generating for them.
    #[error("cancelled: the caller stopped waiting and the requests to the server were dropped")]
    Cancelled,
}
