//! Reading a streamed `/v1/completions` answer (server-sent events) into the same JSON a whole
//! answer has, so that one normaliser reads both: each choice's text, token ids, logprobs (either
//! layout) and finish reason put together from its chunks, the usage chunk kept. Tolerates what
//! servers do: `: ping` comment lines, CRLF line endings, a stream that ends without `data: [DONE]`
//! once every choice has finished; a chunk carrying an `error` or a stream cut before its choices
//! finished is an error. Each chunk's new text and token ids go to a callback as they come. Reads
//! the response's body as it arrives; knows nothing of retries or sampling.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::error::RemoteError;
use crate::remote::text::{clip, server_message};

/// One choice, put together.
#[derive(Default)]
struct Acc {
    text: String,
    token_ids: Option<Vec<Value>>,
    /// Legacy layout: `tokens`, `token_logprobs`, `top_logprobs`, `text_offset` appended.
    legacy: Option<Map<String, Value>>,
    /// Chat-style layout: `content` entries appended.
    content: Option<Vec<Value>>,
    finish_reason: Value,
    stop_reason: Value,
}

impl Acc {
    fn add(&mut self, c: &Value) {
        if let Some(t) = c.get("text").and_then(Value::as_str) {
            self.text.push_str(t);
        }
        if let Some(ids) = c.get("token_ids").and_then(Value::as_array) {
            self.token_ids
                .get_or_insert_with(Vec::new)
                .extend(ids.iter().cloned());
        }
        match c.get("logprobs") {
            Some(Value::Object(lp)) if lp.contains_key("content") => {
                if let Some(items) = lp.get("content").and_then(Value::as_array) {
                    self.content
                        .get_or_insert_with(Vec::new)
                        .extend(items.iter().cloned());
                }
            }
            Some(Value::Object(lp)) => {
                let acc = self.legacy.get_or_insert_with(Map::new);
                for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
                    if let Some(Value::Array(items)) = lp.get(k) {
                        match acc.entry(k).or_insert_with(|| json!([])) {
                            Value::Array(a) => a.extend(items.iter().cloned()),
                            other => *other = Value::Array(items.clone()),
                        }
                    }
                }
            }
            _ => {}
        }
        for (k, slot) in [
            ("finish_reason", &mut self.finish_reason),
            ("stop_reason", &mut self.stop_reason),
        ] {
            if let Some(v) = c.get(k).filter(|v| !v.is_null()) {
                *slot = v.clone();
            }
        }
    }

    fn into_choice(self, index: u64) -> Value {
        let mut c = json!({
            "index": index,
            "text": self.text,
            "finish_reason": self.finish_reason,
        });
        if !self.stop_reason.is_null() {
            c["stop_reason"] = self.stop_reason;
        }
        if let Some(ids) = self.token_ids {
            c["token_ids"] = Value::Array(ids);
        }
        c["logprobs"] = match (self.legacy, self.content) {
            (_, Some(content)) => json!({ "content": content }),
            (Some(l), None) => Value::Object(l),
            (None, None) => Value::Null,
        };
        c
    }
}

/// Reads an SSE body line by line into the answer it carries.
struct SseReader<'u> {
    url: &'u str,
    choices: BTreeMap<u64, Acc>,
    usage: Value,
    /// The data lines of the event being read.
    data: String,
    done: bool,
}

impl<'u> SseReader<'u> {
    fn new(url: &'u str) -> Self {
        SseReader {
            url,
            choices: BTreeMap::new(),
            usage: Value::Null,
            data: String::new(),
            done: false,
        }
    }

    fn bad(&self, what: String) -> RemoteError {
        RemoteError::BadResponse {
            what: format!("{}: {what}", self.url),
        }
    }

    /// One line, without its end. Returns `false` once `data: [DONE]` came (nothing after it is
    /// read).
    fn line(
        &mut self,
        line: &str,
        on_chunk: &mut (dyn FnMut(usize, &[u32], &str) + '_),
    ) -> Result<bool, RemoteError> {
        let line = line.trim_end_matches('\r');
        if let Some(d) = line.strip_prefix("data:") {
            // An event's data lines join with newlines (servers send one line per event).
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
            return Ok(true);
        }
        if !line.is_empty() {
            return Ok(true); // `: ping` comments, `event:` and `id:` fields
        }
        // A blank line ends an event.
        let event = std::mem::take(&mut self.data);
        if event.is_empty() {
            return Ok(true);
        }
        if event.trim() == "[DONE]" {
            self.done = true;
            return Ok(false);
        }
        let v: Value = serde_json::from_str(&event)
            .map_err(|e| self.bad(format!("a chunk is not JSON ({e}): {:?}", clip(&event))))?;
        if v.get("error").is_some() {
            return Err(self.bad(format!(
                "the stream broke off with an error: {}",
                server_message(&event)
            )));
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = u.clone();
        }
        for c in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let ids: Vec<u32> = c
                .get("token_ids")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()))
                        .collect()
                })
                .unwrap_or_default();
            let text = c.get("text").and_then(Value::as_str).unwrap_or("");
            on_chunk(index as usize, &ids, text);
            self.choices.entry(index).or_default().add(c);
        }
        Ok(true)
    }

    /// The body ended (or `[DONE]` came): `{"choices": [...], "usage": ...}`.
    fn finish(self) -> Result<Value, RemoteError> {
        let rest = self.data.trim();
        if !rest.is_empty() && rest != "[DONE]" {
            return Err(self.bad(format!(
                "the stream ended inside an event: {:?}",
                clip(&self.data)
            )));
        }
        let done = self.done || rest == "[DONE]";
        if self.choices.is_empty() {
            return Err(self.bad("the stream carried no choices".into()));
        }
        if !done && self.choices.values().any(|c| c.finish_reason.is_null()) {
            return Err(
                self.bad("the stream ended before its choices finished (no `data: [DONE]`)".into())
            );
        }
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(i, acc)| acc.into_choice(i))
            .collect();
        Ok(json!({ "choices": choices, "usage": self.usage }))
    }
}

/// Reads the SSE body of `resp` (from `url`) to its end; calls `on_chunk(choice index, token
/// ids, text)` for each chunk of a choice as it comes. Returns `{"choices": [...], "usage": ...}`.
/// Dropping the future drops the response, closing its connection.
pub(super) async fn read_response(
    mut resp: reqwest::Response,
    url: &str,
    on_chunk: &mut (dyn FnMut(usize, &[u32], &str) + '_),
) -> Result<Value, RemoteError> {
    let mut reader = SseReader::new(url);
    let mut pending: Vec<u8> = vec![];
    loop {
        let bytes = match resp.chunk().await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => return Err(reader.bad(format!("reading the stream: {e}"))),
        };
        pending.extend_from_slice(&bytes);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if !reader.line(utf8(&reader, &line[..end])?, on_chunk)? {
                return reader.finish();
            }
        }
    }
    if !pending.is_empty() {
        let last = utf8(&reader, &pending)?.to_string();
        reader.line(&last, on_chunk)?;
    }
    reader.finish()
}

fn utf8<'a>(reader: &SseReader<'_>, line: &'a [u8]) -> Result<&'a str, RemoteError> {
    std::str::from_utf8(line)
        .map_err(|e| reader.bad(format!("reading the stream: a line is not UTF-8 ({e})")))
}

/// [`read_response`] over a body already read (the unit tests' way in).
#[cfg(test)]
fn read_stream(
    body: impl std::io::BufRead,
    url: &str,
    on_chunk: &mut (dyn FnMut(usize, &[u32], &str) + '_),
) -> Result<Value, RemoteError> {
    let mut reader = SseReader::new(url);
    for line in body.lines() {
        let line = line.map_err(|e| reader.bad(format!("reading the stream: {e}")))?;
        if !reader.line(&line, on_chunk)? {
            break;
        }
    }
    reader.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Chunks = Vec<(usize, Vec<u32>, String)>;

    fn read(s: &str) -> (Result<Value, RemoteError>, Chunks) {
        let mut seen = vec![];
        let r = read_stream(s.as_bytes(), "http://x/v1/completions", &mut |i, ids, t| {
            seen.push((i, ids.to_vec(), t.to_string()))
        });
        (r, seen)
    }

    #[test]
    fn chunks_join_into_choices_with_pings_crlf_and_usage() {
        let s = ": ping\r\n\r\n\
            data: {\"choices\":[{\"index\":0,\"text\":\"1\",\"token_ids\":[5],\"logprobs\":{\"tokens\":[\"1\"],\"token_logprobs\":[-0.5],\"top_logprobs\":null,\"text_offset\":[0]},\"finish_reason\":null}]}\r\n\r\n\
            data: {\"choices\":[{\"index\":1,\"text\":\"a\",\"token_ids\":[9],\"finish_reason\":null}]}\n\n\
            : ping\n\n\
            data: {\"choices\":[{\"index\":0,\"text\":\"2\",\"token_ids\":[6,1],\"logprobs\":{\"tokens\":[\"2\",\"<eos>\"],\"token_logprobs\":[-0.25,-1.0],\"top_logprobs\":null,\"text_offset\":[1,2]},\"finish_reason\":\"stop\"}]}\n\n\
            data: {\"choices\":[{\"index\":1,\"text\":\"\",\"finish_reason\":\"length\",\"stop_reason\":null}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"completion_tokens\":4}}\n\n\
            data: [DONE]\n\n";
        let (r, seen) = read(s);
        let v = r.unwrap();
        assert_eq!(v["choices"][0]["text"], "12");
        assert_eq!(v["choices"][0]["token_ids"], json!([5, 6, 1]));
        assert_eq!(
            v["choices"][0]["logprobs"]["token_logprobs"],
            json!([-0.5, -0.25, -1.0])
        );
        assert_eq!(
            v["choices"][0]["logprobs"]["tokens"],
            json!(["1", "2", "<eos>"])
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][1]["text"], "a");
        assert_eq!(v["choices"][1]["finish_reason"], "length");
        assert!(v["choices"][1].get("stop_reason").is_none());
        assert_eq!(v["usage"]["completion_tokens"], 4);
        assert_eq!(seen[0], (0, vec![5], "1".to_string()));
        assert_eq!(seen[2], (0, vec![6, 1], "2".to_string()));
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn chat_style_logprobs_join_too() {
        let s = "data: {\"choices\":[{\"index\":0,\"text\":\"x\",\"logprobs\":{\"content\":[{\"token\":\"x\",\"logprob\":-1}]},\"finish_reason\":null}]}\n\n\
                 data: {\"choices\":[{\"index\":0,\"text\":\"y\",\"logprobs\":{\"content\":[{\"token\":\"y\",\"logprob\":-2}]},\"finish_reason\":\"length\"}]}\n\n";
        // No [DONE], but every choice finished: accepted.
        let v = read(s).0.unwrap();
        assert_eq!(v["choices"][0]["logprobs"]["content"][1]["logprob"], -2);
        assert_eq!(v["choices"][0]["text"], "xy");
    }

    #[test]
    fn errors_cut_streams_and_bad_chunks_are_typed() {
        let cut = "data: {\"choices\":[{\"index\":0,\"text\":\"x\",\"finish_reason\":null}]}\n\n";
        let e = read(cut).0.unwrap_err();
        assert!(e.to_string().contains("before its choices finished"), "{e}");
        let err = "data: {\"choices\":[{\"index\":0,\"text\":\"x\",\"finish_reason\":null}]}\n\n\
                   data: {\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\"}}\n\n";
        let e = read(err).0.unwrap_err();
        assert!(e.to_string().contains("out of memory"), "{e}");
        let e = read("data: {not json\n\n").0.unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        let e = read("data: [DONE]\n\n").0.unwrap_err();
        assert!(e.to_string().contains("no choices"), "{e}");
        assert!(read("").0.is_err());
    }
}
