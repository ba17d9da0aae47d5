//! The GRPO family as a plug-in of the online driver ([`crate::rl::driver`]): group-relative
//! advantages (GRPO and its loss types, RLOO's leave-one-out baseline, REINFORCE++'s batch-whitened
//! returns with the KL inside the reward, or a PRM's step scores), the reference's and old
//! logprobs, and `num_iterations` optimiser steps of the clipped objective per rollout batch, with
//! optional replay of SFT data against forgetting. Knows the policy loss and the scorers' traits;
//! nothing of rollouts, guards, logs or checkpoints (the driver's) or of the command line.

use std::time::Instant;

use candle_core::Var;
use serde::{Deserialize, Serialize};
use tempering_model::{Tokenizer, Transformer};
use tempering_reward::StepScorer;

use crate::data::DataOrder;
use crate::error::{Result, TrainError};
use crate::objective::{LossOutput, Objective, StepContext};
use crate::rl::advantage::{batch_whiten, grpo_advantages, rloo_advantages, ScaleRewards};
use crate::rl::driver::{
    check, run, Batch, OnlineConfig, OnlineInputs, OnlineSummary, RlAlgorithm, Update,
};
use crate::rl::kl::kl_value;
use crate::rl::policy_loss::{LossType, PolicyLossConfig, PolicyObjective, RolloutSample};
use crate::rl::rollout::{
    by_length, no_grad_logprobs, rollout_samples, Group, PromptItem, SampleOut,
};
use crate::schedule::Schedule;
use crate::sft::{SftObjective, SftSequence};
use crate::trainer::Trainer;

/// Which advantage estimator drives the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Group-normalised rewards (GRPO and its loss-type relatives).
    Grpo,
    /// Leave-one-out baseline over the group.
    Rloo,
    /// Batch-whitened returns with the per-token KL inside the reward.
    ReinforcePp,
}

/// Every setting of a GRPO, RLOO or REINFORCE++ run: the shared online keys plus the estimator,
/// the clipped loss and replay. Defaults follow TRL's `GRPOConfig` where it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoConfig {
    pub online: OnlineConfig,
    pub algorithm: Algorithm,
    /// Optimiser steps over each rollout batch (old logprobs stored for the ratio).
    pub num_iterations: usize,
    pub loss: PolicyLossConfig,
    pub scale_rewards: ScaleRewards,
    /// Drop groups whose rewards all tie and refill the batch with new prompts, at most this many
    /// extra rounds; 0 turns dynamic sampling off.
    pub dynamic_sampling_rounds: usize,
    /// Weight of the replayed SFT loss (the forgetting mitigation); 0: none.
    pub replay_coef: f64,
    pub replay_batch_size: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            online: OnlineConfig::default(),
            algorithm: Algorithm::Grpo,
            num_iterations: 1,
            loss: PolicyLossConfig::default(),
            scale_rewards: ScaleRewards::Group,
            dynamic_sampling_rounds: 0,
            replay_coef: 0.0,
            replay_batch_size: 8,
        }
    }
}

impl GrpoConfig {
    pub fn validate(&self) -> Result<()> {
        check(
            "num_generations",
            self.online.num_generations >= 2 || self.algorithm == Algorithm::ReinforcePp,
            "expected at least 2 (a group needs a baseline)",
        )?;
        self.online.validate()?;
        check(
            "num_iterations",
            self.num_iterations > 0,
            "expected at least 1",
        )?;
        check(
            "epsilon",
            self.loss.epsilon_low > 0.0 && self.loss.epsilon_low < 1.0,
            "expected a number in (0, 1)",
        )?;
        check(
            "epsilon_high",
            self.loss.epsilon_high > 0.0,
            "expected a positive number",
        )?;
        check(
            "beta",
            self.loss.beta >= 0.0,
            "expected 0 or a positive number",
        )
    }
}

/// Runs (or resumes) a GRPO, RLOO or REINFORCE++ run in `run_dir`.
pub fn run_online(
    config: &GrpoConfig,
    inputs: OnlineInputs<'_>,
    run_dir: &std::path::Path,
    resume: bool,
) -> Result<OnlineSummary> {
    config.validate()?;
    if config.replay_coef > 0.0 && inputs.replay.is_none_or(|r| r.is_empty()) {
        return Err(TrainError::config(
            "replay_coef",
            "replay needs replay data (--replay-data)",
        ));
    }
    let mut grpo = Grpo {
        config,
        tok: inputs.tokenizer,
        prm: inputs.prm,
        replay: inputs.replay,
        replay_order: inputs.replay.map(|r| {
            DataOrder::new(
                r.len(),
                config.online.seed ^ 0x5EED,
                true,
                Default::default(),
            )
        }),
        objective: None,
    };
    run(&config.online, &mut grpo, inputs, run_dir, resume)
}

/// The GRPO family's plug-in: its config, the scorers it needs beyond the reward, and its objective.
struct Grpo<'a> {
    config: &'a GrpoConfig,
    tok: &'a Tokenizer,
    prm: Option<&'a dyn StepScorer>,
    replay: Option<&'a [SftSequence]>,
    replay_order: Option<DataOrder>,
    /// Built by `prepare` on the driver's policy.
    objective: Option<RlObjective>,
}

impl RlAlgorithm for Grpo<'_> {
    fn updates_per_batch(&self) -> usize {
        self.config.num_iterations
    }

    fn dynamic_sampling_rounds(&self) -> usize {
        self.config.dynamic_sampling_rounds
    }

    fn prepare(
        &mut self,
        policy: &Transformer,
        pad: u32,
        _: &mut Vec<(String, Var)>,
    ) -> Result<()> {
        let c = self.config;
        self.objective = Some(RlObjective {
            policy: PolicyObjective::new(policy.clone(), pad, c.loss)
                .with_temperature(c.online.temperature as f64),
            replay: self.replay.map(|_| SftObjective::new(policy.clone(), pad)),
            replay_coef: c.replay_coef,
            policy_weight: 0.0,
        });
        Ok(())
    }

    fn update(
        &mut self,
        batch: &Batch<'_>,
        trainer: &mut Trainer,
        schedule: &Schedule,
    ) -> Result<Update> {
        let c = self.config;
        let o = &c.online;
        let groups = batch.groups;
        let t2 = Instant::now();
        // Advantages, reference logprobs and old logprobs.
        let mut samples = self.samples(groups, batch.prompts)?;
        // The reference's and the old logprobs at the sampling temperature too, as TRL computes them.
        let temp = o.temperature as f64;
        let micro = o.micro_batch_size;
        // At beta 0 only the KL guard reads the reference's logprobs: its forward runs every
        // `kl_every` batches (the metrics say which), not every batch.
        let kl_every = o.guards.kl_every;
        let reference_forward =
            c.loss.beta != 0.0 || (kl_every > 0 && batch.rollout_step.is_multiple_of(kl_every));
        let refs = reference_forward
            .then(|| no_grad_logprobs(batch.reference, &samples, batch.pad, micro, temp))
            .transpose()?;
        let (mut kl_sum, mut kl_n) = (0.0, 0usize);
        let policy_lp = (c.num_iterations > 1 || c.algorithm == Algorithm::ReinforcePp)
            .then(|| no_grad_logprobs(batch.policy, &samples, batch.pad, micro, temp))
            .transpose()?;
        for (i, s) in samples.iter_mut().enumerate() {
            if let Some(lp) = &policy_lp {
                if let Some(refs) = &refs {
                    for (a, b) in lp[i].iter().zip(&refs[i]) {
                        kl_sum += kl_value(*a as f64, *b as f64, c.loss.kl_estimator);
                        kl_n += 1;
                    }
                }
                if c.num_iterations > 1 {
                    s.old_logprobs = Some(lp[i].clone());
                }
            }
            s.ref_logprobs = refs.as_ref().map(|r| r[i].clone());
        }
        if c.algorithm == Algorithm::ReinforcePp {
            reinforce_pp_advantages(c.loss.beta, groups, &mut samples, policy_lp.as_deref())?;
        }
        let engine_diff = engine_logprob_diff(groups, policy_lp.as_deref());

        // The optimiser steps.
        let objective = self
            .objective
            .as_mut()
            .ok_or_else(|| TrainError::config("algorithm", "update before prepare"))?;
        objective.policy_weight = samples_weight(c, &samples);
        let order = by_length(&samples);
        let examples: Vec<RlExample> = samples.into_iter().map(RlExample::Policy).collect();
        let replay_examples: Vec<RlExample> = match (self.replay, self.replay_order.as_mut()) {
            (Some(r), Some(order)) if c.replay_coef > 0.0 => order
                .take(c.replay_batch_size)
                .into_iter()
                .map(|i| RlExample::Replay(r[i].clone()))
                .collect(),
            _ => Vec::new(),
        };
        // Micro-batches of similar lengths, as `no_grad_logprobs` forms them (`by_length`). The
        // loss weights are the whole batch's, so the grouping changes no gradient beyond float
        // summation order.
        let by_length: Vec<&RlExample> = order.iter().map(|&i| &examples[i]).collect();
        let mut step_metrics: Vec<(String, f64)> = Vec::new();
        let mut first_loss = None;
        for _ in 0..c.num_iterations {
            let mut micro: Vec<Vec<&RlExample>> = by_length
                .chunks(o.micro_batch_size)
                .map(|c| c.to_vec())
                .collect();
            if !replay_examples.is_empty() {
                micro.push(replay_examples.iter().collect());
            }
            let lr = schedule.lr_at(trainer.step());
            let out = trainer.optimizer_step(objective, &micro, lr)?;
            first_loss.get_or_insert(out.loss);
            if step_metrics.is_empty() {
                step_metrics = out.metrics.clone();
                step_metrics.push(("grad_norm".into(), out.grad_norm));
                step_metrics.push(("lr".into(), lr));
            }
        }

        let mut u = Update {
            kl: step_metrics.iter().find(|(n, _)| n == "kl").map(|x| x.1),
            ..Update::default()
        };
        u.put("loss", first_loss.unwrap_or(0.0));
        for (key, v) in &step_metrics {
            u.put(key, v);
        }
        if kl_n > 0 {
            u.put("kl_before_update", kl_sum / kl_n as f64);
        }
        if let Some(d) = engine_diff {
            u.put("rollout_logprob_diff", d);
        }
        u.put("dynamic_sampling_dropped", batch.dynamic_sampling_dropped);
        u.put("reference_forward", reference_forward);
        u.put("update_s", t2.elapsed().as_secs_f64());
        Ok(u)
    }
}

impl Grpo<'_> {
    /// Rollout samples with their advantages (REINFORCE++'s are filled in later, once the KL is
    /// known).
    fn samples(&self, groups: &[Group], prompts: &[PromptItem]) -> Result<Vec<RolloutSample>> {
        let c = self.config;
        let rewards: Vec<f64> = groups
            .iter()
            .flat_map(|g| g.samples.iter().map(|s| s.reward))
            .collect();
        let g = c.online.num_generations;
        let seq_adv = match c.algorithm {
            Algorithm::Grpo => grpo_advantages(&rewards, g, c.scale_rewards),
            Algorithm::Rloo => rloo_advantages(&rewards, g),
            Algorithm::ReinforcePp => vec![0.0; rewards.len()],
        };
        let mut out = rollout_samples(groups, prompts, c.online.mask_truncated_completions);
        let mut at = 0;
        for group in groups {
            // Process supervision: each step's score (the outcome reward joins the last step's),
            // normalised over the group's steps; a token's advantage is the sum of the normalised
            // scores of its step and the steps after it.
            let step_adv = match self.prm {
                Some(prm) => Some(process_advantages(
                    prm,
                    &prompts[group.prompt],
                    &group.samples,
                    self.tok,
                )?),
                None => None,
            };
            for (i, s) in group.samples.iter().enumerate() {
                out[at].advantages = match &step_adv {
                    Some(a) => a[i].clone(),
                    None => vec![seq_adv[at] as f32; s.completion.tokens.len()],
                };
                at += 1;
            }
        }
        Ok(out)
    }
}

/// A micro-batch's examples: completions of the policy, or replayed SFT sequences.
pub enum RlExample {
    Policy(RolloutSample),
    Replay(SftSequence),
}

/// The policy objective, plus the replayed SFT loss scaled so that the step's loss is
/// `policy_loss + replay_coef * replay_nll_mean`.
struct RlObjective {
    policy: PolicyObjective,
    replay: Option<SftObjective>,
    replay_coef: f64,
    /// The policy's summed weight in this optimiser step (the trainer divides by it).
    policy_weight: f64,
}

impl Objective for RlObjective {
    type Example = RlExample;

    fn name(&self) -> &str {
        "online-rl"
    }

    fn loss(&mut self, batch: &[&RlExample], ctx: &mut StepContext<'_>) -> Result<LossOutput> {
        let policy: Vec<&RolloutSample> = batch
            .iter()
            .filter_map(|e| match e {
                RlExample::Policy(s) => Some(s),
                _ => None,
            })
            .collect();
        if !policy.is_empty() {
            return self.policy.loss(&policy, ctx);
        }
        let replay: Vec<&SftSequence> = batch
            .iter()
            .filter_map(|e| match e {
                RlExample::Replay(s) => Some(s),
                _ => None,
            })
            .collect();
        let sft = self
            .replay
            .as_mut()
            .ok_or_else(|| TrainError::config("replay_data", "replay examples without replay"))?;
        let out = sft.loss(&replay, ctx)?;
        let mean = (out.loss_sum / out.weight.max(1.0))?;
        let scale = self.replay_coef * self.policy_weight;
        let replay_nll = mean.detach().to_scalar::<f32>()? as f64;
        Ok(LossOutput {
            loss_sum: (mean * scale)?,
            weight: 0.0,
            tokens: out.tokens,
            metrics: vec![("replay_nll".into(), replay_nll * self.policy_weight)],
        })
    }
}

/// The step index of each completion token: steps end at newlines.
fn token_steps(tokens: &[u32], tok: &Tokenizer) -> Vec<usize> {
    let mut step = 0;
    tokens
        .iter()
        .map(|&t| {
            let s = step;
            if tok.piece_text(t).contains('\n') {
                step += 1;
            }
            s
        })
        .collect()
}

/// Per-token advantages from a PRM's step scores (see [`Grpo::samples`]).
fn process_advantages(
    prm: &dyn StepScorer,
    p: &PromptItem,
    samples: &[SampleOut],
    tok: &Tokenizer,
) -> Result<Vec<Vec<f32>>> {
    let items: Vec<(&str, Vec<&str>)> = samples
        .iter()
        .map(|s| {
            (
                p.text.as_str(),
                s.completion
                    .text
                    .split(tempering_tasks::STEP_SEPARATOR)
                    .collect(),
            )
        })
        .collect();
    let mut scores = prm.score_steps_batch(&items)?;
    // The outcome joins the last step: a solution whose every step checks out but that answers
    // the wrong question (a rule checker cannot see that) still loses to a right one.
    for (sc, s) in scores.iter_mut().zip(samples) {
        match sc.last_mut() {
            Some(last) => *last += s.reward,
            None => sc.push(s.reward),
        }
    }
    let flat: Vec<f64> = scores.iter().flatten().copied().collect();
    let m = flat.iter().sum::<f64>() / flat.len().max(1) as f64;
    let sd = crate::rl::advantage::std_unbiased(&flat);
    let mut out = Vec::with_capacity(samples.len());
    for (s, sc) in samples.iter().zip(&scores) {
        let norm: Vec<f64> = sc.iter().map(|x| (x - m) / (sd + 1e-4)).collect();
        // Suffix sums: the advantage of step j is the sum of normalised rewards of steps >= j.
        let mut suffix = vec![0.0; norm.len() + 1];
        for j in (0..norm.len()).rev() {
            suffix[j] = suffix[j + 1] + norm[j];
        }
        let steps = token_steps(&s.completion.tokens, tok);
        out.push(
            steps
                .iter()
                .map(|&j| suffix[j.min(norm.len().saturating_sub(1))] as f32)
                .collect(),
        );
    }
    Ok(out)
}

/// REINFORCE++: per-token reward `-beta * kl_t` plus the score at the last token, returns summed
/// to the end (gamma 1), whitened over every token of the batch.
fn reinforce_pp_advantages(
    beta: f64,
    groups: &[Group],
    samples: &mut [RolloutSample],
    policy_lp: Option<&[Vec<f32>]>,
) -> Result<()> {
    let lp = policy_lp.ok_or_else(|| TrainError::config("algorithm", "missing logprobs"))?;
    let rewards: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.samples.iter().map(|s| s.reward))
        .collect();
    let mut returns: Vec<Vec<f64>> = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let refs = s.ref_logprobs.as_deref().unwrap_or(&[]);
        let n = s.completion_len();
        let mut r: Vec<f64> = (0..n)
            .map(|t| {
                let kl = refs.get(t).map(|&rl| (lp[i][t] - rl) as f64).unwrap_or(0.0);
                -beta * kl
            })
            .collect();
        if let Some(last) = r.last_mut() {
            *last += rewards[i];
        }
        for t in (0..n.saturating_sub(1)).rev() {
            r[t] += r[t + 1];
        }
        returns.push(r);
    }
    let flat: Vec<f64> = returns.iter().flatten().copied().collect();
    let white = batch_whiten(&flat);
    let mut at = 0;
    for (s, r) in samples.iter_mut().zip(&returns) {
        s.advantages = white[at..at + r.len()].iter().map(|&x| x as f32).collect();
        at += r.len();
    }
    Ok(())
}

/// Mean absolute difference between the engine's sampling logprobs and the trainer's.
fn engine_logprob_diff(groups: &[Group], policy_lp: Option<&[Vec<f32>]>) -> Option<f64> {
    let lp = policy_lp?;
    let (mut sum, mut n) = (0.0, 0usize);
    for (s, l) in groups.iter().flat_map(|g| &g.samples).zip(lp) {
        for (a, b) in s.completion.logprobs.as_deref()?.iter().zip(l) {
            sum += (a - b).abs() as f64;
            n += 1;
        }
    }
    (n > 0).then(|| sum / n as f64)
}

/// The policy's summed loss weight over the step (what the trainer divides by).
fn samples_weight(c: &GrpoConfig, samples: &[RolloutSample]) -> f64 {
    match c.loss.loss_type {
        LossType::Grpo | LossType::DrGrpo => samples.len() as f64,
        LossType::Dapo => samples
            .iter()
            .filter(|s| s.in_loss)
            .map(|s| s.completion_len())
            .sum::<usize>() as f64,
        LossType::Bnpo => samples.len().div_ceil(c.online.micro_batch_size.max(1)) as f64,
    }
}

#[cfg(test)]
mod tests;
