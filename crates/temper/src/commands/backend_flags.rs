//! Where generation runs: the `--backend` flags that `generate`, `search`, `eval` and
//! `label-steps` share, and [`Generator`], the local engine or a remote OpenAI-compatible server
//! behind one [`Backend`], with the local tokenizer and chat template either way. Holds no
//! generation logic (that is `tempering_generate`'s) and no command's own flags.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tempering_generate::{Backend, LocalEngine, RemoteBackend, RemoteOptions};
use tempering_model::{ChatTemplate, ModelInfo, Tokenizer};

use crate::commands::generate::load_engine;
use crate::commands::model::DeviceArgs;

/// The remote backend's flags.
#[derive(Args, Clone, Debug, Default)]
pub struct BackendFlags {
    /// Generate on an OpenAI-compatible server instead of in this process: vLLM, SGLang,
    /// llama.cpp's llama-server or `temper serve`, e.g. http://127.0.0.1:8000/v1 (plain http). The
    /// model argument still gives the tokenizer and chat template (prompts go out as token ids and
    /// the server must run the same model); its weights are not loaded.
    #[arg(long, value_name = "URL")]
    pub backend: Option<String>,
    /// The served model's name on --backend (default: the only one it serves).
    #[arg(long, value_name = "NAME", requires = "backend")]
    pub backend_model: Option<String>,
    /// The environment variable holding --backend's API key (sent as `Authorization: Bearer`).
    #[arg(long, value_name = "VAR", requires = "backend")]
    pub backend_api_key_env: Option<String>,
    /// Most requests in flight on --backend (llama.cpp: at most its slot count).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub backend_concurrency: usize,
    /// Ask --backend for streamed answers: tokens show as they come where the server streams
    /// their ids (vLLM, temper serve); the results are the same.
    #[arg(long, requires = "backend")]
    pub backend_stream: bool,
}

/// The local engine or a remote server, with the local tokenizer.
pub enum Generator {
    Local(Box<LocalEngine>),
    Remote(Box<RemoteBackend>),
}

impl Generator {
    pub fn backend(&self) -> &dyn Backend {
        match self {
            Generator::Local(e) => e.as_ref(),
            Generator::Remote(r) => r.as_ref(),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        match self {
            Generator::Local(e) => e.tokenizer(),
            Generator::Remote(r) => r.tokenizer(),
        }
    }
}

/// A generator and what a caller checks prompts against.
pub struct Opened {
    pub generator: Generator,
    pub template: Option<ChatTemplate>,
    /// The model's (or the server's) context length.
    pub context: usize,
    pub vocab: usize,
}

/// The generator the flags ask for: the local engine (`model` with `adapter`, on `device`), or,
/// with `--backend`, the server there with `model`'s tokenizer and chat template.
pub fn open_generator(
    model: &Path,
    adapter: Option<&Path>,
    device: &DeviceArgs,
    batch_rows: usize,
    flags: &BackendFlags,
) -> Result<Opened> {
    let Some(url) = &flags.backend else {
        let (engine, template) = load_engine(model, adapter, device, batch_rows)?;
        let (context, vocab) = (
            engine.model().config.max_position_embeddings,
            engine.model().config.vocab_size,
        );
        return Ok(Opened {
            generator: Generator::Local(Box::new(engine)),
            template,
            context,
            vocab,
        });
    };
    if let Some(dir) = adapter {
        bail!(
            "--adapter {} runs on the local engine: with --backend, load the adapter on the server \
             (vLLM: --lora-modules NAME=DIR; temper serve: --adapter DIR) and name it with \
             --backend-model",
            dir.display()
        );
    }
    let api_key = match &flags.backend_api_key_env {
        None => None,
        Some(var) => Some(std::env::var(var).with_context(|| {
            format!("--backend-api-key-env {var}: the environment variable is not set")
        })?),
    };
    if flags.backend_concurrency == 0 {
        bail!("--backend-concurrency: expected at least 1");
    }
    let info = ModelInfo::read(model)
        .with_context(|| format!("reading {}'s tokenizer", model.display()))?;
    let tokenizer = info.require_tokenizer()?.clone();
    // The local engine's stop rule: the tokenizer's stop tokens, then the config's EOS ids.
    let mut stop_ids = tokenizer.stop_token_ids();
    for &id in &info.config.eos_token_ids {
        if !stop_ids.contains(&id) {
            stop_ids.push(id);
        }
    }
    let opts = RemoteOptions {
        model: flags.backend_model.clone(),
        api_key,
        max_concurrency: flags.backend_concurrency,
        backoff: Duration::from_millis(250),
        stream: flags.backend_stream,
        ..RemoteOptions::new(url.clone())
    };
    let remote = RemoteBackend::connect(opts, tokenizer, stop_ids)
        .with_context(|| format!("--backend {url}"))?;
    let s = remote.info();
    eprintln!(
        "backend: {} at {url}, model `{}`{}{}",
        s.kind.name(),
        s.model,
        s.context
            .map(|c| format!(", context {c}"))
            .unwrap_or_default(),
        match s.tokenizer_checked {
            Some(true) => ", tokenizer matches the local one",
            _ => ", tokenizer not checked (no /tokenize)",
        }
    );
    let context = s.context.unwrap_or(info.config.max_position_embeddings);
    let vocab = info.config.vocab_size.max(remote.tokenizer().vocab_size());
    Ok(Opened {
        generator: Generator::Remote(Box::new(remote)),
        template: info.chat_template,
        context,
        vocab,
    })
}
