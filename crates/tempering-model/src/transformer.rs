//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM): one implementation for training and
//! for cached inference. Every op is differentiable (the fused ops of [`crate::ops`] carry their own
//! backward); trainable weights are candle `Var`s, frozen ones plain tensors that get no gradient.
//! Knows nothing of file formats (see [`crate::weights`]), training loops or sampling.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::lora::LoraLinear;
use crate::ops;
use crate::rng::SplitMix64;
use crate::weights::Weights;

mod cache;
mod gather;
mod lean;

pub use cache::{KvCache, TokenLayout};
use cache::{LayerKv, Visibility};

/// Added to attention scores of keys a query must not see. Finite, so that a padded query row with no
/// visible key gives a uniform (ignored) distribution rather than NaNs.
const MASKED: f32 = -1e9;

/// A linear map `x W^T (+ b)`, plus a LoRA update when it carries an adapter (see [`crate::lora`]).
/// A frozen `W` goes through [`ops::linear_frozen`], whose backward computes no gradient for it.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`; for a Q8_0 inference weight, its signed bytes in u8 storage.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraLinear>,
    /// A Q8_0 inference weight's scales `[out, in / 32]` (see
    /// [`Transformer::store_inference_weights`]); `None` for a plain weight.
    pub q8_scales: Option<Tensor>,
}

impl Linear {
    /// A linear map without adapter.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            lora: None,
            q8_scales: None,
        }
    }

    /// `x W^T (+ b) (+ LoRA(x))` for `x` `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward_base(x)?;
        match &self.lora {
            Some(l) => Ok((y + l.forward(x)?)?),
            None => Ok(y),
        }
    }

    fn forward_base(&self, x: &Tensor) -> Result<Tensor> {
        let y = if let Some(scales) = &self.q8_scales {
            ops::linear_q8(x, &self.weight, scales)?
        } else if self.weight.is_variable() {
            ops::linear(x, &self.weight)?
        } else {
            ops::linear_frozen(x, &self.weight)?
        };
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(b)?),
            None => Ok(y),
        }
    }
}

/// How [`Transformer::store_inference_weights`] stores the matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InferenceWeights {
    /// bf16: half of f32's bytes, rounding each weight to 8 bits of mantissa.
    Bf16,
    /// Q8_0: a signed byte per weight and an f32 scale per block of 32 (8.5 bits a weight).
    Q8_0,
}

/// A frozen weight `[out, in]` stored as `kind` asks (a Q8_0 request keeps bf16 where `in` is not
/// a multiple of 32), without bias or adapter.
fn compact_linear(w: &Tensor, kind: InferenceWeights) -> Result<Linear> {
    let (n, k) = w.dims2()?;
    if kind == InferenceWeights::Q8_0 && k.is_multiple_of(ops::few_rows::Q8_BLOCK) {
        let wf = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (q, scales) = ops::few_rows::quantize_q8(&wf, n, k).ok_or_else(|| {
            ModelError::Unsupported(format!("Q8_0: cannot quantize a [{n}, {k}] weight"))
        })?;
        let bytes: Vec<u8> = q.into_iter().map(|v| v as u8).collect();
        let mut l = Linear::new(Tensor::from_vec(bytes, (n, k), w.device())?, None);
        l.q8_scales = Some(Tensor::from_vec(
            scales,
            (n, k / ops::few_rows::Q8_BLOCK),
            w.device(),
        )?);
        return Ok(l);
    }
    Ok(Linear::new(w.to_dtype(DType::BF16)?, None))
}

#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub input_layernorm: Tensor,
    pub self_attn: Attention,
    pub post_attention_layernorm: Tensor,
    pub mlp: Mlp,
}

/// The decoder. Weights are shared `Tensor`s (cheap clones), so a `Transformer` is cheap to clone.
#[derive(Clone, Debug)]
pub struct Transformer {
    pub config: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// `None` when the LM head is tied to the embeddings.
    pub lm_head: Option<Tensor>,
    /// The LM head as [`Transformer::store_inference_weights`] stored it, where it could not be
    /// stored in `lm_head` (a tied head's own copy; a Q8_0 head); used by [`Transformer::logits`]
    /// before the others.
    inference_head: Option<Linear>,
    inv_freq: Vec<f64>,
    device: Device,
    dtype: DType,
    /// Whether cached steps of few rows take the lean path (`transformer/lean.rs`); on unless
    /// [`Transformer::set_lean_decode`] turned it off.
    lean_decode: bool,
}

impl Transformer {
    /// Builds the decoder from HF-named weights, checking every shape against the config.
    pub fn from_weights(config: &ModelConfig, w: &Weights) -> Result<Self> {
        let c = config;
        let h = c.hidden_size;
        let q = c.num_heads * c.head_dim;
        let kv = c.num_kv_heads * c.head_dim;
        let embed_tokens = w.get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            Ok(Linear::new(
                w.get(&format!("{name}.weight"), &[out, inp])?,
                if bias {
                    Some(w.get(&format!("{name}.bias"), &[out])?)
                } else {
                    None
                },
            ))
        };
        // Not `with_capacity(num_layers)`: the count comes from the file (a GGUF claiming 2^32
        // layers aborted on the allocation, found by fuzzing); a missing layer ends the loop.
        let mut layers = Vec::new();
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_layernorm: w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                self_attn: Attention {
                    q_proj: lin(&format!("{p}.self_attn.q_proj"), q, h, c.attention_bias)?,
                    k_proj: lin(&format!("{p}.self_attn.k_proj"), kv, h, c.attention_bias)?,
                    v_proj: lin(&format!("{p}.self_attn.v_proj"), kv, h, c.attention_bias)?,
                    o_proj: lin(&format!("{p}.self_attn.o_proj"), h, q, false)?,
                },
                post_attention_layernorm: w
                    .get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp: Mlp {
                    gate_proj: lin(&format!("{p}.mlp.gate_proj"), c.intermediate_size, h, false)?,
                    up_proj: lin(&format!("{p}.mlp.up_proj"), c.intermediate_size, h, false)?,
                    down_proj: lin(&format!("{p}.mlp.down_proj"), h, c.intermediate_size, false)?,
                },
            });
        }
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(w.get("lm_head.weight", &[c.vocab_size, h])?)
        };
        let norm = w.get("model.norm.weight", &[h])?;
        Ok(Transformer {
            config: c.clone(),
            device: embed_tokens.device().clone(),
            dtype: embed_tokens.dtype(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inference_head: None,
            inv_freq: c.rope_inv_freq(),
            lean_decode: true,
        })
    }

    /// A freshly initialised decoder (weights ~ N(0, 0.02), norms at 1), reproducible from `seed`:
    /// the start of a model trained from scratch.
    pub fn init_random(
        config: &ModelConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let c = config;
        let (h, q, kv) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        );
        let mut rng = SplitMix64(seed);
        let mut tensors = std::collections::HashMap::new();
        let normal = |shape: &[usize], rng: &mut SplitMix64| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| 0.02 * rng.normal()).collect();
            Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
        };
        tensors.insert(
            "model.embed_tokens.weight".to_string(),
            normal(&[c.vocab_size, h], &mut rng)?,
        );
        if !c.tie_word_embeddings {
            tensors.insert(
                "lm_head.weight".to_string(),
                normal(&[c.vocab_size, h], &mut rng)?,
            );
        }
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            for (n, out, inp) in [
                ("self_attn.q_proj", q, h),
                ("self_attn.k_proj", kv, h),
                ("self_attn.v_proj", kv, h),
                ("self_attn.o_proj", h, q),
                ("mlp.gate_proj", c.intermediate_size, h),
                ("mlp.up_proj", c.intermediate_size, h),
                ("mlp.down_proj", h, c.intermediate_size),
            ] {
                tensors.insert(format!("{p}.{n}.weight"), normal(&[out, inp], &mut rng)?);
            }
            if c.attention_bias {
                for (n, out) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                    tensors.insert(
                        format!("{p}.self_attn.{n}.bias"),
                        Tensor::zeros(out, dtype, device)?,
                    );
                }
            }
        }
        let ones = Tensor::ones(h, dtype, device)?;
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            tensors.insert(format!("{p}.input_layernorm.weight"), ones.clone());
            tensors.insert(format!("{p}.post_attention_layernorm.weight"), ones.clone());
        }
        tensors.insert("model.norm.weight".into(), ones);
        Self::from_weights(c, &Weights::new(tensors, "<random init>".into()))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every weight under its HF name: the base model's only (LoRA adapters are listed by
    /// [`Transformer::lora_tensors`] under PEFT's names, and folded in by
    /// [`Transformer::merge_lora`]).
    pub fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut m = BTreeMap::new();
        m.insert(
            "model.embed_tokens.weight".into(),
            self.embed_tokens.clone(),
        );
        m.insert("model.norm.weight".into(), self.norm.clone());
        if let Some(h) = &self.lm_head {
            m.insert("lm_head.weight".into(), h.clone());
        }
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let mut put = |n: &str, lin: &Linear| {
                m.insert(format!("{p}.{n}.weight"), lin.weight.clone());
                if let Some(b) = &lin.bias {
                    m.insert(format!("{p}.{n}.bias"), b.clone());
                }
            };
            put("self_attn.q_proj", &l.self_attn.q_proj);
            put("self_attn.k_proj", &l.self_attn.k_proj);
            put("self_attn.v_proj", &l.self_attn.v_proj);
            put("self_attn.o_proj", &l.self_attn.o_proj);
            put("mlp.gate_proj", &l.mlp.gate_proj);
            put("mlp.up_proj", &l.mlp.up_proj);
            put("mlp.down_proj", &l.mlp.down_proj);
            m.insert(
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.clone(),
            );
            m.insert(
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.clone(),
            );
        }
        m
    }

    /// Turns the weights whose HF name satisfies `trainable` into `Var`s (returned with their names);
    /// the others stay frozen tensors. Base weights only: LoRA adapters come with their `Var`s from
    /// [`Transformer::add_lora`] / [`Transformer::apply_peft`].
    pub fn make_trainable(
        &mut self,
        trainable: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        self.visit_base_weights_mut(|name, t| {
            if trainable(&name) {
                let v = Var::from_tensor(t)?;
                *t = v.as_tensor().clone();
                vars.push((name, v));
            }
            Ok(())
        })?;
        Ok(vars)
    }

    /// [`Transformer::store_inference_weights`] with bf16 matrices.
    pub fn store_linear_weights_bf16(&mut self) -> Result<()> {
        self.store_inference_weights(InferenceWeights::Bf16)
    }

    /// Inference on the CPU with compact matrices and f32 activations (what llama.cpp does with a
    /// bf16 or Q8_0 GGUF): decode streams half (bf16) or about a quarter (Q8_0: a byte per element
    /// and an f32 scale per 32) of f32's bytes, the few-row kernel widening each weight vector in
    /// registers. The projection weights of every layer and the LM head are stored so (a tied head
    /// gets its own copy; Q8_0 needs an input width that is a multiple of 32 and keeps bf16 where
    /// it is not). From an f32 model the embeddings stay f32; from a model loaded in bf16, which
    /// never held f32 matrices (half the memory at load), they stay bf16 (looked-up rows widened
    /// to f32) and the norms and biases become f32. Either way the model then computes in f32, its
    /// KV cache is f32, and a LoRA adapter applied later keeps f32 weights. Only the weights'
    /// rounding changes results. An error for a model on another device or in another dtype, or
    /// with a trainable projection: nothing trains weights stored this way.
    pub fn store_inference_weights(&mut self, kind: InferenceWeights) -> Result<()> {
        let unsupported = || {
            ModelError::Unsupported(format!(
                "{kind:?} inference weights need an f32 or bf16 model on the CPU (this one is \
                 {:?} on {:?})",
                self.dtype, self.device
            ))
        };
        if !self.device.is_cpu() || !matches!(self.dtype, DType::F32 | DType::BF16) {
            return Err(unsupported());
        }
        let mut linears: Vec<&mut Linear> = Vec::new();
        let mut vectors: Vec<&mut Tensor> = vec![&mut self.norm];
        for l in self.layers.iter_mut() {
            vectors.push(&mut l.input_layernorm);
            vectors.push(&mut l.post_attention_layernorm);
            let a = &mut l.self_attn;
            let m = &mut l.mlp;
            linears.extend([
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ]);
        }
        if linears
            .iter()
            .any(|l| l.weight.is_variable() || l.q8_scales.is_some() || l.lora.is_some())
        {
            return Err(ModelError::Unsupported(format!(
                "{kind:?} inference weights: a projection weight is trainable, carries an \
                 adapter (apply it after) or is already stored for inference"
            )));
        }
        for l in linears {
            *l = Linear {
                bias: l
                    .bias
                    .as_ref()
                    .map(|b| b.to_dtype(DType::F32))
                    .transpose()?,
                ..compact_linear(&l.weight, kind)?
            };
        }
        for v in vectors {
            *v = v.to_dtype(DType::F32)?;
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        // (A tied head loaded in bf16 shares the embeddings' storage: `to_dtype` copies nothing.)
        let stored = compact_linear(head, kind)?;
        match (&mut self.lm_head, &stored.q8_scales) {
            (Some(h), None) => *h = stored.weight,
            _ => self.inference_head = Some(stored),
        }
        self.dtype = DType::F32;
        Ok(())
    }

    /// Detaches every base weight from autograd, so that a backward pass computes no gradient for
    /// it (a weight that is a `Var`, say after full fine-tuning, would otherwise get one: wasted
    /// work when only adapters train). The storage is shared, not copied.
    pub fn freeze_base(&mut self) -> Result<()> {
        self.visit_base_weights_mut(|_, t| {
            *t = t.detach();
            Ok(())
        })
    }

    /// Calls `visit` with the HF name and a mutable handle of every base weight (not adapters).
    fn visit_base_weights_mut(
        &mut self,
        mut visit: impl FnMut(String, &mut Tensor) -> Result<()>,
    ) -> Result<()> {
        visit("model.embed_tokens.weight".into(), &mut self.embed_tokens)?;
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            visit(
                format!("{p}.input_layernorm.weight"),
                &mut l.input_layernorm,
            )?;
            for (n, lin) in [
                ("self_attn.q_proj", &mut l.self_attn.q_proj),
                ("self_attn.k_proj", &mut l.self_attn.k_proj),
                ("self_attn.v_proj", &mut l.self_attn.v_proj),
                ("self_attn.o_proj", &mut l.self_attn.o_proj),
            ] {
                visit(format!("{p}.{n}.weight"), &mut lin.weight)?;
                if let Some(b) = lin.bias.as_mut() {
                    visit(format!("{p}.{n}.bias"), b)?;
                }
            }
            visit(
                format!("{p}.post_attention_layernorm.weight"),
                &mut l.post_attention_layernorm,
            )?;
            for (n, lin) in [
                ("mlp.gate_proj", &mut l.mlp.gate_proj),
                ("mlp.up_proj", &mut l.mlp.up_proj),
                ("mlp.down_proj", &mut l.mlp.down_proj),
            ] {
                visit(format!("{p}.{n}.weight"), &mut lin.weight)?;
            }
        }
        visit("model.norm.weight".into(), &mut self.norm)?;
        if let Some(h) = self.lm_head.as_mut() {
            visit("lm_head.weight".into(), h)?;
        }
        Ok(())
    }

    /// Turns the lean path for cached steps of few rows on or off (on by default; off, every
    /// step runs candle's ops, as a GPU does). Both give the same results to float rounding.
    pub fn set_lean_decode(&mut self, on: bool) {
        self.lean_decode = on;
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_layers)
    }

    /// Final hidden states [B, T, H] for `input_ids` [B, T] laid out as `layout`, appending to (and
    /// attending over) `cache` when given.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        layout: &TokenLayout,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        if layout.positions.len() != b || layout.positions.iter().any(|r| r.len() != t) {
            return Err(ModelError::Unsupported(format!(
                "token layout does not match input of shape [{b}, {t}]"
            )));
        }
        let max_pos = self.config.max_position_embeddings as u32;
        if let Some(p) = layout.positions.iter().flatten().find(|&&p| p >= max_pos) {
            return Err(ModelError::Unsupported(format!(
                "position {p} is beyond the model's context of {max_pos} tokens"
            )));
        }
        // Key positions: the cache's history followed by the new tokens.
        let mut keys: Vec<Vec<Option<u32>>> = match cache.as_deref() {
            Some(c) if !c.key_positions.is_empty() => {
                if c.key_positions.len() != b {
                    return Err(ModelError::Unsupported(format!(
                        "cache holds {} rows, input has {b}",
                        c.key_positions.len()
                    )));
                }
                c.key_positions.clone()
            }
            _ => vec![vec![]; b],
        };
        for (row, (pos, valid)) in keys
            .iter_mut()
            .zip(layout.positions.iter().zip(&layout.valid))
        {
            row.extend(pos.iter().zip(valid).map(|(&p, &v)| v.then_some(p)));
        }
        let s = keys[0].len();
        let past = s - t;
        if let Some(c) = cache.as_deref_mut() {
            if let Some(h) = self.lean_forward(input_ids, layout, c, &keys, past)? {
                c.key_positions = keys;
                return Ok(h);
            }
        }
        let mask = self.attention_mask(layout, &keys, past)?;
        let (cos, sin) = self.rope_tables(layout)?;

        // (Embeddings kept in bf16 for f32 compute: see `store_linear_weights_bf16`.)
        let mut x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.hidden_size))?
            .to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let hs = ops::rms_norm(&x, &layer.input_layernorm, self.config.rms_norm_eps)?;
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let attn = self.attention(&layer.self_attn, &hs, &cos, &sin, &mask, slot)?;
            x = (residual + attn)?;
            let residual = x.clone();
            let hs = ops::rms_norm(
                &x,
                &layer.post_attention_layernorm,
                self.config.rms_norm_eps,
            )?;
            let gate = layer.mlp.gate_proj.forward(&hs)?;
            let up = layer.mlp.up_proj.forward(&hs)?;
            let mlp = layer.mlp.down_proj.forward(&ops::silu_mul(&gate, &up)?)?;
            x = (residual + mlp)?;
        }
        if let Some(c) = cache {
            c.key_positions = keys;
        }
        ops::rms_norm(&x, &self.norm, self.config.rms_norm_eps)
    }

    /// Logits [.., vocab] for hidden states [.., H].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        if let Some(head) = &self.inference_head {
            return head.forward(hidden);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        Linear::new(head.clone(), None).forward(hidden)
    }

    /// Logits [B, T, V] at every position.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        layout: &TokenLayout,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, layout, cache)?;
        self.logits(&h)
    }

    /// Logits [B, V] at the last column only: what prefill and decode need, without the LM head's
    /// cost at every other position.
    pub fn forward_last(
        &self,
        input_ids: &Tensor,
        layout: &TokenLayout,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, layout, cache)?;
        let t = h.dim(1)?;
        self.logits(&h.narrow(1, t - 1, 1)?.squeeze(1)?)
    }

    /// Plain causal forward over unpadded rows (no cache): logits [B, T, V].
    pub fn forward_causal(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        self.forward(input_ids, &TokenLayout::contiguous(b, t, 0), None)
    }

    fn attention_mask(
        &self,
        layout: &TokenLayout,
        keys: &[Vec<Option<u32>>],
        past: usize,
    ) -> Result<Tensor> {
        let b = keys.len();
        let s = keys[0].len();
        let t = s - past;
        let visible = self.visibility(layout, keys, past);
        let mut m = vec![0f32; b * t * s];
        for (bt, out) in m.chunks_exact_mut(s).enumerate() {
            for (si, o) in out.iter_mut().enumerate() {
                if !visible.at(bt / t, bt % t, si) {
                    *o = MASKED;
                }
            }
        }
        Ok(Tensor::from_vec(m, (b, 1, 1, t, s), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Which key slots each new token of `layout` may see (`keys`: the cache's key positions, then
    /// the new tokens'; `past`: the slots already cached).
    fn visibility<'a>(
        &self,
        layout: &'a TokenLayout,
        keys: &'a [Vec<Option<u32>>],
        past: usize,
    ) -> Visibility<'a> {
        Visibility {
            layout,
            keys,
            past,
            window: self.config.sliding_window.map(|w| w as u32),
        }
    }

    /// RoPE's cosines and sines `[B * T * half]` for the positions of `layout`.
    fn rope_angles(&self, layout: &TokenLayout) -> (Vec<f32>, Vec<f32>) {
        let n = layout.positions.iter().map(Vec::len).sum::<usize>() * self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &p in layout.positions.iter().flatten() {
            for f in &self.inv_freq {
                // HF computes the angle in f32; so do we, for identical rounding.
                let angle = (p as f32) * (*f as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        (cos, sin)
    }

    fn rope_tables(&self, layout: &TokenLayout) -> Result<(Tensor, Tensor)> {
        let b = layout.positions.len();
        let t = layout.positions[0].len();
        let half = self.inv_freq.len();
        let (cos, sin) = self.rope_angles(layout);
        let cos = Tensor::from_vec(cos, (b, t, half), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (b, t, half), &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }

    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut Option<LayerKv>>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rep = nh / nkv;
        let q = a
            .q_proj
            .forward(x)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?;
        let k = a
            .k_proj
            .forward(x)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?;
        let v = a
            .v_proj
            .forward(x)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?;
        let q = ops::rope(&q.contiguous()?, cos, sin)?;
        let k = ops::rope(&k.contiguous()?, cos, sin)?;
        let v = v.contiguous()?;
        let (k, v) = match cache {
            None => (k, v),
            Some(slot) => LayerKv::append(slot, &k, &v)?,
        };
        let s = k.dim(2)?;
        // Query heads grouped by their KV head: [B, nkv, rep*T, hd] against keys [B, nkv, S, hd],
        // so GQA needs no copy of the keys.
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let out = ops::attention(&q, &k, &v, &mask.reshape((b, t, s))?, scale)?;
        let out = out
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, nh * hd))?;
        a.o_proj.forward(&out)
    }
}

/// The log-probability of each next token under `logits` [B, T, V] for `targets` [B, T]: [B, T].
pub fn sequence_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let lp = ops::token_logprobs(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?)?;
    Ok(lp.reshape((b, t))?)
}

/// Index of the largest value along the last dimension.
pub fn argmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.argmax(D::Minus1)?)
}
