//! Every strategy on a scripted backend and scorer: the answer and the cost are computed by hand
//! in the comments. The fake backend charges one token per byte, plus one for the stop token of a
//! completion that ends on its own; a step cut at "\n" costs its bytes and the "\n".

use std::collections::HashMap;

use tempering_search::fake::{ByteEncoder, FnStepScorer, FnVerifier, ScriptedBackend};
use tempering_search::{
    parse_strategy, solve, Budget, Scorers, SearchConfig, SearchContext, SearchError,
    SearchProblem, Solution,
};

fn table(pairs: &[(&str, f64)]) -> FnStepScorer {
    let map: HashMap<String, f64> = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    FnStepScorer::per_step(move |s| map.get(s).copied().unwrap_or(0.0))
}

/// A verifier scoring the first digit of the answer line divided by ten.
fn digit_verifier() -> FnVerifier {
    FnVerifier(Box::new(|t| {
        tempering_search::answer_of(t)
            .and_then(|a| a.chars().next())
            .and_then(|c| c.to_digit(10))
            .map_or(0.0, |d| d as f64 / 10.0)
    }))
}

fn run(
    spec: &str,
    backend: &ScriptedBackend,
    scorers: Scorers<'_>,
    prompt: &str,
    budget: Budget,
) -> Result<Solution, SearchError> {
    let strategy = parse_strategy(spec, None)?;
    let mut ctx = SearchContext::new(
        backend,
        &ByteEncoder,
        scorers,
        SearchConfig::default(),
        budget,
    );
    solve(strategy.as_ref(), &SearchProblem::new(prompt), &mut ctx)
}

fn solved(spec: &str, backend: &ScriptedBackend, scorers: Scorers<'_>, prompt: &str) -> Solution {
    run(spec, backend, scorers, prompt, Budget::unlimited()).unwrap()
}

#[test]
fn greedy_returns_its_one_completion() {
    let b = ScriptedBackend::new().on("Q\n", &["a=1\nAnswer: 7"]);
    let s = solved("greedy", &b, Scorers::default(), "Q\n");
    assert_eq!(s.answer.as_deref(), Some("7"));
    assert_eq!(s.text, "a=1\nAnswer: 7");
    // 13 bytes + the stop token; the prompt is 2 bytes.
    assert_eq!(
        (
            s.cost.generated_tokens,
            s.cost.prompt_tokens,
            s.cost.model_calls
        ),
        (14, 2, 1)
    );
    assert_eq!(b.requests(), vec![("Q\n".to_string(), 1)]);
}

#[test]
fn self_consistency_takes_the_majority() {
    let b = ScriptedBackend::new().on(
        "Q\n",
        &[
            "Answer: 3",
            "Answer: 4",
            "Answer: 4",
            "x\nAnswer: 3",
            "Answer: 4",
        ],
    );
    let s = solved("sc@5", &b, Scorers::default(), "Q\n");
    assert_eq!(s.answer.as_deref(), Some("4"));
    assert_eq!(s.score, Some(0.6));
    // Four samples of 9 bytes + stop, one of 11 + stop, in one call.
    assert_eq!((s.cost.generated_tokens, s.cost.model_calls), (52, 1));
    assert_eq!(s.trace.nodes.len(), 5);
    assert!(s.trace.nodes[1].chosen && !s.trace.nodes[2].chosen);
}

#[test]
fn weighted_self_consistency_votes_with_scores() {
    let b = ScriptedBackend::new().on("Q\n", &["Answer: 9", "Answer: 4", "Answer: 4"]);
    let v = digit_verifier();
    let scorers = Scorers {
        verifier: Some(&v),
        step: None,
    };
    // 9 weighs 0.9 against 0.4 + 0.4 = 0.8 for 4.
    let s = solved("wsc@3", &b, scorers, "Q\n");
    assert_eq!(s.answer.as_deref(), Some("9"));
    assert!((s.score.unwrap() - 0.9 / 1.7).abs() < 1e-12);
    assert_eq!((s.cost.generated_tokens, s.cost.scorer_calls), (30, 3));
}

#[test]
fn best_of_n_folds_prm_scores_by_the_chosen_aggregation() {
    let script = ["s1\nAnswer: 1", "s2\nAnswer: 2", "s3\nAnswer: 3"];
    let prm = table(&[
        ("s1", 0.9),
        ("s2", 0.2),
        ("s3", 0.8),
        ("Answer: 1", 0.3),
        ("Answer: 2", 0.9),
        ("Answer: 3", 0.7),
    ]);
    let scorers = Scorers {
        verifier: None,
        step: Some(&prm),
    };
    // min: 0.3, 0.2, 0.7 -> 3; last: 0.3, 0.9, 0.7 -> 2; mean: 0.6, 0.55, 0.75 -> 3;
    // prod: 0.27, 0.18, 0.56 -> 3.
    for (agg, want, score) in [
        ("min", "3", 0.7),
        ("last", "2", 0.9),
        ("mean", "3", 0.75),
        ("prod", "3", 0.56),
    ] {
        let b = ScriptedBackend::new().on("Q\n", &script);
        let s = solved(&format!("bon@3:{agg}"), &b, scorers, "Q\n");
        assert_eq!(s.answer.as_deref(), Some(want), "{agg}");
        assert!((s.score.unwrap() - score).abs() < 1e-12, "{agg}");
        assert_eq!((s.cost.generated_tokens, s.cost.scorer_calls), (39, 3));
    }
    // An outcome verifier, when given, decides instead of the PRM.
    let v = digit_verifier();
    let b = ScriptedBackend::new().on("Q\n", &script);
    let s = solved(
        "bon@3",
        &b,
        Scorers {
            verifier: Some(&v),
            step: Some(&prm),
        },
        "Q\n",
    );
    assert_eq!(s.answer.as_deref(), Some("3"));
}

#[test]
fn early_stopping_stops_once_a_window_agrees() {
    let b = ScriptedBackend::new().on("Q\n", &["Answer: 5"]);
    let s = solved("esc@8:w=2", &b, Scorers::default(), "Q\n");
    assert_eq!(s.answer.as_deref(), Some("5"));
    assert_eq!((s.cost.generated_tokens, s.cost.model_calls), (20, 1));

    // {1, 2} disagree and 6 samples are left; {2, 2} agree: stop after 4 of 8.
    let b = ScriptedBackend::new().on(
        "Q\n",
        &[
            "Answer: 1",
            "Answer: 2",
            "Answer: 2",
            "Answer: 2",
            "Answer: 7",
        ],
    );
    let s = solved("esc@8:w=2", &b, Scorers::default(), "Q\n");
    assert_eq!(s.answer.as_deref(), Some("2"));
    assert_eq!((s.cost.generated_tokens, s.cost.model_calls), (40, 2));
}

#[test]
fn adaptive_spends_in_proportion_to_disagreement() {
    // All four agree: nothing more.
    let b = ScriptedBackend::new().on("Q\n", &["Answer: 5"]);
    let s = solved("adaptive@8:w=4", &b, Scorers::default(), "Q\n");
    assert_eq!((s.cost.generated_tokens, s.cost.model_calls), (40, 1));
    // Leader 2 of 4: disagreement 0.5 of at most 0.75, so ceil(4 * 2/3) = 3 more samples.
    let b = ScriptedBackend::new().on(
        "Q\n",
        &[
            "Answer: 1",
            "Answer: 2",
            "Answer: 1",
            "Answer: 3",
            "Answer: 2",
            "Answer: 2",
            "Answer: 2",
        ],
    );
    let s = solved("adaptive@8:w=4", &b, Scorers::default(), "Q\n");
    assert_eq!(s.answer.as_deref(), Some("2"));
    assert_eq!((s.cost.generated_tokens, s.cost.model_calls), (70, 2));
}

fn tree_prm() -> FnStepScorer {
    table(&[
        ("a", 0.9),
        ("b", 0.8),
        ("c", 0.1),
        ("d", 0.5),
        ("e", 0.7),
        ("Answer: 1", 0.3),
        ("Answer: 2", 0.95),
        ("Answer: 3", 0.6),
        ("Answer: 4", 0.2),
        ("Answer: 5", 0.4),
        ("Answer: 6", 0.5),
        ("Answer: 7", 0.1),
    ])
}

fn tree_backend() -> ScriptedBackend {
    ScriptedBackend::new()
        .on("Q\n", &["a\nrest", "b\n", "c\n", "d\n"])
        .on("Q\na\n", &["Answer: 1", "Answer: 2\n"])
        .on("Q\nb\n", &["Answer: 3", "e\n"])
        .on("Q\nb\ne\n", &["Answer: 4", "Answer: 5"])
        .on("Q\nd\n", &["Answer: 6", "Answer: 7"])
}

#[test]
fn beam_search_keeps_the_best_partial_solutions() {
    let prm = tree_prm();
    let b = tree_backend();
    let s = solved(
        "beam:2x2",
        &b,
        Scorers {
            verifier: None,
            step: Some(&prm),
        },
        "Q\n",
    );
    // Depth 1: a .9, b .8 kept of a, b, c, d. Depth 2: a>A2 (.95, done) and b>e (.7) kept.
    // Depth 3: b>e>A5 (.4) fills the second slot. Finals by last score: A2 .95 > A5 .4.
    assert_eq!(s.answer.as_deref(), Some("2"));
    assert_eq!(s.text, "a\nAnswer: 2");
    assert_eq!(s.score, Some(0.95));
    // Tokens: 4 steps of 2; 10 + 10 + 10 + 2; 10 + 10. Calls: 1 + 2 + 1. Scored: 4 + 4 + 2.
    // Prompts: 2; 4 + 4; 6.
    assert_eq!(
        (
            s.cost.generated_tokens,
            s.cost.model_calls,
            s.cost.scorer_calls,
            s.cost.prompt_tokens
        ),
        (60, 4, 10, 16)
    );
    let tree = s.trace.render();
    assert!(tree.contains("* #5 step score=0.950"), "{tree}");
}

#[test]
fn dvts_keeps_one_path_per_subtree() {
    let prm = tree_prm();
    let b = tree_backend();
    let s = solved(
        "dvts:2x2",
        &b,
        Scorers {
            verifier: None,
            step: Some(&prm),
        },
        "Q\n",
    );
    // Subtree 0 holds a, b and keeps a; subtree 1 holds c, d and keeps d. a>A2 .95, d>A6 .5.
    assert_eq!(s.answer.as_deref(), Some("2"));
    assert_eq!(
        (
            s.cost.generated_tokens,
            s.cost.model_calls,
            s.cost.scorer_calls
        ),
        (48, 3, 8)
    );
    let prompts: Vec<String> = b.requests().into_iter().map(|r| r.0).collect();
    assert_eq!(prompts, ["Q\n", "Q\na\n", "Q\nd\n"]);
}

#[test]
fn lookahead_ranks_steps_by_where_they_lead() {
    let prm = table(&[
        ("a", 0.9),
        ("c", 0.1),
        ("x", 0.1),
        ("y", 0.8),
        ("Answer: 9", 0.6),
        ("Answer: 8", 0.7),
    ]);
    let b = ScriptedBackend::new()
        .on("L\n", &["a\n", "c\n"])
        .on("L\na\n", &["x\n"])
        .on("L\nc\n", &["y\n", "Answer: 9", "Answer: 8"]);
    let s = solved(
        "lookahead:1x2:k=1",
        &b,
        Scorers {
            verifier: None,
            step: Some(&prm),
        },
        "L\n",
    );
    // a looks good (.9) but leads to x (.1); c (.1) leads to y (.8): c is kept.
    assert_eq!(s.text, "c\nAnswer: 8");
    // 2 + 2 steps, 2 + 2 lookahead, 10 + 10 answers; calls 1 + 2 + 1.
    assert_eq!((s.cost.generated_tokens, s.cost.model_calls), (28, 4));
}

#[test]
fn tot_bfs_drops_duplicate_thoughts() {
    let prm = tree_prm();
    let b = ScriptedBackend::new()
        .on("T\n", &["a\n", "a\n", "b\n"])
        .on("T\na\n", &["Answer: 1", "Answer: 2", "Answer: 1"]);
    let s = solved(
        "tot-bfs:1x3",
        &b,
        Scorers {
            verifier: None,
            step: Some(&prm),
        },
        "T\n",
    );
    assert_eq!(s.answer.as_deref(), Some("2"));
    // Duplicates cost tokens but are scored once: 2 + 2 states scored.
    assert_eq!(
        (
            s.cost.generated_tokens,
            s.cost.model_calls,
            s.cost.scorer_calls
        ),
        (36, 2, 4)
    );
}

#[test]
fn tot_dfs_backtracks_to_the_next_best_thought() {
    let prm = table(&[
        ("a", 0.6),
        ("b", 0.8),
        ("e", 0.7),
        ("Answer: 3", 0.2),
        ("Answer: 4", 0.2),
        ("Answer: 5", 0.4),
        ("Answer: 1", 0.3),
        ("Answer: 2", 0.95),
    ]);
    let b = ScriptedBackend::new()
        .on("D\n", &["a\n", "b\n"])
        .on("D\nb\n", &["e\n", "Answer: 3"])
        .on("D\nb\ne\n", &["Answer: 4", "Answer: 5"])
        .on("D\na\n", &["Answer: 1", "Answer: 2"]);
    let s = solved(
        "tot-dfs:2:thr=0.5",
        &b,
        Scorers {
            verifier: None,
            step: Some(&prm),
        },
        "D\n",
    );
    // b first, then b>e, whose answers fall below 0.5; back to a, whose A2 clears it.
    assert_eq!(s.text, "a\nAnswer: 2");
    assert_eq!((s.cost.generated_tokens, s.cost.model_calls), (56, 4));
    let prompts: Vec<String> = b.requests().into_iter().map(|r| r.0).collect();
    assert_eq!(prompts, ["D\n", "D\nb\n", "D\nb\ne\n", "D\na\n"]);
}

#[test]
fn mcts_explores_by_uct() {
    let prm = table(&[
        ("a", 0.9),
        ("b", 0.2),
        ("c", 0.6),
        ("Answer: 1", 0.3),
        ("Answer: 2", 0.95),
        ("Answer: 3", 0.1),
    ]);
    let b = ScriptedBackend::new()
        .on("M\n", &["a\n", "b\n"])
        .on("M\na\n", &["Answer: 1", "c\n"])
        .on("M\nb\n", &["Answer: 2", "Answer: 3"]);
    let s = solved(
        "mcts:3:k=2",
        &b,
        Scorers {
            verifier: None,
            step: Some(&prm),
        },
        "M\n",
    );
    // Iteration 2 picks a (0.9 + 1.4 sqrt(ln 2)); iteration 3 picks b:
    // a's 0.6 + 1.4 sqrt(ln 4 / 3) = 1.55 < b's 0.2 + 1.4 sqrt(ln 4) = 1.85.
    assert_eq!(s.text, "b\nAnswer: 2");
    assert_eq!((s.cost.generated_tokens, s.cost.model_calls), (36, 3));
}

#[test]
fn mcts_with_rollouts_values_children_by_finished_solutions() {
    let v = digit_verifier();
    let b = ScriptedBackend::new()
        .on("R\n", &["a\n", "Answer: 5"])
        .on("R\na\n", &["b\nAnswer: 6"]);
    let s = solved(
        "mcts:1:k=2:rollout",
        &b,
        Scorers {
            verifier: Some(&v),
            step: None,
        },
        "R\n",
    );
    assert_eq!(s.text, "a\nb\nAnswer: 6");
    // 2 + 10 for the steps, 11 + 1 for the rollout; two calls, two completions scored.
    assert_eq!(
        (
            s.cost.generated_tokens,
            s.cost.model_calls,
            s.cost.scorer_calls
        ),
        (24, 2, 2)
    );
}

#[test]
fn self_refinement_keeps_the_best_revision() {
    let v = digit_verifier();
    let b = ScriptedBackend::new()
        .on("F\n", &["Answer: 1"])
        .on("F\nAnswer: 1\nCritique: ", &["wrong\n"])
        .on(
            "F\nAnswer: 1\nCritique: wrong\nRevised solution:\n",
            &["Answer: 2"],
        )
        .on("F\nAnswer: 2\nCritique: ", &["ok\n"])
        .on(
            "F\nAnswer: 2\nCritique: ok\nRevised solution:\n",
            &["Answer: 0"],
        );
    let s = solved(
        "refine:2",
        &b,
        Scorers {
            verifier: Some(&v),
            step: None,
        },
        "F\n",
    );
    assert_eq!(s.answer.as_deref(), Some("2"));
    assert_eq!(s.score, Some(0.2));
    // 10 + (6 + 10) + (3 + 10); five calls; three completions scored.
    assert_eq!(
        (
            s.cost.generated_tokens,
            s.cost.model_calls,
            s.cost.scorer_calls
        ),
        (39, 5, 3)
    );
}

#[test]
fn graph_of_thoughts_aggregates_the_best_thoughts() {
    let v = digit_verifier();
    let b = ScriptedBackend::new()
        .on("G\n", &["Answer: 1", "Answer: 3", "Answer: 2"])
        .on(
            "G\nCandidate solutions:\n(1)\nAnswer: 3\n(2)\nAnswer: 2\nCombined solution:\n",
            &["Answer: 5"],
        );
    let s = solved(
        "got:generate(3)>score>keep(2)>aggregate(2)>score>keep(1)",
        &b,
        Scorers {
            verifier: Some(&v),
            step: None,
        },
        "G\n",
    );
    assert_eq!(s.answer.as_deref(), Some("5"));
    assert_eq!(
        (
            s.cost.generated_tokens,
            s.cost.model_calls,
            s.cost.scorer_calls
        ),
        (40, 2, 4)
    );
    // The aggregate node names both thoughts it came from.
    let agg = s
        .trace
        .nodes
        .iter()
        .find(|n| n.kind == "aggregate")
        .unwrap();
    assert_eq!(agg.parents, vec![1, 2]);

    // Refine and vote: two revisions, then the majority answer.
    let b = ScriptedBackend::new()
        .on("G\n", &["Answer: 1", "Answer: 3"])
        .otherwise(&["Answer: 3"]);
    let s = solved("got:generate(2)>refine>vote", &b, Scorers::default(), "G\n");
    assert_eq!(s.answer.as_deref(), Some("3"));
    assert_eq!((s.cost.generated_tokens, s.cost.model_calls), (40, 3));
}

#[test]
fn every_task_has_a_builtin_graph() {
    for task in ["arithmetic", "countdown", "base-conversion"] {
        let s = parse_strategy("got", Some(task)).unwrap();
        assert!(s.name().starts_with("got:generate("), "{}", s.name());
    }
}
