//! The paired preference losses on per-pair log-probabilities: DPO (sigmoid), IPO, hinge, robust DPO
//! (label smoothing), SimPO and ORPO, each with TRL's conventions (what is summed or averaged, how the
//! implicit rewards are defined, what is logged), plus the optional NLL term on the chosen completions
//! (RPO). Pure tensor arithmetic in f64: knows nothing of models, tokens or batches of text.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Which paired loss to train with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceLoss {
    /// DPO: `-log sigmoid(beta * delta)`.
    Sigmoid,
    /// IPO: `(delta / length - 1 / (2 beta))^2`, log-ratios per completion token as in TRL.
    Ipo,
    /// SLiC: `relu(1 - beta * delta)`.
    Hinge,
    /// Robust (conservative) DPO: unbiased under labels flipped with probability `label_smoothing`.
    Robust,
    /// SimPO: reference-free, length-normalised log-probs, target margin `simpo_gamma`.
    Simpo,
    /// ORPO: NLL of the chosen completion minus `beta` times the log-sigmoid of the log odds ratio.
    Orpo,
}

impl PreferenceLoss {
    pub const ALL: [PreferenceLoss; 6] = [
        PreferenceLoss::Sigmoid,
        PreferenceLoss::Ipo,
        PreferenceLoss::Hinge,
        PreferenceLoss::Robust,
        PreferenceLoss::Simpo,
        PreferenceLoss::Orpo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PreferenceLoss::Sigmoid => "sigmoid",
            PreferenceLoss::Ipo => "ipo",
            PreferenceLoss::Hinge => "hinge",
            PreferenceLoss::Robust => "robust",
            PreferenceLoss::Simpo => "simpo",
            PreferenceLoss::Orpo => "orpo",
        }
    }

    /// Whether the loss compares the policy with a reference model.
    pub fn needs_reference(self) -> bool {
        !matches!(self, PreferenceLoss::Simpo | PreferenceLoss::Orpo)
    }

    /// Whether the loss reads log-probs averaged over the completion's tokens (else summed).
    pub fn length_normalised(self) -> bool {
        !self.needs_reference()
    }
}

impl fmt::Display for PreferenceLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PreferenceLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        PreferenceLoss::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = PreferenceLoss::ALL.iter().map(|l| l.name()).collect();
                format!("unknown loss `{s}`; expected one of {}", names.join(", "))
            })
    }
}

/// The settings of a paired loss (TRL's names and meanings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossParams {
    pub loss: PreferenceLoss,
    /// Inverse temperature of the implicit reward (IPO: the regulariser tau; ORPO: lambda).
    pub beta: f64,
    /// Probability that a label is flipped (robust; also SimPO's conservative form). In [0, 0.5).
    pub label_smoothing: f64,
    /// SimPO's target reward margin.
    pub simpo_gamma: f64,
    /// Weight of the mean NLL of the chosen completions' tokens added to the loss (RPO; TRL's `sft`
    /// loss weight in DPO and `cpo_alpha` in CPO/SimPO). ORPO always adds it with weight 1.
    pub rpo_alpha: f64,
}

impl LossParams {
    pub fn new(loss: PreferenceLoss, beta: f64) -> Self {
        LossParams {
            loss,
            beta,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            rpo_alpha: 0.0,
        }
    }

    /// Rejects values the loss is undefined for, naming the key.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(TrainError::config(
                "beta",
                format!("expected a positive number, got {}", self.beta),
            ));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(TrainError::config(
                "label_smoothing",
                format!(
                    "expected a number in [0, 0.5), got {}",
                    self.label_smoothing
                ),
            ));
        }
        if !(self.rpo_alpha.is_finite() && self.rpo_alpha >= 0.0) {
            return Err(TrainError::config(
                "rpo_alpha",
                format!(
                    "expected 0 (off) or a positive weight, got {}",
                    self.rpo_alpha
                ),
            ));
        }
        if !self.simpo_gamma.is_finite() {
            return Err(TrainError::config(
                "simpo_gamma",
                "expected a finite number",
            ));
        }
        Ok(())
    }

    /// Whether the NLL of the chosen completions is computed (added with weight `rpo_alpha`, or 1
    /// for ORPO; SimPO logs it as TRL's CPO does).
    fn uses_nll(&self) -> bool {
        matches!(self.loss, PreferenceLoss::Orpo | PreferenceLoss::Simpo) || self.rpo_alpha > 0.0
    }
}

/// One micro-batch of pairs as the loss sees it.
pub struct PairLogps {
    /// Summed log-probs of each chosen completion under the policy, `[B]` (any float dtype;
    /// differentiable).
    pub chosen: Tensor,
    /// Same for the rejected completions.
    pub rejected: Tensor,
    /// Completion tokens of each chosen / rejected completion (at least 1).
    pub chosen_len: Vec<usize>,
    pub rejected_len: Vec<usize>,
    /// Summed log-probs under the reference model (losses that need one).
    pub reference: Option<(Vec<f64>, Vec<f64>)>,
    /// ORPO: the summed log-probs of every token after the first of the chosen rows, prompt
    /// included, and how many there are (TRL's ORPO averages its NLL over the whole sequence).
    pub chosen_sequence: Option<(Tensor, usize)>,
}

/// The loss of a micro-batch: a sum over its pairs, and metrics as sums over pairs (divide by
/// `pairs` for TRL's batch means), plus each pair's implicit rewards.
pub struct PairLoss {
    pub loss_sum: Tensor,
    pub pairs: usize,
    pub metrics: Vec<(String, f64)>,
    pub chosen_rewards: Vec<f64>,
    pub rejected_rewards: Vec<f64>,
}

fn f64_vec(v: &[f64], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v.to_vec(), v.len(), dev)?)
}

fn lengths(v: &[usize], dev: &Device) -> Result<Tensor> {
    f64_vec(&v.iter().map(|&n| n as f64).collect::<Vec<_>>(), dev)
}

/// `log sigmoid(x)` = `-log(1 + exp(-x))`, for f64 `x`. The smooth form keeps the gradient exact at
/// `x = 0`, where DPO starts (a `relu`/`abs` split would take a subgradient there); f64 keeps it
/// accurate for any loss-sized `x`, and the clamp keeps `exp` finite.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(x.maximum(-700.0)?
        .neg()?
        .exp()?
        .affine(1.0, 1.0)?
        .log()?
        .neg()?)
}

/// `log(1 - exp(x))` for `x < 0`.
fn log1mexp(x: &Tensor) -> Result<Tensor> {
    Ok(x.exp()?.affine(-1.0, 1.0)?.log()?)
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.detach().to_vec1::<f64>()?)
}

/// The loss of a micro-batch of pairs, following TRL: DPO-family losses on summed log-probs against
/// the reference (IPO per completion token), SimPO and ORPO on averaged log-probs without one.
/// `rewards/*` are `beta` times the log-ratios (SimPO, ORPO: times the averaged log-probs), and
/// `logps/*` the log-probs the loss used.
pub fn pair_loss(p: &LossParams, x: &PairLogps) -> Result<PairLoss> {
    let b = x.chosen_len.len();
    if b == 0 || x.rejected_len.len() != b || x.chosen.dims() != [b] || x.rejected.dims() != [b] {
        return Err(TrainError::config(
            "batch",
            format!(
                "pair loss: {b} chosen and {} rejected lengths for log-probs of shapes {:?} and {:?}",
                x.rejected_len.len(),
                x.chosen.dims(),
                x.rejected.dims()
            ),
        ));
    }
    if x.chosen_len.iter().chain(&x.rejected_len).any(|&n| n == 0) {
        return Err(TrainError::config(
            "batch",
            "pair loss: a completion has no tokens",
        ));
    }
    let dev = x.chosen.device().clone();
    let chosen = x.chosen.to_dtype(DType::F64)?;
    let rejected = x.rejected.to_dtype(DType::F64)?;
    let len_c = lengths(&x.chosen_len, &dev)?;
    let len_r = lengths(&x.rejected_len, &dev)?;
    let beta = p.beta;
    let eps = p.label_smoothing;

    // Mean NLL over the chosen completions' tokens of the micro-batch (TRL's token mean).
    let chosen_tokens: usize = x.chosen_len.iter().sum();
    let nll = match (p.uses_nll(), p.loss, &x.chosen_sequence) {
        (false, _, _) => None,
        (true, PreferenceLoss::Orpo, Some((sum, n))) if *n > 0 => Some(
            sum.to_dtype(DType::F64)?
                .sum_all()?
                .affine(-1.0 / *n as f64, 0.0)?,
        ),
        (true, PreferenceLoss::Orpo, _) => {
            return Err(TrainError::config(
                "loss_type",
                "ORPO needs the log-probs of the chosen sequences (prompt included)",
            ))
        }
        (true, _, _) => Some(chosen.sum_all()?.affine(-1.0 / chosen_tokens as f64, 0.0)?),
    };

    let (losses, used_c, used_r, rewards_c, rewards_r) = if p.loss.needs_reference() {
        let (ref_c, ref_r) = x.reference.as_ref().ok_or_else(|| {
            TrainError::config(
                "loss_type",
                format!("the {} loss needs reference log-probs", p.loss),
            )
        })?;
        if ref_c.len() != b || ref_r.len() != b {
            return Err(TrainError::config(
                "batch",
                format!(
                    "{b} pairs but {} / {} reference log-probs",
                    ref_c.len(),
                    ref_r.len()
                ),
            ));
        }
        let lr_c = (&chosen - f64_vec(ref_c, &dev)?)?;
        let lr_r = (&rejected - f64_vec(ref_r, &dev)?)?;
        let delta = (&lr_c - &lr_r)?;
        let losses = match p.loss {
            PreferenceLoss::Sigmoid => log_sigmoid(&delta.affine(beta, 0.0)?)?.neg()?,
            PreferenceLoss::Hinge => delta.affine(-beta, 1.0)?.relu()?,
            PreferenceLoss::Ipo => {
                let d = ((&lr_c / &len_c)? - (&lr_r / &len_r)?)?;
                d.affine(1.0, -1.0 / (2.0 * beta))?.sqr()?
            }
            PreferenceLoss::Robust => {
                let clean = log_sigmoid(&delta.affine(beta, 0.0)?)?.affine(-(1.0 - eps), 0.0)?;
                let flipped = log_sigmoid(&delta.affine(-beta, 0.0)?)?.affine(eps, 0.0)?;
                (clean + flipped)?.affine(1.0 / (1.0 - 2.0 * eps), 0.0)?
            }
            PreferenceLoss::Simpo | PreferenceLoss::Orpo => {
                return Err(TrainError::config("loss_type", "reference-free loss"))
            }
        };
        let losses = match &nll {
            Some(n) => losses.broadcast_add(&n.affine(p.rpo_alpha, 0.0)?)?,
            None => losses,
        };
        let rc = lr_c.affine(beta, 0.0)?;
        let rr = lr_r.affine(beta, 0.0)?;
        (losses, chosen.clone(), rejected.clone(), rc, rr)
    } else {
        let avg_c = (&chosen / &len_c)?;
        let avg_r = (&rejected / &len_r)?;
        let losses = match p.loss {
            PreferenceLoss::Simpo => {
                let logits = (&avg_c - &avg_r)?.affine(1.0, -p.simpo_gamma / beta)?;
                let a = log_sigmoid(&logits.affine(beta, 0.0)?)?.affine(-(1.0 - eps), 0.0)?;
                let f = log_sigmoid(&logits.affine(-beta, 0.0)?)?.affine(-eps, 0.0)?;
                let l = (a + f)?;
                match &nll {
                    Some(n) if p.rpo_alpha > 0.0 => {
                        l.broadcast_add(&n.affine(p.rpo_alpha, 0.0)?)?
                    }
                    _ => l,
                }
            }
            PreferenceLoss::Orpo => {
                let log_odds = ((&avg_c - &avg_r)? - (log1mexp(&avg_c)? - log1mexp(&avg_r)?)?)?;
                let ratio = log_sigmoid(&log_odds)?;
                let n = nll
                    .as_ref()
                    .ok_or_else(|| TrainError::config("loss_type", "ORPO's NLL term is missing"))?;
                ratio.affine(-beta, 0.0)?.broadcast_add(n)?
            }
            _ => {
                return Err(TrainError::config(
                    "loss_type",
                    "this loss needs a reference",
                ))
            }
        };
        let rc = avg_c.affine(beta, 0.0)?;
        let rr = avg_r.affine(beta, 0.0)?;
        (losses, avg_c, avg_r, rc, rr)
    };

    let chosen_rewards = values(&rewards_c)?;
    let rejected_rewards = values(&rewards_r)?;
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let accurate = chosen_rewards
        .iter()
        .zip(&rejected_rewards)
        .filter(|(c, r)| c > r)
        .count() as f64;
    let mut metrics = vec![
        ("rewards/chosen".to_string(), sum(&chosen_rewards)),
        ("rewards/rejected".to_string(), sum(&rejected_rewards)),
        ("rewards/accuracies".to_string(), accurate),
        (
            "rewards/margins".to_string(),
            sum(&chosen_rewards) - sum(&rejected_rewards),
        ),
        ("logps/chosen".to_string(), sum(&values(&used_c)?)),
        ("logps/rejected".to_string(), sum(&values(&used_r)?)),
    ];
    if let Some(n) = &nll {
        metrics.push((
            "nll_loss".to_string(),
            n.detach().to_scalar::<f64>()? * b as f64,
        ));
    }
    if p.loss == PreferenceLoss::Orpo {
        let avg_c = values(&used_c)?;
        let avg_r = values(&used_r)?;
        let l1me = |x: f64| (-x.exp_m1()).ln();
        let (mut lor, mut lo) = (0.0, 0.0);
        for (c, r) in avg_c.iter().zip(&avg_r) {
            let log_odds = (c - r) - (l1me(*c) - l1me(*r));
            lo += log_odds;
            lor += -((-log_odds).exp().ln_1p());
        }
        metrics.push(("log_odds_ratio".to_string(), lor));
        metrics.push(("log_odds_chosen".to_string(), lo));
    }
    Ok(PairLoss {
        loss_sum: losses.sum_all()?,
        pairs: b,
        metrics,
        chosen_rewards,
        rejected_rewards,
    })
}
