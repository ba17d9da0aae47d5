//! Score heads: a linear map from the decoder's final hidden states to a few labels, stored the way
//! HF stores its classifiers. A sequence classifier (`LlamaForSequenceClassification`: `score.weight`,
//! no bias) reads one score per sequence at its last real token; a token classifier
//! (`LlamaForTokenClassification`: `score.weight` and `score.bias`) scores every token. This module
//! loads and saves such directories. It knows the decoder and the HF format; nothing of what the
//! scores mean, how they are trained or which tokens a caller reads them at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Value};

use crate::chat::ChatTemplate;
use crate::error::{ModelError, Result};
use crate::loader::{save_hf_files, torch_dtype_name, ModelFiles, ModelFormat};
use crate::rng::SplitMix64;
use crate::tokenizer::Tokenizer;
use crate::transformer::{Linear, Transformer};

/// What a classifier scores: the whole sequence, or each token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    Sequence,
    Token,
}

impl HeadKind {
    /// The suffix of the HF class name (`Llama` + suffix).
    pub fn hf_suffix(self) -> &'static str {
        match self {
            HeadKind::Sequence => "ForSequenceClassification",
            HeadKind::Token => "ForTokenClassification",
        }
    }
}

/// `score`: hidden states `[.., H]` to label logits `[.., num_labels]`.
#[derive(Clone, Debug)]
pub struct ScoreHead {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl ScoreHead {
    /// A fresh head as HF initialises one: weights ~ N(0, 0.02) reproducible from `seed`, bias 0.
    pub fn init(
        hidden: usize,
        num_labels: usize,
        bias: bool,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if num_labels == 0 || hidden == 0 {
            return Err(ModelError::Unsupported(format!(
                "a score head needs at least one label and one hidden unit, got {num_labels} x {hidden}"
            )));
        }
        let mut rng = SplitMix64(seed ^ 0x5C0E_4EAD);
        let data: Vec<f32> = (0..num_labels * hidden)
            .map(|_| 0.02 * rng.normal())
            .collect();
        let weight = Tensor::from_vec(data, (num_labels, hidden), device)?.to_dtype(dtype)?;
        let bias = if bias {
            Some(Tensor::zeros(num_labels, dtype, device)?)
        } else {
            None
        };
        Ok(ScoreHead { weight, bias })
    }

    pub fn num_labels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Label logits `[.., num_labels]` for hidden states `[.., H]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        Linear::new(self.weight.clone(), self.bias.clone()).forward(hidden)
    }

    /// Turns the head's weights into `Var`s, returned under their HF names.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let w = Var::from_tensor(&self.weight)?;
        self.weight = w.as_tensor().clone();
        let mut vars = vec![("score.weight".to_string(), w)];
        if let Some(b) = self.bias.as_mut() {
            let v = Var::from_tensor(b)?;
            *b = v.as_tensor().clone();
            vars.push(("score.bias".to_string(), v));
        }
        Ok(vars)
    }

    /// The head's tensors under their HF names.
    pub fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut m = BTreeMap::new();
        m.insert("score.weight".to_string(), self.weight.clone());
        if let Some(b) = &self.bias {
            m.insert("score.bias".to_string(), b.clone());
        }
        m
    }
}

/// A decoder with a score head, as read from an HF classifier directory.
pub struct Classifier {
    pub path: PathBuf,
    pub model: Transformer,
    pub head: ScoreHead,
    pub kind: HeadKind,
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
    /// `config.json` as read, for the fields a caller adds (e.g. a step separator).
    pub config_json: Value,
    /// The config's `pad_token_id`, if any.
    pub pad_token_id: Option<u32>,
}

impl Classifier {
    /// Opens an HF classifier directory (`*ForSequenceClassification` or `*ForTokenClassification`)
    /// with its weights as `dtype` on `device`. A directory without `score.weight` is an error that
    /// says what was expected.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let mut files = ModelFiles::open(dir, dtype, device)?;
        if files.format != ModelFormat::HfDir {
            return Err(ModelError::format(
                dir,
                "a GGUF file holds no score head; expected an HF classifier directory \
                 (config.json, model.safetensors with `score.weight`)",
            ));
        }
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let config_json: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::format(&config_path, format!("invalid JSON: {e}")))?;
        let architecture = config_json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .unwrap_or("")
            .to_string();
        if !files.weights.contains("score.weight") {
            return Err(ModelError::format(
                dir,
                format!(
                    "no score head: the weights have no `score.weight` (architecture {}); expected an HF \
                     *ForSequenceClassification or *ForTokenClassification directory, as `temper rm` \
                     and `temper prm` write",
                    if architecture.is_empty() { "not given" } else { &architecture }
                ),
            ));
        }
        let h = files.config.hidden_size;
        let num_labels = files
            .weights
            .stored()
            .iter()
            .find(|s| s.name == "score.weight")
            .and_then(|s| s.shape.first().copied())
            .unwrap_or(0);
        let weight = files.weights.get("score.weight", &[num_labels, h])?;
        if let Some(n) = config_labels(&config_json) {
            if n != num_labels {
                return Err(ModelError::tensor(
                    &files.weights.source,
                    "score.weight",
                    format!("has {num_labels} rows, config.json declares {n} labels"),
                ));
            }
        }
        let bias = if files.weights.contains("score.bias") {
            Some(files.weights.get("score.bias", &[num_labels])?)
        } else {
            None
        };
        let kind = if architecture.ends_with(HeadKind::Token.hf_suffix()) {
            HeadKind::Token
        } else if architecture.ends_with(HeadKind::Sequence.hf_suffix()) {
            HeadKind::Sequence
        } else if bias.is_some() {
            HeadKind::Token
        } else {
            HeadKind::Sequence
        };
        // A classifier has no LM head: build the decoder with the (never used) head tied to the
        // embeddings when the weights hold none.
        if !files.config.tie_word_embeddings && !files.weights.contains("lm_head.weight") {
            files.config.tie_word_embeddings = true;
        }
        let model = files.transformer()?;
        let pad_token_id = config_json
            .get("pad_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32);
        Ok(Classifier {
            path: dir.to_path_buf(),
            model,
            head: ScoreHead { weight, bias },
            kind,
            tokenizer: files.tokenizer,
            chat_template: files.chat_template,
            config_json,
            pad_token_id,
        })
    }
}

/// The number of labels `config.json` declares (`num_labels`, else the size of `id2label`).
fn config_labels(v: &Value) -> Option<usize> {
    if let Some(n) = v.get("num_labels").and_then(|n| n.as_u64()) {
        return Some(n as usize);
    }
    v.get("id2label")
        .and_then(|m| m.as_object())
        .map(|m| m.len())
}

/// What to write besides the weights.
pub struct ClassifierSave<'a> {
    pub kind: HeadKind,
    /// One name per label (`id2label`); empty: `LABEL_0`, `LABEL_1`, ...
    pub label_names: &'a [&'a str],
    pub tokenizer: Option<&'a Tokenizer>,
    pub chat_template: Option<&'a ChatTemplate>,
    /// Extra `config.json` fields (e.g. the step separator of a process reward model).
    pub extra_config: serde_json::Map<String, Value>,
    pub dtype: DType,
}

/// Writes `model` with `head` as an HF classifier directory: `model.*` and `score.*` tensors (no LM
/// head), and a `config.json` naming `<Arch>ForSequenceClassification` or
/// `<Arch>ForTokenClassification` with `id2label`, `label2id` and `pad_token_id`, which
/// transformers' `AutoModelFor*Classification` loads.
pub fn save_classifier(
    out: &Path,
    model: &Transformer,
    head: &ScoreHead,
    opts: &ClassifierSave<'_>,
) -> Result<()> {
    let cfg = &model.config;
    if !cfg.hf_representable() {
        return Err(ModelError::Unsupported(
            "RoPE frequency factors (rope_freqs.weight) that match no HF rope_scaling".into(),
        ));
    }
    let n = head.num_labels();
    if !opts.label_names.is_empty() && opts.label_names.len() != n {
        return Err(ModelError::Unsupported(format!(
            "{} label names for a head of {n} labels",
            opts.label_names.len()
        )));
    }
    let mut tensors = model.named_tensors();
    tensors.remove("lm_head.weight");
    tensors.extend(head.named_tensors());
    let mut config = cfg.to_hf_json(torch_dtype_name(opts.dtype));
    let obj = config
        .as_object_mut()
        .ok_or_else(|| ModelError::Unsupported("config.json is not an object".into()))?;
    let base = cfg.architecture.hf_class().trim_end_matches("ForCausalLM");
    obj.insert(
        "architectures".into(),
        json!([format!("{base}{}", opts.kind.hf_suffix())]),
    );
    let names: Vec<String> = (0..n)
        .map(|i| {
            opts.label_names
                .get(i)
                .map_or_else(|| format!("LABEL_{i}"), |s| s.to_string())
        })
        .collect();
    let id2label: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, s)| (i.to_string(), json!(s)))
        .collect();
    let label2id: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), json!(i)))
        .collect();
    obj.insert("id2label".into(), Value::Object(id2label));
    obj.insert("label2id".into(), Value::Object(label2id));
    obj.insert("num_labels".into(), json!(n));
    if opts.kind == HeadKind::Token {
        obj.insert(
            "token_classification_bias".into(),
            json!(head.bias.is_some()),
        );
    }
    // HF reads a sequence score at the last token that is not padding; without a pad id it
    // cannot batch. The tokenizer's pad (written below) wins over EOS.
    if let Some((eos, _)) = opts.tokenizer.and_then(|t| t.eos_token()) {
        obj.insert("pad_token_id".into(), json!(eos));
    }
    for (k, v) in &opts.extra_config {
        obj.insert(k.clone(), v.clone());
    }
    save_hf_files(
        out,
        &tensors,
        config,
        opts.tokenizer,
        opts.chat_template,
        opts.dtype,
    )
}
