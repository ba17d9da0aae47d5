//! PPO and TRPO on the tiny model after SFT (one SFT model shared by both tests), seeded, with the
//! setup of `rl_gain.rs`: arithmetic level 1, SFT 150 steps, LoRA r=8 on every linear layer, 16
//! prompts x 8 completions per batch. PPO (1 epoch x 1 minibatch, lr 1e-3, kl_coef 0, 40 batches)
//! must raise greedy accuracy: measured 0.394 -> 0.447 (README, "PPO and TRPO"). TRPO did not gain
//! (0.394 -> 0.197 at max_kl 0.02), so its test is a measurement (`--ignored`) that asserts the
//! trust region: every step's measured KL within `max_kl`, most steps accepted. Level 1 (one
//! operation) has about 210 distinct problems, only 19 of them in the test split: the assertion is
//! on every distinct train-split problem (the distribution RL trains on), and the 19 held-out
//! problems are reported beside it. Settings can be overridden for measurements: AC_LEVEL,
//! AC_SFT_STEPS, AC_STEPS, AC_LR, AC_LORA (0: full fine-tuning), AC_GENS, AC_PROMPTS, AC_EPOCHS,
//! AC_MINIBATCHES, AC_KL_COEF, AC_MAX_KL, AC_CG, AC_KL_STOP, AC_DETACH, AC_SFT_CACHE.

mod rl_common;

use std::sync::OnceLock;

use candle_core::{DType, Device};
use rl_common::*;
use tempering_model::loader::save_hf_dir;
use tempering_model::ModelFiles;
use tempering_model::{Tokenizer, Transformer};
use tempering_tasks::{Problem, Split};
use tempering_train::rl::{
    run_actor_critic, ActorCriticConfig, ActorCriticInputs, Method, OnlineConfig, OnlineInputs,
    OnlineSummary,
};

struct Sft {
    model: Transformer,
    tok: Tokenizer,
    eval: Vec<Problem>,
    held_out: Vec<Problem>,
    before: (f64, f64),
    _dir: tempfile::TempDir,
}

fn sft() -> &'static Sft {
    static SFT: OnceLock<Sft> = OnceLock::new();
    SFT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let level = knob("AC_LEVEL", 1);
        // AC_SFT_CACHE=DIR keeps the SFT model between measurement runs.
        let cache = std::env::var("AC_SFT_CACHE")
            .ok()
            .map(std::path::PathBuf::from);
        let (model, tok) = match &cache {
            Some(c) if c.join("config.json").is_file() => {
                let f = ModelFiles::open(c, DType::F32, &Device::Cpu).unwrap();
                (f.transformer().unwrap(), f.tokenizer.unwrap())
            }
            _ => {
                let (m, tok) = sft_tiny(level, knob("AC_SFT_STEPS", 150), &dir.path().join("sft"));
                if let Some(c) = &cache {
                    save_hf_dir(c, &m, Some(&tok), None, DType::F32).unwrap();
                }
                (m, tok)
            }
        };
        let model = deep_copy(&model);
        let eval = distinct_problems(level, Split::Train);
        let held_out = distinct_problems(level, Split::Test);
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

fn config(method: Method) -> ActorCriticConfig {
    let mut c = ActorCriticConfig {
        method,
        online: OnlineConfig {
            num_generations: knob("AC_GENS", 8),
            prompts_per_step: knob("AC_PROMPTS", 16),
            steps: knob("AC_STEPS", 40),
            micro_batch_size: 64,
            learning_rate: knob("AC_LR", 1e-3),
            max_completion_length: 48,
            log_rollouts_every: 5,
            seed: 3,
            progress: false,
            ..OnlineConfig::default()
        },
        epochs: knob("AC_EPOCHS", 1),
        num_mini_batches: knob("AC_MINIBATCHES", 1),
        kl_coef: knob("AC_KL_COEF", 0.0),
        ..ActorCriticConfig::default()
    };
    c.trpo.max_kl = knob("AC_MAX_KL", 0.02);
    c.trpo.cg_iterations = knob("AC_CG", 4);
    c.kl_stop = knob("AC_KL_STOP", 0.0);
    // AC_DETACH=1: PPO's value head reads detached features (the value loss moves the head only).
    c.loss.detach_features = knob("AC_DETACH", 0) == 1;
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
    let level = knob("AC_LEVEL", 1);
    let prompts = rl_prompts(level, &s.tok);
    // LoRA r=8 on every linear layer (the reference is then the base, adapters off), as in
    // `rl_gain.rs`; AC_LORA=0: full fine-tuning against a frozen copy.
    let (policy, params, reference) =
        trainable_policy(&s.model, knob("AC_LORA", 8usize), "q,k,v,o,gate,up,down");
    let reward = TaskReward { invert: false };
    let summary = run_actor_critic(
        &config(method),
        ActorCriticInputs {
            online: OnlineInputs {
                policy: policy.clone(),
                params,
                reference,
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
        "{method:?}: greedy accuracy on {} train-split problems {:.3} -> {after:.3}; on the {} held-out problems {:.3} -> {after_held_out:.3}",
        s.eval.len(),
        s.before.0,
        s.held_out.len(),
        s.before.1
    );
    (s.before.0, after, summary, recs)
}

#[test]
fn ppo_raises_greedy_accuracy_of_the_tiny_sft_model() {
    let (before, after, summary, recs) = train(Method::Ppo);
    assert_eq!(summary.steps, config(Method::Ppo).online.steps);
    for r in &recs {
        for key in [
            "loss",
            "policy_loss",
            "value_loss",
            "approx_kl_k3",
            "reward",
        ] {
            assert!(r[key].as_f64().unwrap().is_finite(), "{key}: {r:?}");
        }
        assert_eq!(r["updates"].as_u64(), Some(1), "{r:?}");
    }
    // Measured 0.394 -> 0.447 (README, "PPO and TRPO").
    assert!(
        after >= before + 0.03,
        "PPO: greedy accuracy {before:.3} -> {after:.3}, expected a gain of at least 3 points"
    );
}

#[test]
#[ignore = "a measurement (minutes of CPU): cargo test --workspace --test ppo_trpo_gain -- --ignored"]
fn trpo_stays_in_its_trust_region_on_the_tiny_model_after_sft() {
    let max_kl = config(Method::Trpo).trpo.max_kl;
    let (_, _, _, recs) = train(Method::Trpo);
    let accepted = recs.iter().filter(|r| r["trpo/accepted"] == true).count();
    for r in &recs {
        assert!(r["trpo/kl"].as_f64().unwrap() <= max_kl, "{r:?}");
        assert!(r["value_loss"].as_f64().unwrap().is_finite());
    }
    assert!(
        accepted * 2 >= recs.len(),
        "{accepted} of {} steps accepted",
        recs.len()
    );
}
