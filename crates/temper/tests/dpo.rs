//! DPO end to end on a built-in task, CI-sized and seeded: the committed tiny SFT model, pairs of the
//! worked solution against its wrong greedy answer on the distinct training problems, `temper dpo`,
//! and a check that greedy accuracy on those problems does not fall (the gain is asserted by the
//! library's test, `tempering-train/tests/rl_gain.rs`; see the README for why not the test split).
//! Then `temper dpo-rewards` on the run, resume of a preference run, `temper kto`, and bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use tempering_generate::{
    Backend, Completion, FinishReason, GenRequest, LocalEngine, SamplingParams,
};
use tempering_model::{ModelFiles, Tokenizer};
use tempering_tasks::{generate, task_by_name, GenerateSpec, Problem, Split, Verdict};

mod common;

use common::temper;

/// A measurement override from the environment (README, "Preference optimisation").
fn knob(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// Runs the command, asserts it succeeded and returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&common::run_ok(cmd).stdout).to_string()
}

/// The training problems the pairs come from: the distinct ones among 400 seeded draws (level 1 has
/// about 190).
fn train_problems() -> Vec<Problem> {
    let task = task_by_name("arithmetic").unwrap();
    let mut seen = std::collections::HashSet::new();
    generate(
        task.as_ref(),
        &GenerateSpec {
            level: 1,
            n: 400,
            seed: 11,
            split: Split::Train,
            unique: false,
        },
    )
    .unwrap()
    .into_iter()
    .filter(|p| seen.insert(p.prompt.clone()))
    .collect()
}

fn engine(model_dir: &Path) -> (LocalEngine, Tokenizer) {
    let files = ModelFiles::open(
        model_dir,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let tok: Tokenizer = files.tokenizer.clone().unwrap();
    (
        LocalEngine::new(files.transformer().unwrap(), tok.clone()),
        tok,
    )
}

/// The greedy completion of each problem.
fn greedy(engine: &LocalEngine, tok: &Tokenizer, problems: &[Problem]) -> Vec<Completion> {
    let reqs: Vec<GenRequest> = problems
        .iter()
        .map(|p| {
            GenRequest::new(
                tok.encode(&p.prompt, false).unwrap(),
                1,
                SamplingParams::greedy(96),
            )
        })
        .collect();
    engine
        .generate(&reqs)
        .unwrap()
        .into_iter()
        .map(|mut c| c.remove(0))
        .collect()
}

/// Greedy accuracy (%) of the model in `model_dir` on `problems`.
fn greedy_accuracy(model_dir: &Path, problems: &[Problem]) -> f64 {
    let task = task_by_name("arithmetic").unwrap();
    let (engine, tok) = engine(model_dir);
    let correct = problems
        .iter()
        .zip(greedy(&engine, &tok, problems))
        .filter(|(p, c)| task.verify(p, &c.text).is_correct())
        .count();
    100.0 * correct as f64 / problems.len() as f64
}

/// Writes pairs for the training problems: by default the worked solution against the SFT model's
/// wrong greedy answer (cheap: one greedy pass); `DPO_PAIRS=samples` pairs a verified-correct sample
/// with a wrong one from 6 samples at temperature 1 (the README's table).
fn write_pairs(model_dir: &Path, out: &Path) -> usize {
    let task = task_by_name("arithmetic").unwrap();
    let problems = train_problems();
    let (engine, tok) = engine(model_dir);
    if knob("DPO_PAIRS", "greedy") == "greedy" {
        // The greedy answer when it is wrong, against the worked solution.
        let (mut lines, mut n) = (String::new(), 0);
        for (p, g) in problems.iter().zip(greedy(&engine, &tok, &problems)) {
            if g.finish_reason == FinishReason::Stop
                && task.verify(p, &g.text) == Verdict::Incorrect
            {
                let row = json!({"prompt": p.prompt, "chosen": p.solution, "rejected": g.text});
                lines.push_str(&row.to_string());
                lines.push('\n');
                n += 1;
            }
        }
        std::fs::write(out, lines).unwrap();
        return n;
    }
    let params = SamplingParams {
        max_new_tokens: 96,
        temperature: 1.0,
        seed: 5,
        ..Default::default()
    };
    let reqs: Vec<GenRequest> = problems
        .iter()
        .map(|p| GenRequest::new(tok.encode(&p.prompt, false).unwrap(), 6, params.clone()))
        .collect();
    let outs = engine.generate(&reqs).unwrap();
    let mut lines = String::new();
    let mut n = 0;
    for (p, samples) in problems.iter().zip(outs) {
        let finished: Vec<_> = samples
            .iter()
            .filter(|c| c.finish_reason == FinishReason::Stop)
            .collect();
        // Chosen: verified correct in every step (the worked solution exactly), not only in its
        // final answer, so that the pairs do not teach wrong arithmetic that happened to land on the
        // right answer. Rejected: a wrong final answer.
        let good: Vec<&Completion> = finished
            .iter()
            .copied()
            .filter(|c| c.text == p.solution && task.verify(p, &c.text).is_correct())
            .collect();
        let bad: Vec<&Completion> = finished
            .iter()
            .copied()
            .filter(|c| task.verify(p, &c.text) == Verdict::Incorrect)
            .collect();
        for (c, r) in good.iter().zip(&bad).take(2) {
            let row = json!({"prompt": p.prompt, "chosen": c.text, "rejected": r.text});
            lines.push_str(&row.to_string());
            lines.push('\n');
            n += 1;
        }
    }
    std::fs::write(out, lines).unwrap();
    n
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    sft: PathBuf,
    prefs: PathBuf,
    pairs: usize,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    // DPO_KEEP=DIR: the run's files go there and stay, for inspection.
    let root = match std::env::var("DPO_KEEP") {
        Ok(d) => PathBuf::from(d),
        Err(_) => dir.path().to_path_buf(),
    };
    std::fs::create_dir_all(&root).unwrap();
    let sft = common::fixture_sft_level1();
    let prefs = root.join("prefs.jsonl");
    let pairs = write_pairs(&sft, &prefs);
    Setup {
        _dir: dir,
        root,
        sft,
        prefs,
        pairs,
    }
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The numbers a resumed run must reproduce exactly (not the timings).
fn exact(recs: &[serde_json::Value]) -> Vec<String> {
    recs.iter()
        .map(|r| {
            let mut r = r.as_object().unwrap().clone();
            for k in [
                "step_s",
                "tokens_per_s",
                "forward_backward_s",
                "optimizer_s",
            ] {
                r.remove(k);
            }
            serde_json::Value::Object(r).to_string()
        })
        .collect()
}

#[test]
fn dpo_on_verified_pairs_end_to_end() {
    let s = setup();
    assert!(s.pairs >= 40, "only {} pairs", s.pairs);
    let problems = train_problems();
    let before = greedy_accuracy(&s.sft, &problems);
    let run = s.root.join("dpo");
    run_ok(
        temper()
            .args(["dpo", "--model"])
            .arg(&s.sft)
            .arg("--data")
            .arg(&s.prefs)
            .arg("--eval-data")
            .arg(&s.prefs)
            .args([
                "--loss",
                "sigmoid",
                "--beta",
                &knob("DPO_BETA", "0.1"),
                "--learning-rate",
                &knob("DPO_LR", "1e-6"),
            ])
            .args([
                "--lr-scheduler",
                "constant",
                "--max-steps",
                &knob("DPO_STEPS", "40"),
                "--batch-size",
                "16",
            ])
            .args([
                "--eval-every",
                &knob("DPO_STEPS", "40"),
                "--eval-batch-size",
                "64",
            ])
            .args(knob("DPO_EXTRA", "").split_whitespace())
            .args(["--seed", "1", "--quiet", "--output"])
            .arg(&run),
    );
    // With LoRA the run writes `adapter/`; greedy accuracy reads the merged model.
    let model_dir = if run.join("adapter").is_dir() {
        let merged = s.root.join("dpo-merged");
        run_ok(
            temper()
                .arg("merge")
                .arg(&s.sft)
                .arg(run.join("adapter"))
                .arg(&merged),
        );
        merged
    } else {
        run.join("model")
    };
    for f in [
        run.join("config.toml"),
        run.join("metrics.jsonl"),
        model_dir.join("config.json"),
        model_dir.join("model.safetensors"),
    ] {
        assert!(f.is_file(), "missing {}", f.display());
    }
    let after = greedy_accuracy(&model_dir, &problems);
    eprintln!(
        "greedy accuracy on the {} training problems: SFT {before:.1}% -> DPO {after:.1}% ({} pairs)",
        problems.len(),
        s.pairs
    );
    let recs = metrics(&run);
    // The first step starts at log 2 with zero rewards (the reference is the SFT model).
    let first = &recs[0];
    assert!(
        (first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5,
        "{first}"
    );
    assert_eq!(first["rewards/margins"].as_f64().unwrap(), 0.0);
    // After training the implicit reward ranks the verified-correct sample first on most pairs.
    let eval = recs.last().unwrap();
    assert!(
        eval["eval_rewards/margins"].as_f64().unwrap() > 0.0,
        "{eval}"
    );
    assert!(
        eval["eval_rewards/accuracies"].as_f64().unwrap() > 0.6,
        "{eval}"
    );
    // The gain is not robust (from fresh SFT runs: 67.5% -> 68.2% on one machine, 66.8% -> 66.2%
    // on another; from the committed model 40.9% -> 39.0%, three problems of 159): what the test
    // holds is that DPO at this step size does not cost accuracy beyond the noise. With d problems
    // that change outcome, the paired difference's standard error is sqrt(d)/159, 1.1 points at
    // the least (d >= 3 here) and more as d grows; the bound allows six problems.
    assert!(
        after >= before - 4.0,
        "DPO lost greedy accuracy: {before}% -> {after}%"
    );

    // Implicit rewards of the trained policy: one line per pair, agreeing with the eval metrics.
    let out = s.root.join("rewards.jsonl");
    run_ok(
        temper()
            .arg("dpo-rewards")
            .arg(&run)
            .arg("--output")
            .arg(&out),
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), s.pairs);
    let mean_margin = rows
        .iter()
        .map(|r| r["margin"].as_f64().unwrap())
        .sum::<f64>()
        / rows.len() as f64;
    let want = eval["eval_rewards/margins"].as_f64().unwrap();
    assert!(
        (mean_margin - want).abs() < 1e-4 * want.abs().max(1.0),
        "{mean_margin} vs {want}"
    );

    // Kill and resume: a LoRA run stopped after its step-2 checkpoint continues exactly.
    let args = |out: &Path| {
        let mut c = temper();
        c.args(["dpo", "--model"])
            .arg(&s.sft)
            .arg("--data")
            .arg(&s.prefs)
            .args([
                "--lora-r",
                "4",
                "--lora-targets",
                "all",
                "--lora-dropout",
                "0.1",
            ])
            .args([
                "--learning-rate",
                "1e-3",
                "--max-steps",
                "4",
                "--batch-size",
                "4",
            ])
            .args([
                "--save-every",
                "2",
                "--keep-checkpoints",
                "3",
                "--quiet",
                "--output",
            ])
            .arg(out);
        c
    };
    let whole = s.root.join("whole");
    run_ok(&mut args(&whole));
    assert!(whole.join("adapter/adapter_config.json").is_file());
    let cut = s.root.join("cut");
    run_ok(&mut args(&cut));
    std::fs::remove_dir_all(cut.join("checkpoints/step-0000004")).unwrap();
    std::fs::remove_dir_all(cut.join("adapter")).unwrap();
    run_ok(temper().args(["dpo", "--quiet", "--resume"]).arg(&cut));
    assert_eq!(exact(&metrics(&cut)), exact(&metrics(&whole)));
    assert_eq!(
        std::fs::read(cut.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(whole.join("adapter/adapter_model.safetensors")).unwrap()
    );

    // KTO on the same samples, unpaired (TRL's prompt/completion/label), precomputed reference.
    let unpaired = s.root.join("kto.jsonl");
    let mut rows = String::new();
    for line in std::fs::read_to_string(&s.prefs).unwrap().lines().take(40) {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        for (side, label) in [("chosen", true), ("rejected", false)] {
            let row = json!({"prompt": r["prompt"], "completion": r[side], "label": label});
            rows.push_str(&format!("{row}\n"));
        }
    }
    std::fs::write(&unpaired, rows).unwrap();
    let kto = s.root.join("kto");
    run_ok(
        temper()
            .args(["kto", "--model"])
            .arg(&s.sft)
            .arg("--data")
            .arg(&unpaired)
            .arg("--eval-data")
            .arg(&unpaired)
            .args([
                "--lora-r",
                "4",
                "--learning-rate",
                "3e-3",
                "--max-steps",
                "8",
            ])
            .args([
                "--lr-scheduler",
                "constant",
                "--batch-size",
                "8",
                "--precompute-ref",
            ])
            .args(["--quiet", "--output"])
            .arg(&kto),
    );
    let recs = metrics(&kto);
    assert!(
        (recs[0]["loss"].as_f64().unwrap() - 0.5).abs() < 1e-6,
        "{}",
        recs[0]
    );
    assert!(recs[0]["kl"].as_f64().is_some(), "{}", recs[0]);
    // Evaluated on all rows at the end: desirable completions now rewarded above undesirable ones.
    let last = recs.last().unwrap();
    assert!(last["eval_loss"].as_f64().unwrap() < 0.5, "{last}");
    assert!(
        last["eval_rewards/margins"].as_f64().unwrap() > 0.0,
        "{last}"
    );
    assert!(kto.join("adapter/adapter_model.safetensors").is_file());

    // Bad input names the file, the line and what was expected; a KTO loss is refused by dpo.
    let bad = s.root.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": \"b\"}\n").unwrap();
    let out = temper()
        .args(["dpo", "--model"])
        .arg(&s.sft)
        .arg("--data")
        .arg(&bad)
        .arg("--output")
        .arg(s.root.join("bad-run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl") && err.contains(":2") && err.contains("rejected"),
        "{err}"
    );
    let out = temper()
        .args(["dpo", "--loss", "kto", "--model"])
        .arg(&s.sft)
        .arg("--data")
        .arg(&s.prefs)
        .arg("--output")
        .arg(s.root.join("kto-run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("temper kto"), "{err}");
}
