//! `format`: 1 when the completion matches a regular expression, else 0. The default pattern is the
//! think/answer layout of R1-style training. `.` matches newlines too (`(?s)`), and the pattern is
//! searched anywhere: anchor it with `^`/`$` to demand the whole completion.

use regex::Regex;

use crate::error::Result;
use crate::rules::Args;
use crate::scorer::{ScoreInput, Scored, Verifier};

/// `<think>...</think>` then `<answer>...</answer>`, nothing else around them.
pub const THINK_ANSWER: &str = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$";

#[derive(Debug, Clone)]
pub struct FormatReward {
    pattern: Regex,
}

impl FormatReward {
    pub fn new(pattern: &str) -> Result<Self> {
        let pattern = Regex::new(&format!("(?s){pattern}")).map_err(|e| {
            crate::RewardError::spec("format", format!("invalid regular expression: {e}"))
        })?;
        Ok(FormatReward { pattern })
    }

    pub(crate) fn from_args(a: &mut Args) -> Result<Self> {
        let p = a.text("pattern", true)?;
        Self::new(p.as_deref().unwrap_or(THINK_ANSWER))
    }
}

impl Verifier for FormatReward {
    fn name(&self) -> &str {
        "format"
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        let ok = self.pattern.is_match(input.completion);
        Ok(Scored {
            score: if ok { 1.0 } else { 0.0 },
            correct: None,
        })
    }
}
