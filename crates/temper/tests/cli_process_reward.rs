//! `temper grpo --process-reward`: process supervision from the command line (the advantages'
//! formula is tested beside `process_advantages` in tempering-train): a run with the rule step
//! checker trains, records the flag for `--resume`, and bad specs are refused naming what is
//! expected.

mod common;

use common::{fixture_sft, ok, temper};

#[test]
fn grpo_with_the_rule_checker_as_process_reward_trains_and_logs_step_advantages() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("g");
    let out = temper()
        .args(["grpo", "--model"])
        .arg(fixture_sft())
        .args([
            "--task",
            "arithmetic",
            "--level",
            "3",
            "--process-reward",
            "rule",
            "--num-generations",
            "4",
            "--prompts-per-step",
            "4",
            "--steps",
            "2",
            "--learning-rate",
            "5e-5",
            "--max-completion-length",
            "48",
            "--log-rollouts-every",
            "1",
            "--quiet",
            "--output",
        ])
        .arg(&run)
        .output()
        .unwrap();
    ok(&out);
    assert!(run.join("model/config.json").is_file());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let batches = metrics
        .lines()
        .filter(|l| l.contains("\"rollout_step\"") && l.contains("\"reward\""))
        .count();
    assert_eq!(batches, 2, "{metrics}");
    // The config records the flag, so --resume continues with process supervision.
    let config: toml::Table = std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(config["process_reward"].as_str(), Some("rule"));
}

#[test]
fn process_reward_refuses_what_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = temper()
            .args(["grpo", "--model"])
            .arg(fixture_sft())
            .args(["--steps", "1", "--quiet", "--output"])
            .arg(dir.path().join(format!("r{}", extra.len())))
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--task", "arithmetic", "--process-reward", "no/such/dir"]);
    assert!(
        err.contains("--process-reward no/such/dir") && err.contains("rule"),
        "{err}"
    );
    let err = run(&[
        "--task",
        "countdown",
        "--process-reward",
        "rule",
        "--level",
        "1",
    ]);
    assert!(
        err.contains("countdown") && err.contains("arithmetic"),
        "{err}"
    );
}
