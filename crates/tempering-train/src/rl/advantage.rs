//! Advantages from rewards, for the critic-free methods: GRPO's group normalisation (with TRL's
//! `scale_rewards` switch), RLOO's leave-one-out baseline and REINFORCE++'s batch normalisation.
//! Rewards arrive in group order: `rewards[g * group + i]` is sample `i` of prompt `g`. Knows
//! numbers only: nothing of models or tokens.

use serde::{Deserialize, Serialize};

/// How GRPO divides the centred rewards (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleRewards {
    /// By the standard deviation of the group (the original GRPO).
    Group,
    /// By the standard deviation of the whole batch.
    Batch,
    /// Not at all (Dr. GRPO).
    None,
}

impl std::str::FromStr for ScaleRewards {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "group" | "true" => Ok(ScaleRewards::Group),
            "batch" => Ok(ScaleRewards::Batch),
            "none" | "false" => Ok(ScaleRewards::None),
            o => Err(format!("`{o}`: expected group, batch or none")),
        }
    }
}

/// Added to the standard deviation before dividing, as TRL does.
pub const STD_EPS: f64 = 1e-4;

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

/// Unbiased standard deviation (torch's default), 0 for fewer than two values.
pub fn std_unbiased(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// GRPO: `(r - mean(group)) / (std + 1e-4)`, the std taken per `scale`.
pub fn grpo_advantages(rewards: &[f64], group: usize, scale: ScaleRewards) -> Vec<f64> {
    assert!(group > 0 && rewards.len().is_multiple_of(group));
    let batch_std = std_unbiased(rewards);
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let m = mean(g);
        let s = match scale {
            ScaleRewards::Group => std_unbiased(g),
            ScaleRewards::Batch => batch_std,
            ScaleRewards::None => 1.0 - STD_EPS,
        };
        out.extend(g.iter().map(|r| (r - m) / (s + STD_EPS)));
    }
    out
}

/// RLOO: each sample's reward minus the mean of the other samples of its group,
/// `r_i - (sum - r_i) / (k - 1)`. A group of one has no baseline (advantage = reward).
pub fn rloo_advantages(rewards: &[f64], group: usize) -> Vec<f64> {
    assert!(group > 0 && rewards.len().is_multiple_of(group));
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let sum: f64 = g.iter().sum();
        for r in g {
            out.push(if group > 1 {
                r - (sum - r) / (group - 1) as f64
            } else {
                *r
            });
        }
    }
    out
}

/// REINFORCE++: returns whitened over the whole batch, `(x - mean) / (std + 1e-8)` (no group
/// baseline; the KL penalty is already inside the returns).
pub fn batch_whiten(values: &[f64]) -> Vec<f64> {
    let m = mean(values);
    let s = std_unbiased(values);
    values.iter().map(|v| (v - m) / (s + 1e-8)).collect()
}

/// Whether every reward of each group ties (the groups dynamic sampling drops: no signal).
pub fn tied_groups(rewards: &[f64], group: usize) -> Vec<bool> {
    rewards
        .chunks(group)
        .map(|g| g.iter().all(|r| (r - g[0]).abs() < 1e-12))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rloo_hand_worked() {
        // Group [1, 0, 0, 1]: baselines (0+0+1)/3, (1+0+1)/3, (1+0+1)/3, (1+0+0)/3.
        let a = rloo_advantages(&[1.0, 0.0, 0.0, 1.0], 4);
        let want = [1.0 - 1.0 / 3.0, -2.0 / 3.0, -2.0 / 3.0, 1.0 - 1.0 / 3.0];
        for (x, y) in a.iter().zip(want) {
            assert!((x - y).abs() < 1e-12, "{a:?}");
        }
        // Leave-one-out advantages sum to zero within a group.
        let a = rloo_advantages(&[0.3, 2.0, -1.0, 0.7, 5.0, 5.0], 3);
        assert!(a[..3].iter().sum::<f64>().abs() < 1e-12);
        assert!(a[3..].iter().sum::<f64>().abs() < 1e-12);
    }

    #[test]
    fn grpo_group_scaling_hand_worked() {
        // Group [1, 0]: mean 0.5, unbiased std sqrt(0.5).
        let a = grpo_advantages(&[1.0, 0.0, 2.0, 2.0], 2, ScaleRewards::Group);
        let s = 0.5f64.sqrt() + STD_EPS;
        assert!((a[0] - 0.5 / s).abs() < 1e-12 && (a[1] + 0.5 / s).abs() < 1e-12);
        assert_eq!(&a[2..], &[0.0, 0.0]);
        let n = grpo_advantages(&[1.0, 0.0], 2, ScaleRewards::None);
        assert!((n[0] - 0.5).abs() < 1e-12);
        assert_eq!(tied_groups(&[1.0, 0.0, 2.0, 2.0], 2), vec![false, true]);
    }
}
