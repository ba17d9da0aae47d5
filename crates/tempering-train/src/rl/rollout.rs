//! Rollouts: the RL prompt, sampling a group of completions per prompt through any generation
//! [`Backend`] (the local engine today; a remote server could stand behind it), scoring them with the
//! reward and the held-out verifier, turning them into [`RolloutSample`]s, reading their logprobs
//! without gradients, and the `rollouts.jsonl` sample log. Knows the generation and reward traits;
//! nothing of advantages, losses or the trainer.

use std::io::Write;
use std::path::Path;

use serde_json::json;
use tempering_generate::{Backend, Completion, FinishReason, GenRequest, SamplingParams};
use tempering_model::Transformer;
use tempering_reward::{ScoreInput, Verifier};

use crate::error::{Result, TrainError};
use crate::rl::advantage::{grpo_advantages, ScaleRewards};
use crate::rl::driver::OnlineConfig;
use crate::rl::policy_loss::{completion_logprobs, RolloutSample};
use crate::rng::Rng;

/// One RL prompt: its text (for scorers and logs), its token ids, and its reference answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptItem {
    pub text: String,
    pub ids: Vec<u32>,
    pub reference: Option<String>,
}

/// The completions sampled for one prompt (`prompt` indexes the run's prompts).
pub struct Group {
    pub prompt: usize,
    pub samples: Vec<SampleOut>,
}

/// One completion with its training reward, the reward's verdict and the held-out verifier's score.
pub struct SampleOut {
    pub completion: Completion,
    pub reward: f64,
    pub correct: Option<bool>,
    pub verifier: Option<f64>,
}

impl SampleOut {
    pub fn truncated(&self) -> bool {
        self.completion.finish_reason == FinishReason::Length
    }
}

/// Samples `num_generations` completions for each of the prompts `idx` from `backend`. Seeds depend
/// on the batch, the refill round and the slot, so a resumed run samples the same completions.
pub fn rollout_groups(
    c: &OnlineConfig,
    backend: &dyn Backend,
    prompts: &[PromptItem],
    idx: &[usize],
    rollout_step: usize,
    round: usize,
) -> Result<Vec<Group>> {
    let reqs: Vec<GenRequest> = idx
        .iter()
        .enumerate()
        .map(|(j, &i)| {
            let mut p = SamplingParams::greedy(c.max_completion_length);
            p.temperature = c.temperature;
            p.top_p = c.top_p;
            p.top_k = c.top_k;
            p.ignore_eos = c.ignore_eos;
            p.logprobs = true;
            p.tempered_logprobs = true;
            let mut r = Rng::derived(
                c.seed,
                ((rollout_step as u64) << 20) ^ ((round as u64) << 12) ^ j as u64,
            );
            p.seed = r.next_u64();
            GenRequest::new(prompts[i].ids.clone(), c.num_generations, p)
        })
        .collect();
    let out = backend.generate(&reqs)?;
    Ok(idx
        .iter()
        .zip(out)
        .map(|(&i, comps)| Group {
            prompt: i,
            samples: comps
                .into_iter()
                .map(|completion| SampleOut {
                    completion,
                    reward: 0.0,
                    correct: None,
                    verifier: None,
                })
                .collect(),
        })
        .collect())
}

/// Scores every completion with the training reward and, if given, the held-out verifier.
pub fn score_groups(
    groups: &mut [Group],
    prompts: &[PromptItem],
    reward: &dyn Verifier,
    verifier: Option<&dyn Verifier>,
) -> Result<()> {
    let mut inputs = Vec::new();
    for g in groups.iter() {
        let p = &prompts[g.prompt];
        for s in &g.samples {
            inputs.push(ScoreInput {
                prompt: &p.text,
                completion: &s.completion.text,
                reference: p.reference.as_deref(),
                completion_tokens: s.completion.tokens.len(),
                truncated: s.truncated(),
            });
        }
    }
    let scores = reward.score_batch(&inputs)?;
    let gold = match verifier {
        Some(v) => Some(v.score_batch(&inputs)?),
        None => None,
    };
    let mut at = 0;
    for g in groups.iter_mut() {
        for s in g.samples.iter_mut() {
            s.reward = scores[at].score;
            s.correct = scores[at].correct;
            s.verifier = gold.as_ref().map(|v| v[at].score);
            at += 1;
        }
    }
    Ok(())
}

/// Every completion as a training sample (prompt and completion ids), in group order, with no
/// advantages or logprobs yet; truncated ones are out of the loss when `mask_truncated`.
pub fn rollout_samples(
    groups: &[Group],
    prompts: &[PromptItem],
    mask_truncated: bool,
) -> Vec<RolloutSample> {
    let mut out = Vec::new();
    for g in groups {
        let p = &prompts[g.prompt];
        for s in &g.samples {
            let mut ids = p.ids.clone();
            ids.extend_from_slice(&s.completion.tokens);
            out.push(RolloutSample {
                ids,
                prompt_len: p.ids.len(),
                advantages: Vec::new(),
                old_logprobs: None,
                ref_logprobs: None,
                in_loss: !(mask_truncated && s.truncated()),
            });
        }
    }
    out
}

/// Sample indices shortest first (ties in order): micro-batches of similar lengths, since a row is
/// padded to the longest of its micro-batch, and one long completion among short ones would cost
/// every row its length (in time, and in logits of rows x length x vocabulary).
pub fn by_length(samples: &[RolloutSample]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| samples[i].ids.len());
    order
}

/// Logprobs of each sample's completion, chunked exactly as the update's micro-batches (so the
/// first update's ratio is exactly 1).
pub fn no_grad_logprobs(
    model: &Transformer,
    samples: &[RolloutSample],
    pad: u32,
    micro: usize,
    temperature: f64,
) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); samples.len()];
    for chunk in by_length(samples).chunks(micro.max(1)) {
        let active: Vec<(usize, &RolloutSample)> = chunk
            .iter()
            .map(|&i| (i, &samples[i]))
            .filter(|(_, s)| s.in_loss && s.completion_len() > 0)
            .collect();
        if active.is_empty() {
            continue;
        }
        let refs: Vec<&RolloutSample> = active.iter().map(|(_, s)| *s).collect();
        let (lp, _) = completion_logprobs(model, &refs, pad, temperature)?;
        let lp: Vec<f32> = lp.detach().to_vec1()?;
        let mut at = 0;
        for (i, s) in active {
            let n = s.completion_len();
            out[i] = lp[at..at + n].to_vec();
            at += n;
        }
    }
    // Samples out of the loss still get logprobs for the KL metric and REINFORCE++.
    for (i, s) in samples.iter().enumerate() {
        if out[i].len() != s.completion_len() {
            let (lp, _) = completion_logprobs(model, &[s], pad, temperature)?;
            out[i] = lp.detach().to_vec1()?;
        }
    }
    Ok(out)
}

/// Appends the groups of rollout batch `step` to `rollouts.jsonl` (with their group advantages).
pub fn write_rollouts(
    path: &Path,
    step: usize,
    groups: &[Group],
    prompts: &[PromptItem],
) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    for g in groups {
        let rewards: Vec<f64> = g.samples.iter().map(|s| s.reward).collect();
        let adv = grpo_advantages(&rewards, rewards.len(), ScaleRewards::Group);
        let rec = json!({
            "step": step,
            "prompt": prompts[g.prompt].text,
            "reference": prompts[g.prompt].reference,
            "completions": g.samples.iter().map(|s| &s.completion.text).collect::<Vec<_>>(),
            "rewards": rewards,
            "advantages": adv,
            "verifier": g.samples.iter().map(|s| s.verifier).collect::<Vec<_>>(),
            "finish_reasons": g.samples.iter().map(|s| s.completion.finish_reason.as_str()).collect::<Vec<_>>(),
        });
        writeln!(f, "{rec}").map_err(|e| TrainError::io(path, e))?;
    }
    f.flush().map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> RolloutSample {
        RolloutSample {
            ids: vec![1; len],
            prompt_len: 1,
            advantages: Vec::new(),
            old_logprobs: None,
            ref_logprobs: None,
            in_loss: true,
        }
    }

    #[test]
    fn micro_batches_group_samples_of_similar_length() {
        let samples: Vec<RolloutSample> = [9, 3, 112, 4, 3, 8].map(sample).to_vec();
        let order = by_length(&samples);
        // Shortest first, ties in their original order: the 112-token row pads only its own
        // micro-batch of two.
        assert_eq!(order, vec![1, 4, 3, 5, 0, 2]);
        let chunks: Vec<Vec<usize>> = order
            .chunks(2)
            .map(|c| c.iter().map(|&i| samples[i].ids.len()).collect())
            .collect();
        assert_eq!(chunks, vec![vec![3, 3], vec![4, 8], vec![9, 112]]);
    }
}
