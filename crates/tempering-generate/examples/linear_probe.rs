//! Profile probe: time of the frozen linear op (`ops::linear_frozen`, candle gemm) at SmolLM2's
//! decode shapes against two alternatives, to show where decode time goes: `perf` puts most of a
//! decode step in gemm's operand packing, which copies the whole weight on every call when `M` is
//! small. Usage: cargo run --example linear_probe

use std::time::Instant;

use candle_core::{Device, Tensor};

fn time(f: impl Fn() -> Tensor, reps: usize) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(f());
    }
    t.elapsed().as_secs_f64() / reps as f64 * 1e3
}

/// y[m, n] = dot(x[m], w[n]): the weight streamed once, never packed.
fn rows_dot(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for j in 0..n {
        let wr = &w[j * k..(j + 1) * k];
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let mut acc = [0f32; 8];
            for (wc, xc) in wr.chunks_exact(8).zip(xr.chunks_exact(8)) {
                for l in 0..8 {
                    acc[l] += wc[l] * xc[l];
                }
            }
            y[i * n + j] = acc.iter().sum();
        }
    }
    y
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    for (n, k) in [(1536usize, 576usize), (576, 1536), (49152, 576)] {
        let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
        for m in [1usize, 8, 32] {
            let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
            let reps = if n > 10000 { 5 } else { 50 };
            let a = time(
                || tempering_model::ops::linear_frozen(&x, &w).unwrap(),
                reps,
            );
            let b = time(|| w.matmul(&x.t().unwrap()).unwrap().t().unwrap(), reps);
            let (xv, wv) = (
                x.flatten_all()?.to_vec1::<f32>()?,
                w.flatten_all()?.to_vec1::<f32>()?,
            );
            let c = time(
                || Tensor::from_vec(rows_dot(&xv, &wv, m, n, k), (m, n), &Device::Cpu).unwrap(),
                reps,
            );
            println!("N={n:>5} K={k:>4} M={m:>2}: linear_frozen {a:8.3} ms   w@x^T {b:8.3} ms   rows_dot(1 thread) {c:8.3} ms");
        }
    }
    Ok(())
}
