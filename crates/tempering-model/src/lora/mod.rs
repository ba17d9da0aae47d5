//! LoRA adapters on the decoder's linear layers, as PEFT defines them: the configuration, PEFT's
//! initialisation (A kaiming-uniform with `a = sqrt(5)`, B zeros), the low-rank update
//! `(dropout(x) A^T B^T) * alpha / r` added to a frozen base, seeded dropout for training, merging into
//! the base weights, switching adapters off (the reference model, sharing every weight), and PEFT's
//! adapter files (`adapter_config.json`, `adapter_model.safetensors` with PEFT's tensor names).
//!
//! It knows the decoder's module names and PEFT's on-disk format. It knows nothing of optimisers,
//! training loops or schedules: the trainer receives the adapter's `Var`s and, for dropout, a
//! [`DropoutRng`] it owns and checkpoints.
//!
//! This file holds the pieces (targets, configuration, [`LoraLinear`], dropout); `attach` puts
//! adapters on a [`crate::Transformer`] (adding, loading, merging, switching off) and `peft` reads and writes
//! PEFT's adapter directories.

mod attach;
mod peft;

pub use peft::{load_peft, save_peft, PeftAdapter};

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::rng::SplitMix64;
use crate::transformer::{Layer, Linear};

/// The adapter's configuration file in a PEFT adapter directory.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights in a PEFT adapter directory.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A linear layer of the decoder that can carry an adapter, by its PEFT `target_modules` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    /// Every target, in the order adapters are created, listed and saved.
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The module's name as in PEFT's `target_modules`: `q_proj`, ..., `down_proj`.
    pub fn module_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The short name used on the command line: `q`, `k`, `v`, `o`, `gate`, `up`, `down`.
    pub fn short_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q",
            LoraTarget::K => "k",
            LoraTarget::V => "v",
            LoraTarget::O => "o",
            LoraTarget::Gate => "gate",
            LoraTarget::Up => "up",
            LoraTarget::Down => "down",
        }
    }

    /// The module's path inside a decoder layer: `self_attn.q_proj`, `mlp.down_proj`, ...
    pub fn layer_path(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
        }
    }

    /// A target from its short name (`q`) or PEFT module name (`q_proj`).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        LoraTarget::ALL
            .into_iter()
            .find(|t| t.short_name() == s || t.module_name() == s)
            .ok_or_else(|| {
                ModelError::config(
                    "lora_targets",
                    format!(
                        "`{s}` is not a LoRA target (expected some of q, k, v, o, gate, up, down, \
                         or their PEFT names q_proj ... down_proj, or `all`)"
                    ),
                )
            })
    }

    /// Targets from a comma-separated list (`q,k,v` or `q_proj,v_proj`); `all` (or PEFT's
    /// `all-linear`) means every target. Sorted, without repeats.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        if matches!(s.trim(), "all" | "all-linear") {
            return Ok(LoraTarget::ALL.to_vec());
        }
        let mut out = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(LoraTarget::parse)
            .collect::<Result<Vec<_>>>()?;
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(ModelError::config(
                "lora_targets",
                "no target given (expected e.g. `q,v` or `all`)",
            ));
        }
        Ok(out)
    }

    fn linear(self, layer: &Layer) -> &Linear {
        match self {
            LoraTarget::Q => &layer.self_attn.q_proj,
            LoraTarget::K => &layer.self_attn.k_proj,
            LoraTarget::V => &layer.self_attn.v_proj,
            LoraTarget::O => &layer.self_attn.o_proj,
            LoraTarget::Gate => &layer.mlp.gate_proj,
            LoraTarget::Up => &layer.mlp.up_proj,
            LoraTarget::Down => &layer.mlp.down_proj,
        }
    }

    fn linear_mut(self, layer: &mut Layer) -> &mut Linear {
        match self {
            LoraTarget::Q => &mut layer.self_attn.q_proj,
            LoraTarget::K => &mut layer.self_attn.k_proj,
            LoraTarget::V => &mut layer.self_attn.v_proj,
            LoraTarget::O => &mut layer.self_attn.o_proj,
            LoraTarget::Gate => &mut layer.mlp.gate_proj,
            LoraTarget::Up => &mut layer.mlp.up_proj,
            LoraTarget::Down => &mut layer.mlp.down_proj,
        }
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.module_name())
    }
}

impl FromStr for LoraTarget {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        LoraTarget::parse(s)
    }
}

/// PEFT's names of the A and B tensors of `target` in decoder layer `layer`, e.g.
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
pub fn peft_tensor_names(layer: usize, target: LoraTarget) -> (String, String) {
    let p = format!(
        "base_model.model.model.layers.{layer}.{}",
        target.layer_path()
    );
    (format!("{p}.lora_A.weight"), format!("{p}.lora_B.weight"))
}

/// What adapters to add: rank `r`, scale `alpha / r` (`alpha / sqrt(r)` with `use_rslora`),
/// dropout probability on the adapter's input during training, and the targeted layers.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<LoraTarget>,
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    /// r 8, alpha 16, dropout 0.05 on q and v (PEFT's default targets for Llama models).
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: vec![LoraTarget::Q, LoraTarget::V],
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn new(r: usize, alpha: f64, dropout: f64, targets: Vec<LoraTarget>) -> Self {
        LoraConfig {
            r,
            alpha,
            dropout,
            targets,
            use_rslora: false,
        }
    }

    /// The factor the low-rank product is multiplied by.
    pub fn scale(&self) -> f64 {
        lora_scale(self.alpha, self.r, self.use_rslora)
    }

    /// Checks every field; errors name the field (`lora_r`, `lora_alpha`, ...).
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(ModelError::config("lora_r", "must be at least 1"));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(ModelError::config(
                "lora_alpha",
                format!("must be a positive number, got {}", self.alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::config(
                "lora_dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        if self.targets.is_empty() {
            return Err(ModelError::config("lora_targets", "no target given"));
        }
        Ok(())
    }

    fn sorted_targets(&self) -> Vec<LoraTarget> {
        let mut t = self.targets.clone();
        t.sort();
        t.dedup();
        t
    }
}

fn lora_scale(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

/// The random source of LoRA dropout in training. Shared (clones draw from the same stream), seeded,
/// and its state can be read and restored so that a resumed run draws the same masks. Masks depend
/// only on the seed and the order of forward passes, not on the thread count.
#[derive(Clone, Debug)]
pub struct DropoutRng(Arc<Mutex<u64>>);

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        DropoutRng(Arc::new(Mutex::new(seed)))
    }
    /// The current state (to checkpoint).
    pub fn state(&self) -> u64 {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Restores a state returned by [`DropoutRng::state`].
    pub fn set_state(&self, state: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }
    /// A fresh seed for one mask.
    fn next_seed(&self) -> u64 {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut g = SplitMix64(*s);
        let out = g.next_u64();
        *s = g.0;
        out
    }
}

/// One adapter on a linear layer: `A` `[r, in]` and `B` `[out, r]` (tensors of `Var`s when created by
/// [`Transformer::add_lora`] or loaded), its `alpha`, and its dropout, applied only while a
/// [`DropoutRng`] is set (training); without one the forward is deterministic.
#[derive(Clone, Debug)]
pub struct LoraLinear {
    pub a: Tensor,
    pub b: Tensor,
    pub alpha: f64,
    pub use_rslora: bool,
    pub dropout: f64,
    pub dropout_rng: Option<DropoutRng>,
}

impl LoraLinear {
    pub fn rank(&self) -> usize {
        self.a.dims().first().copied().unwrap_or(0)
    }

    pub fn scale(&self) -> f64 {
        lora_scale(self.alpha, self.rank(), self.use_rslora)
    }

    /// The update `(dropout(x) A^T B^T) * scale` for `x` `[..., in]`: `[..., out]`, computed in
    /// PEFT's order (A first, then B, then the scale).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (k, rest) = dims
            .split_last()
            .ok_or_else(|| ModelError::Unsupported("LoRA on a scalar".into()))?;
        let m: usize = rest.iter().product();
        let mut x2 = x.reshape((m, *k))?;
        if let Some(rng) = &self.dropout_rng {
            if self.dropout > 0.0 {
                x2 = x2.mul(&dropout_mask(rng, self.dropout, m * k, (m, *k), x)?)?;
            }
        }
        let h = crate::ops::linear(&x2, &self.a)?;
        let y = (crate::ops::linear(&h, &self.b)? * self.scale())?;
        let mut out = rest.to_vec();
        out.push(self.b.dim(0)?);
        Ok(y.reshape(out)?)
    }

    /// `B A * scale` `[out, in]` in f32: what merging adds to the base weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let a = self.a.to_dtype(DType::F32)?;
        let b = self.b.to_dtype(DType::F32)?;
        Ok((b.matmul(&a)? * self.scale())?)
    }
}

/// Inverted-dropout mask: 0 with probability `p`, else `1 / (1 - p)`, in `like`'s dtype and device.
/// Chunks get their own seeds, so the mask does not depend on how rayon splits the work.
fn dropout_mask(
    rng: &DropoutRng,
    p: f64,
    n: usize,
    shape: (usize, usize),
    like: &Tensor,
) -> Result<Tensor> {
    const CHUNK: usize = 1 << 14;
    let seed = rng.next_seed();
    let keep = (1.0 / (1.0 - p)) as f32;
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut g = SplitMix64(seed ^ (c as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        for v in out.iter_mut() {
            *v = if g.uniform() < p { 0.0 } else { keep };
        }
    });
    Ok(Tensor::from_vec(mask, shape, like.device())?.to_dtype(like.dtype())?)
}
