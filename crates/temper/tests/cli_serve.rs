//! `temper serve` end to end: the binary on loopback (port 0) with the committed tiny arithmetic
//! model, talked to by a raw HTTP/1.1 client over std's TcpStream. Every wait is bounded and fails
//! with a message saying what did not come.

mod serve_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_common::{
    assert_error, model_dir, parse_response, send_and_hold, wait_until, Server, WAIT,
};

const PROMPT: &str = "Compute: 3+4*2\n";

#[test]
fn completions_streaming_and_errors() {
    let s = Server::start(&[], &[]);
    let name = "tiny-arith-sft";

    let (st, models) = s.get("/v1/models");
    assert_eq!(st, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], name);

    // n = 2 with usage.
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"model": name, "prompt": PROMPT, "n": 2, "max_tokens": 12, "temperature": 1.0, "seed": 5}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"].as_u64().unwrap(), PROMPT.len() as u64);
    let c = u["completion_tokens"].as_u64().unwrap();
    assert!((2..=24).contains(&c), "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), PROMPT.len() as u64 + c);

    // A seed reproduces; token ids work as a prompt.
    let req = json!({"prompt": PROMPT, "n": 2, "max_tokens": 12, "temperature": 1.0, "seed": 5});
    let (_, again) = s.post("/v1/completions", &req);
    assert_eq!(again["choices"], v["choices"]);
    let greedy = json!({"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 2});
    let (st, g) = s.post("/v1/completions", &greedy);
    assert_eq!(st, 200, "{g}");
    let lp = &g["choices"][0]["logprobs"];
    assert_eq!(
        lp["tokens"].as_array().unwrap().len(),
        lp["token_logprobs"].as_array().unwrap().len()
    );
    // Token ids as the prompt: the same greedy answer as the text (one character per token).
    let ids = [23, 27, 25, 28, 32, 31, 24, 20, 4, 13, 8, 14, 7, 12, 3];
    let (st, by_ids) = s.post(
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(st, 200, "{by_ids}");
    assert_eq!(by_ids["choices"][0]["text"], g["choices"][0]["text"]);

    // Streaming: chunks, exactly one usage chunk, then [DONE].
    let body = json!({"prompt": PROMPT, "n": 2, "max_tokens": 12, "seed": 5, "temperature": 1.0,
                      "stream": true, "stream_options": {"include_usage": true}});
    let (st, text) = s.request("POST", "/v1/completions", Some(&body.to_string()), None);
    assert_eq!(st, 200, "{text}");
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let usage: Vec<&Value> = chunks.iter().filter(|c| !c["usage"].is_null()).collect();
    assert_eq!(usage.len(), 1, "one usage chunk: {text}");
    assert_eq!(
        usage[0]["usage"]["completion_tokens"],
        v["usage"]["completion_tokens"]
    );
    for i in 0..2 {
        let streamed: String = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .map(|c| c["choices"][0]["text"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            streamed,
            v["choices"][i]["text"].as_str().unwrap(),
            "choice {i}"
        );
        assert!(
            chunks
                .iter()
                .any(|c| c["choices"][0]["index"] == i
                    && c["choices"][0]["finish_reason"].is_string()),
            "choice {i} has a finish chunk"
        );
    }

    // Chat: this model has no chat template, and says so.
    let (st, e) = s.post(
        "/v1/chat/completions",
        &json!({"model": name, "messages": [{"role": "user", "content": "Compute: 1+1"}]}),
    );
    assert_error(st, &e, 400, "chat without a template");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chat template"),
        "{e}"
    );

    // Bad input: 4xx JSON errors, each naming what was wrong.
    let bad = [
        (
            json!({"prompt": PROMPT, "max_tokens": -1}),
            400,
            "negative max_tokens",
        ),
        (
            json!({"prompt": PROMPT, "max_tokens": 1_000_000_000u64}),
            400,
            "huge max_tokens",
        ),
        (
            json!({"prompt": PROMPT, "max_tokens": 0}),
            400,
            "zero max_tokens",
        ),
        (json!({"prompt": PROMPT, "n": 10_000}), 400, "huge n"),
        (
            json!({"prompt": PROMPT, "temperature": -1}),
            400,
            "negative temperature",
        ),
        (json!({"prompt": PROMPT, "top_p": 0}), 400, "top_p 0"),
        (
            json!({"prompt": PROMPT.repeat(40)}),
            400,
            "over-long prompt",
        ),
        (
            json!({"prompt": PROMPT, "max_tokens": 250}),
            400,
            "prompt + max_tokens past the context",
        ),
        (json!({"prompt": 42}), 400, "prompt of a wrong type"),
        (
            json!({"prompt": [1, 2, 99999]}),
            400,
            "token id past the vocabulary",
        ),
        (json!({}), 400, "no prompt"),
        (json!({"prompt": PROMPT, "stop": ""}), 400, "empty stop"),
        (
            json!({"prompt": PROMPT, "model": "gpt-4"}),
            404,
            "unknown model",
        ),
        (
            json!({"prompt": PROMPT, "temper": {"strategy": "nosuch@3"}}),
            404,
            "unknown strategy",
        ),
        (
            json!({"prompt": PROMPT, "model": format!("nosuch@{name}")}),
            404,
            "unknown strategy by name",
        ),
        (
            json!({"prompt": PROMPT, "temper": {"strategy": "sc@2"}, "n": 2}),
            400,
            "n with a strategy",
        ),
        (
            json!({"prompt": PROMPT, "temper": {"strategy": "sc@2", "scorer": "oracle"}}),
            400,
            "unknown scorer",
        ),
    ];
    for (body, want, what) in bad {
        let (st, v) = s.post("/v1/completions", &body);
        assert_error(st, &v, want, what);
    }
    for (raw, what) in [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "a non-object body"),
        ("", "an empty body"),
    ] {
        let (st, v) = s.post_raw("/v1/completions", raw);
        assert_error(st, &v, 400, what);
    }
    let big = format!("{{\"prompt\": \"{}\"}}", "1".repeat(2 << 20));
    let (st, v) = s.post_raw("/v1/completions", &big);
    assert_error(st, &v, 413, "an oversized body");
    let (st, text) = s.get("/v1/nothing");
    assert_error(
        st,
        &serde_json::from_str(&text).unwrap(),
        404,
        "an unknown route",
    );

    // Still healthy after all that.
    assert_eq!(s.get("/health").0, 200);
}

#[test]
fn strategies_by_body_and_by_model_name() {
    let s = Server::start(&["--served-model-name", "tiny"], &[]);
    for (body, strategy) in [
        (
            json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 48, "seed": 1,
                   "temper": {"strategy": "sc@4", "budget_tokens": 4000}}),
            "sc@4",
        ),
        (
            json!({"model": "tiny", "prompt": PROMPT, "max_tokens": 48, "seed": 1,
                   "temper": {"strategy": "bon@4:min", "scorer": "rule"}}),
            "bon@4:min",
        ),
        (
            json!({"model": "sc@4@tiny", "prompt": PROMPT, "max_tokens": 48, "seed": 1}),
            "sc@4",
        ),
    ] {
        let (st, v) = s.post("/v1/completions", &body);
        assert_eq!(st, 200, "{strategy}: {v}");
        let t = &v["usage"]["temper"];
        assert!(
            t["strategy"]
                .as_str()
                .unwrap()
                .starts_with(strategy.split(':').next().unwrap()),
            "{t}"
        );
        assert!(t["model_calls"].as_u64().unwrap() >= 1, "{t}");
        assert!(t["samples"].as_u64().unwrap() >= 4, "{t}");
        assert!(t["wall_s"].as_f64().unwrap() > 0.0, "{t}");
        let gen = t["generated_tokens"].as_u64().unwrap();
        assert_eq!(v["usage"]["completion_tokens"].as_u64().unwrap(), gen);
        assert!(gen >= 4, "four samples generate at least four tokens: {t}");
        assert!(!v["choices"][0]["text"].as_str().unwrap().is_empty(), "{v}");
        if strategy.starts_with("bon") {
            assert!(t["scorer_calls"].as_u64().unwrap() >= 1, "{t}");
        }
        assert_eq!(v["model"], body["model"]);
    }
    // The committed SFT model answers this one.
    let (_, v) = s.post(
        "/v1/completions",
        &json!({"model": "sc@4@tiny", "prompt": PROMPT, "max_tokens": 48, "seed": 1}),
    );
    assert!(v["usage"]["temper"]["answer"].is_string(), "{v}");

    // A search streams its answer, one usage chunk and [DONE].
    let body = json!({"model": "sc@2@tiny", "prompt": PROMPT, "max_tokens": 48, "stream": true,
                      "stream_options": {"include_usage": true}});
    let (st, text) = s.request("POST", "/v1/completions", Some(&body.to_string()), None);
    assert_eq!(st, 200, "{text}");
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let usage: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter(|c| !c["usage"].is_null())
        .collect();
    assert_eq!(usage.len(), 1, "{text}");
    assert!(usage[0]["usage"]["temper"]["model_calls"].as_u64().unwrap() >= 1);

    // optillm's field, for drop-in use: our strategies by name, `none` plain; the body's and the
    // model name's strategy win over it.
    let optillm = |approach: &str, extra: Value| {
        let mut b = json!({"prompt": PROMPT, "max_tokens": 24, "optillm_approach": approach});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        s.post("/v1/completions", &b)
    };
    let (st, v) = optillm("sc@3", json!({}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["temper"]["samples"], 3, "{v}");
    let (st, v) = optillm("none", json!({}));
    assert_eq!(st, 200, "{v}");
    assert!(v["usage"].get("temper").is_none(), "{v}");
    let (_, v) = optillm("sc@3", json!({"model": "sc@2@tiny"}));
    assert_eq!(v["usage"]["temper"]["samples"], 2, "{v}");
    let (st, v) = optillm("moa", json!({}));
    assert_error(st, &v, 404, "an optillm approach temper does not have");
    assert_eq!(v["error"]["param"], "optillm_approach", "{v}");
}

#[test]
fn a_search_stops_when_its_client_hangs_up() {
    let s = Server::start(&["--served-model-name", "tiny"], &[]);
    // 64 samples of 240 tokens (15,360 tokens): seconds of decoding on the model thread.
    let search = json!({"model": "sc@64@tiny", "prompt": PROMPT, "max_tokens": 240,
                        "ignore_eos": true, "seed": 1});
    let mut by_body = search.clone();
    by_body["model"] = json!("tiny");
    by_body["temper"] = json!({"strategy": "sc@64"});
    by_body["stream"] = json!(true);
    let whole = 64.0 * 240.0;
    for (what, body, read_first) in [
        ("a search awaited whole (sc@64@NAME)", &search, false),
        ("a search streamed (temper.strategy)", &by_body, true),
    ] {
        let cancelled = s.metric("temper_requests_cancelled_total");
        let tokens = s.metric("temper_search_generated_tokens_total");
        let client = send_and_hold(&s.addr, "/v1/completions", body, read_first);
        // Hung up mid-search: once its samples have decoded a few steps.
        wait_until(Duration::from_secs(60), "the search decoding", || {
            s.metric("temper_search_generated_tokens_total") >= tokens + 5.0 * 64.0
        });
        drop(client);
        // The search stops at once: cancelled, its slot and the model thread free, far short of
        // its 15,360 tokens.
        wait_until(Duration::from_secs(10), what, || {
            s.metric("temper_requests_cancelled_total") == cancelled + 1.0
        });
        wait_until(Duration::from_secs(5), what, || {
            s.metric("temper_requests_running") == 0.0
        });
        let ran = s.metric("temper_search_generated_tokens_total") - tokens;
        eprintln!("{what}: {ran} of {whole} tokens generated");
        assert!(
            ran < 0.5 * whole,
            "{what}: {ran} tokens of {whole} generated"
        );
        // Nothing more comes, and it did not count as finished.
        std::thread::sleep(Duration::from_millis(300));
        let after = s.metric("temper_search_generated_tokens_total") - tokens;
        assert_eq!(
            after, ran,
            "{what}: tokens generated after the search stopped"
        );
        assert_eq!(s.metric("temper_generation_tokens_total"), 0.0, "{what}");
        let (st, v) = s.get("/health");
        let v: Value = serde_json::from_str(&v).unwrap();
        assert_eq!((st, &v["in_flight"]), (200, &json!(0)), "{what}: {v}");
    }
    // The model thread serves on.
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"model": "sc@2@tiny", "prompt": PROMPT, "max_tokens": 8, "seed": 1}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["temper"]["samples"], 2, "{v}");
}

#[test]
fn concurrency_limit_api_key_and_sigterm() {
    let s = Server::start(
        &["--max-concurrency", "1", "--api-key-env", "TEMPER_TEST_KEY"],
        &[("TEMPER_TEST_KEY", "sekrit")],
    );
    // Without the key: 401; /health needs none.
    let (st, text) = s.request(
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": PROMPT}).to_string()),
        None,
    );
    assert_error(st, &serde_json::from_str(&text).unwrap(), 401, "no API key");
    let (st, text) = s.request("GET", "/v1/models", None, Some("sekrit"));
    assert_eq!(st, 200, "{text}");

    // A long request holds the one place; a second one meanwhile gets 429.
    let holder = long_request(&s.addr);
    wait_in_flight(&s, 1, &holder);
    let (st, text) = s.request(
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": PROMPT, "max_tokens": 2}).to_string()),
        Some("sekrit"),
    );
    assert_error(
        st,
        &serde_json::from_str(&text).unwrap(),
        429,
        "past --max-concurrency",
    );
    assert_eq!(holder.join().unwrap(), 200, "the long request");
    let (_, h) = s.get("/health");
    let h: Value = serde_json::from_str(&h).unwrap();
    assert_eq!(h["in_flight"], 0, "{h}");

    // SIGTERM while a request runs: it still gets its answer, then the server exits 0.
    let holder = long_request(&s.addr);
    wait_in_flight(&s, 1, &holder);
    let status = s.terminate();
    assert_eq!(
        holder.join().unwrap(),
        200,
        "the request in flight at SIGTERM"
    );
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

/// A request that takes a while (n = 64, 230 tokens each, EOS ignored), on its own thread; its
/// status comes back from `join`.
fn long_request(addr: &str) -> std::thread::JoinHandle<u16> {
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let b =
            json!({"prompt": PROMPT, "n": 64, "max_tokens": 230, "ignore_eos": true, "seed": 3})
                .to_string();
        let mut st = TcpStream::connect(&addr).unwrap();
        st.set_read_timeout(Some(WAIT)).unwrap();
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer sekrit\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        );
        st.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        st.read_to_end(&mut raw).unwrap();
        parse_response(&raw).0
    })
}

/// Polls /health until `k` requests are in flight; fails if `holder` ends first or time runs out.
fn wait_in_flight(s: &Server, k: u64, holder: &std::thread::JoinHandle<u16>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, h) = s.get("/health");
        let h: Value = serde_json::from_str(&h).unwrap();
        if h["in_flight"] == k {
            return;
        }
        assert!(
            !holder.is_finished(),
            "the long request ended before /health saw it in flight"
        );
        assert!(
            Instant::now() < deadline,
            "/health never showed {k} in flight: {h}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn chat_completions_with_a_template() {
    // The tiny model with a chat template added: each message's content on its own line.
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(model_dir().join(f), dir.path().join(f)).unwrap();
    }
    let mut cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    cfg["chat_template"] = json!("{% for m in messages %}{{ m['content'] }}\n{% endfor %}");
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let s = Server::start_model(
        &dir.path().join("."),
        &["--served-model-name", "chatty"],
        &[],
    );

    let msgs = json!([{"role": "user", "content": "Compute: 3+4*2"}]);
    let (st, v) = s.post(
        "/v1/chat/completions",
        &json!({"model": "chatty", "messages": msgs, "max_tokens": 40, "temperature": 0,
                "logprobs": true, "top_logprobs": 2}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        PROMPT.len() as u64
    );
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    // The same greedy answer as the plain prompt the template renders.
    let (_, plain) = s.post(
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 40, "temperature": 0}),
    );
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap());

    // Streamed: a role chunk first, content deltas that add up, a finish, usage, [DONE].
    let body = json!({"model": "chatty", "messages": msgs, "max_tokens": 40, "temperature": 0,
                      "stream": true, "stream_options": {"include_usage": true}});
    let (st, raw) = s.request(
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        None,
    );
    assert_eq!(st, 200, "{raw}");
    let data: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{raw}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(chunks.iter().filter(|c| !c["usage"].is_null()).count(), 1);

    // A strategy over a chat.
    let (st, v) = s.post(
        "/v1/chat/completions",
        &json!({"model": "sc@3@chatty", "messages": msgs, "max_tokens": 40}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["temper"]["samples"], 3, "{v}");
}
