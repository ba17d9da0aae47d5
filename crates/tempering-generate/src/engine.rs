//! The local engine: runs a [`Transformer`] in this process. A call's requests are split into
//! groups of at most `max_batch_rows` samples; each group is prefilled once (prompts left-padded
//! into one batch), its KV-cache rows are duplicated so the `n` samples of a prompt share that
//! prefill, then all rows decode one token per step, and rows that finish leave the batch (and the
//! cache) at once. Knows nothing of rewards, search or the command line.

use candle_core::{DType, Tensor};
use tempering_model::{ops, TokenLayout, Tokenizer, Transformer};

use crate::backend::{Backend, GenEvent};
use crate::detok::TextTracker;
use crate::error::Result;
use crate::request::{Completion, FinishReason, GenRequest, SamplingParams, TopLogprob};
use crate::sampler::{sample, top_n, SampleRng};

/// How the local engine batches work.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Most samples decoded together. A request with a larger `n` still runs whole, alone.
    pub max_batch_rows: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { max_batch_rows: 32 }
    }
}

/// A model and its tokenizer, generating in this process.
pub struct LocalEngine {
    model: Transformer,
    tokenizer: Tokenizer,
    model_stop_ids: Vec<u32>,
    options: EngineOptions,
}

/// One sample being decoded.
struct Row {
    /// Index of its request within the group.
    req: usize,
    sample: usize,
    rng: SampleRng,
    prompt_len: usize,
    tokens: Vec<u32>,
    tracker: TextTracker,
    logprobs: Vec<f32>,
    top: Vec<Vec<TopLogprob>>,
}

impl LocalEngine {
    /// Stops on the tokenizer's EOS and end-of-turn tokens and the config's EOS ids.
    pub fn new(model: Transformer, tokenizer: Tokenizer) -> Self {
        let mut model_stop_ids = tokenizer.stop_token_ids();
        for &id in &model.config.eos_token_ids {
            if !model_stop_ids.contains(&id) {
                model_stop_ids.push(id);
            }
        }
        LocalEngine {
            model,
            tokenizer,
            model_stop_ids,
            options: EngineOptions::default(),
        }
    }

    pub fn with_options(mut self, options: EngineOptions) -> Self {
        self.options = options;
        self
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The token ids that end a completion unless `ignore_eos`.
    pub fn model_stop_ids(&self) -> &[u32] {
        &self.model_stop_ids
    }

    /// Prompt text to ids, with the model's BOS rule.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, true)?)
    }

    /// The token ids that end a completion under `p`: its own, and the model's unless `ignore_eos`.
    pub fn stop_ids_for(&self, p: &SamplingParams) -> Vec<u32> {
        self.stop_ids(p)
    }

    fn stop_ids(&self, p: &SamplingParams) -> Vec<u32> {
        let mut ids = p.stop_token_ids.clone();
        if !p.ignore_eos {
            ids.extend_from_slice(&self.model_stop_ids);
        }
        ids
    }

    /// Decodes one group of requests; `offset` is the first one's index in the caller's slice.
    fn run_group(
        &self,
        reqs: &[GenRequest],
        offset: usize,
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> Result<Vec<Vec<Completion>>> {
        let dev = self.model.device();
        let context = self.model.config.max_position_embeddings;
        let vocab = self.model.config.vocab_size;

        // Prefill every prompt once, left-padded into one batch.
        let lens: Vec<usize> = reqs.iter().map(|r| r.prompt.len()).collect();
        let t = lens.iter().copied().max().unwrap_or(0);
        let mut flat = Vec::with_capacity(reqs.len() * t);
        for r in reqs {
            flat.extend(std::iter::repeat_n(0u32, t - r.prompt.len()));
            flat.extend_from_slice(&r.prompt);
        }
        let input = Tensor::from_vec(flat, (reqs.len(), t), dev)?;
        let mut cache = self.model.new_cache();
        let prompt_logits = self.model.forward_last(
            &input,
            &TokenLayout::left_padded(&lens, t),
            Some(&mut cache),
        )?;
        on_event(&GenEvent::Prefill {
            requests: reqs.len(),
            prompt_tokens: lens.iter().sum(),
        });

        // One cache row per sample: request i's prefill, n_i times.
        let row_req: Vec<u32> = reqs
            .iter()
            .enumerate()
            .flat_map(|(i, r)| std::iter::repeat_n(i as u32, r.n))
            .collect();
        let mut logits = if row_req.len() == reqs.len() {
            prompt_logits
        } else {
            cache.select_rows(&row_req)?;
            prompt_logits.index_select(&Tensor::new(row_req.as_slice(), dev)?, 0)?
        };
        let stop_ids: Vec<Vec<u32>> = reqs.iter().map(|r| self.stop_ids(&r.params)).collect();
        let mut rows: Vec<Row> = reqs
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                (0..r.n).map(move |j| Row {
                    req: i,
                    sample: j,
                    rng: SampleRng::for_sample(r.params.seed, j),
                    prompt_len: r.prompt.len(),
                    tokens: Vec::with_capacity(r.params.max_new_tokens.min(4096)),
                    tracker: TextTracker::new(&r.params.stop),
                    logprobs: vec![],
                    top: vec![],
                })
            })
            .collect();
        let mut out: Vec<Vec<Option<Completion>>> = reqs.iter().map(|r| vec![None; r.n]).collect();

        // `active[k]` is the row in cache row k.
        let mut active: Vec<usize> = (0..rows.len()).collect();
        loop {
            let a = active.len();
            let lv = logits
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if lv.len() != a * vocab {
                return Err(crate::GenError::Unsupported(format!(
                    "logits hold {} values, expected {a} rows of {vocab}",
                    lv.len()
                )));
            }
            let next: Vec<u32> = active
                .iter()
                .enumerate()
                .map(|(k, &r)| {
                    let row = &mut rows[r];
                    let p = &reqs[row.req].params;
                    let logits_k = &lv[k * vocab..(k + 1) * vocab];
                    if row.tokens.len() < p.min_tokens {
                        // Too early to stop: the stop tokens cannot be drawn.
                        let mut masked = logits_k.to_vec();
                        for &id in &stop_ids[row.req] {
                            if let Some(x) = masked.get_mut(id as usize) {
                                *x = f32::NEG_INFINITY;
                            }
                        }
                        sample(&masked, p, &mut row.rng)
                    } else {
                        sample(logits_k, p, &mut row.rng)
                    }
                })
                .collect();
            let want_lp = active.iter().any(|&r| reqs[rows[r].req].params.logprobs);
            let lps = if want_lp {
                // The trainer's op on the same logits: identical numbers for the same tokens.
                let targets = Tensor::new(next.as_slice(), dev)?;
                let inv_t: Vec<f32> = active
                    .iter()
                    .map(|&r| {
                        let p = &reqs[rows[r].req].params;
                        if p.tempered_logprobs && p.temperature > 0.0 {
                            1.0 / p.temperature
                        } else {
                            1.0
                        }
                    })
                    .collect();
                let lp = if inv_t.iter().all(|&x| x == 1.0) {
                    ops::token_logprobs(&logits, &targets)?
                } else {
                    let scale = Tensor::from_vec(inv_t, (active.len(), 1), dev)?
                        .to_dtype(logits.dtype())?;
                    ops::token_logprobs(&logits.broadcast_mul(&scale)?, &targets)?
                };
                Some(lp.to_vec1::<f32>()?)
            } else {
                None
            };

            let mut keep: Vec<u32> = Vec::with_capacity(a);
            for (k, &r) in active.iter().enumerate() {
                let row = &mut rows[r];
                let p = &reqs[row.req].params;
                let tok = next[k];
                row.tokens.push(tok);
                if p.logprobs {
                    if let Some(l) = &lps {
                        row.logprobs.push(l[k]);
                    }
                }
                if p.top_logprobs > 0 {
                    let ls = ops::log_softmax_last_dim(&logits.narrow(0, k, 1)?)?
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    row.top.push(
                        top_n(&ls, p.top_logprobs)
                            .into_iter()
                            .map(|(token, logprob)| TopLogprob { token, logprob })
                            .collect(),
                    );
                }
                let mut finish = None;
                let mut stop_string = None;
                if stop_ids[row.req].contains(&tok) {
                    finish = Some(FinishReason::Stop);
                    let n = row.tokens.len() - 1;
                    row.tracker.flush(&self.tokenizer, &row.tokens[..n])?;
                } else {
                    let mut hit = row.tracker.push(&self.tokenizer, &row.tokens)?;
                    let length = row.tokens.len() >= p.max_new_tokens
                        || row.prompt_len + row.tokens.len() >= context;
                    if hit.is_none() && length {
                        hit = row.tracker.flush(&self.tokenizer, &row.tokens)?;
                        finish = Some(FinishReason::Length);
                    }
                    if let Some((at, i)) = hit {
                        row.tracker.truncate(at);
                        finish = Some(FinishReason::StopString);
                        stop_string = Some(p.stop[i].clone());
                    }
                }
                let text = row.tracker.take_stream(finish.is_some());
                on_event(&GenEvent::Token {
                    request: offset + row.req,
                    sample: row.sample,
                    token: tok,
                    text,
                });
                match finish {
                    None => keep.push(k as u32),
                    Some(reason) => {
                        let tracker = std::mem::replace(&mut row.tracker, TextTracker::new(&[]));
                        let c = Completion {
                            tokens: std::mem::take(&mut row.tokens),
                            text: tracker.into_text(),
                            logprobs: p.logprobs.then(|| std::mem::take(&mut row.logprobs)),
                            top_logprobs: (p.top_logprobs > 0)
                                .then(|| std::mem::take(&mut row.top)),
                            finish_reason: reason,
                            stop_string,
                        };
                        on_event(&GenEvent::Finished {
                            request: offset + row.req,
                            sample: row.sample,
                            completion: &c,
                        });
                        out[row.req][row.sample] = Some(c);
                    }
                }
            }
            if keep.is_empty() {
                break;
            }
            let fed: Vec<u32> = keep.iter().map(|&k| next[k as usize]).collect();
            if keep.len() < a {
                cache.select_rows(&keep)?;
                active = keep.iter().map(|&k| active[k as usize]).collect();
            }
            // Each row's new token sits right after its own prompt and earlier tokens.
            let positions: Vec<Vec<u32>> = active
                .iter()
                .map(|&r| vec![(rows[r].prompt_len + rows[r].tokens.len() - 1) as u32])
                .collect();
            let layout = TokenLayout {
                valid: vec![vec![true]; positions.len()],
                positions,
            };
            let input = Tensor::from_vec(fed, (active.len(), 1), dev)?;
            logits = self.model.forward_last(&input, &layout, Some(&mut cache))?;
        }
        Ok(out
            .into_iter()
            .map(|cs| cs.into_iter().flatten().collect())
            .collect())
    }
}

impl Backend for LocalEngine {
    fn generate_with(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> Result<Vec<Vec<Completion>>> {
        let context = self.model.config.max_position_embeddings;
        let vocab = self.model.config.vocab_size;
        for (i, r) in reqs.iter().enumerate() {
            r.validate(i, context, vocab)?;
        }
        let mut out = Vec::with_capacity(reqs.len());
        let mut start = 0;
        while start < reqs.len() {
            // Consecutive requests while their samples fit in one batch (at least one request).
            let mut end = start + 1;
            let mut rows = reqs[start].n;
            while end < reqs.len() && rows + reqs[end].n <= self.options.max_batch_rows {
                rows += reqs[end].n;
                end += 1;
            }
            out.extend(self.run_group(&reqs[start..end], start, on_event)?);
            start = end;
        }
        Ok(out)
    }
}
