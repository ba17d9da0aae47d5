//! Responses: the OpenAI-shaped JSON of a finished request (`Meta::full`) and the SSE stream of
//! chunks (`sse`), the prompt's token ids and logprobs in the first chunks when asked for, the
//! usage chunk when asked for and `data: [DONE]` last. Knows the response shapes and the messages the model thread
//! sends; nothing of parsing or the engine.

use super::*;

/// What every response and chunk repeats.
pub(super) struct Meta {
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) kind: Kind,
    pub(super) n: usize,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// The whole response. With `return_token_ids` (vLLM's layout): each choice's `token_ids`, and
    /// the prompt's ids in each choice (completions) or beside the choices (chat); the same for
    /// `prompt_logprobs`.
    pub(super) fn full(&self, out: Output) -> Value {
        let prompt_ids = out.prompt_token_ids;
        let prompt_logprobs = out.prompt_logprobs;
        let choices: Vec<Value> = out
            .choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = match self.kind {
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
                };
                if let Some(ids) = c.token_ids {
                    v["token_ids"] = json!(ids);
                }
                if let (Some(p), Kind::Completion) = (&prompt_ids, self.kind) {
                    v["prompt_token_ids"] = json!(p);
                }
                if let (Some(p), Kind::Completion) = (&prompt_logprobs, self.kind) {
                    v["prompt_logprobs"] = p.clone();
                }
                v
            })
            .collect();
        let mut v = json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": out.usage,
        });
        if let (Some(p), Kind::Chat) = (prompt_ids, self.kind) {
            v["prompt_token_ids"] = json!(p);
        }
        if let (Some(p), Kind::Chat) = (prompt_logprobs, self.kind) {
            v["prompt_logprobs"] = p;
        }
        v
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
    /// The prompt's logprobs, when the request asked for them: in each choice's first chunk
    /// (completions) or beside the choices of the stream's first chunk (chat), where the whole
    /// response has them.
    prompt_logprobs: Option<Value>,
    prompt_logprobs_sent: bool,
    /// The prompt's token ids, when the request asked for `return_token_ids`: in each choice's
    /// first chunk, in the choice (completions) or beside it (chat), as vLLM streams them.
    prompt_token_ids: Option<Vec<u32>>,
}

impl StreamState {
    fn push(&mut self, mut v: Value) {
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        self.pending.push_back(v.to_string());
    }

    /// Puts the prompt's token ids and logprobs into `c`, the first chunk of its choice.
    fn with_prompt_fields(&mut self, c: &mut Value) {
        if let Some(ids) = &self.prompt_token_ids {
            match self.meta.kind {
                Kind::Completion => c["choices"][0]["prompt_token_ids"] = json!(ids),
                Kind::Chat => c["prompt_token_ids"] = json!(ids),
            }
        }
        let Some(p) = &self.prompt_logprobs else {
            return;
        };
        match self.meta.kind {
            Kind::Completion => c["choices"][0]["prompt_logprobs"] = p.clone(),
            Kind::Chat if !self.prompt_logprobs_sent => c["prompt_logprobs"] = p.clone(),
            Kind::Chat => {}
        }
        self.prompt_logprobs_sent = true;
    }

    fn on_token(&mut self, index: usize, text: &str, token: Option<u32>, logprobs: Option<Value>) {
        if index >= self.opened.len() {
            return;
        }
        let first = !self.opened[index];
        let role = self.meta.kind == Kind::Chat && first;
        self.opened[index] = true;
        let mut c = self.meta.chunk(index, Some(text), None, role);
        if first {
            self.with_prompt_fields(&mut c);
        }
        if let Some(t) = token {
            // vLLM's streaming `return_token_ids`: the chunk's tokens beside its text.
            c["choices"][0]["token_ids"] = json!([t]);
        }
        if let Some(lp) = logprobs {
            c["choices"][0]["logprobs"] = lp;
        }
        self.push(c);
    }

    fn on_finish(&mut self, index: usize, reason: &str) {
        if index >= self.finished.len() || self.finished[index] {
            return;
        }
        let first = !self.opened[index];
        let role = self.meta.kind == Kind::Chat && first;
        self.opened[index] = true;
        self.finished[index] = true;
        let text = (self.meta.kind == Kind::Chat && role).then_some("");
        let mut c = self.meta.chunk(index, text, Some(reason), role);
        if first {
            self.with_prompt_fields(&mut c);
        }
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
pub(super) fn sse(meta: Meta, rx: UnboundedReceiver<Msg>, include_usage: bool) -> Response {
    let n = meta.n;
    let state = StreamState {
        meta,
        rx,
        include_usage,
        opened: vec![false; n],
        finished: vec![false; n],
        pending: Default::default(),
        done: false,
        prompt_logprobs: None,
        prompt_logprobs_sent: false,
        prompt_token_ids: None,
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
                Some(Msg::Token {
                    index,
                    text,
                    token,
                    logprobs,
                }) => st.on_token(index, &text, token, logprobs),
                Some(Msg::Finish { index, reason }) => st.on_finish(index, reason),
                Some(Msg::Done(out)) => st.on_done(out),
                Some(Msg::Error(e)) => st.on_error(e),
                Some(Msg::PromptLogprobs(p)) => st.prompt_logprobs = Some(p),
                Some(Msg::PromptTokenIds(ids)) => st.prompt_token_ids = Some(ids),
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
