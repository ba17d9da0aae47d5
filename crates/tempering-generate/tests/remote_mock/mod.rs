//! The mock OpenAI-compatible server the remote-backend tests talk to (a std `TcpListener`, one
//! thread per connection, scripted answers, SSE bodies for streamed ones) and their shared
//! helpers: the tiny model's tokenizer, vLLM-shaped choices and chunks.

// Each test binary uses only some of these.
#![allow(dead_code, unused_imports)]

pub use std::io::{BufRead, BufReader, Read, Write};
pub use std::net::{TcpListener, TcpStream};
pub use std::path::PathBuf;
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::sync::{Arc, Mutex};
pub use std::time::Duration;

pub use serde_json::{json, Value};
pub use tempering_generate::{
    Backend, FinishReason, GenError, GenEvent, GenRequest, RemoteBackend, RemoteError,
    RemoteOptions, SamplingParams, ServerKind,
};
pub use tempering_model::Tokenizer;

pub fn tokenizer() -> Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/tiny-arith-sft/tokenizer.json");
    Tokenizer::from_file(&p).expect("the tiny model's tokenizer")
}

pub fn ids(text: &str) -> Vec<u32> {
    tokenizer().encode(text, false).unwrap()
}

/// One request the mock saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub body: Value,
    pub auth: Option<String>,
}

pub type Handler = dyn Fn(&str, &Value, usize) -> (u16, Value) + Send + Sync;

/// A scripted HTTP/1.1 server on loopback. `handler(path, body, nth)` answers the `nth` (from 0)
/// request to `path`.
pub struct Mock {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub max_in_flight: Arc<AtomicUsize>,
}

impl Mock {
    pub fn start(
        handler: impl Fn(&str, &Value, usize) -> (u16, Value) + Send + Sync + 'static,
    ) -> Mock {
        Mock::start_delayed(Duration::ZERO, handler)
    }

    /// Each `/v1/completions` answer waits `delay` (to overlap concurrent requests).
    pub fn start_delayed(
        delay: Duration,
        handler: impl Fn(&str, &Value, usize) -> (u16, Value) + Send + Sync + 'static,
    ) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Mutex::new(std::collections::HashMap::<String, usize>::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (seen, max_in_flight) = (seen.clone(), max_in_flight.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (seen, counts, handler) = (seen.clone(), counts.clone(), handler.clone());
                    let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
                    std::thread::spawn(move || {
                        let Some((path, body, auth)) = read_request(&stream) else {
                            return;
                        };
                        let nth = {
                            let mut c = counts.lock().unwrap();
                            let e = c.entry(path.clone()).or_insert(0);
                            *e += 1;
                            *e - 1
                        };
                        seen.lock().unwrap().push(Seen {
                            path: path.clone(),
                            body: body.clone(),
                            auth,
                        });
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max_in_flight.fetch_max(now, Ordering::SeqCst);
                        if path == "/v1/completions" {
                            std::thread::sleep(delay);
                        }
                        let (status, v) = handler(&path, &body, nth);
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        write_response(stream, status, &v);
                    });
                }
            });
        }
        Mock {
            addr,
            seen,
            max_in_flight,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn completions(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == "/v1/completions")
            .map(|s| s.body.clone())
            .collect()
    }
}

pub fn read_request(stream: &TcpStream) -> Option<(String, Value, Option<String>)> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let (mut len, mut auth) = (0usize, None);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().ok()?,
            "authorization" => auth = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    let v = if len == 0 {
        Value::Null
    } else {
        serde_json::from_slice(&body).ok()?
    };
    Some((path, v, auth))
}

pub fn write_response(mut stream: TcpStream, status: u16, v: &Value) {
    if let Some(events) = v.get("__sse").and_then(Value::as_str) {
        // A streamed answer: no length, the connection's end ends it.
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(events.as_bytes());
        return;
    }
    let body = v.to_string();
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

pub fn models(owned_by: &str) -> Value {
    json!({"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": owned_by, "max_model_len": 256}]})
}

pub fn not_found() -> (u16, Value) {
    (404, json!({"error": {"message": "not found"}}))
}

/// The tokenizer check every server passes: `/tokenize` as the local tokenizer encodes.
pub fn tokenize(body: &Value) -> (u16, Value) {
    let text = body
        .get("prompt")
        .or(body.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("");
    (200, json!({"tokens": ids(text)}))
}

pub fn opts(mock: &Mock) -> RemoteOptions {
    RemoteOptions {
        backoff: Duration::from_millis(5),
        ..RemoteOptions::new(mock.url())
    }
}

pub fn connect(mock: &Mock) -> RemoteBackend {
    RemoteBackend::connect(opts(mock), tokenizer(), vec![1]).expect("connecting to the mock")
}

/// A vLLM choice: ids with `return_token_ids`, `stop_reason`, legacy logprobs with
/// `token_id:N` tokens.
pub fn vllm_choice(index: usize, text: &str, extra: &[u32], stop_reason: Value) -> Value {
    let mut t = ids(text);
    t.extend_from_slice(extra);
    let finish = if stop_reason.is_null() && extra.is_empty() {
        "length"
    } else {
        "stop"
    };
    json!({
        "index": index, "text": text, "finish_reason": finish, "stop_reason": stop_reason,
        "token_ids": t,
        "logprobs": {
            "tokens": t.iter().map(|i| format!("token_id:{i}")).collect::<Vec<_>>(),
            "token_logprobs": t.iter().map(|_| -0.5).collect::<Vec<_>>(),
            "top_logprobs": t.iter().map(|i| json!({format!("token_id:{i}"): -0.5, "token_id:2": -3.0})).collect::<Vec<_>>(),
        }
    })
}
