//! GRPO on the tiny model after SFT raises greedy accuracy on held-out problems (seeded, CI-sized),
//! and a gameable proxy reward makes the reward-hacking monitor fire.

mod rl_common;

use candle_core::{DType, Device};
use rl_common::*;
use tempering_model::{LoraConfig, LoraTarget};
use tempering_tasks::Split;
use tempering_train::rl::{run_online, Algorithm, LossType, OnlineConfig, OnlineInputs};

fn config(steps: usize) -> OnlineConfig {
    let mut c = OnlineConfig {
        algorithm: Algorithm::Grpo,
        num_generations: 8,
        prompts_per_step: 8,
        steps,
        micro_batch_size: 64,
        learning_rate: std::env::var("RL_LR")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5e-4),
        max_completion_length: 48,
        log_rollouts_every: 5,
        seed: 3,
        progress: false,
        ..OnlineConfig::default()
    };
    c.loss.loss_type = LossType::Dapo;
    c.loss.beta = 0.02;
    c.loss.max_completion_length = 48;
    c
}

#[test]
fn grpo_raises_greedy_accuracy_after_sft() {
    let dir = tempfile::tempdir().unwrap();
    let level = 1;
    let (model, tok) = sft_tiny(level, 150, &dir.path().join("sft"));
    let test = problems(level, 200, 99, Split::Test);
    let before = greedy_accuracy(&model, &tok, &test);

    let train = problems(level, 400, 5, Split::Train);
    let prompts = prompt_items(&train, &tok);
    let mut policy = model.clone();
    let params = policy.make_trainable(|_| true).unwrap();
    // A frozen reference: a deep copy of the SFT weights.
    let reference = model.without_adapters();
    let reward = TaskReward { invert: false };
    let steps = std::env::var("RL_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let summary = run_online(
        &config(steps),
        OnlineInputs {
            policy: policy.clone(),
            params,
            reference: Some(reference),
            tokenizer: &tok,
            prompts: &prompts,
            reward: &reward,
            verifier: None,
            prm: None,
            retain: None,
            replay: None,
        },
        &dir.path().join("grpo"),
        false,
    )
    .unwrap();
    let after = greedy_accuracy(&policy, &tok, &test);
    for r in tempering_train::metrics::read(&dir.path().join("grpo/metrics.jsonl")).unwrap() {
        eprintln!(
            "step {:?} reward {:?} len {:?} kl {:?} grad {:?}",
            r.get("rollout_step"),
            r.get("reward"),
            r.get("completion_length"),
            r.get("kl"),
            r.get("grad_norm")
        );
    }
    eprintln!(
        "greedy accuracy before {before:.3} after {after:.3}; last {:?}",
        summary.last
    );
    assert!(after > before + 0.05, "before {before} after {after}");
    let _ = (
        DType::F32,
        Device::Cpu,
        LoraConfig::default(),
        LoraTarget::Q,
    );
}
