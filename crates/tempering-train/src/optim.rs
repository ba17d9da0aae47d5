//! The optimiser and the gradient arithmetic around it: AdamW with decoupled weight decay and f32
//! moments, the global gradient norm, and in-place gradient accumulation. On the CPU with f32 weights
//! each step is one fused, row-parallel pass per parameter that updates the weight in place (no
//! temporaries); elsewhere it falls back to candle ops. Knows parameters and gradients only: nothing of
//! models, losses or data.

use std::cell::RefCell;

use candle_core::{
    backend::BackendStorage, CpuStorage, DType, InplaceOp2, Layout, Storage, Tensor, Var,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tempering_model::ops::simd::wide;

use crate::error::{Result, TrainError};

/// Elements per parallel work item: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (`p -= lr * weight_decay * p`), applied to matrices only: biases and
    /// norm weights are not decayed (as the HF Trainer does).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments of one parameter, always f32.
enum Moments {
    /// CPU: plain vectors updated in place by the fused step.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Other devices: tensors replaced at every step.
    Device { m: Tensor, v: Tensor },
}

/// One trainable parameter with its optimiser state.
pub struct Param {
    pub name: String,
    pub var: Var,
    moments: Moments,
    decay: bool,
}

/// AdamW over named parameters (PyTorch's update rule, `foreach` semantics).
pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<Param>,
    /// Optimiser steps taken (the `t` of the bias corrections).
    pub steps: u64,
}

fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                let moments = if fused(var.as_tensor()) {
                    Moments::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    let z = Tensor::zeros(var.shape(), DType::F32, var.device())?;
                    Moments::Device { m: z.clone(), v: z }
                };
                let decay = var.rank() >= 2;
                Ok(Param {
                    name,
                    var,
                    moments,
                    decay,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            config,
            params,
            steps: 0,
        })
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// One update with learning rate `lr`. `grads[i]` belongs to `params()[i]` and is multiplied by
    /// `grad_scale` first (normalisation and clipping folded in); a parameter without a gradient is
    /// left alone, moments included, as PyTorch skips parameters whose `.grad` is `None`.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(TrainError::Param {
                name: "<all>".into(),
                msg: format!(
                    "{} gradients for {} parameters",
                    grads.len(),
                    self.params.len()
                ),
            });
        }
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            if g.shape() != p.var.shape() {
                return Err(TrainError::Param {
                    name: p.name.clone(),
                    msg: format!(
                        "gradient of shape {:?} for a weight of shape {:?}",
                        g.dims(),
                        p.var.dims()
                    ),
                });
            }
            let wd = if p.decay { c.weight_decay } else { 0.0 };
            match &mut p.moments {
                Moments::Host { m, v } => {
                    let g = g.contiguous()?;
                    let kernel = AdamWKernel {
                        m: RefCell::new(m),
                        v: RefCell::new(v),
                        beta1: c.beta1 as f32,
                        beta2: c.beta2 as f32,
                        eps: c.eps as f32,
                        decay: (1.0 - lr * wd) as f32,
                        step_size: (lr / bc1) as f32,
                        bc2_sqrt: bc2.sqrt() as f32,
                        scale: grad_scale as f32,
                    };
                    p.var.as_tensor().inplace_op2(&g, &kernel)?;
                }
                Moments::Device { m, v } => {
                    let dt = p.var.dtype();
                    let g = (g.to_dtype(DType::F32)? * grad_scale)?;
                    *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let w = (p.var.to_dtype(DType::F32)? * (1.0 - lr * wd))?;
                    let denom = ((&*v / bc2)?.sqrt()? + c.eps)?;
                    let w = (w - ((&*m / denom)? * (lr / bc1))?)?;
                    p.var.set(&w.to_dtype(dt)?)?;
                }
            }
        }
        Ok(())
    }

    /// The moments of parameter `i` as f32 tensors on the CPU (for checkpoints).
    pub fn moments(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let p = &self.params[i];
        Ok(match &p.moments {
            Moments::Host { m, v } => (
                Tensor::from_slice(m, p.var.shape(), &candle_core::Device::Cpu)?,
                Tensor::from_slice(v, p.var.shape(), &candle_core::Device::Cpu)?,
            ),
            Moments::Device { m, v } => (
                m.to_device(&candle_core::Device::Cpu)?,
                v.to_device(&candle_core::Device::Cpu)?,
            ),
        })
    }

    /// Restores the moments of parameter `i` from a checkpoint.
    pub fn set_moments(&mut self, i: usize, m_new: &Tensor, v_new: &Tensor) -> Result<()> {
        let p = &mut self.params[i];
        for t in [m_new, v_new] {
            if t.shape() != p.var.shape() {
                return Err(TrainError::Param {
                    name: p.name.clone(),
                    msg: format!(
                        "saved moment of shape {:?} for a weight of shape {:?}",
                        t.dims(),
                        p.var.dims()
                    ),
                });
            }
        }
        match &mut p.moments {
            Moments::Host { m, v } => {
                *m = m_new.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                *v = v_new.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            }
            Moments::Device { m, v } => {
                *m = m_new.to_dtype(DType::F32)?.to_device(p.var.device())?;
                *v = v_new.to_dtype(DType::F32)?.to_device(p.var.device())?;
            }
        }
        Ok(())
    }
}

/// PyTorch's AdamW update, element by element, in f32.
struct AdamWKernel<'a> {
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    scale: f32,
}

/// The kernel's scalars, shared by the worker threads.
#[derive(Clone, Copy)]
struct Coefs {
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    scale: f32,
}

fn contiguous_f32<'s>(s: &'s CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'s [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(x), Some((a, b))) => Ok(&x[a..b]),
        _ => candle_core::bail!(
            "adamw: {what} must be a contiguous f32 tensor ({:?})",
            s.dtype()
        ),
    }
}

impl InplaceOp2 for AdamWKernel<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = contiguous_f32(s2, l2, "the gradient")?;
        let (CpuStorage::F32(w), Some((a, b))) = (s1, l1.contiguous_offsets()) else {
            candle_core::bail!("adamw: the weight must be a contiguous f32 tensor")
        };
        let w = &mut w[a..b];
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if g.len() != w.len() || m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!("adamw: weight, gradient and moments differ in size")
        }
        let k = Coefs {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            decay: self.decay,
            step_size: self.step_size,
            bc2_sqrt: self.bc2_sqrt,
            scale: self.scale,
        };
        w.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((w, g), m), v)| {
                wide(|| {
                    for i in 0..w.len() {
                        let gi = g[i] * k.scale;
                        m[i] = k.beta1 * m[i] + (1.0 - k.beta1) * gi;
                        v[i] = k.beta2 * v[i] + (1.0 - k.beta2) * gi * gi;
                        let denom = v[i].sqrt() / k.bc2_sqrt + k.eps;
                        w[i] = w[i] * k.decay - k.step_size * m[i] / denom;
                    }
                })
            });
        Ok(())
    }
}

/// Sum of squares of a tensor's elements, in f64, in a fixed order (so it is reproducible).
pub fn sum_squares(t: &Tensor) -> Result<f64> {
    if fused(t) {
        let t = t.contiguous()?;
        let (s, l) = t.storage_and_layout();
        if let Storage::Cpu(cs) = &*s {
            let x = contiguous_f32(cs, l, "the gradient")?;
            let parts: Vec<f64> = x
                .par_chunks(CHUNK * SIDE_BY_SIDE)
                .flat_map_iter(chunk_sums_of_squares)
                .collect();
            return Ok(parts.iter().sum());
        }
    }
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// Chunks of [`CHUNK`] whose sums run side by side in [`chunk_sums_of_squares`].
const SIDE_BY_SIDE: usize = 8;

/// Each [`CHUNK`] of `group`'s sum of squares in f64, its elements added in order from zero. A
/// full group's chunks are summed side by side, one step of each in turn: eight independent
/// chains where one chain of dependent f64 adds bounded the loop (the gradient norm was 7% of a
/// SmolLM2 SFT step), with each chunk's additions, and so its bits, unchanged.
fn chunk_sums_of_squares(group: &[f32]) -> Vec<f64> {
    let square = |v: f32| (v as f64) * (v as f64);
    if group.len() != CHUNK * SIDE_BY_SIDE {
        return group
            .chunks(CHUNK)
            .map(|c| c.iter().map(|&v| square(v)).sum::<f64>())
            .collect();
    }
    let chunks: [&[f32]; SIDE_BY_SIDE] =
        std::array::from_fn(|j| &group[j * CHUNK..(j + 1) * CHUNK]);
    let mut acc = [0f64; SIDE_BY_SIDE];
    for i in 0..CHUNK {
        for (a, c) in acc.iter_mut().zip(&chunks) {
            *a += square(c[i]);
        }
    }
    acc.to_vec()
}

/// `acc += g`, in place when both live on the CPU in f32 (and `acc` is not shared), else by
/// replacing `acc`.
pub fn accumulate(acc: &mut Tensor, g: &Tensor) -> Result<()> {
    if fused(acc) && fused(g) && acc.is_contiguous() && acc.shape() == g.shape() {
        let g = g.contiguous()?;
        acc.inplace_op2(&g, &AddInPlace)?;
        return Ok(());
    }
    *acc = (&*acc + g)?;
    Ok(())
}

struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "add_in_place"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = contiguous_f32(s2, l2, "the gradient")?;
        let (CpuStorage::F32(a), Some((lo, hi))) = (s1, l1.contiguous_offsets()) else {
            candle_core::bail!("add_in_place: the accumulator must be a contiguous f32 tensor")
        };
        a[lo..hi]
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(a, g)| wide(|| a.iter_mut().zip(g).for_each(|(a, g)| *a += g)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// PyTorch's AdamW on scalars, written out.
    fn reference(w0: f64, grads: &[f64], lr: f64, c: AdamWConfig) -> f64 {
        let (mut w, mut m, mut v) = (w0, 0.0, 0.0);
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            w *= 1.0 - lr * c.weight_decay;
            m = c.beta1 * m + (1.0 - c.beta1) * g;
            v = c.beta2 * v + (1.0 - c.beta2) * g * g;
            let denom = (v.sqrt() / (1.0 - c.beta2.powi(t)).sqrt()) + c.eps;
            w -= lr / (1.0 - c.beta1.powi(t)) * m / denom;
        }
        w
    }

    fn run(device_path: bool) -> Vec<f32> {
        let c = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let w0 = [0.5f32, -1.0, 2.0, 0.0, 3.0, -0.25];
        let var = Var::from_slice(&w0, (2, 3), &Device::Cpu).unwrap();
        let var = if device_path {
            Var::from_tensor(&var.to_dtype(DType::F64).unwrap()).unwrap()
        } else {
            var
        };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], c).unwrap();
        for s in 0..3 {
            let g: Vec<f32> = (0..6)
                .map(|i| (i as f32 - 2.0) * (s as f32 + 1.0))
                .collect();
            let g = Tensor::from_vec(g, (2, 3), &Device::Cpu)
                .unwrap()
                .to_dtype(var.dtype())
                .unwrap();
            // A scale of 0.5 on a doubled gradient is the plain gradient.
            opt.step(&[Some((g * 2.0).unwrap())], 0.01, 0.5).unwrap();
        }
        var.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn adamw_matches_pytorch_update_rule_on_both_paths() {
        let c = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let w0 = [0.5f64, -1.0, 2.0, 0.0, 3.0, -0.25];
        let expected: Vec<f64> = (0..6)
            .map(|i| {
                let grads: Vec<f64> = (0..3)
                    .map(|s| (i as f64 - 2.0) * (s as f64 + 1.0))
                    .collect();
                reference(w0[i], &grads, 0.01, c)
            })
            .collect();
        for path in [false, true] {
            let got = run(path);
            for (g, e) in got.iter().zip(&expected) {
                assert!((*g as f64 - e).abs() < 1e-6, "path {path}: {g} vs {e}");
            }
        }
        // The weights did move (and the element with zero gradient only decayed).
        let got = run(false);
        assert!((got[0] as f64 - 0.5).abs() > 1e-3);
        assert!((got[2] as f64 - 2.0 * (1.0 - 0.001f64).powi(3)).abs() < 1e-6);
    }

    #[test]
    fn vectors_are_not_decayed_and_missing_gradients_skip() {
        let c = AdamWConfig {
            weight_decay: 0.5,
            ..Default::default()
        };
        let b = Var::from_slice(&[1.0f32, 2.0], 2, &Device::Cpu).unwrap();
        let w = Var::from_slice(&[1.0f32, 2.0], (1, 2), &Device::Cpu).unwrap();
        let mut opt =
            AdamW::new(vec![("b".into(), b.clone()), ("w".into(), w.clone())], c).unwrap();
        let zero = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        opt.step(&[Some(zero), None], 0.1, 1.0).unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(
            w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 2.0]
        );
    }

    #[test]
    fn chunks_summed_side_by_side_give_each_chunks_own_sum() {
        let n = CHUNK * SIDE_BY_SIDE * 2 + 12_345;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761) >> 8) as f32 * 1e-7 - 0.8)
            .collect();
        let t = Tensor::from_vec(x.clone(), n, &candle_core::Device::Cpu).unwrap();
        // The sum as it was: chunk by chunk, each one sequential from zero, then the chunks in order.
        let parts: Vec<f64> = x
            .chunks(CHUNK)
            .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .collect();
        let want: f64 = parts.iter().sum();
        assert_eq!(sum_squares(&t).unwrap().to_bits(), want.to_bits());
    }

    #[test]
    fn accumulate_and_sum_squares() {
        let mut acc = Tensor::from_slice(&[1.0f32, 2.0, 3.0], 3, &Device::Cpu).unwrap();
        let g = Tensor::from_slice(&[0.5f32, -2.0, 1.0], 3, &Device::Cpu).unwrap();
        accumulate(&mut acc, &g).unwrap();
        assert_eq!(acc.to_vec1::<f32>().unwrap(), vec![1.5, 0.0, 4.0]);
        assert_eq!(sum_squares(&acc).unwrap(), 1.5 * 1.5 + 16.0);
        let acc64 = acc.to_dtype(DType::F64).unwrap();
        assert_eq!(sum_squares(&acc64).unwrap(), 1.5 * 1.5 + 16.0);
    }
}
