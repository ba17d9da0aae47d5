//! The fused ops against naive compositions (forward, f32), against central finite differences
//! (backward, f64), and against the two ways gradients go missing: a variable that receives none,
//! and a frozen weight that receives one.

use candle_core::{DType, Device, Tensor, Var, D};
use tempering_model::ops::{self, composed};
use tempering_model::Result;

/// Deterministic pseudo-random values in [-scale, scale): the tests must not depend on a seedless RNG.
fn rand_vec(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn rand_t(dims: &[usize], seed: u64, scale: f64, dt: DType) -> Result<Tensor> {
    let n = dims.iter().product();
    let t = Tensor::from_vec(rand_vec(n, seed, scale), dims, &Device::Cpu)?;
    Ok(t.to_dtype(dt)?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?;
    Ok(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

fn max_abs(a: &Tensor) -> Result<f64> {
    Ok(a.to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?)
}

/// Scalar loss `sum(f(inputs) * proj)` with a fixed random projection, so no gradient is
/// trivially zero (softmax's outputs, for one, always sum to 1).
fn loss(out: &Tensor, seed: u64) -> Result<Tensor> {
    let proj = rand_t(out.dims(), seed, 1.0, out.dtype())?;
    Ok((out * proj)?.sum_all()?)
}

type Op<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Checks the gradient of `loss(op(inputs))` with respect to `inputs[which]` against central
/// differences, all in f64; returns the max error relative to the largest gradient entry.
fn fd_check(op: Op, inputs: &[Tensor], which: &[usize]) -> Result<f64> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = loss(&op(&ts)?, 99)?.backward()?;
    let eval = |ts: &[Tensor]| -> Result<f64> { Ok(loss(&op(ts)?, 99)?.to_scalar::<f64>()?) };
    let h = 1e-5;
    let mut worst = 0f64;
    for &i in which {
        let analytic = grads
            .get(&ts[i])
            .ok_or_else(|| {
                tempering_model::ModelError::Unsupported(format!("no grad for input {i}"))
            })?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = inputs[i].flatten_all()?.to_vec1::<f64>()?;
        let mut numeric = vec![0f64; base.len()];
        for (k, num) in numeric.iter_mut().enumerate() {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[k] += delta;
                let mut args = inputs.to_vec();
                args[i] = Tensor::from_vec(v, inputs[i].dims(), &Device::Cpu)?;
                eval(&args)
            };
            *num = (at(h)? - at(-h)?) / (2.0 * h);
        }
        let scale = numeric.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        let err = analytic
            .iter()
            .zip(&numeric)
            .fold(0f64, |m, (a, n)| m.max((a - n).abs()));
        assert!(
            scale > 1e-6,
            "input {i}: the gradient is zero, the check would be vacuous"
        );
        worst = worst.max(err / scale);
    }
    println!("finite differences: max error relative to the largest gradient = {worst:e}");
    Ok(worst)
}

const FD_TOL: f64 = 1e-6;

#[test]
fn rms_norm_backward_matches_finite_differences() -> Result<()> {
    let x = rand_t(&[3, 5, 7], 1, 2.0, DType::F64)?;
    let w = rand_t(&[7], 2, 1.5, DType::F64)?;
    let err = fd_check(&|t| ops::rms_norm(&t[0], &t[1], 1e-5), &[x, w], &[0, 1])?;
    assert!(err < FD_TOL, "rms_norm relative gradient error {err:e}");
    Ok(())
}

#[test]
fn rope_backward_matches_finite_differences() -> Result<()> {
    let x = rand_t(&[2, 3, 5, 6], 3, 1.0, DType::F64)?;
    let ang = rand_t(&[2, 5, 3], 4, 3.0, DType::F64)?;
    let (cos, sin) = (ang.cos()?, ang.sin()?);
    let err = fd_check(
        &|t| ops::rope(&t[0], &t[1], &t[2]),
        &[x.clone(), cos, sin],
        &[0],
    )?;
    assert!(
        err < FD_TOL,
        "rope (per-row positions) gradient error {err:e}"
    );
    let ang = rand_t(&[5, 3], 5, 3.0, DType::F64)?;
    let err = fd_check(
        &|t| ops::rope(&t[0], &t[1], &t[2]),
        &[x, ang.cos()?, ang.sin()?],
        &[0],
    )?;
    assert!(
        err < FD_TOL,
        "rope (shared positions) gradient error {err:e}"
    );
    Ok(())
}

#[test]
fn softmax_and_log_softmax_backward_match_finite_differences() -> Result<()> {
    let x = rand_t(&[3, 4, 9], 6, 3.0, DType::F64)?;
    let err = fd_check(
        &|t| ops::softmax_last_dim(&t[0]),
        std::slice::from_ref(&x),
        &[0],
    )?;
    assert!(err < FD_TOL, "softmax gradient error {err:e}");
    let err = fd_check(&|t| ops::log_softmax_last_dim(&t[0]), &[x], &[0])?;
    assert!(err < FD_TOL, "log_softmax gradient error {err:e}");
    Ok(())
}

#[test]
fn token_logprobs_backward_matches_finite_differences() -> Result<()> {
    let logits = rand_t(&[6, 13], 7, 4.0, DType::F64)?;
    let targets = Tensor::new(&[0u32, 12, 5, 5, 7, 1], &Device::Cpu)?;
    let err = fd_check(&|t| ops::token_logprobs(&t[0], &targets), &[logits], &[0])?;
    assert!(err < FD_TOL, "token_logprobs gradient error {err:e}");
    Ok(())
}

#[test]
fn linear_frozen_and_silu_mul_backward_match_finite_differences() -> Result<()> {
    let x = rand_t(&[2, 3, 5], 8, 1.0, DType::F64)?;
    let w = rand_t(&[7, 5], 9, 1.0, DType::F64)?;
    let err = fd_check(&|t| ops::linear_frozen(&t[0], &t[1]), &[x, w], &[0])?;
    assert!(err < FD_TOL, "linear_frozen gradient error {err:e}");
    let g = rand_t(&[3, 17], 10, 4.0, DType::F64)?;
    let u = rand_t(&[3, 17], 11, 2.0, DType::F64)?;
    let err = fd_check(&|t| ops::silu_mul(&t[0], &t[1]), &[g, u], &[0, 1])?;
    assert!(err < FD_TOL, "silu_mul gradient error {err:e}");
    Ok(())
}

#[test]
fn forwards_match_the_compositions_in_f32() -> Result<()> {
    let f = DType::F32;
    let x = rand_t(&[4, 33, 64], 20, 3.0, f)?;
    let w = rand_t(&[64], 21, 1.0, f)?;
    let d = max_abs_diff(
        &ops::rms_norm(&x, &w, 1e-6)?,
        &composed::rms_norm(&x, &w, 1e-6)?,
    )?;
    assert!(d < 1e-5, "rms_norm forward differs by {d:e}");

    let xr = rand_t(&[2, 3, 7, 16], 22, 1.0, f)?;
    let ang = rand_t(&[2, 7, 8], 23, 3.0, f)?;
    let (c, s) = (ang.cos()?, ang.sin()?);
    let d = max_abs_diff(&ops::rope(&xr, &c, &s)?, &composed::rope(&xr, &c, &s)?)?;
    assert!(d < 1e-6, "rope forward differs by {d:e}");
    // A transposed (non-contiguous) input is accepted and means the same thing.
    let xt = xr.transpose(1, 2)?.contiguous()?.transpose(1, 2)?;
    assert!(!xt.is_contiguous());
    assert!(max_abs_diff(&ops::rope(&xt, &c, &s)?, &ops::rope(&xr, &c, &s)?)? == 0.0);
    // Shared [T, D/2] positions equal per-row positions that repeat them.
    let (c1, s1) = (c.get(0)?, s.get(0)?);
    let rep = |t: &Tensor| Tensor::stack(&[t, t], 0);
    let d = max_abs_diff(
        &ops::rope(&xr, &c1, &s1)?,
        &ops::rope(&xr, &rep(&c1)?, &rep(&s1)?)?,
    )?;
    assert!(d == 0.0);

    let xs = rand_t(&[3, 5, 37], 24, 8.0, f)?;
    let d = max_abs_diff(
        &ops::softmax_last_dim(&xs)?,
        &composed::softmax_last_dim(&xs)?,
    )?;
    assert!(d < 1e-6, "softmax forward differs by {d:e}");
    let d = max_abs_diff(
        &ops::softmax_last_dim(&xs)?,
        &candle_nn::ops::softmax_last_dim(&xs)?,
    )?;
    assert!(d < 1e-6, "softmax differs from candle's fused one by {d:e}");
    let d = max_abs_diff(
        &ops::log_softmax_last_dim(&xs)?,
        &candle_nn::ops::log_softmax(&xs, D::Minus1)?,
    )?;
    assert!(d < 5e-6, "log_softmax forward differs by {d:e}");

    let xl = rand_t(&[3, 10, 48], 25, 1.0, f)?;
    let wl = rand_t(&[24, 48], 26, 1.0, f)?;
    let d = max_abs_diff(&ops::linear_frozen(&xl, &wl)?, &composed::linear(&xl, &wl)?)?;
    assert!(d < 1e-5, "linear_frozen forward differs by {d:e}");

    let g = rand_t(&[5, 301], 27, 10.0, f)?;
    let u = rand_t(&[5, 301], 28, 2.0, f)?;
    let d = max_abs_diff(&ops::silu_mul(&g, &u)?, &composed::silu_mul(&g, &u)?)?;
    assert!(d < 1e-5, "silu_mul forward differs by {d:e}");
    Ok(())
}

#[test]
fn softmax_handles_masked_entries() -> Result<()> {
    let x = Tensor::new(
        &[[1.0f32, f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY]],
        &Device::Cpu,
    )?;
    let y = ops::softmax_last_dim(&x)?.to_vec2::<f32>()?;
    assert_eq!(y[0][1], 0.0);
    assert_eq!(y[0][3], 0.0);
    let e = 1.0f32.exp();
    assert!((y[0][0] - 1.0 / (1.0 + e)).abs() < 1e-7);
    let l = ops::log_softmax_last_dim(&x)?.to_vec2::<f32>()?;
    assert!(l[0][1] == f32::NEG_INFINITY && l[0][0].is_finite());
    Ok(())
}

#[test]
fn token_logprobs_equals_log_softmax_then_gather() -> Result<()> {
    let (n, v) = (37, 1000);
    let logits = rand_t(&[n, v], 30, 12.0, DType::F32)?;
    let tg: Vec<u32> = rand_vec(n, 31, 1.0)
        .iter()
        .map(|r| ((r + 1.0) / 2.0 * (v as f64 - 1.0)) as u32)
        .collect();
    let targets = Tensor::new(tg.as_slice(), &Device::Cpu)?;
    let got = ops::token_logprobs(&logits, &targets)?;
    assert_eq!(got.dims(), [n]);
    // The same in f32 through candle's log-softmax, and the truth in f64.
    let f32_ref = candle_nn::ops::log_softmax(&logits, D::Minus1)?
        .gather(&targets.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let truth = composed::token_logprobs(&logits.to_dtype(DType::F64)?, &targets)?;
    let d32 = max_abs_diff(&got, &f32_ref)?;
    let rel = max_abs_diff(&got, &truth)? / max_abs(&truth)?;
    println!("token_logprobs: |fused - candle f32| = {d32:e}, relative to f64 truth = {rel:e}");
    assert!(d32 < 1e-5 && rel < 1e-6, "diff {d32:e}, relative {rel:e}");
    // i64 targets give the same numbers; a target outside the vocabulary is an error.
    let t64 = targets.to_dtype(DType::I64)?;
    assert_eq!(
        max_abs_diff(&ops::token_logprobs(&logits, &t64)?, &got)?,
        0.0
    );
    let bad = Tensor::new(&[v as u32], &Device::Cpu)?;
    assert!(ops::token_logprobs(&logits.narrow(0, 0, 1)?, &bad).is_err());
    let neg = Tensor::new(&[-1i64], &Device::Cpu)?;
    assert!(ops::token_logprobs(&logits.narrow(0, 0, 1)?, &neg).is_err());
    Ok(())
}

/// Every op, fed a Var in f32, must hand that Var a non-zero gradient (candle's own fused ops
/// silently do not).
#[test]
fn every_op_passes_a_gradient_to_a_var() -> Result<()> {
    let f = DType::F32;
    let check = |name: &str, var: &Var, out: Tensor| -> Result<()> {
        let grads = loss(&out, 5)?.backward()?;
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: the Var got no gradient"));
        assert!(max_abs(g)? > 0.0, "{name}: the gradient is all zeros");
        Ok(())
    };
    let x = Var::from_tensor(&rand_t(&[2, 9, 16], 40, 1.0, f)?)?;
    let w = Var::from_tensor(&rand_t(&[16], 41, 1.0, f)?)?;
    check("rms_norm x", &x, ops::rms_norm(&x, &w, 1e-5)?)?;
    check("rms_norm weight", &w, ops::rms_norm(&x, &w, 1e-5)?)?;
    let xr = Var::from_tensor(&rand_t(&[2, 3, 9, 16], 42, 1.0, f)?)?;
    let ang = rand_t(&[2, 9, 8], 43, 2.0, f)?;
    check("rope", &xr, ops::rope(&xr, &ang.cos()?, &ang.sin()?)?)?;
    check("softmax", &x, ops::softmax_last_dim(&x)?)?;
    check("log_softmax", &x, ops::log_softmax_last_dim(&x)?)?;
    let l = Var::from_tensor(&rand_t(&[4, 50], 44, 3.0, f)?)?;
    let t = Tensor::new(&[3u32, 0, 49, 3], &Device::Cpu)?;
    check("token_logprobs", &l, ops::token_logprobs(&l, &t)?)?;
    let wl = rand_t(&[5, 16], 45, 1.0, f)?;
    check("linear_frozen", &x, ops::linear_frozen(&x, &wl)?)?;
    let u = Var::from_tensor(&rand_t(&[2, 9, 16], 46, 1.0, f)?)?;
    check("silu_mul gate", &x, ops::silu_mul(&x, &u)?)?;
    check("silu_mul up", &u, ops::silu_mul(&x, &u)?)?;
    // Composed through a chain, as in a layer: norm, projection, rope, attention softmax.
    let h = ops::rms_norm(&x, &w, 1e-5)?;
    let q = ops::linear_frozen(&h, &rand_t(&[16, 16], 47, 0.5, f)?)?
        .reshape((2, 9, 1, 16))?
        .transpose(1, 2)?;
    let ang1 = rand_t(&[9, 8], 48, 2.0, f)?;
    let q = ops::rope(&q, &ang1.cos()?, &ang1.sin()?)?;
    let att = ops::softmax_last_dim(&q.matmul(&q.transpose(2, 3)?)?)?;
    check("chain", &x, att.clone())?;
    check("chain weight", &w, att)?;
    Ok(())
}

#[test]
fn linear_frozen_gives_no_gradient_to_the_weight() -> Result<()> {
    let x = Var::from_tensor(&rand_t(&[2, 7, 12], 50, 1.0, DType::F32)?)?;
    // A Var on purpose: even a weight that could take a gradient must not get one.
    let w = Var::from_tensor(&rand_t(&[9, 12], 51, 1.0, DType::F32)?)?;
    let grads = loss(&ops::linear_frozen(&x, &w)?, 52)?.backward()?;
    assert!(
        grads.get(w.as_tensor()).is_none(),
        "the frozen weight got a gradient"
    );
    let gx = grads.get(x.as_tensor()).expect("x has a gradient");
    // The reference: candle's matmul, which gives both gradients.
    let ref_grads = loss(&composed::linear(&x, &w)?, 52)?.backward()?;
    assert!(ref_grads.get(w.as_tensor()).is_some());
    let d = max_abs_diff(gx, ref_grads.get(x.as_tensor()).expect("reference grad"))?;
    assert!(d < 1e-5, "x's gradient differs from matmul's by {d:e}");
    // A plain tensor as weight: no entry either.
    let wt = rand_t(&[9, 12], 53, 1.0, DType::F32)?;
    let grads = loss(&ops::linear_frozen(&x, &wt)?, 54)?.backward()?;
    assert!(grads.get(&wt).is_none());
    assert!(grads.get(x.as_tensor()).is_some());
    Ok(())
}

/// The compositions are what runs off the CPU: their gradients must agree with the fused ones.
#[test]
fn compositions_have_the_same_gradients_as_the_fused_ops() -> Result<()> {
    let f = DType::F64;
    let grad_of = |out: Tensor, v: &Var| -> Result<Tensor> {
        let g = loss(&out, 60)?.backward()?;
        Ok(g.get(v.as_tensor()).expect("gradient").clone())
    };
    let x = Var::from_tensor(&rand_t(&[3, 11], 61, 2.0, f)?)?;
    let w = Var::from_tensor(&rand_t(&[11], 62, 1.0, f)?)?;
    let pairs = [
        (
            ops::rms_norm(&x, &w, 1e-5)?,
            composed::rms_norm(&x, &w, 1e-5)?,
        ),
        (ops::softmax_last_dim(&x)?, composed::softmax_last_dim(&x)?),
        (
            ops::log_softmax_last_dim(&x)?,
            composed::log_softmax_last_dim(&x)?,
        ),
        (ops::silu_mul(&x, &x)?, composed::silu_mul(&x, &x)?),
        (
            ops::token_logprobs(&x, &Tensor::new(&[1u32, 10, 0], &Device::Cpu)?)?,
            composed::token_logprobs(&x, &Tensor::new(&[1u32, 10, 0], &Device::Cpu)?)?,
        ),
    ];
    for (i, (a, b)) in pairs.into_iter().enumerate() {
        let d = max_abs_diff(&grad_of(a, &x)?, &grad_of(b, &x)?)?;
        assert!(d < 1e-12, "pair {i}: gradients differ by {d:e}");
    }
    let d = max_abs_diff(
        &grad_of(ops::rms_norm(&x, &w, 1e-5)?, &w)?,
        &grad_of(composed::rms_norm(&x, &w, 1e-5)?, &w)?,
    )?;
    assert!(d < 1e-12, "rms_norm weight gradients differ by {d:e}");
    let xr = Var::from_tensor(&rand_t(&[2, 2, 3, 4], 63, 1.0, f)?)?;
    let ang = rand_t(&[2, 3, 2], 64, 2.0, f)?;
    let (c, s) = (ang.cos()?, ang.sin()?);
    let d = max_abs_diff(
        &grad_of(ops::rope(&xr, &c, &s)?, &xr)?,
        &grad_of(composed::rope(&xr, &c, &s)?, &xr)?,
    )?;
    assert!(d < 1e-12, "rope gradients differ by {d:e}");
    Ok(())
}

/// Large enough to take the parallel path: same numbers as the serial path on a slice of it.
#[test]
fn parallel_and_serial_paths_agree() -> Result<()> {
    let x = rand_t(&[300, 257], 70, 4.0, DType::F32)?;
    let w = rand_t(&[257], 71, 1.0, DType::F32)?;
    let big = ops::rms_norm(&x, &w, 1e-5)?;
    let small = ops::rms_norm(&x.narrow(0, 17, 2)?, &w, 1e-5)?;
    assert_eq!(max_abs_diff(&big.narrow(0, 17, 2)?, &small)?, 0.0);
    let big = ops::softmax_last_dim(&x)?;
    let small = ops::softmax_last_dim(&x.narrow(0, 250, 3)?)?;
    assert_eq!(max_abs_diff(&big.narrow(0, 250, 3)?, &small)?, 0.0);
    // The weight gradient sums partials in a fixed order: twice the same run, the same bits.
    let wv = Var::from_tensor(&w)?;
    let run = || -> Result<Vec<f32>> {
        let g = loss(&ops::rms_norm(&x, &wv, 1e-5)?, 72)?.backward()?;
        Ok(g.get(wv.as_tensor()).expect("grad").to_vec1::<f32>()?)
    };
    assert_eq!(run()?, run()?);
    Ok(())
}

#[test]
fn linear_frozen_small_batch_kernel_matches_matmul() {
    use candle_core::{Device, Tensor};
    for (m, k, n) in [
        (1usize, 576usize, 1536usize),
        (3, 33, 70),
        (8, 576, 129),
        (2, 33, 70),
        (16, 64, 64),
        (64, 64, 64),
        (65, 64, 64),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let got = tempering_model::ops::linear_frozen(&x, &w).unwrap();
        let d = (want - &got)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        let d = d.to_scalar::<f32>().unwrap();
        assert!(
            d < 1e-3 * (k as f32).sqrt(),
            "m={m} k={k} n={n}: max diff {d}"
        );
    }
}

/// An additive attention mask `[B, T, S]` with the model's masked value: row 0 causal over all `S`
/// keys (the first `S - T` already cached), row 1 left-padded by two slots, with `blind` its first
/// token seeing nothing at all (a padding query), and a hole in the middle of row 0's last token.
fn attention_mask(b: usize, t: usize, s: usize, blind: bool, dt: DType) -> Result<Tensor> {
    const MASKED: f64 = -1e9;
    let past = s - t;
    let mut m = vec![0f64; b * t * s];
    for bi in 0..b {
        for ti in 0..t {
            for si in 0..s {
                let causal = si <= past + ti;
                let padded = bi == 1 && (si < 2 || (blind && ti == 0));
                let hole = bi == 0 && ti == t - 1 && si == 1;
                if !causal || padded || hole {
                    m[(bi * t + ti) * s + si] = MASKED;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, t, s), &Device::Cpu)?.to_dtype(dt)?)
}

#[test]
fn attention_matches_the_composition_and_finite_differences() -> Result<()> {
    // Two key/value heads shared by two query heads each (GQA), 5 new tokens over 7 keys.
    let (b, g, rep, t, s, d) = (2, 2, 2, 5, 7, 8);
    let scale = 1.0 / (d as f64).sqrt();
    for dt in [DType::F32, DType::F64] {
        let q = rand_t(&[b, g, rep * t, d], 30, 1.5, dt)?;
        let k = rand_t(&[b, g, s, d], 31, 1.5, dt)?;
        let v = rand_t(&[b, g, s, d], 32, 1.0, dt)?;
        let mask = attention_mask(b, t, s, true, dt)?;
        let fused = ops::attention(&q, &k, &v, &mask, scale)?;
        let plain = composed::attention(&q, &k, &v, &mask, scale)?;
        let diff = max_abs_diff(&fused, &plain)?;
        assert!(diff < 1e-5, "{dt:?}: attention forward differs by {diff:e}");
        // The gradients of both agree too (the composition's come from candle's autograd).
        let grads = |f: &dyn Fn(&[Tensor]) -> Result<Tensor>| -> Result<Vec<Tensor>> {
            let vars: Vec<Var> = [&q, &k, &v]
                .iter()
                .map(|t| Var::from_tensor(t))
                .collect::<candle_core::Result<_>>()?;
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let store = loss(&f(&ts)?, 5)?.backward()?;
            ts.iter()
                .map(|t| {
                    store.get(t).cloned().ok_or_else(|| {
                        tempering_model::ModelError::Unsupported("no gradient".into())
                    })
                })
                .collect()
        };
        let a = grads(&|t| ops::attention(&t[0], &t[1], &t[2], &mask, scale))?;
        let c = grads(&|t| composed::attention(&t[0], &t[1], &t[2], &mask, scale))?;
        for (i, (a, c)) in a.iter().zip(&c).enumerate() {
            let diff = max_abs_diff(a, c)?;
            assert!(
                diff < 1e-5 * (1.0 + max_abs(c)?),
                "{dt:?}: gradient of input {i} differs by {diff:e}"
            );
        }
    }
    let q = rand_t(&[b, g, rep * t, d], 33, 1.5, DType::F64)?;
    let k = rand_t(&[b, g, s, d], 34, 1.5, DType::F64)?;
    let v = rand_t(&[b, g, s, d], 35, 1.0, DType::F64)?;
    // No blind query here: its scores are all near -1e9, where a step of 1e-5 is below f64's
    // resolution and central differences measure rounding (the comparison above covers it).
    let mask = attention_mask(b, t, s, false, DType::F64)?;
    let err = fd_check(
        &|t| ops::attention(&t[0], &t[1], &t[2], &mask, scale),
        &[q, k, v],
        &[0, 1, 2],
    )?;
    assert!(err < FD_TOL, "attention gradient error {err:e}");
    Ok(())
}

#[test]
fn attention_refuses_shapes_that_do_not_fit() -> Result<()> {
    let q = rand_t(&[1, 2, 6, 4], 40, 1.0, DType::F32)?;
    let k = rand_t(&[1, 2, 5, 4], 41, 1.0, DType::F32)?;
    // 6 query rows are not a whole number of 4-token heads.
    let mask = attention_mask(1, 4, 5, true, DType::F32)?;
    let err = ops::attention(&q, &k, &k, &mask, 0.5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("attention") && err.contains("[1, 4, 5]"),
        "{err}"
    );
    let mask = attention_mask(1, 3, 6, true, DType::F32)?;
    assert!(ops::attention(&q, &k, &k, &mask, 0.5).is_err());
    Ok(())
}

/// `log_softmax(h w^T / temperature)[label]` from the product and the standalone log-probabilities.
fn head_logprobs_composed(h: &Tensor, w: &Tensor, labels: &[u32], temp: f64) -> Result<Tensor> {
    let logits = (h.matmul(&w.t()?)? / temp)?;
    let n = labels.len();
    ops::token_logprobs(
        &logits,
        &Tensor::from_vec(labels.to_vec(), n, &Device::Cpu)?,
    )
}

#[test]
fn head_logprobs_match_the_composition_and_finite_differences() -> Result<()> {
    // 70 rows: more than one block of 64, the second partial.
    let (n, k, v) = (70, 12, 37);
    let labels: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % v) as u32).collect();
    for dt in [DType::F32, DType::F64] {
        for temp in [1.0, 0.7] {
            let h = Var::from_tensor(&rand_t(&[n, k], 50, 2.0, dt)?)?;
            let w = Var::from_tensor(&rand_t(&[v, k], 51, 1.0, dt)?)?;
            let fused = ops::head_logprobs(&h, &w, &labels, temp)?;
            let plain = head_logprobs_composed(&h, &w, &labels, temp)?;
            let diff = max_abs_diff(&fused, &plain)?;
            assert!(diff < 1e-5, "{dt:?} t={temp}: forward differs by {diff:e}");
            let ga = loss(&fused, 8)?.backward()?;
            let gc = loss(&plain, 8)?.backward()?;
            for (name, t) in [("h", h.as_tensor()), ("w", w.as_tensor())] {
                let (a, c) = (ga.get(t).expect("fused grad"), gc.get(t).expect("grad"));
                let diff = max_abs_diff(a, c)?;
                assert!(
                    diff < 1e-5 * (1.0 + max_abs(c)?),
                    "{dt:?} t={temp}: gradient of {name} differs by {diff:e}"
                );
            }
        }
    }
    // A frozen head gets no gradient; the hidden states still do.
    let h = Var::from_tensor(&rand_t(&[5, k], 52, 2.0, DType::F32)?)?;
    let w = rand_t(&[v, k], 53, 1.0, DType::F32)?;
    let grads = ops::head_logprobs(&h, &w, &labels[..5], 1.0)?
        .sum_all()?
        .backward()?;
    assert!(grads.get(&w).is_none() && grads.get(h.as_tensor()).is_some());
    // Finite differences, f64, both inputs.
    let (n, k, v) = (6, 4, 9);
    let h = rand_t(&[n, k], 54, 1.5, DType::F64)?;
    let w = rand_t(&[v, k], 55, 1.5, DType::F64)?;
    let labels = [0u32, 8, 3, 3, 5, 1];
    let err = fd_check(
        &|t| ops::head_logprobs(&t[0], &t[1], &labels, 0.8),
        &[h, w],
        &[0, 1],
    )?;
    assert!(err < FD_TOL, "head_logprobs gradient error {err:e}");
    // Labels outside the vocabulary and a zero temperature are refused, naming the op.
    let h = rand_t(&[2, 4], 56, 1.0, DType::F32)?;
    let w = rand_t(&[3, 4], 57, 1.0, DType::F32)?;
    let err = ops::head_logprobs(&h, &w, &[0, 3], 1.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("head_logprobs") && err.contains("label 3"),
        "{err}"
    );
    assert!(ops::head_logprobs(&h, &w, &[0, 1], 0.0).is_err());
    Ok(())
}
