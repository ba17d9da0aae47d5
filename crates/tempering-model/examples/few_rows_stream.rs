//! How fast `ops::few_rows` streams a decode step's weights: SmolLM2-135M's 211 matrices (30
//! layers of q, k, v, o, gate, up, down, then the 49152-row LM head), bf16 or f32, one row of `x`
//! each, all distinct memory, on a rayon worker as `temper` runs. Prints milliseconds per step,
//! GB/s, and the step rate this would allow if the products were all a decode step did. `blas`
//! runs the same f32 products through `ops::blas` (oneDNN / OpenBLAS) instead, for comparison.
//!
//!   cargo run --release -p tempering-model --example few_rows_stream [f32|bf16|blas] [ROWS]

use std::time::Instant;
use tempering_model::ops::{blas, few_rows};

// temper's allocator: its large buffers start on 64-byte lines, as the model's weights and
// activations do there. (With the system allocator's 16-byte-aligned buffers every 512-bit load
// splits two cache lines: the kernel measured 140-183 GFLOP/s in cache against 222-239 aligned.)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let through_blas = mode == "blas";
    let f32_weights = mode == "f32" || through_blas;
    let rows: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .expect("a rayon pool");
    pool.install(|| run(f32_weights, through_blas, rows));
}

fn run(f32_weights: bool, through_blas: bool, m: usize) {
    if !few_rows::available() {
        println!("the few-row kernel needs AVX-512F, VL and BW: nothing to measure");
        return;
    }
    let mut shapes = Vec::new();
    for _ in 0..30 {
        shapes.extend([
            (576usize, 576usize),
            (192, 576),
            (192, 576),
            (576, 576),
            (1536, 576),
            (1536, 576),
            (576, 1536),
        ]);
    }
    shapes.push((49152, 576));
    let elem = if f32_weights { 4 } else { 2 };
    let bytes: usize = shapes.iter().map(|&(n, k)| n * k * elem).sum();
    // Values near 1 (bf16 0x3f80..), distinct per element so nothing is trivially cached.
    let bits = |n: usize| -> Vec<u16> { (0..n).map(|i| 0x3f80 + (i % 7) as u16).collect() };
    let w16: Vec<Vec<u16>> = shapes.iter().map(|&(n, k)| bits(n * k)).collect();
    let w32: Vec<Vec<f32>> = if f32_weights {
        w16.iter()
            .map(|w| {
                w.iter()
                    .map(|&b| f32::from_bits(u32::from(b) << 16))
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let x = vec![0.5f32; m * 1536];
    let step = || {
        for (i, &(n, k)) in shapes.iter().enumerate() {
            let y = if through_blas {
                let p = blas::Product {
                    trans_a: false,
                    trans_b: true,
                    m,
                    n,
                    k,
                };
                blas::sgemm_new(p, &x[..m * k], &w32[i])
            } else if f32_weights {
                few_rows::matmul_xwt(&x[..m * k], &w32[i], m, n, k)
            } else {
                few_rows::matmul_xwt_bf16(&x[..m * k], &w16[i], m, n, k)
            };
            std::hint::black_box(y);
        }
    };
    step();
    if through_blas {
        println!("{}", blas::describe());
    }
    println!(
        "{} weights, {m} row(s), {} threads",
        if f32_weights { "f32" } else { "bf16" },
        rayon::current_num_threads()
    );
    for round in 0..3 {
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            step();
        }
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "round {round}: {:.2} ms a step, {:.1} GB/s, {:.0} steps/s",
            dt * 1e3,
            bytes as f64 / dt / 1e9,
            1.0 / dt
        );
    }
}
