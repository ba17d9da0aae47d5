//! The reward spec language: what parses to what, canonical printing that parses back, TOML
//! forms, and errors that say what was expected.

use proptest::prelude::*;
use serde::Deserialize;
use tempering_reward::spec::{RewardArg, RewardTerm};
use tempering_reward::{build_reward, RewardContext, RewardSpec, RULE_NAMES};

fn arg(key: Option<&str>, value: &str) -> RewardArg {
    RewardArg {
        key: key.map(str::to_string),
        value: value.to_string(),
    }
}

fn term(weight: f64, rule: &str, args: Vec<RewardArg>) -> RewardTerm {
    RewardTerm {
        weight,
        rule: rule.to_string(),
        args,
    }
}

#[test]
fn specs_parse_to_terms() {
    let cases: Vec<(&str, Vec<RewardTerm>)> = vec![
        ("task_verifier", vec![term(1.0, "task_verifier", vec![])]),
        ("  math_answer  ", vec![term(1.0, "math_answer", vec![])]),
        (
            "0.8*math_answer+0.2*format",
            vec![
                term(0.8, "math_answer", vec![]),
                term(0.2, "format", vec![]),
            ],
        ),
        (
            "math_answer - 0.1 * length_penalty(coef=0.01, target=256)",
            vec![
                term(1.0, "math_answer", vec![]),
                term(
                    -0.1,
                    "length_penalty",
                    vec![arg(Some("coef"), "0.01"), arg(Some("target"), "256")],
                ),
            ],
        ),
        ("-2*format()", vec![term(-2.0, "format", vec![])]),
        (
            r#"format("^<think>.*</think>, ""ok"" \d\")"#,
            vec![term(
                1.0,
                "format",
                vec![arg(None, r#"^<think>.*</think>, "ok" \d\"#)],
            )],
        ),
        (
            r"format('\d+ (a|b)')",
            vec![term(1.0, "format", vec![arg(None, r"\d+ (a|b)")])],
        ),
        (
            "task_verifier(countdown, level=3)",
            vec![term(
                1.0,
                "task_verifier",
                vec![arg(None, "countdown"), arg(Some("level"), "3")],
            )],
        ),
        // The shorthand: everything after the first `=` verbatim.
        (
            "format=^<think>.*?</think>\\s*<answer>(a+b)*</answer>$",
            vec![term(
                1.0,
                "format",
                vec![arg(None, "^<think>.*?</think>\\s*<answer>(a+b)*</answer>$")],
            )],
        ),
        (
            "overlong_penalty=4096",
            vec![term(1.0, "overlong_penalty", vec![arg(None, "4096")])],
        ),
    ];
    for (text, want) in cases {
        let got = RewardSpec::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(got.terms, want, "{text:?}");
        // The canonical print parses back to the same spec.
        let printed = got.to_string();
        assert_eq!(
            RewardSpec::parse(&printed).unwrap(),
            got,
            "{text:?} printed as {printed:?}"
        );
    }
}

#[test]
fn bad_specs_say_what_was_expected() {
    let cases = [
        ("", "known rewards"),
        ("0.5*", "reward name"),
        ("0.5 math_answer", "`*`"),
        ("math_answer +", "reward name"),
        ("math_answer format", "expected `+`"),
        ("format(\"abc", "unterminated"),
        ("format(a b)", "`,` or `)`"),
        ("format(,)", "expected a value"),
        ("0.5*format=abc", "NAME(\"VALUE\")"),
        ("1e999*format", "not a number"),
    ];
    for (text, needle) in cases {
        let err = RewardSpec::parse(text)
            .err()
            .unwrap_or_else(|| panic!("{text:?} parsed"))
            .to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

#[test]
fn unknown_names_and_parameters_list_the_known_ones() {
    let ctx = RewardContext::default();
    let err = build_reward("0.5*math_answer + 0.5*rouge", &ctx)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("rouge"), "{err}");
    for name in RULE_NAMES {
        assert!(err.contains(name), "{err} should list {name}");
    }
    let err = build_reward("length_penalty(coeff=0.1)", &ctx)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("coeff") && err.contains("coef, target, unit"),
        "{err}"
    );
    let err = build_reward("math_answer(strict)", &ctx)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("takes no parameters"), "{err}");
    let err = build_reward("format(a, b)", &ctx)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("first argument"), "{err}");
    let err = build_reward("chrf(beta=x)", &ctx)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`beta` must be a number"), "{err}");
    let err = build_reward("chrf(lowercase=yes)", &ctx)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("true or false"), "{err}");
    let err = build_reward("format(\"a\", pattern=b)", &ctx)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("both"), "{err}");
}

#[derive(Deserialize, serde::Serialize)]
struct Config {
    reward: RewardSpec,
}

#[test]
fn toml_takes_a_string_or_tables_and_writes_the_canonical_string() {
    let a: Config = toml::from_str(r#"reward = "0.8*math_answer + 0.2*format""#).unwrap();
    let b: Config = toml::from_str(
        r#"
        [[reward]]
        name = "math_answer"
        weight = 0.8

        [[reward]]
        name = "length_penalty"
        weight = 0.2
        coef = 0.5
        unit = "chars"
        "#,
    )
    .unwrap();
    assert_eq!(a.reward.terms[0], b.reward.terms[0]);
    assert_eq!(
        b.reward.terms[1],
        term(
            0.2,
            "length_penalty",
            vec![arg(Some("coef"), "0.5"), arg(Some("unit"), "chars")]
        )
    );
    // Written back as one string (resolved configs), which reads back the same.
    let text = toml::to_string(&b).unwrap();
    assert!(
        text.contains("reward = \"0.8*math_answer + 0.2*length_penalty(coef=0.5, unit=chars)\""),
        "{text}"
    );
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back.reward, b.reward);

    let err = toml::from_str::<Config>("reward = \"math_answer +\"")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("reward name"), "{err}");
    let err = toml::from_str::<Config>("[[reward]]\nweight = 1.0")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("reward #1") && err.contains("name"), "{err}");
}

fn rule_name() -> impl Strategy<Value = String> {
    prop::sample::select(RULE_NAMES.to_vec()).prop_map(str::to_string)
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9_.]{1,6}", "[ -~]{0,10}"]
}

proptest! {
    /// Any spec prints to text that parses back to the same spec.
    #[test]
    fn canonical_text_round_trips(
        terms in prop::collection::vec(
            (-100i32..100, rule_name(), prop::option::of(value()), prop::collection::vec(("[a-z]{1,5}", value()), 0..3)),
            1..4,
        )
    ) {
        let terms: Vec<RewardTerm> = terms
            .into_iter()
            .map(|(w, rule, first, named)| {
                let mut args: Vec<RewardArg> = first.into_iter().map(|v| arg(None, &v)).collect();
                args.extend(named.iter().map(|(k, v)| arg(Some(k), v)));
                term(f64::from(w) / 4.0, &rule, args)
            })
            .filter(|t| t.weight != 0.0)
            .collect();
        prop_assume!(!terms.is_empty());
        let spec = RewardSpec { terms };
        let text = spec.to_string();
        let back = RewardSpec::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(back, spec, "{}", text);
    }

    /// Parsing arbitrary text never panics.
    #[test]
    fn parsing_is_total(text in "[ -~]{0,40}") {
        let _ = RewardSpec::parse(&text);
    }
}
