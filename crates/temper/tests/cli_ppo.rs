//! `temper ppo` and `temper trpo` through the command line on a tiny model: the run directory
//! (config, metrics with the actor-critic and trust-region figures, rollouts, checkpoint, final
//! model), refusal to overwrite and resume of a finished run, TRPO with a separate critic and LoRA
//! writing an adapter, and clear errors for flags that do not apply.

use std::path::Path;

mod common;

use common::{
    assert_files, ok, prompts, rerun_refused_and_resume_ok, temper, train_command,
    two_step_model as model, RL_RUN_FILES,
};

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn ppo_writes_a_complete_run_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path());
    let run = dir.path().join("run");
    let out = train_command("ppo", &model(), &data)
        .args(["--reward", "math_answer + 0.1*length_penalty"])
        .args([
            "--num-generations",
            "2",
            "--prompts-per-step",
            "2",
            "--steps",
            "3",
        ])
        .args(["--max-completion-length", "8", "--learning-rate", "1e-3"])
        .args([
            "--epochs",
            "2",
            "--num-mini-batches",
            "2",
            "--target-kl",
            "1.0",
        ])
        .args(["--log-rollouts-every", "1", "--quiet", "--output"])
        .arg(&run)
        .output()
        .unwrap();
    let err = ok(&out);
    assert!(err.contains("done: 3 rollout batches"), "{err}");
    assert_files(&run, &RL_RUN_FILES);
    let recs = metrics(&run);
    assert_eq!(recs.len(), 3);
    for key in [
        "reward",
        "kl",
        "kl_coef",
        "policy_loss",
        "value_loss",
        "approx_kl_k1",
        "approx_kl_k3",
        "clipfrac",
        "entropy",
        "generation_s",
        "update_s",
    ] {
        assert!(
            recs[2].get(key).is_some(),
            "{key} missing from {:?}",
            recs[2]
        );
    }
    // Two epochs of two minibatches per rollout batch.
    assert_eq!(recs[2]["step"], 12);
    // The adaptive controller moved the coefficient away from its start.
    assert_ne!(recs[2]["kl_coef"].as_f64(), Some(0.05));

    let err = rerun_refused_and_resume_ok("ppo", &model(), &data, &run);
    assert!(err.contains("done: 3 rollout batches"), "{err}");
}

#[test]
fn trpo_with_a_critic_model_and_lora_writes_an_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path());
    let run = dir.path().join("trpo");
    let out = temper()
        .arg("trpo")
        .arg("--model")
        .arg(model())
        .arg("--critic-model")
        .arg(model())
        .arg("--data")
        .arg(&data)
        .args([
            "--num-generations",
            "2",
            "--prompts-per-step",
            "2",
            "--steps",
            "2",
        ])
        .args([
            "--max-completion-length",
            "6",
            "--lora-r",
            "4",
            "--max-kl",
            "0.02",
            "--fisher-fraction",
            "0.5",
        ])
        .args(["--quiet", "--output"])
        .arg(&run)
        .output()
        .unwrap();
    let err = ok(&out);
    assert!(err.contains("critic:"), "{err}");
    assert!(run.join("adapter/adapter_config.json").is_file());
    assert!(run.join("adapter/adapter_model.safetensors").is_file());
    for r in metrics(&run) {
        assert!(r["trpo/kl"].as_f64().unwrap() <= 0.02, "{r:?}");
        assert!(r.get("trpo/backtracks").is_some() && r.get("value_loss").is_some());
    }
}

#[test]
fn trpo_with_group_advantages_runs_and_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path());
    let trpo = |extra: &[&str], out: &str| {
        train_command("trpo", &model(), &data)
            .args([
                "--advantages",
                "group",
                "--prompts-per-step",
                "2",
                "--steps",
                "2",
            ])
            .args([
                "--max-completion-length",
                "6",
                "--max-kl",
                "0.02",
                "--quiet",
            ])
            .args(extra)
            .arg("--output")
            .arg(dir.path().join(out))
            .output()
            .unwrap()
    };
    ok(&trpo(&["--num-generations", "3"], "g"));
    let recs = metrics(&dir.path().join("g"));
    assert_eq!(recs.len(), 2);
    for r in recs {
        assert!(r["trpo/kl"].as_f64().unwrap() <= 0.02, "{r:?}");
    }
    let out = trpo(&["--num-generations", "1"], "g1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--num-generations"),
        "{err}"
    );
    let m = model();
    let out = trpo(
        &[
            "--num-generations",
            "2",
            "--critic-model",
            m.to_str().unwrap(),
        ],
        "gc",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no critic"), "{err}");
}

#[test]
fn flags_that_do_not_apply_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path());
    for (cmd, flag, value, expect) in [
        ("ppo", "--beta", "0.1", "--kl-coef"),
        ("ppo", "--num-iterations", "2", "--epochs"),
        ("ppo", "--lambda", "1.5", "lambda"),
        ("trpo", "--max-kl", "0", "max_kl"),
        ("trpo", "--fisher-fraction", "1.5", "fisher_fraction"),
        ("trpo", "--replay-coef", "0.5", "replay"),
        ("ppo", "--advantages", "median", "expected gae or group"),
    ] {
        let out = train_command(cmd, &model(), &data)
            .args([flag, value, "--output"])
            .arg(dir.path().join(format!("r{cmd}{value}")))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} {flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{cmd} {flag} {value}: {err}");
    }
}
