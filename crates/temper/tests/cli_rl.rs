//! `temper grpo` and `temper rloo` through the command line on a tiny random model: the run
//! directory (config, metrics, rollouts, checkpoint, final model), resume of a finished run, LoRA
//! output as a PEFT adapter, `--config` TOML under flag overrides, flags refused with `--resume`, and
//! clear errors for bad flags.

mod common;

use common::{
    assert_files, ok, prompts, rerun_refused_and_resume_ok, temper, train_command,
    two_step_model as model, RL_RUN_FILES,
};

#[test]
fn grpo_writes_a_complete_run_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path());
    let run = dir.path().join("run");
    let out = train_command("grpo", &model(), &data)
        .args(["--reward", "math_answer + 0.1*length_penalty"])
        .args([
            "--num-generations",
            "4",
            "--prompts-per-step",
            "2",
            "--steps",
            "3",
        ])
        .args([
            "--max-completion-length",
            "8",
            "--learning-rate",
            "1e-3",
            "--beta",
            "0.04",
        ])
        .args(["--log-rollouts-every", "1", "--quiet", "--output"])
        .arg(&run)
        .output()
        .unwrap();
    let err = ok(&out);
    assert!(err.contains("done: 3 rollout batches"), "{err}");
    assert_files(&run, &RL_RUN_FILES);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    for key in [
        "\"reward\"",
        "\"kl\"",
        "\"entropy\"",
        "\"completion_length\"",
        "\"generation_s\"",
    ] {
        assert!(metrics.contains(key), "{key} missing from {metrics}");
    }
    let rollouts = std::fs::read_to_string(run.join("rollouts.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(rollouts.lines().next().unwrap()).unwrap();
    assert_eq!(first["completions"].as_array().unwrap().len(), 4);
    assert_eq!(first["advantages"].as_array().unwrap().len(), 4);

    // A second run into the same directory is refused; --resume of the finished run is a no-op.
    let err = rerun_refused_and_resume_ok("grpo", &model(), &data, &run);
    assert!(err.contains("done: 3 rollout batches"), "{err}");
    // --resume continues with the saved config: another flag is refused, naming it.
    let refused = temper()
        .arg("grpo")
        .arg("--resume")
        .arg(&run)
        .args(["--steps", "5"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("saved config.toml") && err.contains("steps"),
        "{err}"
    );
}

#[test]
fn grpo_reads_a_config_file_under_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path());
    let run = dir.path().join("run");
    let file = dir.path().join("grpo.toml");
    std::fs::write(
        &file,
        format!(
            "model = {:?}\ndata = {:?}\nnum_generations = 3\nprompts_per_step = 2\nsteps = 5\n\
             max_completion_length = 6\nbeta = 0.04\n",
            model().display().to_string(),
            data.display().to_string()
        ),
    )
    .unwrap();
    let out = temper()
        .arg("grpo")
        .arg("--config")
        .arg(&file)
        .args(["--steps", "1", "--quiet", "--output"])
        .arg(&run)
        .output()
        .unwrap();
    let err = ok(&out);
    assert!(err.contains("done: 1 rollout batches"), "{err}");
    let saved: toml::Table = std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(saved["steps"].as_integer(), Some(1));
    assert_eq!(saved["num_generations"].as_integer(), Some(3));
    assert_eq!(saved["beta"].as_float(), Some(0.04));
    // A key of another algorithm is an error naming it.
    std::fs::write(&file, "kl_coef = 0.1\n").unwrap();
    let out = temper()
        .arg("grpo")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("kl_coef"), "{err}");
}

#[test]
fn rloo_with_lora_writes_an_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path());
    let run = dir.path().join("rloo");
    let out = train_command("rloo", &model(), &data)
        .args([
            "--num-generations",
            "3",
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
            "--quiet",
            "--output",
        ])
        .arg(&run)
        .output()
        .unwrap();
    ok(&out);
    assert!(run.join("adapter/adapter_config.json").is_file());
    assert!(run.join("adapter/adapter_model.safetensors").is_file());
}

#[test]
fn bad_flags_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path());
    for (flag, value, expect) in [
        ("--loss-type", "ppo", "--loss-type"),
        ("--reward", "no_such_reward", "no_such_reward"),
        ("--num-generations", "1", "num_generations"),
        ("--scale-rewards", "maybe", "--scale-rewards"),
    ] {
        let out = train_command("grpo", &model(), &data)
            .args([flag, value, "--output"])
            .arg(dir.path().join(format!("r{value}")))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{flag} {value}: {err}");
    }
}
