//! The guards of online RL, each a metric and a warning when it trips: reward hacking (the proxy
//! reward rises while a held-out verifier falls, over a sliding window), length drift against the
//! first batches, KL to the reference beyond a limit, and forgetting (the loss on a retain set
//! degrading past a threshold from its value before RL). Their state is serialisable so that a
//! resumed run warns exactly as the uninterrupted one would. Knows numbers only.

use serde::{Deserialize, Serialize};

/// Thresholds of the guards.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuardConfig {
    /// Rollout batches in the hacking monitor's window (compared half against half).
    pub hacking_window: usize,
    /// Minimum rise of the proxy and fall of the verifier (in reward units) to call it hacking.
    pub hacking_delta: f64,
    /// Warn when the mean completion length leaves `[1/ratio, ratio]` times its initial value.
    pub length_drift_ratio: f64,
    /// Warn when the mean per-token KL to the reference exceeds this.
    pub kl_limit: f64,
    /// Where the loss does not need the reference (GRPO's family at `beta = 0`), the KL guard's
    /// reference forward runs every this many rollout batches only (0: never, the guard off).
    #[serde(default = "default_kl_every")]
    pub kl_every: usize,
    /// Warn when the retain-set loss exceeds its initial value by this fraction.
    pub forgetting_threshold: f64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            hacking_window: 6,
            hacking_delta: 0.05,
            length_drift_ratio: 1.5,
            kl_limit: 0.5,
            kl_every: default_kl_every(),
            forgetting_threshold: 0.10,
        }
    }
}

fn default_kl_every() -> usize {
    4
}

/// What the guards remember between rollout batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    /// (proxy mean, verifier mean) of the recent batches, oldest first.
    pub history: Vec<(f64, f64)>,
    /// Mean completion length of the first batch.
    pub initial_length: Option<f64>,
    /// Retain-set loss before the first update.
    pub initial_retain_loss: Option<f64>,
    /// Warnings raised so far, by guard name.
    pub warnings: Vec<(String, usize)>,
}

/// One guard that tripped.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub guard: &'static str,
    pub message: String,
}

impl GuardState {
    fn count(&mut self, guard: &str) {
        match self.warnings.iter_mut().find(|(g, _)| g == guard) {
            Some((_, n)) => *n += 1,
            None => self.warnings.push((guard.to_string(), 1)),
        }
    }

    /// Times `guard` has tripped.
    pub fn warnings_of(&self, guard: &str) -> usize {
        self.warnings
            .iter()
            .find(|(g, _)| g == guard)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }

    /// Records a batch's proxy and verifier means; warns when, over the window, the proxy's later
    /// half beats its earlier half by `delta` while the verifier's later half falls by `delta`.
    /// Returns the two trends (later minus earlier half) once the window is full.
    pub fn observe_rewards(
        &mut self,
        c: &GuardConfig,
        proxy: f64,
        verifier: f64,
    ) -> (Option<(f64, f64)>, Option<Warning>) {
        self.history.push((proxy, verifier));
        let w = c.hacking_window.max(2);
        if self.history.len() > w {
            self.history.remove(0);
        }
        if self.history.len() < w {
            return (None, None);
        }
        let half = w / 2;
        let mean = |xs: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
            xs.iter().map(f).sum::<f64>() / xs.len() as f64
        };
        let (early, late) = self.history.split_at(w - half);
        let dp = mean(late, |x| x.0) - mean(early, |x| x.0);
        let dv = mean(late, |x| x.1) - mean(early, |x| x.1);
        let warn = (dp > c.hacking_delta && dv < -c.hacking_delta).then(|| {
            self.count("reward_hacking");
            Warning {
                guard: "reward_hacking",
                message: format!(
                    "the proxy reward rose by {dp:+.3} while the held-out verifier fell by {dv:+.3} \
                     over the last {w} rollout batches"
                ),
            }
        });
        (Some((dp, dv)), warn)
    }

    /// Records a batch's mean completion length; returns its ratio to the first batch's.
    pub fn observe_length(&mut self, c: &GuardConfig, mean_len: f64) -> (f64, Option<Warning>) {
        let base = *self.initial_length.get_or_insert(mean_len.max(1e-9));
        let ratio = mean_len / base;
        let r = c.length_drift_ratio;
        let warn = (r > 1.0 && (ratio > r || ratio < 1.0 / r)).then(|| {
            self.count("length_drift");
            Warning {
                guard: "length_drift",
                message: format!(
                    "mean completion length is {mean_len:.1} tokens, {ratio:.2}x the first batch's"
                ),
            }
        });
        (ratio, warn)
    }

    pub fn observe_kl(&mut self, c: &GuardConfig, kl: f64) -> Option<Warning> {
        (kl > c.kl_limit).then(|| {
            self.count("kl");
            Warning {
                guard: "kl",
                message: format!(
                    "per-token KL to the reference is {kl:.4}, above the limit {}",
                    c.kl_limit
                ),
            }
        })
    }

    /// Records a retain-set loss; the first one is the baseline. Returns the relative change.
    pub fn observe_retain(&mut self, c: &GuardConfig, loss: f64) -> (f64, Option<Warning>) {
        let base = *self.initial_retain_loss.get_or_insert(loss);
        let rel = (loss - base) / base.abs().max(1e-9);
        let warn = (rel > c.forgetting_threshold).then(|| {
            self.count("forgetting");
            Warning {
                guard: "forgetting",
                message: format!(
                    "retain-set loss {loss:.4} is {:.1}% above its value before RL ({base:.4})",
                    rel * 100.0
                ),
            }
        });
        (rel, warn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hacking_fires_only_when_proxy_rises_and_verifier_falls() {
        let c = GuardConfig::default();
        let mut s = GuardState::default();
        let mut fired = 0;
        for i in 0..8 {
            let (_, w) = s.observe_rewards(&c, 0.1 * i as f64, 0.5 - 0.05 * i as f64);
            fired += w.is_some() as usize;
        }
        assert!(fired > 0);
        let mut s = GuardState::default();
        for i in 0..8 {
            // Both rise: honest improvement.
            let (_, w) = s.observe_rewards(&c, 0.1 * i as f64, 0.1 * i as f64);
            assert!(w.is_none());
        }
    }

    #[test]
    fn length_and_forgetting_guards() {
        let c = GuardConfig::default();
        let mut s = GuardState::default();
        assert!(s.observe_length(&c, 20.0).1.is_none());
        assert!(s.observe_length(&c, 25.0).1.is_none());
        assert!(s.observe_length(&c, 40.0).1.is_some());
        assert!(s.observe_retain(&c, 1.0).1.is_none());
        assert!(s.observe_retain(&c, 1.05).1.is_none());
        assert!(s.observe_retain(&c, 1.2).1.is_some());
        assert_eq!(s.warnings_of("forgetting"), 1);
    }
}
