//! Step-wise decoding ([`DecodeBatch`]) on the committed tiny arithmetic model: requests joining a
//! batch mid-decode, at different steps, with different lengths and `n`, get token for token what
//! they get decoded alone (greedy and seeded sampling, logprobs within rounding), and a cancelled
//! request leaves its batch mates' results unchanged. Also a whole call given up midway
//! ([`LocalEngine::generate_until`]).

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use tempering_generate::{
    Backend, Completion, DecodeBatch, GenEvent, GenRequest, LocalEngine, SamplingParams,
};
use tempering_model::{known, ModelFiles};

fn engine() -> LocalEngine {
    let dir = known::fixtures_dir().join("models/tiny-arith-sft");
    let files = ModelFiles::open(&dir, DType::F32, &Device::Cpu).expect("the tiny model");
    let tok = files.tokenizer.clone().expect("its tokenizer");
    LocalEngine::new(files.transformer().expect("its weights"), tok)
}

fn requests(e: &LocalEngine) -> Vec<GenRequest> {
    let prompts = [
        "Compute: 3+4*2\n",
        "Compute: 12-5\n",
        "Compute: 7*8+1\n",
        "Compute: 9\n",
    ];
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ids = e.tokenizer().encode(p, true).unwrap();
            let params = SamplingParams {
                max_new_tokens: 10 + 7 * i,
                temperature: if i % 2 == 0 { 0.0 } else { 1.0 },
                seed: 100 + i as u64,
                ignore_eos: i == 2,
                logprobs: true,
                top_logprobs: if i == 1 { 2 } else { 0 },
                ..Default::default()
            };
            GenRequest::new(ids, 1 + i % 2, params)
        })
        .collect()
}

/// Admits request `i` before step `when[i]` (those due at one step together), steps until all
/// finish; results by request.
fn stepwise(
    e: &LocalEngine,
    reqs: &[GenRequest],
    when: &[usize],
    cancel: Option<(usize, usize)>,
) -> BTreeMap<usize, Vec<Completion>> {
    let mut batch = DecodeBatch::new();
    let mut out = BTreeMap::new();
    let mut streamed: BTreeMap<(usize, usize), String> = BTreeMap::new();
    let mut step = 0;
    let mut most = 0;
    loop {
        // The requests due at this step join together (one prefill).
        let due: Vec<(usize, &GenRequest)> = reqs
            .iter()
            .enumerate()
            .filter(|&(i, _)| when[i] == step)
            .collect();
        batch.admit_many(e, &due).unwrap();
        if let Some((id, at)) = cancel {
            if at == step {
                batch.cancel(id).unwrap();
            }
        }
        most = most.max(batch.requests());
        if batch.is_empty() && when.iter().all(|&w| w < step) {
            break;
        }
        let done = batch
            .step(e, &mut |ev| {
                if let GenEvent::Token {
                    request,
                    sample,
                    text,
                    ..
                } = ev
                {
                    streamed
                        .entry((*request, *sample))
                        .or_default()
                        .push_str(text);
                }
            })
            .unwrap();
        for (id, cs) in done {
            // What was streamed is the text.
            for (j, c) in cs.iter().enumerate() {
                assert_eq!(streamed[&(id, j)], c.text, "request {id} sample {j}");
            }
            assert!(out.insert(id, cs).is_none(), "request {id} finished twice");
        }
        step += 1;
        assert!(step < 1000, "the batch never emptied");
    }
    assert!(
        most >= 3,
        "the requests never shared a batch ({most} at most)"
    );
    out
}

fn assert_same(a: &[Completion], b: &[Completion], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.tokens, y.tokens, "{what}");
        assert_eq!(x.text, y.text, "{what}");
        assert_eq!(x.finish_reason, y.finish_reason, "{what}");
        let (lx, ly) = (x.logprobs.as_ref().unwrap(), y.logprobs.as_ref().unwrap());
        for (p, q) in lx.iter().zip(ly) {
            assert!((p - q).abs() < 1e-4, "{what}: logprob {p} vs {q}");
        }
        assert_eq!(x.top_logprobs.is_some(), y.top_logprobs.is_some(), "{what}");
    }
}

#[test]
fn requests_joining_mid_decode_match_solo_decoding() {
    let e = engine();
    let reqs = requests(&e);
    let solo: Vec<Vec<Completion>> = reqs
        .iter()
        .map(|r| e.generate(std::slice::from_ref(r)).unwrap().remove(0))
        .collect();
    // Lengths differ, so rows leave at different steps while others join.
    assert!(solo.iter().any(|c| c[0].tokens.len() > 12), "{solo:?}");
    for when in [[0, 0, 0, 0], [0, 3, 5, 6], [2, 0, 9, 1]] {
        let got = stepwise(&e, &reqs, &when, None);
        assert_eq!(got.len(), reqs.len());
        for (i, s) in solo.iter().enumerate() {
            assert_same(&got[&i], s, &format!("request {i}, admitted at {when:?}"));
        }
    }
}

#[test]
fn a_cancelled_request_leaves_the_others_unchanged() {
    let e = engine();
    let reqs = requests(&e);
    let solo: Vec<Vec<Completion>> = reqs
        .iter()
        .map(|r| e.generate(std::slice::from_ref(r)).unwrap().remove(0))
        .collect();
    let got = stepwise(&e, &reqs, &[0, 1, 2, 2], Some((2, 4)));
    assert!(!got.contains_key(&2), "the cancelled request reported");
    for i in [0, 1, 3] {
        assert_same(&got[&i], &solo[i], &format!("request {i}"));
    }
    // Bad requests are refused at admission, the batch untouched.
    let mut batch = DecodeBatch::new();
    let mut bad = reqs[0].clone();
    bad.prompt = vec![];
    assert!(batch.admit(&e, 0, &bad).is_err());
    assert!(batch.is_empty());
    batch.admit(&e, 0, &reqs[0]).unwrap();
    assert!(batch.admit(&e, 0, &reqs[1]).is_err(), "a duplicate id");
    assert_eq!(batch.requests(), 1);
    // Admitted together: one bad request or a repeated id refuses all, the batch as it was.
    let rows = batch.rows();
    assert!(batch.admit_many(&e, &[(1, &reqs[1]), (2, &bad)]).is_err());
    assert!(batch
        .admit_many(&e, &[(1, &reqs[1]), (1, &reqs[2])])
        .is_err());
    assert_eq!((batch.requests(), batch.rows()), (1, rows));
    batch
        .admit_many(&e, &[(1, &reqs[1]), (2, &reqs[2])])
        .unwrap();
    assert_eq!(batch.requests(), 3);
}

#[test]
fn a_call_given_up_stops_within_a_step_and_says_cancelled() {
    let e = engine();
    let prompt = e.tokenizer().encode("Compute: 3+4*2\n", true).unwrap();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(200)
    };
    let reqs = [GenRequest::new(prompt, 8, params)];
    // Not given up: the same as generate.
    let whole = e.generate_until(&reqs, &mut |_| {}, &|| false).unwrap();
    assert_eq!(whole, e.generate(&reqs).unwrap());
    // Given up after 5 steps (8 rows each): no more tokens come, and the call says why.
    let tokens = std::cell::Cell::new(0usize);
    let err = e
        .generate_until(
            &reqs,
            &mut |ev| {
                if let GenEvent::Token { .. } = ev {
                    tokens.set(tokens.get() + 1);
                }
            },
            &|| tokens.get() >= 5 * 8,
        )
        .unwrap_err();
    assert!(
        matches!(err, tempering_generate::GenError::Cancelled),
        "{err}"
    );
    assert_eq!(tokens.get(), 5 * 8, "tokens generated after giving up");
    // Given up before it starts: nothing runs.
    let err = e.generate_until(&reqs, &mut |_| panic!("an event"), &|| true);
    assert!(matches!(err, Err(tempering_generate::GenError::Cancelled)));
}

#[test]
fn smollm2_requests_joining_mid_decode_match_solo_greedy() {
    // The real model (skipped, saying so, when its GGUF is absent): padding and mixed positions
    // in one batch must not change a greedy token.
    let Some(path) = known::smollm2_or_skip("smollm2_requests_joining_mid_decode") else {
        return;
    };
    let files = ModelFiles::open(&path, DType::F32, &Device::Cpu).unwrap();
    let tok = files.tokenizer.clone().unwrap();
    let e = LocalEngine::new(files.transformer().unwrap(), tok);
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, there was a little",
    ];
    let reqs: Vec<GenRequest> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let params = SamplingParams {
                ignore_eos: true,
                logprobs: true,
                ..SamplingParams::greedy(16 + 4 * i)
            };
            GenRequest::new(e.tokenizer().encode(p, true).unwrap(), 1, params)
        })
        .collect();
    let solo: Vec<Vec<Completion>> = reqs
        .iter()
        .map(|r| e.generate(std::slice::from_ref(r)).unwrap().remove(0))
        .collect();
    // Joining one by one, and two prompts of different lengths prefilled together.
    for when in [[0, 5, 11], [0, 0, 7]] {
        let got = stepwise(&e, &reqs, &when, None);
        for (i, s) in solo.iter().enumerate() {
            assert_same(
                &got[&i],
                s,
                &format!("SmolLM2 request {i}, admitted at {when:?}"),
            );
        }
    }
}
