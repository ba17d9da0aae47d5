//! The HTTP side of `temper serve`: routes, request parsing and checks, OpenAI-shaped errors and
//! responses, SSE streams. Every body is read with a size bound and checked field by field, so a
//! bad request gets a 4xx JSON error naming the field, never a panic or a 500.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tempering_generate::{GenError, SamplingParams};
use tempering_model::ChatMessage;
use tempering_search::{parse_strategy, Aggregation, Budget, SearchConfig, SearchError, Strategy};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{unix_now, AppState};

/// Largest request body read.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest `n`.
pub const MAX_N: usize = 64;
/// Most stop strings.
pub const MAX_STOP: usize = 8;
/// Most top logprobs per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// An OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}` with its status.
#[derive(Debug)]
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
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                other.to_string(),
            ),
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

/// A checked request, for the model thread.
pub struct Job {
    pub kind: Kind,
    pub prompt: PromptIn,
    pub n: usize,
    pub params: SamplingParams,
    pub max_tokens: Option<usize>,
    pub search: Option<SearchReq>,
    pub stream: bool,
    pub tx: UnboundedSender<Msg>,
    pub _slot: Slot,
}

pub struct ChoiceOut {
    pub text: String,
    pub finish_reason: &'static str,
    pub logprobs: Value,
}

pub struct Output {
    pub choices: Vec<ChoiceOut>,
    pub usage: Value,
}

/// What the model thread sends back: `Started` or `Error` first, then tokens, then `Done`.
pub enum Msg {
    Error(ApiError),
    Started,
    Token { index: usize, text: String },
    Finish { index: usize, reason: &'static str },
    Done(Output),
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such route: the routes are GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions",
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
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": s.name,
            "object": "model",
            "created": s.created,
            "owned_by": "temper",
            "max_model_len": context,
        }],
    }))
    .into_response())
}

async fn completions(State(s): State<Arc<AppState>>, req: Request) -> Response {
    handle(s, req, Kind::Completion)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn chat_completions(State(s): State<Arc<AppState>>, req: Request) -> Response {
    handle(s, req, Kind::Chat)
        .await
        .unwrap_or_else(|e| e.into_response())
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

// Field readers: absent or null is `None`; a wrong type is a 400 naming the field.
fn opt_f32(m: &Map<String, Value>, k: &str) -> Result<Option<f32>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(|x| Some(x as f32))
            .ok_or_else(|| ApiError::bad(format!("{k}: expected a number"), k)),
    }
}

fn opt_uint(m: &Map<String, Value>, k: &str, max: u64) -> Result<Option<u64>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(x) if x <= max => Ok(Some(x)),
            _ => Err(ApiError::bad(
                format!("{k}: got {v}, expected an integer in [0, {max}]"),
                k,
            )),
        },
    }
}

fn opt_bool(m: &Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad(format!("{k}: expected true or false"), k)),
    }
}

fn opt_str<'a>(m: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad(format!("{k}: expected a string"), k)),
    }
}

fn token_ids(v: &[Value]) -> Option<Vec<u32>> {
    v.iter()
        .map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()))
        .collect()
}

fn parse_prompt(m: &Map<String, Value>) -> Result<PromptIn, ApiError> {
    let bad = || {
        ApiError::bad(
            "prompt: expected a string, a list of token ids, or a list of one of either (one prompt per request)",
            "prompt",
        )
    };
    match m.get("prompt") {
        Some(Value::String(s)) => Ok(PromptIn::Text(s.clone())),
        Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
            Value::String(s) => Ok(PromptIn::Text(s.clone())),
            Value::Array(ids) => token_ids(ids).map(PromptIn::Ids).ok_or_else(bad),
            _ => token_ids(a).map(PromptIn::Ids).ok_or_else(bad),
        },
        Some(Value::Array(a)) => token_ids(a).map(PromptIn::Ids).ok_or_else(bad),
        None | Some(Value::Null) => Err(ApiError::bad("prompt: required", "prompt")),
        Some(_) => Err(bad()),
    }
}

fn parse_messages(m: &Map<String, Value>) -> Result<PromptIn, ApiError> {
    let bad = |msg: String| ApiError::bad(format!("messages: {msg}"), "messages");
    let list = match m.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => return Err(bad("expected a non-empty list of {role, content}".into())),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, msg) in list.iter().enumerate() {
        let role = msg
            .get("role")
            .and_then(|r| r.as_str())
            .ok_or_else(|| bad(format!("message {i}: expected a string `role`")))?;
        let content = match msg.get("content") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => String::new(),
            // Content parts: the text ones, joined.
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(|t| t.as_str()), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => s.push_str(t),
                        _ => {
                            return Err(bad(format!(
                                "message {i}: only text content parts are supported"
                            )))
                        }
                    }
                }
                s
            }
            Some(_) => return Err(bad(format!("message {i}: expected a string `content`"))),
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok(PromptIn::Messages(out))
}

fn parse_stop(m: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::bad(
            format!("stop: expected a non-empty string or a list of at most {MAX_STOP}"),
            "stop",
        )
    };
    match m.get("stop") {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if a.len() <= MAX_STOP => a
            .iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty()).map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// The `temper` object (or a strategy from the model name) as a search.
fn parse_search(
    m: &Map<String, Value>,
    from_name: Option<&str>,
    params: &SamplingParams,
    temperature_given: bool,
) -> Result<Option<SearchReq>, ApiError> {
    let t = match m.get("temper") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(t)) => t.clone(),
        Some(_) => return Err(ApiError::bad("temper: expected an object", "temper")),
    };
    let field = |k: &str| format!("temper.{k}");
    let strategy = match (opt_str(&t, "strategy"), from_name) {
        (Ok(Some(s)), _) => s.to_string(),
        (Ok(None), Some(s)) => s.to_string(),
        (Ok(None), None) if t.is_empty() => return Ok(None),
        (Ok(None), None) => {
            return Err(ApiError::bad(
                "temper.strategy: required (e.g. sc@8, bon@4:min, beam:4x4)",
                "temper.strategy",
            ))
        }
        (Err(_), _) => {
            return Err(ApiError::bad(
                "temper.strategy: expected a string",
                "temper.strategy",
            ))
        }
    };
    let rename = |e: ApiError, k: &str| ApiError {
        param: Some(field(k)),
        message: format!("temper.{}", e.message),
        ..e
    };
    let scorer = opt_str(&t, "scorer")
        .map_err(|e| rename(e, "scorer"))?
        .map(String::from);
    if let Some(sc) = scorer.as_deref() {
        if !["rule", "prm"].contains(&sc) {
            return Err(ApiError::bad(
                format!(
                    "temper.scorer `{sc}`: expected `rule` (the task's step checker) or `prm` (the server's --prm); self-eval is not served yet"
                ),
                "temper.scorer",
            ));
        }
    }
    let mut task = opt_str(&t, "task")
        .map_err(|e| rename(e, "task"))?
        .map(String::from);
    if task.is_none() && scorer.as_deref() == Some("rule") {
        // The one task with a rule step checker.
        task = Some("arithmetic".into());
    }
    let strategy = parse_strategy(&strategy, task.as_deref()).map_err(ApiError::from_search)?;
    let uint = |k: &str, max: u64| opt_uint(&t, k, max).map_err(|e| rename(e, k));
    let budget_tokens = uint("budget_tokens", 1 << 24)?;
    let budget_calls = uint("budget_calls", 1 << 20)?;
    let budget_seconds = opt_f32(&t, "budget_seconds").map_err(|e| rename(e, "budget_seconds"))?;
    if let Some(s) = budget_seconds {
        if s <= 0.0 {
            return Err(ApiError::bad(
                "temper.budget_seconds: expected a positive number",
                "temper.budget_seconds",
            ));
        }
    }
    let defaults = SearchConfig::default();
    let step_max_tokens = uint("step_max_tokens", 4096)?.unwrap_or(64) as usize;
    let max_depth = uint("max_depth", 256)?.unwrap_or(16) as usize;
    if step_max_tokens == 0 || max_depth == 0 {
        return Err(ApiError::bad(
            "temper.step_max_tokens and temper.max_depth: expected at least 1",
            "temper",
        ));
    }
    let aggregation = match opt_str(&t, "aggregation").map_err(|e| rename(e, "aggregation"))? {
        None => Aggregation::Min,
        Some(a) => a.parse().map_err(|_| {
            ApiError::bad(
                format!(
                    "temper.aggregation `{a}`: expected one of {}",
                    Aggregation::NAMES
                ),
                "temper.aggregation",
            )
        })?,
    };
    let mut sampling = params.clone();
    if !temperature_given {
        // `temper search`'s default: searches need diverse samples.
        sampling.temperature = 0.8;
    }
    Ok(Some(SearchReq {
        strategy,
        config: SearchConfig {
            sampling,
            step_max_tokens,
            max_depth,
            seed: params.seed,
            aggregation,
            ..defaults
        },
        budget: Budget {
            max_tokens: budget_tokens.map(|x| x as usize),
            max_calls: budget_calls.map(|x| x as usize),
            max_wall: budget_seconds.map(|s| Duration::from_secs_f64(s as f64)),
        },
        scorer,
        task,
    }))
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

async fn handle(s: Arc<AppState>, req: Request, kind: Kind) -> Result<Response, ApiError> {
    check_key(&s, req.headers())?;
    check_ready(&s)?;
    let m = read_json(req).await?;

    // The model: NAME, or STRATEGY@NAME.
    let model = opt_str(&m, "model")?.unwrap_or(s.name.as_str()).to_string();
    let from_name = if model == s.name {
        None
    } else {
        match model.strip_suffix(&format!("@{}", s.name)) {
            Some(strategy) if !strategy.is_empty() => Some(strategy.to_string()),
            _ => {
                let mut e = ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!(
                        "the model `{model}` does not exist: this server has `{}` (or STRATEGY@{}, e.g. sc@8@{})",
                        s.name, s.name, s.name
                    ),
                );
                e.param = Some("model".into());
                return Err(e.code("model_not_found"));
            }
        }
    };

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
    let temperature = opt_f32(&m, "temperature")?;
    let top_p = opt_f32(&m, "top_p")?.unwrap_or(1.0);
    let top_k = opt_uint(&m, "top_k", u32::MAX as u64)?.unwrap_or(0) as usize;
    let min_p = opt_f32(&m, "min_p")?.unwrap_or(0.0);
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
        max_new_tokens: max_tokens.unwrap_or(16),
        temperature: temperature.unwrap_or(1.0),
        top_k,
        top_p,
        min_p,
        seed,
        stop,
        ignore_eos,
        logprobs: logprobs || top_logprobs > 0,
        top_logprobs,
        ..SamplingParams::default()
    };
    params.validate(0).map_err(ApiError::from_gen)?;
    let search = parse_search(&m, from_name.as_deref(), &params, temperature.is_some())?;
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
        prompt,
        n,
        params,
        max_tokens,
        search,
        stream,
        tx,
        _slot: slot,
    };
    s.jobs
        .lock()
        .map_err(|_| server_error("the model thread is gone"))?
        .send(job)
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

/// What every response and chunk repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    n: usize,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn full(&self, out: Output) -> Value {
        let choices: Vec<Value> = out
            .choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| match self.kind {
                Kind::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": c.logprobs,
                    "finish_reason": c.finish_reason,
                }),
                Kind::Completion => json!({
                    "index": i,
                    "text": c.text,
                    "logprobs": c.logprobs,
                    "finish_reason": c.finish_reason,
                }),
            })
            .collect();
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": out.usage,
        })
    }

    /// One chunk with one choice: `text` (a delta), or the finish reason.
    fn chunk(&self, index: usize, text: Option<&str>, finish: Option<&str>, role: bool) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => json!({
                "index": index,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }
}

struct StreamState {
    meta: Meta,
    rx: UnboundedReceiver<Msg>,
    include_usage: bool,
    /// Chat: whether each choice has had its first (role) chunk.
    opened: Vec<bool>,
    /// Which choices have sent their finish chunk.
    finished: Vec<bool>,
    pending: std::collections::VecDeque<String>,
    done: bool,
}

impl StreamState {
    fn push(&mut self, mut v: Value) {
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        self.pending.push_back(v.to_string());
    }

    fn on_token(&mut self, index: usize, text: &str) {
        if index >= self.opened.len() {
            return;
        }
        let role = self.meta.kind == Kind::Chat && !self.opened[index];
        self.opened[index] = true;
        let c = self.meta.chunk(index, Some(text), None, role);
        self.push(c);
    }

    fn on_finish(&mut self, index: usize, reason: &str) {
        if index >= self.finished.len() || self.finished[index] {
            return;
        }
        let role = self.meta.kind == Kind::Chat && !self.opened[index];
        self.opened[index] = true;
        self.finished[index] = true;
        let text = (self.meta.kind == Kind::Chat && role).then_some("");
        let c = self.meta.chunk(index, text, Some(reason), role);
        self.push(c);
    }

    fn on_done(&mut self, out: Output) {
        for (i, c) in out.choices.iter().enumerate() {
            self.on_finish(i, c.finish_reason);
        }
        if self.include_usage {
            let v = json!({
                "id": self.meta.id,
                "object": self.meta.object(true),
                "created": self.meta.created,
                "model": self.meta.model,
                "choices": [],
                "usage": out.usage,
            });
            self.pending.push_back(v.to_string());
        }
        self.pending.push_back("[DONE]".into());
        self.done = true;
    }

    fn on_error(&mut self, e: ApiError) {
        self.pending.push_back(e.body().to_string());
        self.pending.push_back("[DONE]".into());
        self.done = true;
    }
}

/// The SSE response: `data: {chunk}` lines, the usage chunk when asked for, then `data: [DONE]`;
/// keep-alive comments while a long search runs.
fn sse(meta: Meta, rx: UnboundedReceiver<Msg>, include_usage: bool) -> Response {
    let n = meta.n;
    let state = StreamState {
        meta,
        rx,
        include_usage,
        opened: vec![false; n],
        finished: vec![false; n],
        pending: Default::default(),
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(data) = st.pending.pop_front() {
                return Some((Ok::<Event, Infallible>(Event::default().data(data)), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(Msg::Token { index, text }) => st.on_token(index, &text),
                Some(Msg::Finish { index, reason }) => st.on_finish(index, reason),
                Some(Msg::Done(out)) => st.on_done(out),
                Some(Msg::Error(e)) => st.on_error(e),
                Some(Msg::Started) => {}
                None => st.on_error(server_error("the model thread stopped")),
            }
        }
    });
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(5)))
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, "no-cache".parse().expect("a header"));
    resp
}
