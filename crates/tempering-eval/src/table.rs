//! The summary table: one row per strategy (accuracy, mean generated tokens, mean model calls,
//! mean scorer calls, wall time per problem), as Markdown and CSV.

use serde::Serialize;

use crate::run::ProblemResult;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StrategyRow {
    pub strategy: String,
    /// The strategy's family (the spec before `@` or `:`): one plot line per family.
    pub family: String,
    pub problems: usize,
    pub accuracy: f64,
    pub mean_tokens: f64,
    pub mean_calls: f64,
    pub mean_scorer_calls: f64,
    pub wall_s_per_problem: f64,
    /// Problems where the budget stopped the search early.
    pub budget_cut: usize,
}

/// The family of a strategy name: its sample count `@N` dropped (`sc@16` -> `sc`, `bon@8:min` ->
/// `bon:min`), so one plot line joins a family's points; other specs are their own family.
pub fn family(strategy: &str) -> String {
    match strategy.split_once('@') {
        Some((name, rest)) => match rest.split_once(':') {
            Some((_, args)) => format!("{name}:{args}"),
            None => name.to_string(),
        },
        None => strategy.to_string(),
    }
}

/// One row per strategy, in first-seen order.
pub fn summarise(results: &[ProblemResult]) -> Vec<StrategyRow> {
    let mut names: Vec<&str> = vec![];
    for r in results {
        if !names.contains(&r.strategy.as_str()) {
            names.push(&r.strategy);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let rs: Vec<&ProblemResult> = results.iter().filter(|r| r.strategy == name).collect();
            let n = rs.len().max(1) as f64;
            let mean = |f: &dyn Fn(&ProblemResult) -> f64| rs.iter().map(|r| f(r)).sum::<f64>() / n;
            StrategyRow {
                strategy: name.to_string(),
                family: family(name),
                problems: rs.len(),
                accuracy: mean(&|r| r.correct as u8 as f64),
                mean_tokens: mean(&|r| r.cost.generated_tokens as f64),
                mean_calls: mean(&|r| r.cost.model_calls as f64),
                mean_scorer_calls: mean(&|r| r.cost.scorer_calls as f64),
                wall_s_per_problem: mean(&|r| r.cost.wall_s),
                budget_cut: rs.iter().filter(|r| r.budget_cut).count(),
            }
        })
        .collect()
}

pub fn markdown(rows: &[StrategyRow]) -> String {
    let mut s = String::from(
        "| strategy | problems | accuracy | mean generated tokens | mean model calls | mean scorer calls | wall s / problem | budget cut |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.1}% | {:.1} | {:.2} | {:.2} | {:.3} | {} |\n",
            r.strategy,
            r.problems,
            100.0 * r.accuracy,
            r.mean_tokens,
            r.mean_calls,
            r.mean_scorer_calls,
            r.wall_s_per_problem,
            r.budget_cut
        ));
    }
    s
}

pub fn csv(rows: &[StrategyRow]) -> String {
    let mut s = String::from("strategy,family,problems,accuracy,mean_tokens,mean_calls,mean_scorer_calls,wall_s_per_problem,budget_cut\n");
    for r in rows {
        s.push_str(&format!(
            "\"{}\",\"{}\",{},{},{},{},{},{},{}\n",
            r.strategy,
            r.family,
            r.problems,
            r.accuracy,
            r.mean_tokens,
            r.mean_calls,
            r.mean_scorer_calls,
            r.wall_s_per_problem,
            r.budget_cut
        ));
    }
    s
}
