//! `x [m, k] @ w [n, k]^T` for few rows of `x` (batched decode: one row per sequence), on
//! AVX-512: register-blocked dot products, a tile of up to 8 rows of `x` by 3 rows of `w` held in
//! 24 vector accumulators along `k`; a task's block of weight rows comes from memory once and
//! from L2 for every further tile of `x`, each tile of `x` staying in L1. General gemm kernels pack and block for many rows; at 8 to 64
//! they spend their time packing the weight. Every output is the same sequence of FMAs whatever
//! `m`, the tile it falls in or the thread count, so a row decodes to the same bits alone or in
//! a batch. Knows nothing of candle: slices in, a vector out.

use rayon::prelude::*;

/// Up to this many rows the kernel beats the general ones on SmolLM2's shapes (measured 1.4-1.9x
/// at 8 rows; at 32 and 64 gemm's packed kernels were faster: `cargo bench -p tempering-model
/// --bench gemm`).
pub const MAX_ROWS: usize = 16;

/// Whether the CPU runs the kernel (AVX-512F), unless `TEMPER_FEW_ROWS=off`.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("TEMPER_FEW_ROWS").is_ok_and(|v| v == "off") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Weight rows one task handles: enough work per task, few enough tasks to balance.
const ROWS_PER_TASK: usize = 64;

/// `x [m, k] @ w [n, k]^T` as `[m, n]` row-major, or `None` where the CPU lacks AVX-512F or the
/// slices are not `m * k` and `n * k` long.
pub fn matmul_xwt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Option<Vec<f32>> {
    if !available() || x.len() != m * k || w.len() != n * k || m == 0 || n == 0 || k == 0 {
        return None;
    }
    // Outputs transposed ([n, m]), so that each task owns a contiguous block of them.
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, block)| {
            let j0 = task * ROWS_PER_TASK;
            let rows = block.len() / m;
            // SAFETY: AVX-512F was detected above; every pointer offset stays inside `x`, `w`
            // (rows j0..j0+rows of n) and `block` (rows x m outputs).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                block_avx512(x, &w[j0 * k..(j0 + rows) * k], m, rows, k, block)
            };
        });
    if m == 1 {
        return Some(out_t);
    }
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = out_t[j * m + i];
        }
    }
    Some(out)
}

/// Rows of `x` and of `w` in one tile: 24 accumulators, 3 weight vectors and one row of `x` fill
/// the 32 vector registers; each weight vector loaded feeds 8 FMAs.
const MR: usize = 8;
const NR: usize = 3;

/// Outputs `out_t[j * m + i] = x_i . w_j` for `rows` weight rows, in tiles of [`MR`] x [`NR`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(x: &[f32], w: &[f32], m: usize, rows: usize, k: usize, out_t: &mut [f32]) {
    // Rows of x outside: a tile of them (MR x k, in L1) meets every weight tile of the task's
    // block (at most 64 rows, in L2 after the first pass) before the next tile of x.
    let mut i = 0;
    while i < m {
        let mr = (m - i).min(MR);
        let mut j = 0;
        while j < rows {
            let nr = (rows - j).min(NR);
            let xp = x.as_ptr().add(i * k);
            let wp = w.as_ptr().add(j * k);
            let op = out_t.as_mut_ptr().add(j * m + i);
            match (mr, nr) {
                (8, 3) => tile::<8, 3>(xp, wp, k, op, m),
                (8, 2) => tile::<8, 2>(xp, wp, k, op, m),
                (8, 1) => tile::<8, 1>(xp, wp, k, op, m),
                (7, 3) => tile::<7, 3>(xp, wp, k, op, m),
                (7, 2) => tile::<7, 2>(xp, wp, k, op, m),
                (7, 1) => tile::<7, 1>(xp, wp, k, op, m),
                (6, 3) => tile::<6, 3>(xp, wp, k, op, m),
                (6, 2) => tile::<6, 2>(xp, wp, k, op, m),
                (6, 1) => tile::<6, 1>(xp, wp, k, op, m),
                (5, 3) => tile::<5, 3>(xp, wp, k, op, m),
                (5, 2) => tile::<5, 2>(xp, wp, k, op, m),
                (5, 1) => tile::<5, 1>(xp, wp, k, op, m),
                (4, 3) => tile::<4, 3>(xp, wp, k, op, m),
                (4, 2) => tile::<4, 2>(xp, wp, k, op, m),
                (4, 1) => tile::<4, 1>(xp, wp, k, op, m),
                (3, 3) => tile::<3, 3>(xp, wp, k, op, m),
                (3, 2) => tile::<3, 2>(xp, wp, k, op, m),
                (3, 1) => tile::<3, 1>(xp, wp, k, op, m),
                (2, 3) => tile::<2, 3>(xp, wp, k, op, m),
                (2, 2) => tile::<2, 2>(xp, wp, k, op, m),
                (2, 1) => tile::<2, 1>(xp, wp, k, op, m),
                (1, 3) => tile::<1, 3>(xp, wp, k, op, m),
                (1, 2) => tile::<1, 2>(xp, wp, k, op, m),
                _ => tile::<1, 1>(xp, wp, k, op, m),
            }
            j += nr;
        }
        i += mr;
    }
}

/// One tile: `MR` rows of `x` (at `x`, stride `k`) by `NR` rows of `w` (at `w`, stride `k`), each
/// output a 16-lane accumulator along `k` (the tail masked), summed across lanes at the end and
/// written to `out[jj * m + ii]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn tile<const MR: usize, const NR: usize>(
    x: *const f32,
    w: *const f32,
    k: usize,
    out: *mut f32,
    m: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut p = 0;
    while p + 16 <= k {
        let mut wv = [_mm512_setzero_ps(); NR];
        for (jj, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(w.add(jj * k + p));
        }
        for (ii, row) in acc.iter_mut().enumerate() {
            let xv = _mm512_loadu_ps(x.add(ii * k + p));
            for (a, v) in row.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(xv, *v, *a);
            }
        }
        p += 16;
    }
    if p < k {
        let mask: __mmask16 = ((1u32 << (k - p)) - 1) as __mmask16;
        let mut wv = [_mm512_setzero_ps(); NR];
        for (jj, v) in wv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(mask, w.add(jj * k + p));
        }
        for (ii, row) in acc.iter_mut().enumerate() {
            let xv = _mm512_maskz_loadu_ps(mask, x.add(ii * k + p));
            for (a, v) in row.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(xv, *v, *a);
            }
        }
    }
    for (ii, row) in acc.iter().enumerate() {
        for (jj, a) in row.iter().enumerate() {
            *out.add(jj * m + ii) = _mm512_reduce_add_ps(*a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| f64::from(x[i * k + p]) * f64::from(w[j * k + p]))
                    .sum();
            }
        }
        out
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_tile_shape_and_tail_matches_the_naive_product() {
        if !available() {
            eprintln!("no AVX-512F: nothing to check");
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 5, 17),
            (3, 7, 16),
            (5, 9, 33),
            (8, 130, 576),
            (13, 67, 100),
            (32, 192, 576),
            (64, 65, 15),
        ] {
            let x = data(m * k, 1);
            let w = data(n * k, 2);
            let got = matmul_xwt(&x, &w, m, n, k).unwrap();
            let want = naive(&x, &w, m, n, k);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "m {m} n {n} k {k}: {g} vs {w}"
                );
            }
        }
        assert!(matmul_xwt(&[1.0; 3], &[1.0; 4], 1, 2, 2).is_none());
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_or_in_any_batch() {
        if !available() {
            return;
        }
        let (n, k) = (70, 300);
        let w = data(n * k, 3);
        let x = data(9 * k, 4);
        let alone = matmul_xwt(&x[5 * k..6 * k], &w, 1, n, k).unwrap();
        for m in [6, 7, 9] {
            let all = matmul_xwt(&x[..m * k], &w, m, n, k).unwrap();
            assert_eq!(&all[5 * n..6 * n], &alone[..], "batch of {m}");
        }
    }
}
