//! `temper serve` under load and bad input, on loopback with the tiny model: 64 concurrent clients
//! send a mix of malformed JSON, non-object bodies, negative and huge `max_tokens`, `n` of 10,000,
//! unknown fields, over-long prompts, oversized bodies, valid requests (plain and streaming), and
//! disconnect mid-stream or before the answer. Every answer must be 200 or a 4xx (429 included)
//! with the OpenAI error JSON; the server must not panic, must keep serving, and its in-flight,
//! running and waiting counts must return to zero. Bounded: a few seconds on two cores.

mod serve_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_common::{parse_response, request_to, Server};

const CLIENTS: usize = 64;
const ROUNDS: usize = 4;
const PROMPT: &str = "Compute: 3+4*2\n";

/// What client `c` sends in round `r`: a raw body, and how it behaves.
enum Act {
    /// Send the body, read the whole answer.
    Full(String),
    /// A streaming request; read until the first chunk, then hang up.
    HangUpMidStream,
    /// Send a request and hang up without reading.
    HangUpAtOnce,
}

fn act(c: usize, r: usize) -> Act {
    let p = PROMPT;
    let body = |v: Value| Act::Full(v.to_string());
    match (c + 7 * r) % 16 {
        0 => Act::Full("{\"prompt\": \"Compute: 1+1\\n\", ".into()),
        1 => Act::Full("[1, 2, 3]".into()),
        2 => Act::Full("\"a string\"".into()),
        3 => body(json!({"prompt": p, "max_tokens": -5})),
        4 => body(json!({"prompt": p, "max_tokens": 1u64 << 40})),
        5 => body(json!({"prompt": p, "n": 10000})),
        6 => body(
            json!({"prompt": p, "max_tokens": 8, "frobnicate": {"x": [1, 2]}, "temperature": 0}),
        ),
        7 => body(json!({"prompt": "1+".repeat(200), "max_tokens": 4})),
        8 => Act::Full(format!("{{\"prompt\": \"{}\"}}", "9".repeat(1_100_000))),
        9 => Act::HangUpMidStream,
        10 => Act::HangUpAtOnce,
        11 => body(json!({"prompt": p, "max_tokens": 12, "stream": true,
                          "stream_options": {"include_usage": true}})),
        12 => body(json!({"prompt": [1, 2, 99999], "max_tokens": 4})),
        13 => body(json!({"prompt": p, "max_tokens": 16, "n": 3, "seed": c})),
        14 => body(json!({"prompt": p, "temperature": "hot"})),
        _ => body(json!({"prompt": p, "max_tokens": 20, "ignore_eos": true, "seed": r})),
    }
}

fn send(addr: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // A server may answer (413) and close before an oversized body is all sent.
    let _ = s.write_all(req.as_bytes());
    s
}

/// Checks one answer; returns its status.
fn check(status: u16, body: &str, what: &str) -> u16 {
    assert!(
        status == 200 || (400..500).contains(&status),
        "{what}: status {status}: {body}"
    );
    if status == 200 {
        if body.starts_with("data: ") || body.contains("\ndata: ") {
            assert!(
                body.contains("data: [DONE]"),
                "{what}: a stream without [DONE]"
            );
        } else {
            let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(v["choices"].is_array(), "{what}: {v}");
        }
    } else {
        let v: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: {status} not JSON ({e}): {body}"));
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
        assert!(e["type"].is_string(), "{what}: {v}");
    }
    status
}

#[test]
fn sixty_four_clients_with_bad_input_and_hang_ups() {
    let s = Server::start(&["--max-concurrency", "12"], &[]);
    let started = Instant::now();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addr, barrier) = (s.addr.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut statuses = vec![];
                for r in 0..ROUNDS {
                    let what = format!("client {c} round {r}");
                    match act(c, r) {
                        Act::Full(body) => {
                            let mut st = send(&addr, &body);
                            let mut raw = Vec::new();
                            let _ = st.read_to_end(&mut raw);
                            if raw.is_empty() {
                                panic!("{what}: no answer at all");
                            }
                            let (status, text) = parse_response(&raw);
                            statuses.push(check(status, &text, &what));
                        }
                        Act::HangUpMidStream => {
                            let b = json!({"prompt": PROMPT, "max_tokens": 200, "ignore_eos": true,
                                           "stream": true});
                            let mut st = send(&addr, &b.to_string());
                            let mut buf = [0u8; 256];
                            let _ = st.read(&mut buf);
                            drop(st);
                        }
                        Act::HangUpAtOnce => {
                            let b =
                                json!({"prompt": PROMPT, "max_tokens": 200, "ignore_eos": true});
                            drop(send(&addr, &b.to_string()));
                        }
                    }
                }
                statuses
            })
        })
        .collect();
    let mut statuses = vec![];
    for h in handles {
        statuses.extend(h.join().expect("a client thread failed"));
    }
    let count = |want: u16| statuses.iter().filter(|&&s| s == want).count();
    eprintln!(
        "{} answers: {} 200, {} 400, {} 413, {} 429",
        statuses.len(),
        count(200),
        count(400),
        count(413),
        count(429)
    );
    assert!(count(200) > 0, "nothing succeeded: {statuses:?}");
    assert!(count(400) > 0, "no 400s: {statuses:?}");
    assert!(
        count(413) > 0,
        "no 413 for the oversized bodies: {statuses:?}"
    );

    // Everything drains: the hung-up requests are cancelled, their slots freed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, body) = s.get("/health");
        assert_eq!(st, 200, "the server stopped serving: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let idle = v["in_flight"] == 0
            && s.metric("temper_requests_running") == 0.0
            && s.metric("temper_requests_waiting") == 0.0;
        if idle {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still busy 30 s after the clients finished: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A client hanging up mid-stream is cancelled at once: its request stops decoding.
    let cancelled = s.metric("temper_requests_cancelled_total");
    let generated = s.metric("temper_generation_tokens_total");
    let b = json!({"prompt": PROMPT, "max_tokens": 230, "ignore_eos": true, "stream": true});
    let mut st = send(&s.addr, &b.to_string());
    let mut buf = [0u8; 512];
    let mut got = String::new();
    while !got.contains("data: ") {
        let n = st.read(&mut buf).expect("reading the stream");
        assert!(n > 0, "the stream ended before its first chunk");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(st);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("temper_requests_cancelled_total") < cancelled + 1.0 {
        assert!(
            Instant::now() < deadline,
            "the hung-up stream was not cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        s.metric("temper_generation_tokens_total"),
        generated,
        "a cancelled request counted as finished"
    );

    // Still answering properly.
    let (st, body) = request_to(
        &s.addr,
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": PROMPT, "max_tokens": 4, "temperature": 0}).to_string()),
        None,
    );
    check(st, &body, "after the storm");
    assert_eq!(st, 200);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    // No panic was reported.
    let said = s.stderr_until("\u{0}never", Duration::from_millis(200));
    assert!(!said.iter().any(|l| l.contains("panicked")), "{said:?}");
}
