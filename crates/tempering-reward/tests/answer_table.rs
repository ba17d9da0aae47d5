//! The correctness table of answer extraction and equivalence: tricky cases with the expected
//! result, then property tests of the invariants.

use proptest::prelude::*;
use tempering_reward::answer::{
    answers_equivalent, extract_final_answer, last_boxed, parse_answer, reference_answer,
    AnswerSource, AnswerValue,
};
use tempering_reward::rules::MathAnswer;
use tempering_reward::{ScoreInput, Verifier};

/// (completion, expected extracted span, how it was found)
const EXTRACTION: &[(&str, &str, AnswerSource)] = &[
    // Boxed, nested braces, the last box wins, \fbox.
    ("so $\\boxed{42}$.", "42", AnswerSource::Boxed),
    (
        "$\\boxed{\\frac{1}{2}}$",
        "\\frac{1}{2}",
        AnswerSource::Boxed,
    ),
    (
        "\\boxed{\\frac{\\sqrt{3}}{2}} done",
        "\\frac{\\sqrt{3}}{2}",
        AnswerSource::Boxed,
    ),
    ("first \\boxed{1} then \\boxed{2}", "2", AnswerSource::Boxed),
    ("\\boxed { 7 }", "7", AnswerSource::Boxed),
    ("\\boxed 5$", "5", AnswerSource::Boxed),
    ("\\fbox{9}", "9", AnswerSource::Boxed),
    // A box beats a later marker.
    ("\\boxed{3}\nAnswer: 4", "3", AnswerSource::Boxed),
    // R1's answer tag: its whole content, or a marker inside it; a box still wins.
    (
        "<think>6*7</think>\n<answer> 42 </answer>",
        "42",
        AnswerSource::AnswerTag,
    ),
    (
        "<think>..</think><answer>Answer: 3/4</answer> 9",
        "3/4",
        AnswerSource::Marker,
    ),
    ("<answer>\\boxed{5}</answer>", "5", AnswerSource::Boxed),
    ("<answer>unclosed 7", "unclosed 7", AnswerSource::AnswerTag),
    // GSM8K hashes: the rest of the line after the last ####.
    (
        "Natalia sold 48/2 = 24 clips.\n#### 72",
        "72",
        AnswerSource::Hashes,
    ),
    ("#### 1,234\nextra text 5", "1,234", AnswerSource::Hashes),
    // Answer markers: the first one, rest of its line, any case.
    ("2 + 3 = 5\nAnswer: 5\nAnswer: 6", "5", AnswerSource::Marker),
    ("answer: -3/4", "-3/4", AnswerSource::Marker),
    (
        "Final Answer: The final answer is $5$. I hope it is correct.",
        "$5$",
        AnswerSource::Marker,
    ),
    // "the answer is": up to the end of the sentence, decimal points kept.
    ("So the answer is 3.5. Done.", "3.5", AnswerSource::AnswerIs),
    (
        "Thus, the answer is: 12 apples",
        "12 apples",
        AnswerSource::AnswerIs,
    ),
    // The last number: signs, separators, decimals, fractions.
    ("we get 3 then 7 then -2", "-2", AnswerSource::LastNumber),
    ("5-3=2", "2", AnswerSource::LastNumber),
    ("difference 10-4", "4", AnswerSource::LastNumber),
    ("(-8)", "-8", AnswerSource::LastNumber),
    (
        "total 1,234,567 dollars",
        "1,234,567",
        AnswerSource::LastNumber,
    ),
    ("pi is about 3.14159.", "3.14159", AnswerSource::LastNumber),
    ("half is 1/2 of it", "1/2", AnswerSource::LastNumber),
    ("a fraction .5", ".5", AnswerSource::LastNumber),
    ("the list 1,2 and 12,34", "34", AnswerSource::LastNumber),
    ("value 2.5e3 units", "2.5e3", AnswerSource::LastNumber),
    ("minus −7", "−7", AnswerSource::LastNumber),
    ("x2 H2O 9", "9", AnswerSource::LastNumber),
];

#[test]
fn extraction_table() {
    for &(text, span, source) in EXTRACTION {
        let got = extract_final_answer(text).unwrap_or_else(|| panic!("nothing found in {text:?}"));
        assert_eq!((got.text, got.source), (span, source), "in {text:?}");
    }
    for text in ["", "no numbers here", "Answer:", "\\boxed{unbalanced"] {
        assert_eq!(extract_final_answer(text), None, "in {text:?}");
    }
}

#[test]
fn unbalanced_box_is_not_an_answer_but_later_markers_still_count() {
    assert_eq!(last_boxed("\\boxed{\\frac{1}{2}"), None);
    let e = extract_final_answer("\\boxed{\\frac{1}{2}\nAnswer: 7").unwrap();
    assert_eq!((e.text, e.source), ("7", AnswerSource::Marker));
}

/// (a, b, equivalent?)
const EQUIVALENCE: &[(&str, &str, bool)] = &[
    ("42", "42.0", true),
    ("42", "42.", true),
    ("1,234", "1234", true),
    ("1{,}234", "1234", true),
    ("12,34", "1234", false),
    ("-3", "−3", true),
    ("-3", "3", false),
    ("+3", "3", true),
    ("0.5", "1/2", true),
    ("\\frac{1}{2}", "0.5", true),
    ("\\dfrac{3}{4}", "0.75", true),
    ("\\frac34", "3/4", true),
    ("-\\frac{3}{4}", "\\frac{-3}{4}", true),
    ("-\\frac{3}{4}", "-0.75", true),
    ("\\frac{6}{8}", "\\frac{3}{4}", true),
    ("2/3", "0.6667", false),
    ("1/3", "0.333333333333", false),
    ("3.50", "3.5", true),
    (".5", "0.5", true),
    ("1e3", "1000", true),
    ("1.5e-3", "0.0015", true),
    ("$5", "5", true),
    ("\\$5.00", "5", true),
    ("5 cm", "5", true),
    ("5\\text{ cm}", "5", true),
    ("5 \\mathrm{cm}^2", "5", true),
    ("90^\\circ", "90", true),
    ("90°", "90", true),
    ("50%", "50", true),
    ("50\\%", "50", true),
    ("12 apples", "12", true),
    ("3 or 4", "3", false),
    ("3 and 4", "4", false),
    ("x = 5", "5", true),
    ("$x=\\frac{1}{2}$", "0.5", true),
    ("\\left( 1, 2 \\right)", "(1,2)", true),
    ("\\text{Yes}", "yes", true),
    ("B", "b", true),
    ("B", "C", false),
    (
        "123456789012345678901234567890",
        "123456789012345678901234567890.0",
        true,
    ),
    (
        "123456789012345678901234567890",
        "123456789012345678901234567891",
        false,
    ),
    ("1/0", "1/0", true),
];

#[test]
fn equivalence_table() {
    for &(a, b, eq) in EQUIVALENCE {
        assert_eq!(
            answers_equivalent(a, b),
            eq,
            "{a:?} vs {b:?}: {:?} vs {:?}",
            parse_answer(a),
            parse_answer(b)
        );
        assert_eq!(answers_equivalent(b, a), eq, "symmetric: {b:?} vs {a:?}");
    }
}

#[test]
fn numbers_parse_to_reduced_values() {
    assert_eq!(parse_answer("\\frac{6}{-8}").vote_key(), "-3/4");
    assert_eq!(parse_answer("1,000,000").vote_key(), "1000000");
    assert_eq!(parse_answer("0.250").vote_key(), "1/4");
    assert!(
        matches!(parse_answer("1/0"), AnswerValue::Text(_)),
        "division by zero is no number"
    );
    assert!(matches!(parse_answer("sqrt(2)"), AnswerValue::Text(_)));
}

#[test]
fn references_may_be_worked_solutions() {
    assert_eq!(
        reference_answer("She sold 48 + 24 = 72 clips.\n#### 72"),
        "72"
    );
    assert_eq!(
        reference_answer("so $\\boxed{\\frac{1}{3}}$"),
        "\\frac{1}{3}"
    );
    assert_eq!(reference_answer("  17 "), "17");
}

/// The rule itself over completions as models write them.
#[test]
fn math_answer_rule_table() {
    let cases: &[(&str, &str, bool)] = &[
        ("Step 1: 6*7 = 42\nAnswer: 42", "42", true),
        ("Step 1: 6*7 = 42\nAnswer: 41", "42", false),
        (
            "The total is $\\boxed{1{,}250}$ dollars",
            "#### 1,250",
            true,
        ),
        (
            "48/2 = 24 clips in May. 48+24 = 72.\n#### 72",
            "She sold 72 clips.\n#### 72",
            true,
        ),
        ("I think the answer is 0.75.", "\\frac{3}{4}", true),
        ("Answer: 3/4 of the cake", "0.75", true),
        ("the temperature fell to -5 degrees", "-5", true),
        ("the temperature fell by 5 degrees", "-5", false),
        ("no idea", "3", false),
        ("Answer: B", "B", true),
    ];
    for &(completion, reference, correct) in cases {
        let s = MathAnswer
            .score(&ScoreInput::new("q", completion).with_reference(Some(reference)))
            .unwrap();
        assert_eq!(s.correct, Some(correct), "{completion:?} vs {reference:?}");
        assert_eq!(s.score, if correct { 1.0 } else { 0.0 });
    }
    let err = MathAnswer
        .score(&ScoreInput::new("q", "Answer: 1"))
        .unwrap_err();
    assert!(err.to_string().contains("reference"), "{err}");
}

proptest! {
    /// Any integer, written with or without thousands separators, in a box, after hashes or a
    /// marker, or last in a sentence, is extracted and equals itself.
    #[test]
    fn integers_survive_every_layout(n in -10_000_000i64..10_000_000, layout in 0usize..5, sep in any::<bool>()) {
        let plain = n.to_string();
        let written = if sep { with_commas(n) } else { plain.clone() };
        let text = match layout {
            0 => format!("so we get $\\boxed{{{written}}}$."),
            1 => format!("work 1 2 3\n#### {written}"),
            2 => format!("step 7\nAnswer: {written}\n"),
            3 => format!("Hence the answer is {written}. Bye"),
            _ => format!("we add 3 and get {written}."),
        };
        let found = extract_final_answer(&text).expect("an answer");
        prop_assert!(answers_equivalent(found.text, &plain), "{:?} from {:?}", found, text);
        prop_assert!(!answers_equivalent(found.text, &(n + 1).to_string()));
    }

    /// A fraction equals its decimal expansion when that expansion is exact, and every spelling
    /// of it has the same vote key.
    #[test]
    fn fractions_and_decimals_agree(p in -999i64..999, q2 in 0u32..4, q5 in 0u32..4) {
        let q = 2i64.pow(q2) * 5i64.pow(q5);
        let decimal = format!("{}", p as f64 / q as f64);
        let slash = format!("{p}/{q}");
        let latex = if p < 0 { format!("-\\frac{{{}}}{{{q}}}", -p) } else { format!("\\frac{{{p}}}{{{q}}}") };
        prop_assert!(answers_equivalent(&slash, &decimal), "{} vs {}", slash, decimal);
        prop_assert!(answers_equivalent(&latex, &slash));
        prop_assert_eq!(parse_answer(&latex).vote_key(), parse_answer(&decimal).vote_key());
    }

    /// Extraction never panics and returns a span of the input.
    #[test]
    fn extraction_is_total(text in "[ -~\n−°]{0,60}") {
        if let Some(e) = extract_final_answer(&text) {
            prop_assert!(text.contains(e.text));
        }
        let _ = parse_answer(&text);
    }

    /// Equivalence is reflexive on anything and symmetric.
    #[test]
    fn equivalence_is_reflexive_and_symmetric(a in "[-0-9./,a-c\\\\{}$ ]{1,12}", b in "[-0-9./,a-c\\\\{}$ ]{1,12}") {
        prop_assert!(answers_equivalent(&a, &a));
        prop_assert_eq!(answers_equivalent(&a, &b), answers_equivalent(&b, &a));
    }
}

fn with_commas(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}
