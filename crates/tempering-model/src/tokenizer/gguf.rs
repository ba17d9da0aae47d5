//! Building a `tokenizers::Tokenizer` from a GGUF file's `tokenizer.ggml.*` metadata, following what
//! llama.cpp (src/llama-vocab.cpp) does with the same keys, and HF's GGUF conversion where llama.cpp
//! keeps no tokenizer.json-shaped state (the SentencePiece merges).
//!
//! Two vocabulary types are supported:
//! - `gpt2`: byte-level BPE with `tokenizer.ggml.merges`, split first by the pre-tokenizer that
//!   `tokenizer.ggml.pre` names (see `pretok`).
//! - `llama`: SentencePiece-style BPE over a scored vocabulary: spaces become `▁`, a `▁` is prepended to
//!   each run of text (at the start and after every special token, as llama.cpp's `add_space_prefix`
//!   does), pieces merge by descending score, and characters outside the vocabulary fall back to
//!   `<0xXX>` byte tokens.
//!
//! Token types (`tokenizer.ggml.token_type`, llama.cpp's numbering): 1 normal, 2 unknown, 3 control,
//! 4 user-defined, 5 unused, 6 byte (unused and byte tokens are plain vocabulary entries). Control and unknown tokens become special added tokens and
//! user-defined ones plain added tokens, all matched on the raw text before anything else, which is
//! llama.cpp's `parse_special = true`.
//!
//! This module reads metadata and builds tokenizer parts; it knows nothing of tensors or model weights.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{AddedToken, NormalizerWrapper};

use super::pretok;
use crate::error::{ModelError, Result};

/// llama.cpp's `LLAMA_TOKEN_TYPE_*`.
pub(crate) mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const BYTE: i32 = 6;
}

/// Token texts llama.cpp treats as end-of-generation (and forces to control type) whatever their
/// declared type.
pub(crate) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// What the conversion produces besides the tokenizer itself.
pub(crate) struct Converted {
    pub inner: tokenizers::Tokenizer,
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    pub pad: Option<(u32, String)>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub kind: String,
}

/// Typed access to the metadata map; every error names the file and the key.
struct Meta<'a> {
    md: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> ModelError {
        ModelError::format(self.path, format!("GGUF metadata `{key}`: {msg}"))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.md.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.err(
                key,
                format!("expected a string, found {:?}", v.value_type()),
            )),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("expected a bool, found {:?}", v.value_type()))),
        }
    }

    fn uint(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => int_of(v)
                .and_then(|i| u32::try_from(i).ok())
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a token id, found {v:?}"))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a.as_slice())),
            Some(v) => Err(self.err(
                key,
                format!("expected an array, found {:?}", v.value_type()),
            )),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        arr.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.err(key, format!("element {i}: expected a string, found {v:?}"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        arr.iter()
            .enumerate()
            .map(|(i, v)| {
                int_of(v).ok_or_else(|| {
                    self.err(
                        key,
                        format!("element {i}: expected an integer, found {v:?}"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        arr.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                v => int_of(v).map(|x| x as f32).ok_or_else(|| {
                    self.err(key, format!("element {i}: expected a number, found {v:?}"))
                }),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

fn int_of(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => i64::from(*x),
        Value::I8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

/// Converts the tokenizer metadata of `content` (read from `path`, named in errors).
pub(crate) fn convert(content: &Content, path: &Path) -> Result<Converted> {
    let meta = Meta {
        md: &content.metadata,
        path,
    };
    let model = meta
        .string("tokenizer.ggml.model")?
        .ok_or_else(|| meta.err("tokenizer.ggml.model", "missing"))?;
    let mut tokens: Vec<String> = meta
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| meta.err("tokenizer.ggml.tokens", "missing"))?
        .into_iter()
        .map(str::to_string)
        .collect();
    let n = tokens.len();
    if n == 0 {
        return Err(meta.err("tokenizer.ggml.tokens", "empty vocabulary"));
    }
    // llama.cpp renames empty entries so that every id keeps a distinct text.
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[EMPTY_{i}]");
        }
    }
    let mut types: Vec<i32> = match meta.ints("tokenizer.ggml.token_type")? {
        Some(t) if t.len() < n => {
            return Err(meta.err(
                "tokenizer.ggml.token_type",
                format!("{} entries for {n} tokens", t.len()),
            ))
        }
        Some(t) => t.into_iter().take(n).map(|x| x as i32).collect(),
        None => vec![token_type::NORMAL; n],
    };
    // As llama.cpp does: end-of-generation texts are control tokens whatever their declared type.
    for (t, ty) in tokens.iter().zip(types.iter_mut()) {
        if EOG_TEXTS.contains(&t.as_str()) && *ty != token_type::CONTROL {
            tracing::debug!(
                "GGUF token {t:?} has type {ty}; treating it as a control token, as llama.cpp does"
            );
            *ty = token_type::CONTROL;
        }
    }
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(n);
    for (i, t) in tokens.iter().enumerate() {
        if let Some(prev) = vocab.insert(t.clone(), i as u32) {
            return Err(meta.err(
                "tokenizer.ggml.tokens",
                format!("token {t:?} appears twice (ids {prev} and {i})"),
            ));
        }
    }

    let id_key = |key: &str, default: Option<u32>| -> Result<Option<(u32, String)>> {
        let id = meta.uint(key)?.or(default);
        Ok(match id {
            Some(id) if (id as usize) < n => Some((id, tokens[id as usize].clone())),
            Some(id) => {
                tracing::warn!(
                    "{}: GGUF `{key}` = {id} is outside the vocabulary of {n}; ignored",
                    path.display()
                );
                None
            }
            None => None,
        })
    };

    let is_spm = match model {
        "gpt2" => false,
        "llama" => true,
        other => {
            return Err(ModelError::Unsupported(format!(
                "{}: GGUF `tokenizer.ggml.model` = {other:?}; supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece BPE)",
                path.display()
            )))
        }
    };
    // llama.cpp's default ids: SPM 1/2 (unk 0); BPE none worth trusting.
    let (bos_default, eos_default) = if is_spm {
        (Some(1), Some(2))
    } else {
        (None, None)
    };
    let bos = id_key("tokenizer.ggml.bos_token_id", bos_default)?;
    let eos = id_key("tokenizer.ggml.eos_token_id", eos_default)?;
    let pad = id_key("tokenizer.ggml.padding_token_id", None)?;
    let unk = id_key(
        "tokenizer.ggml.unknown_token_id",
        if is_spm { Some(0) } else { None },
    )?;
    let add_eos = meta
        .boolean("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);

    let (mut inner, add_bos_default, kind) = if is_spm {
        let scores = match meta.floats("tokenizer.ggml.scores")? {
            Some(s) if s.len() < n => {
                return Err(meta.err(
                    "tokenizer.ggml.scores",
                    format!("{} entries for {n} tokens", s.len()),
                ))
            }
            Some(s) => s,
            None => vec![0.0; n],
        };
        let add_space_prefix = meta
            .boolean("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true);
        let unk_text = unk
            .as_ref()
            .filter(|(id, _)| types[*id as usize] == token_type::UNKNOWN)
            .map(|(_, t)| t.clone());
        let inner = build_spm(
            &tokens,
            &types,
            &scores,
            vocab,
            unk_text,
            add_space_prefix,
            &meta,
        )?;
        let kind = format!(
            "SentencePiece BPE (byte fallback), {n} tokens{}",
            if add_space_prefix {
                ", space prefix"
            } else {
                ""
            }
        );
        (inner, true, kind)
    } else {
        let pre = meta.string("tokenizer.ggml.pre")?;
        let spec = pretok::spec_for(pre)
            .map_err(|msg| ModelError::Unsupported(format!("{}: {msg}", path.display())))?;
        let merges = meta.strings("tokenizer.ggml.merges")?.ok_or_else(|| {
            meta.err(
                "tokenizer.ggml.merges",
                "missing (required for `gpt2` vocabularies)",
            )
        })?;
        let inner = build_bpe(vocab, &merges, &spec, &meta)?;
        let kind = format!(
            "byte-level BPE, {n} tokens, pre-tokenizer {}",
            pre.unwrap_or("default (absent)")
        );
        (inner, spec.add_bos_default, kind)
    };
    let add_bos = meta
        .boolean("tokenizer.ggml.add_bos_token")?
        .unwrap_or(add_bos_default);

    // Added tokens: control and unknown are special, user-defined are not; all match raw text.
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        match *ty {
            token_type::CONTROL | token_type::UNKNOWN => special.push((
                i as u32,
                AddedToken::from(t.clone(), true).normalized(false),
            )),
            token_type::USER_DEFINED => user.push((
                i as u32,
                AddedToken::from(t.clone(), false).normalized(false),
            )),
            _ => {}
        }
    }
    let only = |v: &[(u32, AddedToken)]| v.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>();
    let added = |e: tokenizers::Error| {
        ModelError::format(
            path,
            format!("adding the GGUF vocabulary's added tokens: {e}"),
        )
    };
    inner.add_special_tokens(only(&special)).map_err(added)?;
    inner.add_tokens(only(&user)).map_err(added)?;
    for (want, tok) in special.iter().chain(&user) {
        let got = inner.token_to_id(&tok.content);
        if got != Some(*want) {
            return Err(ModelError::format(
                path,
                format!(
                    "added token {:?} got id {got:?}, expected {want}",
                    tok.content
                ),
            ));
        }
    }

    let bos_for_template = if add_bos { bos.clone() } else { None };
    if add_bos && bos.is_none() {
        tracing::warn!(
            "{}: GGUF asks for a BOS token but names none; not adding one",
            path.display()
        );
    }
    let eos_for_template = if add_eos { eos.clone() } else { None };
    if let Some(pp) =
        super::template_processor(bos_for_template.as_ref(), eos_for_template.as_ref())?
    {
        inner.with_post_processor(Some(pp));
    }

    let (add_bos, add_eos) = (add_bos && bos.is_some(), add_eos && eos.is_some());
    Ok(Converted {
        inner,
        bos,
        eos,
        pad,
        add_bos,
        add_eos,
        kind: format!("{kind} (from GGUF)"),
    })
}

/// Byte-level BPE: the vocabulary as is, the merges in file order (lower index merges first).
fn build_bpe(
    vocab: HashMap<String, u32>,
    merges: &[&str],
    spec: &pretok::PreTokenizerSpec,
    meta: &Meta<'_>,
) -> Result<tokenizers::Tokenizer> {
    let mut pairs = Vec::with_capacity(merges.len());
    let mut skipped = 0usize;
    for (i, m) in merges.iter().enumerate() {
        // llama.cpp splits at the first space after the first byte (a piece may itself be " ").
        let first = m.chars().next().map_or(0, char::len_utf8);
        let pos = m
            .get(first..)
            .and_then(|rest| rest.find(' '))
            .map(|p| p + first)
            .ok_or_else(|| {
                meta.err(
                    "tokenizer.ggml.merges",
                    format!("entry {i} ({m:?}) is not \"left right\""),
                )
            })?;
        let (l, r) = (&m[..pos], &m[pos + 1..]);
        // A merge whose parts or result are not tokens can never fire in llama.cpp; tokenizers
        // rejects it, so drop it.
        if !vocab.contains_key(l)
            || !vocab.contains_key(r)
            || !vocab.contains_key(&format!("{l}{r}"))
        {
            skipped += 1;
            continue;
        }
        pairs.push((l.to_string(), r.to_string()));
    }
    if skipped > 0 {
        tracing::warn!(
            "{}: {skipped} GGUF merges name pieces outside the vocabulary; skipped",
            meta.path.display()
        );
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), pairs)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| {
            ModelError::format(meta.path, format!("building BPE from GGUF vocabulary: {e}"))
        })?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(spec.build()?));
    tok.with_decoder(Some(DecoderWrapper::from(ByteLevelDecoder::new(
        false, true, true,
    ))));
    Ok(tok)
}

/// SentencePiece BPE: merges derived from the scores as HF's GGUF conversion derives them (every
/// split of a piece into two vocabulary pieces, ranked by the piece's score, highest first).
fn build_spm(
    tokens: &[String],
    types: &[i32],
    scores: &[f32],
    vocab: HashMap<String, u32>,
    unk: Option<String>,
    add_space_prefix: bool,
    meta: &Meta<'_>,
) -> Result<tokenizers::Tokenizer> {
    let mergeable = |i: usize| {
        !matches!(
            types[i],
            token_type::BYTE | token_type::CONTROL | token_type::UNKNOWN
        )
    };
    // (score of piece, id of piece, score left, score right, left, right)
    let mut found: Vec<(f32, u32, f32, f32, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !mergeable(id) {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                if mergeable(li as usize) && mergeable(ri as usize) {
                    found.push((
                        scores[id],
                        id as u32,
                        scores[li as usize],
                        scores[ri as usize],
                        l,
                        r,
                    ));
                }
            }
        }
    }
    // Highest score first; for one piece, HF orders its splits by the parts' scores, highest first.
    found.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(b.2.total_cmp(&a.2))
            .then(b.3.total_cmp(&a.3))
    });
    let merges: Vec<(String, String)> = found
        .into_iter()
        .map(|(_, _, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect();

    let mut builder = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| {
        ModelError::format(
            meta.path,
            format!("building SentencePiece BPE from GGUF vocabulary: {e}"),
        )
    })?;
    let mut tok = tokenizers::Tokenizer::new(bpe);

    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| ModelError::Tokenizer(format!("replace {from:?}: {e}")))
    };
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        norm.push(Prepend::new("▁".to_string()).into());
    }
    norm.push(replace(" ", "▁")?.into());
    tok.with_normalizer(Some(NormalizerWrapper::from(NormalizerSequence::new(norm))))
        .map_err(|e| ModelError::Tokenizer(format!("SentencePiece normalizer: {e}")))?;

    let mut dec: Vec<DecoderWrapper> = vec![
        replace("▁", " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderWrapper::from(DecoderSequence::new(dec))));
    Ok(tok)
}
