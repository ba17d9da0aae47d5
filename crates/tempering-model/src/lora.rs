//! LoRA adapters on the decoder's linear layers, as PEFT defines them: the configuration, PEFT's
//! initialisation (A kaiming-uniform with `a = sqrt(5)`, B zeros), the low-rank update
//! `(dropout(x) A^T B^T) * alpha / r` added to a frozen base, seeded dropout for training, merging into
//! the base weights, switching adapters off (the reference model, sharing every weight), and PEFT's
//! adapter files (`adapter_config.json`, `adapter_model.safetensors` with PEFT's tensor names).
//!
//! It knows the decoder's module names and PEFT's on-disk format. It knows nothing of optimisers,
//! training loops or schedules: the trainer receives the adapter's `Var`s and, for dropout, a
//! [`DropoutRng`] it owns and checkpoints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::rng::SplitMix64;
use crate::transformer::{Layer, Linear, Transformer};
use crate::weights::{write_atomic, Weights};

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
        let h = x2.matmul(&self.a.t()?)?;
        let y = (h.matmul(&self.b.t()?)? * self.scale())?;
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

/// A PEFT adapter read from disk: its configuration, the base model it names, and its tensors under
/// PEFT's names (on the CPU, as stored).
#[derive(Clone, Debug)]
pub struct PeftAdapter {
    pub dir: PathBuf,
    pub config: LoraConfig,
    pub base_model_name_or_path: Option<String>,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Transformer {
    /// Adds adapters as `cfg` says to every decoder layer, initialised as PEFT does (A
    /// kaiming-uniform with `a = sqrt(5)`, i.e. uniform in `±1/sqrt(in)`, drawn from `seed`; B
    /// zeros, so the model's output is unchanged). Returns the adapter's `Var`s under PEFT's names,
    /// layer by layer, A before B. Base weights stay as they are (frozen unless made trainable).
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<Vec<(String, Var)>> {
        cfg.validate()?;
        self.no_adapters_yet()?;
        // Only the adapters train: base weights that are `Var`s must not collect gradients.
        self.freeze_base()?;
        let (device, dtype) = (self.device().clone(), self.dtype());
        let mut rng = SplitMix64(seed);
        let targets = cfg.sorted_targets();
        let mut vars = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for &t in &targets {
                let lin = t.linear_mut(layer);
                let (out, inp) = lin.weight.dims2()?;
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..cfg.r * inp)
                    .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
                    .collect();
                let a = Var::from_tensor(
                    &Tensor::from_vec(a, (cfg.r, inp), &device)?.to_dtype(dtype)?,
                )?;
                let b = Var::from_tensor(&Tensor::zeros((out, cfg.r), dtype, &device)?)?;
                lin.lora = Some(LoraLinear {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    alpha: cfg.alpha,
                    use_rslora: cfg.use_rslora,
                    dropout: cfg.dropout,
                    dropout_rng: None,
                });
                let (na, nb) = peft_tensor_names(i, t);
                vars.push((na, a));
                vars.push((nb, b));
            }
        }
        Ok(vars)
    }

    fn no_adapters_yet(&self) -> Result<()> {
        if self.has_lora() {
            return Err(ModelError::Unsupported(
                "the model already carries LoRA adapters (merge them or use without_adapters() \
                 before adding others)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn loras(&self) -> impl Iterator<Item = (usize, LoraTarget, &LoraLinear)> {
        self.layers.iter().enumerate().flat_map(|(i, l)| {
            LoraTarget::ALL
                .into_iter()
                .filter_map(move |t| t.linear(l).lora.as_ref().map(|a| (i, t, a)))
        })
    }

    /// Whether any layer carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.loras().next().is_some()
    }

    /// The adapters' configuration, read back from the layers (`None` without adapters). Errors if
    /// layers disagree on rank, alpha or dropout, or not every layer has the same targets.
    pub fn lora_config(&self) -> Result<Option<LoraConfig>> {
        let Some((_, _, first)) = self.loras().next() else {
            return Ok(None);
        };
        let mut targets: Vec<LoraTarget> = self.loras().map(|(_, t, _)| t).collect();
        targets.sort();
        targets.dedup();
        for (i, t, l) in self.loras() {
            if l.rank() != first.rank()
                || l.alpha != first.alpha
                || l.dropout != first.dropout
                || l.use_rslora != first.use_rslora
            {
                return Err(ModelError::Unsupported(format!(
                    "LoRA on layer {i} {t} differs in rank, alpha or dropout from the others: \
                     PEFT's format holds one configuration per adapter"
                )));
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            for &t in &targets {
                if t.linear(layer).lora.is_none() {
                    return Err(ModelError::Unsupported(format!(
                        "layer {i} has no LoRA on {t} while other layers do"
                    )));
                }
            }
        }
        Ok(Some(LoraConfig {
            r: first.rank(),
            alpha: first.alpha,
            dropout: first.dropout,
            targets,
            use_rslora: first.use_rslora,
        }))
    }

    /// The adapter's tensors under PEFT's names (what `adapter_model.safetensors` holds).
    pub fn lora_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut m = BTreeMap::new();
        for (i, t, l) in self.loras() {
            let (na, nb) = peft_tensor_names(i, t);
            m.insert(na, l.a.clone());
            m.insert(nb, l.b.clone());
        }
        m
    }

    /// The adapter's `Var`s under PEFT's names (layer by layer, A before B), sharing storage with
    /// the model: what an optimiser updates, e.g. after [`Transformer::apply_peft`] on resume.
    pub fn lora_vars(&self) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        for (i, t, l) in self.loras() {
            let (na, nb) = peft_tensor_names(i, t);
            for (name, x) in [(na, &l.a), (nb, &l.b)] {
                if !x.is_variable() {
                    return Err(ModelError::Unsupported(format!(
                        "LoRA tensor `{name}` is not a Var"
                    )));
                }
                vars.push((name, Var::from_tensor(x)?));
            }
        }
        Ok(vars)
    }

    /// Switches LoRA dropout on (training: `Some(rng)`, masks drawn from `rng`) or off (`None`:
    /// inference, deterministic). Adapters start with dropout off.
    pub fn set_lora_dropout(&mut self, rng: Option<DropoutRng>) {
        for layer in &mut self.layers {
            for t in LoraTarget::ALL {
                if let Some(l) = t.linear_mut(layer).lora.as_mut() {
                    l.dropout_rng = rng.clone();
                }
            }
        }
    }

    /// The same model with adapters switched off: a cheap clone sharing every base weight (no second
    /// copy in memory), e.g. the reference model of DPO and RL.
    pub fn without_adapters(&self) -> Transformer {
        let mut m = self.clone();
        for layer in &mut m.layers {
            for t in LoraTarget::ALL {
                t.linear_mut(layer).lora = None;
            }
        }
        m
    }

    /// A model whose weights are `W + B A * scale` (computed in f32, stored in `W`'s dtype), with no
    /// adapters and no `Var`s among the merged weights. Other weights are shared.
    pub fn merge_lora(&self) -> Result<Transformer> {
        let mut m = self.clone();
        for layer in &mut m.layers {
            for t in LoraTarget::ALL {
                let lin = t.linear_mut(layer);
                if let Some(l) = lin.lora.take() {
                    let w = &lin.weight;
                    let merged = (w.to_dtype(DType::F32)? + l.delta_weight()?)?;
                    lin.weight = merged.to_dtype(w.dtype())?.detach();
                }
            }
        }
        Ok(m)
    }

    /// Loads the PEFT adapter in `dir` ([`load_peft`]) onto this model; returns its `Var`s as
    /// [`Transformer::add_lora`] does.
    pub fn apply_peft(&mut self, dir: &Path) -> Result<Vec<(String, Var)>> {
        let adapter = load_peft(dir)?;
        self.apply_adapter(&adapter)
    }

    /// Puts `adapter` onto this model (converted to the model's dtype and device). Every targeted
    /// module of every layer must have both tensors with the right shapes, and every tensor must
    /// belong to one; errors name the file and the tensor.
    pub fn apply_adapter(&mut self, adapter: &PeftAdapter) -> Result<Vec<(String, Var)>> {
        let cfg = &adapter.config;
        cfg.validate().map_err(|e| {
            ModelError::format(adapter.dir.join(ADAPTER_CONFIG_FILE), e.to_string())
        })?;
        self.no_adapters_yet()?;
        self.freeze_base()?;
        let file = adapter.dir.join(ADAPTER_WEIGHTS_FILE);
        let (device, dtype) = (self.device().clone(), self.dtype());
        let mut used = 0usize;
        let mut lin_adapters = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for t in cfg.sorted_targets() {
                let (out, inp) = t.linear(layer).weight.dims2()?;
                let (na, nb) = peft_tensor_names(i, t);
                let get = |name: &str, shape: [usize; 2], what: &str| -> Result<Var> {
                    let x = adapter.tensors.get(name).ok_or_else(|| {
                        ModelError::tensor(
                            &file,
                            name,
                            format!("missing: adapter_config.json targets {t}"),
                        )
                    })?;
                    if x.dims() != shape {
                        return Err(ModelError::tensor(
                            &file,
                            name,
                            format!("shape {:?}, expected {shape:?} ({what})", x.dims()),
                        ));
                    }
                    Ok(Var::from_tensor(&x.to_dtype(dtype)?.to_device(&device)?)?)
                };
                let a = get(
                    &na,
                    [cfg.r, inp],
                    &format!(
                        "r = {} from adapter_config.json, in = {inp} from the base model",
                        cfg.r
                    ),
                )?;
                let b = get(
                    &nb,
                    [out, cfg.r],
                    &format!(
                        "out = {out} from the base model, r = {} from adapter_config.json",
                        cfg.r
                    ),
                )?;
                used += 2;
                lin_adapters.push((i, t, na, a, nb, b));
            }
        }
        if used != adapter.tensors.len() {
            let expected: std::collections::HashSet<&String> =
                lin_adapters.iter().flat_map(|x| [&x.2, &x.4]).collect();
            if let Some(extra) = adapter.tensors.keys().find(|k| !expected.contains(k)) {
                return Err(ModelError::tensor(
                    &file,
                    extra,
                    format!(
                        "not a LoRA weight of a targeted module of this {}-layer model \
                         (targets: {})",
                        self.layers.len(),
                        cfg.sorted_targets()
                            .iter()
                            .map(|t| t.module_name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let mut vars = Vec::with_capacity(used);
        for (i, t, na, a, nb, b) in lin_adapters {
            t.linear_mut(&mut self.layers[i]).lora = Some(LoraLinear {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                alpha: cfg.alpha,
                use_rslora: cfg.use_rslora,
                dropout: cfg.dropout,
                dropout_rng: None,
            });
            vars.push((na, a));
            vars.push((nb, b));
        }
        Ok(vars)
    }
}

/// Writes `model`'s adapters as a PEFT adapter directory `dir` (created if needed):
/// `adapter_config.json` and `adapter_model.safetensors` (PEFT's tensor names, the model's dtype).
/// Each file is written under a temporary name and renamed.
pub fn save_peft(dir: &Path, model: &Transformer, base_model_name_or_path: &str) -> Result<()> {
    let cfg = model.lora_config()?.ok_or_else(|| {
        ModelError::Unsupported(format!(
            "{}: the model has no LoRA adapters to save",
            dir.display()
        ))
    })?;
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tensors = model.lora_tensors();
    Weights::save_safetensors(&tensors, &dir.join(ADAPTER_WEIGHTS_FILE), model.dtype())?;
    let alpha = if cfg.alpha.fract() == 0.0 && cfg.alpha.abs() < 1e15 {
        json!(cfg.alpha as i64)
    } else {
        json!(cfg.alpha)
    };
    let v = json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": alpha,
        "lora_dropout": cfg.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": cfg.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": cfg.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": cfg.use_rslora,
    });
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text =
        serde_json::to_string_pretty(&v).map_err(|e| ModelError::format(&path, e.to_string()))?;
    write_atomic(&path, text.as_bytes())
}

/// Reads the PEFT LoRA adapter in `dir`. Options this project does not implement (DoRA, biases,
/// per-layer ranks, `modules_to_save`, regex targets, ...) are refused with the field named.
pub fn load_peft(dir: &Path) -> Result<PeftAdapter> {
    if !dir.is_dir() {
        return Err(ModelError::format(
            dir,
            "no such adapter directory (a PEFT adapter directory holds adapter_config.json and \
             adapter_model.safetensors)",
        ));
    }
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(ModelError::format(
            &cfg_path,
            "missing from the adapter directory",
        ));
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(&cfg_path, format!("invalid JSON: {e}")))?;
    let (config, base) = parse_adapter_config(&v, &cfg_path)?;
    let wpath = dir.join(ADAPTER_WEIGHTS_FILE);
    if !wpath.is_file() {
        let msg = if dir.join("adapter_model.bin").is_file() {
            "missing; only adapter_model.bin (PyTorch pickle) is present, which is not read: \
             re-save the adapter with safe_serialization=True"
        } else {
            "missing from the adapter directory"
        };
        return Err(ModelError::format(&wpath, msg));
    }
    let tensors = candle_core::safetensors::load(&wpath, &Device::Cpu)
        .map_err(|e| ModelError::format(&wpath, format!("not a readable safetensors file: {e}")))?;
    Ok(PeftAdapter {
        dir: dir.to_path_buf(),
        config,
        base_model_name_or_path: base,
        tensors: tensors.into_iter().collect(),
    })
}

fn parse_adapter_config(v: &Value, path: &Path) -> Result<(LoraConfig, Option<String>)> {
    let obj = v
        .as_object()
        .ok_or_else(|| ModelError::format(path, "expected a JSON object"))?;
    let bad = |field: &str, msg: String| ModelError::format(path, format!("`{field}`: {msg}"));
    let get = |k: &str| obj.get(k).filter(|x| !x.is_null());
    if let Some(p) = get("peft_type") {
        if p.as_str() != Some("LORA") {
            return Err(bad(
                "peft_type",
                format!("{p} is not supported (only LORA)"),
            ));
        }
    }
    if let Some(t) = get("task_type") {
        if t.as_str() != Some("CAUSAL_LM") {
            return Err(bad(
                "task_type",
                format!("{t} is not supported (only CAUSAL_LM adapters)"),
            ));
        }
    }
    // Options that must be off: (field, what counts as off).
    let off = |k: &str| -> bool {
        match get(k) {
            None => true,
            Some(Value::Bool(b)) => !b,
            Some(Value::String(s)) => s == "none",
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        }
    };
    for k in [
        "fan_in_fan_out",
        "bias",
        "use_dora",
        "lora_bias",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "modules_to_save",
        "exclude_modules",
        "target_parameters",
        "layer_replication",
        "trainable_token_indices",
    ] {
        if !off(k) {
            return Err(bad(
                k,
                format!(
                    "{} is not supported here",
                    get(k).map(|x| x.to_string()).unwrap_or_default()
                ),
            ));
        }
    }
    let r = match get("r") {
        None => 8,
        Some(x) => x
            .as_u64()
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("r", format!("expected a positive integer, got {x}")))?
            as usize,
    };
    let alpha = match get("lora_alpha") {
        None => 8.0,
        Some(x) => x
            .as_f64()
            .ok_or_else(|| bad("lora_alpha", format!("expected a number, got {x}")))?,
    };
    let dropout = match get("lora_dropout") {
        None => 0.0,
        Some(x) => x
            .as_f64()
            .ok_or_else(|| bad("lora_dropout", format!("expected a number, got {x}")))?,
    };
    let use_rslora = match get("use_rslora") {
        None => false,
        Some(x) => x
            .as_bool()
            .ok_or_else(|| bad("use_rslora", format!("expected true or false, got {x}")))?,
    };
    let targets = match get("target_modules") {
        None => return Err(bad("target_modules", "missing".into())),
        Some(Value::String(s)) if s == "all-linear" => LoraTarget::ALL.to_vec(),
        Some(Value::String(s)) => {
            return Err(bad(
                "target_modules",
                format!("the pattern {s:?} is not supported (give a list of module names)"),
            ))
        }
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for x in a {
                let name = x
                    .as_str()
                    .ok_or_else(|| bad("target_modules", format!("expected names, got {x}")))?;
                let t = LoraTarget::ALL
                    .into_iter()
                    .find(|t| t.module_name() == name)
                    .ok_or_else(|| {
                        bad(
                            "target_modules",
                            format!(
                                "`{name}` is not a linear layer of this model's decoder (expected \
                                 some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
                            ),
                        )
                    })?;
                out.push(t);
            }
            out.sort();
            out.dedup();
            if out.is_empty() {
                return Err(bad("target_modules", "empty".into()));
            }
            out
        }
        Some(x) => {
            return Err(bad(
                "target_modules",
                format!("expected a list of module names, got {x}"),
            ))
        }
    };
    let base = get("base_model_name_or_path")
        .and_then(|x| x.as_str())
        .map(str::to_string);
    let config = LoraConfig {
        r,
        alpha,
        dropout,
        targets,
        use_rslora,
    };
    config
        .validate()
        .map_err(|e| ModelError::format(path, e.to_string()))?;
    Ok((config, base))
}
