//! The special tokens around the vocabulary: what `tokenizer_config.json` names (BOS, EOS, PAD,
//! `add_bos_token`, `added_tokens_decoder` entries that `tokenizer.json` lacks), the BOS/EOS
//! post-processor built when a model's config asks for one, and the checks on a `tokenizer.json`'s
//! own post-processor (a template naming an undefined special token) and on what `encode` adds.
//!
//! It reads JSON and configures a `tokenizers::Tokenizer`; it knows nothing of GGUF metadata, chat
//! templates or models.

use std::path::Path;

use serde_json::Value as Json;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::AddedToken;

use crate::error::{ModelError, Result};

/// A post-processor adding `bos` before and `eos` after the text (`None` when neither is given).
/// Built through serde so that token texts containing `:` or spaces stay intact.
pub(crate) fn template_processor(
    bos: Option<&(u32, String)>,
    eos: Option<&(u32, String)>,
) -> Result<Option<PostProcessorWrapper>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let tok =
        |t: &str, type_id: u32| serde_json::json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq =
        |s: &str, type_id: u32| serde_json::json!({"Sequence": {"id": s, "type_id": type_id}});
    let (mut single, mut pair) = (Vec::new(), Vec::new());
    let mut specials = serde_json::Map::new();
    if let Some((id, t)) = bos {
        single.push(tok(t, 0));
        pair.push(tok(t, 0));
        specials.insert(
            t.clone(),
            serde_json::json!({"id": t, "ids": [id], "tokens": [t]}),
        );
    }
    single.push(seq("A", 0));
    pair.push(seq("A", 0));
    if let Some((_, t)) = eos {
        single.push(tok(t, 0));
        pair.push(tok(t, 0));
    }
    if let Some((_, t)) = bos {
        pair.push(tok(t, 1));
    }
    pair.push(seq("B", 1));
    if let Some((id, t)) = eos {
        pair.push(tok(t, 1));
        specials.insert(
            t.clone(),
            serde_json::json!({"id": t, "ids": [id], "tokens": [t]}),
        );
    }
    let json = serde_json::json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": specials,
    });
    serde_json::from_value::<PostProcessorWrapper>(json)
        .map(Some)
        .map_err(|e| ModelError::Tokenizer(format!("building the BOS/EOS post-processor: {e}")))
}

/// The first special token that a `TemplateProcessing` (anywhere inside `v`, sequences included)
/// uses in its `single` or `pair` template but leaves out of its `special_tokens`.
pub(super) fn missing_template_token(v: &Json) -> Option<String> {
    match v {
        Json::Object(o) => {
            if let Some(defined) = o.get("special_tokens") {
                for key in ["single", "pair"] {
                    for piece in o.get(key).and_then(Json::as_array).into_iter().flatten() {
                        let id = piece.get("SpecialToken").and_then(|t| t.get("id"));
                        if let Some(id) = id.and_then(Json::as_str) {
                            if defined.get(id).is_none() {
                                return Some(id.to_string());
                            }
                        }
                    }
                }
            }
            o.values().find_map(missing_template_token)
        }
        Json::Array(a) => a.iter().find_map(missing_template_token),
        _ => None,
    }
}

/// Whether `encode(.., true)` adds `bos` first / `eos` last, observed on a probe string.
pub(super) fn probe_added(
    inner: &tokenizers::Tokenizer,
    bos: Option<&(u32, String)>,
    eos: Option<&(u32, String)>,
) -> Result<(bool, bool)> {
    let ids = |special| {
        inner
            .encode_fast("a", special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer(format!("probing special tokens: {e}")))
    };
    let (plain, with) = (ids(false)?, ids(true)?);
    if with.len() <= plain.len() {
        return Ok((false, false));
    }
    let first = with.first().copied();
    let last = with.last().copied();
    Ok((
        bos.is_some_and(|(id, _)| first == Some(*id) && plain.first() != Some(id)),
        eos.is_some_and(|(id, _)| last == Some(*id) && plain.last() != Some(id)),
    ))
}

/// A token named in `tokenizer_config.json`: a string, `{"content": ..}`, or null/absent.
pub(super) fn token_field(path: &Path, cfg: &Json, field: &str) -> Result<Option<String>> {
    match cfg.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(o)) => match o.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(ModelError::format(
                path,
                format!("`{field}`: expected a string or an object with a string `content`"),
            )),
        },
        Some(_) => Err(ModelError::format(
            path,
            format!("`{field}`: expected a string or an object with a string `content`"),
        )),
    }
}

pub(super) fn bool_field(path: &Path, cfg: &Json, field: &str) -> Result<Option<bool>> {
    match cfg.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ModelError::format(
            path,
            format!("`{field}`: expected true or false"),
        )),
    }
}

/// Adds the `added_tokens_decoder` entries of `tokenizer_config.json` that `tokenizer.json` lacks.
pub(super) fn add_config_tokens(
    inner: &mut tokenizers::Tokenizer,
    path: &Path,
    cfg: &Json,
) -> Result<()> {
    let Some(decoder) = cfg.get("added_tokens_decoder") else {
        return Ok(());
    };
    let Some(entries) = decoder.as_object() else {
        return Err(ModelError::format(
            path,
            "`added_tokens_decoder`: expected an object",
        ));
    };
    let mut sorted: Vec<(u32, &Json)> = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let id: u32 = k.parse().map_err(|_| {
            ModelError::format(
                path,
                format!("`added_tokens_decoder`: key {k:?} is not a token id"),
            )
        })?;
        sorted.push((id, v));
    }
    sorted.sort_by_key(|(id, _)| *id);
    for (id, v) in sorted {
        let field = |name: &str| v.get(name).and_then(Json::as_bool).unwrap_or(false);
        let Some(content) = v.get("content").and_then(Json::as_str) else {
            return Err(ModelError::format(
                path,
                format!("`added_tokens_decoder.{id}`: missing string `content`"),
            ));
        };
        if inner.token_to_id(content).is_some() {
            continue;
        }
        let tok = AddedToken::from(content.to_string(), field("special"))
            .lstrip(field("lstrip"))
            .rstrip(field("rstrip"))
            .single_word(field("single_word"))
            .normalized(
                v.get("normalized")
                    .and_then(Json::as_bool)
                    .unwrap_or(!field("special")),
            );
        let added = if field("special") {
            inner.add_special_tokens([tok])
        } else {
            inner.add_tokens([tok])
        };
        added.map_err(|e| ModelError::format(path, format!("`added_tokens_decoder.{id}`: {e}")))?;
        let got = inner.token_to_id(content);
        if got != Some(id) {
            tracing::warn!(
                "{}: added token {content:?} declared with id {id} got id {got:?}",
                path.display()
            );
        }
    }
    Ok(())
}
