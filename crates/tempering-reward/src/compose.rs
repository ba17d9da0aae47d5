//! Weighted sums of scorers: `0.8*math_answer + 0.2*format`. The sum is correct where every part
//! that judges correctness says so (shaping terms judge none). The parts' own scores stay available
//! for per-reward metrics. Knows nothing of any one scorer.

use crate::error::{Result, RewardError};
use crate::scorer::{ScoreInput, Scored, Verifier};

pub struct WeightedSum {
    name: String,
    parts: Vec<(f64, Box<dyn Verifier>)>,
}

impl WeightedSum {
    /// `name` is what metrics call the sum (the spec's canonical text when built from a spec).
    pub fn new(name: impl Into<String>, parts: Vec<(f64, Box<dyn Verifier>)>) -> Result<Self> {
        let name = name.into();
        if parts.is_empty() {
            return Err(RewardError::spec(
                name,
                "a weighted sum needs at least one reward",
            ));
        }
        if let Some((w, v)) = parts.iter().find(|(w, _)| !w.is_finite()) {
            return Err(RewardError::spec(
                name,
                format!("weight {w} of `{}` is not finite", v.name()),
            ));
        }
        Ok(WeightedSum { name, parts })
    }

    pub fn parts(&self) -> impl Iterator<Item = (f64, &dyn Verifier)> {
        self.parts.iter().map(|(w, v)| (*w, v.as_ref()))
    }

    /// Each part's name, weight and unweighted scores over `inputs`, then the sums: what a trainer
    /// logs as `reward/<name>` next to the total.
    pub fn score_parts(&self, inputs: &[ScoreInput<'_>]) -> Result<(Vec<PartScores>, Vec<Scored>)> {
        let mut parts = Vec::with_capacity(self.parts.len());
        for (w, v) in &self.parts {
            parts.push(PartScores {
                name: v.name().to_string(),
                weight: *w,
                scores: v.score_batch(inputs)?,
            });
        }
        let totals = (0..inputs.len())
            .map(|i| combine(parts.iter().map(|p| (p.weight, p.scores[i]))))
            .collect();
        Ok((parts, totals))
    }
}

/// One part's unweighted scores over a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PartScores {
    pub name: String,
    pub weight: f64,
    pub scores: Vec<Scored>,
}

fn combine(parts: impl Iterator<Item = (f64, Scored)>) -> Scored {
    let mut score = 0.0;
    let mut correct = None;
    for (w, s) in parts {
        score += w * s.score;
        if let Some(c) = s.correct {
            correct = Some(correct.unwrap_or(true) && c);
        }
    }
    Scored { score, correct }
}

impl Verifier for WeightedSum {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        let mut scored = Vec::with_capacity(self.parts.len());
        for (w, v) in &self.parts {
            scored.push((*w, v.score(input)?));
        }
        Ok(combine(scored.into_iter()))
    }

    fn score_batch(&self, inputs: &[ScoreInput<'_>]) -> Result<Vec<Scored>> {
        Ok(self.score_parts(inputs)?.1)
    }
}
