//! Opening a model from disk, whatever its format: an HF directory (config.json, safetensors,
//! tokenizer.json, tokenizer_config.json) or a GGUF file, into a config, weights, a tokenizer and a
//! chat template; and writing a model back out as an HF directory. Knows formats, not maths.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use serde_json::json;

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use crate::transformer::Transformer;
use crate::weights::{write_atomic, StoredTensor, Weights};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    HfDir,
    Gguf,
}

/// Everything a model path gives: config, weights, tokenizer and chat template.
pub struct ModelFiles {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
    /// `generation_config.json`'s content, if any.
    pub generation_config: Option<serde_json::Value>,
}

/// What `path` is: an HF directory or a GGUF file.
pub fn detect_format(path: &Path) -> Result<ModelFormat> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ModelFormat::HfDir);
        }
        return Err(ModelError::format(
            path,
            "a model directory needs a config.json (HF layout)",
        ));
    }
    if !path.exists() {
        return Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    let mut magic = [0u8; 4];
    let mut f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    use std::io::Read;
    f.read_exact(&mut magic)
        .map_err(|_| ModelError::format(path, "file too short to be a model"))?;
    if &magic == b"GGUF" {
        Ok(ModelFormat::Gguf)
    } else {
        Err(ModelError::format(
            path,
            "not a GGUF file (bad magic) and not an HF model directory",
        ))
    }
}

/// What `temper inspect` shows: everything but the weights' values, read from headers only.
pub struct ModelInfo {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub config: ModelConfig,
    pub stored: Vec<StoredTensor>,
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
}

/// `tokenizer`, or an error naming `path` as a model without one.
fn require_tokenizer<'a>(tokenizer: Option<&'a Tokenizer>, path: &Path) -> Result<&'a Tokenizer> {
    tokenizer.ok_or_else(|| {
        ModelError::format(
            path,
            "the model has no tokenizer (tokenizer.json or GGUF tokenizer metadata)",
        )
    })
}

impl ModelInfo {
    /// The tokenizer, or an error naming the model's path when it has none.
    pub fn require_tokenizer(&self) -> Result<&Tokenizer> {
        require_tokenizer(self.tokenizer.as_ref(), &self.path)
    }

    /// Reads config, tensor index, tokenizer and chat template of `path` without loading weights.
    pub fn read(path: &Path) -> Result<Self> {
        let format = detect_format(path)?;
        match format {
            ModelFormat::HfDir => {
                let config = ModelConfig::from_hf_file(&path.join("config.json"))?;
                let stored = crate::weights::list_hf_dir(path)?;
                let tok_path = path.join("tokenizer.json");
                let tokenizer = if tok_path.is_file() {
                    Some(Tokenizer::from_file(&tok_path)?)
                } else {
                    None
                };
                Ok(ModelInfo {
                    path: path.to_path_buf(),
                    format,
                    config,
                    stored,
                    tokenizer,
                    chat_template: ChatTemplate::from_hf_dir(path)?,
                })
            }
            ModelFormat::Gguf => {
                let content = read_gguf(path)?;
                let config = gguf_config(&content, path)?;
                let stored = crate::weights::list_gguf(&content);
                let tokenizer = gguf_tokenizer(&content, path)?;
                let chat_template = match &tokenizer {
                    Some(t) => gguf_chat_template(&content, t, path)?,
                    None => None,
                };
                Ok(ModelInfo {
                    path: path.to_path_buf(),
                    format,
                    config,
                    stored,
                    tokenizer,
                    chat_template,
                })
            }
        }
    }
}

/// The GGUF's tokenizer, or `None` when the file carries no vocabulary at all.
fn gguf_tokenizer(content: &gguf_file::Content, path: &Path) -> Result<Option<Tokenizer>> {
    if !content.metadata.contains_key("tokenizer.ggml.model") {
        return Ok(None);
    }
    Tokenizer::from_gguf(content, path).map(Some)
}

fn gguf_chat_template(
    content: &gguf_file::Content,
    tokenizer: &Tokenizer,
    path: &Path,
) -> Result<Option<ChatTemplate>> {
    match content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
    {
        Some(src) => Ok(Some(
            ChatTemplate::new(
                src.clone(),
                tokenizer.bos_token().map(|(_, s)| s),
                tokenizer.eos_token().map(|(_, s)| s),
            )?
            .named(format!("{} (tokenizer.chat_template)", path.display())),
        )),
        None => Ok(None),
    }
}

impl ModelFiles {
    /// The tokenizer, or an error naming the model's path when it has none (no `tokenizer.json`,
    /// no GGUF tokenizer metadata).
    pub fn require_tokenizer(&self) -> Result<&Tokenizer> {
        require_tokenizer(self.tokenizer.as_ref(), &self.path)
    }

    /// Opens `path` (HF directory or GGUF file), with weights as `dtype` on `device`.
    pub fn open(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        match detect_format(path)? {
            ModelFormat::HfDir => Self::open_hf(path, dtype, device),
            ModelFormat::Gguf => Self::open_gguf(path, dtype, device),
        }
    }

    fn open_hf(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
        let weights = Weights::from_hf_dir(dir, dtype, device)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.is_file() {
            Some(Tokenizer::from_file(&tok_path)?)
        } else {
            None
        };
        let chat_template = ChatTemplate::from_hf_dir(dir)?;
        let gen_path = dir.join("generation_config.json");
        let generation_config = if gen_path.is_file() {
            let text =
                std::fs::read_to_string(&gen_path).map_err(|e| ModelError::io(&gen_path, e))?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| ModelError::format(&gen_path, format!("invalid JSON: {e}")))?,
            )
        } else {
            None
        };
        Ok(ModelFiles {
            path: dir.to_path_buf(),
            format: ModelFormat::HfDir,
            config,
            weights,
            tokenizer,
            chat_template,
            generation_config,
        })
    }

    fn open_gguf(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let content = read_gguf(path)?;
        let config = gguf_config(&content, path)?;
        let weights = Weights::from_gguf(&content, path, &config, dtype, device)?;
        let tokenizer = gguf_tokenizer(&content, path)?;
        let chat_template = match &tokenizer {
            Some(t) => gguf_chat_template(&content, t, path)?,
            None => None,
        };
        Ok(ModelFiles {
            path: path.to_path_buf(),
            format: ModelFormat::Gguf,
            config,
            weights,
            tokenizer,
            chat_template,
            generation_config: None,
        })
    }

    /// The decoder built from these weights.
    pub fn transformer(&self) -> Result<Transformer> {
        Transformer::from_weights(&self.config, &self.weights)
    }

    pub fn stored_tensors(&self) -> &[StoredTensor] {
        self.weights.stored()
    }
}

/// The config of a GGUF file, with llama.cpp's `rope_freqs.weight` (Llama-3 RoPE scaling) applied.
pub fn gguf_config(content: &gguf_file::Content, path: &Path) -> Result<ModelConfig> {
    let mut config = ModelConfig::from_gguf(content, path)?;
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        let mut f = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let factors: Vec<f64> = content
            .tensor(&mut f, "rope_freqs.weight", &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>())
            .map_err(|e| ModelError::tensor(path, "rope_freqs.weight", e.to_string()))?;
        config.set_rope_freq_factors(&factors);
    }
    Ok(config)
}

/// Reads a GGUF file's header, metadata and tensor index. Every length in the file is checked
/// against the file's size first (see `gguf_check`), so a crafted file gives an error, not a
/// panic or a huge allocation.
pub fn read_gguf(path: &Path) -> Result<gguf_file::Content> {
    crate::gguf_check::check_header(path)?;
    let mut f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let content = gguf_file::Content::read(&mut f)
        .map_err(|e| ModelError::format(path, format!("not a readable GGUF file: {e}")))?;
    let len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    crate::gguf_check::check_tensors(&content, path, len)?;
    Ok(content)
}

/// Writes `model` as an HF directory `out`: config.json, model.safetensors (in `dtype`),
/// tokenizer.json, tokenizer_config.json (with the chat template) and generation_config.json. Each
/// file is written under a temporary name and renamed.
pub fn save_hf_dir(
    out: &Path,
    model: &Transformer,
    tokenizer: Option<&Tokenizer>,
    chat_template: Option<&ChatTemplate>,
    dtype: DType,
) -> Result<()> {
    let cfg = &model.config;
    if !cfg.hf_representable() {
        return Err(ModelError::Unsupported(
            "RoPE frequency factors (rope_freqs.weight) that match no HF rope_scaling".into(),
        ));
    }
    let mut tensors = model.named_tensors();
    if cfg.tie_word_embeddings {
        tensors.remove("lm_head.weight");
    }
    let config = cfg.to_hf_json(torch_dtype_name(dtype));
    save_hf_files(out, &tensors, config, tokenizer, chat_template, dtype)
}

/// The `torch_dtype` of `config.json` for weights stored as `dtype`.
pub(crate) fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// Writes an HF directory from its parts: `tensors` as `model.safetensors` (in `dtype`), `config`
/// as `config.json` (with the tokenizer's special ids added), the tokenizer files and
/// `generation_config.json`.
pub(crate) fn save_hf_files(
    out: &Path,
    tensors: &std::collections::BTreeMap<String, candle_core::Tensor>,
    mut config: serde_json::Value,
    tokenizer: Option<&Tokenizer>,
    chat_template: Option<&ChatTemplate>,
    dtype: DType,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let max_positions = config
        .get("max_position_embeddings")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    Weights::save_safetensors(tensors, &out.join("model.safetensors"), dtype)?;
    let mut gen = json!({"do_sample": false});
    if let Some(tok) = tokenizer {
        tok.save_hf(out)?;
        let obj = config.as_object_mut().expect("config is an object");
        let genobj = gen.as_object_mut().expect("object");
        if let Some((id, _)) = tok.bos_token() {
            obj.insert("bos_token_id".into(), json!(id));
            genobj.insert("bos_token_id".into(), json!(id));
        }
        if let Some((id, _)) = tok.eos_token() {
            obj.insert("eos_token_id".into(), json!(id));
            genobj.insert("eos_token_id".into(), json!(id));
        }
        if let Some((id, _)) = tok.pad_token() {
            obj.insert("pad_token_id".into(), json!(id));
            genobj.insert("pad_token_id".into(), json!(id));
        }
        let mut tc = serde_json::Value::Object(tok.hf_config_fields());
        let tcobj = tc.as_object_mut().expect("object");
        tcobj.insert("model_max_length".into(), max_positions);
        if let Some(ct) = chat_template {
            tcobj.insert("chat_template".into(), json!(ct.source()));
        }
        write_json(&out.join("tokenizer_config.json"), &tc)?;
    }
    write_json(&out.join("generation_config.json"), &gen)?;
    write_json(&out.join("config.json"), &config)?;
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| ModelError::format(path, e.to_string()))?;
    write_atomic(path, text.as_bytes())
}
