//! The OpenAI-compatible wire format of the remote backend, as pure functions: the `/v1/completions`
//! body for one request (token-id prompt, every sampling setting explicit in the dialect of the
//! server at hand), and one returned choice normalised into a [`Completion`] (both logprob layouts,
//! token ids from the server where it gives them, else re-tokenised locally, and the finish reason
//! told apart: stop token or stop string), and vLLM's `prompt_logprobs` read back. Knows nothing of
//! HTTP, retries or threads.

use serde_json::{json, Map, Value};
use tempering_model::Tokenizer;

use crate::error::RemoteError;
use crate::prompt_logprobs::PromptLogprob;
use crate::request::{Completion, FinishReason, SamplingParams, TopLogprob};

/// Which server answers, from its `/v1/models` (`owned_by`) and `/props`. Each has its own names
/// for sampling settings and its own defaults, so bodies are written per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Vllm,
    Sglang,
    LlamaCpp,
    /// `temper serve`.
    Temper,
    /// Anything else that speaks the API.
    Other,
}

impl ServerKind {
    pub fn from_owned_by(owned_by: &str) -> Self {
        match owned_by.to_ascii_lowercase().as_str() {
            "vllm" => ServerKind::Vllm,
            "sglang" => ServerKind::Sglang,
            "llamacpp" | "llama.cpp" => ServerKind::LlamaCpp,
            "temper" => ServerKind::Temper,
            _ => ServerKind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Vllm => "vLLM",
            ServerKind::Sglang => "SGLang",
            ServerKind::LlamaCpp => "llama.cpp",
            ServerKind::Temper => "temper serve",
            ServerKind::Other => "an OpenAI-compatible server",
        }
    }

    /// Whether the server returns each choice's token ids (vLLM's `return_token_ids`; `temper
    /// serve` takes it too).
    pub fn returns_token_ids(self) -> bool {
        matches!(self, ServerKind::Vllm | ServerKind::Temper)
    }

    /// Whether the server takes extra stop token ids (`stop_token_ids`).
    pub fn takes_stop_token_ids(self) -> bool {
        matches!(
            self,
            ServerKind::Vllm | ServerKind::Sglang | ServerKind::Temper
        )
    }

    /// Whether the server cannot return the prompt's logprobs (vLLM's `prompt_logprobs`): llama.cpp
    /// has no such field. (Servers of unknown make are asked, and refused if they answer without.)
    pub fn lacks_prompt_logprobs(self) -> bool {
        self == ServerKind::LlamaCpp
    }

    /// Whether the server takes `min_tokens` (no stop token before that many tokens).
    pub fn takes_min_tokens(self) -> bool {
        self.takes_stop_token_ids()
    }
}

/// The seed as sent: llama.cpp keeps 32 bits and reads `0xFFFFFFFF` as "random", and servers of
/// unknown make may parse JSON numbers as doubles, so those get 31 bits.
pub fn wire_seed(kind: ServerKind, seed: u64) -> u64 {
    match kind {
        ServerKind::Vllm | ServerKind::Sglang | ServerKind::Temper => seed,
        ServerKind::LlamaCpp | ServerKind::Other => seed & 0x7FFF_FFFF,
    }
}

/// The seed of the sub-request that draws samples `first..` of a request seeded `seed`: the
/// request's own seed for the first sample (so one request with `n` and a fan-out agree on sample
/// 0), SplitMix64-mixed streams for the others.
pub fn fan_out_seed(seed: u64, first: usize) -> u64 {
    if first == 0 {
        return seed;
    }
    let mut z = seed ^ (first as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `/v1/completions` body asking for `n` samples of `prompt` with `p`. Every setting that
/// changes the distribution is sent, with neutral values where ours has none (servers have their own
/// defaults: llama.cpp samples with top-k 40, min-p 0.05 and a repeat penalty of 1.1).
pub fn completion_body(
    kind: ServerKind,
    model: &str,
    prompt: &[u32],
    n: usize,
    seed: u64,
    p: &SamplingParams,
) -> Value {
    let mut b = Map::new();
    b.insert("model".into(), json!(model));
    b.insert("prompt".into(), json!(prompt));
    b.insert("max_tokens".into(), json!(p.max_new_tokens));
    b.insert("temperature".into(), json!(p.temperature));
    b.insert("top_p".into(), json!(p.top_p));
    b.insert("min_p".into(), json!(p.min_p));
    b.insert("seed".into(), json!(wire_seed(kind, seed)));
    b.insert("n".into(), json!(n));
    b.insert("stream".into(), json!(false));
    b.insert("presence_penalty".into(), json!(0.0));
    b.insert("frequency_penalty".into(), json!(0.0));
    if !p.stop.is_empty() {
        b.insert("stop".into(), json!(p.stop));
    }
    if p.ignore_eos {
        b.insert("ignore_eos".into(), json!(true));
    }
    // vLLM's extra (SGLang and `temper serve` take it too; checked before sending elsewhere).
    if p.min_tokens > 0 {
        b.insert("min_tokens".into(), json!(p.min_tokens));
    }
    // Logprobs: asked for by the caller, or (without ids from the server) to see every sampled
    // token, the stop token and the tokens of a stop string included.
    let logprobs = p.logprobs || p.top_logprobs > 0 || !kind.returns_token_ids();
    if logprobs {
        b.insert("logprobs".into(), json!(p.top_logprobs));
    }
    match kind {
        ServerKind::Vllm => {
            b.insert("top_k".into(), json!(top_k_or(p.top_k, -1)));
            b.insert("repetition_penalty".into(), json!(1.0));
            b.insert("return_token_ids".into(), json!(true));
            b.insert("skip_special_tokens".into(), json!(true));
            if logprobs {
                b.insert("return_tokens_as_token_ids".into(), json!(true));
            }
            if !p.stop_token_ids.is_empty() {
                b.insert("stop_token_ids".into(), json!(p.stop_token_ids));
            }
        }
        ServerKind::Sglang => {
            b.insert("top_k".into(), json!(top_k_or(p.top_k, -1)));
            b.insert("repetition_penalty".into(), json!(1.0));
            if !p.stop_token_ids.is_empty() {
                b.insert("stop_token_ids".into(), json!(p.stop_token_ids));
            }
        }
        ServerKind::LlamaCpp => {
            b.insert("top_k".into(), json!(top_k_or(p.top_k, 0)));
            b.insert("repeat_penalty".into(), json!(1.0));
            b.insert("typical_p".into(), json!(1.0));
            b.insert("dry_multiplier".into(), json!(0.0));
            b.insert("xtc_probability".into(), json!(0.0));
            b.insert("mirostat".into(), json!(0));
            b.insert("cache_prompt".into(), json!(true));
            // llama.cpp's completions read `n_probs`, not `logprobs`; its entries carry token ids.
            b.insert("n_probs".into(), json!(p.top_logprobs.max(1)));
        }
        ServerKind::Temper => {
            b.insert("top_k".into(), json!(top_k_or(p.top_k, 0)));
            b.insert("return_token_ids".into(), json!(true));
            if !p.stop_token_ids.is_empty() {
                b.insert("stop_token_ids".into(), json!(p.stop_token_ids));
            }
        }
        ServerKind::Other => {
            b.insert("top_k".into(), json!(top_k_or(p.top_k, 0)));
        }
    }
    Value::Object(b)
}

/// `top_k` as the server wants it, `all` standing for "no top-k".
fn top_k_or(k: usize, all: i64) -> i64 {
    if k == 0 {
        all
    } else {
        k as i64
    }
}

/// One generated token as a server reported it, from either logprob layout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireToken {
    pub id: Option<u32>,
    pub text: Option<String>,
    pub logprob: Option<f32>,
    /// Alternatives: (id when known, text, logprob).
    pub top: Vec<(Option<u32>, String, f32)>,
}

/// vLLM's `token_id:123` (with `return_tokens_as_token_ids`).
fn id_from_token_text(s: &str) -> Option<u32> {
    s.strip_prefix("token_id:")?.parse().ok()
}

fn as_f32(v: &Value) -> Option<f32> {
    v.as_f64().map(|x| x as f32)
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

/// The tokens of a choice's `logprobs`, from the legacy completions layout (`tokens`,
/// `token_logprobs`, `top_logprobs` as objects) or the chat layout (`content[]` with `token`,
/// `logprob`, `top_logprobs[]`, and llama.cpp's `id`). `None` when absent or null.
pub fn wire_tokens(logprobs: &Value) -> Result<Option<Vec<WireToken>>, String> {
    let Some(o) = logprobs.as_object() else {
        return Ok(None);
    };
    if let Some(content) = o.get("content") {
        let Some(items) = content.as_array() else {
            return Err("`logprobs.content` is not a list".into());
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let text = it.get("token").and_then(Value::as_str).map(str::to_string);
            let id = it
                .get("id")
                .and_then(as_u32)
                .or_else(|| text.as_deref().and_then(id_from_token_text));
            let mut top = Vec::new();
            if let Some(alts) = it.get("top_logprobs").and_then(Value::as_array) {
                for a in alts {
                    let t = a.get("token").and_then(Value::as_str).unwrap_or_default();
                    let Some(l) = a.get("logprob").and_then(as_f32) else {
                        return Err(format!(
                            "`logprobs.content[{i}].top_logprobs`: an entry has no logprob"
                        ));
                    };
                    let aid = a
                        .get("id")
                        .and_then(as_u32)
                        .or_else(|| id_from_token_text(t));
                    top.push((aid, t.to_string(), l));
                }
            }
            out.push(WireToken {
                id,
                text,
                logprob: it.get("logprob").and_then(as_f32),
                top,
            });
        }
        return Ok(Some(out));
    }
    let Some(tokens) = o.get("tokens").and_then(Value::as_array) else {
        return Ok(None);
    };
    let lps = o.get("token_logprobs").and_then(Value::as_array);
    let tops = o.get("top_logprobs").and_then(Value::as_array);
    let mut out = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let text = t.as_str().map(str::to_string);
        let mut top = Vec::new();
        if let Some(Value::Object(m)) = tops.and_then(|v| v.get(i)) {
            for (k, v) in m {
                let Some(l) = as_f32(v) else {
                    return Err(format!(
                        "`logprobs.top_logprobs[{i}]`: `{k}` is not a number"
                    ));
                };
                top.push((id_from_token_text(k), k.clone(), l));
            }
            // An object has no order: most likely first, as the local engine gives them.
            top.sort_by(|a, b| b.2.total_cmp(&a.2));
        }
        out.push(WireToken {
            id: text.as_deref().and_then(id_from_token_text),
            text,
            logprob: lps.and_then(|v| v.get(i)).and_then(as_f32),
            top,
        });
    }
    Ok(Some(out))
}

/// What the caller needs to turn a choice into a [`Completion`].
pub struct Normalise<'a> {
    /// The server, for messages.
    pub server: &'a str,
    pub tokenizer: &'a Tokenizer,
    /// The model's stop token ids (EOS first) and the request's extra ones.
    pub stop_ids: &'a [u32],
    pub params: &'a SamplingParams,
    /// `usage.completion_tokens` when the response held this one choice only.
    pub usage_tokens: Option<usize>,
}

/// A choice turned into a [`Completion`], and whether its token ids came from the server (`true`)
/// or from re-tokenising its text locally.
pub struct Normalised {
    pub completion: Completion,
    pub ids_from_server: bool,
}

/// Normalises one choice. Token ids, in order of trust: the choice's `token_ids` (vLLM), ids in
/// its logprobs (llama.cpp's `id`, vLLM's `token_id:N`), else the text re-tokenised locally (with
/// the stop string that ended it and the stop token, as the local engine counts them) and checked
/// against the number of tokens the server reports. An `Err` is a [`RemoteError::TokenMismatch`]
/// or a malformed choice.
pub fn normalise(choice: &Value, cx: &Normalise<'_>) -> Result<Normalised, RemoteError> {
    let bad = |what: String| RemoteError::BadResponse { what };
    let text = choice
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("a choice has no `text`".into()))?
        .to_string();
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    let wire = wire_tokens(choice.get("logprobs").unwrap_or(&Value::Null)).map_err(bad)?;
    let server_ids: Option<Vec<u32>> = match choice.get("token_ids") {
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(as_u32)
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| bad("`token_ids` holds a non-id".into()))?,
        ),
        _ => wire
            .as_ref()
            .filter(|w| !w.is_empty())
            .and_then(|w| w.iter().map(|t| t.id).collect::<Option<Vec<u32>>>()),
    };
    // Every generated token's text, from the logprobs.
    let wire_text: Option<String> = wire.as_ref().and_then(|w| {
        w.iter()
            .map(|t| t.text.as_deref())
            .collect::<Option<Vec<&str>>>()
            .map(|v| v.concat())
    });
    let stop_reason = choice.get("stop_reason");
    let p = cx.params;
    let tok = cx.tokenizer;
    let decode = |ids: &[u32]| {
        tok.decode(ids, false)
            .map_err(|e| bad(format!("the returned token ids do not decode: {e}")))
    };
    // llama.cpp gives a character that spans several tokens (`√` is two in SmolLM2's vocabulary)
    // one logprob entry, with the whole character's text and only its last token's id: ids read
    // from such entries decode to something else. Then the text is re-tokenised, as for a server
    // that gives no ids at all. (`token_ids`, vLLM's, are every sampled token and always kept.)
    // The server's ids decoded once; what follows `text` in them is read from this.
    let decoded = server_ids.as_ref().map(|ids| tok.decode(ids, false));
    let merged_entries = choice.get("token_ids").is_none()
        && matches!(&decoded, Some(d) if !d.as_ref().is_ok_and(|d| d.starts_with(text.as_str())));
    let (server_ids, decoded) = if merged_entries {
        (None, None)
    } else {
        (server_ids, decoded)
    };

    // Which stop string ended it, if any.
    let stop_string_in = |tail: &str| -> Option<String> {
        p.stop
            .iter()
            .filter_map(|s| tail.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, s)| (*at, std::cmp::Reverse(s.len())))
            .map(|(_, s)| s.clone())
    };
    let ended_on_stop_id = server_ids
        .as_ref()
        .and_then(|ids| ids.last())
        .is_some_and(|id| cx.stop_ids.contains(id));
    // What was generated past `text`: the stop string, the stop token's text.
    let tail: Option<String> = match decoded {
        Some(d) => d
            .map_err(|e| bad(format!("the returned token ids do not decode: {e}")))?
            .strip_prefix(text.as_str())
            .map(str::to_string),
        None => wire_text
            .as_deref()
            .and_then(|f| f.strip_prefix(text.as_str()))
            .map(str::to_string),
    };
    let (finish_reason, stop_string) = match finish {
        "length" => (FinishReason::Length, None),
        _ => match stop_reason {
            // vLLM says what stopped it: a stop string, or a stop token id (null: EOS).
            Some(Value::String(s)) => (FinishReason::StopString, Some(s.clone())),
            Some(Value::Number(_)) => (FinishReason::Stop, None),
            _ if p.stop.is_empty() || ended_on_stop_id => (FinishReason::Stop, None),
            _ => match tail.as_deref().and_then(stop_string_in) {
                Some(s) => (FinishReason::StopString, Some(s)),
                // Ids without the stop token and without the stop string: the server trimmed
                // the stop string's tokens (llama.cpp does).
                None if server_ids.is_some() => (FinishReason::StopString, None),
                // The generated tokens are known and hold no stop string: a stop token.
                None if tail.is_some() => (FinishReason::Stop, None),
                // Nothing to tell them apart by: a stop string is what step searches ask for.
                None => (FinishReason::StopString, None),
            },
        },
    };

    let (tokens, ids_from_server) = match server_ids {
        Some(mut ids) => {
            if let Some(&bad_id) = ids.iter().find(|&&i| i as usize >= tok.vocab_size()) {
                return Err(RemoteError::TokenMismatch {
                    detail: format!(
                        "the server returned token id {bad_id}, outside the local tokenizer's \
                         {} ids: the server runs another model",
                        tok.vocab_size()
                    ),
                });
            }
            if tail.is_none() {
                let decoded = decode(&ids)?;
                return Err(RemoteError::TokenMismatch {
                    detail: format!(
                        "the returned ids decode to {:?}, which does not start with the returned \
                         text {:?}: the server's tokenizer is not the local one",
                        clip(&decoded),
                        clip(&text)
                    ),
                });
            }
            // A stop token the server left out of its ids, as the local engine counts it.
            if finish_reason == FinishReason::Stop && !ended_on_stop_id && !p.ignore_eos {
                if let Some(&eos) = cx.stop_ids.first() {
                    ids.push(eos);
                }
            }
            (ids, true)
        }
        None => {
            let mut ids = match &wire_text {
                // Every generated token's text, the stop token's included: special-token text
                // encodes to the special token.
                Some(full) => tok.encode(full, false),
                None => tok.encode(&text, false),
            }
            .map_err(|e| bad(format!("re-tokenising the returned text: {e}")))?;
            if wire_text.is_none() {
                if let Some(s) = &stop_string {
                    ids.extend(
                        tok.encode(s, false)
                            .map_err(|e| bad(format!("re-tokenising the stop string: {e}")))?,
                    );
                }
                if finish_reason == FinishReason::Stop && !p.ignore_eos {
                    if let Some(&eos) = cx.stop_ids.first() {
                        ids.push(eos);
                    }
                }
            }
            // Merged entries are fewer than the tokens: only the usage counts them.
            let entries = wire.as_ref().map(Vec::len).filter(|_| !merged_entries);
            let reported = entries.or(cx.usage_tokens);
            if let Some(n) = reported {
                if n != ids.len() {
                    return Err(RemoteError::TokenMismatch {
                        detail: format!(
                            "the returned text {:?} re-tokenises to {} tokens, but the server \
                             generated {n}: the server's tokenizer is not the local one, or the \
                             text does not round-trip",
                            clip(wire_text.as_deref().unwrap_or(&text)),
                            ids.len()
                        ),
                    });
                }
            }
            (ids, false)
        }
    };

    let want_lp = p.logprobs || p.top_logprobs > 0;
    let (logprobs, top_logprobs) = if want_lp {
        let w = wire.as_ref().ok_or_else(|| RemoteError::Unsupported {
            server: cx.server.to_string(),
            what: "return logprobs of generated tokens (it answered without them)".into(),
        })?;
        // A stop token the server did not list (llama.cpp leaves EOS out) has no logprob.
        if w.len() != tokens.len() && !(w.len() + 1 == tokens.len() && ids_from_server) {
            return Err(RemoteError::TokenMismatch {
                detail: format!(
                    "{} logprobs for {} tokens: the logprobs cannot be aligned with the tokens",
                    w.len(),
                    tokens.len()
                ),
            });
        }
        let mut lps = Vec::with_capacity(tokens.len());
        let mut tops = Vec::with_capacity(tokens.len());
        for (i, _) in tokens.iter().enumerate() {
            let t = w.get(i);
            lps.push(
                t.and_then(|t| t.logprob)
                    .unwrap_or(f32::NEG_INFINITY)
                    .max(f32::MIN),
            );
            let alts: Vec<TopLogprob> = t
                .map(|t| {
                    t.top
                        .iter()
                        .filter_map(|(id, s, l)| {
                            let id = id.or_else(|| single_id(tok, s))?;
                            Some(TopLogprob {
                                token: id,
                                logprob: *l,
                            })
                        })
                        .take(p.top_logprobs)
                        .collect()
                })
                .unwrap_or_default();
            tops.push(alts);
        }
        (Some(lps), (p.top_logprobs > 0).then_some(tops))
    } else {
        (None, None)
    };
    Ok(Normalised {
        completion: Completion {
            tokens,
            text,
            logprobs,
            top_logprobs,
            finish_reason,
            stop_string,
        },
        ids_from_server,
    })
}

/// vLLM's `prompt_logprobs` list for `prompt` as [`PromptLogprob`]s with at most `top`
/// alternatives: `null` for the first token, then per token an object keyed by token id holding the
/// prompt's token and the most likely ones, each with its `logprob` and `rank` (1: the most
/// likely). An `Err` says what is malformed.
pub fn prompt_logprobs(
    v: &Value,
    prompt: &[u32],
    top: usize,
) -> Result<Vec<Option<PromptLogprob>>, String> {
    let entries = v
        .as_array()
        .ok_or("`prompt_logprobs` is not a list".to_string())?;
    if entries.len() != prompt.len() {
        return Err(format!(
            "`prompt_logprobs` has {} entries for a prompt of {} tokens",
            entries.len(),
            prompt.len()
        ));
    }
    let mut out = Vec::with_capacity(prompt.len());
    for (i, (e, &token)) in entries.iter().zip(prompt).enumerate() {
        if i == 0 {
            // Nothing comes before the first token.
            out.push(None);
            continue;
        }
        let m = e
            .as_object()
            .ok_or(format!("`prompt_logprobs[{i}]` is not an object"))?;
        // (id, logprob, rank) of each entry.
        let mut alts = Vec::with_capacity(m.len());
        for (k, x) in m {
            let id: u32 = k
                .parse()
                .map_err(|_| format!("`prompt_logprobs[{i}]`: `{k}` is not a token id"))?;
            let logprob = x
                .get("logprob")
                .and_then(as_f32)
                .ok_or(format!("`prompt_logprobs[{i}][{k}]` has no logprob"))?;
            let rank = x.get("rank").and_then(Value::as_u64).map(|r| r as usize);
            alts.push((id, logprob, rank));
        }
        let own = alts.iter().find(|a| a.0 == token).copied().ok_or(format!(
            "`prompt_logprobs[{i}]` has no entry for the prompt's token {token}"
        ))?;
        // By rank where given, else by logprob: the prompt's own token is among them only if it
        // ranks within the alternatives asked for.
        alts.sort_by(|a, b| {
            let rank = |x: &(u32, f32, Option<usize>)| x.2.unwrap_or(usize::MAX);
            rank(a).cmp(&rank(b)).then(b.1.total_cmp(&a.1))
        });
        let rank = own
            .2
            .unwrap_or_else(|| 1 + alts.iter().filter(|a| a.1 > own.1).count());
        out.push(Some(PromptLogprob {
            token,
            logprob: own.1,
            rank,
            top: alts
                .iter()
                .filter(|a| a.0 != token || rank <= top)
                .take(top)
                .map(|a| TopLogprob {
                    token: a.0,
                    logprob: a.1,
                })
                .collect(),
        }));
    }
    Ok(out)
}

/// The id of an alternative given as text only, where the text is exactly one token.
fn single_id(tok: &Tokenizer, s: &str) -> Option<u32> {
    match tok.encode(s, false).ok()?.as_slice() {
        [id] => Some(*id),
        _ => None,
    }
}

/// At most 80 characters of `s`, for error messages.
fn clip(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
