//! The process reward model: stepwise rows (`prompt`/`completions`/`labels`, TRL's format) become
//! one token sequence each (the prompt, then every step followed by the step separator), and the
//! objective trains a decoder with a two-label token-classification head to predict each step's
//! label at the step's last token (cross-entropy; TRL's PRM trainer). Logs step accuracy,
//! precision, recall and F1 of the "correct" label. Knows the tokenizer, the decoder and its score
//! head; nothing of optimisers or checkpoints.

use std::path::Path;

use candle_core::{DType, Tensor};
use tempering_model::{ops, ScoreHead, Tokenizer, Transformer};
use tempering_reward::learned::{step_tokens, StepTokens};
use tempering_tasks::dataset::{read_rows_numbered, StepwiseExample};

use crate::error::{Result, TrainError};
use crate::objective::{LossOutput, Objective, StepContext};

/// One stepwise example, tokenised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSequence {
    pub ids: Vec<u32>,
    /// Where each labelled step ends (its separator token).
    pub positions: Vec<usize>,
    pub labels: Vec<bool>,
}

/// How stepwise rows become sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDataOptions {
    pub max_length: usize,
    pub separator: String,
    pub last_step_only: bool,
}

/// What reading a stepwise dataset did, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    pub rows: usize,
    pub steps: usize,
    pub positive: usize,
    /// Rows cut at `max_length` (their later steps lose their labels).
    pub truncated: usize,
    /// Rows left without a labelled step, dropped.
    pub dropped: usize,
}

/// Every row of a JSONL or Parquet stepwise dataset with its line and its tokens (the prompt, then
/// each step followed by `separator`, as the scorers read them); a malformed row or one that does
/// not tokenise is an error naming the file and line.
pub(crate) fn tokenised_rows(
    path: &Path,
    tokenizer: &Tokenizer,
    separator: &str,
) -> Result<Vec<(usize, StepwiseExample, StepTokens)>> {
    read_rows_numbered(path)?
        .iter()
        .map(|(line, row)| {
            let ex = StepwiseExample::from_row(row, path, *line)?;
            let steps: Vec<&str> = ex.completions.iter().map(String::as_str).collect();
            let st = step_tokens(tokenizer, &ex.prompt, &steps, separator).map_err(|e| {
                TrainError::Example {
                    path: path.to_path_buf(),
                    line: *line,
                    msg: e.to_string(),
                }
            })?;
            Ok((*line, ex, st))
        })
        .collect()
}

/// Reads a JSONL or Parquet stepwise dataset and tokenises it. A row whose `labels` and
/// `completions` differ in length is an error naming the file and line.
pub fn load_step_sequences(
    path: &Path,
    tokenizer: &Tokenizer,
    opts: &StepDataOptions,
) -> Result<(Vec<StepSequence>, StepReport)> {
    let rows = tokenised_rows(path, tokenizer, &opts.separator)?;
    let mut report = StepReport {
        rows: rows.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(rows.len());
    for (_, ex, st) in rows {
        let mut ids = st.ids;
        let mut pairs: Vec<(usize, bool)> = st.step_ends.into_iter().zip(ex.labels).collect();
        if opts.last_step_only {
            pairs.drain(..pairs.len().saturating_sub(1));
        }
        if ids.len() > opts.max_length {
            ids.truncate(opts.max_length);
            pairs.retain(|&(p, _)| p < opts.max_length);
            report.truncated += 1;
        }
        if pairs.is_empty() {
            report.dropped += 1;
            continue;
        }
        report.steps += pairs.len();
        report.positive += pairs.iter().filter(|(_, l)| *l).count();
        out.push(StepSequence {
            ids,
            positions: pairs.iter().map(|&(p, _)| p).collect(),
            labels: pairs.iter().map(|&(_, l)| l).collect(),
        });
    }
    if out.is_empty() {
        return Err(TrainError::EmptyData {
            what: path.display().to_string(),
            why: Some(format!(
                "all {} rows were left without a labelled step at max_length {}",
                report.rows, opts.max_length
            )),
        });
    }
    Ok((out, report))
}

/// Summed cross-entropy of step labels under two-label `logits` `[N, 2]`, with `labels` `[N]` (u32,
/// 0 or 1): `-sum_i log softmax(logits_i)[label_i]`.
pub fn step_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(ops::token_logprobs(logits, labels)?.sum_all()?.neg()?)
}

/// F1 of the positive ("correct") label from true-positive, false-positive and false-negative
/// counts (or rates over one total); 0 when there is no positive at all.
pub fn f1(tp: f64, fp: f64, fneg: f64) -> f64 {
    let d = 2.0 * tp + fp + fneg;
    if d > 0.0 {
        2.0 * tp / d
    } else {
        0.0
    }
}

/// Trains a decoder and a two-label token-classification head on step labels.
pub struct PrmObjective {
    model: Transformer,
    head: ScoreHead,
    pad_id: u32,
}

impl PrmObjective {
    /// `model` and `head` must already carry their trainable `Var`s.
    pub fn new(model: Transformer, head: ScoreHead, pad_id: u32) -> Self {
        PrmObjective {
            model,
            head,
            pad_id,
        }
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    pub fn head(&self) -> &ScoreHead {
        &self.head
    }
}

impl Objective for PrmObjective {
    type Example = StepSequence;

    fn name(&self) -> &str {
        "prm"
    }

    fn loss(&mut self, batch: &[&StepSequence], _ctx: &mut StepContext<'_>) -> Result<LossOutput> {
        let seqs: Vec<&[u32]> = batch.iter().map(|s| s.ids.as_slice()).collect();
        let positions: Vec<Vec<usize>> = batch.iter().map(|s| s.positions.clone()).collect();
        let labels: Vec<bool> = batch
            .iter()
            .flat_map(|s| s.labels.iter().copied())
            .collect();
        let h = self.model.hidden_at(&seqs, &positions, self.pad_id)?;
        let logits = self.head.forward(&h)?.to_dtype(DType::F32)?;
        let n = labels.len();
        let targets = Tensor::from_vec(
            labels.iter().map(|&l| u32::from(l)).collect::<Vec<u32>>(),
            n,
            logits.device(),
        )?;
        let loss_sum = step_loss(&logits, &targets)?;
        let pred: Vec<bool> = logits
            .to_vec2::<f32>()?
            .iter()
            .map(|row| row[1] > row[0])
            .collect();
        let count = |f: &dyn Fn(bool, bool) -> bool| {
            pred.iter().zip(&labels).filter(|(&p, &l)| f(p, l)).count() as f64
        };
        Ok(LossOutput {
            loss_sum,
            weight: n as f64,
            tokens: seqs.iter().map(|s| s.len()).sum(),
            metrics: vec![
                ("step_accuracy".into(), count(&|p, l| p == l)),
                ("true_positive".into(), count(&|p, l| p && l)),
                ("false_positive".into(), count(&|p, l| p && !l)),
                ("false_negative".into(), count(&|p, l| !p && l)),
            ],
        })
    }

    fn derived_metrics(&self, averaged: &[(String, f64)]) -> Vec<(String, f64)> {
        let get = |k: &str| {
            averaged
                .iter()
                .find(|(n, _)| n == k)
                .map_or(0.0, |(_, v)| *v)
        };
        let (tp, fp, fneg) = (
            get("true_positive"),
            get("false_positive"),
            get("false_negative"),
        );
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        vec![
            ("precision".into(), ratio(tp, tp + fp)),
            ("recall".into(), ratio(tp, tp + fneg)),
            ("f1".into(), f1(tp, fp, fneg)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn step_loss_matches_the_closed_form() {
        let logits = [[0.2f32, 1.3], [2.0, -1.0], [0.0, 0.0], [-30.0, 30.0]];
        let labels = [1u32, 1, 0, 0];
        let want: f64 = logits
            .iter()
            .zip(&labels)
            .map(|(row, &l)| {
                let (a, b) = (f64::from(row[0]), f64::from(row[1]));
                let m = a.max(b);
                let lse = m + ((a - m).exp() + (b - m).exp()).ln();
                lse - f64::from(row[l as usize])
            })
            .sum();
        let lt = Tensor::new(&logits, &Device::Cpu).unwrap();
        let yt = Tensor::new(&labels, &Device::Cpu).unwrap();
        let got = step_loss(&lt, &yt)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
    }

    #[test]
    fn f1_by_hand() {
        // 3 true positives, 1 false positive, 2 false negatives: P = 3/4, R = 3/5, F1 = 2/3.
        assert!((f1(3.0, 1.0, 2.0) - 2.0 / 3.0).abs() < 1e-12);
        // Rates over one total give the same F1.
        assert!((f1(0.3, 0.1, 0.2) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(f1(0.0, 0.0, 0.0), 0.0);
    }

    #[test]
    fn labels_sit_at_step_ends_and_mismatched_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"prompt":"Compute: 2+3\n","completions":["2+3=5","Answer: 5"],"labels":[true,true]}"#,
                "\n",
                r#"{"prompt":"Compute: 2+3\n","completions":["2+3=6","Answer: 6"],"labels":[false,false]}"#,
                "\n"
            ),
        )
        .unwrap();
        let tok = Tokenizer::char_level("Compute: 1234567890+=\nAnswer".chars()).unwrap();
        let nl = tok.encode("\n", false).unwrap()[0];
        let opts = StepDataOptions {
            max_length: 64,
            separator: "\n".into(),
            last_step_only: false,
        };
        let (seqs, report) = load_step_sequences(&path, &tok, &opts).unwrap();
        assert_eq!((report.rows, report.steps, report.positive), (2, 4, 2));
        for s in &seqs {
            assert!(s.positions.iter().all(|&p| s.ids[p] == nl));
        }
        let last = StepDataOptions {
            last_step_only: true,
            ..opts.clone()
        };
        let (seqs, _) = load_step_sequences(&path, &tok, &last).unwrap();
        assert_eq!(seqs[0].positions, vec![seqs[0].ids.len() - 1]);

        std::fs::write(
            &path,
            "\n\n".to_string()
                + r#"{"prompt":"Compute: 2+3\n","completions":["2+3=5","Answer: 5"],"labels":[true]}"#,
        )
        .unwrap();
        let e = load_step_sequences(&path, &tok, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("steps.jsonl:3") && e.contains("labels"), "{e}");
    }
}
