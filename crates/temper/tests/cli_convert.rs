//! `temper convert`, `logits` and `inspect` as a user runs them: a GGUF converted to an HF directory
//! behaves like the GGUF it came from, `convert` never overwrites a non-empty directory without
//! `--force`, and bad inputs fail with a message naming the file instead of a panic.
//!
//! The SmolLM2 tests skip (with a message) when the GGUF is absent; the others use the tiny GGUFs in
//! fixtures/gguf/ and always run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use tempering_model::known::{fixtures_dir, smollm2_or_skip};

mod common;

fn temper(args: &[&str]) -> Output {
    common::temper()
        .args(args)
        .output()
        .expect("running the temper binary")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs temper, asserts success, returns stdout.
fn ok(args: &[&str]) -> String {
    let o = temper(args);
    assert!(
        o.status.success(),
        "temper {args:?} failed ({}):\n{}",
        o.status,
        stderr(&o)
    );
    stdout(&o)
}

/// Runs temper, asserts it fails cleanly (exit 1, no panic) with an error that names `names`.
fn fails_naming(args: &[&str], names: &str) -> String {
    let o = temper(args);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "temper {args:?} should fail with status 1:\nstdout: {}\nstderr: {err}",
        stdout(&o)
    );
    assert!(
        !err.contains("panicked"),
        "temper {args:?} panicked:\n{err}"
    );
    assert!(
        err.starts_with("error: ") && err.contains(names),
        "temper {args:?}: the error should name {names}:\n{err}"
    );
    err
}

/// Every file under `dir` (relative path -> bytes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn logits_json(model: &Path, prompt: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "logits",
        p(model),
        "--prompt",
        prompt,
        "--json",
        "--top",
        "10",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args)).expect("logits --json prints one JSON object")
}

fn inspect_json(model: &Path) -> Value {
    serde_json::from_str(&ok(&["inspect", p(model), "--json"]))
        .expect("inspect --json prints one JSON object")
}

const HF_FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

#[test]
fn smollm2_converted_dir_gives_the_same_logits_as_the_gguf() {
    let Some(gguf) = smollm2_or_skip("smollm2_converted_dir_gives_the_same_logits_as_the_gguf")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    let said = ok(&["convert", p(&gguf), p(&out)]);
    assert!(
        said.contains(p(&out)),
        "convert should say what it wrote: {said}"
    );
    for f in HF_FILES {
        assert!(out.join(f).is_file(), "convert did not write {f}");
    }
    // No temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), HF_FILES.len(), "unexpected files: {names:?}");

    let prompts: [(&str, &[&str]); 4] = [
        ("The capital of France is", &[]),
        ("def fibonacci(n):", &[]),
        ("Ünïcödé and 東京 🙂", &[]),
        ("What is 2+3?", &["--chat"]),
    ];
    for (prompt, extra) in prompts {
        let a = logits_json(&gguf, prompt, extra);
        let b = logits_json(&out, prompt, extra);
        assert!(!a["ids"].as_array().unwrap().is_empty(), "{prompt}: no ids");
        assert_eq!(a["ids"], b["ids"], "{prompt:?} {extra:?}: token ids differ");
        let top = |v: &Value| -> Vec<(u64, String, f64)> {
            v["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["id"].as_u64().unwrap(),
                        t["token"].as_str().unwrap().to_string(),
                        t["logit"].as_f64().unwrap(),
                    )
                })
                .collect()
        };
        let (ta, tb) = (top(&a), top(&b));
        assert_eq!(ta.len(), 10);
        // Both paths dequantise with the same code and compute in f32: the same ids, tokens and
        // (to rounding) logits.
        for ((ia, sa, la), (ib, sb, lb)) in ta.iter().zip(&tb) {
            assert_eq!(
                (ia, sa),
                (ib, sb),
                "{prompt:?} {extra:?}: top tokens differ"
            );
            assert!(
                (la - lb).abs() <= 1e-4 * la.abs().max(1.0),
                "{prompt:?}: logit of {sa:?} {la} vs {lb}"
            );
        }
    }
    // SmolLM2's well-known answer, so that "the same" is not "the same nonsense".
    let paris = logits_json(&out, "The capital of France is", &[]);
    assert_eq!(paris["top"][0]["token"], " Paris");

    // inspect works on both and tells the same story.
    let (ia, ib) = (inspect_json(&gguf), inspect_json(&out));
    assert_eq!(ia["format"], "GGUF");
    assert_eq!(ib["format"], "HF directory (safetensors)");
    for key in ["architecture", "parameters", "chat_template"] {
        assert_eq!(ia[key], ib[key], "inspect {key} differs");
    }
    assert!(ia["chat_template"].as_str().unwrap().contains("im_start"));
    for key in [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
    ] {
        assert_eq!(ia["config"][key], ib["config"][key], "config {key} differs");
    }
    for key in ["vocab_size", "bos", "eos", "pad", "stop_token_ids"] {
        assert_eq!(
            ia["tokenizer"][key], ib["tokenizer"][key],
            "tokenizer {key} differs"
        );
    }
    let storage = |v: &Value| -> Vec<String> {
        v["tensor_groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["storage"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(storage(&ia).iter().any(|s| s == "q4_1"));
    assert!(storage(&ib).iter().all(|s| s == "f32"));
    // The text form works too.
    let text = ok(&["inspect", p(&out)]);
    assert!(text.contains("llama") && text.contains("chat template:"));
}

#[test]
fn convert_refuses_a_non_empty_directory_without_force() {
    let src = fixtures_dir().join("gguf").join("q8_0.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("busy");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("notes.txt"), "mine, keep me").unwrap();
    std::fs::write(out.join("config.json"), "{\"not\": \"a model\"}").unwrap();
    std::fs::write(out.join("sub").join("data.bin"), [0u8, 1, 2, 3]).unwrap();
    let before = snapshot(&out);

    let err = fails_naming(&["convert", p(&src), p(&out)], p(&out));
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(snapshot(&out), before, "the directory was modified");

    // With --force it writes the model next to what was there.
    ok(&["convert", p(&src), p(&out), "--force"]);
    let after = snapshot(&out);
    assert_eq!(after[Path::new("notes.txt")], b"mine, keep me");
    assert!(after.contains_key(Path::new("model.safetensors")));
    let info = inspect_json(&out);
    assert_eq!(info["config"]["hidden_size"], 64);
}

/// A GGUF without a vocabulary converts (no tokenizer files) into a directory that loads back with
/// the same configuration and the same stored tensor shapes.
#[test]
fn tiny_gguf_without_tokenizer_converts_and_inspects() {
    for ty in ["f32", "q4_k"] {
        let src = fixtures_dir().join("gguf").join(format!("{ty}.gguf"));
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("new").join("hf"); // parents are created
        ok(&["convert", p(&src), p(&out), "--dtype", "bf16"]);
        assert!(out.join("config.json").is_file());
        assert!(out.join("model.safetensors").is_file());
        assert!(!out.join("tokenizer.json").exists());
        let (a, b) = (inspect_json(&src), inspect_json(&out));
        assert_eq!(
            a["config"], b["config"],
            "{ty}: config changed in conversion"
        );
        assert_eq!(a["parameters"], b["parameters"]);
        assert!(a["tokenizer"].is_null() && b["tokenizer"].is_null());
        let shapes = |v: &Value| -> Vec<(String, Value)> {
            v["tensor_groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| (g["name"].as_str().unwrap().to_string(), g["shape"].clone()))
                .collect()
        };
        assert_eq!(shapes(&a), shapes(&b));
        assert!(b["tensor_groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["storage"] == "bf16"));
        // No tokenizer: logits cannot run, and says why.
        let err = fails_naming(&["logits", p(&out), "--prompt", "hi"], p(&out));
        assert!(err.contains("tokenizer"), "{err}");
    }
}

#[test]
fn bad_inputs_fail_with_a_message_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-model.gguf");
    let out = tmp.path().join("out");
    fails_naming(&["inspect", p(&missing)], "no-such-model.gguf");
    fails_naming(
        &["logits", p(&missing), "--prompt", "x"],
        "no-such-model.gguf",
    );
    fails_naming(
        &["tokenize", p(&missing), "--text", "x"],
        "no-such-model.gguf",
    );
    fails_naming(&["convert", p(&missing), p(&out)], "no-such-model.gguf");
    assert!(
        !out.exists(),
        "a failed convert created its output directory"
    );

    // Not a model at all, a GGUF magic with garbage after it, and a real GGUF cut short: header cut
    // (metadata unreadable) and tensor data cut (metadata fine, weights missing).
    let real = std::fs::read(fixtures_dir().join("gguf").join("q4_0.gguf")).unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        ("text.gguf", b"hello, I am not a model\n".to_vec()),
        (
            "garbage.gguf",
            b"GGUF\xff\xff\xff\xffjunkjunkjunkjunk".to_vec(),
        ),
        ("header-cut.gguf", real[..200].to_vec()),
        ("data-cut.gguf", real[..real.len() - 4096].to_vec()),
    ];
    for (name, bytes) in cases {
        let f = tmp.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        if name != "data-cut.gguf" {
            // inspect reads headers only: a file whose header is intact inspects fine.
            fails_naming(&["inspect", p(&f)], name);
        }
        fails_naming(&["convert", p(&f), p(&out)], name);
        assert!(!out.exists(), "{name}: a failed convert created its output");
    }

    // A directory that is not a model, and a model directory with a broken config.
    let empty = tmp.path().join("empty-dir");
    std::fs::create_dir(&empty).unwrap();
    fails_naming(&["inspect", p(&empty)], "empty-dir");
    let broken = tmp.path().join("broken-config");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "{ not json").unwrap();
    fails_naming(&["inspect", p(&broken)], "config.json");
    fails_naming(&["logits", p(&broken), "--prompt", "x"], "config.json");

    // Bad option values are reported, not panicked on.
    let src = fixtures_dir().join("gguf").join("f32.gguf");
    fails_naming(&["convert", p(&src), p(&out), "--dtype", "f8"], "--dtype");
    assert!(!out.exists());

    // A missing required argument is clap's usage error (status 2), still no panic.
    let o = temper(&["logits"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains("panicked"));
}
