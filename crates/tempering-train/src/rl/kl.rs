//! Per-token estimators of KL(policy || reference) from the log-probabilities of sampled tokens
//! (Schulman's k1, k2, k3). With `d = ref_logp - logp`: k1 = -d, k2 = d^2 / 2, k3 = exp(d) - d - 1
//! (unbiased and non-negative; GRPO's default). Knows tensors only.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    K1,
    K2,
    K3,
}

impl std::str::FromStr for KlEstimator {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "k1" => Ok(KlEstimator::K1),
            "k2" => Ok(KlEstimator::K2),
            "k3" => Ok(KlEstimator::K3),
            o => Err(format!("`{o}`: expected k1, k2 or k3")),
        }
    }
}

/// The per-token estimate, differentiable through `logp` (`ref_logp` is a constant).
pub fn per_token_kl(logp: &Tensor, ref_logp: &Tensor, est: KlEstimator) -> Result<Tensor> {
    let d = (ref_logp - logp)?;
    Ok(match est {
        KlEstimator::K1 => d.neg()?,
        KlEstimator::K2 => (d.sqr()? * 0.5)?,
        KlEstimator::K3 => ((d.exp()? - &d)? - 1.0)?,
    })
}

/// The same on plain numbers (for metrics and monitors).
pub fn kl_value(logp: f64, ref_logp: f64, est: KlEstimator) -> f64 {
    let d = ref_logp - logp;
    match est {
        KlEstimator::K1 => -d,
        KlEstimator::K2 => 0.5 * d * d,
        KlEstimator::K3 => d.exp() - d - 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn estimators_match_their_closed_forms() {
        let lp = Tensor::new(&[-1.0f32, -2.0, -0.5], &Device::Cpu).unwrap();
        let rp = Tensor::new(&[-1.5f32, -1.0, -0.5], &Device::Cpu).unwrap();
        for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
            let got: Vec<f32> = per_token_kl(&lp, &rp, est).unwrap().to_vec1().unwrap();
            for (i, (a, b)) in [(-1.0, -1.5), (-2.0, -1.0), (-0.5, -0.5)]
                .iter()
                .enumerate()
            {
                assert!((got[i] as f64 - kl_value(*a, *b, est)).abs() < 1e-6);
            }
        }
        // k3 is non-negative and zero where the policies agree.
        assert_eq!(kl_value(-0.5, -0.5, KlEstimator::K3), 0.0);
        assert!(kl_value(-2.0, -1.0, KlEstimator::K3) > 0.0);
    }
}
