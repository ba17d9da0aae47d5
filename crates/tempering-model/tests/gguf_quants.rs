//! GGUF dequantisation for every supported storage type (F32, F16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
//! Q6_K): tiny random Llamas written the way llama.cpp's converter writes them, quantised by llama.cpp,
//! and their logits computed by HF transformers after gguf-py dequantised the same files
//! (scripts/reference/make_gguf_quants.py, fixtures/gguf/).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use tempering_model::known::fixtures_dir;
use tempering_model::{ModelFiles, ModelFormat, ModelInfo};

/// Our logits must match the reference to this, relative to the row's largest |logit|.
const TOL: f64 = 1e-4;

const TYPES: [&str; 8] = ["f32", "f16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k"];

fn fixture(ty: &str) -> Value {
    let p = fixtures_dir().join("gguf").join(format!("{ty}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// `Q4_K` (gguf-py) and `q4k` (candle's `GgmlDType` debug form) both become `q4k`.
fn norm_type(s: &str) -> String {
    s.to_lowercase().replace('_', "")
}

fn input_ids(fx: &Value) -> Tensor {
    let rows: Vec<Vec<u32>> = fx["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

fn reference_logits(fx: &Value) -> Vec<Vec<Vec<f64>>> {
    fx["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b.as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    t.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// The largest |a - b| over a row, divided by the row's largest |b|, over all rows.
fn worst_rel(ours: &[Vec<Vec<f32>>], want: &[Vec<Vec<f64>>]) -> f64 {
    let mut worst = 0f64;
    for (ob, wb) in ours.iter().zip(want) {
        for (orow, wrow) in ob.iter().zip(wb) {
            assert_eq!(orow.len(), wrow.len());
            let scale = wrow.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
            for (o, w) in orow.iter().zip(wrow) {
                worst = worst.max((*o as f64 - w).abs() / scale);
            }
        }
    }
    worst
}

fn check_logits(ty: &str) {
    let fx = fixture(ty);
    let path = fixtures_dir().join("gguf").join(format!("{ty}.gguf"));
    let files = ModelFiles::open(&path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(files.format, ModelFormat::Gguf);
    assert!(
        files.tokenizer.is_none(),
        "{ty}: the fixture carries no vocabulary"
    );
    // Asking for the tokenizer says which model has none.
    let e = files.require_tokenizer().unwrap_err().to_string();
    assert!(
        e.contains(&*path.to_string_lossy()) && e.contains("has no tokenizer"),
        "{e}"
    );
    let c = &fx["config"];
    let cfg = &files.config;
    assert_eq!(cfg.vocab_size as u64, c["vocab_size"].as_u64().unwrap());
    assert_eq!(cfg.hidden_size as u64, c["hidden_size"].as_u64().unwrap());
    assert_eq!(
        cfg.intermediate_size as u64,
        c["intermediate_size"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.num_layers as u64,
        c["num_hidden_layers"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.num_heads as u64,
        c["num_attention_heads"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.num_kv_heads as u64,
        c["num_key_value_heads"].as_u64().unwrap()
    );
    assert_eq!(cfg.head_dim as u64, c["head_dim"].as_u64().unwrap());
    assert!(!cfg.tie_word_embeddings);

    let ours = files
        .transformer()
        .unwrap()
        .forward_causal(&input_ids(&fx))
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let want = reference_logits(&fx);
    assert_eq!(
        [ours.len(), ours[0].len(), ours[0][0].len()],
        [want.len(), want[0].len(), want[0][0].len()]
    );
    let worst = worst_rel(&ours, &want);
    assert!(
        worst < TOL,
        "{ty}: worst logit error relative to the row's max |logit| is {worst:e}"
    );
}

/// Tensor name (HF) -> (normalised stored type, shape) as the fixture records them.
fn fixture_types(fx: &Value) -> BTreeMap<String, (String, Vec<usize>)> {
    fx["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            (
                t["hf_name"].as_str().unwrap().to_string(),
                (norm_type(t["type"].as_str().unwrap()), shape),
            )
        })
        .collect()
}

fn check_stored_types(ty: &str) {
    let fx = fixture(ty);
    let want = fixture_types(&fx);
    // The fixture itself must exercise the type: every matrix in `ty`, the norms in f32.
    let matrices: Vec<_> = want.values().filter(|(_, s)| s.len() == 2).collect();
    assert_eq!(matrices.len(), 2 + 7 * 2, "{ty}: fixture's matrix count");
    assert!(matrices.iter().all(|(t, _)| *t == norm_type(ty)));

    let path = fixtures_dir().join("gguf").join(format!("{ty}.gguf"));
    let info = ModelInfo::read(&path).unwrap();
    let got: BTreeMap<String, (String, Vec<usize>)> = info
        .stored
        .iter()
        .map(|t| (t.name.clone(), (norm_type(&t.storage), t.shape.clone())))
        .collect();
    assert_eq!(got, want, "{ty}: ModelInfo::read(..).stored");

    // Loading reports the same storage (and the shapes after dequantisation).
    let files = ModelFiles::open(&path, DType::F32, &Device::Cpu).unwrap();
    let loaded: BTreeMap<String, (String, Vec<usize>)> = files
        .stored_tensors()
        .iter()
        .map(|t| (t.name.clone(), (norm_type(&t.storage), t.shape.clone())))
        .collect();
    assert_eq!(loaded, want, "{ty}: ModelFiles::stored_tensors()");
}

macro_rules! per_type {
    ($($ty:ident),*) => {
        mod logits_match_transformers {
            $(#[test] fn $ty() { super::check_logits(stringify!($ty)); })*
        }
        mod stored_types_match {
            $(#[test] fn $ty() { super::check_stored_types(stringify!($ty)); })*
        }
    };
}
per_type!(f32, f16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k);

/// The fixtures can tell the types apart: the reference logits of any two types of the same base
/// model differ by several times the tolerance (F16 from F32 by the least, about 7e-4), so a loader
/// that mis-read the blocks, ignored a scale or rounded through another type could not pass.
#[test]
fn fixtures_discriminate_between_types() {
    type Logits = Vec<Vec<Vec<f64>>>;
    let mut by_base: BTreeMap<String, Vec<(&str, Logits)>> = BTreeMap::new();
    for ty in TYPES {
        let fx = fixture(ty);
        let base = fx["base"].as_str().unwrap().to_string();
        by_base
            .entry(base)
            .or_default()
            .push((ty, reference_logits(&fx)));
    }
    assert_eq!(by_base.len(), 2, "two base models (small and k256)");
    for (base, list) in &by_base {
        for (i, (ta, a)) in list.iter().enumerate() {
            for (tb, b) in &list[i + 1..] {
                let a32: Vec<Vec<Vec<f32>>> = a
                    .iter()
                    .map(|r| {
                        r.iter()
                            .map(|p| p.iter().map(|&x| x as f32).collect())
                            .collect()
                    })
                    .collect();
                let d = worst_rel(&a32, b);
                assert!(
                    d > 5.0 * TOL,
                    "{base}: {ta} and {tb} give the same logits ({d:e})"
                );
            }
        }
    }
}

/// Reading a truncated quantised file fails with an error naming it, not a panic.
#[test]
fn truncated_quantised_file_is_an_error_naming_it() {
    let src = fixtures_dir().join("gguf").join("q4_k.gguf");
    let bytes = std::fs::read(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = match ModelFiles::open(&cut, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("a truncated GGUF loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cut.gguf"),
        "error does not name the file: {err}"
    );
}
