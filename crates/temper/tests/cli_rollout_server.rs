//! `temper grpo|ppo|trpo --rollout-backend`: the rollouts generated on `temper serve
//! --allow-runtime-lora` (the committed tiny model on loopback), each batch's adapter written under
//! the run directory, loaded there as `policy-step-N` and the previous version unloaded and
//! deleted; the run finishes and records which version sampled each batch, batch for batch the
//! same run as on the local engine. Full fine-tuning is refused naming what works.

mod serve_common;

use std::process::Command;

use serde_json::Value;
use serve_common::{model_dir, Server};

/// A short GRPO run of the tiny model, its rollouts on the server at `url` when given.
fn grpo(out: &std::path::Path, url: Option<&str>, extra: &[&str]) -> std::process::Output {
    rl("grpo", out, url, extra)
}

/// A short run of `command` (grpo, rloo, ppo, trpo) of the tiny model.
fn rl(
    command: &str,
    out: &std::path::Path,
    url: Option<&str>,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_temper"));
    cmd.arg(command)
        .arg("--model")
        .arg(model_dir())
        .args([
            "--task",
            "arithmetic",
            "--level",
            "1",
            "--num-prompts",
            "40",
        ])
        .args([
            "--steps",
            "3",
            "--prompts-per-step",
            "2",
            "--num-generations",
            "4",
        ])
        .args(["--max-completion-length", "40", "--micro-batch-size", "8"])
        .args(["--quiet", "--output"])
        .arg(out)
        .args(extra);
    if let Some(url) = url {
        cmd.args(["--rollout-backend", url]);
    }
    cmd.output().expect("running temper")
}

/// Each rollout batch's `rollout_policy` in a run's metrics.
fn versions(run: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r.get("rollout_step").is_some())
        .map(|r| r["rollout_policy"].as_str().unwrap_or("none").to_string())
        .collect()
}

/// Each rollout batch's (reward, completion length, `key`).
fn batches(run: &std::path::Path, key: &str) -> Vec<(f64, f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r.get("rollout_step").is_some())
        .map(|r| {
            (
                r["reward"].as_f64().unwrap(),
                r["completion_length"].as_f64().unwrap(),
                r[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("no `{key}` in {r}")),
            )
        })
        .collect()
}

#[test]
fn grpo_rolls_out_on_a_server_that_loads_each_new_adapter() {
    let server = Server::start(&["--allow-runtime-lora"], &[]);
    let url = format!("http://{}/v1", server.addr);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = grpo(&run, Some(&url), &["--lora-r", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let versions: Vec<String> = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r.get("rollout_step").is_some())
        .map(|r| r["rollout_policy"].as_str().unwrap_or("none").to_string())
        .collect();
    assert_eq!(
        versions,
        ["policy-step-0", "policy-step-1", "policy-step-2"],
        "{metrics}"
    );
    // Only the newest version stays loaded and on disk.
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert!(models.contains("policy-step-2"), "{models}");
    assert!(!models.contains("policy-step-1"), "{models}");
    let left: Vec<String> = std::fs::read_dir(run.join("rollout-adapters"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["policy-step-2"]);
    assert!(run.join("adapter/adapter_model.safetensors").is_file());
    // The same run on the local engine, for comparison.
    let local = dir.path().join("local");
    let o = grpo(&local, None, &["--lora-r", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |p: &std::path::Path| -> Vec<(f64, f64, f64)> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r.get("rollout_step").is_some())
            .map(|r| {
                (
                    r["reward"].as_f64().unwrap(),
                    r["completion_length"].as_f64().unwrap(),
                    r["loss"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    // The server samples with the same seeds from each new adapter: the run is the local one, batch
    // for batch (rewards, lengths and losses after the policy moved).
    let (served, local) = (read(&run), read(&local));
    assert_eq!(served, local);
    assert!(served.iter().any(|r| r.2 != 0.0), "{served:?}");
    // The server generated them: its completion counter saw every rollout request.
    assert!(server.metric("temper_generation_tokens_total") > 0.0);
}

#[test]
fn ppo_and_trpo_roll_out_on_the_server_too() {
    let server = Server::start(&["--allow-runtime-lora"], &[]);
    let url = format!("http://{}/v1", server.addr);
    let dir = tempfile::tempdir().unwrap();
    for (command, key) in [("ppo", "value_loss"), ("trpo", "value_loss")] {
        let served = dir.path().join(format!("{command}-served"));
        let o = rl(command, &served, Some(&url), &["--lora-r", "4"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            versions(&served),
            ["policy-step-0", "policy-step-1", "policy-step-2"],
            "{command}"
        );
        let local = dir.path().join(format!("{command}-local"));
        let o = rl(command, &local, None, &["--lora-r", "4"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(versions(&local), ["none", "none", "none"], "{command}");
        // The same run, batch for batch: the server sampled each new policy as the local engine
        // would have (the critic, here, saw the same rollouts).
        let (a, b) = (batches(&served, key), batches(&local, key));
        assert_eq!(a, b, "{command}");
        assert!(a.iter().any(|r| r.2 != 0.0), "{command}: {a:?}");
        let left: Vec<String> = std::fs::read_dir(served.join("rollout-adapters"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["policy-step-2"], "{command}");
    }
}

#[test]
fn full_fine_tuning_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the flags are refused before any connection.
    let url = "http://127.0.0.1:9/v1";
    let o = grpo(&dir.path().join("full"), Some(url), &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("needs LoRA (--lora-r N)"), "{err}");
    for command in ["ppo", "trpo"] {
        let o = rl(command, &dir.path().join(command), Some(url), &[]);
        assert!(!o.status.success(), "{command}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("needs LoRA (--lora-r N)"), "{command}: {err}");
    }
}
