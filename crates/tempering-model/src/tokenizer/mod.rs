//! The project's tokenizer: text to token ids and back, for a model read from an HF directory
//! (`tokenizer.json`, with `tokenizer_config.json` beside it for the BOS/EOS/PAD names and
//! `add_bos_token`) or from a GGUF file (its `tokenizer.ggml.*` metadata converted into the same
//! `tokenizers::Tokenizer` structure, pre-tokenizer included, so that ids match llama.cpp's).
//!
//! Special-token text inside the input (`<|im_start|>`) is always read as the special token, as HF
//! and llama.cpp (`parse_special = true`) do; `add_special_tokens` adds what the model's own rules
//! add (BOS for Llama-style vocabularies, nothing for SmolLM2). Any tokenizer can be written back as
//! an HF `tokenizer.json` that transformers' `PreTrainedTokenizerFast` loads and that tokenises the
//! same way.
//!
//! The `Tokenizer` type lives here; [`special`] reads the special tokens that `tokenizer_config.json`
//! names and builds the BOS/EOS post-processor, `gguf` converts GGUF metadata and `pretok` rebuilds
//! llama.cpp's named pre-tokenizers.
//!
//! This module knows nothing of chat templates, model weights, tensors or generation: it maps strings
//! to ids and names the ids that matter (BOS, EOS, PAD, end-of-turn).

mod gguf;
mod pretok;
mod special;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use serde_json::Value as Json;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::ModelWrapper;

use crate::error::{ModelError, Result};
use crate::weights::write_atomic;
pub(crate) use special::template_processor;
use special::{add_config_tokens, bool_field, missing_template_token, probe_added, token_field};

/// Token texts that end a turn or a document in the common chat formats; `stop_token_ids` returns
/// those present in the vocabulary (llama.cpp's end-of-generation list).
const STOP_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|end|>",
    "<|eom_id|>",
    "</s>",
    "<end_of_turn>",
    "<eos>",
    "<EOT>",
    "<end_of_utterance>",
];

/// How a vocabulary entry spells its bytes (read off the decoder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceStyle {
    /// GPT-2 byte-to-unicode mapping (`Ġ` is a space).
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xXX>` is one byte.
    Metaspace,
    /// WordPiece: `##` continues a word.
    WordPiece,
    /// The entry is the text.
    Plain,
}

/// A tokenizer with the model's special tokens named. Cheap to share behind an `Arc`; `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    pad: Option<(u32, String)>,
    add_bos: bool,
    add_eos: bool,
    kind: String,
    style: PieceStyle,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Reads an HF `tokenizer.json`, and `tokenizer_config.json` from the same directory when it is
    /// there: its `bos_token`, `eos_token`, `pad_token` (strings or `{"content": ..}` objects),
    /// `added_tokens_decoder` (tokens missing from `tokenizer.json` are added) and an explicit
    /// `add_bos_token` / `add_eos_token`, which rebuild the post-processor when they disagree with
    /// it, as transformers' Llama-family tokenizers do. Truncation and padding stored in the file are
    /// switched off: callers decide lengths.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        // Valid JSON first (syntax, UTF-8, escapes): `tokenizers` 0.23 panics (`expect("Helper")`)
        // on any such error inside the `decoder` object (found by fuzzing; the inputs are in
        // fixtures/bad/model/). Skipping over strings would not check their encoding.
        let json = serde_json::from_slice::<Json>(&bytes)
            .map_err(|e| ModelError::format(path, format!("not a tokenizer.json: {e}")))?;
        // A post-processor template naming a special token it does not define panics in
        // `tokenizers` at the first encode (fuzzing found it); refuse it here.
        if let Some(id) = json.get("post_processor").and_then(missing_template_token) {
            return Err(ModelError::format(
                path,
                format!("post_processor: the template uses special token `{id}`, which it does not define"),
            ));
        }
        drop(json);
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| ModelError::format(path, format!("not a tokenizer.json: {e}")))?;
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::format(path, e.to_string()))?;
        inner.with_padding(None);

        let config_path = path.with_file_name("tokenizer_config.json");
        let config = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| ModelError::io(&config_path, e))?;
            let json: Json = serde_json::from_str(&text)
                .map_err(|e| ModelError::format(&config_path, format!("invalid JSON: {e}")))?;
            if !json.is_object() {
                return Err(ModelError::format(&config_path, "expected a JSON object"));
            }
            Some((config_path, json))
        } else {
            None
        };

        let (mut bos, mut eos, mut pad) = (None, None, None);
        let (mut want_bos, mut want_eos) = (None, None);
        if let Some((cpath, cfg)) = &config {
            add_config_tokens(&mut inner, cpath, cfg)?;
            let named = |field: &str| -> Result<Option<(u32, String)>> {
                let Some(text) = token_field(cpath, cfg, field)? else {
                    return Ok(None);
                };
                match inner.token_to_id(&text) {
                    Some(id) => Ok(Some((id, text))),
                    None => {
                        tracing::warn!(
                            "{}: `{field}` = {text:?} is not in the vocabulary; ignored",
                            cpath.display()
                        );
                        Ok(None)
                    }
                }
            };
            bos = named("bos_token")?;
            eos = named("eos_token")?;
            pad = named("pad_token")?;
            want_bos = bool_field(cpath, cfg, "add_bos_token")?;
            want_eos = bool_field(cpath, cfg, "add_eos_token")?;
        }

        let (mut add_bos, mut add_eos) = probe_added(&inner, bos.as_ref(), eos.as_ref())?;
        let bos_change = want_bos.is_some_and(|w| w != add_bos) && bos.is_some();
        let eos_change = want_eos.is_some_and(|w| w != add_eos) && eos.is_some();
        if bos_change || eos_change {
            let b = if want_bos.unwrap_or(add_bos) {
                bos.as_ref()
            } else {
                None
            };
            let e = if want_eos.unwrap_or(add_eos) {
                eos.as_ref()
            } else {
                None
            };
            inner.with_post_processor(template_processor(b, e)?);
            (add_bos, add_eos) = probe_added(&inner, bos.as_ref(), eos.as_ref())?;
        }

        let style = piece_style(inner.get_decoder());
        let kind = format!(
            "{}, {} tokens (from tokenizer.json)",
            model_description(&inner, style),
            inner.get_vocab_size(true)
        );
        Ok(Tokenizer {
            inner,
            bos,
            eos,
            pad,
            add_bos,
            add_eos,
            kind,
            style,
        })
    }

    /// Builds the tokenizer from a GGUF file's metadata (`path` names the file in errors). Supports
    /// `tokenizer.ggml.model` = `gpt2` (byte-level BPE; `tokenizer.ggml.pre` must name a known
    /// pre-tokenizer, and an unknown name is an error naming it) and `llama` (SentencePiece BPE with
    /// scores and byte fallback).
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let c = gguf::convert(content, path)?;
        let style = piece_style(c.inner.get_decoder());
        Ok(Tokenizer {
            inner: c.inner,
            bos: c.bos,
            eos: c.eos,
            pad: c.pad,
            add_bos: c.add_bos,
            add_eos: c.add_eos,
            kind: c.kind,
            style,
        })
    }

    /// A character-level tokenizer over `chars` (one token per character, in sorted order after the
    /// specials `<pad>` = 0, `<eos>` = 1, `<unk>` = 2), for small models trained from scratch on a task
    /// with a small alphabet. It saves as an ordinary `tokenizer.json` that HF loads.
    pub fn char_level(chars: impl IntoIterator<Item = char>) -> Result<Self> {
        let mut chars: Vec<char> = chars.into_iter().collect();
        chars.sort_unstable();
        chars.dedup();
        let specials = ["<pad>", "<eos>", "<unk>"];
        let mut vocab = serde_json::Map::new();
        for (i, s) in specials.iter().enumerate() {
            vocab.insert(s.to_string(), Json::from(i));
        }
        for c in &chars {
            let id = vocab.len();
            vocab.entry(c.to_string()).or_insert(Json::from(id));
        }
        let added: Vec<Json> = specials
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let doc = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"},
                "behavior": "Isolated", "invert": false},
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        });
        let inner = tokenizers::Tokenizer::from_bytes(doc.to_string().as_bytes())
            .map_err(|e| ModelError::Tokenizer(format!("building a character tokenizer: {e}")))?;
        let style = piece_style(inner.get_decoder());
        let kind = format!(
            "character-level, {} tokens ({} characters + <pad> <eos> <unk>)",
            inner.get_vocab_size(true),
            chars.len()
        );
        Ok(Tokenizer {
            inner,
            bos: None,
            eos: Some((1, "<eos>".into())),
            pad: Some((0, "<pad>".into())),
            add_bos: false,
            add_eos: false,
            kind,
            style,
        })
    }

    /// The characters of `text` this tokenizer cannot represent (maps to `<unk>`), if any.
    pub fn unknown_chars(&self, text: &str) -> Vec<char> {
        let unk = self.inner.token_to_id("<unk>");
        let mut out: Vec<char> = text
            .chars()
            .filter(|c| {
                let ids = self.encode(&c.to_string(), false).unwrap_or_default();
                ids.is_empty() || (unk.is_some() && ids.iter().any(|i| Some(*i) == unk))
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Token ids of `text`. Special-token text inside it is read as the special token; with
    /// `add_special_tokens`, BOS (and EOS) are added where the model's rules say so.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| {
                ModelError::Tokenizer(format!("encoding {} bytes of text: {e}", text.len()))
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` (invalid UTF-8 from partial byte sequences becomes U+FFFD).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let n = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(ModelError::Tokenizer(format!(
                "decode: token id {bad} is outside the vocabulary of {n}"
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer(format!("decoding {} ids: {e}", ids.len())))
    }

    /// The raw vocabulary entry of `id` (`Ġthe`, `▁the`, `<0x0A>`, `<|im_end|>`).
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a raw vocabulary entry or added token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The beginning-of-sequence token (GGUF `bos_token_id`, or `bos_token` of `tokenizer_config.json`).
    pub fn bos_token(&self) -> Option<(u32, String)> {
        self.bos.clone()
    }

    /// The end-of-sequence token (GGUF `eos_token_id`, or `eos_token` of `tokenizer_config.json`).
    pub fn eos_token(&self) -> Option<(u32, String)> {
        self.eos.clone()
    }

    /// The padding token (GGUF `padding_token_id`, or `pad_token` of `tokenizer_config.json`).
    pub fn pad_token(&self) -> Option<(u32, String)> {
        self.pad.clone()
    }

    /// The id that pads batches: the padding token, else EOS, else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad
            .as_ref()
            .or(self.eos.as_ref())
            .map_or(0, |(id, _)| *id)
    }

    /// Whether `encode(.., true)` puts BOS first.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Every added token marked special, by id.
    pub fn special_tokens(&self) -> Vec<(u32, String)> {
        let mut v: Vec<(u32, String)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        v.sort();
        v
    }

    /// EOS, then the end-of-turn / end-of-text tokens present in the vocabulary (`<|im_end|>`,
    /// `<|eot_id|>`, `<|endoftext|>`, `</s>`, `<end_of_turn>` ...), without repeats.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos.iter().map(|(id, _)| *id).collect();
        for t in STOP_TEXTS {
            if let Some(id) = self.inner.token_to_id(t) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// A one-line description, e.g. `byte-level BPE, 49152 tokens, pre-tokenizer smollm (from GGUF)`.
    pub fn kind(&self) -> String {
        self.kind.clone()
    }

    /// The bytes one token stands for, decoded lossily (for display: a token holding part of a
    /// multi-byte character shows U+FFFD; `<|im_end|>` shows as itself; `Ġthe` as ` the`).
    pub fn piece_text(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.piece_bytes(id)).into_owned()
    }

    /// The bytes one token stands for (empty for an id outside the vocabulary).
    pub fn piece_bytes(&self, id: u32) -> Vec<u8> {
        if let Some(t) = self.inner.get_added_vocabulary().simple_id_to_token(id) {
            return t.into_bytes();
        }
        let Some(piece) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        match self.style {
            PieceStyle::ByteLevel => {
                let table = unicode_to_byte();
                piece
                    .chars()
                    .map(|c| table.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| piece.into_bytes())
            }
            PieceStyle::Metaspace => match byte_piece(&piece) {
                Some(b) => vec![b],
                None => piece.replace('▁', " ").into_bytes(),
            },
            PieceStyle::WordPiece => match piece.strip_prefix("##") {
                Some(rest) => rest.as_bytes().to_vec(),
                None => format!(" {piece}").into_bytes(),
            },
            PieceStyle::Plain => piece.into_bytes(),
        }
    }

    /// Writes `dir/tokenizer.json` (creating `dir`), through a temporary name and a rename, in the
    /// form HF `tokenizers` / transformers' `PreTrainedTokenizerFast(tokenizer_file=..)` load.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let target = dir.join("tokenizer.json");
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| ModelError::Tokenizer(format!("serialising {}: {e}", target.display())))?;
        write_atomic(&target, json.as_bytes())
    }

    /// The `tokenizer_config.json` fields that describe this tokenizer (`bos_token`, `eos_token`,
    /// `pad_token`, `add_bos_token`, `add_eos_token`, `tokenizer_class`,
    /// `clean_up_tokenization_spaces`), for whoever writes that file (with the chat template) beside
    /// `tokenizer.json`.
    pub fn hf_config_fields(&self) -> serde_json::Map<String, Json> {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: &Option<(u32, String)>| {
            if let Some((_, t)) = v {
                m.insert(k.to_string(), Json::String(t.clone()));
            }
        };
        put("bos_token", &self.bos);
        put("eos_token", &self.eos);
        put("pad_token", &self.pad);
        m.insert("add_bos_token".into(), Json::Bool(self.add_bos));
        m.insert("add_eos_token".into(), Json::Bool(self.add_eos));
        m.insert("clean_up_tokenization_spaces".into(), Json::Bool(false));
        m.insert(
            "tokenizer_class".into(),
            Json::String("PreTrainedTokenizerFast".into()),
        );
        m
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn piece_style(decoder: Option<&DecoderWrapper>) -> PieceStyle {
    fn visit(d: &DecoderWrapper, found: &mut Option<PieceStyle>) {
        let style = match d {
            DecoderWrapper::ByteLevel(_) => Some(PieceStyle::ByteLevel),
            DecoderWrapper::Metaspace(_) | DecoderWrapper::ByteFallback(_) => {
                Some(PieceStyle::Metaspace)
            }
            DecoderWrapper::WordPiece(_) => Some(PieceStyle::WordPiece),
            DecoderWrapper::Sequence(s) => {
                for d in s.get_decoders() {
                    visit(d, found);
                }
                None
            }
            _ => None,
        };
        if found.is_none() {
            *found = style;
        }
    }
    let mut found = None;
    if let Some(d) = decoder {
        visit(d, &mut found);
    }
    found.unwrap_or(PieceStyle::Plain)
}

fn model_description(inner: &tokenizers::Tokenizer, style: PieceStyle) -> &'static str {
    match inner.get_model() {
        ModelWrapper::BPE(b) if b.byte_fallback => "SentencePiece BPE (byte fallback)",
        ModelWrapper::BPE(_) if style == PieceStyle::ByteLevel => "byte-level BPE",
        ModelWrapper::BPE(_) => "BPE",
        ModelWrapper::WordPiece(_) => "WordPiece",
        ModelWrapper::WordLevel(_) => "word-level",
        ModelWrapper::Unigram(_) => "Unigram",
    }
}

/// `<0xAB>` → 0xAB.
fn byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's byte-to-unicode table, inverted.
fn unicode_to_byte() -> &'static HashMap<char, u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u32| {
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b)
        };
        let mut next = 256u32;
        let mut m = HashMap::with_capacity(256);
        for b in 0u32..=255 {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            if let Some(ch) = char::from_u32(c) {
                m.insert(ch, b as u8);
            }
        }
        m
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = unicode_to_byte();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'Ġ'], b' ');
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'ĉ'], b'\t');
        assert_eq!(t[&'A'], b'A');
        assert_eq!(t[&'ł'], 0xA0);
        assert_eq!(t[&'Ń'], 0xAD);
    }

    #[test]
    fn byte_pieces_parse() {
        assert_eq!(byte_piece("<0x0A>"), Some(10));
        assert_eq!(byte_piece("<0xFF>"), Some(255));
        assert_eq!(byte_piece("<0x0A"), None);
        assert_eq!(byte_piece("<0x123>"), None);
        assert_eq!(byte_piece("▁the"), None);
    }
}
