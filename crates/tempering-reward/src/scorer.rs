//! The two scoring traits and what they take and return. A [`Verifier`] scores a whole completion;
//! a [`StepScorer`] scores each step of a completion split at the step separator. Both are plain
//! traits so that a rule, a learned model or a remote judge can stand behind either. Knows nothing
//! of any one scorer.

/// One completion to score, with what a rule may need to judge it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreInput<'a> {
    /// The prompt text as the policy saw it (without chat-template decoration when known).
    pub prompt: &'a str,
    /// The generated text.
    pub completion: &'a str,
    /// The reference answer, when the data carries one.
    pub reference: Option<&'a str>,
    /// Generated tokens, for length-based shaping; 0 when unknown.
    pub completion_tokens: usize,
    /// Whether generation stopped at the length limit (truncated).
    pub truncated: bool,
}

impl<'a> ScoreInput<'a> {
    pub fn new(prompt: &'a str, completion: &'a str) -> Self {
        ScoreInput {
            prompt,
            completion,
            reference: None,
            completion_tokens: 0,
            truncated: false,
        }
    }

    pub fn with_reference(mut self, reference: Option<&'a str>) -> Self {
        self.reference = reference;
        self
    }
}

/// A score with, where the scorer can tell, whether the answer is correct.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: f64,
    /// `Some` for verifiers that judge correctness (rules with a reference); `None` for learned or
    /// shaping scores.
    pub correct: Option<bool>,
}

/// Scores whole completions. Higher is better.
pub trait Verifier: Send + Sync {
    /// The name metrics and traces use for this scorer.
    fn name(&self) -> &str;

    fn score(&self, input: &ScoreInput<'_>) -> crate::Result<Scored>;

    /// Scores many completions; learned scorers override this to batch.
    fn score_batch(&self, inputs: &[ScoreInput<'_>]) -> crate::Result<Vec<Scored>> {
        inputs.iter().map(|i| self.score(i)).collect()
    }
}

/// Scores each step of a completion: `steps` are the completion's steps in order (split at the
/// task's step separator), and the result holds one score per step, each in `[0, 1]`: how likely
/// the solution is still on a correct path after that step.
pub trait StepScorer: Send + Sync {
    fn name(&self) -> &str;

    fn score_steps(&self, prompt: &str, steps: &[&str]) -> crate::Result<Vec<f64>>;

    /// Scores many step lists; learned scorers override this to batch.
    fn score_steps_batch(&self, items: &[(&str, Vec<&str>)]) -> crate::Result<Vec<Vec<f64>>> {
        items
            .iter()
            .map(|(prompt, steps)| self.score_steps(prompt, steps))
            .collect()
    }
}
