//! Conjugate gradient for `A x = b` with `A` symmetric positive definite and given only through
//! products `A v` (TRPO's Fisher-vector products), on flat `f64` vectors. Knows numbers only.

/// The solution after at most `iterations` steps, the steps taken and the final residual norm.
#[derive(Debug, Clone)]
pub struct CgSolution {
    pub x: Vec<f64>,
    pub iterations: usize,
    pub residual_norm: f64,
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Solves `A x = b` from `x = 0`, stopping after `iterations` steps or once `|r|^2 < tolerance`.
pub fn conjugate_gradient<E>(
    mut product: impl FnMut(&[f64]) -> Result<Vec<f64>, E>,
    b: &[f64],
    iterations: usize,
    tolerance: f64,
) -> Result<CgSolution, E> {
    let mut x = vec![0.0; b.len()];
    let mut r = b.to_vec();
    let mut p = b.to_vec();
    let mut rr = dot(&r, &r);
    let mut done = 0;
    for _ in 0..iterations {
        if rr < tolerance {
            break;
        }
        let ap = product(&p)?;
        let pap = dot(&p, &ap);
        if pap.is_nan() || pap <= 0.0 {
            // Not positive definite along p (or a numerical breakdown): keep what we have.
            break;
        }
        let alpha = rr / pap;
        for i in 0..x.len() {
            x[i] += alpha * p[i];
            r[i] -= alpha * ap[i];
        }
        done += 1;
        let new_rr = dot(&r, &r);
        let beta = new_rr / rr;
        rr = new_rr;
        for i in 0..p.len() {
            p[i] = r[i] + beta * p[i];
        }
    }
    Ok(CgSolution {
        x,
        iterations: done,
        residual_norm: rr.sqrt(),
    })
}
