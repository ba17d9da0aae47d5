//! Outcome and process reward models end to end through the CLI, on the tiny model and arithmetic
//! level 1: the policy's solutions are labelled by rollouts (`temper label-steps`), an RM is trained
//! on correct-versus-incorrect pairs of them (`temper rm`) and a PRM on the step labels (`temper
//! prm`), and both must rank held-out solutions (test-split problems) correct above incorrect
//! clearly better than chance (`temper score`). Bad inputs get errors that say what is wrong.
//! The tiny policy is the committed level-1 SFT model (`fixtures/models/tiny-arith-sft-level1`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use serde_json::{json, Value};

mod common;

use common::{run_ok, temper};

/// The tiny policy (arithmetic level 1): the committed SFT model.
fn policy() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(common::fixture_sft_level1)
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// The AUC line `temper score` prints.
fn auc_of(out: &Output) -> f64 {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.split("labelled rows: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no AUC in:\n{err}"))
}

/// Over pairs of solutions to the same problem, one correct and one not: how often the correct one
/// scores higher (ties count half).
fn per_problem_accuracy(rows: &[Value]) -> f64 {
    let mut by: HashMap<&str, Vec<(f64, bool)>> = HashMap::new();
    for r in rows {
        by.entry(r["prompt"].as_str().unwrap()).or_default().push((
            r["score"].as_f64().unwrap(),
            r["correct"].as_bool().unwrap(),
        ));
    }
    let (mut wins, mut pairs) = (0.0, 0usize);
    for v in by.values() {
        for (a, _) in v.iter().filter(|x| x.1) {
            for (b, _) in v.iter().filter(|x| !x.1) {
                pairs += 1;
                wins += if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    wins / pairs.max(1) as f64
}

/// `temper label-steps --labels LABELS` of the tiny policy's solutions to `n` level-1 problems of
/// `split`, 8 samples each, into `out`.
fn label_steps(labels: &str, split: &str, n: &str, seed: &str, out: &Path) {
    run_ok(
        temper()
            .args(["label-steps", "--labels", labels, "--policy"])
            .arg(policy())
            .args(["--task", "arithmetic", "--level", "1", "--split", split])
            .args(["--n", n, "--samples", "8", "--seed", seed])
            .args(["--max-new-tokens", "32", "--output"])
            .arg(out),
    );
}

/// An implicit PRM directory's `implicit_prm.json`.
fn implicit_spec(model: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(model.join("implicit_prm.json")).unwrap())
        .unwrap()
}

/// `temper score MODEL --data DATA --output OUT`: the held-out AUC it prints and the rows it wrote.
fn score(model: &Path, data: &Path, out: &Path) -> (f64, Vec<Value>) {
    let printed = run_ok(
        temper()
            .arg("score")
            .arg(model)
            .arg("--data")
            .arg(data)
            .arg("--output")
            .arg(out),
    );
    (auc_of(&printed), read_jsonl(out))
}

fn last_metrics(run: &Path, key: &str) -> f64 {
    read_jsonl(&run.join("metrics.jsonl"))
        .iter()
        .rev()
        .find_map(|r| r.get(key).and_then(|v| v.as_f64()))
        .unwrap_or_else(|| panic!("no `{key}` in {}/metrics.jsonl", run.display()))
}

#[test]
fn rm_and_prm_rank_held_out_correct_solutions_above_incorrect_ones() {
    let tiny = policy();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let label = |split: &str, n: &str, samples: &str, rollouts: &str, seed: &str, out: &Path| {
        let mut c = temper();
        c.args(["label-steps", "--policy"])
            .arg(tiny)
            .args(["--task", "arithmetic", "--level", "1", "--split", split])
            .args(["--n", n, "--samples", samples, "--rollouts", rollouts])
            .args(["--seed", seed, "--max-new-tokens", "32", "--output"])
            .arg(out);
        c
    };

    // Training data: balanced step labels from train-split problems.
    let steps = d.join("steps.jsonl");
    run_ok(label("train", "200", "8", "4", "1", &steps).arg("--balance"));
    let rows = read_jsonl(&steps);
    for r in &rows {
        let n = r["completions"].as_array().unwrap().len();
        assert_eq!(r["labels"].as_array().unwrap().len(), n);
        // The last step is labelled by the solution's own verdict.
        assert_eq!(r["labels"][n - 1], r["correct"]);
    }
    let correct = rows.iter().filter(|r| r["correct"] == true).count();
    assert_eq!(2 * correct, rows.len(), "balanced rows");
    assert!(rows.len() >= 400, "only {} labelled rows", rows.len());

    // Preference pairs: each correct solution against the incorrect ones of its problem.
    let mut by: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
    for r in &rows {
        let text: Vec<&str> = r["completions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let e = by
            .entry(r["prompt"].as_str().unwrap().to_string())
            .or_default();
        if r["correct"] == true {
            e.0.push(text.join("\n"));
        } else {
            e.1.push(text.join("\n"));
        }
    }
    let mut prefs = Vec::new();
    let mut prompts: Vec<&String> = by.keys().collect();
    prompts.sort();
    for p in prompts {
        let (good, bad) = &by[p];
        for g in good {
            for b in bad {
                prefs.push(json!({"prompt": p, "chosen": g, "rejected": b}));
            }
        }
    }
    let prefs_path = d.join("prefs.jsonl");
    write_jsonl(&prefs_path, &prefs);

    // Held-out solutions to test-split problems, judged by the verifier.
    let heldout = d.join("heldout.jsonl");
    run_ok(&mut label("test", "100", "8", "1", "7", &heldout));

    let rm_run = d.join("rm");
    run_ok(
        temper()
            .args(["rm", "--quiet", "--model"])
            .arg(tiny)
            .arg("--data")
            .arg(&prefs_path)
            .args(["--max-steps", "60", "--batch-size", "16"])
            .args(["--learning-rate", "1e-3", "--output"])
            .arg(&rm_run),
    );
    let prm_run = d.join("prm");
    run_ok(
        temper()
            .args(["prm", "--quiet", "--model"])
            .arg(tiny)
            .arg("--data")
            .arg(&steps)
            .arg("--eval-data")
            .arg(&heldout)
            .args(["--max-steps", "100", "--batch-size", "16"])
            .args(["--learning-rate", "3e-4", "--output"])
            .arg(&prm_run),
    );
    // The logs carry pairwise accuracy (RM) and step accuracy and F1 (PRM).
    assert!(last_metrics(&rm_run, "accuracy") > 0.5);
    let f1 = last_metrics(&prm_run, "eval_f1");
    assert!((0.0..=1.0).contains(&f1));
    assert!(last_metrics(&prm_run, "eval_step_accuracy") > 0.0);
    // Saved as HF classifiers.
    let arch = |run: &Path| {
        let c: Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("model/config.json")).unwrap())
                .unwrap();
        c["architectures"][0].as_str().unwrap().to_string()
    };
    assert_eq!(arch(&rm_run), "LlamaForSequenceClassification");
    assert_eq!(arch(&prm_run), "LlamaForTokenClassification");

    let score = |model: &Path, agg: &str, out: &Path| {
        run_ok(
            temper()
                .arg("score")
                .arg(model)
                .arg("--data")
                .arg(&heldout)
                .args(["--aggregate", agg, "--output"])
                .arg(out),
        )
    };
    let rm_scores = d.join("rm_scores.jsonl");
    let rm_auc = auc_of(&score(&rm_run.join("model"), "min", &rm_scores));
    let rm_pairs = per_problem_accuracy(&read_jsonl(&rm_scores));
    let prm_scores = d.join("prm_scores.jsonl");
    let prm_auc = auc_of(&score(&prm_run.join("model"), "min", &prm_scores));
    let scored = read_jsonl(&prm_scores);
    let prm_pairs = per_problem_accuracy(&scored);
    for r in &scored {
        assert_eq!(
            r["step_scores"].as_array().unwrap().len(),
            r["completions"].as_array().unwrap().len()
        );
    }
    eprintln!(
        "held-out ranking: RM AUC {rm_auc:.3}, same-problem pairs {rm_pairs:.3}; \
         PRM (min) AUC {prm_auc:.3}, same-problem pairs {prm_pairs:.3}; PRM eval F1 {f1:.3}"
    );
    // Chance is 0.5; over about 800 held-out solutions (about 240 correct) the AUC's standard
    // error is about 0.02, so 0.55 is well clear of chance. Measured here: RM 0.578, PRM 0.639; the
    // RM moved between 0.58 and 0.69 with the order and pairing of its data (README). Same-problem
    // pairs are reported, not asserted: a few problems with many samples dominate them.
    assert!(rm_auc >= 0.55, "RM AUC {rm_auc}");
    assert!(prm_auc >= 0.55, "PRM AUC {prm_auc}");
}

#[test]
fn bad_inputs_get_clear_errors() {
    let tiny = policy();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).to_string();

    // A model directory without a score head.
    let data = d.join("c.jsonl");
    write_jsonl(
        &data,
        &[json!({"prompt": "Compute: 1+2\n", "completion": "1+2=3\nAnswer: 3"})],
    );
    let out = temper()
        .arg("score")
        .arg(tiny)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no score head"), "{}", stderr(&out));

    // Stepwise rows whose labels do not match their steps: the line is named.
    let steps = d.join("steps.jsonl");
    write_jsonl(
        &steps,
        &[
            json!({"prompt": "Compute: 1+2\n", "completions": ["1+2=3", "Answer: 3"], "labels": [true, true]}),
            json!({"prompt": "Compute: 1+2\n", "completions": ["1+2=4", "Answer: 4"], "labels": [false]}),
        ],
    );
    let out = temper()
        .args(["prm", "--quiet", "--max-steps", "1", "--model"])
        .arg(tiny)
        .arg("--data")
        .arg(&steps)
        .arg("--output")
        .arg(d.join("prm"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("steps.jsonl:2") && e.contains("labels"), "{e}");

    // Preference rows whose chosen equals rejected are counted and skipped.
    let prefs = d.join("prefs.jsonl");
    write_jsonl(
        &prefs,
        &[
            json!({"prompt": "Compute: 1+2\n", "chosen": "1+2=3\nAnswer: 3", "rejected": "1+2=4\nAnswer: 4"}),
            json!({"prompt": "Compute: 1+3\n", "chosen": "1+3=4\nAnswer: 4", "rejected": "1+3=4\nAnswer: 4"}),
        ],
    );
    let rm_run = d.join("rm");
    let out = run_ok(
        temper()
            .args([
                "rm",
                "--quiet",
                "--max-steps",
                "1",
                "--batch-size",
                "1",
                "--model",
            ])
            .arg(tiny)
            .arg("--data")
            .arg(&prefs)
            .arg("--output")
            .arg(&rm_run),
    );
    let e = stderr(&out);
    assert!(
        e.contains("2 rows -> 1 pairs; 1 skipped because `chosen` equals `rejected`"),
        "{e}"
    );
    // A finished run is not overwritten, and resuming it takes no other flags.
    let out = temper()
        .args(["rm", "--quiet", "--model"])
        .arg(tiny)
        .arg("--data")
        .arg(&prefs)
        .arg("--output")
        .arg(&rm_run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds a run"),
        "{}",
        stderr(&out)
    );
    run_ok(temper().args(["rm", "--quiet", "--resume"]).arg(&rm_run));
    let out = temper()
        .args(["rm", "--max-steps", "5", "--resume"])
        .arg(&rm_run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("max_steps"), "{}", stderr(&out));

    // An unknown task names the known ones.
    let out = temper()
        .args(["label-steps", "--task", "sudoku", "--policy"])
        .arg(tiny)
        .arg("--output")
        .arg(d.join("x.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("sudoku"), "{}", stderr(&out));
}

/// `--labels rule`: the policy's own solutions labelled by the arithmetic step checker, without
/// rollouts. Every step `a op b = c` the test finds false by its own arithmetic is labelled wrong,
/// and so is every step after it; the last step is labelled by the verdict when all before it hold.
#[test]
fn rule_labels_mark_every_wrong_step_and_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("steps.jsonl");
    run_ok(
        temper()
            .args(["label-steps", "--policy"])
            .arg(common::fixture_sft())
            .args(["--task", "arithmetic", "--level", "3", "--n", "40"])
            .args([
                "--samples",
                "4",
                "--max-new-tokens",
                "64",
                "--labels",
                "rule",
            ])
            .arg("--output")
            .arg(&out),
    );
    let rows = read_jsonl(&out);
    assert!(rows.len() >= 120, "only {} rows", rows.len());
    // `a op b = c` with one operator, as the tiny model writes its steps; None for anything else.
    let holds = |step: &str| -> Option<bool> {
        let (lhs, rhs) = step.split_once('=')?;
        let c: i64 = rhs.trim().parse().ok()?;
        let lhs = lhs.trim();
        let at = lhs
            .char_indices()
            .skip(1)
            .find(|(_, ch)| "+-*".contains(*ch))?
            .0;
        let (a, b) = (
            lhs[..at].parse::<i64>().ok()?,
            lhs[at + 1..].parse::<i64>().ok()?,
        );
        Some(match &lhs[at..at + 1] {
            "+" => a + b == c,
            "-" => a - b == c,
            _ => a * b == c,
        })
    };
    let (mut wrong_steps, mut right_steps) = (0, 0);
    for r in &rows {
        let steps: Vec<&str> = r["completions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let labels: Vec<bool> = r["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_bool().unwrap())
            .collect();
        assert_eq!(steps.len(), labels.len(), "{r}");
        let mut broken = false;
        for (s, &l) in steps.iter().zip(&labels) {
            match holds(s) {
                Some(false) => {
                    broken = true;
                    wrong_steps += 1;
                }
                Some(true) if !broken => right_steps += 1,
                _ => {}
            }
            if broken {
                assert!(
                    !l,
                    "step {s:?} of {steps:?} follows a wrong step: {labels:?}"
                );
            }
        }
        if !broken && r["correct"] == true {
            assert!(labels.iter().all(|&l| l), "{steps:?}: {labels:?}");
        }
        assert!(!(*labels.last().unwrap() && r["correct"] == false), "{r}");
    }
    assert!(
        wrong_steps >= 10 && right_steps >= 50,
        "{wrong_steps} wrong, {right_steps} right"
    );

    let bad = temper()
        .args([
            "label-steps",
            "--task",
            "arithmetic",
            "--labels",
            "vibes",
            "--n",
            "1",
        ])
        .arg("--policy")
        .arg(common::fixture_sft())
        .arg("--output")
        .arg(d.join("x.jsonl"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains("--labels vibes"), "{msg}");
}

/// `temper prm --implicit` on outcome labels (`label-steps --labels outcome`): the model stays a
/// causal LM with `implicit_prm.json` beside it, learns the outcomes of its training solutions,
/// scores every step of held-out solutions with a probability, ranks them better than chance, and
/// serves `temper eval --prm` like a classifier PRM. A PRM whose reference is gone gets an error
/// naming the file.
#[test]
fn an_implicit_prm_learns_outcomes_and_scores_steps() {
    let tiny = policy();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = d.join("outcomes.jsonl");
    label_steps("outcome", "train", "300", "1", &train);
    let rows = read_jsonl(&train);
    for r in &rows {
        // Every step carries the solution's verdict.
        for l in r["labels"].as_array().unwrap() {
            assert_eq!(l, &r["correct"]);
        }
    }
    let heldout = d.join("heldout.jsonl");
    label_steps("outcome", "test", "100", "7", &heldout);

    let run = d.join("implicit");
    run_ok(
        temper()
            .args(["prm", "--implicit", "--beta", "0.5", "--quiet", "--model"])
            .arg(tiny)
            .arg("--data")
            .arg(&train)
            .args(["--max-steps", "150", "--batch-size", "32"])
            .args(["--learning-rate", "3e-4", "--output"])
            .arg(&run),
    );
    let model = run.join("model");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    let spec = implicit_spec(&model);
    assert_eq!(spec["beta"], 0.5);
    assert!(Path::new(spec["reference"].as_str().unwrap()).is_absolute());
    // It learned the training outcomes: the reward's sign matches the label on most solutions.
    assert!(last_metrics(&run, "accuracy") > 0.6);

    let (auc, scored) = score(&model, &heldout, &d.join("scores.jsonl"));
    for r in &scored {
        let s = r["step_scores"].as_array().unwrap();
        assert_eq!(s.len(), r["completions"].as_array().unwrap().len());
        assert!(s
            .iter()
            .all(|v| v.as_f64().is_some_and(|v| v > 0.0 && v < 1.0)));
    }
    eprintln!(
        "implicit PRM: held-out AUC {auc:.3}, same-problem pairs {:.3}",
        per_problem_accuracy(&scored)
    );
    assert!(auc >= 0.55, "implicit PRM AUC {auc}");

    // Search and evaluation take it through --prm.
    let problems = d.join("problems.jsonl");
    run_ok(
        temper()
            .args([
                "tasks",
                "generate",
                "arithmetic",
                "--level",
                "1",
                "--split",
                "test",
            ])
            .args(["--n", "4", "--output"])
            .arg(&problems),
    );
    run_ok(
        temper()
            .arg("eval")
            .arg(tiny)
            .arg("--data")
            .arg(&problems)
            .args([
                "--strategies",
                "bon@2:min,beam:2x2",
                "--max-new-tokens",
                "32",
            ])
            .arg("--prm")
            .arg(&model)
            .arg("--output")
            .arg(d.join("eval")),
    );

    // The reference moved away: the error names the spec file and the missing path.
    let moved = d.join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    for f in std::fs::read_dir(&model).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, moved.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        moved.join("implicit_prm.json"),
        json!({"reference": "/nonexistent/sft", "beta": 0.5, "step_separator": "\n"}).to_string(),
    )
    .unwrap();
    let out = temper()
        .arg("score")
        .arg(&moved)
        .arg("--data")
        .arg(&heldout)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("implicit_prm.json") && e.contains("/nonexistent/sft"),
        "{e}"
    );
}

/// An implicit PRM whose model knows more than the policy: the policy trained further on worked
/// solutions, with the policy as `--reference`, so a step scores by how much likelier the stronger
/// model finds it than the policy did. It ranks the policy's held-out solutions; the spec names
/// the reference; `--reference` without `--implicit`, or with another tokenizer, is refused.
#[test]
fn an_implicit_prm_against_the_policy_as_reference_ranks_its_solutions() {
    let tiny = policy();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let worked = d.join("worked.jsonl");
    run_ok(
        temper()
            .args(["tasks", "generate", "arithmetic", "--level", "1"])
            .args(["--split", "train", "--n", "4000", "--seed", "3"])
            .args(["--allow-duplicates", "--output"])
            .arg(&worked),
    );
    let verifier_run = d.join("verifier");
    run_ok(
        temper()
            .args(["sft", "--quiet", "--model"])
            .arg(tiny)
            .arg("--data")
            .arg(&worked)
            .args(["--max-steps", "150", "--batch-size", "32"])
            .args(["--learning-rate", "1e-3", "--lr-scheduler", "cosine"])
            .arg("--output")
            .arg(&verifier_run),
    );
    let verifier = verifier_run.join("model");
    let train = d.join("outcomes.jsonl");
    label_steps("outcome", "train", "100", "1", &train);
    let heldout = d.join("heldout.jsonl");
    label_steps("rule", "test", "100", "7", &heldout);

    let run = d.join("implicit");
    run_ok(
        temper()
            .args(["prm", "--implicit", "--beta", "0.5", "--quiet", "--model"])
            .arg(&verifier)
            .arg("--reference")
            .arg(tiny)
            .arg("--data")
            .arg(&train)
            .args(["--max-steps", "20", "--batch-size", "16"])
            .args(["--learning-rate", "1e-4", "--output"])
            .arg(&run),
    );
    let model = run.join("model");
    let spec = implicit_spec(&model);
    assert_eq!(
        Path::new(spec["reference"].as_str().unwrap()),
        tiny.canonicalize().unwrap(),
        "{spec}"
    );
    let (auc, scored) = score(&model, &heldout, &d.join("scores.jsonl"));
    let same_problem = per_problem_accuracy(&scored);
    eprintln!(
        "implicit PRM against the policy: held-out AUC {auc:.3}, same-problem pairs {same_problem:.3}"
    );
    // Measured 0.715 and 0.709 (0.698 and 0.762 with 300 verifier steps).
    assert!(
        auc >= 0.6,
        "implicit PRM (verifier against policy) AUC {auc}"
    );
    assert!(
        same_problem >= 0.62,
        "implicit PRM (verifier against policy): same-problem pairs {same_problem}"
    );

    // --reference belongs to the implicit PRM; a reference must read the same tokens.
    let out = temper()
        .args(["prm", "--quiet", "--model"])
        .arg(tiny)
        .arg("--reference")
        .arg(tiny)
        .arg("--data")
        .arg(&train)
        .arg("--output")
        .arg(d.join("not-implicit"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("reference") && e.contains("implicit"), "{e}");
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-llama");
    let out = temper()
        .args(["prm", "--implicit", "--quiet", "--model"])
        .arg(tiny)
        .arg("--reference")
        .arg(&other)
        .arg("--data")
        .arg(&train)
        .arg("--output")
        .arg(d.join("other-tokens"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("tiny-llama") && e.contains("tokenizer"), "{e}");
}
