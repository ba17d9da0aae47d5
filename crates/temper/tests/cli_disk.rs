//! Run directories that fail under a training run, through the command line on the committed tiny
//! model: a file-size limit (`ulimit -f`, SIGXFSZ ignored so that writes fail with EFBIG, as on a
//! full disk) while a checkpoint is written, an output directory that cannot be written, and a run
//! killed with SIGKILL before its first checkpoint. Each gives a clear error naming the path (no
//! panic), and the run directory stays usable: the last complete checkpoint is intact and resumes,
//! and a run killed before any checkpoint is started afresh with a warning.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{checkpoint_steps, fixture_sft as model, ok, sft_data, temper};

const STEPS: usize = 40;

/// `temper sft` arguments for a run of `steps` steps into `run`, checkpointing every `save_every`.
fn sft_args(data: &Path, run: &Path, steps: usize, save_every: usize) -> Vec<String> {
    let mut a: Vec<String> = vec!["sft".into(), "--model".into()];
    a.push(model().display().to_string());
    a.extend(["--data".into(), data.display().to_string()]);
    a.extend(["--max-steps".into(), steps.to_string()]);
    a.extend(["--batch-size".into(), "2".into()]);
    a.extend(["--save-every".into(), save_every.to_string()]);
    a.extend([
        "--quiet".into(),
        "--output".into(),
        run.display().to_string(),
    ]);
    a
}

/// A failure that is not a crash: a non-zero exit code other than 101, no panic; returns stderr.
fn clean_failure(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != 101),
        "exit status {}:\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Every file of the newest checkpoint with its bytes.
fn newest_checkpoint(run: &Path) -> (usize, Vec<(String, Vec<u8>)>) {
    let step = *checkpoint_steps(run).last().expect("no checkpoint");
    let dir = run.join(format!("checkpoints/step-{step:07}"));
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    (step, files)
}

/// Whether the process `pid` holds the run directory's lock and a training step is logged.
fn training(run: &Path, pid: u32) -> bool {
    let owner = std::fs::read_to_string(run.join("temper.lock"))
        .is_ok_and(|t| t.lines().next() == Some(&pid.to_string()));
    owner
        && std::fs::read_to_string(run.join("metrics.jsonl")).is_ok_and(|t| t.contains("\"loss\""))
}

/// Starts `args`, waits until `ready(run, pid)` holds, then kills the process with SIGKILL.
fn kill_when(args: &[String], run: &Path, ready: impl Fn(&Path, u32) -> bool) {
    let mut child = temper()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ready(run, child.id()) {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the run ended ({status}) before it was killed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the run never got ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

/// `temper ARGS` with a file-size limit of `kib` KiB and SIGXFSZ ignored (an ignored signal stays
/// ignored across exec), so that a write past the limit fails with EFBIG as on a full disk.
fn temper_with_file_limit(kib: u64, args: &[String]) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {kib} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_temper"))
        .args(args);
    c
}

#[test]
fn a_full_disk_fails_clearly_and_keeps_the_last_checkpoint_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_data(dir.path());
    let run = dir.path().join("run");
    let args = sft_args(&data, &run, STEPS, 2);
    // A run killed once it has a checkpoint.
    kill_when(&args, &run, |r, _| !checkpoint_steps(r).is_empty());
    let (step, before) = newest_checkpoint(&run);
    assert!(step < STEPS);

    // Resumed where a file may not grow past 256 KiB: the next checkpoint (3 MB of weights) fails.
    let resume: Vec<String> = vec![
        "sft".into(),
        "--resume".into(),
        run.display().to_string(),
        "--quiet".into(),
    ];
    let out = temper_with_file_limit(256, &resume).output().unwrap();
    let err = clean_failure(&out);
    assert!(
        err.contains("File too large") && err.contains(&format!("{}", run.display())),
        "{err}"
    );
    assert!(err.contains("writing the checkpoint of step"), "{err}");
    assert!(
        err.contains(&format!("the last complete checkpoint, {}", run.display())),
        "{err}"
    );
    assert!(!run.join("model").exists(), "a final model was written");
    // The checkpoint it started from is as it was, and no partial one is left.
    let (after_step, after) = newest_checkpoint(&run);
    assert_eq!(after_step, step, "{err}");
    assert!(before == after, "the checkpoint of step {step} changed");
    let leftovers: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "partial checkpoints: {leftovers:?}");

    // With room again the run resumes from that checkpoint and finishes.
    let out = temper().args(&resume).output().unwrap();
    let err = ok(&out);
    assert!(
        err.contains(&format!(
            "resuming {} from step {step} of {STEPS}",
            run.display()
        )),
        "{err}"
    );
    assert!(err.contains(&format!("done: {STEPS} steps")), "{err}");
    assert!(run.join("model/model.safetensors").is_file());
}

#[test]
fn an_output_directory_that_cannot_be_written_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_data(dir.path());
    // Under a regular file: no directory can be made there, whoever runs the test.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let run = file.join("run");
    let out = temper().args(sft_args(&data, &run, 2, 1)).output().unwrap();
    let err = clean_failure(&out);
    assert!(err.contains(&run.display().to_string()), "{err}");
    assert!(err.contains("Not a directory"), "{err}");

    // A read-only parent (chmod 555). Root writes there anyway: then say so and skip this part.
    let parent = dir.path().join("read-only");
    std::fs::create_dir(&parent).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(parent.join("probe"), "").is_ok() {
        println!(
            "skipped the chmod 555 case: this user (root?) writes into a read-only directory; \
             the case under a regular file above stands for it"
        );
    } else {
        let run = parent.join("run");
        let out = temper().args(sft_args(&data, &run, 2, 1)).output().unwrap();
        let err = clean_failure(&out);
        assert!(err.contains(&run.display().to_string()), "{err}");
        assert!(err.contains("Permission denied"), "{err}");
    }
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_run_killed_before_its_first_checkpoint_is_started_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_data(dir.path());
    let run = dir.path().join("run");
    // Killed after its first step, long before its first checkpoint.
    let args = sft_args(&data, &run, 600, 1000);
    kill_when(&args, &run, training);
    assert!(checkpoint_steps(&run).is_empty());
    assert!(
        run.join("temper.lock").is_file(),
        "SIGKILL removed the lock"
    );

    // --resume has nothing to resume and says how to go on.
    let resume = temper()
        .args(["sft", "--resume"])
        .arg(&run)
        .arg("--quiet")
        .output()
        .unwrap();
    let err = clean_failure(&resume);
    assert!(err.contains("taking over the stale lock of pid"), "{err}");
    assert!(
        err.contains("no checkpoint to resume from") && err.contains("started afresh"),
        "{err}"
    );
    assert!(
        !run.join("temper.lock").exists(),
        "the refused --resume left its lock"
    );

    // Killed again; the same command again (shorter here) takes the directory over with warnings
    // and finishes.
    kill_when(&args, &run, training);
    let out = temper()
        .args(sft_args(&data, &run, 3, 1000))
        .output()
        .unwrap();
    let err = ok(&out);
    assert!(err.contains("taking over the stale lock of pid"), "{err}");
    assert!(
        err.contains("stopped before its first checkpoint (nothing to resume); starting afresh"),
        "{err}"
    );
    assert!(err.contains("done: 3 steps"), "{err}");
    assert!(run.join("model/model.safetensors").is_file());
    let logged = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps = logged.lines().filter(|l| l.contains("\"loss\"")).count();
    assert_eq!(steps, 3, "the killed run's metrics were kept:\n{logged}");

    // A directory with a finished run is still refused.
    let again = temper()
        .args(sft_args(&data, &run, 3, 1000))
        .output()
        .unwrap();
    let err = clean_failure(&again);
    assert!(err.contains("already holds a run"), "{err}");
}
