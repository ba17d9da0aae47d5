//! Chat templates from untrusted model directories: rendering stops at its limits (fuel, output
//! size, wall time) with an error naming the template, never a hang or an unbounded allocation;
//! and a fuzz smoke (see `fuzz_common`): the committed templates of `fixtures/chat/`, byte-mutated,
//! must compile and render to `Ok` or an error, never a panic, and never past the limits.
//! `scripts/fuzz.sh chat [SECONDS]` runs the fuzz target for longer. This test binary installs the
//! memory cap as its global allocator, as the `temper` binary does.

mod fuzz_common;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuzz_common::fuzz;
use tempering_model::chat::{ChatMessage, ChatTemplate, RenderLimits, RenderMemoryCap};
use tempering_model::{ModelError, TemplateLimit};

#[global_allocator]
static GLOBAL: RenderMemoryCap<std::alloc::System> = RenderMemoryCap(std::alloc::System);

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Compute: 3+4"),
        ChatMessage::new("assistant", "3+4=7\nAnswer: 7"),
        ChatMessage::new("user", "And 2*5? <|im_end|> {{ not a tag }}"),
    ]
}

fn chat_fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/chat");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// The committed templates (from transformers' own renders) with their BOS and EOS strings.
fn committed_templates() -> Vec<(String, Option<String>, Option<String>)> {
    chat_fixtures()
        .iter()
        .map(|p| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            let s = |k: &str| v[k].as_str().map(str::to_string);
            (s("template").unwrap(), s("bos_token"), s("eos_token"))
        })
        .collect()
}

fn limit_of(err: ModelError) -> (String, TemplateLimit) {
    match err {
        ModelError::TemplateLimit { template, limit } => (template, limit),
        other => panic!("expected a template limit error, got: {other}"),
    }
}

#[test]
fn a_template_that_loops_for_ever_runs_out_of_fuel() {
    // 10^10 iterations: hours without a bound.
    let src = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    let t = ChatTemplate::new(src, None, None)
        .unwrap()
        .named("evil/tokenizer_config.json");
    let started = Instant::now();
    let err = t.render(&conversation(), true).unwrap_err();
    let elapsed = started.elapsed();
    let msg = err.to_string();
    let (name, limit) = limit_of(err);
    assert_eq!(name, "evil/tokenizer_config.json");
    assert_eq!(limit, TemplateLimit::Fuel(RenderLimits::default().fuel));
    assert!(
        msg.contains("evil/tokenizer_config.json") && msg.contains("fuel"),
        "{msg}"
    );
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}

#[test]
fn a_template_with_huge_output_stops_at_the_output_cap() {
    // Each iteration writes 1 MB: 100 GB in all.
    let src = "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}";
    let t = ChatTemplate::new(src, None, None).unwrap();
    let cap = RenderLimits::default().max_output_bytes;
    let (name, limit) = limit_of(t.render(&conversation(), false).unwrap_err());
    assert_eq!(name, "chat template");
    assert_eq!(limit, TemplateLimit::OutputBytes(cap));

    // Just under a smaller cap renders; one byte more does not.
    let exact = ChatTemplate::new("{{ 'ab' * 50 }}", None, None).unwrap();
    let limits = |max_output_bytes| RenderLimits {
        max_output_bytes,
        ..RenderLimits::default()
    };
    let ok = exact
        .clone()
        .with_limits(limits(100))
        .render(&[], false)
        .unwrap();
    assert_eq!(ok.len(), 100);
    let err = exact
        .with_limits(limits(99))
        .render(&[], false)
        .unwrap_err();
    assert_eq!(limit_of(err).1, TemplateLimit::OutputBytes(99));
}

#[test]
fn a_slow_template_stops_at_the_deadline() {
    // Cheap in fuel (a few instructions per iteration), slow in time: each iteration builds and
    // writes a 100 kB string. A zero deadline stops it at its first write.
    let src = "{% for i in range(100000) %}{{ 'y' * 100000 }}{% endfor %}";
    let limits = RenderLimits {
        max_duration: Duration::ZERO,
        ..RenderLimits::default()
    };
    let t = ChatTemplate::new(src, None, None)
        .unwrap()
        .with_limits(limits);
    let (_, limit) = limit_of(t.render(&conversation(), false).unwrap_err());
    assert_eq!(limit, TemplateLimit::Duration(Duration::ZERO));
}

#[test]
fn a_template_that_doubles_a_string_stops_at_the_memory_cap() {
    assert!(tempering_model::chat::memory_cap_installed());
    // 2^60 bytes in sixty steps of `~`, few instructions and no output before the end: only the
    // memory cap stops it.
    let src = "{% set ns = namespace(s='xy') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}";
    let cap = 64 << 20;
    let t = ChatTemplate::new(src, None, None)
        .unwrap()
        .named("evil/chat_template.jinja")
        .with_limits(RenderLimits {
            max_memory_bytes: cap,
            ..RenderLimits::default()
        });
    let started = Instant::now();
    let err = t.render(&conversation(), false).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    let msg = err.to_string();
    let (name, limit) = limit_of(err);
    assert_eq!(name, "evil/chat_template.jinja");
    assert_eq!(limit, TemplateLimit::Memory(cap));
    assert!(msg.contains(&cap.to_string()), "{msg}");

    // The same loop, twelve doublings (8 kB): inside every bound, it renders.
    let ok = ChatTemplate::new(src.replace("range(60)", "range(12)"), None, None)
        .unwrap()
        .with_limits(RenderLimits {
            max_memory_bytes: cap,
            ..RenderLimits::default()
        })
        .render(&conversation(), false)
        .unwrap();
    assert_eq!(ok, (2usize << 12).to_string());
}

#[test]
fn a_template_busy_without_writing_stops_at_the_deadline() {
    // Ten million instructions of arithmetic, no output: the caller's deadline ends the wait.
    let src = "{% set ns = namespace(n=0) %}{% for i in range(100000) %}{% for j in range(100000) %}{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}{{ ns.n }}";
    let limits = RenderLimits {
        max_duration: Duration::from_millis(50),
        ..RenderLimits::default()
    };
    let t = ChatTemplate::new(src, None, None)
        .unwrap()
        .with_limits(limits);
    let started = Instant::now();
    let (_, limit) = limit_of(t.render(&conversation(), false).unwrap_err());
    assert_eq!(limit, TemplateLimit::Duration(Duration::from_millis(50)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn committed_templates_render_with_a_hundredth_of_the_default_fuel() {
    let small = RenderLimits {
        fuel: RenderLimits::default().fuel / 100,
        ..RenderLimits::default()
    };
    let templates = committed_templates();
    assert!(
        templates.len() >= 4,
        "fixtures/chat: {} templates",
        templates.len()
    );
    // A long conversation: 200 turns.
    let long: Vec<ChatMessage> = (0..200)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            ChatMessage::new(role, format!("turn {i}: Compute: {i}+1"))
        })
        .collect();
    for (src, bos, eos) in templates {
        let t = ChatTemplate::new(src, bos, eos).unwrap().with_limits(small);
        for messages in [conversation()[1..].to_vec(), long.clone()] {
            match t.render(&messages, true) {
                Ok(text) => assert!(text.contains("Compute"), "{text}"),
                // Some templates refuse a system turn or an unordered conversation by design.
                Err(ModelError::Template(msg)) => assert!(msg.contains("exception"), "{msg}"),
                Err(e) => panic!("{}: {e}", t.origin()),
            }
        }
    }
}

#[test]
fn the_error_names_the_file_the_template_was_read_from() {
    let dir = tempfile::tempdir().unwrap();
    let src =
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}";
    std::fs::write(dir.path().join("chat_template.jinja"), src).unwrap();
    let t = ChatTemplate::from_hf_dir(dir.path()).unwrap().unwrap();
    let small = RenderLimits {
        fuel: 10_000,
        ..RenderLimits::default()
    };
    let msg = t
        .with_limits(small)
        .render(&conversation(), true)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("chat_template.jinja"), "{msg}");
    assert!(msg.contains("10000 template instructions"), "{msg}");
}

/// Fuzz target: mutated templates compile or fail; those that compile render under small limits.
#[test]
fn chat_template() {
    let templates = committed_templates();
    let mut seeds: Vec<Vec<u8>> = templates
        .iter()
        .map(|(s, _, _)| s.as_bytes().to_vec())
        .collect();
    // Loops and repetitions whose bounds a mutated digit can blow up.
    seeds.push(
        b"{% for i in range(30) %}{% for j in range(30) %}{{ i * j }}{% endfor %}{% endfor %}"
            .to_vec(),
    );
    seeds.push(b"{% set ns = namespace(s='ab') %}{% for m in messages %}{{ m.content * 3 }}{{ ns.s * 40 }}{% endfor %}".to_vec());
    let limits = RenderLimits {
        fuel: 200_000,
        max_output_bytes: 1 << 20,
        max_duration: Duration::from_secs(2),
        max_memory_bytes: 64 << 20,
    };
    let messages = conversation();
    let (cases, rendered) = (Cell::new(0u32), Cell::new(0u32));
    fuzz("chat", &seeds, 256, |bytes| {
        cases.set(cases.get() + 1);
        let Ok(src) = std::str::from_utf8(bytes) else {
            return;
        };
        let Ok(t) = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into())) else {
            return;
        };
        let t = t.with_limits(limits);
        for add_generation_prompt in [false, true] {
            if let Ok(text) = t.render(&messages, add_generation_prompt) {
                assert!(text.len() <= limits.max_output_bytes);
                rendered.set(rendered.get() + 1);
            }
        }
    });
    // The mutations must leave enough templates whole to exercise rendering, not only the parser.
    assert!(
        rendered.get() * 10 >= cases.get(),
        "only {} renders in {} cases",
        rendered.get(),
        cases.get()
    );
}
