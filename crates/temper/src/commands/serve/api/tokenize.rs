//! The cheap endpoints answered without the model thread: `POST /tokenize` and `POST /detokenize`
//! in vLLM's shapes (a prompt or chat messages to ids, ids to text, with the tokenizer and chat
//! template the model thread shares once loaded) and `GET /metrics` (Prometheus text).

use super::*;

/// What both endpoints check first: the API key, a loaded model, a JSON object body whose
/// `model` (if given) is one served here; then the body and the tokenizer's side of the model.
async fn open_request(
    s: &AppState,
    req: Request,
) -> Result<(Map<String, Value>, &crate::commands::serve::ModelInfo), ApiError> {
    check_key(s, req.headers())?;
    check_ready(s)?;
    let m = read_json(req).await?;
    if let Some(model) = opt_str(&m, "model")? {
        resolve_model(s, model)?;
    }
    let info = s
        .info
        .get()
        .ok_or_else(|| server_error("the model is loaded but its tokenizer is not"))?;
    Ok((m, info))
}

/// `{"model", "prompt", "add_special_tokens"?}` or `{"model", "messages", "add_generation_prompt"?}`
/// -> `{"count", "max_model_len", "tokens", "token_strs"}` (vLLM's shapes).
pub(super) async fn tokenize(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let r = tokenize_inner(&s, req)
        .await
        .unwrap_or_else(|e| e.into_response());
    answered(&s, "/tokenize", r)
}

async fn tokenize_inner(s: &AppState, req: Request) -> Result<Response, ApiError> {
    let (m, info) = open_request(s, req).await?;
    let tok = &info.tokenizer;
    let ids = match (m.get("prompt"), m.get("messages")) {
        (Some(p), None) if !p.is_null() => {
            let text = p
                .as_str()
                .ok_or_else(|| ApiError::bad("prompt: expected a string", "prompt"))?;
            let special = opt_bool(&m, "add_special_tokens")?.unwrap_or(true);
            tok.encode(text, special)
                .map_err(|e| ApiError::bad(format!("the prompt: {e}"), "prompt"))?
        }
        (None, Some(_)) => {
            let PromptIn::Messages(msgs) = parse_messages(&m)? else {
                return Err(server_error("messages parsed as something else"));
            };
            let template = info.template.as_ref().ok_or_else(|| {
                ApiError::bad(
                    "this model has no chat template: tokenize a prompt instead",
                    "messages",
                )
            })?;
            let gen_prompt = opt_bool(&m, "add_generation_prompt")?.unwrap_or(true);
            let text = tempering_generate::render_chat(template, &msgs, gen_prompt)
                .map_err(|e| ApiError::bad(format!("the chat template: {e}"), "messages"))?;
            // The template writes the special tokens itself.
            let special = opt_bool(&m, "add_special_tokens")?.unwrap_or(false);
            tok.encode(&text, special)
                .map_err(|e| ApiError::bad(format!("the messages: {e}"), "messages"))?
        }
        _ => {
            return Err(ApiError::bad(
                "expected exactly one of `prompt` (a string) and `messages` (a chat)",
                "prompt",
            ))
        }
    };
    let token_strs = if opt_bool(&m, "return_token_strs")?.unwrap_or(false) {
        json!(ids
            .iter()
            .map(|&i| tok.decode(&[i], false).unwrap_or_default())
            .collect::<Vec<_>>())
    } else {
        Value::Null
    };
    Ok(Json(json!({
        "count": ids.len(),
        "max_model_len": info.context,
        "tokens": ids,
        "token_strs": token_strs,
    }))
    .into_response())
}

/// `{"model", "tokens": [ids]}` -> `{"prompt": text}` (vLLM's shapes).
pub(super) async fn detokenize(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let r = detokenize_inner(&s, req)
        .await
        .unwrap_or_else(|e| e.into_response());
    answered(&s, "/detokenize", r)
}

async fn detokenize_inner(s: &AppState, req: Request) -> Result<Response, ApiError> {
    let (m, info) = open_request(s, req).await?;
    let bad = || {
        ApiError::bad(
            format!(
                "tokens: expected a list of token ids below the vocabulary size ({})",
                info.vocab
            ),
            "tokens",
        )
    };
    let ids = match m.get("tokens") {
        Some(Value::Array(a)) => parse::token_ids(a)
            .filter(|ids| ids.iter().all(|&i| (i as usize) < info.vocab))
            .ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let text = info
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::bad(format!("tokens: {e}"), "tokens"))?;
    Ok(Json(json!({ "prompt": text })).into_response())
}

/// `GET /metrics`: Prometheus' text format (version 0.0.4).
pub(super) async fn metrics(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&s, &headers) {
        return e.into_response();
    }
    let body = s.metrics.render(s.in_flight.load(Ordering::SeqCst));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
