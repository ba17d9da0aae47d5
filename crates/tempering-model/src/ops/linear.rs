//! The linear layer's product `x @ w.T`, as a candle op: with a frozen weight (the backward yields
//! the input's gradient only) or a trainable one (both gradients). On the CPU in f32 the forward and
//! both backward products (`dY @ W`, and `dY^T @ X` written straight into `[N, K]`) of weights at
//! least 192 wide run through the BLAS ([`super::blas`]: oneDNN, OpenBLAS) where loaded, never materialising a
//! transpose; decode's few rows (up to `few_rows::MAX_ROWS`, 64) of such weights through the
//! AVX-512 kernel of [`super::few_rows`] where the CPU has it; elsewhere (other devices, dtypes,
//! narrow weights, no BLAS) through candle's own matmul kernel on the storage.

use super::blas::{self, Product};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, MetalStorage, Shape, Storage,
    Tensor,
};

/// `x` `[M, K]` (contiguous rows), `w` `[N, K]` gives `[M, N]`; no gradient for `w`.
pub(super) fn linear_frozen(x: &Tensor, w: &Tensor) -> crate::Result<Tensor> {
    Ok(x.apply_op2(w, Linear { weight_grad: false })?)
}

/// `x` `[M, K]` (contiguous rows), `w` `[N, K]` gives `[M, N]`, with gradients to both.
pub(super) fn linear_trainable(x: &Tensor, w: &Tensor) -> crate::Result<Tensor> {
    Ok(x.apply_op2(w, Linear { weight_grad: true })?)
}

struct Linear {
    weight_grad: bool,
}

/// `x` `[M, K]` (contiguous rows) by a Q8_0 weight: `q` `[N, K]` (u8 storage holding the signed
/// bytes) and `scales` `[N, K / 32]` give `[M, N]`; the backward yields the input's gradient only.
pub(super) fn linear_q8(x: &Tensor, q: &Tensor, scales: &Tensor) -> crate::Result<Tensor> {
    Ok(x.apply_op3(q, scales, LinearQ8)?)
}

struct LinearQ8;

/// The f32 weight `[N, K]` a Q8_0 pair stands for.
fn dequantize_q8_tensor(q: &Tensor, scales: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = q.dims2()?;
    let qv = q.flatten_all()?.to_vec1::<u8>()?;
    let sv = scales.flatten_all()?.to_vec1::<f32>()?;
    let w = super::few_rows::dequantize_q8(super::few_rows::as_i8(&qv), &sv);
    Tensor::from_vec(w, (n, k), q.device())
}

impl CustomOp3 for LinearQ8 {
    fn name(&self) -> &'static str {
        "tempering-linear-q8"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        qs: &CpuStorage,
        ql: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::U8(q), CpuStorage::F32(sc)) = (xs, qs, ss) else {
            candle_core::bail!("linear_q8: expected f32 x, u8 weight and f32 scales");
        };
        let (m, k) = xl.shape().dims2()?;
        let (n, k2) = ql.shape().dims2()?;
        let (Some((xa, xb)), Some((qa, qb)), Some((sa, sb))) = (
            xl.contiguous_offsets(),
            ql.contiguous_offsets(),
            sl.contiguous_offsets(),
        ) else {
            candle_core::bail!("linear_q8: the operands must be contiguous");
        };
        if k != k2 || sb - sa != n * (k / super::few_rows::Q8_BLOCK) {
            candle_core::bail!(
                "linear_q8: x [{m}, {k}], weight [{n}, {k2}], {} scales",
                sb - sa
            );
        }
        let (q, sc) = (super::few_rows::as_i8(&q[qa..qb]), &sc[sa..sb]);
        if m <= super::few_rows::MAX_ROWS {
            if let Some(y) = super::few_rows::matmul_xwt_q8(&x[xa..xb], q, sc, m, n, k) {
                return Ok((CpuStorage::F32(y), Shape::from((m, n))));
            }
        }
        // More rows (prefill), or no AVX-512: the dequantized weight through the f32 paths.
        let wide = CpuStorage::F32(super::few_rows::dequantize_q8(q, sc));
        Linear { weight_grad: false }.cpu_fwd(xs, xl, &wide, &Layout::contiguous((n, k)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        q: &Tensor,
        scales: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // dX = dY @ W; nothing for the quantized weight.
        let w = dequantize_q8_tensor(q, scales)?;
        Ok((Some(g.contiguous()?.matmul(&w)?), None, None))
    }
}

/// The BLAS runs a layer's products only where both sides of its weight are at least this wide
/// (SmolLM2's narrowest is 192). Below it (the tiny model's 128-wide layers, LoRA's rank-8 factors)
/// candle's kernels measured faster with OpenBLAS (a tiny-model GRPO update 0.53-0.55 s against
/// 0.57-0.81 s); with oneDNN the tiny model's update was 8% faster, but its different rounding moved
/// the tiny recipe's outcome (greedy accuracy 43.5% -> 25.5% after `train-tiny`'s 150 steps) and
/// the tests built on it, so those layers keep candle's kernels; LoRA's factors gained nothing.
const BLAS_MIN_WIDTH: usize = 192;

pub(super) fn blas_width(w: &Tensor) -> bool {
    w.dims2().is_ok_and(|(n, k)| n.min(k) >= BLAS_MIN_WIDTH)
}

/// `op(a) @ op(b)` for 2-D CPU f32 tensors through the BLAS; `None` (the caller uses candle) when
/// none is loaded or a tensor is elsewhere, another dtype, or not contiguous.
fn blas_matmul(a: &Tensor, trans_a: bool, b: &Tensor, trans_b: bool) -> Option<Tensor> {
    if !blas::available() || a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        return None;
    }
    let (ar, ac) = a.dims2().ok()?;
    let (br, bc) = b.dims2().ok()?;
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        return None;
    }
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(va)), Storage::Cpu(CpuStorage::F32(vb))) = (&*sa, &*sb)
    else {
        return None;
    };
    let (a0, a1) = la.contiguous_offsets()?;
    let (b0, b1) = lb.contiguous_offsets()?;
    let p = Product {
        trans_a,
        trans_b,
        m,
        n,
        k,
    };
    let c = blas::sgemm_new(p, &va[a0..a1], &vb[b0..b1])?;
    Tensor::from_vec(c, (m, n), a.device()).ok()
}

/// Up to this many rows (one or two sequences decoding), a kernel that streams each weight row once
/// is fastest: it is bound by memory bandwidth, not by packing.
const DOT_M: usize = 2;
/// Up to this many rows (batched decode), gemm on the swapped product packs the few rows of `x`
/// rather than the whole weight, which `x W^T` would repack on every call (measured 2.5x faster at 8).
const SWAP_M: usize = 64;

/// `x [m, k] @ w[n, k]^T` for small `m`: each weight row is read once and dotted with every row of
/// `x`; parallel over blocks of weight rows, each output summed in a fixed order (deterministic
/// whatever the thread count).
fn small_m_matmul(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const BLOCK: usize = 64;
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(BLOCK * m)
        .enumerate()
        .for_each(|(bi, chunk)| {
            let n0 = bi * BLOCK;
            for (j, row_out) in chunk.chunks_mut(m).enumerate() {
                let wr = &w[(n0 + j) * k..(n0 + j + 1) * k];
                for (i, o) in row_out.iter_mut().enumerate() {
                    *o = dot(&x[i * k..(i + 1) * k], wr);
                }
            }
        });
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = out_t[j * m + i];
        }
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let len = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // Four independent accumulators hide the FMA latency.
    while i + 32 <= len {
        for (j, acc) in acc.iter_mut().enumerate() {
            let va = _mm256_loadu_ps(pa.add(i + 8 * j));
            let vb = _mm256_loadu_ps(pb.add(i + 8 * j));
            *acc = _mm256_fmadd_ps(va, vb, *acc);
        }
        i += 32;
    }
    while i + 8 <= len {
        let va = _mm256_loadu_ps(pa.add(i));
        let vb = _mm256_loadu_ps(pb.add(i));
        acc[0] = _mm256_fmadd_ps(va, vb, acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    let mut s = lanes.iter().sum::<f32>();
    while i < len {
        s = a[i].mul_add(b[i], s);
        i += 1;
    }
    s
}

/// 16 independent lanes so the compiler vectorises (and fuses, with FMA enabled).
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let chunks = len / 16;
    let mut acc = [0f32; 16];
    for c in 0..chunks {
        let (pa, pb) = (&a[c * 16..c * 16 + 16], &b[c * 16..c * 16 + 16]);
        for l in 0..16 {
            acc[l] = pa[l].mul_add(pb[l], acc[l]);
        }
    }
    let mut s = 0f32;
    for v in acc {
        s += v;
    }
    for i in chunks * 16..len {
        s = a[i].mul_add(b[i], s);
    }
    s
}

/// A bf16 weight's elements, in its layout's order, as f32 (exact: bf16 widens without rounding).
fn widen_bf16(w: &[half::bf16], wl: &Layout) -> candle_core::Result<Vec<f32>> {
    use half::slice::HalfFloatSliceExt;
    if let Some((a, b)) = wl.contiguous_offsets() {
        let mut out = vec![0f32; b - a];
        w[a..b].convert_to_f32_slice(&mut out);
        return Ok(out);
    }
    candle_core::bail!("linear: a bf16 weight must be contiguous")
}

/// One gemm of `[M, K]` by the transposed view of `[N, K]`, exactly as `Tensor::matmul` sets it up.
fn fwd<S: BackendStorage>(
    xs: &S,
    xl: &Layout,
    ws: &S,
    wl: &Layout,
) -> candle_core::Result<(S, Shape)> {
    let (m, k) = xl.shape().dims2()?;
    let (n, k2) = wl.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("linear_frozen: x is [{m}, {k}] but the weight is [{n}, {k2}]");
    }
    let wt = wl.transpose(0, 1)?;
    let out = xs.matmul(ws, (1, m, n, k), xl, &wt)?;
    Ok((out, Shape::from((m, n))))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        if self.weight_grad {
            "tempering-linear"
        } else {
            "tempering-linear-frozen"
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if let (CpuStorage::F32(x), CpuStorage::BF16(w)) = (xs, ws) {
            // Inference weights stored in bf16 beside f32 activations: decode's few rows through
            // the kernel that widens the weight in registers (half the bytes streamed); more rows
            // (prefill) widen the weight once and take the f32 paths below.
            let (m, k) = xl.shape().dims2()?;
            let (n, _) = wl.shape().dims2()?;
            if let (Some((xa, xb)), Some((wa, wb))) =
                (xl.contiguous_offsets(), wl.contiguous_offsets())
            {
                use half::slice::HalfFloatSliceExt;
                if m <= super::few_rows::MAX_ROWS {
                    let bits: &[u16] = w[wa..wb].reinterpret_cast();
                    if let Some(y) = super::few_rows::matmul_xwt_bf16(&x[xa..xb], bits, m, n, k) {
                        return Ok((CpuStorage::F32(y), Shape::from((m, n))));
                    }
                }
            }
            let wide = CpuStorage::F32(widen_bf16(w, wl)?);
            return self.cpu_fwd(xs, xl, &wide, &Layout::contiguous(wl.shape()));
        }
        if let (CpuStorage::F32(x), CpuStorage::F32(w)) = (xs, ws) {
            let (m, k) = xl.shape().dims2()?;
            let (n, k2) = wl.shape().dims2()?;
            if k == k2 {
                if let (Some((xa, xb)), Some((wa, wb))) =
                    (xl.contiguous_offsets(), wl.contiguous_offsets())
                {
                    // Wide weights (SmolLM2's) at decode's few rows: the register-blocked
                    // AVX-512 kernel: a row gets the same bits in any batch up to MAX_ROWS.
                    if m <= super::few_rows::MAX_ROWS && n.min(k) >= BLAS_MIN_WIDTH {
                        if let Some(y) =
                            super::few_rows::matmul_xwt(&x[xa..xb], &w[wa..wb], m, n, k)
                        {
                            return Ok((CpuStorage::F32(y), Shape::from((m, n))));
                        }
                    }
                    if m <= DOT_M {
                        let y = small_m_matmul(&x[xa..xb], &w[wa..wb], m, n, k);
                        return Ok((CpuStorage::F32(y), Shape::from((m, n))));
                    }
                    if m <= SWAP_M {
                        // (W x^T)^T: gemm packs the small x instead of the whole weight.
                        let yt = ws.matmul(xs, (1, n, m, k), wl, &xl.transpose(0, 1)?)?;
                        let CpuStorage::F32(yt) = yt else {
                            candle_core::bail!("linear_frozen: f32 matmul returned another dtype");
                        };
                        let mut y = vec![0f32; m * n];
                        for j in 0..n {
                            for i in 0..m {
                                y[i * n + j] = yt[j * m + i];
                            }
                        }
                        return Ok((CpuStorage::F32(y), Shape::from((m, n))));
                    }
                    // Many rows (prefill, training): the BLAS where loaded. (At 3-64 rows the
                    // swapped product above measured 3-10% faster in batched decode.)
                    let p = Product {
                        trans_a: false,
                        trans_b: true,
                        m,
                        n,
                        k,
                    };
                    if n.min(k) >= BLAS_MIN_WIDTH {
                        if let Some(y) = blas::sgemm_new(p, &x[xa..xb], &w[wa..wb]) {
                            return Ok((CpuStorage::F32(y), Shape::from((m, n))));
                        }
                    }
                }
            }
        }
        fwd(xs, xl, ws, wl)
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        fwd(xs, xl, ws, wl)
    }

    fn metal_fwd(
        &self,
        xs: &MetalStorage,
        xl: &Layout,
        ws: &MetalStorage,
        wl: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        fwd(xs, xl, ws, wl)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        // A bf16 inference weight meets f32 gradients widened (exactly) to their dtype.
        let w = w.detach().to_dtype(g.dtype())?;
        let wide = blas_width(&w);
        // dX = dY @ W.
        let dx = match wide.then(|| blas_matmul(&g, false, &w, false)).flatten() {
            Some(dx) => dx,
            None => g.matmul(&w)?,
        };
        if !self.weight_grad {
            // No gradient for a frozen weight: computing none is the point of this op.
            return Ok((Some(dx), None));
        }
        // dW = dY^T @ X, straight into [N, K].
        let x = x.detach();
        let dw = match wide.then(|| blas_matmul(&g, true, &x, false)).flatten() {
            Some(dw) => dw,
            None => g.t()?.matmul(&x)?,
        };
        Ok((Some(dx), Some(dw)))
    }
}
