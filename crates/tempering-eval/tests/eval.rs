//! A grid over a built-in task with a scripted backend: accuracy, intervals, what sampling bought
//! and costs by hand, the run directory's files, and bad dataset rows.

use tempering_eval::report::write_run;
use tempering_eval::table::wilson;
use tempering_eval::Candidates;
use tempering_eval::{items_from_jsonl, items_from_task, run_grid, summarise, EvalSetup};
use tempering_search::fake::{ByteEncoder, FnVerifier, ScriptedBackend};
use tempering_search::{parse_strategy, Budget, Scorers, SearchConfig};

#[test]
fn a_grid_is_judged_summarised_and_written() {
    let items = items_from_task("arithmetic", 1, 2, 5).unwrap();
    let (a0, a1) = (items[0].reference.clone(), items[1].reference.clone());
    // Problem 0: right, wrong, right in turn. Problem 1: always wrong.
    let right0 = format!("Answer: {a0}");
    let b = ScriptedBackend::new()
        .on(&items[0].prompt, &[&right0, "Answer: -1", &right0])
        .on(&items[1].prompt, &["Answer: -1"]);
    let setup = EvalSetup {
        backend: &b,
        encoder: &ByteEncoder,
        scorers: Scorers::default(),
        config: SearchConfig::default(),
        budget: Budget::tokens(10_000),
    };
    let strategies = vec![
        parse_strategy("sc@1", None).unwrap(),
        parse_strategy("sc@3", None).unwrap(),
    ];
    let mut seen = 0;
    let results = run_grid(&setup, &strategies, &items, &mut |_| seen += 1).unwrap();
    assert_eq!(seen, 4);
    assert!(a1 != "-1");
    let rows = summarise(&results);
    // sc@1: problem 0 draws its first (right) sample. sc@3: draws wrong, right, right -> right.
    assert_eq!(rows[0].accuracy, 0.5);
    assert_eq!(rows[1].accuracy, 0.5);
    let len0 = right0.len() + 1;
    // sc@1 spends one completion per problem; sc@3 three.
    assert_eq!(rows[0].mean_tokens, (len0 + 11) as f64 / 2.0);
    assert_eq!(rows[1].mean_tokens, (11 + len0 * 2 + 33) as f64 / 2.0);
    assert_eq!(rows[1].mean_calls, 1.0);
    assert_eq!(rows[0].family, "sc");
    // Intervals: 1 of 2 right.
    assert_eq!(rows[1].correct, 1);
    assert_eq!((rows[1].accuracy_lo, rows[1].accuracy_hi), wilson(1.0, 2));
    assert!(rows[1].accuracy_lo < 0.5 && rows[1].accuracy_hi > 0.5);
    // Candidates: sc@3 on problem 0 drew wrong, right, right; problem 1 nothing right.
    assert_eq!(
        results[2].candidates,
        Some(Candidates {
            drawn: 3,
            correct: 2
        })
    );
    assert_eq!(
        results[3].candidates,
        Some(Candidates {
            drawn: 3,
            correct: 0
        })
    );
    let s3 = rows[1].sampled.expect("sc draws candidates");
    assert!(
        (s3.pass1.value - (2.0 / 3.0 + 0.0) / 2.0).abs() < 1e-12,
        "{s3:?}"
    );
    assert_eq!(s3.pass_n.value, 0.5);
    assert_eq!(s3.mean_candidates, 3.0);
    assert_eq!((s3.pass_n.lo, s3.pass_n.hi), wilson(1.0, 2));
    let s1 = rows[0].sampled.unwrap();
    assert_eq!((s1.pass1.value, s1.pass_n.value), (0.5, 0.5));

    let dir = tempfile::tempdir().unwrap();
    write_run(
        dir.path(),
        "test run",
        "arithmetic level 1",
        &results,
        &rows,
    )
    .unwrap();
    for f in [
        "results.jsonl",
        "table.md",
        "table.csv",
        "accuracy_vs_tokens.svg",
        "accuracy_vs_tokens.png",
        "report.html",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let png = std::fs::read(dir.path().join("accuracy_vs_tokens.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(dir.path().join("accuracy_vs_tokens.svg")).unwrap();
    assert!(
        svg.contains("accuracy (%)") && svg.contains(">sc</text>"),
        "{svg}"
    );
    // The token axis is labelled in plain tokens at powers of two, not in logarithms.
    assert!(svg.contains(">16</text>") && !svg.contains("ln("), "{svg}");
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(
        html.contains("<svg")
            && html.contains(">sc@3</td>")
            && html.contains("50.0% [9.5, 90.5] (n=2)</td>")
            && html.contains("What sampling bought: sc")
            && html.contains("<th class=\"num\"")
            && !html.contains("<script")
            && !html.contains("src="),
        "{html}"
    );
    let md = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    assert!(
        md.contains("| sc@3 | 2 | 50.0% [9.5, 90.5] (n=2) | 33.3% [")
            && md.contains("| 50.0% [9.5, 90.5] | 3 |"),
        "{md}"
    );
    // table.csv keeps its first columns in place (readers index them) and appends the new ones.
    let csv = std::fs::read_to_string(dir.path().join("table.csv")).unwrap();
    let lines: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        &lines[0][..5],
        &["strategy", "family", "problems", "accuracy", "mean_tokens"]
    );
    assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{csv}");
    let col = |name: &str| lines[0].iter().position(|c| *c == name).unwrap();
    assert_eq!(lines[2][0], "\"sc@3\"");
    assert_eq!(lines[2][3].parse::<f64>().unwrap(), 0.5);
    assert_eq!(lines[2][col("pass@n")].parse::<f64>().unwrap(), 0.5);
    assert!((lines[2][col("pass@1_sampled")].parse::<f64>().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert!(lines[2][col("accuracy_lo")].parse::<f64>().unwrap() < 0.5);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    // Text in the PNG: an image with the embedded font has many grey (anti-aliased) pixels; this
    // is checked by size here (a blank 900x600 image compresses to a few kB).
    assert!(png.len() > 10_000, "{} bytes", png.len());
}

#[test]
fn dataset_rows_are_checked_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    std::fs::write(
        &p,
        "{\"prompt\": \"2+2?\", \"answer\": 4}\n{\"answer\": \"1\"}\n",
    )
    .unwrap();
    let e = items_from_jsonl(&p, "answer").unwrap_err().to_string();
    assert!(e.contains("d.jsonl:2") && e.contains("`prompt`"), "{e}");
    std::fs::write(&p, "{\"prompt\": \"2+2?\", \"answer\": 4}\n").unwrap();
    let items = items_from_jsonl(&p, "answer").unwrap();
    assert!(items[0].is_correct("Answer: 4") && !items[0].is_correct("Answer: 5"));
    let e = items_from_jsonl(&p, "solution").unwrap_err().to_string();
    assert!(e.contains("d.jsonl:1") && e.contains("`solution`"), "{e}");
}

#[test]
fn pass_at_n_counts_a_right_candidate_that_selection_missed() {
    let items = items_from_task("arithmetic", 1, 2, 5).unwrap();
    let right: Vec<String> = items
        .iter()
        .map(|i| format!("Answer: {}", i.reference))
        .collect();
    // Each problem: one right candidate among three; the verifier prefers `-1`, always wrong.
    let b = ScriptedBackend::new()
        .on(&items[0].prompt, &["Answer: -1", &right[0], "Answer: 7777"])
        .on(&items[1].prompt, &["Answer: -1", "Answer: -1", &right[1]]);
    let v = FnVerifier(Box::new(|t: &str| if t.contains("-1") { 1.0 } else { 0.0 }));
    let setup = EvalSetup {
        backend: &b,
        encoder: &ByteEncoder,
        scorers: Scorers {
            verifier: Some(&v),
            step: None,
        },
        config: SearchConfig::default(),
        budget: Budget::tokens(10_000),
    };
    let strategies = vec![
        parse_strategy("bon@3", None).unwrap(),
        parse_strategy("greedy", None).unwrap(),
    ];
    let results = run_grid(&setup, &strategies, &items, &mut |_| {}).unwrap();
    let rows = summarise(&results);
    assert!(rows[0].strategy.starts_with("bon@3"), "{rows:?}");
    assert_eq!(rows[0].accuracy, 0.0);
    let s = rows[0].sampled.unwrap();
    assert_eq!(s.pass_n.value, 1.0);
    assert!((s.pass1.value - 1.0 / 3.0).abs() < 1e-12, "{s:?}");
    // Greedy draws no candidates to choose among: no sampling columns.
    assert_eq!(rows[1].sampled, None);
    assert!(results[2].candidates.is_none());
    let md = tempering_eval::table::markdown(&rows);
    let greedy = md.lines().find(|l| l.starts_with("| greedy |")).unwrap();
    assert!(greedy.contains("| - | - | - |"), "{md}");
    let csv = tempering_eval::table::csv(&rows);
    let greedy = csv.lines().find(|l| l.starts_with("\"greedy\"")).unwrap();
    assert!(greedy.ends_with(",,,,,,"), "{csv}");
}
