//! `temper serve`: an OpenAI-compatible HTTP server over the local engine, with test-time search
//! strategies by request (a `temper` object in the body, or a `STRATEGY@NAME` model name).
//!
//! Design (first slice of issue 22): axum on a small tokio runtime parses and checks every request
//! (OpenAI-shaped JSON errors, bounded bodies, `--max-concurrency` answered with 429), then hands it
//! to one dedicated model thread through a queue. That thread owns the engine (candle is
//! synchronous and CPU-bound) and runs one request at a time, streaming tokens back over a channel
//! (SSE for `stream: true`). Concurrent requests queue; sharing decode batches between them is a
//! later step. The parsing lives in [`api`], the model thread here.

mod api;

use super::model_arg::ModelPath;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tempering_generate::{render_chat, Backend, Completion, FinishReason, GenEvent, GenRequest};
use tempering_model::{ChatTemplate, Tokenizer};
use tempering_reward::learned::ProcessRewardModel;
use tempering_reward::StepScorer;
use tempering_search::{solve, Scorers, SearchContext, SearchProblem, TokenizerEncoder};

use crate::commands::generate::load_engine;
use crate::commands::model::DeviceArgs;
use crate::commands::search::rule_step_checker;
use crate::device::device_and_dtype;

use api::{ApiError, Job, Kind, Msg, Output, PromptIn};

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
    /// Most sequences decoded together (a request's `n` samples share a batch).
    #[arg(long, default_value_t = 32)]
    pub batch_rows: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// What the model thread reports once loaded.
pub(crate) struct ModelInfo {
    pub context: usize,
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
    pub jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
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

    let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
    let state = Arc::new(AppState {
        name,
        created: unix_now(),
        ready: AtomicBool::new(false),
        info: OnceLock::new(),
        in_flight: Arc::new(AtomicUsize::new(0)),
        max_concurrency: a.max_concurrency,
        api_key,
        jobs: std::sync::Mutex::new(job_tx),
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
        let (model, adapter, prm, device, batch_rows) = (
            a.model.path().to_path_buf(),
            a.adapter.clone(),
            a.prm.clone(),
            a.device.clone(),
            a.batch_rows,
        );
        std::thread::Builder::new()
            .name("temper-serve-model".into())
            .spawn(move || {
                let loaded = load(
                    &model,
                    adapter.as_deref(),
                    prm.as_deref(),
                    &device,
                    batch_rows,
                );
                match loaded {
                    Ok(m) => {
                        let _ = state.info.set(ModelInfo {
                            context: m.engine.model().config.max_position_embeddings,
                        });
                        state.ready.store(true, Ordering::SeqCst);
                        eprintln!("model {} ready", state.name);
                        // The queue ends when the last handle to the state goes: not this one.
                        drop(state);
                        for job in job_rx {
                            // A panic fails that request (its channel closes: a 500), not the server.
                            let run = std::panic::AssertUnwindSafe(|| m.run(job));
                            if std::panic::catch_unwind(run).is_err() {
                                eprintln!("a request panicked in the model thread; serving on");
                            }
                        }
                    }
                    Err(e) => {
                        let _ = load_failed.set(format!("{e:#}"));
                    }
                }
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

/// The model thread's belongings.
struct Loaded {
    engine: tempering_generate::LocalEngine,
    template: Option<ChatTemplate>,
    prm: Option<ProcessRewardModel>,
}

fn load(
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    prm: Option<&std::path::Path>,
    device: &DeviceArgs,
    batch_rows: usize,
) -> Result<Loaded> {
    let (engine, template) = load_engine(model, adapter, device, batch_rows)?;
    let prm = match prm {
        Some(dir) => {
            let (dev, _) = device_and_dtype(&device.device, None)?;
            Some(
                ProcessRewardModel::open(dir, &dev)
                    .with_context(|| format!("--prm {}", dir.display()))?,
            )
        }
        None => None,
    };
    Ok(Loaded {
        engine,
        template,
        prm,
    })
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::StopString => "stop",
    }
}

fn token_str(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

impl Loaded {
    fn run(&self, job: Job) {
        let tx = job.tx.clone();
        let out = match &job.search {
            Some(_) => self.search(&job),
            None => self.generate(&job),
        };
        match out {
            Ok(o) => {
                let _ = tx.send(Msg::Done(o));
            }
            Err(e) => {
                let _ = tx.send(Msg::Error(e));
            }
        }
        // `job` (and its concurrency slot) is dropped here.
    }

    fn prompt_ids(&self, job: &Job) -> Result<(Vec<u32>, String, bool), ApiError> {
        let tok = self.engine.tokenizer();
        let bad_prompt = |e: String| ApiError::bad(format!("the prompt: {e}"), "prompt");
        match &job.prompt {
            PromptIn::Text(t) => {
                let ids = tok.encode(t, true).map_err(|e| bad_prompt(e.to_string()))?;
                Ok((ids, t.clone(), true))
            }
            PromptIn::Ids(ids) => {
                let text = tok.decode(ids, false).unwrap_or_default();
                Ok((ids.clone(), text, false))
            }
            PromptIn::Messages(m) => {
                let template = self.template.as_ref().ok_or_else(|| {
                    ApiError::bad(
                        "this model has no chat template: use /v1/completions with a prompt",
                        "messages",
                    )
                })?;
                let text = render_chat(template, m, true)
                    .map_err(|e| ApiError::bad(format!("the chat template: {e}"), "messages"))?;
                let ids = tok
                    .encode(&text, false)
                    .map_err(|e| ApiError::bad(format!("the messages: {e}"), "messages"))?;
                Ok((ids, text, false))
            }
        }
    }

    /// The prompt's ids, checked against the context, and the number of new tokens allowed.
    fn fit(&self, job: &Job, ids: &[u32], default_max: usize) -> Result<usize, ApiError> {
        let context = self.engine.model().config.max_position_embeddings;
        let param = if job.kind == Kind::Chat {
            "messages"
        } else {
            "prompt"
        };
        if ids.is_empty() {
            return Err(ApiError::bad("the prompt is empty", param));
        }
        if ids.len() >= context {
            return Err(ApiError::bad(
                format!(
                    "the prompt is {} tokens; this model's context is {context} tokens",
                    ids.len()
                ),
                param,
            )
            .code("context_length_exceeded"));
        }
        let room = context - ids.len();
        match job.max_tokens {
            Some(m) if m > room => Err(ApiError::bad(
                format!(
                    "max_tokens is {m}, but the prompt is {} tokens and the context {context}: at most {room} new tokens fit",
                    ids.len()
                ),
                "max_tokens",
            )
            .code("context_length_exceeded")),
            Some(m) => Ok(m),
            None => Ok(default_max.min(room)),
        }
    }

    fn generate(&self, job: &Job) -> Result<Output, ApiError> {
        let (ids, _, _) = self.prompt_ids(job)?;
        let default_max = if job.kind == Kind::Chat {
            usize::MAX
        } else {
            16
        };
        let mut params = job.params.clone();
        params.max_new_tokens = self.fit(job, &ids, default_max)?;
        let cfg = &self.engine.model().config;
        let req = GenRequest::new(ids.clone(), job.n, params);
        req.validate(0, cfg.max_position_embeddings, cfg.vocab_size)
            .map_err(ApiError::from_gen)?;
        let _ = job.tx.send(Msg::Started);
        let tx = &job.tx;
        let stream = job.stream;
        let out = self
            .engine
            .generate_with(&[req], &mut |ev| {
                if !stream {
                    return;
                }
                match ev {
                    GenEvent::Token { sample, text, .. } if !text.is_empty() => {
                        let _ = tx.send(Msg::Token {
                            index: *sample,
                            text: text.to_string(),
                        });
                    }
                    GenEvent::Finished {
                        sample, completion, ..
                    } => {
                        let _ = tx.send(Msg::Finish {
                            index: *sample,
                            reason: finish_str(completion.finish_reason),
                        });
                    }
                    _ => {}
                }
            })
            .map_err(ApiError::from_gen)?
            .remove(0);
        let completion_tokens: usize = out.iter().map(|c| c.tokens.len()).sum();
        let choices = out
            .iter()
            .map(|c| api::ChoiceOut {
                text: c.text.clone(),
                finish_reason: finish_str(c.finish_reason),
                logprobs: self.logprobs_json(job, c),
            })
            .collect();
        Ok(Output {
            choices,
            usage: json!({
                "prompt_tokens": ids.len(),
                "completion_tokens": completion_tokens,
                "total_tokens": ids.len() + completion_tokens,
            }),
        })
    }

    /// OpenAI's logprobs object for one choice: the chat layout (`content`) or the legacy one.
    fn logprobs_json(&self, job: &Job, c: &Completion) -> Value {
        let (Some(lp), true) = (&c.logprobs, job.params.logprobs) else {
            return Value::Null;
        };
        let tok = self.engine.tokenizer();
        let tops = c.top_logprobs.as_ref();
        let top_at = |i: usize| -> Vec<(String, f32)> {
            tops.and_then(|t| t.get(i))
                .map(|step| {
                    step.iter()
                        .map(|a| (token_str(tok, a.token), a.logprob))
                        .collect()
                })
                .unwrap_or_default()
        };
        if job.kind == Kind::Chat {
            let content: Vec<Value> = c
                .tokens
                .iter()
                .zip(lp)
                .enumerate()
                .map(|(i, (&id, &l))| {
                    let s = token_str(tok, id);
                    json!({
                        "token": s,
                        "logprob": l,
                        "bytes": s.as_bytes(),
                        "top_logprobs": top_at(i).into_iter().map(|(t, l)| json!({
                            "token": t, "logprob": l, "bytes": t.as_bytes()
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({ "content": content })
        } else {
            let tokens: Vec<String> = c.tokens.iter().map(|&id| token_str(tok, id)).collect();
            let mut offset = 0usize;
            let offsets: Vec<usize> = tokens
                .iter()
                .map(|t| {
                    let o = offset;
                    offset += t.len();
                    o
                })
                .collect();
            let top: Vec<Value> = (0..tokens.len())
                .map(|i| {
                    let m: serde_json::Map<String, Value> =
                        top_at(i).into_iter().map(|(t, l)| (t, json!(l))).collect();
                    Value::Object(m)
                })
                .collect();
            json!({
                "tokens": tokens,
                "token_logprobs": lp,
                "top_logprobs": if job.params.top_logprobs > 0 { json!(top) } else { Value::Null },
                "text_offset": offsets,
            })
        }
    }

    fn search(&self, job: &Job) -> Result<Output, ApiError> {
        let s = job.search.as_ref().expect("a search job");
        let (ids, text, special) = match &job.prompt {
            PromptIn::Ids(_) => {
                return Err(ApiError::bad(
                    "a temper strategy needs a text prompt (or messages), not token ids",
                    "prompt",
                ))
            }
            _ => self.prompt_ids(job)?,
        };
        let mut config = s.config.clone();
        config.sampling.max_new_tokens = self.fit(job, &ids, 256)?;
        let rule: Option<Box<dyn StepScorer>> = match s.scorer.as_deref() {
            Some("rule") => Some(
                rule_step_checker(
                    "scorer: rule",
                    Some(s.task.as_deref().unwrap_or("arithmetic")),
                )
                .map_err(|e| ApiError::bad(format!("{e:#}"), "temper.scorer"))?,
            ),
            _ => None,
        };
        let step: Option<&dyn StepScorer> = match s.scorer.as_deref() {
            Some("rule") => rule.as_deref(),
            Some("prm") => match &self.prm {
                Some(p) => Some(p as &dyn StepScorer),
                None => {
                    return Err(ApiError::bad(
                        "scorer `prm` needs the server started with --prm DIR",
                        "temper.scorer",
                    ))
                }
            },
            _ => None,
        };
        let encoder = TokenizerEncoder {
            tokenizer: self.engine.tokenizer(),
            add_special_tokens: special,
        };
        let scorers = Scorers {
            verifier: None,
            step,
        };
        let _ = job.tx.send(Msg::Started);
        let started = Instant::now();
        let counting = Counting {
            inner: &self.engine,
            samples: std::cell::Cell::new(0),
        };
        let mut ctx = SearchContext::new(&counting, &encoder, scorers, config, s.budget);
        let sol = solve(s.strategy.as_ref(), &SearchProblem::new(text), &mut ctx)
            .map_err(ApiError::from_search)?;
        let c = sol.cost;
        let budget = json!({
            "max_tokens": s.budget.max_tokens,
            "max_calls": s.budget.max_calls,
            "max_seconds": s.budget.max_wall.map(|d| d.as_secs_f64()),
        });
        let _ = job.tx.send(Msg::Token {
            index: 0,
            text: sol.text.clone(),
        });
        Ok(Output {
            choices: vec![api::ChoiceOut {
                text: sol.text.clone(),
                finish_reason: if sol.budget_cut { "length" } else { "stop" },
                logprobs: Value::Null,
            }],
            usage: json!({
                "prompt_tokens": ids.len(),
                "completion_tokens": c.generated_tokens,
                "total_tokens": ids.len() + c.generated_tokens,
                "temper": {
                    "strategy": sol.strategy,
                    "answer": sol.answer,
                    "score": sol.score,
                    "samples": counting.samples.get(),
                    "model_calls": c.model_calls,
                    "scorer_calls": c.scorer_calls,
                    "generated_tokens": c.generated_tokens,
                    "prompt_tokens_processed": c.prompt_tokens,
                    "budget": budget,
                    "budget_cut": sol.budget_cut,
                    "wall_s": c.wall_s.max(started.elapsed().as_secs_f64()),
                    "trace_nodes": sol.trace.nodes.len(),
                },
            }),
        })
    }
}

/// The engine, counting the sequences a search asks of it (`usage.temper.samples`).
struct Counting<'a> {
    inner: &'a tempering_generate::LocalEngine,
    samples: std::cell::Cell<usize>,
}

impl Backend for Counting<'_> {
    fn generate_with(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> tempering_generate::Result<Vec<Vec<Completion>>> {
        let n: usize = reqs.iter().map(|r| r.n).sum();
        self.samples.set(self.samples.get() + n);
        self.inner.generate_with(reqs, on_event)
    }
}
