//! `temper demo`: the whole pipeline on the embedded default, composed from the public commands
//! exactly as a user would type them (each stage is a `temper` command line run in-process):
//! seeded task data, the tiny model trained from scratch (SFT; or, with `--model smollm2` or a
//! path, LoRA on a pretrained model, merged between stages), a PRM trained on automatically
//! labelled steps, GRPO with the task's verifier and the KL, forgetting and hacking guards, then
//! test-time strategies at several budgets on the held-out test split. It ends with one table and
//! a self-contained HTML report. Holds no algorithm of its own.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{Map, Value};
use tempering_eval::curves::line_svg;
use tempering_tasks::{generate, records, task_by_name, write_jsonl, GenerateSpec, Split};

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// The built-in task.
    #[arg(long, default_value = "arithmetic")]
    pub task: String,
    /// The task level (default: the task's default, the hardest; level 1 with --fast).
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
    /// `tiny` (a 0.8M-parameter decoder trained from scratch, full fine-tuning), `smollm2`
    /// (SmolLM2-135M-Instruct from `scripts/fetch-smollm2.sh`, LoRA), or a path to an HF directory
    /// or GGUF file of a pretrained model (LoRA, like smollm2).
    #[arg(long, default_value = "tiny")]
    pub model: String,
}

/// Where the policy comes from.
enum BaseModel {
    /// Trained from scratch by `temper tasks train-tiny`; full fine-tuning throughout.
    Tiny,
    /// A pretrained model: SFT and GRPO train LoRA adapters that `temper merge` folds in.
    Pretrained(PathBuf),
}

impl BaseModel {
    fn parse(model: &str) -> Result<Self> {
        match model {
            "tiny" => Ok(BaseModel::Tiny),
            "smollm2" => tempering_model::known::smollm2_gguf()
                .map(BaseModel::Pretrained)
                .context(
                    "--model smollm2: the SmolLM2 GGUF is not here; run scripts/fetch-smollm2.sh \
                     (or set TEMPER_SMOLLM2 to the file)",
                ),
            path => {
                let p = PathBuf::from(path);
                if p.exists() {
                    Ok(BaseModel::Pretrained(p))
                } else {
                    bail!("--model {path}: expected tiny, smollm2, or an existing HF directory or GGUF file")
                }
            }
        }
    }
}

/// The LoRA flags of the pretrained-model pipeline's SFT and GRPO: rank 16 on every attention
/// projection.
fn lora_flags() -> Vec<String> {
    [
        "--lora-r",
        "16",
        "--lora-alpha",
        "32",
        "--lora-targets",
        "q,k,v,o",
    ]
    .map(String::from)
    .to_vec()
}

/// Sizes of each stage.
struct Plan {
    sft_steps: usize,
    sft_problems: usize,
    label_problems: usize,
    label_samples: usize,
    label_rollouts: usize,
    prm_steps: usize,
    /// Full fine-tuning of the PRM's backbone: a pretrained one wants small steps.
    prm_lr: f64,
    grpo_steps: usize,
    grpo_prompts: usize,
    grpo_generations: usize,
    grpo_lr: f64,
    test_problems: usize,
    /// The sample budgets of self-consistency and best-of-N.
    budgets: Vec<usize>,
    beams: Vec<&'static str>,
}

impl Plan {
    fn new(fast: bool, pretrained: bool) -> Self {
        if pretrained {
            // A 135M-parameter model on 2 CPU cores: every stage is small, and LoRA trains.
            // `--fast` is a smoke run of every stage, not a measurement.
            return Plan {
                sft_steps: if fast { 10 } else { 60 },
                sft_problems: 2000,
                label_problems: if fast { 4 } else { 16 },
                label_samples: 2,
                label_rollouts: 2,
                prm_steps: if fast { 2 } else { 30 },
                prm_lr: 2e-5,
                grpo_steps: if fast { 1 } else { 8 },
                grpo_prompts: 4,
                grpo_generations: 4,
                grpo_lr: 1e-4,
                test_problems: if fast { 3 } else { 40 },
                budgets: vec![if fast { 2 } else { 4 }],
                beams: vec!["beam:2x2"],
            };
        }
        if fast {
            Plan {
                sft_steps: 150,
                sft_problems: 4000,
                label_problems: 24,
                label_samples: 2,
                label_rollouts: 4,
                prm_steps: 40,
                prm_lr: 1e-3,
                grpo_steps: 6,
                grpo_prompts: 4,
                grpo_generations: 8,
                grpo_lr: 2e-5,
                test_problems: 40,
                budgets: vec![4, 8],
                beams: vec!["beam:2x2"],
            }
        } else {
            Plan {
                sft_steps: 600,
                sft_problems: 20_000,
                label_problems: 96,
                label_samples: 4,
                label_rollouts: 8,
                prm_steps: 200,
                prm_lr: 1e-3,
                grpo_steps: 40,
                grpo_prompts: 8,
                grpo_generations: 8,
                grpo_lr: 2e-5,
                test_problems: 150,
                budgets: vec![4, 16],
                beams: vec!["beam:2x2"],
            }
        }
    }
}

/// Runs one `temper` command line in this process.
fn temper(args: &[String]) -> Result<()> {
    eprintln!("  $ temper {}", args.join(" "));
    let mut full = vec!["temper".to_string()];
    full.extend(args.iter().cloned());
    crate::run_args(&full)
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

fn p(x: &Path) -> String {
    x.display().to_string()
}

/// A demo directory may be replaced; anything else in the way is refused.
fn prepare_output(out: &Path) -> Result<()> {
    if out.exists() {
        let marker = out.join("demo.json");
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        if !empty && !marker.is_file() {
            bail!(
                "{} exists and is not an earlier demo (no demo.json): choose another --output",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("demo.json"), "{\"status\": \"running\"}\n")
        .with_context(|| format!("writing {}", out.join("demo.json").display()))
}

/// One row of an evaluation's `table.csv`.
#[derive(Clone, Debug)]
struct EvalRow {
    strategy: String,
    family: String,
    accuracy: f64,
    mean_tokens: f64,
}

fn read_table(dir: &Path) -> Result<Vec<EvalRow>> {
    let path = dir.join("table.csv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').map(|x| x.trim_matches('"')).collect();
        let num = |k: usize| -> Result<f64> {
            f.get(k).and_then(|x| x.parse().ok()).with_context(|| {
                format!("{}:{}: column {k} is not a number", path.display(), i + 1)
            })
        };
        rows.push(EvalRow {
            strategy: f.first().map(|x| x.to_string()).unwrap_or_default(),
            family: f.get(1).map(|x| x.to_string()).unwrap_or_default(),
            accuracy: num(3)?,
            mean_tokens: num(4)?,
        });
    }
    Ok(rows)
}

fn read_metrics(path: &Path) -> Result<Vec<Map<String, Value>>> {
    tempering_train::metrics::read(path).with_context(|| format!("reading {}", path.display()))
}

fn series(recs: &[Map<String, Value>], x: &str, key: &str) -> Vec<(f64, f64)> {
    recs.iter()
        .filter_map(|r| Some((r.get(x)?.as_f64()?, r.get(key)?.as_f64()?)))
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn svg_body(svg: &str) -> &str {
    svg.find("<svg").map_or(svg, |i| &svg[i..])
}

pub fn demo(a: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let task = task_by_name(&a.task)?;
    let level = match (a.level, a.fast) {
        (Some(l), _) => l,
        (None, true) => *task.levels().start(),
        (None, false) => task.default_level(),
    };
    let base = BaseModel::parse(&a.model)?;
    let lora = matches!(base, BaseModel::Pretrained(_));
    let plan = Plan::new(a.fast, lora);
    let out = a.output.clone();
    prepare_output(&out)?;
    let data = out.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let mut timings: Vec<(&str, f64)> = Vec::new();
    let mut stage = |name: &'static str, t: Instant| {
        let secs = t.elapsed().as_secs_f64();
        eprintln!("  {name}: {secs:.1} s");
        timings.push((name, secs));
    };

    // 1. Seeded data: the held-out test split, and a retain set of easier problems (what the
    //    model should not forget while RL pushes on the hardest level).
    eprintln!("[1/6] data: {} level {level}, seed {}", a.task, a.seed);
    let t = Instant::now();
    let gen = |lvl: u32, n: usize, split: Split, seed: u64| {
        generate(
            task.as_ref(),
            &GenerateSpec {
                level: lvl,
                n,
                seed,
                split,
                unique: false,
            },
        )
    };
    let test = gen(level, plan.test_problems, Split::Test, a.seed)?;
    let test_path = data.join("test.jsonl");
    write_jsonl(&test_path, &records(&test, a.seed))?;
    let retain_level = (*task.levels().start()).max(level.saturating_sub(1));
    let retain = gen(retain_level, 64, Split::Test, a.seed + 7)?;
    let retain_path = data.join("retain.jsonl");
    write_jsonl(&retain_path, &records(&retain, a.seed + 7))?;
    stage("data", t);

    // 2. SFT on worked solutions: the tiny model from scratch, or LoRA on a pretrained model
    //    (then merged, so that every later stage reads one ordinary HF directory).
    let t = Instant::now();
    let sft = out.join("sft");
    match &base {
        BaseModel::Tiny => {
            eprintln!("[2/6] SFT: the tiny model from scratch");
            temper(&[
                s("tasks"),
                s("train-tiny"),
                a.task.clone(),
                s("--level"),
                s(level),
                s("--steps"),
                s(plan.sft_steps),
                s("--train-problems"),
                s(plan.sft_problems),
                s("--seed"),
                s(a.seed),
                s("--eval-problems"),
                s(0),
                s("--output"),
                p(&sft),
                s("--run-dir"),
                p(&out.join("runs/sft")),
            ])?;
        }
        BaseModel::Pretrained(model) => {
            eprintln!("[2/6] SFT: LoRA on {}", model.display());
            let train_path = data.join("train.jsonl");
            temper(&[
                s("tasks"),
                s("generate"),
                a.task.clone(),
                s("--level"),
                s(level),
                s("--n"),
                s(plan.sft_problems),
                s("--seed"),
                s(a.seed),
                s("--split"),
                s("train"),
                s("--allow-duplicates"),
                s("--output"),
                p(&train_path),
            ])?;
            let sft_run = out.join("runs/sft");
            let mut sft_args = vec![
                s("sft"),
                s("--model"),
                p(model),
                s("--data"),
                p(&train_path),
                s("--max-steps"),
                s(plan.sft_steps),
                s("--batch-size"),
                s(8),
                s("--learning-rate"),
                s(1e-3),
                s("--seed"),
                s(a.seed),
                s("--quiet"),
                s("--output"),
                p(&sft_run),
            ];
            sft_args.extend(lora_flags());
            temper(&sft_args)?;
            temper(&[s("merge"), p(model), p(&sft_run.join("adapter")), p(&sft)])?;
        }
    }
    stage("sft", t);

    // 3. A PRM from automatically labelled steps (Math-Shepherd rollouts from the SFT policy).
    eprintln!("[3/6] PRM: label steps by rollouts, then train");
    let t = Instant::now();
    let steps_path = data.join("steps.jsonl");
    temper(&[
        s("label-steps"),
        s("--policy"),
        p(&sft),
        s("--task"),
        a.task.clone(),
        s("--level"),
        s(level),
        s("--n"),
        s(plan.label_problems),
        s("--samples"),
        s(plan.label_samples),
        s("--rollouts"),
        s(plan.label_rollouts),
        s("--max-new-tokens"),
        s(64),
        s("--seed"),
        s(a.seed),
        s("--balance"),
        s("--output"),
        p(&steps_path),
    ])?;
    let prm_run = out.join("runs/prm");
    temper(&[
        s("prm"),
        s("--model"),
        p(&sft),
        s("--data"),
        p(&steps_path),
        s("--max-steps"),
        s(plan.prm_steps),
        s("--learning-rate"),
        s(plan.prm_lr),
        s("--batch-size"),
        s(16),
        s("--seed"),
        s(a.seed),
        s("--quiet"),
        s("--output"),
        p(&prm_run),
    ])?;
    let prm = prm_run.join("model");
    stage("prm", t);

    // 4. GRPO with the task's verifier; math_answer (an independent answer checker) is the held-out
    //    verifier of the hacking monitor; the retain set watches forgetting.
    eprintln!("[4/6] GRPO: the task's verifier as reward, guards on");
    let t = Instant::now();
    let grpo_run = out.join("runs/grpo");
    let mut grpo_args = vec![
        s("grpo"),
        s("--model"),
        p(&sft),
        s("--task"),
        a.task.clone(),
        s("--level"),
        s(level),
        s("--reward"),
        s("task_verifier"),
        s("--num-generations"),
        s(plan.grpo_generations),
        s("--prompts-per-step"),
        s(plan.grpo_prompts),
        s("--steps"),
        s(plan.grpo_steps),
        s("--micro-batch-size"),
        s(64),
        s("--learning-rate"),
        s(plan.grpo_lr),
        s("--beta"),
        s(0.04),
        s("--max-completion-length"),
        s(64),
        s("--retain-data"),
        p(&retain_path),
        s("--retain-every"),
        s((plan.grpo_steps / 4).max(1)),
        s("--log-rollouts-every"),
        s(5),
        s("--seed"),
        s(a.seed),
        s("--quiet"),
        s("--output"),
        p(&grpo_run),
    ];
    // math_answer compares final answers by value: an independent check of arithmetic and base
    // conversion, but countdown has many right expressions, which only its own verifier accepts.
    if a.task != "countdown" {
        grpo_args.extend([s("--verifier"), s("math_answer")]);
    }
    if lora {
        grpo_args.extend(lora_flags());
    }
    temper(&grpo_args)?;
    let rl_model = if lora {
        let merged = out.join("grpo");
        temper(&[
            s("merge"),
            p(&sft),
            p(&grpo_run.join("adapter")),
            p(&merged),
        ])?;
        merged
    } else {
        grpo_run.join("model")
    };
    stage("grpo", t);

    // 5. Test-time strategies at a few budgets on the test split, for the SFT and the RL policy.
    eprintln!(
        "[5/6] test-time search on {} held-out problems",
        plan.test_problems
    );
    let t = Instant::now();
    let mut strategies = vec![s("greedy")];
    for n in &plan.budgets {
        strategies.push(format!("sc@{n}"));
        strategies.push(format!("bon@{n}:min"));
    }
    strategies.extend(plan.beams.iter().map(|b| b.to_string()));
    let strategies = strategies.join(",");
    let mut evals = Vec::new();
    for (name, model) in [("sft", &sft), ("grpo", &rl_model)] {
        let dir = out.join(format!("eval/{name}"));
        temper(&[
            s("eval"),
            p(model),
            s("--data"),
            p(&test_path),
            s("--strategies"),
            strategies.clone(),
            s("--prm"),
            p(&prm),
            s("--max-new-tokens"),
            s(64),
            s("--seed"),
            s(a.seed),
            s("--output"),
            p(&dir),
        ])?;
        evals.push((name, read_table(&dir)?, dir));
    }
    stage("search", t);

    // 6. The table and the report.
    eprintln!("[6/6] report");
    let grpo = read_metrics(&grpo_run.join("metrics.jsonl"))?;
    let last = |k: &str| grpo.iter().rev().find_map(|r| r.get(k)?.as_f64());
    let first = |k: &str| grpo.iter().find_map(|r| r.get(k)?.as_f64());
    let kl = last("kl").unwrap_or(f64::NAN);
    let retain_before = first("retain_loss").unwrap_or(f64::NAN);
    let retain_after = last("retain_loss").unwrap_or(f64::NAN);
    let warnings: Vec<String> = grpo
        .iter()
        .flat_map(|r| r.keys().filter(|k| k.starts_with("warning/")).cloned())
        .collect();

    let mut table = String::from(
        "| stage | strategy | accuracy | mean generated tokens |\n| --- | --- | ---: | ---: |\n",
    );
    for (name, rows, _) in &evals {
        for r in rows {
            table.push_str(&format!(
                "| {name} | {} | {:.1}% | {:.1} |\n",
                r.strategy,
                100.0 * r.accuracy,
                r.mean_tokens
            ));
        }
    }
    let sft_greedy = evals[0]
        .1
        .iter()
        .find(|r| r.strategy == "greedy")
        .map_or(0.0, |r| r.accuracy);
    let rl_greedy = evals[1]
        .1
        .iter()
        .find(|r| r.strategy == "greedy")
        .map_or(0.0, |r| r.accuracy);
    let best = evals[1]
        .1
        .iter()
        .max_by(|x, y| x.accuracy.total_cmp(&y.accuracy))
        .cloned()
        .context("the evaluation produced no rows")?;
    let summary = format!(
        "SFT greedy {:.1}% -> GRPO greedy {:.1}% -> best after GRPO and search {:.1}% ({}, {:.0} tokens/problem)\n\
         KL to the SFT model (per token, last batch): {kl:.4}\n\
         retain-set loss before RL {retain_before:.4}, after {retain_after:.4}\n\
         guard warnings: {}\n",
        100.0 * sft_greedy,
        100.0 * rl_greedy,
        100.0 * best.accuracy,
        best.strategy,
        best.mean_tokens,
        if warnings.is_empty() {
            "none".to_string()
        } else {
            warnings.join(", ")
        }
    );
    println!("\n{table}\n{summary}");

    let reward = line_svg(
        "GRPO training reward",
        "rollout batch",
        &[
            (
                s("reward (task_verifier)"),
                series(&grpo, "rollout_step", "reward"),
            ),
            (
                s("held-out verifier (math_answer)"),
                series(&grpo, "rollout_step", "verifier_reward"),
            ),
        ],
    )?;
    let kl_svg = line_svg(
        "KL to the SFT model and retain loss",
        "rollout batch",
        &[
            (s("KL (per token)"), series(&grpo, "rollout_step", "kl")),
            (s("retain loss"), series(&grpo, "step", "retain_loss")),
        ],
    )?;
    let mut acc_series = Vec::new();
    for (name, rows, _) in &evals {
        let mut fams: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for r in rows {
            let key = format!("{name} {}", r.family);
            let pt = (r.mean_tokens.max(1.0).ln(), 100.0 * r.accuracy);
            match fams.iter_mut().find(|f| f.0 == key) {
                Some(f) => f.1.push(pt),
                None => fams.push((key, vec![pt])),
            }
        }
        for f in &mut fams {
            f.1.sort_by(|x, y| x.0.total_cmp(&y.0));
        }
        acc_series.extend(fams);
    }
    let acc_svg = line_svg(
        "Accuracy (%) against compute",
        "ln(mean generated tokens per problem)",
        &acc_series,
    )?;
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>temper demo</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:900px}}pre{{background:#f4f4f4;padding:1em}}</style></head>\n\
         <body><h1>temper demo: {task} level {level}</h1>\n<p>seed {seed}{fast}; {secs:.0} s on this machine.</p>\n\
         <h2>Results</h2>\n<pre>{table}</pre>\n<pre>{summary}</pre>\n\
         <h2>Training reward</h2>\n{reward}\n<h2>KL and forgetting</h2>\n{kl}\n\
         <h2>Accuracy against compute</h2>\n{acc}\n</body></html>\n",
        task = escape(&a.task),
        seed = a.seed,
        fast = if a.fast { ", --fast" } else { "" },
        secs = started.elapsed().as_secs_f64(),
        table = escape(&table),
        summary = escape(&summary),
        reward = svg_body(&reward),
        kl = svg_body(&kl_svg),
        acc = svg_body(&acc_svg),
    );
    let report = out.join("report.html");
    let tmp = out.join(".report.html.tmp");
    std::fs::write(&tmp, html).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &report).with_context(|| format!("writing {}", report.display()))?;
    stage("report", Instant::now());
    let record = serde_json::json!({
        "status": "done",
        "task": a.task,
        "level": level,
        "seed": a.seed,
        "fast": a.fast,
        "model": a.model,
        "sft_greedy_accuracy": sft_greedy,
        "grpo_greedy_accuracy": rl_greedy,
        "best_accuracy": best.accuracy,
        "best_strategy": best.strategy,
        "kl": kl,
        "retain_loss_before": retain_before,
        "retain_loss_after": retain_after,
        "warnings": warnings,
        "seconds": started.elapsed().as_secs_f64(),
        "stage_seconds": timings.iter().map(|(n, t)| (n.to_string(), serde_json::json!(t))).collect::<Map<String, Value>>(),
    });
    std::fs::write(
        out.join("demo.json"),
        serde_json::to_string_pretty(&record)?,
    )
    .with_context(|| format!("writing {}", out.join("demo.json").display()))?;
    println!(
        "report: {}  ({:.0} s in all)",
        report.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
