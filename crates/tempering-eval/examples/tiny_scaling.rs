//! The tiny-model check of issue 10: on a built-in task, self-consistency and best-of-N accuracy
//! against N, and step-level search against best-of-N@16, with the generated tokens each spends.
//!
//! `cargo run --release -p tempering-eval --example tiny_scaling -- MODEL_DIR OUT_DIR [N_PROBLEMS] [STRATEGIES]`
//!
//! MODEL_DIR is a tiny model from `temper tasks train-tiny arithmetic --level 2 ...`. No learned
//! PRM is used: steps are scored by [`StepChecker`], a rule that checks the arithmetic of each
//! line (`a op b = c`, and that the answer line repeats the last result). It sees no reference
//! answer, so it is a process verifier, not an oracle.

use std::path::PathBuf;

use candle_core::{DType, Device};
use tempering_eval::report::write_run;
use tempering_eval::table::markdown;
use tempering_eval::{items_from_task, run_grid, summarise, EvalSetup};
use tempering_generate::LocalEngine;
use tempering_model::ModelFiles;
use tempering_reward::StepScorer;
use tempering_search::{
    expand_grid, parse_strategy, Budget, Scorers, SearchConfig, TokenizerEncoder,
};
use tempering_tasks::expr::parse;

/// Scores a step 1 when its equation holds (or it is an answer line equal to the previous
/// step's result), 0 when it does not, 0.5 when it cannot be read.
struct StepChecker;

fn result_of(step: &str) -> Option<i64> {
    step.rsplit_once('=')
        .and_then(|(_, r)| r.trim().parse().ok())
}

impl StepScorer for StepChecker {
    fn name(&self) -> &str {
        "step-checker"
    }

    fn score_steps(&self, _prompt: &str, steps: &[&str]) -> tempering_reward::Result<Vec<f64>> {
        Ok(steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if let Some(ans) = s.strip_prefix("Answer:") {
                    let prev = i.checked_sub(1).and_then(|j| result_of(steps[j]));
                    return match (ans.trim().parse::<i64>().ok(), prev) {
                        (Some(a), Some(p)) => (a == p) as u8 as f64,
                        _ => 0.5,
                    };
                }
                match s.split_once('=') {
                    Some((lhs, rhs)) => match (
                        parse(lhs.trim()).ok().and_then(|e| e.eval().ok()),
                        rhs.trim().parse::<i64>().ok(),
                    ) {
                        (Some(l), Some(r)) => (l == r) as u8 as f64,
                        _ => 0.0,
                    },
                    None => 0.5,
                }
            })
            .collect())
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(args.get(1).expect("MODEL_DIR"));
    let out = PathBuf::from(args.get(2).expect("OUT_DIR"));
    let n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let grid = args
        .get(4)
        .cloned()
        .unwrap_or_else(|| "greedy,sc@1..16,bon@1..16:last,beam:2x2,beam:4x4,dvts:4x4".into());
    let level: u32 = std::env::var("LEVEL")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2);
    let files = ModelFiles::open(&model, DType::F32, &Device::Cpu)?;
    let tok = files.tokenizer.clone().expect("a tokenizer");
    let engine = LocalEngine::new(files.transformer()?, tok.clone());
    let encoder = TokenizerEncoder {
        tokenizer: &tok,
        add_special_tokens: true,
    };
    let items = items_from_task("arithmetic", level, n, 7)?;
    let checker = StepChecker;
    let mut config = SearchConfig {
        step_max_tokens: 24,
        max_depth: 8,
        seed: 1,
        ..SearchConfig::default()
    };
    config.sampling.max_new_tokens = 96;
    config.sampling.temperature = 1.0;
    let setup = EvalSetup {
        backend: &engine,
        encoder: &encoder,
        scorers: Scorers {
            verifier: None,
            step: Some(&checker),
        },
        config,
        budget: Budget::unlimited(),
    };
    let specs = expand_grid(&grid)?;
    let strategies = specs
        .iter()
        .map(|s| parse_strategy(s, Some("arithmetic")))
        .collect::<Result<Vec<_>, _>>()?;
    let results = run_grid(&setup, &strategies, &items, &mut |_| {})?;
    let rows = summarise(&results);
    write_run(
        &out,
        "tiny model, arithmetic",
        &format!("arithmetic level {level}, {n} test problems, rule step checker as PRM"),
        &results,
        &rows,
    )?;
    print!("{}", markdown(&rows));
    Ok(())
}
