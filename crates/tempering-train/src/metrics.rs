//! `metrics.jsonl`: one JSON object per line (training steps and evaluations), appended as the run
//! goes. On resume the lines after the checkpoint's step are dropped first, so the file reads as if the
//! run had never stopped. Knows JSON lines; nothing of what produced the numbers.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Result, TrainError};

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl` for appending, keeping only lines whose `step` is at most
    /// `keep_through` (all of them are dropped for a fresh run: `None`).
    pub fn open(run_dir: &Path, keep_through: Option<usize>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let mut kept = String::new();
        if let (Some(limit), true) = (keep_through, path.is_file()) {
            let f = File::open(&path).map_err(|e| TrainError::io(&path, e))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| TrainError::io(&path, e))?;
                let step = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
                if step.is_some_and(|s| s as usize <= limit) {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
        }
        tempering_model::write_atomic(&path, kept.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(MetricsLog { path, file })
    }

    pub fn write(&mut self, record: Map<String, Value>) -> Result<()> {
        let mut line = Value::Object(record).to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| TrainError::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every record of a `metrics.jsonl` (for tests and reports).
pub fn read(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(TrainError::format(
                path,
                format!("line {}: expected a JSON object", i + 1),
            )),
        })
        .collect()
}
