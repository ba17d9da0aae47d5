//! The local engine: runs a [`Transformer`] in this process. A call's requests are split into
//! groups of at most `max_batch_rows` samples; each group is prefilled once (prompts left-padded
//! into one batch), its KV-cache rows are duplicated so the `n` samples of a prompt share that
//! prefill, then all rows decode one token per step, and rows that finish leave the batch (and the
//! cache) at once; a call can be given up between steps ([`LocalEngine::generate_until`]). Knows
//! nothing of rewards, search or the command line.

use candle_core::Tensor;
use rayon::prelude::*;
use tempering_model::{TokenLayout, Tokenizer, Transformer};

use crate::backend::{Backend, GenEvent};
use crate::error::{GenError, Result};
use crate::request::{Completion, GenRequest, SamplingParams};
use crate::sequence::{drawn_logprobs, logit_rows, Sequence};

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
    seq: Sequence,
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
    /// Gives up with [`GenError::Cancelled`] before the prefill or a decode step once
    /// `cancelled()` says so.
    fn run_group(
        &self,
        reqs: &[GenRequest],
        offset: usize,
        on_event: &mut dyn FnMut(&GenEvent<'_>),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<Vec<Completion>>> {
        if cancelled() {
            return Err(GenError::Cancelled);
        }
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
                    seq: Sequence::new(&r.params, j, r.prompt.len()),
                })
            })
            .collect();
        let mut out: Vec<Vec<Option<Completion>>> = reqs.iter().map(|r| vec![None; r.n]).collect();

        // `active[k]` is the row in cache row k.
        let mut active: Vec<usize> = (0..rows.len()).collect();
        loop {
            if cancelled() {
                return Err(GenError::Cancelled);
            }
            let a = active.len();
            let lv = logit_rows(&logits, a, vocab)?;
            // The active rows (`active` is increasing), drawing on every core: each from its own
            // stream, so the draws do not depend on the order they run in.
            let mut drawing: Vec<&mut Row> = Vec::with_capacity(a);
            let mut wanted = active.iter().copied().peekable();
            for (r, row) in rows.iter_mut().enumerate() {
                if wanted.next_if_eq(&r).is_some() {
                    drawing.push(row);
                }
            }
            if drawing.len() != a {
                return Err(GenError::Unsupported(format!(
                    "{} of {a} decoding rows found in order: the active rows lost their order",
                    drawing.len()
                )));
            }
            let next: Vec<u32> = drawing
                .into_par_iter()
                .zip(lv.par_chunks_exact(vocab))
                .map(|(row, logits_k)| {
                    row.seq
                        .draw(logits_k, &reqs[row.req].params, &stop_ids[row.req])
                })
                .collect();
            let lps = drawn_logprobs(
                &logits,
                &next,
                active.iter().map(|&r| &reqs[rows[r].req].params),
                dev,
            )?;

            let mut keep: Vec<u32> = Vec::with_capacity(a);
            for (k, &r) in active.iter().enumerate() {
                let row = &mut rows[r];
                let p = &reqs[row.req].params;
                let tok = next[k];
                let finish = row.seq.accept(
                    &self.tokenizer,
                    p,
                    &stop_ids[row.req],
                    context,
                    tok,
                    lps.as_ref().map(|l| l[k]),
                    || Ok(logits.narrow(0, k, 1)?),
                )?;
                on_event(&GenEvent::Token {
                    request: offset + row.req,
                    sample: row.seq.sample,
                    token: tok,
                    text: row.seq.take_stream(finish.is_some()),
                });
                match finish {
                    None => keep.push(k as u32),
                    Some(finish) => {
                        let c = row.seq.complete(p, finish);
                        on_event(&GenEvent::Finished {
                            request: offset + row.req,
                            sample: row.seq.sample,
                            completion: &c,
                        });
                        out[row.req][row.seq.sample] = Some(c);
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
                .map(|&r| vec![(rows[r].seq.prompt_len + rows[r].seq.tokens.len() - 1) as u32])
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
        self.generate_until(reqs, on_event, &|| false)
    }
}

impl LocalEngine {
    /// [`Backend::generate_with`] that gives up once `cancelled()` says so (checked before each
    /// prefill and decode step, so within one step of it): the call returns
    /// [`GenError::Cancelled`] and what was generated so far is dropped. How a server stops
    /// computing for a client that went away.
    pub fn generate_until(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
        cancelled: &dyn Fn() -> bool,
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
            out.extend(self.run_group(&reqs[start..end], start, on_event, cancelled)?);
            start = end;
        }
        Ok(out)
    }
}
