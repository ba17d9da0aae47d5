//! The Bradley-Terry outcome reward model: preference rows (`prompt`/`chosen`/`rejected`, optional
//! `margin`) become pairs of token sequences, and the objective trains a decoder with a one-label
//! score head (read at the last token) so that chosen completions score above rejected ones:
//! `-log sigmoid(r_chosen - r_rejected - margin)`, plus an optional reward-centering term
//! `c * (r_chosen + r_rejected)^2` (TRL's `center_rewards_coefficient`). Logs pairwise accuracy.
//! Knows the tokenizer, the chat template, the decoder and its score head; nothing of optimisers or
//! checkpoints.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::Value;
use tempering_model::{ChatMessage, ChatTemplate, ScoreHead, Tokenizer, Transformer};
use tempering_reward::learned::completion_tokens;
use tempering_tasks::dataset::{read_rows_numbered, Message, PreferenceExample, TextOrChat};

use crate::error::{Result, TrainError};
use crate::objective::{LossOutput, Objective, StepContext};

/// One preference pair, tokenised: `chosen` and `rejected` each hold prompt and completion.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    /// Subtracted from the reward difference in the loss (TRL's `margin` column); 0 without one.
    pub margin: f32,
}

/// What reading a preference dataset did, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairReport {
    pub rows: usize,
    pub kept: usize,
    /// Rows whose chosen and rejected sides are the same sequence: they carry no preference.
    pub identical: usize,
    /// Rows with a side longer than `max_length` (dropped, as TRL does).
    pub too_long: usize,
}

fn chat(messages: &[Message]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
        .collect()
}

/// One side's tokens: plain text is `prompt + completion` then EOS; a conversation is rendered
/// whole with the chat template (which writes its own end-of-turn).
fn side_tokens(
    prompt: &TextOrChat,
    completion: &TextOrChat,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<Vec<u32>> {
    match (prompt, completion) {
        (TextOrChat::Text(p), TextOrChat::Text(c)) => Ok(completion_tokens(tokenizer, p, c)?),
        (TextOrChat::Chat(p), TextOrChat::Chat(c)) => {
            let t = template.ok_or_else(|| {
                TrainError::config(
                    "data",
                    "a conversational example needs a chat template, and the model has none",
                )
            })?;
            let mut all = chat(p);
            all.extend(chat(c));
            Ok(tokenizer.encode(&t.render(&all, false)?, false)?)
        }
        _ => Err(TrainError::config(
            "data",
            "`prompt` and the completions must both be strings or both lists of messages",
        )),
    }
}

/// Reads a JSONL or Parquet preference dataset and tokenises it. Rows whose two sides are the same
/// are counted and skipped with a warning; rows longer than `max_length` are dropped; a bad row is
/// an error naming the file and line.
pub fn load_preference_pairs(
    path: &Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    max_length: usize,
) -> Result<(Vec<PreferencePair>, PairReport)> {
    let rows = read_rows_numbered(path)?;
    let mut report = PairReport {
        rows: rows.len(),
        ..Default::default()
    };
    let mut pairs = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        let err = |msg: String| TrainError::Example {
            path: path.to_path_buf(),
            line: *line,
            msg,
        };
        let ex = PreferenceExample::from_row(row, path, *line)?;
        let margin = match row.get("margin") {
            None | Some(Value::Null) => 0.0,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0) as f32,
            Some(other) => {
                return Err(err(format!(
                    "column `margin`: expected a number, found {other}"
                )))
            }
        };
        let chosen = side_tokens(&ex.prompt, &ex.chosen, tokenizer, template)
            .map_err(|e| err(e.to_string()))?;
        let rejected = side_tokens(&ex.prompt, &ex.rejected, tokenizer, template)
            .map_err(|e| err(e.to_string()))?;
        if chosen == rejected {
            report.identical += 1;
            continue;
        }
        if chosen.len() > max_length || rejected.len() > max_length {
            report.too_long += 1;
            continue;
        }
        pairs.push(PreferencePair {
            chosen,
            rejected,
            margin,
        });
    }
    if report.identical > 0 {
        tracing::warn!(
            "{}: skipped {} of {} rows whose `chosen` equals `rejected` (no preference to learn)",
            path.display(),
            report.identical,
            report.rows
        );
    }
    report.kept = pairs.len();
    if pairs.is_empty() {
        return Err(TrainError::EmptyData {
            what: path.display().to_string(),
            why: Some(format!(
                "of {} rows, {} have chosen equal to rejected and {} are longer than max_length {}",
                report.rows, report.identical, report.too_long, max_length
            )),
        });
    }
    Ok((pairs, report))
}

/// `log(1 + exp(x))`, differentiable and stable for large `|x|`: `max(x, 0) + log(1 + exp(-|x|))`.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.relu()? + tail)?)
}

/// The summed Bradley-Terry loss of a batch of pairs: `sum_i -log sigmoid(rc_i - rr_i - m_i)`
/// plus `center * sum_i (rc_i + rr_i)^2`, for rewards `rc`, `rr` and margins `m` of shape `[B]`.
pub fn bradley_terry_loss(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: Option<&Tensor>,
    center: f64,
) -> Result<Tensor> {
    let mut diff = (chosen - rejected)?;
    if let Some(m) = margin {
        diff = (diff - m)?;
    }
    let mut loss = softplus(&diff.neg()?)?.sum_all()?;
    if center > 0.0 {
        loss = (loss + ((chosen + rejected)?.sqr()?.sum_all()? * center)?)?;
    }
    Ok(loss)
}

/// Trains a decoder and a one-label score head on preference pairs.
pub struct RewardModelObjective {
    model: Transformer,
    head: ScoreHead,
    pad_id: u32,
    center: f64,
}

impl RewardModelObjective {
    /// `model` and `head` must already carry their trainable `Var`s.
    pub fn new(model: Transformer, head: ScoreHead, pad_id: u32, center: f64) -> Self {
        RewardModelObjective {
            model,
            head,
            pad_id,
            center,
        }
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    pub fn head(&self) -> &ScoreHead {
        &self.head
    }

    /// Rewards `[2B]` of the chosen sides then the rejected sides of `batch`.
    fn rewards(&self, batch: &[&PreferencePair]) -> Result<Tensor> {
        let seqs: Vec<&[u32]> = batch
            .iter()
            .map(|p| p.chosen.as_slice())
            .chain(batch.iter().map(|p| p.rejected.as_slice()))
            .collect();
        let positions: Vec<Vec<usize>> = seqs.iter().map(|s| vec![s.len() - 1]).collect();
        let h = self.model.hidden_at(&seqs, &positions, self.pad_id)?;
        Ok(self.head.forward(&h)?.to_dtype(DType::F32)?.flatten_all()?)
    }
}

impl Objective for RewardModelObjective {
    type Example = PreferencePair;

    fn name(&self) -> &str {
        "reward_model"
    }

    fn loss(
        &mut self,
        batch: &[&PreferencePair],
        _ctx: &mut StepContext<'_>,
    ) -> Result<LossOutput> {
        let b = batch.len();
        let r = self.rewards(batch)?;
        let (rc, rr) = (r.narrow(0, 0, b)?, r.narrow(0, b, b)?);
        let margins: Vec<f32> = batch.iter().map(|p| p.margin).collect();
        let has_margin = margins.iter().any(|&m| m != 0.0);
        let m = Tensor::from_vec(margins, b, r.device())?;
        let loss_sum = bradley_terry_loss(&rc, &rr, has_margin.then_some(&m), self.center)?;
        let (c, j) = (rc.to_vec1::<f32>()?, rr.to_vec1::<f32>()?);
        let wins = c.iter().zip(&j).filter(|(a, b)| a > b).count();
        let sum = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>();
        let tokens = batch
            .iter()
            .map(|p| p.chosen.len() + p.rejected.len())
            .sum();
        Ok(LossOutput {
            loss_sum,
            weight: b as f64,
            tokens,
            metrics: vec![
                ("accuracy".into(), wins as f64),
                ("reward_chosen".into(), sum(&c)),
                ("reward_rejected".into(), sum(&j)),
                ("margin".into(), sum(&c) - sum(&j)),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn scalar(x: &Tensor) -> f64 {
        x.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn loss_matches_the_closed_form() {
        let (rc, rr, m) = (
            [1.5f32, -0.3, 40.0, -35.0],
            [0.5f32, 0.2, 0.0, 0.0],
            [0.0f32, 0.25, 0.0, 1.0],
        );
        let want_plain: f64 = rc
            .iter()
            .zip(&rr)
            .map(|(a, b)| {
                let d = f64::from(a - b);
                (1.0 + (-d).exp()).ln()
            })
            .sum();
        let got = scalar(&bradley_terry_loss(&t(&rc), &t(&rr), None, 0.0).unwrap());
        assert!(
            (got - want_plain).abs() < 1e-4 * want_plain.max(1.0),
            "{got} vs {want_plain}"
        );

        let center = 0.01;
        let want: f64 = (0..4)
            .map(|i| {
                let d = f64::from(rc[i]) - f64::from(rr[i]) - f64::from(m[i]);
                let s = f64::from(rc[i]) + f64::from(rr[i]);
                (1.0 + (-d).exp()).ln() + center * s * s
            })
            .sum();
        let got = scalar(&bradley_terry_loss(&t(&rc), &t(&rr), Some(&t(&m)), center).unwrap());
        assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
        // log 2 per pair when the rewards tie.
        let tie = scalar(&bradley_terry_loss(&t(&[0.7, 0.7]), &t(&[0.7, 0.7]), None, 0.0).unwrap());
        assert!((tie - 2.0 * 2f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn gradient_matches_the_closed_form() {
        // d/d rc of softplus(-(rc - rr - m)) = -sigmoid(-(rc - rr - m)); d/d rr is its negation;
        // the centering term adds 2c(rc + rr) to both.
        let (c0, r0, m0, center) = (0.8f64, -0.4f64, 0.3f64, 0.05f64);
        let rc = Var::new(&[c0 as f32], &Device::Cpu).unwrap();
        let rr = Var::new(&[r0 as f32], &Device::Cpu).unwrap();
        let loss = bradley_terry_loss(
            rc.as_tensor(),
            rr.as_tensor(),
            Some(&t(&[m0 as f32])),
            center,
        )
        .unwrap();
        let g = loss.backward().unwrap();
        let gc = g.get(rc.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        let gr = g.get(rr.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        let sig = 1.0 / (1.0 + (c0 - r0 - m0).exp());
        let cent = 2.0 * center * (c0 + r0);
        assert!((gc - (-sig + cent)).abs() < 1e-5, "{gc}");
        assert!((gr - (sig + cent)).abs() < 1e-5, "{gr}");
    }

    #[test]
    fn identical_sides_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"prompt":"1+1\n","chosen":"2","rejected":"3"}"#,
                "\n",
                r#"{"prompt":"1+2\n","chosen":"3","rejected":"3"}"#,
                "\n",
                r#"{"prompt":"2+2\n","chosen":"4","rejected":"5","margin":0.5}"#,
                "\n"
            ),
        )
        .unwrap();
        let tok = Tokenizer::char_level("0123456789+\n".chars()).unwrap();
        let (pairs, report) = load_preference_pairs(&path, &tok, None, 64).unwrap();
        assert_eq!(report.rows, 3);
        assert_eq!(report.identical, 1);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].margin, 0.5);
        assert_eq!(tok.decode(&pairs[0].chosen, false).unwrap(), "1+1\n2<eos>");

        std::fs::write(&path, r#"{"prompt":"1","chosen":"2","rejected":"2"}"#).unwrap();
        let e = load_preference_pairs(&path, &tok, None, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chosen equal to rejected"), "{e}");

        std::fs::write(
            &path,
            "\n".to_string() + r#"{"prompt":"1","chosen":"2","rejected":"3","margin":"big"}"#,
        )
        .unwrap();
        let e = load_preference_pairs(&path, &tok, None, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefs.jsonl:2") && e.contains("margin"), "{e}");
    }
}
