//! The outcome reward model: a decoder with a one-label sequence-classification head (what `temper
//! rm` trains and TRL's reward trainer writes), scoring `prompt + completion + EOS` at its last
//! token. Higher is better; the scale is the model's own (Bradley-Terry logits). Knows the model
//! layer and the scoring traits; nothing of how it was trained.

use std::path::Path;

use candle_core::{DType, Device};
use tempering_model::{Classifier, HeadKind, ScoreHead, Tokenizer, Transformer};

use super::tokens::completion_tokens;
use super::{default_dtype, length_batches, name_of};
use crate::error::{Result, RewardError};
use crate::scorer::{ScoreInput, Scored, Verifier};

pub struct RewardModel {
    name: String,
    model: Transformer,
    head: ScoreHead,
    tokenizer: Tokenizer,
    pad: u32,
}

impl RewardModel {
    /// Opens an HF sequence-classification directory with one label (`score.weight` `[1, H]`), in
    /// f32 on the CPU and bf16 on CUDA.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        Self::open_with(dir, default_dtype(device), device)
    }

    pub fn open_with(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_classifier(Classifier::open(dir, dtype, device)?)
    }

    /// The reward model held by an opened classifier directory.
    pub fn from_classifier(c: Classifier) -> Result<Self> {
        let dir = c.path.clone();
        let dir = dir.as_path();
        if c.kind != HeadKind::Sequence {
            return Err(RewardError::Format {
                path: dir.to_path_buf(),
                msg: "this is a token classifier (a process reward model): open it as a \
                      ProcessRewardModel, or give a sequence-classification directory"
                    .into(),
            });
        }
        let tokenizer = c.tokenizer.ok_or_else(|| RewardError::Format {
            path: dir.to_path_buf(),
            msg: "the reward model has no tokenizer.json".into(),
        })?;
        let pad = c.pad_token_id.unwrap_or(0);
        let mut rm = Self::from_parts(c.model, c.head, tokenizer, pad)?;
        rm.name = name_of(dir);
        Ok(rm)
    }

    /// A reward model from a decoder and a one-label head (e.g. one being trained).
    pub fn from_parts(
        model: Transformer,
        head: ScoreHead,
        tokenizer: Tokenizer,
        pad: u32,
    ) -> Result<Self> {
        if head.num_labels() != 1 {
            return Err(RewardError::spec(
                "reward model",
                format!(
                    "an outcome reward model has one label (a score); this head has {}",
                    head.num_labels()
                ),
            ));
        }
        Ok(RewardModel {
            name: "reward_model".into(),
            model,
            head,
            tokenizer,
            pad,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Scores of `(prompt, completion)` pairs, in order. A sequence longer than the model's
    /// context keeps its last tokens (the end, where the score is read).
    pub fn score_texts(&self, items: &[(&str, &str)]) -> Result<Vec<f64>> {
        let context = self.model.config.max_position_embeddings;
        let seqs: Vec<Vec<u32>> = items
            .iter()
            .map(|(p, c)| {
                let ids = completion_tokens(&self.tokenizer, p, c)?;
                Ok(ids[ids.len().saturating_sub(context)..].to_vec())
            })
            .collect::<Result<_>>()?;
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let mut out = vec![0.0; items.len()];
        for batch in length_batches(&lens) {
            let rows: Vec<&[u32]> = batch.iter().map(|&i| seqs[i].as_slice()).collect();
            let positions: Vec<Vec<usize>> = batch.iter().map(|&i| vec![lens[i] - 1]).collect();
            let h = self.model.hidden_at(&rows, &positions, self.pad)?;
            let scores = self
                .head
                .forward(&h)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (&i, s) in batch.iter().zip(scores) {
                out[i] = f64::from(s);
            }
        }
        Ok(out)
    }
}

impl Verifier for RewardModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        Ok(self
            .score_batch(std::slice::from_ref(input))?
            .pop()
            .unwrap_or(Scored {
                score: 0.0,
                correct: None,
            }))
    }

    fn score_batch(&self, inputs: &[ScoreInput<'_>]) -> Result<Vec<Scored>> {
        let items: Vec<(&str, &str)> = inputs.iter().map(|i| (i.prompt, i.completion)).collect();
        Ok(self
            .score_texts(&items)?
            .into_iter()
            .map(|score| Scored {
                score,
                correct: None,
            })
            .collect())
    }
}
