//! Test-time search: spend compute at inference to reason better, and account for every unit of
//! it. A [`Strategy`] solves a [`SearchProblem`] through a [`SearchContext`] that holds the
//! generation backend (any [`tempering_generate::Backend`], so strategies run against remote
//! servers too), the scorers (a [`tempering_reward::Verifier`] for whole completions, a
//! [`tempering_reward::StepScorer`] for steps), one [`Budget`] and the [`Trace`]. Every solution
//! reports its [`Cost`]; no strategy spends past its budget, and what a sample does not use is
//! granted to the next ones.
//!
//! Strategies: chain of thought (greedy, sampled), self-consistency (majority, weighted),
//! best-of-N (verifier / RM, or PRM with min, last, product or mean), PRM beam search, DVTS,
//! lookahead search, Tree of Thoughts (BFS, DFS), Graph of Thoughts, MCTS, self-refinement,
//! early-stopping and adaptive sampling. [`spec`] builds them from strings such as `beam:4x4`.
//!
//! Where things live: [`strategy`] holds the trait and one file per family (`cot`, `vote`, `beam`,
//! `tot`, `got`, `mcts`, `refine`); [`budget`] the budget and cost; [`context`] what a strategy
//! works with and [`text`] its text encoder; [`trace`] the trace; [`vote`] answers and their
//! aggregation; [`fake`] scripted backends and scorers for tests.
//!
//! This crate knows the generation backend, the scorer traits and the tasks' answer conventions.
//! It knows nothing of training, of datasets, of how scorers compute, or of the command line.

pub mod budget;
pub mod context;
pub mod error;
pub mod fake;
pub mod spec;
pub mod strategy;
pub mod text;
pub mod trace;
pub mod vote;

pub use budget::{Budget, Cost, Grant, Meter};
pub use context::{Scorers, SearchConfig, SearchContext, SearchProblem};
pub use error::{Result, SearchError};
pub use spec::{expand_grid, parse_strategy, KNOWN};
pub use strategy::{solve, Candidate, Needs, Solution, Strategy};
pub use text::{TextEncoder, TokenizerEncoder};
pub use trace::{Trace, TraceNode};
pub use vote::{answer_of, Aggregation};
