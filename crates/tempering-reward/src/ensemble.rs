//! Ensembles of scorers (typically reward models trained from different seeds) with a
//! conservative aggregate: the mean minus `k` standard deviations, or the minimum (Coste et al.
//! 2024, "Reward model ensembles help mitigate overoptimization"). The spread between members is
//! returned with every score: the reward-hacking monitor's raw material. Members should share a
//! scale; this module does not rescale them. Knows nothing of any one scorer.

use std::fmt;

use crate::error::{Result, RewardError};
use crate::scorer::{ScoreInput, Scored, StepScorer, Verifier};

/// How member scores become one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregate {
    Mean,
    /// Mean minus `k` population standard deviations (uncertainty-weighted optimisation).
    MeanMinusStd {
        k: f64,
    },
    /// Worst-case optimisation.
    Min,
}

impl Aggregate {
    /// `mean`, `min`, `mean-std` (k = 1) or `mean-Kstd` (e.g. `mean-0.5std`).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            RewardError::spec(
                "ensemble",
                format!("unknown aggregate `{text}`; expected mean, min, mean-std or mean-Kstd (e.g. mean-0.5std)"),
            )
        };
        match text.trim() {
            "mean" => Ok(Aggregate::Mean),
            "min" => Ok(Aggregate::Min),
            t => {
                let k = t
                    .strip_prefix("mean-")
                    .and_then(|r| r.strip_suffix("std"))
                    .ok_or_else(bad)?;
                let k = if k.is_empty() {
                    1.0
                } else {
                    k.parse::<f64>().map_err(|_| bad())?
                };
                if !(k.is_finite() && k >= 0.0) {
                    return Err(bad());
                }
                Ok(Aggregate::MeanMinusStd { k })
            }
        }
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aggregate::Mean => f.write_str("mean"),
            Aggregate::Min => f.write_str("min"),
            Aggregate::MeanMinusStd { k } if *k == 1.0 => f.write_str("mean-std"),
            Aggregate::MeanMinusStd { k } => write!(f, "mean-{k}std"),
        }
    }
}

/// The members' scores of one item and what they aggregate to.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleScore {
    /// The aggregate: what the policy is trained on.
    pub score: f64,
    pub mean: f64,
    /// Population standard deviation across members: the disagreement.
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub members: Vec<f64>,
}

impl EnsembleScore {
    /// Aggregates one item's member scores (at least one).
    pub fn of(members: Vec<f64>, aggregate: Aggregate) -> Self {
        let n = members.len().max(1) as f64;
        let mean = members.iter().sum::<f64>() / n;
        let var = members.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let std = var.sqrt();
        let min = members.iter().copied().fold(f64::INFINITY, f64::min);
        let max = members.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let score = match aggregate {
            Aggregate::Mean => mean,
            Aggregate::MeanMinusStd { k } => mean - k * std,
            Aggregate::Min => min,
        };
        EnsembleScore {
            score,
            mean,
            std,
            min,
            max,
            members,
        }
    }
}

/// Batch means of the disagreement, as `(metric name, value)`: `ensemble/std` (mean of the per-item
/// standard deviations) and `ensemble/range` (mean of max minus min).
pub fn disagreement_metrics(scores: &[EnsembleScore]) -> Vec<(&'static str, f64)> {
    let n = scores.len().max(1) as f64;
    vec![
        (
            "ensemble/std",
            scores.iter().map(|s| s.std).sum::<f64>() / n,
        ),
        (
            "ensemble/range",
            scores.iter().map(|s| s.max - s.min).sum::<f64>() / n,
        ),
    ]
}

fn check_members(name: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(RewardError::spec(
            name,
            "an ensemble needs at least one member",
        ));
    }
    Ok(())
}

/// An ensemble of whole-completion scorers.
pub struct Ensemble {
    name: String,
    members: Vec<Box<dyn Verifier>>,
    aggregate: Aggregate,
}

impl Ensemble {
    pub fn new(members: Vec<Box<dyn Verifier>>, aggregate: Aggregate) -> Result<Self> {
        let name = format!("ensemble({aggregate})");
        check_members(&name, members.len())?;
        Ok(Ensemble {
            name,
            members,
            aggregate,
        })
    }

    pub fn aggregate(&self) -> Aggregate {
        self.aggregate
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's score of every input (each member scores the whole batch at once), aggregated.
    pub fn score_detailed(&self, inputs: &[ScoreInput<'_>]) -> Result<Vec<EnsembleScore>> {
        let per_member = self
            .members
            .iter()
            .map(|m| m.score_batch(inputs))
            .collect::<Result<Vec<_>>>()?;
        Ok((0..inputs.len())
            .map(|i| {
                EnsembleScore::of(
                    per_member.iter().map(|s| s[i].score).collect(),
                    self.aggregate,
                )
            })
            .collect())
    }
}

impl Verifier for Ensemble {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        Ok(self.score_batch(std::slice::from_ref(input))?.remove(0))
    }

    /// The aggregate; correct only where every member judges and all agree.
    fn score_batch(&self, inputs: &[ScoreInput<'_>]) -> Result<Vec<Scored>> {
        let per_member = self
            .members
            .iter()
            .map(|m| m.score_batch(inputs))
            .collect::<Result<Vec<_>>>()?;
        Ok((0..inputs.len())
            .map(|i| {
                let scores: Vec<f64> = per_member.iter().map(|s| s[i].score).collect();
                let verdicts: Option<Vec<bool>> = per_member.iter().map(|s| s[i].correct).collect();
                let correct = verdicts.and_then(|v| v.iter().all(|&c| c == v[0]).then_some(v[0]));
                Scored {
                    score: EnsembleScore::of(scores, self.aggregate).score,
                    correct,
                }
            })
            .collect())
    }
}

/// An ensemble of step scorers (process reward models): each step's scores aggregated across
/// members, clamped to `[0, 1]` as [`StepScorer`] promises.
pub struct StepEnsemble {
    name: String,
    members: Vec<Box<dyn StepScorer>>,
    aggregate: Aggregate,
}

impl StepEnsemble {
    pub fn new(members: Vec<Box<dyn StepScorer>>, aggregate: Aggregate) -> Result<Self> {
        let name = format!("step-ensemble({aggregate})");
        check_members(&name, members.len())?;
        Ok(StepEnsemble {
            name,
            members,
            aggregate,
        })
    }

    /// Per item, per step: the members' scores aggregated.
    pub fn score_steps_detailed(
        &self,
        items: &[(&str, Vec<&str>)],
    ) -> Result<Vec<Vec<EnsembleScore>>> {
        let per_member = self
            .members
            .iter()
            .map(|m| m.score_steps_batch(items))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(items.len());
        for (i, (_, steps)) in items.iter().enumerate() {
            let mut row = Vec::with_capacity(steps.len());
            for j in 0..steps.len() {
                let mut member_scores = Vec::with_capacity(per_member.len());
                for (m, scores) in self.members.iter().zip(&per_member) {
                    let s = scores[i].get(j).copied().ok_or_else(|| {
                        RewardError::spec(
                            &self.name,
                            format!(
                                "member `{}` returned {} scores for {} steps",
                                m.name(),
                                scores[i].len(),
                                steps.len()
                            ),
                        )
                    })?;
                    member_scores.push(s);
                }
                row.push(EnsembleScore::of(member_scores, self.aggregate));
            }
            out.push(row);
        }
        Ok(out)
    }
}

impl StepScorer for StepEnsemble {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_steps(&self, prompt: &str, steps: &[&str]) -> Result<Vec<f64>> {
        Ok(self
            .score_steps_batch(&[(prompt, steps.to_vec())])?
            .remove(0))
    }

    fn score_steps_batch(&self, items: &[(&str, Vec<&str>)]) -> Result<Vec<Vec<f64>>> {
        Ok(self
            .score_steps_detailed(items)?
            .into_iter()
            .map(|row| row.into_iter().map(|s| s.score.clamp(0.0, 1.0)).collect())
            .collect())
    }
}
