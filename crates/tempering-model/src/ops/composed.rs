//! The same ops as compositions of differentiable candle ops: the path taken off the CPU (CUDA,
//! Metal), and the naive references the fused ops are tested and benchmarked against. Slow but
//! plainly correct; every op here has a candle backward.

use crate::Result;
use candle_core::{DType, Tensor, D};

/// `x / sqrt(mean(x^2) + eps) * weight`, computed in the input dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let y = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    Ok(y.broadcast_mul(weight)?)
}

/// HF rotate_half RoPE; `cos`/`sin` `[B, T, D/2]` or `[T, D/2]`, `x` `[B, H, T, D]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    // [B, T, D/2] -> [B, 1, T, D/2] so it broadcasts over heads; [T, D/2] broadcasts as is.
    let (cos, sin) = if cos.rank() == 3 {
        (cos.unsqueeze(1)?, sin.unsqueeze(1)?)
    } else {
        (cos.clone(), sin.clone())
    };
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Ok(Tensor::cat(&[a, b], D::Minus1)?)
}

/// Softmax over the last dimension (max-shifted, so stable).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

/// `softmax(q k^T * scale + mask) v` with `q` `[B, G, R, D]`, `k`, `v` `[B, G, S, D]` and `mask`
/// `[B, T, S]` added to the scores of every head's token `r % T` (see [`crate::ops::attention`]).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, g, r, _) = q.dims4()?;
    let (_, t, s) = mask.dims3()?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = scores
        .reshape((b, g, r / t, t, s))?
        .broadcast_add(&mask.reshape((b, 1, 1, t, s))?.to_dtype(q.dtype())?)?;
    let probs = softmax_last_dim(&scores)?;
    Ok(probs.reshape((b, g, r, s))?.matmul(v)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// `log_softmax(logits)` gathered at `targets`, in f32; materialises the `[N, V]` log-softmax.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = match logits.dtype() {
        DType::F32 | DType::F64 => logits.clone(),
        _ => logits.to_dtype(DType::F32)?,
    };
    let lsm = log_softmax_last_dim(&logits)?;
    let idx = targets.to_dtype(DType::U32)?.unsqueeze(1)?;
    Ok(lsm.gather(&idx, 1)?.squeeze(1)?)
}

/// `x @ w.T`. Off the CPU the fused op still runs (it is candle's matmul on any device); this is
/// the reference, and it does compute a gradient for `w` if `w` is a variable.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_matmul(&w.t()?)?)
}

/// `silu(gate) * up`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.silu()? * up)?)
}
