//! A grid over a built-in task with a scripted backend: accuracy and costs by hand, the run
//! directory's files, and bad dataset rows.

use tempering_eval::report::write_run;
use tempering_eval::{items_from_jsonl, items_from_task, run_grid, summarise, EvalSetup};
use tempering_search::fake::{ByteEncoder, ScriptedBackend};
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
        svg.contains("accuracy (%)") && svg.contains("\nsc\n"),
        "{svg}"
    );
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(
        html.contains("<svg")
            && html.contains("<td>sc@3</td>")
            && !html.contains("<script")
            && !html.contains("src=")
    );
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
