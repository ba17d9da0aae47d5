//! Each rule reward on hand-worked cases, the built-in task verifier on generated problems, chrF
//! against sacrebleu's numbers, and weighted sums.

use proptest::prelude::*;
use tempering_reward::rules::{chrf_score, ChrfParams, OverlongPenalty, TaskVerifier};
use tempering_reward::{build_reward, RewardContext, ScoreInput, Scored, Verifier};
use tempering_tasks::{generate, list_tasks, GenerateSpec, Split};

fn ctx() -> RewardContext {
    RewardContext::default()
}

fn score(spec: &str, input: &ScoreInput<'_>) -> Scored {
    build_reward(spec, &ctx()).unwrap().score(input).unwrap()
}

#[test]
fn task_verifier_accepts_worked_solutions_and_rejects_wrong_answers_for_every_task() {
    for task in list_tasks() {
        let spec = GenerateSpec {
            level: task.default_level(),
            n: 20,
            seed: 7,
            split: Split::Train,
            unique: true,
        };
        let problems = generate(task.as_ref(), &spec).unwrap();
        let v = build_reward(&format!("task_verifier({})", task.name()), &ctx()).unwrap();
        for p in &problems {
            let right = ScoreInput::new(&p.prompt, &p.solution).with_reference(Some(&p.answer));
            assert_eq!(
                v.score(&right).unwrap(),
                Scored {
                    score: 1.0,
                    correct: Some(true)
                }
            );
            let wrong_text = p
                .solution
                .replace(&format!("Answer: {}", p.answer), "Answer: 999999");
            let wrong = ScoreInput::new(&p.prompt, &wrong_text).with_reference(Some(&p.answer));
            assert_eq!(
                v.score(&wrong).unwrap(),
                Scored {
                    score: 0.0,
                    correct: Some(false)
                },
                "{}: {wrong_text:?}",
                task.name()
            );
            let empty = ScoreInput::new(&p.prompt, "").with_reference(Some(&p.answer));
            assert_eq!(v.score(&empty).unwrap().correct, Some(false));
        }
    }
}

#[test]
fn task_verifier_takes_its_task_from_the_context_and_checks_its_inputs() {
    let with_task = RewardContext {
        task: Some("arithmetic".into()),
        level: Some(2),
    };
    let v = build_reward("task_verifier", &with_task).unwrap();
    let ok = ScoreInput::new("Compute: 2+3*4\n", "3*4=12\n2+12=14\nAnswer: 14")
        .with_reference(Some("14"));
    assert_eq!(v.score(&ok).unwrap().correct, Some(true));

    let err = build_reward("task_verifier", &ctx())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("arithmetic") && err.contains("countdown"),
        "{err}"
    );
    let err = build_reward("task_verifier(sorting)", &ctx())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("sorting") && err.contains("arithmetic"),
        "{err}"
    );

    let no_ref = v
        .score(&ScoreInput::new("Compute: 1+1\n", "Answer: 2"))
        .unwrap_err()
        .to_string();
    assert!(no_ref.contains("reference"), "{no_ref}");
    // A reference that does not solve the prompt is the data's fault: said, not scored 0.
    let bad = v
        .score(&ScoreInput::new("Compute: 1+1\n", "Answer: 2").with_reference(Some("3")))
        .unwrap_err()
        .to_string();
    assert!(bad.contains("reference answer"), "{bad}");
    // The typed constructor is the same verifier.
    let direct = TaskVerifier::by_name("arithmetic", None).unwrap();
    assert_eq!(direct.score(&ok).unwrap().correct, Some(true));
}

#[test]
fn format_rule_matches_think_answer_by_default_and_takes_a_pattern() {
    let good = "<think>\n2+2 is 4\n</think>\n<answer>4</answer>";
    let bad = "The answer is 4";
    assert_eq!(score("format", &ScoreInput::new("q", good)).score, 1.0);
    assert_eq!(score("format", &ScoreInput::new("q", bad)).score, 0.0);
    assert_eq!(
        score("format", &ScoreInput::new("q", &format!("{good} trailing"))).score,
        0.0
    );

    // The shorthand takes the rest verbatim, `+`, `*` and parentheses included.
    let spec = r"format=^(\d+\*\d+=\d+\n)+Answer: \d+$";
    assert_eq!(
        score(spec, &ScoreInput::new("q", "3*4=12\nAnswer: 12")).score,
        1.0
    );
    assert_eq!(
        score(spec, &ScoreInput::new("q", "3*4=12\nthe answer 12")).score,
        0.0
    );
    assert_eq!(
        score(spec, &ScoreInput::new("q", "3*4=12\nAnswer: 12")).correct,
        None
    );
    // `.` crosses lines.
    assert_eq!(
        score("format(\"^a.*b$\")", &ScoreInput::new("q", "a\n\nb")).score,
        1.0
    );

    let err = build_reward("format=(unclosed", &ctx())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("format") && err.contains("regular expression"),
        "{err}"
    );
}

fn with_tokens(completion: &str, tokens: usize) -> ScoreInput<'_> {
    let mut i = ScoreInput::new("q", completion);
    i.completion_tokens = tokens;
    i
}

#[test]
fn length_penalty_is_linear_beyond_the_target() {
    let s = |spec: &str, tokens| score(spec, &with_tokens("x", tokens)).score;
    assert_eq!(s("length_penalty", 1000), -1.0);
    assert_eq!(s("length_penalty(0.01, target=100)", 50), 0.0);
    assert!((s("length_penalty(coef=0.01, target=100)", 150) + 0.5).abs() < 1e-12);
    let chars = score(
        "length_penalty(coef=0.5, unit=chars)",
        &ScoreInput::new("q", "héllo"),
    )
    .score;
    assert_eq!(chars, -2.5);
    let err = build_reward("length_penalty", &ctx())
        .unwrap()
        .score(&ScoreInput::new("q", "some text"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unit=chars"), "{err}");
    let err = build_reward("length_penalty(coef=-1)", &ctx())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("coef"), "{err}");
}

#[test]
fn overlong_penalty_follows_dapo() {
    // L_max = 100, L_cache = 20: zero to 80, linear to -1 at 100, -1 beyond.
    let p = OverlongPenalty::new(100, 20).unwrap();
    for (len, want) in [
        (0, 0.0),
        (80, 0.0),
        (81, -0.05),
        (90, -0.5),
        (100, -1.0),
        (101, -1.0),
        (5000, -1.0),
    ] {
        assert!(
            (p.penalty(len) - want).abs() < 1e-12,
            "len {len}: {} vs {want}",
            p.penalty(len)
        );
    }
    let v = build_reward("overlong_penalty(max=100, buffer=20)", &ctx()).unwrap();
    assert!((v.score(&with_tokens("x", 90)).unwrap().score + 0.5).abs() < 1e-12);
    for bad in [
        "overlong_penalty",
        "overlong_penalty(100)",
        "overlong_penalty(max=10, buffer=11)",
        "overlong_penalty(max=10, buffer=0)",
    ] {
        let err = build_reward(bad, &ctx()).err().unwrap().to_string();
        assert!(
            err.contains("overlong_penalty") && err.contains("buffer"),
            "{bad}: {err}"
        );
    }
}

proptest! {
    /// The soft penalty never rises with length and stays in [-1, 0].
    #[test]
    fn overlong_penalty_is_monotone_and_bounded(max in 1usize..500, frac in 0.0f64..1.0, len in 0usize..600) {
        let buffer = ((max as f64 * frac) as usize).clamp(1, max);
        let p = OverlongPenalty::new(max, buffer).unwrap();
        let (a, b) = (p.penalty(len), p.penalty(len + 1));
        prop_assert!((-1.0..=0.0).contains(&a));
        prop_assert!(b <= a);
    }

    /// chrF is in [0, 1] and exactly 1 against itself (when it has any character).
    #[test]
    fn chrf_is_bounded_and_one_on_identity(h in "[a-d ]{0,20}", r in "[a-d ]{0,20}") {
        let p = ChrfParams::default();
        let s = chrf_score(&h, &r, &p);
        prop_assert!((0.0..=1.0).contains(&s));
        if h.chars().any(|c| c != ' ') {
            prop_assert!((chrf_score(&h, &h, &p) - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn chrf_matches_sacrebleu() {
    let path = tempering_model::known::fixtures_dir().join("reward/chrf.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for c in cases {
        let p = &c["params"];
        let params = ChrfParams {
            char_order: p["char_order"].as_u64().unwrap() as usize,
            word_order: p["word_order"].as_u64().unwrap() as usize,
            beta: p["beta"].as_f64().unwrap(),
            lowercase: p["lowercase"].as_bool().unwrap(),
            whitespace: p["whitespace"].as_bool().unwrap(),
        };
        let (h, r) = (
            c["hypothesis"].as_str().unwrap(),
            c["reference"].as_str().unwrap(),
        );
        let want = c["score"].as_f64().unwrap();
        let got = chrf_score(h, r, &params);
        assert!(
            (got - want).abs() < 1e-12,
            "{h:?} vs {r:?} with {p}: {got} vs sacrebleu {want}"
        );
    }
    // The rule is the same function with parameters from the spec.
    let v = build_reward("chrf(word_order=2)", &ctx()).unwrap();
    let case = cases
        .iter()
        .find(|c| c["params"]["word_order"] == 2 && c["score"].as_f64().unwrap() > 0.1)
        .unwrap();
    let input = ScoreInput::new("translate", case["hypothesis"].as_str().unwrap())
        .with_reference(case["reference"].as_str());
    assert!((v.score(&input).unwrap().score - case["score"].as_f64().unwrap()).abs() < 1e-12);
}

#[test]
fn weighted_sums_add_weighted_scores_and_combine_correctness() {
    let good = "<think>6*7</think>\n<answer>Answer: 42</answer>";
    let bare = "Answer: 42";
    let wrong = "<think>6*7</think>\n<answer>Answer: 41</answer>";
    let spec = "0.8*math_answer + 0.2*format";
    let s = |c| score(spec, &ScoreInput::new("q", c).with_reference(Some("42")));
    assert!((s(good).score - 1.0).abs() < 1e-12);
    assert!((s(bare).score - 0.8).abs() < 1e-12);
    assert!((s(wrong).score - 0.2).abs() < 1e-12);
    // Correctness comes from the parts that judge it (format judges none).
    assert_eq!(
        (s(bare).correct, s(wrong).correct),
        (Some(true), Some(false))
    );

    // Negative terms, the batch path and per-part scores agree.
    let v = build_reward(
        "math_answer - 0.001*length_penalty(unit=chars, coef=1)",
        &ctx(),
    )
    .unwrap();
    assert_eq!(
        v.name(),
        "math_answer - 0.001*length_penalty(unit=chars, coef=1)"
    );
    let inputs = [
        ScoreInput::new("q", bare).with_reference(Some("42")),
        ScoreInput::new("q", wrong).with_reference(Some("42")),
    ];
    let batch = v.score_batch(&inputs).unwrap();
    for (i, b) in inputs.iter().zip(&batch) {
        assert_eq!(&v.score(i).unwrap(), b);
    }
    // `- 0.001 * (-len)`: a longer completion gets more, as written.
    assert!((batch[0].score - (1.0 + 0.001 * bare.chars().count() as f64)).abs() < 1e-12);

    let sum = tempering_reward::RewardSpec::parse(spec).unwrap();
    let parts: Vec<_> = sum
        .terms
        .iter()
        .map(|t| (t.weight, t.rule.as_str()))
        .collect();
    assert_eq!(parts, [(0.8, "math_answer"), (0.2, "format")]);
}

#[test]
fn weighted_sum_reports_each_part() {
    use tempering_reward::rules::{FormatReward, MathAnswer};
    let sum = tempering_reward::WeightedSum::new(
        "sum",
        vec![
            (2.0, Box::new(MathAnswer) as Box<dyn Verifier>),
            (0.5, Box::new(FormatReward::new("^A").unwrap())),
        ],
    )
    .unwrap();
    let inputs = [ScoreInput::new("q", "Answer: 3").with_reference(Some("3"))];
    let (parts, totals) = sum.score_parts(&inputs).unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(
        (parts[0].name.as_str(), parts[0].scores[0].score),
        ("math_answer", 1.0)
    );
    assert_eq!(
        (parts[1].name.as_str(), parts[1].scores[0].score),
        ("format", 1.0)
    );
    assert_eq!(
        totals[0],
        Scored {
            score: 2.5,
            correct: Some(true)
        }
    );
}
