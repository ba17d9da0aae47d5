//! Shared test helpers: a character-level tokenizer with a chat template, a tiny model directory
//! (the fixture tiny-llama's weights plus that tokenizer), and greedy decoding.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tempering_model::{ChatTemplate, ModelFiles, Tokenizer, Transformer};

pub const TEMPLATE: &str = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}\
{% if add_generation_prompt %}<|assistant|>{% endif %}";

pub fn fixture_model() -> PathBuf {
    tempering_model::known::fixtures_dir().join("models/tiny-llama")
}

/// Writes `tokenizer.json` and `tokenizer_config.json` (a character-level BPE without merges: one
/// token per printable ASCII character, `<pad>` 0, `<s>` 1, `</s>` 2) into `dir`.
pub fn write_char_tokenizer(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let specials = ["<pad>", "<s>", "</s>"];
    let mut vocab = serde_json::Map::new();
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for c in 32u8..127 {
        vocab.insert((c as char).to_string(), json!(vocab.len()));
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "?", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg = json!({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                     "chat_template": TEMPLATE});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

pub fn char_tokenizer(dir: &Path) -> (Tokenizer, ChatTemplate) {
    write_char_tokenizer(dir);
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let tmpl = ChatTemplate::new(TEMPLATE, Some("<s>".into()), Some("</s>".into())).unwrap();
    (tok, tmpl)
}

/// The fixture tiny-llama (vocab 256, 2 layers, hidden 64) as a fresh, frozen transformer.
pub fn tiny_model() -> Transformer {
    ModelFiles::open(&fixture_model(), DType::F32, &Device::Cpu)
        .unwrap()
        .transformer()
        .unwrap()
}

/// An HF model directory: tiny-llama's weights with the character tokenizer and chat template.
pub fn tiny_model_dir(dir: &Path) -> PathBuf {
    let out = dir.join("tiny-chat");
    let model = tiny_model();
    let (tok, tmpl) = char_tokenizer(&dir.join("tok"));
    tempering_model::loader::save_hf_dir(&out, &model, Some(&tok), Some(&tmpl), DType::F32)
        .unwrap();
    out
}

/// Greedy continuation of `prompt` by `n` tokens (full forward each time: tests only).
pub fn greedy(model: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    for _ in 0..n {
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward_causal(&input).unwrap();
        let last = logits.squeeze(0).unwrap().get(ids.len() - 1).unwrap();
        let next = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        ids.push(next);
    }
    ids[prompt.len()..].to_vec()
}
