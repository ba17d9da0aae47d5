//! The PPO and TRPO driver: sample completions from the policy's current weights, score them, read
//! the old logprobs, the critic's values and the reference's logprobs, build the classic RLHF
//! per-token reward (score at the last token minus `kl_coef` times the per-token KL), estimate
//! advantages by GAE, then update: PPO by several epochs of shuffled minibatches of the clipped
//! loss (stopping early past an approximate-KL limit), TRPO by one trust-region step of the policy
//! and regression epochs of the critic. The rollout, scoring, guard, logging and checkpoint code
//! is GRPO's ([`crate::rl::online`]). Knows the generation engine, the scorers' traits and the
//! trainer; nothing of the command line.

use std::path::Path;
use std::time::Instant;

use candle_core::Var;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};
use tempering_generate::{FinishReason, LocalEngine};
use tempering_model::Transformer;

use crate::data::DataOrder;
use crate::error::{Result, TrainError};
use crate::metrics::MetricsLog;
use crate::rl::advantage::{grpo_advantages, ScaleRewards};
use crate::rl::gae::{explained_variance, gae, token_rewards, whiten, KlControl, KlController};
use crate::rl::guards::{GuardState, Warning};
use crate::rl::kl::kl_value;
use crate::rl::online::{
    no_grad_logprobs, progress_bar, retain_loss, rollout_groups, score_groups, warn,
    write_rollouts, OnlineConfig, OnlineInputs, OnlineSummary,
};
use crate::rl::policy_loss::RolloutSample;
use crate::rl::ppo::{actor_critic_forward, PpoLossConfig, PpoObjective, PpoSample};
use crate::rl::trpo::{trpo_update, TrpoConfig, TrpoOutcome};
use crate::rl::value::{Critic, ValueHead};
use crate::rng::Rng;
use crate::schedule::Schedule;
use crate::sft::SftObjective;
use crate::trainer::{TrainConfig, Trainer};

/// Which policy update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Ppo,
    Trpo,
}

/// Where the policy update's advantages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdvantageEstimator {
    /// GAE over the per-token rewards with the critic's values (whitened if asked).
    #[default]
    Gae,
    /// Each completion's return (its per-token rewards summed: the score minus the KL penalty)
    /// against the other completions of its prompt: `(R - mean(group)) / (std(group) + 1e-4)`,
    /// GRPO's baseline, on every token. PPO's value loss is off; TRPO still regresses its value
    /// head (on detached features, so the policy is untouched) and reports it, unused.
    Group,
}

impl std::str::FromStr for AdvantageEstimator {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "gae" => Ok(AdvantageEstimator::Gae),
            "group" => Ok(AdvantageEstimator::Group),
            o => Err(format!("`{o}`: expected gae or group")),
        }
    }
}

/// Every setting of a PPO or TRPO run. `online` holds what GRPO shares (rollouts, learning rate,
/// guards, logging, checkpoints); its algorithm, loss type, group scaling and iteration count are
/// unused. Defaults follow TRL's `PPOConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorCriticConfig {
    pub method: Method,
    pub online: OnlineConfig,
    pub loss: PpoLossConfig,
    /// PPO: passes over each rollout batch; TRPO: the critic's regression passes.
    pub epochs: usize,
    /// Minibatches (optimiser steps) per pass.
    pub num_mini_batches: usize,
    pub gamma: f64,
    pub lambda: f64,
    /// The initial KL coefficient of the per-token reward.
    pub kl_coef: f64,
    pub kl_control: KlControl,
    pub advantages: AdvantageEstimator,
    /// Whiten GAE's advantages over the batch's tokens (group advantages are already scaled).
    pub whiten_advantages: bool,
    pub whiten_rewards: bool,
    /// Stop PPO's epochs once a minibatch's approximate KL (k3) to the rollout policy exceeds this;
    /// 0: never.
    pub kl_stop: f64,
    pub trpo: TrpoConfig,
}

impl Default for ActorCriticConfig {
    fn default() -> Self {
        ActorCriticConfig {
            method: Method::Ppo,
            online: OnlineConfig {
                num_generations: 1,
                learning_rate: 3e-6,
                ..OnlineConfig::default()
            },
            loss: PpoLossConfig::default(),
            epochs: 4,
            num_mini_batches: 1,
            gamma: 1.0,
            lambda: 0.95,
            kl_coef: 0.05,
            kl_control: KlControl::Fixed,
            advantages: AdvantageEstimator::Gae,
            whiten_advantages: true,
            whiten_rewards: false,
            kl_stop: 0.0,
            trpo: TrpoConfig::default(),
        }
    }
}

impl ActorCriticConfig {
    pub fn validate(&self) -> Result<()> {
        let check = |key: &str, ok: bool, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(TrainError::config(key, msg))
            }
        };
        let o = &self.online;
        check(
            "num_generations",
            o.num_generations >= 1,
            "expected at least 1",
        )?;
        check(
            "prompts_per_step",
            o.prompts_per_step > 0,
            "expected at least 1",
        )?;
        check("steps", o.steps > 0, "expected at least 1")?;
        check(
            "micro_batch_size",
            o.micro_batch_size > 0,
            "expected at least 1",
        )?;
        check(
            "max_completion_length",
            o.max_completion_length > 0,
            "expected at least 1",
        )?;
        check(
            "temperature",
            o.temperature == 1.0,
            "PPO and TRPO sample at temperature 1 (their logprobs are not yet tempered as GRPO's are)",
        )?;
        check("epochs", self.epochs > 0, "expected at least 1")?;
        check(
            "num_mini_batches",
            self.num_mini_batches > 0,
            "expected at least 1",
        )?;
        check(
            "gamma",
            (0.0..=1.0).contains(&self.gamma),
            "expected a number in [0, 1]",
        )?;
        check(
            "lambda",
            (0.0..=1.0).contains(&self.lambda),
            "expected a number in [0, 1]",
        )?;
        check(
            "advantages",
            self.advantages == AdvantageEstimator::Gae || o.num_generations >= 2,
            "group advantages need at least 2 completions per prompt (--num-generations)",
        )?;
        check(
            "kl_coef",
            self.kl_coef >= 0.0,
            "expected 0 or a positive number",
        )?;
        if let KlControl::Adaptive { target, horizon } = self.kl_control {
            check("target_kl", target > 0.0, "expected a positive number")?;
            check("kl_horizon", horizon > 0.0, "expected a positive number")?;
        }
        check(
            "cliprange",
            self.loss.clip > 0.0 && self.loss.clip < 1.0,
            "expected a number in (0, 1)",
        )?;
        check(
            "cliprange_value",
            self.loss.clip_value > 0.0,
            "expected a positive number",
        )?;
        check(
            "vf_coef",
            self.loss.vf_coef > 0.0,
            "expected a positive number",
        )?;
        check(
            "kl_stop",
            self.kl_stop >= 0.0,
            "expected 0 (off) or a positive number",
        )?;
        check(
            "max_kl",
            self.trpo.max_kl > 0.0,
            "expected a positive number",
        )?;
        check(
            "damping",
            self.trpo.damping >= 0.0,
            "expected 0 or a positive number",
        )?;
        check(
            "cg_iterations",
            self.trpo.cg_iterations > 0,
            "expected at least 1",
        )?;
        check(
            "backtrack_coef",
            self.trpo.backtrack_coef > 0.0 && self.trpo.backtrack_coef < 1.0,
            "expected a number in (0, 1)",
        )?;
        check(
            "fd_epsilon",
            self.trpo.fd_epsilon > 0.0,
            "expected a positive number",
        )?;
        check(
            "fisher_fraction",
            self.trpo.fisher_fraction > 0.0 && self.trpo.fisher_fraction <= 1.0,
            "expected a number in (0, 1]",
        )?;
        check(
            "replay_coef",
            o.replay_coef == 0.0,
            "replay is not supported by PPO and TRPO (watch forgetting with --retain-data)",
        )
    }

    fn train_config(&self) -> TrainConfig {
        let o = &self.online;
        let mut t = TrainConfig {
            learning_rate: o.learning_rate,
            schedule: o.schedule,
            warmup_steps: o.warmup_steps,
            max_steps: o.steps * self.epochs * self.num_mini_batches,
            max_grad_norm: o.max_grad_norm,
            keep_checkpoints: o.keep_checkpoints,
            seed: o.seed,
            progress: false,
            ..TrainConfig::default()
        };
        t.adamw.weight_decay = o.weight_decay;
        t
    }
}

/// A run's models, data and scorers: GRPO's, plus an optional separate critic.
pub struct ActorCriticInputs<'a> {
    pub online: OnlineInputs<'a>,
    /// A separate critic decoder and its trainable weights; `None`: a value head on the policy.
    pub critic_model: Option<(Transformer, Vec<(String, Var)>)>,
}

/// The driver's resumable state, stored in each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DriverState {
    rollout_step: usize,
    guards: GuardState,
    kl_coef: Option<f64>,
}

/// Per sample, one value per completion token.
type PerToken = Vec<Vec<f32>>;

/// Old logprobs and values of every sample's completion, in chunks of `micro` samples.
fn logprobs_and_values(
    policy: &Transformer,
    critic: &Critic,
    samples: &[RolloutSample],
    pad: u32,
    micro: usize,
) -> Result<(PerToken, PerToken)> {
    let mut lps = vec![Vec::new(); samples.len()];
    let mut vals = vec![Vec::new(); samples.len()];
    let idx: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].completion_len() > 0)
        .collect();
    for chunk in idx.chunks(micro.max(1)) {
        let refs: Vec<&RolloutSample> = chunk.iter().map(|&i| &samples[i]).collect();
        let (lp, v) = actor_critic_forward(policy, critic, &refs, pad, true, true)?;
        let lp: Vec<f32> = match lp {
            Some((lp, _)) => lp.detach().to_vec1()?,
            None => Vec::new(),
        };
        let v: Vec<f32> = v.detach().to_vec1()?;
        let mut at = 0;
        for &i in chunk {
            let n = samples[i].completion_len();
            lps[i] = lp[at..at + n].to_vec();
            vals[i] = v[at..at + n].to_vec();
            at += n;
        }
    }
    Ok((lps, vals))
}

fn groups_sizes(groups: &[crate::rl::online::Group]) -> Vec<usize> {
    groups.iter().map(|g| g.samples.len()).collect()
}

/// Replaces `advs` by the group-relative advantage of each completion's summed per-token reward,
/// on every token. `sizes` are the groups' lengths, in the order of the samples.
fn group_advantages(advs: &mut [Vec<f64>], token_r: &[Vec<f64>], sizes: &[usize]) {
    let mut at = 0;
    for &n in sizes {
        let returns: Vec<f64> = token_r[at..at + n].iter().map(|r| r.iter().sum()).collect();
        let a = grpo_advantages(&returns, n.max(1), ScaleRewards::Group);
        for (adv, x) in advs[at..at + n].iter_mut().zip(a) {
            adv.iter_mut().for_each(|v| *v = x);
        }
        at += n;
    }
}

/// Means of named metrics over several optimiser steps.
#[derive(Default)]
struct MetricMeans(Vec<(String, f64, usize)>);

impl MetricMeans {
    fn add(&mut self, items: &[(String, f64)]) {
        for (k, v) in items {
            match self.0.iter_mut().find(|(n, _, _)| n == k) {
                Some((_, s, c)) => {
                    *s += v;
                    *c += 1;
                }
                None => self.0.push((k.clone(), *v, 1)),
            }
        }
    }
    fn get(&self, key: &str) -> Option<f64> {
        self.0
            .iter()
            .find(|(n, _, _)| n == key)
            .map(|(_, s, c)| s / *c as f64)
    }
}

/// Runs (or resumes) a PPO or TRPO run in `run_dir`.
pub fn run_actor_critic(
    config: &ActorCriticConfig,
    inputs: ActorCriticInputs<'_>,
    run_dir: &Path,
    resume: bool,
) -> Result<OnlineSummary> {
    config.validate()?;
    let o = &config.online;
    let inp = inputs.online;
    if inp.prompts.is_empty() {
        return Err(TrainError::EmptyData {
            what: "RL prompts".into(),
            why: None,
        });
    }
    if inp.prm.is_some() {
        return Err(TrainError::config(
            "prm",
            "PPO and TRPO take outcome rewards; step scores are supported by GRPO",
        ));
    }
    let tok = inp.tokenizer;
    let pad = tok.pad_id();
    let mut policy_model = inp.policy.clone();
    policy_model.set_lora_dropout(None);
    let reference = match inp.reference {
        Some(r) => r,
        None if policy_model.has_lora() => policy_model.without_adapters(),
        None => {
            return Err(TrainError::config(
                "reference",
                "full fine-tuning needs a frozen reference copy of the policy",
            ))
        }
    };
    let policy_vars: Vec<Var> = inp.params.iter().map(|(_, v)| v.clone()).collect();
    crate::rl::online::check_reference_is_frozen(&reference, &inp.params)?;
    let mut params = inp.params;
    let critic = match inputs.critic_model {
        Some((mut model, cparams)) => {
            model.set_lora_dropout(None);
            let head = ValueHead::new(model.config.hidden_size, model.device())?;
            params.extend(cparams.into_iter().map(|(n, v)| (format!("critic.{n}"), v)));
            params.extend(head.params());
            Critic::Separate {
                model: Box::new(model),
                head,
            }
        }
        None => {
            let head = ValueHead::new(policy_model.config.hidden_size, policy_model.device())?;
            params.extend(head.params());
            Critic::Shared(head)
        }
    };
    let shared = matches!(critic, Critic::Shared(_));
    let group_adv = config.advantages == AdvantageEstimator::Group;
    if group_adv && !shared {
        return Err(TrainError::config(
            "critic_model",
            "group advantages use no critic: drop the critic model or use GAE",
        ));
    }

    let tc = config.train_config();
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
    let mut kl_ctl = KlController::new(state.kl_coef.unwrap_or(config.kl_coef), config.kl_control);
    let schedule = Schedule {
        kind: tc.schedule,
        lr: tc.learning_rate,
        warmup_steps: tc.warmup_steps,
        total_steps: tc.max_steps,
        min_lr_ratio: tc.min_lr_ratio,
    };
    let mut order = DataOrder::new(inp.prompts.len(), o.seed, true, trainer.data_position());
    let mut log = MetricsLog::open(run_dir, resume.then_some(trainer.step()))?;
    let rollouts_path = run_dir.join("rollouts.jsonl");
    if !resume && rollouts_path.exists() {
        std::fs::remove_file(&rollouts_path).map_err(|e| TrainError::io(&rollouts_path, e))?;
    }
    let mut loss_config = config.loss;
    if config.method == Method::Trpo {
        loss_config.policy_coef = 0.0;
        loss_config.entropy_coef = 0.0;
        loss_config.detach_features = shared;
    }
    if group_adv && config.method == Method::Ppo {
        loss_config.vf_coef = 0.0;
    }
    let mut objective = PpoObjective::new(policy_model.clone(), critic.clone(), pad, loss_config);
    let mut retain_eval = inp
        .retain
        .map(|r| (r, SftObjective::new(policy_model.clone(), pad)));

    let bar = progress_bar(o.progress, o.steps, state.rollout_step);
    let mut last = Map::new();
    if !resume {
        if let Some((retain, eval)) = retain_eval.as_mut() {
            let loss = retain_loss(&trainer, eval, retain)?;
            let (_, w) = state.guards.observe_retain(&o.guards, loss);
            warn(&bar, w);
            let mut rec = Map::new();
            rec.insert("step".into(), json!(0));
            rec.insert("retain_loss".into(), json!(loss));
            log.write(rec)?;
        }
    }

    if resume {
        crate::interrupt::announce_resume(run_dir, state.rollout_step, o.steps);
    }
    let _armed = crate::interrupt::arm();
    while state.rollout_step < o.steps {
        let k = state.rollout_step;
        let started = Instant::now();

        // 1. Rollouts and scores.
        let engine = LocalEngine::new(policy_model.clone(), tok.clone());
        let idx = order.take(o.prompts_per_step);
        let t0 = Instant::now();
        let mut groups = rollout_groups(o, &engine, inp.prompts, &idx, k, 0)?;
        let gen_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        score_groups(&mut groups, inp.prompts, inp.reward, inp.verifier)?;
        let score_s = t1.elapsed().as_secs_f64();

        // 2. Old logprobs, values, reference logprobs; per-token rewards; GAE.
        let t2 = Instant::now();
        let mut rollouts: Vec<RolloutSample> = Vec::new();
        let mut scores: Vec<f64> = Vec::new();
        for g in &groups {
            let p = &inp.prompts[g.prompt];
            for s in &g.samples {
                let mut ids = p.ids.clone();
                ids.extend_from_slice(&s.completion.tokens);
                let truncated = s.completion.finish_reason == FinishReason::Length;
                rollouts.push(RolloutSample {
                    ids,
                    prompt_len: p.ids.len(),
                    advantages: Vec::new(),
                    old_logprobs: None,
                    ref_logprobs: None,
                    in_loss: !(o.mask_truncated_completions && truncated),
                });
                scores.push(s.reward);
            }
        }
        let (old_lp, old_v) =
            logprobs_and_values(&policy_model, &critic, &rollouts, pad, o.micro_batch_size)?;
        let refs = no_grad_logprobs(&reference, &rollouts, pad, o.micro_batch_size, 1.0)?;
        let forward_s = t2.elapsed().as_secs_f64();

        let mut token_r: Vec<Vec<f64>> = Vec::with_capacity(rollouts.len());
        let (mut kl_tok_sum, mut kl_tok_n, mut kl_seq_sum) = (0.0, 0usize, 0.0);
        for i in 0..rollouts.len() {
            let r = token_rewards(
                scores[i],
                &old_lp[i],
                &refs[i],
                kl_ctl.value,
                o.loss.kl_estimator,
            );
            let kl: f64 = old_lp[i]
                .iter()
                .zip(&refs[i])
                .map(|(&a, &b)| kl_value(a as f64, b as f64, o.loss.kl_estimator))
                .sum();
            kl_tok_sum += kl;
            kl_tok_n += old_lp[i].len();
            kl_seq_sum += kl;
            token_r.push(r);
        }
        if config.whiten_rewards {
            let flat: Vec<f64> = token_r.iter().flatten().copied().collect();
            let w = whiten(&flat, false);
            let mut at = 0;
            for r in token_r.iter_mut() {
                let n = r.len();
                r.copy_from_slice(&w[at..at + n]);
                at += n;
            }
        }
        let non_score: f64 = token_r
            .iter()
            .zip(&scores)
            .map(|(r, s)| r.iter().sum::<f64>() - if r.is_empty() { 0.0 } else { *s })
            .sum::<f64>();
        let mut advs: Vec<Vec<f64>> = Vec::with_capacity(rollouts.len());
        let mut rets: Vec<Vec<f64>> = Vec::with_capacity(rollouts.len());
        for i in 0..rollouts.len() {
            let v: Vec<f64> = old_v[i].iter().map(|&x| x as f64).collect();
            let (a, r) = gae(&token_r[i], &v, config.gamma, config.lambda);
            advs.push(a);
            rets.push(r);
        }
        if config.advantages == AdvantageEstimator::Group {
            group_advantages(&mut advs, &token_r, &groups_sizes(&groups));
        } else if config.whiten_advantages {
            let flat: Vec<f64> = (0..rollouts.len())
                .filter(|&i| rollouts[i].in_loss)
                .flat_map(|i| advs[i].iter().copied())
                .collect();
            let w = whiten(&flat, true);
            let mut at = 0;
            for i in (0..rollouts.len()).filter(|&i| rollouts[i].in_loss) {
                let n = advs[i].len();
                advs[i].copy_from_slice(&w[at..at + n]);
                at += n;
            }
        }
        let (mut ev_v, mut ev_r) = (Vec::new(), Vec::new());
        for i in (0..rollouts.len()).filter(|&i| rollouts[i].in_loss) {
            ev_v.extend(old_v[i].iter().map(|&x| x as f64));
            ev_r.extend(rets[i].iter().copied());
        }
        let samples: Vec<PpoSample> = rollouts
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.advantages = advs[i].iter().map(|&x| x as f32).collect();
                r.old_logprobs = Some(old_lp[i].clone());
                r.ref_logprobs = Some(refs[i].clone());
                PpoSample {
                    rollout: r,
                    old_values: old_v[i].clone(),
                    returns: rets[i].iter().map(|&x| x as f32).collect(),
                }
            })
            .collect();

        // 3. Updates.
        let t3 = Instant::now();
        let mut trpo_out: Option<TrpoOutcome> = None;
        if config.method == Method::Trpo {
            let refs: Vec<&RolloutSample> = samples.iter().map(|s| &s.rollout).collect();
            let mut tcfg = config.trpo;
            tcfg.micro_batch_size = o.micro_batch_size;
            trpo_out = Some(trpo_update(&policy_model, &policy_vars, &refs, pad, &tcfg)?);
        }
        let policy_s = t3.elapsed().as_secs_f64();
        let t4 = Instant::now();
        let mut means = MetricMeans::default();
        let mut updates = 0usize;
        let mut early_stop = false;
        let mb = samples.len().div_ceil(config.num_mini_batches).max(1);
        'epochs: for epoch in 0..config.epochs {
            let mut perm: Vec<usize> = (0..samples.len()).collect();
            Rng::derived(o.seed, ((k as u64) << 16) ^ ((epoch as u64) << 4) ^ 0xAC)
                .shuffle(&mut perm);
            for part in perm.chunks(mb) {
                let micro: Vec<Vec<&PpoSample>> = part
                    .chunks(o.micro_batch_size)
                    .map(|c| c.iter().map(|&i| &samples[i]).collect())
                    .collect();
                let lr = schedule.lr_at(trainer.step());
                let out = trainer.optimizer_step(&mut objective, &micro, lr)?;
                updates += 1;
                let mut m = out.metrics.clone();
                m.push(("loss".into(), out.loss));
                m.push(("grad_norm".into(), out.grad_norm));
                m.push(("lr".into(), lr));
                means.add(&m);
                let approx = out
                    .metrics
                    .iter()
                    .find(|(n, _)| n == "approx_kl_k3")
                    .map(|x| x.1);
                if config.kl_stop > 0.0 && approx.is_some_and(|a| a > config.kl_stop) {
                    early_stop = true;
                    break 'epochs;
                }
            }
        }
        let critic_s = t4.elapsed().as_secs_f64();
        let n_samples = samples.len();
        kl_ctl.update(kl_seq_sum / n_samples.max(1) as f64, n_samples);
        state.kl_coef = Some(kl_ctl.value);
        state.rollout_step += 1;

        // 4. Metrics and guards.
        let mut rec = Map::new();
        rec.insert("step".into(), json!(trainer.step()));
        rec.insert("rollout_step".into(), json!(state.rollout_step));
        for key in [
            "loss",
            "policy_loss",
            "value_loss",
            "value_clipfrac",
            "value_mean",
            "clipfrac",
            "approx_kl_k1",
            "approx_kl_k3",
            "entropy",
            "grad_norm",
            "lr",
        ] {
            if let Some(v) = means.get(key) {
                rec.insert(key.into(), json!(v));
            }
        }
        rec.insert("updates".into(), json!(updates));
        rec.insert("early_stopped".into(), json!(early_stop));
        if let Some(t) = &trpo_out {
            rec.insert("trpo/accepted".into(), json!(t.accepted));
            rec.insert("trpo/kl".into(), json!(t.kl));
            rec.insert("trpo/backtracks".into(), json!(t.backtracks));
            rec.insert(
                "trpo/surrogate_improvement".into(),
                json!(t.surrogate_improvement),
            );
            rec.insert(
                "trpo/expected_improvement".into(),
                json!(t.expected_improvement),
            );
            rec.insert("trpo/grad_norm".into(), json!(t.grad_norm));
            rec.insert("trpo/step_norm".into(), json!(t.step_norm));
            rec.insert("trpo/cg_residual".into(), json!(t.cg_residual));
        }
        let ev = explained_variance(&ev_v, &ev_r);
        if ev.is_finite() {
            rec.insert("explained_variance".into(), json!(ev));
        }
        let n = n_samples.max(1) as f64;
        let reward_mean = scores.iter().sum::<f64>() / n;
        rec.insert("reward".into(), json!(reward_mean));
        rec.insert(
            "reward_std".into(),
            json!(crate::rl::advantage::std_unbiased(&scores)),
        );
        rec.insert("non_score_reward".into(), json!(non_score / n));
        rec.insert("kl_coef".into(), json!(state.kl_coef));
        let kl_mean = kl_tok_sum / kl_tok_n.max(1) as f64;
        rec.insert("kl".into(), json!(kl_mean));
        rec.insert("kl_per_completion".into(), json!(kl_seq_sum / n));
        let all: Vec<_> = groups.iter().flat_map(|g| &g.samples).collect();
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
        rec.insert("generation_s".into(), json!(gen_s));
        rec.insert("scoring_s".into(), json!(score_s));
        rec.insert("forward_s".into(), json!(forward_s));
        if config.method == Method::Trpo {
            rec.insert("policy_update_s".into(), json!(policy_s));
            rec.insert("critic_update_s".into(), json!(critic_s));
        }
        rec.insert("update_s".into(), json!(policy_s + critic_s));
        rec.insert("step_s".into(), json!(started.elapsed().as_secs_f64()));

        let mut warnings: Vec<Warning> = Vec::new();
        if let Some(vs) = all.iter().map(|s| s.verifier).collect::<Option<Vec<f64>>>() {
            let vmean = vs.iter().sum::<f64>() / n;
            rec.insert("verifier_reward".into(), json!(vmean));
            let (trend, w) = state.guards.observe_rewards(&o.guards, reward_mean, vmean);
            if let Some((dp, dv)) = trend {
                rec.insert("hacking/proxy_trend".into(), json!(dp));
                rec.insert("hacking/verifier_trend".into(), json!(dv));
            }
            warnings.extend(w);
        }
        let (ratio, w) = state.guards.observe_length(&o.guards, mean_len);
        rec.insert("length_ratio".into(), json!(ratio));
        warnings.extend(w);
        warnings.extend(state.guards.observe_kl(&o.guards, kl_mean));
        let retain_due = o.retain_every > 0
            && (state.rollout_step.is_multiple_of(o.retain_every) || state.rollout_step == o.steps);
        if let (true, Some((retain, eval))) = (retain_due, retain_eval.as_mut()) {
            let loss = retain_loss(&trainer, eval, retain)?;
            let (rel, w) = state.guards.observe_retain(&o.guards, loss);
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
        if o.log_rollouts_every > 0
            && (k.is_multiple_of(o.log_rollouts_every) || state.rollout_step == o.steps)
        {
            write_rollouts(&rollouts_path, state.rollout_step, &groups, inp.prompts)?;
        }
        bar.set_position(state.rollout_step as u64);
        bar.set_message(format!(
            "reward {reward_mean:.3}  kl {kl_mean:.4}  len {mean_len:.0}  {:.1}s/step",
            started.elapsed().as_secs_f64()
        ));
        log.write(rec.clone())?;
        last = rec;

        // 5. Checkpoint.
        trainer.set_data_position(order.position());
        let done = state.rollout_step == o.steps;
        let interrupted = crate::interrupt::requested().filter(|_| !done);
        if done
            || interrupted.is_some()
            || (o.save_every > 0 && state.rollout_step.is_multiple_of(o.save_every))
        {
            let extra = serde_json::to_value(&state).map_err(|e| TrainError::Format {
                path: run_dir.to_path_buf(),
                msg: e.to_string(),
            })?;
            trainer.save_checkpoint(extra)?;
        }
        if let Some(signal) = interrupted {
            bar.abandon();
            let (step, total) = (state.rollout_step, o.steps);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_advantages_centre_each_prompts_returns_on_every_token() {
        // Two groups of two. Returns: 1.0, 0.0 (group 1); -0.5, -0.5 (group 2, tied).
        let token_r = vec![
            vec![0.0, 0.0, 1.0],
            vec![-0.25, 0.25, 0.0],
            vec![-0.5],
            vec![0.1, -0.6],
        ];
        let mut advs: Vec<Vec<f64>> = token_r.iter().map(|r| vec![9.0; r.len()]).collect();
        group_advantages(&mut advs, &token_r, &[2, 2]);
        let s = 0.5f64.sqrt() + crate::rl::advantage::STD_EPS;
        for (a, want) in advs[0].iter().chain(&advs[1]).zip([
            0.5 / s,
            0.5 / s,
            0.5 / s,
            -0.5 / s,
            -0.5 / s,
            -0.5 / s,
        ]) {
            assert!((a - want).abs() < 1e-9, "{advs:?}");
        }
        assert!(
            advs[2..].iter().flatten().all(|a| a.abs() < 1e-9),
            "{advs:?}"
        );
    }

    #[test]
    fn group_advantages_need_groups() {
        let mut c = ActorCriticConfig {
            advantages: AdvantageEstimator::Group,
            ..ActorCriticConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("advantages") && e.contains("num-generations"),
            "{e}"
        );
        c.online.num_generations = 4;
        c.validate().unwrap();
    }
}
