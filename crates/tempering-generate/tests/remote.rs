//! The remote backend against an in-process mock server (a std `TcpListener`, one thread per
//! connection) that replays vLLM-, llama.cpp- and `temper serve`-shaped responses: what the
//! backend sends (token-id prompts, neutral sampling settings, seeds), how it normalises what comes
//! back (token ids, both logprob layouts, stop token vs stop string), what it retries (429) and
//! what it does not (500), `n` refused or capped (fan-out), bounded concurrency, the typed
//! errors of a wrong model or tokenizer, a cancelled call closing its connections, and vLLM's
//! `prompt_logprobs` asked for and read back (refused on llama.cpp). The
//! tokenizer is the tiny fixture model's: one character per token, `<eos>` = 1.

mod remote_mock;

use remote_mock::*;
#[test]
fn vllm_gets_token_ids_and_neutral_settings_and_its_answers_are_normalised() {
    let mock = Mock::start(|path, body, _| match path {
        "/v1/models" => (200, models("vllm")),
        "/tokenize" => tokenize(body),
        "/v1/completions" => (
            200,
            json!({"choices": [
                vllm_choice(1, "1+2=3", &[3], json!("\n")),
                vllm_choice(0, "7", &[1], Value::Null),
            ], "usage": {"completion_tokens": 8}}),
        ),
        _ => not_found(),
    });
    let b = RemoteBackend::connect(
        RemoteOptions {
            api_key: Some("sk-test".into()),
            ..opts(&mock)
        },
        tokenizer(),
        vec![1],
    )
    .unwrap();
    assert_eq!(b.info().kind, ServerKind::Vllm);
    assert_eq!(b.info().context, Some(256));
    assert_eq!(b.info().tokenizer_checked, Some(true));
    let params = SamplingParams {
        max_new_tokens: 12,
        temperature: 0.7,
        seed: 42,
        stop: vec!["\n".into()],
        logprobs: true,
        top_logprobs: 2,
        ..Default::default()
    };
    let prompt = ids("12+3=");
    let out = b
        .generate(&[GenRequest::new(prompt.clone(), 2, params)])
        .unwrap();

    let sent = mock.completions();
    assert_eq!(sent.len(), 1, "one request carries n = 2");
    let s = &sent[0];
    assert_eq!(
        s["prompt"],
        json!(prompt),
        "the prompt goes out as token ids"
    );
    assert_eq!(s["n"], 2);
    assert_eq!(s["seed"], 42);
    assert_eq!(s["top_k"], -1);
    assert_eq!(s["top_p"], 1.0);
    assert_eq!(s["min_p"], 0.0);
    assert_eq!(s["repetition_penalty"], 1.0);
    assert_eq!(s["return_token_ids"], true);
    assert_eq!(s["max_tokens"], 12);
    assert_eq!(s["logprobs"], 2);
    assert_eq!(s["stop"], json!(["\n"]));
    let auth = mock.seen.lock().unwrap()[0].auth.clone();
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));

    // Choices come back in index order.
    let g = &out[0];
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].text, "7");
    assert_eq!(g[0].tokens, vec![ids("7")[0], 1]);
    assert_eq!(g[0].finish_reason, FinishReason::Stop);
    assert_eq!(g[1].text, "1+2=3");
    assert_eq!(g[1].finish_reason, FinishReason::StopString);
    assert_eq!(g[1].stop_string.as_deref(), Some("\n"));
    let mut want = ids("1+2=3");
    want.push(3);
    assert_eq!(
        g[1].tokens, want,
        "the stop string's token is kept, as locally"
    );
    assert_eq!(g[1].logprobs.as_ref().unwrap().len(), 6);
    let top = &g[1].top_logprobs.as_ref().unwrap()[0];
    assert_eq!(top.len(), 2);
    assert_eq!(top[0].token, ids("1")[0], "most likely first");
    assert_eq!(top[1].token, 2);
    assert!((top[1].logprob + 3.0).abs() < 1e-6);
}

#[test]
fn a_429_is_retried_and_a_500_is_not() {
    let mock = Mock::start(|path, body, nth| match path {
        "/v1/models" => (200, models("vllm")),
        "/tokenize" => tokenize(body),
        "/v1/completions" if body["seed"] == 1 => match nth {
            0 => (429, json!({"error": {"message": "busy"}})),
            _ => (
                200,
                json!({"choices": [vllm_choice(0, "5", &[1], Value::Null)]}),
            ),
        },
        "/v1/completions" => (
            500,
            json!({"error": {"message": "CUDA out of memory", "type": "server_error"}}),
        ),
        _ => not_found(),
    });
    let b = connect(&mock);
    let p = |seed| SamplingParams {
        seed,
        ..SamplingParams::greedy(4)
    };
    let out = b
        .generate(&[GenRequest::new(ids("2+3="), 1, p(1))])
        .unwrap();
    assert_eq!(out[0][0].text, "5");
    assert_eq!(b.stats.retries.load(Ordering::Relaxed), 1);
    assert_eq!(mock.completions().len(), 2);

    let err = b
        .generate(&[GenRequest::new(ids("2+3="), 1, p(2))])
        .unwrap_err();
    match &err {
        GenError::Remote(RemoteError::Status {
            status: 500,
            message,
            tries: 1,
            ..
        }) => assert_eq!(message, "CUDA out of memory"),
        other => panic!("expected a 500 status error, got {other:?}"),
    }
    assert!(err.to_string().contains("500"), "{err}");
    assert_eq!(mock.completions().len(), 3, "a 500 is not retried");
}

#[test]
fn a_refused_n_fans_out_into_seeded_requests() {
    let mock = Mock::start(|path, body, _| match path {
        "/v1/models" => (200, models("sglang")),
        "/tokenize" => not_found(),
        "/v1/completions" if body["n"] != 1 => {
            (400, json!({"error": {"message": "n > 1 is not supported"}}))
        }
        "/v1/completions" => {
            let seed = body["seed"].as_u64().unwrap();
            let text = format!("{}", seed % 10);
            (
                200,
                json!({"choices": [{"index": 0, "text": text, "finish_reason": "length",
                                    "logprobs": null}],
                       "usage": {"completion_tokens": 1}}),
            )
        }
        _ => not_found(),
    });
    let b = connect(&mock);
    assert_eq!(b.info().kind, ServerKind::Sglang);
    assert_eq!(
        b.info().tokenizer_checked,
        None,
        "no /tokenize: not checked"
    );
    let params = SamplingParams {
        seed: 1234,
        max_new_tokens: 1,
        ..Default::default()
    };
    let out = b
        .generate(&[GenRequest::new(ids("1+1="), 4, params.clone())])
        .unwrap();
    assert_eq!(out[0].len(), 4);
    let sent = mock.completions();
    assert_eq!(sent.len(), 5, "one refused request, then one per sample");
    let mut seeds: Vec<u64> = sent[1..]
        .iter()
        .map(|s| s["seed"].as_u64().unwrap())
        .collect();
    assert!(sent[1..].iter().all(|s| s["n"] == 1));
    assert!(seeds.contains(&1234), "sample 0 keeps the request's seed");
    seeds.sort();
    seeds.dedup();
    assert_eq!(seeds.len(), 4, "each sample its own seed");
    // The next call knows: no refused request first.
    b.generate(&[GenRequest::new(ids("1+1="), 2, params)])
        .unwrap();
    assert_eq!(mock.completions().len(), 7);
    assert!(b.stats.fanned_out.load(Ordering::Relaxed) >= 4);
}

/// A llama.cpp choice: chat-style logprobs with ids; llama.cpp ignores `n`.
fn llama_choice(text: &str, eos: bool) -> Value {
    let mut t = ids(text);
    if eos {
        t.push(1);
    }
    json!({"index": 0, "text": text, "finish_reason": if eos { "stop" } else { "length" },
           "logprobs": {"content": t.iter().map(|&i| json!({
               "id": i, "token": if i == 1 { String::new() } else { tokenizer().decode(&[i], false).unwrap() },
               "logprob": -0.25, "bytes": [],
               "top_logprobs": [{"id": i, "token": "x", "logprob": -0.25, "bytes": []}]
           })).collect::<Vec<_>>()}})
}

#[test]
fn llama_cpp_is_found_by_props_capped_n_is_fanned_out_and_slots_bound_concurrency() {
    let mock = Mock::start_delayed(Duration::from_millis(60), |path, body, _| match path {
        "/v1/models" => (200, models("llamacpp")),
        "/props" => (
            200,
            json!({"total_slots": 2, "default_generation_settings": {"n_ctx": 128}}),
        ),
        "/tokenize" => tokenize(body),
        "/v1/completions" => (200, json!({"choices": [llama_choice("42", true)]})),
        _ => not_found(),
    });
    let b = connect(&mock);
    assert_eq!(b.info().kind, ServerKind::LlamaCpp);
    assert_eq!(b.info().slots, Some(2));
    assert_eq!(b.info().context, Some(256), "max_model_len wins over n_ctx");
    assert_eq!(b.concurrency(), 2);
    let params = SamplingParams {
        seed: u64::MAX,
        logprobs: true,
        ..SamplingParams::greedy(8)
    };
    let out = b
        .generate(&[
            GenRequest::new(ids("6*7="), 3, params.clone()),
            GenRequest::new(ids("40+2="), 2, params),
        ])
        .unwrap();
    assert_eq!((out[0].len(), out[1].len()), (3, 2));
    for c in out.iter().flatten() {
        assert_eq!(c.text, "42");
        assert_eq!(c.tokens, vec![ids("4")[0], ids("2")[0], 1]);
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert_eq!(c.logprobs.as_deref(), Some(&[-0.25f32, -0.25, -0.25][..]));
    }
    let sent = mock.completions();
    assert_eq!(
        sent.len(),
        5,
        "3 requests of n <= total_slots, then the 2 samples they lacked"
    );
    assert!(sent.iter().all(|s| s["n"].as_u64().unwrap() <= 2));
    for s in &sent {
        assert_eq!(s["n_probs"], 1, "llama.cpp's logprobs carry the token ids");
        assert_eq!(s["top_k"], 0);
        assert_eq!(s["repeat_penalty"], 1.0);
        assert_eq!(s["min_p"], 0.0);
        assert!(s["seed"].as_u64().unwrap() <= 0x7FFF_FFFF, "31-bit seeds");
    }
    assert!(
        mock.max_in_flight.load(Ordering::SeqCst) <= 2,
        "at most total_slots in flight"
    );
}

#[test]
fn without_ids_the_text_is_re_tokenised_and_the_stop_is_told_from_a_stop_string() {
    // A server without token ids (as `temper serve` was before `return_token_ids`): legacy
    // logprobs with each token's text, the stop token's included.
    let choice = |text: &str, tail: &[&str]| {
        let mut toks: Vec<String> = text.chars().map(String::from).collect();
        toks.extend(tail.iter().map(|s| s.to_string()));
        json!({"index": 0, "text": text, "finish_reason": "stop",
               "logprobs": {"tokens": toks, "token_logprobs": toks.iter().map(|_| -1.0).collect::<Vec<_>>(),
                            "top_logprobs": null, "text_offset": []}})
    };
    let (a, b2) = (choice("12", &["\n"]), choice("3", &["<eos>"]));
    let mock = Mock::start(move |path, body, _| match path {
        "/v1/models" => (200, models("someone")),
        "/tokenize" => tokenize(body),
        "/v1/completions" if body["max_tokens"] == 5 => (200, json!({"choices": [a.clone()]})),
        "/v1/completions" => (200, json!({"choices": [b2.clone()]})),
        _ => not_found(),
    });
    let b = connect(&mock);
    assert_eq!(b.info().kind, ServerKind::Other);
    let step = SamplingParams {
        stop: vec!["\n".into()],
        ..SamplingParams::greedy(5)
    };
    let whole = SamplingParams {
        stop: vec!["\n".into()],
        ..SamplingParams::greedy(6)
    };
    let out = b
        .generate(&[
            GenRequest::new(ids("1+"), 1, step),
            GenRequest::new(ids("1+"), 1, whole),
        ])
        .unwrap();
    assert_eq!(out[0][0].finish_reason, FinishReason::StopString);
    assert_eq!(out[0][0].stop_string.as_deref(), Some("\n"));
    assert_eq!(out[0][0].tokens, ids("12\n"));
    assert_eq!(out[1][0].finish_reason, FinishReason::Stop);
    assert_eq!(out[1][0].tokens, vec![ids("3")[0], 1]);
    let sent = mock.completions();
    assert_eq!(sent[0]["top_k"], 0, "0 for no top-k");
    assert_eq!(
        sent[0]["logprobs"], 0,
        "logprobs asked for, to see every token"
    );
    assert!(sent[0].get("return_token_ids").is_none());
}

#[test]
fn temper_serve_is_asked_for_token_ids_and_they_are_used() {
    // `temper serve` answers `return_token_ids` with each choice's ids, the stop token's included.
    let mock = Mock::start(move |path, body, _| match path {
        "/v1/models" => (200, models("temper")),
        "/tokenize" => tokenize(body),
        "/v1/completions" => (
            200,
            json!({"choices": [{"index": 0, "text": "3", "finish_reason": "stop",
                                "token_ids": [ids("3")[0], 1], "logprobs": null}],
                   "usage": {"completion_tokens": 2}}),
        ),
        _ => not_found(),
    });
    let b = connect(&mock);
    assert_eq!(b.info().kind, ServerKind::Temper);
    let p = SamplingParams {
        stop_token_ids: vec![7],
        min_tokens: 2,
        ..SamplingParams::greedy(6)
    };
    let out = b.generate(&[GenRequest::new(ids("1+"), 1, p)]).unwrap();
    assert_eq!(out[0][0].tokens, vec![ids("3")[0], 1]);
    assert_eq!(out[0][0].finish_reason, FinishReason::Stop);
    let sent = mock.completions();
    assert_eq!(sent[0]["return_token_ids"], true);
    assert_eq!(sent[0]["stop_token_ids"], json!([7]));
    assert_eq!(sent[0]["min_tokens"], 2);
    assert!(
        sent[0].get("logprobs").is_none(),
        "no logprobs needed to see the tokens: {}",
        sent[0]
    );
}

#[test]
fn a_text_that_does_not_re_tokenise_to_the_server_count_is_a_typed_error() {
    let mock = Mock::start(|path, body, _| match path {
        "/v1/models" => (200, models("someone")),
        "/tokenize" => tokenize(body),
        "/v1/completions" => (
            200,
            json!({"choices": [{"index": 0, "text": "12", "finish_reason": "length"}],
                   "usage": {"completion_tokens": 5}}),
        ),
        _ => not_found(),
    });
    let b = connect(&mock);
    let err = b
        .generate(&[GenRequest::new(ids("1+"), 1, SamplingParams::greedy(5))])
        .unwrap_err();
    assert!(
        matches!(err, GenError::Remote(RemoteError::TokenMismatch { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("2 tokens"), "{err}");
}

#[test]
fn a_base_model_beside_its_lora_adapters_is_the_default() {
    // A server with adapters loaded (a previous RL run's, say) still serves one base model.
    let mock = Mock::start(|path, body, _| match path {
        "/v1/models" => (
            200,
            json!({"data": [{"id": "policy-step-2", "owned_by": "temper", "parent": "tiny"},
                            {"id": "tiny", "owned_by": "temper", "parent": null}]}),
        ),
        "/tokenize" => tokenize(body),
        _ => not_found(),
    });
    let b = RemoteBackend::connect(opts(&mock), tokenizer(), vec![1]).unwrap();
    assert_eq!(b.info().model, "tiny");
}

#[test]
fn connect_errors_name_the_model_or_the_tokenizer_at_fault() {
    let mock = Mock::start(|path, _, _| match path {
        "/v1/models" => (
            200,
            json!({"data": [{"id": "a", "owned_by": "vllm"}, {"id": "b", "owned_by": "vllm"}]}),
        ),
        "/tokenize" => (200, json!({"tokens": [5, 6, 7]})),
        _ => not_found(),
    });
    let e = RemoteBackend::connect(opts(&mock), tokenizer(), vec![1])
        .err()
        .unwrap();
    assert!(matches!(e, RemoteError::WhichModel { .. }), "{e:?}");
    assert!(e.to_string().contains("--backend-model"), "{e}");
    let e = RemoteBackend::connect(
        RemoteOptions {
            model: Some("c".into()),
            ..opts(&mock)
        },
        tokenizer(),
        vec![1],
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("serves: a, b"), "{e}");
    let e = RemoteBackend::connect(
        RemoteOptions {
            model: Some("a".into()),
            ..opts(&mock)
        },
        tokenizer(),
        vec![1],
    )
    .err()
    .unwrap();
    assert!(matches!(e, RemoteError::TokenMismatch { .. }), "{e:?}");
}

#[test]
fn a_server_that_is_not_there_is_a_connect_error_after_retries() {
    // A port that was just free.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = RemoteBackend::connect(
        RemoteOptions {
            max_retries: 2,
            backoff: Duration::from_millis(1),
            ..RemoteOptions::new(format!("http://127.0.0.1:{port}"))
        },
        tokenizer(),
        vec![1],
    )
    .err()
    .unwrap();
    match e {
        RemoteError::Connect { tries, .. } => assert_eq!(tries, 3),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[test]
fn what_a_server_cannot_do_is_refused_before_any_request() {
    let mock = Mock::start(|path, body, _| match path {
        "/v1/models" => (200, models("llamacpp")),
        "/tokenize" => tokenize(body),
        _ => not_found(),
    });
    let b = connect(&mock);
    let p = SamplingParams {
        stop_token_ids: vec![3],
        ..SamplingParams::greedy(4)
    };
    let e = b.generate(&[GenRequest::new(ids("1"), 1, p)]).unwrap_err();
    assert!(
        e.to_string()
            .contains("llama.cpp cannot stop on extra token ids"),
        "{e}"
    );
    assert!(mock.completions().is_empty());
    let p = SamplingParams {
        min_tokens: 2,
        ..SamplingParams::greedy(4)
    };
    let e = b.generate(&[GenRequest::new(ids("1"), 1, p)]).unwrap_err();
    assert!(
        e.to_string()
            .contains("llama.cpp cannot hold off stop tokens"),
        "{e}"
    );
    assert!(mock.completions().is_empty());
}

/// llama.cpp gives a character that spans several tokens one logprob entry (the whole character's
/// text and bytes, only its last token's id), as its server did for SmolLM2's two-token `√`: the
/// ids read from such entries do not decode to the text, so the text is re-tokenised instead of
/// failing as a tokenizer mismatch.
#[test]
fn llama_cpp_entries_that_merge_a_character_s_tokens_fall_back_to_the_text() {
    let Some(gguf) = tempering_model::known::smollm2_or_skip(
        "llama_cpp_entries_that_merge_a_character_s_tokens_fall_back_to_the_text",
    ) else {
        return;
    };
    let tok = tempering_model::ModelFiles::open(
        &gguf,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .tokenizer
    .unwrap();
    let text = " √ √";
    let whole = tok.encode(text, false).unwrap();
    assert!(whole.len() > 2, "√ is several tokens: {whole:?}");
    let last = tok.encode(" √", false).unwrap().last().copied().unwrap();
    let entry = json!({"id": last, "token": " √", "logprob": -0.1, "bytes": [32, 226, 136, 154],
                       "top_logprobs": []});
    let choice = json!({"index": 0, "text": text, "finish_reason": "length",
                        "logprobs": {"content": [entry.clone(), entry]}});
    let params = SamplingParams::greedy(whole.len());
    let out = tempering_generate::remote::wire::normalise(
        &choice,
        &tempering_generate::remote::wire::Normalise {
            server: "llama.cpp",
            tokenizer: &tok,
            stop_ids: &[],
            params: &params,
            usage_tokens: None,
        },
    )
    .unwrap();
    assert!(!out.ids_from_server);
    assert_eq!(out.completion.tokens, whole);
    assert_eq!(tok.decode(&out.completion.tokens, false).unwrap(), text);
}

/// A server that answers the probe and holds every `/v1/completions` request open without
/// answering, counting the requests it holds and, once each connection closes, the closes.
fn holding_server() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (held, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, c) = (held.clone(), closed.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (held, closed) = (h.clone(), c.clone());
            std::thread::spawn(move || {
                // One request a connection is what the probe's client may not do: serve them all.
                loop {
                    let Some((path, body, _)) = read_request(&stream) else {
                        return;
                    };
                    let (status, v) = match path.as_str() {
                        "/v1/models" => (200, models("vllm")),
                        "/tokenize" => tokenize(&body),
                        "/v1/completions" => break,
                        _ => not_found(),
                    };
                    let body = v.to_string();
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if stream.write_all(head.as_bytes()).is_err()
                        || stream.write_all(body.as_bytes()).is_err()
                    {
                        return;
                    }
                }
                held.fetch_add(1, Ordering::SeqCst);
                // Never answers; a read of 0 bytes (or an error) is the client leaving.
                let mut buf = [0u8; 64];
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (format!("http://{addr}/v1"), held, closed)
}

#[test]
fn a_cancelled_call_drops_its_requests_and_the_server_sees_them_go() {
    let (url, held, closed) = holding_server();
    let b = RemoteBackend::connect(RemoteOptions::new(url), tokenizer(), vec![1]).unwrap();
    let reqs: Vec<GenRequest> = (0..3)
        .map(|seed| {
            GenRequest::new(
                ids("2+3="),
                1,
                SamplingParams {
                    seed,
                    ..SamplingParams::greedy(200)
                },
            )
        })
        .collect();
    // Cancelled once the server holds all three requests.
    let started = std::time::Instant::now();
    let err = b
        .generate_until(&reqs, &mut |_| {}, &|| held.load(Ordering::SeqCst) == 3)
        .unwrap_err();
    assert!(
        matches!(err, GenError::Remote(RemoteError::Cancelled)),
        "{err:?}"
    );
    assert!(err.to_string().contains("cancelled"), "{err}");
    // Every connection closes at once (not at the 600 s timeout), so the server can stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while closed.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(closed.load(Ordering::SeqCst), 3, "the server saw them go");
    assert!(started.elapsed() < Duration::from_secs(10));

    // The backend serves on: the next call's request goes out (and is cancelled the same way).
    let err = b
        .generate_until(&reqs[..1], &mut |_| {}, &|| {
            held.load(Ordering::SeqCst) == 4
        })
        .unwrap_err();
    assert!(matches!(err, GenError::Remote(RemoteError::Cancelled)));

    // A prompt-logprobs request gives up the same way.
    let err = b
        .prompt_logprobs_until(&ids("2+3="), 1, &|| held.load(Ordering::SeqCst) == 5)
        .unwrap_err();
    assert!(matches!(err, RemoteError::Cancelled), "{err:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while closed.load(Ordering::SeqCst) < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(closed.load(Ordering::SeqCst), 5, "the server saw them go");
}

/// vLLM's `prompt_logprobs` for `prompt`: null first, then the alternatives `alts` (id, logprob;
/// ranks 1, 2, ...) and the prompt's own token at rank 10 + position, logprob -position; at
/// position 2 the own token ranks first instead (then it is one of the alternatives).
fn vllm_prompt_logprobs(prompt: &[u32], alts: &[(u32, f64)]) -> Value {
    let mut out = vec![Value::Null];
    for (i, &t) in prompt.iter().enumerate().skip(1) {
        let mut m = serde_json::Map::new();
        let entry =
            |lp: f64, rank: usize| json!({"logprob": lp, "rank": rank, "decoded_token": "?"});
        if i == 2 {
            m.insert(t.to_string(), entry(-0.05, 1));
            m.insert(alts[0].0.to_string(), entry(alts[0].1, 2));
        } else {
            for (r, &(id, lp)) in alts.iter().enumerate() {
                m.insert(id.to_string(), entry(lp, r + 1));
            }
            m.insert(t.to_string(), entry(-(i as f64), 10 + i));
        }
        out.push(Value::Object(m));
    }
    Value::Array(out)
}

#[test]
fn prompt_logprobs_are_asked_of_vllm_and_refused_on_llama_cpp() {
    let prompt = ids("2+3=");
    let alts = [(ids("9")[0], -0.1), (ids("8")[0], -2.5)];
    let mock = Mock::start(move |path, body, _| match path {
        "/v1/models" => (200, models("vllm")),
        "/tokenize" => tokenize(body),
        "/v1/completions" => {
            let p: Vec<u32> = body["prompt"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let mut c = vllm_choice(0, "5", &[], Value::Null);
            c["prompt_logprobs"] = vllm_prompt_logprobs(&p, &alts);
            (200, json!({"choices": [c]}))
        }
        _ => not_found(),
    });
    let b = connect(&mock);
    let lps = b.prompt_logprobs(&prompt, 2).unwrap();
    let sent = &mock.completions()[0];
    assert_eq!(sent["prompt_logprobs"], 2, "{sent}");
    assert_eq!(sent["max_tokens"], 1, "{sent}");
    assert_eq!(sent["prompt"], json!(prompt), "{sent}");
    assert_eq!(lps.len(), prompt.len());
    assert!(lps[0].is_none(), "nothing before the first token");
    let top = |p: &tempering_generate::PromptLogprob| -> Vec<(u32, f32)> {
        p.top.iter().map(|t| (t.token, t.logprob)).collect()
    };
    let first = lps[1].as_ref().unwrap();
    assert_eq!(
        (first.token, first.logprob, first.rank),
        (prompt[1], -1.0, 11)
    );
    assert_eq!(top(first), vec![(alts[0].0, -0.1), (alts[1].0, -2.5)]);
    let own_first = lps[2].as_ref().unwrap();
    assert_eq!((own_first.token, own_first.rank), (prompt[2], 1));
    assert_eq!(top(own_first), vec![(prompt[2], -0.05), (alts[0].0, -0.1)]);
    assert_eq!(lps[3].as_ref().unwrap().top.len(), 2);

    // One alternative asked for: the best one only.
    let lps = b.prompt_logprobs(&prompt, 1).unwrap();
    assert_eq!(top(lps[1].as_ref().unwrap()), vec![(alts[0].0, -0.1)]);

    // A list of the wrong length is a malformed answer, named.
    let short = Mock::start(move |path, body, _| match path {
        "/v1/models" => (200, models("vllm")),
        "/tokenize" => tokenize(body),
        "/v1/completions" => {
            let mut c = vllm_choice(0, "5", &[], Value::Null);
            c["prompt_logprobs"] = json!([null]);
            (200, json!({"choices": [c]}))
        }
        _ => not_found(),
    });
    let e = connect(&short).prompt_logprobs(&prompt, 2).unwrap_err();
    assert!(matches!(e, RemoteError::BadResponse { .. }), "{e:?}");
    assert!(e.to_string().contains("entries for a prompt of 4"), "{e}");

    // llama.cpp has none: refused before any request, saying so.
    let llama = Mock::start(|path, body, _| match path {
        "/v1/models" => (200, models("llamacpp")),
        "/tokenize" => tokenize(body),
        _ => not_found(),
    });
    let e = connect(&llama).prompt_logprobs(&prompt, 2).unwrap_err();
    assert!(matches!(e, RemoteError::Unsupported { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("llama.cpp cannot return the prompt's logprobs"),
        "{e}"
    );
    assert!(llama.completions().is_empty());

    // A server of unknown make is asked; answering without them is the same refusal.
    let other = Mock::start(|path, body, _| match path {
        "/v1/models" => (200, models("someone")),
        "/tokenize" => tokenize(body),
        "/v1/completions" => (
            200,
            json!({"choices": [{"index": 0, "text": "5", "finish_reason": "length"}]}),
        ),
        _ => not_found(),
    });
    let e = connect(&other).prompt_logprobs(&prompt, 2).unwrap_err();
    assert!(e.to_string().contains("answered without them"), "{e}");
}
