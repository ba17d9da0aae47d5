//! Score heads against HF transformers: classifier directories written by transformers
//! (`LlamaForSequenceClassification` with one label, `LlamaForTokenClassification` with two and a
//! bias; `scripts/reference/classifier_fixtures.py`) load here and give transformers' scores on a
//! right-padded batch; what we save loads back with the same scores and HF's config keys; a
//! directory without a score head is a clear error.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde_json::Value;
use tempering_model::{save_classifier, Classifier, ClassifierSave, HeadKind};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> Value {
    let p = root().join(format!("fixtures/logits/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids_of(fx: &Value) -> (Vec<Vec<u32>>, Vec<usize>) {
    let lengths: Vec<usize> = fx["lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let ids = fx["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&lengths)
        .map(|(row, &n)| {
            row.as_array().unwrap()[..n]
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    (ids, lengths)
}

/// Scores of each row at its last token (sequence) or logits at every real token (token).
fn scores(c: &Classifier, ids: &[Vec<u32>], all_positions: bool) -> Vec<Vec<f32>> {
    let rows: Vec<&[u32]> = ids.iter().map(|r| r.as_slice()).collect();
    let positions: Vec<Vec<usize>> = ids
        .iter()
        .map(|r| {
            if all_positions {
                (0..r.len()).collect()
            } else {
                vec![r.len() - 1]
            }
        })
        .collect();
    let h = c.model.hidden_at(&rows, &positions, 0).unwrap();
    c.head.forward(&h).unwrap().to_vec2::<f32>().unwrap()
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * (1.0 + b.abs())
}

#[test]
fn sequence_classifier_matches_transformers() {
    let fx = fixture("tiny-llama-rm");
    let c = Classifier::open(
        &root().join("fixtures/models/tiny-llama-rm"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(c.kind, HeadKind::Sequence);
    assert_eq!(c.head.num_labels(), 1);
    assert!(c.head.bias.is_none());
    let (ids, _) = ids_of(&fx);
    let got = scores(&c, &ids, false);
    let want: Vec<f32> = fx["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    for (g, w) in got.iter().zip(&want) {
        assert!(close(g[0], *w), "{} vs {w}", g[0]);
    }
    // Scores differ between rows: a head reading the wrong position would be caught.
    assert!((want[0] - want[1]).abs() > 1e-2);
}

#[test]
fn token_classifier_matches_transformers_and_round_trips() {
    let fx = fixture("tiny-llama-prm");
    let c = Classifier::open(
        &root().join("fixtures/models/tiny-llama-prm"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(c.kind, HeadKind::Token);
    assert_eq!(c.head.num_labels(), 2);
    assert!(c.head.bias.is_some());
    let (ids, lengths) = ids_of(&fx);
    let got = scores(&c, &ids, true);
    let want = fx["logits"].as_array().unwrap();
    let mut k = 0;
    for (row, &n) in want.iter().zip(&lengths) {
        for t in 0..n {
            for l in 0..2 {
                let w = row[t][l].as_f64().unwrap() as f32;
                assert!(
                    close(got[k][l], w),
                    "token {t} label {l}: {} vs {w}",
                    got[k][l]
                );
            }
            k += 1;
        }
    }

    // Saved by us, read back: same scores, HF's class and label keys, extra fields kept.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prm");
    let mut extra = serde_json::Map::new();
    extra.insert("step_separator".into(), Value::String("\n\n".into()));
    save_classifier(
        &out,
        &c.model,
        &c.head,
        &ClassifierSave {
            kind: HeadKind::Token,
            label_names: &["incorrect", "correct"],
            tokenizer: None,
            chat_template: None,
            extra_config: extra,
            dtype: DType::F32,
        },
    )
    .unwrap();
    let back = Classifier::open(&out, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.kind, HeadKind::Token);
    assert_eq!(scores(&back, &ids, true), got);
    let cfg = &back.config_json;
    assert_eq!(cfg["architectures"][0], "LlamaForTokenClassification");
    assert_eq!(cfg["num_labels"], 2);
    assert_eq!(cfg["id2label"]["1"], "correct");
    assert_eq!(cfg["label2id"]["incorrect"], 0);
    assert_eq!(cfg["step_separator"], "\n\n");
    let names: Vec<String> = tempering_model::weights::list_hf_dir(&out)
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(names.contains(&"score.bias".to_string()));
    assert!(!names.contains(&"lm_head.weight".to_string()));
}

#[test]
fn a_directory_without_a_score_head_is_a_clear_error() {
    let e = Classifier::open(
        &root().join("fixtures/models/tiny-llama"),
        DType::F32,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("no score head") && e.contains("LlamaForCausalLM"),
        "{e}"
    );
}
