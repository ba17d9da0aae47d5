//! `temper demo`: the whole pipeline on the embedded default, composed from the public commands
//! exactly as a user would type them (each stage is a `temper` command line run in-process):
//! seeded task data, the tiny model trained from scratch (SFT; or, with `--model smollm2` or a
//! path, LoRA on a pretrained model, merged between stages), an implicit PRM (a verifier language
//! model scoring the policy's steps, calibrated on the policy's outcome-labelled solutions), GRPO with the task's verifier (with and without replay against forgetting),
//! optionally a reward-hacking run against a gameable proxy, then test-time strategies on the
//! held-out test split. Every accuracy comes with its problem count and a 95% interval. It ends
//! with one table and a self-contained HTML report. Holds no algorithm of its own.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use tempering_tasks::{generate, records, task_by_name, write_jsonl, GenerateSpec, Split, Task};

use super::demo_report::{self, EvalSummary, Report, RetainRow, RunMetrics};

mod results;
mod setup;

pub(crate) use results::ResultLine;
use results::{read_metrics, read_results};
use setup::{prepare_output, BaseModel, Cmd, Plan, HACKABLE_PROXY, LORA_FLAGS};

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// The built-in task (default: arithmetic for the tiny model and --fast; countdown level 4 for
    /// a pretrained one, where SmolLM2's SFT model leaves room for RL: arithmetic it already solves).
    #[arg(long)]
    pub task: Option<String>,
    /// The task level (default: 4 for a pretrained model's default countdown, else the task's
    /// default; level 1 with --fast).
    #[arg(long)]
    pub level: Option<u32>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The directory everything is written to (replaced if it holds an earlier demo).
    #[arg(long, default_value = "runs/demo")]
    pub output: PathBuf,
    /// The one-minute version (smaller stages; what the test suite runs).
    #[arg(long)]
    pub fast: bool,
    /// Also train against a deliberately gameable proxy reward (an even final answer) beside the
    /// held-out verifier: the proxy rises, the verifier falls and the guard says so; then the
    /// same proxy with a KL anchor to the SFT model.
    #[arg(long)]
    pub hacking: bool,
    /// `tiny` (a 0.8M-parameter decoder trained from scratch, full fine-tuning), `smollm2`
    /// (SmolLM2-135M-Instruct from `scripts/fetch-smollm2.sh`, LoRA), or a path to an HF directory
    /// or GGUF file of a pretrained model (LoRA, like smollm2).
    #[arg(long, default_value = "tiny")]
    pub model: String,
}

/// What the stages share.
struct Demo {
    args: DemoArgs,
    task: Box<dyn Task>,
    level: u32,
    base: BaseModel,
    plan: Plan,
    out: PathBuf,
    data: PathBuf,
    timings: Vec<(String, f64)>,
}

/// The data files of stage 1.
struct DataFiles {
    test: PathBuf,
    /// The neighbouring level: SFT learns it beside the main one, RL never trains on it.
    retain_level: u32,
    retain: PathBuf,
    replay: PathBuf,
}

/// Stage 3's results: the PRM directory search reads, its held-out AUCs, and what its verifier
/// model solves alone.
struct PrmStage {
    model: PathBuf,
    auc: Option<demo_report::PrmAuc>,
    verifier_greedy: Option<demo_report::VerifierRow>,
}

/// A trained RL policy: its run directory and the model directory the evaluations read.
struct RlRun {
    name: &'static str,
    run: PathBuf,
    model: PathBuf,
}

impl Demo {
    fn lora(&self) -> bool {
        matches!(self.base, BaseModel::Pretrained(_))
    }

    fn timed<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let out = f(self)?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("  {name}: {secs:.1} s");
        self.timings.push((name.to_string(), secs));
        Ok(out)
    }

    fn generate(
        &self,
        level: u32,
        n: usize,
        split: Split,
        seed: u64,
        unique: bool,
    ) -> Result<Vec<tempering_tasks::Problem>> {
        Ok(generate(
            self.task.as_ref(),
            &GenerateSpec {
                level,
                n,
                seed,
                split,
                unique,
            },
        )?)
    }

    /// Distinct held-out problems: as many as asked, or every one the split has.
    fn distinct(
        &self,
        level: u32,
        n: usize,
        split: Split,
        seed: u64,
    ) -> Result<Vec<tempering_tasks::Problem>> {
        match self.generate(level, n, split, seed, true) {
            Ok(p) => Ok(p),
            Err(_) => {
                // A small split: take what it has (duplicates dropped).
                let mut all = self.generate(level, n * 4, split, seed, false)?;
                let mut seen = std::collections::BTreeSet::new();
                all.retain(|p| seen.insert(p.prompt.clone()));
                Ok(all)
            }
        }
    }

    /// 1. Seeded data: the held-out test split (distinct problems); a retain set of the easiest
    ///    level (what the model should not forget while RL pushes on the hardest level) and its
    ///    train-split twin, replayed against forgetting.
    fn data(&mut self) -> Result<DataFiles> {
        let seed = self.args.seed;
        eprintln!(
            "[1/7] data: {} level {}, seed {seed}",
            self.task.name(),
            self.level
        );
        let test = self.distinct(self.level, self.plan.test_problems, Split::Test, seed)?;
        let test_path = self.data.join("test.jsonl");
        write_jsonl(&test_path, &records(&test, seed))?;
        // The neighbouring level: RL never trains on it.
        let levels = self.task.levels();
        let retain_level = if self.level > *levels.start() {
            self.level - 1
        } else {
            (self.level + 1).min(*levels.end())
        };
        let retain = self.distinct(
            retain_level,
            self.plan.retain_problems,
            Split::Test,
            seed + 7,
        )?;
        let retain_path = self.data.join("retain.jsonl");
        write_jsonl(&retain_path, &records(&retain, seed + 7))?;
        let replay = self.generate(retain_level, 2000, Split::Train, seed + 8, false)?;
        let replay_path = self.data.join("replay.jsonl");
        write_jsonl(&replay_path, &records(&replay, seed + 8))?;
        Ok(DataFiles {
            test: test_path,
            retain_level,
            retain: retain_path,
            replay: replay_path,
        })
    }

    /// 2. SFT on worked solutions: the tiny model from scratch, or LoRA on a pretrained model
    ///    (then merged, so that every later stage reads one ordinary HF directory).
    fn sft(&mut self, data: &DataFiles) -> Result<PathBuf> {
        let sft = self.out.join("sft");
        let a = &self.args;
        match &self.base {
            BaseModel::Tiny => {
                eprintln!(
                    "[2/7] SFT: the tiny model from scratch (level {}, with {}% of level {}: the \
                     retain set's)",
                    self.level,
                    (self.plan.sft_mix_fraction * 100.0).round(),
                    data.retain_level
                );
                Cmd::new(&["tasks", "train-tiny", self.task.name()])
                    .arg("--level", self.level)
                    .arg("--mix-levels", data.retain_level)
                    .arg("--mix-fraction", self.plan.sft_mix_fraction)
                    .arg("--steps", self.plan.sft_steps)
                    .arg("--train-problems", self.plan.sft_problems)
                    .arg("--seed", a.seed)
                    .arg("--eval-problems", 0)
                    .path("--output", &sft)
                    .path("--run-dir", &self.out.join("runs/sft"))
                    .run()?;
            }
            BaseModel::Pretrained(model) => {
                eprintln!("[2/7] SFT: LoRA on {}", model.display());
                let train_path = self.data.join("train.jsonl");
                Cmd::new(&["tasks", "generate", self.task.name()])
                    .arg("--level", self.level)
                    .arg("--n", self.plan.sft_problems)
                    .arg("--seed", a.seed)
                    .arg("--split", "train")
                    .words(["--allow-duplicates"])
                    .path("--output", &train_path)
                    .run()?;
                let sft_run = self.out.join("runs/sft");
                Cmd::new(&["sft"])
                    .path("--model", model)
                    .path("--data", &train_path)
                    .arg("--max-steps", self.plan.sft_steps)
                    .arg("--batch-size", 8)
                    .arg("--learning-rate", 1e-3)
                    .arg("--seed", a.seed)
                    .words(["--quiet"])
                    .path("--output", &sft_run)
                    .words(LORA_FLAGS)
                    .run()?;
                Cmd::new(&["merge"])
                    .words([model.display().to_string()])
                    .words([
                        sft_run.join("adapter").display().to_string(),
                        sft.display().to_string(),
                    ])
                    .run()?;
            }
        }
        Ok(sft)
    }

    /// 3. The learned PRM, an implicit PRM (Yuan et al. 2024): a language model that knows more
    ///    of the task than the policy (the SFT model trained further on worked solutions, where
    ///    the plan affords it) scores each step by how much likelier it finds the solution so far
    ///    than the policy does, calibrated on the policy's own outcome-labelled solutions. Its AUCs
    ///    on held-out problems' solutions, labelled exactly by the task's rule step checker where
    ///    it has one (else by rollouts), and the verifier model's own greedy accuracy.
    fn prm(&mut self, sft: &Path, data: &DataFiles) -> Result<PrmStage> {
        let a = &self.args;
        let p = &self.plan;
        let verifier = if p.verifier_steps > 0 {
            eprintln!(
                "[3/7] PRM: the verifier's language model: the SFT model trained {} steps further \
                 on worked solutions",
                p.verifier_steps
            );
            let worked = self.data.join("verifier-train.jsonl");
            Cmd::new(&["tasks", "generate", self.task.name()])
                .arg("--level", self.level)
                .arg("--n", p.sft_problems)
                .arg("--seed", a.seed + 9)
                .arg("--split", "train")
                .words(["--allow-duplicates"])
                .path("--output", &worked)
                .run()?;
            let run = self.out.join("runs/verifier");
            Cmd::new(&["sft"])
                .path("--model", sft)
                .path("--data", &worked)
                .arg("--max-steps", p.verifier_steps)
                .arg("--batch-size", 32)
                .arg("--learning-rate", p.verifier_lr)
                .arg("--lr-scheduler", "cosine")
                .arg("--seed", a.seed)
                .words(["--quiet"])
                .path("--output", &run)
                .run()?;
            Some(run.join("model"))
        } else {
            None
        };
        eprintln!("[3/7] PRM: the policy's solutions labelled by their answers, then train");
        let steps = self.data.join("steps.jsonl");
        Cmd::new(&["label-steps"])
            .path("--policy", sft)
            .arg("--task", self.task.name())
            .arg("--level", self.level)
            .arg("--split", "train")
            .arg("--n", p.label_problems)
            .arg("--samples", p.label_samples)
            .arg("--labels", "outcome")
            .arg("--max-new-tokens", p.max_new_tokens)
            .arg("--batch-rows", p.batch_rows)
            .arg("--seed", a.seed)
            .path("--output", &steps)
            .run()?;
        let heldout = self.data.join("steps-heldout.jsonl");
        // Rule labels cost no rollouts: the held-out check can afford more problems.
        let rule = self.task.name() == "arithmetic";
        let mut c = Cmd::new(&["label-steps"])
            .path("--policy", sft)
            .arg("--task", self.task.name())
            .arg("--level", self.level)
            .arg("--split", "test")
            .arg("--n", if rule { p.test_problems / 2 } else { 16 })
            .arg("--samples", 4)
            .arg("--max-new-tokens", p.max_new_tokens)
            .arg("--batch-rows", p.batch_rows)
            .arg("--seed", a.seed + 1)
            .path("--output", &heldout);
        c = if rule {
            c.arg("--labels", "rule")
        } else {
            // A step is good when most rollouts from it reach the answer (Math-Shepherd's soft
            // estimate).
            c.arg("--rollouts", 8).arg("--threshold", 0.5)
        };
        c.run()?;
        let prm_run = self.out.join("runs/prm");
        let mut c = Cmd::new(&["prm"])
            .words(["--implicit"])
            .arg("--beta", p.prm_beta)
            .path("--model", verifier.as_deref().unwrap_or(sft))
            .path("--data", &steps)
            .arg("--max-steps", p.prm_steps)
            .arg("--learning-rate", p.prm_lr)
            .arg("--batch-size", 16)
            .arg("--seed", a.seed)
            .words(["--quiet"])
            .path("--output", &prm_run);
        if verifier.is_some() {
            c = c.path("--reference", sft);
        }
        c.run()?;
        let prm = prm_run.join("model");
        let scored = self.data.join("steps-heldout-scored.jsonl");
        Cmd::new(&["score"])
            .words([prm.display().to_string()])
            .path("--data", &heldout)
            .path("--output", &scored)
            .run()?;
        // What the verifier's language model solves by itself, for the report's honesty.
        let verifier_greedy = match &verifier {
            Some(v) => {
                let dir = self.out.join("eval/verifier");
                Cmd::new(&["eval"])
                    .words([v.display().to_string()])
                    .path("--data", &data.test)
                    .arg("--strategies", "greedy")
                    .arg("--max-new-tokens", p.max_new_tokens)
                    .arg("--batch-rows", p.batch_rows)
                    .arg("--seed", a.seed)
                    .path("--output", &dir)
                    .run()?;
                let results = read_results(&dir)?;
                Some(demo_report::VerifierRow {
                    extra_steps: p.verifier_steps,
                    correct: results.iter().filter(|r| r.correct).count(),
                    n: results.len(),
                })
            }
            None => None,
        };
        Ok(PrmStage {
            model: prm,
            auc: demo_report::prm_auc(&scored).ok(),
            verifier_greedy,
        })
    }

    /// 4. GRPO with the task's verifier as reward; math_answer (an independent answer checker)
    ///    is the held-out verifier of the hacking monitor; the retain set watches forgetting.
    fn grpo(
        &mut self,
        name: &'static str,
        sft: &Path,
        data: &DataFiles,
        replay: bool,
    ) -> Result<RlRun> {
        let run = self.out.join(format!("runs/{name}"));
        let a = &self.args;
        let p = &self.plan;
        let mut c = Cmd::new(&["grpo"])
            .path("--model", sft)
            .arg("--task", self.task.name())
            .arg("--level", self.level)
            .arg("--num-prompts", p.grpo_num_prompts)
            .arg("--reward", "task_verifier")
            .arg("--num-generations", p.grpo_generations)
            .arg("--prompts-per-step", p.grpo_prompts)
            .arg("--steps", p.grpo_steps)
            .arg("--micro-batch-size", p.grpo_micro_batch)
            .arg("--learning-rate", p.grpo_lr)
            .arg("--temperature", p.grpo_temperature)
            .arg("--loss-type", "dapo")
            .arg("--beta", 0)
            .arg("--dynamic-sampling-rounds", p.grpo_dynamic_rounds)
            .arg("--max-completion-length", p.max_new_tokens)
            .path("--retain-data", &data.retain)
            .arg("--retain-every", (p.grpo_steps / 4).max(1))
            .arg("--log-rollouts-every", 5)
            .arg("--seed", a.seed)
            .words(["--quiet"])
            .path("--output", &run);
        // math_answer compares final answers by value: an independent check of arithmetic and
        // base conversion, but countdown has many right expressions, which only its own verifier
        // accepts.
        if self.task.name() != "countdown" {
            c = c.arg("--verifier", "math_answer");
        }
        if replay {
            c = c
                .path("--replay-data", &data.replay)
                .arg("--replay-coef", 0.1);
        }
        if self.lora() {
            c = c.words(LORA_FLAGS);
        }
        c.run()?;
        let model = if self.lora() {
            let merged = self.out.join(name);
            Cmd::new(&["merge"])
                .words([
                    sft.display().to_string(),
                    run.join("adapter").display().to_string(),
                    merged.display().to_string(),
                ])
                .run()?;
            merged
        } else {
            run.join("model")
        };
        Ok(RlRun { name, run, model })
    }

    /// The hacking stage: a proxy that looks only at a surface property of the answer (an even
    /// last digit, which a wrong answer earns as well as a right one) beside the held-out
    /// verifier, then the same proxy anchored by a KL penalty to the SFT model.
    fn hacking(&mut self, sft: &Path) -> Result<RunMetrics> {
        eprintln!(
            "[hacking] GRPO against a gameable proxy (an even answer), then with a KL anchor"
        );
        let a = &self.args;
        let mut runs = Vec::new();
        for (name, beta) in [("hack-proxy", 0.0), ("hack-kl", 1.0)] {
            let run = self.out.join(format!("runs/{name}"));
            let mut c = Cmd::new(&["grpo"])
                .path("--model", sft)
                .arg("--task", self.task.name())
                .arg("--level", self.level)
                .arg("--num-prompts", self.plan.grpo_num_prompts)
                .arg("--reward", HACKABLE_PROXY)
                .arg("--verifier", "task_verifier")
                .arg("--num-generations", 8)
                .arg("--prompts-per-step", 8)
                .arg("--steps", self.plan.hacking_steps)
                .arg("--micro-batch-size", self.plan.grpo_micro_batch)
                .arg("--learning-rate", 1e-4)
                .arg("--beta", beta)
                .arg("--max-completion-length", self.plan.max_new_tokens)
                .arg("--hacking-window", 6)
                .arg("--log-rollouts-every", 0)
                .arg("--seed", a.seed)
                .words(["--quiet"])
                .path("--output", &run);
            if self.lora() {
                c = c.words(LORA_FLAGS);
            }
            c.run()?;
            runs.push((name.to_string(), read_metrics(&run.join("metrics.jsonl"))?));
        }
        Ok(runs)
    }

    /// 5. Test-time strategies on the held-out test split: once with the learned PRM scoring
    ///    steps, once with the task's rule step checker (no reference answer, a process verifier).
    fn search(
        &mut self,
        models: &[(&str, &Path)],
        data: &DataFiles,
        prm: Option<&Path>,
    ) -> Result<Vec<EvalSummary>> {
        eprintln!(
            "[5/7] test-time search on {} held-out problems",
            self.plan.test_problems
        );
        // Sampled pass@1 and pass@k come from the voting strategies' candidates.
        let mut voting = vec!["greedy".to_string()];
        let mut scored = Vec::new();
        for n in &self.plan.budgets {
            voting.push(format!("sc@{n}"));
            scored.push(format!("bon@{n}:min"));
        }
        if self.plan.adaptive {
            voting.push(format!(
                "adaptive@{}",
                self.plan.budgets.iter().max().copied().unwrap_or(4)
            ));
        }
        scored.extend(self.plan.beams.iter().map(|b| b.to_string()));
        let mut out = Vec::new();
        for (name, model) in models {
            let mut rows = Vec::new();
            let prm_flags = prm.map(|p| vec!["--prm".to_string(), p.display().to_string()]);
            let rule_flags = vec!["--scorer".to_string(), "rule".to_string()];
            for (label, slug, strategies, scorer) in [
                ("", "", &voting, None),
                (" (PRM)", "-prm", &scored, prm_flags),
                (" (rule)", "-rule", &scored, Some(rule_flags)),
            ] {
                let skip = match slug {
                    "-prm" => prm.is_none(),
                    "-rule" => self.task.name() != "arithmetic",
                    _ => false,
                };
                if skip {
                    continue;
                }
                let dir = self.out.join(format!("eval/{name}{slug}"));
                Cmd::new(&["eval"])
                    .words([model.display().to_string()])
                    .path("--data", &data.test)
                    .arg("--strategies", strategies.join(","))
                    .words(scorer.unwrap_or_default())
                    .arg("--max-new-tokens", self.plan.max_new_tokens)
                    .arg("--batch-rows", self.plan.batch_rows)
                    .arg("--seed", self.args.seed)
                    .path("--output", &dir)
                    .run()?;
                rows.push((label.to_string(), read_results(&dir)?));
            }
            out.push(EvalSummary::new(name, &rows));
        }
        Ok(out)
    }

    /// 6. Forgetting: greedy accuracy on the retain set before and after RL.
    fn retain(&mut self, models: &[(&str, &Path)], data: &DataFiles) -> Result<Vec<RetainRow>> {
        eprintln!("[6/7] forgetting: greedy accuracy on the retain set");
        let mut rows = Vec::new();
        for (name, model) in models {
            let dir = self.out.join(format!("eval/retain-{name}"));
            Cmd::new(&["eval"])
                .words([model.display().to_string()])
                .path("--data", &data.retain)
                .arg("--strategies", "greedy")
                .arg("--max-new-tokens", self.plan.max_new_tokens)
                .arg("--batch-rows", self.plan.batch_rows)
                .arg("--seed", self.args.seed)
                .path("--output", &dir)
                .run()?;
            let results = read_results(&dir)?;
            rows.push(RetainRow {
                model: name.to_string(),
                correct: results.iter().filter(|r| r.correct).count(),
                n: results.len(),
            });
        }
        Ok(rows)
    }
}

pub fn demo(a: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let base = BaseModel::parse(&a.model)?;
    let pretrained = matches!(base, BaseModel::Pretrained(_));
    // The smoke run (--fast) stays on arithmetic, whose short answers SmolLM2 already writes (a
    // 10-step SFT model on base conversion never answered, so its beam searches ran to their
    // depth). A pretrained model's full run defaults to countdown level 4 (four numbers, 1,828 test
    // problems), where SmolLM2's SFT model leaves room: arithmetic it already solves.
    let (task_name, default_level) = match &a.task {
        Some(name) => (name.as_str(), None),
        None if pretrained && !a.fast => ("countdown", Some(4)),
        None => ("arithmetic", None),
    };
    let task = task_by_name(task_name)?;
    let level = a.level.or(default_level).unwrap_or(if a.fast {
        *task.levels().start()
    } else {
        task.default_level()
    });
    let plan = Plan::new(a.fast, pretrained);
    let out = a.output.clone();
    prepare_output(&out)?;
    let data_dir = out.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut d = Demo {
        args: a.clone(),
        task,
        level,
        base,
        plan,
        out: out.clone(),
        data: data_dir,
        timings: Vec::new(),
    };

    let data = d.timed("data", |d| d.data())?;
    let sft = d.timed("sft", |d| d.sft(&data))?;
    let prm = if d.plan.prm_steps > 0 {
        Some(d.timed("prm", |d| d.prm(&sft, &data))?)
    } else {
        eprintln!("[3/7] PRM: not in this plan (see Plan::prm_steps)");
        None
    };
    eprintln!("[4/7] GRPO: the task's verifier as reward, guards on");
    let grpo = d.timed("grpo", |d| d.grpo("grpo", &sft, &data, false))?;
    let replay = if d.plan.replay {
        eprintln!("[4/7] GRPO again, replaying retain-level solutions against forgetting");
        Some(d.timed("grpo-replay", |d| d.grpo("grpo-replay", &sft, &data, true))?)
    } else {
        None
    };
    let hacking = if a.hacking {
        Some(d.timed("hacking", |d| d.hacking(&sft))?)
    } else {
        None
    };
    let evals = d.timed("search", |d| {
        d.search(
            &[("sft", &sft), ("grpo", &grpo.model)],
            &data,
            prm.as_ref().map(|p| p.model.as_path()),
        )
    })?;
    let mut retain_models: Vec<(&str, &Path)> = vec![("sft", &sft), ("grpo", &grpo.model)];
    if let Some(r) = &replay {
        retain_models.push((r.name, &r.model));
    }
    let retain = d.timed("retain", |d| d.retain(&retain_models, &data))?;

    eprintln!("[7/7] report");
    let mut rl_metrics = vec![(
        grpo.name.to_string(),
        read_metrics(&grpo.run.join("metrics.jsonl"))?,
    )];
    if let Some(r) = &replay {
        rl_metrics.push((
            r.name.to_string(),
            read_metrics(&r.run.join("metrics.jsonl"))?,
        ));
    }
    let report = Report {
        task: d.task.name().to_string(),
        level,
        seed: a.seed,
        fast: a.fast,
        model: a.model.clone(),
        test_problems: evals.first().map_or(0, |e| e.problems()),
        evals,
        retain,
        prm_auc: prm.as_ref().and_then(|p| p.auc),
        verifier: prm.and_then(|p| p.verifier_greedy),
        rl_metrics,
        hacking,
        timings: d.timings.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    println!("\n{}", report.terminal());
    let html = report.html()?;
    let report_path = out.join("report.html");
    tempering_eval::error::write_atomic(&report_path, html.as_bytes())
        .with_context(|| format!("writing {}", report_path.display()))?;
    let record = report.record();
    tempering_eval::error::write_atomic(
        &out.join("demo.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", out.join("demo.json").display()))?;
    println!(
        "report: {}  ({:.0} s in all)",
        report_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
