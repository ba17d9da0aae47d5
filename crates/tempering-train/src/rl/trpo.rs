//! TRPO's policy update on the trainable parameters (LoRA adapters or a small model): the gradient
//! of the surrogate `mean_t(r_t A_t)`, Fisher-vector products of the mean KL between the old and
//! the new policy, conjugate gradient with damping, the step scaled so that its quadratic KL equals
//! `max_kl`, and a backtracking line search that accepts a step only if the measured KL is within
//! `max_kl` and the surrogate improved (otherwise the weights are restored).
//!
//! Fisher-vector products. candle has no double backward, so `F v` (the Hessian of the mean KL at
//! the old parameters, which is the Fisher matrix) is a central finite difference of KL gradients:
//! `F v ~ (g(θ + h v) - g(θ - h v)) / 2h`, with `g` the gradient of `KL(π_old || π_θ)` (the old
//! distributions held fixed) and `h = fd_epsilon * max(1, |θ|) / |v|`, so each product costs two
//! forward-backward passes. Its error is O(h^2) from truncation plus f32 rounding that grows as h
//! shrinks: on the test's tiny model the relative error against a dense Fisher is about 1e-4 at
//! `fd_epsilon` 1e-2 and 5e-3 at 1e-4, hence the default of 1e-2. The exact KL over the vocabulary is used, from the old
//! log-softmax rows kept in memory (`tokens x vocab` floats). Trainable weights must be f32.
//! `fisher_fraction` < 1 computes the Fisher-vector products on evenly spaced samples of the batch
//! (the TRPO paper's subsampling, which cuts the conjugate gradient's cost by that fraction); the
//! surrogate, its gradient and the line search's KL always use the whole batch.
//!
//! Knows the decoder's forward and rollout samples; nothing of rewards, critics or the loop.

use candle_core::{DType, Tensor, Var, D};
use serde::Serialize;
use tempering_model::{ops, Transformer};

use crate::error::{Result, TrainError};
use crate::rl::cg::{conjugate_gradient, dot};
use crate::rl::policy_loss::RolloutSample;
use crate::rl::value::{completion_hidden, completion_labels};

/// The settings of a TRPO policy update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrpoConfig {
    /// The trust region: the mean KL(old || new) per token an accepted step may reach.
    pub max_kl: f64,
    pub cg_iterations: usize,
    /// Added to the Fisher's diagonal (`(F + damping I) x = g`).
    pub damping: f64,
    pub max_backtracks: usize,
    /// Each backtrack multiplies the step by this.
    pub backtrack_coef: f64,
    /// The finite-difference step of the Fisher-vector product, relative to `max(1, |θ|)`.
    pub fd_epsilon: f64,
    /// Completions per forward pass.
    pub micro_batch_size: usize,
    /// The share of the batch's samples the Fisher-vector products use, in (0, 1].
    pub fisher_fraction: f64,
}

impl Default for TrpoConfig {
    fn default() -> Self {
        TrpoConfig {
            max_kl: 0.01,
            cg_iterations: 10,
            damping: 0.1,
            max_backtracks: 10,
            backtrack_coef: 0.5,
            fd_epsilon: 1e-2,
            micro_batch_size: 16,
            fisher_fraction: 1.0,
        }
    }
}

/// What one update did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrpoOutcome {
    pub accepted: bool,
    /// Halvings before the accepted step (`max_backtracks + 1` when none was accepted).
    pub backtracks: usize,
    /// The measured mean KL(old || new) after the update (0 when rejected).
    pub kl: f64,
    /// Surrogate after minus before (0 when rejected).
    pub surrogate_improvement: f64,
    /// The linear model's improvement for the full step.
    pub expected_improvement: f64,
    pub grad_norm: f64,
    pub step_norm: f64,
    pub cg_iterations: usize,
    pub cg_residual: f64,
}

/// Samples in micro-batches with the old policy's distributions on them.
struct OldBatch<'a> {
    chunks: Vec<Vec<&'a RolloutSample>>,
    /// Per chunk: old log-softmax rows [n, V], old logprobs of the sampled tokens [n], advantages [n].
    old: Vec<(Tensor, Tensor, Tensor)>,
    tokens: usize,
}

/// The old policy's distributions over a fixed batch, and the functions of the parameters TRPO
/// needs on it: the surrogate, the mean KL to the old policy, their gradients, and `F v`.
pub struct TrustRegion<'a> {
    policy: &'a Transformer,
    params: &'a [Var],
    batch: OldBatch<'a>,
    /// The subsample the Fisher-vector products use (`None`: the whole batch).
    fisher: Option<OldBatch<'a>>,
    pad_id: u32,
}

fn flatten(ts: &[Option<Tensor>], params: &[Var]) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for (t, p) in ts.iter().zip(params) {
        match t {
            Some(t) => out.extend(
                t.to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|x| x as f64),
            ),
            None => out.extend(std::iter::repeat_n(0.0, p.elem_count())),
        }
    }
    Ok(out)
}

fn norm(v: &[f64]) -> f64 {
    dot(v, v).sqrt()
}

impl<'a> TrustRegion<'a> {
    /// Records the current policy (the old one) on `samples` (those in the loss); `advantages` come
    /// from the samples.
    pub fn new(
        policy: &'a Transformer,
        params: &'a [Var],
        samples: &[&'a RolloutSample],
        pad_id: u32,
        micro_batch_size: usize,
    ) -> Result<Self> {
        Self::with_fisher_fraction(policy, params, samples, pad_id, micro_batch_size, 1.0)
    }

    /// As [`TrustRegion::new`], with the Fisher-vector products on `fisher_fraction` of the samples
    /// (evenly spaced; at least one).
    pub fn with_fisher_fraction(
        policy: &'a Transformer,
        params: &'a [Var],
        samples: &[&'a RolloutSample],
        pad_id: u32,
        micro_batch_size: usize,
        fisher_fraction: f64,
    ) -> Result<Self> {
        for p in params {
            if p.dtype() != DType::F32 {
                return Err(TrainError::config(
                    "trpo",
                    "TRPO needs f32 trainable weights (use --dtype f32 or LoRA in f32)",
                ));
            }
        }
        if !(fisher_fraction > 0.0 && fisher_fraction <= 1.0) {
            return Err(TrainError::config(
                "fisher_fraction",
                format!("expected a number in (0, 1], got {fisher_fraction}"),
            ));
        }
        let active: Vec<&RolloutSample> = samples
            .iter()
            .copied()
            .filter(|s| s.in_loss && s.completion_len() > 0)
            .collect();
        let batch = OldBatch::record(policy, &active, pad_id, micro_batch_size)?;
        let n = active.len();
        let k = ((n as f64 * fisher_fraction).ceil() as usize).clamp(1, n.max(1));
        let fisher = if k < n {
            let picked: Vec<&RolloutSample> = (0..k).map(|j| active[j * n / k]).collect();
            Some(OldBatch::record(policy, &picked, pad_id, micro_batch_size)?)
        } else {
            None
        };
        Ok(TrustRegion {
            policy,
            params,
            batch,
            fisher,
            pad_id,
        })
    }

    pub fn tokens(&self) -> usize {
        self.batch.tokens
    }

    /// Per chunk of `b`, the summed KL(old || current) and the summed surrogate `r A`, as tensors.
    fn chunk_terms(&self, b: &OldBatch<'_>, i: usize) -> Result<(Tensor, Tensor)> {
        let c = &b.chunks[i];
        let (old_lsm, old_lp, adv) = &b.old[i];
        let lsm = log_softmax(self.policy, c, self.pad_id)?;
        let kl = (old_lsm.exp()? * (old_lsm - &lsm)?)?
            .sum(D::Minus1)?
            .sum_all()?;
        let labels = completion_labels(c, self.policy.device())?;
        let lp = lsm.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
        let surr = ((lp - old_lp)?.exp()? * adv)?.sum_all()?;
        Ok((kl, surr))
    }

    /// The mean KL(old || current) per token and the mean surrogate, without gradients.
    pub fn kl_and_surrogate(&self) -> Result<(f64, f64)> {
        let (mut kl, mut surr) = (0.0, 0.0);
        for i in 0..self.batch.chunks.len() {
            let (k, s) = self.chunk_terms(&self.batch, i)?;
            kl += k.detach().to_scalar::<f32>()? as f64;
            surr += s.detach().to_scalar::<f32>()? as f64;
        }
        let n = self.batch.tokens.max(1) as f64;
        Ok((kl / n, surr / n))
    }

    /// The mean KL (`want_kl`, on the Fisher's samples) or the mean surrogate (on the whole batch)
    /// and its gradient.
    fn gradient(&self, want_kl: bool) -> Result<(f64, Vec<f64>)> {
        let b = match (&self.fisher, want_kl) {
            (Some(f), true) => f,
            _ => &self.batch,
        };
        let mut acc: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let mut value = 0.0;
        let n = b.tokens.max(1) as f64;
        for i in 0..b.chunks.len() {
            let (kl, surr) = self.chunk_terms(b, i)?;
            let f = if want_kl { kl } else { surr };
            let f = (f / n)?;
            value += f.detach().to_scalar::<f32>()? as f64;
            let store = f.backward()?;
            for (slot, p) in acc.iter_mut().zip(self.params) {
                if let Some(g) = store.get(p.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    });
                }
            }
        }
        Ok((value, flatten(&acc, self.params)?))
    }

    /// The mean surrogate and its gradient.
    pub fn surrogate_gradient(&self) -> Result<(f64, Vec<f64>)> {
        self.gradient(false)
    }

    /// The mean KL(old || current) and its gradient, on the Fisher's samples.
    pub fn kl_gradient(&self) -> Result<(f64, Vec<f64>)> {
        self.gradient(true)
    }

    /// Sets the parameters to `base + scale * direction`.
    pub fn set_params(&self, base: &[Tensor], direction: &[f64], scale: f64) -> Result<()> {
        let mut at = 0;
        for (p, b) in self.params.iter().zip(base) {
            let n = p.elem_count();
            let d: Vec<f32> = direction[at..at + n]
                .iter()
                .map(|&x| (x * scale) as f32)
                .collect();
            let d = Tensor::from_vec(d, b.shape(), b.device())?;
            p.set(&(b + d)?)?;
            at += n;
        }
        Ok(())
    }

    /// A copy of the current parameters.
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self
            .params
            .iter()
            .map(|p| p.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?)
    }

    /// `F v` at `base` (the old parameters) by a central difference of KL gradients; the
    /// parameters are back at `base` afterwards.
    pub fn fisher_vector_product(
        &self,
        base: &[Tensor],
        v: &[f64],
        fd_epsilon: f64,
    ) -> Result<Vec<f64>> {
        let nv = norm(v);
        if nv == 0.0 {
            return Ok(vec![0.0; v.len()]);
        }
        let theta: f64 = base
            .iter()
            .map(|b| Ok(b.sqr()?.sum_all()?.to_scalar::<f32>()? as f64))
            .sum::<Result<f64>>()?
            .sqrt();
        let h = fd_epsilon * theta.max(1.0) / nv;
        self.set_params(base, v, h)?;
        let (_, gp) = self.kl_gradient()?;
        self.set_params(base, v, -h)?;
        let (_, gm) = self.kl_gradient()?;
        self.set_params(base, v, 0.0)?;
        Ok(gp
            .iter()
            .zip(&gm)
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect())
    }
}

fn log_softmax(policy: &Transformer, c: &[&RolloutSample], pad_id: u32) -> Result<Tensor> {
    let hidden = completion_hidden(policy, c, pad_id)?;
    let logits = policy.logits(&hidden)?.to_dtype(DType::F32)?;
    Ok(ops::log_softmax_last_dim(&logits)?)
}

impl<'a> OldBatch<'a> {
    /// The current policy's distributions on `samples`, in chunks of `micro_batch_size`.
    fn record(
        policy: &Transformer,
        samples: &[&'a RolloutSample],
        pad_id: u32,
        micro_batch_size: usize,
    ) -> Result<Self> {
        let chunks: Vec<Vec<&RolloutSample>> = samples
            .chunks(micro_batch_size.max(1))
            .map(|c| c.to_vec())
            .collect();
        let mut old = Vec::with_capacity(chunks.len());
        let mut tokens = 0;
        for c in &chunks {
            let lsm = log_softmax(policy, c, pad_id)?.detach();
            let labels = completion_labels(c, policy.device())?;
            let lp = lsm.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
            let adv: Vec<f32> = c
                .iter()
                .flat_map(|s| s.advantages.iter().copied())
                .collect();
            if adv.len() != lp.dim(0)? {
                return Err(TrainError::config(
                    "trpo",
                    "a sample's advantages do not match its completion length",
                ));
            }
            tokens += adv.len();
            let n = adv.len();
            old.push((lsm, lp, Tensor::from_vec(adv, n, policy.device())?));
        }
        Ok(OldBatch {
            chunks,
            old,
            tokens,
        })
    }
}

/// One TRPO update of `params` (the policy's trainable weights) on `samples`, whose advantages are
/// set. On return the parameters hold the accepted step, or the old values.
pub fn trpo_update(
    policy: &Transformer,
    params: &[Var],
    samples: &[&RolloutSample],
    pad_id: u32,
    c: &TrpoConfig,
) -> Result<TrpoOutcome> {
    let ok = c.max_kl > 0.0 && c.backtrack_coef > 0.0 && c.backtrack_coef < 1.0;
    if !ok {
        return Err(TrainError::config(
            "trpo",
            "expected max_kl > 0 and a backtrack coefficient in (0, 1)",
        ));
    }
    let tr = TrustRegion::with_fisher_fraction(
        policy,
        params,
        samples,
        pad_id,
        c.micro_batch_size,
        c.fisher_fraction,
    )?;
    let mut out = TrpoOutcome {
        backtracks: c.max_backtracks + 1,
        ..TrpoOutcome::default()
    };
    if tr.tokens() == 0 {
        return Ok(out);
    }
    let base = tr.snapshot()?;
    let (surr0, g) = tr.surrogate_gradient()?;
    out.grad_norm = norm(&g);
    if !out.grad_norm.is_finite() || out.grad_norm <= 0.0 {
        return Ok(out);
    }
    let damped = |v: &[f64]| -> Result<Vec<f64>> {
        let fv = tr.fisher_vector_product(&base, v, c.fd_epsilon)?;
        Ok(fv.iter().zip(v).map(|(f, x)| f + c.damping * x).collect())
    };
    let sol = conjugate_gradient(damped, &g, c.cg_iterations, 1e-10)?;
    out.cg_iterations = sol.iterations;
    out.cg_residual = sol.residual_norm;
    let fx = damped(&sol.x)?;
    let damped_shs = 0.5 * dot(&sol.x, &fx);
    if !damped_shs.is_finite() || damped_shs <= 0.0 {
        return Ok(out);
    }
    // The full step's quadratic KL, 0.5 s^T F s, equals max_kl. Damping regularises the solve
    // only: the KL's model is the undamped Fisher (a large damping would otherwise shrink every
    // step well inside the region). Should the finite differences make the undamped product
    // non-positive, the damped one sizes the step.
    let shs = damped_shs - 0.5 * c.damping * dot(&sol.x, &sol.x);
    let shs = if shs.is_finite() && shs > 0.0 {
        shs
    } else {
        damped_shs
    };
    let scale = (c.max_kl / shs).sqrt();
    out.expected_improvement = scale * dot(&g, &sol.x);
    out.step_norm = scale * norm(&sol.x);
    let mut frac = 1.0;
    for k in 0..=c.max_backtracks {
        tr.set_params(&base, &sol.x, scale * frac)?;
        let (kl, surr) = tr.kl_and_surrogate()?;
        if kl.is_finite() && kl <= c.max_kl && surr > surr0 {
            out.accepted = true;
            out.backtracks = k;
            out.kl = kl;
            out.surrogate_improvement = surr - surr0;
            return Ok(out);
        }
        frac *= c.backtrack_coef;
    }
    tr.set_params(&base, &sol.x, 0.0)?;
    Ok(out)
}
