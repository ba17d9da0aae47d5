//! The decoder's one gather: the final hidden states, or the log-probabilities of given tokens, at
//! chosen positions of a right-padded batch, from one forward. Every objective (SFT, DPO and KTO,
//! the policy losses, the critic, the reward models) reads the model through it, so training and
//! scoring read the same states. Knows the decoder's forward; nothing of what the positions or
//! tokens mean.

use candle_core::{DType, Tensor, D};

use super::{TokenLayout, Transformer};
use crate::error::{ModelError, Result};
use crate::ops;

impl Transformer {
    /// Final hidden states at chosen positions: `seqs` are right-padded with `pad` into one batch,
    /// and row `i` contributes its hidden states at `positions[i]` (each below its length),
    /// concatenated in order: `[sum of positions, H]`.
    pub fn hidden_at(&self, seqs: &[&[u32]], positions: &[Vec<usize>], pad: u32) -> Result<Tensor> {
        if seqs.len() != positions.len() || seqs.is_empty() {
            return Err(ModelError::Unsupported(format!(
                "hidden_at: {} sequences and {} position lists (expected the same, at least one)",
                seqs.len(),
                positions.len()
            )));
        }
        let b = seqs.len();
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = vec![pad; b * t];
        let mut rows = Vec::new();
        for (i, (s, pos)) in seqs.iter().zip(positions).enumerate() {
            ids[i * t..i * t + s.len()].copy_from_slice(s);
            for &p in pos {
                if p >= s.len() {
                    return Err(ModelError::Unsupported(format!(
                        "hidden_at: position {p} is past the end of sequence {i} ({} tokens)",
                        s.len()
                    )));
                }
                rows.push((i * t + p) as u32);
            }
        }
        let device = self.device().clone();
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let input = Tensor::from_vec(ids, (b, t), &device)?;
        let hidden = self.forward_hidden(&input, &TokenLayout::right_padded(&lengths, t), None)?;
        let h = hidden.dim(D::Minus1)?;
        let n = rows.len();
        Ok(hidden
            .reshape((b * t, h))?
            .index_select(&Tensor::from_vec(rows, n, &device)?, 0)?)
    }

    /// Log-probabilities of `labels` at chosen positions: the logits of the hidden states
    /// [`Transformer::hidden_at`] picks (in f32, divided by `temperature` unless it is 1, e.g. the
    /// rollouts' sampling temperature), and for each the log-probability of its label (`labels`
    /// holds one token per position, in the same order). Returns `([N] log-probs, [N, V] logits)`.
    pub fn token_logprobs_at(
        &self,
        seqs: &[&[u32]],
        positions: &[Vec<usize>],
        labels: Vec<u32>,
        pad: u32,
        temperature: f64,
    ) -> Result<(Tensor, Tensor)> {
        let picked = self.hidden_at(seqs, positions, pad)?;
        self.head_logprobs_with_logits(&picked, labels, temperature)
    }

    /// The logits of `picked` (f32, divided by `temperature` unless it is 1) and each row's
    /// label log-probability under them.
    fn head_logprobs_with_logits(
        &self,
        picked: &Tensor,
        labels: Vec<u32>,
        temperature: f64,
    ) -> Result<(Tensor, Tensor)> {
        let mut logits = self.logits(picked)?.to_dtype(DType::F32)?;
        if temperature != 1.0 {
            logits = (logits / temperature)?;
        }
        let n = labels.len();
        let lp = ops::token_logprobs(&logits, &Tensor::from_vec(labels, n, self.device())?)?;
        Ok((lp, logits))
    }

    /// The log-probabilities of [`Transformer::token_logprobs_at`] alone, `[N]`, without their
    /// logits. Where the LM head trains (full fine-tuning) they go through the fused head
    /// ([`ops::head_logprobs`]), which holds a block of rows' logits at a time instead of `[N, V]`
    /// and its gradient: SmolLM2's full SFT step peaked 128 MB lower and ran 2.50 s against 2.56
    /// (`scripts/bench/train.sh`). A frozen head keeps the logits for the backward instead of
    /// recomputing them: the fused head measured 0.06-0.11 s slower on the LoRA step.
    pub fn label_logprobs_at(
        &self,
        seqs: &[&[u32]],
        positions: &[Vec<usize>],
        labels: Vec<u32>,
        pad: u32,
        temperature: f64,
    ) -> Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        if self.inference_head.is_some() || !head.track_op() {
            return Ok(self
                .token_logprobs_at(seqs, positions, labels, pad, temperature)?
                .0);
        }
        let picked = self.hidden_at(seqs, positions, pad)?;
        if picked.dtype() != head.dtype() {
            return Ok(self
                .head_logprobs_with_logits(&picked, labels, temperature)?
                .0);
        }
        ops::head_logprobs(&picked, head, &labels, temperature)
    }
}
