//! Byte-mutation fuzzing of file parsers with proptest, shared by the `fuzz` test binaries of
//! tempering-model, tempering-tasks and tempering-train (they include this file by path). A case
//! is a committed valid file with a few mutations applied (bit flips, bytes and machine words set
//! to edge values, text tokens inserted, ranges deleted or duplicated, truncation); the parser
//! must return, `Ok` or `Err`, and never panic. A panic fails the test with the shrunk input,
//! which is also written to `$CARGO_TARGET_TMPDIR/fuzz-crashes/` for `fixtures/bad/`.
//!
//! In the test suite each target runs a fixed, deterministic set of cases (seconds);
//! `PROPTEST_CASES` changes how many. With `FUZZ_SECONDS` set (what `scripts/fuzz.sh` does) a
//! target runs freshly seeded rounds until that much time has passed and prints how many cases it
//! ran.

#![allow(dead_code)]

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// One change to a file's bytes; positions are indices into the bytes as they are at that point.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// A little-endian machine word of `width` bytes (1, 2, 4 or 8) overwritten with `value`.
    SetWord(Index, u8, u64),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Truncate(Index),
}

/// Values that break size arithmetic, plus small ones.
const WORDS: &[u64] = &[
    0,
    1,
    2,
    7,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 40,
    1 << 60,
    i64::MAX as u64,
    u64::MAX,
];

/// Text tokens for the text formats (JSON, JSONL, TOML): edge numbers, wrong types, nesting.
const TOKENS: &[&str] = &[
    "-1",
    "0",
    "1e309",
    "-1e309",
    "18446744073709551616",
    "9223372036854775807",
    "4294967296",
    "NaN",
    "null",
    "true",
    "[]",
    "{}",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{\"a\":",
    ",",
    ":",
    "\n",
    "\r\n",
    "\u{feff}",
    "\u{0}",
    "\"",
    "'",
    "=",
    "[table]",
    "[[array]]",
    "inf",
    "-0.0",
    "1979-05-27T07:32:00Z",
    "\u{10ffff}",
    "\u{7f}",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        3 => (
            any::<Index>(),
            prop::sample::select(vec![1u8, 2, 4, 8]),
            prop_oneof![prop::sample::select(WORDS.to_vec()), any::<u64>()]
        )
            .prop_map(|(i, w, v)| Mutation::SetWord(i, w, v)),
        3 => (
            any::<Index>(),
            prop_oneof![
                prop::sample::select(TOKENS.to_vec()).prop_map(|t| t.as_bytes().to_vec()),
                prop::collection::vec(any::<u8>(), 1..8)
            ]
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// A seed file (one of `seeds`) and the mutations to apply to it.
pub fn cases(seeds: usize) -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (0..seeds, prop::collection::vec(mutation(), 1..5))
}

/// `base` with `muts` applied in order.
pub fn apply(base: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in muts {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match m {
            Mutation::FlipBit(i, bit) if !b.is_empty() => {
                let p = at(i, b.len());
                b[p] ^= 1 << bit;
            }
            Mutation::SetByte(i, v) if !b.is_empty() => {
                let p = at(i, b.len());
                b[p] = *v;
            }
            Mutation::SetWord(i, w, v) => {
                let w = usize::from(*w);
                if b.len() >= w {
                    let p = at(i, b.len() - w + 1);
                    b[p..p + w].copy_from_slice(&v.to_le_bytes()[..w]);
                }
            }
            Mutation::Insert(i, bytes) => {
                let p = at(i, b.len() + 1);
                b.splice(p..p, bytes.iter().copied());
            }
            Mutation::Delete(i, n) if !b.is_empty() => {
                let p = at(i, b.len());
                let end = (p + n).min(b.len());
                b.drain(p..end);
            }
            Mutation::Duplicate(i, n) if !b.is_empty() => {
                let p = at(i, b.len());
                let end = (p + n).min(b.len());
                let chunk = b[p..end].to_vec();
                b.splice(end..end, chunk);
            }
            Mutation::Truncate(i) => {
                let p = at(i, b.len() + 1);
                b.truncate(p);
            }
            _ => {}
        }
    }
    b
}

/// The committed fixture at `fixtures/REL` (from the workspace root).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

pub fn read_fixture(rel: &str) -> Vec<u8> {
    let p = fixture(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs `target` on mutations of `seeds`; `target` gets the mutated bytes and must not panic.
/// `default_cases`: how many cases the test suite runs when `PROPTEST_CASES` is unset.
pub fn fuzz(name: &str, seeds: &[Vec<u8>], default_cases: u32, target: impl Fn(&[u8])) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let n_cases = env("PROPTEST_CASES").map_or(default_cases, |c| c as u32);
    let deadline = env("FUZZ_SECONDS").map(|s| Instant::now() + Duration::from_secs(s));
    let config = Config {
        cases: n_cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let ran = Cell::new(0u64);
    let started = Instant::now();
    let mut round = 0u64;
    loop {
        let mut runner = match deadline {
            // The suite: the same cases every time.
            None => TestRunner::new_with_rng(
                config.clone(),
                TestRng::deterministic_rng(RngAlgorithm::ChaCha),
            ),
            // A long run: a fresh seed per round.
            Some(_) => TestRunner::new(config.clone()),
        };
        let result = runner.run(&cases(seeds.len()), |(seed, muts)| {
            ran.set(ran.get() + 1);
            let bytes = apply(&seeds[seed], &muts);
            target(&bytes);
            Ok::<(), TestCaseError>(())
        });
        if let Err(e) = result {
            let detail = match &e {
                TestError::Fail(why, (seed, muts)) => {
                    let bytes = apply(&seeds[*seed], muts);
                    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
                    let _ = std::fs::create_dir_all(&dir);
                    let file = dir.join(format!("{name}-{}.bin", std::process::id()));
                    let _ = std::fs::write(&file, &bytes);
                    format!(
                        "{why}; seed file {seed}, mutations {muts:?}; the input is in {}",
                        file.display()
                    )
                }
                other => other.to_string(),
            };
            panic!("fuzz target `{name}` crashed: {detail}");
        }
        round += 1;
        match deadline {
            Some(d) if Instant::now() < d => continue,
            _ => break,
        }
    }
    if deadline.is_some() {
        println!(
            "fuzz {name}: {} cases in {round} rounds, {:.0} s, no crash",
            ran.get(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// Writes `bytes` to `dir/name` (replacing it) and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
