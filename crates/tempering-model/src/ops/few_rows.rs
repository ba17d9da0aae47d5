//! `x [m, k] @ w [n, k]^T` for few rows of `x` (batched decode: one row per sequence), on
//! AVX-512: register-blocked dot products, a tile of up to 8 rows of `x` by 3 rows of `w` held in
//! 24 vector accumulators along `k`. Each task owns a block of 24 weight rows, taken in panels of
//! 12: every tile of `x` meets a panel while it sits in cache, and the second tile prefetches the
//! next panel while the others compute. General gemm kernels pack and block for many rows; at 8 to 64 they spend
//! their time packing the weight. Every output is the same sequence of FMAs whatever `m`, the tile
//! or chunk it falls in or the thread count, so a row decodes to the same bits alone or in a batch.
//! The weight may be f32 or bf16 ([`matmul_xwt_bf16`], inference weights at half the bytes): a bf16
//! weight vector is widened to f32 in registers (its bits shifted into the high half) and meets the
//! f32 rows of `x` in the same FMAs, so only the weight's own rounding differs from f32.
//! Knows nothing of candle: slices in, a vector out.

use rayon::prelude::*;

/// Up to this many rows the kernel beats the general ones on SmolLM2's decode (`cargo bench -p
/// tempering-model --bench gemm` with `GEMM_DECODE_ONLY=1`: 1.5-2.7x at 8 rows, 1.0-1.5x at 32;
/// at 64, with the weights in cache, the bench has it level with gemm, but SmolLM2's batch-64
/// decode, whose weights stream from memory, ran 1.2x faster with it).
pub const MAX_ROWS: usize = 64;

/// Whether the CPU runs the kernel (AVX-512F, VL and BW), unless `TEMPER_FEW_ROWS=off`. With VL the
/// compiler may use all 32 vector registers: with AVX-512F alone LLVM kept the 24 accumulators in
/// zmm0-18 and spilled the rest to the stack inside the loop. BW loads a bf16 weight's masked tail.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("TEMPER_FEW_ROWS").is_ok_and(|v| v == "off") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Weight rows one task handles (a multiple of the tile's [`NR`]). Small enough that a decode
/// step's narrowest products split evenly over the cores (SmolLM2's 192-row key projection is 8
/// tasks, not 3 of which one core got 2): with 64 rows SmolLM2's bf16 decode at batch 1 ran 56
/// tok/s, with 24 (and the prefetch distance below) 81, batch 8 229 -> 364.
const ROWS_PER_TASK: usize = 24;

/// `x [m, k] @ w [n, k]^T` as `[m, n]` row-major, or `None` where the CPU lacks AVX-512F/VL/BW or
/// the slices are not `m * k` and `n * k` long.
pub fn matmul_xwt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Option<Vec<f32>> {
    product::<f32>(x, w, m, n, k)
}

/// [`matmul_xwt`] with a bf16 weight (its raw bits, as `half::bf16::to_bits` gives them): each
/// weight element is exactly the f32 with those bits in its high half, so the result is the f32
/// product with the rounded weight.
pub fn matmul_xwt_bf16(x: &[f32], w: &[u16], m: usize, n: usize, k: usize) -> Option<Vec<f32>> {
    product::<u16>(x, w, m, n, k)
}

/// [`matmul_xwt`] with a Q8_0 weight: `q` `[n, k]` signed bytes and `scales` `[n, k / 32]`, each
/// scale shared by a block of 32 consecutive bytes of its row; element `(j, p)` is
/// `q[j, p] as f32 * scales[j, p / 32]` (that f32 product, exactly as [`dequantize_q8`] gives it).
/// `None` also where `k` is not a multiple of 32.
pub fn matmul_xwt_q8(
    x: &[f32],
    q: &[i8],
    scales: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> Option<Vec<f32>> {
    if !k.is_multiple_of(Q8_BLOCK) || scales.len() != n * (k / Q8_BLOCK) {
        return None;
    }
    product_scaled::<i8>(x, q, scales, m, n, k)
}

/// A Q8_0 weight's bytes as candle stores them (U8) read as the signed bytes they are.
pub fn as_i8(v: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size and alignment, and every bit pattern is valid for both.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const i8, v.len()) }
}

/// Elements of a Q8_0 row that share one scale.
pub const Q8_BLOCK: usize = 32;

/// Q8_0 of a row-major `[n, k]` matrix (`k` a multiple of 32): per block of 32, the scale is the
/// largest magnitude over 127 and each element its nearest multiple of it (as llama.cpp's Q8_0,
/// with an f32 scale). `None` where `k` is not a multiple of 32 or `w` is not `n * k` long.
pub fn quantize_q8(w: &[f32], n: usize, k: usize) -> Option<(Vec<i8>, Vec<f32>)> {
    if !k.is_multiple_of(Q8_BLOCK) || w.len() != n * k {
        return None;
    }
    let mut q = vec![0i8; n * k];
    let mut scales = vec![0f32; n * k / Q8_BLOCK];
    for ((block, qb), s) in w
        .chunks_exact(Q8_BLOCK)
        .zip(q.chunks_exact_mut(Q8_BLOCK))
        .zip(scales.iter_mut())
    {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        *s = scale;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (o, v) in qb.iter_mut().zip(block) {
            *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
    }
    Some((q, scales))
}

/// The f32 matrix a Q8_0 weight stands for: `q * scale`, element by element.
pub fn dequantize_q8(q: &[i8], scales: &[f32]) -> Vec<f32> {
    q.chunks(Q8_BLOCK)
        .zip(scales)
        .flat_map(|(b, &s)| b.iter().map(move |&v| f32::from(v) * s))
        .collect()
}

/// A weight element the kernel reads: f32, bf16 as its raw `u16` bits, or Q8_0's `i8`.
pub trait WeightElem: Copy + Send + Sync + 'static {
    /// Whether the element is bf16 (widened in registers).
    const BF16: bool;
    /// Whether the element is a Q8_0 byte (widened and scaled in registers).
    const Q8: bool;
}

impl WeightElem for f32 {
    const BF16: bool = false;
    const Q8: bool = false;
}

impl WeightElem for u16 {
    const BF16: bool = true;
    const Q8: bool = false;
}

impl WeightElem for i8 {
    const BF16: bool = false;
    const Q8: bool = true;
}

fn product<W: WeightElem>(x: &[f32], w: &[W], m: usize, n: usize, k: usize) -> Option<Vec<f32>> {
    product_scaled(x, w, &[], m, n, k)
}

/// The product with `scales` (Q8_0's, `[n, k / 32]`; empty for the other elements).
fn product_scaled<W: WeightElem>(
    x: &[f32],
    w: &[W],
    scales: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> Option<Vec<f32>> {
    if !available() || x.len() != m * k || w.len() != n * k || m == 0 || n == 0 || k == 0 {
        return None;
    }
    let blocks = if W::Q8 { k / Q8_BLOCK } else { 0 };
    let mut out = vec![0f32; m * n];
    let dst = OutPtr(out.as_mut_ptr());
    let tasks = n.div_ceil(ROWS_PER_TASK);
    (0..tasks).into_par_iter().for_each(|task| {
        let j0 = task * ROWS_PER_TASK;
        let rows = (n - j0).min(ROWS_PER_TASK);
        // SAFETY: AVX-512F, VL and BW were detected above; every pointer offset stays inside `x`,
        // `w` (rows j0..j0+rows of n) and `out` (columns j0..j0+rows of every row), and tasks
        // write disjoint columns.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            let s = &scales[(j0 * blocks).min(scales.len())..];
            block_avx512(x, &w[j0 * k..(j0 + rows) * k], s, m, rows, k, dst.at(j0), n)
        };
    });
    Some(out)
}

/// The output's base pointer, shared by the tasks that each write their own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: tasks write disjoint columns of the output through it while `matmul_xwt` holds the
// vector, which outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer to column `j` of row 0.
    fn at(self, j: usize) -> *mut f32 {
        self.0.wrapping_add(j)
    }
}

/// Rows of `x` and of `w` in one tile: 24 accumulators, 3 weight vectors and one row of `x` fill
/// the 32 vector registers; each weight vector loaded feeds 8 FMAs.
const MR: usize = 8;
const NR: usize = 3;

/// Weight rows that meet every tile of `x` before the next ones: small enough to stay in L1-L2
/// while the tiles of `x` pass, large enough that prefetching the next panel runs well ahead.
const PANEL: usize = 12;

/// How far ahead of its loads a tile prefetches the weight (bytes). A decode step streams some
/// 200 distinct matrices of 0.2-2 MB each; with 1 KB in flight per weight row the products ran
/// at 12.5 GB/s, with 8-16 KB at 18-19 (the rows are consecutive, so the prefetch runs on into
/// the tile's next rows). Into L2 (`_MM_HINT_T1`), not L1: 5-10% faster again, the L1 kept
/// for `x` and the lines in use. `examples/few_rows_stream.rs` measures it.
const PREFETCH_BYTES: usize = 8192;

/// Outputs `out[i * stride + j] = x_i . w_j` for `rows` weight rows, in tiles of [`MR`] x [`NR`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512<W: WeightElem>(
    x: &[f32],
    w: &[W],
    scales: &[f32],
    m: usize,
    rows: usize,
    k: usize,
    out: *mut f32,
    stride: usize,
) {
    // Panels of PANEL weight rows outside; inside, each tile of x's rows meets the panel's
    // weight tiles while it sits in L1. The first tile streams the panel from memory (prefetching
    // ahead of itself); the second, with the panel now in cache, prefetches the next panel, so
    // the memory works while the remaining tiles compute.
    let mut j0 = 0;
    while j0 < rows {
        let j1 = (j0 + PANEL).min(rows);
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR);
            let xp = x.as_ptr().add(i * k);
            let mut j = j0;
            while j < j1 {
                let nr = (j1 - j).min(NR);
                let base = w.as_ptr().add(j * k);
                let wp = Rows {
                    w: base,
                    // Q8_0's scales of these rows (never read for the other elements).
                    scales: scales.as_ptr().wrapping_add(if W::Q8 {
                        j * (k / Q8_BLOCK)
                    } else {
                        0
                    }),
                    prefetch: match i / MR {
                        0 => base.wrapping_add(PREFETCH_BYTES / std::mem::size_of::<W>()),
                        1 => base.wrapping_add(PANEL * k),
                        _ => std::ptr::null(),
                    },
                };
                let op = out.add(i * stride + j);
                match (mr, nr) {
                    (8, 3) => tile::<8, 3, W>(xp, wp, k, op, stride),
                    (8, 2) => tile::<8, 2, W>(xp, wp, k, op, stride),
                    (8, 1) => tile::<8, 1, W>(xp, wp, k, op, stride),
                    (7, 3) => tile::<7, 3, W>(xp, wp, k, op, stride),
                    (7, 2) => tile::<7, 2, W>(xp, wp, k, op, stride),
                    (7, 1) => tile::<7, 1, W>(xp, wp, k, op, stride),
                    (6, 3) => tile::<6, 3, W>(xp, wp, k, op, stride),
                    (6, 2) => tile::<6, 2, W>(xp, wp, k, op, stride),
                    (6, 1) => tile::<6, 1, W>(xp, wp, k, op, stride),
                    (5, 3) => tile::<5, 3, W>(xp, wp, k, op, stride),
                    (5, 2) => tile::<5, 2, W>(xp, wp, k, op, stride),
                    (5, 1) => tile::<5, 1, W>(xp, wp, k, op, stride),
                    (4, 3) => tile::<4, 3, W>(xp, wp, k, op, stride),
                    (4, 2) => tile::<4, 2, W>(xp, wp, k, op, stride),
                    (4, 1) => tile::<4, 1, W>(xp, wp, k, op, stride),
                    (3, 3) => tile::<3, 3, W>(xp, wp, k, op, stride),
                    (3, 2) => tile::<3, 2, W>(xp, wp, k, op, stride),
                    (3, 1) => tile::<3, 1, W>(xp, wp, k, op, stride),
                    (2, 3) => tile::<2, 3, W>(xp, wp, k, op, stride),
                    (2, 2) => tile::<2, 2, W>(xp, wp, k, op, stride),
                    (2, 1) => tile::<2, 1, W>(xp, wp, k, op, stride),
                    (1, 3) => tile::<1, 3, W>(xp, wp, k, op, stride),
                    (1, 2) => tile::<1, 2, W>(xp, wp, k, op, stride),
                    _ => tile::<1, 1, W>(xp, wp, k, op, stride),
                }
                j += nr;
            }
            i += mr;
        }
        j0 = j1;
    }
}

/// One tile: `MR` rows of `x` (at `x`, stride `k`) by `NR` rows of `w` (at `w`, stride `k`), each
/// output a 16-lane accumulator along `k` (the tail masked), summed across lanes at the end and
/// written to `out[ii * stride + jj]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
#[inline(never)]
unsafe fn tile<const MR: usize, const NR: usize, W: WeightElem>(
    x: *const f32,
    w: Rows<W>,
    k: usize,
    out: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut p = 0;
    while p + 16 <= k {
        let mut wv = [_mm512_setzero_ps(); NR];
        // Once per cache line of weight: every step for f32, every 2nd for bf16, 4th for Q8_0.
        let line = (p * std::mem::size_of::<W>()).is_multiple_of(64);
        for (jj, v) in wv.iter_mut().enumerate() {
            *v = load_w(w, jj, k, p);
            // The weight streams from memory once: ask for it well ahead of its use.
            if line && !w.prefetch.is_null() {
                _mm_prefetch::<_MM_HINT_T1>(w.prefetch.wrapping_add(jj * k + p) as *const i8);
            }
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
            *v = load_w_masked(mask, w, jj, k, p);
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
            *out.add(ii * stride + jj) = _mm512_reduce_add_ps(*a);
        }
    }
}

/// Consecutive weight rows (stride `k` elements) and, for Q8_0, their scales (stride `k / 32`).
#[derive(Clone, Copy)]
struct Rows<W> {
    w: *const W,
    scales: *const f32,
    /// Where row 0's element `p` is prefetched from at step `p` (row `jj` at `jj * k` past it):
    /// ahead in the same rows, the next panel's rows, or nothing (null).
    prefetch: *const W,
}

/// The weight elements `p..p + 16` of row `jj` as f32 lanes: a plain load, bf16 bits widened into
/// the high half, or Q8_0 bytes widened and multiplied by their block's scale.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
#[inline]
unsafe fn load_w<W: WeightElem>(
    rows: Rows<W>,
    jj: usize,
    k: usize,
    p: usize,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let w = rows.w.add(jj * k + p);
    if W::BF16 {
        widen_bf16(_mm256_loadu_si256(w as *const __m256i))
    } else if W::Q8 {
        let s = *rows.scales.add(jj * (k / Q8_BLOCK) + p / Q8_BLOCK);
        widen_q8(_mm_loadu_si128(w as *const __m128i), s)
    } else {
        _mm512_loadu_ps(w as *const f32)
    }
}

/// 16 bf16 values as f32 lanes: each one's bits in the high half (exact).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
#[inline]
fn widen_bf16(h: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// 16 Q8_0 bytes as f32 lanes, each multiplied by the block's `scale`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
#[inline]
fn widen_q8(b: std::arch::x86_64::__m128i, scale: f32) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)),
        _mm512_set1_ps(scale),
    )
}

/// [`load_w`] of the lanes set in `mask`, zeros elsewhere (nothing read past them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
#[inline]
unsafe fn load_w_masked<W: WeightElem>(
    mask: std::arch::x86_64::__mmask16,
    rows: Rows<W>,
    jj: usize,
    k: usize,
    p: usize,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let w = rows.w.add(jj * k + p);
    if W::BF16 {
        widen_bf16(_mm256_maskz_loadu_epi16(mask, w as *const i16))
    } else if W::Q8 {
        let s = *rows.scales.add(jj * (k / Q8_BLOCK) + p / Q8_BLOCK);
        widen_q8(_mm_maskz_loadu_epi8(mask, w as *const i8), s)
    } else {
        _mm512_maskz_loadu_ps(mask, w as *const f32)
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
            (40, 50, 600),
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
        let x = data(64 * k, 4);
        let alone = matmul_xwt(&x[5 * k..6 * k], &w, 1, n, k).unwrap();
        for m in [6, 7, 9, 40, 64] {
            let all = matmul_xwt(&x[..m * k], &w, m, n, k).unwrap();
            assert_eq!(&all[5 * n..6 * n], &alone[..], "batch of {m}");
        }
    }

    /// bf16 bits of an f32 (round to nearest even), as `half::bf16::from_f32` gives them.
    fn bf16_bits(v: f32) -> u16 {
        let b = v.to_bits();
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }

    #[test]
    fn a_bf16_weight_gives_the_f32_product_with_the_rounded_weight() {
        if !available() {
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 5, 17),
            (3, 7, 16),
            (8, 130, 576),
            (40, 50, 600),
        ] {
            let x = data(m * k, 5);
            let w: Vec<u16> = data(n * k, 6).into_iter().map(bf16_bits).collect();
            let wide: Vec<f32> = w
                .iter()
                .map(|&b| f32::from_bits(u32::from(b) << 16))
                .collect();
            let got = matmul_xwt_bf16(&x, &w, m, n, k).unwrap();
            // The same FMAs on the widened weight: the same bits.
            assert_eq!(
                got,
                matmul_xwt(&x, &wide, m, n, k).unwrap(),
                "m {m} n {n} k {k}"
            );
            for (g, want) in got.iter().zip(naive(&x, &wide, m, n, k)) {
                assert!((f64::from(*g) - want).abs() <= 1e-4 * (1.0 + want.abs()));
            }
        }
        assert!(matmul_xwt_bf16(&[1.0; 3], &[1; 4], 1, 2, 2).is_none());
    }

    #[test]
    fn a_q8_weight_gives_the_f32_product_with_the_dequantized_weight() {
        if !available() {
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 32),
            (1, 5, 64),
            (3, 7, 96),
            (8, 130, 576),
            (40, 50, 608),
        ] {
            let x = data(m * k, 7);
            let (q, s) = quantize_q8(&data(n * k, 8), n, k).unwrap();
            let wide = dequantize_q8(&q, &s);
            let got = matmul_xwt_q8(&x, &q, &s, m, n, k).unwrap();
            assert_eq!(
                got,
                matmul_xwt(&x, &wide, m, n, k).unwrap(),
                "m {m} n {n} k {k}"
            );
        }
        // Quantization: every element within half a step of its block's scale.
        let w = data(4 * 64, 9);
        let (q, s) = quantize_q8(&w, 4, 64).unwrap();
        for ((v, d), i) in w.iter().zip(dequantize_q8(&q, &s)).zip(0..) {
            assert!((v - d).abs() <= s[i / 32] * 0.5 + 1e-7, "{v} against {d}");
        }
        assert!(quantize_q8(&[0.0; 48], 1, 48).is_none());
        assert!(matmul_xwt_q8(&[1.0; 48], &[1; 48], &[1.0], 1, 1, 48).is_none());
    }
}
