//! Chat templates: Jinja sources from HF tokenizer configs (or GGUF metadata) rendered with minijinja
//! exactly as HF transformers' `apply_chat_template(..., tokenize=False)` renders them.
//!
//! The environment mirrors the one transformers builds: `trim_blocks` and `lstrip_blocks` on, no
//! trailing newline kept, loop controls, Python string and dict methods, the `raise_exception(msg)` and
//! `strftime_now(fmt)` globals, a `tojson` filter that writes what Python's `json.dumps` writes, and the
//! `{% generation %}` block (rendered transparently, as HF does when no assistant mask is asked for).
//! Values print as Python prints them (`True`, `None`, `['a', 1]`).
//!
//! This module turns messages into a prompt string and nothing else: it knows nothing of tokenizers,
//! token ids, models or where a conversation comes from.

use std::fmt::Write as _;
use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Output, State, Value};

use crate::error::{ModelError, Result};

/// One turn of a conversation, in the OpenAI / TRL `messages` form.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Name under which the compiled template lives in its environment (shown in error messages).
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template plus the special-token strings it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        ChatTemplate {
            env: self.env.clone(),
            source: self.source.clone(),
            bos_token: self.bos_token.clone(),
            eos_token: self.eos_token.clone(),
        }
    }
}

/// The error a template's `raise_exception(msg)` call raises, carried through minijinja's error chain.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` become the template variables of the same name
    /// (left undefined when `None`, as HF leaves them when the tokenizer has no such token).
    /// A syntax error is reported with its line number and the text of that line.
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let source = source.into();
        let compiled = rewrite_generation_blocks(&source);
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, compiled)
            .map_err(|e| ModelError::Template(describe_compile_error(&e, &source)))?;
        Ok(ChatTemplate {
            env,
            source,
            bos_token,
            eos_token,
        })
    }

    /// Reads the chat template of an HF model directory: `chat_template.jinja` when present (newer
    /// transformers save it there), else `tokenizer_config.json`'s `chat_template`, either a string
    /// or a list of `{name, template}` where the one named `default` wins. BOS/EOS strings come from
    /// `tokenizer_config.json` (plain strings or `{content: ..}` added-token objects), falling back
    /// to `special_tokens_map.json`. `Ok(None)` when the directory has no chat template.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_if_exists(&config_path)?;
        let special_path = dir.join("special_tokens_map.json");
        let special = read_json_if_exists(&special_path)?;

        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.is_file() {
            Some(std::fs::read_to_string(&jinja_path).map_err(|e| ModelError::io(&jinja_path, e))?)
        } else {
            match config.as_ref().and_then(|c| c.get("chat_template")) {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => Some(template_from_config_value(value, &config_path)?),
            }
        };
        let Some(source) = source else {
            return Ok(None);
        };

        let token = |key: &str| -> Result<Option<String>> {
            if let Some(v) = config.as_ref().and_then(|c| c.get(key)) {
                if !v.is_null() {
                    return token_string(v, &config_path, key).map(Some);
                }
            }
            match special.as_ref().and_then(|c| c.get(key)) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => token_string(v, &special_path, key).map(Some),
            }
        };
        let bos = token("bos_token")?;
        let eos = token("eos_token")?;
        Self::new(source, bos, eos).map(Some)
    }

    /// The Jinja source as given (before any internal rewriting).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The BOS string the template sees as `bos_token`, if any.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS string the template sees as `eos_token`, if any.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders a conversation. Like transformers, `tools` and `documents` are passed as `None`.
    /// A `raise_exception(msg)` in the template becomes `ModelError::Template` carrying `msg`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        let mut vars: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        if let Some(bos) = &self.bos_token {
            vars.push(("bos_token", Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos_token {
            vars.push(("eos_token", Value::from(eos.as_str())));
        }
        let ctx: Value = vars.into_iter().collect();
        template
            .render(ctx)
            .map_err(|e| ModelError::Template(describe_render_error(&e, &self.source)))
    }
}

/// `chat_template` from `tokenizer_config.json`: a string, or a list of `{name, template}`.
fn template_from_config_value(value: &serde_json::Value, path: &Path) -> Result<String> {
    match value {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Array(items) => {
            let mut named = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let name = item.get("name").and_then(|v| v.as_str());
                let template = item.get("template").and_then(|v| v.as_str());
                match (name, template) {
                    (Some(n), Some(t)) => named.push((n, t)),
                    _ => {
                        return Err(ModelError::format(
                            path,
                            format!(
                                "chat_template[{i}]: expected an object with string fields `name` and `template`"
                            ),
                        ))
                    }
                }
            }
            match named.iter().find(|(n, _)| *n == "default") {
                Some((_, t)) => Ok((*t).to_string()),
                None => {
                    let names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
                    Err(ModelError::format(
                        path,
                        format!(
                            "chat_template: several templates ({}) and none named `default`",
                            names.join(", ")
                        ),
                    ))
                }
            }
        }
        _ => Err(ModelError::format(
            path,
            "chat_template: expected a string or a list of {name, template}",
        )),
    }
}

/// A special token given as a string or as an added-token object `{"content": "..", ..}`.
fn token_string(value: &serde_json::Value, path: &Path, key: &str) -> Result<String> {
    match value {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Object(map) => match map.get("content") {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            _ => Err(ModelError::format(
                path,
                format!("`{key}`: added-token object without a string `content`"),
            )),
        },
        _ => Err(ModelError::format(
            path,
            format!("`{key}`: expected a string or an object with `content`"),
        )),
    }
}

fn read_json_if_exists(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))
}

/// Rewrites HF's `{% generation %}` / `{% endgeneration %}` tags (transformers' AssistantTracker
/// extension) into `{% if true %}` / `{% endif %}`: same output, same whitespace control, same lines.
fn rewrite_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = split_ws_control(inner, true);
        let (body, trail) = split_ws_control(body, false);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                let _ = write!(out, "{{%{lead} {r} {trail}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Splits a leading (or trailing) `-` / `+` whitespace-control marker off a tag's inner text.
fn split_ws_control(s: &str, leading: bool) -> (&str, &str) {
    if leading {
        match s.chars().next() {
            Some('-') | Some('+') => (&s[..1], &s[1..]),
            _ => ("", s),
        }
    } else {
        match s.chars().last() {
            Some('-') | Some('+') => (&s[..s.len() - 1], &s[s.len() - 1..]),
            _ => (s, ""),
        }
    }
}

/// `line N: detail` followed by the offending line of the template.
fn describe_compile_error(err: &JinjaError, source: &str) -> String {
    let detail = err.detail().unwrap_or("invalid template");
    match err.line() {
        Some(line) => {
            let text = source.lines().nth(line.saturating_sub(1)).unwrap_or("");
            format!(
                "syntax error ({}) at template line {line}: {detail}\n  {line} | {text}",
                err.kind()
            )
        }
        None => format!("syntax error ({}): {detail}", err.kind()),
    }
}

fn describe_render_error(err: &JinjaError, source: &str) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return format!("template raised an exception: {}", raised.0);
        }
        cause = e.source();
    }
    let detail = err.detail().unwrap_or("render failed");
    match err.line() {
        Some(line) => {
            let text = source.lines().nth(line.saturating_sub(1)).unwrap_or("");
            format!(
                "render error ({}) at template line {line}: {detail}\n  {line} | {text}",
                err.kind()
            )
        }
        None => format!("render error ({}): {detail}", err.kind()),
    }
}

/// `raise_exception(msg)`: aborts rendering with `msg` (HF raises `jinja2.TemplateError(msg)`).
fn raise_exception(msg: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    )
    .with_source(RaisedException(msg)))
}

/// `strftime_now(fmt)`: the local time formatted with C `strftime` directives, as Python's
/// `datetime.now().strftime(fmt)`.
fn strftime_now(fmt: String) -> std::result::Result<Value, JinjaError> {
    let now = chrono::Local::now();
    let mut out = String::new();
    write!(out, "{}", now.format(&fmt)).map_err(|_| {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format string {fmt:?}"),
        )
    })?;
    Ok(Value::from(out))
}

/// Prints values as Jinja2 (Python) prints them: `True`/`False`, `None`, Python reprs for lists and
/// dicts; everything else as minijinja prints it (strings and numbers agree).
fn python_formatter(
    out: &mut Output,
    state: &State,
    value: &Value,
) -> std::result::Result<(), JinjaError> {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            py_repr(value, &mut s)?;
            out.write_str(&s).map_err(JinjaError::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python's `repr` of a value (for lists and dicts printed directly).
fn py_repr(value: &Value, out: &mut String) -> std::result::Result<(), JinjaError> {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&py_number(value)),
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            py_str_repr(s, out);
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out)?;
                out.push_str(": ");
                py_repr(&value.get_item(&key)?, out)?;
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
    Ok(())
}

/// Python's `repr(str)`: single quotes unless the text holds `'` and no `"`.
fn py_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// A number as Python's `repr` writes it (floats keep `.0`; exponents as `1e+16`, `1.5e-05`).
fn py_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    let Ok(x) = f64::try_from(value.clone()) else {
        return value.to_string();
    };
    py_float(x)
}

fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    let ax = x.abs();
    if ax != 0.0 && !(1e-4..1e16).contains(&ax) {
        // Rust: "1.5e-5"; Python: "1.5e-05".
        let s = format!("{x:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = format!("{x}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// HF's `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)` with those keyword arguments honoured (Python's separators and escaping, no HTML
/// escaping, key order kept).
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let ensure_ascii: bool = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys: bool = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let indent_value: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;

    let indent = match indent_value {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => {
            if let Some(s) = v.as_str() {
                Some(s.to_string())
            } else if let Some(n) = v.as_i64() {
                Some(" ".repeat(n.max(0) as usize))
            } else {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ));
            }
        }
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => match (a.as_str(), b.as_str()) {
                    (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                    _ => {
                        return Err(JinjaError::new(
                            ErrorKind::InvalidOperation,
                            "tojson: separators must be two strings",
                        ))
                    }
                },
                _ => {
                    return Err(JinjaError::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair (item_separator, key_separator)",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        ensure_ascii,
        sort_keys,
        indent,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    write_json(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
}

impl JsonOpts {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }
}

fn write_json(
    value: &Value,
    opts: &JsonOpts,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), JinjaError> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&py_number(value)),
        ValueKind::String => json_str(value.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                opts.newline(depth + 1, out);
                write_json(item, opts, depth + 1, out)?;
            }
            opts.newline(depth, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                opts.newline(depth + 1, out);
                json_str(key, opts.ensure_ascii, out);
                out.push_str(&opts.key_sep);
                write_json(item, opts, depth + 1, out)?;
            }
            opts.newline(depth, out);
            out.push('}');
        }
        ValueKind::Undefined => {
            return Err(JinjaError::new(
                ErrorKind::UndefinedError,
                "tojson: value is undefined",
            ))
        }
        other => {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of kind {other} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// A dict key as `json.dumps` writes it: strings as-is, numbers, booleans and None as their JSON text.
fn json_key(key: &Value) -> std::result::Result<String, JinjaError> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Number => Ok(py_number(key)),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::None => Ok("null".to_string()),
        other => Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, int, float, bool or None, not {other}"),
        )),
    }
}

/// A JSON string literal with Python's escaping (`ensure_ascii` escapes everything above 0x7f).
fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_str(src: &str) -> String {
        let t = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into())).unwrap();
        t.render(&[ChatMessage::new("user", "hi")], false).unwrap()
    }

    #[test]
    fn python_style_values() {
        assert_eq!(
            render_str("{{ true }} {{ none }} {{ [1, 'a', 2.0] }}"),
            "True None [1, 'a', 2.0]"
        );
    }

    #[test]
    fn tojson_matches_json_dumps() {
        assert_eq!(
            render_str("{{ {'b': [1, 2.5, none, true], 'a': 'é<\"'}|tojson }}"),
            r#"{"b": [1, 2.5, null, true], "a": "é<\""}"#
        );
        assert_eq!(
            render_str("{{ {'b': 1, 'a': [1]}|tojson(indent=2, sort_keys=true) }}"),
            "{\n  \"a\": [\n    1\n  ],\n  \"b\": 1\n}"
        );
        assert_eq!(
            render_str("{{ 'é'|tojson(ensure_ascii=true) }}"),
            "\"\\u00e9\""
        );
        assert_eq!(
            render_str("{{ messages|tojson }}"),
            r#"[{"role": "user", "content": "hi"}]"#
        );
    }

    #[test]
    fn python_floats() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(1.5e-5), "1.5e-05");
        assert_eq!(py_float(-2.5), "-2.5");
    }

    #[test]
    fn generation_tags_are_transparent() {
        let src = "{%- for m in messages %}{% generation -%}\n[{{ m.content }}]{%- endgeneration %}{% endfor %}";
        assert_eq!(render_str(src), "[hi]");
        assert_eq!(
            rewrite_generation_blocks("a{%- generation %}b{% endgeneration -%}c{% if x %}"),
            "a{%- if true %}b{% endif -%}c{% if x %}"
        );
    }
}
