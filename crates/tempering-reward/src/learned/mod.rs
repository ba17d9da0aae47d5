//! Learned scorers: an outcome reward model ([`RewardModel`], a [`crate::Verifier`]: one score per
//! completion, read by a sequence-classification head at the last token) and a process reward model
//! ([`ProcessRewardModel`], a [`crate::StepScorer`]: the probability that each step is still on a
//! correct path, read by a token-classification head at each step's separator), and the implicit
//! PRM ([`ImplicitPrm`]: the same step scores from a causal LM's log-ratio to its reference). Each
//! opens from its directory with one call, e.g. `RewardModel::open(dir, &Device::Cpu)`;
//! [`open_step_scorer`] opens a PRM directory of either kind.
//!
//! [`tokens`] holds how a prompt and a completion (or its steps) become token ids: the trainers of
//! these models use the same functions, so a model scores exactly what it was trained on. Knows the
//! model layer; nothing of training loops, search or the command line.

pub mod implicit;
pub mod outcome;
pub mod process;
pub mod tokens;

pub use implicit::{
    is_implicit_prm, open_step_scorer, ImplicitPrm, ImplicitPrmSpec, IMPLICIT_PRM_FILE,
};
pub use outcome::RewardModel;
pub use process::{split_steps, PrmVerifier, ProcessRewardModel, StepAggregation};
pub use tokens::{completion_tokens, step_tokens, StepTokens};

use std::path::Path;

use candle_core::{DType, Device};

/// The dtype a scorer runs in by default: f32 on the CPU, bf16 on CUDA.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// The scorer's name in metrics and traces: the directory's last component.
fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Each item's prompt and steps as one sequence ([`step_tokens`]), refused (naming the scorer
/// and the item) where it is longer than the model's `context` positions; then the sequences in
/// batches of similar length ([`length_batches`]), without those that hold no step.
fn step_batches(
    scorer: &str,
    tokenizer: &tempering_model::Tokenizer,
    items: &[(&str, Vec<&str>)],
    separator: &str,
    context: usize,
) -> crate::Result<(Vec<StepTokens>, Vec<Vec<usize>>)> {
    let seqs = items
        .iter()
        .enumerate()
        .map(|(i, (p, steps))| {
            let st = step_tokens(tokenizer, p, steps, separator)?;
            if st.ids.len() > context {
                return Err(crate::RewardError::spec(
                    scorer,
                    format!(
                        "item {i}: the prompt and its {} steps take {} tokens, more than the \
                         model's {context} positions",
                        steps.len(),
                        st.ids.len()
                    ),
                ));
            }
            Ok(st)
        })
        .collect::<crate::Result<Vec<_>>>()?;
    let lens: Vec<usize> = seqs.iter().map(|s| s.ids.len()).collect();
    let batches = length_batches(&lens)
        .into_iter()
        .map(|b| {
            b.into_iter()
                .filter(|&i| !seqs[i].step_ends.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|b| !b.is_empty())
        .collect();
    Ok((seqs, batches))
}

/// Sequences are scored in batches of about this many tokens (padding included).
const BATCH_TOKENS: usize = 8192;

/// Index groups of `lens` to run together: sorted by length so padding stays small, each group
/// under [`BATCH_TOKENS`] tokens of padded batch.
fn length_batches(lens: &[usize]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending: the newest member is the longest.
        if !cur.is_empty() && (cur.len() + 1) * lens[i] > BATCH_TOKENS {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_batches_cover_every_index_once_under_the_budget() {
        let lens: Vec<usize> = (0..300).map(|i| (i * 37) % 500 + 1).collect();
        let batches = length_batches(&lens);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..300).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| lens[i]).max().unwrap();
            assert!(b.len() == 1 || b.len() * longest <= BATCH_TOKENS);
        }
    }
}
