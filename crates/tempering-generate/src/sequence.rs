//! One sequence being decoded, as both decoders keep it (the engine's batched `generate` and the
//! step-wise [`crate::DecodeBatch`]): its tokens, streamed text, logprobs and top alternatives; the
//! draw of its next token (stop tokens masked before `min_tokens`), the step that takes that token
//! in and finds a stop, and the completion the sequence becomes. Plus the batch's token logprobs,
//! computed as the trainer computes them. Knows tokens, sampling parameters and the tokenizer;
//! nothing of the model or the KV cache.

use candle_core::{Device, Tensor};
use tempering_model::{ops, Tokenizer};

use crate::detok::TextTracker;
use crate::error::Result;
use crate::request::{Completion, FinishReason, SamplingParams, TopLogprob};
use crate::sampler::{sample, top_n, SampleRng};

pub(crate) struct Sequence {
    pub(crate) sample: usize,
    pub(crate) rng: SampleRng,
    pub(crate) prompt_len: usize,
    pub(crate) tokens: Vec<u32>,
    tracker: TextTracker,
    logprobs: Vec<f32>,
    top: Vec<Vec<TopLogprob>>,
}

/// Why a sequence ended, with the stop string that matched, if one did.
pub(crate) type Finish = (FinishReason, Option<String>);

impl Sequence {
    /// Sample `sample` of a request with parameters `p` and a prompt of `prompt_len` tokens.
    pub(crate) fn new(p: &SamplingParams, sample: usize, prompt_len: usize) -> Self {
        Sequence {
            sample,
            rng: SampleRng::for_sample(p.seed, sample),
            prompt_len,
            tokens: Vec::with_capacity(p.max_new_tokens.min(4096)),
            tracker: TextTracker::new(&p.stop),
            logprobs: vec![],
            top: vec![],
        }
    }

    /// Draws the next token from this row's `logits`; before `min_tokens` the stop tokens cannot
    /// be drawn.
    pub(crate) fn draw(&mut self, logits: &[f32], p: &SamplingParams, stop_ids: &[u32]) -> u32 {
        if self.tokens.len() < p.min_tokens {
            let mut masked = logits.to_vec();
            for &id in stop_ids {
                if let Some(x) = masked.get_mut(id as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
            sample(&masked, p, &mut self.rng)
        } else {
            sample(logits, p, &mut self.rng)
        }
    }

    /// Takes in token `t` (its logprob when asked for; `row_logits` `[1, V]` for the top
    /// alternatives) and says whether it ended the sequence: a stop token, a stop string,
    /// `max_new_tokens`, or the model's `context`. The text it added: [`Sequence::take_stream`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn accept(
        &mut self,
        tok: &Tokenizer,
        p: &SamplingParams,
        stop_ids: &[u32],
        context: usize,
        t: u32,
        logprob: Option<f32>,
        row_logits: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Option<Finish>> {
        self.tokens.push(t);
        if let (true, Some(l)) = (p.logprobs, logprob) {
            self.logprobs.push(l);
        }
        if p.top_logprobs > 0 {
            let ls = ops::log_softmax_last_dim(&row_logits()?)?
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            self.top.push(
                top_n(&ls, p.top_logprobs)
                    .into_iter()
                    .map(|(token, logprob)| TopLogprob { token, logprob })
                    .collect(),
            );
        }
        let mut finish = None;
        if stop_ids.contains(&t) {
            finish = Some((FinishReason::Stop, None));
            let n = self.tokens.len() - 1;
            self.tracker.flush(tok, &self.tokens[..n])?;
        } else {
            let mut hit = self.tracker.push(tok, &self.tokens)?;
            let length = self.tokens.len() >= p.max_new_tokens
                || self.prompt_len + self.tokens.len() >= context;
            if hit.is_none() && length {
                hit = self.tracker.flush(tok, &self.tokens)?;
                finish = Some((FinishReason::Length, None));
            }
            if let Some((at, i)) = hit {
                self.tracker.truncate(at);
                finish = Some((FinishReason::StopString, Some(p.stop[i].clone())));
            }
        }
        Ok(finish)
    }

    /// The logprob of the last token taken in, with its top alternatives (empty unless asked for).
    pub(crate) fn last_logprob(&self) -> Option<(f32, &[TopLogprob])> {
        let lp = *self.logprobs.last()?;
        Some((lp, self.top.last().map_or(&[][..], |t| t.as_slice())))
    }

    /// The text decoded since the last call (all that is left once `finished`).
    pub(crate) fn take_stream(&mut self, finished: bool) -> &str {
        self.tracker.take_stream(finished)
    }

    /// The finished sequence's completion; the sequence is left empty.
    pub(crate) fn complete(
        &mut self,
        p: &SamplingParams,
        (reason, stop_string): Finish,
    ) -> Completion {
        let tracker = std::mem::replace(&mut self.tracker, TextTracker::new(&[]));
        Completion {
            tokens: std::mem::take(&mut self.tokens),
            text: tracker.into_text(),
            logprobs: p.logprobs.then(|| std::mem::take(&mut self.logprobs)),
            top_logprobs: (p.top_logprobs > 0).then(|| std::mem::take(&mut self.top)),
            finish_reason: reason,
            stop_string,
        }
    }
}

/// The step's logits `[rows, vocab]` as one f32 vector, row after row (checked to hold that many).
pub(crate) fn logit_rows(logits: &Tensor, rows: usize, vocab: usize) -> Result<Vec<f32>> {
    let lv = logits
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    if lv.len() != rows * vocab {
        return Err(crate::GenError::Unsupported(format!(
            "logits hold {} values, expected {rows} rows of {vocab}",
            lv.len()
        )));
    }
    Ok(lv)
}

/// The log-probability of each row's drawn token `next[k]` under `logits` `[rows, V]`, divided by
/// its temperature where its request asks for tempered logprobs; `None` when no row asks for
/// logprobs. The trainer's op on the same logits: identical numbers for the same tokens.
pub(crate) fn drawn_logprobs<'a>(
    logits: &Tensor,
    next: &[u32],
    params: impl Iterator<Item = &'a SamplingParams>,
    dev: &Device,
) -> Result<Option<Vec<f32>>> {
    let mut want = false;
    let inv_t: Vec<f32> = params
        .map(|p| {
            want |= p.logprobs;
            if p.tempered_logprobs && p.temperature > 0.0 {
                1.0 / p.temperature
            } else {
                1.0
            }
        })
        .collect();
    if !want {
        return Ok(None);
    }
    let targets = Tensor::new(next, dev)?;
    let lp = if inv_t.iter().all(|&x| x == 1.0) {
        ops::token_logprobs(logits, &targets)?
    } else {
        let rows = inv_t.len();
        let scale = Tensor::from_vec(inv_t, (rows, 1), dev)?.to_dtype(logits.dtype())?;
        ops::token_logprobs(&logits.broadcast_mul(&scale)?, &targets)?
    };
    Ok(Some(lp.to_vec1::<f32>()?))
}
