//! What makes minijinja render a chat template as transformers' Jinja2 environment does: the
//! environment's settings (`trim_blocks`, `lstrip_blocks`, no trailing newline, Python string and
//! dict methods), the `raise_exception(msg)` and `strftime_now(fmt)` globals, a `tojson` filter that
//! writes what Python's `json.dumps` writes, values printed as Python prints them (`True`, `None`,
//! `['a', 1]`), and HF's `{% generation %}` block rewritten into a transparent one.
//!
//! It knows Jinja2's and Python's conventions and nothing else: not where a template comes from,
//! not the limits it renders under, not messages, tokenizers or models.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Output, State, Value};

/// An environment set up as transformers sets up its own (`ImmutableSandboxedEnvironment` with
/// `trim_blocks`, `lstrip_blocks`, loop controls and the globals and filters above).
pub(super) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env
}

/// The message of a template's `raise_exception(msg)`, if that is what ended a render.
pub(super) fn raised_message(err: &JinjaError) -> Option<&str> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return Some(&raised.0);
        }
        cause = e.source();
    }
    None
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

/// Rewrites HF's `{% generation %}` / `{% endgeneration %}` tags (transformers' AssistantTracker
/// extension) into `{% if true %}` / `{% endif %}`: same output, same whitespace control, same lines.
pub(super) fn rewrite_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // The closing `%}` starts after the opening `{%` (in `{%}` they overlap: not a tag).
        let Some(end) = tag[2..].find("%}").map(|i| i + 2) else {
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
    use crate::chat::{ChatMessage, ChatTemplate};

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
        // Found by the fuzz target: `{%}` (open and close overlapping) panicked on a slice.
        assert_eq!(rewrite_generation_blocks("a{%}b"), "a{%}b");
        assert_eq!(
            rewrite_generation_blocks("{%}{% generation %}x{% endgeneration %}"),
            "{%}{% generation %}x{% endif %}"
        );
        assert!(ChatTemplate::new("x{%}{{ 1 }}", None, None).is_err());
    }
}
