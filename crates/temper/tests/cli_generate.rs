//! `temper generate` end to end on SmolLM2: greedy output as transformers gives it, a JSONL file in
//! and out with seeded sampling, and clear errors for bad flags.

use serde_json::Value;

mod common;

use common::temper;

/// `temper generate --json --logprobs` of 12 greedy tokens after "The capital of France is".
fn greedy_france(smol: &std::path::Path, dtype: &str) -> Value {
    let out = temper()
        .arg("generate")
        .arg(smol)
        .args(["--prompt", "The capital of France is", "--temperature", "0"])
        .args([
            "--max-new-tokens",
            "12",
            "--json",
            "--logprobs",
            "--dtype",
            dtype,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{dtype}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn greedy_json_matches_the_transformers_fixture() {
    let Some(smol) =
        tempering_model::known::smollm2_or_skip("greedy_json_matches_the_transformers_fixture")
    else {
        return;
    };
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(
            tempering_model::known::fixtures_dir().join("generate/smollm2_greedy.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let france = fx["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "capital_of_france")
        .expect("fixture prompt");
    let want: Vec<u64> = france["new_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let v = greedy_france(&smol, "f32");
    let c = &v["completions"][0];
    let tokens: Vec<u64> = c["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(tokens, want[..tokens.len()].to_vec());
    assert_eq!(tokens.len(), 12);
    assert_eq!(c["finish_reason"], "length");
    assert!(c["text"].as_str().unwrap().starts_with(" Paris"), "{c}");
    let lps = c["logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), 12);
    assert!(lps.iter().all(|x| x.as_f64().unwrap() <= 0.0));

    // bf16 and Q8_0 inference weights (f32 activations): the same greedy tokens here, logprobs
    // close to f32's (measured: within 0.03 for bf16, 0.11 for Q8_0).
    for (dtype, tol) in [("bf16", 0.1), ("q8_0", 0.25)] {
        let v = greedy_france(&smol, dtype);
        let b = &v["completions"][0];
        assert_eq!(
            b["tokens"], c["tokens"],
            "{dtype} weights changed the greedy tokens"
        );
        let blps = b["logprobs"].as_array().unwrap();
        let mut differ = 0;
        for (x, y) in lps.iter().zip(blps) {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() < tol,
                "logprob {x} (f32) against {y} ({dtype})"
            );
            differ += usize::from(x != y);
        }
        assert!(
            differ > 0,
            "{dtype}: every logprob at its f32 bits: not applied?"
        );
    }
}

#[test]
fn jsonl_in_and_out_with_seeded_samples() {
    let Some(smol) =
        tempering_model::known::smollm2_or_skip("jsonl_in_and_out_with_seeded_samples")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("prompts.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"Once upon a time\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hi!\"}]}\n",
    )
    .unwrap();
    let run = |name: &str| {
        let output = dir.path().join(name);
        let out = temper()
            .arg("generate")
            .arg(&smol)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args([
                "--n",
                "2",
                "--temperature",
                "0.8",
                "--top-p",
                "0.9",
                "--seed",
                "7",
            ])
            .args(["--max-new-tokens", "8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&output).unwrap()
    };
    let a = run("a.jsonl");
    let lines: Vec<Value> = a
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!(l["completions"].as_array().unwrap().len(), 2);
    }
    // Same seed, same samples.
    assert_eq!(a, run("b.jsonl"));
}

#[test]
fn bad_sampling_flags_are_clear_errors() {
    let Some(smol) = tempering_model::known::smollm2_or_skip("bad_sampling_flags_are_clear_errors")
    else {
        return;
    };
    for (flag, value, needle) in [
        ("--top-p", "1.5", "--top-p"),
        ("--temperature", "-1", "--temperature"),
    ] {
        let out = temper()
            .arg("generate")
            .arg(&smol)
            .args(["--prompt", "x"])
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle) && !err.contains("panicked"), "{err}");
    }
    let out = temper()
        .arg("generate")
        .arg(&smol)
        .args(["--prompt", ""])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn chat_keeps_the_conversation_and_takes_commands() {
    use std::io::Write;
    let Some(smol) = tempering_model::known::smollm2_or_skip("chat_keeps_the_conversation") else {
        return;
    };
    let mut child = temper()
        .arg("chat")
        .arg(&smol)
        .args(["--temperature", "0", "--max-new-tokens", "12"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"What is the capital of France?\n/system You answer in one word.\n/reset\nHi\n/quit\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The inference commands take the model positionally or as `--model` (the training commands'
/// spelling); both at once, or neither, is refused by name.
#[test]
fn the_model_is_positional_or_given_by_model() {
    let model = tempering_model::known::fixtures_dir().join("models/tiny-arith-sft");
    let tokenize = |args: &[&std::ffi::OsStr]| {
        temper()
            .arg("tokenize")
            .args(args)
            .args(["--text", "12+7=19", "--json"])
            .output()
            .unwrap()
    };
    let positional = tokenize(&[model.as_os_str()]);
    assert!(positional.status.success(), "{positional:?}");
    let flagged = tokenize(&["--model".as_ref(), model.as_os_str()]);
    assert!(flagged.status.success(), "{flagged:?}");
    assert_eq!(positional.stdout, flagged.stdout);
    assert!(!positional.stdout.is_empty());

    let both = tokenize(&[model.as_os_str(), "--model".as_ref(), model.as_os_str()]);
    assert!(!both.status.success());
    let err = String::from_utf8_lossy(&both.stderr);
    assert!(
        err.contains("--model") && err.contains("cannot be used with"),
        "{err}"
    );

    let neither = tokenize(&[]);
    assert!(!neither.status.success());
    let err = String::from_utf8_lossy(&neither.stderr);
    assert!(err.contains("MODEL"), "{err}");
}
