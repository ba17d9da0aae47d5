//! The implicit process reward model (Yuan et al. 2024, "Free Process Rewards without Process
//! Labels"): a causal LM trained on outcome labels only, with its reward defined as
//! `beta * log(pi(y) / pi_ref(y))` summed over the completion's tokens. The sum up to the end of
//! step `k` is the prefix's value `q_k`; a step's score is `sigmoid(q_k)`, the model's probability
//! that the solution is still on a correct path after that step (the same reading as a
//! classifier PRM's step scores, so the aggregations and beam search apply unchanged). It reads
//! the policy's own token probabilities, where a small model's arithmetic lives, instead of
//! learning a separate head.
//!
//! A directory holds the trained LM (an ordinary HF causal-LM directory) and
//! [`IMPLICIT_PRM_FILE`] naming the reference model and `beta`. Knows the model layer and the
//! scoring traits; nothing of how it was trained.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use tempering_model::{ModelFiles, Tokenizer, Transformer};

use super::process::ProcessRewardModel;
use super::{default_dtype, name_of, step_batches};
use crate::error::{Result, RewardError};
use crate::scorer::StepScorer;

/// The file that makes a causal-LM directory an implicit PRM.
pub const IMPLICIT_PRM_FILE: &str = "implicit_prm.json";

/// What [`IMPLICIT_PRM_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImplicitPrmSpec {
    /// The reference model (the policy the PRM was trained from): an HF directory or a GGUF
    /// file; a relative path is read from the PRM's directory.
    pub reference: PathBuf,
    /// The reward's scale: `q = beta * sum of log-ratios`.
    pub beta: f64,
    /// Written after every step, as in a classifier PRM.
    pub step_separator: String,
}

impl ImplicitPrmSpec {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(IMPLICIT_PRM_FILE);
        let text = std::fs::read_to_string(&path).map_err(|error| RewardError::Io {
            path: path.clone(),
            error,
        })?;
        let spec: ImplicitPrmSpec =
            serde_json::from_str(&text).map_err(|e| RewardError::Format {
                path: path.clone(),
                msg: format!(
                    "expected {{\"reference\": PATH, \"beta\": NUMBER, \"step_separator\": \
                     STRING}}: {e}"
                ),
            })?;
        if !(spec.beta.is_finite() && spec.beta > 0.0) {
            return Err(RewardError::Format {
                path,
                msg: format!("`beta` must be a positive number, got {}", spec.beta),
            });
        }
        if spec.step_separator.is_empty() {
            return Err(RewardError::Format {
                path,
                msg: "`step_separator` must be a non-empty string".into(),
            });
        }
        Ok(spec)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(IMPLICIT_PRM_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| RewardError::Format {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|error| RewardError::Io { path, error })
    }
}

/// Whether `dir` holds an implicit PRM (rather than a token-classification PRM).
pub fn is_implicit_prm(dir: &Path) -> bool {
    dir.join(IMPLICIT_PRM_FILE).is_file()
}

/// Each step's score from per-token log-probs of the completion under the trained model and the
/// reference (`policy[j]`, `reference[j]` for completion token `j`) and each step's last token
/// (`step_ends`, indices into the completion, ascending): `sigmoid(beta * sum_{j <= end} (policy[j]
/// - reference[j]))`.
pub fn prefix_scores(
    policy: &[f64],
    reference: &[f64],
    step_ends: &[usize],
    beta: f64,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(step_ends.len());
    let mut q = 0.0;
    let mut j = 0;
    for &end in step_ends {
        while j <= end && j < policy.len() && j < reference.len() {
            q += policy[j] - reference[j];
            j += 1;
        }
        out.push(1.0 / (1.0 + (-beta * q).exp()));
    }
    out
}

pub struct ImplicitPrm {
    name: String,
    policy: Transformer,
    reference: Transformer,
    tokenizer: Tokenizer,
    spec: ImplicitPrmSpec,
    pad: u32,
}

impl ImplicitPrm {
    /// Opens an implicit PRM directory and its reference model, in f32 on the CPU and bf16 on
    /// CUDA.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        Self::open_with(dir, default_dtype(device), device)
    }

    pub fn open_with(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let spec = ImplicitPrmSpec::read(dir)?;
        let reference_path = if spec.reference.is_absolute() {
            spec.reference.clone()
        } else {
            dir.join(&spec.reference)
        };
        if !reference_path.exists() {
            return Err(RewardError::Format {
                path: dir.join(IMPLICIT_PRM_FILE),
                msg: format!(
                    "the reference model {} is not there (it must stay where the PRM was \
                     trained from)",
                    reference_path.display()
                ),
            });
        }
        let files = ModelFiles::open(dir, dtype, device)?;
        let tokenizer = files.tokenizer.clone().ok_or_else(|| RewardError::Format {
            path: dir.to_path_buf(),
            msg: "the implicit PRM has no tokenizer.json".into(),
        })?;
        let policy = files.transformer()?;
        let reference = ModelFiles::open(&reference_path, dtype, device)?.transformer()?;
        if reference.config.vocab_size != policy.config.vocab_size {
            return Err(RewardError::Format {
                path: dir.join(IMPLICIT_PRM_FILE),
                msg: format!(
                    "the reference {} has a vocabulary of {} tokens, the PRM {}",
                    reference_path.display(),
                    reference.config.vocab_size,
                    policy.config.vocab_size
                ),
            });
        }
        let pad = tokenizer.pad_id();
        Ok(ImplicitPrm {
            name: name_of(dir),
            policy,
            reference,
            tokenizer,
            spec,
            pad,
        })
    }

    pub fn separator(&self) -> &str {
        &self.spec.step_separator
    }

    pub fn beta(&self) -> f64 {
        self.spec.beta
    }
}

impl StepScorer for ImplicitPrm {
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
        let context = self.policy.config.max_position_embeddings;
        let (seqs, batches) = step_batches(
            &self.name,
            &self.tokenizer,
            items,
            &self.spec.step_separator,
            context,
        )?;
        let mut out: Vec<Vec<f64>> = vec![Vec::new(); items.len()];
        for batch in batches {
            // The completion's tokens: from the prompt's end (at least position 1) to the last.
            let rows: Vec<&[u32]> = batch.iter().map(|&i| seqs[i].ids.as_slice()).collect();
            let mut positions = Vec::with_capacity(batch.len());
            let mut labels = Vec::new();
            for &i in &batch {
                let s = &seqs[i];
                let from = s.prompt_len.max(1);
                positions.push((from..s.ids.len()).map(|j| j - 1).collect::<Vec<_>>());
                labels.extend_from_slice(&s.ids[from..]);
            }
            let lp = |m: &Transformer| -> Result<Vec<f64>> {
                let (lp, _) =
                    m.token_logprobs_at(&rows, &positions, labels.clone(), self.pad, 1.0)?;
                Ok(lp.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
            };
            let policy = lp(&self.policy)?;
            let reference = lp(&self.reference)?;
            let mut at = 0;
            for &i in &batch {
                let s = &seqs[i];
                let from = s.prompt_len.max(1);
                let n = s.ids.len() - from;
                let ends: Vec<usize> = s
                    .step_ends
                    .iter()
                    .map(|&e| e.saturating_sub(from))
                    .collect();
                out[i] = prefix_scores(
                    &policy[at..at + n],
                    &reference[at..at + n],
                    &ends,
                    self.spec.beta,
                );
                at += n;
            }
        }
        Ok(out)
    }
}

/// Opens a PRM directory of either kind: an implicit PRM (with [`IMPLICIT_PRM_FILE`]) or a
/// token-classification PRM.
pub fn open_step_scorer(dir: &Path, device: &Device) -> Result<Box<dyn StepScorer>> {
    if is_implicit_prm(dir) {
        Ok(Box::new(ImplicitPrm::open(dir, device)?))
    } else {
        Ok(Box::new(ProcessRewardModel::open(dir, device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_scores_sum_the_log_ratios_up_to_each_step_end() {
        let policy = [-1.0, -0.5, -2.0, -0.1];
        let reference = [-1.0, -1.0, -1.0, -1.0];
        // Log-ratios 0, 0.5, -1, 0.9: prefixes 0.5 at token 1 and 0.4 at token 3.
        let s = prefix_scores(&policy, &reference, &[1, 3], 2.0);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        assert!((s[0] - sig(1.0)).abs() < 1e-12, "{s:?}");
        assert!((s[1] - sig(0.8)).abs() < 1e-12, "{s:?}");
        // No ratio: one half, the prior.
        assert_eq!(
            prefix_scores(&reference, &reference, &[0, 3], 1.0),
            vec![0.5, 0.5]
        );
    }

    #[test]
    fn a_spec_with_a_bad_beta_names_the_file() {
        let dir = std::env::temp_dir().join(format!("implicit-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(IMPLICIT_PRM_FILE),
            r#"{"reference": "x", "beta": -1, "step_separator": "\n"}"#,
        )
        .unwrap();
        let e = ImplicitPrmSpec::read(&dir).unwrap_err().to_string();
        assert!(e.contains(IMPLICIT_PRM_FILE) && e.contains("beta"), "{e}");
        std::fs::write(dir.join(IMPLICIT_PRM_FILE), r#"{"reference": "x"}"#).unwrap();
        let e = ImplicitPrmSpec::read(&dir).unwrap_err().to_string();
        assert!(e.contains("expected"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
