//! Forward (and forward + backward) time of the fused ops against candle's fused (gradient-less)
//! ops and the differentiable compositions, at SmolLM2-135M-like sizes. Plain timing loop, medians:
//! `cargo bench -p tempering-model --bench ops`.

use candle_core::{Device, Tensor, Var, D};
use std::time::Instant;
use tempering_model::ops::{self, composed};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn median_ms(iters: usize, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    f()?;
    let mut ts = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[ts.len() / 2])
}

fn rand(dims: &[usize], scale: f64) -> Res<Tensor> {
    Ok((Tensor::rand(-1f32, 1f32, dims, &Device::Cpu)? * scale)?)
}

fn row(name: &str, what: &str, ms: f64) {
    println!("{name:<16} {what:<40} {ms:>9.3} ms");
}

/// Forward + backward through `f`, with the input as a Var. The loss is `sum(y * y)`, so the
/// gradient reaching the op is a real contiguous tensor (a plain sum would hand it a broadcast).
fn fwd_bwd(x: &Var, f: &dyn Fn(&Tensor) -> Res<Tensor>) -> Res<()> {
    let y = f(x.as_tensor())?;
    let g = y.sqr()?.sum_all()?.backward()?;
    assert!(g.get(x.as_tensor()).is_some());
    Ok(())
}

fn main() -> Res<()> {
    println!("threads: {}", rayon::current_num_threads());
    let n = 15;

    let x = rand(&[8 * 128, 576], 2.0)?;
    let w = rand(&[576], 1.0)?;
    let name = "rms_norm";
    row(
        name,
        "[1024,576] fused fwd",
        median_ms(n, || {
            ops::rms_norm(&x, &w, 1e-5)?;
            Ok(())
        })?,
    );
    row(
        name,
        "candle_nn::ops::rms_norm fwd (no grad)",
        median_ms(n, || {
            candle_nn::ops::rms_norm(&x, &w, 1e-5)?;
            Ok(())
        })?,
    );
    row(
        name,
        "composed fwd",
        median_ms(n, || {
            composed::rms_norm(&x, &w, 1e-5)?;
            Ok(())
        })?,
    );
    let xv = Var::from_tensor(&x)?;
    row(
        name,
        "baseline: loss + backward of x * 1",
        median_ms(n, || fwd_bwd(&xv, &|t| Ok(t.affine(1.0, 0.0)?)))?,
    );
    row(
        name,
        "fused fwd+bwd",
        median_ms(n, || fwd_bwd(&xv, &|t| Ok(ops::rms_norm(t, &w, 1e-5)?)))?,
    );
    row(
        name,
        "composed fwd+bwd",
        median_ms(n, || {
            fwd_bwd(&xv, &|t| Ok(composed::rms_norm(t, &w, 1e-5)?))
        })?,
    );

    let x = rand(&[8, 9, 128, 128], 5.0)?;
    let name = "softmax";
    row(
        name,
        "[8,9,128,128] fused fwd",
        median_ms(n, || {
            ops::softmax_last_dim(&x)?;
            Ok(())
        })?,
    );
    row(
        name,
        "candle_nn softmax_last_dim (no grad)",
        median_ms(n, || {
            candle_nn::ops::softmax_last_dim(&x)?;
            Ok(())
        })?,
    );
    row(
        name,
        "composed (candle_nn::ops::softmax) fwd",
        median_ms(n, || {
            composed::softmax_last_dim(&x)?;
            Ok(())
        })?,
    );
    let xv = Var::from_tensor(&x)?;
    row(
        name,
        "fused fwd+bwd",
        median_ms(n, || fwd_bwd(&xv, &|t| Ok(ops::softmax_last_dim(t)?)))?,
    );
    row(
        name,
        "composed fwd+bwd",
        median_ms(n, || fwd_bwd(&xv, &|t| Ok(composed::softmax_last_dim(t)?)))?,
    );

    let x = rand(&[8, 9, 128, 64], 1.0)?;
    let ang = rand(&[8, 128, 32], 3.0)?;
    let (c, s) = (ang.cos()?, ang.sin()?);
    let (c1, s1) = (c.get(0)?, s.get(0)?);
    let name = "rope";
    row(
        name,
        "[8,9,128,64] fused fwd, per-row cos",
        median_ms(n, || {
            ops::rope(&x, &c, &s)?;
            Ok(())
        })?,
    );
    row(
        name,
        "fused fwd, shared [T,D/2] cos",
        median_ms(n, || {
            ops::rope(&x, &c1, &s1)?;
            Ok(())
        })?,
    );
    row(
        name,
        "candle_nn rotary_emb::rope (no grad)",
        median_ms(n, || {
            candle_nn::rotary_emb::rope(&x, &c1, &s1)?;
            Ok(())
        })?,
    );
    row(
        name,
        "composed fwd",
        median_ms(n, || {
            composed::rope(&x, &c, &s)?;
            Ok(())
        })?,
    );
    let xv = Var::from_tensor(&x)?;
    row(
        name,
        "fused fwd+bwd",
        median_ms(n, || fwd_bwd(&xv, &|t| Ok(ops::rope(t, &c, &s)?)))?,
    );
    row(
        name,
        "composed fwd+bwd",
        median_ms(n, || fwd_bwd(&xv, &|t| Ok(composed::rope(t, &c, &s)?)))?,
    );

    let (nt, v) = (1024, 49152);
    let logits = rand(&[nt, v], 10.0)?;
    let tg: Vec<u32> = (0..nt as u32).map(|i| (i * 7919) % v as u32).collect();
    let targets = Tensor::new(tg.as_slice(), &Device::Cpu)?;
    let name = "token_logprobs";
    let m = 5;
    row(
        name,
        "[1024,49152] fused fwd",
        median_ms(m, || {
            ops::token_logprobs(&logits, &targets)?;
            Ok(())
        })?,
    );
    row(
        name,
        "candle_nn log_softmax + gather fwd",
        median_ms(m, || {
            candle_nn::ops::log_softmax(&logits, D::Minus1)?.gather(&targets.unsqueeze(1)?, 1)?;
            Ok(())
        })?,
    );
    row(
        name,
        "fused log_softmax_last_dim + gather fwd",
        median_ms(m, || {
            ops::log_softmax_last_dim(&logits)?.gather(&targets.unsqueeze(1)?, 1)?;
            Ok(())
        })?,
    );
    let lv = Var::from_tensor(&logits)?;
    row(
        name,
        "fused fwd+bwd",
        median_ms(m, || {
            fwd_bwd(&lv, &|t| Ok(ops::token_logprobs(t, &targets)?))
        })?,
    );
    row(
        name,
        "composed fwd+bwd",
        median_ms(m, || {
            fwd_bwd(&lv, &|t| Ok(composed::token_logprobs(t, &targets)?))
        })?,
    );

    let x = rand(&[1024, 576], 1.0)?;
    let w = rand(&[1536, 576], 0.1)?;
    let name = "linear_frozen";
    row(
        name,
        "[1024,576]x[1536,576]^T fused fwd",
        median_ms(n, || {
            ops::linear_frozen(&x, &w)?;
            Ok(())
        })?,
    );
    row(
        name,
        "candle x.matmul(w.t()) fwd",
        median_ms(n, || {
            x.matmul(&w.t()?)?;
            Ok(())
        })?,
    );
    // Measured again after candle's: the first timing after the 200 MB token_logprobs buffers
    // pays for the allocator's page faults.
    row(
        name,
        "fused fwd, again",
        median_ms(n, || {
            ops::linear_frozen(&x, &w)?;
            Ok(())
        })?,
    );
    let x3 = x.reshape((8, 128, 576))?;
    row(
        name,
        "[8,128,576] fused fwd",
        median_ms(n, || {
            ops::linear_frozen(&x3, &w)?;
            Ok(())
        })?,
    );
    row(
        name,
        "[8,128,576] candle broadcast_matmul fwd",
        median_ms(n, || {
            x3.broadcast_matmul(&w.t()?)?;
            Ok(())
        })?,
    );
    let xv = Var::from_tensor(&x)?;
    row(
        name,
        "fused fwd+bwd (x only)",
        median_ms(n, || fwd_bwd(&xv, &|t| Ok(ops::linear_frozen(t, &w)?)))?,
    );
    row(
        name,
        "matmul fwd+bwd (computes w grad)",
        median_ms(n, || fwd_bwd(&xv, &|t| Ok(t.matmul(&w.t()?)?)))?,
    );

    let g = rand(&[1024, 1536], 4.0)?;
    let u = rand(&[1024, 1536], 1.0)?;
    let name = "silu_mul";
    row(
        name,
        "[1024,1536] fused fwd",
        median_ms(n, || {
            ops::silu_mul(&g, &u)?;
            Ok(())
        })?,
    );
    row(
        name,
        "candle silu(gate) * up fwd",
        median_ms(n, || {
            composed::silu_mul(&g, &u)?;
            Ok(())
        })?,
    );
    let gv = Var::from_tensor(&g)?;
    row(
        name,
        "fused fwd+bwd",
        median_ms(n, || fwd_bwd(&gv, &|t| Ok(ops::silu_mul(t, &u)?)))?,
    );
    row(
        name,
        "composed fwd+bwd",
        median_ms(n, || fwd_bwd(&gv, &|t| Ok(composed::silu_mul(t, &u)?)))?,
    );
    Ok(())
}
