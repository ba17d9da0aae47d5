//! Learning-rate schedules: constant, linear decay or cosine decay, each after a linear warm-up.
//! Pure functions of the step; knows nothing of optimisers or models.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            other => Err(format!("`{other}`: expected constant, linear or cosine")),
        }
    }
}

/// The learning rate of every optimiser step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Peak learning rate, reached at the end of warm-up.
    pub lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// Linear and cosine decay end at `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// The learning rate of optimiser step `step` (0-based). Warm-up rises linearly to `lr` at step
    /// `warmup_steps - 1` (so the first step already moves; HF starts at 0); then the decay follows
    /// HF's curves, with progress `(step - warmup) / (total - warmup)`, so the last step's rate is
    /// still above the floor `lr * min_lr_ratio`, which the curve reaches one step after the end.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let min = self.lr * self.min_lr_ratio;
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        match self.kind {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::Linear => min + (self.lr - min) * (1.0 - progress),
            ScheduleKind::Cosine => {
                min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            lr: 1.0,
            warmup_steps: 4,
            total_steps: 14,
            min_lr_ratio: 0.1,
        }
    }

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        for kind in [
            ScheduleKind::Constant,
            ScheduleKind::Linear,
            ScheduleKind::Cosine,
        ] {
            let sc = s(kind);
            let w: Vec<f64> = (0..4).map(|i| sc.lr_at(i)).collect();
            assert_eq!(w, vec![0.25, 0.5, 0.75, 1.0]);
            assert_eq!(sc.lr_at(4), 1.0, "{kind:?} starts its decay at the peak");
        }
    }

    #[test]
    fn decays_follow_hf_curves_and_constant_stays() {
        assert_eq!(s(ScheduleKind::Constant).lr_at(13), 1.0);
        // 10 decay steps: the last (step 13) is 9/10 of the way down.
        assert!((s(ScheduleKind::Linear).lr_at(13) - (0.1 + 0.9 * 0.1)).abs() < 1e-12);
        assert!((s(ScheduleKind::Linear).lr_at(14) - 0.1).abs() < 1e-12);
        let half_cos = 0.5 * (1.0 + (std::f64::consts::PI * 0.9).cos());
        assert!((s(ScheduleKind::Cosine).lr_at(13) - (0.1 + 0.9 * half_cos)).abs() < 1e-12);
        // Cosine halfway through the decay: the mean of peak and floor.
        assert!((s(ScheduleKind::Cosine).lr_at(4 + 5) - 0.55).abs() < 1e-12);
        // Monotone non-increasing after warm-up.
        for kind in [ScheduleKind::Linear, ScheduleKind::Cosine] {
            let sc = s(kind);
            for i in 4..13 {
                assert!(sc.lr_at(i + 1) <= sc.lr_at(i));
            }
        }
    }
}
