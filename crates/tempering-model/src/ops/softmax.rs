//! Fused softmax, log-softmax and per-token log-probabilities over the last dimension, with their
//! backward loops. Each row is handled by one thread, reductions in a fixed order.

use super::kernels::{bad_dtype, dot, for_chunks, max, slice, sum, sum_exp, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

pub(super) fn softmax(x: &Tensor) -> crate::Result<Tensor> {
    Ok(x.apply_op1(Softmax { log: false })?)
}

pub(super) fn log_softmax(x: &Tensor) -> crate::Result<Tensor> {
    Ok(x.apply_op1(Softmax { log: true })?)
}

pub(super) fn token_logprobs(logits: &Tensor, targets: &Tensor) -> crate::Result<Tensor> {
    Ok(logits.apply_op2(targets, TokenLogprobs)?)
}

fn last_dim(l: &Layout) -> usize {
    l.shape().dims().last().copied().unwrap_or(1).max(1)
}

/// One row's softmax into `yr`, given the row's maximum `m`: the forward's formula, shared with
/// the lean decode path's attention.
#[inline(always)]
pub(crate) fn softmax_row<T: Real>(xr: &[T], m: T, yr: &mut [T]) {
    for (o, &v) in yr.iter_mut().zip(xr) {
        *o = (v - m).exp_();
    }
    let inv = T::ONE / sum(yr);
    for o in yr.iter_mut() {
        *o *= inv;
    }
}

struct Softmax {
    log: bool,
}

impl Softmax {
    crate::wide_fn! {
        fn run<T: Real>(
            log: bool,
            xs: &CpuStorage,
            xl: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let x = slice::<T>(xs, xl, "softmax")?;
            let d = last_dim(xl);
            let mut y = vec![T::ZERO; x.len()];
            for_chunks(&mut y, d, x.len(), |r, yr| {
                let xr = &x[r * d..(r + 1) * d];
                let m = max(xr);
                if log {
                    let lse = m + sum_exp(xr, m).ln_();
                    for (o, &v) in yr.iter_mut().zip(xr) {
                        *o = v - lse;
                    }
                } else {
                    softmax_row(xr, m, yr);
                }
            });
            Ok((T::to_cpu_storage_owned(y), xl.shape().clone()))
        }
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        if self.log {
            "tempering-log-softmax"
        } else {
            "tempering-softmax"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        match s {
            CpuStorage::F32(_) => Self::run::<f32>(self.log, s, l),
            CpuStorage::F64(_) => Self::run::<f64>(self.log, s, l),
            s => Err(bad_dtype(self.name(), s.dtype())),
        }
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd { log: self.log })?;
        Ok(Some(dx))
    }
}

/// Gradient from the op's output `y` and the incoming gradient `g`:
/// softmax: dx = y * (g - sum(g * y)); log-softmax: dx = g - exp(y) * sum(g).
struct SoftmaxBwd {
    log: bool,
}

impl SoftmaxBwd {
    crate::wide_fn! {
        fn run<T: Real>(
            log: bool,
            ys: &CpuStorage,
            yl: &Layout,
            gs: &CpuStorage,
            gl: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let y = slice::<T>(ys, yl, "softmax backward")?;
            let g = slice::<T>(gs, gl, "softmax backward")?;
            let d = last_dim(yl);
            let mut dx = vec![T::ZERO; y.len()];
            for_chunks(&mut dx, d, y.len(), |r, dr| {
                let (yr, gr) = (&y[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
                if log {
                    let s = sum(gr);
                    for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                        *o = gv - yv.exp_() * s;
                    }
                } else {
                    let s = dot(gr, yr);
                    for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                        *o = yv * (gv - s);
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(dx), yl.shape().clone()))
        }
    }
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "tempering-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match ys {
            CpuStorage::F32(_) => Self::run::<f32>(self.log, ys, yl, gs, gl),
            CpuStorage::F64(_) => Self::run::<f64>(self.log, ys, yl, gs, gl),
            s => Err(bad_dtype(self.name(), s.dtype())),
        }
    }
}

/// Targets as row indices, checked against the vocabulary size (they are user data).
fn targets(ts: &CpuStorage, tl: &Layout, vocab: usize) -> candle_core::Result<Vec<usize>> {
    let idx: Vec<i64> = match ts.dtype() {
        DType::U32 => slice::<u32>(ts, tl, "token_logprobs")?
            .iter()
            .map(|&t| t as i64)
            .collect(),
        DType::I64 => slice::<i64>(ts, tl, "token_logprobs")?.to_vec(),
        dt => candle_core::bail!("token_logprobs: targets must be u32 or i64, got {dt:?}"),
    };
    idx.iter()
        .enumerate()
        .map(|(row, &t)| match usize::try_from(t) {
            Ok(u) if u < vocab => Ok(u),
            _ => candle_core::bail!(
                "token_logprobs: target {t} at row {row} is outside the vocabulary of {vocab}"
            ),
        })
        .collect()
}

/// log p(target) per row: max, log-sum-exp and the target's logit, without a `[N, V]` buffer.
struct TokenLogprobs;

impl TokenLogprobs {
    crate::wide_fn! {
        fn run<T: Real>(
            ls: &CpuStorage,
            ll: &Layout,
            ts: &CpuStorage,
            tl: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let x = slice::<T>(ls, ll, "token_logprobs")?;
            let v = last_dim(ll);
            let tgt = targets(ts, tl, v)?;
            let mut out = vec![T::ZERO; tgt.len()];
            for_chunks(&mut out, 1, x.len(), |r, o| {
                let xr = &x[r * v..(r + 1) * v];
                let m = max(xr);
                o[0] = xr[tgt[r]] - m - sum_exp(xr, m).ln_();
            });
            Ok((T::to_cpu_storage_owned(out), Shape::from(tgt.len())))
        }
    }
}

impl CustomOp2 for TokenLogprobs {
    fn name(&self) -> &'static str {
        "tempering-token-logprobs"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match ls {
            CpuStorage::F32(_) => Self::run::<f32>(ls, ll, ts, tl),
            CpuStorage::F64(_) => Self::run::<f64>(ls, ll, ts, tl),
            s => Err(bad_dtype(self.name(), s.dtype())),
        }
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // The forward's output already holds each row's log-sum-exp (lse = x[t] - logp), so the
        // backward needs one pass per row, not three.
        let aux = Tensor::stack(&[res, &g.contiguous()?], 1)?;
        let dl = logits.apply_op3_no_bwd(targets, &aux, &TokenLogprobsBwd)?;
        Ok((Some(dl), None))
    }
}

/// d logits = g[:, None] * (onehot(target) - softmax(logits)), row by row.
struct TokenLogprobsBwd;

impl TokenLogprobsBwd {
    crate::wide_fn! {
        fn run<T: Real>(
            ls: &CpuStorage,
            ll: &Layout,
            ts: &CpuStorage,
            tl: &Layout,
            aux: &CpuStorage,
            al: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let x = slice::<T>(ls, ll, "token_logprobs backward")?;
            let aux = slice::<T>(aux, al, "token_logprobs backward")?;
            let v = last_dim(ll);
            let tgt = targets(ts, tl, v)?;
            let mut dx = vec![T::ZERO; x.len()];
            for_chunks(&mut dx, v, x.len(), |r, dr| {
                let xr = &x[r * v..(r + 1) * v];
                let (logp, g) = (aux[2 * r], aux[2 * r + 1]);
                let mut lse = xr[tgt[r]] - logp;
                if !lse.to_f64().is_finite() {
                    // A target logit of -inf leaves nothing to recover the sum from: recompute it.
                    let m = max(xr);
                    lse = m + sum_exp(xr, m).ln_();
                }
                for (o, &xv) in dr.iter_mut().zip(xr) {
                    *o = -(g * (xv - lse).exp_());
                }
                dr[tgt[r]] += g;
            });
            Ok((T::to_cpu_storage_owned(dx), ll.shape().clone()))
        }
    }
}

impl CustomOp3 for TokenLogprobsBwd {
    fn name(&self) -> &'static str {
        "tempering-token-logprobs-bwd"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
        aux: &CpuStorage,
        al: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match ls {
            CpuStorage::F32(_) => Self::run::<f32>(ls, ll, ts, tl, aux, al),
            CpuStorage::F64(_) => Self::run::<f64>(ls, ll, ts, tl, aux, al),
            s => Err(bad_dtype(self.name(), s.dtype())),
        }
    }
}
