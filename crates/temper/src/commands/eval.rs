//! `temper eval`: a grid of test-time strategies over a dataset (a built-in task's test split or a
//! JSONL file), with a progress bar; writes the table, the plots and an HTML report into the run
//! directory.

use super::model_arg::ModelPath;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tempering_eval::report::write_run;
use tempering_eval::table::markdown;
use tempering_eval::{items_from_jsonl, items_from_task, run_grid, summarise, EvalSetup};
use tempering_search::{expand_grid, parse_strategy, TokenizerEncoder};

use crate::commands::search::{build_scorers, rule_step_checker, SearchFlags};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelPath,
    /// A built-in task whose test split to use (see `temper tasks list`).
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub task: Option<String>,
    /// A JSONL file with `prompt` and a reference answer column.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The reference answer column of --data.
    #[arg(long, default_value = "answer")]
    pub answer_column: String,
    /// Task level (default: the task's default level).
    #[arg(long)]
    pub level: Option<u32>,
    /// Problems drawn from the task.
    #[arg(long, default_value_t = 50)]
    pub n: usize,
    /// Seed of the task's problem generator.
    #[arg(long, default_value_t = 1)]
    pub data_seed: u64,
    /// Comma-separated strategies; `@A..B` expands to powers of two, e.g.
    /// greedy,sc@1..64,bon@1..64,beam:4x4
    #[arg(long)]
    pub strategies: String,
    /// The run directory.
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub flags: SearchFlags,
}

/// The built-in task every row of a `--data` file names in its `task` column (as `temper tasks
/// generate` writes), if they all name the same one.
fn data_task(path: &std::path::Path) -> Option<String> {
    let rows = tempering_tasks::dataset::read_rows_numbered(path).ok()?;
    let mut names = rows
        .iter()
        .map(|(_, r)| r.get("task").and_then(|t| t.as_str()).map(str::to_string));
    let first = names.next()??;
    names
        .all(|n| n.as_deref() == Some(first.as_str()))
        .then_some(first)
}

pub fn eval(a: EvalArgs) -> Result<()> {
    // A file of built-in task problems names its task: task-specific strategies and the rule step
    // checker read it as if --task were given.
    let data_task_name = a.data.as_deref().and_then(data_task);
    let specs = expand_grid(&a.strategies).context("--strategies")?;
    let strategies = specs
        .iter()
        .map(|s| parse_strategy(s, a.task.as_deref().or(data_task_name.as_deref())))
        .collect::<Result<Vec<_>, _>>()
        .context("--strategies")?;
    let config = a.flags.config()?;
    let budget = a.flags.budget()?;
    if a.flags.scorer.as_deref() == Some("rule") {
        rule_step_checker(
            "--scorer rule",
            a.task.as_deref().or(data_task_name.as_deref()),
        )?;
    }
    let (items, about) = match (&a.task, &a.data) {
        (Some(task), _) => {
            let t = tempering_tasks::task_by_name(task)?;
            let level = a.level.unwrap_or_else(|| t.default_level());
            if a.n == 0 {
                bail!("--n: expected at least 1 problem");
            }
            (
                items_from_task(task, level, a.n, a.data_seed)?,
                format!(
                    "{task} level {level}, {} test problems (seed {})",
                    a.n, a.data_seed
                ),
            )
        }
        (None, Some(path)) => (
            items_from_jsonl(path, &a.answer_column)?,
            format!("{}", path.display()),
        ),
        (None, None) => bail!("expected --task or --data"),
    };
    let generator = a.flags.generator(a.model.path())?;
    let tok = generator.tokenizer();
    if let Some(bad) = items
        .iter()
        .find(|i| !tok.unknown_chars(&i.prompt).is_empty())
    {
        bail!(
            "the model's tokenizer cannot encode {:?} of problem {:?}",
            tok.unknown_chars(&bad.prompt),
            bad.prompt
        );
    }
    let loaded = build_scorers(
        &a.flags,
        a.model.path(),
        a.task.as_deref().or(data_task_name.as_deref()),
    )?;
    let encoder = TokenizerEncoder {
        tokenizer: tok,
        add_special_tokens: true,
    };
    let setup = EvalSetup {
        backend: generator.backend(),
        encoder: &encoder,
        scorers: loaded.scorers(),
        config: config.clone(),
        budget,
    };
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let resolved = json!({
        "model": a.model.path(), "adapter": a.flags.adapter, "about": about, "strategies": specs, "seed": config.seed,
        "max_new_tokens": config.sampling.max_new_tokens, "temperature": config.sampling.temperature,
        "top_p": config.sampling.top_p, "step_max_tokens": config.step_max_tokens,
        "max_depth": config.max_depth, "aggregation": config.aggregation,
        "budget": budget, "scorer": a.flags.scorer, "prm": a.flags.prm, "rm": a.flags.rm,
        "backend": a.flags.backend.backend, "backend_model": a.flags.backend.backend_model,
    });
    tempering_eval::error::write_atomic(
        &a.output.join("config.json"),
        serde_json::to_string_pretty(&resolved)?.as_bytes(),
    )?;
    let bar = ProgressBar::new((items.len() * strategies.len()) as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let (mut done, mut correct, mut current) = (0usize, 0usize, String::new());
    let results = run_grid(&setup, &strategies, &items, &mut |r| {
        if r.strategy != current {
            current = r.strategy.clone();
            done = 0;
            correct = 0;
        }
        done += 1;
        correct += r.correct as usize;
        bar.set_message(format!(
            "{current} acc {:.1}% (n={done})",
            100.0 * correct as f64 / done as f64
        ));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let rows = summarise(&results);
    write_run(
        &a.output,
        &format!("temper eval: {}", a.model.path().display()),
        &about,
        &results,
        &rows,
    )?;
    print!("{}", markdown(&rows));
    println!("wrote {}/report.html", a.output.display());
    Ok(())
}
