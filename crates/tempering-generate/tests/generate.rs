//! The local engine on SmolLM2-135M (skipped, visibly, when the GGUF is absent): greedy output
//! against transformers, independence from batch mates and padding, logprobs against a full
//! uncached forward, stop rules, and rejection of bad requests.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use tempering_generate::{
    Backend, Completion, FinishReason, GenError, GenEvent, GenRequest, LocalEngine, SamplingParams,
};
use tempering_model::{known, ops, ChatMessage, ModelFiles};

fn engine(test: &str) -> Option<&'static LocalEngine> {
    static ENGINE: OnceLock<Option<LocalEngine>> = OnceLock::new();
    let path = known::smollm2_or_skip(test)?;
    ENGINE
        .get_or_init(|| {
            let files = ModelFiles::open(&path, DType::F32, &Device::Cpu).unwrap();
            let tok = files.tokenizer.clone().unwrap();
            Some(LocalEngine::new(files.transformer().unwrap(), tok))
        })
        .as_ref()
}

fn sampled(max_new_tokens: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        max_new_tokens,
        temperature: 0.9,
        top_k: 50,
        top_p: 0.95,
        seed,
        ..Default::default()
    }
}

fn fixture() -> serde_json::Value {
    let p = known::fixtures_dir().join("generate/smollm2_greedy.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_equals_transformers_token_for_token_alone_and_batched() {
    let Some(e) = engine("greedy_equals_transformers") else {
        return;
    };
    let fx = fixture();
    let prompts = fx["prompts"].as_array().unwrap();
    // The fixture's decoding: EOS neither stops nor is masked.
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(32)
    };
    let reqs: Vec<GenRequest> = prompts
        .iter()
        .map(|p| GenRequest::new(ids(&p["prompt_ids"]), 1, params.clone()))
        .collect();
    // All prompts in one left-padded batch, then each alone.
    let batched = e.generate(&reqs).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let want = ids(&p["new_ids"]);
        let alone = e.generate(&reqs[i..i + 1]).unwrap();
        for (how, got) in [("batched", &batched[i][0]), ("alone", &alone[0][0])] {
            assert_eq!(got.tokens, want, "{} {how}", p["name"]);
            assert_eq!(got.finish_reason, FinishReason::Length);
        }
    }
}

#[test]
fn a_requests_samples_do_not_depend_on_its_batch_mates() {
    let Some(e) = engine("samples_do_not_depend_on_batch_mates") else {
        return;
    };
    let tok = e.tokenizer();
    let mine = GenRequest::new(
        tok.encode("Once upon a time", false).unwrap(),
        3,
        sampled(24, 42),
    );
    let alone = e.generate(std::slice::from_ref(&mine)).unwrap();
    // The three samples differ from each other (they draw from different streams) ...
    assert!(alone[0][0].tokens != alone[0][1].tokens || alone[0][1].tokens != alone[0][2].tokens);
    let longer = GenRequest::new(
        tok.encode("The history of the Roman empire begins with", false)
            .unwrap(),
        2,
        sampled(30, 7),
    );
    let short = GenRequest::new(tok.encode("Hi", false).unwrap(), 1, sampled(5, 1));
    let batch = e.generate(&[longer, mine.clone(), short]).unwrap();
    // ... and each equals itself generated in a padded batch whose mates finish at other times.
    assert_eq!(batch[1], alone[0]);
    assert_eq!(batch[2][0].tokens.len(), 5);
}

#[test]
fn logprobs_equal_log_softmax_of_a_full_uncached_forward() {
    let Some(e) = engine("logprobs_equal_full_forward") else {
        return;
    };
    let prompt = e.tokenizer().encode("def fibonacci(n):", false).unwrap();
    let params = SamplingParams {
        logprobs: true,
        top_logprobs: 3,
        ..sampled(16, 3)
    };
    let out = e
        .generate(&[GenRequest::new(prompt.clone(), 2, params)])
        .unwrap();
    for c in &out[0] {
        let lps = c.logprobs.as_ref().unwrap();
        assert_eq!(lps.len(), c.tokens.len());
        let seq: Vec<u32> = prompt.iter().chain(&c.tokens).copied().collect();
        let logits = e
            .model()
            .forward_causal(
                &Tensor::new(seq.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            )
            .unwrap()
            .squeeze(0)
            .unwrap();
        let n = c.tokens.len();
        let at = logits.narrow(0, prompt.len() - 1, n).unwrap();
        let targets = Tensor::new(c.tokens.as_slice(), &Device::Cpu).unwrap();
        let want = ops::token_logprobs(&at, &targets)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let full = ops::log_softmax_last_dim(&at)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let tops = c.top_logprobs.as_ref().unwrap();
        for i in 0..n {
            assert!(
                (lps[i] - want[i]).abs() < 1e-4,
                "step {i}: {} vs {}",
                lps[i],
                want[i]
            );
            assert!((lps[i] - full[i][c.tokens[i] as usize]).abs() < 1e-4);
            assert_eq!(tops[i].len(), 3);
            let best = full[i].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!((tops[i][0].logprob - best).abs() < 1e-4);
            assert!(tops[i][0].logprob >= tops[i][1].logprob);
        }
    }
}

#[test]
fn stop_strings_cut_the_text_across_token_boundaries() {
    let Some(e) = engine("stop_strings") else {
        return;
    };
    let prompt = e
        .tokenizer()
        .encode("The capital of France is", false)
        .unwrap();
    let free = e
        .generate(&[GenRequest::new(
            prompt.clone(),
            1,
            SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(32)
            },
        )])
        .unwrap()
        .remove(0)
        .remove(0);
    // Fixture continuation: " Paris.\n\nThe population ..." Pick a stop string that spans the
    // end of one token and the start of the next: ".\n" (tokens "." and "\n").
    let stop = ".\n".to_string();
    let cut = free.text.find(&stop).expect("greedy text contains .\\n");
    let params = SamplingParams {
        stop: vec!["never appears".into(), stop.clone()],
        ignore_eos: true,
        ..SamplingParams::greedy(32)
    };
    let mut streamed = String::new();
    let out = e
        .generate_with(&[GenRequest::new(prompt, 1, params)], &mut |ev| {
            if let GenEvent::Token { text, .. } = ev {
                streamed.push_str(text);
            }
        })
        .unwrap()
        .remove(0)
        .remove(0);
    assert_eq!(out.finish_reason, FinishReason::StopString);
    assert_eq!(out.stop_string.as_deref(), Some(".\n"));
    assert_eq!(out.text, free.text[..cut]);
    assert_eq!(streamed, out.text, "the stop string is never streamed");
    // The tokens stop at the one that completed the stop string.
    assert!(out.tokens.len() < free.tokens.len());
    assert_eq!(out.tokens[..], free.tokens[..out.tokens.len()]);
}

#[test]
fn stop_tokens_end_a_chat_turn_and_are_kept_in_the_tokens() {
    let Some(e) = engine("stop_tokens") else {
        return;
    };
    // transformers' greedy continuation of this prompt (EOS ignored) emits <|im_end|> at step 30.
    let fx = fixture();
    let p = &fx["prompts"][1];
    let want = ids(&p["new_ids"]);
    let end = want
        .iter()
        .position(|t| e.model_stop_ids().contains(t))
        .unwrap();
    let out: Completion = e
        .generate(&[GenRequest::new(
            ids(&p["prompt_ids"]),
            1,
            SamplingParams::greedy(64),
        )])
        .unwrap()
        .remove(0)
        .remove(0);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.tokens, want[..=end]);
    assert!(!out.text.contains("<|im_end|>"));
    assert_eq!(out.text, e.tokenizer().decode(&want[..end], false).unwrap());
    // A stop id given by the request ends it as well.
    let first = out.tokens[0];
    let p = ids(&fx["prompts"][1]["prompt_ids"]);
    let params = SamplingParams {
        stop_token_ids: vec![first],
        ..SamplingParams::greedy(20)
    };
    let c = e
        .generate(&[GenRequest::new(p, 1, params)])
        .unwrap()
        .remove(0)
        .remove(0);
    assert_eq!(
        (c.tokens.clone(), c.finish_reason),
        (vec![first], FinishReason::Stop)
    );
    assert_eq!(c.text, "");
}

#[test]
fn bad_requests_are_rejected_with_the_field_named() {
    let Some(e) = engine("bad_requests") else {
        return;
    };
    let ok = GenRequest::new(vec![1, 2, 3], 1, SamplingParams::greedy(4));
    let context = e.model().config.max_position_embeddings;
    let with = |f: &dyn Fn(&mut GenRequest)| {
        let mut r = ok.clone();
        f(&mut r);
        e.generate(&[ok.clone(), r]).unwrap_err()
    };
    let err = with(&|r| r.prompt.clear());
    assert!(matches!(err, GenError::EmptyPrompt { request: 1 }), "{err}");
    let err = with(&|r| r.prompt = vec![1; context]);
    assert!(
        matches!(err, GenError::PromptTooLong { request: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("context"), "{err}");
    for (field, f) in [
        (
            "top_p",
            &(|r: &mut GenRequest| r.params.top_p = 0.0) as &dyn Fn(&mut GenRequest),
        ),
        ("top_p", &|r| r.params.top_p = 1.5),
        ("temperature", &|r| r.params.temperature = -0.5),
        ("temperature", &|r| r.params.temperature = f32::NAN),
        ("min_p", &|r| r.params.min_p = 2.0),
        ("n", &|r| r.n = 0),
        ("prompt", &|r| r.prompt = vec![u32::MAX]),
    ] {
        let err = with(f);
        match &err {
            GenError::InvalidParam {
                request: 1,
                field: got,
                ..
            } => assert_eq!(*got, field),
            other => panic!("{field}: {other}"),
        }
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn unknown_chat_roles_are_rejected() {
    let Some(path) = known::smollm2_or_skip("unknown_chat_roles") else {
        return;
    };
    let files = ModelFiles::open(&path, DType::F32, &Device::Cpu).unwrap();
    let t = files.chat_template.unwrap();
    let msgs = [
        ChatMessage::new("user", "hi"),
        ChatMessage::new("wizard", "x"),
    ];
    let err = tempering_generate::render_chat(&t, &msgs, true).unwrap_err();
    assert!(
        matches!(err, GenError::UnknownRole { index: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("wizard"));
    let text = tempering_generate::render_chat(&t, &msgs[..1], true).unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
}

#[test]
fn a_cloned_cache_decodes_independently_of_its_original() {
    let Some(e) = engine("cloned_cache") else {
        return;
    };
    use tempering_model::TokenLayout;
    let m = e.model();
    let dev = Device::Cpu;
    let prompt: Vec<u32> = vec![504, 3575, 282, 4649, 314];
    let input = Tensor::new(prompt.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let step = |cache: &mut tempering_model::KvCache, tok: u32| {
        let x = Tensor::new(&[[tok]], &dev).unwrap();
        m.forward_last(&x, &TokenLayout::contiguous(1, 1, 5), Some(cache))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let mut a = m.new_cache();
    m.forward_last(&input, &TokenLayout::contiguous(1, 5, 0), Some(&mut a))
        .unwrap();
    let mut b = a.clone();
    let mut fresh = a.clone();
    // The original writes its next keys first; the clone must not see them.
    step(&mut a, 7042);
    let got = step(&mut b, 260);
    let want = step(&mut fresh, 260);
    assert_eq!(got, want);
    assert_eq!((a.len(), b.len()), (6, 6));
    // Nor does the original see the clone's keys: its next step matches an unshared history.
    let x = Tensor::new(&[[13u32]], &dev).unwrap();
    let next = |cache: &mut tempering_model::KvCache| {
        m.forward_last(&x, &TokenLayout::contiguous(1, 1, 6), Some(cache))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let mut solo = m.new_cache();
    let longer = Tensor::new(&[[504u32, 3575, 282, 4649, 314, 7042]], &dev).unwrap();
    m.forward_last(&longer, &TokenLayout::contiguous(1, 6, 0), Some(&mut solo))
        .unwrap();
    let (got, want) = (next(&mut a), next(&mut solo));
    let d = got
        .iter()
        .zip(&want)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-3, "max logit difference {d}");
}
