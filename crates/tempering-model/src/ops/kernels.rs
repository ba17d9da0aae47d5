//! Shared CPU machinery for the fused ops: the float trait the loops are generic over, a fast
//! vectorisable `exp` for f32, reductions with several accumulators (so the compiler can use SIMD
//! without reassociating a single sum), and row-parallel iteration over rayon.

use super::simd::wide;
use candle_core::{bail, CpuStorage, DType, Layout, WithDType};
use rayon::prelude::*;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// Below this many elements a tensor is handled on the calling thread: for decode-sized inputs the
/// cost of waking rayon's workers exceeds the work.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// The float types the fused CPU loops run in: f32 for real work, f64 for finite-difference tests.
pub(crate) trait Real:
    WithDType
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    /// `exp` accurate to a couple of ulps; fast (polynomial) for f32.
    fn exp_(self) -> Self;
    fn ln_(self) -> Self;
    fn sqrt_(self) -> Self;
    fn of(v: f64) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn exp_(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn ln_(self) -> Self {
        self.ln()
    }
    #[inline(always)]
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn ln_(self) -> Self {
        self.ln()
    }
    #[inline(always)]
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
}

/// `exp` for f32 after Cephes' `expf` (range reduction by ln 2, degree-6 polynomial), written
/// branch-free with bit tricks only so that loops over it vectorise. Max relative error is about
/// 2 ulp on [-87, 88]; inputs below -87 give 0 (softmax tails), above 88 saturate, NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer and leaves that integer in the low
    // mantissa bits, so no float-to-int conversion (which would block vectorisation) is needed.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E + MAGIC) - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n: the biased exponent n + 127 sits in the low mantissa bits of (n + 127 + MAGIC).
    let pow2 = f32::from_bits((n + 127.0 + MAGIC).to_bits() << 23);
    let out = y * pow2;
    if x < -87.0 {
        0.0
    } else {
        out
    }
}

/// The contiguous part of a storage a layout describes; the public wrappers make inputs contiguous,
/// so a strided layout here is a bug in this module rather than user input.
pub(crate) fn slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let all = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// Errors for a dtype the CPU kernels do not handle (the wrappers route others elsewhere).
pub(crate) fn bad_dtype(op: &str, dt: DType) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{op}: unsupported dtype {dt:?} on the fused cpu path"
    ))
}

/// Runs `f(index, chunk)` over `chunk`-sized pieces of `dst`, in parallel when the tensor is large,
/// and returns the results in chunk order (so reductions over them are deterministic). Each call
/// goes through [`wide`], which compiles `f` for AVX-512 only where the compiler inlines it; an
/// op whose loop must run wide is written inside `wide_fn!`, where its closures inherit the
/// features.
pub(crate) fn map_chunks<T, R, F>(dst: &mut [T], chunk: usize, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(usize, &mut [T]) -> R + Sync + Send,
{
    let chunk = chunk.max(1);
    if dst.len() >= PAR_MIN_ELEMS && rayon::current_num_threads() > 1 {
        dst.par_chunks_mut(chunk)
            .enumerate()
            .map(|(i, c)| wide(|| f(i, c)))
            .collect()
    } else {
        wide(|| {
            dst.chunks_mut(chunk)
                .enumerate()
                .map(|(i, c)| f(i, c))
                .collect()
        })
    }
}

/// `map_chunks` for work that returns nothing; `work` is the number of input elements behind
/// `dst` (it decides the parallelism, as `dst` may be much smaller than the input).
pub(crate) fn for_chunks<T, F>(dst: &mut [T], chunk: usize, work: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    let chunk = chunk.max(1);
    if work >= PAR_MIN_ELEMS && rayon::current_num_threads() > 1 {
        dst.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| wide(|| f(i, c)));
    } else {
        wide(|| dst.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c)));
    }
}

const LANES: usize = 8;

/// Sum with eight accumulators, in a fixed order (deterministic, and vectorisable).
#[inline]
pub(crate) fn sum<T: Real>(xs: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let mut s = T::ZERO;
    for r in rest {
        s += *r;
    }
    fold(acc) + s
}

/// Dot product with eight accumulators.
#[inline]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::ZERO; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = T::ZERO;
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    fold(acc) + s
}

/// Maximum with eight accumulators (NaN inputs are skipped by the comparison, as in candle).
#[inline]
pub(crate) fn max<T: Real>(xs: &[T]) -> T {
    let mut acc = [T::NEG_INF; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = T::NEG_INF;
    for v in acc.iter().chain(rest) {
        if *v > m {
            m = *v;
        }
    }
    m
}

/// Sum of `exp(x - shift)` over a row without storing the exponentials.
#[inline]
pub(crate) fn sum_exp<T: Real>(xs: &[T], shift: T) -> T {
    let mut acc = [T::ZERO; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += (c[i] - shift).exp_();
        }
    }
    let mut s = T::ZERO;
    for r in rest {
        s += (*r - shift).exp_();
    }
    fold(acc) + s
}

#[inline(always)]
fn fold<T: Real>(acc: [T; LANES]) -> T {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std_to_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "worst relative error {worst}"
        );
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_cover_the_remainder() {
        let xs: Vec<f64> = (0..19).map(|i| i as f64 - 3.0).collect();
        assert_eq!(sum(&xs), xs.iter().sum::<f64>());
        assert_eq!(max(&xs), 15.0);
        assert_eq!(dot(&xs, &xs), xs.iter().map(|v| v * v).sum::<f64>());
        let se: f64 = xs.iter().map(|v| (v - 15.0).exp()).sum();
        assert!((sum_exp(&xs, 15.0) - se).abs() < 1e-12);
    }
}
