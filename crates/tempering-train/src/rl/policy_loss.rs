//! The clipped policy-gradient objective shared by GRPO, its relatives, RLOO and REINFORCE++: one
//! [`RolloutSample`] per completion with per-token advantages, the logprobs it was sampled with
//! ("old") and the reference's, and TRL's four ways of normalising the summed token losses. Knows
//! the decoder's forward and the fused logprob op; nothing of generation, rewards or the loop.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use tempering_model::{ops, Transformer};

use crate::error::Result;
use crate::objective::{LossOutput, Objective, StepContext};
use crate::rl::kl::{per_token_kl, KlEstimator};

/// How token losses become the batch loss (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over each sequence's tokens, then over sequences (the original GRPO).
    Grpo,
    /// Sum over tokens divided by sequences x the completion-length limit (Dr. GRPO: no length bias).
    DrGrpo,
    /// Sum over tokens divided by the tokens of the whole optimiser batch, all micro-batches
    /// together (DAPO's token-level loss).
    Dapo,
    /// Sum over tokens divided by the tokens of each micro-batch, then averaged over micro-batches
    /// (batch-normalised; equals `Dapo` without gradient accumulation).
    Bnpo,
}

impl std::str::FromStr for LossType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "grpo" => Ok(LossType::Grpo),
            "dr_grpo" => Ok(LossType::DrGrpo),
            "dapo" => Ok(LossType::Dapo),
            "bnpo" => Ok(LossType::Bnpo),
            o => Err(format!("`{o}`: expected grpo, dr_grpo, dapo or bnpo")),
        }
    }
}

/// The settings of the clipped objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyLossConfig {
    pub loss_type: LossType,
    /// Lower clip: the ratio is kept above `1 - epsilon_low`.
    pub epsilon_low: f64,
    /// Upper clip (clip-higher when above `epsilon_low`).
    pub epsilon_high: f64,
    /// Weight of the KL penalty to the reference inside the loss; 0 turns it off.
    pub beta: f64,
    pub kl_estimator: KlEstimator,
    /// Weight of the entropy bonus (subtracted from the loss); 0 turns it off.
    pub entropy_coef: f64,
    /// The completion-length limit (Dr. GRPO's constant normaliser).
    pub max_completion_length: usize,
}

impl Default for PolicyLossConfig {
    fn default() -> Self {
        PolicyLossConfig {
            loss_type: LossType::Dapo,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            kl_estimator: KlEstimator::K3,
            entropy_coef: 0.0,
            max_completion_length: 256,
        }
    }
}

/// One completion ready for the loss: `ids` is prompt then completion; each vector below has one
/// entry per completion token.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSample {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
    pub advantages: Vec<f32>,
    /// Logprobs under the policy that sampled (before this batch's updates); `None`: the current
    /// policy's, detached, so the ratio is exactly 1.
    pub old_logprobs: Option<Vec<f32>>,
    /// Logprobs under the reference; needed when `beta > 0`.
    pub ref_logprobs: Option<Vec<f32>>,
    /// `false` drops the sample's tokens from the loss (e.g. a truncated completion), while it still
    /// counts as a sequence for the per-sequence normalisers, as in TRL.
    pub in_loss: bool,
}

impl RolloutSample {
    pub fn completion_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// Per-token logprobs of every completion token of `batch`, in order, from one right-padded
/// forward: [sum of completion lengths]. Also returns the logits of those positions. The logits are
/// divided by `temperature`, the rollouts' sampling temperature (as TRL does), so that the
/// trainer's logprobs are those the tokens were sampled with.
pub fn completion_logprobs(
    model: &Transformer,
    batch: &[&RolloutSample],
    pad_id: u32,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let seqs: Vec<&[u32]> = batch.iter().map(|s| s.ids.as_slice()).collect();
    let positions: Vec<Vec<usize>> = batch
        .iter()
        .map(|s| (s.prompt_len.max(1)..s.ids.len()).map(|j| j - 1).collect())
        .collect();
    let labels: Vec<u32> = batch
        .iter()
        .flat_map(|s| s.ids[s.prompt_len.max(1)..].iter().copied())
        .collect();
    Ok(model.token_logprobs_at(&seqs, &positions, labels, pad_id, temperature)?)
}

/// Entropy of each row's distribution: [N].
pub fn entropy_rows(logits: &Tensor) -> Result<Tensor> {
    let lsm = ops::log_softmax_last_dim(logits)?;
    Ok((lsm.exp()? * &lsm)?.sum(D::Minus1)?.neg()?)
}

/// The clipped surrogate with optional KL penalty and entropy bonus, as an [`Objective`].
pub struct PolicyObjective {
    model: Transformer,
    pad_id: u32,
    pub config: PolicyLossConfig,
    /// The rollouts' sampling temperature (logits are divided by it).
    pub temperature: f64,
}

impl PolicyObjective {
    pub fn new(model: Transformer, pad_id: u32, config: PolicyLossConfig) -> Self {
        PolicyObjective {
            model,
            pad_id,
            config,
            temperature: 1.0,
        }
    }

    /// Logprobs at the rollouts' sampling temperature.
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.temperature = temperature;
        self
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }
}

fn f32_tensor(v: Vec<f32>, dev: &candle_core::Device) -> Result<Tensor> {
    let n = v.len();
    Ok(Tensor::from_vec(v, n, dev)?)
}

/// A micro-batch's clipped loss, given the per-token logprobs `lp` of its `active` samples'
/// completions (concatenated, differentiable) and their entropies. `weight` is the micro-batch's
/// share of the normaliser (sequences for grpo/dr_grpo, tokens for dapo/bnpo); the trainer divides
/// the summed `loss_sum` by the summed weights. Separate from the forward so that it can be checked
/// against TRL on fixed logprobs.
pub fn clipped_policy_loss(
    c: &PolicyLossConfig,
    lp: &Tensor,
    entropy: &Tensor,
    active: &[&RolloutSample],
    weight: f64,
) -> Result<LossParts> {
    let device = lp.device().clone();
    let dt = lp.dtype();
    let n = lp.dim(0)?;
    let vec = |v: Vec<f32>| -> Result<Tensor> { Ok(f32_tensor(v, &device)?.to_dtype(dt)?) };
    let mut adv = Vec::with_capacity(n);
    let mut old = Vec::with_capacity(n);
    let mut refs = Vec::with_capacity(n);
    let mut tok_w = Vec::with_capacity(n);
    for s in active {
        let len = s.completion_len();
        adv.extend_from_slice(&s.advantages);
        if let Some(o) = &s.old_logprobs {
            old.extend_from_slice(o);
        }
        if let Some(r) = &s.ref_logprobs {
            refs.extend_from_slice(r);
        }
        let w = match c.loss_type {
            LossType::Grpo => 1.0 / len as f32,
            LossType::DrGrpo => 1.0 / c.max_completion_length.max(1) as f32,
            LossType::Dapo | LossType::Bnpo => 1.0,
        };
        tok_w.extend(std::iter::repeat_n(w, len));
    }
    if adv.len() != n {
        return Err(crate::TrainError::config(
            "advantages",
            format!("{} advantages for {n} completion tokens", adv.len()),
        ));
    }
    let old = if old.len() == n {
        vec(old)?
    } else {
        lp.detach()
    };
    let adv_t = vec(adv.clone())?;
    let ratio = (lp - &old)?.exp()?;
    let clipped = ratio.clamp(1.0 - c.epsilon_low, 1.0 + c.epsilon_high)?;
    let l1 = (&ratio * &adv_t)?;
    let l2 = (&clipped * &adv_t)?;
    let mut per_token = l1.minimum(&l2)?.neg()?;
    let mut metrics = Vec::new();
    let scalar = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    if c.beta != 0.0 || refs.len() == n {
        if refs.len() != n {
            return Err(crate::TrainError::config(
                "beta",
                "a KL penalty needs the reference's logprobs of every sample",
            ));
        }
        let kl = per_token_kl(lp, &vec(refs)?, c.kl_estimator)?;
        metrics.push(("kl".to_string(), scalar(&kl.detach().mean_all()?)? * weight));
        if c.beta != 0.0 {
            per_token = (per_token + (kl * c.beta)?)?;
        }
    }
    let ent_mean = entropy.mean_all()?;
    metrics.push(("entropy".to_string(), scalar(&ent_mean.detach())? * weight));

    // Clip fractions as TRL counts them: the ratio beyond a bound where the advantage's sign makes
    // the bound bind.
    let r: Vec<f64> = ratio.detach().to_dtype(DType::F64)?.to_vec1()?;
    let (mut low, mut high) = (0usize, 0usize);
    for (ri, ai) in r.iter().zip(&adv) {
        if *ri < 1.0 - c.epsilon_low && *ai < 0.0 {
            low += 1;
        }
        if *ri > 1.0 + c.epsilon_high && *ai > 0.0 {
            high += 1;
        }
    }
    let nf = n as f64;
    let max_dev = r.iter().map(|x| (x - 1.0).abs()).fold(0.0f64, f64::max);
    metrics.push(("ratio/max_abs_dev".into(), max_dev * weight));
    metrics.push(("clip_ratio/low_mean".into(), low as f64 / nf * weight));
    metrics.push(("clip_ratio/high_mean".into(), high as f64 / nf * weight));
    metrics.push((
        "clip_ratio/region_mean".into(),
        (low + high) as f64 / nf * weight,
    ));

    let mut loss_sum = (per_token * vec(tok_w)?)?.sum_all()?;
    // TRL's entropy bonus: the mean token entropy, whatever the loss type's normaliser.
    if c.entropy_coef != 0.0 {
        loss_sum = (loss_sum - (ent_mean * (c.entropy_coef * weight))?)?;
    }
    let mut weight = weight;
    if c.loss_type == LossType::Bnpo {
        // Normalised within the micro-batch; the trainer then averages the micro-batches.
        loss_sum = (loss_sum / weight)?;
        metrics.iter_mut().for_each(|(_, v)| *v /= weight);
        weight = 1.0;
    }
    Ok(LossParts {
        loss_sum,
        weight,
        metrics,
    })
}

/// What [`clipped_policy_loss`] returns.
pub struct LossParts {
    pub loss_sum: Tensor,
    pub weight: f64,
    pub metrics: Vec<(String, f64)>,
}

impl Objective for PolicyObjective {
    type Example = RolloutSample;

    fn name(&self) -> &str {
        "policy"
    }

    fn loss(&mut self, batch: &[&RolloutSample], _ctx: &mut StepContext<'_>) -> Result<LossOutput> {
        let c = self.config;
        let device = self.model.device().clone();
        let tokens: usize = batch.iter().map(|s| s.ids.len()).sum();
        let seqs = batch.len() as f64;
        let active: Vec<&RolloutSample> = batch
            .iter()
            .copied()
            .filter(|s| s.in_loss && s.completion_len() > 0)
            .collect();
        // The normaliser's share of this micro-batch, in the units of `weight`.
        let weight = match c.loss_type {
            LossType::Grpo | LossType::DrGrpo => seqs,
            LossType::Dapo | LossType::Bnpo => {
                active.iter().map(|s| s.completion_len()).sum::<usize>() as f64
            }
        };
        if active.is_empty() {
            return Ok(LossOutput {
                loss_sum: Tensor::zeros((), DType::F32, &device)?,
                weight,
                tokens,
                metrics: vec![],
            });
        }
        let (lp, logits) =
            completion_logprobs(&self.model, &active, self.pad_id, self.temperature)?;
        let entropy = if c.entropy_coef != 0.0 {
            entropy_rows(&logits)?
        } else {
            entropy_rows(&logits.detach())?
        };
        let parts = clipped_policy_loss(&c, &lp, &entropy, &active, weight)?;
        let (loss_sum, weight, metrics) = (parts.loss_sum, parts.weight, parts.metrics);
        Ok(LossOutput {
            loss_sum,
            weight,
            tokens,
            metrics,
        })
    }
}
