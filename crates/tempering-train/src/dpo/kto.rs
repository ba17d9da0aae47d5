//! KTO: unpaired preference optimisation. Each example is one completion labelled desirable or not;
//! its loss is `1 - sigmoid(beta * (log-ratio - z))` (desirable) or `1 - sigmoid(beta * (z - log-ratio))`
//! (undesirable), weighted, where the baseline `z` is the batch's clamped, detached estimate of the
//! policy-to-reference KL from mismatched prompt-completion pairs, as in TRL. Holds the loss on
//! log-probs and the objective; nothing of optimisers or checkpoints.

use candle_core::{DType, Device, Tensor};
use tempering_model::Transformer;

use crate::dpo::data::{PromptCompletion, UnpairedSequence};
use crate::dpo::logps::{completion_logps, completion_logps_values};
use crate::dpo::loss::log_sigmoid;
use crate::dpo::objective::{precomputed, Reference};
use crate::error::{Result, TrainError};
use crate::objective::{DropoutPolicy, LossOutput, Objective, StepContext};

/// KTO's settings (TRL's `KTOConfig` names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoParams {
    pub beta: f64,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
}

impl KtoParams {
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("beta", self.beta),
            ("desirable_weight", self.desirable_weight),
            ("undesirable_weight", self.undesirable_weight),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(TrainError::config(
                    key,
                    format!("expected a positive number, got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// One micro-batch as the KTO loss sees it.
pub struct UnpairedLogps {
    /// Summed log-probs of each completion under the policy, `[N]`, differentiable.
    pub logps: Tensor,
    pub desirable: Vec<bool>,
    pub reference: Vec<f64>,
    /// Summed log-probs of the mismatched (KL) completions under the policy and the reference.
    pub kl_policy: Vec<f64>,
    pub kl_reference: Vec<f64>,
}

/// The loss of a micro-batch (a sum over its examples) and metrics as sums over examples: dividing by
/// the example count gives TRL's per-batch values (`rewards/chosen` is the mean over desirable
/// examples, `kl` the batch's estimate).
pub struct KtoLoss {
    pub loss_sum: Tensor,
    pub examples: usize,
    pub kl: f64,
    pub metrics: Vec<(String, f64)>,
}

pub fn kto_loss(p: &KtoParams, x: &UnpairedLogps) -> Result<KtoLoss> {
    let n = x.desirable.len();
    if n == 0
        || x.logps.dims() != [n]
        || x.reference.len() != n
        || x.kl_policy.len() != n
        || x.kl_reference.len() != n
    {
        return Err(TrainError::config(
            "batch",
            format!("KTO loss: inconsistent batch of {n} labels"),
        ));
    }
    let dev: Device = x.logps.device().clone();
    let kl = (x
        .kl_policy
        .iter()
        .zip(&x.kl_reference)
        .map(|(a, b)| a - b)
        .sum::<f64>()
        / n as f64)
        .max(0.0);
    let logps = x.logps.to_dtype(DType::F64)?;
    let logratio = (&logps - Tensor::from_vec(x.reference.clone(), n, &dev)?)?;
    // desirable: 1 - sigmoid(beta (r - kl)); undesirable: 1 - sigmoid(beta (kl - r)).
    let sign: Vec<f64> = x
        .desirable
        .iter()
        .map(|&d| if d { 1.0 } else { -1.0 })
        .collect();
    let weights: Vec<f64> = x
        .desirable
        .iter()
        .map(|&d| {
            if d {
                p.desirable_weight
            } else {
                p.undesirable_weight
            }
        })
        .collect();
    let sign = Tensor::from_vec(sign, n, &dev)?;
    let z = (logratio.affine(1.0, -kl)? * &sign)?.affine(p.beta, 0.0)?;
    let losses = log_sigmoid(&z)?.exp()?.affine(-1.0, 1.0)?;
    let loss_sum = (losses * Tensor::from_vec(weights, n, &dev)?)?.sum_all()?;

    let r: Vec<f64> = logratio.detach().to_vec1::<f64>()?;
    let lp: Vec<f64> = logps.detach().to_vec1::<f64>()?;
    let mut metrics = vec![("kl".to_string(), kl * n as f64)];
    let mut means = [None, None];
    for (k, want) in [(0, true), (1, false)] {
        let idx: Vec<usize> = (0..n).filter(|&i| x.desirable[i] == want).collect();
        if idx.is_empty() {
            continue;
        }
        let m = idx.len() as f64;
        let reward = idx.iter().map(|&i| p.beta * r[i]).sum::<f64>() / m;
        let logp = idx.iter().map(|&i| lp[i]).sum::<f64>() / m;
        let side = if want { "chosen" } else { "rejected" };
        // Scaled by n so that the trainer's division by the example count gives the class mean.
        metrics.push((format!("rewards/{side}"), reward * n as f64));
        metrics.push((format!("logps/{side}"), logp * n as f64));
        means[k] = Some(reward);
    }
    if let [Some(c), Some(r)] = means {
        metrics.push(("rewards/margins".to_string(), (c - r) * n as f64));
    }
    Ok(KtoLoss {
        loss_sum,
        examples: n,
        kl,
        metrics,
    })
}

pub struct KtoObjective {
    policy: DropoutPolicy,
    reference: Reference,
    params: KtoParams,
    pad_id: u32,
}

impl KtoObjective {
    /// `model` must already carry its trainable `Var`s; `reference` is a model or `Precomputed`
    /// after [`KtoObjective::precompute_reference`].
    pub fn new(
        model: Transformer,
        reference: Reference,
        params: KtoParams,
        pad_id: u32,
    ) -> Result<Self> {
        params.validate()?;
        if matches!(reference, Reference::None) {
            return Err(TrainError::config(
                "ref_model",
                "KTO needs a reference model",
            ));
        }
        Ok(KtoObjective {
            policy: DropoutPolicy::new(model),
            reference,
            params,
            pad_id,
        })
    }

    pub fn model(&self) -> &Transformer {
        self.policy.model()
    }

    /// Reference log-probs of every completion and KL completion of `datasets`, computed once; the
    /// reference model is dropped.
    pub fn precompute_reference(
        &mut self,
        datasets: &mut [&mut [UnpairedSequence]],
        batch_size: usize,
    ) -> Result<()> {
        let Reference::Model(reference) = &self.reference else {
            return Ok(());
        };
        for chunk in datasets
            .iter_mut()
            .flat_map(|d| d.chunks_mut(batch_size.max(1)))
        {
            let n = chunk.len();
            let rows: Vec<&PromptCompletion> = chunk
                .iter()
                .map(|e| &e.seq)
                .chain(chunk.iter().map(|e| &e.kl))
                .collect();
            let v = completion_logps_values(reference, &rows, self.pad_id)?;
            for (i, ex) in chunk.iter_mut().enumerate() {
                ex.reference = Some((v[i], v[n + i]));
            }
        }
        self.reference = Reference::Precomputed;
        Ok(())
    }
}

impl Objective for KtoObjective {
    type Example = UnpairedSequence;

    fn name(&self) -> &str {
        "kto"
    }

    fn loss(
        &mut self,
        batch: &[&UnpairedSequence],
        ctx: &mut StepContext<'_>,
    ) -> Result<LossOutput> {
        let n = batch.len();
        if n == 0 {
            return Ok(LossOutput {
                loss_sum: Tensor::zeros((), DType::F64, self.policy.model().device())?,
                weight: 0.0,
                tokens: 0,
                metrics: vec![],
            });
        }
        let model = self.policy.for_step(ctx);
        let seqs: Vec<&PromptCompletion> = batch.iter().map(|e| &e.seq).collect();
        let kls: Vec<&PromptCompletion> = batch.iter().map(|e| &e.kl).collect();
        let policy = completion_logps(model, &seqs, self.pad_id)?;
        // The KL estimate is a detached baseline: no graph kept for it.
        let kl_policy = completion_logps_values(self.policy.model(), &kls, self.pad_id)?;
        let (reference, kl_reference) = match &self.reference {
            Reference::Model(m) => (
                completion_logps_values(m, &seqs, self.pad_id)?,
                completion_logps_values(m, &kls, self.pad_id)?,
            ),
            Reference::Precomputed => precomputed(batch.iter().map(|e| (e.reference, e.line)))?,
            Reference::None => {
                return Err(TrainError::config(
                    "ref_model",
                    "KTO needs a reference model",
                ))
            }
        };
        let x = UnpairedLogps {
            logps: policy.sums,
            desirable: batch.iter().map(|e| e.desirable).collect(),
            reference,
            kl_policy,
            kl_reference,
        };
        let out = kto_loss(&self.params, &x)?;
        Ok(LossOutput {
            loss_sum: out.loss_sum,
            weight: out.examples as f64,
            tokens: policy.tokens,
            metrics: out.metrics,
        })
    }
}
