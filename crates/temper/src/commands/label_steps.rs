//! `temper label-steps`: automatic step labels for process reward models, Math-Shepherd style.
//! Samples solutions to a built-in task's problems from a policy, continues each from every step
//! prefix with `--rollouts` samples judged by the task's verifier, and writes TRL's stepwise rows
//! (`prompt`, `completions`, `labels`, plus `values`, `answer`, `correct`). Holds no labelling
//! logic (see `tempering_reward::label_steps`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tempering_reward::label_steps::{
    label_steps, label_steps_by_checker, label_steps_by_outcome, LabelOptions, LabelRule,
};
use tempering_tasks::{generate, task_by_name, write_jsonl, GenerateSpec, Split};

use super::backend_flags::{open_generator, BackendFlags};
use super::model::DeviceArgs;
use super::search::rule_step_checker;

#[derive(Args, Debug)]
pub struct LabelStepsArgs {
    /// The policy that writes solutions and rollouts: an HF directory or a GGUF file (`--policy`
    /// is the older spelling; with --backend: its tokenizer only, the server runs the policy).
    #[arg(long, visible_alias = "policy")]
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory to run on top of the policy.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// A built-in task (`temper tasks list`).
    #[arg(long)]
    pub task: String,
    /// Difficulty level (default: the task's hardest).
    #[arg(long)]
    pub level: Option<u32>,
    /// Problems to draw.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Which split the problems come from: train or test.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Solutions sampled per problem (each becomes one row).
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// Rollouts continued from each step prefix (with `--labels rollouts`).
    #[arg(long, default_value_t = 8)]
    pub rollouts: usize,
    /// Where step labels come from: `rollouts` (Math-Shepherd: how many continuations from the step
    /// reach a verified answer) or `rule` (the task's rule step checker judges each step, as a
    /// human labeller would; no rollouts; the last step also needs the verified answer; tasks with
    /// one: arithmetic) or `outcome` (every step gets the verified answer's label: the data of an
    /// implicit PRM, `temper prm --implicit`; no rollouts).
    #[arg(long, default_value = "rollouts")]
    pub labels: String,
    /// A step is correct when at least this fraction of its rollouts reaches a verified answer;
    /// absent: when any does (hard estimation).
    #[arg(long)]
    pub threshold: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Seeds both the problems and the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 64)]
    pub batch_rows: usize,
    /// Keep, per problem, as many correct as incorrect solutions (problems whose samples all agree
    /// are dropped): a PRM trained on the rows then cannot score a problem's difficulty in place of
    /// its solution.
    #[arg(long)]
    pub balance: bool,
    /// The stepwise JSONL file to write.
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub backend: BackendFlags,
}

pub fn run(a: LabelStepsArgs) -> Result<()> {
    let task = task_by_name(&a.task)?;
    let level = a.level.unwrap_or(*task.levels().end());
    let split: Split = a.split.parse()?;
    let problems = generate(
        task.as_ref(),
        &GenerateSpec {
            level,
            n: a.n,
            seed: a.seed,
            split,
            unique: false,
        },
    )?;
    let generator = open_generator(
        &a.model,
        a.adapter.as_deref(),
        &a.device,
        a.batch_rows,
        &a.backend,
    )?
    .generator;
    let tok = generator.tokenizer();
    if let Some(p) = problems
        .iter()
        .find(|p| !tok.unknown_chars(&p.prompt).is_empty())
    {
        bail!(
            "the policy's tokenizer cannot encode {:?} of task {} (problem {:?})",
            tok.unknown_chars(&p.prompt),
            task.name(),
            p.prompt
        );
    }
    let opts = LabelOptions {
        samples: a.samples,
        rollouts: a.rollouts,
        temperature: a.temperature,
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        rule: a.threshold.map_or(LabelRule::Any, LabelRule::AtLeast),
        separator: tempering_tasks::STEP_SEPARATOR.to_string(),
        balance: a.balance,
    };
    let bar = ProgressBar::new(problems.len() as u64).with_style(
        ProgressStyle::with_template("label-steps [{bar:30}] {pos}/{len} problems, ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut progress = |done: usize, _: usize| bar.set_position(done as u64);
    let rows = match a.labels.as_str() {
        "rollouts" => label_steps(
            generator.backend(),
            tok,
            task.as_ref(),
            &problems,
            &opts,
            &mut progress,
        )?,
        "rule" => {
            let checker = rule_step_checker("--labels rule", Some(&a.task))?;
            label_steps_by_checker(
                generator.backend(),
                tok,
                task.as_ref(),
                &problems,
                &opts,
                checker.as_ref(),
                &mut progress,
            )?
        }
        "outcome" => label_steps_by_outcome(
            generator.backend(),
            tok,
            task.as_ref(),
            &problems,
            &opts,
            &mut progress,
        )?,
        other => bail!("--labels {other}: expected `rollouts`, `rule` or `outcome`"),
    };
    bar.finish_and_clear();
    if rows.is_empty() {
        bail!(
            "no solution finished within --max-new-tokens {}: nothing to label",
            a.max_new_tokens
        );
    }
    write_jsonl(&a.output, &rows).with_context(|| format!("writing {}", a.output.display()))?;
    let steps: usize = rows.iter().map(|r| r.labels.len()).sum();
    let positive: usize = rows
        .iter()
        .map(|r| r.labels.iter().filter(|&&l| l).count())
        .sum();
    let correct = rows.iter().filter(|r| r.correct).count();
    println!(
        "labelled {} solutions of {} {} problems ({} correct): {} steps, {} labelled correct; \
         wrote {}",
        rows.len(),
        problems.len(),
        task.name(),
        correct,
        steps,
        positive,
        a.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: LabelStepsArgs,
    }

    #[test]
    fn the_model_is_model_as_in_every_command_and_policy_still_works() {
        for flag in ["--model", "--policy"] {
            let cli =
                Cli::try_parse_from(["x", flag, "m", "--task", "arithmetic", "--output", "o"])
                    .unwrap();
            assert_eq!(cli.a.model, PathBuf::from("m"));
        }
    }
}
