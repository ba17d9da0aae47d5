//! The decoder and its formats: save/load round trips, cached decode against a full forward,
//! padding invariance, and a clear error for each kind of bad input.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tempering_model::config::{Architecture, ModelConfig};
use tempering_model::loader::save_hf_dir;
use tempering_model::{InferenceWeights, ModelFiles, TokenLayout, Transformer};

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

/// `model` with every projection weight and the LM head as `kind` stores them (rounded to bf16,
/// or quantized to Q8_0 and back where the input width allows), held in f32: what
/// [`Transformer::store_inference_weights`] computes with, in the plain f32 paths.
fn rounded_to(model: &Transformer, kind: InferenceWeights) -> Transformer {
    let round = |t: &Tensor| {
        let (n, k) = t.dims2().unwrap();
        if kind == InferenceWeights::Q8_0 && k % 32 == 0 {
            let w = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (q, s) = tempering_model::ops::few_rows::quantize_q8(&w, n, k).unwrap();
            let d = tempering_model::ops::few_rows::dequantize_q8(&q, &s);
            return Tensor::from_vec(d, (n, k), &Device::Cpu).unwrap();
        }
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let mut r = model.clone();
    for l in r.layers.iter_mut() {
        for lin in [
            &mut l.self_attn.q_proj,
            &mut l.self_attn.k_proj,
            &mut l.self_attn.v_proj,
            &mut l.self_attn.o_proj,
            &mut l.mlp.gate_proj,
            &mut l.mlp.up_proj,
            &mut l.mlp.down_proj,
        ] {
            lin.weight = round(&lin.weight);
        }
    }
    r.lm_head = Some(round(r.lm_head.as_ref().unwrap_or(&r.embed_tokens)));
    r
}

fn rounded_to_bf16(model: &Transformer) -> Transformer {
    rounded_to(model, InferenceWeights::Bf16)
}

#[test]
fn q8_0_inference_weights_compute_the_f32_model_with_dequantized_weights() {
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let cfg = tiny_config(arch);
        let f32_model = Transformer::init_random(&cfg, 6, &Device::Cpu, DType::F32).unwrap();
        let want_model = rounded_to(&f32_model, InferenceWeights::Q8_0);
        let mut model = f32_model.clone();
        model
            .store_inference_weights(InferenceWeights::Q8_0)
            .unwrap();
        let up = &model.layers[0].mlp.up_proj;
        assert_eq!(up.weight.dtype(), DType::U8, "{arch:?}");
        assert_eq!(up.q8_scales.as_ref().unwrap().dims(), [48, 1]);
        // down_proj reads 48 wide, not a multiple of 32: kept in bf16.
        assert_eq!(model.layers[0].mlp.down_proj.weight.dtype(), DType::BF16);
        let rows: Vec<u32> = (0..80).map(|i| (i * 5 + 3) % 61).collect();
        for x in [ids(&[&rows[..1]]), ids(&[&rows[..40], &rows[40..]])] {
            let d = max_abs_diff(
                &model.forward_causal(&x).unwrap(),
                &want_model.forward_causal(&x).unwrap(),
            );
            assert!(d < 1e-4, "{arch:?} {:?}: max diff {d}", x.dims());
        }
        // LoRA on top: the same gradients as on the dequantized model.
        let lora = tempering_model::lora::LoraConfig::default();
        let (mut a, mut b) = (model.clone(), want_model.clone());
        let (va, vb) = (a.add_lora(&lora, 4).unwrap(), b.add_lora(&lora, 4).unwrap());
        let x = ids(&[&rows[..40], &rows[40..]]);
        let loss = |m: &Transformer| {
            m.forward_causal(&x)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let (ga, gb) = (loss(&a).backward().unwrap(), loss(&b).backward().unwrap());
        for ((name, p), (_, q)) in va.iter().zip(&vb) {
            let d = max_abs_diff(
                ga.get(p.as_tensor()).unwrap(),
                gb.get(q.as_tensor()).unwrap(),
            );
            assert!(d < 1e-3, "{arch:?} {name}: gradient max diff {d}");
        }
        // Stored once only.
        assert!(model
            .store_inference_weights(InferenceWeights::Bf16)
            .is_err());
    }
}

#[test]
fn bf16_inference_weights_compute_the_f32_model_with_rounded_weights() {
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let cfg = tiny_config(arch);
        let f32_model = Transformer::init_random(&cfg, 5, &Device::Cpu, DType::F32).unwrap();
        let want_model = rounded_to_bf16(&f32_model);
        let mut model = f32_model.clone();
        model.store_linear_weights_bf16().unwrap();
        assert_eq!(
            model.layers[0].mlp.up_proj.weight.dtype(),
            DType::BF16,
            "{arch:?}"
        );
        // 2 x 40 rows: past the few-row kernel (prefill widens the weights); 1 row: the kernel.
        let rows: Vec<Vec<u32>> = (0..2)
            .map(|r| (0..40).map(|i| (i * 7 + r * 13) % 61).collect())
            .collect();
        let batch = ids(&[&rows[0], &rows[1]]);
        let got = model.forward_causal(&batch).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let want = want_model.forward_causal(&batch).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{arch:?} prefill: max diff {d}");
        let one = ids(&[&rows[0][..1]]);
        let d = max_abs_diff(
            &model.forward_causal(&one).unwrap(),
            &want_model.forward_causal(&one).unwrap(),
        );
        assert!(d < 1e-4, "{arch:?} one row: max diff {d}");
        // A LoRA adapter on top trains through the bf16 weights: the same gradients.
        let lora = tempering_model::lora::LoraConfig::default();
        let mut a = model.clone();
        let mut b = want_model.clone();
        let va = a.add_lora(&lora, 3).unwrap();
        let vb = b.add_lora(&lora, 3).unwrap();
        let loss = |m: &Transformer| {
            let logits = m.forward_causal(&batch).unwrap();
            let w = Tensor::arange(0f32, logits.elem_count() as f32, &Device::Cpu)
                .unwrap()
                .reshape(logits.dims())
                .unwrap()
                .affine(1e-4, -0.5)
                .unwrap();
            (logits * w).unwrap().sum_all().unwrap()
        };
        let (ga, gb) = (loss(&a).backward().unwrap(), loss(&b).backward().unwrap());
        for ((name, x), (_, y)) in va.iter().zip(&vb) {
            let (gx, gy) = (ga.get(x.as_tensor()), gb.get(y.as_tensor()));
            let (Some(gx), Some(gy)) = (gx, gy) else {
                panic!("{arch:?} {name}: no gradient");
            };
            let d = max_abs_diff(gx, gy);
            assert!(d < 1e-3, "{arch:?} {name}: gradient max diff {d}");
        }
    }
    // Nothing trains a bf16 inference weight, and only an f32 CPU model stores them.
    let cfg = tiny_config(Architecture::Llama);
    let mut m = Transformer::init_random(&cfg, 5, &Device::Cpu, DType::F32).unwrap();
    m.make_trainable(|n| n.ends_with("q_proj.weight")).unwrap();
    let e = m.store_linear_weights_bf16().unwrap_err().to_string();
    assert!(e.contains("trainable"), "{e}");
    let mut h = Transformer::init_random(&cfg, 5, &Device::Cpu, DType::F16).unwrap();
    let e = h.store_linear_weights_bf16().unwrap_err().to_string();
    assert!(e.contains("f32 or bf16 model"), "{e}");
}

#[test]
fn a_model_loaded_in_bf16_computes_in_f32_with_its_bf16_matrices() {
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let cfg = tiny_config(arch);
        let saved = Transformer::init_random(&cfg, 9, &Device::Cpu, DType::F32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_hf_dir(dir.path(), &saved, None, None, DType::BF16).unwrap();
        let open = |dtype| {
            ModelFiles::open(dir.path(), dtype, &Device::Cpu)
                .unwrap()
                .transformer()
                .unwrap()
        };
        // The same bf16 values, computed in f32 throughout.
        let want_model = open(DType::F32);
        let mut model = open(DType::BF16);
        model.store_linear_weights_bf16().unwrap();
        assert_eq!(model.dtype(), DType::F32);
        assert_eq!(model.embed_tokens.dtype(), DType::BF16, "{arch:?}");
        assert_eq!(model.norm.dtype(), DType::F32, "{arch:?}");
        let rows: Vec<u32> = (0..80).map(|i| (i * 11) % 61).collect();
        // One row and five (the few-row kernel), 2 x 40 (prefill widens the matrices).
        for x in [
            ids(&[&rows[..1]]),
            ids(&[&rows[..5]]),
            ids(&[&rows[..40], &rows[40..]]),
        ] {
            let len = x.elem_count();
            let got = model.forward_causal(&x).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            let d = max_abs_diff(&got, &want_model.forward_causal(&x).unwrap());
            assert!(d < 1e-4, "{arch:?} {len} tokens: max diff {d}");
        }
    }
}

/// Logits of a left-padded two-row prefill and three decode steps, with the lean path for cached
/// steps on or off.
fn cached_steps(model: &Transformer) -> Vec<Tensor> {
    let mut cache = model.new_cache();
    let mut out = vec![model
        .forward(
            &ids(&[&[0, 0, 7, 9, 11], &[3, 4, 5, 6, 8]]),
            &TokenLayout::left_padded(&[3, 5], 5),
            Some(&mut cache),
        )
        .unwrap()];
    for (step, toks) in [[12u32, 30], [2, 19], [44, 5]].iter().enumerate() {
        let layout = TokenLayout {
            positions: vec![vec![3 + step as u32], vec![5 + step as u32]],
            valid: vec![vec![true], vec![true]],
        };
        out.push(
            model
                .forward(&ids(&[&toks[..1], &toks[1..]]), &layout, Some(&mut cache))
                .unwrap(),
        );
    }
    out
}

#[test]
fn lean_cached_steps_match_candle_ops() {
    // Llama with a sliding window and a LoRA adapter on every projection; Qwen2 (biases, tied
    // head) with bf16 and Q8_0 inference weights. Tolerance 1e-5 on logits of magnitude about 1.
    let mut llama = tiny_config(Architecture::Llama);
    llama.sliding_window = Some(4);
    let mut with_lora = Transformer::init_random(&llama, 5, &Device::Cpu, DType::F32).unwrap();
    let vars = with_lora
        .add_lora(
            &tempering_model::LoraConfig::new(
                4,
                8.0,
                0.0,
                tempering_model::LoraTarget::ALL.to_vec(),
            ),
            3,
        )
        .unwrap();
    for (k, (name, v)) in vars.iter().enumerate() {
        if name.contains("lora_B") {
            let n = v.elem_count();
            let vals: Vec<f32> = (0..n)
                .map(|i| ((i * 7 + k) % 13) as f32 * 0.02 - 0.12)
                .collect();
            v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let qwen = tiny_config(Architecture::Qwen2);
    let mut models = vec![("llama + lora", with_lora)];
    for kind in [InferenceWeights::Bf16, InferenceWeights::Q8_0] {
        let mut m = Transformer::init_random(&qwen, 9, &Device::Cpu, DType::F32).unwrap();
        m.store_inference_weights(kind).unwrap();
        models.push((
            if kind == InferenceWeights::Bf16 {
                "qwen2 bf16"
            } else {
                "qwen2 q8_0"
            },
            m,
        ));
    }
    for (name, mut model) in models {
        let lean = cached_steps(&model);
        model.set_lean_decode(false);
        let ops = cached_steps(&model);
        for (step, (a, b)) in lean.iter().zip(&ops).enumerate() {
            assert_eq!(a.dims(), b.dims());
            // The prefill's padded slots compute garbage either way: compare real tokens only.
            let (a, b) = if step == 0 {
                (a.narrow(1, 2, 3).unwrap(), b.narrow(1, 2, 3).unwrap())
            } else {
                (a.clone(), b.clone())
            };
            let d = max_abs_diff(&a, &b);
            assert!(d < 1e-5, "{name} step {step}: max diff {d}");
            assert!(max_abs_diff(&a, &a.zeros_like().unwrap()) > 1e-3);
        }
    }
}
