//! Prompt logprobs (vLLM's `prompt_logprobs`): for each prompt token after the first, its
//! log-probability given the tokens before it, its rank among the vocabulary, and the most likely
//! alternatives there, from one forward over the prompt through the decoder's gather (the states
//! training and scoring read). Knows the local engine's model; nothing of serving or sampling.

use candle_core::DType;
use tempering_model::ops;

use crate::engine::LocalEngine;
use crate::error::{GenError, Result};
use crate::request::TopLogprob;
use crate::sampler::top_n;

/// Positions whose logits are materialised at once (`[rows, vocab]` in f32), bounding memory
/// for long prompts.
const ROWS_AT_ONCE: usize = 64;

/// One prompt token under the model: `log p(token | the tokens before it)` at temperature 1 with
/// no filters, its rank (1: the most likely token), and the `top` most likely tokens there, most
/// likely first.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptLogprob {
    pub token: u32,
    pub logprob: f32,
    pub rank: usize,
    pub top: Vec<TopLogprob>,
}

impl LocalEngine {
    /// Each prompt token's [`PromptLogprob`], with `top` alternatives; the first token has none
    /// (`None`: nothing comes before it).
    pub fn prompt_logprobs(
        &self,
        prompt: &[u32],
        top: usize,
    ) -> Result<Vec<Option<PromptLogprob>>> {
        let model = self.model();
        let (context, vocab) = (
            model.config.max_position_embeddings,
            model.config.vocab_size,
        );
        if prompt.is_empty() {
            return Err(GenError::EmptyPrompt { request: 0 });
        }
        if prompt.len() > context {
            return Err(GenError::PromptTooLong {
                request: 0,
                len: prompt.len(),
                context,
            });
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenError::InvalidParam {
                request: 0,
                field: "prompt",
                got: format!("a token id {id}"),
                expected: "ids below the vocabulary size",
            });
        }
        let mut out = vec![None];
        if prompt.len() == 1 {
            return Ok(out);
        }
        // The state at position i predicts token i + 1.
        let positions: Vec<usize> = (0..prompt.len() - 1).collect();
        let hidden = model.hidden_at(&[prompt], &[positions], 0)?;
        let rows = prompt.len() - 1;
        for start in (0..rows).step_by(ROWS_AT_ONCE) {
            let len = ROWS_AT_ONCE.min(rows - start);
            let logits = model.logits(&hidden.narrow(0, start, len)?)?;
            let ls = ops::log_softmax_last_dim(&logits.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
            for (k, row) in ls.iter().enumerate() {
                let token = prompt[start + k + 1];
                let logprob = row
                    .get(token as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY);
                let rank = 1 + row.iter().filter(|&&x| x > logprob).count();
                out.push(Some(PromptLogprob {
                    token,
                    logprob,
                    rank,
                    top: top_n(row, top)
                        .into_iter()
                        .map(|(token, logprob)| TopLogprob { token, logprob })
                        .collect(),
                }));
            }
        }
        Ok(out)
    }
}
