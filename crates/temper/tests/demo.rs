//! `temper demo --fast`: every stage runs (the hacking stage too, with `--hacking`), the final
//! accuracy after RL and search is above the SFT model's greedy accuracy (seeded), the table with
//! intervals is printed, and the HTML report is self-contained and shows its table and plots when a
//! browser renders it (headless Chromium, when installed).

use std::path::Path;
use std::process::Command;

/// Runs `temper demo --fast EXTRA --output OUT`, asserts success and that all seven stages ran, and
/// returns stdout and stderr.
fn run_fast_demo(extra: &[&str], out: &Path) -> (String, String) {
    let run = Command::new(env!("CARGO_BIN_EXE_temper"))
        .args(["demo", "--fast"])
        .args(extra)
        .arg("--output")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stdout}\n{stderr}");
    for stage in [
        "[1/7]", "[2/7]", "[3/7]", "[4/7]", "[5/7]", "[6/7]", "[7/7]",
    ] {
        assert!(stderr.contains(stage), "stage {stage} missing:\n{stderr}");
    }
    (stdout, stderr)
}

#[test]
fn fast_demo_runs_every_stage_and_improves_on_sft() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let (stdout, stderr) = run_fast_demo(&["--hacking"], &out);
    assert!(stderr.contains("[hacking]"), "{stderr}");
    assert!(
        stdout.contains("| strategy | sft accuracy |") && stdout.contains("| greedy | "),
        "{stdout}"
    );
    // Every accuracy with its interval, and the findings written from the numbers.
    assert!(stdout.contains("% ["), "{stdout}");
    assert!(stdout.contains("Greedy accuracy on"), "{stdout}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("demo.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "done");
    let sft = record["sft_greedy_accuracy"].as_f64().unwrap();
    let best = record["best_accuracy"].as_f64().unwrap();
    assert!(
        best > sft,
        "best after RL and search {best} vs SFT greedy {sft}"
    );
    let ci = record["greedy_gain_ci95"].as_array().unwrap();
    let gain = record["greedy_gain"].as_f64().unwrap();
    assert!(ci[0].as_f64().unwrap() <= gain && gain <= ci[1].as_f64().unwrap());
    for model in ["sft", "grpo", "grpo-replay"] {
        let acc = record["retain_accuracy"][model].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{record}");
    }
    assert!(record["retain_loss_before"].as_f64().is_some(), "{record}");
    assert!(record["kl"].as_f64().is_some(), "{record}");
    // Sampling strategies report what their candidates reached.
    let sft_rows = record["strategies"]["sft"].as_array().unwrap();
    let sc = sft_rows.iter().find(|r| r["strategy"] == "sc@8").unwrap();
    let (p1, pk) = (
        sc["sampled_pass_at_1"].as_f64().unwrap(),
        sc["pass_at_k"].as_f64().unwrap(),
    );
    assert!(p1 <= pk, "{sc}");
    assert!(sft_rows.iter().any(|r| r["strategy"] == "bon@8:min (rule)"));
    assert!(sft_rows.iter().any(|r| r["strategy"] == "bon@8:min (PRM)"));
    assert!(
        record["hacking"]["hack-proxy"]["reward"].is_array(),
        "{record}"
    );
    // The PRM: an implicit PRM on a verifier model (the SFT model trained further) whose
    // reference is the policy; the report says what that verifier solves alone.
    let verifier = &record["verifier_greedy"];
    assert!(verifier["problems"].as_u64().unwrap() > 0, "{record}");
    assert!(
        verifier["extra_sft_steps"].as_u64().unwrap() > 0,
        "{record}"
    );
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/prm/model/implicit_prm.json")).unwrap(),
    )
    .unwrap();
    let reference = std::path::PathBuf::from(spec["reference"].as_str().unwrap());
    assert_eq!(reference, out.join("sft").canonicalize().unwrap(), "{spec}");
    for f in [
        "sft/config.json",
        "runs/verifier/model/config.json",
        "runs/prm/model/config.json",
        "runs/grpo/model/config.json",
        "runs/grpo/rollouts.jsonl",
        "runs/grpo-replay/model/config.json",
        "runs/hack-proxy/metrics.jsonl",
        "runs/hack-kl/metrics.jsonl",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }

    let report = out.join("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    let plots = html.matches("<svg").count();
    assert!(
        plots >= 6,
        "accuracy, training and hacking plots inlined: {plots}"
    );
    assert!(html.contains("<table") && html.contains("What this run shows"));
    assert!(
        !html.contains("<script") && !html.contains("src=\"http"),
        "self-contained"
    );

    // Render it as a browser would: the DOM after layout must hold the plots with their lines.
    let chromium = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(browser) = chromium else {
        eprintln!(
            "SKIPPED the browser check: no chromium on PATH (Debian: apt-get install chromium)"
        );
        return;
    };
    let dom = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("<svg").count(), plots, "{dom}");
    assert!(dom.matches("<polyline").count() >= 3, "plots without lines");
    assert!(dom.contains("<table"), "no table in the rendered page");
    assert!(
        dom.contains("Training reward") && dom.contains("accuracy against generated tokens"),
        "plot titles"
    );
}

/// `temper demo --model smollm2 --fast`: the same pipeline on the real SmolLM2-135M, with LoRA for
/// SFT and GRPO (merged by `temper merge` between stages). Skips, saying so, without the model file.
#[test]
fn fast_demo_on_smollm2_runs_every_stage_with_lora() {
    let Some(gguf) = tempering_model::known::smollm2_or_skip("fast_demo_on_smollm2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let model = gguf.display().to_string();
    let (_, stderr) = run_fast_demo(&["--model", &model], &out);
    assert!(stderr.contains("--lora-r"), "LoRA stages:\n{stderr}");
    for f in [
        "runs/sft/adapter/adapter_config.json",
        "runs/grpo/adapter/adapter_config.json",
        "sft/config.json",
        "grpo/config.json",
        "runs/prm/model/implicit_prm.json",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("demo.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "done");
    let sft = record["sft_greedy_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&sft), "{record}");
}

#[test]
fn demo_refuses_an_unknown_model_naming_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_temper"))
        .args(["demo", "--fast", "--model", "no-such-model", "--output"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("no-such-model") && stderr.contains("tiny") && stderr.contains("smollm2"),
        "{stderr}"
    );
}
