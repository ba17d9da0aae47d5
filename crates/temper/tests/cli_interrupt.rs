//! Interrupted training runs and run-directory locks through the command line, on the committed
//! tiny arithmetic model: SIGINT during `temper sft` and SIGTERM during `temper grpo` stop after
//! the current step with a checkpoint, say where they stopped and exit 128 + the signal; `--resume`
//! says where it continues and reaches the final step. A run on a directory in use is refused
//! naming the owner's pid; a stale lock is taken over with a warning.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{checkpoint_steps, fixture_sft as model, ok, sft_data, temper};

/// Lines of `run/metrics.jsonl` that record a training step.
fn steps_logged(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("\"loss\"") || l.contains("\"reward\""))
                .count()
        })
        .unwrap_or(0)
}

/// Waits until the child has logged more than `after` steps (it is then inside its training loop).
fn wait_for_steps(child: &mut Child, run: &Path, after: usize) {
    let start = Instant::now();
    while steps_logged(run) <= after {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it was interrupted");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no training step logged within 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The step in `interrupted at step N; resume with temper CMD --resume RUN`, checking the rest.
fn interrupted_step(err: &str, cmd: &str, run: &Path) -> usize {
    let tail = format!("; resume with temper {cmd} --resume {}", run.display());
    let line = err
        .lines()
        .find(|l| l.starts_with("interrupted at step ") && l.ends_with(&tail))
        .unwrap_or_else(|| panic!("no interruption message `... {tail}` in:\n{err}"));
    line["interrupted at step ".len()..line.len() - tail.len()]
        .parse()
        .unwrap()
}

const SFT_STEPS: usize = 600;

fn sft_command(data: &Path, run: &Path) -> Command {
    let mut c = temper();
    c.arg("sft")
        .arg("--model")
        .arg(model())
        .arg("--data")
        .arg(data)
        .args(["--max-steps", &SFT_STEPS.to_string(), "--batch-size", "2"])
        .args(["--learning-rate", "1e-3", "--save-every", "1000"])
        .args(["--quiet", "--output"])
        .arg(run);
    c
}

#[test]
fn sigint_during_sft_checkpoints_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_data(dir.path());
    let run = dir.path().join("run");
    let mut child = sft_command(&data, &run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &run, 1);
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let step = interrupted_step(&err, "sft", &run);
    assert!((2..SFT_STEPS).contains(&step), "{err}");
    assert_eq!(checkpoint_steps(&run), vec![step], "{err}");
    assert!(
        !run.join("temper.lock").exists(),
        "the lock outlived the run"
    );
    assert!(
        !run.join("model").exists(),
        "an interrupted run wrote a final model"
    );

    // A lock left by a dead process is taken over with a warning.
    std::fs::write(
        run.join("temper.lock"),
        "4000000\ntemper sft --output elsewhere\n",
    )
    .unwrap();
    let resumed = temper()
        .arg("sft")
        .arg("--resume")
        .arg(&run)
        .arg("--quiet")
        .output()
        .unwrap();
    let err = ok(&resumed);
    assert!(
        err.contains(&format!(
            "resuming {} from step {step} of {SFT_STEPS}",
            run.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("taking over the stale lock of pid 4000000"),
        "{err}"
    );
    assert!(err.contains(&format!("done: {SFT_STEPS} steps")), "{err}");
    assert_eq!(checkpoint_steps(&run).last(), Some(&SFT_STEPS));
    assert!(run.join("model/model.safetensors").is_file());
    assert!(!run.join("temper.lock").exists());
    // Every step was logged exactly once across the two processes.
    assert_eq!(steps_logged(&run), SFT_STEPS);
}

#[test]
fn sigterm_during_grpo_checkpoints_and_a_resumed_run_stops_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("prompts.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"Compute: 3+4\\n\", \"answer\": \"7\"}\n\
         {\"prompt\": \"Compute: 2*5\\n\", \"answer\": 10}\n\
         {\"prompt\": \"Compute: 9-1\\n\", \"answer\": \"8\"}\n",
    )
    .unwrap();
    let run = dir.path().join("grpo");
    let mut child = temper()
        .arg("grpo")
        .arg("--model")
        .arg(model())
        .arg("--data")
        .arg(&data)
        .args(["--num-generations", "2", "--prompts-per-step", "2"])
        .args(["--steps", "1000", "--max-completion-length", "4"])
        .args(["--lora-r", "2", "--save-every", "0", "--quiet", "--output"])
        .arg(&run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &run, 0);
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(143), "{err}");
    let first = interrupted_step(&err, "grpo", &run);
    assert!(first >= 1, "{err}");
    assert_eq!(checkpoint_steps(&run), vec![first], "{err}");
    assert!(!run.join("temper.lock").exists());

    let mut child = temper()
        .arg("grpo")
        .arg("--resume")
        .arg(&run)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &run, first);
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains(&format!(
            "resuming {} from step {first} of 1000",
            run.display()
        )),
        "{err}"
    );
    let second = interrupted_step(&err, "grpo", &run);
    assert!(second > first, "{err}");
    assert_eq!(checkpoint_steps(&run).last(), Some(&second), "{err}");
}

#[test]
fn a_directory_in_use_is_refused_naming_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_data(dir.path());
    let run = dir.path().join("run");
    // This test process holds the lock, as a running `temper` would.
    let lock = tempering_train::run_lock::RunLock::acquire(&run).unwrap();
    for resume in [false, true] {
        let out = if resume {
            temper()
                .arg("sft")
                .arg("--resume")
                .arg(&run)
                .output()
                .unwrap()
        } else {
            sft_command(&data, &run).output().unwrap()
        };
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("in use by another run")
                && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }
    assert!(
        lock.path().is_file(),
        "a refused run removed the owner's lock"
    );
    drop(lock);
    assert!(!run.exists(), "the lock's empty directory was left behind");
}

#[test]
fn sigterm_during_ppo_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("prompts.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"Compute: 3+4\\n\", \"answer\": \"7\"}\n\
         {\"prompt\": \"Compute: 9-1\\n\", \"answer\": \"8\"}\n",
    )
    .unwrap();
    let run = dir.path().join("ppo");
    let mut child = temper()
        .arg("ppo")
        .arg("--model")
        .arg(model())
        .arg("--data")
        .arg(&data)
        .args(["--num-generations", "2", "--prompts-per-step", "2"])
        .args(["--steps", "1000", "--max-completion-length", "4"])
        .args(["--lora-r", "2", "--save-every", "0", "--quiet", "--output"])
        .arg(&run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &run, 0);
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(143), "{err}");
    let step = interrupted_step(&err, "ppo", &run);
    assert!((1..1000).contains(&step), "{err}");
    // One checkpoint, named by the optimiser's steps (several per rollout batch in PPO).
    assert_eq!(checkpoint_steps(&run).len(), 1, "{err}");
    assert!(!run.join("temper.lock").exists());
}
