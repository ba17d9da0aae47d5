//! PPO's loss: the clipped surrogate on the probability ratio, the clipped value loss and the
//! entropy bonus, per token, as an [`Objective`] over [`PpoSample`]s (a rollout sample with the
//! values it was taken with and its GAE returns). The same objective trains TRPO's critic alone
//! (`policy_coef` 0, features detached). Knows the decoder's forward and the critic; nothing of
//! generation, rewards or the loop.

use candle_core::{DType, Tensor};

use crate::error::{Result, TrainError};
use crate::objective::{LossOutput, Objective, StepContext};
use crate::rl::policy_loss::{completion_logprobs, entropy_rows, RolloutSample};
use crate::rl::value::{completion_hidden, logprobs_from_hidden, Critic};
use tempering_model::Transformer;

/// The settings of the PPO loss (TRL's `PPOConfig` names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PpoLossConfig {
    /// `cliprange`: the ratio is kept within `[1 - clip, 1 + clip]`.
    pub clip: f64,
    /// `cliprange_value`: values move at most this far from the rollout's values.
    pub clip_value: f64,
    /// `vf_coef`: weight of the value loss.
    pub vf_coef: f64,
    /// Weight of the entropy bonus (subtracted).
    pub entropy_coef: f64,
    /// Weight of the policy loss: 1 for PPO, 0 to train the critic alone (TRPO).
    pub policy_coef: f64,
    /// Values read from detached features: the value loss moves the head only (TRPO's shared critic
    /// must not move the policy outside its trust region).
    pub detach_features: bool,
}

impl Default for PpoLossConfig {
    fn default() -> Self {
        PpoLossConfig {
            clip: 0.2,
            clip_value: 0.2,
            vf_coef: 0.1,
            entropy_coef: 0.0,
            policy_coef: 1.0,
            detach_features: false,
        }
    }
}

/// A completion ready for the actor-critic loss: the rollout sample (advantages, old logprobs) and,
/// per completion token, the critic's values at rollout time and the GAE returns.
#[derive(Debug, Clone, PartialEq)]
pub struct PpoSample {
    pub rollout: RolloutSample,
    pub old_values: Vec<f32>,
    pub returns: Vec<f32>,
}

/// Per-token losses: `pg_t = max(-A r, -A clip(r, 1-e, 1+e))` with `r = exp(lp - old_lp)`, and
/// `vf_t = 0.5 max((v - R)^2, (clip(v, v_old - c, v_old + c) - R)^2)`. All inputs are [N].
pub fn ppo_token_losses(
    logprobs: &Tensor,
    old_logprobs: &Tensor,
    advantages: &Tensor,
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    c: &PpoLossConfig,
) -> Result<(Tensor, Tensor)> {
    let pg = clipped_policy_losses(logprobs, old_logprobs, advantages, c.clip)?;
    let vf = value_token_losses(values, old_values, returns, c.clip_value)?;
    Ok((pg, vf))
}

/// The clipped surrogate per token (see [`ppo_token_losses`]).
pub fn clipped_policy_losses(
    logprobs: &Tensor,
    old_logprobs: &Tensor,
    advantages: &Tensor,
    clip: f64,
) -> Result<Tensor> {
    let ratio = (logprobs - old_logprobs)?.exp()?;
    let pg1 = (&ratio * advantages)?.neg()?;
    let pg2 = (ratio.clamp(1.0 - clip, 1.0 + clip)? * advantages)?.neg()?;
    Ok(pg1.maximum(&pg2)?)
}

/// The clipped value loss per token (see [`ppo_token_losses`]).
pub fn value_token_losses(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    clip_value: f64,
) -> Result<Tensor> {
    let lo = (old_values - clip_value)?;
    let hi = (old_values + clip_value)?;
    let clipped = values.maximum(&lo)?.minimum(&hi)?;
    let l1 = (values - returns)?.sqr()?;
    let l2 = (clipped - returns)?.sqr()?;
    Ok((l1.maximum(&l2)? * 0.5)?)
}

fn f32_tensor(v: Vec<f32>, dev: &candle_core::Device) -> Result<Tensor> {
    let n = v.len();
    Ok(Tensor::from_vec(v, n, dev)?)
}

/// Policy logprobs (when `need_logprobs`), logits and the critic's values [N] of `batch`.
pub fn actor_critic_forward(
    policy: &Transformer,
    critic: &Critic,
    batch: &[&RolloutSample],
    pad_id: u32,
    need_logprobs: bool,
    detach_features: bool,
) -> Result<(Option<(Tensor, Tensor)>, Tensor)> {
    let feats = |h: Tensor| if detach_features { h.detach() } else { h };
    match critic {
        Critic::Shared(head) => {
            let hidden = completion_hidden(policy, batch, pad_id)?;
            let lp = if need_logprobs {
                Some(logprobs_from_hidden(policy, &hidden, batch)?)
            } else {
                None
            };
            Ok((lp, head.values(&feats(hidden))?))
        }
        Critic::Separate { model, head } => {
            let lp = if need_logprobs {
                Some(completion_logprobs(policy, batch, pad_id, 1.0)?)
            } else {
                None
            };
            let hidden = completion_hidden(model, batch, pad_id)?;
            Ok((lp, head.values(&feats(hidden))?))
        }
    }
}

/// PPO's loss as an [`Objective`]: summed over completion tokens, weighted by their number (the
/// trainer's division makes it the token mean over the minibatch, as TRL's `masked_mean`).
pub struct PpoObjective {
    policy: Transformer,
    critic: Critic,
    pad_id: u32,
    pub config: PpoLossConfig,
}

impl PpoObjective {
    pub fn new(policy: Transformer, critic: Critic, pad_id: u32, config: PpoLossConfig) -> Self {
        PpoObjective {
            policy,
            critic,
            pad_id,
            config,
        }
    }
}

impl Objective for PpoObjective {
    type Example = PpoSample;

    fn name(&self) -> &str {
        "ppo"
    }

    fn loss(&mut self, batch: &[&PpoSample], _ctx: &mut StepContext<'_>) -> Result<LossOutput> {
        let c = self.config;
        let device = self.policy.device().clone();
        let tokens: usize = batch.iter().map(|s| s.rollout.ids.len()).sum();
        let active: Vec<&PpoSample> = batch
            .iter()
            .copied()
            .filter(|s| s.rollout.in_loss && s.rollout.completion_len() > 0)
            .collect();
        let n: usize = active.iter().map(|s| s.rollout.completion_len()).sum();
        if active.is_empty() {
            return Ok(LossOutput {
                loss_sum: Tensor::zeros((), DType::F32, &device)?,
                weight: 0.0,
                tokens,
                metrics: vec![],
            });
        }
        let rollouts: Vec<&RolloutSample> = active.iter().map(|s| &s.rollout).collect();
        let need_lp = c.policy_coef != 0.0;
        let (lp, values) = actor_critic_forward(
            &self.policy,
            &self.critic,
            &rollouts,
            self.pad_id,
            need_lp,
            c.detach_features,
        )?;
        let mut old_v = Vec::with_capacity(n);
        let mut ret = Vec::with_capacity(n);
        let mut adv = Vec::with_capacity(n);
        let mut old_lp = Vec::with_capacity(n);
        for s in &active {
            let len = s.rollout.completion_len();
            if s.old_values.len() != len
                || s.returns.len() != len
                || s.rollout.advantages.len() != len
            {
                return Err(TrainError::config(
                    "ppo",
                    "a sample's values, returns or advantages do not match its completion length",
                ));
            }
            old_v.extend_from_slice(&s.old_values);
            ret.extend_from_slice(&s.returns);
            adv.extend_from_slice(&s.rollout.advantages);
            if let Some(o) = &s.rollout.old_logprobs {
                old_lp.extend_from_slice(o);
            }
        }
        let old_v_t = f32_tensor(old_v, &device)?;
        let ret_t = f32_tensor(ret, &device)?;
        let vf = value_token_losses(&values, &old_v_t, &ret_t, c.clip_value)?;
        let mut loss = (&vf * c.vf_coef)?;
        let mut metrics = Vec::new();
        let vf_sum = vf.detach().sum_all()?.to_scalar::<f32>()? as f64;
        metrics.push(("value_loss".to_string(), vf_sum));
        // Values that moved beyond the clip and whose clipped loss is the larger one.
        let v: Vec<f32> = values.detach().to_vec1()?;
        let ov: Vec<f32> = old_v_t.to_vec1()?;
        let r: Vec<f32> = ret_t.to_vec1()?;
        let vf_clipped = v
            .iter()
            .zip(&ov)
            .zip(&r)
            .filter(|((v, o), r)| {
                let cv = v.clamp(*o - c.clip_value as f32, *o + c.clip_value as f32);
                (cv - *r).powi(2) > (*v - *r).powi(2)
            })
            .count();
        metrics.push(("value_clipfrac".to_string(), vf_clipped as f64));
        metrics.push((
            "value_mean".to_string(),
            v.iter().map(|&x| x as f64).sum::<f64>(),
        ));

        if let Some((lp, logits)) = lp {
            let old_t = if old_lp.len() == n {
                f32_tensor(old_lp, &device)?
            } else {
                lp.detach()
            };
            let adv_t = f32_tensor(adv, &device)?;
            let log_ratio = (&lp - &old_t)?;
            let pg = clipped_policy_losses(&lp, &old_t, &adv_t, c.clip)?;
            loss = (loss + (&pg * c.policy_coef)?)?;
            let ent = if c.entropy_coef != 0.0 {
                let e = entropy_rows(&logits)?;
                loss = (loss - (&e * c.entropy_coef)?)?;
                e.detach()
            } else {
                entropy_rows(&logits.detach())?
            };
            let sum = |t: &Tensor| -> Result<f64> {
                Ok(t.detach().sum_all()?.to_scalar::<f32>()? as f64)
            };
            metrics.push(("policy_loss".to_string(), sum(&pg)?));
            metrics.push(("entropy".to_string(), sum(&ent)?));
            let lr: Vec<f32> = log_ratio.detach().to_vec1()?;
            let clipfrac = lr
                .iter()
                .filter(|x| ((x.exp() - 1.0).abs() as f64) > c.clip)
                .count();
            metrics.push(("clipfrac".to_string(), clipfrac as f64));
            // KL(old || new) on tokens sampled from old: k1 = -log r, k3 = (r - 1) - log r.
            metrics.push((
                "approx_kl_k1".to_string(),
                lr.iter().map(|&x| -(x as f64)).sum(),
            ));
            metrics.push((
                "approx_kl_k3".to_string(),
                lr.iter()
                    .map(|&x| ((x as f64).exp() - 1.0) - x as f64)
                    .sum(),
            ));
        }
        Ok(LossOutput {
            loss_sum: loss.sum_all()?,
            weight: n as f64,
            tokens,
            metrics,
        })
    }
}
