//! The product with a frozen weight, `x @ w.T`, whose backward yields the input's gradient only.
//! The forward calls candle's own matmul kernel on the storage (so its speed is candle's, on every
//! backend); only the graph node differs from `Tensor::matmul`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Shape, Tensor};

/// `x` `[M, K]` (contiguous rows), `w` `[N, K]` gives `[M, N]`.
pub(super) fn linear_frozen(x: &Tensor, w: &Tensor) -> crate::Result<Tensor> {
    Ok(x.apply_op2(w, LinearFrozen)?)
}

struct LinearFrozen;

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

impl CustomOp2 for LinearFrozen {
    fn name(&self) -> &'static str {
        "tempering-linear-frozen"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
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
        _x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // No gradient for the weight: that is the point of this op.
        Ok((Some(g.matmul(&w.detach())?), None))
    }
}
