//! The [`Strategy`] trait, what a strategy returns ([`Candidate`], then [`Solution`] with cost and
//! trace), and [`solve`], which checks scorers and budget before any compute. Each submodule holds
//! one family of strategies; none knows the others.

pub mod beam;
pub mod cot;
pub mod got;
pub mod mcts;
pub mod refine;
pub mod tot;
pub mod vote;

use serde::Serialize;

use crate::budget::Cost;
use crate::context::{SearchConfig, SearchContext, SearchProblem};
use crate::error::{Result, SearchError};
use crate::trace::Trace;
use crate::vote::answer_of;

/// What scorers a strategy needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// A score per completion: an outcome verifier / RM, or a step scorer whose scores are folded.
    CompletionScore,
    /// A score per step: a PRM or self-evaluation.
    StepScore,
}

/// What a strategy picked: the completion text, its answer and score, and its trace node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Candidate {
    pub text: String,
    pub answer: Option<String>,
    pub score: Option<f64>,
    pub node: Option<usize>,
}

impl Candidate {
    pub fn new(text: String, score: Option<f64>, node: Option<usize>) -> Self {
        Candidate {
            answer: answer_of(&text),
            text,
            score,
            node,
        }
    }
}

/// A solved problem: the answer, the completion it came from, what it cost and how it was found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Solution {
    pub strategy: String,
    pub answer: Option<String>,
    pub text: String,
    pub score: Option<f64>,
    pub cost: Cost,
    /// The budget stopped the search before it was done.
    pub budget_cut: bool,
    #[serde(skip)]
    pub trace: Trace,
}

pub trait Strategy: Send + Sync {
    /// The spec that builds this strategy, e.g. `beam:4x4`.
    fn name(&self) -> String;
    fn needs(&self) -> Needs;
    /// Tokens of the smallest unit of work (one completion or one step); a budget below it is an
    /// error.
    fn unit_tokens(&self, config: &SearchConfig) -> usize {
        config.sampling.max_new_tokens
    }
    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate>;
}

/// Runs `strategy` on `problem`: checks that the scorers it needs are there and that the budget
/// affords one unit of work, then searches and returns the solution with its cost and trace.
pub fn solve(
    strategy: &dyn Strategy,
    problem: &SearchProblem,
    ctx: &mut SearchContext<'_>,
) -> Result<Solution> {
    check(strategy, ctx)?;
    ctx.reference = problem.reference.clone();
    let cand = strategy.run(problem, ctx)?;
    if let Some(id) = cand.node {
        ctx.trace.choose(id);
    }
    Ok(Solution {
        strategy: strategy.name(),
        answer: cand.answer,
        text: cand.text,
        score: cand.score,
        cost: ctx.cost(),
        budget_cut: ctx.was_cut(),
        trace: std::mem::take(&mut ctx.trace),
    })
}

/// The checks [`solve`] makes before any compute.
pub fn check(strategy: &dyn Strategy, ctx: &SearchContext<'_>) -> Result<()> {
    let missing = |what, hint| SearchError::MissingScorer {
        strategy: strategy.name(),
        what,
        hint,
    };
    match strategy.needs() {
        Needs::Nothing => {}
        Needs::CompletionScore => {
            if ctx.scorers.verifier.is_none() && ctx.scorers.step.is_none() {
                return Err(missing(
                    "a scorer (an outcome verifier / reward model, or a PRM)",
                    "--rm DIR, --prm DIR or --scorer self-eval",
                ));
            }
        }
        Needs::StepScore => {
            if ctx.scorers.step.is_none() {
                return Err(missing(
                    "a step scorer (a PRM or self-evaluation)",
                    "--prm DIR or --scorer self-eval",
                ));
            }
        }
    }
    let unit = strategy.unit_tokens(&ctx.config);
    let budget = ctx.budget();
    if let Some(have) = budget.max_tokens {
        if have < unit {
            return Err(SearchError::BudgetTooSmall {
                strategy: strategy.name(),
                field: "generated tokens",
                unit: "completion or step",
                need: unit,
                have,
            });
        }
    }
    if budget.max_calls == Some(0) {
        return Err(SearchError::BudgetTooSmall {
            strategy: strategy.name(),
            field: "model calls",
            unit: "generation",
            need: 1,
            have: 0,
        });
    }
    Ok(())
}
