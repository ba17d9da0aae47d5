//! The actor-critic algorithms, PPO and TRPO, as a plug-in of the online driver
//! ([`crate::rl::driver`]): the critic (a value head on the policy or a separate critic model), the
//! old logprobs and values, the classic RLHF per-token reward (the score at the last token minus
//! `kl_coef` times the per-token KL, with an optional adaptive KL controller), GAE (or group)
//! advantages, and the update: PPO by several epochs of shuffled minibatches of the clipped loss
//! (stopping early past an approximate-KL limit), TRPO by one trust-region step of the policy and
//! regression epochs of the critic. Knows the losses, the critic and the trainer; nothing of
//! rollouts, guards, logs or checkpoints (the driver's) or of the command line.

use std::path::Path;
use std::time::Instant;

use candle_core::Var;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tempering_model::Transformer;

use crate::error::{Result, TrainError};
use crate::rl::advantage::{grpo_advantages, ScaleRewards};
use crate::rl::driver::{
    check, run, Batch, OnlineConfig, OnlineInputs, OnlineSummary, RlAlgorithm, Update,
};
use crate::rl::gae::{explained_variance, gae, token_rewards, whiten, KlControl, KlController};
use crate::rl::kl::{kl_value, KlEstimator};
use crate::rl::policy_loss::RolloutSample;
use crate::rl::ppo::{actor_critic_forward, PpoLossConfig, PpoObjective, PpoSample};
use crate::rl::rollout::{no_grad_logprobs, rollout_samples, Group};
use crate::rl::trpo::{trpo_update, TrpoConfig, TrpoOutcome};
use crate::rl::value::{Critic, ValueHead};
use crate::rng::Rng;
use crate::schedule::Schedule;
use crate::trainer::Trainer;

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

/// Every setting of a PPO or TRPO run: the shared online keys (rollouts, learning rate, guards,
/// logging, checkpoints) plus the critic's, GAE's and the update's. Defaults follow TRL's
/// `PPOConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorCriticConfig {
    pub method: Method,
    pub online: OnlineConfig,
    pub loss: PpoLossConfig,
    /// The per-token KL estimator of the reward's penalty and the logged KL.
    pub kl_estimator: KlEstimator,
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
            kl_estimator: KlEstimator::K3,
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
        let o = &self.online;
        o.validate()?;
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
        )
    }
}

/// A run's models, data and scorers: GRPO's, plus an optional separate critic.
pub struct ActorCriticInputs<'a> {
    pub online: OnlineInputs<'a>,
    /// A separate critic decoder and its trainable weights; `None`: a value head on the policy.
    pub critic_model: Option<(Transformer, Vec<(String, Var)>)>,
}

/// Runs (or resumes) a PPO or TRPO run in `run_dir`.
pub fn run_actor_critic(
    config: &ActorCriticConfig,
    inputs: ActorCriticInputs<'_>,
    run_dir: &Path,
    resume: bool,
) -> Result<OnlineSummary> {
    config.validate()?;
    if inputs.online.prm.is_some() {
        return Err(TrainError::config(
            "prm",
            "PPO and TRPO take outcome rewards; step scores are supported by GRPO",
        ));
    }
    let mut ac = ActorCritic {
        config,
        critic_model: inputs.critic_model,
        policy_vars: Vec::new(),
        critic: None,
        objective: None,
        kl_ctl: KlController::new(config.kl_coef, config.kl_control),
    };
    run(&config.online, &mut ac, inputs.online, run_dir, resume)
}

/// PPO's or TRPO's plug-in: the critic, the objective, the policy's own weights (TRPO steps them
/// directly) and the KL controller.
struct ActorCritic<'a> {
    config: &'a ActorCriticConfig,
    /// The separate critic model until `prepare` builds the critic from it.
    critic_model: Option<(Transformer, Vec<(String, Var)>)>,
    policy_vars: Vec<Var>,
    critic: Option<Critic>,
    objective: Option<PpoObjective>,
    kl_ctl: KlController,
}

impl RlAlgorithm for ActorCritic<'_> {
    fn updates_per_batch(&self) -> usize {
        self.config.epochs * self.config.num_mini_batches
    }

    fn prepare(
        &mut self,
        policy: &Transformer,
        pad: u32,
        params: &mut Vec<(String, Var)>,
    ) -> Result<()> {
        let config = self.config;
        self.policy_vars = params.iter().map(|(_, v)| v.clone()).collect();
        let critic = match self.critic_model.take() {
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
                let head = ValueHead::new(policy.config.hidden_size, policy.device())?;
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
        let mut loss_config = config.loss;
        if config.method == Method::Trpo {
            loss_config.policy_coef = 0.0;
            loss_config.entropy_coef = 0.0;
            loss_config.detach_features = shared;
        }
        if group_adv && config.method == Method::Ppo {
            loss_config.vf_coef = 0.0;
        }
        self.objective = Some(PpoObjective::new(
            policy.clone(),
            critic.clone(),
            pad,
            loss_config,
        ));
        self.critic = Some(critic);
        Ok(())
    }

    fn restore_state(&mut self, saved: &Map<String, Value>) -> Result<()> {
        if let Some(v) = saved.get("kl_coef").and_then(Value::as_f64) {
            self.kl_ctl = KlController::new(v, self.config.kl_control);
        }
        Ok(())
    }

    fn save_state(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("kl_coef".into(), json!(self.kl_ctl.value));
        m
    }

    fn update(
        &mut self,
        batch: &Batch<'_>,
        trainer: &mut Trainer,
        schedule: &Schedule,
    ) -> Result<Update> {
        let config = self.config;
        let o = &config.online;
        let (Some(critic), Some(objective)) = (self.critic.as_ref(), self.objective.as_mut())
        else {
            return Err(TrainError::config("algorithm", "update before prepare"));
        };
        let (groups, pad, k) = (batch.groups, batch.pad, batch.rollout_step);

        // Old logprobs, values, reference logprobs; per-token rewards; advantages.
        let t2 = Instant::now();
        let rollouts = rollout_samples(groups, batch.prompts, o.mask_truncated_completions);
        let scores: Vec<f64> = groups
            .iter()
            .flat_map(|g| g.samples.iter().map(|s| s.reward))
            .collect();
        let micro = o.micro_batch_size;
        let (old_lp, old_v) = logprobs_and_values(batch.policy, critic, &rollouts, pad, micro)?;
        let refs = no_grad_logprobs(batch.reference, &rollouts, pad, micro, 1.0)?;
        let forward_s = t2.elapsed().as_secs_f64();

        let mut token_r: Vec<Vec<f64>> = Vec::with_capacity(rollouts.len());
        let (mut kl_tok_sum, mut kl_tok_n, mut kl_seq_sum) = (0.0, 0usize, 0.0);
        for i in 0..rollouts.len() {
            let r = token_rewards(
                scores[i],
                &old_lp[i],
                &refs[i],
                self.kl_ctl.value,
                config.kl_estimator,
            );
            let kl: f64 = old_lp[i]
                .iter()
                .zip(&refs[i])
                .map(|(&a, &b)| kl_value(a as f64, b as f64, config.kl_estimator))
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
            group_advantages(&mut advs, &token_r, &groups_sizes(groups));
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

        // TRPO's trust-region step of the policy.
        let t3 = Instant::now();
        let mut trpo_out: Option<TrpoOutcome> = None;
        if config.method == Method::Trpo {
            let refs: Vec<&RolloutSample> = samples.iter().map(|s| &s.rollout).collect();
            let mut tcfg = config.trpo;
            tcfg.micro_batch_size = micro;
            trpo_out = Some(trpo_update(
                batch.policy,
                &self.policy_vars,
                &refs,
                pad,
                &tcfg,
            )?);
        }
        let policy_s = t3.elapsed().as_secs_f64();

        // PPO's epochs of minibatches (TRPO's: the critic's regression).
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
                    .chunks(micro)
                    .map(|c| c.iter().map(|&i| &samples[i]).collect())
                    .collect();
                let lr = schedule.lr_at(trainer.step());
                let out = trainer.optimizer_step(objective, &micro, lr)?;
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
        self.kl_ctl
            .update(kl_seq_sum / n_samples.max(1) as f64, n_samples);

        // Metrics.
        let kl_mean = kl_tok_sum / kl_tok_n.max(1) as f64;
        let mut u = Update {
            kl: Some(kl_mean),
            ..Update::default()
        };
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
                u.put(key, v);
            }
        }
        u.put("updates", updates);
        u.put("early_stopped", early_stop);
        if let Some(t) = &trpo_out {
            u.put("trpo/accepted", t.accepted);
            u.put("trpo/kl", t.kl);
            u.put("trpo/backtracks", t.backtracks);
            u.put("trpo/surrogate_improvement", t.surrogate_improvement);
            u.put("trpo/expected_improvement", t.expected_improvement);
            u.put("trpo/grad_norm", t.grad_norm);
            u.put("trpo/step_norm", t.step_norm);
            u.put("trpo/cg_residual", t.cg_residual);
        }
        let ev = explained_variance(&ev_v, &ev_r);
        if ev.is_finite() {
            u.put("explained_variance", ev);
        }
        let n = n_samples.max(1) as f64;
        u.put("non_score_reward", non_score / n);
        u.put("kl_coef", Some(self.kl_ctl.value));
        u.put("kl", kl_mean);
        u.put("kl_per_completion", kl_seq_sum / n);
        u.put("forward_s", forward_s);
        if config.method == Method::Trpo {
            u.put("policy_update_s", policy_s);
            u.put("critic_update_s", critic_s);
        }
        u.put("update_s", policy_s + critic_s);
        Ok(u)
    }
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

fn groups_sizes(groups: &[Group]) -> Vec<usize> {
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
