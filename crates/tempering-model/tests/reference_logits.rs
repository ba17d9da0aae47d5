//! Logits against fixtures produced by HF transformers (scripts/reference/): tiny random Llama,
//! Llama-3 (bf16 on disk, RoPE scaling), Mistral (sliding window) and sharded Qwen2 models, and the
//! real SmolLM2 GGUF.

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use tempering_model::known::{fixtures_dir, smollm2_or_skip};
use tempering_model::{ModelFiles, TokenLayout};

fn load_json(rel: &str) -> Value {
    let p = fixtures_dir().join(rel);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn as_u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_tiny(name: &str) {
    let fx = load_json(&format!("logits/{name}.json"));
    let dir = fixtures_dir().join("models").join(name);
    let files = ModelFiles::open(&dir, DType::F32, &Device::Cpu).unwrap();
    let model = files.transformer().unwrap();
    let rows: Vec<Vec<u32>> = fx["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(as_u32s)
        .collect();
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<u32> = rows.concat();
    let input = Tensor::from_vec(flat, (b, t), &Device::Cpu).unwrap();
    let ours = model
        .forward(&input, &TokenLayout::contiguous(b, t, 0), None)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let want = fx["logits"].as_array().unwrap();
    let mut worst = 0f64;
    for (bi, row) in want.iter().enumerate() {
        for (ti, pos) in row.as_array().unwrap().iter().enumerate() {
            let pos: Vec<f64> = pos
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let scale = pos.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
            for (vi, w) in pos.iter().enumerate() {
                let rel = (ours[bi][ti][vi] as f64 - w).abs() / scale;
                worst = worst.max(rel);
            }
        }
    }
    assert!(worst < 1e-4, "{name}: worst relative logit error {worst:e}");
}

#[test]
fn tiny_llama_matches_transformers() {
    check_tiny("tiny-llama");
}

#[test]
fn tiny_llama3_bf16_with_rope_scaling_matches_transformers() {
    check_tiny("tiny-llama3-bf16");
}

#[test]
fn tiny_qwen2_sharded_with_bias_matches_transformers() {
    check_tiny("tiny-qwen2");
}

#[test]
fn tiny_mistral_sliding_window_matches_transformers() {
    check_tiny("tiny-mistral");
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(path) = smollm2_or_skip("smollm2_gguf_matches_transformers") else {
        return;
    };
    let fx = load_json("logits/smollm2.json");
    let files = ModelFiles::open(&path, DType::F32, &Device::Cpu).unwrap();
    let model = files.transformer().unwrap();
    let tok = files.tokenizer.as_ref().unwrap();
    for p in fx["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let ids = as_u32s(&p["ids"]);
        assert_eq!(
            tok.encode(p["text"].as_str().unwrap(), false).unwrap(),
            ids,
            "{name}: ids"
        );
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward_causal(&input).unwrap().squeeze(0).unwrap();
        let last = logits.get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap();
        let mut order: Vec<usize> = (0..last.len()).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let top_ids = as_u32s(&p["top_ids"]);
        let ours_top: Vec<u32> = order.iter().take(5).map(|&i| i as u32).collect();
        assert_eq!(ours_top, top_ids[..5], "{name}: top-5 ids");
        for (id, want) in top_ids.iter().zip(p["top_logits"].as_array().unwrap()) {
            let d = (last[*id as usize] as f64 - want.as_f64().unwrap()).abs();
            assert!(d < 1e-3, "{name}: logit of {id} differs by {d}");
        }
        // Argmax at every position, where the reference's top-2 margin leaves room for rounding.
        let argmax = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let want = as_u32s(&p["argmax"]);
        for (i, margin) in p["argmax_margin"].as_array().unwrap().iter().enumerate() {
            if margin.as_f64().unwrap() > 1e-2 {
                assert_eq!(argmax[i], want[i], "{name}: argmax at position {i}");
            }
        }
    }
}
