//! Fused, differentiable ops the Llama-family transformer is built from: RMSNorm, RoPE, softmax and
//! log-softmax over the last dimension, per-token log-probabilities, SwiGLU, and the product with a
//! frozen weight.
//!
//! candle's own fused versions of these drop gradients silently, and its matmul computes gradients for
//! frozen weights too; these are candle `CustomOp`s with fast row-parallel CPU loops (f32, and f64 for
//! finite-difference tests) and hand-written backward passes. On other devices they fall back to the
//! equivalent compositions of differentiable candle ops in [`composed`]; on the CPU, f16 and bf16 run
//! through the f32 loops. This module knows tensors only: nothing of layers, models or training.

mod attention;
pub mod blas;
pub mod few_rows;
mod head;
pub(crate) mod kernels;
mod linear;
mod norm;
mod rope;
pub mod simd;
mod softmax;
mod swiglu;

// One row or element of the fused ops' forward, for the lean decode path.
pub(crate) use norm::rms_norm_row;
pub(crate) use softmax::softmax_row;
pub(crate) use swiglu::silu_mul_one;

pub mod composed;

use crate::{ModelError, Result};
use candle_core::{DType, Tensor};

/// Where an op runs: its fused CPU loops, the same loops after a cast to f32, or the composition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Fused,
    CastF32,
    Composed,
}

fn path(ts: &[&Tensor]) -> Path {
    if !ts.iter().all(|t| t.device().is_cpu()) {
        return Path::Composed;
    }
    match ts.first().map(|t| t.dtype()) {
        Some(DType::F32 | DType::F64) => Path::Fused,
        Some(DType::F16 | DType::BF16) => Path::CastF32,
        _ => Path::Composed,
    }
}

fn unsupported(op: &str, msg: impl std::fmt::Display) -> ModelError {
    ModelError::Unsupported(format!("{op}: {msg}"))
}

fn same_dtype(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(unsupported(
            op,
            format!("dtypes differ: {:?} and {:?}", a.dtype(), b.dtype()),
        ));
    }
    Ok(())
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`, with gradients to both
/// `x` and `weight`. `weight` has the size of `x`'s last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    let d = x.dims().last().copied().unwrap_or(0);
    if d == 0 {
        return Err(unsupported(
            OP,
            format!("x {:?} has no last dimension to normalise", x.dims()),
        ));
    }
    if weight.dims() != [d] {
        return Err(unsupported(
            OP,
            format!("weight {:?} does not match x {:?}", weight.dims(), x.dims()),
        ));
    }
    same_dtype(OP, x, weight)?;
    match path(&[x, weight]) {
        Path::Fused => norm::rms_norm(&x.contiguous()?, &weight.contiguous()?, eps),
        Path::CastF32 => {
            let dt = x.dtype();
            let y = norm::rms_norm(&x.to_dtype(DType::F32)?, &weight.to_dtype(DType::F32)?, eps)?;
            Ok(y.to_dtype(dt)?)
        }
        Path::Composed => composed::rms_norm(x, weight, eps),
    }
}

/// Rotary position embedding in the HF "rotate_half" (non-interleaved) convention. `x` is
/// `[B, H, T, D]`; `cos` and `sin` are `[B, T, D/2]` (positions per row, for padded batches) or
/// `[T, D/2]` (shared by the batch). With `x1, x2` the halves of the last dimension the result is
/// `cat(x1*cos - x2*sin, x2*cos + x1*sin)`. Gradient flows to `x` only: cos and sin are constants.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    const OP: &str = "rope";
    let (b, _h, t, d) = x
        .dims4()
        .map_err(|_| unsupported(OP, format!("x must be [B, H, T, D], got {:?}", x.dims())))?;
    if d % 2 != 0 {
        return Err(unsupported(OP, format!("head dim {d} is odd")));
    }
    let ok = cos.dims() == [b, t, d / 2] || cos.dims() == [t, d / 2];
    if !ok || sin.dims() != cos.dims() {
        return Err(unsupported(
            OP,
            format!(
                "cos {:?} and sin {:?} must both be [B, T, D/2] or [T, D/2] for x {:?}",
                cos.dims(),
                sin.dims(),
                x.dims()
            ),
        ));
    }
    same_dtype(OP, x, cos)?;
    same_dtype(OP, x, sin)?;
    match path(&[x, cos, sin]) {
        Path::Fused => rope::rope(&x.contiguous()?, &cos.contiguous()?, &sin.contiguous()?),
        Path::CastF32 => {
            let dt = x.dtype();
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            Ok(rope::rope(&f(x)?, &f(cos)?, &f(sin)?)?.to_dtype(dt)?)
        }
        Path::Composed => composed::rope(x, cos, sin),
    }
}

/// Scaled dot-product attention, `softmax(q k^T * scale + mask) v`, differentiable in `q`, `k` and
/// `v`: `q` `[B, G, R, D]` holds the query heads grouped by the key/value head they share (`R =
/// rep x T` rows: the `rep` heads of group `g`, T tokens each), `k` and `v` are `[B, G, S, D]`, `mask`
/// `[B, T, S]` is added to every head's scores of token `t` (0 where visible, the model's large
/// negative value where not). On the CPU in f32/f64 it is one fused op that never holds a `[B, H, T,
/// S]` tensor; elsewhere the composition of candle ops.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    const OP: &str = "attention";
    let (b, g, r, d) = q
        .dims4()
        .map_err(|_| unsupported(OP, format!("q must be [B, G, R, D], got {:?}", q.dims())))?;
    let (kb, kg, s, kd) = k
        .dims4()
        .map_err(|_| unsupported(OP, format!("k must be [B, G, S, D], got {:?}", k.dims())))?;
    let t = mask.dims3().map(|(_, t, _)| t).unwrap_or(0);
    if (kb, kg, kd) != (b, g, d)
        || v.dims() != k.dims()
        || mask.dims() != [b, t, s]
        || t == 0
        || r % t != 0
    {
        return Err(unsupported(
            OP,
            format!(
                "q {:?}, k {:?}, v {:?} and mask {:?} do not fit [B, G, R, D], [B, G, S, D] \
                 twice and [B, T, S] with R a multiple of T",
                q.dims(),
                k.dims(),
                v.dims(),
                mask.dims()
            ),
        ));
    }
    same_dtype(OP, q, k)?;
    same_dtype(OP, q, v)?;
    match path(&[q, k, v]) {
        Path::Fused => attention::attention(
            &q.contiguous()?,
            &k.contiguous()?,
            &v.contiguous()?,
            mask,
            scale,
        ),
        Path::CastF32 => {
            let dt = q.dtype();
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            Ok(attention::attention(&f(q)?, &f(k)?, &f(v)?, mask, scale)?.to_dtype(dt)?)
        }
        Path::Composed => composed::attention(q, k, v, mask, scale),
    }
}

/// The LM head and each row's label log-probability, `log_softmax(h w^T / temperature)[label]`:
/// `h` `[N, H]`, `w` `[V, H]`, one label per row, result `[N]`, with gradients to `h` and (where it
/// is tracked) `w`. On the CPU (f32 with OpenBLAS, or f64) one fused op that holds a block of rows'
/// logits at a time, in the forward and the backward; elsewhere the product and
/// [`token_logprobs`].
pub fn head_logprobs(h: &Tensor, w: &Tensor, labels: &[u32], temperature: f64) -> Result<Tensor> {
    const OP: &str = "head_logprobs";
    let (n, k) = h
        .dims2()
        .map_err(|_| unsupported(OP, format!("h must be [N, H], got {:?}", h.dims())))?;
    let (v, k2) = w
        .dims2()
        .map_err(|_| unsupported(OP, format!("w must be [V, H], got {:?}", w.dims())))?;
    if k != k2 || n != labels.len() {
        return Err(unsupported(
            OP,
            format!(
                "h {:?}, w {:?} and {} labels do not fit [N, H], [V, H] and N labels",
                h.dims(),
                w.dims(),
                labels.len()
            ),
        ));
    }
    if let Some(&y) = labels.iter().find(|&&y| y as usize >= v) {
        return Err(unsupported(
            OP,
            format!("label {y} is outside the vocabulary of {v}"),
        ));
    }
    if temperature.is_nan() || temperature <= 0.0 {
        return Err(unsupported(
            OP,
            format!("temperature {temperature} (expected above 0)"),
        ));
    }
    same_dtype(OP, h, w)?;
    if path(&[h, w]) == Path::Fused && head::runs(h.dtype()) {
        return head::head_logprobs(&h.contiguous()?, &w.contiguous()?, labels, temperature);
    }
    let logits = if w.is_variable() {
        linear(h, w)?
    } else {
        linear_frozen(h, w)?
    }
    .to_dtype(DType::F32)?;
    let logits = if temperature != 1.0 {
        (logits / temperature)?
    } else {
        logits
    };
    let n = labels.len();
    token_logprobs(&logits, &Tensor::from_vec(labels.to_vec(), n, h.device())?)
}

/// Numerically stable softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match path(&[x]) {
        Path::Fused => softmax::softmax(&x.contiguous()?),
        Path::CastF32 => Ok(softmax::softmax(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?),
        Path::Composed => composed::softmax_last_dim(x),
    }
}

/// Log-softmax over the last dimension, differentiable.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match path(&[x]) {
        Path::Fused => softmax::log_softmax(&x.contiguous()?),
        Path::CastF32 => Ok(softmax::log_softmax(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?),
        Path::Composed => composed::log_softmax_last_dim(x),
    }
}

/// `log p(target)` per row: `logits` `[N, V]`, `targets` `[N]` (u32 or i64) give `[N]`. The fused
/// path never builds the `[N, V]` log-softmax: one pass per row finds the max, the log-sum-exp and
/// the target's logit. Gradient flows to `logits`. Half-precision logits are read as f32 and the
/// result is f32 (log-probabilities are kept in f32, see DESIGN.md); a target outside the
/// vocabulary is an error.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    const OP: &str = "token_logprobs";
    let (n, v) = logits.dims2().map_err(|_| {
        unsupported(
            OP,
            format!("logits must be [N, V], got {:?}", logits.dims()),
        )
    })?;
    if v == 0 {
        return Err(unsupported(OP, "the vocabulary is empty"));
    }
    if targets.dims() != [n] {
        return Err(unsupported(
            OP,
            format!("targets {:?} must be [{n}]", targets.dims()),
        ));
    }
    if !matches!(targets.dtype(), DType::U32 | DType::I64) {
        return Err(unsupported(
            OP,
            format!("targets must be u32 or i64, got {:?}", targets.dtype()),
        ));
    }
    let on_cpu = logits.device().is_cpu() && targets.device().is_cpu();
    match (on_cpu, logits.dtype()) {
        (true, DType::F32 | DType::F64) => {
            softmax::token_logprobs(&logits.contiguous()?, &targets.contiguous()?)
        }
        (true, DType::F16 | DType::BF16) => {
            softmax::token_logprobs(&logits.to_dtype(DType::F32)?, &targets.contiguous()?)
        }
        _ => composed::token_logprobs(logits, targets),
    }
}

/// `x @ w.T` for a frozen weight `w` `[N, K]` and `x` `[..., K]`, giving `[..., N]`. The backward
/// returns the gradient of `x` only (`g @ w`): no gradient for `w` is computed or stored, even if
/// `w` is a `Var`. On the CPU in f32 it runs through OpenBLAS where loaded ([`blas`]), elsewhere
/// through candle's own matmul kernel. On the CPU a bf16 `w` may meet an f32 `x` (inference
/// weights at half the bytes, see `Transformer::store_linear_weights_bf16`): the result is f32.
pub fn linear_frozen(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear_with("linear_frozen", x, w, false)
}

/// `x @ w.T` for a weight `w` `[N, K]` and `x` `[..., K]`, giving `[..., N]`, with gradients to
/// both. On the CPU in f32 with OpenBLAS loaded and a weight at least 192 wide on both sides, one op
/// whose backward computes `dY @ W` and `dY^T @ X` (straight into `[N, K]`) through OpenBLAS;
/// otherwise candle's matmul and its backward.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear_with("linear", x, w, true)
}

fn linear_with(op: &str, x: &Tensor, w: &Tensor, weight_grad: bool) -> Result<Tensor> {
    let (n, k) = w
        .dims2()
        .map_err(|_| unsupported(op, format!("weight must be [N, K], got {:?}", w.dims())))?;
    let dims = x.dims();
    if dims.last() != Some(&k) {
        return Err(unsupported(
            op,
            format!(
                "x {:?} does not end in K = {k} (weight {:?})",
                dims,
                w.dims()
            ),
        ));
    }
    // Inference weights stored in bf16 meet f32 activations (frozen only: nothing trains them).
    let bf16_weight = !weight_grad
        && x.dtype() == DType::F32
        && w.dtype() == DType::BF16
        && x.device().is_cpu()
        && w.device().is_cpu();
    if !bf16_weight {
        same_dtype(op, x, w)?;
    }
    let m: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((m, k))?;
    let y = if !weight_grad {
        linear::linear_frozen(&x2, w)?
    } else if blas::available()
        && w.device().is_cpu()
        && w.dtype() == DType::F32
        && linear::blas_width(w)
    {
        linear::linear_trainable(&x2, w)?
    } else {
        // candle's matmul and its backward, exactly as without OpenBLAS.
        x2.matmul(&w.t()?)?
    };
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    Ok(y.reshape(out_dims)?)
}

/// `x @ w.T` for a frozen Q8_0 weight (inference only, see `Transformer::store_inference_weights`):
/// `q` `[N, K]` u8 storage of the signed bytes, `scales` `[N, K / 32]` f32 (one per block of 32
/// elements of a row), `x` `[..., K]` f32 on the CPU, giving `[..., N]` f32. Decode's few rows
/// run through the AVX-512 kernel (each weight vector widened and scaled in registers), more rows
/// through the dequantized weight. The backward returns the gradient of `x` only.
pub fn linear_q8(x: &Tensor, q: &Tensor, scales: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_q8";
    let (n, k) = q
        .dims2()
        .map_err(|_| unsupported(OP, format!("weight must be [N, K], got {:?}", q.dims())))?;
    let blocks = k / few_rows::Q8_BLOCK;
    if !k.is_multiple_of(few_rows::Q8_BLOCK) || scales.dims() != [n, blocks] {
        return Err(unsupported(
            OP,
            format!(
                "weight {:?} needs K a multiple of {} and scales [{n}, {blocks}], got {:?}",
                q.dims(),
                few_rows::Q8_BLOCK,
                scales.dims()
            ),
        ));
    }
    let dims = x.dims();
    if dims.last() != Some(&k) {
        return Err(unsupported(
            OP,
            format!("x {dims:?} does not end in K = {k}"),
        ));
    }
    let on_cpu = [x, q, scales].iter().all(|t| t.device().is_cpu());
    if !on_cpu || x.dtype() != DType::F32 || q.dtype() != DType::U8 || scales.dtype() != DType::F32
    {
        return Err(unsupported(
            OP,
            "expected f32 x, a u8 weight and f32 scales on the CPU",
        ));
    }
    let m: usize = dims[..dims.len() - 1].iter().product();
    let y = linear::linear_q8(&x.reshape((m, k))?.contiguous()?, q, scales)?;
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    Ok(y.reshape(out_dims)?)
}

/// SwiGLU's gate: `silu(gate) * up`, fused, with gradients to both. Shapes must be equal.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    const OP: &str = "silu_mul";
    if gate.dims() != up.dims() {
        return Err(unsupported(
            OP,
            format!("gate {:?} and up {:?} differ", gate.dims(), up.dims()),
        ));
    }
    same_dtype(OP, gate, up)?;
    match path(&[gate, up]) {
        Path::Fused => swiglu::silu_mul(&gate.contiguous()?, &up.contiguous()?),
        Path::CastF32 => {
            let dt = gate.dtype();
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            Ok(swiglu::silu_mul(&f(gate)?, &f(up)?)?.to_dtype(dt)?)
        }
        Path::Composed => composed::silu_mul(gate, up),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn path_follows_device_and_dtype() -> Result<()> {
        let f32t = Tensor::zeros(3, DType::F32, &Device::Cpu)?;
        let bf = Tensor::zeros(3, DType::BF16, &Device::Cpu)?;
        let u = Tensor::zeros(3, DType::U32, &Device::Cpu)?;
        assert_eq!(path(&[&f32t]), Path::Fused);
        assert_eq!(path(&[&bf]), Path::CastF32);
        assert_eq!(path(&[&u]), Path::Composed);
        Ok(())
    }

    #[test]
    fn half_precision_goes_through_f32_loops() -> Result<()> {
        let x = Tensor::new(&[[1.0f32, -2.0, 0.5, 3.0]], &Device::Cpu)?;
        let w = Tensor::new(&[1.0f32, 0.5, 2.0, -1.0], &Device::Cpu)?;
        let want = rms_norm(&x, &w, 1e-6)?;
        let got = rms_norm(&x.to_dtype(DType::BF16)?, &w.to_dtype(DType::BF16)?, 1e-6)?;
        assert_eq!(got.dtype(), DType::BF16);
        let diff = (got.to_dtype(DType::F32)? - want)?.abs()?.max_all()?;
        assert!(diff.to_scalar::<f32>()? < 2e-2);
        let lp = token_logprobs(
            &x.to_dtype(DType::F16)?,
            &Tensor::new(&[2u32], &Device::Cpu)?,
        )?;
        assert_eq!(lp.dtype(), DType::F32);
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &dev)?;
        assert!(rms_norm(&x, &Tensor::zeros(4, DType::F32, &dev)?, 1e-5).is_err());
        assert!(rope(&x, &x, &x).is_err());
        let x4 = Tensor::zeros((1, 2, 3, 5), DType::F32, &dev)?;
        let cs = Tensor::zeros((3, 2), DType::F32, &dev)?;
        assert!(rope(&x4, &cs, &cs).is_err());
        assert!(token_logprobs(&x, &Tensor::new(&[0u32], &dev)?).is_err());
        assert!(token_logprobs(&x, &Tensor::new(&[0u32, 3], &dev)?).is_err());
        assert!(linear_frozen(&x, &Tensor::zeros((4, 2), DType::F32, &dev)?).is_err());
        assert!(silu_mul(&x, &Tensor::zeros((3, 2), DType::F32, &dev)?).is_err());
        Ok(())
    }
}
