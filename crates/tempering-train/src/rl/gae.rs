//! The numbers of actor-critic RL on sequences: the classic RLHF per-token reward (the score at the
//! last token minus `kl_coef` times the per-token KL to the reference), generalised advantage
//! estimation, whitening (TRL's `masked_whiten`), explained variance and the fixed or adaptive KL
//! controller (Ziegler et al. 2019). Knows plain numbers only: nothing of models, tokens or tensors.

use serde::{Deserialize, Serialize};

use crate::rl::kl::{kl_value, KlEstimator};

/// Per-token rewards of one completion: `-kl_coef * kl_t` at every token, plus `score` at the last.
pub fn token_rewards(
    score: f64,
    logprobs: &[f32],
    ref_logprobs: &[f32],
    kl_coef: f64,
    estimator: KlEstimator,
) -> Vec<f64> {
    let mut r: Vec<f64> = logprobs
        .iter()
        .zip(ref_logprobs)
        .map(|(&lp, &rl)| -kl_coef * kl_value(lp as f64, rl as f64, estimator))
        .collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// Generalised advantage estimation over one completion (the value after the last token is 0:
/// the episode ends there). Returns `(advantages, returns)` with `returns = advantages + values`.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len().min(values.len());
    let mut adv = vec![0.0; n];
    let mut running = 0.0;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next - values[t];
        running = delta + gamma * lambda * running;
        adv[t] = running;
    }
    let returns = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, returns)
}

/// `(x - mean) / sqrt(var + 1e-8)` with the unbiased variance, as TRL's `masked_whiten`; the mean is
/// added back unless `shift_mean` (rewards keep their mean, advantages do not).
pub fn whiten(values: &[f64], shift_mean: bool) -> Vec<f64> {
    let n = values.len();
    if n == 0 {
        return Vec::new();
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
    if n > 1 {
        var *= n as f64 / (n - 1) as f64;
    }
    let inv = 1.0 / (var + 1e-8).sqrt();
    values
        .iter()
        .map(|v| {
            let w = (v - mean) * inv;
            if shift_mean {
                w
            } else {
                w + mean
            }
        })
        .collect()
}

/// `1 - Var(returns - values) / Var(returns)` (population variances); NaN when the returns do not
/// vary.
pub fn explained_variance(values: &[f64], returns: &[f64]) -> f64 {
    let var = |x: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = x.collect();
        let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
        v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / v.len().max(1) as f64
    };
    let vr = var(&mut returns.iter().copied());
    if vr == 0.0 {
        return f64::NAN;
    }
    let vd = var(&mut returns.iter().zip(values).map(|(r, v)| r - v));
    1.0 - vd / vr
}

/// How the KL coefficient of the reward evolves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlControl {
    Fixed,
    /// Ziegler et al.'s proportional controller: towards `target` (KL summed over a completion)
    /// with `horizon` samples of time constant.
    Adaptive {
        target: f64,
        horizon: f64,
    },
}

/// The KL coefficient and its controller; the coefficient is part of a run's resumable state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlController {
    pub value: f64,
    pub control: KlControl,
}

impl KlController {
    pub fn new(init: f64, control: KlControl) -> Self {
        KlController {
            value: init,
            control,
        }
    }

    /// After a batch of `n_samples` completions whose KL to the reference, summed over each
    /// completion and averaged over the batch, was `current`.
    pub fn update(&mut self, current: f64, n_samples: usize) {
        if let KlControl::Adaptive { target, horizon } = self.control {
            let err = (current / target - 1.0).clamp(-0.2, 0.2);
            self.value *= 1.0 + err * n_samples as f64 / horizon;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_by_hand() {
        // Three tokens, gamma 0.9, lambda 0.5.
        let r = [0.0, 0.0, 1.0];
        let v = [0.2, 0.4, 0.6];
        let (a, ret) = gae(&r, &v, 0.9, 0.5);
        let d2 = 1.0 - 0.6;
        let d1 = 0.0 + 0.9 * 0.6 - 0.4;
        let d0 = 0.0 + 0.9 * 0.4 - 0.2;
        let a2 = d2;
        let a1 = d1 + 0.45 * a2;
        let a0 = d0 + 0.45 * a1;
        for (x, y) in a.iter().zip([a0, a1, a2]) {
            assert!((x - y).abs() < 1e-12, "{a:?}");
        }
        assert!((ret[0] - (a0 + 0.2)).abs() < 1e-12);
        // lambda 1, gamma 1: advantages are the reward-to-go minus the value.
        let (a, _) = gae(&r, &v, 1.0, 1.0);
        assert!((a[0] - 0.8).abs() < 1e-12 && (a[1] - 0.6).abs() < 1e-12);
    }

    #[test]
    fn adaptive_controller_moves_towards_target() {
        let mut k = KlController::new(
            0.1,
            KlControl::Adaptive {
                target: 6.0,
                horizon: 100.0,
            },
        );
        k.update(12.0, 10); // too much KL: the error clips at 0.2
        assert!((k.value - 0.1 * 1.02).abs() < 1e-12);
        let mut f = KlController::new(0.1, KlControl::Fixed);
        f.update(100.0, 10);
        assert_eq!(f.value, 0.1);
    }
}
