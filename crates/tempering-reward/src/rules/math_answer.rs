//! `math_answer`: 1 when the completion's final answer equals the reference by value, else 0.
//! Where the answer sits and what counts as equal is [`crate::answer`]'s business: `\boxed{..}`,
//! `<answer>..</answer>`, `#### x`, `Answer: x`, `the answer is x`, else the last number;
//! numbers, fractions and decimals by value. The reference may be a bare answer or a worked solution ending in `#### x` or a box.

use crate::answer::{extract_final_answer, parse_answer, reference_answer};
use crate::error::{Result, RewardError};
use crate::scorer::{ScoreInput, Scored, Verifier};

#[derive(Debug, Clone, Copy, Default)]
pub struct MathAnswer;

impl Verifier for MathAnswer {
    fn name(&self) -> &str {
        "math_answer"
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        let reference = input.reference.ok_or_else(|| {
            RewardError::spec(
                "math_answer",
                "needs the reference answer of each prompt (the dataset's `answer` column)",
            )
        })?;
        let expected = parse_answer(reference_answer(reference));
        let correct = extract_final_answer(input.completion)
            .is_some_and(|found| parse_answer(found.text) == expected);
        Ok(Scored {
            score: if correct { 1.0 } else { 0.0 },
            correct: Some(correct),
        })
    }
}
