//! Runs a CPU loop compiled for the widest vectors the CPU has (AVX-512 where detected at run
//! time), computing exactly what the baseline build computes. The crate is built for the x86-64
//! baseline (SSE2), so without this the compiler vectorises the fused ops' loops four lanes wide.
//! Rust never contracts `a * b + c` into a fused multiply-add and never reorders a float sum, so the
//! same loop compiled for 512-bit vectors does every lane's arithmetic in the same order and with
//! the same rounding, only more lanes at a time: results are identical to the bit (the unit test
//! below and the ops' tests check it). Knows nothing of what the loops compute.
//!
//! `TEMPER_SIMD=baseline` keeps the baseline code (for A/B measurements).

use std::sync::atomic::{AtomicU8, Ordering};

const UNSET: u8 = 0;
const BASELINE: u8 = 1;
const WIDE: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNSET);

/// Whether [`wide`] runs its closure compiled for AVX-512.
pub fn wide_available() -> bool {
    match MODE.load(Ordering::Relaxed) {
        UNSET => {
            let off = std::env::var("TEMPER_SIMD").is_ok_and(|v| v == "baseline");
            let mode = if !off && detected() { WIDE } else { BASELINE };
            MODE.store(mode, Ordering::Relaxed);
            mode == WIDE
        }
        m => m == WIDE,
    }
}

fn detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// For tests: `f` on the baseline code (`true`) or the detected one. The mode is global, so the
/// tests that set it take turns (another test running meanwhile computes the same bits either way).
#[cfg(test)]
pub(crate) fn with_mode<R>(baseline: bool, f: impl FnOnce() -> R) -> R {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mode = if !baseline && detected() {
        WIDE
    } else {
        BASELINE
    };
    MODE.store(mode, Ordering::Relaxed);
    assert_eq!(wide_available(), mode == WIDE);
    f()
}

/// Runs `f` compiled for AVX-512 where the CPU has it, else as built. Only code the compiler
/// inlines into the wide variant gains: a short loop written in the closure does; a large body, or
/// a closure called from more than one place, stays baseline code (use [`wide_fn!`] for those).
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if wide_available() {
        // SAFETY: the features the function enables were detected on this CPU.
        return unsafe { avx512(f) };
    }
    f()
}

/// Defines a function twice, once compiled for AVX-512 and once as built, and makes the named one
/// call whichever the CPU runs ([`wide_available`]). Everything written inside the body, closures
/// handed to rayon included, is compiled for the wide variant (a closure inherits the target
/// features of the function it is written in); functions it calls gain only where inlined.
/// Generic parameters take one bound each: `wide_fn! { fn f<T: Real>(x: &[T]) -> T { .. } }`.
#[macro_export]
#[doc(hidden)]
macro_rules! wide_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $(<$($g:ident : $bound:path),+>)?
        ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn wide $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? $body
                if $crate::ops::simd::wide_available() {
                    // SAFETY: the features `wide` is compiled for were detected on this CPU.
                    return unsafe { wide $(::<$($g),+>)? ($($arg),*) };
                }
            }
            $body
        }
    };
}
pub use wide_fn;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kernels::{dot, exp_f32, max, sum, sum_exp};

    fn work(xs: &[f32]) -> Vec<u32> {
        let mut out = vec![
            sum(xs).to_bits(),
            dot(xs, &xs[1..]).to_bits(),
            max(xs).to_bits(),
            sum_exp(xs, 0.5).to_bits(),
        ];
        out.extend(
            xs.iter()
                .map(|&x| (exp_f32(x) * 0.3 + x / 7.0).sqrt().to_bits()),
        );
        out
    }

    #[test]
    fn wide_code_computes_the_same_bits_as_the_baseline() {
        let xs: Vec<f32> = (0..1037)
            .map(|i| ((i * 7919 % 1000) as f32 / 97.0).sin() * 3.0)
            .collect();
        let base = with_mode(true, || wide(|| work(&xs)));
        let fast = with_mode(false, || wide(|| work(&xs)));
        assert_eq!(base, fast);
    }

    /// Forward and backward of the fused ops the model trains through, every output's bits.
    fn fused_ops_bits() -> Vec<Vec<u32>> {
        use crate::ops;
        use candle_core::{Device, Tensor, Var};
        let dev = Device::Cpu;
        let filled = |shape: &[usize], seed: u32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| {
                    (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0
                })
                .collect();
            Var::from_vec(v, shape, &dev).unwrap()
        };
        let (b, g, r, s, d) = (2, 2, 6, 6, 20);
        let x = filled(&[b, 3, s, d], 1);
        let w = filled(&[d], 2);
        let q = filled(&[b, g, r, d], 3);
        let k = filled(&[b, g, s, d], 4);
        let v = filled(&[b, g, s, d], 5);
        let gate = filled(&[b, 37], 6);
        let up = filled(&[b, 37], 7);
        let cos = Tensor::arange(0f32, (s * d / 2) as f32, &dev)
            .unwrap()
            .reshape((s, d / 2))
            .unwrap()
            .cos()
            .unwrap();
        let sin = cos.sin().unwrap();
        let mask: Vec<f32> = (0..b * 3 * s)
            .map(|i| if i % s > i / s % 3 + 3 { -1e9 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (b, 3, s), &dev).unwrap();
        let outs = [
            ops::rms_norm(&x, &w, 1e-5).unwrap(),
            ops::rope(&x, &cos, &sin).unwrap(),
            ops::attention(&q, &k, &v, &mask, 0.3).unwrap(),
            ops::silu_mul(&gate, &up).unwrap(),
            ops::softmax_last_dim(&x).unwrap(),
            ops::log_softmax_last_dim(&x).unwrap(),
            ops::token_logprobs(
                &x.reshape((b * 3 * s, d)).unwrap(),
                &Tensor::from_vec(
                    (0..(b * 3 * s) as u32)
                        .map(|i| i * 7 % d as u32)
                        .collect::<Vec<_>>(),
                    b * 3 * s,
                    &dev,
                )
                .unwrap(),
            )
            .unwrap(),
        ];
        let mut loss = Tensor::new(0f32, &dev).unwrap();
        for o in &outs {
            let wsum = (o * o.sin().unwrap()).unwrap().sum_all().unwrap();
            loss = (loss + wsum).unwrap();
        }
        let grads = loss.backward().unwrap();
        let mut bits: Vec<Vec<u32>> = outs
            .iter()
            .map(|o| o.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .chain([&x, &w, &q, &k, &v, &gate, &up].iter().map(|t| {
                grads
                    .get(t)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            }))
            .map(|v| v.into_iter().map(f32::to_bits).collect())
            .collect();
        bits.push(vec![loss.to_scalar::<f32>().unwrap().to_bits()]);
        bits
    }

    #[test]
    fn fused_ops_give_the_same_bits_wide_and_baseline() {
        let base = with_mode(true, fused_ops_bits);
        let fast = with_mode(false, fused_ops_bits);
        assert_eq!(base, fast);
    }
}
