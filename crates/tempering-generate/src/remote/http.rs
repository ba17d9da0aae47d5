//! One HTTP exchange of the remote backend and its retries: a JSON request (GET or POST), the
//! answer read whole or, with a chunk handler, as a stream; connection errors, 429 and 503 retried
//! with backoff (a `Retry-After` header wins), anything else failing at once with the server's
//! message. Each exchange runs on the backend's own tokio runtime, the calling thread blocking on
//! it, and gives up the moment its [`Abort`] fires: the request's future is dropped, which closes
//! its connection, so the server sees the client leave and stops generating. Knows nothing of
//! sampling or the wire format of completions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use super::text::{clip, error_chain, server_message};
use super::{stream, Attempt, ChunkFn, OnChunk, RemoteBackend, CANCEL_POLL};
use crate::error::RemoteError;

/// Fired once a call gives up (its caller cancelled it, or one of its requests failed): every
/// exchange waiting on it is dropped.
#[derive(Default)]
pub(super) struct Abort {
    set: AtomicBool,
    notify: Notify,
}

impl Abort {
    pub(super) fn fire(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(super) fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Resolves once fired (at once if it was).
    async fn fired(&self) {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the flag is read: a `fire` in between still wakes it.
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// The backend's tokio runtime (one worker thread: the I/O of a few connections), shut down
/// without waiting when the backend goes, so that dropping a backend is fine anywhere.
pub(super) struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    pub(super) fn new() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("temper-remote-http")
            .enable_all()
            .build()?;
        Ok(Runtime(Some(rt)))
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.0 {
            Some(rt) => rt.block_on(f),
            // Only `drop` takes it.
            None => unreachable!("the remote backend's runtime is gone"),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl RemoteBackend {
    /// One JSON exchange (GET without a body, POST with one), retried while safe.
    pub(super) fn send(&self, body: Option<&Value>, url: &str) -> Result<Value, RemoteError> {
        self.send_streaming(body, url, None, None)
    }

    /// [`Self::send`], reading a streamed answer (SSE) when `on_chunk` is given, and giving up
    /// with [`RemoteError::Cancelled`] once `abort` fires (the exchange dropped, its connection
    /// closed). A stream that fails once under way is not retried (its chunks were reported).
    pub(super) fn send_streaming(
        &self,
        body: Option<&Value>,
        url: &str,
        on_chunk: OnChunk<'_>,
        abort: Option<&Abort>,
    ) -> Result<Value, RemoteError> {
        self.rt.block_on(async {
            let exchange = self.exchange(body, url, on_chunk);
            match abort {
                None => exchange.await,
                Some(a) => tokio::select! {
                    r = exchange => r,
                    () = a.fired() => Err(RemoteError::Cancelled),
                },
            }
        })
    }

    /// [`Self::send`] of a POST, giving up with [`RemoteError::Cancelled`] once `cancelled()`
    /// says so (asked every few milliseconds on this thread): the exchange is dropped, its
    /// connection closed.
    pub(super) fn send_until(
        &self,
        body: &Value,
        url: &str,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Value, RemoteError> {
        self.rt.block_on(async {
            let watch = async {
                while !cancelled() {
                    tokio::time::sleep(CANCEL_POLL).await;
                }
            };
            tokio::select! {
                r = self.exchange(Some(body), url, None) => r,
                () = watch => Err(RemoteError::Cancelled),
            }
        })
    }

    async fn exchange(
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
            match self
                .attempt(body, url, tries, on_chunk.as_deref_mut())
                .await
            {
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
                    let wait = after.unwrap_or(backoff).min(Duration::from_secs(60));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn attempt(
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
        let resp = match req.send().await {
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
            return match stream::read_response(resp, url, cb).await {
                Ok(v) => Attempt::Ok(v),
                Err(e) => Attempt::Fail(e),
            };
        }
        let text: String = match resp.text().await {
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
