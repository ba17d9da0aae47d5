//! The implicit process reward model's objective (Yuan et al. 2024, "Free Process Rewards without
//! Process Labels"): a causal LM learns from outcome labels only, with the solution's reward
//! defined as `r = beta * log(pi(y | x) / pi_ref(y | x))` (summed over the completion's tokens) and
//! trained by cross-entropy, `-log sigmoid(r)` for a correct solution and `-log sigmoid(-r)` for a
//! wrong one. The sum up to each step's end then scores that step
//! (`tempering_reward::learned::ImplicitPrm`). Stepwise rows are read as for the classifier PRM
//! and tokenised by the same function; a row's outcome is its last step's label. Holds the data,
//! the loss and the objective; nothing of optimisers or checkpoints.

use std::path::Path;

use candle_core::{DType, Tensor};
use tempering_model::{Tokenizer, Transformer};

use crate::dpo::data::PromptCompletion;
use crate::dpo::logps::{completion_logps, completion_logps_values};
use crate::dpo::loss::log_sigmoid;
use crate::error::{Result, TrainError};
use crate::objective::{LossOutput, Objective, StepContext};
use crate::prm::{tokenised_rows, StepDataOptions, StepReport};

/// One solution: its tokens (the prompt, then every step followed by the separator), whether it
/// reached the right answer, and its completion's summed log-prob under the reference once known.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeSequence {
    pub seq: PromptCompletion,
    pub correct: bool,
    pub reference: Option<f64>,
    /// The row's line in its file, for errors.
    pub line: usize,
}

/// Reads a stepwise dataset (JSONL or Parquet) as outcome-labelled solutions: each row's outcome
/// is its last step's label. Rows longer than `max_length` tokens are dropped (a cut solution has
/// no outcome); `last_step_only` is implied.
pub fn load_outcome_sequences(
    path: &Path,
    tokenizer: &Tokenizer,
    opts: &StepDataOptions,
) -> Result<(Vec<OutcomeSequence>, StepReport)> {
    let rows = tokenised_rows(path, tokenizer, &opts.separator)?;
    let mut report = StepReport {
        rows: rows.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(rows.len());
    for (line, ex, st) in rows {
        let Some(&correct) = ex.labels.last() else {
            report.dropped += 1;
            continue;
        };
        if st.ids.len() > opts.max_length {
            report.truncated += 1;
            continue;
        }
        if st.prompt_len >= st.ids.len() {
            report.dropped += 1;
            continue;
        }
        report.steps += 1;
        report.positive += usize::from(correct);
        out.push(OutcomeSequence {
            seq: PromptCompletion {
                ids: st.ids,
                start: st.prompt_len,
            },
            correct,
            reference: None,
            line,
        });
    }
    if out.is_empty() {
        return Err(TrainError::EmptyData {
            what: path.display().to_string(),
            why: Some(format!(
                "none of its {} rows is a labelled solution within max_length {}",
                report.rows, opts.max_length
            )),
        });
    }
    Ok((out, report))
}

/// The summed cross-entropy of outcome labels under the implicit reward `beta * (logps -
/// reference)` (`logps` `[N]`, differentiable), and metrics as sums over the examples: `accuracy`
/// (the reward's sign matches the label) and the mean reward of each class (`rewards/correct`,
/// `rewards/wrong`, scaled by N so the trainer's division by the example count gives the class
/// mean).
pub fn implicit_prm_loss(
    beta: f64,
    logps: &Tensor,
    reference: &[f64],
    correct: &[bool],
) -> Result<(Tensor, Vec<(String, f64)>)> {
    let n = correct.len();
    if n == 0 || logps.dims() != [n] || reference.len() != n {
        return Err(TrainError::config(
            "batch",
            format!("implicit PRM loss: inconsistent batch of {n} labels"),
        ));
    }
    let dev = logps.device().clone();
    let logratio = (logps.to_dtype(DType::F64)? - Tensor::from_vec(reference.to_vec(), n, &dev)?)?;
    let sign: Vec<f64> = correct
        .iter()
        .map(|&c| if c { 1.0 } else { -1.0 })
        .collect();
    let z = (logratio.affine(beta, 0.0)? * Tensor::from_vec(sign, n, &dev)?)?;
    let loss_sum = log_sigmoid(&z)?.sum_all()?.neg()?;
    let r: Vec<f64> = logratio
        .detach()
        .to_vec1::<f64>()?
        .iter()
        .map(|v| beta * v)
        .collect();
    let hits = r
        .iter()
        .zip(correct)
        .filter(|(r, &c)| (**r > 0.0) == c)
        .count();
    let mut metrics = vec![("accuracy".to_string(), hits as f64)];
    for (want, name) in [(true, "rewards/correct"), (false, "rewards/wrong")] {
        let v: Vec<f64> = r
            .iter()
            .zip(correct)
            .filter(|(_, &c)| c == want)
            .map(|(r, _)| *r)
            .collect();
        if !v.is_empty() {
            metrics.push((
                name.to_string(),
                v.iter().sum::<f64>() / v.len() as f64 * n as f64,
            ));
        }
    }
    Ok((loss_sum, metrics))
}

/// Trains a causal LM as an implicit PRM against a frozen reference whose log-probs were computed
/// once ([`precompute_reference`]).
pub struct ImplicitPrmObjective {
    model: Transformer,
    beta: f64,
    pad_id: u32,
}

impl ImplicitPrmObjective {
    /// `model` must already carry its trainable `Var`s.
    pub fn new(model: Transformer, beta: f64, pad_id: u32) -> Result<Self> {
        if !(beta.is_finite() && beta > 0.0) {
            return Err(TrainError::config(
                "beta",
                format!("expected a positive number, got {beta}"),
            ));
        }
        Ok(ImplicitPrmObjective {
            model,
            beta,
            pad_id,
        })
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }
}

/// The reference's summed completion log-probs of every example, in batches of `batch_size`.
pub fn precompute_reference(
    reference: &Transformer,
    data: &mut [OutcomeSequence],
    batch_size: usize,
    pad_id: u32,
) -> Result<()> {
    for chunk in data.chunks_mut(batch_size.max(1)) {
        let rows: Vec<&PromptCompletion> = chunk.iter().map(|e| &e.seq).collect();
        let v = completion_logps_values(reference, &rows, pad_id)?;
        for (e, v) in chunk.iter_mut().zip(v) {
            e.reference = Some(v);
        }
    }
    Ok(())
}

impl Objective for ImplicitPrmObjective {
    type Example = OutcomeSequence;

    fn name(&self) -> &str {
        "implicit_prm"
    }

    fn loss(
        &mut self,
        batch: &[&OutcomeSequence],
        _ctx: &mut StepContext<'_>,
    ) -> Result<LossOutput> {
        let reference = batch
            .iter()
            .map(|e| {
                e.reference.ok_or_else(|| {
                    TrainError::config(
                        "reference",
                        format!(
                            "line {}: the reference log-probs were not computed before training",
                            e.line
                        ),
                    )
                })
            })
            .collect::<Result<Vec<f64>>>()?;
        let seqs: Vec<&PromptCompletion> = batch.iter().map(|e| &e.seq).collect();
        let policy = completion_logps(&self.model, &seqs, self.pad_id)?;
        let correct: Vec<bool> = batch.iter().map(|e| e.correct).collect();
        let (loss_sum, metrics) = implicit_prm_loss(self.beta, &policy.sums, &reference, &correct)?;
        Ok(LossOutput {
            loss_sum,
            weight: batch.len() as f64,
            tokens: policy.tokens,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_loss_is_the_cross_entropy_of_the_implicit_reward() {
        let dev = Device::Cpu;
        let logps = Tensor::new(&[-1.0f32, -3.0], &dev).unwrap();
        let (loss, metrics) = implicit_prm_loss(0.5, &logps, &[-2.0, -2.0], &[true, true]).unwrap();
        // Rewards 0.5 and -0.5: -log sigmoid(0.5) - log sigmoid(-0.5).
        let ls = |x: f64| -(1.0 + (-x).exp()).ln();
        let want = -ls(0.5) - ls(-0.5);
        let got = loss.to_scalar::<f64>().unwrap();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert_eq!(metrics[0], ("accuracy".to_string(), 1.0));
        // A wrong solution is rewarded for a negative log-ratio.
        let (loss, _) = implicit_prm_loss(0.5, &logps, &[-2.0, -2.0], &[false, false]).unwrap();
        assert!((loss.to_scalar::<f64>().unwrap() - want).abs() < 1e-6);
        assert!(implicit_prm_loss(0.5, &logps, &[-2.0], &[true, true]).is_err());
    }
}
