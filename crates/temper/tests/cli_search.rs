//! `temper search` and `temper eval` end to end on a barely trained tiny model (what it answers
//! does not matter here; the outputs and the errors do).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn temper() -> Command {
    Command::new(env!("CARGO_BIN_EXE_temper"))
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tiny arithmetic model trained for two steps, shared by the tests of this file.
fn model() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tiny");
        let run = temper()
            .args([
                "tasks",
                "train-tiny",
                "arithmetic",
                "--level",
                "1",
                "--steps",
                "2",
                "--eval-problems",
                "0",
                "--output",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", text(&run));
        (dir, out)
    })
    .1
}

#[test]
fn search_prints_answer_cost_tree_and_writes_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let o = temper()
        .arg("search")
        .arg(model())
        .args([
            "--problem",
            "Compute: 3+4",
            "--strategy",
            "sc@4",
            "--max-new-tokens",
            "16",
            "--budget-tokens",
            "64",
            "--seed",
            "3",
            "--trace",
        ])
        .arg(&trace)
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("strategy: sc@4") && out.contains("answer: "),
        "{out}"
    );
    // 64 tokens hold four completions of at most 16.
    let tokens: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("cost: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(tokens <= 64, "{out}");
    assert!(out.contains("#0 sample"), "{out}");
    let lines = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(lines.lines().count(), 4, "{lines}");
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["kind"], "sample");
    }
}

#[test]
fn eval_writes_table_plots_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = temper()
        .arg("eval")
        .arg(model())
        .args([
            "--task",
            "arithmetic",
            "--level",
            "1",
            "--n",
            "3",
            "--strategies",
            "greedy,sc@1..2,esc@4:w=2",
            "--max-new-tokens",
            "16",
            "--output",
        ])
        .arg(&run)
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for s in [
        "| greedy | 3 |",
        "| sc@1 | 3 |",
        "| sc@2 | 3 |",
        "| esc@4:w=2 | 3 |",
    ] {
        assert!(out.contains(s), "{s} in {out}");
    }
    // Every accuracy with its interval and n; sampling strategies with pass@1 and pass@N, greedy
    // without.
    let greedy = out.lines().find(|l| l.starts_with("| greedy |")).unwrap();
    assert!(greedy.contains("(n=3) | - | - | - |"), "{out}");
    let sc2 = out.lines().find(|l| l.starts_with("| sc@2 |")).unwrap();
    assert!(
        sc2.contains("(n=3) |") && sc2.matches('[').count() == 3,
        "{out}"
    );
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(
        html.contains("<table") && html.contains("What sampling bought: sc"),
        "{html}"
    );
    for f in [
        "config.json",
        "results.jsonl",
        "table.md",
        "table.csv",
        "accuracy_vs_tokens.svg",
        "accuracy_vs_tokens.png",
        "report.html",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(run.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        12
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    // Checked before the model is loaded.
    let o = temper()
        .args([
            "search",
            "/nonexistent",
            "--problem",
            "x",
            "--strategy",
            "beem:4x4",
        ])
        .output()
        .unwrap();
    let e = text(&o);
    assert!(
        !o.status.success() && e.contains("unknown strategy `beem:4x4`") && e.contains("beam:WxE"),
        "{e}"
    );

    let o = temper()
        .arg("search")
        .arg(model())
        .args(["--problem", "Compute: 3+4", "--strategy", "beam:4x4"])
        .output()
        .unwrap();
    let e = text(&o);
    assert!(
        !o.status.success() && e.contains("needs a step scorer") && e.contains("--prm"),
        "{e}"
    );

    let o = temper()
        .arg("search")
        .arg(model())
        .args([
            "--problem",
            "Compute: 3+4",
            "--strategy",
            "sc@4",
            "--max-new-tokens",
            "64",
            "--budget-tokens",
            "10",
        ])
        .output()
        .unwrap();
    let e = text(&o);
    assert!(
        !o.status.success() && e.contains("budget of 10 generated tokens is too small"),
        "{e}"
    );

    // The character tokenizer has no letters for a Yes/No verdict.
    let o = temper()
        .arg("search")
        .arg(model())
        .args([
            "--problem",
            "Compute: 3+4",
            "--strategy",
            "bon@2",
            "--scorer",
            "self-eval",
        ])
        .output()
        .unwrap();
    let e = text(&o);
    assert!(
        !o.status.success() && e.contains("--scorer self-eval"),
        "{e}"
    );

    let o = temper()
        .arg("eval")
        .arg(model())
        .args([
            "--task",
            "arithmetic",
            "--strategies",
            "sc@8..2",
            "--output",
            "/tmp/never",
        ])
        .output()
        .unwrap();
    let e = text(&o);
    assert!(
        !o.status.success() && e.contains("--strategies") && e.contains("sc@8..2"),
        "{e}"
    );
}

/// `temper eval --adapter` runs a LoRA adapter on its base and answers as the merged model does.
#[test]
fn eval_with_an_adapter_answers_as_the_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    };
    let data = d.join("train.jsonl");
    ok(temper()
        .args([
            "tasks",
            "generate",
            "arithmetic",
            "--level",
            "1",
            "--n",
            "64",
        ])
        .args(["--split", "train", "--allow-duplicates", "--output"])
        .arg(&data));
    let sft = d.join("sft");
    ok(temper()
        .args(["sft", "--model"])
        .arg(model())
        .arg("--data")
        .arg(&data)
        .args(["--max-steps", "4", "--batch-size", "8"])
        .args([
            "--learning-rate",
            "1e-2",
            "--lora-r",
            "4",
            "--lora-targets",
            "all",
        ])
        .args(["--quiet", "--output"])
        .arg(&sft));
    let merged = d.join("merged");
    ok(temper()
        .arg("merge")
        .arg(model())
        .arg(sft.join("adapter"))
        .arg(&merged));
    let answers = |m: &Path, adapter: Option<&Path>, out: &Path| -> Vec<String> {
        let mut c = temper();
        c.arg("eval").arg(m).args([
            "--task",
            "arithmetic",
            "--level",
            "1",
            "--n",
            "8",
            "--strategies",
            "greedy",
            "--max-new-tokens",
            "24",
            "--output",
        ]);
        c.arg(out);
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        ok(&mut c);
        std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {}", v["answer"], v["cost"]["generated_tokens"])
            })
            .collect()
    };
    let with_adapter = answers(model(), Some(&sft.join("adapter")), &d.join("e1"));
    let base = answers(model(), None, &d.join("e0"));
    assert_eq!(with_adapter, answers(&merged, None, &d.join("e2")));
    // The adapter changed what the model answers, so the comparison above is not vacuous.
    assert_ne!(with_adapter, base);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("e1/config.json")).unwrap()).unwrap();
    let want = sft.join("adapter").display().to_string();
    assert_eq!(config["adapter"].as_str(), Some(want.as_str()), "{config}");

    // The self-evaluation judge would read the base weights: refused, saying what to do.
    let o = temper()
        .arg("eval")
        .arg(model())
        .arg("--adapter")
        .arg(sft.join("adapter"))
        .args([
            "--task",
            "arithmetic",
            "--strategies",
            "bon@2",
            "--scorer",
            "self-eval",
        ])
        .arg("--output")
        .arg(d.join("e3"))
        .output()
        .unwrap();
    let e = text(&o);
    assert!(!o.status.success() && e.contains("temper merge"), "{e}");
}
