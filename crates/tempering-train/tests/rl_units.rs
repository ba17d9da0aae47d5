//! The online-RL machinery on a randomly initialised tiny model: the first inner step's importance
//! ratio is exactly 1, the clipped loss's gradient equals the plain policy gradient when beta is 0,
//! and a run resumed from a checkpoint continues exactly as the uninterrupted one.

mod rl_common;

use candle_core::{Device, Tensor};
use rl_common::*;
use tempering_model::Transformer;
use tempering_reward::{ScoreInput, Scored, Verifier};
use tempering_tasks::Split;
use tempering_train::metrics::read;
use tempering_train::objective::{Mode, Objective, StepContext};
use tempering_train::rl::policy_loss::completion_logprobs;
use tempering_train::rl::{
    run_online, Algorithm, GrpoConfig, LossType, OnlineConfig, OnlineInputs, PolicyLossConfig,
    PolicyObjective, RolloutSample,
};
use tempering_train::Rng;

/// A held-out verifier that the proxy `DigitShare` games: the share of non-digits.
struct NonDigitShare;

impl Verifier for NonDigitShare {
    fn name(&self) -> &str {
        "non_digit_share"
    }
    fn score(&self, i: &ScoreInput<'_>) -> tempering_reward::Result<Scored> {
        let d = DigitShare.score(i)?.score;
        Ok(Scored {
            score: 1.0 - d,
            correct: None,
        })
    }
}

fn config(steps: usize, iterations: usize) -> GrpoConfig {
    GrpoConfig {
        online: OnlineConfig {
            num_generations: 4,
            prompts_per_step: 3,
            steps,
            micro_batch_size: 5,
            learning_rate: 1e-2,
            max_completion_length: 12,
            log_rollouts_every: 1,
            seed: 11,
            progress: false,
            ..OnlineConfig::default()
        },
        algorithm: Algorithm::Grpo,
        num_iterations: iterations,
        loss: PolicyLossConfig {
            beta: 0.05,
            loss_type: LossType::Grpo,
            max_completion_length: 12,
            ..PolicyLossConfig::default()
        },
        ..GrpoConfig::default()
    }
}

fn run(dir: &std::path::Path, c: &GrpoConfig, resume: bool) -> Transformer {
    run_with(dir, c, resume, None).0
}

fn run_with(
    dir: &std::path::Path,
    c: &GrpoConfig,
    resume: bool,
    verifier: Option<&dyn Verifier>,
) -> (Transformer, tempering_train::rl::OnlineSummary) {
    let (model, tok) = random_model(5);
    let prompts = prompt_items(&problems(2, 12, 1, Split::Train), &tok);
    let mut policy = model.clone();
    let params = policy.make_trainable(|_| true).unwrap();
    let summary = run_online(
        c,
        OnlineInputs::new(
            policy.clone(),
            params,
            Some(model),
            &tok,
            &prompts,
            &DigitShare,
        )
        .with_verifier(verifier),
        dir,
        resume,
    )
    .unwrap();
    (policy, summary)
}

#[test]
fn first_inner_step_ratio_is_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), &config(2, 3), false);
    let recs = read(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(recs.len(), 2);
    for r in &recs {
        // Logged from the first of the three inner steps of each rollout batch.
        assert_eq!(r["ratio/max_abs_dev"].as_f64(), Some(0.0), "{r:?}");
        assert!(r["kl_before_update"].as_f64().unwrap() >= 0.0);
    }
    // The second batch was sampled after three updates: the policy moved away from the reference.
    assert!(recs[1]["kl"].as_f64().unwrap() > 0.0, "{:?}", recs[1]);
    let rollouts = std::fs::read_to_string(dir.path().join("rollouts.jsonl")).unwrap();
    assert_eq!(rollouts.lines().count(), 6, "3 prompts x 2 batches");
}

#[test]
fn trainer_logprobs_equal_the_sampling_logprobs_at_any_temperature() {
    for temperature in [1.0, 0.7, 1.5] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(1, 2);
        c.online.temperature = temperature;
        run(dir.path(), &c, false);
        let recs = read(&dir.path().join("metrics.jsonl")).unwrap();
        // The engine's logprobs of the sampled tokens (from the tempered distribution) against the
        // trainer's old logprobs of the same tokens.
        let diff = recs[0]["rollout_logprob_diff"].as_f64().unwrap();
        assert!(diff < 1e-5, "temperature {temperature}: mean |diff| {diff}");
    }
    // And both are the tempered distribution's: log_softmax(logits / T) of the sampled token.
    let (model, tok) = random_model(9);
    let prompt = tok.encode("Compute: 3 + 4", false).unwrap();
    let mut ids = prompt.clone();
    ids.extend([5u32, 7, 9]);
    let s = RolloutSample {
        ids: ids.clone(),
        prompt_len: prompt.len(),
        advantages: vec![0.0; 3],
        old_logprobs: None,
        ref_logprobs: None,
        in_loss: true,
    };
    let (_, logits) = completion_logprobs(&model, &[&s], 0, 1.0).unwrap();
    let logits: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    let (lp, _) = completion_logprobs(&model, &[&s], 0, 0.5).unwrap();
    let lp: Vec<f32> = lp.to_vec1().unwrap();
    for (j, row) in logits.iter().enumerate() {
        let z: Vec<f64> = row.iter().map(|&x| x as f64 / 0.5).collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        let want = z[ids[prompt.len() + j] as usize] - lse;
        assert!((lp[j] as f64 - want).abs() < 1e-5, "{} vs {want}", lp[j]);
    }
}

#[test]
fn resumed_run_continues_exactly() {
    let straight = tempfile::tempdir().unwrap();
    let a = run(straight.path(), &config(3, 2), false);
    let split = tempfile::tempdir().unwrap();
    run(split.path(), &config(1, 2), false);
    let b = run(split.path(), &config(3, 2), true);
    let ta = a.named_tensors();
    let tb = b.named_tensors();
    let t0 = random_model(5).0.named_tensors();
    let moved = ta.iter().any(|(n, x)| {
        (x - &t0[n])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    });
    assert!(moved, "the runs did not update the policy");
    for (name, x) in &ta {
        let d = (x - &tb[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{name} differs after resume");
    }
    let ra = read(&straight.path().join("metrics.jsonl")).unwrap();
    let rb = read(&split.path().join("metrics.jsonl")).unwrap();
    assert_eq!(ra.len(), 3);
    assert_eq!(rb.len(), 3);
    for key in ["reward", "loss", "kl", "completion_length"] {
        assert_eq!(ra[2][key], rb[2][key], "{key}");
    }
}

#[test]
fn clipped_loss_gradient_equals_policy_gradient_when_beta_is_zero() {
    let (mut model, tok) = random_model(9);
    let params = model.make_trainable(|_| true).unwrap();
    let mut rng = Rng::new(3);
    let samples: Vec<RolloutSample> = (0..4)
        .map(|i| {
            let prompt = tok.encode("Compute: 3 + 4", false).unwrap();
            let n = 3 + i;
            let mut ids = prompt.clone();
            ids.extend((0..n).map(|_| rng.below(tok.vocab_size() as u64) as u32));
            RolloutSample {
                ids,
                prompt_len: prompt.len(),
                advantages: (0..n).map(|_| rng.uniform() as f32 - 0.5).collect(),
                old_logprobs: None,
                ref_logprobs: None,
                in_loss: true,
            }
        })
        .collect();
    let batch: Vec<&RolloutSample> = samples.iter().collect();
    let cfg = PolicyLossConfig {
        loss_type: LossType::Dapo,
        beta: 0.0,
        ..PolicyLossConfig::default()
    };
    let mut obj = PolicyObjective::new(model.clone(), 0, cfg);
    let mut r = Rng::new(0);
    let mut ctx = StepContext {
        mode: Mode::Train,
        step: 0,
        rng: &mut r,
    };
    let clipped = obj.loss(&batch, &mut ctx).unwrap().loss_sum;
    let (lp, _) = completion_logprobs(&model, &batch, 0, 1.0).unwrap();
    let adv: Vec<f32> = samples.iter().flat_map(|s| s.advantages.clone()).collect();
    let n = adv.len();
    let plain = (lp * Tensor::from_vec(adv, n, &Device::Cpu).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap();
    let g1 = clipped.backward().unwrap();
    let g2 = plain.backward().unwrap();
    let mut checked = 0;
    for (name, v) in &params {
        let a = g1.get(v.as_tensor()).unwrap();
        let b = g2.get(v.as_tensor()).unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let m = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d <= 1e-6 * m.max(1.0), "{name}: {d} vs scale {m}");
        checked += 1;
    }
    assert_eq!(checked, params.len());
}

#[test]
fn grpo_increases_a_simple_reward() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(25, 1);
    c.online.prompts_per_step = 4;
    c.online.num_generations = 8;
    c.online.learning_rate = 3e-3;
    c.loss.beta = 0.0;
    run(dir.path(), &c, false);
    let recs = read(&dir.path().join("metrics.jsonl")).unwrap();
    let r: Vec<f64> = recs.iter().map(|r| r["reward"].as_f64().unwrap()).collect();
    let first: f64 = r[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = r[r.len() - 5..].iter().sum::<f64>() / 5.0;
    eprintln!("{r:?}");
    assert!(last > first + 0.1, "reward {first} -> {last}: {r:?}");
}

#[test]
fn a_gamed_proxy_makes_the_hacking_monitor_fire() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(25, 1);
    c.online.prompts_per_step = 4;
    c.online.num_generations = 8;
    c.online.learning_rate = 3e-3;
    c.loss.beta = 0.0;
    let (_, summary) = run_with(dir.path(), &c, false, Some(&NonDigitShare));
    assert!(
        summary.guards.warnings_of("reward_hacking") > 0,
        "{:?}",
        summary.guards
    );
    let recs = read(&dir.path().join("metrics.jsonl")).unwrap();
    let fired = recs
        .iter()
        .filter(|r| r.contains_key("warning/reward_hacking"))
        .count();
    assert!(fired > 0);
    // Before the window fills, and while both move together, it stays quiet.
    assert!(!recs[0].contains_key("warning/reward_hacking"));
    assert!(recs.iter().any(|r| r.contains_key("hacking/proxy_trend")));
}

#[test]
fn a_reference_sharing_the_policy_weights_is_refused() {
    let (model, tok) = random_model(5);
    let mut trained = model.clone();
    trained.make_trainable(|_| true).unwrap();
    // A policy cloned from a model whose weights are already `Var`s shares them.
    let mut policy = trained.clone();
    let params = policy.make_trainable(|_| true).unwrap();
    let prompts = prompt_items(&problems(2, 4, 1, Split::Train), &tok);
    let dir = tempfile::tempdir().unwrap();
    let err = run_online(
        &config(1, 1),
        OnlineInputs::new(
            policy.clone(),
            params,
            Some(trained.without_adapters()),
            &tok,
            &prompts,
            &DigitShare,
        ),
        dir.path(),
        false,
    )
    .expect_err("a shared reference must be refused")
    .to_string();
    assert!(err.contains("shares the trainable weight"), "{err}");
}

/// At beta 0 the reference's forward serves the KL guard only: it runs every `kl_every` batches
/// (the metrics say which), never with `kl_every = 0`; with beta > 0 every batch.
#[test]
fn the_reference_forward_runs_only_where_the_kl_is_needed() {
    let cases: [(f64, usize, [bool; 4]); 3] = [
        (0.0, 2, [true, false, true, false]),
        (0.0, 0, [false; 4]),
        (0.05, 3, [true; 4]),
    ];
    for (beta, every, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(4, 1);
        c.loss.beta = beta;
        c.online.guards.kl_every = every;
        run(dir.path(), &c, false);
        let recs = read(&dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(recs.len(), 4);
        for (r, want) in recs.iter().zip(want) {
            let case = format!("beta {beta}, kl_every {every}: {r:?}");
            let get = |k: &str| r.get(k).cloned().unwrap_or_default();
            assert_eq!(get("reference_forward").as_bool(), Some(want), "{case}");
            assert_eq!(get("kl").as_f64().is_some(), want, "{case}");
        }
    }
}

/// A reward every completion ties on.
struct Constant(f64);

impl Verifier for Constant {
    fn name(&self) -> &str {
        "constant"
    }
    fn score(&self, _: &ScoreInput<'_>) -> tempering_reward::Result<Scored> {
        Ok(Scored {
            score: self.0,
            correct: None,
        })
    }
}

/// Dynamic sampling replaces every group whose rewards all tie, up to its last round (which keeps
/// whatever it draws), and the metrics log the first round's reward beside the batch's.
#[test]
fn dynamic_sampling_replaces_tied_groups_and_logs_the_unfiltered_reward() {
    for rounds in [0usize, 1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(2, 1);
        c.dynamic_sampling_rounds = rounds;
        let (model, tok) = random_model(5);
        let prompts = prompt_items(&problems(2, 24, 1, Split::Train), &tok);
        let mut policy = model.clone();
        let params = policy.make_trainable(|_| true).unwrap();
        run_online(
            &c,
            OnlineInputs::new(policy, params, Some(model), &tok, &prompts, &Constant(0.25)),
            dir.path(),
            false,
        )
        .unwrap();
        let recs = read(&dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(recs.len(), 2);
        for r in &recs {
            let case = format!("rounds {rounds}: {r:?}");
            // Every group ties, so every round but the last drops all it drew.
            let dropped = r["dynamic_sampling_dropped"].as_u64().unwrap() as usize;
            assert_eq!(dropped, rounds * c.online.prompts_per_step, "{case}");
            assert_eq!(r["reward"].as_f64(), Some(0.25), "{case}");
            let before = r.get("reward_before_filter").and_then(|v| v.as_f64());
            assert_eq!(before, (rounds > 0).then_some(0.25), "{case}");
        }
    }
}
