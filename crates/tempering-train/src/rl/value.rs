//! The critic of actor-critic RL: a linear value head (`Var`s of this crate) on the last hidden
//! states of a decoder, either the policy's own backbone (shared, as TRL's `PolicyAndValueWrapper`)
//! or a separate critic model. `V(s_t)` for completion token `t` is read at the position whose
//! logits predict that token, so values line up with the policy's per-token logprobs. Knows the
//! decoder's forward; nothing of rewards, advantages or the loop.

use candle_core::{DType, Device, Tensor, Var};
use tempering_model::{ops, Transformer};

use crate::error::Result;
use crate::rl::policy_loss::RolloutSample;

/// `v = h . w + b`, zero-initialised so the first values are 0 and the backbone's gradient from the
/// value loss starts at 0.
#[derive(Clone)]
pub struct ValueHead {
    pub weight: Var,
    pub bias: Var,
}

impl ValueHead {
    pub fn new(hidden_size: usize, device: &Device) -> Result<Self> {
        Ok(ValueHead {
            weight: Var::zeros((hidden_size, 1), DType::F32, device)?,
            bias: Var::zeros(1, DType::F32, device)?,
        })
    }

    /// The head's trainable parameters, named as they are checkpointed.
    pub fn params(&self) -> Vec<(String, Var)> {
        vec![
            ("value_head.weight".into(), self.weight.clone()),
            ("value_head.bias".into(), self.bias.clone()),
        ]
    }

    /// Values [N] of hidden states [N, H].
    pub fn values(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = hidden.to_dtype(DType::F32)?;
        Ok(h.matmul(self.weight.as_tensor())?
            .squeeze(1)?
            .broadcast_add(self.bias.as_tensor())?)
    }
}

/// Where the values come from.
#[derive(Clone)]
pub enum Critic {
    /// The head reads the policy's hidden states.
    Shared(ValueHead),
    /// The head reads a separate decoder's hidden states (its own trainable weights).
    Separate {
        model: Box<Transformer>,
        head: ValueHead,
    },
}

impl Critic {
    pub fn head(&self) -> &ValueHead {
        match self {
            Critic::Shared(h) => h,
            Critic::Separate { head, .. } => head,
        }
    }
}

/// Hidden states [N, H] at the positions that predict each completion token of `batch` (N: the
/// summed completion lengths, in order), from one right-padded forward.
pub fn completion_hidden(
    model: &Transformer,
    batch: &[&RolloutSample],
    pad_id: u32,
) -> Result<Tensor> {
    let seqs: Vec<&[u32]> = batch.iter().map(|s| s.ids.as_slice()).collect();
    let positions: Vec<Vec<usize>> = batch
        .iter()
        .map(|s| (s.prompt_len.max(1)..s.ids.len()).map(|j| j - 1).collect())
        .collect();
    Ok(model.hidden_at(&seqs, &positions, pad_id)?)
}

/// The completion tokens of `batch`, in the order of [`completion_hidden`].
pub fn completion_labels(batch: &[&RolloutSample], device: &Device) -> Result<Tensor> {
    let labels: Vec<u32> = batch
        .iter()
        .flat_map(|s| s.ids[s.prompt_len.max(1)..].iter().copied())
        .collect();
    let n = labels.len();
    Ok(Tensor::from_vec(labels, n, device)?)
}

/// Per-token logprobs [N] and logits [N, V] (f32) of the completion tokens from hidden states.
pub fn logprobs_from_hidden(
    model: &Transformer,
    hidden: &Tensor,
    batch: &[&RolloutSample],
) -> Result<(Tensor, Tensor)> {
    let logits = model.logits(hidden)?.to_dtype(DType::F32)?;
    let labels = completion_labels(batch, model.device())?;
    Ok((ops::token_logprobs(&logits, &labels)?, logits))
}
