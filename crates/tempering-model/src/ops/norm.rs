//! Fused RMSNorm: forward and backward loops over rows of the last dimension.

use super::kernels::{bad_dtype, dot, for_chunks, map_chunks, slice, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

/// Rows per partial sum of the weight gradient: fixed, so the reduction order (and so the
/// numbers) do not depend on the thread count.
const DW_ROWS: usize = 32;

pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> crate::Result<Tensor> {
    Ok(x.apply_op2(w, RmsNorm { eps })?)
}

/// One row's RMSNorm, `yr = xr / sqrt(mean(xr^2) + eps) * w`: the forward's formula, shared with
/// the lean decode path (`transformer/lean.rs`) so both give the same bits.
#[inline]
pub(crate) fn rms_norm_row<T: Real>(xr: &[T], w: &[T], eps: T, yr: &mut [T]) {
    let inv_d = T::of(1.0 / w.len() as f64);
    let inv = T::ONE / (dot(xr, xr) * inv_d + eps).sqrt_();
    for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
        *o = xv * inv * wv;
    }
}

struct RmsNorm {
    eps: f64,
}

impl RmsNorm {
    crate::wide_fn! {
        fn fwd<T: Real>(
            eps: f64,
            xs: &CpuStorage,
            xl: &Layout,
            ws: &CpuStorage,
            wl: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let x = slice::<T>(xs, xl, "rms_norm")?;
            let w = slice::<T>(ws, wl, "rms_norm")?;
            let d = w.len();
            let eps = T::of(eps);
            let mut y = vec![T::ZERO; x.len()];
            for_chunks(&mut y, d, x.len(), |r, yr| {
                rms_norm_row(&x[r * d..(r + 1) * d], w, eps, yr)
            });
            Ok((T::to_cpu_storage_owned(y), xl.shape().clone()))
        }
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "tempering-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match xs {
            CpuStorage::F32(_) => Self::fwd::<f32>(self.eps, xs, xl, ws, wl),
            CpuStorage::F64(_) => Self::fwd::<f64>(self.eps, xs, xl, ws, wl),
            s => Err(bad_dtype("rms_norm", s.dtype())),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let rows = x.elem_count() / d.max(1);
        // One pass gives both gradients, packed as `rows` rows of dx followed by one row of dw.
        let packed = x.apply_op3_no_bwd(w, &g.contiguous()?, &RmsNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(w.shape())?;
        // A frozen weight gets no gradient entry (it would only cost memory and confuse callers).
        Ok((Some(dx), Some(dw).filter(|_| w.track_op())))
    }
}

struct RmsNormBwd {
    eps: f64,
}

impl RmsNormBwd {
    crate::wide_fn! {
        fn run<T: Real>(
            eps: f64,
            xs: &CpuStorage,
            xl: &Layout,
            ws: &CpuStorage,
            wl: &Layout,
            gs: &CpuStorage,
            gl: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let x = slice::<T>(xs, xl, "rms_norm backward")?;
            let w = slice::<T>(ws, wl, "rms_norm backward")?;
            let g = slice::<T>(gs, gl, "rms_norm backward")?;
            let d = w.len();
            let rows = x.len() / d.max(1);
            let eps = T::of(eps);
            let inv_d = T::of(1.0 / d as f64);
            let mut out = vec![T::ZERO; x.len() + d];
            let (dx, dw) = out.split_at_mut(x.len());
            // y_j = w_j x_j r with r = (mean(x^2) + eps)^-1/2, so
            // dx_j = r g_j w_j - r^3 x_j mean_i(g_i w_i x_i) and dw_j = sum over rows of g_j x_j r.
            let partials = map_chunks(dx, DW_ROWS * d, |c, block| {
                let mut pw = vec![T::ZERO; d];
                for (i, dxr) in block.chunks_mut(d).enumerate() {
                    let r0 = (c * DW_ROWS + i) * d;
                    let (xr, gr) = (&x[r0..r0 + d], &g[r0..r0 + d]);
                    let inv = T::ONE / (dot(xr, xr) * inv_d + eps).sqrt_();
                    let mut s = T::ZERO;
                    for ((&gv, &wv), &xv) in gr.iter().zip(w).zip(xr) {
                        s += gv * wv * xv;
                    }
                    let k = inv * inv * inv * s * inv_d;
                    for (j, o) in dxr.iter_mut().enumerate() {
                        *o = inv * gr[j] * w[j] - k * xr[j];
                        pw[j] += gr[j] * xr[j] * inv;
                    }
                }
                pw
            });
            for pw in partials {
                for (o, v) in dw.iter_mut().zip(pw) {
                    *o += v;
                }
            }
            Ok((T::to_cpu_storage_owned(out), Shape::from((rows + 1, d))))
        }
    }
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "tempering-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match xs {
            CpuStorage::F32(_) => Self::run::<f32>(self.eps, xs, xl, ws, wl, gs, gl),
            CpuStorage::F64(_) => Self::run::<f64>(self.eps, xs, xl, ws, wl, gs, gl),
            s => Err(bad_dtype("rms_norm backward", s.dtype())),
        }
    }
}
