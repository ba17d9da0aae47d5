//! The [`Backend`] trait: what rollouts and search strategies call to generate, whatever runs the
//! model (the local engine here; an OpenAI-compatible HTTP client later). Knows nothing of how a
//! backend computes.

use crate::error::Result;
use crate::request::{Completion, GenRequest};

/// Something that happened while generating, for progress bars and streaming. `request` indexes
/// the slice given to the backend and `sample` the request's `n` samples.
#[derive(Debug)]
pub enum GenEvent<'a> {
    /// A prefill of `prompt_tokens` tokens over `requests` requests finished.
    Prefill {
        requests: usize,
        prompt_tokens: usize,
    },
    /// A token was generated. `text` is the new text that is safe to show (it may be empty while a
    /// character or a possible stop string is incomplete).
    Token {
        request: usize,
        sample: usize,
        token: u32,
        text: &'a str,
    },
    /// A sample finished (after the `Token` event of its last token, which streamed the rest of
    /// its text).
    Finished {
        request: usize,
        sample: usize,
        completion: &'a Completion,
    },
}

/// Generates completions. Results are grouped by request, in order: `out[i]` holds the `n`
/// samples of `reqs[i]` in sample order, so a group of samples (GRPO, best-of-n, self-consistency)
/// stays together. Every request is validated before any compute, and one bad request fails the
/// call with an error that names it.
pub trait Backend {
    /// Like [`Backend::generate`], calling `on_event` as tokens come.
    fn generate_with(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> Result<Vec<Vec<Completion>>>;

    fn generate(&self, reqs: &[GenRequest]) -> Result<Vec<Vec<Completion>>> {
        self.generate_with(reqs, &mut |_| {})
    }
}
