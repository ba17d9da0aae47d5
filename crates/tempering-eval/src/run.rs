//! Runs a grid of strategies over items: each (strategy, item) pair is solved in a fresh context
//! under the same per-problem budget and judged; results stream to a callback (for progress bars
//! and JSONL). For strategies that draw whole candidate answers, every candidate in the trace is
//! judged too (what sampling bought: pass@1 and pass@N). Knows nothing of tables or plots.

use serde::Serialize;
use tempering_generate::Backend;
use tempering_search::{
    solve, Budget, Cost, Scorers, SearchConfig, SearchContext, SearchProblem, Strategy,
    TextEncoder, Trace,
};

use crate::data::EvalItem;
use crate::error::Result;

/// What every run shares.
pub struct EvalSetup<'a> {
    pub backend: &'a dyn Backend,
    pub encoder: &'a dyn TextEncoder,
    pub scorers: Scorers<'a>,
    pub config: SearchConfig,
    /// Per problem.
    pub budget: Budget,
}

/// One strategy on one problem.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProblemResult {
    pub strategy: String,
    pub index: usize,
    pub answer: Option<String>,
    pub reference: String,
    pub correct: bool,
    pub cost: Cost,
    pub budget_cut: bool,
    /// For strategies that draw whole candidate answers (sc, wsc, bon, esc, adaptive): how many
    /// the trace holds and how many of them are correct. `None` for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Candidates>,
}

/// The candidates one sampling strategy drew for one problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Candidates {
    pub drawn: usize,
    pub correct: usize,
}

/// The strategy families whose trace `sample` nodes are whole, independent candidate answers.
pub const SAMPLING_FAMILIES: &[&str] = &["sc", "wsc", "bon", "esc", "adaptive"];

/// Whether `strategy` (a spec name such as `bon@8:min`) draws whole candidate answers.
pub fn draws_candidates(strategy: &str) -> bool {
    let head = strategy.split(['@', ':']).next().unwrap_or_default();
    SAMPLING_FAMILIES.contains(&head)
}

/// Judges every `sample` node of a sampling strategy's trace.
fn judge_candidates(strategy: &str, trace: &Trace, item: &EvalItem) -> Option<Candidates> {
    if !draws_candidates(strategy) {
        return None;
    }
    let samples: Vec<_> = trace.nodes.iter().filter(|n| n.kind == "sample").collect();
    Some(Candidates {
        drawn: samples.len(),
        correct: samples.iter().filter(|n| item.is_correct(&n.text)).count(),
    })
}

/// Solves every item with every strategy (strategy-major), calling `on_result` after each.
/// Every strategy sees the same seed for a given problem, so runs are reproducible.
pub fn run_grid(
    setup: &EvalSetup<'_>,
    strategies: &[Box<dyn Strategy>],
    items: &[EvalItem],
    on_result: &mut dyn FnMut(&ProblemResult),
) -> Result<Vec<ProblemResult>> {
    // Check scorers and budget before any compute.
    for s in strategies {
        let ctx = SearchContext::new(
            setup.backend,
            setup.encoder,
            setup.scorers,
            setup.config.clone(),
            setup.budget,
        );
        tempering_search::strategy::check(s.as_ref(), &ctx)?;
    }
    let mut out = vec![];
    for s in strategies {
        for (i, item) in items.iter().enumerate() {
            let mut config = setup.config.clone();
            config.seed = setup.config.seed.wrapping_add(i as u64);
            let mut ctx = SearchContext::new(
                setup.backend,
                setup.encoder,
                setup.scorers,
                config,
                setup.budget,
            );
            let sol = solve(
                s.as_ref(),
                &SearchProblem::new(item.prompt.clone()),
                &mut ctx,
            )?;
            let name = s.name();
            let r = ProblemResult {
                candidates: judge_candidates(&name, &sol.trace, item),
                strategy: name,
                index: i,
                correct: item.is_correct(&sol.text),
                answer: sol.answer,
                reference: item.reference.clone(),
                cost: sol.cost,
                budget_cut: sol.budget_cut,
            };
            on_result(&r);
            out.push(r);
        }
    }
    Ok(out)
}
