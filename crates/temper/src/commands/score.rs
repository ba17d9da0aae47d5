//! `temper score MODEL --data completions.jsonl`: scores completions with a reward model (an HF
//! sequence classifier: one score each) or a process reward model (a token classifier: a score per
//! step and their aggregation). Rows hold `prompt` and `completion`, or stepwise `prompt` and
//! `completions` (steps); an implicit PRM (`temper prm --implicit`) scores steps like a PRM. A boolean `label` (or `correct`) column, when present, yields the AUC:
//! how often a correct completion outscores an incorrect one. Holds no scoring logic.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tempering_model::{Classifier, HeadKind};
use tempering_reward::learned::{
    is_implicit_prm, split_steps, ImplicitPrm, ProcessRewardModel, RewardModel, StepAggregation,
};
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

/// The model `temper score` opened: an outcome model, or a PRM of either kind.
enum Scorer {
    Outcome(Box<Classifier>),
    Steps(Box<dyn SeparatedSteps>),
}

/// A PRM and the separator its steps were trained with.
trait SeparatedSteps: StepScorer {
    fn separator(&self) -> &str;
}

impl SeparatedSteps for ProcessRewardModel {
    fn separator(&self) -> &str {
        ProcessRewardModel::separator(self)
    }
}

impl SeparatedSteps for ImplicitPrm {
    fn separator(&self) -> &str {
        ImplicitPrm::separator(self)
    }
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
    let (wins, pairs) = pair_wins(scored);
    (pairs > 0).then(|| wins / pairs as f64)
}

/// Over every (correct, incorrect) pair: how many the correct one wins (ties count half), and how
/// many pairs there are.
fn pair_wins(scored: &[(f64, bool)]) -> (f64, usize) {
    let pos: Vec<f64> = scored.iter().filter(|s| s.1).map(|s| s.0).collect();
    let neg: Vec<f64> = scored.iter().filter(|s| !s.1).map(|s| s.0).collect();
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
    (wins, pos.len() * neg.len())
}

/// [`auc`] over the pairs that share a prompt only (pooled over prompts): how often a correct
/// completion outscores an incorrect one *of the same problem*, which is what best-of-N sees. A
/// scorer can reach a high [`auc`] by telling easy problems from hard ones and still be at chance
/// here. `None` when no prompt has both kinds.
pub fn within_prompt_auc(scored: &[(&str, f64, bool)]) -> Option<(f64, usize)> {
    let mut by_prompt: std::collections::BTreeMap<&str, Vec<(f64, bool)>> = Default::default();
    for &(p, score, label) in scored {
        by_prompt.entry(p).or_default().push((score, label));
    }
    let (mut wins, mut pairs, mut used) = (0.0, 0usize, 0usize);
    for rows in by_prompt.values() {
        let (w, n) = pair_wins(rows);
        if n > 0 {
            wins += w;
            pairs += n;
            used += 1;
        }
    }
    (pairs > 0).then(|| (wins / pairs as f64, used))
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let aggregation: StepAggregation = a.aggregate.parse()?;
    let (device, dtype) = device_and_dtype(&a.device.device, a.device.dtype.as_deref())?;
    let items = read_items(&a.data)?;
    let mut rows = Vec::with_capacity(items.len());
    let mut labelled = Vec::new();
    let scorer = if is_implicit_prm(&a.model) {
        Scorer::Steps(Box::new(
            ImplicitPrm::open_with(&a.model, dtype, &device)
                .with_context(|| format!("opening the implicit PRM {}", a.model.display()))?,
        ))
    } else {
        let c = Classifier::open(&a.model, dtype, &device)
            .with_context(|| format!("opening the reward model {}", a.model.display()))?;
        match c.kind {
            HeadKind::Sequence => Scorer::Outcome(Box::new(c)),
            HeadKind::Token => Scorer::Steps(Box::new(ProcessRewardModel::from_classifier(c)?)),
        }
    };
    match scorer {
        Scorer::Outcome(c) => {
            let rm = RewardModel::from_classifier(*c)?;
            let pairs: Vec<(&str, &str)> = items
                .iter()
                .map(|i| (i.prompt.as_str(), i.completion.as_str()))
                .collect();
            let scores = rm.score_texts(&pairs)?;
            for (item, s) in items.into_iter().zip(scores) {
                if let Some(l) = item.label {
                    labelled.push((item.prompt.clone(), s, l));
                }
                let mut row = item.row;
                row.insert("score".into(), json!(s));
                rows.push(row);
            }
        }
        Scorer::Steps(prm) => {
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
                    labelled.push((item.prompt.clone(), score, l));
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
    let pooled: Vec<(f64, bool)> = labelled.iter().map(|l| (l.1, l.2)).collect();
    if let Some(auc) = auc(&pooled) {
        eprintln!(
            "AUC over {} labelled rows: {:.3} (how often a correct completion outscores an incorrect one)",
            labelled.len(),
            auc
        );
    }
    let by_prompt: Vec<(&str, f64, bool)> =
        labelled.iter().map(|l| (l.0.as_str(), l.1, l.2)).collect();
    if let Some((auc, prompts)) = within_prompt_auc(&by_prompt) {
        eprintln!(
            "within-problem AUC over {prompts} problems with both kinds: {auc:.3} (how often a correct completion outscores an incorrect one of the same problem: what best-of-N sees)"
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

    #[test]
    fn within_prompt_auc_ignores_pairs_across_problems() {
        // Problem a is easy (all high), b hard (all low): the pooled AUC rewards that, the
        // within-problem one sees that each problem's wrong completion wins.
        let rows = [
            ("a", 0.8, true),
            ("a", 0.85, true),
            ("a", 0.9, false),
            ("b", 0.1, true),
            ("b", 0.2, false),
            ("b", 0.25, false),
            ("b", 0.3, false),
            ("c", 0.7, true),
        ];
        let pooled: Vec<(f64, bool)> = rows.iter().map(|r| (r.1, r.2)).collect();
        assert_eq!(auc(&pooled), Some(9.0 / 16.0));
        assert_eq!(within_prompt_auc(&rows), Some((0.0, 2)));
        assert_eq!(within_prompt_auc(&rows[7..]), None);
    }
}
