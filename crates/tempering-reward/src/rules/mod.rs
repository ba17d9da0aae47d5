//! Rule rewards by name: the registry that turns a rule name and its arguments (from a
//! [`crate::spec::RewardSpec`]) into a [`Verifier`], and one module per rule. Rules need no model;
//! they judge text (and token counts) only. Knows nothing of learned scorers or of spec syntax.

pub mod arithmetic_steps;
pub mod chrf;
pub mod format;
pub mod length_penalty;
pub mod math_answer;
pub mod overlong_penalty;
pub mod task_verifier;

use std::collections::BTreeMap;

use crate::error::{Result, RewardError};
use crate::scorer::Verifier;
use crate::spec::{RewardArg, RewardContext};

pub use arithmetic_steps::ArithmeticSteps;
pub use chrf::{chrf_score, Chrf, ChrfParams};
pub use format::FormatReward;
pub use length_penalty::{LengthPenalty, LengthUnit};
pub use math_answer::MathAnswer;
pub use overlong_penalty::OverlongPenalty;
pub use task_verifier::TaskVerifier;

/// Every rule name a spec may use, in the order help texts list them.
pub const RULE_NAMES: [&str; 6] = [
    "math_answer",
    "task_verifier",
    "format",
    "length_penalty",
    "overlong_penalty",
    "chrf",
];

/// The rule called `name` with `args`; unknown names and arguments are errors that list what is known.
pub fn build_rule(
    name: &str,
    args: &[RewardArg],
    ctx: &RewardContext,
) -> Result<Box<dyn Verifier>> {
    let mut a = Args::new(name, args)?;
    let rule: Box<dyn Verifier> = match name {
        "math_answer" => Box::new(MathAnswer),
        "task_verifier" => Box::new(TaskVerifier::from_args(&mut a, ctx)?),
        "format" => Box::new(FormatReward::from_args(&mut a)?),
        "length_penalty" => Box::new(LengthPenalty::from_args(&mut a)?),
        "overlong_penalty" => Box::new(OverlongPenalty::from_args(&mut a)?),
        "chrf" => Box::new(Chrf::from_args(&mut a)?),
        _ => {
            return Err(RewardError::spec(
                name,
                format!("unknown reward; known rewards: {}", RULE_NAMES.join(", ")),
            ))
        }
    };
    a.finish()?;
    Ok(rule)
}

/// A rule's arguments while it takes them: each `take` consumes one, and [`Args::finish`] errors on
/// any left over (a misspelt key), naming the parameters the rule took.
pub struct Args {
    rule: String,
    positional: Option<String>,
    named: BTreeMap<String, String>,
    known: Vec<&'static str>,
}

impl Args {
    fn new(rule: &str, args: &[RewardArg]) -> Result<Self> {
        let mut positional = None;
        let mut named = BTreeMap::new();
        for a in args {
            match &a.key {
                None if positional.is_some() => {
                    return Err(RewardError::spec(
                        rule,
                        "only the first argument may be given without a name; write KEY=VALUE",
                    ))
                }
                None => positional = Some(a.value.clone()),
                Some(k) => {
                    if named.insert(k.clone(), a.value.clone()).is_some() {
                        return Err(RewardError::spec(rule, format!("`{k}` is given twice")));
                    }
                }
            }
        }
        Ok(Args {
            rule: rule.to_string(),
            positional,
            named,
            known: Vec::new(),
        })
    }

    /// An error about this rule.
    pub fn error(&self, msg: impl Into<String>) -> RewardError {
        RewardError::spec(&self.rule, msg)
    }

    /// The raw value of `key`; `main` marks the rule's main parameter, which a bare value fills.
    pub fn text(&mut self, key: &'static str, main: bool) -> Result<Option<String>> {
        self.known.push(key);
        let named = self.named.remove(key);
        let bare = if main { self.positional.take() } else { None };
        match (named, bare) {
            (Some(_), Some(_)) => Err(self.error(format!(
                "`{key}` is given both by name and as the first argument"
            ))),
            (a, b) => Ok(a.or(b)),
        }
    }

    /// A finite number.
    pub fn number(&mut self, key: &'static str, main: bool) -> Result<Option<f64>> {
        match self.text(key, main)? {
            None => Ok(None),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.error(format!("`{key}` must be a number, got `{v}`"))),
        }
    }

    /// A non-negative integer.
    pub fn count(&mut self, key: &'static str, main: bool) -> Result<Option<usize>> {
        match self.text(key, main)? {
            None => Ok(None),
            Some(v) => v.parse::<usize>().map(Some).map_err(|_| {
                self.error(format!("`{key}` must be a non-negative integer, got `{v}`"))
            }),
        }
    }

    /// `true` or `false`.
    pub fn flag(&mut self, key: &'static str) -> Result<Option<bool>> {
        match self.text(key, false)? {
            None => Ok(None),
            Some(v) => match v.as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(self.error(format!("`{key}` must be true or false, got `{v}`"))),
            },
        }
    }

    /// Errors if an argument was not taken.
    pub fn finish(self) -> Result<()> {
        let params = if self.known.is_empty() {
            "it takes no parameters".to_string()
        } else {
            format!("its parameters: {}", self.known.join(", "))
        };
        if let Some(v) = &self.positional {
            return Err(self.error(format!("unexpected argument `{v}`; {params}")));
        }
        if let Some(k) = self.named.keys().next() {
            return Err(self.error(format!("unknown parameter `{k}`; {params}")));
        }
        Ok(())
    }
}
