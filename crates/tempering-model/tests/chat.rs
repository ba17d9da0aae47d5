//! Chat templates against HF transformers' renders (fixtures/chat/*.json, made by
//! scripts/reference/chat_fixtures.py): byte-identical text, and `raise_exception` as a clear error.

use std::path::{Path, PathBuf};

use tempering_model::chat::{ChatMessage, ChatTemplate};
use tempering_model::ModelError;

#[derive(serde::Deserialize)]
struct Fixture {
    name: String,
    template: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    expected: Option<String>,
    expected_error: Option<String>,
}

fn chat_fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/chat")
}

fn load(name: &str) -> Fixture {
    let path = chat_fixtures_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Renders every case of a fixture; returns how many were compared. Panics with a diff on mismatch.
fn check_fixture(name: &str) -> usize {
    let fx = load(name);
    assert_eq!(fx.name, name);
    let template = ChatTemplate::new(
        fx.template.clone(),
        fx.bos_token.clone(),
        fx.eos_token.clone(),
    )
    .unwrap_or_else(|e| panic!("{name}: template does not compile: {e}"));
    assert_eq!(template.source(), fx.template);
    assert!(!fx.cases.is_empty(), "{name}: no cases");
    for case in &fx.cases {
        let got = template.render(&case.messages, case.add_generation_prompt);
        match (&case.expected, &case.expected_error) {
            (Some(expected), None) => {
                let got =
                    got.unwrap_or_else(|e| panic!("{name}/{}: render failed: {e}", case.name));
                if &got != expected {
                    let at = got
                        .char_indices()
                        .zip(expected.chars())
                        .find(|((_, a), b)| a != b)
                        .map(|((i, _), _)| i)
                        .unwrap_or(got.len().min(expected.len()));
                    panic!(
                        "{name}/{}: render differs from transformers at byte {at}\n--- expected\n{expected:?}\n--- got\n{got:?}",
                        case.name
                    );
                }
            }
            (None, Some(msg)) => match got {
                Ok(text) => panic!(
                    "{name}/{}: expected error {msg:?}, rendered {text:?}",
                    case.name
                ),
                Err(ModelError::Template(err)) => {
                    assert!(
                        err.contains(msg.as_str()) && err.contains("raised"),
                        "{name}/{}: error {err:?} does not carry {msg:?}",
                        case.name
                    );
                    // No Jinja machinery noise in the message the user sees.
                    assert_eq!(err, format!("template raised an exception: {msg}"));
                }
                Err(other) => panic!("{name}/{}: wrong error kind: {other}", case.name),
            },
            _ => panic!(
                "{name}/{}: fixture needs exactly one of expected / expected_error",
                case.name
            ),
        }
    }
    fx.cases.len()
}

#[test]
fn smollm2_template_matches_transformers() {
    assert_eq!(check_fixture("smollm2"), 10);
}

#[test]
fn qwen2_template_matches_transformers() {
    assert_eq!(check_fixture("qwen2"), 12);
}

#[test]
fn llama3_template_matches_transformers() {
    assert_eq!(check_fixture("llama3"), 10);
}

#[test]
fn llama31_template_matches_transformers() {
    assert_eq!(check_fixture("llama31"), 12);
}

#[test]
fn llama2_template_raises_like_transformers() {
    assert_eq!(check_fixture("llama2"), 14);
}

#[test]
fn hf_specifics_match_transformers() {
    assert_eq!(check_fixture("features"), 10);
}

#[test]
fn raise_exception_is_a_clear_template_error() {
    let t = ChatTemplate::new(
        "{% if messages[0].role != 'user' %}{{ raise_exception('First message must be from the user, got ' + messages[0].role) }}{% endif %}ok",
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        t.render(&[ChatMessage::new("user", "hi")], false).unwrap(),
        "ok"
    );
    let err = t
        .render(&[ChatMessage::new("bot", "hi")], false)
        .unwrap_err();
    assert!(matches!(err, ModelError::Template(_)));
    assert_eq!(
        err.to_string(),
        "chat template: template raised an exception: First message must be from the user, got bot"
    );
}

#[test]
fn compile_error_names_the_line() {
    let src = "{% for m in messages %}\n{{ m.content }}\n{% if %}\n{% endfor %}";
    let err = ChatTemplate::new(src, None, None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Template(_)), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("{% if %}"), "{msg}");

    let err = ChatTemplate::new("{% for m in messages %}{{ m }}", None, None).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn render_error_names_the_line() {
    let t = ChatTemplate::new("a\n{{ messages[0].content.nosuchmethod() }}", None, None).unwrap();
    let msg = t
        .render(&[ChatMessage::new("user", "x")], false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn bos_and_eos_are_undefined_when_absent() {
    let src =
        "{{ bos_token is defined }} {{ eos_token is defined }} {{ bos_token }}{{ eos_token }}";
    let t = ChatTemplate::new(src, None, Some("</s>".into())).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "False True </s>");
    assert_eq!(t.bos_token(), None);
    assert_eq!(t.eos_token(), Some("</s>"));
}

#[test]
fn strftime_now_formats_the_current_date() {
    let t = ChatTemplate::new(
        "{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}",
        None,
        None,
    )
    .unwrap();
    let out = t.render(&[], false).unwrap();
    let (iso, human) = out.split_once('|').unwrap();
    let parts: Vec<&str> = iso.split('-').collect();
    assert_eq!(parts.len(), 3, "{out}");
    let year: i32 = parts[0].parse().unwrap();
    assert!((2024..3000).contains(&year), "{out}");
    assert!(
        (1..=12).contains(&parts[1].parse::<u32>().unwrap()),
        "{out}"
    );
    assert!(
        human.ends_with(parts[0]) && human.starts_with(parts[2]),
        "{out}"
    );

    let bad = ChatTemplate::new("{{ strftime_now('%Q%') }}", None, None).unwrap();
    assert!(matches!(
        bad.render(&[], false),
        Err(ModelError::Template(_))
    ));
}

#[test]
fn trailing_newline_is_dropped_and_blocks_trimmed() {
    // Jinja2 (and so HF) drops one trailing newline of the source; trim_blocks eats the newline after
    // a block tag; lstrip_blocks eats the indentation before one.
    let t = ChatTemplate::new(
        "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n",
        None,
        None,
    )
    .unwrap();
    let msgs = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    assert_eq!(t.render(&msgs, false).unwrap(), "[a]\n[b]\n");
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn from_hf_dir_reads_string_template_and_added_token_objects() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{
            "bos_token": {"__type": "AddedToken", "content": "<|begin|>", "lstrip": false},
            "eos_token": "<|end|>",
            "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
        }"#,
    );
    let t = ChatTemplate::from_hf_dir(dir.path()).unwrap().unwrap();
    assert_eq!(t.bos_token(), Some("<|begin|>"));
    assert_eq!(t.eos_token(), Some("<|end|>"));
    assert_eq!(
        t.render(&[ChatMessage::new("user", "hi")], true).unwrap(),
        "<|begin|>hi<|end|>"
    );
}

#[test]
fn from_hf_dir_picks_the_default_of_named_templates() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"eos_token": null, "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "DEFAULT"},
            {"name": "rag", "template": "RAG"}
        ]}"#,
    );
    let t = ChatTemplate::from_hf_dir(dir.path()).unwrap().unwrap();
    assert_eq!(t.source(), "DEFAULT");
    assert_eq!(t.eos_token(), None);

    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]}"#,
    );
    let err = ChatTemplate::from_hf_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("default"),
        "{err}"
    );
}

#[test]
fn from_hf_dir_prefers_chat_template_jinja_and_falls_back_to_special_tokens_map() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"chat_template": "FROM CONFIG"}"#,
    );
    write(
        dir.path(),
        "special_tokens_map.json",
        r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>"}"#,
    );
    write(
        dir.path(),
        "chat_template.jinja",
        "{{ bos_token }}FROM FILE{{ eos_token }}\n",
    );
    let t = ChatTemplate::from_hf_dir(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "<s>FROM FILE</s>");
}

#[test]
fn from_hf_dir_without_template_is_none_and_bad_json_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::from_hf_dir(dir.path()).unwrap().is_none());
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"eos_token": "</s>"}"#,
    );
    assert!(ChatTemplate::from_hf_dir(dir.path()).unwrap().is_none());
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"chat_template": 3}"#,
    );
    assert!(matches!(
        ChatTemplate::from_hf_dir(dir.path()),
        Err(ModelError::Format { .. })
    ));
    write(dir.path(), "tokenizer_config.json", "{not json");
    let err = ChatTemplate::from_hf_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("invalid JSON"),
        "{err}"
    );
}
