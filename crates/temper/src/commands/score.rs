//! `temper score MODEL --data completions.jsonl`: scores completions with a reward model (an HF
//! sequence classifier: one score each) or a process reward model (a token classifier: a score per
//! step and their aggregation). Rows hold `prompt` and `completion`, or stepwise `prompt` and
//! `completions` (steps); a boolean `label` (or `correct`) column, when present, yields the AUC:
//! how often a correct completion outscores an incorrect one. Holds no scoring logic.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tempering_model::{Classifier, HeadKind};
use tempering_reward::learned::{split_steps, ProcessRewardModel, RewardModel, StepAggregation};
use tempering_reward::StepScorer;
use tempering_tasks::dataset::read_rows_numbered;
use tempering_tasks::write_jsonl;

use super::model::DeviceArgs;
use crate::device::device_and_dtype;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// A reward model or process reward model directory (as `temper rm` / `temper prm` write).
    pub model: PathBuf,
    /// JSONL or Parquet: `prompt` with `completion` (text) or `completions` (a list of steps).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the rows with their scores (JSONL); absent: standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// How a PRM's step scores become one: min, last, product or mean.
    #[arg(long, default_value = "min")]
    pub aggregate: String,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// One row to score: prompt, steps (PRM) or completion text (RM), and its label if any.
struct Item {
    row: serde_json::Map<String, Value>,
    prompt: String,
    completion: String,
    steps: Option<Vec<String>>,
    label: Option<bool>,
}

fn read_items(path: &std::path::Path) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    for (line, row) in read_rows_numbered(path)? {
        let at = || format!("{}:{line}", path.display());
        let prompt = match row.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            _ => bail!("{}: expected a string `prompt`", at()),
        };
        let (completion, steps) = match (row.get("completion"), row.get("completions")) {
            (Some(Value::String(c)), _) => (c.clone(), None),
            (_, Some(Value::Array(items))) => {
                let steps = items
                    .iter()
                    .map(|s| s.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .with_context(|| {
                        format!("{}: `completions` must be a list of strings", at())
                    })?;
                (steps.join("\n"), Some(steps))
            }
            _ => bail!(
                "{}: expected a string `completion` or a list of steps `completions`",
                at()
            ),
        };
        let label = match row.get("label").or_else(|| row.get("correct")) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => bail!("{}: `label` must be a boolean, found {other}", at()),
        };
        out.push(Item {
            row,
            prompt,
            completion,
            steps,
            label,
        });
    }
    Ok(out)
}

/// The probability that a labelled-correct item outscores a labelled-incorrect one (ties count
/// half); `None` without both kinds.
pub fn auc(scored: &[(f64, bool)]) -> Option<f64> {
    let pos: Vec<f64> = scored.iter().filter(|s| s.1).map(|s| s.0).collect();
    let neg: Vec<f64> = scored.iter().filter(|s| !s.1).map(|s| s.0).collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (pos.len() * neg.len()) as f64)
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let aggregation: StepAggregation = a.aggregate.parse()?;
    let (device, dtype) = device_and_dtype(&a.device.device, a.device.dtype.as_deref())?;
    let c = Classifier::open(&a.model, dtype, &device)
        .with_context(|| format!("opening the reward model {}", a.model.display()))?;
    let items = read_items(&a.data)?;
    let mut rows = Vec::with_capacity(items.len());
    let mut labelled = Vec::new();
    match c.kind {
        HeadKind::Sequence => {
            let rm = RewardModel::from_classifier(c)?;
            let pairs: Vec<(&str, &str)> = items
                .iter()
                .map(|i| (i.prompt.as_str(), i.completion.as_str()))
                .collect();
            let scores = rm.score_texts(&pairs)?;
            for (item, s) in items.into_iter().zip(scores) {
                if let Some(l) = item.label {
                    labelled.push((s, l));
                }
                let mut row = item.row;
                row.insert("score".into(), json!(s));
                rows.push(row);
            }
        }
        HeadKind::Token => {
            let prm = ProcessRewardModel::from_classifier(c)?;
            let sep = prm.separator().to_string();
            let batch: Vec<(&str, Vec<&str>)> = items
                .iter()
                .map(|i| {
                    let steps = match &i.steps {
                        Some(s) => s.iter().map(String::as_str).collect(),
                        None => split_steps(&i.completion, &sep),
                    };
                    (i.prompt.as_str(), steps)
                })
                .collect();
            let step_scores = prm.score_steps_batch(&batch)?;
            for (item, s) in items.into_iter().zip(step_scores) {
                let score = aggregation.apply(&s);
                if let Some(l) = item.label {
                    labelled.push((score, l));
                }
                let mut row = item.row;
                row.insert("step_scores".into(), json!(s));
                row.insert("score".into(), json!(score));
                row.insert("aggregate".into(), json!(aggregation.as_str()));
                rows.push(row);
            }
        }
    }
    match &a.output {
        Some(path) => {
            write_jsonl(path, &rows).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("scored {} rows; wrote {}", rows.len(), path.display());
        }
        None => {
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
        }
    }
    if let Some(auc) = auc(&labelled) {
        eprintln!(
            "AUC over {} labelled rows: {:.3} (how often a correct completion outscores an incorrect one)",
            labelled.len(),
            auc
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_by_hand() {
        assert_eq!(auc(&[(1.0, true), (0.0, false)]), Some(1.0));
        assert_eq!(auc(&[(0.0, true), (1.0, false)]), Some(0.0));
        // Pairs: (0.9 vs 0.5) win, (0.9 vs 0.9) tie, (0.2 vs 0.5) loss, (0.2 vs 0.9) loss.
        assert_eq!(
            auc(&[(0.9, true), (0.2, true), (0.5, false), (0.9, false)]),
            Some(1.5 / 4.0)
        );
        assert_eq!(auc(&[(0.9, true)]), None);
    }
}
