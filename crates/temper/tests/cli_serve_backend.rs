//! `temper serve --backend URL`: a `temper serve` fronting another `temper serve` (the "cluster")
//! on loopback, with the committed tiny model. The front's answers are the backend's own for
//! seeded strategy requests (by the `temper` body object and by a `STRATEGY@NAME` model), plain
//! requests (`n`, logprobs, token ids, streaming, `prompt_logprobs`) and chats; the front's usage
//! counts the tokens the backend generated (its `/metrics` agree); errors stay OpenAI-shaped, the
//! backend's failures included (a 502 once it is gone); answers streamed from the backend
//! (`--backend-stream`) are the same; runtime LoRA is refused with `--backend`; a client that
//! hangs up (before a whole answer, mid-stream, during a search) cancels its request on the
//! backend.

mod serve_common;

use std::time::Duration;

use serde_json::{json, Value};
use serve_common::{assert_error, chat_model_copy, model_dir, send_and_hold, wait_until, Server};

const PROMPT: &str = "Compute: 3+4*2\n";

/// A `temper serve` generating on `back`.
fn front_of(back: &Server, model: &std::path::Path, extra: &[&str]) -> Server {
    let url = format!("http://{}/v1", back.addr);
    let mut args = vec!["--backend", url.as_str()];
    args.extend_from_slice(extra);
    Server::start_model(model, &args, &[])
}

/// A streamed response's chunks (the `[DONE]` line checked and left out).
fn chunks(text: &str) -> Vec<Value> {
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

fn generated(s: &Server) -> f64 {
    s.metric("temper_generation_tokens_total")
}

#[test]
fn a_front_server_answers_as_its_backend_does() {
    let back = Server::start(&[], &[]);
    let front = front_of(&back, &model_dir(), &[]);
    let said = front
        .stderr_until("ready", Duration::from_secs(30))
        .join("\n");
    assert!(said.contains("backend: temper serve at"), "{said}");

    // The front lists its own name, with the context the backend reports.
    let (st, models) = front.get("/v1/models");
    assert_eq!(st, 200, "{models}");
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-arith-sft", "{models}");
    assert_eq!(models["data"][0]["max_model_len"], 256, "{models}");

    // A seeded strategy by the body's `temper` object: the backend's own answer and token count,
    // and every token the search drew was generated on the backend.
    let body = json!({"prompt": PROMPT, "max_tokens": 48, "seed": 11,
                      "temper": {"strategy": "sc@4", "budget_tokens": 4000}});
    let (st, there) = back.post("/v1/completions", &body);
    assert_eq!(st, 200, "{there}");
    let before = generated(&back);
    let (st, here) = front.post("/v1/completions", &body);
    assert_eq!(st, 200, "{here}");
    let (u, w) = (&here["usage"], &there["usage"]);
    assert_eq!(here["choices"][0]["text"], there["choices"][0]["text"]);
    assert_eq!(u["temper"]["answer"], w["temper"]["answer"], "{here}");
    assert_eq!(u["temper"]["samples"], 4, "{here}");
    assert_eq!(u["completion_tokens"], w["completion_tokens"], "{here}");
    assert_eq!(u["prompt_tokens"], PROMPT.len(), "{here}");
    let tokens = u["completion_tokens"].as_u64().unwrap();
    assert!(tokens >= 4, "four samples of at least a token: {here}");
    assert_eq!(
        generated(&back) - before,
        tokens as f64,
        "the backend generated what the front counted"
    );
    assert_eq!(generated(&front), tokens as f64, "the front counts it too");

    // By model name, and a step-level search with the rule scorer (stop strings on the wire).
    for (model, temper) in [
        ("sc@3@tiny-arith-sft", Value::Null),
        (
            "tiny-arith-sft",
            json!({"strategy": "beam:2x2", "scorer": "rule", "task": "arithmetic"}),
        ),
    ] {
        let mut body = json!({"model": model, "prompt": PROMPT, "max_tokens": 48, "seed": 5});
        if !temper.is_null() {
            body["temper"] = temper;
        }
        let (st, there) = back.post("/v1/completions", &body);
        assert_eq!(st, 200, "{there}");
        let (st, here) = front.post("/v1/completions", &body);
        assert_eq!(st, 200, "{here}");
        assert_eq!(here["model"], model);
        assert_eq!(here["choices"][0]["text"], there["choices"][0]["text"]);
        for k in ["answer", "samples", "model_calls", "strategy"] {
            assert_eq!(
                here["usage"]["temper"][k], there["usage"]["temper"][k],
                "{k}"
            );
        }
        assert_eq!(
            here["usage"]["completion_tokens"],
            there["usage"]["completion_tokens"]
        );
    }

    // A plain request: the same samples, token ids and logprobs.
    let body = json!({"prompt": PROMPT, "n": 2, "max_tokens": 12, "seed": 3, "temperature": 1.0,
                      "logprobs": 2, "return_token_ids": true});
    let (st, there) = back.post("/v1/completions", &body);
    assert_eq!(st, 200, "{there}");
    let (st, here) = front.post("/v1/completions", &body);
    assert_eq!(st, 200, "{here}");
    assert_eq!(here["usage"], there["usage"]);
    for i in 0..2 {
        let (h, t) = (&here["choices"][i], &there["choices"][i]);
        assert_eq!(h["text"], t["text"], "choice {i}");
        assert_eq!(h["token_ids"], t["token_ids"], "choice {i}");
        assert_eq!(h["prompt_token_ids"], t["prompt_token_ids"], "choice {i}");
        assert_eq!(h["finish_reason"], t["finish_reason"], "choice {i}");
        assert_eq!(
            h["logprobs"]["tokens"], t["logprobs"]["tokens"],
            "choice {i}"
        );
        let lp = |v: &Value| -> Vec<f64> {
            v["logprobs"]["token_logprobs"]
                .as_array()
                .unwrap_or_else(|| panic!("no logprobs: {v}"))
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let (a, b) = (lp(h), lp(t));
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5),
            "{a:?} {b:?}"
        );
        assert_eq!(
            h["logprobs"]["top_logprobs"][0]
                .as_object()
                .map(|o| o.len()),
            Some(2),
            "{h}"
        );
    }

    // Streamed: the same text and usage, with one usage chunk.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    for logprobs in [true, false] {
        if !logprobs {
            sbody.as_object_mut().unwrap().remove("logprobs");
        }
        let (st, text) = front.request("POST", "/v1/completions", Some(&sbody.to_string()), None);
        assert_eq!(st, 200, "{text}");
        let cs = chunks(&text);
        let usage: Vec<&Value> = cs.iter().filter(|c| !c["usage"].is_null()).collect();
        assert_eq!(usage.len(), 1, "{text}");
        assert_eq!(usage[0]["usage"], there["usage"]);
        for i in 0..2 {
            let mine = || cs.iter().filter(|c| c["choices"][0]["index"] == i);
            let streamed: String = mine()
                .map(|c| c["choices"][0]["text"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(streamed, there["choices"][i]["text"].as_str().unwrap());
            let ids: Vec<Value> = mine()
                .flat_map(|c| {
                    c["choices"][0]["token_ids"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            assert_eq!(
                Value::from(ids),
                there["choices"][i]["token_ids"],
                "choice {i}"
            );
            if logprobs {
                let lps: Vec<Value> = mine()
                    .flat_map(|c| {
                        c["choices"][0]["logprobs"]["tokens"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect();
                assert_eq!(Value::from(lps), there["choices"][i]["logprobs"]["tokens"]);
            }
        }
    }

    // Errors are OpenAI-shaped: checked here (400, 404), or the backend's refusal passed on.
    let (st, e) = front.post(
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 100000}),
    );
    assert_error(st, &e, 400, "max_tokens over the context");
    let (st, e) = front.post(
        "/v1/completions",
        &json!({"prompt": PROMPT, "temper": {"strategy": "nonesuch@3"}}),
    );
    assert_error(st, &e, 404, "an unknown strategy");
    let (st, e) = front.post(
        "/v1/completions",
        &json!({"model": "other", "prompt": PROMPT}),
    );
    assert_error(st, &e, 404, "an unknown model");
    let (st, e) = front.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_error(st, &e, 400, "a chat without a template");

    // The prompt's logprobs, asked of the backend: its own numbers in each choice, whole and in
    // each choice's first chunk of a stream; with `echo` and `logprobs`, the prompt's tokens first.
    let body = json!({"prompt": PROMPT, "n": 2, "max_tokens": 4, "seed": 2, "prompt_logprobs": 2});
    let (st, there) = back.post("/v1/completions", &body);
    assert_eq!(st, 200, "{there}");
    let want = &there["choices"][0]["prompt_logprobs"];
    assert_eq!(want.as_array().map(Vec::len), Some(PROMPT.len()), "{there}");
    let (st, here) = front.post("/v1/completions", &body);
    assert_eq!(st, 200, "{here}");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (st, text) = front.request("POST", "/v1/completions", Some(&sbody.to_string()), None);
    assert_eq!(st, 200, "{text}");
    let cs = chunks(&text);
    for i in 0..2 {
        assert_eq!(here["choices"][i]["prompt_logprobs"], *want, "choice {i}");
        assert_eq!(here["choices"][i]["text"], there["choices"][i]["text"]);
        let first = cs
            .iter()
            .find(|c| c["choices"][0]["index"] == i)
            .unwrap_or_else(|| panic!("no chunk of choice {i}: {text}"));
        assert_eq!(first["choices"][0]["prompt_logprobs"], *want, "choice {i}");
    }
    let body = json!({"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "echo": true,
                      "logprobs": 2});
    let (st, there) = back.post("/v1/completions", &body);
    assert_eq!(st, 200, "{there}");
    let (st, here) = front.post("/v1/completions", &body);
    assert_eq!(st, 200, "{here}");
    assert_eq!(here["choices"][0]["text"], there["choices"][0]["text"]);
    assert_eq!(
        here["choices"][0]["logprobs"],
        there["choices"][0]["logprobs"]
    );
    assert!(
        here["choices"][0]["logprobs"]["token_logprobs"][0].is_null(),
        "{here}"
    );
    // Streamed through the front too: the echo chunk's logprobs and the tokens' after it, put
    // together, are the backend's whole answer's.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (st, text) = front.request("POST", "/v1/completions", Some(&sbody.to_string()), None);
    assert_eq!(st, 200, "{text}");
    let cs = chunks(&text);
    let with_lps: Vec<&Value> = cs
        .iter()
        .map(|c| &c["choices"][0])
        .filter(|c| c["logprobs"].is_object())
        .collect();
    assert_eq!(with_lps[0]["text"], PROMPT, "{text}");
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        let got: Vec<Value> = with_lps
            .iter()
            .flat_map(|c| c["logprobs"][key].as_array().unwrap().clone())
            .collect();
        assert_eq!(
            Value::from(got),
            there["choices"][0]["logprobs"][key],
            "{key}"
        );
    }

    // The backend gone: a 502 naming it, for plain requests and searches, and the front serves on.
    drop(back);
    for body in [
        json!({"prompt": PROMPT, "max_tokens": 4}),
        json!({"model": "sc@2@tiny-arith-sft", "prompt": PROMPT, "max_tokens": 4}),
    ] {
        let (st, e) = front.post("/v1/completions", &body);
        assert_error(st, &e, 502, "the backend is gone");
        assert_eq!(e["error"]["code"], "backend_error", "{e}");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.contains("the backend server"), "{m}");
    }
    let (st, _) = front.get("/health");
    assert_eq!(st, 200);
    assert_eq!(front.metric("temper_requests_running"), 0.0);
}

#[test]
fn chats_go_through_the_local_template_and_runtime_lora_is_refused() {
    let dir = chat_model_copy(None);
    let back = Server::start_model(dir.path(), &["--served-model-name", "tiny"], &[]);
    // Streamed from the backend too (`--backend-stream`): the same answers.
    let front = front_of(
        &back,
        dir.path(),
        &["--served-model-name", "front", "--backend-stream"],
    );
    let msgs = json!([{"role": "user", "content": "Compute: 3+4*2"}]);
    let body = |model: &str| {
        json!({"model": model, "messages": msgs, "max_tokens": 10, "seed": 2,
               "logprobs": true, "top_logprobs": 1, "return_token_ids": true})
    };
    let (st, there) = back.post("/v1/chat/completions", &body("tiny"));
    assert_eq!(st, 200, "{there}");
    let (st, here) = front.post("/v1/chat/completions", &body("front"));
    assert_eq!(st, 200, "{here}");
    assert_eq!(here["object"], "chat.completion");
    assert_eq!(here["model"], "front");
    assert_eq!(here["prompt_token_ids"], there["prompt_token_ids"]);
    assert_eq!(here["usage"], there["usage"]);
    let (h, t) = (&here["choices"][0], &there["choices"][0]);
    assert_eq!(h["message"], t["message"]);
    assert_eq!(h["token_ids"], t["token_ids"]);
    let tokens = |v: &Value| -> Vec<Value> {
        v["logprobs"]["content"]
            .as_array()
            .unwrap_or_else(|| panic!("no logprobs: {v}"))
            .iter()
            .map(|c| c["token"].clone())
            .collect()
    };
    assert_eq!(tokens(h), tokens(t));

    // A chat's prompt logprobs (beside its choices) are the backend's too, whole and streamed.
    let mut pbody = body("tiny");
    pbody["prompt_logprobs"] = json!(1);
    let (st, there) = back.post("/v1/chat/completions", &pbody);
    assert_eq!(st, 200, "{there}");
    assert!(
        there["prompt_logprobs"]
            .as_array()
            .is_some_and(|a| a.len() > 2),
        "{there}"
    );
    pbody["model"] = json!("front");
    let (st, here) = front.post("/v1/chat/completions", &pbody);
    assert_eq!(st, 200, "{here}");
    assert_eq!(here["prompt_logprobs"], there["prompt_logprobs"]);
    pbody["stream"] = json!(true);
    let (st, text) = front.request(
        "POST",
        "/v1/chat/completions",
        Some(&pbody.to_string()),
        None,
    );
    assert_eq!(st, 200, "{text}");
    assert_eq!(
        chunks(&text)[0]["prompt_logprobs"],
        there["prompt_logprobs"]
    );

    // A streamed chat: deltas that add up to the backend's message, one usage chunk.
    let mut sbody = body("front");
    for k in ["logprobs", "top_logprobs"] {
        sbody.as_object_mut().unwrap().remove(k); // tokens pass on as they come
    }
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let (st, text) = front.request(
        "POST",
        "/v1/chat/completions",
        Some(&sbody.to_string()),
        None,
    );
    assert_eq!(st, 200, "{text}");
    let cs = chunks(&text);
    let content: String = cs
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, t["message"]["content"].as_str().unwrap());
    let usage: Vec<&Value> = cs.iter().filter(|c| !c["usage"].is_null()).collect();
    assert_eq!(usage.len(), 1, "{text}");
    assert_eq!(usage[0]["usage"], there["usage"]);

    // The front has no weights to put an adapter on.
    let url = format!("http://{}/v1", back.addr);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_temper"))
        .arg("serve")
        .arg(dir.path())
        .args(["--port", "0", "--backend", &url, "--allow-runtime-lora"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--allow-runtime-lora") && err.contains("backend"),
        "{err}"
    );
}

#[test]
fn a_client_hanging_up_cancels_its_request_on_the_backend() {
    let back = Server::start(&[], &[]);
    let front = front_of(&back, &model_dir(), &[]);
    let streaming_front = front_of(&back, &model_dir(), &["--backend-stream"]);
    // 64 samples of 240 tokens: seconds of decoding on the backend.
    let long = json!({"prompt": PROMPT, "n": 64, "max_tokens": 240, "ignore_eos": true,
                      "seed": 1});
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let mut search = long.clone();
    search.as_object_mut().unwrap().remove("n");
    search["model"] = json!("sc@64@tiny-arith-sft");
    let cases = [
        ("a whole answer awaited", &front, &long, false),
        ("a stream under way", &front, &streamed, true),
        ("a search (sc@64)", &front, &search, false),
        (
            "a stream from a streaming backend",
            &streaming_front,
            &streamed,
            true,
        ),
    ];
    for (what, f, body, read_first) in cases {
        let cancelled = back.metric("temper_requests_cancelled_total");
        let cancelled_here = f.metric("temper_requests_cancelled_total");
        let steps = back.metric("temper_decode_steps_total");
        let client = send_and_hold(&f.addr, "/v1/completions", body, read_first);
        // Hung up mid-decode: once the backend has run a few steps of the request.
        wait_until(Duration::from_secs(60), "the backend decoding", || {
            back.metric("temper_decode_steps_total") >= steps + 5.0
        });
        drop(client);
        // The front drops its request to the backend, which sees its client (the front) go and
        // stops decoding: the request counts as cancelled there, far short of its 240 steps.
        wait_until(Duration::from_secs(10), what, || {
            back.metric("temper_requests_cancelled_total") == cancelled + 1.0
        });
        wait_until(Duration::from_secs(5), what, || {
            back.metric("temper_requests_running") == 0.0
                && f.metric("temper_requests_running") == 0.0
        });
        let ran = back.metric("temper_decode_steps_total") - steps;
        assert!(
            ran < 200.0,
            "{what}: {ran} decode steps of 240 on the backend"
        );
        let here = f.metric("temper_requests_cancelled_total");
        assert_eq!(here, cancelled_here + 1.0, "{what}");
        assert_eq!(back.metric("temper_generation_tokens_total"), 0.0, "{what}");
        let (st, _) = f.get("/health");
        assert_eq!(st, 200, "{what}: the front serves on");
    }
}
