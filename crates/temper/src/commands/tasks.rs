//! `temper tasks`: the built-in verifiable tasks: list them and write problem sets as JSONL.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tempering_tasks::{generate, records, task_by_name, write_jsonl, GenerateSpec, Split};

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
