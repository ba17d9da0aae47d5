//! The budget is never exceeded, whatever the strategy and the limits (property test); what a
//! sample leaves unused is granted to the next ones, so a budget that holds the samples' real
//! lengths gets every sample (property tests); seeded runs are reproducible; bad input gets a clear
//! error.

use proptest::prelude::*;
use tempering_search::fake::{ByteEncoder, FnStepScorer, FnVerifier, ScriptedBackend};
use tempering_search::{
    parse_strategy, solve, Budget, Scorers, SearchConfig, SearchContext, SearchError, SearchProblem,
};

const SPECS: &[&str] = &[
    "greedy",
    "sample",
    "sc@6",
    "wsc@4",
    "esc@8:w=2",
    "adaptive@8:w=3",
    "bon@5:prod",
    "beam:2x3",
    "dvts:3x2",
    "lookahead:2x2:k=2",
    "tot-bfs:2x3",
    "tot-dfs:3:thr=0.3",
    "mcts:6:k=2",
    "mcts:4:k=2:rollout",
    "refine:3",
    "got",
];

fn backend() -> ScriptedBackend {
    let mut b = ScriptedBackend::new().otherwise(&[
        "12+3=15\nAnswer: 15",
        "1\n2\n3\nAnswer: 6",
        "step one\nstep two\nAnswer: 7",
        "Answer: 7",
        "a much longer step that runs on\nAnswer: 15",
        "no answer here at all",
    ]);
    b.by_seed = true;
    b
}

fn prm() -> FnStepScorer {
    FnStepScorer::per_step(|s| (s.len() % 7) as f64 / 7.0)
}

fn verifier() -> FnVerifier {
    FnVerifier(Box::new(|t| (t.len() % 5) as f64 / 5.0))
}

fn config(seed: u64) -> SearchConfig {
    let mut c = SearchConfig {
        seed,
        step_max_tokens: 24,
        max_depth: 6,
        ..SearchConfig::default()
    };
    c.sampling.max_new_tokens = 48;
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn no_strategy_spends_past_its_budget(
        which in 0..SPECS.len(),
        tokens in 48usize..600,
        calls in proptest::option::of(1usize..12),
        seed in 0u64..1000,
        min_sample in 0usize..30,
    ) {
        let (b, p, v) = (backend(), prm(), verifier());
        let budget = Budget { max_tokens: Some(tokens), max_calls: calls, max_wall: None };
        let strategy = parse_strategy(SPECS[which], Some("arithmetic")).unwrap();
        let scorers = Scorers { verifier: Some(&v), step: Some(&p) };
        let config = SearchConfig { min_sample_tokens: min_sample, ..config(seed) };
        let mut ctx = SearchContext::new(&b, &ByteEncoder, scorers, config, budget);
        let s = solve(strategy.as_ref(), &SearchProblem::new("Compute: 12+3\n"), &mut ctx).unwrap();
        prop_assert!(s.cost.generated_tokens <= tokens, "{} spent {} of {}", SPECS[which], s.cost.generated_tokens, tokens);
        if let Some(c) = calls {
            prop_assert!(s.cost.model_calls <= c, "{} made {} calls of {}", SPECS[which], s.cost.model_calls, c);
        }
        // What the trace holds is what was charged.
        let traced: usize = s.trace.nodes.iter().map(|n| n.tokens).sum();
        prop_assert!(traced <= s.cost.generated_tokens);
    }
}

/// Scripted responses `"s...s\nAnswer: D"` of the given filler lengths, answered in turn (not by
/// seed, so the k-th sample of a prompt is the same however the budget splits the calls).
fn cycling(fillers: &[usize]) -> (ScriptedBackend, Vec<String>) {
    let texts: Vec<String> = fillers
        .iter()
        .enumerate()
        .map(|(i, &k)| format!("{}\nAnswer: {}", "s".repeat(k), i % 3))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    (ScriptedBackend::new().otherwise(&refs), texts)
}

/// How many of the first `n` samples fit in `budget` one after another (the fake backend charges a
/// completion its bytes plus the stop token), and what all `n` cost.
fn prefix_that_fits(texts: &[String], n: usize, budget: usize) -> (usize, usize) {
    let lengths: Vec<usize> = (0..n).map(|k| texts[k % texts.len()].len() + 1).collect();
    let mut sum = 0;
    let mut fit = 0;
    for l in &lengths {
        if sum + l > budget {
            break;
        }
        sum += l;
        fit += 1;
    }
    (fit, lengths.iter().sum())
}

#[test]
fn a_tight_budget_grants_what_the_samples_left() {
    let (b, texts) = cycling(&[9, 6, 18, 0, 33, 12]);
    let budget = 100;
    let mut ctx = SearchContext::new(
        &b,
        &ByteEncoder,
        Scorers::default(),
        config(1),
        Budget::tokens(budget),
    );
    let s = solve(
        parse_strategy("sc@64", None).unwrap().as_ref(),
        &SearchProblem::new("Q\n"),
        &mut ctx,
    )
    .unwrap();
    let (fit, _) = prefix_that_fits(&texts, 64, budget);
    // Reserving 48 tokens a sample would hold two; the real lengths hold more.
    assert!(fit > budget / 48, "the script should make refunds matter");
    assert!(s.trace.nodes.len() >= fit, "{:?}", s.trace.nodes);
    for (node, text) in s.trace.nodes.iter().zip(&texts).take(fit) {
        assert_eq!(&node.text, text);
    }
    assert!(s.cost.generated_tokens <= budget);
    assert!(s.budget_cut);
    // Refunds came in waves: more calls than one.
    assert!(s.cost.model_calls > 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// N-sample strategies get all N samples whenever the N samples' real lengths fit in the
    /// budget (and as many as fit one after another otherwise), never spending past it.
    #[test]
    fn n_sample_strategies_get_every_sample_that_fits(
        which in 0usize..5,
        n in 1usize..12,
        fillers in proptest::collection::vec(0usize..37, 1..6),
        percent in 0usize..160,
        seed in 0u64..100,
    ) {
        let spec = ["sc", "bon", "wsc", "esc", "adaptive"][which];
        let spec = match spec {
            "esc" | "adaptive" => format!("{spec}@{n}:w={}", n.min(3)),
            s => format!("{s}@{n}"),
        };
        let (b, texts) = cycling(&fillers);
        let (p, v) = (prm(), verifier());
        let scorers = Scorers { verifier: Some(&v), step: Some(&p) };
        let (_, all) = prefix_that_fits(&texts, n, usize::MAX);
        // A budget of at least one full reservation, up to well past what all n samples cost.
        let budget = (all * percent / 100).max(48);
        let mut ctx = SearchContext::new(&b, &ByteEncoder, scorers, config(seed), Budget::tokens(budget));
        let s = solve(parse_strategy(&spec, None).unwrap().as_ref(), &SearchProblem::new("Q\n"), &mut ctx).unwrap();
        let samples = s.trace.nodes.len();
        prop_assert!(s.cost.generated_tokens <= budget, "{spec} spent {} of {budget}", s.cost.generated_tokens);
        prop_assert!(samples <= n);
        // esc and adaptive may stop early on their own; sc, wsc and bon always want all n.
        if matches!(which, 0..=2) {
            let (fit, _) = prefix_that_fits(&texts, n, budget);
            prop_assert!(samples >= fit, "{spec}: {samples} samples, {fit} fit in {budget}");
            if all <= budget {
                prop_assert_eq!(samples, n);
                prop_assert!(!s.budget_cut);
            }
        }
        for (node, text) in s.trace.nodes.iter().zip(&texts) {
            if node.tokens == text.len() + 1 {
                prop_assert_eq!(&node.text, text);
            }
        }
    }

    /// A budget that holds what the unlimited search really generated changes nothing: the same
    /// samples, answer and spending, with no cut, whatever the strategy (step-level ones included).
    #[test]
    fn a_budget_holding_the_real_spending_changes_nothing(
        which in 0..SPECS.len(),
        fillers in proptest::collection::vec(0usize..30, 1..6),
        extra in 0usize..40,
        seed in 0u64..100,
    ) {
        let (p, v) = (prm(), verifier());
        let scorers = Scorers { verifier: Some(&v), step: Some(&p) };
        let config = SearchConfig { min_sample_tokens: 1, ..config(seed) };
        let strategy = parse_strategy(SPECS[which], Some("arithmetic")).unwrap();
        let run = |budget: Budget| {
            let (b, _) = cycling(&fillers);
            let mut ctx = SearchContext::new(&b, &ByteEncoder, scorers, config.clone(), budget);
            solve(strategy.as_ref(), &SearchProblem::new("Compute: 12+3\n"), &mut ctx).unwrap()
        };
        let free = run(Budget::unlimited());
        let unit = strategy.unit_tokens(&config);
        let budget = free.cost.generated_tokens.max(unit) + extra;
        let tight = run(Budget::tokens(budget));
        let texts = |s: &tempering_search::Solution| -> Vec<String> {
            s.trace.nodes.iter().map(|n| n.text.clone()).collect()
        };
        prop_assert_eq!(texts(&tight), texts(&free), "{}", SPECS[which]);
        prop_assert_eq!(&tight.answer, &free.answer);
        prop_assert_eq!(tight.cost.generated_tokens, free.cost.generated_tokens);
        prop_assert!(!tight.budget_cut);
    }
}

#[test]
fn seeded_runs_are_reproducible() {
    let (p, v) = (prm(), verifier());
    let scorers = Scorers {
        verifier: Some(&v),
        step: Some(&p),
    };
    let run = |spec: &str, seed: u64| {
        let b = backend();
        let mut ctx = SearchContext::new(
            &b,
            &ByteEncoder,
            scorers,
            config(seed),
            Budget::tokens(2000),
        );
        let s = solve(
            parse_strategy(spec, Some("arithmetic")).unwrap().as_ref(),
            &SearchProblem::new("Q\n"),
            &mut ctx,
        )
        .unwrap();
        (
            s.answer,
            s.text,
            s.cost.generated_tokens,
            s.trace.to_jsonl(),
        )
    };
    for spec in SPECS {
        assert_eq!(run(spec, 3), run(spec, 3), "{spec}");
    }
    // Another seed draws other samples.
    assert_ne!(run("sc@8", 3).3, run("sc@8", 4).3);
}

fn error(spec: &str, scorers: Scorers<'_>, budget: Budget) -> String {
    let b = backend();
    let strategy = match parse_strategy(spec, None) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let mut ctx = SearchContext::new(&b, &ByteEncoder, scorers, config(0), budget);
    match solve(strategy.as_ref(), &SearchProblem::new("Q\n"), &mut ctx) {
        Ok(_) => panic!("{spec} should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let none = Scorers::default();
    let e = error("beem:4x4", none, Budget::unlimited());
    assert!(
        e.contains("unknown strategy `beem:4x4`") && e.contains("beam:WxE") && e.contains("mcts:"),
        "{e}"
    );
    let e = error("beam:4x4", none, Budget::unlimited());
    assert!(
        e.contains("needs a step scorer") && e.contains("--prm"),
        "{e}"
    );
    let e = error("bon@4", none, Budget::unlimited());
    assert!(e.contains("needs a scorer") && e.contains("--rm"), "{e}");
    // One completion is 48 tokens here.
    let e = error("sc@4", none, Budget::tokens(40));
    assert!(
        e.contains("budget of 40 generated tokens is too small") && e.contains("48"),
        "{e}"
    );
    let e = error(
        "sc@4",
        none,
        Budget {
            max_calls: Some(0),
            ..Budget::default()
        },
    );
    assert!(e.contains("0 model calls"), "{e}");
    for (spec, want) in [
        ("sc", "sample count"),
        ("sc@0", "positive sample count"),
        ("beam:4", "`WxE`"),
        ("beam:4x0", "two positive integers"),
        ("bon@4:median", "aggregation"),
        ("esc@4:w=9", "w=9"),
        ("mcts:10:q=1", "unknown option `q`"),
        ("got:generate(2)>shuffle", "unknown operation `shuffle`"),
        ("got:generate(x)", "positive count"),
    ] {
        let e = match parse_strategy(spec, None) {
            Ok(_) => panic!("{spec} should not parse"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(want) && e.contains(spec.split(':').next().unwrap()),
            "{spec}: {e}"
        );
    }
    assert!(matches!(
        parse_strategy("x", None),
        Err(SearchError::UnknownStrategy { .. })
    ));
}

#[test]
fn grids_expand_ranges_to_powers_of_two() {
    let g = tempering_search::expand_grid("greedy, sc@1..8,bon@2..6:last,beam:4x4").unwrap();
    assert_eq!(
        g,
        [
            "greedy",
            "sc@1",
            "sc@2",
            "sc@4",
            "sc@8",
            "bon@2:last",
            "bon@4:last",
            "bon@6:last",
            "beam:4x4"
        ]
    );
    assert!(tempering_search::expand_grid("sc@8..2").is_err());
    assert!(tempering_search::expand_grid(" , ").is_err());
}
