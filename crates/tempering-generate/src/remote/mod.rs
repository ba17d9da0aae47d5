//! The remote backend: a [`Backend`] that generates on an OpenAI-compatible server (vLLM, SGLang,
//! llama.cpp's `llama-server`, `temper serve`) through `/v1/completions`. The tokenizer and chat
//! template stay local: prompts go out as token ids, and completions come back as the ids the
//! server sampled (or the text re-tokenised and checked), so what a learner scores is what was
//! sampled. At connect time it probes the server (`/v1/models`, `/props`, `/tokenize`); it sends
//! every sampling setting explicitly, fans out seeded requests where `n` is refused or capped,
//! keeps at most `max_concurrency` requests in flight, and retries only what is safe (connection
//! refused, 429, 503) with exponential backoff.
//!
//! HTTP/1 over plain TCP with reqwest's async client on a small tokio runtime of the backend's own,
//! the caller's threads blocking on it: loopback or a private network is the use case (TLS belongs
//! to a proxy in front). A call can be cancelled ([`RemoteBackend::generate_until`]): its requests
//! in flight are dropped, closing their connections, so the server stops generating for them.
//! Knows nothing of models, search or the command line; the wire format lives in [`wire`], one
//! HTTP exchange and its retries in `http`, the fan-out work queue in `queue`, reading streamed
//! answers (`stream: true`, with [`RemoteOptions::stream`]) in `stream`, and reading URLs and
//! servers' error messages in `text`.

mod http;
mod queue;
mod stream;
mod text;
pub mod wire;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tempering_model::Tokenizer;

use crate::backend::{Backend, GenEvent};
use crate::error::{GenError, RemoteError, Result};
use crate::prompt_logprobs::PromptLogprob;
use crate::request::{Completion, GenRequest, SamplingParams};
use http::Abort;
use queue::{split, Job, JobOut, Queue};
use text::root_url;
use wire::{completion_body, fan_out_seed, normalise, Normalise, ServerKind};

/// How to reach the server and how hard to push it.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// The server's base URL, with or without `/v1` (`http://127.0.0.1:8000`).
    pub url: String,
    /// The served model's name; `None` takes the only one the server lists.
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Most requests in flight (also bounded by llama.cpp's slot count).
    pub max_concurrency: usize,
    /// Retries of a connection error, 429 or 503 before giving up.
    pub max_retries: u32,
    /// The first retry's wait; each next one doubles (a `Retry-After` header wins).
    pub backoff: Duration,
    /// Longest wait for one response.
    pub timeout: Duration,
    /// Ask for streamed answers (`stream: true`): tokens are reported (`GenEvent::Token`) as they
    /// come where the server sends each chunk's token ids (vLLM, `temper serve`), otherwise once
    /// a sample is whole. The results are the same either way.
    pub stream: bool,
}

impl RemoteOptions {
    pub fn new(url: impl Into<String>) -> Self {
        RemoteOptions {
            url: url.into(),
            model: None,
            api_key: None,
            max_concurrency: 16,
            max_retries: 5,
            backoff: Duration::from_millis(250),
            timeout: Duration::from_secs(600),
            stream: false,
        }
    }
}

/// What the probe found.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerInfo {
    pub kind: ServerKind,
    /// The model name requests carry.
    pub model: String,
    /// The server's context length, where it says (`max_model_len`, llama.cpp's `n_ctx`).
    pub context: Option<usize>,
    /// llama.cpp's parallel slots (`total_slots`).
    pub slots: Option<usize>,
    /// Whether `/tokenize` agreed with the local tokenizer (`None`: no such endpoint).
    pub tokenizer_checked: Option<bool>,
}

/// Counters since connect, for reports and tests.
#[derive(Debug, Default)]
pub struct RemoteStats {
    /// HTTP requests sent to `/v1/completions` (retries included).
    pub requests: AtomicU64,
    /// Retries after a connection error, 429 or 503.
    pub retries: AtomicU64,
    /// Sub-requests sent because the server refused or capped `n`.
    pub fanned_out: AtomicU64,
}

/// The models of a `/v1/models` list that are no adapter's: without a `parent` (or a null one).
fn base_models(data: &[Value]) -> Vec<&Value> {
    data.iter()
        .filter(|m| m.get("parent").is_none_or(Value::is_null))
        .collect()
}

/// How often a call's caller is asked whether it still wants the answer.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// The text the connect-time `/tokenize` check encodes on both sides.
const PROBE_TEXT: &str = "Hello, world! 12 + 34 = 46\n";

/// An OpenAI-compatible server as a [`Backend`].
pub struct RemoteBackend {
    client: reqwest::Client,
    /// Where the HTTP exchanges run.
    rt: http::Runtime,
    /// `scheme://host:port[/prefix]`, without `/v1`.
    root: String,
    opts: RemoteOptions,
    info: ServerInfo,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    /// The largest `n` the server honours in one request (`usize::MAX` until it refuses one).
    n_cap: AtomicUsize,
    pub stats: RemoteStats,
}

/// A streamed chunk's handler: (choice index, its token ids, its text).
type ChunkFn<'c> = dyn FnMut(usize, &[u32], &str) + 'c;
type OnChunk<'a> = Option<&'a mut ChunkFn<'a>>;

/// What a worker thread sends the caller's thread.
enum FromWorker {
    /// A job's outcome.
    Done(Result<JobOut>),
    /// Streamed tokens of sample `sample` of request `req` (only chunks that carry token ids).
    Tokens {
        req: usize,
        sample: usize,
        ids: Vec<u32>,
        text: String,
    },
}

/// The outcome of one HTTP exchange, before retry decisions.
enum Attempt {
    Ok(Value),
    /// Worth retrying (connection refused, 429, 503), with the server's `Retry-After`.
    Retry(RemoteError, Option<Duration>),
    Fail(RemoteError),
}

impl RemoteBackend {
    /// Connects and probes the server. `tokenizer` is the local model's; `stop_ids` its stop
    /// tokens (EOS first), as [`crate::LocalEngine::model_stop_ids`] gives them.
    pub fn connect(
        opts: RemoteOptions,
        tokenizer: Tokenizer,
        stop_ids: Vec<u32>,
    ) -> Result<Self, RemoteError> {
        let root = root_url(&opts.url)?;
        if opts.max_concurrency == 0 {
            return Err(RemoteError::BadUrl {
                url: opts.url.clone(),
                why: "max_concurrency is 0".into(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| RemoteError::Io {
                url: root.clone(),
                detail: format!("building the HTTP client: {e}"),
            })?;
        let rt = http::Runtime::new().map_err(|e| RemoteError::Io {
            url: root.clone(),
            detail: format!("starting the HTTP runtime: {e}"),
        })?;
        let mut b = RemoteBackend {
            client,
            rt,
            root,
            info: ServerInfo {
                kind: ServerKind::Other,
                model: String::new(),
                context: None,
                slots: None,
                tokenizer_checked: None,
            },
            opts,
            tokenizer,
            stop_ids,
            n_cap: AtomicUsize::new(usize::MAX),
            stats: RemoteStats::default(),
        };
        b.info = b.probe()?;
        // llama.cpp refuses `n` above its slot count.
        if let (ServerKind::LlamaCpp, Some(s)) = (b.info.kind, b.info.slots) {
            b.n_cap.store(s.max(1), Ordering::Relaxed);
        }
        Ok(b)
    }

    /// Loads a LoRA adapter directory (on the server's disk) under `name`, through vLLM's
    /// `/v1/load_lora_adapter` (temper serve takes it with `--allow-runtime-lora`).
    pub fn load_lora_adapter(&self, name: &str, path: &str) -> Result<(), RemoteError> {
        let body = serde_json::json!({"lora_name": name, "lora_path": path});
        self.send(Some(&body), &self.url("/v1/load_lora_adapter"))
            .map(drop)
    }

    /// Unloads the adapter loaded under `name` (`/v1/unload_lora_adapter`).
    pub fn unload_lora_adapter(&self, name: &str) -> Result<(), RemoteError> {
        let body = serde_json::json!({"lora_name": name});
        self.send(Some(&body), &self.url("/v1/unload_lora_adapter"))
            .map(drop)
    }

    /// Makes every later request name `model` (say, an adapter just loaded).
    pub fn set_model(&mut self, model: &str) {
        self.info.model = model.to_string();
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The most requests this backend keeps in flight.
    pub fn concurrency(&self) -> usize {
        match self.info.slots {
            Some(s) if s > 0 => self.opts.max_concurrency.min(s),
            _ => self.opts.max_concurrency,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// `/v1/models` (which model, which server, its context), `/props` (llama.cpp's slots and
    /// context), `/tokenize` (the server's tokenizer is the local one).
    fn probe(&self) -> Result<ServerInfo, RemoteError> {
        let url = self.url("/v1/models");
        let models = self.send(None, &url)?;
        let data = models
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| RemoteError::BadResponse {
                what: format!("{url}: no `data` list"),
            })?;
        let names: Vec<String> = data
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        let entry = match &self.opts.model {
            Some(want) => data
                .iter()
                .find(|m| m.get("id").and_then(Value::as_str) == Some(want.as_str()))
                .ok_or_else(|| RemoteError::UnknownModel {
                    url: url.clone(),
                    wanted: want.clone(),
                    available: names.clone(),
                })?,
            None => match data.as_slice() {
                [one] => one,
                [] => {
                    return Err(RemoteError::BadResponse {
                        what: format!("{url} lists no models"),
                    })
                }
                // One base model beside LoRA adapters (vLLM and `temper serve` name an adapter's
                // `parent`): the base.
                _ => match base_models(data).as_slice() {
                    [one] => *one,
                    _ => {
                        return Err(RemoteError::WhichModel {
                            url,
                            available: names,
                        })
                    }
                },
            },
        };
        let model = entry
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut kind = ServerKind::from_owned_by(
            entry
                .get("owned_by")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        );
        let mut context = entry
            .get("max_model_len")
            .and_then(Value::as_u64)
            .map(|x| x as usize);
        let mut slots = None;
        if matches!(kind, ServerKind::LlamaCpp | ServerKind::Other) {
            // llama.cpp's `/props`; other servers answer 404, which says nothing.
            if let Ok(props) = self.send(None, &self.url("/props")) {
                let s = props.get("total_slots").and_then(Value::as_u64);
                let ctx = props
                    .pointer("/default_generation_settings/n_ctx")
                    .and_then(Value::as_u64);
                if s.is_some() || ctx.is_some() {
                    kind = ServerKind::LlamaCpp;
                    slots = s.map(|x| x as usize);
                    context = context.or(ctx.map(|x| x as usize));
                }
            }
        }
        let tokenizer_checked = self.check_tokenizer(kind, &model)?;
        Ok(ServerInfo {
            kind,
            model,
            context,
            slots,
            tokenizer_checked,
        })
    }

    /// Encodes [`PROBE_TEXT`] on the server (vLLM's, SGLang's and `temper serve`'s `/tokenize`
    /// take `prompt`, llama.cpp's `content`) and locally; a difference is an error, since every
    /// prompt goes out as local token ids.
    fn check_tokenizer(&self, kind: ServerKind, model: &str) -> Result<Option<bool>, RemoteError> {
        let body = match kind {
            ServerKind::LlamaCpp => json!({"content": PROBE_TEXT, "add_special": false}),
            _ => json!({"model": model, "prompt": PROBE_TEXT, "add_special_tokens": false}),
        };
        let url = self.url("/tokenize");
        let Ok(v) = self.send(Some(&body), &url) else {
            return Ok(None);
        };
        let Some(ids) = v.get("tokens").and_then(Value::as_array).and_then(|a| {
            a.iter()
                .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect::<Option<Vec<u32>>>()
        }) else {
            return Ok(None);
        };
        let local = self
            .tokenizer
            .encode(PROBE_TEXT, false)
            .map_err(|e| RemoteError::Io {
                url: url.clone(),
                detail: format!("encoding the probe text locally: {e}"),
            })?;
        if ids != local {
            return Err(RemoteError::TokenMismatch {
                detail: format!(
                    "{url} encodes {PROBE_TEXT:?} as {ids:?}, the local tokenizer as {local:?}: \
                     the server runs another model (or another tokenizer) than the local one"
                ),
            });
        }
        Ok(Some(true))
    }

    /// Each prompt token's [`PromptLogprob`] with `top` alternatives (the first token has none), as
    /// [`crate::LocalEngine::prompt_logprobs`] gives them: vLLM's `prompt_logprobs`, asked for in a
    /// request of one greedy token and read back. A server that cannot (llama.cpp, refused before
    /// any request) or answers without them is [`RemoteError::Unsupported`].
    pub fn prompt_logprobs(
        &self,
        prompt: &[u32],
        top: usize,
    ) -> Result<Vec<Option<PromptLogprob>>, RemoteError> {
        self.prompt_logprobs_until(prompt, top, &|| false)
    }

    /// [`Self::prompt_logprobs`], giving up as [`Self::generate_until`] does once `cancelled()`
    /// says so.
    pub fn prompt_logprobs_until(
        &self,
        prompt: &[u32],
        top: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<Option<PromptLogprob>>, RemoteError> {
        let unsupported = |why: &str| RemoteError::Unsupported {
            server: self.info.kind.name().into(),
            what: format!("return the prompt's logprobs (vLLM's `prompt_logprobs`){why}"),
        };
        if self.info.kind.lacks_prompt_logprobs() {
            return Err(unsupported(
                ": it scores generated tokens only; ask vLLM or temper serve",
            ));
        }
        let vocab = self.tokenizer.vocab_size();
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(RemoteError::TokenMismatch {
                detail: format!(
                    "the prompt holds token id {bad}, outside the local tokenizer's {vocab} ids"
                ),
            });
        }
        let params = SamplingParams::greedy(1);
        let mut body = completion_body(self.info.kind, &self.info.model, prompt, 1, 0, &params);
        body["prompt_logprobs"] = json!(top);
        let url = self.url("/v1/completions");
        let v = self.send_until(&body, &url, cancelled)?;
        let lps = v
            .pointer("/choices/0/prompt_logprobs")
            .or_else(|| v.get("prompt_logprobs"))
            .filter(|p| !p.is_null())
            .ok_or_else(|| unsupported(" (it answered without them)"))?;
        wire::prompt_logprobs(lps, prompt, top).map_err(|what| RemoteError::BadResponse {
            what: format!("{url}: {what}"),
        })
    }

    /// Runs one job: `n` samples of request `req`, from sample `first`. A refused `n` (a 4xx for
    /// `n > 1`) or fewer choices than asked lowers the cap and returns the rest as new jobs.
    fn run_job(
        &self,
        job: &Job,
        reqs: &[GenRequest],
        on_tokens: &mut dyn FnMut(usize, &[u32], &str),
        abort: &Abort,
    ) -> Result<JobOut> {
        let r = &reqs[job.req];
        let seed = fan_out_seed(r.params.seed, job.first);
        let mut stop_ids = r.params.stop_token_ids.clone();
        if !r.params.ignore_eos {
            stop_ids.extend_from_slice(&self.stop_ids);
        }
        let mut body = completion_body(
            self.info.kind,
            &self.info.model,
            &r.prompt,
            job.n,
            seed,
            &r.params,
        );
        if self.opts.stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let url = self.url("/v1/completions");
        let mut chunk = |index: usize, ids: &[u32], text: &str| {
            if index < job.n {
                on_tokens(job.first + index, ids, text);
            }
        };
        let on_chunk: OnChunk<'_> = if self.opts.stream {
            Some(&mut chunk)
        } else {
            None
        };
        let v = match self.send_streaming(Some(&body), &url, on_chunk, Some(abort)) {
            Ok(v) => v,
            Err(RemoteError::Status { status, .. })
                if job.n > 1 && (400..500).contains(&status) && status != 429 =>
            {
                // `n` refused: one sample per request from now on.
                self.n_cap.store(1, Ordering::Relaxed);
                let rest = (0..job.n)
                    .map(|k| Job {
                        req: job.req,
                        first: job.first + k,
                        n: 1,
                    })
                    .collect();
                return Ok(JobOut {
                    job: job.clone(),
                    completions: vec![],
                    rest,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let choices =
            v.get("choices")
                .and_then(Value::as_array)
                .ok_or_else(|| RemoteError::BadResponse {
                    what: format!("{url}: no `choices` list"),
                })?;
        let mut ordered: Vec<&Value> = choices.iter().collect();
        ordered.sort_by_key(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0));
        ordered.truncate(job.n);
        let usage_tokens = match ordered.len() {
            1 => v
                .pointer("/usage/completion_tokens")
                .and_then(Value::as_u64)
                .map(|x| x as usize),
            _ => None,
        };
        let cx = Normalise {
            server: self.info.kind.name(),
            tokenizer: &self.tokenizer,
            stop_ids: &stop_ids,
            params: &r.params,
            usage_tokens,
        };
        let completions = ordered
            .iter()
            .map(|c| normalise(c, &cx).map(|n| n.completion))
            .collect::<Result<Vec<_>, _>>()?;
        let got = completions.len();
        let mut rest = vec![];
        if got < job.n {
            if got == 0 {
                return Err(RemoteError::BadResponse {
                    what: format!("{url}: no choices for a request of n = {}", job.n),
                }
                .into());
            }
            // `n` capped: remember the cap and ask again for the rest.
            self.n_cap.fetch_min(got, Ordering::Relaxed);
            rest = split(job.req, job.first + got, job.n - got, got);
        }
        Ok(JobOut {
            job: job.clone(),
            completions,
            rest,
        })
    }
}

impl Backend for RemoteBackend {
    fn generate_with(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> Result<Vec<Vec<Completion>>> {
        self.generate_until(reqs, on_event, &|| false)
    }
}

impl RemoteBackend {
    /// [`Backend::generate_with`], giving up once `cancelled()` says so (it is asked every few
    /// milliseconds, on the calling thread): the requests in flight are dropped, closing their
    /// connections so that the server stops generating for them, no further request is sent, and
    /// the call returns [`RemoteError::Cancelled`]. A failed request drops the others the same
    /// way (the call fails with its error).
    pub fn generate_until(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<Vec<Completion>>> {
        let context = self.info.context.unwrap_or(usize::MAX);
        let vocab = self.tokenizer.vocab_size();
        for (i, r) in reqs.iter().enumerate() {
            r.validate(i, context, vocab)?;
            if !r.params.stop_token_ids.is_empty() && !self.info.kind.takes_stop_token_ids() {
                return Err(RemoteError::Unsupported {
                    server: self.info.kind.name().into(),
                    what: format!("stop on extra token ids (request {i}'s `stop_token_ids`)"),
                }
                .into());
            }
            if r.params.min_tokens > 0 && !self.info.kind.takes_min_tokens() {
                return Err(RemoteError::Unsupported {
                    server: self.info.kind.name().into(),
                    what: format!("hold off stop tokens (request {i}'s `min_tokens`)"),
                }
                .into());
            }
            let p = &r.params;
            if p.tempered_logprobs && p.logprobs && !p.is_greedy() && p.temperature != 1.0 {
                return Err(RemoteError::Unsupported {
                    server: self.info.kind.name().into(),
                    what: format!(
                        "report tempered logprobs per request (request {i}): servers report the \
                         model's raw logprobs; recompute them locally at temperature {}",
                        p.temperature
                    ),
                }
                .into());
            }
        }
        let cap = self.n_cap.load(Ordering::Relaxed);
        let jobs: VecDeque<Job> = reqs
            .iter()
            .enumerate()
            .flat_map(|(i, r)| split(i, 0, r.n, cap))
            .collect();
        let mut out: Vec<Vec<Option<Completion>>> = reqs.iter().map(|r| vec![None; r.n]).collect();
        if jobs.is_empty() {
            return Ok(vec![]);
        }
        let workers = self.concurrency().min(jobs.len()).max(1);
        let queue = Queue {
            jobs: Mutex::new((jobs, 0)),
            ready: Condvar::new(),
            abort: AtomicBool::new(false),
        };
        let (tx, rx) = mpsc::channel::<FromWorker>();
        let abort = Abort::default();
        let mut first_err: Option<GenError> = None;
        // No more jobs taken, and the exchanges in flight dropped.
        let stop = || {
            queue.abort.store(true, Ordering::Relaxed);
            queue.ready.notify_all();
            abort.fire();
        };
        std::thread::scope(|s| {
            for _ in 0..workers {
                let tx = tx.clone();
                let (queue, abort) = (&queue, &abort);
                s.spawn(move || {
                    while let Some(job) = queue.take() {
                        // Live tokens only where the server says which they are.
                        let mut on_tokens = |sample: usize, ids: &[u32], text: &str| {
                            if !ids.is_empty() {
                                let _ = tx.send(FromWorker::Tokens {
                                    req: job.req,
                                    sample,
                                    ids: ids.to_vec(),
                                    text: text.to_string(),
                                });
                            }
                        };
                        let res = self.run_job(&job, reqs, &mut on_tokens, abort);
                        let rest = match &res {
                            Ok(o) => o.rest.clone(),
                            Err(_) => {
                                queue.abort.store(true, Ordering::Relaxed);
                                vec![]
                            }
                        };
                        if !rest.is_empty() {
                            self.stats
                                .fanned_out
                                .fetch_add(rest.len() as u64, Ordering::Relaxed);
                        }
                        queue.done(rest);
                        if tx.send(FromWorker::Done(res)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            // Results come back here, on the caller's thread, where events may be sent. Per
            // sample: the tokens and text already reported from a stream.
            let mut streamed: std::collections::HashMap<(usize, usize), (usize, String)> =
                Default::default();
            loop {
                let msg = match rx.recv_timeout(CANCEL_POLL) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                if first_err.is_none() && !abort.is_set() && cancelled() {
                    first_err = Some(RemoteError::Cancelled.into());
                    stop();
                }
                let Some(msg) = msg else {
                    continue;
                };
                let res = match msg {
                    FromWorker::Tokens {
                        req,
                        sample,
                        ids,
                        text,
                    } => {
                        let seen = streamed.entry((req, sample)).or_default();
                        let last = ids.len() - 1;
                        for (t, &token) in ids.iter().enumerate() {
                            on_event(&GenEvent::Token {
                                request: req,
                                sample,
                                token,
                                text: if t == last { &text } else { "" },
                            });
                        }
                        seen.0 += ids.len();
                        seen.1.push_str(&text);
                        continue;
                    }
                    FromWorker::Done(res) => res,
                };
                match res {
                    Err(e) => {
                        // The first error is the call's (the others' cancellations follow it).
                        first_err.get_or_insert(e);
                        stop();
                    }
                    Ok(o) => {
                        if o.completions.is_empty() {
                            continue;
                        }
                        let r = &reqs[o.job.req];
                        on_event(&GenEvent::Prefill {
                            requests: 1,
                            prompt_tokens: r.prompt.len(),
                        });
                        for (k, c) in o.completions.into_iter().enumerate() {
                            let sample = o.job.first + k;
                            // What a stream did not report yet: the rest of the tokens, and the
                            // rest of the text with the last of them.
                            let (done_tokens, done_text) =
                                streamed.remove(&(o.job.req, sample)).unwrap_or_default();
                            let rest_text = c.text.strip_prefix(done_text.as_str()).unwrap_or("");
                            let last = c.tokens.len().saturating_sub(1);
                            for (t, &token) in c.tokens.iter().enumerate().skip(done_tokens) {
                                on_event(&GenEvent::Token {
                                    request: o.job.req,
                                    sample,
                                    token,
                                    text: if t == last { rest_text } else { "" },
                                });
                            }
                            on_event(&GenEvent::Finished {
                                request: o.job.req,
                                sample,
                                completion: &c,
                            });
                            if let Some(slot) = out[o.job.req].get_mut(sample) {
                                *slot = Some(c);
                            }
                        }
                    }
                }
            }
        });
        if let Some(e) = first_err {
            return Err(e);
        }
        out.into_iter()
            .enumerate()
            .map(|(i, group)| {
                group
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        RemoteError::BadResponse {
                            what: format!("request {i}: some samples never came back"),
                        }
                        .into()
                    })
            })
            .collect()
    }
}
