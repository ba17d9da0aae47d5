//! The BLAS path of the CPU's matrix products (oneDNN and OpenBLAS, each alone and as chosen per
//! shape) against candle's matmul: every transpose form, on
//! shapes that include one row and inner sizes that are no multiple of the kernels' widths; the
//! linear layer's two gradients against the composition's; sizes that do not fit are refused.
//! Where neither library is installed the product tests say so and check nothing (`.ci/run` and
//! the README's set-up install both).

use candle_core::{DType, Device, Tensor, Var};
use tempering_model::ops::blas::{self, Product};
use tempering_model::ops::{self, composed};

type Res = Result<(), Box<dyn std::error::Error>>;

fn rand(dims: &[usize], seed: u64) -> candle_core::Result<Tensor> {
    let n: usize = dims.iter().product();
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

fn skip() -> bool {
    if blas::available() {
        return false;
    }
    eprintln!("skipped: {}", blas::describe());
    true
}

/// Entries are sums of `k` products of values in [-1, 1]; f32 rounding in any summation order
/// stays far below this for `k` up to a few thousand.
const TOL: f32 = 1e-4;

#[test]
fn products_match_candle_in_every_transpose_form() -> Res {
    if skip() {
        return Ok(());
    }
    let shapes = [
        (1, 1, 1),
        (1, 576, 576),
        (1, 7, 33),
        (3, 5, 17),
        (8, 192, 576),
        (17, 31, 1),
        (64, 129, 45),
        (130, 257, 577),
    ];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let seed = 10 * i as u64 + 2 * trans_a as u64 + trans_b as u64;
            let a = rand(&if trans_a { [k, m] } else { [m, k] }, seed)?;
            let b = rand(&if trans_b { [n, k] } else { [k, n] }, seed + 1000)?;
            let want = {
                let oa = if trans_a { a.t()? } else { a.clone() };
                let ob = if trans_b { b.t()? } else { b.clone() };
                oa.contiguous()?.matmul(&ob.contiguous()?)?
            };
            let p = Product {
                trans_a,
                trans_b,
                m,
                n,
                k,
            };
            let av = a.flatten_all()?.to_vec1::<f32>()?;
            let bv = b.flatten_all()?.to_vec1::<f32>()?;
            let got = blas::sgemm_new(p, &av, &bv).ok_or("the BLAS refused a valid product")?;
            let got = Tensor::from_vec(got, (m, n), &Device::Cpu)?;
            let d = max_abs_diff(&got, &want)?;
            assert!(d < TOL, "{p:?}: differs from candle by {d:e}");
            // Each library on its own, into an output full of NaN: with nothing to add (beta 0)
            // neither may read it.
            for backend in blas::backends() {
                let mut c = vec![f32::NAN; m * n];
                assert!(
                    blas::sgemm_on(backend, p, &av, &bv, &mut c),
                    "{backend:?} refused {p:?}"
                );
                let got = Tensor::from_vec(c, (m, n), &Device::Cpu)?;
                let d = max_abs_diff(&got, &want)?;
                assert!(d < TOL, "{backend:?}, {p:?}: differs from candle by {d:e}");
            }
        }
    }
    Ok(())
}

#[test]
fn sizes_that_do_not_fit_are_refused_and_the_output_left_alone() -> Res {
    let p = Product {
        trans_a: false,
        trans_b: true,
        m: 2,
        n: 3,
        k: 4,
    };
    let (a, b) = (vec![1f32; 8], vec![1f32; 12]);
    let mut c = vec![7f32; 6];
    assert!(!blas::sgemm(p, &a[..7], &b, &mut c), "a too short");
    assert!(!blas::sgemm(p, &a, &b, &mut c[..5]), "c too short");
    let zero = Product { k: 0, ..p };
    assert!(!blas::sgemm(zero, &[], &[], &mut c), "an empty inner size");
    assert!(c.iter().all(|&x| x == 7.0));
    if blas::available() {
        assert!(blas::sgemm(p, &a, &b, &mut c));
        assert!(c.iter().all(|&x| x == 4.0), "{c:?}");
        assert!(blas::sgemm_add(p, &a, &b, &mut c));
        assert!(c.iter().all(|&x| x == 8.0), "adds to the output: {c:?}");
    }
    for backend in blas::backends() {
        assert!(
            !blas::sgemm_on(backend, p, &a[..7], &b, &mut c),
            "{backend:?}: a too short"
        );
    }
    Ok(())
}

/// `ops::linear` (both gradients) against candle's matmul, at one row (the dot kernel), a few rows
/// and many, with narrow weights (candle's kernels) and wide ones (OpenBLAS where loaded), in f32.
#[test]
fn linear_gives_both_gradients_as_matmul_does() -> Res {
    for (rows, k, n) in [
        (1, 24, 10),
        (6, 33, 20),
        (150, 64, 48),
        (1, 200, 256),
        (150, 200, 256),
    ] {
        let x = Var::from_tensor(&rand(&[rows, k], rows as u64)?)?;
        let w = Var::from_tensor(&rand(&[n, k], 7 + rows as u64)?)?;
        let proj = rand(&[rows, n], 99)?;
        let y = ops::linear(x.as_tensor(), w.as_tensor())?;
        let y_ref = composed::linear(x.as_tensor(), w.as_tensor())?;
        assert!(max_abs_diff(&y, &y_ref)? < TOL);
        let g = (y * &proj)?.sum_all()?.backward()?;
        let g_ref = (y_ref * &proj)?.sum_all()?.backward()?;
        for (name, v) in [("x", &x), ("w", &w)] {
            let got = g
                .get(v.as_tensor())
                .ok_or(format!("no gradient for {name}"))?;
            let want = g_ref.get(v.as_tensor()).ok_or("no reference gradient")?;
            let d = max_abs_diff(got, want)?;
            assert!(d < TOL, "rows {rows}: d{name} differs by {d:e}");
            assert!(max_abs_diff(got, &got.zeros_like()?)? > 0.0);
        }
    }
    Ok(())
}

/// The f64 path (candle's kernels) against central finite differences, both gradients.
#[test]
fn linear_backward_matches_finite_differences() -> Res {
    let x = rand(&[4, 6], 3)?.to_dtype(DType::F64)?;
    let w = rand(&[5, 6], 4)?.to_dtype(DType::F64)?;
    let proj = rand(&[4, 5], 5)?.to_dtype(DType::F64)?;
    let f = |x: &Tensor, w: &Tensor| -> candle_core::Result<f64> {
        (ops::linear(x, w).map_err(candle_core::Error::wrap)? * &proj)?
            .sum_all()?
            .to_scalar::<f64>()
    };
    let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
    let grads = (ops::linear(xv.as_tensor(), wv.as_tensor())? * &proj)?
        .sum_all()?
        .backward()?;
    let eps = 1e-6;
    for (which, t) in [(0, &x), (1, &w)] {
        let flat = t.flatten_all()?.to_vec1::<f64>()?;
        let var = if which == 0 { &xv } else { &wv };
        let g = grads
            .get(var.as_tensor())
            .ok_or("missing gradient")?
            .flatten_all()?
            .to_vec1::<f64>()?;
        for i in 0..flat.len() {
            let mut up = flat.clone();
            let mut down = flat.clone();
            up[i] += eps;
            down[i] -= eps;
            let up = Tensor::from_vec(up, t.dims(), &Device::Cpu)?;
            let down = Tensor::from_vec(down, t.dims(), &Device::Cpu)?;
            let fd = if which == 0 {
                (f(&up, &w)? - f(&down, &w)?) / (2.0 * eps)
            } else {
                (f(&x, &up)? - f(&x, &down)?) / (2.0 * eps)
            };
            assert!(
                (fd - g[i]).abs() < 1e-6,
                "input {which} entry {i}: {fd} vs {}",
                g[i]
            );
        }
    }
    Ok(())
}
