//! The bad-input corpus (`fixtures/bad/`, written by `fixtures/bad/make.py`) through the commands
//! that read it, one row of `fixtures/bad/manifest.tsv` per run: each must exit non-zero without
//! crashing (not 101, not killed by a signal, no "panicked") with a message that names the file and
//! the line or field the manifest lists. Every corpus file has at least one row.
//!
//! A manifest row is `FILE<TAB>COMMAND<TAB>EXPECTED`: FILE under `fixtures/bad/`; COMMAND the
//! `temper` arguments, split on spaces, with these placeholders:
//! - `{file}`: the corpus file;
//! - `{model-with:NAME}`: a copy of the tiny SFT model directory with the file as `NAME`;
//! - `{adapter-with:NAME}`: a copy of the committed PEFT adapter with the file as `NAME`;
//! - `{model}`: the tiny SFT model; `{base}`: the adapter's base model (`tiny-llama`);
//! - `{data}`: a valid SFT dataset (one row); `{out}`: a path that does not exist yet.
//!
//! EXPECTED: substrings the error must hold besides the file's name (`NAME` for the copies),
//! separated by ` | `, or `-`.

use std::path::{Path, PathBuf};

mod common;

use common::temper;

/// `{data}`: one SFT row the tiny model reads.
const GOOD_ROW: &str = "{\"prompt\": \"Compute: 1+1\\n\", \"completion\": \"Answer: 2\"}\n";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A copy of the directory `src` (files only) in `dst`, with `file` as `dst/name`.
fn copy_with(src: &Path, dst: &Path, file: &Path, name: &str) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(file, dst.join(name)).unwrap();
}

/// Every corpus file, relative to `fixtures/bad/`.
fn corpus(dir: &Path, rel: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir.join(rel)).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if e.path().is_dir() {
            corpus(dir, &r, out);
        } else if rel.is_empty() {
            // make.py and manifest.tsv are not inputs.
        } else {
            out.push(r);
        }
    }
}

#[test]
fn every_bad_input_gives_a_clear_error_naming_it() {
    let bad = fixtures().join("bad");
    let manifest = std::fs::read_to_string(bad.join("manifest.tsv")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    let mut rows = 0;
    for (n, line) in manifest.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "manifest.tsv line {}: {line:?}", n + 1);
        let (rel, command, expected) = (cols[0], cols[1], cols[2]);
        let file = bad.join(rel);
        assert!(file.is_file(), "manifest.tsv line {}: no {rel}", n + 1);
        covered.insert(rel.to_string());
        rows += 1;

        let work = tmp.path().join(format!("row{}", n + 1));
        std::fs::create_dir_all(&work).unwrap();
        let mut name = file.file_name().unwrap().to_string_lossy().to_string();
        let mut args = Vec::new();
        for word in command.split(' ').filter(|w| !w.is_empty()) {
            let arg = if let Some(inner) = word
                .strip_prefix("{model-with:")
                .and_then(|w| w.strip_suffix('}'))
            {
                let d = work.join("model");
                copy_with(&fixtures().join("models/tiny-arith-sft"), &d, &file, inner);
                name = inner.to_string();
                d
            } else if let Some(inner) = word
                .strip_prefix("{adapter-with:")
                .and_then(|w| w.strip_suffix('}'))
            {
                let d = work.join("adapter");
                let src = fixtures().join("peft/tiny-llama-peft-adapter");
                copy_with(&src, &d, &file, inner);
                name = inner.to_string();
                d
            } else {
                match word {
                    "{file}" => file.clone(),
                    "{model}" => fixtures().join("models/tiny-arith-sft"),
                    "{base}" => fixtures().join("models/tiny-llama"),
                    "{data}" => {
                        let p = work.join("data.jsonl");
                        std::fs::write(&p, GOOD_ROW).unwrap();
                        p
                    }
                    "{out}" => work.join("out"),
                    w => {
                        assert!(!w.contains('{'), "manifest.tsv line {}: {w}", n + 1);
                        PathBuf::from(w)
                    }
                }
            };
            args.push(arg);
        }
        let out = temper().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let mut why = Vec::new();
        match out.status.code() {
            Some(0) => why.push("it succeeded".to_string()),
            Some(101) => why.push("exit code 101 (a panic)".to_string()),
            None => why.push(format!("killed: {}", out.status)),
            Some(_) => {}
        }
        if err.contains("panicked") {
            why.push("`panicked` in stderr".into());
        }
        let wanted =
            std::iter::once(name.as_str()).chain(expected.split(" | ").filter(|e| *e != "-"));
        for w in wanted {
            if !err.contains(w) {
                why.push(format!("no `{w}` in the message"));
            }
        }
        if !why.is_empty() {
            failures.push(format!(
                "{rel} (`temper {command}`): {}\n  stderr: {}",
                why.join("; "),
                err.trim().replace('\n', "\n          ")
            ));
        }
    }
    let mut all = Vec::new();
    corpus(&bad, "", &mut all);
    all.sort();
    let missing: Vec<&String> = all.iter().filter(|f| !covered.contains(*f)).collect();
    if !missing.is_empty() {
        failures.push(format!(
            "corpus files without a row in manifest.tsv: {missing:?}"
        ));
    }
    assert!(
        all.len() >= 40,
        "the corpus holds {} files, fewer than 40",
        all.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {rows} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
