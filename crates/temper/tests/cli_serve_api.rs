//! `temper serve`'s smaller endpoints and fields, end to end on loopback with the tiny model:
//! `/tokenize` and `/detokenize` (vLLM's shapes), `return_token_ids` (whole and streamed, the
//! prompt's ids in each choice's first chunk), `min_tokens`, `ignore_eos`,
//! `top_k`, `min_p`, `/metrics`, sampling defaults from `generation_config.json` (serve and
//! `temper chat`), and `prompt_logprobs` against the model's own numbers (`temper logits` and the
//! first generated token's logprobs), whole and streamed, and `echo` with `logprobs` (the prompt's
//! tokens first), whole and streamed.

mod serve_common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use serve_common::{assert_error, chat_model_copy, Server};

const PROMPT: &str = "Compute: 3+4*2\n";

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_u64().expect("an id"))
        .collect()
}

#[test]
fn tokenize_detokenize_and_token_ids() {
    let dir = chat_model_copy(None);
    let s = Server::start_model(dir.path(), &["--served-model-name", "tiny"], &[]);

    // A prompt: the tiny model's tokenizer is one token a character.
    let (st, v) = s.post("/tokenize", &json!({"model": "tiny", "prompt": PROMPT}));
    assert_eq!(st, 200, "{v}");
    let toks = ids(&v["tokens"]);
    assert_eq!(toks.len(), PROMPT.len(), "{v}");
    assert_eq!(v["count"], toks.len());
    assert_eq!(v["max_model_len"], 256, "{v}");
    let (st, v) = s.post("/detokenize", &json!({"model": "tiny", "tokens": toks}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["prompt"], PROMPT);
    let (_, v) = s.post(
        "/tokenize",
        &json!({"prompt": "3+4", "return_token_strs": true}),
    );
    assert_eq!(v["token_strs"], json!(["3", "+", "4"]), "{v}");

    // Messages through the chat template: the ids a chat completion is prompted with.
    let msgs = json!([{"role": "user", "content": "Compute: 3+4*2"}]);
    let (st, v) = s.post("/tokenize", &json!({"messages": msgs}));
    assert_eq!(st, 200, "{v}");
    let chat_ids = ids(&v["tokens"]);
    let (st, c) = s.post(
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 6, "temperature": 0, "return_token_ids": true,
                "ignore_eos": true}),
    );
    assert_eq!(st, 200, "{c}");
    assert_eq!(ids(&c["prompt_token_ids"]), chat_ids, "{c}");
    assert_eq!(c["usage"]["prompt_tokens"], chat_ids.len());

    // return_token_ids on completions: the prompt's ids and the choice's, which detokenize to
    // its text (ignore_eos: no stop token cut from the text).
    let (st, c) = s.post(
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "return_token_ids": true,
                "ignore_eos": true, "n": 2}),
    );
    assert_eq!(st, 200, "{c}");
    for ch in c["choices"].as_array().unwrap() {
        assert_eq!(ids(&ch["prompt_token_ids"]), toks, "{c}");
        let gen = ids(&ch["token_ids"]);
        assert_eq!(gen.len(), 12, "{c}");
        let (_, d) = s.post("/detokenize", &json!({"tokens": gen}));
        assert_eq!(d["prompt"], ch["text"], "{c}");
    }
    assert_eq!(c["usage"]["completion_tokens"], 24);
    // Streamed: every token's id in its chunk, as vLLM streams them; the same ids and text.
    let body = json!({"prompt": PROMPT, "max_tokens": 40, "temperature": 0,
                      "return_token_ids": true, "stream": true});
    let (st, sse) = s.request("POST", "/v1/completions", Some(&body.to_string()), None);
    assert_eq!(st, 200, "{sse}");
    let (mut streamed_ids, mut streamed_text) = (vec![], String::new());
    for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v["choices"][0].get("token_ids") {
            streamed_ids.extend(ids(t));
        }
        streamed_text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
    }
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    let (_, w) = s.post("/v1/completions", &whole);
    assert_eq!(streamed_ids, ids(&w["choices"][0]["token_ids"]), "{sse}");
    assert_eq!(streamed_text, w["choices"][0]["text"].as_str().unwrap());
    assert_eq!(w["choices"][0]["finish_reason"], "stop", "{w}");

    // The prompt's ids in a stream, where vLLM sends them: in each choice's first chunk, in the
    // choice (completions, also for a search) or beside it (chat); the whole response's ids.
    let first_chunks = |path: &str, body: Value, n: usize| -> Vec<Value> {
        let cs = sse_chunks(&s, path, &body);
        let mut firsts = vec![];
        for i in 0..n {
            let mine: Vec<&Value> = cs
                .iter()
                .filter(|c| c["choices"][0]["index"] == i)
                .collect();
            let at = |c: &Value| match path {
                "/v1/completions" => c["choices"][0].get("prompt_token_ids").cloned(),
                _ => c.get("prompt_token_ids").cloned(),
            };
            assert!(
                mine[1..].iter().all(|c| at(c).is_none()),
                "{path}, choice {i}"
            );
            firsts.push(at(mine[0]).unwrap_or_else(|| panic!("{path}, choice {i}: {}", mine[0])));
        }
        firsts
    };
    let body = json!({"prompt": PROMPT, "max_tokens": 5, "seed": 3, "n": 2,
                      "return_token_ids": true, "stream": true});
    for got in first_chunks("/v1/completions", body, 2) {
        assert_eq!(got, w["choices"][0]["prompt_token_ids"]);
    }
    let body = json!({"model": "sc@2@tiny", "prompt": PROMPT, "max_tokens": 5,
                      "return_token_ids": true, "stream": true});
    for got in first_chunks("/v1/completions", body, 1) {
        assert_eq!(ids(&got), toks);
    }
    let body = json!({"messages": msgs, "max_tokens": 3, "seed": 3, "n": 2,
                      "return_token_ids": true, "stream": true});
    for got in first_chunks("/v1/chat/completions", body, 2) {
        assert_eq!(ids(&got), chat_ids);
    }
    let body = json!({"prompt": PROMPT, "max_tokens": 3, "stream": true});
    let cs = sse_chunks(&s, "/v1/completions", &body);
    assert!(cs
        .iter()
        .all(|c| c["choices"][0].get("prompt_token_ids").is_none()));
    // Without it, none of those fields.
    let (_, c) = s.post(
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 2, "temperature": 0}),
    );
    assert!(c["choices"][0].get("token_ids").is_none(), "{c}");
    assert!(c["choices"][0].get("prompt_token_ids").is_none(), "{c}");

    // echo: the prompt's text before the completion's, whole or streamed, text or id prompts.
    let plain = |extra: Value| -> String {
        let mut b = json!({"prompt": PROMPT, "max_tokens": 8, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (st, text) = s.request("POST", "/v1/completions", Some(&b.to_string()), None);
        assert_eq!(st, 200, "{b}: {text}");
        if b["stream"] == true {
            text.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .take_while(|l| *l != "[DONE]")
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    v["choices"][0]["text"].as_str().unwrap_or("").to_string()
                })
                .collect()
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            v["choices"][0]["text"].as_str().unwrap().to_string()
        }
    };
    let answer = plain(json!({}));
    assert_eq!(plain(json!({"echo": true})), format!("{PROMPT}{answer}"));
    assert_eq!(
        plain(json!({"echo": true, "stream": true})),
        format!("{PROMPT}{answer}")
    );
    assert_eq!(
        plain(json!({"echo": true, "prompt": toks})),
        format!("{PROMPT}{answer}")
    );

    // Errors: OpenAI-shaped, 400 or 404.
    let (st, v) = s.post("/tokenize", &json!({"model": "nope", "prompt": "x"}));
    assert_error(st, &v, 404, "tokenize with an unknown model");
    let (st, v) = s.post("/tokenize", &json!({}));
    assert_error(st, &v, 400, "tokenize with nothing");
    let (st, v) = s.post("/tokenize", &json!({"prompt": "x", "messages": msgs}));
    assert_error(st, &v, 400, "tokenize with both");
    let (st, v) = s.post("/tokenize", &json!({"prompt": 5}));
    assert_error(st, &v, 400, "tokenize a number");
    let (st, v) = s.post("/detokenize", &json!({"tokens": [1, 100000]}));
    assert_error(st, &v, 400, "detokenize an id past the vocabulary");
    assert_eq!(v["error"]["param"], "tokens");
    let (st, v) = s.post("/detokenize", &json!({"tokens": "abc"}));
    assert_error(st, &v, 400, "detokenize a string");
    let (st, v) = s.post_raw("/tokenize", "[1,2");
    assert_error(st, &v, 400, "tokenize malformed JSON");
}

#[test]
fn sampling_extras_and_metrics() {
    let s = Server::start(&[], &[]);
    let complete = |extra: Value| -> Value {
        let mut body = json!({"prompt": PROMPT, "max_tokens": 40, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (st, v) = s.post("/v1/completions", &body);
        assert_eq!(st, 200, "{body} -> {v}");
        v
    };
    // The greedy answer stops on EOS well before 40 tokens.
    let base = complete(json!({}));
    assert_eq!(base["choices"][0]["finish_reason"], "stop", "{base}");
    let k = base["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(k < 30, "{base}");

    // ignore_eos: runs to max_tokens.
    let v = complete(json!({"ignore_eos": true}));
    assert_eq!(v["usage"]["completion_tokens"], 40, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let long_text = v["choices"][0]["text"].as_str().unwrap().to_string();

    // min_tokens: EOS masked until then, so at least that many tokens.
    let v = complete(json!({"min_tokens": k + 3}));
    let got = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(got >= k + 3, "min_tokens {} gave {got}: {v}", k + 3);
    // The greedy answer, then more instead of EOS (never EOS itself, which ignore_eos shows).
    let text = v["choices"][0]["text"].as_str().unwrap();
    let base_text = base["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(base_text), "{text:?} vs {base_text:?}");
    assert!(!text.contains("<eos>"), "{text:?}");
    assert!(long_text.contains("<eos>"), "{long_text:?}");
    let (st, e) = s.post(
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 4, "min_tokens": 5}),
    );
    assert_error(st, &e, 400, "min_tokens over max_tokens");
    assert_eq!(e["error"]["param"], "min_tokens");

    // top_k 1 (and min_p 1) leave only the most likely token: any seed gives the greedy text.
    let greedy = base["choices"][0]["text"].clone();
    for (extra, seed) in [
        (json!({"top_k": 1}), 1),
        (json!({"top_k": 1}), 2),
        (json!({"min_p": 1.0}), 3),
    ] {
        let mut e = extra.clone();
        e["temperature"] = json!(1.0);
        e["seed"] = json!(seed);
        let v = complete(e);
        assert_eq!(v["choices"][0]["text"], greedy, "{extra}: {v}");
    }
    let (st, e) = s.post("/v1/completions", &json!({"prompt": PROMPT, "top_k": -2}));
    assert_error(st, &e, 400, "top_k -2");
    let (st, e) = s.post("/v1/completions", &json!({"prompt": PROMPT, "min_p": 1.5}));
    assert_error(st, &e, 400, "min_p 1.5");
    let (st, e) = s.post(
        "/v1/completions",
        &json!({"prompt": PROMPT, "stop_token_ids": [999999]}),
    );
    assert_error(st, &e, 400, "a stop token id past the vocabulary");

    // /metrics: what was asked above, counted. Successes so far: base, ignore_eos, min_tokens,
    // three top_k/min_p runs = 6, each prompt PROMPT.len() tokens; errors: 4 answered 400.
    let m = s.metrics();
    let get = |key: &str| m.iter().find(|(k, _)| k == key).map_or(0.0, |(_, v)| *v);
    assert_eq!(
        get("temper_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"),
        6.0,
        "{m:?}"
    );
    assert_eq!(
        get("temper_requests_total{endpoint=\"/v1/completions\",status=\"400\"}"),
        4.0,
        "{m:?}"
    );
    assert_eq!(
        get("temper_prompt_tokens_total"),
        6.0 * PROMPT.len() as f64,
        "{m:?}"
    );
    assert!(get("temper_generation_tokens_total") >= (k + 40 + k + 3) as f64);
    assert_eq!(get("temper_request_latency_seconds_count"), 6.0, "{m:?}");
    assert_eq!(
        get("temper_request_latency_seconds_bucket{le=\"+Inf\"}"),
        6.0
    );
    assert!(get("temper_request_latency_seconds_sum") > 0.0);
    assert_eq!(get("temper_requests_running"), 0.0);
    assert_eq!(get("temper_requests_waiting"), 0.0);
    assert!(get("temper_decode_steps_total") >= 40.0);
    let (_, text) = s.get("/metrics");
    assert!(
        text.contains("# TYPE temper_request_latency_seconds histogram"),
        "{text}"
    );
}

#[test]
fn sampling_defaults_come_from_generation_config() {
    // This model's generation config asks for greedy decoding.
    let dir = chat_model_copy(Some(
        &json!({"temperature": 0.0, "top_p": 0.9, "eos_token_id": 1}),
    ));
    let s = Server::start_model(dir.path(), &[], &[]);
    let said = s.stderr_until("ready", Duration::from_secs(5));
    assert!(
        said.iter().any(
            |l| l.contains("sampling defaults: temperature 0, top_p 0.9")
                && l.contains("generation_config.json")
        ),
        "{said:?}"
    );
    let run = |seed: u64, temperature: Option<f64>| -> String {
        let mut body =
            json!({"prompt": PROMPT, "max_tokens": 30, "ignore_eos": true, "seed": seed});
        if let Some(t) = temperature {
            body["temperature"] = json!(t);
        }
        let (st, v) = s.post("/v1/completions", &body);
        assert_eq!(st, 200, "{v}");
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let greedy = run(1, Some(0.0));
    // No temperature in the request: the config's 0, whatever the seed.
    for seed in [2, 3, 4] {
        assert_eq!(run(seed, None), greedy, "seed {seed}");
    }
    // A request's own temperature wins: past EOS the tiny model is unsure, so seeds differ.
    let sampled: std::collections::BTreeSet<String> = [5, 6, 7, 8]
        .iter()
        .map(|&seed| run(seed, Some(1.5)))
        .collect();
    assert!(
        sampled.len() > 1,
        "temperature 1.5 gave one text: {sampled:?}"
    );
    drop(s);

    // The fixture as committed sets no sampling value: OpenAI's defaults, said so.
    let plain = chat_model_copy(None);
    let s = Server::start_model(plain.path(), &[], &[]);
    let said = s.stderr_until("ready", Duration::from_secs(5));
    assert!(
        said.iter()
            .any(|l| l.contains("sampling defaults: temperature 1, top_p 1")),
        "{said:?}"
    );
    drop(s);

    // `temper chat` takes the same defaults, and a flag overrides them.
    for (flags, want) in [
        (vec![], "sampling: temperature 0, top_p 0.9"),
        (
            vec!["--temperature", "0.5"],
            "sampling: temperature 0.5, top_p 0.9",
        ),
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_temper"))
            .arg("chat")
            .arg(dir.path())
            .args(["--max-new-tokens", "4"])
            .args(&flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting temper chat");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"Compute: 1+1\n/quit\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains(want), "{flags:?}: {err}");
    }
}

/// `temper logits --json` on `prompt`: the ids and the `top` most likely next tokens' (id, logit).
fn model_logits(prompt: &str, top: usize) -> (Vec<u64>, Vec<(u64, f64)>) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_temper"))
        .arg("logits")
        .arg(serve_common::model_dir())
        .args(["--prompt", prompt, "--top", &top.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let top = v["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["logit"].as_f64().unwrap()))
        .collect();
    (ids(&v["ids"]), top)
}

/// A streamed response's chunks (the `[DONE]` line checked and left out).
fn sse_chunks(s: &Server, path: &str, body: &Value) -> Vec<Value> {
    let (st, text) = s.request("POST", path, Some(&body.to_string()), None);
    assert_eq!(st, 200, "{text}");
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

#[test]
fn prompt_logprobs_are_the_models_own() {
    let s = Server::start(&[], &[]);
    let k = 3;
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 1, "temperature": 0, "prompt_logprobs": k,
                "return_token_ids": true}),
    );
    assert_eq!(st, 200, "{v}");
    let c = &v["choices"][0];
    let prompt_ids = ids(&c["prompt_token_ids"]);
    let lps = c["prompt_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(lps.len(), prompt_ids.len(), "one entry a prompt token: {v}");
    assert!(
        lps[0].is_null(),
        "nothing comes before the first token: {v}"
    );

    // vLLM's shape: per token, by id, the prompt's token and the top k with logprob, rank and
    // decoded_token.
    for (i, e) in lps.iter().enumerate().skip(1) {
        let e = e.as_object().unwrap_or_else(|| panic!("entry {i}: {e}"));
        let own = &e[&prompt_ids[i].to_string()];
        let lp = own["logprob"]
            .as_f64()
            .unwrap_or_else(|| panic!("entry {i}: {e:?}"));
        let rank = own["rank"].as_u64().unwrap();
        assert!(lp <= 0.0 && rank >= 1, "entry {i}: {e:?}");
        assert_eq!(own["decoded_token"], &PROMPT[i..i + 1], "entry {i}");
        assert!(e.len() == k || e.len() == k + 1, "entry {i}: {e:?}");
        let mut top: Vec<(u64, f64)> = e
            .values()
            .map(|x| (x["rank"].as_u64().unwrap(), x["logprob"].as_f64().unwrap()))
            .collect();
        top.sort_by_key(|t| t.0);
        assert_eq!(
            top.iter().take(k).map(|t| t.0).collect::<Vec<_>>(),
            (1..=k as u64).collect::<Vec<_>>(),
            "entry {i}: {e:?}"
        );
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "by rank: {e:?}");
        assert_eq!(rank == 1, (lp - top[0].1).abs() < 1e-6, "entry {i}: {e:?}");
    }

    // The model's own numbers: the logits `temper logits` gives after each prefix rank the same
    // tokens, with the same gaps; and the logprobs of the first generated token after that prefix
    // are the same numbers.
    for i in [1, 5, PROMPT.len() - 1] {
        let e = &lps[i];
        let (prefix_ids, top) = model_logits(&PROMPT[..i], k);
        assert_eq!(prefix_ids, prompt_ids[..i], "prefix {i}");
        let by_rank = |r: u64| -> (u64, f64) {
            e.as_object()
                .unwrap()
                .iter()
                .find(|(_, x)| x["rank"] == r)
                .map(|(id, x)| (id.parse().unwrap(), x["logprob"].as_f64().unwrap()))
                .unwrap_or_else(|| panic!("no rank {r} at {i}: {e}"))
        };
        for (r, &(id, logit)) in top.iter().enumerate() {
            let (got_id, lp) = by_rank(r as u64 + 1);
            assert_eq!(got_id, id, "prefix {i}, rank {}", r + 1);
            // Logits and logprobs differ by one constant per position.
            let (first_lp, first_logit) = (by_rank(1).1, top[0].1);
            assert!(
                ((lp - first_lp) - (logit - first_logit)).abs() < 1e-3,
                "prefix {i}, rank {}: {lp} vs logit {logit}",
                r + 1
            );
        }
        let (st, g) = s.post(
            "/v1/completions",
            &json!({"prompt": prompt_ids[..i], "max_tokens": 1, "temperature": 0,
                    "logprobs": k, "ignore_eos": true}),
        );
        assert_eq!(st, 200, "{g}");
        let gen_top = g["choices"][0]["logprobs"]["top_logprobs"][0]
            .as_object()
            .unwrap_or_else(|| panic!("{g}"))
            .clone();
        assert_eq!(gen_top.len(), k, "{g}");
        for (tok, glp) in &gen_top {
            let (_, x) = e
                .as_object()
                .unwrap()
                .iter()
                .find(|(_, x)| {
                    x["decoded_token"] == tok.as_str() && x["rank"].as_u64() <= Some(k as u64)
                })
                .unwrap_or_else(|| panic!("prefix {i}: {tok:?} not in {e}"));
            let (a, b) = (x["logprob"].as_f64().unwrap(), glp.as_f64().unwrap());
            assert!((a - b).abs() < 1e-3, "prefix {i}, {tok:?}: {a} vs {b}");
        }
    }

    // Echo with logprobs (legacy completions, as vLLM): the prompt's tokens first, the first with
    // null logprob and alternatives, the rest the prompt logprobs; then the generated tokens'.
    let body = json!({"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 2,
                      "ignore_eos": true});
    let (st, plain) = s.post("/v1/completions", &body);
    assert_eq!(st, 200, "{plain}");
    let mut echo_body = body.clone();
    echo_body["echo"] = json!(true);
    let (st, echoed) = s.post("/v1/completions", &echo_body);
    assert_eq!(st, 200, "{echoed}");
    let (p, e) = (&plain["choices"][0], &echoed["choices"][0]);
    assert_eq!(
        e["text"].as_str().unwrap(),
        format!("{PROMPT}{}", p["text"].as_str().unwrap())
    );
    let n = PROMPT.len();
    let (pl, el) = (&p["logprobs"], &e["logprobs"]);
    let chars: Vec<Value> = PROMPT.chars().map(|c| json!(c.to_string())).collect();
    let mut want_tokens = chars.clone();
    want_tokens.extend(pl["tokens"].as_array().unwrap().iter().cloned());
    assert_eq!(el["tokens"], Value::from(want_tokens), "{echoed}");
    assert!(el["token_logprobs"][0].is_null() && el["top_logprobs"][0].is_null());
    for i in 1..n {
        let own = lps[i][prompt_ids[i].to_string()]["logprob"]
            .as_f64()
            .unwrap();
        let got = el["token_logprobs"][i].as_f64().unwrap();
        assert!((own - got).abs() < 1e-6, "prompt token {i}: {got} vs {own}");
        assert_eq!(el["top_logprobs"][i].as_object().map(|o| o.len()), Some(2));
    }
    assert_eq!(
        el["token_logprobs"].as_array().unwrap()[n..],
        pl["token_logprobs"].as_array().unwrap()[..]
    );
    assert_eq!(
        el["top_logprobs"].as_array().unwrap()[n..],
        pl["top_logprobs"].as_array().unwrap()[..]
    );
    assert_eq!(el["text_offset"][n], n, "{echoed}");
    assert_eq!(el["text_offset"][1], 1, "{echoed}");

    // Streamed (as vLLM streams them): each choice's echo chunk carries the prompt's tokens'
    // logprobs, its later chunks the generated tokens'; put together, each choice's text and
    // logprobs are the whole response's, offsets included.
    for extra in [
        json!({}),
        json!({"n": 2, "seed": 5, "temperature": 1.0, "logprobs": 0}),
    ] {
        let mut body = echo_body.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (st, whole) = s.post("/v1/completions", &body);
        assert_eq!(st, 200, "{whole}");
        body["stream"] = json!(true);
        let cs = sse_chunks(&s, "/v1/completions", &body);
        let choices = whole["choices"].as_array().unwrap();
        for (i, w) in choices.iter().enumerate() {
            let mine: Vec<&Value> = cs
                .iter()
                .map(|c| &c["choices"][0])
                .filter(|c| c["index"] == i && c["logprobs"].is_object())
                .collect();
            assert_eq!(mine[0]["text"], PROMPT, "choice {i}: the echo chunk first");
            assert_eq!(
                mine[0]["logprobs"]["tokens"].as_array().map(Vec::len),
                Some(PROMPT.len()),
                "choice {i}: {}",
                mine[0]
            );
            let text: String = mine.iter().map(|c| c["text"].as_str().unwrap()).collect();
            assert_eq!(text, w["text"].as_str().unwrap(), "choice {i}");
            for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
                let want = &w["logprobs"][key];
                if want.is_null() {
                    assert!(mine.iter().all(|c| c["logprobs"][key].is_null()), "{key}");
                    continue;
                }
                let got: Vec<Value> = mine
                    .iter()
                    .flat_map(|c| c["logprobs"][key].as_array().unwrap().clone())
                    .collect();
                assert_eq!(&Value::from(got), want, "choice {i}, {key}: {extra}");
            }
        }
    }

    // Chat puts them beside the choices.
    let dir = chat_model_copy(None);
    let c = Server::start_model(dir.path(), &[], &[]);
    let (st, v) = c.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "1+1"}], "max_tokens": 2,
                "prompt_logprobs": 0, "return_token_ids": true}),
    );
    assert_eq!(st, 200, "{v}");
    let lps = v["prompt_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(lps.len(), ids(&v["prompt_token_ids"]).len());
    assert!(
        lps[0].is_null() && lps[1].as_object().is_some_and(|o| o.len() == 1),
        "{v}"
    );
    assert!(v["choices"][0].get("prompt_logprobs").is_none(), "{v}");

    // Streamed (an extension: vLLM refuses `prompt_logprobs` with `stream`): a chat stream's
    // first chunk carries them beside its choices, the same values as the whole response; the
    // later chunks do not.
    let chat = json!({"messages": [{"role": "user", "content": "1+1"}], "max_tokens": 3,
                      "prompt_logprobs": 2, "seed": 4, "n": 2});
    let (st, whole) = c.post("/v1/chat/completions", &chat);
    assert_eq!(st, 200, "{whole}");
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let cs = sse_chunks(&c, "/v1/chat/completions", &streamed);
    assert_eq!(
        cs[0]["prompt_logprobs"], whole["prompt_logprobs"],
        "{}",
        cs[0]
    );
    assert!(whole["prompt_logprobs"]
        .as_array()
        .is_some_and(|a| a.len() > 2));
    assert!(cs[1..].iter().all(|c| c.get("prompt_logprobs").is_none()));

    // A completions stream: each choice's first chunk, as each whole choice has them.
    let body = json!({"prompt": PROMPT, "max_tokens": 3, "prompt_logprobs": k, "n": 2,
                      "seed": 9, "return_token_ids": true});
    let (st, whole) = s.post("/v1/completions", &body);
    assert_eq!(st, 200, "{whole}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let cs = sse_chunks(&s, "/v1/completions", &streamed);
    for i in 0..2 {
        let mine: Vec<&Value> = cs
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .collect();
        let want = &whole["choices"][i]["prompt_logprobs"];
        assert_eq!(want.as_array().map(Vec::len), Some(PROMPT.len()), "{whole}");
        assert_eq!(
            &mine[0]["choices"][0]["prompt_logprobs"], want,
            "choice {i}"
        );
        assert!(mine[1..]
            .iter()
            .all(|c| c["choices"][0].get("prompt_logprobs").is_none()));
    }

    // Refused where not served, OpenAI-shaped.
    for (body, what) in [
        (
            json!({"prompt": PROMPT, "prompt_logprobs": -1}),
            "the whole vocabulary",
        ),
        (json!({"prompt": PROMPT, "prompt_logprobs": 21}), "over 20"),
        (
            json!({"model": "sc@2@tiny-arith-sft", "prompt": PROMPT, "prompt_logprobs": 1}),
            "with a strategy",
        ),
    ] {
        let (st, e) = s.post("/v1/completions", &body);
        assert_error(st, &e, 400, what);
        assert_eq!(e["error"]["param"], "prompt_logprobs", "{what}: {e}");
    }
}
