//! Process supervision: a PRM's step scores and the outcome become per-token advantages as the
//! formula in `process_advantages` says.

use std::path::Path;

use tempering_generate::FinishReason;

use super::*;

/// Scores a solution whose first step is `4*2=8` all right, any other as wrong from step 2.
struct Scripted;

impl StepScorer for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    fn score_steps(&self, _prompt: &str, steps: &[&str]) -> tempering_reward::Result<Vec<f64>> {
        let right = steps.first() == Some(&"4*2=8");
        Ok((0..steps.len())
            .map(|i| if right || i == 0 { 1.0 } else { 0.0 })
            .collect())
    }
}

fn sample(tok: &Tokenizer, text: &str, reward: f64) -> SampleOut {
    SampleOut {
        completion: tempering_generate::Completion {
            tokens: tok.encode(text, false).unwrap(),
            text: text.to_string(),
            logprobs: None,
            top_logprobs: None,
            finish_reason: FinishReason::Stop,
            stop_string: None,
        },
        reward,
        correct: None,
        verifier: None,
    }
}

#[test]
fn step_scores_and_the_outcome_become_per_token_advantages_as_the_formula_says() {
    let tok = Tokenizer::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/models/tiny-arith-sft/tokenizer.json"),
    )
    .unwrap();
    let prompt = PromptItem {
        text: "Compute: 3+4*2\n".into(),
        ids: tok.encode("Compute: 3+4*2\n", false).unwrap(),
        reference: Some("11".into()),
    };
    let right = "4*2=8\n3+8=11\nAnswer: 11";
    let wrong = "4*2=9\n3+9=12\nAnswer: 12";
    let samples = [sample(&tok, right, 1.0), sample(&tok, wrong, 0.0)];
    let adv = process_advantages(&Scripted, &prompt, &samples, &tok).unwrap();
    // Step scores with the outcome on the last step: right [1, 1, 1+1], wrong [1, 0, 0+0].
    // Over the group's six steps: mean 5/6, unbiased sd sqrt(2.8333/5) = 0.75277; a step's
    // normalised score is (x - 5/6) / (sd + 1e-4), and a token's advantage the sum over its
    // step and the later ones.
    let z = |x: f64| (x - 5.0 / 6.0) / ((2.833_333_3f64 / 5.0).sqrt() + 1e-4);
    let right_steps = [z(1.0) + z(1.0) + z(2.0), z(1.0) + z(2.0), z(2.0)];
    let wrong_steps = [z(1.0) + z(0.0) + z(0.0), z(0.0) + z(0.0), z(0.0)];
    for (text, a, want) in [(right, &adv[0], right_steps), (wrong, &adv[1], wrong_steps)] {
        assert_eq!(a.len(), tok.encode(text, false).unwrap().len());
        // Tokens up to and including a newline belong to the step the newline ends.
        let mut step = 0;
        for (i, line) in text.split('\n').enumerate() {
            let n = tok.encode(line, false).unwrap().len() + usize::from(i < 2);
            for t in &a[step..step + n] {
                assert!(
                    (*t as f64 - want[i]).abs() < 1e-4,
                    "{text}: step {i}: {a:?}"
                );
            }
            step += n;
        }
    }
    // The right solution's every token is pushed up, the wrong one's every token down, most
    // at the step where it went wrong.
    assert!(adv[0].iter().all(|&a| a > 0.0));
    assert!(adv[1].iter().all(|&a| a < 0.0));
}
