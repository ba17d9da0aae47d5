//! The base-conversion family: write a decimal number in another base (2 to 9) by repeated division,
//! one division per step, then read the remainders from last to first. A different shape from the
//! expression families: the answer is a digit string and the steps walk down a quotient chain. Knows the
//! shared task conventions, nothing of other families or models.
//!
//! Each step writes out the current value, the quotient times the base and the subtraction that
//! leaves the remainder (`199: 24*8=192 199-192=7`), so that no step hides a computation.
//!
//! Levels (bases drawn from, digits of the answer = division steps), levels 1-3 calibrated on the tiny
//! recipe of `tempering-train` (docs/sft.md): level 3 is the default. Level 4 is for pretrained
//! models: levels 2 and 3 hold only 170 and about 1,700 problems (21 and 192 in the test split),
//! too few to measure a held-out gain or to draw RL prompts fresh; level 4 holds 13,308.
//!
//! | level | bases | digits |
//! |-------|-------|--------|
//! | 1     | 2..=9 | 2      |
//! | 2     | 2..=5 | 3      |
//! | 3     | 2..=9 | 3      |
//! | 4     | 2..=9 | 4      |
//!
//! Longer answers (up to 18 digits) and base 10 are a [`BaseParams`] away from code.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use crate::error::{Result, TaskError};
use crate::rng::SplitMix64;
use crate::task::{
    alphabet_of, check_level, extract_answer, split_of, Problem, Spec, Task, Verdict,
};

pub const NAME: &str = "base-conversion";
const PROMPT_PREFIX: &str = "Convert ";
const PROMPT_MIDDLE: &str = " to base ";
const PROMPT_SUFFIX: &str = ":\n";
/// (min_base, max_base, digits) per level.
const LEVELS: [(u32, u32, u32); 4] = [(2, 9, 2), (2, 5, 3), (2, 9, 3), (2, 9, 4)];
/// Bases above 10 would need letters for digits; the alphabet stays digits only.
const MAX_BASE: u32 = 10;
const MAX_DIGITS: u32 = 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseParams {
    /// The base is drawn from `min_base..=max_base`.
    pub min_base: u32,
    pub max_base: u32,
    /// Length of the answer: values lie in `base^(digits-1)..base^digits`.
    pub digits: u32,
}

impl BaseParams {
    pub fn for_level(level: u32) -> Result<Self> {
        check_level(&BaseConversion, level)?;
        let (min_base, max_base, digits) = LEVELS[(level - 1) as usize];
        Ok(BaseParams {
            min_base,
            max_base,
            digits,
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.min_base < 2 || self.max_base > MAX_BASE || self.min_base > self.max_base {
            return Err(TaskError::param(
                NAME,
                "min_base/max_base",
                format!(
                    "expected 2 <= min_base <= max_base <= {MAX_BASE}, got {}..={}",
                    self.min_base, self.max_base
                ),
            ));
        }
        if self.digits == 0 || self.digits > MAX_DIGITS {
            return Err(TaskError::param(
                NAME,
                "digits",
                format!("expected 1..={MAX_DIGITS}, got {}", self.digits),
            ));
        }
        Ok(())
    }
}

/// Decimal to base 2..=9.
#[derive(Debug, Clone, Copy, Default)]
pub struct BaseConversion;

impl BaseConversion {
    /// One problem with explicit parameters; `level` is only recorded.
    pub fn sample_with(
        &self,
        params: &BaseParams,
        level: u32,
        rng: &mut SplitMix64,
    ) -> Result<Problem> {
        params.validate()?;
        let base = rng.range(u64::from(params.min_base), u64::from(params.max_base));
        // base <= 10 and digits <= 18 keep base^digits below 10^18: no overflow.
        let lo = base.pow(params.digits - 1);
        let hi = base.pow(params.digits) - 1;
        let value = rng.range(lo.max(1), hi);
        Ok(build(value, base as u32, level))
    }
}

fn to_base(mut value: u64, base: u32) -> String {
    let b = u64::from(base);
    let mut digits = Vec::new();
    loop {
        digits.push(char::from(b'0' + (value % b) as u8));
        value /= b;
        if value == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}

/// The value of a digit string in `base`: `None` when it is not digits, `Some(None)` when a digit is
/// not a digit of `base` or the value overflows.
fn from_base(text: &str, base: u32) -> Option<Option<u64>> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: u64 = 0;
    for b in text.bytes() {
        let d = u64::from(b - b'0');
        if d >= u64::from(base) {
            return Some(None);
        }
        match v
            .checked_mul(u64::from(base))
            .and_then(|x| x.checked_add(d))
        {
            Some(x) => v = x,
            None => return Some(None),
        }
    }
    Some(Some(v))
}

fn build(value: u64, base: u32, level: u32) -> Problem {
    let b = u64::from(base);
    let mut steps = Vec::new();
    let mut v = value;
    loop {
        let (q, r) = (v / b, v % b);
        // The product and the subtraction are written out: a small model gets the quotient right
        // long before it can find the remainder in its head.
        steps.push(format!("{v}: {q}*{base}={} {v}-{}={r}", q * b, q * b));
        v = q;
        if v == 0 {
            break;
        }
    }
    Problem::new(
        NAME,
        level,
        format!("{PROMPT_PREFIX}{value}{PROMPT_MIDDLE}{base}{PROMPT_SUFFIX}"),
        &steps,
        to_base(value, base),
        Spec::BaseConversion { value, base },
    )
}

fn parse_prompt(prompt: &str) -> Option<(u64, u32)> {
    let body = prompt
        .strip_prefix(PROMPT_PREFIX)?
        .strip_suffix(PROMPT_SUFFIX)?;
    let (value, base) = body.split_once(PROMPT_MIDDLE)?;
    let base: u32 = base.parse().ok()?;
    if !(2..=MAX_BASE).contains(&base) {
        return None;
    }
    Some((value.parse().ok()?, base))
}

impl Task for BaseConversion {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Write a decimal number in base 2..=9 by repeated division, one division per step, reading the \
         remainders last to first. Level 1..=4: answers of 2, 3, 3, 4 digits in bases 2-9, 2-5, 2-9, \
         2-9 (3 is the default; 4 holds enough problems for a held-out set of thousands)."
    }

    fn levels(&self) -> RangeInclusive<u32> {
        1..=LEVELS.len() as u32
    }

    fn default_level(&self) -> u32 {
        3
    }

    fn sample(&self, level: u32, rng: &mut SplitMix64) -> Result<Problem> {
        let params = BaseParams::for_level(level)?;
        self.sample_with(&params, level, rng)
    }

    fn problem_from_record(&self, prompt: &str, answer: &str, level: u32) -> Result<Problem> {
        let bad = |expected: String| TaskError::BadPrompt {
            task: NAME.to_string(),
            prompt: prompt.to_string(),
            expected,
        };
        let (value, base) = parse_prompt(prompt)
            .ok_or_else(|| bad("`Convert N to base B:` with B in 2..=10".to_string()))?;
        let mut p = build(value, base, level);
        if from_base(answer.trim(), base) != Some(Some(value)) {
            return Err(bad(format!(
                "reference answer {}, the record says {answer:?}",
                p.answer
            )));
        }
        p.split = split_of(NAME, prompt);
        p.prompt = prompt.to_string();
        Ok(p)
    }

    fn verify(&self, problem: &Problem, completion_text: &str) -> Verdict {
        let (value, base) = match &problem.spec {
            Spec::BaseConversion { value, base } => (*value, *base),
            _ => match parse_prompt(&problem.prompt) {
                Some(vb) => vb,
                None => return Verdict::Unparseable,
            },
        };
        let Some(answer) = extract_answer(completion_text) else {
            return Verdict::Unparseable;
        };
        match from_base(answer, base) {
            None => Verdict::Unparseable,
            Some(Some(v)) if v == value => Verdict::Correct,
            Some(_) => Verdict::Incorrect,
        }
    }

    fn alphabet(&self) -> BTreeSet<char> {
        alphabet_of(&[PROMPT_PREFIX, PROMPT_MIDDLE, PROMPT_SUFFIX, "=*-: "])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_reads_back() {
        assert_eq!(to_base(45, 2), "101101");
        assert_eq!(to_base(0, 3), "0");
        assert_eq!(from_base("101101", 2), Some(Some(45)));
        assert_eq!(from_base("102", 2), Some(None));
        assert_eq!(from_base("1a", 2), None);
    }

    #[test]
    fn worked_solution_divides_down_to_zero() {
        let p = build(45, 2, 1);
        assert_eq!(p.prompt, "Convert 45 to base 2:\n");
        assert_eq!(p.steps()[0], "45: 22*2=44 45-44=1");
        assert_eq!(p.steps()[5], "1: 0*2=0 1-0=1");
        assert_eq!(*p.steps().last().unwrap(), "Answer: 101101");
        assert_eq!(p.steps().len(), 7);
    }
}
