//! The decoder and its formats: save/load round trips, cached decode against a full forward,
//! padding invariance, and a clear error for each kind of bad input.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tempering_model::config::{Architecture, ModelConfig};
use tempering_model::loader::save_hf_dir;
use tempering_model::{ModelFiles, TokenLayout, Transformer};

fn tiny_config(arch: Architecture) -> ModelConfig {
    ModelConfig {
        architecture: arch,
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 48,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: arch == Architecture::Qwen2,
        attention_bias: arch == Architecture::Qwen2,
        sliding_window: None,
        bos_token_id: None,
        eos_token_ids: vec![1],
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

#[test]
fn save_and_load_round_trip_gives_identical_logits() {
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let cfg = tiny_config(arch);
        let model = Transformer::init_random(&cfg, 7, &Device::Cpu, DType::F32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_hf_dir(dir.path(), &model, None, None, DType::F32).unwrap();
        let files = ModelFiles::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(files.config, cfg, "{arch:?}");
        let loaded = files.transformer().unwrap();
        let x = ids(&[&[3, 5, 8, 13, 21, 34, 55]]);
        let a = model.forward_causal(&x).unwrap();
        let b = loaded.forward_causal(&x).unwrap();
        assert_eq!(a.dims(), &[1, 7, 61]);
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{arch:?}");
    }
}

#[test]
fn cached_decode_matches_full_forward_at_every_position() {
    let mut cfg = tiny_config(Architecture::Llama);
    for window in [None, Some(3)] {
        cfg.sliding_window = window;
        let model = Transformer::init_random(&cfg, 11, &Device::Cpu, DType::F32).unwrap();
        let seq: Vec<u32> = vec![4, 9, 2, 33, 17, 8, 40, 12];
        let full = model
            .forward_causal(&ids(&[&seq]))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let mut cache = model.new_cache();
        // Prefill 3 tokens, then decode one at a time.
        let pre = model
            .forward(
                &ids(&[&seq[..3]]),
                &TokenLayout::contiguous(1, 3, 0),
                Some(&mut cache),
            )
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert!(max_abs_diff(&pre, &full.narrow(0, 0, 3).unwrap()) < 1e-5);
        for (i, &tok) in seq.iter().enumerate().skip(3) {
            let step = model
                .forward(
                    &ids(&[&[tok]]),
                    &TokenLayout::contiguous(1, 1, i as u32),
                    Some(&mut cache),
                )
                .unwrap()
                .squeeze(0)
                .unwrap();
            let want = full.narrow(0, i, 1).unwrap();
            let d = max_abs_diff(&step, &want);
            assert!(d < 1e-5, "window {window:?} position {i}: max diff {d}");
        }
        assert_eq!(cache.len(), seq.len());
    }
}

#[test]
fn padding_does_not_change_a_rows_logits() {
    let cfg = tiny_config(Architecture::Qwen2);
    let model = Transformer::init_random(&cfg, 3, &Device::Cpu, DType::F32).unwrap();
    let short: Vec<u32> = vec![5, 6, 7];
    let long: Vec<u32> = vec![9, 8, 7, 6, 5, 4];
    let alone = model
        .forward_causal(&ids(&[&short]))
        .unwrap()
        .squeeze(0)
        .unwrap();
    // Left padding (generation) and right padding (training) with a different batch mate.
    let left = [vec![0u32; 3], short.clone()].concat();
    let out = model
        .forward(
            &ids(&[&left, &long]),
            &TokenLayout::left_padded(&[3, 6], 6),
            None,
        )
        .unwrap();
    let row = out.get(0).unwrap().narrow(0, 3, 3).unwrap();
    assert!(max_abs_diff(&row, &alone) < 1e-5);
    let right = [short.clone(), vec![0u32; 3]].concat();
    let out = model
        .forward(
            &ids(&[&right, &long]),
            &TokenLayout::right_padded(&[3, 6], 6),
            None,
        )
        .unwrap();
    let row = out.get(0).unwrap().narrow(0, 0, 3).unwrap();
    assert!(max_abs_diff(&row, &alone) < 1e-5);
    assert!(out
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
}

fn saved_tiny(dir: &Path) {
    let cfg = tiny_config(Architecture::Llama);
    let model = Transformer::init_random(&cfg, 1, &Device::Cpu, DType::F32).unwrap();
    save_hf_dir(dir, &model, None, None, DType::F32).unwrap();
}

fn open_err(path: &Path) -> String {
    match ModelFiles::open(path, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} opened although it is broken", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_path_is_a_clear_error() {
    let e = open_err(Path::new("/nonexistent/model"));
    assert!(
        e.contains("/nonexistent/model") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    saved_tiny(dir.path());
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::write(&st, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}     ").unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
}

#[test]
fn shapes_that_disagree_with_the_config_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    saved_tiny(dir.path());
    let cfg_path = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    v["intermediate_size"] = serde_json::json!(50);
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let files = ModelFiles::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let e = files.transformer().unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[48, 32]"),
        "{e}"
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    saved_tiny(dir.path());
    let cfg_path = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    v["model_type"] = serde_json::json!("gpt_neox");
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("gpt_neox") && e.contains("config.json"), "{e}");
}

#[test]
fn corrupt_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.gguf");
    std::fs::write(&p, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let e = open_err(&p);
    assert!(e.contains("broken.gguf") && e.contains("GGUF"), "{e}");
    let p2 = dir.path().join("notamodel.bin");
    std::fs::write(&p2, b"hello world").unwrap();
    let e = open_err(&p2);
    assert!(e.contains("notamodel.bin"), "{e}");
}

#[test]
fn truncated_real_gguf_names_the_tensor() {
    let Some(src) = tempering_model::known::smollm2_or_skip("truncated_real_gguf_names_the_tensor")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.gguf");
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1_000_000]).unwrap();
    let e = open_err(&p);
    assert!(e.contains("cut.gguf") && e.contains("tensor"), "{e}");
}

#[test]
fn f16_and_bf16_on_disk_load_as_their_rounded_values() {
    let cfg = tiny_config(Architecture::Llama);
    let model = Transformer::init_random(&cfg, 5, &Device::Cpu, DType::F32).unwrap();
    let x = ids(&[&[1, 2, 3, 4, 5]]);
    for dtype in [DType::F16, DType::BF16] {
        let dir = tempfile::tempdir().unwrap();
        save_hf_dir(dir.path(), &model, None, None, dtype).unwrap();
        let info = tempering_model::ModelInfo::read(dir.path()).unwrap();
        let want = if dtype == DType::F16 { "f16" } else { "bf16" };
        assert!(info.stored.iter().all(|t| t.storage == want), "{dtype:?}");
        let loaded = ModelFiles::open(dir.path(), DType::F32, &Device::Cpu)
            .unwrap()
            .transformer()
            .unwrap();
        // The same weights rounded through the dtype in memory give the same logits exactly.
        let mut rounded = std::collections::HashMap::new();
        for (n, t) in model.named_tensors() {
            rounded.insert(n, t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap());
        }
        let rounded = Transformer::from_weights(
            &cfg,
            &tempering_model::Weights::new(rounded, "rounded".into()),
        )
        .unwrap();
        let a = loaded.forward_causal(&x).unwrap();
        assert_eq!(
            max_abs_diff(&a, &rounded.forward_causal(&x).unwrap()),
            0.0,
            "{dtype:?}"
        );
        assert!(
            max_abs_diff(&a, &model.forward_causal(&x).unwrap()) < 0.05,
            "{dtype:?}"
        );
    }
}
