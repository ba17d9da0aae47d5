//! Answers and their aggregation: reading and normalising a final answer, majority and weighted
//! votes, and folding a PRM's step scores into one score. Plain functions; knows nothing of
//! backends or budgets.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::SearchError;

/// The final answer of a completion, normalised for voting (inner spaces dropped, so `8 - 1` and
/// `8-1` are one answer).
pub fn answer_of(text: &str) -> Option<String> {
    tempering_tasks::extract_answer(text)
        .map(|a| a.chars().filter(|c| !c.is_whitespace()).collect())
}

/// How a PRM's per-step scores become one score for a solution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// The weakest step (the usual choice for PRM best-of-N).
    Min,
    /// The last step's score.
    Last,
    /// The product of step scores.
    Prod,
    Mean,
}

impl Aggregation {
    pub const NAMES: &'static str = "min, last, prod, mean";

    pub fn apply(self, scores: &[f64]) -> f64 {
        if scores.is_empty() {
            return 0.0;
        }
        match self {
            Aggregation::Min => scores.iter().copied().fold(f64::INFINITY, f64::min),
            Aggregation::Last => scores[scores.len() - 1],
            Aggregation::Prod => scores.iter().product(),
            Aggregation::Mean => scores.iter().sum::<f64>() / scores.len() as f64,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Min => "min",
            Aggregation::Last => "last",
            Aggregation::Prod => "prod",
            Aggregation::Mean => "mean",
        }
    }
}

impl std::str::FromStr for Aggregation {
    type Err = SearchError;
    fn from_str(s: &str) -> Result<Self, SearchError> {
        match s {
            "min" => Ok(Aggregation::Min),
            "last" => Ok(Aggregation::Last),
            "prod" => Ok(Aggregation::Prod),
            "mean" => Ok(Aggregation::Mean),
            other => Err(SearchError::BadSpec {
                spec: other.to_string(),
                msg: format!(
                    "unknown aggregation; expected one of {}",
                    Aggregation::NAMES
                ),
            }),
        }
    }
}

/// The winner of a vote: each item is an answer (or `None`, which never wins) with a weight; the
/// answer with the largest total weight wins, ties going to the answer seen first. Returns the
/// answer, its total weight and the index of its first item.
pub fn vote(items: &[(Option<&str>, f64)]) -> Option<(String, f64, usize)> {
    let mut totals: HashMap<&str, (f64, usize)> = HashMap::new();
    for (i, (a, w)) in items.iter().enumerate() {
        if let Some(a) = a {
            totals.entry(a).or_insert((0.0, i)).0 += w;
        }
    }
    totals
        .into_iter()
        .max_by(|a, b| {
            a.1 .0
                .partial_cmp(&b.1 .0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.1 .1.cmp(&a.1 .1))
        })
        .map(|(a, (w, i))| (a.to_string(), w, i))
}

/// Counts of each answer, most frequent first (ties: first seen first).
pub fn tally(answers: &[Option<String>]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize, usize)> = vec![];
    for (i, a) in answers.iter().enumerate() {
        let Some(a) = a else { continue };
        match counts.iter_mut().find(|c| &c.0 == a) {
            Some(c) => c.1 += 1,
            None => counts.push((a.clone(), 1, i)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    counts.into_iter().map(|(a, n, _)| (a, n)).collect()
}

/// Index of the largest score, the first on ties; `None` for an empty slice.
pub fn argmax(scores: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|b| s > scores[b]) {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregations_match_hand_values() {
        let s = [0.9, 0.5, 0.8];
        assert_eq!(Aggregation::Min.apply(&s), 0.5);
        assert_eq!(Aggregation::Last.apply(&s), 0.8);
        assert!((Aggregation::Prod.apply(&s) - 0.36).abs() < 1e-12);
        assert!((Aggregation::Mean.apply(&s) - 2.2 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn votes_break_ties_by_first_seen() {
        let v = vote(&[
            (Some("3"), 1.0),
            (Some("4"), 1.0),
            (None, 5.0),
            (Some("4"), 0.5),
        ]);
        assert_eq!(v, Some(("4".to_string(), 1.5, 1)));
        let v = vote(&[(Some("3"), 1.0), (Some("4"), 1.0)]);
        assert_eq!(v.map(|v| v.0), Some("3".to_string()));
        assert_eq!(answer_of("x\nAnswer: 8 - 1"), Some("8-1".to_string()));
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), Some(1));
    }
}
