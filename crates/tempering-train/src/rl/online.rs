//! The online RL driver: sample a group of completions per prompt from the policy's current
//! weights, score them, turn rewards into per-token advantages (GRPO, RLOO, REINFORCE++, or a
//! PRM's step scores), then take `num_iterations` optimiser steps of the clipped objective through
//! the one [`Trainer`]. Around it: the guards (KL, entropy, length drift, reward hacking,
//! forgetting with optional replay), `metrics.jsonl`, a `rollouts.jsonl` sample log and
//! checkpoints that resume exactly. Knows the generation engine, the scorers' traits and the
//! trainer; nothing of the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Var;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tempering_generate::{
    Backend, Completion, FinishReason, GenRequest, LocalEngine, SamplingParams,
};
use tempering_model::{Tokenizer, Transformer};
use tempering_reward::{ScoreInput, StepScorer, Verifier};

use crate::data::DataOrder;
use crate::error::{Result, TrainError};
use crate::metrics::MetricsLog;
use crate::objective::{LossOutput, Objective, StepContext};
use crate::rl::advantage::{
    batch_whiten, grpo_advantages, rloo_advantages, tied_groups, ScaleRewards,
};
use crate::rl::guards::{GuardConfig, GuardState, Warning};
use crate::rl::kl::kl_value;
use crate::rl::policy_loss::{
    completion_logprobs, PolicyLossConfig, PolicyObjective, RolloutSample,
};
use crate::rng::Rng;
use crate::schedule::{Schedule, ScheduleKind};
use crate::sft::{SftObjective, SftSequence};
use crate::trainer::{TrainConfig, Trainer};

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

/// Every setting of an online run. Defaults follow TRL's `GRPOConfig` where it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineConfig {
    pub algorithm: Algorithm,
    /// Completions sampled per prompt (the group).
    pub num_generations: usize,
    /// Prompts per rollout batch.
    pub prompts_per_step: usize,
    /// Rollout batches.
    pub steps: usize,
    /// Optimiser steps over each rollout batch (old logprobs stored for the ratio).
    pub num_iterations: usize,
    /// Completions per micro-batch of the update.
    pub micro_batch_size: usize,
    pub learning_rate: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub max_completion_length: usize,
    /// Sample exactly `max_completion_length` tokens, past the model's EOS (fixed-size benchmark
    /// workloads, as vLLM's `ignore_eos`).
    pub ignore_eos: bool,
    pub loss: PolicyLossConfig,
    pub scale_rewards: ScaleRewards,
    /// Truncated completions (no stop token) are left out of the loss (DAPO's overlong filter).
    pub mask_truncated_completions: bool,
    /// Drop groups whose rewards all tie and refill the batch with new prompts, at most this many
    /// extra rounds; 0 turns dynamic sampling off.
    pub dynamic_sampling_rounds: usize,
    /// Write the rollouts of every this-many batches to `rollouts.jsonl`; 0: never.
    pub log_rollouts_every: usize,
    /// Evaluate the retain set every this-many batches (and before the first); 0: never.
    pub retain_every: usize,
    /// Weight of the replayed SFT loss (the forgetting mitigation); 0: none.
    pub replay_coef: f64,
    pub replay_batch_size: usize,
    pub guards: GuardConfig,
    /// Checkpoint every this-many rollout batches (and at the end); 0: only at the end.
    pub save_every: usize,
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub progress: bool,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        OnlineConfig {
            algorithm: Algorithm::Grpo,
            num_generations: 8,
            prompts_per_step: 8,
            steps: 100,
            num_iterations: 1,
            micro_batch_size: 16,
            learning_rate: 1e-6,
            schedule: ScheduleKind::Constant,
            warmup_steps: 0,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_completion_length: 256,
            ignore_eos: false,
            loss: PolicyLossConfig::default(),
            scale_rewards: ScaleRewards::Group,
            mask_truncated_completions: false,
            dynamic_sampling_rounds: 0,
            log_rollouts_every: 10,
            retain_every: 0,
            replay_coef: 0.0,
            replay_batch_size: 8,
            guards: GuardConfig::default(),
            save_every: 0,
            keep_checkpoints: 2,
            seed: 42,
            progress: true,
        }
    }
}

impl OnlineConfig {
    pub fn validate(&self) -> Result<()> {
        let check = |key: &str, ok: bool, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(TrainError::config(key, msg))
            }
        };
        check(
            "num_generations",
            self.num_generations >= 2 || self.algorithm == Algorithm::ReinforcePp,
            "expected at least 2 (a group needs a baseline)",
        )?;
        check(
            "prompts_per_step",
            self.prompts_per_step > 0,
            "expected at least 1",
        )?;
        check("steps", self.steps > 0, "expected at least 1")?;
        check(
            "num_iterations",
            self.num_iterations > 0,
            "expected at least 1",
        )?;
        check(
            "micro_batch_size",
            self.micro_batch_size > 0,
            "expected at least 1",
        )?;
        check(
            "max_completion_length",
            self.max_completion_length > 0,
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
        )?;
        check(
            "temperature",
            self.temperature > 0.0,
            "expected a positive temperature (rollouts are sampled)",
        )
    }

    fn train_config(&self) -> TrainConfig {
        let mut t = TrainConfig {
            learning_rate: self.learning_rate,
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
            max_steps: self.steps * self.num_iterations,
            max_grad_norm: self.max_grad_norm,
            keep_checkpoints: self.keep_checkpoints,
            seed: self.seed,
            progress: false,
            ..TrainConfig::default()
        };
        t.adamw.weight_decay = self.weight_decay;
        t
    }
}

/// One RL prompt: its text (for scorers and logs), its token ids, and its reference answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptItem {
    pub text: String,
    pub ids: Vec<u32>,
    pub reference: Option<String>,
}

/// The models, data and scorers of a run.
pub struct OnlineInputs<'a> {
    /// The policy, its trainable weights already made `Var`s (`params`).
    pub policy: Transformer,
    pub params: Vec<(String, Var)>,
    /// The reference: `None` with LoRA means the policy with adapters off.
    pub reference: Option<Transformer>,
    pub tokenizer: &'a Tokenizer,
    pub prompts: &'a [PromptItem],
    /// The training reward.
    pub reward: &'a dyn Verifier,
    /// A held-out verifier logged beside a proxy reward (the hacking monitor's gold).
    pub verifier: Option<&'a dyn Verifier>,
    /// Process supervision: step scores become per-token advantages.
    pub prm: Option<&'a dyn StepScorer>,
    /// The forgetting monitor's retain set and the replay data (SFT sequences).
    pub retain: Option<&'a [SftSequence]>,
    pub replay: Option<&'a [SftSequence]>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct OnlineSummary {
    pub steps: usize,
    pub last: Map<String, Value>,
    pub guards: GuardState,
    pub checkpoint: PathBuf,
}

/// The driver's resumable state, stored in each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DriverState {
    rollout_step: usize,
    guards: GuardState,
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

/// Runs (or resumes) an online RL run in `run_dir`.
pub fn run_online(
    config: &OnlineConfig,
    inputs: OnlineInputs<'_>,
    run_dir: &Path,
    resume: bool,
) -> Result<OnlineSummary> {
    config.validate()?;
    if inputs.prompts.is_empty() {
        return Err(TrainError::EmptyData {
            what: "RL prompts".into(),
            why: None,
        });
    }
    if config.replay_coef > 0.0 && inputs.replay.is_none_or(|r| r.is_empty()) {
        return Err(TrainError::config(
            "replay_coef",
            "replay needs replay data (--replay-data)",
        ));
    }
    let tok = inputs.tokenizer;
    let pad = tok
        .pad_token()
        .or_else(|| tok.eos_token())
        .map(|(id, _)| id)
        .unwrap_or(0);
    let mut policy_model = inputs.policy.clone();
    policy_model.set_lora_dropout(None);
    let reference = match inputs.reference {
        Some(r) => r,
        None if policy_model.has_lora() => policy_model.without_adapters(),
        None => {
            return Err(TrainError::config(
                "reference",
                "full fine-tuning needs a frozen reference copy of the policy",
            ))
        }
    };

    check_reference_is_frozen(&reference, &inputs.params)?;
    let tc = config.train_config();
    let mut trainer = if resume {
        Trainer::resume(tc.clone(), inputs.params, run_dir)?
    } else {
        Trainer::new(tc.clone(), inputs.params, run_dir)?
    };
    let mut state: DriverState = match trainer.resumed_extra() {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| TrainError::Format {
            path: run_dir.join("checkpoints"),
            msg: format!("the checkpoint's RL state is unreadable: {e}"),
        })?,
        None => DriverState::default(),
    };
    let schedule = Schedule {
        kind: tc.schedule,
        lr: tc.learning_rate,
        warmup_steps: tc.warmup_steps,
        total_steps: tc.max_steps,
        min_lr_ratio: tc.min_lr_ratio,
    };
    let mut order = DataOrder::new(
        inputs.prompts.len(),
        config.seed,
        true,
        trainer.data_position(),
    );
    let mut log = MetricsLog::open(run_dir, resume.then_some(trainer.step()))?;
    let rollouts_path = run_dir.join("rollouts.jsonl");
    if !resume && rollouts_path.exists() {
        std::fs::remove_file(&rollouts_path).map_err(|e| TrainError::io(&rollouts_path, e))?;
    }
    let mut objective = RlObjective {
        policy: PolicyObjective::new(policy_model.clone(), pad, config.loss)
            .with_temperature(config.temperature as f64),
        replay: inputs
            .replay
            .map(|_| SftObjective::new(policy_model.clone(), pad)),
        replay_coef: config.replay_coef,
        policy_weight: 0.0,
    };
    let mut retain_eval = inputs
        .retain
        .map(|r| (r, SftObjective::new(policy_model.clone(), pad)));
    let mut replay_order = inputs
        .replay
        .map(|r| DataOrder::new(r.len(), config.seed ^ 0x5EED, true, Default::default()));

    let bar = progress_bar(config.progress, config.steps, state.rollout_step);
    let mut last = Map::new();
    if !resume {
        if let Some((retain, eval)) = retain_eval.as_mut() {
            let loss = retain_loss(&trainer, eval, retain)?;
            let (_, w) = state.guards.observe_retain(&config.guards, loss);
            warn(&bar, w);
            let mut rec = Map::new();
            rec.insert("step".into(), json!(0));
            rec.insert("retain_loss".into(), json!(loss));
            log.write(rec)?;
        }
    }

    if resume {
        crate::interrupt::announce_resume(run_dir, state.rollout_step, config.steps);
    }
    let _armed = crate::interrupt::arm();
    while state.rollout_step < config.steps {
        let k = state.rollout_step;
        let started = Instant::now();

        // 1. Rollouts (with dynamic sampling: refill groups whose rewards all tie).
        let engine = LocalEngine::new(policy_model.clone(), tok.clone());
        let mut groups: Vec<Group> = Vec::new();
        let (mut gen_s, mut score_s) = (0.0, 0.0);
        let mut dropped = 0usize;
        for round in 0..=config.dynamic_sampling_rounds {
            let want = config.prompts_per_step - groups.len();
            if want == 0 {
                break;
            }
            let idx = order.take(want);
            let t0 = Instant::now();
            let mut fresh = rollout_groups(config, &engine, inputs.prompts, &idx, k, round)?;
            gen_s += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            score_groups(&mut fresh, inputs.prompts, inputs.reward, inputs.verifier)?;
            score_s += t1.elapsed().as_secs_f64();
            let last_round = round == config.dynamic_sampling_rounds;
            for g in fresh {
                let rewards: Vec<f64> = g.samples.iter().map(|s| s.reward).collect();
                if config.dynamic_sampling_rounds > 0
                    && !last_round
                    && tied_groups(&rewards, rewards.len())[0]
                {
                    dropped += 1;
                    continue;
                }
                groups.push(g);
            }
            if config.dynamic_sampling_rounds == 0 {
                break;
            }
        }

        // 2. Advantages, reference logprobs and old logprobs.
        let t2 = Instant::now();
        let mut samples = build_samples(config, &groups, inputs.prompts, inputs.prm, tok)?;
        // The reference's and the old logprobs at the sampling temperature too, as TRL computes them.
        let temp = config.temperature as f64;
        let refs = no_grad_logprobs(&reference, &samples, pad, config.micro_batch_size, temp)?;
        let mut kl_sum = 0.0;
        let mut kl_n = 0usize;
        let policy_lp = if config.num_iterations > 1 || config.algorithm == Algorithm::ReinforcePp {
            Some(no_grad_logprobs(
                &policy_model,
                &samples,
                pad,
                config.micro_batch_size,
                temp,
            )?)
        } else {
            None
        };
        for (i, s) in samples.iter_mut().enumerate() {
            if let Some(lp) = &policy_lp {
                for (a, b) in lp[i].iter().zip(&refs[i]) {
                    kl_sum += kl_value(*a as f64, *b as f64, config.loss.kl_estimator);
                    kl_n += 1;
                }
                if config.num_iterations > 1 {
                    s.old_logprobs = Some(lp[i].clone());
                }
            }
            s.ref_logprobs = Some(refs[i].clone());
        }
        if config.algorithm == Algorithm::ReinforcePp {
            reinforce_pp_advantages(config, &groups, &mut samples, policy_lp.as_deref())?;
        }
        let engine_diff = engine_logprob_diff(&groups, policy_lp.as_deref());

        // 3. Updates.
        let policy_weight = samples_weight(config, &samples);
        objective.policy_weight = policy_weight;
        let examples: Vec<RlExample> = samples.into_iter().map(RlExample::Policy).collect();
        let replay_examples: Vec<RlExample> = match (inputs.replay, replay_order.as_mut()) {
            (Some(r), Some(o)) if config.replay_coef > 0.0 => o
                .take(config.replay_batch_size)
                .into_iter()
                .map(|i| RlExample::Replay(r[i].clone()))
                .collect(),
            _ => Vec::new(),
        };
        let mut step_metrics: Vec<(String, f64)> = Vec::new();
        let mut first_loss = None;
        for _ in 0..config.num_iterations {
            let mut micro: Vec<Vec<&RlExample>> = examples
                .chunks(config.micro_batch_size)
                .map(|c| c.iter().collect())
                .collect();
            if !replay_examples.is_empty() {
                micro.push(replay_examples.iter().collect());
            }
            let lr = schedule.lr_at(trainer.step());
            let out = trainer.optimizer_step(&mut objective, &micro, lr)?;
            first_loss.get_or_insert(out.loss);
            if step_metrics.is_empty() {
                step_metrics = out.metrics.clone();
                step_metrics.push(("grad_norm".into(), out.grad_norm));
                step_metrics.push(("lr".into(), lr));
            }
        }
        let update_s = t2.elapsed().as_secs_f64();
        state.rollout_step += 1;

        // 4. Metrics and guards.
        let mut rec = Map::new();
        rec.insert("step".into(), json!(trainer.step()));
        rec.insert("rollout_step".into(), json!(state.rollout_step));
        rec.insert("loss".into(), json!(first_loss.unwrap_or(0.0)));
        for (key, v) in &step_metrics {
            rec.insert(key.clone(), json!(v));
        }
        let all: Vec<&SampleOut> = groups.iter().flat_map(|g| &g.samples).collect();
        let n = all.len().max(1) as f64;
        let rewards: Vec<f64> = all.iter().map(|s| s.reward).collect();
        let reward_mean = rewards.iter().sum::<f64>() / n;
        rec.insert("reward".into(), json!(reward_mean));
        rec.insert(
            "reward_std".into(),
            json!(crate::rl::advantage::std_unbiased(&rewards)),
        );
        let mean_len = all
            .iter()
            .map(|s| s.completion.tokens.len() as f64)
            .sum::<f64>()
            / n;
        rec.insert("completion_length".into(), json!(mean_len));
        rec.insert(
            "truncated_fraction".into(),
            json!(
                all.iter()
                    .filter(|s| s.completion.finish_reason == FinishReason::Length)
                    .count() as f64
                    / n
            ),
        );
        if let Some(c) = all.iter().map(|s| s.correct).collect::<Option<Vec<bool>>>() {
            rec.insert(
                "reward_accuracy".into(),
                json!(c.iter().filter(|&&x| x).count() as f64 / n),
            );
        }
        if kl_n > 0 {
            rec.insert("kl_before_update".into(), json!(kl_sum / kl_n as f64));
        }
        if let Some(d) = engine_diff {
            rec.insert("rollout_logprob_diff".into(), json!(d));
        }
        rec.insert("dynamic_sampling_dropped".into(), json!(dropped));
        rec.insert("generation_s".into(), json!(gen_s));
        rec.insert("scoring_s".into(), json!(score_s));
        rec.insert("update_s".into(), json!(update_s));
        rec.insert("step_s".into(), json!(started.elapsed().as_secs_f64()));

        let mut warnings: Vec<Warning> = Vec::new();
        if let Some(vs) = all.iter().map(|s| s.verifier).collect::<Option<Vec<f64>>>() {
            let vmean = vs.iter().sum::<f64>() / n;
            rec.insert("verifier_reward".into(), json!(vmean));
            let (trend, w) = state
                .guards
                .observe_rewards(&config.guards, reward_mean, vmean);
            if let Some((dp, dv)) = trend {
                rec.insert("hacking/proxy_trend".into(), json!(dp));
                rec.insert("hacking/verifier_trend".into(), json!(dv));
            }
            warnings.extend(w);
        }
        let (ratio, w) = state.guards.observe_length(&config.guards, mean_len);
        rec.insert("length_ratio".into(), json!(ratio));
        warnings.extend(w);
        if let Some(kl) = step_metrics.iter().find(|(n, _)| n == "kl").map(|x| x.1) {
            warnings.extend(state.guards.observe_kl(&config.guards, kl));
        }
        let retain_due = config.retain_every > 0
            && (state.rollout_step.is_multiple_of(config.retain_every)
                || state.rollout_step == config.steps);
        if let (true, Some((retain, eval))) = (retain_due, retain_eval.as_mut()) {
            let loss = retain_loss(&trainer, eval, retain)?;
            let (rel, w) = state.guards.observe_retain(&config.guards, loss);
            rec.insert("retain_loss".into(), json!(loss));
            rec.insert("retain_change".into(), json!(rel));
            warnings.extend(w);
        }
        for w in &warnings {
            rec.insert(format!("warning/{}", w.guard), json!(w.message));
        }
        for w in warnings {
            warn(&bar, Some(w));
        }
        if config.log_rollouts_every > 0
            && (k.is_multiple_of(config.log_rollouts_every) || state.rollout_step == config.steps)
        {
            write_rollouts(&rollouts_path, state.rollout_step, &groups, inputs.prompts)?;
        }
        bar.set_position(state.rollout_step as u64);
        bar.set_message(format!(
            "reward {reward_mean:.3}  len {mean_len:.0}  {:.1}s/step",
            started.elapsed().as_secs_f64()
        ));
        log.write(rec.clone())?;
        last = rec;

        // 5. Checkpoint.
        trainer.set_data_position(order.position());
        let done = state.rollout_step == config.steps;
        let interrupted = crate::interrupt::requested().filter(|_| !done);
        if done
            || interrupted.is_some()
            || (config.save_every > 0 && state.rollout_step.is_multiple_of(config.save_every))
        {
            let extra = serde_json::to_value(&state).map_err(|e| TrainError::Format {
                path: run_dir.to_path_buf(),
                msg: e.to_string(),
            })?;
            trainer.save_checkpoint(extra)?;
        }
        if let Some(signal) = interrupted {
            bar.abandon();
            let (step, total) = (state.rollout_step, config.steps);
            return Err(crate::interrupt::stopped(step, total, run_dir, signal));
        }
    }
    bar.finish_and_clear();
    Ok(OnlineSummary {
        steps: state.rollout_step,
        last,
        guards: state.guards,
        checkpoint: crate::checkpoint::latest(run_dir)?,
    })
}

/// Refuses a reference that shares a trainable weight with the policy (e.g. built from a model
/// whose weights were already `Var`s): it would move with every update and hold the KL at 0.
pub(crate) fn check_reference_is_frozen(
    reference: &Transformer,
    params: &[(String, Var)],
) -> Result<()> {
    let trained: std::collections::HashSet<_> =
        params.iter().map(|(_, v)| v.as_tensor().id()).collect();
    match reference
        .named_tensors()
        .into_iter()
        .find(|(_, t)| trained.contains(&t.id()))
    {
        Some((name, _)) => Err(TrainError::config(
            "reference",
            format!(
                "the reference shares the trainable weight `{name}` with the policy: pass a copy"
            ),
        )),
        None => Ok(()),
    }
}

pub(crate) fn warn(bar: &ProgressBar, w: Option<Warning>) {
    if let Some(w) = w {
        let msg = format!("warning [{}]: {}", w.guard, w.message);
        tracing::warn!("{msg}");
        bar.suspend(|| eprintln!("{msg}"));
    }
}

pub(crate) fn progress_bar(show: bool, total: usize, at: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "rollout {pos}/{len} [{bar:30}] {msg}  [{elapsed_precise} < {eta_precise}]",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(at as u64);
    bar
}

pub(crate) fn retain_loss(
    trainer: &Trainer,
    eval: &mut SftObjective,
    retain: &[SftSequence],
) -> Result<f64> {
    Ok(trainer.evaluate(eval, retain)?.0)
}

/// A prompt's group of scored completions.
pub(crate) struct Group {
    pub(crate) prompt: usize,
    pub(crate) samples: Vec<SampleOut>,
}

pub(crate) struct SampleOut {
    pub(crate) completion: Completion,
    pub(crate) reward: f64,
    pub(crate) correct: Option<bool>,
    pub(crate) verifier: Option<f64>,
}

pub(crate) fn rollout_groups(
    c: &OnlineConfig,
    engine: &LocalEngine,
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
            // Seeds depend on the batch, the refill round and the slot: a resumed run samples the
            // same completions.
            let mut r = Rng::derived(
                c.seed,
                ((rollout_step as u64) << 20) ^ ((round as u64) << 12) ^ j as u64,
            );
            p.seed = r.next_u64();
            GenRequest::new(prompts[i].ids.clone(), c.num_generations, p)
        })
        .collect();
    let out = engine.generate(&reqs)?;
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

pub(crate) fn score_groups(
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
                truncated: s.completion.finish_reason == FinishReason::Length,
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

/// Rollout samples with their advantages (REINFORCE++'s are filled in later, once the KL is known).
fn build_samples(
    c: &OnlineConfig,
    groups: &[Group],
    prompts: &[PromptItem],
    prm: Option<&dyn StepScorer>,
    tok: &Tokenizer,
) -> Result<Vec<RolloutSample>> {
    let rewards: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.samples.iter().map(|s| s.reward))
        .collect();
    let g = c.num_generations;
    let seq_adv = match c.algorithm {
        Algorithm::Grpo => grpo_advantages(&rewards, g, c.scale_rewards),
        Algorithm::Rloo => rloo_advantages(&rewards, g),
        Algorithm::ReinforcePp => vec![0.0; rewards.len()],
    };
    let mut out = Vec::with_capacity(rewards.len());
    let mut at = 0;
    for group in groups {
        let p = &prompts[group.prompt];
        // Process supervision: each step's score (the outcome reward joins the last step's),
        // normalised over the group's steps; a token's advantage is the sum of the normalised
        // scores of its step and the steps after it.
        let step_adv: Option<Vec<Vec<f32>>> = match prm {
            Some(prm) => Some(process_advantages(prm, p, &group.samples, tok)?),
            None => None,
        };
        for (i, s) in group.samples.iter().enumerate() {
            let len = s.completion.tokens.len();
            let mut ids = p.ids.clone();
            ids.extend_from_slice(&s.completion.tokens);
            let advantages = match &step_adv {
                Some(a) => a[i].clone(),
                None => vec![seq_adv[at] as f32; len],
            };
            let truncated = s.completion.finish_reason == FinishReason::Length;
            out.push(RolloutSample {
                ids,
                prompt_len: p.ids.len(),
                advantages,
                old_logprobs: None,
                ref_logprobs: None,
                in_loss: !(c.mask_truncated_completions && truncated),
            });
            at += 1;
        }
    }
    Ok(out)
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
    c: &OnlineConfig,
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
                -c.loss.beta * kl
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

/// Logprobs of each sample's completion, chunked exactly as the update's micro-batches (so the
/// first update's ratio is exactly 1).
pub(crate) fn no_grad_logprobs(
    model: &Transformer,
    samples: &[RolloutSample],
    pad: u32,
    micro: usize,
    temperature: f64,
) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); samples.len()];
    for (ci, chunk) in samples.chunks(micro.max(1)).enumerate() {
        let active: Vec<(usize, &RolloutSample)> = chunk
            .iter()
            .enumerate()
            .filter(|(_, s)| s.in_loss && s.completion_len() > 0)
            .map(|(j, s)| (ci * micro.max(1) + j, s))
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
fn samples_weight(c: &OnlineConfig, samples: &[RolloutSample]) -> f64 {
    use crate::rl::policy_loss::LossType;
    match c.loss.loss_type {
        LossType::Grpo | LossType::DrGrpo => samples.len() as f64,
        LossType::Dapo => samples
            .iter()
            .filter(|s| s.in_loss)
            .map(|s| s.completion_len())
            .sum::<usize>() as f64,
        LossType::Bnpo => samples.len().div_ceil(c.micro_batch_size.max(1)) as f64,
    }
}

pub(crate) fn write_rollouts(
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
mod process_supervision_tests {
    use super::*;

    /// Scores a solution whose first step is `4*2=8` all right, any other as wrong from step 2.
    struct Scripted;

    impl StepScorer for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }

        fn score_steps(&self, _prompt: &str, steps: &[&str]) -> tempering_reward::Result<Vec<f64>> {
            let right = steps.first() == Some(&"4*2=8");
            Ok((0..steps.len())
                .map(|i| if right || i == 0 { 1.0 } else { 0.0 })
                .collect())
        }
    }

    fn sample(tok: &Tokenizer, text: &str, reward: f64) -> SampleOut {
        SampleOut {
            completion: tempering_generate::Completion {
                tokens: tok.encode(text, false).unwrap(),
                text: text.to_string(),
                logprobs: None,
                top_logprobs: None,
                finish_reason: FinishReason::Stop,
                stop_string: None,
            },
            reward,
            correct: None,
            verifier: None,
        }
    }

    #[test]
    fn step_scores_and_the_outcome_become_per_token_advantages_as_the_formula_says() {
        let tok = Tokenizer::from_file(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/models/tiny-arith-sft/tokenizer.json"),
        )
        .unwrap();
        let prompt = PromptItem {
            text: "Compute: 3+4*2\n".into(),
            ids: tok.encode("Compute: 3+4*2\n", false).unwrap(),
            reference: Some("11".into()),
        };
        let right = "4*2=8\n3+8=11\nAnswer: 11";
        let wrong = "4*2=9\n3+9=12\nAnswer: 12";
        let samples = [sample(&tok, right, 1.0), sample(&tok, wrong, 0.0)];
        let adv = process_advantages(&Scripted, &prompt, &samples, &tok).unwrap();
        // Step scores with the outcome on the last step: right [1, 1, 1+1], wrong [1, 0, 0+0].
        // Over the group's six steps: mean 5/6, unbiased sd sqrt(2.8333/5) = 0.75277; a step's
        // normalised score is (x - 5/6) / (sd + 1e-4), and a token's advantage the sum over its
        // step and the later ones.
        let z = |x: f64| (x - 5.0 / 6.0) / ((2.833_333_3f64 / 5.0).sqrt() + 1e-4);
        let right_steps = [z(1.0) + z(1.0) + z(2.0), z(1.0) + z(2.0), z(2.0)];
        let wrong_steps = [z(1.0) + z(0.0) + z(0.0), z(0.0) + z(0.0), z(0.0)];
        for (text, a, want) in [(right, &adv[0], right_steps), (wrong, &adv[1], wrong_steps)] {
            assert_eq!(a.len(), tok.encode(text, false).unwrap().len());
            // Tokens up to and including a newline belong to the step the newline ends.
            let mut step = 0;
            for (i, line) in text.split('\n').enumerate() {
                let n = tok.encode(line, false).unwrap().len() + usize::from(i < 2);
                for t in &a[step..step + n] {
                    assert!(
                        (*t as f64 - want[i]).abs() < 1e-4,
                        "{text}: step {i}: {a:?}"
                    );
                }
                step += n;
            }
        }
        // The right solution's every token is pushed up, the wrong one's every token down, most
        // at the step where it went wrong.
        assert!(adv[0].iter().all(|&a| a > 0.0));
        assert!(adv[1].iter().all(|&a| a < 0.0));
    }
}
