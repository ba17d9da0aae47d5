//! The DPO-family objective: chosen and rejected completions of a micro-batch go through the policy in
//! one forward pass; the reference log-probs come from the base model with adapters off (LoRA, no
//! second copy), a frozen model, or values precomputed once before training; the paired loss does the
//! rest. Knows models and the loss; nothing of optimisers or checkpoints.

use candle_core::Tensor;
use tempering_model::Transformer;

use crate::dpo::data::{PairSequence, PromptCompletion};
use crate::dpo::logps::{completion_logps_values, completion_logps_with_prompts};
use crate::dpo::loss::{pair_loss, LossParams, PairLogps, PairLoss, PreferenceLoss};
use crate::error::{Result, TrainError};
use crate::objective::{DropoutPolicy, LossOutput, Objective, StepContext};

/// Where reference log-probs come from.
pub enum Reference {
    /// The loss needs none (SimPO, ORPO).
    None,
    /// This (frozen) model: the policy's base with adapters off, or a separate copy.
    Model(Box<Transformer>),
    /// Each example carries its values (see [`DpoObjective::precompute_reference`]).
    Precomputed,
}

impl Reference {
    /// The reference for `policy` as configured: `None` for reference-free losses; with LoRA, the
    /// policy's base with adapters off; otherwise `frozen` (a copy of the weights taken before
    /// they became trainable, or a separate reference model).
    pub fn for_policy(
        params: &LossParams,
        policy: &Transformer,
        frozen: Option<Transformer>,
    ) -> Result<Reference> {
        if !params.loss.needs_reference() {
            return Ok(Reference::None);
        }
        if let Some(m) = frozen {
            return Ok(Reference::Model(Box::new(m)));
        }
        if policy.has_lora() {
            return Ok(Reference::Model(Box::new(policy.without_adapters())));
        }
        Err(TrainError::config(
            "ref_model",
            "full fine-tuning needs a frozen reference model",
        ))
    }
}

/// The precomputed reference log-probs of a batch's examples (`(reference, line)` each) as two
/// columns; an example without them is an error naming its line.
pub(crate) fn precomputed(
    examples: impl ExactSizeIterator<Item = (Option<(f64, f64)>, usize)>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut a = Vec::with_capacity(examples.len());
    let mut b = Vec::with_capacity(examples.len());
    for (reference, line) in examples {
        let (x, y) = reference.ok_or_else(|| {
            TrainError::config(
                "precompute_ref",
                format!("line {line}: no precomputed reference log-probs"),
            )
        })?;
        a.push(x);
        b.push(y);
    }
    Ok((a, b))
}

/// Implicit rewards of one pair under the trained policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRewards {
    pub line: usize,
    pub chosen_reward: f64,
    pub rejected_reward: f64,
    pub chosen_logps: f64,
    pub rejected_logps: f64,
}

pub struct DpoObjective {
    policy: DropoutPolicy,
    reference: Reference,
    params: LossParams,
    pad_id: u32,
}

impl DpoObjective {
    /// `model` must already carry its trainable `Var`s (full fine-tuning or LoRA).
    pub fn new(
        model: Transformer,
        reference: Reference,
        params: LossParams,
        pad_id: u32,
    ) -> Result<Self> {
        params.validate()?;
        Ok(DpoObjective {
            policy: DropoutPolicy::new(model),
            reference,
            params,
            pad_id,
        })
    }

    /// The trained model with dropout off (what to save or evaluate).
    pub fn model(&self) -> &Transformer {
        self.policy.model()
    }

    pub fn params(&self) -> &LossParams {
        &self.params
    }

    /// Computes the reference log-probs of every example of `datasets` once, in batches of
    /// `batch_size`, and from then on reads them from the examples (the reference model is dropped:
    /// with full fine-tuning that frees its copy of the weights).
    pub fn precompute_reference(
        &mut self,
        datasets: &mut [&mut [PairSequence]],
        batch_size: usize,
    ) -> Result<()> {
        let Reference::Model(reference) = &self.reference else {
            return Ok(());
        };
        for data in datasets.iter_mut() {
            for chunk in data.chunks_mut(batch_size.max(1)) {
                let (c, r) = reference_values(reference, chunk, self.pad_id)?;
                for (ex, (c, r)) in chunk.iter_mut().zip(c.into_iter().zip(r)) {
                    ex.reference = Some((c, r));
                }
            }
        }
        self.reference = Reference::Precomputed;
        Ok(())
    }

    /// The implicit rewards (`beta` times the policy-to-reference log-ratio; SimPO and ORPO: `beta`
    /// times the averaged log-prob) of every pair, in batches of `batch_size`.
    pub fn rewards(&self, data: &[PairSequence], batch_size: usize) -> Result<Vec<PairRewards>> {
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.chunks(batch_size.max(1)) {
            let batch: Vec<&PairSequence> = chunk.iter().collect();
            let (loss, policy, _) = self.batch_loss(self.policy.model(), &batch)?;
            let b = batch.len();
            for (i, ex) in batch.iter().enumerate() {
                out.push(PairRewards {
                    line: ex.line,
                    chosen_reward: loss.chosen_rewards[i],
                    rejected_reward: loss.rejected_rewards[i],
                    chosen_logps: policy[i],
                    rejected_logps: policy[b + i],
                });
            }
        }
        Ok(out)
    }

    /// The loss of `batch` under `model`, the policy's summed log-probs (chosen rows, then
    /// rejected) and the tokens processed.
    fn batch_loss(
        &self,
        model: &Transformer,
        batch: &[&PairSequence],
    ) -> Result<(PairLoss, Vec<f64>, usize)> {
        let b = batch.len();
        let rows: Vec<&PromptCompletion> = batch
            .iter()
            .map(|p| &p.chosen)
            .chain(batch.iter().map(|p| &p.rejected))
            .collect();
        // ORPO's NLL covers the chosen prompts too: their log-probs come from the same pass.
        let orpo = self.params.loss == PreferenceLoss::Orpo;
        let policy =
            completion_logps_with_prompts(model, &rows, self.pad_id, if orpo { b } else { 0 })?;
        let reference = match &self.reference {
            Reference::None => None,
            Reference::Model(m) => {
                let v = completion_logps_values(m, &rows, self.pad_id)?;
                Some((v[..b].to_vec(), v[b..].to_vec()))
            }
            Reference::Precomputed => {
                Some(precomputed(batch.iter().map(|p| (p.reference, p.line)))?)
            }
        };
        let x = PairLogps {
            chosen: policy.sums.narrow(0, 0, b)?,
            rejected: policy.sums.narrow(0, b, b)?,
            chosen_len: policy.lengths[..b].to_vec(),
            rejected_len: policy.lengths[b..].to_vec(),
            reference,
            chosen_sequence: if orpo {
                let completion_tokens: usize = policy.lengths[..b].iter().sum();
                let sum = (policy.sums.narrow(0, 0, b)? + policy.prompt_sums.narrow(0, 0, b)?)?;
                Some((sum, completion_tokens + policy.prompt_tokens))
            } else {
                None
            },
        };
        let values = policy
            .sums
            .detach()
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?;
        Ok((pair_loss(&self.params, &x)?, values, policy.tokens))
    }
}

fn reference_values(
    reference: &Transformer,
    chunk: &[PairSequence],
    pad: u32,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let b = chunk.len();
    let rows: Vec<&PromptCompletion> = chunk
        .iter()
        .map(|p| &p.chosen)
        .chain(chunk.iter().map(|p| &p.rejected))
        .collect();
    let v = completion_logps_values(reference, &rows, pad)?;
    Ok((v[..b].to_vec(), v[b..].to_vec()))
}

impl Objective for DpoObjective {
    type Example = PairSequence;

    fn name(&self) -> &str {
        "dpo"
    }

    fn loss(&mut self, batch: &[&PairSequence], ctx: &mut StepContext<'_>) -> Result<LossOutput> {
        if batch.is_empty() {
            return Ok(LossOutput {
                loss_sum: Tensor::zeros((), candle_core::DType::F64, self.policy.model().device())?,
                weight: 0.0,
                tokens: 0,
                metrics: vec![],
            });
        }
        let model = self.policy.for_step(ctx);
        let (loss, _, tokens) = self.batch_loss(model, batch)?;
        Ok(LossOutput {
            loss_sum: loss.loss_sum,
            weight: loss.pairs as f64,
            tokens,
            metrics: loss.metrics,
        })
    }
}
