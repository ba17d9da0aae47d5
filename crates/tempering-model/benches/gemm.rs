//! The CPU's f32 matrix products at SmolLM2-135M's shapes (M rows of activations; K, N in 576, 192,
//! 1536 and the 49152-row LM head): candle's `gemm` kernels (`Tensor::matmul` on a transposed view)
//! against OpenBLAS through `ops::blas` (single-threaded calls split over rayon's threads), for the
//! forward `X @ W^T` and the backward's `dY @ W` and `dY^T @ X`. GFLOP/s, medians of 15 runs, and the
//! ratio (above 1: OpenBLAS faster); then decode's few rows, where `ops::few_rows` runs. `cargo bench -p tempering-model --bench gemm`; threads from
//! `RAYON_NUM_THREADS` (candle's matmul uses its own pool: set `CANDLE_NUM_THREADS` to the same);
//! `GEMM_DECODE_ONLY=1` runs the decode table alone.

use candle_core::{Device, Tensor};
use std::time::Instant;
use tempering_model::ops::blas::{self, Product};
use tempering_model::ops::few_rows;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn median_s(mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    f()?;
    let mut ts = Vec::with_capacity(15);
    for _ in 0..15 {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[ts.len() / 2])
}

fn main() -> Res<()> {
    println!(
        "threads: rayon {}; {}",
        rayon::current_num_threads(),
        blas::describe()
    );
    if !blas::available() {
        println!("OpenBLAS is not loaded: nothing to compare");
        return Ok(());
    }
    let dev = Device::Cpu;
    if std::env::var_os("GEMM_DECODE_ONLY").is_some() {
        return decode_rows(&dev);
    }
    println!(
        "{:>5} {:>5} {:>6}  {:>22}  {:>22}  {:>22}",
        "M", "K", "N", "X@W^T candle/blas x", "dY@W candle/blas x", "dY^T@X candle/blas x"
    );
    for &m in &[1usize, 8, 64, 1024] {
        for &(k, n) in &[
            (576usize, 576usize),
            (576, 192),
            (576, 1536),
            (1536, 576),
            (576, 49152),
        ] {
            let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
            let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
            let g = Tensor::randn(0f32, 1., (m, n), &dev)?;
            let (xv, wv, gv) = (
                x.flatten_all()?.to_vec1::<f32>()?,
                w.flatten_all()?.to_vec1::<f32>()?,
                g.flatten_all()?.to_vec1::<f32>()?,
            );
            let flop = 2.0 * (m * k * n) as f64 / 1e9;
            let mut cells = Vec::new();
            // (candle, blas) per product.
            let wt = w.t()?;
            let gt = g.t()?;
            let pairs: [(f64, f64); 3] = [
                (
                    median_s(|| {
                        x.matmul(&wt)?;
                        Ok(())
                    })?,
                    median_s(|| {
                        let p = Product {
                            trans_a: false,
                            trans_b: true,
                            m,
                            n,
                            k,
                        };
                        blas::sgemm_new(p, &xv, &wv).ok_or("blas")?;
                        Ok(())
                    })?,
                ),
                (
                    median_s(|| {
                        g.matmul(&w)?;
                        Ok(())
                    })?,
                    median_s(|| {
                        let p = Product {
                            trans_a: false,
                            trans_b: false,
                            m,
                            n: k,
                            k: n,
                        };
                        blas::sgemm_new(p, &gv, &wv).ok_or("blas")?;
                        Ok(())
                    })?,
                ),
                (
                    median_s(|| {
                        gt.matmul(&x)?;
                        Ok(())
                    })?,
                    median_s(|| {
                        let p = Product {
                            trans_a: true,
                            trans_b: false,
                            m: n,
                            n: k,
                            k: m,
                        };
                        blas::sgemm_new(p, &gv, &xv).ok_or("blas")?;
                        Ok(())
                    })?,
                ),
            ];
            for (c, b) in pairs {
                cells.push(format!(
                    "{:>6.1}/{:>6.1} {:>5.2}x",
                    flop / c,
                    flop / b,
                    c / b
                ));
            }
            println!("{m:>5} {k:>5} {n:>6}  {}", cells.join("  "));
        }
    }
    decode_rows(&dev)
}

/// Decode's few rows, forward only: candle's gemm on the swapped product `(W X^T)^T` (what the
/// linear layer ran before `ops::few_rows`), OpenBLAS, and `ops::few_rows`, in GFLOP/s, with the
/// ratio of `few_rows` to the better of the other two.
fn decode_rows(dev: &Device) -> Res<()> {
    if !few_rows::available() {
        println!("no AVX-512F: ops::few_rows does not run here");
        return Ok(());
    }
    println!(
        "\ndecode rows, X@W^T GFLOP/s: {:>5} {:>5} {:>6}  {:>8} {:>8} {:>8}  {:>6}",
        "M", "K", "N", "swapped", "blas", "few_rows", "ratio"
    );
    for &m in &[1usize, 8, 16, 32, 64] {
        for &(k, n) in &[(576usize, 576usize), (576, 1536), (1536, 576), (576, 49152)] {
            let x = Tensor::randn(0f32, 1., (m, k), dev)?;
            let w = Tensor::randn(0f32, 1., (n, k), dev)?;
            let (xv, wv) = (
                x.flatten_all()?.to_vec1::<f32>()?,
                w.flatten_all()?.to_vec1::<f32>()?,
            );
            let xt = x.t()?;
            let flop = 2.0 * (m * k * n) as f64 / 1e9;
            let swapped = median_s(|| {
                w.matmul(&xt)?.t()?.contiguous()?;
                Ok(())
            })?;
            let blas_s = median_s(|| {
                let p = Product {
                    trans_a: false,
                    trans_b: true,
                    m,
                    n,
                    k,
                };
                blas::sgemm_new(p, &xv, &wv).ok_or("blas")?;
                Ok(())
            })?;
            let ours = median_s(|| {
                few_rows::matmul_xwt(&xv, &wv, m, n, k).ok_or("few_rows")?;
                Ok(())
            })?;
            println!(
                "                            {m:>5} {k:>5} {n:>6}  {:>8.1} {:>8.1} {:>8.1}  {:>5.2}x",
                flop / swapped,
                flop / blas_s,
                flop / ours,
                swapped.min(blas_s) / ours
            );
        }
    }
    Ok(())
}
