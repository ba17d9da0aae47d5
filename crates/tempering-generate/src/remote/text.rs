//! What the remote backend reads from what people and servers wrote: the server's root URL from
//! what a user typed, a server's error message from each error body shape, and an HTTP client
//! error with its causes, clipped for messages. Pure functions; knows nothing of requests, the
//! queue or the wire format.

use serde_json::Value;

use crate::error::RemoteError;

/// `http://host:port` from what a user typed (`/v1` and trailing slashes dropped).
pub(super) fn root_url(url: &str) -> Result<String, RemoteError> {
    let bad = |why: &str| RemoteError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let u = url.trim();
    if u.starts_with("https://") {
        return Err(bad(
            "https is not built in (loopback and private networks are the use case): put the \
             server behind plain http, or a local TLS-terminating proxy",
        ));
    }
    let Some(rest) = u.strip_prefix("http://") else {
        return Err(bad("expected it to start with http://"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    let mut root = u.trim_end_matches('/').to_string();
    if let Some(r) = root.strip_suffix("/v1") {
        root = r.to_string();
    }
    Ok(root)
}

/// The server's error message: OpenAI's `error.message`, llama.cpp's and others' `message` /
/// `detail`, else the body itself (clipped).
pub(super) fn server_message(body: &str) -> String {
    let v: Option<Value> = serde_json::from_str(body).ok();
    v.as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or(v.get("message"))
                .or(v.get("detail"))
                .or(v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| clip(body.trim()))
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

pub(super) fn clip(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_v1_and_slashes_and_https_is_refused() {
        assert_eq!(
            root_url("http://127.0.0.1:8000/v1/").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(root_url("http://h:1").unwrap(), "http://h:1");
        assert!(root_url("https://h:1").is_err());
        assert!(root_url("127.0.0.1:8000").is_err());
    }

    #[test]
    fn server_messages_are_read_from_each_error_shape() {
        assert_eq!(
            server_message(r#"{"error":{"message":"bad n","type":"x"}}"#),
            "bad n"
        );
        assert_eq!(server_message(r#"{"message":"nope"}"#), "nope");
        assert_eq!(server_message("plain text"), "plain text");
    }
}
