//! Generated problems as JSONL records in TRL's column conventions (`prompt`, `completion`, `answer`, plus
//! `task`, `level`, `split`, `id`), written atomically, and the split check over records read back. Knows
//! the task types, nothing of trainers or models.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};
use crate::task::{split_of, Problem, Split};

/// One line of a generated dataset. `completion` is the worked solution, so the file feeds SFT as it is;
/// `answer` is the reference that RL rewards and evaluation check against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub prompt: String,
    pub completion: String,
    pub answer: String,
    pub task: String,
    pub level: u32,
    pub split: Split,
    pub id: String,
}

impl TaskRecord {
    /// `id` is `TASK-SPLIT-SEED-INDEX`: unique within a generated set and traceable to its command.
    pub fn from_problem(p: &Problem, seed: u64, index: usize) -> Self {
        TaskRecord {
            prompt: p.prompt.clone(),
            completion: p.solution.clone(),
            answer: p.answer.clone(),
            task: p.task.clone(),
            level: p.level,
            split: p.split,
            id: format!("{}-{}-{seed}-{index}", p.task, p.split),
        }
    }
}

/// Records for `problems` generated with `seed`, in order.
pub fn records(problems: &[Problem], seed: u64) -> Vec<TaskRecord> {
    problems
        .iter()
        .enumerate()
        .map(|(i, p)| TaskRecord::from_problem(p, seed, i))
        .collect()
}

/// Writes one JSON object per line to a temporary file beside `path`, then renames it: a crash never
/// leaves a half-written dataset under the final name.
pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| TaskError::format(path, "expected a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for row in rows {
            serde_json::to_writer(&mut w, row)?;
            w.write_all(b"\n")?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(TaskError::io(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| TaskError::io(path, e))
}

/// Checks records read back from files: each sits in the split its prompt hashes to, and no prompt of a
/// task appears under both splits.
pub fn check_records(records: &[TaskRecord]) -> Result<()> {
    let mut seen: HashMap<(&str, &str), (Split, &str)> = HashMap::new();
    for r in records {
        let want = split_of(&r.task, &r.prompt);
        if r.split != want {
            return Err(TaskError::SplitCheck(format!(
                "record `{}` is marked {} but its prompt hashes to {want}",
                r.id, r.split
            )));
        }
        if let Some((split, id)) = seen.insert((&r.task, &r.prompt), (r.split, &r.id)) {
            if split != r.split {
                return Err(TaskError::SplitCheck(format!(
                    "records `{id}` ({split}) and `{}` ({}) share the prompt {:?}",
                    r.id, r.split, r.prompt
                )));
            }
        }
    }
    Ok(())
}
