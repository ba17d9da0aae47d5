//! The tiny SFT policy that several CLI test binaries start from (`temper tasks train-tiny
//! arithmetic --level 1 --steps 150 --eval-problems 200`), trained once per build of `temper` and
//! kept under Cargo's test temporary directory with what the command printed. Knows nothing of what
//! the tests do with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

const STDOUT: &str = "train-tiny.stdout";

/// What `temper tasks train-tiny` printed when it trained the shared model.
#[allow(dead_code)]
pub fn tiny_arith_sft_stdout() -> String {
    std::fs::read_to_string(tiny_arith_sft().join(STDOUT)).unwrap()
}

/// The trained model's directory. Keyed by the `temper` binary's modification time and size, so a
/// rebuilt binary trains afresh; written under a temporary name and renamed, so a reader never sees
/// a half-written model (two binaries racing both train, and the first rename wins).
pub fn tiny_arith_sft() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_temper"));
    let meta = std::fs::metadata(bin).unwrap();
    let stamp = meta
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let prefix = "tiny-arith-l1-150-";
    let dir = root.join(format!("{prefix}{stamp:x}-{}", meta.len()));
    // The printed output is written last: with it the directory is complete.
    if dir.join(STDOUT).is_file() {
        return dir;
    }
    std::fs::create_dir_all(root).unwrap();
    let tmp = tempfile::tempdir_in(root).unwrap();
    let out = tmp.path().join("m");
    let run = Command::new(bin)
        .args(["tasks", "train-tiny", "arithmetic", "--level", "1"])
        .args(["--steps", "150", "--eval-problems", "200", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::write(out.join(STDOUT), &run.stdout).unwrap();
    if std::fs::rename(&out, &dir).is_err() {
        // Another binary's run got there first.
        assert!(dir.join(STDOUT).is_file(), "{}", dir.display());
    }
    // Models of earlier builds are stale.
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && e.path() != dir {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    dir
}
