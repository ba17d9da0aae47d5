//! The tiny-model recipe end to end through the CLI: generate a task's data, train a decoder from
//! scratch with a character tokenizer, save it as an HF directory, and measure greedy accuracy on the
//! test split. Small enough for CI (level 1, 150 steps). (The tests that need a trained tiny policy
//! start from the committed one instead, `fixtures/models/tiny-arith-sft-level1`: a fresh run moves
//! with training's float rounding.)

mod common;

use common::{run_ok, temper};

#[test]
fn tiny_recipe_learns_arithmetic_level_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let run = run_ok(
        temper()
            .args(["tasks", "train-tiny", "arithmetic", "--level", "1"])
            .args(["--steps", "150", "--eval-problems", "200", "--output"])
            .arg(&out),
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    // An ordinary HF directory that the other commands accept.
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let acc: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("greedy accuracy on 200 test problems (level 1): "))
        .and_then(|s| s.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no accuracy line in:\n{stdout}"));
    // Chance is about 1% (the answer is an integer up to 81). The recipe reached 47.5% here
    // (session 21); over seeds 0-2 and two matmul kernels (their rounding alone) 150 steps gave
    // 11-51% (session 20), so the floor asks that it learned, not how well.
    assert!(acc >= 10.0, "greedy accuracy {acc}% after training");
    // The saved model evaluates the same through `temper tasks eval`.
    let eval = temper()
        .args(["tasks", "eval"])
        .arg(&out)
        .args(["arithmetic", "--level", "1", "--n", "200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&eval.stdout);
    assert!(eval.status.success(), "{text}");
    assert!(
        text.contains(&format!("greedy accuracy {acc:.1}%")),
        "{text} vs {acc}"
    );
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let out = temper()
        .args(["tasks", "generate", "sudoku", "--output", "/tmp/x.jsonl"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sudoku") && err.contains("arithmetic") && err.contains("countdown"),
        "{err}"
    );
}

#[test]
fn eval_rejects_a_model_whose_tokenizer_cannot_encode_the_task() {
    // A character tokenizer fitted to base-conversion lacks countdown's words.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    let run = temper()
        .args([
            "tasks",
            "train-tiny",
            "base-conversion",
            "--level",
            "1",
            "--steps",
            "2",
        ])
        .args(["--eval-problems", "0", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let eval = temper()
        .args(["tasks", "eval"])
        .arg(&out)
        .args(["countdown", "--level", "1", "--n", "5"])
        .output()
        .unwrap();
    assert!(!eval.status.success());
    let err = String::from_utf8_lossy(&eval.stderr);
    assert!(err.contains("cannot encode"), "{err}");
}
