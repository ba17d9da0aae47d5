//! Benchmark runs of test-time strategies: a grid of strategies (and budgets) over a dataset,
//! judged by the task's verifier or the reference answer, summarised as a table (accuracy with its
//! 95% Wilson interval and n, sampled pass@1 and pass@N for sampling strategies, mean generated
//! tokens, mean model calls, wall time per problem), plots of accuracy against generated tokens
//! (one line per strategy family, SVG and PNG) and a self-contained HTML report; and the kit such
//! pages are built from (an HTML table, SVG line plots with log axes, smoothing and markers).
//!
//! Where things live: [`data`] (what an evaluation runs over), [`run`] (the grid), [`table`] (the
//! summary and its intervals), [`report`] (the run directory), [`plot`] (accuracy against tokens);
//! the kit: [`curves`] (SVG line plots, with ticks and smoothing in its `axis` submodule) and
//! [`page`] (HTML).
//!
//! This crate knows the search layer, the tasks (to judge answers) and the scorer traits. It
//! knows nothing of how models run (it takes only `write_atomic` from the model crate), of training
//! or of the command line.

pub mod batched;
pub mod curves;
pub mod data;
pub mod error;
pub mod page;
pub mod plot;
pub mod report;
pub mod run;
pub mod table;

pub use data::{items_from_jsonl, items_from_task, EvalItem};
pub use error::{EvalError, Result};
pub use run::{run_grid, Candidates, EvalSetup, ProblemResult};
pub use table::{summarise, wilson, Rate, Sampled, StrategyRow};
