//! `temper search`: solve one problem with a test-time strategy under a budget; prints the answer,
//! its cost and the search tree, and writes the trace as JSONL. Also holds what `temper eval`
//! shares with it: the search flags and [`Scorers`] built from `--prm`, `--rm` and `--scorer`
//! (`self-eval`, or `rule`: the task's rule step checker).

use super::model_arg::ModelPath;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tempering_generate::{GenError, SamplingParams};
use tempering_reward::learned::{open_step_scorer, RewardModel};
use tempering_reward::rules::ArithmeticSteps;
use tempering_reward::{
    Aggregate, SelfEvalConfig, SelfEvaluator, StepEnsemble, StepScorer, Verifier,
};
use tempering_search::{
    parse_strategy, solve, Aggregation, Budget, Scorers, SearchConfig, SearchContext,
    SearchProblem, TokenizerEncoder,
};

use crate::commands::backend_flags::{open_generator, BackendFlags, Generator};
use crate::commands::model::DeviceArgs;
use crate::device::device_and_dtype;

/// Flags every search command shares.
#[derive(Args, Clone, Debug)]
pub struct SearchFlags {
    /// A PEFT LoRA adapter directory to run on top of the model (as `temper sft --lora-r` writes).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// A learned process reward model directory (scores each step). With `--scorer rule` too, each
    /// step scores the lower of the two.
    #[arg(long)]
    pub prm: Option<PathBuf>,
    /// A learned outcome reward model directory (scores whole completions; where a strategy needs
    /// a completion's score, it wins over step scores folded by the aggregation).
    #[arg(long)]
    pub rm: Option<PathBuf>,
    /// A scorer without a learned model: `self-eval` (the model judges its own answers and steps;
    /// a learned --prm or --rm wins over it for its role) or `rule` (the task's rule step checker
    /// scores each step, never seeing the reference answer; with --prm, each step scores the lower
    /// of the two; tasks with one: arithmetic).
    #[arg(long)]
    pub scorer: Option<String>,
    /// Most generated tokens per problem.
    #[arg(long)]
    pub budget_tokens: Option<usize>,
    /// Most model calls (generation requests) per problem.
    #[arg(long)]
    pub budget_calls: Option<usize>,
    /// Most wall-clock seconds per problem (checked before each call).
    #[arg(long)]
    pub budget_seconds: Option<f64>,
    /// Most new tokens of one whole completion.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Most tokens of one reasoning step (step-level strategies).
    #[arg(long, default_value_t = 64)]
    pub step_max_tokens: usize,
    /// Most steps of a step-level search.
    #[arg(long, default_value_t = 16)]
    pub max_depth: usize,
    /// Sampling temperature of sampled completions and steps.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// How PRM step scores become a completion's score where one is needed (min, last, prod, mean).
    #[arg(long, default_value = "min")]
    pub aggregation: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 32)]
    pub batch_rows: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub backend: BackendFlags,
}

impl SearchFlags {
    /// The policy: `model` with `--adapter` on top, on `--device`; or the `--backend` server with
    /// `model`'s tokenizer.
    pub fn generator(&self, model: &Path) -> Result<Generator> {
        Ok(open_generator(
            model,
            self.adapter.as_deref(),
            &self.device,
            self.batch_rows,
            &self.backend,
        )?
        .generator)
    }

    pub fn budget(&self) -> Result<Budget> {
        let max_wall = match self.budget_seconds {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                bail!("--budget-seconds: got {s}, expected a positive number")
            }
            s => s.map(Duration::from_secs_f64),
        };
        Ok(Budget {
            max_tokens: self.budget_tokens,
            max_calls: self.budget_calls,
            max_wall,
        })
    }

    pub fn config(&self) -> Result<SearchConfig> {
        let sampling = SamplingParams {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            ..SamplingParams::default()
        };
        if let Err(GenError::InvalidParam {
            field,
            got,
            expected,
            ..
        }) = sampling.validate(0)
        {
            bail!(
                "--{}: got {got}, expected {expected}",
                field.replace('_', "-")
            );
        }
        if self.step_max_tokens == 0 || self.max_depth == 0 {
            bail!("--step-max-tokens and --max-depth: expected at least 1");
        }
        if let Some(other) = self.scorer.as_deref().filter(|s| !SCORER_NAMES.contains(s)) {
            bail!(
                "--scorer {other}: expected one of {}",
                SCORER_NAMES.join(", ")
            );
        }
        if self.backend.backend.is_some() && self.adapter.is_some() {
            bail!(
                "--adapter runs on the local engine: with --backend, load the adapter on the \
                 server and name it with --backend-model"
            );
        }
        // Checked here, before any model loads: the judge would read the model without --adapter.
        if self.scorer.as_deref() == Some("self-eval") && self.adapter.is_some() {
            bail!(
                "--scorer self-eval judges with the model as saved, without --adapter: merge the \
                 adapter first (temper merge BASE ADAPTER OUT) and pass the merged model"
            );
        }
        let aggregation: Aggregation = self.aggregation.parse().map_err(|_| {
            anyhow::anyhow!(
                "--aggregation {}: expected one of {}",
                self.aggregation,
                Aggregation::NAMES
            )
        })?;
        Ok(SearchConfig {
            sampling,
            step_max_tokens: self.step_max_tokens,
            max_depth: self.max_depth,
            seed: self.seed,
            aggregation,
            ..SearchConfig::default()
        })
    }
}

/// The values `--scorer` takes.
pub const SCORER_NAMES: [&str; 2] = ["self-eval", "rule"];

/// The tasks with a rule step checker, for `--scorer rule`.
pub const RULE_STEP_TASKS: [&str; 1] = ["arithmetic"];

/// The rule step checker of `task` (`--scorer rule`); an error names the tasks that have one.
/// `flag` names the option that asked for it (`--scorer rule`, `--process-reward rule`).
pub fn rule_step_checker(flag: &str, task: Option<&str>) -> Result<Box<dyn StepScorer>> {
    match task {
        Some("arithmetic") => Ok(Box::new(ArithmeticSteps)),
        Some(other) => bail!(
            "{flag}: task `{other}` has no rule step checker; tasks with one: {}",
            RULE_STEP_TASKS.join(", ")
        ),
        None => bail!(
            "{flag} scores steps with the task's rule checker: pass --task (tasks with one: {})",
            RULE_STEP_TASKS.join(", ")
        ),
    }
}

/// The scorers the flags ask for, owned; [`LoadedScorers::scorers`] lends them to a search.
#[derive(Default)]
pub struct LoadedScorers {
    self_eval: Option<SelfEvaluator>,
    /// `--prm`, `--scorer rule`, or both (each step's lower score).
    step: Option<Box<dyn StepScorer>>,
    rm: Option<RewardModel>,
}

impl LoadedScorers {
    /// A learned model or the rule checker wins over self-evaluation for its role.
    pub fn scorers(&self) -> Scorers<'_> {
        let judge = self.self_eval.as_ref();
        Scorers {
            verifier: self
                .rm
                .as_ref()
                .map(|r| r as &dyn Verifier)
                .or(judge.map(|s| s as &dyn Verifier)),
            step: self.step.as_deref().or(judge.map(|s| s as &dyn StepScorer)),
        }
    }
}

/// Builds the scorers from `--prm`, `--rm` and `--scorer` (the one place that knows them); `task`
/// picks the rule step checker of `--scorer rule`.
pub fn build_scorers(
    flags: &SearchFlags,
    model: &Path,
    task: Option<&str>,
) -> Result<LoadedScorers> {
    let mut out = LoadedScorers::default();
    // The cheap check first, before any scorer loads.
    let rule = match flags.scorer.as_deref() {
        Some("rule") => Some(rule_step_checker("--scorer rule", task)?),
        _ => None,
    };
    let mut prm: Option<Box<dyn StepScorer>> = None;
    if flags.prm.is_some() || flags.rm.is_some() {
        let (device, _) = device_and_dtype(&flags.device.device, None)?;
        if let Some(dir) = &flags.prm {
            prm = Some(
                open_step_scorer(dir, &device)
                    .with_context(|| format!("--prm {}", dir.display()))?,
            );
        }
        if let Some(dir) = &flags.rm {
            out.rm = Some(
                RewardModel::open(dir, &device)
                    .with_context(|| format!("--rm {}", dir.display()))?,
            );
        }
    }
    out.step = match (prm, rule) {
        (Some(p), Some(r)) => Some(Box::new(
            StepEnsemble::new(vec![p, r], Aggregate::Min).context("--prm with --scorer rule")?,
        )),
        (p, r) => p.or(r),
    };
    match flags.scorer.as_deref() {
        None | Some("rule") => {}
        Some("self-eval") => {
            let (device, _) = device_and_dtype(&flags.device.device, None)?;
            let judge = SelfEvaluator::open(model, &device, SelfEvalConfig::default())
                .with_context(|| {
                    format!(
                        "--scorer self-eval: loading {} as the judge",
                        model.display()
                    )
                })?;
            out.self_eval = Some(judge);
        }
        Some(other) => bail!(
            "--scorer {other}: expected one of {}",
            SCORER_NAMES.join(", ")
        ),
    }
    Ok(out)
}

#[derive(Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub model: ModelPath,
    /// The problem text the model continues (a newline is added if missing).
    #[arg(long)]
    pub problem: String,
    /// The strategy, e.g. greedy, sc@16, bon@8:min, beam:4x4, mcts:32 (an unknown name lists every form).
    #[arg(long, default_value = "greedy")]
    pub strategy: String,
    /// The built-in task the problem comes from (picks GoT's graph and the rule of `--scorer rule`).
    #[arg(long)]
    pub task: Option<String>,
    /// Where to write the search trace as JSONL.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    #[command(flatten)]
    pub flags: SearchFlags,
}

pub fn search(a: SearchArgs) -> Result<()> {
    // Everything a user typed is checked before the (slow) model load.
    let strategy = parse_strategy(&a.strategy, a.task.as_deref()).context("--strategy")?;
    let config = a.flags.config()?;
    let budget = a.flags.budget()?;
    if a.flags.scorer.as_deref() == Some("rule") {
        rule_step_checker("--scorer rule", a.task.as_deref())?;
    }
    let generator = a.flags.generator(a.model.path())?;
    let loaded = build_scorers(&a.flags, a.model.path(), a.task.as_deref())?;
    let encoder = TokenizerEncoder {
        tokenizer: generator.tokenizer(),
        add_special_tokens: true,
    };
    let mut prompt = a.problem.clone();
    if !prompt.ends_with('\n') {
        prompt.push('\n');
    }
    let mut ctx = SearchContext::new(
        generator.backend(),
        &encoder,
        loaded.scorers(),
        config,
        budget,
    );
    let sol = solve(strategy.as_ref(), &SearchProblem::new(prompt), &mut ctx)?;
    println!("{}", sol.trace.render());
    println!("strategy: {}", sol.strategy);
    println!("answer: {}", sol.answer.as_deref().unwrap_or("(none)"));
    if let Some(s) = sol.score {
        println!("score: {s:.4}");
    }
    let c = sol.cost;
    println!(
        "cost: {} generated tokens, {} prompt tokens, {} model calls, {} scorer calls, {:.2} s{}",
        c.generated_tokens,
        c.prompt_tokens,
        c.model_calls,
        c.scorer_calls,
        c.wall_s,
        if sol.budget_cut {
            " (budget reached)"
        } else {
            ""
        }
    );
    if let Some(path) = &a.trace {
        tempering_tasks::write_jsonl(path, &sol.trace.nodes)
            .with_context(|| format!("--trace {}", path.display()))?;
        println!("trace: {}", path.display());
    }
    Ok(())
}
