//! What every built-in task family shares: the `Task` trait, a generated `Problem`, the `Verdict` of a
//! verifier, the step and answer conventions of worked solutions, answer extraction from free text, the
//! train/test split by a stable hash, and seeded generation by rejection. Knows nothing of any one family
//! and nothing of models or tokenizers.

use std::collections::{BTreeSet, HashSet};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};
use crate::expr::Expr;
use crate::rng::SplitMix64;

/// Separates the steps of a worked solution: one step per line, everywhere.
pub const STEP_SEPARATOR: &str = "\n";
/// Opens the final line of a worked solution: `Answer: 32`.
pub const ANSWER_MARKER: &str = "Answer: ";
/// Parts per thousand of the hash space that belong to the test split.
pub const TEST_PER_MILLE: u64 = 100;

/// What a verifier says about a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Correct,
    /// An answer was found and read, and it is wrong.
    Incorrect,
    /// No answer of the expected shape could be read.
    Unparseable,
}

impl Verdict {
    pub fn is_correct(self) -> bool {
        self == Verdict::Correct
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Split {
    type Err = TaskError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            other => Err(TaskError::param(
                "*",
                "split",
                format!("`{other}` is not a split; expected `train` or `test`"),
            )),
        }
    }
}

/// The structured content of a problem, from which its verifier works.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Spec {
    Arithmetic { expr: Expr },
    Countdown { numbers: Vec<i64>, target: i64 },
    BaseConversion { value: u64, base: u32 },
}

/// One generated problem. `prompt` is the canonical problem text (the split is a hash of it);
/// `solution` is the worked solution, steps joined by [`STEP_SEPARATOR`], last line
/// [`ANSWER_MARKER`] followed by `answer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub task: String,
    pub level: u32,
    pub prompt: String,
    pub solution: String,
    pub answer: String,
    pub split: Split,
    pub spec: Spec,
}

impl Problem {
    /// Builds the problem with its solution text and split from the parts a family computes.
    pub fn new(
        task: &str,
        level: u32,
        prompt: String,
        steps: &[String],
        answer: String,
        spec: Spec,
    ) -> Self {
        let split = split_of(task, &prompt);
        Problem {
            task: task.to_string(),
            level,
            solution: worked_solution(steps, &answer),
            prompt,
            answer,
            split,
            spec,
        }
    }

    /// The lines of the worked solution, the answer line last.
    pub fn steps(&self) -> Vec<&str> {
        self.solution.split(STEP_SEPARATOR).collect()
    }
}

/// Steps one per line, then `Answer: X`.
pub fn worked_solution(steps: &[String], answer: &str) -> String {
    let mut out = String::new();
    for s in steps {
        out.push_str(s);
        out.push_str(STEP_SEPARATOR);
    }
    out.push_str(ANSWER_MARKER);
    out.push_str(answer);
    out
}

/// The final answer in free text: what follows the first `Answer:` on its line, else the last non-blank
/// line. The first marker wins because a model that keeps generating after its answer line produces
/// continuation, not a correction. Surrounding spaces and a trailing full stop are dropped.
pub fn extract_answer(text: &str) -> Option<&str> {
    let marker = ANSWER_MARKER.trim_end();
    let raw = match text.find(marker) {
        Some(i) => {
            let rest = &text[i + marker.len()..];
            rest.split(['\n', '\r']).next().unwrap_or("")
        }
        None => text.lines().rev().find(|l| !l.trim().is_empty())?,
    };
    let a = raw.trim();
    let a = a.strip_suffix('.').unwrap_or(a).trim_end();
    if a.is_empty() {
        None
    } else {
        Some(a)
    }
}

/// FNV-1a, 64-bit: stable across platforms and crate versions.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The split a problem belongs to: FNV-1a of `task`, a newline and the prompt, mixed by SplitMix64's
/// finaliser (FNV's low bits alone vary little between similar short texts), then the first
/// [`TEST_PER_MILLE`] thousandths of the space are test.
pub fn split_of(task: &str, prompt: &str) -> Split {
    let mut bytes = Vec::with_capacity(task.len() + 1 + prompt.len());
    bytes.extend_from_slice(task.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(prompt.as_bytes());
    let mut z = fnv1a64(&bytes);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z % 1000 < TEST_PER_MILLE {
        Split::Test
    } else {
        Split::Train
    }
}

/// A family of verifiable problems.
pub trait Task: Send + Sync {
    /// The registry name, e.g. `countdown`.
    fn name(&self) -> &'static str;
    /// One paragraph: what the problems look like and what each level means.
    fn description(&self) -> &'static str;
    fn levels(&self) -> RangeInclusive<u32>;
    fn default_level(&self) -> u32;
    /// One problem at `level`, whatever its split.
    fn sample(&self, level: u32, rng: &mut SplitMix64) -> Result<Problem>;
    /// Rebuilds a problem from its prompt and reference answer (e.g. a JSONL record), checking that the
    /// answer solves it.
    fn problem_from_record(&self, prompt: &str, answer: &str, level: u32) -> Result<Problem>;
    /// Reads the final answer out of `completion_text` and checks it against `problem`.
    fn verify(&self, problem: &Problem, completion_text: &str) -> Verdict;
    /// Every character a prompt or worked solution of this family can contain.
    fn alphabet(&self) -> BTreeSet<char>;
}

/// Errors unless `level` is one of `task`'s levels.
pub fn check_level(task: &dyn Task, level: u32) -> Result<()> {
    let r = task.levels();
    if r.contains(&level) {
        Ok(())
    } else {
        Err(TaskError::LevelOutOfRange {
            task: task.name().to_string(),
            level,
            min: *r.start(),
            max: *r.end(),
        })
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateSpec {
    pub level: u32,
    pub n: usize,
    pub seed: u64,
    pub split: Split,
    /// Refuse repeated prompts within the set.
    pub unique: bool,
}

/// Rejection attempts allowed per requested problem before giving up: generous, since only
/// [`TEST_PER_MILLE`] of candidates land in the test split and small levels repeat often.
const ATTEMPTS_PER_PROBLEM: u64 = 400;
const MIN_ATTEMPTS: u64 = 20_000;

/// `spec.n` problems of `spec.split`, drawn from one SplitMix64 stream seeded with `spec.seed`: candidates
/// of the other split (or repeats, when `unique`) are rejected, so the same spec always gives the same
/// problems and no test problem can ever appear in a train set.
pub fn generate(task: &dyn Task, spec: &GenerateSpec) -> Result<Vec<Problem>> {
    if spec.n == 0 {
        return Err(TaskError::param(task.name(), "n", "must be at least 1"));
    }
    check_level(task, spec.level)?;
    let mut rng = SplitMix64::new(spec.seed);
    let mut out = Vec::with_capacity(spec.n);
    let mut seen = HashSet::new();
    let max_attempts = MIN_ATTEMPTS.max(ATTEMPTS_PER_PROBLEM.saturating_mul(spec.n as u64));
    let mut attempts = 0u64;
    while out.len() < spec.n {
        if attempts >= max_attempts {
            return Err(TaskError::Exhausted {
                task: task.name().to_string(),
                level: spec.level,
                split: spec.split.to_string(),
                wanted: spec.n,
                found: out.len(),
                attempts,
                unique: spec.unique,
            });
        }
        attempts += 1;
        let p = task.sample(spec.level, &mut rng)?;
        if p.split != spec.split {
            continue;
        }
        if spec.unique && !seen.insert(p.prompt.clone()) {
            continue;
        }
        out.push(p);
    }
    Ok(out)
}

/// Checks that no prompt is in both sets and that every problem sits in the split its hash assigns.
pub fn check_disjoint(train: &[Problem], test: &[Problem]) -> Result<()> {
    for (set, want) in [(train, Split::Train), (test, Split::Test)] {
        for p in set {
            let got = split_of(&p.task, &p.prompt);
            if got != want {
                return Err(TaskError::SplitCheck(format!(
                    "{} problem {:?} hashes to the {got} split",
                    want, p.prompt
                )));
            }
        }
    }
    let train_keys: HashSet<(&str, &str)> = train
        .iter()
        .map(|p| (p.task.as_str(), p.prompt.as_str()))
        .collect();
    if let Some(p) = test
        .iter()
        .find(|p| train_keys.contains(&(p.task.as_str(), p.prompt.as_str())))
    {
        return Err(TaskError::SplitCheck(format!(
            "prompt {:?} of task `{}` is in both train and test",
            p.prompt, p.task
        )));
    }
    Ok(())
}

/// The union of fixed texts and the ten digits: the building block of each family's alphabet.
pub(crate) fn alphabet_of(texts: &[&str]) -> BTreeSet<char> {
    let mut set: BTreeSet<char> = ('0'..='9').collect();
    set.insert('\n');
    for t in texts {
        set.extend(t.chars());
    }
    set.extend(ANSWER_MARKER.chars());
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_answer_line_first_then_the_last_line() {
        assert_eq!(extract_answer("7+5=12\nAnswer: 12"), Some("12"));
        assert_eq!(
            extract_answer("x\nAnswer:  42. \nmore\nAnswer: 7"),
            Some("42")
        );
        assert_eq!(extract_answer("some work\n\n 17 \n\n"), Some("17"));
        assert_eq!(extract_answer("Answer:\n"), None);
        assert_eq!(extract_answer("   \n"), None);
    }

    #[test]
    fn fnv1a_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn test_share_is_close_to_the_configured_fraction() {
        let n = 20_000;
        let test = (0..n)
            .filter(|i| split_of("t", &format!("Compute: {i}+1\n")) == Split::Test)
            .count();
        let share = test as f64 / n as f64;
        let want = TEST_PER_MILLE as f64 / 1000.0;
        assert!((share - want).abs() < 0.01, "test share {share}");
    }
}
