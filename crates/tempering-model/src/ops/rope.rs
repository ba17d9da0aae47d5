//! Fused rotary position embedding (HF rotate_half layout). The backward is the same rotation by
//! the opposite angle, so one loop serves both directions.

use super::kernels::{bad_dtype, for_chunks, slice, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

pub(super) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> crate::Result<Tensor> {
    Ok(x.apply_op3(cos, sin, Rope { inverse: false })?)
}

struct Rope {
    /// Rotate by -angle: the transpose of the forward rotation, i.e. its gradient.
    inverse: bool,
}

impl Rope {
    crate::wide_fn! {
        fn run<T: Real>(
            inverse: bool,
            xs: &CpuStorage,
            xl: &Layout,
            cs: &CpuStorage,
            cl: &Layout,
            ss: &CpuStorage,
            sl: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let (_b, h, t, d) = xl.shape().dims4()?;
            let x = slice::<T>(xs, xl, "rope")?;
            let cos = slice::<T>(cs, cl, "rope")?;
            let sin = slice::<T>(ss, sl, "rope")?;
            let half = d / 2;
            let per_row = cl.shape().rank() == 3;
            let mut y = vec![T::ZERO; x.len()];
            // One chunk is one (batch, head) block of T positions.
            for_chunks(&mut y, t * d, x.len(), |bh, yb| {
                let b = bh / h;
                for (p, yr) in yb.chunks_mut(d).enumerate() {
                    let xr = &x[(bh * t + p) * d..][..d];
                    let c0 = if per_row {
                        (b * t + p) * half
                    } else {
                        p * half
                    };
                    let (c, s) = (&cos[c0..c0 + half], &sin[c0..c0 + half]);
                    let (x1, x2) = xr.split_at(half);
                    let (y1, y2) = yr.split_at_mut(half);
                    if inverse {
                        for i in 0..half {
                            y1[i] = x1[i] * c[i] + x2[i] * s[i];
                            y2[i] = x2[i] * c[i] - x1[i] * s[i];
                        }
                    } else {
                        for i in 0..half {
                            y1[i] = x1[i] * c[i] - x2[i] * s[i];
                            y2[i] = x2[i] * c[i] + x1[i] * s[i];
                        }
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(y), xl.shape().clone()))
        }
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "tempering-rope"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match xs {
            CpuStorage::F32(_) => Self::run::<f32>(self.inverse, xs, xl, cs, cl, ss, sl),
            CpuStorage::F64(_) => Self::run::<f64>(self.inverse, xs, xl, cs, cl, ss, sl),
            s => Err(bad_dtype("rope", s.dtype())),
        }
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = g.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &Rope {
                inverse: !self.inverse,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}
