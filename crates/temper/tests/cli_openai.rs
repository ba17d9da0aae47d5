//! The official `openai` Python client against `temper serve` on loopback: runs
//! scripts/openai_client_check.py (chat, completions, `n`, logprobs, streaming with exactly one
//! usage chunk, strategies by body and by name, errors as `openai.BadRequestError` and
//! `openai.NotFoundError`) in the project-local venv that scripts/setup-openai-venv.sh makes
//! (.venv-openai, or $TEMPER_OPENAI_VENV). Without that venv the test skips, saying so.

mod serve_common;

use std::path::PathBuf;
use std::process::Command;

use serve_common::{chat_model_copy, Server};

fn venv_python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = std::env::var_os("TEMPER_OPENAI_VENV")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join(".venv-openai"));
    let py = venv.join("bin/python");
    py.is_file().then_some(py)
}

#[test]
fn the_official_openai_client_against_temper_serve() {
    let Some(python) = venv_python() else {
        eprintln!(
            "SKIPPED the_official_openai_client_against_temper_serve: no .venv-openai with the \
             `openai` client (run scripts/setup-openai-venv.sh; scripts/test.sh and .ci/run do)"
        );
        return;
    };
    let dir = chat_model_copy(None);
    let s = Server::start_model(dir.path(), &["--served-model-name", "tiny"], &[]);
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai_client_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("TEMPER_BASE_URL", format!("http://{}/v1", s.addr))
        .env("TEMPER_MODEL", "tiny")
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .expect("running the openai client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "the openai client check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{}", stdout.trim());
}
