//! Runtime LoRA in `temper serve` (vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`),
//! end to end on loopback with the tiny model and an adapter written here (large seeded weights,
//! so that it visibly changes the greedy answer): served by name, listed, the base unchanged,
//! the same answers as `--adapter`, and the errors (400 bad path naming it, 404 unknown).

mod serve_common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use serve_common::{assert_error, Server};

const PROMPT: &str = "Compute: 3+4*2\n";

/// A PEFT adapter for the tiny model (4 layers, hidden 128, 4 heads of 32) on q, v and o.
fn write_adapter(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj", "o_proj"], "bias": "none",
        "fan_in_fan_out": false, "use_rslora": false, "use_dora": false,
        "base_model_name_or_path": "tiny-arith-sft",
    });
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    let mut state = seed;
    let mut next = move || {
        // SplitMix64 to a value in [-0.5, 0.5).
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let mut tensors = HashMap::new();
    for layer in 0..4 {
        for m in ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"] {
            let p = format!("base_model.model.model.layers.{layer}.{m}");
            let a: Vec<f32> = (0..2 * 128).map(|_| next()).collect();
            let b: Vec<f32> = (0..128 * 2).map(|_| next()).collect();
            tensors.insert(
                format!("{p}.lora_A.weight"),
                Tensor::from_vec(a, (2, 128), &Device::Cpu).unwrap(),
            );
            tensors.insert(
                format!("{p}.lora_B.weight"),
                Tensor::from_vec(b, (128, 2), &Device::Cpu).unwrap(),
            );
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
}

fn greedy(s: &Server, model: &str) -> (u16, Value) {
    s.post(
        "/v1/completions",
        &json!({"model": model, "prompt": PROMPT, "max_tokens": 24, "temperature": 0,
                "ignore_eos": true}),
    )
}

fn text(v: &Value) -> String {
    v["choices"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text: {v}"))
        .to_string()
}

fn model_ids(s: &Server) -> Vec<String> {
    let (st, body) = s.get("/v1/models");
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn load_serve_and_unload_lora_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter-a");
    write_adapter(&adapter, 7);
    // Off by default: clients name directories on the server's disk.
    let s = Server::start(&["--served-model-name", "tiny"], &[]);
    let (st, v) = s.post(
        "/v1/load_lora_adapter",
        &json!({"lora_name": "arith-a", "lora_path": adapter}),
    );
    assert_error(st, &v, 404, "runtime LoRA without --allow-runtime-lora");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-runtime-lora"),
        "{v}"
    );
    drop(s);

    let s = Server::start(
        &["--served-model-name", "tiny", "--allow-runtime-lora"],
        &[],
    );
    let (st, base) = greedy(&s, "tiny");
    assert_eq!(st, 200, "{base}");
    let base_text = text(&base);

    let (st, body) = s.request(
        "POST",
        "/v1/load_lora_adapter",
        Some(&json!({"lora_name": "arith-a", "lora_path": adapter}).to_string()),
        None,
    );
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("arith-a"), "{body}");
    assert_eq!(model_ids(&s), ["tiny", "arith-a"]);
    let (_, list) = s.get("/v1/models");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["data"][1]["parent"], "tiny", "{list}");

    // The adapter changes the answer; the base model's is untouched (shared weights, not merged).
    let (st, with) = greedy(&s, "arith-a");
    assert_eq!(st, 200, "{with}");
    assert_eq!(with["model"], "arith-a");
    let adapter_text = text(&with);
    assert_ne!(adapter_text, base_text, "the adapter changed nothing");
    assert_eq!(text(&greedy(&s, "tiny").1), base_text);
    // Strategies run on an adapter too.
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"model": "sc@2@arith-a", "prompt": PROMPT, "max_tokens": 8}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["temper"]["samples"], 2, "{v}");

    // Errors, OpenAI-shaped.
    let post = |path: &str, body: Value| s.post(path, &body);
    let (st, v) = post(
        "/v1/load_lora_adapter",
        json!({"lora_name": "arith-a", "lora_path": adapter}),
    );
    assert_error(st, &v, 400, "loading a name twice");
    let missing = tmp.path().join("no-such-adapter");
    let (st, v) = post(
        "/v1/load_lora_adapter",
        json!({"lora_name": "b", "lora_path": missing}),
    );
    assert_error(st, &v, 400, "a bad path");
    assert_eq!(v["error"]["param"], "lora_path");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("no-such-adapter"), "{msg}");
    let (st, v) = post("/v1/load_lora_adapter", json!({"lora_path": adapter}));
    assert_error(st, &v, 400, "no lora_name");
    let (st, v) = post(
        "/v1/load_lora_adapter",
        json!({"lora_name": "tiny", "lora_path": adapter}),
    );
    assert_error(st, &v, 400, "the served model's name");
    let (st, v) = post("/v1/unload_lora_adapter", json!({"lora_name": "nope"}));
    assert_error(st, &v, 404, "unloading an unknown adapter");
    let (st, v) = greedy(&s, "b");
    assert_error(st, &v, 404, "a failed load serves nothing");

    // Unloaded: gone from the list and from service.
    let (st, body) = s.request(
        "POST",
        "/v1/unload_lora_adapter",
        Some(&json!({"lora_name": "arith-a"}).to_string()),
        None,
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(model_ids(&s), ["tiny"]);
    let (st, v) = greedy(&s, "arith-a");
    assert_error(st, &v, 404, "an unloaded adapter");
    assert_eq!(v["error"]["code"], "model_not_found");
    drop(s);

    // `--adapter` at start-up gives the same answer as the adapter loaded at run time.
    let a = adapter.to_string_lossy().to_string();
    let s = Server::start(&["--served-model-name", "tiny", "--adapter", &a], &[]);
    assert_eq!(text(&greedy(&s, "tiny").1), adapter_text);
}
