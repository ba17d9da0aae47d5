//! The remote backend reading streamed answers (`RemoteOptions::stream`) from the mock server:
//! the same completions as whole answers, tokens reported as they come (one event per token, the
//! text adding up), `: ping` comments and CRLF line ends tolerated, a stream without `[DONE]` taken
//! once its choices finished, and a mid-stream error or a cut stream a typed error, not retried.

mod remote_mock;

use remote_mock::*;
/// A vLLM choice as a stream: one chunk per token (its id, its text, its logprob), the finish
/// reason on the last.
fn vllm_chunks(choice: &Value) -> Vec<Value> {
    let ids = choice["token_ids"].as_array().unwrap();
    let text = choice["text"].as_str().unwrap();
    let chars: Vec<char> = text.chars().collect();
    ids.iter()
        .enumerate()
        .map(|(k, id)| {
            let last = k + 1 == ids.len();
            json!({"choices": [{
                "index": choice["index"],
                "text": chars.get(k).map(|c| c.to_string()).unwrap_or_default(),
                "token_ids": [id],
                "logprobs": {"tokens": [format!("token_id:{id}")], "token_logprobs": [-0.5],
                             "top_logprobs": [choice["logprobs"]["top_logprobs"][k]]},
                "finish_reason": if last { choice["finish_reason"].clone() } else { Value::Null },
                "stop_reason": if last { choice["stop_reason"].clone() } else { Value::Null },
            }]})
        })
        .collect()
}

/// SSE events of `chunks` (interleaved as given), with `: ping` comments and CRLF line ends, a
/// usage chunk and `[DONE]` when `done`.
fn sse(chunks: &[Value], done: bool) -> Value {
    let mut out = String::from(": ping\r\n\r\n");
    for c in chunks {
        out.push_str(&format!("data: {c}\r\n\r\n"));
    }
    if done {
        out.push_str("data: {\"choices\": [], \"usage\": {\"completion_tokens\": 9}}\r\n\r\n");
        out.push_str(": ping\n\ndata: [DONE]\n\n");
    }
    json!({ "__sse": out })
}

#[test]
fn streamed_answers_give_the_same_completions_with_tokens_reported_as_they_come() {
    let whole = vec![
        vllm_choice(0, "7", &[1], Value::Null),
        vllm_choice(1, "1+2=3", &[3], json!("\n")),
    ];
    let (a, b) = (vllm_chunks(&whole[0]), vllm_chunks(&whole[1]));
    // The two choices' chunks interleaved, as servers send them.
    let mut interleaved = vec![];
    for k in 0..a.len().max(b.len()) {
        interleaved.extend(a.get(k).cloned());
        interleaved.extend(b.get(k).cloned());
    }
    let w = whole.clone();
    let mock = Mock::start(move |path, body, _| match path {
        "/v1/models" => (200, models("vllm")),
        "/tokenize" => tokenize(body),
        "/v1/completions" if body["stream"] == true => (200, sse(&interleaved, true)),
        "/v1/completions" => (200, json!({"choices": w.clone()})),
        _ => not_found(),
    });
    let params = SamplingParams {
        stop: vec!["\n".into()],
        logprobs: true,
        top_logprobs: 1,
        ..SamplingParams::greedy(8)
    };
    let req = GenRequest::new(ids("1+"), 2, params);
    let plain = connect(&mock).generate(std::slice::from_ref(&req)).unwrap();
    let streaming = RemoteBackend::connect(
        RemoteOptions {
            stream: true,
            ..opts(&mock)
        },
        tokenizer(),
        vec![1],
    )
    .unwrap();
    let mut events: Vec<(usize, u32, String)> = vec![];
    let got = streaming
        .generate_with(std::slice::from_ref(&req), &mut |ev| {
            if let GenEvent::Token {
                sample,
                token,
                text,
                ..
            } = ev
            {
                events.push((*sample, *token, text.to_string()));
            }
        })
        .unwrap();
    assert_eq!(got, plain, "streamed and whole answers differ");
    for (j, c) in got[0].iter().enumerate() {
        let mine: Vec<&(usize, u32, String)> = events.iter().filter(|e| e.0 == j).collect();
        assert_eq!(
            mine.iter().map(|e| e.1).collect::<Vec<_>>(),
            c.tokens,
            "sample {j}: one event per token, in order"
        );
        let text: String = mine.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(text, c.text, "sample {j}: the events' text");
    }
    let sent = mock.completions();
    let last = sent.last().unwrap();
    assert_eq!(last["stream"], true);
    assert_eq!(last["stream_options"]["include_usage"], true);
}

#[test]
fn broken_streams_are_typed_errors_and_not_retried() {
    let choice = vllm_choice(0, "12", &[1], Value::Null);
    let chunks = vllm_chunks(&choice);
    let (c1, c2) = (chunks.clone(), chunks.clone());
    let mock = Mock::start(move |path, body, _| match path {
        "/v1/models" => (200, models("vllm")),
        "/tokenize" => tokenize(body),
        // A mid-stream error chunk.
        "/v1/completions" if body["max_tokens"] == 5 => {
            let mut events = c1[..1].to_vec();
            events.push(json!({"error": {"message": "the engine died", "type": "server_error"}}));
            (200, sse(&events, false))
        }
        // Cut before the choice finished, no [DONE].
        "/v1/completions" if body["max_tokens"] == 6 => (200, sse(&c2[..2], false)),
        // Finished, but no [DONE]: accepted.
        "/v1/completions" => (200, sse(&chunks, false)),
        _ => not_found(),
    });
    let b = RemoteBackend::connect(
        RemoteOptions {
            stream: true,
            ..opts(&mock)
        },
        tokenizer(),
        vec![1],
    )
    .unwrap();
    let run = |max| b.generate(&[GenRequest::new(ids("1+"), 1, SamplingParams::greedy(max))]);
    let e = run(5).unwrap_err();
    assert!(
        matches!(e, GenError::Remote(RemoteError::BadResponse { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("the engine died"), "{e}");
    let e = run(6).unwrap_err();
    assert!(e.to_string().contains("before its choices finished"), "{e}");
    let ok = run(7).unwrap();
    assert_eq!(ok[0][0].tokens, vec![ids("1")[0], ids("2")[0], 1]);
    assert_eq!(ok[0][0].finish_reason, FinishReason::Stop);
    // One request each: a stream that broke is not sent again.
    assert_eq!(mock.completions().len(), 3);
}
