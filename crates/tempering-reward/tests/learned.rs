//! The learned scorers on the transformers-made classifier fixtures (given a character tokenizer):
//! batched scoring with padding gives each item's unbatched score, a PRM's verifier aggregates its
//! step scores, and a directory of the wrong kind is a clear error.

use std::path::{Path, PathBuf};

use candle_core::Device;
use tempering_model::Tokenizer;
use tempering_reward::learned::{ProcessRewardModel, RewardModel, StepAggregation};
use tempering_reward::{ScoreInput, StepScorer, Verifier};

/// A copy of a fixture classifier with a character tokenizer (its ids fit the fixture's vocabulary).
fn with_tokenizer(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fixtures/models/{name}"));
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    Tokenizer::char_level("Compute: 0123456789+-*=\nAnswer".chars())
        .unwrap()
        .save_hf(&out)
        .unwrap();
    out
}

#[test]
fn batched_scores_equal_single_ones() {
    let dir = tempfile::tempdir().unwrap();
    let rm = RewardModel::open(&with_tokenizer("tiny-llama-rm", dir.path()), &Device::Cpu).unwrap();
    let items = [
        ("Compute: 2+3\n", "2+3=5\nAnswer: 5"),
        ("Compute: 7*8\n", "7*8=56\nAnswer: 56"),
        ("Compute: 1\n", "Answer: 1"),
    ];
    let batched = rm.score_texts(&items).unwrap();
    for (i, item) in items.iter().enumerate() {
        let one = rm.score_texts(&[*item]).unwrap()[0];
        assert!((one - batched[i]).abs() < 1e-4, "{one} vs {}", batched[i]);
    }
    assert!((batched[0] - batched[1]).abs() > 1e-3);
    let via_trait = rm.score(&ScoreInput::new(items[1].0, items[1].1)).unwrap();
    assert!((via_trait.score - batched[1]).abs() < 1e-4);
    assert_eq!(via_trait.correct, None);
}

#[test]
fn prm_scores_steps_and_aggregates_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = with_tokenizer("tiny-llama-prm", dir.path());
    let prm = ProcessRewardModel::open(&path, &Device::Cpu).unwrap();
    assert_eq!(prm.separator(), "\n");
    let items = vec![
        ("Compute: 2+3*4\n", vec!["3*4=12", "2+12=14", "Answer: 14"]),
        ("Compute: 1+1\n", vec!["1+1=2", "Answer: 2"]),
    ];
    let batched = prm.score_steps_batch(&items).unwrap();
    for (i, (p, steps)) in items.iter().enumerate() {
        let one = prm.score_steps(p, steps).unwrap();
        assert_eq!(one.len(), steps.len());
        for (a, b) in one.iter().zip(&batched[i]) {
            assert!((a - b).abs() < 1e-5 && *a > 0.0 && *a < 1.0, "{a} vs {b}");
        }
    }
    let verifier = ProcessRewardModel::open(&path, &Device::Cpu)
        .unwrap()
        .into_verifier(StepAggregation::Min);
    let s = verifier
        .score(&ScoreInput::new(
            items[0].0,
            "3*4=12\n2+12=14\nAnswer: 14\n",
        ))
        .unwrap();
    let min = batched[0].iter().copied().fold(f64::INFINITY, f64::min);
    assert!((s.score - min).abs() < 1e-5);

    let e = RewardModel::open(&path, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("token classifier"), "{e}");
    let rm_dir = with_tokenizer("tiny-llama-rm", dir.path());
    let e = ProcessRewardModel::open(&rm_dir, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("sequence classifier"), "{e}");
}
