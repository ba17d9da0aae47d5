//! `temper tasks`: the built-in verifiable tasks: list them and write problem sets as JSONL.

use super::model_arg::ModelPath;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tempering_generate::{Backend, EngineOptions, GenRequest, LocalEngine, SamplingParams};
use tempering_model::loader::save_hf_dir;
use tempering_tasks::{
    generate, records, task_by_name, write_jsonl, GenerateSpec, Problem, Split, Task,
};
use tempering_train::tiny::{train_tiny, TinyOptions};

use crate::commands::generate::load_engine;
use crate::commands::model::DeviceArgs;

#[derive(Args)]
pub struct TasksArgs {
    #[command(subcommand)]
    pub command: TasksCommand,
}

#[derive(Subcommand)]
pub enum TasksCommand {
    /// List the built-in tasks with their difficulty levels.
    List,
    /// Write problems with reference answers and worked solutions as JSONL (TRL columns).
    Generate(GenerateTaskArgs),
    /// Train a small decoder from scratch (character tokenizer fitted to the task) and save it as
    /// an HF model directory.
    TrainTiny(TrainTinyArgs),
    /// Accuracy of a model on a task's test split, greedy decoding.
    Eval(EvalTaskArgs),
}

#[derive(Args)]
pub struct TrainTinyArgs {
    pub task: String,
    #[arg(long)]
    pub output: PathBuf,
    /// Difficulty level to train on (default: the task's hardest).
    #[arg(long)]
    pub level: Option<u32>,
    /// Also train on these levels (comma-separated), e.g. the level a retain set measures.
    #[arg(long, value_delimiter = ',')]
    pub mix_levels: Vec<u32>,
    /// The share of the training problems drawn from --mix-levels (default 0.25).
    #[arg(long)]
    pub mix_fraction: Option<f64>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub train_problems: Option<usize>,
    /// Test problems to measure accuracy on after training (0: skip).
    #[arg(long, default_value_t = 200)]
    pub eval_problems: usize,
    /// Where checkpoints and metrics.jsonl go (default: OUTPUT/run).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct EvalTaskArgs {
    #[command(flatten)]
    pub model: ModelPath,
    pub task: String,
    /// Difficulty level (default: the task's hardest).
    #[arg(long)]
    pub level: Option<u32>,
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// A PEFT LoRA adapter directory to run on top of the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

#[derive(Args)]
pub struct GenerateTaskArgs {
    /// Task name (see `temper tasks list`).
    pub task: String,
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// train or test: the two splits never share a problem.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Difficulty level (default: the task's default).
    #[arg(long)]
    pub level: Option<u32>,
    /// Allow the same problem more than once.
    #[arg(long)]
    pub allow_duplicates: bool,
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(a: TasksArgs) -> Result<()> {
    match a.command {
        TasksCommand::List => {
            for t in tempering_tasks::list_tasks() {
                let levels = t.levels();
                println!(
                    "{:<16} levels {}..={} (default {})  {}",
                    t.name(),
                    levels.start(),
                    levels.end(),
                    t.default_level(),
                    t.description()
                );
            }
            Ok(())
        }
        TasksCommand::TrainTiny(a) => train_tiny_cmd(a),
        TasksCommand::Eval(a) => eval_cmd(a),
        TasksCommand::Generate(g) => {
            let task = task_by_name(&g.task)?;
            let split: Split = g
                .split
                .parse()
                .map_err(|e| anyhow::anyhow!("--split {}: {e}", g.split))?;
            let spec = GenerateSpec {
                level: g.level.unwrap_or_else(|| task.default_level()),
                n: g.n,
                seed: g.seed,
                split,
                unique: !g.allow_duplicates,
            };
            let problems = generate(task.as_ref(), &spec)?;
            let rows = records(&problems, g.seed);
            write_jsonl(&g.output, &rows)
                .with_context(|| format!("writing {}", g.output.display()))?;
            println!(
                "wrote {} {} problems (level {}, {split} split, seed {}) to {}",
                rows.len(),
                task.name(),
                spec.level,
                g.seed,
                g.output.display()
            );
            Ok(())
        }
    }
}

/// The test problems an evaluation uses: seeded, unique, from the test split.
pub fn test_problems(task: &dyn Task, level: u32, n: usize, seed: u64) -> Result<Vec<Problem>> {
    Ok(generate(
        task,
        &GenerateSpec {
            level,
            n,
            seed,
            split: Split::Test,
            unique: false,
        },
    )?)
}

/// Greedy accuracy of `engine` on `problems`, with a progress bar.
pub fn greedy_accuracy(
    engine: &LocalEngine,
    task: &dyn Task,
    problems: &[Problem],
    max_new_tokens: usize,
) -> Result<f64> {
    let tok = engine.tokenizer();
    for p in problems {
        let unknown = tok.unknown_chars(&p.prompt);
        if !unknown.is_empty() {
            bail!(
                "the model's tokenizer cannot encode {:?} of task {} (problem {:?})",
                unknown,
                task.name(),
                p.prompt
            );
        }
    }
    let bar = ProgressBar::new(problems.len() as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("eval {}", task.name()));
    let mut correct = 0usize;
    for chunk in problems.chunks(64) {
        let reqs: Vec<GenRequest> = chunk
            .iter()
            .map(|p| {
                Ok(GenRequest::new(
                    tok.encode(&p.prompt, false)?,
                    1,
                    SamplingParams::greedy(max_new_tokens),
                ))
            })
            .collect::<Result<_>>()?;
        let outs = engine.generate(&reqs)?;
        for (p, out) in chunk.iter().zip(outs) {
            if out
                .first()
                .is_some_and(|c| task.verify(p, &c.text).is_correct())
            {
                correct += 1;
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(correct as f64 / problems.len().max(1) as f64)
}

fn train_tiny_cmd(a: TrainTinyArgs) -> Result<()> {
    let task = task_by_name(&a.task)?;
    let mut opts = TinyOptions::for_task(task.as_ref());
    if let Some(l) = a.level {
        opts.level = l;
    }
    opts.mix_levels = a.mix_levels.clone();
    if let Some(f) = a.mix_fraction {
        opts.mix_fraction = f;
    }
    if let Some(s) = a.steps {
        opts.steps = s;
    }
    if let Some(s) = a.seed {
        opts.seed = s;
    }
    if let Some(n) = a.train_problems {
        opts.train_problems = n;
    }
    let run_dir = a.run_dir.clone().unwrap_or_else(|| a.output.join("run"));
    let start = Instant::now();
    let tiny = train_tiny(task.as_ref(), &opts, &run_dir)
        .with_context(|| format!("training a tiny model on {}", task.name()))?;
    save_hf_dir(
        &a.output,
        &tiny.model,
        Some(&tiny.tokenizer),
        None,
        DType::F32,
    )
    .with_context(|| format!("writing {}", a.output.display()))?;
    let trained_s = start.elapsed().as_secs_f64();
    println!(
        "trained tiny decoder ({} parameters) on {} level {} for {} steps in {:.0} s; final loss {:.4}; saved to {}",
        tiny.model.config.num_parameters(),
        task.name(),
        opts.level,
        tiny.summary.steps,
        trained_s,
        tiny.summary.last_loss.unwrap_or(f64::NAN),
        a.output.display()
    );
    if a.eval_problems > 0 {
        let problems = test_problems(task.as_ref(), opts.level, a.eval_problems, opts.seed)?;
        let engine = LocalEngine::new(tiny.model, tiny.tokenizer);
        let acc = greedy_accuracy(&engine, task.as_ref(), &problems, 128)?;
        println!(
            "greedy accuracy on {} test problems (level {}): {:.1}%",
            problems.len(),
            opts.level,
            100.0 * acc
        );
    }
    Ok(())
}

fn eval_cmd(a: EvalTaskArgs) -> Result<()> {
    let task = task_by_name(&a.task)?;
    let level = a.level.unwrap_or(*task.levels().end());
    let device = DeviceArgs {
        device: "cpu".into(),
        dtype: None,
    };
    let (engine, _) = load_engine(
        a.model.path(),
        a.adapter.as_deref(),
        &device,
        EngineOptions::default().max_batch_rows,
    )?;
    let problems = test_problems(task.as_ref(), level, a.n, a.seed)?;
    let start = Instant::now();
    let acc = greedy_accuracy(&engine, task.as_ref(), &problems, a.max_new_tokens)?;
    println!(
        "{}: {} level {}: greedy accuracy {:.1}% on {} test problems ({:.1} s)",
        a.model.path().display(),
        task.name(),
        level,
        100.0 * acc,
        problems.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
