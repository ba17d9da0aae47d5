//! The model thread of `temper serve`: owns the engine (and the runtime LoRA adapters' engines),
//! takes checked requests ([`Job`]s) off the queue and runs them: plain generations decode
//! together, joining a running batch between steps ([`batching`]), searches run whole between
//! steps ([`search_job`]), giving up once the request's client has gone ([`LocalForClient`]). With
//! `--backend` it owns a remote backend instead and runs each request on its own thread
//! ([`remote`]), giving up the same way ([`ForClient`]).
//! Here: turning a request into the engine's and its completions into the response, whatever
//! generates them ([`Runs`]). Tokens and outputs go back over each request's channel; `/metrics`
//! is counted. Knows nothing of HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tempering_generate::{
    render_chat, Backend, Completion, FinishReason, GenEvent, GenRequest, LocalEngine,
    PromptLogprob, RemoteBackend, TopLogprob,
};
use tempering_model::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use super::api::{self, ApiError, Job, Kind, Msg, Output, PromptIn};
use super::metrics::Metrics;
use super::{Engine, Loaded};

mod batching;
mod remote;
mod search_job;

/// What a request's tokens come from, local or remote: a [`Backend`] with the tokenizer, context
/// and vocabulary its requests are checked against.
pub(crate) trait Runs: Backend + Sync {
    fn tokenizer(&self) -> &Tokenizer;
    fn context(&self) -> usize;
    fn vocab(&self) -> usize;
}

impl Runs for LocalEngine {
    fn tokenizer(&self) -> &Tokenizer {
        LocalEngine::tokenizer(self)
    }
    fn context(&self) -> usize {
        self.model().config.max_position_embeddings
    }
    fn vocab(&self) -> usize {
        self.model().config.vocab_size
    }
}

/// A remote OpenAI-compatible server (`--backend`), with the context and vocabulary that requests
/// are checked against here (the server's context where it says, else the local config's).
pub(crate) struct RemoteModel {
    pub backend: RemoteBackend,
    pub context: usize,
    pub vocab: usize,
}

impl Backend for RemoteModel {
    fn generate_with(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> tempering_generate::Result<Vec<Vec<Completion>>> {
        self.backend.generate_with(reqs, on_event)
    }
}

/// The remote backend for one request: it gives up once the request's client has gone away,
/// dropping its HTTP requests to the server (which sees their connections close and stops
/// generating), as the local batch drops a request whose client left.
pub(crate) struct ForClient<'a> {
    model: &'a RemoteModel,
    tx: &'a UnboundedSender<Msg>,
}

impl Backend for ForClient<'_> {
    fn generate_with(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> tempering_generate::Result<Vec<Vec<Completion>>> {
        self.model
            .backend
            .generate_until(reqs, on_event, &|| self.tx.is_closed())
    }
}

/// The local engine for one search: it stops generating once the request's client has gone
/// away (within a decode step of it), so the search fails at that model call and frees the
/// model thread, as the batch drops a plain request whose client left.
pub(crate) struct LocalForClient<'a> {
    engine: &'a LocalEngine,
    tx: &'a UnboundedSender<Msg>,
}

impl Backend for LocalForClient<'_> {
    fn generate_with(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> tempering_generate::Result<Vec<Vec<Completion>>> {
        self.engine
            .generate_until(reqs, on_event, &|| self.tx.is_closed())
    }
}

impl Runs for LocalForClient<'_> {
    fn tokenizer(&self) -> &Tokenizer {
        Runs::tokenizer(self.engine)
    }
    fn context(&self) -> usize {
        Runs::context(self.engine)
    }
    fn vocab(&self) -> usize {
        Runs::vocab(self.engine)
    }
}

impl Runs for ForClient<'_> {
    fn tokenizer(&self) -> &Tokenizer {
        self.model.tokenizer()
    }
    fn context(&self) -> usize {
        self.model.context
    }
    fn vocab(&self) -> usize {
        self.model.vocab
    }
}

impl Runs for RemoteModel {
    fn tokenizer(&self) -> &Tokenizer {
        self.backend.tokenizer()
    }
    fn context(&self) -> usize {
        self.context
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
}

/// The model thread: the loaded model and the counters it updates.
pub(crate) struct Worker {
    pub(super) m: Loaded,
    pub(super) metrics: Arc<Metrics>,
    /// Runtime LoRA adapters by name: the base model's weights with an adapter on.
    adapters: BTreeMap<String, LocalEngine>,
    /// Most sequences decoded together (`--batch-rows`).
    max_rows: usize,
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

/// vLLM's `prompt_logprobs` list: null for the first token, then per token an object keyed by
/// token id (a string) holding the `k` top alternatives and the prompt's own token, each with its
/// `logprob`, `rank` (1: the most likely) and `decoded_token`.
fn prompt_logprobs_json(tok: &Tokenizer, lps: &[Option<PromptLogprob>], k: usize) -> Value {
    let entry = |token: u32, logprob: f32, rank: usize| json!({"logprob": logprob, "rank": rank, "decoded_token": token_str(tok, token)});
    lps.iter()
        .map(|p| match p {
            None => Value::Null,
            Some(p) => {
                let mut m = Map::new();
                for (i, t) in p.top.iter().take(k).enumerate() {
                    m.insert(t.token.to_string(), entry(t.token, t.logprob, i + 1));
                }
                m.insert(p.token.to_string(), entry(p.token, p.logprob, p.rank));
                Value::Object(m)
            }
        })
        .collect()
}

/// With `echo` and `logprobs` (legacy completions, as vLLM): the prompt's part of a choice's
/// logprobs (its tokens, their logprobs and `top_logprobs` alternatives, the first token's null,
/// and their `text_offset`s from 0), and the byte offset where the generated tokens' part starts.
fn echo_logprobs(
    tok: &Tokenizer,
    job: &Job,
    prompt: &[u32],
    lps: &[Option<PromptLogprob>],
) -> (Value, usize) {
    let tokens: Vec<String> = prompt.iter().map(|&id| token_str(tok, id)).collect();
    let mut offsets = Vec::with_capacity(tokens.len());
    let mut end = 0usize;
    for t in &tokens {
        offsets.push(end);
        end += t.len();
    }
    let logprobs: Vec<Value> = lps
        .iter()
        .map(|p| p.as_ref().map_or(Value::Null, |p| json!(p.logprob)))
        .collect();
    let top: Vec<Value> = lps
        .iter()
        .map(|p| match p {
            None => Value::Null,
            Some(p) => Value::Object(
                p.top
                    .iter()
                    .take(job.params.top_logprobs)
                    .map(|a| (token_str(tok, a.token), json!(a.logprob)))
                    .collect(),
            ),
        })
        .collect();
    let v = json!({
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": if job.params.top_logprobs > 0 { Value::Array(top) } else { Value::Null },
        "text_offset": offsets,
    });
    (v, end)
}

impl Worker {
    pub fn new(m: Loaded, metrics: Arc<Metrics>, max_rows: usize) -> Self {
        Worker {
            m,
            metrics,
            adapters: BTreeMap::new(),
            max_rows,
        }
    }

    /// The local engine a request asks for: the served model's or an adapter's.
    pub(super) fn engine_for(&self, job: &Job) -> Result<&LocalEngine, ApiError> {
        self.engine_named(&job.adapter)
    }

    fn engine_named(&self, adapter: &Option<String>) -> Result<&LocalEngine, ApiError> {
        match adapter {
            None => match &self.m.engine {
                Engine::Local(e) => Ok(e),
                Engine::Remote(_) => Err(ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "this server generates on --backend: it has no local engine",
                )),
            },
            Some(name) => self.adapters.get(name).ok_or_else(|| {
                let mut e = ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!("the LoRA adapter `{name}` was unloaded"),
                );
                e.param = Some("model".into());
                e.code("model_not_found")
            }),
        }
    }

    /// Runs a search request whole, answering on its channel.
    fn run_search(&self, job: Job) {
        self.answer_whole(job, Self::search)
    }

    /// Runs `job` whole through `work` on its engine, then answers on its channel. The work
    /// stops once the client has gone away: its remote requests are dropped, or the local
    /// engine stops decoding.
    fn answer_whole(
        &self,
        job: Job,
        work: impl FnOnce(&Self, &dyn Runs, &Job) -> Result<Output, ApiError>,
    ) {
        let running = self.metrics.running();
        let tx = job.tx.clone();
        let out = match &self.m.engine {
            Engine::Remote(model) => {
                let e = ForClient { model, tx: &job.tx };
                work(self, &e, &job)
            }
            Engine::Local(_) => self.engine_for(&job).and_then(|engine| {
                let e = LocalForClient {
                    engine,
                    tx: &job.tx,
                };
                work(self, &e, &job)
            }),
        };
        // Its slot and running count are free before the client hears back.
        let received = job.received;
        drop(job);
        drop(running);
        match out {
            Ok(o) => {
                self.metrics.finished(&o.usage, received.elapsed());
                let _ = tx.send(Msg::Done(o));
            }
            Err(e) => {
                if tx.is_closed() {
                    self.metrics.cancelled();
                }
                let _ = tx.send(Msg::Error(e));
            }
        }
    }

    /// A stream that asked for `return_token_ids` gets the prompt's ids before its tokens (its
    /// first chunks carry them, as vLLM's do).
    fn stream_prompt_ids(job: &Job, ids: &[u32]) {
        if job.stream && job.return_token_ids {
            let _ = job.tx.send(Msg::PromptTokenIds(ids.to_vec()));
        }
    }

    /// A stream that asked for `prompt_logprobs` gets them before its tokens (its first chunks
    /// carry them, as the whole response does); one that asked for `return_token_ids`, the
    /// prompt's ids.
    fn stream_prompt_logprobs(
        e: &dyn Runs,
        job: &Job,
        ids: &[u32],
        lps: Option<&[Option<PromptLogprob>]>,
    ) {
        Self::stream_prompt_ids(job, ids);
        if let (true, Some(k), Some(lps)) = (job.stream, job.prompt_logprobs, lps) {
            let v = prompt_logprobs_json(e.tokenizer(), lps, k);
            let _ = job.tx.send(Msg::PromptLogprobs(v));
        }
    }

    /// With `echo` and `stream`, the prompt's text goes to each sample's stream before its
    /// tokens; with `logprobs` too, that chunk carries the prompt's tokens' logprobs (`lps`) as
    /// the whole response's choices start with them. Returns the echo (`Some` with `echo`) for
    /// the final response, and the byte offset (`text_offset`) the generated tokens' logprobs
    /// start at.
    fn stream_echo(
        e: &dyn Runs,
        job: &Job,
        text: String,
        prompt: &[u32],
        lps: Option<&[Option<PromptLogprob>]>,
    ) -> (Option<String>, usize) {
        let echo = job.echo.then_some(text);
        let logprobs = match (job.echo && job.params.logprobs, lps) {
            (true, Some(lps)) => Some(echo_logprobs(e.tokenizer(), job, prompt, lps)),
            _ => None,
        };
        let start = logprobs.as_ref().map_or(0, |(_, end)| *end);
        if let (Some(t), true) = (&echo, job.stream) {
            for index in 0..job.n {
                let _ = job.tx.send(Msg::Token {
                    index,
                    text: t.clone(),
                    token: None,
                    logprobs: logprobs.as_ref().map(|(v, _)| v.clone()),
                });
            }
        }
        (echo, start)
    }

    fn prompt_ids(&self, e: &dyn Runs, job: &Job) -> Result<(Vec<u32>, String, bool), ApiError> {
        let tok = e.tokenizer();
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
                let template = self.m.template.as_ref().ok_or_else(|| {
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
    fn fit(
        &self,
        e: &dyn Runs,
        job: &Job,
        ids: &[u32],
        default_max: usize,
    ) -> Result<usize, ApiError> {
        let context = e.context();
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

    /// A plain request as the engine's (its prompt ids, `max_tokens` fitted to the context), and
    /// the prompt's text.
    fn gen_request(&self, e: &dyn Runs, job: &Job) -> Result<(GenRequest, String), ApiError> {
        let (ids, text, _) = self.prompt_ids(e, job)?;
        let default_max = if job.kind == Kind::Chat {
            usize::MAX
        } else {
            16
        };
        let mut params = job.params.clone();
        params.max_new_tokens = self.fit(e, job, &ids, default_max)?;
        let req = GenRequest::new(ids, job.n, params);
        req.validate(0, e.context(), e.vocab())
            .map_err(ApiError::from_gen)?;
        Ok((req, text))
    }

    /// The response of a finished plain request; `echo`: the prompt's text, put before each
    /// choice's.
    fn output(
        &self,
        e: &dyn Runs,
        job: &Job,
        ids: &[u32],
        echo: Option<&str>,
        out: &[Completion],
    ) -> Output {
        let completion_tokens: usize = out.iter().map(|c| c.tokens.len()).sum();
        let choices = out
            .iter()
            .map(|c| api::ChoiceOut {
                text: format!("{}{}", echo.unwrap_or(""), c.text),
                finish_reason: finish_str(c.finish_reason),
                logprobs: self.logprobs_json(e, job, c),
                token_ids: job.return_token_ids.then(|| c.tokens.clone()),
            })
            .collect();
        Output {
            choices,
            prompt_token_ids: job.return_token_ids.then(|| ids.to_vec()),
            prompt_logprobs: None,
            usage: json!({
                "prompt_tokens": ids.len(),
                "completion_tokens": completion_tokens,
                "total_tokens": ids.len() + completion_tokens,
            }),
        }
    }

    /// Puts a finished request's prompt logprobs into its response: `prompt_logprobs` when asked
    /// for, and with `echo` and `logprobs` (legacy completions, as vLLM) the prompt's tokens first
    /// in each choice's logprobs, the first token's logprob and alternatives null.
    fn with_prompt_logprobs(
        &self,
        e: &dyn Runs,
        job: &Job,
        prompt: &[u32],
        lps: &[Option<PromptLogprob>],
        out: &mut Output,
    ) {
        let tok = e.tokenizer();
        if let Some(k) = job.prompt_logprobs {
            out.prompt_logprobs = Some(prompt_logprobs_json(tok, lps, k));
        }
        if !(job.echo && job.params.logprobs) {
            return;
        }
        let (head, end) = echo_logprobs(tok, job, prompt, lps);
        for c in &mut out.choices {
            let lp = &mut c.logprobs;
            let after = |k: &str, lp: &Value| lp[k].as_array().cloned().unwrap_or_default();
            let gen_offsets: Vec<Value> = after("text_offset", lp)
                .iter()
                .map(|o| json!(o.as_u64().unwrap_or(0) as usize + end))
                .collect();
            let joined = |mut head: Vec<Value>, tail: Vec<Value>| {
                head.extend(tail);
                Value::Array(head)
            };
            *lp = json!({
                "tokens": joined(after("tokens", &head), after("tokens", lp)),
                "token_logprobs": joined(after("token_logprobs", &head), after("token_logprobs", lp)),
                "top_logprobs": if job.params.top_logprobs > 0 {
                    joined(after("top_logprobs", &head), after("top_logprobs", lp))
                } else {
                    Value::Null
                },
                "text_offset": joined(after("text_offset", &head), gen_offsets),
            });
        }
    }

    /// The logprobs object of one streamed token (at byte `offset` of the choice's token
    /// strings), in the chat layout or the legacy one.
    fn token_logprobs_json(
        &self,
        e: &dyn Runs,
        job: &Job,
        token: u32,
        logprob: f32,
        top: &[TopLogprob],
        offset: usize,
    ) -> (Value, usize) {
        let tok = e.tokenizer();
        let s = token_str(tok, token);
        let len = s.len();
        let top: Vec<(String, f32)> = top
            .iter()
            .map(|a| (token_str(tok, a.token), a.logprob))
            .collect();
        let v = if job.kind == Kind::Chat {
            json!({"content": [{
                "token": s,
                "logprob": logprob,
                "bytes": s.as_bytes(),
                "top_logprobs": top.iter().map(|(t, l)| json!({
                    "token": t, "logprob": l, "bytes": t.as_bytes()
                })).collect::<Vec<_>>(),
            }]})
        } else {
            let m: serde_json::Map<String, Value> =
                top.into_iter().map(|(t, l)| (t, json!(l))).collect();
            json!({
                "tokens": [s],
                "token_logprobs": [logprob],
                "top_logprobs": if job.params.top_logprobs > 0 { json!([m]) } else { Value::Null },
                "text_offset": [offset],
            })
        };
        (v, offset + len)
    }

    /// OpenAI's logprobs object for one choice: the chat layout (`content`) or the legacy one.
    fn logprobs_json(&self, e: &dyn Runs, job: &Job, c: &Completion) -> Value {
        let (Some(lp), true) = (&c.logprobs, job.params.logprobs) else {
            return Value::Null;
        };
        let tok = e.tokenizer();
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
}
