//! Fuzz smoke tests of the dataset readers (see tempering-model's `tests/fuzz_common`): JSONL and
//! Parquet files in TRL's columns, byte-mutated from the committed fixtures, read through every
//! view (SFT, preference, unpaired, stepwise, RL prompts). Each must give rows or an error, never a
//! panic. `scripts/fuzz.sh jsonl|parquet [SECONDS]` runs one for longer.

#[path = "../../tempering-model/tests/fuzz_common/mod.rs"]
mod fuzz_common;

use std::path::Path;

use fuzz_common::{fixture, fuzz, read_fixture, write};
use tempering_tasks::dataset::{
    load_preference, load_rl_prompts, load_sft, load_stepwise, load_unpaired, read_rows,
};

fn read_every_view(path: &Path) {
    let _ = read_rows(path);
    let _ = load_sft(path);
    let _ = load_preference(path);
    let _ = load_unpaired(path);
    let _ = load_stepwise(path);
    let _ = load_rl_prompts(path, None);
    let _ = load_rl_prompts(path, Some("answer"));
}

#[test]
fn jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = [read_fixture("datasets/trl_columns.jsonl")];
    fuzz("jsonl", &seeds, 256, |bytes| {
        read_every_view(&write(dir.path(), "data.jsonl", bytes));
    });
}

#[test]
fn parquet() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = [read_fixture("datasets/trl_columns.parquet")];
    fuzz("parquet", &seeds, 128, |bytes| {
        read_every_view(&write(dir.path(), "data.parquet", bytes));
    });
}

/// Every file under `fixtures/bad/datasets/` gives an error naming it, not a panic.
#[test]
fn bad_inputs_give_errors() {
    let dir = fixture("bad/datasets");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = e.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let msg = match load_sft(&path) {
            Ok(_) => panic!("{name} read as SFT data"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(&name), "{name}: {msg}");
        n += 1;
    }
    assert!(n > 0, "no bad inputs in {}", dir.display());
}
