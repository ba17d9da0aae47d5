//! Fused scaled dot-product attention on the CPU, with its backward: per query row, the scores
//! against the keys it may see, their softmax and the weighted sum of values, never a `[B, H, T,
//! S]` tensor in memory (the composed path keeps scores, masked scores and probabilities for the
//! backward: three such tensors a layer). One task per key/value head of a batch row holds that
//! head's `[R, S]` scores while it works, with its products on `gemm`'s kernels, single-threaded
//! inside the task; the backward recomputes the probabilities from `q` and `k`. Query heads come
//! grouped by the key/value head they share (GQA needs no copy of the keys). Knows tensors and an
//! additive mask; nothing of layers, caches or what the mask means.

use super::kernels::{bad_dtype, max, slice, Real};
use super::simd::wide;
use super::softmax::softmax_row;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// `softmax(q k^T * scale + mask) v` for `q` `[B, G, R, D]` (R = rep * T: the `rep` query heads
/// of key/value head `g`, each `T` rows), `k`, `v` `[B, G, S, D]` and `mask` `[B, T, S]` (f32,
/// additive; row `r` of `q` uses the mask of token `r % T`). Inputs contiguous, f32 or f64.
pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> crate::Result<Tensor> {
    let (_, t, s) = mask.dims3()?;
    let mask = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(q.apply_op3(
        k,
        v,
        Attention {
            mask: Mask {
                values: mask,
                tokens: t,
                keys: s,
            },
            scale,
        },
    )?)
}

/// The additive mask `[B, T, S]`.
struct Mask {
    values: Vec<f32>,
    tokens: usize,
    keys: usize,
}

impl Mask {
    /// The mask row of query row `r` of batch row `bi`.
    #[inline]
    fn row(&self, bi: usize, r: usize) -> &[f32] {
        let i = bi * self.tokens + r % self.tokens;
        &self.values[i * self.keys..(i + 1) * self.keys]
    }
}

struct Attention {
    mask: Mask,
    scale: f64,
}

/// The shapes of one call: batch, key/value heads, query rows per head group, keys, head dim.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    g: usize,
    r: usize,
    s: usize,
    d: usize,
}

impl Attention {
    fn dims(&self, ql: &Layout, kl: &Layout, vl: &Layout) -> candle_core::Result<Dims> {
        let (b, g, r, d) = ql.shape().dims4()?;
        let (kb, kg, s, kd) = kl.shape().dims4()?;
        if (kb, kg, kd) != (b, g, d) || vl.shape() != kl.shape() {
            candle_core::bail!(
                "attention: q {:?}, k {:?} and v {:?} do not agree",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        if self.mask.keys != s
            || self.mask.tokens == 0
            || r % self.mask.tokens != 0
            || self.mask.values.len() != b * self.mask.tokens * s
        {
            candle_core::bail!(
                "attention: a mask of {} tokens x {} keys does not fit q {:?} and k {:?}",
                self.mask.tokens,
                self.mask.keys,
                ql.shape(),
                kl.shape()
            );
        }
        Ok(Dims { b, g, r, s, d })
    }

    fn run<T: Real>(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = self.dims(ql, kl, vl)?;
        let q = slice::<T>(qs, ql, "attention")?;
        let k = slice::<T>(ks, kl, "attention")?;
        let v = slice::<T>(vs, vl, "attention")?;
        let Dims { b, g, r, s, d } = dims;
        let mut out = vec![T::ZERO; q.len()];
        let (qn, kn) = (r * d, s * d);
        let unit = |u: usize, o: &mut [T], par: Parallelism| {
            let mut p = vec![T::ZERO; r * s];
            let (qu, ku) = (&q[u * qn..(u + 1) * qn], &k[u * kn..(u + 1) * kn]);
            self.probs(qu, ku, u / g, dims, &mut p, par);
            // O = P V: [R, S] @ [S, D].
            matmul(
                o,
                Mat::rows(&p, s),
                Mat::rows(&v[u * kn..(u + 1) * kn], d),
                (r, d, s),
                par,
            );
        };
        per_unit(b * g, out.chunks_mut(qn), unit);
        Ok((T::to_cpu_storage_owned(out), ql.shape().clone()))
    }

    /// Head group `u`'s probabilities `[R, S]` into `p`: `softmax(q k^T * scale + mask)` row by
    /// row, the composed path's formula (a masked entry's probability is exactly zero).
    fn probs<T: Real>(
        &self,
        q: &[T],
        k: &[T],
        bi: usize,
        Dims { r, s, d, .. }: Dims,
        p: &mut [T],
        par: Parallelism,
    ) {
        let mut scores = vec![T::ZERO; r * s];
        // Q K^T: [R, D] @ [D, S], K read transposed in place.
        matmul(
            &mut scores,
            Mat::rows(q, d),
            Mat::cols(k, d),
            (r, s, d),
            par,
        );
        masked_softmax_rows(&mut scores, p, s, &self.mask, bi, T::of(self.scale));
    }

    /// [`Attention::grads`] on the tensors' CPU storage, as tensors of their shapes.
    fn backward<T: Real>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        grad: &Tensor,
        dims: Dims,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (dq, dk, dv) = {
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs), Storage::Cpu(gs)) =
                (&*qs, &*ks, &*vs, &*gs)
            else {
                candle_core::bail!("attention backward: the fused op runs on the CPU only");
            };
            const OP: &str = "attention backward";
            self.grads(
                slice::<T>(qs, ql, OP)?,
                slice::<T>(ks, kl, OP)?,
                slice::<T>(vs, vl, OP)?,
                slice::<T>(gs, gl, OP)?,
                dims,
            )
        };
        let dev = q.device();
        Ok((
            Tensor::from_vec(dq, q.shape(), dev)?,
            Tensor::from_vec(dk, k.shape(), dev)?,
            Tensor::from_vec(dv, v.shape(), dev)?,
        ))
    }

    /// The three gradients (`dq`, `dk`, `dv`), one key/value head of one batch row per task.
    fn grads<T: Real>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        dout: &[T],
        dims: Dims,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let Dims { b, g, r, s, d } = dims;
        let (qn, kn) = (r * d, s * d);
        let mut dq = vec![T::ZERO; q.len()];
        let mut dk = vec![T::ZERO; k.len()];
        let mut dv = vec![T::ZERO; v.len()];
        let scale = T::of(self.scale);
        let unit =
            |u: usize, (dq, (dk, dv)): (&mut [T], (&mut [T], &mut [T])), par: Parallelism| {
                let (qu, ku) = (&q[u * qn..(u + 1) * qn], &k[u * kn..(u + 1) * kn]);
                let (vu, du) = (&v[u * kn..(u + 1) * kn], &dout[u * qn..(u + 1) * qn]);
                let mut p = vec![T::ZERO; r * s];
                self.probs(qu, ku, u / g, dims, &mut p, par);
                // dV = P^T dO: [S, R] @ [R, D].
                matmul(dv, Mat::cols(&p, s), Mat::rows(du, d), (s, d, r), par);
                // dP = dO V^T: [R, D] @ [D, S]; then dS = P (dP - sum_j P dP) * scale, in place.
                let mut ds = vec![T::ZERO; r * s];
                matmul(&mut ds, Mat::rows(du, d), Mat::cols(vu, d), (r, s, d), par);
                softmax_grad_rows(&mut ds, &p, s, scale);
                // dQ = dS K: [R, S] @ [S, D]; dK = dS^T Q: [S, R] @ [R, D].
                matmul(dq, Mat::rows(&ds, s), Mat::rows(ku, d), (r, d, s), par);
                matmul(dk, Mat::cols(&ds, s), Mat::rows(qu, d), (s, d, r), par);
            };
        let chunks = dq
            .chunks_mut(qn)
            .zip(dk.chunks_mut(kn).zip(dv.chunks_mut(kn)));
        per_unit(b * g, chunks, unit);
        (dq, dk, dv)
    }
}

crate::wide_fn! {
    /// `p = softmax(scores * scale + mask)` row by row (`s` keys a row), the composed path's
    /// formula (a masked entry's probability is exactly zero).
    fn masked_softmax_rows<T: Real>(
        scores: &mut [T],
        p: &mut [T],
        s: usize,
        mask: &Mask,
        bi: usize,
        scale: T,
    ) {
        for (i, (sc, pr)) in scores.chunks_mut(s).zip(p.chunks_mut(s)).enumerate() {
            for (x, &m) in sc.iter_mut().zip(mask.row(bi, i)) {
                *x = *x * scale + T::of(f64::from(m));
            }
            softmax_row(sc, max(sc), pr);
        }
    }
}

crate::wide_fn! {
    /// The softmax's backward in place, row by row: `dS = P (dP - sum_j P dP) * scale`.
    fn softmax_grad_rows<T: Real>(ds: &mut [T], p: &[T], s: usize, scale: T) {
        for (dsr, pr) in ds.chunks_mut(s).zip(p.chunks(s)) {
            let mut delta = T::ZERO;
            for (&x, &pj) in dsr.iter().zip(pr) {
                delta += pj * x;
            }
            for (x, &pj) in dsr.iter_mut().zip(pr) {
                *x = pj * (*x - delta) * scale;
            }
        }
    }
}

/// Runs `f(u, chunk, parallelism)` for every key/value head of every batch row: the heads in
/// parallel when there are enough of them to share out (each product then single-threaded),
/// otherwise one after another with each product parallel.
fn per_unit<C: Send>(
    units: usize,
    chunks: impl Iterator<Item = C>,
    f: impl Fn(usize, C, Parallelism) + Sync + Send,
) {
    let threads = rayon::current_num_threads();
    if threads > 1 && units >= 2 * threads {
        chunks
            .collect::<Vec<_>>()
            .into_par_iter()
            .enumerate()
            .for_each(|(u, c)| wide(|| f(u, c, Parallelism::None)));
    } else {
        let par = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        chunks.enumerate().for_each(|(u, c)| wide(|| f(u, c, par)));
    }
}

/// A row-major `[rows, cols]` matrix read as it is (`rows`) or transposed (`cols`: the matrix
/// `[cols, rows]` whose columns are the slice's rows of `ld` elements).
struct Mat<'a, T> {
    data: &'a [T],
    /// Element strides between consecutive rows and consecutive columns of the matrix meant.
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> Mat<'a, T> {
    /// The slice as row-major rows of `ld` elements.
    fn rows(data: &'a [T], ld: usize) -> Self {
        Self {
            data,
            row_stride: ld,
            col_stride: 1,
        }
    }

    /// The transpose of the slice's row-major rows of `ld` elements.
    fn cols(data: &'a [T], ld: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: ld,
        }
    }

    /// Whether an `[m, n]` matrix read this way stays inside the slice.
    fn fits(&self, m: usize, n: usize) -> bool {
        m == 0 || n == 0 || (m - 1) * self.row_stride + (n - 1) * self.col_stride < self.data.len()
    }
}

/// `c [m, n] = a [m, k] @ b [k, n]` (c row-major and dense) on `gemm`'s kernels.
fn matmul<T: Real>(
    c: &mut [T],
    a: Mat<T>,
    b: Mat<T>,
    (m, n, k): (usize, usize, usize),
    par: Parallelism,
) {
    assert!(
        c.len() == m * n && a.fits(m, k) && b.fits(k, n),
        "attention: a product's operands do not fit its shape"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assertion above keeps every element read or written inside its slice; `c` is
    // not read (read_dst false) and is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "tempering-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match qs {
            CpuStorage::F32(_) => self.run::<f32>(qs, ql, ks, kl, vs, vl),
            CpuStorage::F64(_) => self.run::<f64>(qs, ql, ks, kl, vs, vl),
            s => Err(bad_dtype(self.name(), s.dtype())),
        }
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let grad = grad.detach().contiguous()?;
        let dims = self.dims(q.layout(), k.layout(), v.layout())?;
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => self.backward::<f32>(&q, &k, &v, &grad, dims)?,
            DType::F64 => self.backward::<f64>(&q, &k, &v, &grad, dims)?,
            dt => return Err(bad_dtype(self.name(), dt)),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
