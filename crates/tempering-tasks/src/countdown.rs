//! The countdown family: reach a target from given numbers with `+ - * /`, each number used at most once,
//! every intermediate result an integer. Many answers are right; the verifier evaluates the submitted
//! expression rather than comparing it with the reference. Knows the expression tree and the shared task
//! conventions, nothing of other families or models.
//!
//! Levels (numbers given, numbers the reference uses, largest number, largest target):
//!
//! | level | given | used | numbers | target   |
//! |-------|-------|------|---------|----------|
//! | 1     | 3     | 2    | 1..=10  | ..=100   |
//! | 2     | 3     | 3    | 1..=6   | ..=100   |
//! | 3     | 3     | 3    | 1..=10  | ..=100   |
//! | 4     | 4     | 3    | 1..=10  | ..=100   |
//!
//! Level 3 is calibrated on the tiny recipe of `tempering-train` (docs/sft.md); harder games (more
//! numbers, larger targets) are a [`CountdownParams`] away from code.
//!
//! Prompts list the numbers in ascending order, so one multiset of numbers and a target is one problem
//! text (and one split).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use crate::error::{Result, TaskError};
use crate::expr::{self, Expr, Op};
use crate::rng::SplitMix64;
use crate::task::{
    alphabet_of, check_level, extract_answer, split_of, Problem, Spec, Task, Verdict,
};

pub const NAME: &str = "countdown";
const PROMPT_PREFIX: &str = "Make ";
const PROMPT_MIDDLE: &str = " from: ";
const LEVELS: [(u32, u32, u64, u64); 4] = [
    (3, 2, 10, 100),
    (3, 3, 6, 100),
    (3, 3, 10, 100),
    (4, 3, 10, 100),
];
const MAX_GIVEN: u32 = 12;
const MAX_LIMIT: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountdownParams {
    /// How many numbers the prompt offers.
    pub given: u32,
    /// How many of them the generated reference solution combines.
    pub used: u32,
    /// Numbers are drawn from `1..=max_number`.
    pub max_number: u64,
    /// Targets lie in `1..=max_target`.
    pub max_target: u64,
}

impl CountdownParams {
    pub fn for_level(level: u32) -> Result<Self> {
        check_level(&Countdown, level)?;
        let (given, used, max_number, max_target) = LEVELS[(level - 1) as usize];
        Ok(CountdownParams {
            given,
            used,
            max_number,
            max_target,
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.given < 2 {
            return Err(TaskError::param(
                NAME,
                "given",
                format!("{} numbers given: countdown needs at least two", self.given),
            ));
        }
        if self.given > MAX_GIVEN {
            return Err(TaskError::param(
                NAME,
                "given",
                format!("at most {MAX_GIVEN}"),
            ));
        }
        if self.used < 2 || self.used > self.given {
            return Err(TaskError::param(
                NAME,
                "used",
                format!(
                    "expected 2..={} (the numbers given), got {}",
                    self.given, self.used
                ),
            ));
        }
        if self.max_number == 0 || self.max_number > MAX_LIMIT {
            return Err(TaskError::param(
                NAME,
                "max_number",
                format!("expected 1..={MAX_LIMIT}"),
            ));
        }
        if self.max_target < 2 || self.max_target > MAX_LIMIT {
            return Err(TaskError::param(
                NAME,
                "max_target",
                format!("expected 2..={MAX_LIMIT}"),
            ));
        }
        Ok(())
    }
}

/// The countdown numbers game.
#[derive(Debug, Clone, Copy, Default)]
pub struct Countdown;

impl Countdown {
    /// One problem with explicit parameters; `level` is only recorded.
    pub fn sample_with(
        &self,
        params: &CountdownParams,
        level: u32,
        rng: &mut SplitMix64,
    ) -> Result<Problem> {
        params.validate()?;
        for _ in 0..10_000 {
            let numbers: Vec<i64> = (0..params.given)
                .map(|_| rng.range(1, params.max_number) as i64)
                .collect();
            let mut order: Vec<usize> = (0..numbers.len()).collect();
            rng.shuffle(&mut order);
            let pool: Vec<(Expr, i64)> = order[..params.used as usize]
                .iter()
                .map(|&i| (Expr::Num(numbers[i]), numbers[i]))
                .collect();
            let Some((e, target)) = combine(pool, params.max_target.saturating_mul(10) as i64, rng)
            else {
                continue;
            };
            // A target already on the list needs no arithmetic at all.
            if target < 1 || target as u64 > params.max_target || numbers.contains(&target) {
                continue;
            }
            return build(numbers, target, &e, level);
        }
        Err(TaskError::param(
            NAME,
            "max_target",
            format!("no reachable target within 1..={}", params.max_target),
        ))
    }
}

/// Merges random pairs of the pool with a random admissible operator until one expression is left.
/// Admissible: results positive, integer and at most `limit`, and no multiplying or dividing by 1
/// (a step that does nothing).
fn combine(mut pool: Vec<(Expr, i64)>, limit: i64, rng: &mut SplitMix64) -> Option<(Expr, i64)> {
    while pool.len() > 1 {
        let i = rng.below(pool.len() as u64) as usize;
        let a = pool.swap_remove(i);
        let j = rng.below(pool.len() as u64) as usize;
        let b = pool.swap_remove(j);
        // Larger first, so subtraction and division can stay positive.
        let (a, b) = if a.1 >= b.1 { (a, b) } else { (b, a) };
        let mut allowed = Vec::with_capacity(4);
        for op in Op::ALL {
            let ok = match op {
                Op::Add => true,
                Op::Sub => a.1 > b.1,
                Op::Mul | Op::Div => b.1 > 1,
            };
            if !ok {
                continue;
            }
            if let Ok(v) = op.apply(a.1, b.1) {
                if v >= 1 && v <= limit {
                    allowed.push((op, v));
                }
            }
        }
        if allowed.is_empty() {
            return None;
        }
        let (op, v) = *rng.choose(&allowed);
        pool.push((Expr::bin(op, a.0, b.0), v));
    }
    pool.pop()
}

fn prompt_text(numbers: &[i64], target: i64) -> String {
    let list: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
    format!("{PROMPT_PREFIX}{target}{PROMPT_MIDDLE}{}\n", list.join(" "))
}

fn build(mut numbers: Vec<i64>, target: i64, e: &Expr, level: u32) -> Result<Problem> {
    numbers.sort_unstable();
    let bad = |msg: String| TaskError::BadPrompt {
        task: NAME.to_string(),
        prompt: prompt_text(&numbers, target),
        expected: msg,
    };
    let (v, steps) = e
        .eval_steps()
        .map_err(|err| bad(format!("an answer with integer steps ({err})")))?;
    if v != target {
        return Err(bad(format!("an answer equal to {target}, `{e}` gives {v}")));
    }
    if !sub_multiset(&e.leaves(), &numbers) {
        return Err(bad(format!(
            "an answer using only the given numbers, `{e}` does not"
        )));
    }
    let steps: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    Ok(Problem::new(
        NAME,
        level,
        prompt_text(&numbers, target),
        &steps,
        e.to_string(),
        Spec::Countdown { numbers, target },
    ))
}

/// True when every element of `used` can be matched to a distinct element of `given`.
fn sub_multiset(used: &[i64], given: &[i64]) -> bool {
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for &g in given {
        *counts.entry(g).or_default() += 1;
    }
    for u in used {
        match counts.get_mut(u) {
            Some(c) if *c > 0 => *c -= 1,
            _ => return false,
        }
    }
    true
}

/// Reads `Make T from: a b c` back into the target and the numbers.
fn parse_prompt(prompt: &str) -> Option<(i64, Vec<i64>)> {
    let body = prompt.strip_prefix(PROMPT_PREFIX)?.trim_end_matches('\n');
    let (target, list) = body.split_once(PROMPT_MIDDLE)?;
    let target = target.parse().ok()?;
    let numbers = list
        .split(' ')
        .map(|s| s.parse().ok())
        .collect::<Option<Vec<i64>>>()?;
    Some((target, numbers))
}

impl Task for Countdown {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Reach the target from the given numbers with + - * /, each number at most once, integer \
         intermediate results; any correct expression is accepted. Level 1..=4: 3, 3, 3, 4 numbers given, the \
         reference uses 2, 3, 3, 3 of them; numbers up to 10, 6, 10, 10; targets up to 100."
    }

    fn levels(&self) -> RangeInclusive<u32> {
        1..=LEVELS.len() as u32
    }

    fn default_level(&self) -> u32 {
        3
    }

    fn sample(&self, level: u32, rng: &mut SplitMix64) -> Result<Problem> {
        let params = CountdownParams::for_level(level)?;
        self.sample_with(&params, level, rng)
    }

    fn problem_from_record(&self, prompt: &str, answer: &str, level: u32) -> Result<Problem> {
        let bad = |expected: String| TaskError::BadPrompt {
            task: NAME.to_string(),
            prompt: prompt.to_string(),
            expected,
        };
        let (target, numbers) =
            parse_prompt(prompt).ok_or_else(|| bad("`Make TARGET from: N N ...`".to_string()))?;
        let e = expr::parse(answer)
            .map_err(|err| bad(format!("a reference answer expression: {err}")))?;
        let mut p = build(numbers, target, &e, level)?;
        p.split = split_of(NAME, prompt);
        p.prompt = prompt.to_string();
        Ok(p)
    }

    fn verify(&self, problem: &Problem, completion_text: &str) -> Verdict {
        let (numbers, target) = match &problem.spec {
            Spec::Countdown { numbers, target } => (numbers.clone(), *target),
            _ => match parse_prompt(&problem.prompt) {
                Some((t, n)) => (n, t),
                None => return Verdict::Unparseable,
            },
        };
        let Some(answer) = extract_answer(completion_text) else {
            return Verdict::Unparseable;
        };
        // `expr=target` is as good as `expr`: judge the expression.
        let lhs = answer.split('=').next().unwrap_or(answer);
        let Ok(e) = expr::parse(lhs) else {
            return Verdict::Unparseable;
        };
        if !sub_multiset(&e.leaves(), &numbers) {
            return Verdict::Incorrect;
        }
        match e.eval() {
            Ok(v) if v == target => Verdict::Correct,
            _ => Verdict::Incorrect,
        }
    }

    fn alphabet(&self) -> BTreeSet<char> {
        alphabet_of(&[PROMPT_PREFIX, PROMPT_MIDDLE, "+-*/()="])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_hand_worked_answers() {
        let p = Countdown
            .problem_from_record("Make 24 from: 2 3 4 8\n", "(2+4)*(8/2)", 4)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        // The reference above uses 2 twice: refused.
        assert!(p.contains("only the given numbers"), "{p}");
        let p = Countdown
            .problem_from_record("Make 24 from: 2 3 4 8\n", "8*3", 4)
            .unwrap();
        assert_eq!(p.solution, "8*3=24\nAnswer: 8*3");
        for (answer, want) in [
            ("3*8", Verdict::Correct),
            ("(4-2)*3*4", Verdict::Incorrect),
            ("8*(4-2+(3-2))", Verdict::Incorrect),
            ("4*3*2", Verdict::Correct),
            ("(8/3)*9", Verdict::Incorrect),
            ("8*3=24", Verdict::Correct),
            ("24", Verdict::Incorrect),
            ("eight times three", Verdict::Unparseable),
        ] {
            assert_eq!(
                Countdown.verify(&p, &format!("Answer: {answer}")),
                want,
                "{answer}"
            );
        }
    }

    #[test]
    fn generated_problems_respect_their_level() {
        let mut rng = SplitMix64::new(4);
        for level in Countdown.levels() {
            let params = CountdownParams::for_level(level).unwrap();
            for _ in 0..50 {
                let p = Countdown.sample(level, &mut rng).unwrap();
                let Spec::Countdown { numbers, target } = &p.spec else {
                    panic!("not countdown")
                };
                assert_eq!(numbers.len(), params.given as usize);
                assert!(numbers.windows(2).all(|w| w[0] <= w[1]));
                assert!(*target >= 1 && *target as u64 <= params.max_target);
                assert!(!numbers.contains(target));
                let used = expr::parse(&p.answer).unwrap().leaves().len();
                assert_eq!(used, params.used as usize);
            }
        }
    }
}
