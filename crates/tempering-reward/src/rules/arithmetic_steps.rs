//! A rule process verifier for worked arithmetic: each step `a op b = c` scores 1 when the equation
//! holds and 0 when it does not; an `Answer: x` line scores 1 when it repeats the previous step's
//! result; anything unreadable scores 0.5. It never sees the reference answer, so it judges the
//! process, not the outcome. Knows the expression parser of the tasks layer.

use tempering_tasks::expr::parse;

use crate::scorer::StepScorer;

/// The arithmetic step checker (a [`StepScorer`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ArithmeticSteps;

fn result_of(step: &str) -> Option<i64> {
    step.rsplit_once('=')
        .and_then(|(_, r)| r.trim().parse().ok())
}

impl StepScorer for ArithmeticSteps {
    fn name(&self) -> &str {
        "arithmetic_steps"
    }

    fn score_steps(&self, _prompt: &str, steps: &[&str]) -> crate::Result<Vec<f64>> {
        Ok(steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if let Some(ans) = s.strip_prefix("Answer:") {
                    let prev = i.checked_sub(1).and_then(|j| result_of(steps[j]));
                    return match (ans.trim().parse::<i64>().ok(), prev) {
                        (Some(a), Some(p)) => (a == p) as u8 as f64,
                        _ => 0.5,
                    };
                }
                match s.split_once('=') {
                    Some((lhs, rhs)) => match (
                        parse(lhs.trim()).ok().and_then(|e| e.eval().ok()),
                        rhs.trim().parse::<i64>().ok(),
                    ) {
                        (Some(l), Some(r)) => (l == r) as u8 as f64,
                        _ => 0.0,
                    },
                    None => 0.5,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_hand_worked_steps() {
        let s = ArithmeticSteps
            .score_steps("", &["7+5=12", "12*3=35", "hmm", "Answer: 35"])
            .unwrap();
        assert_eq!(s, vec![1.0, 0.0, 0.5, 0.5]);
        let s = ArithmeticSteps
            .score_steps("", &["2*3=6", "Answer: 6"])
            .unwrap();
        assert_eq!(s, vec![1.0, 1.0]);
    }
}
