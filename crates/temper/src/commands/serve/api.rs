//! The HTTP side of `temper serve`: routes, request parsing and checks, OpenAI-shaped errors and
//! responses, SSE streams. Every body is read with a size bound and checked field by field, so a
//! bad request gets a 4xx JSON error naming the field, never a panic or a 500.
//!
//! Routes, the error type and the request handler live here; [`parse`] reads the fields of a body,
//! [`stream`] writes the responses and SSE streams, [`tokenize`] answers `/tokenize`,
//! `/detokenize` and `/metrics`, [`lora`] loads and unloads LoRA adapters at run time.

mod lora;
mod parse;
mod stream;
mod tokenize;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tempering_generate::{GenError, RemoteError, SamplingParams};
use tempering_model::ChatMessage;
use tempering_search::{parse_strategy, Aggregation, Budget, SearchConfig, SearchError, Strategy};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{unix_now, AppState};
use parse::{
    opt_bool, opt_f32, opt_int, opt_str, opt_uint, parse_messages, parse_prompt, parse_search,
    parse_stop,
};
use stream::{sse, Meta};

/// Largest request body read.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest `n`.
pub const MAX_N: usize = 64;
/// Most stop strings.
pub const MAX_STOP: usize = 8;
/// Most top logprobs per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// An OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}` with its status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400 about one field.
    pub fn bad(message: impl Into<String>, param: &str) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = Some(param.to_string());
        e
    }

    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    pub fn from_gen(e: GenError) -> Self {
        match e {
            GenError::InvalidParam {
                field,
                got,
                expected,
                ..
            } => {
                let param = match field {
                    "max_new_tokens" => "max_tokens",
                    f => f,
                };
                ApiError::bad(format!("{param}: got {got}, expected {expected}"), param)
            }
            GenError::EmptyPrompt { .. } => ApiError::bad("the prompt is empty", "prompt"),
            GenError::PromptTooLong { len, context, .. } => ApiError::bad(
                format!("the prompt is {len} tokens; this model's context is {context} tokens"),
                "prompt",
            )
            .code("context_length_exceeded"),
            GenError::UnknownRole { role, .. } => {
                ApiError::bad(format!("unknown role `{role}`"), "messages")
            }
            GenError::Remote(r) => ApiError::from_remote(r),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                other.to_string(),
            ),
        }
    }

    /// The backend server's failure (`--backend`): its refusal of a request passes on as its
    /// status (4xx, 429, 503), anything else is a 502; the message quotes the server's.
    pub fn from_remote(e: RemoteError) -> Self {
        let message = format!("the backend server: {e}");
        match &e {
            RemoteError::Status { status: 429, .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
                    .code("rate_limit_exceeded")
            }
            RemoteError::Status { status: 503, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                message,
            ),
            RemoteError::Status { status, .. } if (400..500).contains(status) => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
                ApiError::new(status, "invalid_request_error", message)
            }
            RemoteError::Unsupported { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
                    .code("unsupported_by_backend")
            }
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "server_error", message)
                .code("backend_error"),
        }
    }

    pub fn from_search(e: SearchError) -> Self {
        match e {
            SearchError::UnknownStrategy { .. } => {
                let mut e2 = ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    e.to_string(),
                );
                e2.param = Some("temper.strategy".into());
                e2.code("strategy_not_found")
            }
            SearchError::BadSpec { .. } => ApiError::bad(e.to_string(), "temper.strategy"),
            SearchError::MissingScorer { .. } => ApiError::bad(e.to_string(), "temper.scorer"),
            SearchError::BudgetTooSmall { .. } => ApiError::bad(e.to_string(), "temper"),
            SearchError::Encode(_) => ApiError::bad(e.to_string(), "prompt"),
            SearchError::Generate(g) => ApiError::from_gen(g),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                other.to_string(),
            ),
        }
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

pub enum PromptIn {
    Text(String),
    Ids(Vec<u32>),
    Messages(Vec<ChatMessage>),
}

/// A request's search: the strategy and its settings.
pub struct SearchReq {
    pub strategy: Box<dyn Strategy>,
    pub config: SearchConfig,
    pub budget: Budget,
    pub scorer: Option<String>,
    pub task: Option<String>,
}

/// Holds one of `--max-concurrency` places until dropped (after the model thread is done).
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| {
                (k < max).then_some(k + 1)
            })
            .ok()
            .map(|_| Slot(counter.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the model thread is asked to do, in order.
pub enum Work {
    Generate(Box<Job>),
    /// Serve this engine (the base model with a LoRA adapter) under this name.
    AddAdapter(String, Box<tempering_generate::LocalEngine>),
    RemoveAdapter(String),
}

/// A checked request, for the model thread.
pub struct Job {
    pub kind: Kind,
    /// The runtime LoRA adapter it asks for (`None`: the served model).
    pub adapter: Option<String>,
    pub prompt: PromptIn,
    pub n: usize,
    pub params: SamplingParams,
    pub max_tokens: Option<usize>,
    pub search: Option<SearchReq>,
    pub stream: bool,
    /// vLLM's `return_token_ids`: the prompt's and each choice's token ids in the response.
    pub return_token_ids: bool,
    /// Completions' `echo`: each choice's text starts with the prompt's.
    pub echo: bool,
    /// vLLM's `prompt_logprobs`: each prompt token's logprob with this many alternatives.
    pub prompt_logprobs: Option<usize>,
    /// When the request arrived (its latency in `/metrics`).
    pub received: Instant,
    pub tx: UnboundedSender<Msg>,
    pub _slot: Slot,
}

pub struct ChoiceOut {
    pub text: String,
    pub finish_reason: &'static str,
    pub logprobs: Value,
    /// The generated token ids, when the request asked for them.
    pub token_ids: Option<Vec<u32>>,
}

pub struct Output {
    pub choices: Vec<ChoiceOut>,
    pub usage: Value,
    /// The prompt's token ids, when the request asked for them.
    pub prompt_token_ids: Option<Vec<u32>>,
    /// vLLM's `prompt_logprobs` list (its first entry null), when the request asked for it.
    pub prompt_logprobs: Option<Value>,
}

/// What the model thread sends back: `Started` or `Error` first, then (streams that asked for
/// them) the prompt's token ids and logprobs, then tokens, then `Done`.
pub enum Msg {
    Error(ApiError),
    Started,
    /// vLLM's `prompt_logprobs` list, for a stream's first chunks (before any token).
    PromptLogprobs(Value),
    /// The prompt's token ids (`return_token_ids`), for a stream's first chunks (before any
    /// token).
    PromptTokenIds(Vec<u32>),
    /// New text of choice `index`, and the token that made it when the request asked for
    /// `return_token_ids` (then every token is sent, its text possibly empty).
    Token {
        index: usize,
        text: String,
        token: Option<u32>,
        /// The token's logprobs object, in the request's layout, when it asked for logprobs.
        logprobs: Option<Value>,
    },
    Finish {
        index: usize,
        reason: &'static str,
    },
    Done(Output),
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/metrics", get(tokenize::metrics))
        .route("/v1/load_lora_adapter", post(lora::load))
        .route("/v1/unload_lora_adapter", post(lora::unload))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such route: the routes are GET /health, GET /v1/models, GET /metrics, POST /v1/completions, POST /v1/chat/completions, POST /tokenize, POST /detokenize, POST /v1/load_lora_adapter, POST /v1/unload_lora_adapter",
    )
    .code("not_found")
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    let in_flight = s.in_flight.load(Ordering::SeqCst);
    if s.ready.load(Ordering::SeqCst) {
        Json(json!({"status": "ok", "model": s.name, "in_flight": in_flight})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading", "model": s.name})),
        )
            .into_response()
    }
}

fn check_key(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.api_key else {
        return Ok(());
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if sent == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or wrong API key: send `Authorization: Bearer KEY`",
        )
        .code("invalid_api_key"))
    }
}

fn check_ready(s: &AppState) -> Result<(), ApiError> {
    if s.ready.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "the model is still loading",
        ))
    }
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let context = s.info.get().map(|i| i.context);
    let mut data = vec![json!({
        "id": s.name,
        "object": "model",
        "created": s.created,
        "owned_by": "temper",
        "root": s.name,
        "parent": null,
        "max_model_len": context,
    })];
    if let Ok(a) = s.adapters.read() {
        for (name, dir) in a.iter() {
            data.push(json!({
                "id": name,
                "object": "model",
                "created": s.created,
                "owned_by": "temper",
                "root": dir.display().to_string(),
                "parent": s.name,
                "max_model_len": context,
            }));
        }
    }
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

async fn completions(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let r = handle(s.clone(), req, Kind::Completion)
        .await
        .unwrap_or_else(|e| e.into_response());
    answered(&s, "/v1/completions", r)
}

async fn chat_completions(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let r = handle(s.clone(), req, Kind::Chat)
        .await
        .unwrap_or_else(|e| e.into_response());
    answered(&s, "/v1/chat/completions", r)
}

/// Counts a response by endpoint and status for `/metrics`.
pub(super) fn answered(s: &AppState, endpoint: &'static str, r: Response) -> Response {
    s.metrics.answered(endpoint, r.status().as_u16());
    r
}

/// Reads a body of at most [`MAX_BODY_BYTES`] as a JSON object.
async fn read_json(req: Request) -> Result<Map<String, Value>, ApiError> {
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the body is over {MAX_BODY_BYTES} bytes"),
            )
            .code("request_too_large")
        })?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}"), "body"))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad("the body must be a JSON object", "body")),
    }
}

/// A seed for requests without one: different each time, as OpenAI's API samples.
fn fresh_seed() -> u64 {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A request's `model`: this server's name or a loaded adapter's (`NAME`), with a strategy or not
/// (`STRATEGY@NAME`). Returns (strategy, adapter); 404 for anything else.
fn resolve_model(s: &AppState, model: &str) -> Result<(Option<String>, Option<String>), ApiError> {
    let adapters = s
        .adapters
        .read()
        .map_err(|_| server_error("the adapter table is poisoned"))?;
    let target = |name: &str| -> Option<Option<String>> {
        if name == s.name {
            Some(None)
        } else if adapters.contains_key(name) {
            Some(Some(name.to_string()))
        } else {
            None
        }
    };
    if let Some(adapter) = target(model) {
        return Ok((None, adapter));
    }
    // STRATEGY may hold `@` itself (sc@8): the name is what follows the last one.
    if let Some((strategy, name)) = model.rsplit_once('@') {
        if let (false, Some(adapter)) = (strategy.is_empty(), target(name)) {
            return Ok((Some(strategy.to_string()), adapter));
        }
    }
    Err(model_not_found(s, model))
}

fn model_not_found(s: &AppState, model: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "the model `{model}` does not exist: this server has `{}` (or STRATEGY@{}, e.g. sc@8@{})",
            s.name, s.name, s.name
        ),
    );
    e.param = Some("model".into());
    e.code("model_not_found")
}

async fn handle(s: Arc<AppState>, req: Request, kind: Kind) -> Result<Response, ApiError> {
    let received = Instant::now();
    check_key(&s, req.headers())?;
    check_ready(&s)?;
    let m = read_json(req).await?;

    // The model: NAME, or STRATEGY@NAME.
    let model = opt_str(&m, "model")?.unwrap_or(s.name.as_str()).to_string();
    let (from_name, adapter) = resolve_model(&s, &model)?;
    let prompt = match kind {
        Kind::Completion => parse_prompt(&m)?,
        Kind::Chat => parse_messages(&m)?,
    };
    let n = opt_uint(&m, "n", MAX_N as u64)?.unwrap_or(1) as usize;
    if n == 0 {
        return Err(ApiError::bad(
            format!("n: got 0, expected 1 to {MAX_N}"),
            "n",
        ));
    }
    let context = s.info.get().map(|i| i.context).unwrap_or(usize::MAX);
    let max_key = if m.get("max_completion_tokens").is_some_and(|v| !v.is_null()) {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match m.get(max_key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(x) if x >= 1 && (x as usize) < context => Some(x as usize),
            _ => {
                return Err(ApiError::bad(
                    format!(
                        "{max_key}: got {v}, expected an integer from 1 to {}",
                        context.saturating_sub(1)
                    ),
                    max_key,
                ))
            }
        },
    };
    // Fields left out take the model's generation_config.json values, then OpenAI's defaults.
    let defaults = s.info.get().map(|i| i.defaults.clone()).unwrap_or_default();
    let temperature = opt_f32(&m, "temperature")?;
    let top_p = opt_f32(&m, "top_p")?.or(defaults.top_p).unwrap_or(1.0);
    let top_k = match opt_int(&m, "top_k")? {
        // vLLM's -1 (and 0) mean no top-k.
        Some(k) if k >= -1 && k <= u32::MAX as i64 => k.max(0) as usize,
        Some(k) => {
            return Err(ApiError::bad(
                format!("top_k: got {k}, expected -1, 0 (all) or a positive integer"),
                "top_k",
            ))
        }
        None => defaults.top_k.unwrap_or(0),
    };
    let min_p = opt_f32(&m, "min_p")?.or(defaults.min_p).unwrap_or(0.0);
    let min_tokens = opt_uint(&m, "min_tokens", u32::MAX as u64)?.unwrap_or(0) as usize;
    let vocab = s.info.get().map(|i| i.vocab).unwrap_or(usize::MAX);
    let stop_token_ids = match m.get("stop_token_ids") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) if a.len() <= 64 => parse::token_ids(a)
            .filter(|ids| ids.iter().all(|&i| (i as usize) < vocab))
            .ok_or_else(|| {
                ApiError::bad(
                    "stop_token_ids: expected a list of token ids below the vocabulary size",
                    "stop_token_ids",
                )
            })?,
        Some(_) => {
            return Err(ApiError::bad(
                "stop_token_ids: expected a list of at most 64 token ids",
                "stop_token_ids",
            ))
        }
    };
    let return_token_ids = opt_bool(&m, "return_token_ids")?.unwrap_or(false);
    let echo = match kind {
        Kind::Completion => opt_bool(&m, "echo")?.unwrap_or(false),
        Kind::Chat => false,
    };
    let seed = match m.get("seed") {
        None | Some(Value::Null) => fresh_seed(),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(x), _) => x,
            // OpenAI's seeds may be negative: any integer is a stream.
            (None, Some(x)) => x as u64,
            _ => return Err(ApiError::bad("seed: expected an integer", "seed")),
        },
    };
    let stop = parse_stop(&m)?;
    let ignore_eos = opt_bool(&m, "ignore_eos")?.unwrap_or(false);
    let (logprobs, top_logprobs) = match kind {
        Kind::Chat => (
            opt_bool(&m, "logprobs")?.unwrap_or(false),
            opt_uint(&m, "top_logprobs", MAX_TOP_LOGPROBS as u64)?.unwrap_or(0) as usize,
        ),
        Kind::Completion => match opt_uint(&m, "logprobs", MAX_TOP_LOGPROBS as u64)? {
            Some(k) => (true, k as usize),
            None => (false, 0),
        },
    };
    let stream = opt_bool(&m, "stream")?.unwrap_or(false);
    let prompt_logprobs = opt_uint(&m, "prompt_logprobs", MAX_TOP_LOGPROBS as u64)
        .map_err(|e| {
            ApiError::bad(
                format!("{} (-1, the whole vocabulary, is not served)", e.message),
                "prompt_logprobs",
            )
        })?
        .map(|k| k as usize);
    let include_usage = match m.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => opt_bool(o, "include_usage")
            .map_err(|_| {
                ApiError::bad(
                    "stream_options.include_usage: expected true or false",
                    "stream_options",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::bad(
                "stream_options: expected an object",
                "stream_options",
            ))
        }
    };
    let params = SamplingParams {
        // The model thread sets the real bound (the room left in the context) when not given.
        max_new_tokens: max_tokens.unwrap_or(usize::MAX),
        temperature: temperature.or(defaults.temperature).unwrap_or(1.0),
        top_k,
        top_p,
        min_p,
        seed,
        stop,
        stop_token_ids,
        ignore_eos,
        min_tokens,
        logprobs: logprobs || top_logprobs > 0,
        top_logprobs,
        ..SamplingParams::default()
    };
    params.validate(0).map_err(ApiError::from_gen)?;
    let search = parse_search(&m, from_name.as_deref(), &params, temperature.is_some())?;
    if echo && search.is_some() {
        return Err(ApiError::bad("echo: not with a temper strategy", "echo"));
    }
    if prompt_logprobs.is_some() && search.is_some() {
        return Err(ApiError::bad(
            "prompt_logprobs: served on plain requests, not with a temper strategy",
            "prompt_logprobs",
        ));
    }
    if search.is_some() && n != 1 {
        return Err(ApiError::bad(
            "n: a temper strategy returns one answer; ask for n = 1 (the strategy sets how many samples it draws)",
            "n",
        ));
    }

    let slot = Slot::take(&s.in_flight, s.max_concurrency).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the server is at its limit of {} concurrent requests: retry later",
                s.max_concurrency
            ),
        )
        .code("rate_limit_exceeded")
    })?;
    let (tx, mut rx) = unbounded_channel();
    let job = Job {
        kind,
        adapter,
        prompt,
        n,
        params,
        max_tokens,
        search,
        stream,
        return_token_ids,
        echo,
        prompt_logprobs,
        received,
        tx,
        _slot: slot,
    };
    s.jobs
        .lock()
        .map_err(|_| server_error("the model thread is gone"))?
        .send(Work::Generate(Box::new(job)))
        .map_err(|_| server_error("the model thread is gone"))?;

    // The first message says whether the request was accepted.
    match rx.recv().await {
        Some(Msg::Started) => {}
        Some(Msg::Error(e)) => return Err(e),
        _ => return Err(server_error("the model thread stopped")),
    }
    let meta = Meta {
        id: format!(
            "{}-{:016x}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            fresh_seed()
        ),
        created: unix_now(),
        model,
        kind,
        n,
    };
    if stream {
        return Ok(sse(meta, rx, include_usage));
    }
    loop {
        match rx.recv().await {
            Some(Msg::Done(out)) => return Ok(Json(meta.full(out)).into_response()),
            Some(Msg::Error(e)) => return Err(e),
            Some(_) => continue,
            None => return Err(server_error("the model thread stopped")),
        }
    }
}

fn server_error(msg: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", msg)
}
