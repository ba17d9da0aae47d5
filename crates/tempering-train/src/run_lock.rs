//! One run per directory: `DIR/temper.lock` holds the pid and command line of the process that
//! owns the run, under an exclusive advisory lock (`flock`) that the kernel drops when the
//! process dies, however it dies. A second process finds the lock held and is refused with the
//! owner's pid and command; a lock file left by a dead process (no lock held on it) is taken over
//! with a warning naming that process. The file is removed when the [`RunLock`] is dropped. Where
//! the file system has no advisory locks, the pid in the file is checked for a live process instead.
//! Knows files and processes; nothing of training.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = "temper.lock";

/// Holds a run directory for this process; dropping it releases and removes the lock file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    file: File,
    /// The directory, when this lock created it (removed again on drop if still empty).
    created: Option<PathBuf>,
}

/// The pid and command line recorded in a lock file.
fn owner(text: &str) -> (String, Option<String>) {
    let mut lines = text.lines();
    let pid = lines.next().unwrap_or("").trim().to_string();
    let pid = if pid.is_empty() { "?".into() } else { pid };
    let command = lines
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty());
    (pid, command)
}

/// Whether process `pid` is alive, as far as `/proc` tells (assumed alive where it cannot tell).
fn alive(pid: &str) -> bool {
    match pid.parse::<u32>() {
        Ok(p) if Path::new("/proc/self").exists() => {
            Path::new("/proc").join(p.to_string()).exists()
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

impl RunLock {
    /// Locks `dir` (created if needed) for this process, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let created = (!dir.exists()).then(|| dir.to_path_buf());
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        // A few tries: the owner may remove the file between our open and our lock.
        for _ in 0..5 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| TrainError::io(&path, e))?;
            let mut text = String::new();
            let locked = match file.try_lock() {
                Ok(()) => true,
                Err(TryLockError::WouldBlock) => false,
                // No advisory locks here: fall back to the pid in the file.
                Err(TryLockError::Error(_)) => {
                    let _ = file.read_to_string(&mut text);
                    let (pid, _) = owner(&text);
                    text.trim().is_empty() || !alive(&pid)
                }
            };
            if !locked {
                let _ = file.read_to_string(&mut text);
                let (pid, command) = owner(&text);
                return Err(TrainError::Locked {
                    dir: dir.to_path_buf(),
                    pid,
                    command,
                });
            }
            // The file we locked must still be the one at `path` (not one its owner just removed).
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => {
                    use std::os::unix::fs::MetadataExt;
                    a.dev() == b.dev() && a.ino() == b.ino()
                }
                _ => false,
            };
            if !same {
                continue;
            }
            text.clear();
            let _ = file.read_to_string(&mut text);
            if !text.trim().is_empty() {
                let (pid, command) = owner(&text);
                if pid != std::process::id().to_string() {
                    eprintln!(
                        "warning: {}: taking over the stale lock of pid {pid}{} (no longer running)",
                        dir.display(),
                        command.map(|c| format!(": {c}")).unwrap_or_default()
                    );
                }
            }
            let command: Vec<String> = std::env::args().collect();
            let write = |file: &mut File| -> std::io::Result<()> {
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
                writeln!(file, "{}\n{}", std::process::id(), command.join(" "))?;
                file.sync_all()
            };
            write(&mut file).map_err(|e| TrainError::io(&path, e))?;
            return Ok(RunLock {
                path,
                file,
                created,
            });
        }
        Err(TrainError::io(
            &path,
            std::io::Error::other("the lock file kept changing under us; try again"),
        ))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Remove while still holding the lock, so no one locks a file that is about to vanish
        // (and a process that opened it meanwhile sees it gone and tries again).
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
        if let Some(dir) = &self.created {
            // Only succeeds when empty: a run that failed before writing anything leaves nothing.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_and_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let lock = RunLock::acquire(&run).unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert!(
            text.starts_with(&format!("{}\n", std::process::id())),
            "{text}"
        );
        // flock locks belong to the open file, so a second open in this process is refused too.
        let e = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(
            e.contains("in use by another run") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(lock);
        assert!(
            !run.exists(),
            "the lock created the directory and removes it empty"
        );
        std::fs::create_dir(&run).unwrap();
        let again = RunLock::acquire(&run).unwrap();
        drop(again);
        assert!(run.is_dir() && !run.join(LOCK_FILE).exists());
    }

    #[test]
    fn a_stale_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(LOCK_FILE),
            "4000000\ntemper sft --output x\n",
        )
        .unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert!(
            text.starts_with(&format!("{}\n", std::process::id())),
            "{text}"
        );
    }
}
