//! What a caller asks for ([`GenRequest`], [`SamplingParams`]) and what it gets back
//! ([`Completion`]), with the checks that reject a bad request before any compute. Plain data: knows
//! nothing of models, tokenizers or how completions are produced.

use serde::{Deserialize, Serialize};

use crate::error::{GenError, Result};

/// How to pick tokens and when to stop. Filters apply in the order temperature, top-k, top-p,
/// min-p (as transformers and vLLM do); `temperature == 0` is greedy and ignores the filters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Most tokens to generate (a stop token counts as one).
    pub max_new_tokens: usize,
    /// Logits are divided by this; 0 means greedy. Must be finite and >= 0.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; in (0, 1].
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; in [0, 1].
    pub min_p: f32,
    /// Seeds the sampler; sample `j` of a request draws from a stream derived from `(seed, j)` only,
    /// so its tokens do not depend on what else is in the batch.
    pub seed: u64,
    /// Finish when the text contains any of these (the text is cut before it; the tokens keep the
    /// one that completed it).
    pub stop: Vec<String>,
    /// Extra token ids that end a completion, besides the model's own stop tokens.
    pub stop_token_ids: Vec<u32>,
    /// Do not stop on the model's own EOS / end-of-turn tokens (`stop_token_ids` still apply).
    pub ignore_eos: bool,
    /// No stop token (the model's own or `stop_token_ids`) is sampled before this many tokens
    /// (vLLM's `min_tokens`): their logits are masked. Stop strings still apply. At most
    /// `max_new_tokens`.
    pub min_tokens: usize,
    /// Report the log-probability of each generated token.
    pub logprobs: bool,
    /// Report logprobs of the tempered distribution the tokens were sampled from (`logits /
    /// temperature`, as an RL trainer computes them) instead of the model's raw ones (vLLM's
    /// `processed_logprobs` against its default `raw_logprobs`). Filters (top-k, top-p, min-p) are
    /// not applied to the reported numbers.
    pub tempered_logprobs: bool,
    /// Also report this many most likely alternatives at each step (0: none).
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 256,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: false,
            min_tokens: 0,
            logprobs: false,
            tempered_logprobs: false,
            top_logprobs: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding for at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams {
            max_new_tokens,
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field's range; `request` names the request in the error.
    pub fn validate(&self, request: usize) -> Result<()> {
        let bad = |field, got: String, expected| {
            Err(GenError::InvalidParam {
                request,
                field,
                got,
                expected,
            })
        };
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(
                "temperature",
                self.temperature.to_string(),
                "a finite number >= 0 (0 is greedy)",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "a number in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p.to_string(), "a number in [0, 1]");
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "0".into(), "at least 1");
        }
        if self.min_tokens > self.max_new_tokens {
            return bad(
                "min_tokens",
                self.min_tokens.to_string(),
                "at most max_new_tokens",
            );
        }
        if let Some(i) = self.stop.iter().position(|s| s.is_empty()) {
            return bad(
                "stop",
                format!("an empty string at index {i}"),
                "non-empty strings",
            );
        }
        Ok(())
    }
}

/// One prompt to complete `n` times. The `n` samples share one prefill of the prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenRequest {
    /// Prompt token ids (chat template already applied, BOS included if the model wants it).
    pub prompt: Vec<u32>,
    /// Number of samples.
    pub n: usize,
    pub params: SamplingParams,
}

impl GenRequest {
    pub fn new(prompt: Vec<u32>, n: usize, params: SamplingParams) -> Self {
        GenRequest { prompt, n, params }
    }

    /// Checks the prompt against the model (`context`: its maximum positions, `vocab`: its size)
    /// and the sampling parameters; `request` names this request in the error.
    pub fn validate(&self, request: usize, context: usize, vocab: usize) -> Result<()> {
        if self.prompt.is_empty() {
            return Err(GenError::EmptyPrompt { request });
        }
        // At least one position must be left for a new token.
        if self.prompt.len() >= context {
            return Err(GenError::PromptTooLong {
                request,
                len: self.prompt.len(),
                context,
            });
        }
        if let Some(&id) = self.prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenError::InvalidParam {
                request,
                field: "prompt",
                got: format!("a token id {id}"),
                expected: "ids below the vocabulary size",
            });
        }
        if self.n == 0 {
            return Err(GenError::InvalidParam {
                request,
                field: "n",
                got: "0".into(),
                expected: "at least 1",
            });
        }
        self.params.validate(request)
    }
}

/// Why a completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token (EOS, end of turn, or one of `stop_token_ids`) was generated.
    Stop,
    /// `max_new_tokens` (or the model's context) was reached.
    Length,
    /// The text came to contain one of the stop strings.
    StopString,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::StopString => "stop_string",
        }
    }
}

/// A likely token at one step and its log-probability.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: u32,
    pub logprob: f32,
}

/// One sample of a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Generated token ids, the final stop token included (its logprob matters to RL).
    pub tokens: Vec<u32>,
    /// Decoded text of `tokens`, without a final stop token and cut before a matched stop string.
    pub text: String,
    /// `log p(token)` under the model's own distribution (temperature 1, no filters), one per
    /// token, computed with the trainer's op: `None` unless asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f32>>,
    /// The `top_logprobs` most likely tokens at each step, most likely first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<Vec<TopLogprob>>>,
    pub finish_reason: FinishReason,
    /// The stop string that ended it, for `FinishReason::StopString`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_string: Option<String>,
}
