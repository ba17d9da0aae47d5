//! Helpers shared by the CLI test binaries (each uses it with `mod common;`): the `temper` binary
//! under test, a success check that prints what the command said, what a command printed, the
//! committed tiny SFT models, the two-step tiny model and prompts file that the online RL tests start
//! from, a small SFT data file, a training command line, a run's files and checkpoint steps, and
//! the second-run-refused-then-resume check of the RL commands. Knows nothing of what the tests check.

// Each test binary uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// A command running the `temper` binary built for these tests.
pub fn temper() -> Command {
    Command::new(env!("CARGO_BIN_EXE_temper"))
}

/// Asserts that the command succeeded (printing its stdout and stderr if not) and returns its
/// stderr, where the commands report progress.
pub fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "{}\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// Runs the command and asserts that it succeeded (printing its stdout and stderr if not).
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The committed tiny SFT model (`fixtures/models/tiny-arith-sft`).
pub fn fixture_sft() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-arith-sft")
}

/// The committed level-1 tiny SFT model (`fixtures/models/tiny-arith-sft-level1`: 150 steps of the
/// tiny recipe, greedy 39.4% on the train split), the policy that the reward-model and DPO tests
/// start from, as the RL gain tests do. A model trained afresh in each run moved with any change to
/// training's float rounding (150 steps of the recipe gave 11-51% over seeds and kernels) and took
/// those tests' outcomes with it.
pub fn fixture_sft_level1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-arith-sft-level1")
}

/// A tiny model with the arithmetic task's character tokenizer (two training steps: only the files
/// matter here), made once per test binary.
pub fn two_step_model() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let out = temper()
            .args([
                "tasks",
                "train-tiny",
                "arithmetic",
                "--level",
                "1",
                "--steps",
                "2",
            ])
            .args(["--train-problems", "64", "--eval-problems", "0", "--output"])
            .arg(d.path().join("m"))
            .output()
            .unwrap();
        ok(&out);
        d
    });
    dir.path().join("m")
}

/// Writes `dir/prompts.jsonl`: three arithmetic prompts with their answers (one a number).
pub fn prompts(dir: &Path) -> PathBuf {
    let p = dir.join("prompts.jsonl");
    std::fs::write(
        &p,
        "{\"prompt\": \"Compute: 3+4\\n\", \"answer\": \"7\"}\n\
         {\"prompt\": \"Compute: 2*5\\n\", \"answer\": 10}\n\
         {\"prompt\": \"Compute: 9-1\\n\", \"answer\": \"8\"}\n",
    )
    .unwrap();
    p
}

/// What the command printed: stdout, then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes `dir/sft.jsonl`: 16 arithmetic prompt/completion rows.
pub fn sft_data(dir: &Path) -> PathBuf {
    let p = dir.join("sft.jsonl");
    let rows: String = (0..16)
        .map(|i| {
            format!(
                "{{\"prompt\": \"Compute: {i}+{}\\n\", \"completion\": \"Answer: {}\"}}\n",
                i % 7,
                i + i % 7
            )
        })
        .collect();
    std::fs::write(&p, rows).unwrap();
    p
}

/// The steps of the checkpoints in `run/checkpoints`, ascending (none: empty).
pub fn checkpoint_steps(run: &Path) -> Vec<usize> {
    let mut steps: Vec<usize> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.strip_prefix("step-")?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    steps.sort();
    steps
}

/// `temper <command> --model MODEL --data DATA`, for a test to add its flags to.
pub fn train_command(command: &str, model: &Path, data: &Path) -> Command {
    let mut c = temper();
    c.arg(command)
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data);
    c
}

/// The files every finished online RL run of full fine-tuning holds.
pub const RL_RUN_FILES: [&str; 4] = [
    "config.toml",
    "metrics.jsonl",
    "rollouts.jsonl",
    "model/config.json",
];

/// Asserts that each of `files` is a file under `run`.
pub fn assert_files(run: &Path, files: &[&str]) {
    for f in files {
        assert!(run.join(f).is_file(), "missing {f}");
    }
}

/// Asserts that `temper <command>` into the finished `run` again is refused (pointing to
/// `--resume`) and that `--resume` of it succeeds; returns the resumed command's stderr.
pub fn rerun_refused_and_resume_ok(command: &str, model: &Path, data: &Path, run: &Path) -> String {
    let again = train_command(command, model, data)
        .arg("--output")
        .arg(run)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let resumed = temper()
        .arg(command)
        .arg("--resume")
        .arg(run)
        .arg("--quiet")
        .output()
        .unwrap();
    ok(&resumed)
}
