//! TRPO's pieces: conjugate gradient solves a known symmetric positive definite system; the
//! finite-difference Fisher-vector product matches a dense Fisher matrix built from per-token,
//! per-class score vectors on a tiny model; and over many seeds an update's KL, measured
//! independently, never exceeds `max_kl`, while rejected updates leave the weights untouched.

mod rl_common;

use candle_core::{DType, Device, Tensor, Var};
use rl_common::*;
use tempering_model::{ops, TokenLayout, Tokenizer, Transformer};
use tempering_train::rl::cg::{conjugate_gradient, dot};
use tempering_train::rl::trpo::{trpo_update, TrpoConfig, TrustRegion};
use tempering_train::rl::RolloutSample;
use tempering_train::tiny::{task_tokenizer, tiny_config, TinyOptions};
use tempering_train::Rng;

#[test]
fn conjugate_gradient_solves_an_spd_system() {
    // A = M^T M + I for a fixed M: symmetric positive definite.
    let n = 12;
    let mut rng = Rng::new(1);
    let m: Vec<f64> = (0..n * n).map(|_| rng.uniform() - 0.5).collect();
    let a: Vec<f64> = (0..n * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            (0..n).map(|k| m[k * n + i] * m[k * n + j]).sum::<f64>()
                + if i == j { 1.0 } else { 0.0 }
        })
        .collect();
    let x_true: Vec<f64> = (0..n).map(|i| (i as f64 - 5.0) / 3.0).collect();
    let mul = |v: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|i| (0..n).map(|j| a[i * n + j] * v[j]).sum())
            .collect()
    };
    let b = mul(&x_true);
    let mut calls = 0;
    let sol = conjugate_gradient(
        |v| {
            calls += 1;
            Ok::<_, ()>(mul(v))
        },
        &b,
        n,
        1e-20,
    )
    .unwrap();
    for (x, y) in sol.x.iter().zip(&x_true) {
        assert!((x - y).abs() < 1e-8, "{:?}", sol.x);
    }
    assert!(calls <= n);
    // Fewer iterations give a worse but still descending answer.
    let partial = conjugate_gradient(|v| Ok::<_, ()>(mul(v)), &b, 2, 0.0).unwrap();
    assert_eq!(partial.iterations, 2);
    assert!(partial.residual_norm > sol.residual_norm);
}

fn model(hidden: usize, seed: u64) -> (Transformer, Tokenizer) {
    let tok = task_tokenizer(task()).unwrap();
    let mut o = TinyOptions::for_task(task());
    o.hidden_size = hidden;
    o.num_layers = 2;
    o.num_heads = 2;
    o.intermediate_size = 2 * hidden;
    let cfg = tiny_config(&o, &tok);
    let mut m = Transformer::init_random(&cfg, seed, &Device::Cpu, DType::F32).unwrap();
    // Larger embeddings than the init's 0.02 so that the distributions are far from uniform.
    m.embed_tokens = (m.embed_tokens.clone() * 40.0).unwrap();
    (m, tok)
}

fn samples(tok: &Tokenizer, rng: &mut Rng, count: usize, max_len: usize) -> Vec<RolloutSample> {
    (0..count)
        .map(|_| {
            let prompt = tok.encode("Compute: 2 + 5", false).unwrap();
            let n = 1 + rng.below(max_len as u64) as usize;
            let mut ids = prompt.clone();
            ids.extend((0..n).map(|_| rng.below(tok.vocab_size() as u64) as u32));
            RolloutSample {
                ids,
                prompt_len: prompt.len(),
                advantages: (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect(),
                old_logprobs: None,
                ref_logprobs: None,
                in_loss: true,
            }
        })
        .collect()
}

/// Log-softmax rows [n, V] of each sample's completion positions, one sample per forward.
fn rows(model: &Transformer, s: &RolloutSample) -> Tensor {
    let t = s.ids.len();
    let input = Tensor::from_vec(s.ids.clone(), (1, t), &Device::Cpu).unwrap();
    let logits = model
        .forward(&input, &TokenLayout::contiguous(1, t, 0), None)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let picked = logits
        .narrow(0, s.prompt_len - 1, t - s.prompt_len)
        .unwrap();
    ops::log_softmax_last_dim(&picked).unwrap()
}

fn flat_grad(store: &candle_core::backprop::GradStore, params: &[Var]) -> Vec<f64> {
    params
        .iter()
        .flat_map(|p| match store.get(p.as_tensor()) {
            Some(g) => g
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(|x| x as f64)
                .collect(),
            None => vec![0.0; p.elem_count()],
        })
        .collect()
}

#[test]
fn fisher_vector_product_matches_a_dense_fisher() {
    let (mut m, tok) = model(8, 3);
    let named = m
        .make_trainable(|n| {
            n == "model.norm.weight" || n == "model.layers.1.self_attn.v_proj.weight"
        })
        .unwrap();
    let params: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let d: usize = params.iter().map(|p| p.elem_count()).sum();
    assert_eq!(d, 8 + 64);
    let mut rng = Rng::new(7);
    let batch = samples(&tok, &mut rng, 3, 3);
    // Dense Fisher of the mean KL: (1/N) sum_t sum_v p_t(v) g_tv g_tv^T, g_tv = d log p_t(v) / d theta.
    let mut fisher = vec![0.0; d * d];
    let mut n_tok = 0;
    for s in &batch {
        let lsm = rows(&m, s);
        let n = lsm.dim(0).unwrap();
        let p: Vec<Vec<f32>> = lsm.exp().unwrap().to_vec2().unwrap();
        for (t, pt) in p.iter().enumerate() {
            for (c, &w) in pt.iter().enumerate() {
                let g = flat_grad(
                    &lsm.get(t).unwrap().get(c).unwrap().backward().unwrap(),
                    &params,
                );
                for i in 0..d {
                    for j in 0..d {
                        fisher[i * d + j] += w as f64 * g[i] * g[j];
                    }
                }
            }
        }
        n_tok += n;
    }
    fisher.iter_mut().for_each(|x| *x /= n_tok as f64);

    let refs: Vec<&RolloutSample> = batch.iter().collect();
    let tr = TrustRegion::new(&m, &params, &refs, 0, 2).unwrap();
    assert_eq!(tr.tokens(), n_tok);
    let base = tr.snapshot().unwrap();
    for trial in 0..3 {
        let v: Vec<f64> = (0..d).map(|_| rng.uniform() - 0.5).collect();
        let want: Vec<f64> = (0..d)
            .map(|i| (0..d).map(|j| fisher[i * d + j] * v[j]).sum())
            .collect();
        let got = tr
            .fisher_vector_product(&base, &v, TrpoConfig::default().fd_epsilon)
            .unwrap();
        let err: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        let scale = dot(&want, &want).sqrt();
        eprintln!("trial {trial}: |Fv| {scale:.4e}, error {err:.3e}");
        assert!(scale > 1e-4, "a degenerate Fisher: {scale}");
        assert!(
            err <= 1e-3 * scale,
            "trial {trial}: error {err} for |Fv| {scale}"
        );
    }
    // The weights are back at the old values.
    for (p, b) in params.iter().zip(&base) {
        let diff = (p.as_tensor() - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }
}

#[test]
fn a_subsampled_fisher_is_the_fisher_of_the_evenly_spaced_samples() {
    let (mut m, tok) = model(8, 5);
    let named = m
        .make_trainable(|n| n == "model.layers.1.self_attn.v_proj.weight")
        .unwrap();
    let params: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let d: usize = params.iter().map(|p| p.elem_count()).sum();
    let mut rng = Rng::new(11);
    let batch = samples(&tok, &mut rng, 9, 3);
    assert_eq!(batch.len(), 9);
    let all: Vec<&RolloutSample> = batch.iter().collect();
    // 0.34 of 9 samples: ceil(3.06) = 4 samples, at 0, 2, 4 and 6 (j * 9 / 4).
    let picked: Vec<&RolloutSample> = [0, 2, 4, 6].iter().map(|&i| &batch[i]).collect();
    let sub = TrustRegion::with_fisher_fraction(&m, &params, &all, 0, 2, 0.34).unwrap();
    let only = TrustRegion::new(&m, &params, &picked, 0, 2).unwrap();
    let full = TrustRegion::new(&m, &params, &all, 0, 2).unwrap();
    // The surrogate and the line search's KL still cover every token.
    assert_eq!(sub.tokens(), full.tokens());
    assert!(only.tokens() < full.tokens());
    let base = sub.snapshot().unwrap();
    let v: Vec<f64> = (0..d).map(|_| rng.uniform() - 0.5).collect();
    let eps = TrpoConfig::default().fd_epsilon;
    let got = sub.fisher_vector_product(&base, &v, eps).unwrap();
    let want = only.fisher_vector_product(&base, &v, eps).unwrap();
    let other = full.fisher_vector_product(&base, &v, eps).unwrap();
    let dist = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let scale = dot(&want, &want).sqrt();
    assert!(scale > 1e-6, "a degenerate Fisher: {scale}");
    assert!(
        dist(&got, &want) <= 1e-6 * scale,
        "{} vs {scale}",
        dist(&got, &want)
    );
    // ... and differs from the whole batch's Fisher (the test would pass vacuously otherwise).
    assert!(dist(&got, &other) > 1e-3 * scale);
    assert!(TrustRegion::with_fisher_fraction(&m, &params, &all, 0, 2, 0.0).is_err());
    assert!(TrustRegion::with_fisher_fraction(&m, &params, &all, 0, 2, 1.5).is_err());
}

/// The mean KL(old || new) per token, computed sample by sample from full forwards.
fn measured_kl(before: &[Tensor], model: &Transformer, batch: &[RolloutSample]) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (old, s) in before.iter().zip(batch) {
        let new = rows(model, s);
        let kl = (old.exp().unwrap() * (old - new).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        sum += kl.to_scalar::<f32>().unwrap() as f64;
        n += old.dim(0).unwrap();
    }
    sum / n as f64
}

#[test]
fn trpo_updates_stay_within_max_kl_over_many_seeds() {
    let max_kl = 0.01;
    let (mut accepted, mut total, mut backtracked) = (0, 0, 0);
    for seed in 0..16u64 {
        let (mut m, tok) = model(16, 100 + seed);
        let named = m.make_trainable(|_| true).unwrap();
        let params: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
        let mut rng = Rng::new(seed);
        let batch = samples(&tok, &mut rng, 4, 6);
        let before: Vec<Tensor> = batch.iter().map(|s| rows(&m, s)).collect();
        let snapshot: Vec<Tensor> = params
            .iter()
            .map(|p| p.as_tensor().copy().unwrap())
            .collect();
        let refs: Vec<&RolloutSample> = batch.iter().collect();
        let cfg = TrpoConfig {
            max_kl,
            // Alternate a damped, well-conditioned solve and an aggressive one that overshoots.
            damping: if seed % 2 == 0 { 0.1 } else { 1e-3 },
            cg_iterations: 10,
            micro_batch_size: 3,
            // Every fourth seed solves with a Fisher on half the samples: the bound still holds,
            // since the line search measures the KL on the whole batch.
            fisher_fraction: if seed % 4 == 3 { 0.5 } else { 1.0 },
            ..TrpoConfig::default()
        };
        let out = trpo_update(&m, &params, &refs, 0, &cfg).unwrap();
        let kl = measured_kl(&before, &m, &batch);
        total += 1;
        assert!(
            kl <= max_kl * (1.0 + 1e-3),
            "seed {seed}: measured KL {kl} > {max_kl} ({out:?})"
        );
        if out.accepted {
            accepted += 1;
            backtracked += (out.backtracks > 0) as usize;
            assert!(out.surrogate_improvement > 0.0);
            assert!(
                (out.kl - kl).abs() < 1e-4 + 1e-2 * kl,
                "seed {seed}: reported {} measured {kl}",
                out.kl
            );
            assert!(kl > 0.0);
        } else {
            for (p, b) in params.iter().zip(&snapshot) {
                let d = (p.as_tensor() - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(d, 0.0, "seed {seed}: a rejected update changed the weights");
            }
        }
        eprintln!("seed {seed}: {out:?} measured {kl:.5}");
    }
    assert!(
        accepted * 4 >= total * 3,
        "only {accepted} of {total} updates accepted"
    );
    eprintln!("{accepted}/{total} accepted, {backtracked} after backtracking");
}

/// The step is sized by the undamped Fisher, so a heavily damped solve (here the damping dwarfs
/// the tiny model's curvature) still reaches the trust region's edge instead of a small fraction
/// of it: in the quadratic regime of a small `max_kl` the full step lands near `max_kl`.
#[test]
fn a_damped_step_is_sized_by_the_undamped_fisher() {
    let max_kl = 1e-4;
    for seed in 0..4u64 {
        let (mut m, tok) = model(16, 200 + seed);
        let named = m.make_trainable(|_| true).unwrap();
        let params: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
        let mut rng = Rng::new(seed);
        let batch = samples(&tok, &mut rng, 4, 6);
        let before: Vec<Tensor> = batch.iter().map(|s| rows(&m, s)).collect();
        let refs: Vec<&RolloutSample> = batch.iter().collect();
        let cfg = TrpoConfig {
            max_kl,
            damping: 10.0,
            cg_iterations: 10,
            micro_batch_size: 4,
            ..TrpoConfig::default()
        };
        let out = trpo_update(&m, &params, &refs, 0, &cfg).unwrap();
        let kl = measured_kl(&before, &m, &batch);
        assert!(out.accepted && out.backtracks <= 1, "seed {seed}: {out:?}");
        // Each halving of the step quarters a quadratic KL: undo the backtracks.
        let full_step_kl = kl * 4f64.powi(out.backtracks as i32);
        eprintln!("seed {seed}: full step's KL {full_step_kl:.3e} ({out:?})");
        assert!(
            kl <= max_kl && full_step_kl > 0.5 * max_kl && full_step_kl < 1.5 * max_kl,
            "seed {seed}: measured KL {kl} for max_kl {max_kl} ({out:?})"
        );
    }
}
