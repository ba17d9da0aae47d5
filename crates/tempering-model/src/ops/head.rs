//! The LM head and the log-probability of one label per row, fused and taken a block of rows at a
//! time: `log_softmax(h w^T / temperature)[label]`. The `[N, V]` logits never exist whole (with
//! SmolLM2's 49,152-token vocabulary a 4 x 128 batch's are 100 MB, and their gradient as much
//! again); the backward recomputes each block's logits, turns them into their gradient in place
//! and multiplies it out into `dh` and, where the head trains, `dw`. Knows tensors and labels;
//! nothing of models or what the labels mean.

use super::blas::{self, Product};
use super::kernels::{bad_dtype, map_chunks, max, slice, sum_exp, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};

/// Rows whose logits are held at once: 64 x 49,152 x 4 bytes = 12.6 MB for SmolLM2.
const BLOCK: usize = 256;

pub(super) fn head_logprobs(
    h: &Tensor,
    w: &Tensor,
    labels: &[u32],
    temperature: f64,
) -> crate::Result<Tensor> {
    Ok(h.apply_op2(
        w,
        HeadLogprobs {
            labels: labels.to_vec(),
            temperature,
        },
    )?)
}

/// Whether the fused op can run on `h`'s dtype here (f32 needs a BLAS, oneDNN or OpenBLAS, for its products).
pub(super) fn runs(dtype: DType) -> bool {
    match dtype {
        DType::F32 => blas::available(),
        DType::F64 => true,
        _ => false,
    }
}

/// The element types the op runs in, with their block product: the BLAS for f32, a plain loop for
/// f64 (finite-difference tests only).
trait HeadFloat: Real {
    /// `c = op(a) @ op(b)`, or `c +=` it with `add`; `false` where nothing ran.
    fn gemm(p: Product, a: &[Self], b: &[Self], c: &mut [Self], add: bool) -> bool;
}

impl HeadFloat for f32 {
    fn gemm(p: Product, a: &[f32], b: &[f32], c: &mut [f32], add: bool) -> bool {
        if add {
            blas::sgemm_add(p, a, b, c)
        } else {
            blas::sgemm(p, a, b, c)
        }
    }
}

impl HeadFloat for f64 {
    fn gemm(p: Product, a: &[f64], b: &[f64], c: &mut [f64], add: bool) -> bool {
        let at = |i: usize, l: usize| {
            if p.trans_a {
                a[l * p.m + i]
            } else {
                a[i * p.k + l]
            }
        };
        let bt = |l: usize, j: usize| {
            if p.trans_b {
                b[j * p.k + l]
            } else {
                b[l * p.n + j]
            }
        };
        for i in 0..p.m {
            for j in 0..p.n {
                let v: f64 = (0..p.k).map(|l| at(i, l) * bt(l, j)).sum();
                let o = &mut c[i * p.n + j];
                *o = if add { *o + v } else { v };
            }
        }
        true
    }
}

struct HeadLogprobs {
    labels: Vec<u32>,
    temperature: f64,
}

impl HeadLogprobs {
    fn dims(&self, hl: &Layout, wl: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (n, k) = hl.shape().dims2()?;
        let (v, k2) = wl.shape().dims2()?;
        if k != k2 || n != self.labels.len() || self.labels.iter().any(|&y| y as usize >= v) {
            candle_core::bail!(
                "head_logprobs: h {:?}, w {:?} and {} labels (each below {v}) do not fit",
                hl.shape(),
                wl.shape(),
                self.labels.len()
            );
        }
        Ok((n, k, v))
    }

    /// Block `r0..r0 + c`'s logits (divided by the temperature) into `z`.
    fn block_logits<T: HeadFloat>(
        &self,
        h: &[T],
        w: &[T],
        (r0, c): (usize, usize),
        (k, v): (usize, usize),
        z: &mut [T],
    ) -> candle_core::Result<()> {
        let p = Product {
            trans_a: false,
            trans_b: true,
            m: c,
            n: v,
            k,
        };
        if !T::gemm(p, &h[r0 * k..(r0 + c) * k], w, z, false) {
            candle_core::bail!("head_logprobs: no matrix product for this dtype (no BLAS loaded)");
        }
        if self.temperature != 1.0 {
            let inv = T::of(1.0 / self.temperature);
            for x in z.iter_mut() {
                *x *= inv;
            }
        }
        Ok(())
    }

    fn run<T: HeadFloat>(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k, v) = self.dims(hl, wl)?;
        let h = slice::<T>(hs, hl, "head_logprobs")?;
        let w = slice::<T>(ws, wl, "head_logprobs")?;
        let mut out = Vec::with_capacity(n);
        let mut z = vec![T::ZERO; BLOCK.min(n) * v];
        for r0 in (0..n).step_by(BLOCK) {
            let c = (n - r0).min(BLOCK);
            let z = &mut z[..c * v];
            self.block_logits(h, w, (r0, c), (k, v), z)?;
            out.extend(map_chunks(z, v, |i, zr| {
                let m = max(zr);
                zr[self.labels[r0 + i] as usize] - m - sum_exp(zr, m).ln_()
            }));
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from(n)))
    }

    /// `(dh, dw)` for the output gradient `g` (`dw` empty unless `with_dw`).
    fn grads<T: HeadFloat>(
        &self,
        h: &[T],
        w: &[T],
        g: &[T],
        (n, k, v): (usize, usize, usize),
        with_dw: bool,
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let mut dh = vec![T::ZERO; n * k];
        let mut dw = vec![T::ZERO; if with_dw { v * k } else { 0 }];
        let mut z = vec![T::ZERO; BLOCK.min(n) * v];
        let inv_t = T::of(1.0 / self.temperature);
        for r0 in (0..n).step_by(BLOCK) {
            let c = (n - r0).min(BLOCK);
            let z = &mut z[..c * v];
            self.block_logits(h, w, (r0, c), (k, v), z)?;
            // d lp / d logit_j = (1[j = label] - softmax_j) / temperature, times the row's grad.
            map_chunks(z, v, |i, zr| {
                let m = max(zr);
                let inv_sum = T::ONE / sum_exp(zr, m);
                let gi = g[r0 + i] * inv_t;
                for x in zr.iter_mut() {
                    *x = -((*x - m).exp_() * inv_sum) * gi;
                }
                zr[self.labels[r0 + i] as usize] += gi;
            });
            let dh_p = Product {
                trans_a: false,
                trans_b: false,
                m: c,
                n: k,
                k: v,
            };
            if !T::gemm(dh_p, z, w, &mut dh[r0 * k..(r0 + c) * k], false) {
                candle_core::bail!("head_logprobs backward: no matrix product (no BLAS loaded)");
            }
            if with_dw {
                let dw_p = Product {
                    trans_a: true,
                    trans_b: false,
                    m: v,
                    n: k,
                    k: c,
                };
                if !T::gemm(dw_p, z, &h[r0 * k..(r0 + c) * k], &mut dw, true) {
                    candle_core::bail!(
                        "head_logprobs backward: no matrix product (no BLAS loaded)"
                    );
                }
            }
        }
        Ok((dh, dw))
    }

    fn backward<T: HeadFloat>(
        &self,
        h: &Tensor,
        w: &Tensor,
        g: &Tensor,
        with_dw: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (hs, hl) = h.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (Storage::Cpu(hs), Storage::Cpu(ws), Storage::Cpu(gs)) = (&*hs, &*ws, &*gs) else {
            candle_core::bail!("head_logprobs backward: the fused op runs on the CPU only");
        };
        let dims = self.dims(hl, wl)?;
        let (dh, dw) = self.grads(
            slice::<T>(hs, hl, "head_logprobs backward")?,
            slice::<T>(ws, wl, "head_logprobs backward")?,
            slice::<T>(gs, gl, "head_logprobs backward")?,
            dims,
            with_dw,
        )?;
        let dh = Tensor::from_vec(dh, h.shape(), h.device())?;
        let dw = if with_dw {
            Some(Tensor::from_vec(dw, w.shape(), w.device())?)
        } else {
            None
        };
        Ok((dh, dw))
    }
}

impl CustomOp2 for HeadLogprobs {
    fn name(&self) -> &'static str {
        "tempering-head-logprobs"
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match (hs, ws) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => self.run::<f32>(hs, hl, ws, wl),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => self.run::<f64>(hs, hl, ws, wl),
            (s, _) => Err(bad_dtype(self.name(), s.dtype())),
        }
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // A frozen head (LoRA, or an adapter run) gets no gradient: computing none is the point.
        let with_dw = w.track_op();
        let (h, w) = (h.detach().contiguous()?, w.detach().contiguous()?);
        let g = grad.detach().contiguous()?;
        let (dh, dw) = match h.dtype() {
            DType::F32 => self.backward::<f32>(&h, &w, &g, with_dw)?,
            DType::F64 => self.backward::<f64>(&h, &w, &g, with_dw)?,
            dt => return Err(bad_dtype(self.name(), dt)),
        };
        Ok((Some(dh), dw))
    }
}
