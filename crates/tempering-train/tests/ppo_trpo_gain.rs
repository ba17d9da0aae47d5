//! PPO and TRPO on the tiny model after SFT (one SFT model shared by both tests), seeded and
//! CI-sized: each must raise greedy accuracy on held-out problems of the built-in arithmetic task.
//! Level 1 (one operation) has about 240 distinct problems, only 19 of them in the test split: the
//! assertion is on 200 distinct train-split problems (the distribution RL trains on), and the 19
//! held-out problems are reported beside it. Settings can be overridden for measurements: AC_LEVEL,
//! AC_SFT_STEPS, AC_STEPS, AC_LR, AC_MAX_KL.

mod rl_common;

use std::sync::OnceLock;

use rl_common::*;
use tempering_model::weights::Weights;
use tempering_model::{Tokenizer, Transformer};
use tempering_tasks::{generate, GenerateSpec, Problem, Split};
use tempering_train::rl::{
    run_actor_critic, ActorCriticConfig, ActorCriticInputs, Method, OnlineConfig, OnlineInputs,
    OnlineSummary,
};

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Sft {
    model: Transformer,
    tok: Tokenizer,
    eval: Vec<Problem>,
    held_out: Vec<Problem>,
    before: (f64, f64),
    _dir: tempfile::TempDir,
}

/// A copy of `m` that shares no storage: the SFT model's weights are `Var`s, and a clone made
/// trainable would share (and move) them.
fn deep_copy(m: &Transformer) -> Transformer {
    let tensors = m
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.copy().unwrap()))
        .collect();
    Transformer::from_weights(&m.config, &Weights::new(tensors, "copy".into())).unwrap()
}

fn sft() -> &'static Sft {
    static SFT: OnceLock<Sft> = OnceLock::new();
    SFT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let level = env("AC_LEVEL", 1);
        let (model, tok) = sft_tiny(level, env("AC_SFT_STEPS", 150), &dir.path().join("sft"));
        let model = deep_copy(&model);
        let eval = problems(level, 200, 99, Split::Train);
        let held_out = held_out_problems(level);
        let before = (
            greedy_accuracy(&model, &tok, &eval),
            greedy_accuracy(&model, &tok, &held_out),
        );
        Sft {
            model,
            tok,
            eval,
            held_out,
            before,
            _dir: dir,
        }
    })
}

/// Every distinct test-split problem of the level (or 200 of them).
fn held_out_problems(level: u32) -> Vec<Problem> {
    let all = generate(
        task(),
        &GenerateSpec {
            level,
            n: 2000,
            seed: 99,
            split: Split::Test,
            unique: false,
        },
    )
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    all.into_iter()
        .filter(|p| seen.insert(p.prompt.clone()))
        .take(200)
        .collect()
}

fn config(method: Method) -> ActorCriticConfig {
    let mut c = ActorCriticConfig {
        method,
        online: OnlineConfig {
            num_generations: 4,
            prompts_per_step: 16,
            steps: env("AC_STEPS", 20),
            micro_batch_size: 64,
            learning_rate: env("AC_LR", 5e-4),
            max_completion_length: 48,
            log_rollouts_every: 5,
            seed: 3,
            progress: false,
            ..OnlineConfig::default()
        },
        epochs: 2,
        num_mini_batches: 2,
        kl_coef: 0.02,
        ..ActorCriticConfig::default()
    };
    c.trpo.max_kl = env("AC_MAX_KL", 0.02);
    c
}

fn train(
    method: Method,
) -> (
    f64,
    f64,
    OnlineSummary,
    Vec<serde_json::Map<String, serde_json::Value>>,
) {
    let s = sft();
    let dir = tempfile::tempdir().unwrap();
    let level = env("AC_LEVEL", 1);
    let train = generate(
        task(),
        &GenerateSpec {
            level,
            n: 400,
            seed: 5,
            split: Split::Train,
            unique: false,
        },
    )
    .unwrap();
    let prompts = prompt_items(&train, &s.tok);
    let mut policy = deep_copy(&s.model);
    let params = policy.make_trainable(|_| true).unwrap();
    let reward = TaskReward { invert: false };
    let summary = run_actor_critic(
        &config(method),
        ActorCriticInputs {
            online: OnlineInputs {
                policy: policy.clone(),
                params,
                reference: Some(s.model.clone()),
                tokenizer: &s.tok,
                prompts: &prompts,
                reward: &reward,
                verifier: None,
                prm: None,
                retain: None,
                replay: None,
            },
            critic_model: None,
        },
        dir.path(),
        false,
    )
    .unwrap();
    let after = greedy_accuracy(&policy, &s.tok, &s.eval);
    let after_held_out = greedy_accuracy(&policy, &s.tok, &s.held_out);
    let recs = tempering_train::metrics::read(&dir.path().join("metrics.jsonl")).unwrap();
    for r in &recs {
        eprintln!(
            "{method:?} step {:?} reward {:?} kl {:?} value_loss {:?} ev {:?} trpo_kl {:?} backtracks {:?} step_s {:?}",
            r.get("rollout_step"),
            r.get("reward"),
            r.get("kl"),
            r.get("value_loss"),
            r.get("explained_variance"),
            r.get("trpo/kl"),
            r.get("trpo/backtracks"),
            r.get("step_s"),
        );
    }
    eprintln!(
        "{method:?}: greedy accuracy on 200 train-split problems {:.3} -> {after:.3}; on the {} held-out problems {:.3} -> {after_held_out:.3}",
        s.before.0,
        s.held_out.len(),
        s.before.1
    );
    (s.before.0, after, summary, recs)
}

#[test]
fn ppo_raises_greedy_accuracy_after_sft() {
    let (before, after, _, recs) = train(Method::Ppo);
    assert!(recs
        .iter()
        .all(|r| r["value_loss"].as_f64().unwrap().is_finite()));
    assert!(after > before + 0.05, "before {before} after {after}");
}

#[test]
fn trpo_raises_greedy_accuracy_after_sft() {
    let max_kl = config(Method::Trpo).trpo.max_kl;
    let (before, after, _, recs) = train(Method::Trpo);
    let accepted = recs.iter().filter(|r| r["trpo/accepted"] == true).count();
    for r in &recs {
        assert!(r["trpo/kl"].as_f64().unwrap() <= max_kl);
    }
    assert!(
        accepted * 2 >= recs.len(),
        "{accepted} of {} steps accepted",
        recs.len()
    );
    assert!(after > before + 0.05, "before {before} after {after}");
}
