//! `overlong_penalty`: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13). With `max` the
//! longest allowed completion and `buffer` the soft zone before it, in tokens:
//! 0 up to `max - buffer`, then falling linearly to -1 at `max`, and -1 beyond.

use crate::error::Result;
use crate::rules::length_penalty::{completion_length, LengthUnit};
use crate::rules::Args;
use crate::scorer::{ScoreInput, Scored, Verifier};

#[derive(Debug, Clone, Copy)]
pub struct OverlongPenalty {
    max: usize,
    buffer: usize,
}

impl OverlongPenalty {
    /// `buffer` must be in `1..=max`.
    pub fn new(max: usize, buffer: usize) -> Result<Self> {
        if buffer == 0 || buffer > max {
            return Err(crate::RewardError::spec(
                "overlong_penalty",
                format!("`buffer` must be in 1..=max ({max}), got {buffer}"),
            ));
        }
        Ok(OverlongPenalty { max, buffer })
    }

    /// The penalty for a completion of `len` tokens.
    pub fn penalty(&self, len: usize) -> f64 {
        let free = self.max - self.buffer;
        if len <= free {
            0.0
        } else if len <= self.max {
            (free as f64 - len as f64) / self.buffer as f64
        } else {
            -1.0
        }
    }

    pub(crate) fn from_args(a: &mut Args) -> Result<Self> {
        let max = a.count("max", true)?;
        let buffer = a.count("buffer", false)?;
        let (Some(max), Some(buffer)) = (max, buffer) else {
            return Err(a.error(
                "needs `max` (the longest completion, in tokens) and `buffer` (the soft zone before it), as in overlong_penalty(max=1024, buffer=256)",
            ));
        };
        Self::new(max, buffer)
    }
}

impl Verifier for OverlongPenalty {
    fn name(&self) -> &str {
        "overlong_penalty"
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        let len = completion_length("overlong_penalty", input, LengthUnit::Tokens)?;
        Ok(Scored {
            score: self.penalty(len),
            correct: None,
        })
    }
}
