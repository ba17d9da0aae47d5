//! `length_penalty`: a linear cost for length beyond a free allowance,
//! `-coef * max(0, length - target)`, in tokens (default) or characters.

use crate::error::{Result, RewardError};
use crate::rules::Args;
use crate::scorer::{ScoreInput, Scored, Verifier};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthUnit {
    Tokens,
    Chars,
}

#[derive(Debug, Clone, Copy)]
pub struct LengthPenalty {
    pub coef: f64,
    pub target: usize,
    pub unit: LengthUnit,
}

/// Completion length in `unit`; tokens must have been counted.
pub(crate) fn completion_length(
    rule: &str,
    input: &ScoreInput<'_>,
    unit: LengthUnit,
) -> Result<usize> {
    match unit {
        LengthUnit::Chars => Ok(input.completion.chars().count()),
        LengthUnit::Tokens if input.completion_tokens == 0 && !input.completion.is_empty() => {
            Err(RewardError::spec(
                rule,
                "counts tokens, but this completion carries no token count; pass unit=chars to count characters",
            ))
        }
        LengthUnit::Tokens => Ok(input.completion_tokens),
    }
}

impl LengthPenalty {
    pub(crate) fn from_args(a: &mut Args) -> Result<Self> {
        let coef = a.number("coef", true)?.unwrap_or(0.001);
        let target = a.count("target", false)?.unwrap_or(0);
        let unit = match a.text("unit", false)?.as_deref() {
            None | Some("tokens") => LengthUnit::Tokens,
            Some("chars") => LengthUnit::Chars,
            Some(u) => return Err(a.error(format!("`unit` must be tokens or chars, got `{u}`"))),
        };
        if coef < 0.0 {
            return Err(a.error(format!(
                "`coef` must be >= 0 (it is subtracted), got {coef}"
            )));
        }
        Ok(LengthPenalty { coef, target, unit })
    }
}

impl Verifier for LengthPenalty {
    fn name(&self) -> &str {
        "length_penalty"
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        let len = completion_length("length_penalty", input, self.unit)?;
        Ok(Scored {
            score: -self.coef * len.saturating_sub(self.target) as f64,
            correct: None,
        })
    }
}
