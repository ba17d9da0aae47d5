//! The budget is never exceeded, whatever the strategy and the limits (property test); seeded
//! runs are reproducible; bad input gets a clear error.

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
    ) {
        let (b, p, v) = (backend(), prm(), verifier());
        let budget = Budget { max_tokens: Some(tokens), max_calls: calls, max_wall: None };
        let strategy = parse_strategy(SPECS[which], Some("arithmetic")).unwrap();
        let scorers = Scorers { verifier: Some(&v), step: Some(&p) };
        let mut ctx = SearchContext::new(&b, &ByteEncoder, scorers, config(seed), budget);
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

#[test]
fn a_tight_budget_cuts_sampling_short() {
    let b = backend();
    let mut ctx = SearchContext::new(
        &b,
        &ByteEncoder,
        Scorers::default(),
        config(1),
        Budget::tokens(100),
    );
    let s = solve(
        parse_strategy("sc@64", None).unwrap().as_ref(),
        &SearchProblem::new("Q\n"),
        &mut ctx,
    )
    .unwrap();
    // 100 tokens hold two completions of at most 48.
    assert_eq!(s.trace.nodes.len(), 2);
    assert!(s.budget_cut);
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
