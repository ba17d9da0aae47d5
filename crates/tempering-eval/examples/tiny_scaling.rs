//! The tiny-model check of issue 10: on a built-in task, self-consistency and best-of-N accuracy
//! against N, and step-level search against best-of-N@16, with the generated tokens each spends.
//!
//! `cargo run --release -p tempering-eval --example tiny_scaling -- MODEL_DIR OUT_DIR [N_PROBLEMS] [STRATEGIES]`
//!
//! MODEL_DIR is a tiny model from `temper tasks train-tiny arithmetic --level 2 ...`. No learned
//! PRM is used: steps are scored by `ArithmeticSteps`, a rule that checks the arithmetic of each
//! line (`a op b = c`, and that the answer line repeats the last result). It sees no reference
//! answer, so it is a process verifier, not an oracle.

use std::path::PathBuf;

use candle_core::{DType, Device};
use tempering_eval::report::write_run;
use tempering_eval::table::markdown;
use tempering_eval::{items_from_task, run_grid, summarise, EvalSetup};
use tempering_generate::LocalEngine;
use tempering_model::ModelFiles;
use tempering_reward::rules::ArithmeticSteps;
use tempering_search::{
    expand_grid, parse_strategy, Budget, Scorers, SearchConfig, TokenizerEncoder,
};

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
    let checker = ArithmeticSteps;
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
