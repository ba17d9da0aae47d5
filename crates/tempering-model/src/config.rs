//! The decoder's configuration, read from an HF `config.json` or from GGUF metadata, and written back
//! as an HF `config.json`. Holds no tensors and knows nothing of how weights are stored.

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde_json::{json, Value};

use crate::error::{ModelError, Result};

/// Architectures of the Llama family that one decoder implementation covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }
    fn from_model_type(s: &str) -> Option<Self> {
        match s {
            "llama" => Some(Architecture::Llama),
            "mistral" => Some(Architecture::Mistral),
            "qwen2" => Some(Architecture::Qwen2),
            _ => None,
        }
    }
}

/// Llama-3 style RoPE frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (HF's "linear").
    Linear {
        factor: f64,
    },
    Llama3(Llama3RopeScaling),
    /// Per-frequency divisors (llama.cpp's `rope_freqs.weight`) that match no named scheme.
    FreqFactors(Vec<f64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (Qwen2).
    pub attention_bias: bool,
    /// Each position attends to at most this many previous positions (itself included).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The most layers, heads or dimensions per head a config may give (real models: a few hundred).
pub const MAX_COUNT: usize = 1 << 16;

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value> {
    v.get(name)
        .filter(|x| !x.is_null())
        .ok_or_else(|| ModelError::config(name, "missing from config.json"))
}

fn usize_field(v: &Value, name: &str) -> Result<usize> {
    field(v, name)?
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| ModelError::config(name, "expected a non-negative integer"))
}

fn opt_usize(v: &Value, name: &str) -> Result<Option<usize>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .map(|x| Some(x as usize))
            .ok_or_else(|| ModelError::config(name, "expected a non-negative integer")),
    }
}

fn opt_f64(v: &Value, name: &str) -> Result<Option<f64>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| ModelError::config(name, "expected a number")),
    }
}

fn token_ids(v: Option<&Value>, name: &str) -> Result<Vec<u32>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|x| vec![x as u32])
            .ok_or_else(|| ModelError::config(name, "expected a token id")),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|x| x as u32)
                    .ok_or_else(|| ModelError::config(name, "expected a list of token ids"))
            })
            .collect(),
        Some(_) => Err(ModelError::config(
            name,
            "expected a token id or a list of them",
        )),
    }
}

impl ModelConfig {
    /// Parses an HF `config.json` document.
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let model_type = field(v, "model_type")?
            .as_str()
            .ok_or_else(|| ModelError::config("model_type", "expected a string"))?;
        let architecture = Architecture::from_model_type(model_type).ok_or_else(|| {
            ModelError::config(
                "model_type",
                format!(
                    "unsupported architecture `{model_type}` (supported: llama, mistral, qwen2)"
                ),
            )
        })?;
        let hidden_size = usize_field(v, "hidden_size")?;
        let num_heads = usize_field(v, "num_attention_heads")?;
        if num_heads == 0 || hidden_size == 0 {
            return Err(ModelError::config(
                "num_attention_heads",
                "hidden_size and num_attention_heads must be positive",
            ));
        }
        let num_kv_heads = opt_usize(v, "num_key_value_heads")?.unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(ModelError::config(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        let head_dim = opt_usize(v, "head_dim")?.unwrap_or(hidden_size / num_heads);
        let rope_scaling = match v.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(rs) => {
                let kind = rs
                    .get("rope_type")
                    .or_else(|| rs.get("type"))
                    .and_then(|x| x.as_str())
                    .unwrap_or("default");
                let f = |name: &str| -> Result<f64> {
                    opt_f64(rs, name)?.ok_or_else(|| {
                        ModelError::config(format!("rope_scaling.{name}"), "missing")
                    })
                };
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear {
                        factor: f("factor")?,
                    }),
                    "llama3" => Some(RopeScaling::Llama3(Llama3RopeScaling {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position_embeddings: opt_usize(
                            rs,
                            "original_max_position_embeddings",
                        )?
                        .ok_or_else(|| {
                            ModelError::config(
                                "rope_scaling.original_max_position_embeddings",
                                "missing",
                            )
                        })?,
                    })),
                    other => {
                        return Err(ModelError::config(
                            "rope_scaling.rope_type",
                            format!(
                                "unsupported rope scaling `{other}` (supported: linear, llama3)"
                            ),
                        ))
                    }
                }
            }
        };
        let sliding_window = match architecture {
            // Qwen2 configs carry a window that is off unless `use_sliding_window` says otherwise.
            Architecture::Qwen2 => {
                if v.get("use_sliding_window").and_then(|x| x.as_bool()) == Some(true) {
                    opt_usize(v, "sliding_window")?
                } else {
                    None
                }
            }
            _ => opt_usize(v, "sliding_window")?,
        };
        let attention_bias = match architecture {
            Architecture::Qwen2 => true,
            _ => v
                .get("attention_bias")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
        };
        let cfg = ModelConfig {
            architecture,
            vocab_size: usize_field(v, "vocab_size")?,
            hidden_size,
            intermediate_size: usize_field(v, "intermediate_size")?,
            num_layers: usize_field(v, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f64(v, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: opt_f64(v, "rope_theta")?.unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: opt_usize(v, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            attention_bias,
            sliding_window,
            bos_token_id: token_ids(v.get("bos_token_id"), "bos_token_id")?
                .first()
                .copied(),
            eos_token_ids: token_ids(v.get("eos_token_id"), "eos_token_id")?,
        };
        cfg.check_sizes()?;
        Ok(cfg)
    }

    /// Reads `config.json` from a file.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))?;
        Self::from_hf_json(&v).map_err(|e| ModelError::format(path, e.to_string()))
    }

    /// Builds the config from GGUF metadata (`general.architecture` llama or qwen2).
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let md = &content.metadata;
        let bad = |msg: String| ModelError::format(path, msg);
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| bad("GGUF metadata lacks `general.architecture`".into()))?
            .clone();
        let architecture = match arch_name.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{}: GGUF architecture `{other}` (supported: llama, qwen2)",
                    path.display()
                )))
            }
        };
        let get = |key: &str| md.get(&format!("{arch_name}.{key}"));
        let req_u = |key: &str| -> Result<usize> {
            get(key)
                .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("GGUF metadata lacks integer `{arch_name}.{key}`")))
        };
        let opt_u = |key: &str| {
            get(key).and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
        };
        // Through the shortest decimal form, so that an f32 1e-5 reads as 1e-5 and not 9.9999997e-6.
        let opt_f = |key: &str| {
            get(key)
                .and_then(|v| v.to_f32().ok())
                .and_then(|x| x.to_string().parse::<f64>().ok())
        };
        let hidden_size = req_u("embedding_length")?;
        let num_heads = req_u("attention.head_count")?;
        if num_heads == 0 {
            return Err(bad("attention.head_count is zero".into()));
        }
        let num_kv_heads = opt_u("attention.head_count_kv")
            .map(|x| x as usize)
            .unwrap_or(num_heads);
        let head_dim = opt_u("attention.key_length")
            .map(|x| x as usize)
            .unwrap_or(hidden_size / num_heads);
        let vocab_size = match opt_u("vocab_size") {
            Some(v) => v as usize,
            None => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| bad("GGUF metadata gives no vocabulary size".into()))?,
        };
        let tied = !content.tensor_infos.contains_key("output.weight");
        let tok_u = |key: &str| {
            md.get(key).and_then(|v| {
                v.to_u32()
                    .ok()
                    .or_else(|| v.to_u64().ok().map(|x| x as u32))
            })
        };
        let rope_scaling = match get("rope.scaling.type").and_then(|v| v.to_string().ok()) {
            Some(t) if t == "linear" => {
                opt_f("rope.scaling.factor").map(|factor| RopeScaling::Linear { factor })
            }
            _ => None,
        };
        let cfg = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: req_u("feed_forward_length")?,
            num_layers: req_u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: opt_f("rope.freq_base").unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: opt_u("context_length").map(|x| x as usize).unwrap_or(2048),
            tie_word_embeddings: tied,
            attention_bias: architecture == Architecture::Qwen2
                || content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            sliding_window: None,
            bos_token_id: tok_u("tokenizer.ggml.bos_token_id"),
            eos_token_ids: tok_u("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        cfg.check_sizes()
            .map_err(|e| ModelError::format(path, e.to_string()))?;
        Ok(cfg)
    }

    /// The HF `config.json` document for this configuration.
    pub fn to_hf_json(&self, torch_dtype: &str) -> Value {
        let mut v = json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
            "use_cache": true,
            "initializer_range": 0.02,
        });
        let obj = v.as_object_mut().expect("json! object");
        if self.architecture != Architecture::Qwen2 {
            obj.insert("attention_bias".into(), json!(self.attention_bias));
            obj.insert("mlp_bias".into(), json!(false));
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                obj.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": factor}),
                );
            }
            Some(RopeScaling::FreqFactors(_)) => {
                // No HF field holds arbitrary divisors; `to_hf_json` callers check `hf_representable`.
            }
            Some(RopeScaling::Llama3(s)) => {
                obj.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "llama3", "factor": s.factor,
                        "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                        "original_max_position_embeddings": s.original_max_position_embeddings}),
                );
            }
        }
        match (self.architecture, self.sliding_window) {
            (Architecture::Qwen2, Some(w)) => {
                obj.insert("use_sliding_window".into(), json!(true));
                obj.insert("sliding_window".into(), json!(w));
            }
            (Architecture::Qwen2, None) => {
                obj.insert("use_sliding_window".into(), json!(false));
            }
            (_, w) => {
                if self.architecture == Architecture::Mistral || w.is_some() {
                    obj.insert("sliding_window".into(), json!(w));
                }
            }
        }
        if let Some(b) = self.bos_token_id {
            obj.insert("bos_token_id".into(), json!(b));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [e] => {
                obj.insert("eos_token_id".into(), json!(e));
            }
            many => {
                obj.insert("eos_token_id".into(), json!(many));
            }
        }
        v
    }

    /// Whether `to_hf_json` can express this configuration exactly.
    pub fn hf_representable(&self) -> bool {
        !matches!(self.rope_scaling, Some(RopeScaling::FreqFactors(_)))
    }

    /// Reads llama.cpp's `rope_freqs.weight` divisors: recognised as Llama-3 scaling when some
    /// standard parameters reproduce them, kept as raw divisors otherwise.
    pub fn set_rope_freq_factors(&mut self, factors: &[f64]) {
        let mut plain = self.clone();
        plain.rope_scaling = None;
        let base = plain.rope_inv_freq();
        let factor = factors.iter().cloned().fold(1.0, f64::max);
        for (low, high, orig) in [(1.0, 4.0, 8192usize), (1.0, 4.0, 4096), (1.0, 4.0, 2048)] {
            let candidate = RopeScaling::Llama3(Llama3RopeScaling {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: orig,
            });
            plain.rope_scaling = Some(candidate.clone());
            let scaled = plain.rope_inv_freq();
            let matches = base.len() == factors.len()
                && base
                    .iter()
                    .zip(&scaled)
                    .zip(factors)
                    .all(|((b, s), f)| ((b / s) - f).abs() <= 1e-3 * f.abs().max(1.0));
            if matches {
                self.rope_scaling = Some(candidate);
                return;
            }
        }
        self.rope_scaling = Some(RopeScaling::FreqFactors(factors.to_vec()));
    }

    /// Refuses sizes no model has: layer and head counts or a head size past [`MAX_COUNT`], a
    /// vocabulary past the u32 token ids, or sizes whose parameter count overflows (a hostile
    /// `config.json` or GGUF header; they would size allocations).
    fn check_sizes(&self) -> Result<()> {
        if self.vocab_size > u32::MAX as usize {
            return Err(ModelError::config(
                "vocab_size",
                format!("{} is more than u32 token ids can name", self.vocab_size),
            ));
        }
        // Counts that size loops and tables before any weight is read (`rope_inv_freq` has
        // head_dim / 2 entries); real models are far below these.
        for (field, value) in [
            ("num_hidden_layers", self.num_layers),
            ("head_dim", self.head_dim),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
        ] {
            if value > MAX_COUNT {
                return Err(ModelError::config(
                    field,
                    format!("{value} is more than {MAX_COUNT}"),
                ));
            }
        }
        let h = self.hidden_size;
        let per_layer = || -> Option<usize> {
            let q = self.num_heads.checked_mul(self.head_dim)?;
            let kv = self.num_kv_heads.checked_mul(self.head_dim)?;
            let attn = h.checked_mul(q.checked_mul(2)?.checked_add(kv.checked_mul(2)?)?)?;
            let mlp = h.checked_mul(self.intermediate_size)?.checked_mul(3)?;
            attn.checked_add(mlp)?
                .checked_add(q.checked_add(kv.checked_mul(2)?)?)?
                .checked_add(h.checked_mul(2)?)
        };
        let total = per_layer()
            .and_then(|p| p.checked_mul(self.num_layers))
            .and_then(|p| p.checked_add(self.vocab_size.checked_mul(h)?.checked_mul(2)?));
        if total.is_none() {
            return Err(ModelError::config(
                "hidden_size",
                format!(
                    "the sizes (vocab_size {}, hidden_size {h}, intermediate_size {}, {} layers, \
                     {} heads of {}) overflow the parameter count",
                    self.vocab_size,
                    self.intermediate_size,
                    self.num_layers,
                    self.num_heads,
                    self.head_dim
                ),
            ));
        }
        Ok(())
    }

    /// Number of parameters the decoder holds (embeddings counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let per_layer = h * q + 2 * h * kv + q * h + bias + 3 * h * self.intermediate_size + 2 * h;
        let emb = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + self.num_layers * per_layer + h
    }

    /// The inverse frequencies of RoPE, with the configured scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::FreqFactors(d)) => base.iter().zip(d).map(|(f, d)| f / d).collect(),
            Some(RopeScaling::Llama3(s)) => {
                let old = s.original_max_position_embeddings as f64;
                let low_wavelen = old / s.low_freq_factor;
                let high_wavelen = old / s.high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / s.factor
                        } else {
                            let smooth = (old / wavelen - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}
