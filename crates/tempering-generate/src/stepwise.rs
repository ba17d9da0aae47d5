//! Step-wise batched decoding, for servers: a [`DecodeBatch`] holds the sequences being decoded
//! (each with its own KV-cache row, keys and positions), admits new requests between steps
//! (their prompts prefilled together, left-padded, their cache rows appended with the shorter
//! history left-padded, so they join at the next step) and decodes one token for every row per [`DecodeBatch::step`].
//! Sampling, stop rules, logprobs and events are those of [`LocalEngine::generate_with`]: a
//! sample's tokens depend only on its own request and seed, not on its batch mates (up to float
//! rounding). Knows nothing of HTTP or queues.

use std::collections::HashMap;

use candle_core::Tensor;
use rayon::prelude::*;
use tempering_model::{KvCache, TokenLayout};

use crate::backend::GenEvent;
use crate::engine::LocalEngine;
use crate::error::Result;
use crate::request::{Completion, GenRequest, SamplingParams, TopLogprob};
use crate::sequence::{drawn_logprobs, logit_rows, Sequence};

/// A request in the batch: its settings and its finished samples.
struct Entry {
    params: SamplingParams,
    stop_ids: Vec<u32>,
    out: Vec<Option<Completion>>,
    left: usize,
}

/// One sample being decoded, in cache-row order.
struct Row {
    id: usize,
    seq: Sequence,
}

/// Sequences decoded together; requests join between steps and leave as they finish.
#[derive(Default)]
pub struct DecodeBatch {
    cache: KvCache,
    rows: Vec<Row>,
    /// The next-token logits of every row, `[rows, vocab]`, once a step or an admission made them.
    logits: Option<Tensor>,
    entries: HashMap<usize, Entry>,
}

impl DecodeBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sequences (samples) in the batch.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Requests in the batch.
    pub fn requests(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds request `id` (the caller's name for it, unique among those in the batch): checks it,
    /// prefills its prompt once, and gives it `req.n` rows that decode from the next step on.
    pub fn admit(&mut self, engine: &LocalEngine, id: usize, req: &GenRequest) -> Result<()> {
        self.admit_many(engine, &[(id, req)])
    }

    /// Adds several requests at once (each `(id, request)` as in [`DecodeBatch::admit`]): their
    /// prompts are prefilled together, left-padded into one forward, as the engine prefills a
    /// group; requests arriving together then cost one prefill, not one each. Checks every request
    /// (and that the ids are new and distinct) before any joins: on an error none has.
    pub fn admit_many(
        &mut self,
        engine: &LocalEngine,
        reqs: &[(usize, &GenRequest)],
    ) -> Result<()> {
        if reqs.is_empty() {
            return Ok(());
        }
        let model = engine.model();
        let cfg = &model.config;
        let mut seen = std::collections::HashSet::new();
        for &(id, req) in reqs {
            req.validate(0, cfg.max_position_embeddings, cfg.vocab_size)?;
            if self.entries.contains_key(&id) || !seen.insert(id) {
                return Err(crate::GenError::Unsupported(format!(
                    "request {id} is already in the batch"
                )));
            }
        }
        let dev = model.device();
        let lens: Vec<usize> = reqs.iter().map(|(_, r)| r.prompt.len()).collect();
        let t = lens.iter().copied().max().unwrap_or(0);
        let mut flat = Vec::with_capacity(reqs.len() * t);
        for (_, r) in reqs {
            flat.extend(std::iter::repeat_n(0u32, t - r.prompt.len()));
            flat.extend_from_slice(&r.prompt);
        }
        let input = Tensor::from_vec(flat, (reqs.len(), t), dev)?;
        let mut cache = model.new_cache();
        let layout = if reqs.len() == 1 {
            TokenLayout::contiguous(1, t, 0)
        } else {
            TokenLayout::left_padded(&lens, t)
        };
        let mut logits = model.forward_last(&input, &layout, Some(&mut cache))?;
        // One cache row per sample: request i's prefill, n_i times.
        let row_req: Vec<u32> = reqs
            .iter()
            .enumerate()
            .flat_map(|(i, (_, r))| std::iter::repeat_n(i as u32, r.n))
            .collect();
        if row_req.len() != reqs.len() {
            cache.select_rows(&row_req)?;
            logits = logits.index_select(&Tensor::new(row_req.as_slice(), dev)?, 0)?;
        }
        self.cache.append_rows(&cache)?;
        self.logits = Some(match self.logits.take() {
            Some(l) => Tensor::cat(&[&l, &logits], 0)?,
            None => logits,
        });
        for (&(id, req), &len) in reqs.iter().zip(&lens) {
            let p = &req.params;
            for j in 0..req.n {
                self.rows.push(Row {
                    id,
                    seq: Sequence::new(p, j, len),
                });
            }
            self.entries.insert(
                id,
                Entry {
                    params: p.clone(),
                    stop_ids: engine.stop_ids_for(p),
                    out: vec![None; req.n],
                    left: req.n,
                },
            );
        }
        Ok(())
    }

    /// The log-probability (and the most likely alternatives, when asked for) of the token that
    /// sample `sample` of request `id` drew at the last step, while it is still in the batch.
    pub fn last_logprobs(&self, id: usize, sample: usize) -> Option<(f32, &[TopLogprob])> {
        let row = self
            .rows
            .iter()
            .find(|r| r.id == id && r.seq.sample == sample)?;
        row.seq.last_logprob()
    }

    /// Drops request `id`'s rows (say its client went away); nothing is reported for it.
    pub fn cancel(&mut self, id: usize) -> Result<()> {
        if self.entries.remove(&id).is_none() {
            return Ok(());
        }
        let keep: Vec<u32> = (0..self.rows.len() as u32)
            .filter(|&k| self.rows[k as usize].id != id)
            .collect();
        self.keep_rows(&keep)
    }

    fn keep_rows(&mut self, keep: &[u32]) -> Result<()> {
        if keep.len() == self.rows.len() {
            return Ok(());
        }
        if keep.is_empty() {
            *self = DecodeBatch::new();
            return Ok(());
        }
        self.cache.select_rows(keep)?;
        if let Some(l) = self.logits.take() {
            let dev = l.device().clone();
            self.logits = Some(l.index_select(&Tensor::new(keep, &dev)?, 0)?);
        }
        let mut rows: Vec<Option<Row>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(Some)
            .collect();
        self.rows = keep
            .iter()
            .filter_map(|&k| rows[k as usize].take())
            .collect();
        Ok(())
    }

    /// Samples one token for every row, reports it (`GenEvent::Token`, `GenEvent::Finished` with
    /// `request` = the caller's id), lets finished rows leave, and runs the forward that makes
    /// the next step's logits. Returns the requests that finished, with their samples in order.
    pub fn step(
        &mut self,
        engine: &LocalEngine,
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> Result<Vec<(usize, Vec<Completion>)>> {
        let Some(logits) = self.logits.take() else {
            return Ok(vec![]);
        };
        let model = engine.model();
        let tok = engine.tokenizer();
        let dev = model.device();
        let context = model.config.max_position_embeddings;
        let vocab = model.config.vocab_size;
        let a = self.rows.len();
        let lv = logit_rows(&logits, a, vocab)?;
        let entries = &self.entries;
        let entry = |id: usize| -> Result<&Entry> {
            entries.get(&id).ok_or_else(|| {
                crate::GenError::Unsupported(format!("a row of request {id}, which is gone"))
            })
        };
        // Rows draw on every core: each from its own stream, so the draws do not depend on the
        // order they run in.
        let next = self
            .rows
            .par_iter_mut()
            .zip(lv.par_chunks_exact(vocab))
            .map(|(row, row_logits)| {
                let e = entry(row.id)?;
                Ok(row.seq.draw(row_logits, &e.params, &e.stop_ids))
            })
            .collect::<Result<Vec<u32>>>()?;
        let params = self
            .rows
            .iter()
            .map(|row| Ok(&entry(row.id)?.params))
            .collect::<Result<Vec<_>>>()?;
        let lps = drawn_logprobs(&logits, &next, params.into_iter(), dev)?;

        let mut keep: Vec<u32> = Vec::with_capacity(a);
        let mut done = vec![];
        for (k, row) in self.rows.iter_mut().enumerate() {
            let e = self.entries.get_mut(&row.id).ok_or_else(|| {
                crate::GenError::Unsupported(format!("a row of request {}, which is gone", row.id))
            })?;
            let p = &e.params;
            let t = next[k];
            let finish = row.seq.accept(
                tok,
                p,
                &e.stop_ids,
                context,
                t,
                lps.as_ref().map(|l| l[k]),
                || Ok(logits.narrow(0, k, 1)?),
            )?;
            on_event(&GenEvent::Token {
                request: row.id,
                sample: row.seq.sample,
                token: t,
                text: row.seq.take_stream(finish.is_some()),
            });
            match finish {
                None => keep.push(k as u32),
                Some(finish) => {
                    let c = row.seq.complete(p, finish);
                    on_event(&GenEvent::Finished {
                        request: row.id,
                        sample: row.seq.sample,
                        completion: &c,
                    });
                    e.out[row.seq.sample] = Some(c);
                    e.left -= 1;
                    if e.left == 0 {
                        done.push(row.id);
                    }
                }
            }
        }
        let finished: Vec<(usize, Vec<Completion>)> = done
            .into_iter()
            .filter_map(|id| {
                self.entries
                    .remove(&id)
                    .map(|e| (id, e.out.into_iter().flatten().collect()))
            })
            .collect();
        // Finished rows leave; the others decode their new token at its own position.
        self.keep_rows(&keep)?;
        if self.rows.is_empty() {
            return Ok(finished);
        }
        let fed: Vec<u32> = keep.iter().map(|&k| next[k as usize]).collect();
        let positions: Vec<Vec<u32>> = self
            .rows
            .iter()
            .map(|r| vec![(r.seq.prompt_len + r.seq.tokens.len() - 1) as u32])
            .collect();
        let layout = TokenLayout {
            valid: vec![vec![true]; positions.len()],
            positions,
        };
        let input = Tensor::from_vec(fed, (self.rows.len(), 1), dev)?;
        self.logits = Some(model.forward_last(&input, &layout, Some(&mut self.cache))?);
        Ok(finished)
    }
}
