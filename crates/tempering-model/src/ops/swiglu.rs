//! Fused SwiGLU gate, `silu(gate) * up`, with a backward that returns both gradients from one pass.

use super::kernels::{bad_dtype, for_chunks, slice, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

/// Elements per parallel task: the op is elementwise, so any fixed split works.
const CHUNK: usize = 4096;

pub(super) fn silu_mul(gate: &Tensor, up: &Tensor) -> crate::Result<Tensor> {
    Ok(gate.apply_op2(up, SiluMul)?)
}

#[inline(always)]
fn sigmoid<T: Real>(v: T) -> T {
    T::ONE / (T::ONE + (-v).exp_())
}

/// `silu(g) * u` for one element: the forward's formula, shared with the lean decode path.
#[inline(always)]
pub(crate) fn silu_mul_one<T: Real>(g: T, u: T) -> T {
    g * sigmoid(g) * u
}

struct SiluMul;

impl SiluMul {
    crate::wide_fn! {
        fn run<T: Real>(
            gs: &CpuStorage,
            gl: &Layout,
            us: &CpuStorage,
            ul: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let g = slice::<T>(gs, gl, "silu_mul")?;
            let u = slice::<T>(us, ul, "silu_mul")?;
            let mut y = vec![T::ZERO; g.len()];
            for_chunks(&mut y, CHUNK, g.len(), |c, yc| {
                let o = c * CHUNK;
                for ((y, &gv), &uv) in yc.iter_mut().zip(&g[o..]).zip(&u[o..]) {
                    *y = silu_mul_one(gv, uv);
                }
            });
            Ok((T::to_cpu_storage_owned(y), gl.shape().clone()))
        }
    }
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "tempering-silu-mul"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match gs {
            CpuStorage::F32(_) => Self::run::<f32>(gs, gl, us, ul),
            CpuStorage::F64(_) => Self::run::<f64>(gs, gl, us, ul),
            s => Err(bad_dtype(self.name(), s.dtype())),
        }
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // Both gradients in one pass, packed as [2, n]: row 0 for the gate, row 1 for up.
        let packed = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SiluMulBwd)?;
        let dg = packed.get(0)?.reshape(gate.shape())?;
        let du = packed.get(1)?.reshape(up.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// d gate = grad * up * s * (1 + gate * (1 - s)) with s = sigmoid(gate); d up = grad * silu(gate).
struct SiluMulBwd;

impl SiluMulBwd {
    crate::wide_fn! {
        fn run<T: Real>(
            gs: &CpuStorage,
            gl: &Layout,
            us: &CpuStorage,
            ul: &Layout,
            rs: &CpuStorage,
            rl: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let g = slice::<T>(gs, gl, "silu_mul backward")?;
            let u = slice::<T>(us, ul, "silu_mul backward")?;
            let r = slice::<T>(rs, rl, "silu_mul backward")?;
            let n = g.len();
            let mut out = vec![T::ZERO; 2 * n];
            let (dg, du) = out.split_at_mut(n);
            for_chunks(dg, CHUNK, n, |c, dgc| {
                let o = c * CHUNK;
                for (i, d) in dgc.iter_mut().enumerate() {
                    let (gv, uv, rv) = (g[o + i], u[o + i], r[o + i]);
                    let s = sigmoid(gv);
                    *d = rv * uv * s * (T::ONE + gv * (T::ONE - s));
                }
            });
            for_chunks(du, CHUNK, n, |c, duc| {
                let o = c * CHUNK;
                for (i, d) in duc.iter_mut().enumerate() {
                    let gv = g[o + i];
                    *d = r[o + i] * gv * sigmoid(gv);
                }
            });
            Ok((T::to_cpu_storage_owned(out), Shape::from((2, n))))
        }
    }
}

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "tempering-silu-mul-bwd"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match gs {
            CpuStorage::F32(_) => Self::run::<f32>(gs, gl, us, ul, rs, rl),
            CpuStorage::F64(_) => Self::run::<f64>(gs, gl, us, ul, rs, rl),
            s => Err(bad_dtype(self.name(), s.dtype())),
        }
    }
}
