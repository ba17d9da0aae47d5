//! PPO's numbers against the NumPy reference (`scripts/reference/gae_fixtures.py`): per-token
//! rewards, GAE, whitening, explained variance, the adaptive KL controller and the clipped policy
//! and value losses to 1e-6; the objective's loss equals those formulas; and a PPO run (shared value
//! head) and a TRPO run (separate critic) resumed from a checkpoint continue exactly.

mod rl_common;

use candle_core::{Device, Tensor};
use rl_common::*;
use serde_json::Value;
use tempering_model::Transformer;
use tempering_tasks::Split;
use tempering_train::metrics::read;
use tempering_train::objective::{Mode, Objective, StepContext};
use tempering_train::rl::gae::{explained_variance, gae, token_rewards, whiten};
use tempering_train::rl::ppo::ppo_token_losses;
use tempering_train::rl::value::{completion_hidden, logprobs_from_hidden};
use tempering_train::rl::{
    run_actor_critic, ActorCriticConfig, ActorCriticInputs, Critic, KlControl, KlController,
    KlEstimator, Method, OnlineConfig, OnlineInputs, PpoLossConfig, PpoObjective, PpoSample,
    RolloutSample, ValueHead,
};
use tempering_train::Rng;

fn fixture() -> Value {
    let path = tempering_model::known::fixtures_dir().join("rl/actor_critic.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    floats(v).into_iter().map(|x| x as f32).collect()
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * y.abs().max(1.0),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn rewards_gae_whitening_and_controller_match_numpy() {
    let f = fixture();
    for (i, c) in f["gae"].as_array().unwrap().iter().enumerate() {
        let est: KlEstimator = c["estimator"].as_str().unwrap().parse().unwrap();
        let r = token_rewards(
            c["score"].as_f64().unwrap(),
            &f32s(&c["logprobs"]),
            &f32s(&c["ref_logprobs"]),
            c["kl_coef"].as_f64().unwrap(),
            est,
        );
        close(&r, &floats(&c["rewards"]), 1e-12, &format!("rewards {i}"));
        let (a, ret) = gae(
            &r,
            &floats(&c["values"]),
            c["gamma"].as_f64().unwrap(),
            c["lam"].as_f64().unwrap(),
        );
        close(
            &a,
            &floats(&c["advantages"]),
            1e-12,
            &format!("advantages {i}"),
        );
        close(&ret, &floats(&c["returns"]), 1e-12, &format!("returns {i}"));
    }
    let w = &f["whiten"];
    close(
        &whiten(&floats(&w["x"]), true),
        &floats(&w["shift"]),
        1e-12,
        "whiten",
    );
    close(
        &whiten(&floats(&w["x"]), false),
        &floats(&w["keep_mean"]),
        1e-12,
        "whiten keep mean",
    );
    let e = &f["explained_variance"];
    let ev = explained_variance(&floats(&e["values"]), &floats(&e["returns"]));
    assert!((ev - e["ev"].as_f64().unwrap()).abs() < 1e-12);
    let k = &f["kl_controller"];
    let mut ctl = KlController::new(
        k["init"].as_f64().unwrap(),
        KlControl::Adaptive {
            target: k["target"].as_f64().unwrap(),
            horizon: k["horizon"].as_f64().unwrap(),
        },
    );
    for (u, want) in k["updates"]
        .as_array()
        .unwrap()
        .iter()
        .zip(floats(&k["values"]))
    {
        ctl.update(u[0].as_f64().unwrap(), u[1].as_u64().unwrap() as usize);
        assert!((ctl.value - want).abs() < 1e-15, "{} vs {want}", ctl.value);
    }
}

fn t(v: Vec<f32>) -> Tensor {
    let n = v.len();
    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
}

#[test]
fn clipped_policy_and_value_losses_match_numpy() {
    let f = fixture();
    let p = &f["ppo_loss"];
    let cfg = PpoLossConfig {
        clip: p["clip"].as_f64().unwrap(),
        clip_value: p["clip_value"].as_f64().unwrap(),
        ..PpoLossConfig::default()
    };
    let (pg, vf) = ppo_token_losses(
        &t(f32s(&p["logprobs"])),
        &t(f32s(&p["old_logprobs"])),
        &t(f32s(&p["advantages"])),
        &t(f32s(&p["values"])),
        &t(f32s(&p["old_values"])),
        &t(f32s(&p["returns"])),
        &cfg,
    )
    .unwrap();
    let pg: Vec<f64> = pg
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|x| x as f64)
        .collect();
    let vf: Vec<f64> = vf
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|x| x as f64)
        .collect();
    close(&pg, &floats(&p["pg"]), 1e-6, "policy loss");
    close(&vf, &floats(&p["vf"]), 1e-6, "value loss");
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    assert!((mean(&pg) - p["pg_mean"].as_f64().unwrap()).abs() < 1e-6);
    assert!((mean(&vf) - p["vf_mean"].as_f64().unwrap()).abs() < 1e-6);
    // The fixture exercises both clips: some ratios and some values are beyond their ranges.
    assert!(p["clipfrac"].as_f64().unwrap() > 0.0);
}

#[test]
fn objective_is_the_token_mean_of_the_formulas() {
    let (mut model, tok) = random_model(4);
    let _params = model.make_trainable(|_| true).unwrap();
    let head = ValueHead::new(32, &Device::Cpu).unwrap();
    // A non-zero head so that the values vary.
    head.weight
        .set(&Tensor::randn(0f32, 0.5, (32, 1), &Device::Cpu).unwrap())
        .unwrap();
    let mut rng = Rng::new(8);
    let samples: Vec<PpoSample> = (0..3)
        .map(|i| {
            let prompt = tok.encode("Compute: 1 + 2", false).unwrap();
            let n = 2 + 2 * i;
            let mut ids = prompt.clone();
            ids.extend((0..n).map(|_| rng.below(tok.vocab_size() as u64) as u32));
            let u = |r: &mut Rng, s: f64| {
                (0..n)
                    .map(|_| ((r.uniform() - 0.5) * s) as f32)
                    .collect::<Vec<_>>()
            };
            PpoSample {
                rollout: RolloutSample {
                    ids,
                    prompt_len: prompt.len(),
                    advantages: u(&mut rng, 2.0),
                    old_logprobs: Some(u(&mut rng, 1.0).iter().map(|x| x - 3.0).collect()),
                    ref_logprobs: None,
                    in_loss: true,
                },
                old_values: u(&mut rng, 2.0),
                returns: u(&mut rng, 3.0),
            }
        })
        .collect();
    let cfg = PpoLossConfig {
        vf_coef: 0.3,
        ..PpoLossConfig::default()
    };
    let mut obj = PpoObjective::new(model.clone(), Critic::Shared(head.clone()), 0, cfg);
    let batch: Vec<&PpoSample> = samples.iter().collect();
    let mut r = Rng::new(0);
    let mut ctx = StepContext {
        mode: Mode::Train,
        step: 0,
        rng: &mut r,
    };
    let out = obj.loss(&batch, &mut ctx).unwrap();
    let rollouts: Vec<&RolloutSample> = samples.iter().map(|s| &s.rollout).collect();
    let hidden = completion_hidden(&model, &rollouts, 0).unwrap();
    let (lp, _) = logprobs_from_hidden(&model, &hidden, &rollouts).unwrap();
    let values = head.values(&hidden).unwrap();
    let cat = |f: &dyn Fn(&PpoSample) -> Vec<f32>| t(samples.iter().flat_map(f).collect());
    let (pg, vf) = ppo_token_losses(
        &lp,
        &cat(&|s| s.rollout.old_logprobs.clone().unwrap()),
        &cat(&|s| s.rollout.advantages.clone()),
        &values,
        &cat(&|s| s.old_values.clone()),
        &cat(&|s| s.returns.clone()),
        &cfg,
    )
    .unwrap();
    let n = pg.dim(0).unwrap();
    assert_eq!(out.weight, n as f64);
    let want = (pg.sum_all().unwrap().to_scalar::<f32>().unwrap()
        + 0.3 * vf.sum_all().unwrap().to_scalar::<f32>().unwrap()) as f64;
    let got = out.loss_sum.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (got - want).abs() < 1e-5 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    let metric = |k: &str| out.metrics.iter().find(|(n, _)| n == k).unwrap().1;
    assert!(
        metric("clipfrac") > 0.0,
        "old logprobs far from new: the ratio clips"
    );
    assert!(metric("approx_kl_k3") > 0.0);
}

fn config(method: Method, steps: usize) -> ActorCriticConfig {
    let mut c = ActorCriticConfig {
        method,
        online: OnlineConfig {
            num_generations: 2,
            prompts_per_step: 3,
            steps,
            micro_batch_size: 4,
            learning_rate: 1e-2,
            max_completion_length: 10,
            log_rollouts_every: 1,
            seed: 13,
            progress: false,
            ..OnlineConfig::default()
        },
        epochs: 2,
        num_mini_batches: 2,
        kl_control: KlControl::Adaptive {
            target: 1.0,
            horizon: 100.0,
        },
        ..ActorCriticConfig::default()
    };
    c.trpo.max_kl = 0.05;
    c.trpo.cg_iterations = 4;
    c
}

fn run(
    dir: &std::path::Path,
    c: &ActorCriticConfig,
    resume: bool,
) -> (Transformer, Option<Transformer>) {
    let (model, tok) = random_model(5);
    let prompts = prompt_items(&problems(2, 12, 1, Split::Train), &tok);
    let mut policy = model.clone();
    let params = policy.make_trainable(|_| true).unwrap();
    let critic = (c.method == Method::Trpo).then(|| {
        let mut m = random_model(6).0;
        let p = m.make_trainable(|n| n.contains("layers.1")).unwrap();
        (m, p)
    });
    let critic_model = critic.as_ref().map(|(m, _)| m.clone());
    run_actor_critic(
        c,
        ActorCriticInputs {
            online: OnlineInputs::new(
                policy.clone(),
                params,
                Some(model),
                &tok,
                &prompts,
                &DigitShare,
            ),
            critic_model: critic,
        },
        dir,
        resume,
    )
    .unwrap();
    (policy, critic_model)
}

fn max_diff(a: &Transformer, b: &Transformer) -> f32 {
    let (ta, tb) = (a.named_tensors(), b.named_tensors());
    ta.iter()
        .map(|(n, x)| {
            (x - &tb[n])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0.0, f32::max)
}

#[test]
fn resumed_runs_continue_exactly() {
    for method in [Method::Ppo, Method::Trpo] {
        let straight = tempfile::tempdir().unwrap();
        let (a, ca) = run(straight.path(), &config(method, 3), false);
        let split = tempfile::tempdir().unwrap();
        run(split.path(), &config(method, 1), false);
        let (b, cb) = run(split.path(), &config(method, 3), true);
        assert!(
            max_diff(&a, &random_model(5).0) > 0.0,
            "{method:?} did not update the policy"
        );
        assert_eq!(
            max_diff(&a, &b),
            0.0,
            "{method:?}: the policy differs after resume"
        );
        if let (Some(ca), Some(cb)) = (ca, cb) {
            assert!(
                max_diff(&ca, &random_model(6).0) > 0.0,
                "the critic did not train"
            );
            assert_eq!(max_diff(&ca, &cb), 0.0, "the critic differs after resume");
        }
        let ra = read(&straight.path().join("metrics.jsonl")).unwrap();
        let rb = read(&split.path().join("metrics.jsonl")).unwrap();
        assert_eq!((ra.len(), rb.len()), (3, 3));
        for key in [
            "reward",
            "loss",
            "value_loss",
            "kl",
            "kl_coef",
            "explained_variance",
        ] {
            assert_eq!(ra[2].get(key), rb[2].get(key), "{method:?} {key}");
        }
        for r in &ra {
            assert!(r["value_loss"].as_f64().unwrap().is_finite());
            if method == Method::Trpo {
                let kl = r["trpo/kl"].as_f64().unwrap();
                assert!(kl <= 0.05, "trust region exceeded: {kl}");
            } else {
                assert!(r.contains_key("approx_kl_k3") && r.contains_key("clipfrac"));
            }
        }
    }
}

#[test]
fn approximate_kl_limit_stops_the_epochs_early() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(Method::Ppo, 1);
    c.epochs = 3;
    c.num_mini_batches = 2;
    // The first minibatch sees the rollout policy itself (KL ~ 0); the second comes after an update.
    c.kl_stop = 1e-6;
    run(dir.path(), &c, false);
    let r = &read(&dir.path().join("metrics.jsonl")).unwrap()[0];
    assert_eq!(r["early_stopped"], true, "{r:?}");
    let updates = r["updates"].as_u64().unwrap();
    assert!((1..6).contains(&updates), "{updates} updates");
    assert_eq!(r["step"].as_u64(), Some(updates));
}

#[test]
fn a_reference_sharing_the_policy_weights_is_refused() {
    let (mut policy, tok) = random_model(5);
    let params = policy.make_trainable(|_| true).unwrap();
    let prompts = prompt_items(&problems(2, 4, 1, Split::Train), &tok);
    let dir = tempfile::tempdir().unwrap();
    let err = run_actor_critic(
        &config(Method::Ppo, 1),
        ActorCriticInputs {
            online: OnlineInputs::new(
                policy.clone(),
                params,
                // A clone of a trainable model holds the same `Var`s.
                Some(policy.clone()),
                &tok,
                &prompts,
                &DigitShare,
            ),
            critic_model: None,
        },
        dir.path(),
        false,
    )
    .expect_err("a shared reference was accepted");
    assert!(
        err.to_string().contains("shares the trainable weight"),
        "{err}"
    );
}
