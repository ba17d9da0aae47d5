//! The self-evaluation scorer: its score is exactly P(yes) / (P(yes) + P(no)) of the model's
//! next-token distribution (checked against an unbatched forward pass on a small random model with
//! large logits), batching and padding change nothing, steps are judged prefix by prefix; and on
//! SmolLM2 the verdict tokens are the right ones.

use candle_core::{DType, Device, Tensor};
use tempering_model::{Architecture, ModelConfig, Tokenizer, Transformer};
use tempering_reward::{ScoreInput, SelfEvalConfig, SelfEvaluator, StepScorer, Verifier};

fn char_tokenizer() -> Tokenizer {
    Tokenizer::char_level((' '..='~').chain(['\n'])).unwrap()
}

/// A random 2-layer model whose logits spread over several units, so that the verdict
/// probabilities differ clearly between prompts.
fn random_model(tok: &Tokenizer) -> Transformer {
    let config = ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: tok.vocab_size(),
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 1024,
        tie_word_embeddings: true,
        attention_bias: false,
        sliding_window: None,
        bos_token_id: None,
        eos_token_ids: vec![1],
    };
    let mut m = Transformer::init_random(&config, 11, &Device::Cpu, DType::F32).unwrap();
    m.embed_tokens = (m.embed_tokens * 60.0).unwrap();
    m
}

fn config(batch_size: usize) -> SelfEvalConfig {
    SelfEvalConfig {
        batch_size,
        ..SelfEvalConfig::default()
    }
}

/// P(yes) / (P(yes) + P(no)) from a plain forward pass over one unpadded prompt: full softmax,
/// probabilities summed over each verdict's tokens.
fn reference_p_yes(model: &Transformer, ids: &[u32], yes: &[u32], no: &[u32]) -> f64 {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward_causal(&input).unwrap().squeeze(0).unwrap();
    let last: Vec<f32> = logits.get(ids.len() - 1).unwrap().to_vec1().unwrap();
    let m = last.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = last.iter().map(|&x| (x as f64 - m).exp()).sum();
    let p = |ids: &[u32]| {
        ids.iter()
            .map(|&i| (last[i as usize] as f64 - m).exp() / z)
            .sum::<f64>()
    };
    p(yes) / (p(yes) + p(no))
}

#[test]
fn score_is_the_verdict_probability_ratio_whatever_the_batching() {
    let tok = char_tokenizer();
    let model = random_model(&tok);
    let judge = SelfEvaluator::new(model.clone(), tok.clone(), None, config(3)).unwrap();
    let (yes, no) = judge.verdict_ids();
    let (yes, no) = (yes.to_vec(), no.to_vec());
    // `Yes`, ` Yes`, `yes`, ...: the first characters; the shared space is dropped.
    let chars = |ids: &[u32]| {
        ids.iter()
            .map(|&i| tok.decode(&[i], false).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        (chars(&yes), chars(&no)),
        (
            vec!["Y".to_string(), "y".into()],
            vec!["N".to_string(), "n".into()]
        )
    );

    let texts: Vec<String> = [
        "Compute: 2+2",
        "Compute: 12*(3+4)-5 and say why",
        "x",
        "Make 24 from: 3 4 6 1",
        "Convert 13 to base 2:",
        "a much longer prompt, to make the padding of the others deep enough to matter at all",
        "Answer: 7",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    let batched = judge.p_yes(&texts).unwrap();
    let mut distinct = batched.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup_by(|a, b| (*a - *b).abs() < 1e-3);
    assert!(
        distinct.len() >= 4,
        "the test model should tell prompts apart: {batched:?}"
    );
    for (text, got) in texts.iter().zip(&batched) {
        let ids = tok.encode(text, true).unwrap();
        let want = reference_p_yes(&model, &ids, &yes, &no);
        assert!((got - want).abs() < 1e-5, "{text:?}: {got} vs {want}");
        assert!((0.0..=1.0).contains(got));
    }
    // One at a time gives the same numbers as any batch size.
    let single = SelfEvaluator::new(model, tok, None, config(1)).unwrap();
    for (a, b) in single.p_yes(&texts).unwrap().iter().zip(&batched) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn verifier_and_step_scorer_judge_the_right_texts() {
    let tok = char_tokenizer();
    let judge = SelfEvaluator::new(random_model(&tok), tok, None, config(4)).unwrap();
    let input = ScoreInput::new("Compute: 2+3*4", "3*4=12\n2+12=14\nAnswer: 14");
    let s = judge.score(&input).unwrap();
    assert_eq!(s.correct, None);
    let direct = judge
        .p_yes(&[judge.answer_prompt(input.prompt, input.completion)])
        .unwrap()[0];
    assert!((s.score - direct).abs() < 1e-9);

    let steps = ["3*4=12", "2+12=14", "Answer: 14"];
    let scores = judge.score_steps("Compute: 2+3*4", &steps).unwrap();
    assert_eq!(scores.len(), 3);
    for k in 1..=3 {
        let prompt = judge.step_prompt("Compute: 2+3*4", &steps[..k]);
        assert!(
            prompt.contains(&format!("\"{}\"", steps[k - 1])),
            "{prompt}"
        );
        assert!(
            k == 3 || !prompt.contains(steps[k]),
            "a prefix must not show later steps"
        );
        let want = judge.p_yes(&[prompt]).unwrap()[0];
        assert!((scores[k - 1] - want).abs() < 1e-5);
    }
    // Several items at once: the same scores, split back per item.
    let items = vec![
        ("Compute: 2+3*4", steps.to_vec()),
        ("Compute: 1+1", vec!["1+1=2", "Answer: 2"]),
    ];
    let both = judge.score_steps_batch(&items).unwrap();
    assert_eq!(both[1].len(), 2);
    for (a, b) in both[0].iter().zip(&scores) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn a_tokenizer_without_verdict_tokens_is_a_clear_error() {
    let tok = Tokenizer::char_level("0123456789+-*=: \n".chars()).unwrap();
    let err = SelfEvaluator::new(random_model(&tok), tok, None, config(2))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("yes verdict") && err.contains("Yes"), "{err}");
    let tok = char_tokenizer();
    let err = SelfEvaluator::new(random_model(&tok), tok, None, config(0))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("batch_size"), "{err}");
}

/// On a real BPE vocabulary with its chat template: whole-word verdict tokens, the model follows
/// an instruction to answer Yes or No, and the score equals the ratio from a plain forward pass over
/// the chat-rendered prompt. (Judging arithmetic is beyond this 135M model: on 12 easy sums it put
/// the correct answer above a wrong one 7 times, chance level; measured, not asserted.)
#[test]
fn smollm2_verdict_follows_instructions() {
    let Some(path) =
        tempering_model::known::smollm2_or_skip("smollm2_verdict_follows_instructions")
    else {
        return;
    };
    let files = tempering_model::ModelFiles::open(&path, DType::F32, &Device::Cpu).unwrap();
    let tok = files.tokenizer.clone().unwrap();
    let model = files.transformer().unwrap();
    let judge = SelfEvaluator::new(
        model.clone(),
        tok.clone(),
        files.chat_template.clone(),
        SelfEvalConfig::default(),
    )
    .unwrap();
    let (yes, no) = judge.verdict_ids();
    let pieces = |ids: &[u32]| {
        ids.iter()
            .map(|&i| tok.id_to_piece(i).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(
        pieces(yes).contains(&"ĠYes".to_string()) && pieces(yes).contains(&"Yes".to_string()),
        "{:?}",
        pieces(yes)
    );
    assert!(
        pieces(no).contains(&"No".to_string()) && !pieces(yes).iter().any(|p| p == "Y"),
        "{:?}",
        pieces(no)
    );

    let texts = [
        "Reply with the single word Yes.".to_string(),
        "Reply with the single word No.".to_string(),
    ];
    let p = judge.p_yes(&texts).unwrap();
    eprintln!(
        "SmolLM2 P(yes) when told to say Yes: {:.3}, told to say No: {:.3}",
        p[0], p[1]
    );
    assert!(p[0] > 0.7 && p[1] < 0.3, "{p:?}");

    let ids = judge.encode_judgement(&texts[0]).unwrap();
    assert!(
        tok.decode(&ids, false)
            .unwrap()
            .contains("<|im_start|>assistant"),
        "the chat template opens the assistant turn"
    );
    let want = reference_p_yes(&model, &ids, yes, no);
    assert!((p[0] - want).abs() < 1e-4, "{} vs {want}", p[0]);
}
