//! The generation engine: turns prompts (token ids) into completions. It holds the request and
//! completion types, sampling (greedy, temperature, top-k, top-p, min-p, seeded per sample), stop
//! rules (stop tokens, stop strings across token boundaries, length), per-token logprobs, the
//! [`Backend`] trait and its local implementation [`LocalEngine`] (batched left-padded prefill with
//! a KV cache, `n` samples sharing one prefill, finished rows dropped from the batch), and its
//! remote one [`RemoteBackend`] (an OpenAI-compatible server: vLLM, SGLang, llama.cpp, `temper
//! serve`), and the prompt's own logprobs ([`PromptLogprob`]).
//!
//! It knows nothing of training, rewards, search strategies or the command line: callers build
//! [`GenRequest`]s and read [`Completion`]s.

pub mod backend;
pub mod chat;
mod detok;
pub mod engine;
pub mod error;
mod prompt_logprobs;
pub mod remote;
pub mod request;
pub mod sampler;
mod sequence;
pub mod stepwise;

pub use backend::{Backend, GenEvent};
pub use chat::{render_chat, KNOWN_ROLES};
pub use engine::{EngineOptions, LocalEngine};
pub use error::{GenError, RemoteError, Result};
pub use prompt_logprobs::PromptLogprob;
pub use remote::wire::ServerKind;
pub use remote::{RemoteBackend, RemoteOptions, ServerInfo};
pub use request::{Completion, FinishReason, GenRequest, SamplingParams, TopLogprob};
pub use sampler::SampleRng;
pub use stepwise::DecodeBatch;
