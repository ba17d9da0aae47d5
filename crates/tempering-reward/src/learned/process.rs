//! The process reward model: a decoder with a token-classification head (what `temper prm`
//! trains), reading each step's score at the step's last token (its separator). With two labels a
//! step's score is the probability of label 1 ("correct so far"); with one, the sigmoid of its
//! logit. Also: splitting a completion into steps, aggregating step scores into one (min, last,
//! product, mean), and the PRM with an aggregation as a [`Verifier`]. Knows the model layer and the
//! scoring traits; nothing of how it was trained.

use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Device, D};
use tempering_model::{ops, Classifier, HeadKind, ScoreHead, Tokenizer, Transformer};

use super::{default_dtype, name_of, step_batches};
use crate::error::{Result, RewardError};
use crate::scorer::{ScoreInput, Scored, StepScorer, Verifier};

/// The separator a PRM directory uses when its `config.json` names none.
pub const DEFAULT_SEPARATOR: &str = "\n";

pub struct ProcessRewardModel {
    name: String,
    model: Transformer,
    head: ScoreHead,
    tokenizer: Tokenizer,
    separator: String,
    pad: u32,
}

impl ProcessRewardModel {
    /// Opens an HF token-classification directory (one or two labels) with its `step_separator`
    /// (from `config.json`; a newline if absent), in f32 on the CPU and bf16 on CUDA.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        Self::open_with(dir, default_dtype(device), device)
    }

    pub fn open_with(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_classifier(Classifier::open(dir, dtype, device)?)
    }

    /// The process reward model held by an opened classifier directory.
    pub fn from_classifier(c: Classifier) -> Result<Self> {
        let dir = c.path.clone();
        let dir = dir.as_path();
        if c.kind != HeadKind::Token {
            return Err(RewardError::Format {
                path: dir.to_path_buf(),
                msg: "this is a sequence classifier (an outcome reward model): open it as a \
                      RewardModel, or give a token-classification directory"
                    .into(),
            });
        }
        let separator = match c.config_json.get("step_separator") {
            None => DEFAULT_SEPARATOR.to_string(),
            Some(v) => v
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| RewardError::Format {
                    path: dir.join("config.json"),
                    msg: "`step_separator` must be a non-empty string".into(),
                })?
                .to_string(),
        };
        let tokenizer = c.tokenizer.ok_or_else(|| RewardError::Format {
            path: dir.to_path_buf(),
            msg: "the process reward model has no tokenizer.json".into(),
        })?;
        let pad = c.pad_token_id.unwrap_or(0);
        let mut prm = Self::from_parts(c.model, c.head, tokenizer, &separator, pad)?;
        prm.name = name_of(dir);
        Ok(prm)
    }

    /// A PRM from a decoder and a head of one or two labels (e.g. one being trained).
    pub fn from_parts(
        model: Transformer,
        head: ScoreHead,
        tokenizer: Tokenizer,
        separator: &str,
        pad: u32,
    ) -> Result<Self> {
        if !(1..=2).contains(&head.num_labels()) {
            return Err(RewardError::spec(
                "process reward model",
                format!(
                    "expected a head of 1 or 2 labels, this one has {}",
                    head.num_labels()
                ),
            ));
        }
        Ok(ProcessRewardModel {
            name: "process_reward_model".into(),
            model,
            head,
            tokenizer,
            separator: separator.to_string(),
            pad,
        })
    }

    pub fn separator(&self) -> &str {
        &self.separator
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// This PRM as a [`Verifier`] scoring a completion by `aggregation` of its step scores.
    pub fn into_verifier(self, aggregation: StepAggregation) -> PrmVerifier {
        PrmVerifier {
            name: format!("{}:{}", self.name, aggregation.as_str()),
            prm: self,
            aggregation,
        }
    }
}

impl StepScorer for ProcessRewardModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_steps(&self, prompt: &str, steps: &[&str]) -> Result<Vec<f64>> {
        Ok(self
            .score_steps_batch(&[(prompt, steps.to_vec())])?
            .pop()
            .unwrap_or_default())
    }

    fn score_steps_batch(&self, items: &[(&str, Vec<&str>)]) -> Result<Vec<Vec<f64>>> {
        let context = self.model.config.max_position_embeddings;
        let (seqs, batches) =
            step_batches(&self.name, &self.tokenizer, items, &self.separator, context)?;
        let mut out: Vec<Vec<f64>> = vec![Vec::new(); items.len()];
        for batch in batches {
            let rows: Vec<&[u32]> = batch.iter().map(|&i| seqs[i].ids.as_slice()).collect();
            let positions: Vec<Vec<usize>> =
                batch.iter().map(|&i| seqs[i].step_ends.clone()).collect();
            let h = self.model.hidden_at(&rows, &positions, self.pad)?;
            let logits = self.head.forward(&h)?.to_dtype(DType::F32)?;
            let p = if self.head.num_labels() == 2 {
                ops::softmax_last_dim(&logits)?.narrow(D::Minus1, 1, 1)?
            } else {
                candle_core::Tensor::ones_like(&logits)?
                    .broadcast_div(&(logits.neg()?.exp()? + 1.0)?)?
            };
            let p = p.flatten_all()?.to_vec1::<f32>()?;
            let mut at = 0;
            for &i in &batch {
                let n = seqs[i].step_ends.len();
                out[i] = p[at..at + n].iter().map(|&x| f64::from(x)).collect();
                at += n;
            }
        }
        Ok(out)
    }
}

/// The steps of a completion: its pieces between separators, blank ones dropped.
pub fn split_steps<'a>(completion: &'a str, separator: &str) -> Vec<&'a str> {
    completion
        .split(separator)
        .filter(|s| !s.trim().is_empty())
        .collect()
}

/// How step scores become one score for the completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAggregation {
    /// The weakest step (a chain is as good as its worst link).
    Min,
    /// The last step's score (the PRM's view of the whole solution).
    Last,
    /// The product: the probability that every step is right, if steps were independent.
    Product,
    Mean,
}

impl StepAggregation {
    pub const ALL: [StepAggregation; 4] = [
        StepAggregation::Min,
        StepAggregation::Last,
        StepAggregation::Product,
        StepAggregation::Mean,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepAggregation::Min => "min",
            StepAggregation::Last => "last",
            StepAggregation::Product => "product",
            StepAggregation::Mean => "mean",
        }
    }

    /// One score for `scores`; a completion without steps scores 0.
    pub fn apply(self, scores: &[f64]) -> f64 {
        if scores.is_empty() {
            return 0.0;
        }
        match self {
            StepAggregation::Min => scores.iter().copied().fold(f64::INFINITY, f64::min),
            StepAggregation::Last => scores[scores.len() - 1],
            StepAggregation::Product => scores.iter().product(),
            StepAggregation::Mean => scores.iter().sum::<f64>() / scores.len() as f64,
        }
    }
}

impl FromStr for StepAggregation {
    type Err = RewardError;
    fn from_str(s: &str) -> Result<Self> {
        StepAggregation::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                RewardError::spec(
                    "aggregation",
                    format!("`{s}` is not one of min, last, product, mean"),
                )
            })
    }
}

/// A PRM scoring whole completions: the completion is split into steps at the PRM's separator and
/// the step scores aggregated.
pub struct PrmVerifier {
    name: String,
    prm: ProcessRewardModel,
    aggregation: StepAggregation,
}

impl PrmVerifier {
    pub fn prm(&self) -> &ProcessRewardModel {
        &self.prm
    }
}

impl Verifier for PrmVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        Ok(self
            .score_batch(std::slice::from_ref(input))?
            .pop()
            .unwrap_or(Scored {
                score: 0.0,
                correct: None,
            }))
    }

    fn score_batch(&self, inputs: &[ScoreInput<'_>]) -> Result<Vec<Scored>> {
        let items: Vec<(&str, Vec<&str>)> = inputs
            .iter()
            .map(|i| (i.prompt, split_steps(i.completion, &self.prm.separator)))
            .collect();
        Ok(self
            .prm
            .score_steps_batch(&items)?
            .iter()
            .map(|s| Scored {
                score: self.aggregation.apply(s),
                correct: None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregations_by_hand() {
        let s = [0.9, 0.5, 0.8];
        assert_eq!(StepAggregation::Min.apply(&s), 0.5);
        assert_eq!(StepAggregation::Last.apply(&s), 0.8);
        assert!((StepAggregation::Product.apply(&s) - 0.36).abs() < 1e-12);
        assert!((StepAggregation::Mean.apply(&s) - 2.2 / 3.0).abs() < 1e-12);
        for a in StepAggregation::ALL {
            assert_eq!(a.apply(&[]), 0.0);
            assert_eq!(a.as_str().parse::<StepAggregation>().unwrap(), a);
        }
        let e = "median".parse::<StepAggregation>().unwrap_err().to_string();
        assert!(e.contains("median") && e.contains("product"), "{e}");
    }

    #[test]
    fn steps_split_at_the_separator_without_blank_ones() {
        assert_eq!(
            split_steps("2+3=5\n\nAnswer: 5\n", "\n"),
            vec!["2+3=5", "Answer: 5"]
        );
        assert!(split_steps("  \n", "\n").is_empty());
    }
}
