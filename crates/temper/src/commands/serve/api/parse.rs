//! Request bodies field by field: each reader takes an absent or null field as `None` and a wrong
//! type or range as a 400 naming the field; the prompt (text or token ids), chat messages, stop
//! strings and the `temper` search object are checked before anything reaches the model thread.
//! Knows the OpenAI request shapes; nothing of routing, responses or the engine.

use super::*;

// Field readers: absent or null is `None`; a wrong type is a 400 naming the field.
pub(super) fn opt_f32(m: &Map<String, Value>, k: &str) -> Result<Option<f32>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(|x| Some(x as f32))
            .ok_or_else(|| ApiError::bad(format!("{k}: expected a number"), k)),
    }
}

pub(super) fn opt_uint(m: &Map<String, Value>, k: &str, max: u64) -> Result<Option<u64>, ApiError> {
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

pub(super) fn opt_int(m: &Map<String, Value>, k: &str) -> Result<Option<i64>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::bad(format!("{k}: got {v}, expected an integer"), k)),
    }
}

pub(super) fn opt_bool(m: &Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad(format!("{k}: expected true or false"), k)),
    }
}

pub(super) fn opt_str<'a>(m: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad(format!("{k}: expected a string"), k)),
    }
}

pub(super) fn token_ids(v: &[Value]) -> Option<Vec<u32>> {
    v.iter()
        .map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()))
        .collect()
}

pub(super) fn parse_prompt(m: &Map<String, Value>) -> Result<PromptIn, ApiError> {
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

pub(super) fn parse_messages(m: &Map<String, Value>) -> Result<PromptIn, ApiError> {
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

pub(super) fn parse_stop(m: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
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
pub(super) fn parse_search(
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
    // optillm's field, for drop-in use: a strategy of ours (`sc@8`, `beam:4x4`, ...), `none` for
    // plain generation. The `temper` object and the model name win over it.
    let optillm = match opt_str(m, "optillm_approach")? {
        None | Some("none") => None,
        Some(a) => Some(a),
    };
    let from_optillm = opt_str(&t, "strategy").ok().flatten().is_none()
        && from_name.is_none()
        && optillm.is_some();
    let from_name = from_name.or(optillm);
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
    let strategy = parse_strategy(&strategy, task.as_deref()).map_err(|e| {
        let e = ApiError::from_search(e);
        if from_optillm {
            ApiError {
                param: Some("optillm_approach".into()),
                message: format!(
                    "optillm_approach: {} (it takes temper's strategies, e.g. sc@8 for self-consistency, or none)",
                    e.message
                ),
                ..e
            }
        } else {
            e
        }
    })?;
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
