//! Reading what the demo's stages wrote: an evaluation's `results.jsonl` (through serde, the
//! fields the demo reports) and a run's `metrics.jsonl`. Knows the files' shape; runs nothing.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

/// One line of an evaluation's `results.jsonl` (the fields the demo reads).
#[derive(Deserialize, Debug, Clone)]
pub(crate) struct ResultLine {
    pub strategy: String,
    pub index: usize,
    pub correct: bool,
    pub cost: CostLine,
    /// A sampling strategy's candidates: how many it drew and how many are correct.
    #[serde(default)]
    pub candidates: Option<CandidatesLine>,
}

#[derive(Deserialize, Debug, Clone, Copy)]
pub(crate) struct CandidatesLine {
    pub drawn: usize,
    pub correct: usize,
}

#[derive(Deserialize, Debug, Clone)]
pub(crate) struct CostLine {
    pub generated_tokens: usize,
}

pub(super) fn read_results(dir: &Path) -> Result<Vec<ResultLine>> {
    let path = dir.join("results.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not an eval result", path.display(), i + 1))
        })
        .collect()
}

pub(super) fn read_metrics(path: &Path) -> Result<Vec<Map<String, Value>>> {
    tempering_train::metrics::read(path).with_context(|| format!("reading {}", path.display()))
}
