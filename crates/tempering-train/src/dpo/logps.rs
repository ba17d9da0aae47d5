//! Summed log-probabilities of completions given their prompts, for a batch of rows: one right-padded
//! forward pass, only the completion positions through the LM head, the fused `token_logprobs` (no
//! full log-softmax), and a sum per row. Knows the decoder's forward; nothing of losses.

use candle_core::{DType, Tensor};
use tempering_model::Transformer;

use crate::dpo::data::PromptCompletion;
use crate::error::Result;

/// What one forward pass gives for each row.
pub struct CompletionLogps {
    /// Summed log-probs of each row's completion tokens, `[R]` f32, differentiable.
    pub sums: Tensor,
    /// Completion tokens of each row.
    pub lengths: Vec<usize>,
    /// Summed log-probs of the prompt tokens after the first, `[R]` (rows asked for; else zero).
    pub prompt_sums: Tensor,
    /// Prompt tokens after the first in the rows asked for.
    pub prompt_tokens: usize,
    /// Tokens in the batch (prompt and completion, no padding).
    pub tokens: usize,
}

/// Sums of `log p(completion | prompt)` for each of `rows` under `model`.
pub fn completion_logps(
    model: &Transformer,
    rows: &[&PromptCompletion],
    pad_id: u32,
) -> Result<CompletionLogps> {
    completion_logps_with_prompts(model, rows, pad_id, 0)
}

/// As [`completion_logps`], and for the first `with_prompt` rows also the summed log-probs of their
/// prompt tokens after the first (`prompt_sums`, zero for the other rows), from the same pass.
pub fn completion_logps_with_prompts(
    model: &Transformer,
    rows: &[&PromptCompletion],
    pad_id: u32,
    with_prompt: usize,
) -> Result<CompletionLogps> {
    let device = model.device().clone();
    let r = rows.len();
    let mut positions = Vec::with_capacity(r);
    let mut labels = Vec::new();
    // (row, is a completion token) of each picked position, for the per-row sums: a [R, N] 0/1
    // matrix times the [N] log-probs.
    let mut owner = Vec::new();
    let mut lengths = Vec::with_capacity(r);
    let mut prompt_tokens = 0;
    for (i, s) in rows.iter().enumerate() {
        let from = if i < with_prompt { 1 } else { s.start.max(1) };
        let mut pos = Vec::with_capacity(s.len().saturating_sub(from));
        for j in from..s.len() {
            pos.push(j - 1);
            labels.push(s.ids[j]);
            let completion = j >= s.start;
            owner.push((i, completion));
            prompt_tokens += usize::from(!completion);
        }
        positions.push(pos);
        lengths.push(s.len() - s.start.max(1));
    }
    let n = labels.len();
    let tokens = rows.iter().map(|s| s.len()).sum();
    if n == 0 {
        let zeros = Tensor::zeros(r, DType::F32, &device)?;
        return Ok(CompletionLogps {
            sums: zeros.clone(),
            lengths,
            prompt_sums: zeros,
            prompt_tokens,
            tokens,
        });
    }
    let seqs: Vec<&[u32]> = rows.iter().map(|s| s.ids.as_slice()).collect();
    let lp = model.label_logprobs_at(&seqs, &positions, labels, pad_id, 1.0)?;
    // Row sums as a product with a [2R, N] 0/1 matrix: completions in rows 0..R, prompts in R..2R.
    let mut onehot = vec![0f32; 2 * r * n];
    for (k, &(i, completion)) in owner.iter().enumerate() {
        let row = if completion { i } else { r + i };
        onehot[row * n + k] = 1.0;
    }
    let segments = Tensor::from_vec(onehot, (2 * r, n), &device)?.to_dtype(lp.dtype())?;
    let all = segments.matmul(&lp.unsqueeze(1)?)?.squeeze(1)?;
    Ok(CompletionLogps {
        sums: all.narrow(0, 0, r)?,
        lengths,
        prompt_sums: all.narrow(0, r, r)?,
        prompt_tokens,
        tokens,
    })
}

/// The same sums as plain numbers, without keeping a graph (reference models, reports).
pub fn completion_logps_values(
    model: &Transformer,
    rows: &[&PromptCompletion],
    pad_id: u32,
) -> Result<Vec<f64>> {
    let out = completion_logps(model, rows, pad_id)?;
    Ok(out.sums.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?)
}
