//! A rule process verifier for worked arithmetic: each step `a op b = c` holds or not (sides may be
//! whole expressions with parentheses, chained `a = b = c`, or negative numbers), and when the
//! prompt states numbers, the first side may use only those and earlier steps' results (a number
//! from nowhere is a wrong step); an `Answer: x` line holds when it repeats the previous step's
//! result; text that is no equation is unsure (0.5). As [`StepScorer`] promises, a step's score
//! says whether the solution is still on a correct path: the lowest of its own and every earlier
//! step's, so a step after a wrong one scores 0 and the `last`, `min`, `prod` and `mean`
//! aggregations all rank a solution by its first error. It never sees the reference answer and
//! does not check that the steps follow the expression's order, so it judges the process, not the
//! outcome. Knows the expression parser of the tasks layer.

use tempering_tasks::expr::parse;

use crate::scorer::StepScorer;

/// The arithmetic step checker (a [`StepScorer`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ArithmeticSteps;

/// The value of one side of an equation: an integer (a negative one too) or an expression over
/// `+ - * /` with parentheses.
fn value_of(side: &str) -> Option<i64> {
    let t = side.trim();
    let t = t.strip_suffix('.').unwrap_or(t).trim_end();
    t.parse::<i64>()
        .ok()
        .or_else(|| parse(t).ok().and_then(|e| e.eval().ok()))
}

/// The result a step states: the value after its last `=`.
fn result_of(step: &str) -> Option<i64> {
    step.rsplit_once('=').and_then(|(_, r)| value_of(r))
}

/// The unsigned integers written in `text`.
fn numbers_in(text: &str) -> Vec<i64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|d| d.parse().ok())
        .collect()
}

/// One step's own score, before earlier steps count: an equation, possibly chained
/// (`7*8-5=56-5=51`), scores 1 when every side has the same value and its first side uses only
/// `known` numbers (any, when `known` is `None`), else 0 (also when a side cannot be read); an
/// answer line scores 1 when it repeats the previous step's result, 0 when it does not, 0.5 when
/// there is none to compare; other text scores 0.5.
fn score_step(steps: &[&str], i: usize, known: Option<&[i64]>) -> f64 {
    let s = steps[i].trim();
    if let Some(ans) = s.strip_prefix("Answer:") {
        let prev = i.checked_sub(1).and_then(|j| result_of(steps[j]));
        return match (value_of(ans), prev) {
            (Some(a), Some(p)) => (a == p) as u8 as f64,
            _ => 0.5,
        };
    }
    let Some((first, _)) = s.split_once('=') else {
        return 0.5;
    };
    if let Some(known) = known {
        if numbers_in(first).iter().any(|n| !known.contains(n)) {
            return 0.0;
        }
    }
    let values: Option<Vec<i64>> = s.split('=').map(value_of).collect();
    match values {
        Some(v) => v.windows(2).all(|w| w[0] == w[1]) as u8 as f64,
        None => 0.0,
    }
}

impl StepScorer for ArithmeticSteps {
    fn name(&self) -> &str {
        "arithmetic_steps"
    }

    fn score_steps(&self, prompt: &str, steps: &[&str]) -> crate::Result<Vec<f64>> {
        // The prompt's numbers, then each step's result as it comes.
        let mut known = numbers_in(prompt);
        let check = !known.is_empty();
        let mut path = 1.0f64;
        Ok((0..steps.len())
            .map(|i| {
                path = path.min(score_step(steps, i, check.then_some(known.as_slice())));
                if let Some(r) = result_of(steps[i]) {
                    known.push(r);
                }
                path
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
        // The wrong second step sinks every step after it.
        assert_eq!(s, vec![1.0, 0.0, 0.0, 0.0]);
        let s = ArithmeticSteps
            .score_steps("", &["2*3=6", "Answer: 6"])
            .unwrap();
        assert_eq!(s, vec![1.0, 1.0]);
        let s = ArithmeticSteps
            .score_steps("", &["2*3=6", "so", "6+1=7", "Answer: 7"])
            .unwrap();
        assert_eq!(s, vec![1.0, 0.5, 0.5, 0.5]);
    }

    /// Each line on its own (the first step of a solution is scored by itself alone).
    fn own(steps: &[&str]) -> Vec<f64> {
        (0..steps.len())
            .map(|i| score_step(steps, i, None))
            .collect()
    }

    #[test]
    fn reads_level_three_forms() {
        let s = own(&[
            " (7+5)*3 = 36 ",
            "36-4=32",
            "12*3-4=36-4=32",
            "12*3-4=36-4=33",
            "3-5=-2",
            "3-5=2",
            "4*(2+=6",
            "36-4=32",
            "Answer: 32.",
        ]);
        assert_eq!(s, vec![1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
        let s = own(&["9*(2+1)=27", "Answer: 27", "Answer: 28"]);
        assert_eq!(s, vec![1.0, 1.0, 0.5]);
    }

    /// Worked solutions of level-3 problems as the tiny model writes them: the right one keeps 1
    /// to the end, a wrong result or a wrong answer line drops to 0 from that step on.
    #[test]
    fn level_three_solutions() {
        let score = |text: &str| {
            let steps: Vec<&str> = text.split('\n').collect();
            ArithmeticSteps
                .score_steps("Compute: 7*8-5\n", &steps)
                .unwrap()
        };
        assert_eq!(score("7*8=56\n56-5=51\nAnswer: 51"), vec![1.0, 1.0, 1.0]);
        assert_eq!(score("7*8=56\n56-5=53\nAnswer: 53"), vec![1.0, 0.0, 0.0]);
        assert_eq!(score("7*8=54\n54-5=49\nAnswer: 49"), vec![0.0, 0.0, 0.0]);
        assert_eq!(score("7*8=56\n56-5=51\nAnswer: 50"), vec![1.0, 1.0, 0.0]);
        // Right arithmetic on a number the problem never gave.
        assert_eq!(score("7*8=56\n56-4=52\nAnswer: 52"), vec![1.0, 0.0, 0.0]);
        assert_eq!(score("7*9=63\n63-5=58\nAnswer: 58"), vec![0.0, 0.0, 0.0]);
        // Earlier results may be used, parentheses and chains too.
        let steps = ["(3+9)=12", "12*4-7=48-7=41", "Answer: 41"];
        let s = ArithmeticSteps
            .score_steps("Compute: (3+9)*4-7\n", &steps)
            .unwrap();
        assert_eq!(s, vec![1.0, 1.0, 1.0]);
    }
}
