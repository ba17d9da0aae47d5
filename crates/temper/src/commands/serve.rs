//! `temper serve`: an OpenAI-compatible HTTP server over the local engine, or in front of a remote
//! OpenAI-compatible server (`--backend URL`), with test-time search strategies by request (a
//! `temper` object in the body, or a `STRATEGY@NAME` model name).
//!
//! Design: axum on a small tokio runtime parses and checks every request (OpenAI-shaped JSON
//! errors, bounded bodies, `--max-concurrency` answered with 429), then hands it to one dedicated
//! model thread through a queue. That thread owns the engine (candle is synchronous and CPU-bound):
//! plain generations decode together in one batch that a request arriving mid-decode joins at the
//! next step; searches run whole between steps. With `--backend`, the model thread holds the
//! remote backend instead and runs each request on a thread of its own (the server batches).
//! Tokens stream back over a channel per request (SSE for `stream: true`). The parsing lives in
//! [`api`], the model thread's work in [`worker`], the counters of `/metrics` in [`metrics`];
//! start-up, loading and shutdown here.

mod api;
mod metrics;
mod worker;

use super::model_arg::ModelPath;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use tempering_model::{ChatTemplate, Tokenizer};
use tempering_reward::learned::open_step_scorer;
use tempering_reward::StepScorer;

use crate::commands::backend_flags::{open_generator, BackendFlags, Generator};
use crate::commands::generate::{load_engine_with_config, GenDefaults};
use crate::commands::model::DeviceArgs;
use crate::device::device_and_dtype;

use api::Work;
use metrics::Metrics;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelPath,
    /// A PEFT LoRA adapter directory to run on top of the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// A learned process reward model directory: requests may ask for `"scorer": "prm"`.
    #[arg(long)]
    pub prm: Option<PathBuf>,
    /// The address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port to listen on (0: any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model's name in the API (default: the model directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Most requests queued or running at once; past it, 429.
    #[arg(long, default_value_t = 16)]
    pub max_concurrency: usize,
    /// The environment variable holding the API key that requests must send as `Authorization:
    /// Bearer KEY` (without this flag, no key is needed).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Allow `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter`, which load adapter
    /// directories named by API clients from this machine's disk (off by default, as vLLM's
    /// VLLM_ALLOW_RUNTIME_LORA_UPDATING).
    #[arg(long)]
    pub allow_runtime_lora: bool,
    /// Most sequences decoded together, across requests (a request's `n` samples count each).
    #[arg(long, default_value_t = 32)]
    pub batch_rows: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Generate on a remote OpenAI-compatible server (`--backend URL`): this server then fronts
    /// it, parsing, checking and searching here, sampling there.
    #[command(flatten)]
    pub backend: BackendFlags,
}

/// What the model thread reports once loaded: what the HTTP side needs without it (`/tokenize`,
/// the context check, the sampling defaults).
pub(crate) struct ModelInfo {
    pub context: usize,
    pub vocab: usize,
    pub tokenizer: Tokenizer,
    pub template: Option<Arc<ChatTemplate>>,
    /// Sampling defaults from the model's `generation_config.json`, for fields a request leaves out.
    pub defaults: GenDefaults,
    /// The model without adapters (its weights shared, not copied): what runtime LoRA adapters
    /// are put on. `None` with `--backend` (no weights here).
    pub base: Option<tempering_model::Transformer>,
}

/// State shared by the HTTP handlers.
pub(crate) struct AppState {
    pub name: String,
    pub created: u64,
    pub ready: AtomicBool,
    pub info: OnceLock<ModelInfo>,
    pub in_flight: Arc<AtomicUsize>,
    pub max_concurrency: usize,
    pub api_key: Option<String>,
    pub jobs: std::sync::Mutex<std::sync::mpsc::Sender<Work>>,
    /// LoRA adapters loaded at run time: name -> the directory (`/v1/load_lora_adapter`). A name
    /// is here once the model thread has it (its `Work::AddAdapter` is queued first).
    pub adapters: std::sync::RwLock<std::collections::BTreeMap<String, PathBuf>>,
    /// Names being loaded now (a second load of the same name is refused).
    pub adapters_loading: std::sync::Mutex<std::collections::BTreeSet<String>>,
    pub batch_rows: usize,
    /// Whether the runtime LoRA endpoints are on (`--allow-runtime-lora`).
    pub runtime_lora: bool,
    pub metrics: Arc<Metrics>,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn serve(a: ServeArgs) -> Result<()> {
    // Cheap checks first, before binding or loading.
    if !a.model.path().exists() {
        bail!("{}: no such model", a.model.path().display());
    }
    if a.max_concurrency == 0 {
        bail!("--max-concurrency: expected at least 1");
    }
    if a.batch_rows == 0 {
        bail!("--batch-rows: expected at least 1");
    }
    if a.backend.backend.is_some() && a.allow_runtime_lora {
        bail!(
            "--allow-runtime-lora loads adapters into this process, which has no weights with \
             --backend: load them on the backend server (vLLM: --lora-modules or \
             /v1/load_lora_adapter) and name one with --backend-model"
        );
    }
    let api_key = match &a.api_key_env {
        Some(var) => match std::env::var(var) {
            Ok(k) if !k.is_empty() => Some(k),
            _ => bail!("--api-key-env {var}: the variable is not set or empty"),
        },
        None => None,
    };
    let name = match &a.served_model_name {
        Some(n) if n.is_empty() || n.contains('@') => {
            bail!("--served-model-name {n:?}: expected a non-empty name without `@`")
        }
        Some(n) => n.clone(),
        None => a
            .model
            .path()
            .file_stem()
            .map(|s| s.to_string_lossy().replace('@', "_"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "model".into()),
    };

    let (job_tx, job_rx) = std::sync::mpsc::channel::<Work>();
    let state = Arc::new(AppState {
        name,
        created: unix_now(),
        ready: AtomicBool::new(false),
        info: OnceLock::new(),
        in_flight: Arc::new(AtomicUsize::new(0)),
        max_concurrency: a.max_concurrency,
        api_key,
        jobs: std::sync::Mutex::new(job_tx),
        metrics: Arc::new(Metrics::default()),
        adapters: Default::default(),
        adapters_loading: Default::default(),
        batch_rows: a.batch_rows,
        runtime_lora: a.allow_runtime_lora,
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind((a.host.as_str(), a.port)))
        .with_context(|| format!("binding {}:{}", a.host, a.port))?;
    let addr: SocketAddr = listener.local_addr()?;

    // The model loads on its own thread while /health answers 503.
    let load_failed = Arc::new(OnceLock::<String>::new());
    let worker = {
        let state = state.clone();
        let load_failed = load_failed.clone();
        let (model, adapter, prm, device, batch_rows, backend) = (
            a.model.path().to_path_buf(),
            a.adapter.clone(),
            a.prm.clone(),
            a.device.clone(),
            a.batch_rows,
            a.backend.clone(),
        );
        std::thread::Builder::new()
            .name("temper-serve-model".into())
            .spawn(move || {
                on_pool_worker(move || {
                    let loaded = load(
                        &model,
                        adapter.as_deref(),
                        prm.as_deref(),
                        &device,
                        batch_rows,
                        &backend,
                    );
                    match loaded {
                        Ok(m) => {
                            eprintln!("sampling defaults: {}", m.defaults.describe());
                            let _ = state.info.set(ModelInfo {
                                context: m.engine.runs().context(),
                                vocab: m.engine.runs().vocab(),
                                tokenizer: m.engine.runs().tokenizer().clone(),
                                template: m.template.clone(),
                                defaults: m.defaults.clone(),
                                base: match &m.engine {
                                    Engine::Local(e) => Some(e.model().without_adapters()),
                                    Engine::Remote(_) => None,
                                },
                            });
                            let mut m = worker::Worker::new(m, state.metrics.clone(), batch_rows);
                            state.ready.store(true, Ordering::SeqCst);
                            eprintln!("model {} ready", state.name);
                            // The queue ends when the last handle to the state goes: not this one.
                            drop(state);
                            m.serve(job_rx);
                        }
                        Err(e) => {
                            let _ = load_failed.set(format!("{e:#}"));
                        }
                    }
                })
            })
            .context("starting the model thread")?
    };

    eprintln!("listening on http://{addr}");
    // SIGTERM or Ctrl-C: stop accepting, finish the requests in flight, exit. A second signal
    // ends the process at once (the binary's handler falls back to the default action).
    let armed = tempering_train::interrupt::arm();
    let app = api::router(state.clone());
    let stop = {
        let load_failed = load_failed.clone();
        async move {
            loop {
                if tempering_train::interrupt::requested().is_some() || load_failed.get().is_some()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    rt.block_on(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
    })
    .context("serving")?;
    drop(armed);
    if let Some(e) = load_failed.get() {
        bail!("{e}");
    }
    eprintln!("shutting down");
    // The queue closes when the state goes; the model thread finishes its job and ends.
    drop(state);
    drop(rt);
    let _ = worker.join();
    tempering_train::interrupt::clear();
    Ok(())
}

/// What generates: the local engine, or a remote server with the local tokenizer.
pub(crate) enum Engine {
    Local(tempering_generate::LocalEngine),
    Remote(worker::RemoteModel),
}

impl Engine {
    /// What requests run on (the tokenizer, context and vocabulary they are checked against).
    pub fn runs(&self) -> &dyn worker::Runs {
        match self {
            Engine::Local(e) => e,
            Engine::Remote(r) => r,
        }
    }
}

/// The model thread's belongings.
pub(crate) struct Loaded {
    pub engine: Engine,
    pub template: Option<Arc<ChatTemplate>>,
    /// `--prm`: a classifier or an implicit PRM.
    pub prm: Option<Box<dyn StepScorer>>,
    pub defaults: GenDefaults,
}

fn load(
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    prm: Option<&std::path::Path>,
    device: &DeviceArgs,
    batch_rows: usize,
    backend: &BackendFlags,
) -> Result<Loaded> {
    let (engine, template, gen_config) = if backend.backend.is_some() {
        // The tokenizer, chat template and sampling defaults stay local; the weights stay there.
        let opened = open_generator(model, adapter, device, batch_rows, backend)?;
        let Generator::Remote(remote) = opened.generator else {
            bail!("--backend: expected a remote backend");
        };
        let remote = worker::RemoteModel {
            backend: *remote,
            context: opened.context,
            vocab: opened.vocab,
        };
        (
            Engine::Remote(remote),
            opened.template,
            read_generation_config(model)?,
        )
    } else {
        let (e, t, g) = load_engine_with_config(model, adapter, device, batch_rows)?;
        (Engine::Local(e), t, g)
    };
    let prm = match prm {
        Some(dir) => {
            let (dev, _) = device_and_dtype(&device.device, None)?;
            Some(open_step_scorer(dir, &dev).with_context(|| format!("--prm {}", dir.display()))?)
        }
        None => None,
    };
    Ok(Loaded {
        engine,
        template: template.map(Arc::new),
        prm,
        defaults: GenDefaults::from_config(gen_config.as_ref()),
    })
}

/// A model directory's `generation_config.json`, if it has one (a GGUF file has none).
fn read_generation_config(model: &std::path::Path) -> Result<Option<serde_json::Value>> {
    let path = model.join("generation_config.json");
    if !model.is_dir() || !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(Some(v))
}

/// Runs `f` on one of rayon's worker threads while the calling thread waits: a decode loop there
/// splits its matrix products with the other workers, which are still spinning between the
/// products of a step, instead of waking sleeping threads for each of them (SmolLM2 batch-16
/// decode 278 -> 300-306 tok/s, `IN_POOL=1` in `generate_bench`).
fn on_pool_worker(f: impl FnOnce() + Send) {
    rayon::scope(|s| s.spawn(|_| f()));
}
