//! The demo's measures: accuracy with 95% Wilson intervals per strategy and model, the paired
//! difference between two models on the same problems, sampled pass@1 and pass@k, and the PRM's
//! step and within-problem AUCs. Knows the eval results' and `temper score`'s shape; writes no
//! page and runs nothing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::super::demo::ResultLine;

pub(super) fn wilson(k: usize, n: usize) -> (f64, f64) {
    tempering_eval::table::wilson(k as f64, n)
}

/// `53.3% [45.4, 61.1]`.
pub(super) fn pct_ci(k: usize, n: usize) -> String {
    let (lo, hi) = wilson(k, n);
    format!(
        "{:.1}% [{:.1}, {:.1}]",
        100.0 * k as f64 / n.max(1) as f64,
        100.0 * lo,
        100.0 * hi
    )
}

/// One strategy's accuracy on the held-out problems.
#[derive(Clone, Debug)]
pub struct StrategyResult {
    /// The strategy with its scorer, e.g. `bon@16:min (PRM)`.
    pub strategy: String,
    /// The family (sample count dropped) with its scorer: one plot line each.
    pub family: String,
    pub correct: usize,
    pub n: usize,
    pub mean_tokens: f64,
    /// Correct per problem, by problem index.
    pub per_problem: BTreeMap<usize, bool>,
    /// Over every candidate a sampling strategy drew: the fraction correct (sampled pass@1), and
    /// the problems where any candidate was (pass@k).
    pub candidates: Option<(f64, usize)>,
}

impl StrategyResult {
    pub(super) fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n.max(1) as f64
    }
}

/// One model's evaluations.
#[derive(Clone, Debug)]
pub struct EvalSummary {
    pub model: String,
    pub rows: Vec<StrategyResult>,
}

impl EvalSummary {
    /// `runs`: (scorer label, results) per evaluation of this model.
    pub fn new(model: &str, runs: &[(String, Vec<ResultLine>)]) -> Self {
        let mut rows: Vec<StrategyResult> = Vec::new();
        for (label, results) in runs {
            let mut names: Vec<&str> = Vec::new();
            for r in results {
                if !names.contains(&r.strategy.as_str()) {
                    names.push(&r.strategy);
                }
            }
            for name in names {
                let rs: Vec<&ResultLine> = results.iter().filter(|r| r.strategy == name).collect();
                let n = rs.len();
                let cands: Vec<(usize, usize)> = rs
                    .iter()
                    .filter_map(|r| r.candidates.map(|c| (c.correct, c.drawn)))
                    .collect();
                let candidates = (!cands.is_empty() && cands.len() == n).then(|| {
                    let drawn: usize = cands.iter().map(|c| c.1).sum();
                    let right: usize = cands.iter().map(|c| c.0).sum();
                    (
                        right as f64 / drawn.max(1) as f64,
                        cands.iter().filter(|c| c.0 > 0).count(),
                    )
                });
                rows.push(StrategyResult {
                    strategy: format!("{name}{label}"),
                    family: format!("{}{label}", tempering_eval::table::family(name)),
                    correct: rs.iter().filter(|r| r.correct).count(),
                    n,
                    mean_tokens: rs
                        .iter()
                        .map(|r| r.cost.generated_tokens as f64)
                        .sum::<f64>()
                        / n.max(1) as f64,
                    per_problem: rs.iter().map(|r| (r.index, r.correct)).collect(),
                    candidates,
                });
            }
        }
        EvalSummary {
            model: model.to_string(),
            rows,
        }
    }

    pub fn problems(&self) -> usize {
        self.rows.first().map_or(0, |r| r.n)
    }

    pub(super) fn get(&self, strategy: &str) -> Option<&StrategyResult> {
        self.rows.iter().find(|r| r.strategy == strategy)
    }
}

/// The paired difference `b - a` in accuracy over the problems both solved or missed, with its 95%
/// interval (a normal interval on the paired differences): (difference, low, high), as fractions.
pub fn paired_difference(a: &StrategyResult, b: &StrategyResult) -> Option<(f64, f64, f64)> {
    let pairs: Vec<(bool, bool)> = a
        .per_problem
        .iter()
        .filter_map(|(i, &x)| Some((x, *b.per_problem.get(i)?)))
        .collect();
    let n = pairs.len();
    if n < 2 {
        return None;
    }
    let d: Vec<f64> = pairs
        .iter()
        .map(|&(x, y)| y as u8 as f64 - x as u8 as f64)
        .collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = 1.959_963_984_540_054 * (var / n as f64).sqrt();
    Some((mean, mean - half, mean + half))
}

/// Greedy accuracy on the retain set.
#[derive(Clone, Debug)]
pub struct RetainRow {
    pub model: String,
    pub correct: usize,
    pub n: usize,
}

/// The PRM's verifier model on its own: the SFT model trained `extra_steps` further, greedy on
/// the held-out test problems.
#[derive(Clone, Copy, Debug)]
pub struct VerifierRow {
    pub extra_steps: usize,
    pub correct: usize,
    pub n: usize,
}

/// How well a PRM tells right from wrong on held-out labelled solutions.
#[derive(Clone, Copy, Debug)]
pub struct PrmAuc {
    /// Over every labelled step.
    pub step: f64,
    /// Over pairs of completions of the same problem (score aggregated over steps), with the
    /// number of problems that had both kinds: what best-of-N sees.
    pub within_problem: Option<(f64, usize)>,
}

/// A PRM's AUCs from `temper score`'s output rows, each with `labels` (one boolean per step),
/// `step_scores`, and `prompt`, `score` and `correct` for the completion.
pub fn prm_auc(scored: &Path) -> Result<PrmAuc> {
    let text =
        std::fs::read_to_string(scored).with_context(|| format!("reading {}", scored.display()))?;
    let mut pairs = Vec::new();
    let mut completions = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", scored.display(), i + 1))?;
        if let (Some(p), Some(s), Some(c)) = (
            row["prompt"].as_str(),
            row["score"].as_f64(),
            row["correct"].as_bool(),
        ) {
            completions.push((p.to_string(), s, c));
        }
        let (Some(labels), Some(scores)) =
            (row["labels"].as_array(), row["step_scores"].as_array())
        else {
            continue;
        };
        for (l, s) in labels.iter().zip(scores) {
            if let (Some(l), Some(s)) = (l.as_bool(), s.as_f64()) {
                pairs.push((s, l));
            }
        }
    }
    let step = super::super::score::auc(&pairs).with_context(|| {
        format!(
            "{}: the held-out steps are all labelled alike: no AUC",
            scored.display()
        )
    })?;
    let by_problem: Vec<(&str, f64, bool)> = completions
        .iter()
        .map(|c| (c.0.as_str(), c.1, c.2))
        .collect();
    Ok(PrmAuc {
        step,
        within_problem: super::super::score::within_prompt_auc(&by_problem),
    })
}

impl StrategyResult {
    /// The `N` of `sc@N` and the like (1 otherwise).
    pub(super) fn n_samples(&self) -> usize {
        self.strategy
            .split_once('@')
            .and_then(|(_, rest)| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(per: &[bool]) -> StrategyResult {
        StrategyResult {
            strategy: "greedy".into(),
            family: "greedy".into(),
            correct: per.iter().filter(|&&c| c).count(),
            n: per.len(),
            mean_tokens: 1.0,
            per_problem: per.iter().copied().enumerate().collect(),
            candidates: None,
        }
    }

    #[test]
    fn paired_difference_counts_only_changed_problems() {
        // Four problems gained, one lost, five unchanged: +30 points.
        let a = result(&[
            false, false, false, false, true, true, true, false, false, true,
        ]);
        let b = result(&[
            true, true, true, true, false, true, true, false, false, true,
        ]);
        let (d, lo, hi) = paired_difference(&a, &b).unwrap();
        assert!((d - 0.3).abs() < 1e-12);
        assert!(lo < d && d < hi);
        // Identical results: no difference and no spread.
        let (d, lo, hi) = paired_difference(&a, &a).unwrap();
        assert_eq!((d, lo, hi), (0.0, 0.0, 0.0));
    }

    #[test]
    fn sample_counts_read_from_strategy_names() {
        let mut r = result(&[true]);
        for (name, n) in [
            ("sc@16", 16),
            ("bon@4:min (PRM)", 4),
            ("greedy", 1),
            ("adaptive@16", 16),
        ] {
            r.strategy = name.into();
            assert_eq!(r.n_samples(), n, "{name}");
        }
    }
}
