//! The one online RL driver, for every online algorithm. Per rollout batch, top to bottom: sample a
//! group of completions per prompt from the policy's current weights (refilling tied groups when the
//! algorithm asks for dynamic sampling), score them, hand them to the algorithm ([`RlAlgorithm`]:
//! advantages and optimiser steps, e.g. [`crate::rl::grpo`] or [`crate::rl::actor_critic`]), run
//! the guards (KL, length drift, reward hacking, forgetting), log `metrics.jsonl` and
//! `rollouts.jsonl`, and checkpoint (with the driver's and the algorithm's state, so a run resumes
//! exactly, also after an interrupt). Knows the generation backend, the scorers' traits and the
//! trainer; nothing of losses, advantages or the command line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Var;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tempering_generate::{Backend, LocalEngine};
use tempering_model::{Tokenizer, Transformer};
use tempering_reward::{StepScorer, Verifier};

use crate::data::DataOrder;
use crate::error::{Result, TrainError};
use crate::metrics::MetricsLog;
use crate::rl::advantage::{std_unbiased, tied_groups};
use crate::rl::guards::{GuardConfig, GuardState, Warning};
use crate::rl::rollout::{rollout_groups, score_groups, write_rollouts, Group, PromptItem};
use crate::schedule::{Schedule, ScheduleKind};
use crate::sft::{SftObjective, SftSequence};
use crate::trainer::{TrainConfig, Trainer};

/// What every online algorithm shares: rollouts, the trainer's keys, guards, logs and checkpoints.
/// Defaults follow TRL's `GRPOConfig` where it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineConfig {
    /// Completions sampled per prompt (the group).
    pub num_generations: usize,
    /// Prompts per rollout batch.
    pub prompts_per_step: usize,
    /// Rollout batches.
    pub steps: usize,
    /// Completions per micro-batch of the update (and of the no-gradient forwards).
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
    /// Truncated completions (no stop token) are left out of the loss (DAPO's overlong filter).
    pub mask_truncated_completions: bool,
    /// Write the rollouts of every this-many batches to `rollouts.jsonl`; 0: never.
    pub log_rollouts_every: usize,
    /// Evaluate the retain set every this-many batches (and before the first); 0: never.
    pub retain_every: usize,
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
            num_generations: 8,
            prompts_per_step: 8,
            steps: 100,
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
            mask_truncated_completions: false,
            log_rollouts_every: 10,
            retain_every: 0,
            guards: GuardConfig::default(),
            save_every: 0,
            keep_checkpoints: 2,
            seed: 42,
            progress: true,
        }
    }
}

/// `Err(config error on key)` unless `ok`.
pub(crate) fn check(key: &str, ok: bool, msg: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(TrainError::config(key, msg))
    }
}

impl OnlineConfig {
    /// Checks the shared keys (each algorithm checks its group size and its own keys).
    pub fn validate(&self) -> Result<()> {
        check(
            "num_generations",
            self.num_generations >= 1,
            "expected at least 1",
        )?;
        check(
            "prompts_per_step",
            self.prompts_per_step > 0,
            "expected at least 1",
        )?;
        check("steps", self.steps > 0, "expected at least 1")?;
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
            "temperature",
            self.temperature > 0.0,
            "expected a positive temperature (rollouts are sampled)",
        )
    }

    /// The trainer's config for a run of `updates_per_batch` optimiser steps per rollout batch.
    pub(crate) fn train_config(&self, updates_per_batch: usize) -> TrainConfig {
        let mut t = TrainConfig {
            learning_rate: self.learning_rate,
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
            max_steps: self.steps * updates_per_batch,
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
    /// Process supervision (GRPO family): step scores become per-token advantages.
    pub prm: Option<&'a dyn StepScorer>,
    /// The forgetting monitor's retain set and the replay data (SFT sequences).
    pub retain: Option<&'a [SftSequence]>,
    pub replay: Option<&'a [SftSequence]>,
    /// Rollouts from a server handed every new policy, instead of the local engine.
    pub rollout_server: Option<&'a mut dyn RolloutServer>,
}

/// Where rollouts come from when not from the local engine: a server (an OpenAI-compatible one that
/// loads LoRA adapters at run time) handed each new policy before it samples. The learner still
/// recomputes every logprob itself.
pub trait RolloutServer {
    /// Makes the server sample from `policy`, the weights after `rollout_step` batches; returns
    /// the backend to sample with and the name of that policy version on the server.
    fn sync(&mut self, policy: &Transformer, rollout_step: usize)
        -> Result<(&dyn Backend, String)>;
}

impl<'a> OnlineInputs<'a> {
    /// A run's inputs with no held-out verifier, process reward, retain set or replay (set those
    /// with the `with_*` methods or struct update syntax).
    pub fn new(
        policy: Transformer,
        params: Vec<(String, Var)>,
        reference: Option<Transformer>,
        tokenizer: &'a Tokenizer,
        prompts: &'a [PromptItem],
        reward: &'a dyn Verifier,
    ) -> Self {
        OnlineInputs {
            policy,
            params,
            reference,
            tokenizer,
            prompts,
            reward,
            verifier: None,
            prm: None,
            retain: None,
            replay: None,
            rollout_server: None,
        }
    }

    pub fn with_verifier(mut self, verifier: Option<&'a dyn Verifier>) -> Self {
        self.verifier = verifier;
        self
    }

    pub fn with_prm(mut self, prm: Option<&'a dyn StepScorer>) -> Self {
        self.prm = prm;
        self
    }

    pub fn with_retain(mut self, retain: Option<&'a [SftSequence]>) -> Self {
        self.retain = retain;
        self
    }

    pub fn with_replay(mut self, replay: Option<&'a [SftSequence]>) -> Self {
        self.replay = replay;
        self
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct OnlineSummary {
    pub steps: usize,
    pub last: Map<String, Value>,
    pub guards: GuardState,
    pub checkpoint: PathBuf,
}

/// The driver's resumable state, stored in each checkpoint; `algorithm` holds the algorithm's own
/// keys (e.g. PPO's adaptive KL coefficient) beside the driver's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DriverState {
    rollout_step: usize,
    guards: GuardState,
    #[serde(flatten)]
    algorithm: Map<String, Value>,
}

/// One scored rollout batch, as an algorithm's update sees it.
pub struct Batch<'a> {
    /// The batch's index (0-based; seeds derive from it).
    pub rollout_step: usize,
    pub groups: &'a [Group],
    pub prompts: &'a [PromptItem],
    /// The policy (dropout off; its weights are the trainer's `Var`s) and the frozen reference.
    pub policy: &'a Transformer,
    pub reference: &'a Transformer,
    pub pad: u32,
    /// Tied groups that dynamic sampling replaced.
    pub dynamic_sampling_dropped: usize,
}

/// What an update reports: its metrics (written to `metrics.jsonl` in this order) and the per-token
/// KL to the reference that the KL guard watches, if the algorithm measures one.
#[derive(Debug, Default)]
pub struct Update {
    pub metrics: Vec<(String, Value)>,
    pub kl: Option<f64>,
}

impl Update {
    pub fn put(&mut self, key: &str, v: impl Serialize) {
        self.metrics.push((key.to_string(), json!(v)));
    }
}

/// An online algorithm as the driver runs it: its extra trainable weights and state, and the step
/// from scored rollouts to optimiser steps.
pub trait RlAlgorithm {
    /// Optimiser steps per rollout batch (the learning-rate schedule spans `steps` times this).
    fn updates_per_batch(&self) -> usize;

    /// Extra sampling rounds that replace groups whose rewards all tie (dynamic sampling); 0: off.
    fn dynamic_sampling_rounds(&self) -> usize {
        0
    }

    /// Builds the objective on `policy` and appends any extra trainable weights (a critic) to
    /// `params`, before the trainer is made.
    fn prepare(
        &mut self,
        policy: &Transformer,
        pad: u32,
        params: &mut Vec<(String, Var)>,
    ) -> Result<()>;

    /// Restores the state [`RlAlgorithm::save_state`] wrote into a checkpoint.
    fn restore_state(&mut self, _saved: &Map<String, Value>) -> Result<()> {
        Ok(())
    }

    /// The algorithm's resumable state.
    fn save_state(&self) -> Map<String, Value> {
        Map::new()
    }

    /// Advantages and optimiser steps for one scored batch.
    fn update(
        &mut self,
        batch: &Batch<'_>,
        trainer: &mut Trainer,
        schedule: &Schedule,
    ) -> Result<Update>;
}

/// Runs (or resumes) an online RL run of `algorithm` in `run_dir`.
pub fn run<A: RlAlgorithm>(
    config: &OnlineConfig,
    algorithm: &mut A,
    mut inputs: OnlineInputs<'_>,
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
    let tok = inputs.tokenizer;
    let pad = tok.pad_id();
    let mut policy = inputs.policy.clone();
    policy.set_lora_dropout(None);
    let reference = match inputs.reference {
        Some(r) => r,
        None if policy.has_lora() => policy.without_adapters(),
        None => {
            return Err(TrainError::config(
                "reference",
                "full fine-tuning needs a frozen reference copy of the policy",
            ))
        }
    };
    check_reference_is_frozen(&reference, &inputs.params)?;
    let mut params = inputs.params;
    algorithm.prepare(&policy, pad, &mut params)?;

    // The trainer (new or resumed), the driver's state and the data order.
    let tc = config.train_config(algorithm.updates_per_batch());
    let mut trainer = if resume {
        Trainer::resume(tc.clone(), params, run_dir)?
    } else {
        Trainer::new(tc.clone(), params, run_dir)?
    };
    let mut state: DriverState = match trainer.resumed_extra() {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| TrainError::Format {
            path: run_dir.join("checkpoints"),
            msg: format!("the checkpoint's RL state is unreadable: {e}"),
        })?,
        None => DriverState::default(),
    };
    algorithm.restore_state(&state.algorithm)?;
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
    let mut retain_eval = inputs
        .retain
        .map(|r| (r, SftObjective::new(policy.clone(), pad)));

    let bar = progress_bar(config.progress, config.steps, state.rollout_step);
    let mut last = Map::new();
    if !resume {
        if let Some((retain, eval)) = retain_eval.as_mut() {
            let loss = trainer.evaluate(eval, retain)?.0;
            let (_, w) = state.guards.observe_retain(&config.guards, loss);
            warn(&bar, w);
            let mut rec = Map::new();
            rec.insert("step".into(), json!(0));
            rec.insert("retain_loss".into(), json!(loss));
            log.write(rec)?;
        }
    } else {
        crate::interrupt::announce_resume(run_dir, state.rollout_step, config.steps);
    }
    let _armed = crate::interrupt::arm();
    let rounds = algorithm.dynamic_sampling_rounds();
    while state.rollout_step < config.steps {
        let k = state.rollout_step;
        let started = Instant::now();

        // 1. Rollouts and scores (with dynamic sampling: refill groups whose rewards all tie).
        let local;
        let (backend, policy_version): (&dyn Backend, Option<String>) =
            match inputs.rollout_server.as_deref_mut() {
                Some(server) => {
                    let (b, version) = server.sync(&policy, k)?;
                    (b, Some(version))
                }
                None => {
                    local = LocalEngine::new(policy.clone(), tok.clone());
                    (&local, None)
                }
            };
        let mut groups: Vec<Group> = Vec::new();
        let (mut gen_s, mut score_s) = (0.0, 0.0);
        let mut dropped = 0usize;
        // The first round's rewards, before tied groups are replaced: what the policy earns on
        // fresh prompts (the batch's own mean is biased towards mixed groups).
        let mut first_round = (0.0f64, 0usize);
        for round in 0..=rounds {
            let want = config.prompts_per_step - groups.len();
            if want == 0 {
                break;
            }
            let idx = order.take(want);
            let t0 = Instant::now();
            let mut fresh = rollout_groups(config, backend, inputs.prompts, &idx, k, round)?;
            gen_s += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            score_groups(&mut fresh, inputs.prompts, inputs.reward, inputs.verifier)?;
            score_s += t1.elapsed().as_secs_f64();
            for g in fresh {
                let rewards: Vec<f64> = g.samples.iter().map(|s| s.reward).collect();
                if round == 0 {
                    first_round.0 += rewards.iter().sum::<f64>();
                    first_round.1 += rewards.len();
                }
                if round < rounds && tied_groups(&rewards, rewards.len())[0] {
                    dropped += 1;
                    continue;
                }
                groups.push(g);
            }
        }

        // 2. The algorithm: advantages and optimiser steps.
        let batch = Batch {
            rollout_step: k,
            groups: &groups,
            prompts: inputs.prompts,
            policy: &policy,
            reference: &reference,
            pad,
            dynamic_sampling_dropped: dropped,
        };
        let update = algorithm.update(&batch, &mut trainer, &schedule)?;
        state.rollout_step += 1;

        // 3. Metrics and guards.
        let mut rec = Map::new();
        rec.insert("step".into(), json!(trainer.step()));
        rec.insert("rollout_step".into(), json!(state.rollout_step));
        for (key, v) in &update.metrics {
            rec.insert(key.clone(), v.clone());
        }
        let all: Vec<_> = groups.iter().flat_map(|g| &g.samples).collect();
        let n = all.len().max(1) as f64;
        let rewards: Vec<f64> = all.iter().map(|s| s.reward).collect();
        let reward_mean = rewards.iter().sum::<f64>() / n;
        rec.insert("reward".into(), json!(reward_mean));
        rec.insert("reward_std".into(), json!(std_unbiased(&rewards)));
        if rounds > 0 && first_round.1 > 0 {
            rec.insert(
                "reward_before_filter".into(),
                json!(first_round.0 / first_round.1 as f64),
            );
        }
        let mean_len = all
            .iter()
            .map(|s| s.completion.tokens.len() as f64)
            .sum::<f64>()
            / n;
        rec.insert("completion_length".into(), json!(mean_len));
        let truncated = all.iter().filter(|s| s.truncated()).count() as f64;
        rec.insert("truncated_fraction".into(), json!(truncated / n));
        if let Some(c) = all.iter().map(|s| s.correct).collect::<Option<Vec<bool>>>() {
            rec.insert(
                "reward_accuracy".into(),
                json!(c.iter().filter(|&&x| x).count() as f64 / n),
            );
        }
        rec.insert("generation_s".into(), json!(gen_s));
        if let Some(v) = &policy_version {
            rec.insert("rollout_policy".into(), json!(v));
        }
        rec.insert("scoring_s".into(), json!(score_s));
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
        if let Some(kl) = update.kl {
            warnings.extend(state.guards.observe_kl(&config.guards, kl));
        }
        let done = state.rollout_step == config.steps;
        let retain_due = config.retain_every > 0
            && (state.rollout_step.is_multiple_of(config.retain_every) || done);
        if let (true, Some((retain, eval))) = (retain_due, retain_eval.as_mut()) {
            let loss = trainer.evaluate(eval, retain)?.0;
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

        // 4. Logs.
        if config.log_rollouts_every > 0 && (k.is_multiple_of(config.log_rollouts_every) || done) {
            write_rollouts(&rollouts_path, state.rollout_step, &groups, inputs.prompts)?;
        }
        bar.set_position(state.rollout_step as u64);
        let kl = update
            .kl
            .map_or(String::new(), |kl| format!("  kl {kl:.4}"));
        bar.set_message(format!(
            "reward {reward_mean:.3}{kl}  len {mean_len:.0}  {:.1}s/step",
            started.elapsed().as_secs_f64()
        ));
        log.write(rec.clone())?;
        last = rec;

        // 5. Checkpoint (also when interrupted).
        trainer.set_data_position(order.position());
        let interrupted = crate::interrupt::requested().filter(|_| !done);
        if done
            || interrupted.is_some()
            || (config.save_every > 0 && state.rollout_step.is_multiple_of(config.save_every))
        {
            state.algorithm = algorithm.save_state();
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
fn check_reference_is_frozen(reference: &Transformer, params: &[(String, Var)]) -> Result<()> {
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

fn warn(bar: &ProgressBar, w: Option<Warning>) {
    if let Some(w) = w {
        let msg = format!("warning [{}]: {}", w.guard, w.message);
        tracing::warn!("{msg}");
        bar.suspend(|| eprintln!("{msg}"));
    }
}

fn progress_bar(show: bool, total: usize, at: usize) -> ProgressBar {
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
