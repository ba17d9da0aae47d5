//! Runs a grid of strategies over items: each (strategy, item) pair is solved in a fresh context
//! under the same per-problem budget and judged; results stream to a callback (for progress bars
//! and JSONL). For strategies that draw whole candidate answers, every candidate in the trace is
//! judged too (what sampling bought: pass@1 and pass@N). Knows nothing of tables or plots.

use std::time::Instant;

use serde::Serialize;
use tempering_generate::Backend;
use tempering_search::{
    solve, Budget, Cost, Scorers, SearchConfig, SearchContext, SearchError, SearchProblem,
    Strategy, TextEncoder, Trace,
};

use crate::batched::MemoBackend;
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

/// Solves every item with every strategy (strategy-major), calling `on_result` after each
/// strategy's items (in item order). Every strategy sees the same seed for a given problem, so
/// runs are reproducible, and two strategies that send the same request (`sc@16` and `bon@16`
/// draw the same 16 samples) share its completions: the comparison between them is paired.
///
/// Without a wall-clock budget, the problems of a strategy run batched (see [`crate::batched`]):
/// each round takes every unsolved problem to its next unseen request and runs all of them in one
/// backend call; each problem still gets exactly the completions it would get alone. Its
/// `wall_s` is then its last round's time plus its share (by samples asked) of the batched
/// generation time. With a wall-clock budget, problems run one at a time, as that budget needs.
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
    let memo = MemoBackend::new(setup.backend);
    let batched = setup.budget.max_wall.is_none();
    let backend: &dyn Backend = if batched { &memo } else { setup.backend };
    let solve_item = |s: &dyn Strategy, i: usize| {
        let mut config = setup.config.clone();
        config.seed = setup.config.seed.wrapping_add(i as u64);
        let mut ctx =
            SearchContext::new(backend, setup.encoder, setup.scorers, config, setup.budget);
        solve(s, &SearchProblem::new(items[i].prompt.clone()), &mut ctx)
    };
    let mut out = vec![];
    for s in strategies {
        let name = s.name();
        let judge = |i: usize, sol: tempering_search::Solution, extra_wall: f64| {
            let item = &items[i];
            let mut cost = sol.cost;
            cost.wall_s += extra_wall;
            ProblemResult {
                candidates: judge_candidates(&name, &sol.trace, item),
                strategy: name.clone(),
                index: i,
                correct: item.is_correct(&sol.text),
                answer: sol.answer,
                reference: item.reference.clone(),
                cost,
                budget_cut: sol.budget_cut,
            }
        };
        if !batched {
            for i in 0..items.len() {
                let r = judge(i, solve_item(s.as_ref(), i)?, 0.0);
                on_result(&r);
                out.push(r);
            }
            continue;
        }
        let mut done: Vec<Option<ProblemResult>> = vec![None; items.len()];
        let mut generation_s = vec![0.0f64; items.len()];
        let mut pending: Vec<usize> = (0..items.len()).collect();
        while !pending.is_empty() {
            memo.set_recording(true);
            let mut waiting = vec![];
            let mut reqs = vec![];
            for &i in &pending {
                let solved = solve_item(s.as_ref(), i);
                if memo.has_deferred() {
                    let asked = memo.take_deferred();
                    let rows: usize = asked.iter().map(|r| r.n).sum();
                    waiting.push((i, rows));
                    reqs.extend(asked);
                    continue;
                }
                done[i] = Some(judge(i, solved?, generation_s[i]));
            }
            memo.set_recording(false);
            let total_rows: usize = waiting.iter().map(|w| w.1).sum();
            let t = Instant::now();
            memo.run_deferred(reqs).map_err(SearchError::from)?;
            let elapsed = t.elapsed().as_secs_f64();
            for &(i, rows) in &waiting {
                generation_s[i] += elapsed * rows as f64 / total_rows.max(1) as f64;
            }
            pending = waiting.into_iter().map(|w| w.0).collect();
        }
        for r in done.into_iter().flatten() {
            on_result(&r);
            out.push(r);
        }
    }
    Ok(out)
}
