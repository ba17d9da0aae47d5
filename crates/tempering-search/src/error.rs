//! The typed error of the search layer: each variant says what was wrong (the strategy, the flag or
//! the budget field) and what was expected. Knows nothing of how callers report errors.

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("unknown strategy `{name}`: known strategies are {known}")]
    UnknownStrategy { name: String, known: String },

    /// A strategy spec parsed but one of its parameters is wrong.
    #[error("strategy `{spec}`: {msg}")]
    BadSpec { spec: String, msg: String },

    #[error("strategy `{strategy}` needs {what}, and none was given ({hint})")]
    MissingScorer {
        strategy: String,
        what: &'static str,
        hint: &'static str,
    },

    #[error(
        "the budget of {have} {field} is too small for one {unit} of strategy `{strategy}` ({need} {field}): raise the budget or lower the completion length"
    )]
    BudgetTooSmall {
        strategy: String,
        field: &'static str,
        unit: &'static str,
        need: usize,
        have: usize,
    },

    #[error("encoding a prompt: {0}")]
    Encode(String),

    #[error(transparent)]
    Generate(#[from] tempering_generate::GenError),

    #[error(transparent)]
    Reward(#[from] tempering_reward::RewardError),

    #[error("scorer `{scorer}` returned {got} scores for {want} items")]
    ScorerShape {
        scorer: String,
        got: usize,
        want: usize,
    },
}

pub type Result<T, E = SearchError> = std::result::Result<T, E>;
