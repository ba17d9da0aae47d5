//! LoRA adapters: PEFT's initialisation and names, gradients reaching every adapter weight and no
//! base weight, dropout only in training, adapters switched off sharing the base weights, save/load
//! round trip, merging, PEFT adapter files in both directions against fixtures made by Python's PEFT
//! (scripts/reference/peft_fixtures.py), and the errors of bad adapter directories.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;
use tempering_model::known::fixtures_dir;
use tempering_model::lora::{peft_tensor_names, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use tempering_model::{
    load_peft, save_peft, DropoutRng, LoraConfig, LoraTarget, ModelFiles, Transformer,
};

/// The committed adapter saved by this project (made by `write_rust_adapter_fixture`).
const RUST_ADAPTER: &str = "peft/tiny-llama-rust-adapter";
/// The committed adapter saved by Python's PEFT.
const PEFT_ADAPTER: &str = "peft/tiny-llama-peft-adapter";

/// Deterministic values in [-scale, scale).
fn rand_vec(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale) as f32
        })
        .collect()
}

fn rand_t(dims: &[usize], seed: u64, scale: f64) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(rand_vec(n, seed, scale), dims, &Device::Cpu).unwrap()
}

fn base(name: &str) -> Transformer {
    let dir = fixtures_dir().join("models").join(name);
    ModelFiles::open(&dir, DType::F32, &Device::Cpu)
        .unwrap()
        .transformer()
        .unwrap()
}

fn ids() -> Tensor {
    let rows: [[u32; 9]; 2] = [
        [1, 17, 42, 200, 3, 99, 128, 7, 255],
        [5, 250, 31, 64, 64, 12, 0, 180, 77],
    ];
    Tensor::new(&rows, &Device::Cpu).unwrap()
}

fn logits(m: &Transformer) -> Tensor {
    m.forward_causal(&ids()).unwrap()
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

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn all_targets(r: usize, alpha: f64, dropout: f64) -> LoraConfig {
    LoraConfig::new(r, alpha, dropout, LoraTarget::ALL.to_vec())
}

/// Sets every B (and so the adapter's effect) to deterministic non-zero values.
fn randomise_b(vars: &[(String, Var)], seed: u64, scale: f64) {
    for (k, (name, v)) in vars.iter().enumerate() {
        if name.contains("lora_B") {
            v.set(&rand_t(v.dims(), seed + k as u64, scale)).unwrap();
        }
    }
}

fn tiny_with_adapter(name: &str) -> Transformer {
    let mut m = base(name);
    let vars = m.add_lora(&all_targets(4, 8.0, 0.0), 3).unwrap();
    randomise_b(&vars, 11, 0.2);
    m
}

#[test]
fn lora_at_init_leaves_logits_unchanged_with_peft_names_and_init() {
    let mut m = base("tiny-llama");
    let before = logits(&m);
    let cfg = LoraConfig::new(4, 8.0, 0.0, vec![LoraTarget::V, LoraTarget::Q]);
    let vars = m.add_lora(&cfg, 7).unwrap();
    // 2 layers x 2 targets x (A, B), layer by layer, q before v, A before B.
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 8);
    assert_eq!(
        names[0],
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(
        names[3],
        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    );
    assert_eq!(
        names[7],
        "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    );
    for (n, v) in &vars {
        if n.contains("lora_A") {
            // Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)), in = 64.
            assert_eq!(v.dims(), &[4, 64]);
            let vals = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let bound = 1.0 / 8.0;
            assert!(vals.iter().all(|x| x.abs() <= bound), "{n} out of bound");
            let var = vals.iter().map(|x| x * x).sum::<f32>() / vals.len() as f32;
            let expected = bound * bound / 3.0;
            assert!(
                (var / expected - 1.0).abs() < 0.25,
                "{n}: variance {var}, expected about {expected}"
            );
        } else {
            assert_eq!(v.dims(), &[v.dims()[0], 4]);
            assert_eq!(max_abs(v.as_tensor()), 0.0, "{n} must start at zero");
        }
    }
    // Same seed, same A; another seed, another A.
    let mut m2 = base("tiny-llama");
    let vars2 = m2.add_lora(&cfg, 7).unwrap();
    assert_eq!(
        max_abs_diff(vars[0].1.as_tensor(), vars2[0].1.as_tensor()),
        0.0
    );
    let mut m3 = base("tiny-llama");
    let vars3 = m3.add_lora(&cfg, 8).unwrap();
    assert!(max_abs_diff(vars[0].1.as_tensor(), vars3[0].1.as_tensor()) > 0.0);
    assert_eq!(max_abs_diff(&before, &logits(&m)), 0.0);
    let got = m.lora_config().unwrap().unwrap();
    assert_eq!(got.r, 4);
    assert_eq!(got.targets, vec![LoraTarget::Q, LoraTarget::V]);
}

#[test]
fn every_lora_var_gets_a_gradient_and_no_base_weight_does() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let mut m = base(name);
        let vars = m.add_lora(&all_targets(4, 8.0, 0.1), 5).unwrap();
        assert_eq!(vars.len(), 2 * 7 * 2);
        // B is zero at init, which would make every A's gradient zero: start from a non-zero B.
        randomise_b(&vars, 21, 0.1);
        m.set_lora_dropout(Some(DropoutRng::new(3)));
        let out = logits(&m);
        let proj = rand_t(out.dims(), 99, 1.0);
        let grads = (out * proj).unwrap().sum_all().unwrap().backward().unwrap();
        for (n, v) in &vars {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
            assert_eq!(g.dims(), v.dims());
            assert!(max_abs(g) > 0.0, "{name}: zero gradient for {n}");
        }
        for (n, t) in m.named_tensors() {
            // The fused RMSNorm's backward also returns its (frozen) weight's gradient, one
            // hidden-sized vector per norm: negligible, and the ops module's business. Every weight
            // matrix (projections, embeddings, LM head) must have none.
            if n.ends_with("norm.weight") {
                continue;
            }
            assert!(
                grads.get(&t).is_none(),
                "{name}: frozen base weight {n} got a gradient"
            );
        }
    }
}

/// A model whose base weights are `Var`s (as after full fine-tuning) gets adapters on frozen
/// weights: the backward pass reaches the adapters only, and the old `Var`s still see the weights.
#[test]
fn adapters_on_trainable_base_weights_freeze_them() {
    let mut m = base("tiny-llama");
    let base_vars = m.make_trainable(|_| true).unwrap();
    let vars = m.add_lora(&all_targets(4, 8.0, 0.0), 5).unwrap();
    randomise_b(&vars, 21, 0.1);
    let out = logits(&m);
    let grads = out.sum_all().unwrap().backward().unwrap();
    for (n, v) in &base_vars {
        assert!(
            grads.get(v.as_tensor()).is_none(),
            "base weight {n} got a gradient"
        );
    }
    for (n, v) in &vars {
        assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {n}");
    }
    // The storage is shared: setting a base Var changes the adapted model's output.
    let (_, w) = &base_vars[0];
    w.set(&w.as_tensor().zeros_like().unwrap()).unwrap();
    assert!(max_abs_diff(&out, &logits(&m)) > 0.0);
}

#[test]
fn dropout_applies_only_with_a_dropout_rng_and_is_reproducible() {
    let mut m = base("tiny-llama");
    let vars = m.add_lora(&all_targets(4, 8.0, 0.5), 1).unwrap();
    randomise_b(&vars, 2, 0.3);
    let eval1 = logits(&m);
    let eval2 = logits(&m);
    assert_eq!(
        max_abs_diff(&eval1, &eval2),
        0.0,
        "inference is deterministic"
    );

    let rng = DropoutRng::new(42);
    let start = rng.state();
    let mut train = m.clone();
    train.set_lora_dropout(Some(rng.clone()));
    let t1 = logits(&train);
    let t2 = logits(&train);
    assert!(max_abs_diff(&t1, &eval1) > 1e-3, "dropout changed nothing");
    assert!(
        max_abs_diff(&t1, &t2) > 1e-3,
        "two steps drew the same masks"
    );
    // Restoring the state replays the same masks; a fresh rng with the same seed too.
    rng.set_state(start);
    assert_eq!(max_abs_diff(&logits(&train), &t1), 0.0);
    let mut other = m.clone();
    other.set_lora_dropout(Some(DropoutRng::new(42)));
    assert_eq!(max_abs_diff(&logits(&other), &t1), 0.0);
    // The original model (dropout never set) and one switched back off stay deterministic.
    assert_eq!(max_abs_diff(&logits(&m), &eval1), 0.0);
    train.set_lora_dropout(None);
    assert_eq!(max_abs_diff(&logits(&train), &eval1), 0.0);
}

#[test]
fn without_adapters_gives_the_base_logits_and_shares_its_weights() {
    let plain = base("tiny-llama");
    let base_logits = logits(&plain);
    let mut m = plain.clone();
    let vars = m.add_lora(&all_targets(4, 8.0, 0.0), 9).unwrap();
    randomise_b(&vars, 4, 0.2);
    let with = logits(&m);
    assert!(max_abs_diff(&with, &base_logits) > 1e-2);
    let reference = m.without_adapters();
    assert!(!reference.has_lora() && m.has_lora());
    assert_eq!(max_abs_diff(&logits(&reference), &base_logits), 0.0);
    let (a, b) = (
        &m.layers[1].mlp.down_proj,
        &reference.layers[1].mlp.down_proj,
    );
    assert_eq!(
        a.weight.id(),
        b.weight.id(),
        "the reference copied a weight"
    );
    assert_eq!(m.embed_tokens.id(), reference.embed_tokens.id());
    // Updating the adapter in place shows in the policy and never in the reference.
    randomise_b(&vars, 40, 0.2);
    assert!(max_abs_diff(&logits(&m), &with) > 1e-3);
    assert_eq!(max_abs_diff(&logits(&reference), &base_logits), 0.0);
}

#[test]
fn lora_vars_share_storage_with_the_model() {
    let mut m = base("tiny-llama");
    let vars = m.add_lora(&all_targets(2, 4.0, 0.0), 1).unwrap();
    let again = m.lora_vars().unwrap();
    let names = |v: &[(String, Var)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&vars), names(&again));
    let before = logits(&m);
    randomise_b(&again, 8, 0.2);
    assert!(max_abs_diff(&logits(&m), &before) > 1e-3);
    assert_eq!(
        max_abs_diff(vars[1].1.as_tensor(), again[1].1.as_tensor()),
        0.0
    );
}

#[test]
fn save_then_load_gives_identical_logits() {
    let m = tiny_with_adapter("tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    save_peft(&out, &m, "fixtures/models/tiny-llama").unwrap();
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(ADAPTER_CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["base_model_name_or_path"], "fixtures/models/tiny-llama");
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ADAPTER_CONFIG_FILE && n != ADAPTER_WEIGHTS_FILE)
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let adapter = load_peft(&out).unwrap();
    assert_eq!(adapter.config, m.lora_config().unwrap().unwrap());
    assert_eq!(adapter.tensors.len(), 2 * 7 * 2);
    let mut loaded = base("tiny-llama");
    let vars = loaded.apply_peft(&out).unwrap();
    assert_eq!(vars.len(), 28);
    assert!(vars.iter().all(|(_, v)| v.as_tensor().is_variable()));
    assert_eq!(max_abs_diff(&logits(&loaded), &logits(&m)), 0.0);
}

#[test]
fn merged_model_gives_the_adapter_models_logits() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let m = tiny_with_adapter(name);
        let with = logits(&m);
        let merged = m.merge_lora().unwrap();
        assert!(!merged.has_lora());
        let base_logits = logits(&m.without_adapters());
        assert!(
            max_abs_diff(&with, &base_logits) > 1e-2,
            "{name}: adapter is a no-op"
        );
        let d = max_abs_diff(&logits(&merged), &with);
        assert!(
            d <= 1e-5 * max_abs(&with).max(1.0),
            "{name}: merged differs by {d}"
        );
        // Merged weights are plain tensors, and unmerged layers are shared, not copied.
        assert!(!merged.layers[0].self_attn.q_proj.weight.is_variable());
        assert_eq!(merged.embed_tokens.id(), m.embed_tokens.id());
    }
}

fn load_fixture(rel: &str) -> Value {
    let p = fixtures_dir().join(rel);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

/// Our logits with the adapter in `fx["adapter_dir"]` on `fx["base_dir"]` against PEFT's in `fx`.
fn check_against_peft(fx: &Value) {
    let root = fixtures_dir().join("..");
    let base_dir = root.join(fx["base_dir"].as_str().unwrap());
    let adapter_dir = root.join(fx["adapter_dir"].as_str().unwrap());
    let mut m = ModelFiles::open(&base_dir, DType::F32, &Device::Cpu)
        .unwrap()
        .transformer()
        .unwrap();
    m.apply_peft(&adapter_dir).unwrap();
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
    let input = Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap();
    let ours = m.forward_causal(&input).unwrap();
    let want: Vec<f32> = fx["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter())
        .flat_map(|r| r.as_array().unwrap().iter())
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let want = Tensor::from_vec(want, ours.dims(), &Device::Cpu).unwrap();
    let scale = max_abs(&want);
    let d = max_abs_diff(&ours, &want);
    assert!(
        d <= 1e-4 * scale,
        "{}: max |ours - PEFT| = {d} (max |logit| {scale})",
        adapter_dir.display()
    );
    // The adapter matters: without it the logits are far from PEFT's.
    let plain = m.without_adapters().forward_causal(&input).unwrap();
    assert!(max_abs_diff(&plain, &want) > 1e-2 * scale);
}

#[test]
fn peft_loads_an_adapter_saved_here_with_the_same_logits() {
    check_against_peft(&load_fixture(&format!("{RUST_ADAPTER}.json")));
}

#[test]
fn an_adapter_saved_by_peft_loads_here_with_the_same_logits() {
    check_against_peft(&load_fixture(&format!("{PEFT_ADAPTER}.json")));
}

/// The committed fixture adapter is what this project saves today.
#[test]
fn committed_rust_adapter_matches_what_we_save() {
    let dir = tempfile::tempdir().unwrap();
    make_rust_adapter(dir.path());
    for f in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
        let ours = std::fs::read(dir.path().join(f)).unwrap();
        let committed = std::fs::read(fixtures_dir().join(RUST_ADAPTER).join(f)).unwrap();
        assert!(ours == committed, "{f} differs from the committed fixture");
    }
}

/// r 4, alpha 8, dropout 0.05 (ignored in inference) on every target of tiny-llama, B non-zero.
fn make_rust_adapter(out: &Path) {
    let mut m = base("tiny-llama");
    let vars = m.add_lora(&all_targets(4, 8.0, 0.05), 2024).unwrap();
    randomise_b(&vars, 77, 0.2);
    save_peft(out, &m, "fixtures/models/tiny-llama").unwrap();
}

/// Regenerates `fixtures/peft/tiny-llama-rust-adapter/`; then run
/// `scripts/reference/peft_fixtures.py` for PEFT's logits.
#[test]
#[ignore]
fn write_rust_adapter_fixture() {
    make_rust_adapter(&fixtures_dir().join(RUST_ADAPTER));
}

// ---- Bad adapters ----

fn copy_adapter(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let p = dir.join(ADAPTER_CONFIG_FILE);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn apply_err(dir: &Path) -> String {
    let mut m = base("tiny-llama");
    match m.apply_peft(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn scratch_adapter() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    copy_adapter(&fixtures_dir().join(RUST_ADAPTER), &dir);
    (tmp, dir)
}

#[test]
fn missing_adapter_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let e = apply_err(&tmp.path().join("nope"));
    assert!(e.contains("nope") && e.contains("adapter"), "{e}");

    let (_t, dir) = scratch_adapter();
    std::fs::remove_file(dir.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let e = apply_err(&dir);
    assert!(
        e.contains(ADAPTER_WEIGHTS_FILE) && e.contains("missing"),
        "{e}"
    );

    let (_t, dir) = scratch_adapter();
    std::fs::remove_file(dir.join(ADAPTER_CONFIG_FILE)).unwrap();
    let e = apply_err(&dir);
    assert!(e.contains(ADAPTER_CONFIG_FILE), "{e}");

    let (_t, dir) = scratch_adapter();
    std::fs::write(dir.join(ADAPTER_CONFIG_FILE), "{ not json").unwrap();
    let e = apply_err(&dir);
    assert!(e.contains(ADAPTER_CONFIG_FILE) && e.contains("JSON"), "{e}");
}

#[test]
fn a_target_module_the_model_lacks_is_named() {
    let (_t, dir) = scratch_adapter();
    edit_config(&dir, |v| {
        v["target_modules"] = serde_json::json!(["q_proj", "c_attn"])
    });
    let e = apply_err(&dir);
    assert!(e.contains("c_attn") && e.contains("target_modules"), "{e}");
}

#[test]
fn a_shape_mismatch_names_the_tensor() {
    let (_t, dir) = scratch_adapter();
    edit_config(&dir, |v| v["r"] = serde_json::json!(3));
    let e = apply_err(&dir);
    let (a, _) = peft_tensor_names(0, LoraTarget::Q);
    assert!(
        e.contains(&a) && e.contains("[4, 64]") && e.contains("[3, 64]"),
        "{e}"
    );
}

#[test]
fn missing_and_stray_tensors_are_named() {
    // The config targets fewer modules than the file holds: a stray tensor.
    let (_t, dir) = scratch_adapter();
    edit_config(&dir, |v| {
        v["target_modules"] = serde_json::json!(["q_proj"])
    });
    let e = apply_err(&dir);
    assert!(
        e.contains("lora_") && e.contains("not a LoRA weight"),
        "{e}"
    );

    // A tensor missing from the file.
    let (_t, dir) = scratch_adapter();
    let mut tensors = load_peft(&dir).unwrap().tensors;
    let (_, b) = peft_tensor_names(1, LoraTarget::Down);
    tensors.remove(&b);
    let tensors: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let e = apply_err(&dir);
    assert!(e.contains(&b) && e.contains("missing"), "{e}");

    // A model with more layers than the adapter: missing tensors of layer 2.
    let cfg_path = fixtures_dir().join("models/tiny-llama/config.json");
    let mut cfg = tempering_model::ModelConfig::from_hf_file(&cfg_path).unwrap();
    cfg.num_layers = 3;
    let mut bigger = Transformer::init_random(&cfg, 1, &Device::Cpu, DType::F32).unwrap();
    let e = bigger
        .apply_peft(&fixtures_dir().join(RUST_ADAPTER))
        .unwrap_err()
        .to_string();
    assert!(e.contains("layers.2.") && e.contains("missing"), "{e}");
}

#[test]
fn unsupported_peft_options_are_refused_by_name() {
    for (field, value) in [
        ("use_dora", serde_json::json!(true)),
        ("bias", serde_json::json!("all")),
        ("fan_in_fan_out", serde_json::json!(true)),
        ("rank_pattern", serde_json::json!({"q_proj": 2})),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("peft_type", serde_json::json!("IA3")),
        ("target_modules", serde_json::json!(".*proj")),
    ] {
        let (_t, dir) = scratch_adapter();
        edit_config(&dir, |v| v[field] = value.clone());
        let e = apply_err(&dir);
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn adapters_do_not_stack() {
    let mut m = tiny_with_adapter("tiny-llama");
    assert!(m.add_lora(&LoraConfig::default(), 1).is_err());
    assert!(m.apply_peft(&fixtures_dir().join(RUST_ADAPTER)).is_err());
    let mut plain = base("tiny-llama");
    let e = save_peft(&tempfile::tempdir().unwrap().path().join("x"), &plain, "b")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no LoRA"), "{e}");
    assert!(plain.lora_vars().unwrap().is_empty());
    plain.add_lora(&LoraConfig::default(), 1).unwrap();
}

#[test]
fn config_errors_name_the_field() {
    let mut m = base("tiny-llama");
    let bad = [
        (LoraConfig::new(0, 8.0, 0.0, vec![LoraTarget::Q]), "lora_r"),
        (
            LoraConfig::new(4, 0.0, 0.0, vec![LoraTarget::Q]),
            "lora_alpha",
        ),
        (
            LoraConfig::new(4, 8.0, 1.0, vec![LoraTarget::Q]),
            "lora_dropout",
        ),
        (LoraConfig::new(4, 8.0, 0.0, vec![]), "lora_targets"),
    ];
    for (cfg, field) in bad {
        let e = m.add_lora(&cfg, 1).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    assert!(!m.has_lora());
    assert_eq!(
        LoraTarget::parse_list("v, q,gate_proj,q").unwrap(),
        vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Gate]
    );
    assert_eq!(LoraTarget::parse_list("all").unwrap().len(), 7);
    let e = LoraTarget::parse_list("q,x").unwrap_err().to_string();
    assert!(e.contains("lora_targets") && e.contains("`x`"), "{e}");
    assert!(LoraTarget::parse_list(" , ").is_err());
}
