//! One HTTP exchange of the remote backend and its retries: a JSON request (GET or POST), the
//! answer read whole or, with a chunk handler, as a stream; connection errors, 429 and 503 retried
//! with backoff (a `Retry-After` header wins), anything else failing at once with the server's
//! message. Knows nothing of sampling or the wire format of completions.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::text::{clip, error_chain, server_message};
use super::{stream, Attempt, ChunkFn, OnChunk, RemoteBackend};
use crate::error::RemoteError;

impl RemoteBackend {
    /// One JSON exchange (GET without a body, POST with one), retried while safe.
    pub(super) fn send(&self, body: Option<&Value>, url: &str) -> Result<Value, RemoteError> {
        self.send_streaming(body, url, None)
    }

    /// [`Self::send`], reading a streamed answer (SSE) when `on_chunk` is given. A stream that
    /// fails once under way is not retried (its chunks were reported).
    pub(super) fn send_streaming(
        &self,
        body: Option<&Value>,
        url: &str,
        mut on_chunk: OnChunk<'_>,
    ) -> Result<Value, RemoteError> {
        let mut tries = 0u32;
        loop {
            tries += 1;
            if url.ends_with("/v1/completions") {
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
            }
            match self.attempt(body, url, tries, on_chunk.as_deref_mut()) {
                Attempt::Ok(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(e, after) => {
                    if tries > self.opts.max_retries {
                        return Err(e);
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    let backoff = self
                        .opts
                        .backoff
                        .saturating_mul(1u32 << (tries - 1).min(16))
                        .min(Duration::from_secs(30));
                    std::thread::sleep(after.unwrap_or(backoff).min(Duration::from_secs(60)));
                }
            }
        }
    }

    fn attempt(
        &self,
        body: Option<&Value>,
        url: &str,
        tries: u32,
        on_chunk: Option<&mut ChunkFn<'_>>,
    ) -> Attempt {
        let mut req = match body {
            Some(b) => self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string()),
            None => self.client.get(url),
        };
        if let Some(k) = &self.opts.api_key {
            req = req.bearer_auth(k);
        }
        let resp = match req.send() {
            Ok(r) => r,
            // Refused or unreachable: the request never reached the server.
            Err(e) if e.is_connect() => {
                return Attempt::Retry(
                    RemoteError::Connect {
                        url: url.to_string(),
                        detail: error_chain(&e),
                        tries,
                    },
                    None,
                )
            }
            Err(e) => {
                return Attempt::Fail(RemoteError::Io {
                    url: url.to_string(),
                    detail: error_chain(&e),
                })
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        if let (Some(cb), true) = (on_chunk, (200..300).contains(&status)) {
            return match stream::read_stream(std::io::BufReader::new(resp), url, cb) {
                Ok(v) => Attempt::Ok(v),
                Err(e) => Attempt::Fail(e),
            };
        }
        let text: String = match resp.text() {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Fail(RemoteError::Io {
                    url: url.to_string(),
                    detail: format!("reading the response: {}", error_chain(&e)),
                })
            }
        };
        if !(200..300).contains(&status) {
            let e = RemoteError::Status {
                url: url.to_string(),
                status,
                message: server_message(&text),
                tries,
            };
            return match status {
                429 | 503 => Attempt::Retry(e, retry_after),
                _ => Attempt::Fail(e),
            };
        }
        match serde_json::from_str(&text) {
            Ok(v) => Attempt::Ok(v),
            // vLLM and temper serve answer their LoRA endpoints in plain text.
            Err(_) if url.ends_with("_lora_adapter") => Attempt::Ok(Value::String(text)),
            Err(e) => Attempt::Fail(RemoteError::BadResponse {
                what: format!("{url}: the body is not JSON ({e}): {:?}", clip(&text)),
            }),
        }
    }
}
