//! Requests sharing decode batches in `temper serve`: concurrent plain requests at temperature 0
//! (and seeded sampling) get exactly the texts they get one at a time, and `/metrics` shows they
//! decoded together (`temper_batch_requests_max`), while one at a time never batches.

mod serve_common;

use std::sync::{Arc, Barrier};

use serde_json::{json, Value};
use serve_common::{request_to, Server};

fn bodies() -> Vec<Value> {
    let prompts = [
        "Compute: 3+4*2\n",
        "Compute: 12-5\n",
        "Compute: 7*8+1\n",
        "Compute: 9*9\n",
        "Compute: 100-1\n",
        "Compute: 2+2+2\n",
    ];
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // Long enough to overlap; different lengths so requests leave at different steps.
            let mut b = json!({"prompt": p, "max_tokens": 150 + 10 * i, "temperature": 0,
                               "ignore_eos": true});
            if i == 1 {
                // Seeded sampling, two samples: also batch-independent.
                b["temperature"] = json!(1.0);
                b["seed"] = json!(42);
                b["n"] = json!(2);
            }
            if i == 3 {
                b["stream"] = json!(true);
            }
            b
        })
        .collect()
}

/// The choices' texts of a response (JSON, or an SSE stream's deltas joined).
fn texts(status: u16, body: &str) -> Vec<String> {
    assert_eq!(status, 200, "{body}");
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_string())
            .collect();
    }
    let mut out = vec![String::new()];
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if out.len() <= i {
                out.resize(i + 1, String::new());
            }
            out[i].push_str(c["text"].as_str().unwrap_or(""));
        }
    }
    out
}

#[test]
fn concurrent_requests_decode_together_with_the_same_results() {
    let s = Server::start(&["--max-concurrency", "16"], &[]);
    let bodies = bodies();
    // One at a time.
    let one_by_one: Vec<Vec<String>> = bodies
        .iter()
        .map(|b| {
            let (st, text) = s.request("POST", "/v1/completions", Some(&b.to_string()), None);
            texts(st, &text)
        })
        .collect();
    assert_eq!(s.metric("temper_batch_requests_max"), 1.0);
    assert_eq!(one_by_one[1].len(), 2);

    // All at once, twice.
    for round in 0..2 {
        let barrier = Arc::new(Barrier::new(bodies.len()));
        let handles: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|b| {
                let (addr, barrier) = (s.addr.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let (st, text) =
                        request_to(&addr, "POST", "/v1/completions", Some(&b.to_string()), None);
                    texts(st, &text)
                })
            })
            .collect();
        let together: Vec<Vec<String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (i, (a, b)) in one_by_one.iter().zip(&together).enumerate() {
            assert_eq!(a, b, "round {round}, request {i}: alone vs batched");
        }
    }
    let most = s.metric("temper_batch_requests_max");
    assert!(
        most >= 3.0,
        "the requests never decoded together: at most {most}"
    );
    assert_eq!(s.metric("temper_requests_running"), 0.0);
    assert_eq!(s.metric("temper_requests_waiting"), 0.0);
    assert_eq!(
        s.metric("temper_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"),
        18.0
    );
}
