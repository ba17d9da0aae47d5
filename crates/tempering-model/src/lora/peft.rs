//! PEFT's adapter directories: `adapter_config.json` and `adapter_model.safetensors` under PEFT's
//! tensor names, written atomically and read back with every option this project does not implement
//! refused by name. Knows the file format only; putting an adapter on a model is `attach`'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::{json, Value};

use super::*;
use crate::error::{ModelError, Result};
use crate::transformer::Transformer;
use crate::weights::{write_atomic, Weights};

/// A PEFT adapter read from disk: its configuration, the base model it names, and its tensors under
/// PEFT's names (on the CPU, as stored).
#[derive(Clone, Debug)]
pub struct PeftAdapter {
    pub dir: PathBuf,
    pub config: LoraConfig,
    pub base_model_name_or_path: Option<String>,
    pub tensors: BTreeMap<String, Tensor>,
}

/// Writes `model`'s adapters as a PEFT adapter directory `dir` (created if needed):
/// `adapter_config.json` and `adapter_model.safetensors` (PEFT's tensor names, the model's dtype).
/// Each file is written under a temporary name and renamed.
pub fn save_peft(dir: &Path, model: &Transformer, base_model_name_or_path: &str) -> Result<()> {
    let cfg = model.lora_config()?.ok_or_else(|| {
        ModelError::Unsupported(format!(
            "{}: the model has no LoRA adapters to save",
            dir.display()
        ))
    })?;
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tensors = model.lora_tensors();
    Weights::save_safetensors(&tensors, &dir.join(ADAPTER_WEIGHTS_FILE), model.dtype())?;
    let alpha = if cfg.alpha.fract() == 0.0 && cfg.alpha.abs() < 1e15 {
        json!(cfg.alpha as i64)
    } else {
        json!(cfg.alpha)
    };
    let v = json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": alpha,
        "lora_dropout": cfg.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": cfg.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": cfg.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": cfg.use_rslora,
    });
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text =
        serde_json::to_string_pretty(&v).map_err(|e| ModelError::format(&path, e.to_string()))?;
    write_atomic(&path, text.as_bytes())
}

/// Reads the PEFT LoRA adapter in `dir`. Options this project does not implement (DoRA, biases,
/// per-layer ranks, `modules_to_save`, regex targets, ...) are refused with the field named.
pub fn load_peft(dir: &Path) -> Result<PeftAdapter> {
    if !dir.is_dir() {
        return Err(ModelError::format(
            dir,
            "no such adapter directory (a PEFT adapter directory holds adapter_config.json and \
             adapter_model.safetensors)",
        ));
    }
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(ModelError::format(
            &cfg_path,
            "missing from the adapter directory",
        ));
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(&cfg_path, format!("invalid JSON: {e}")))?;
    let (config, base) = parse_adapter_config(&v, &cfg_path)?;
    let wpath = dir.join(ADAPTER_WEIGHTS_FILE);
    if !wpath.is_file() {
        let msg = if dir.join("adapter_model.bin").is_file() {
            "missing; only adapter_model.bin (PyTorch pickle) is present, which is not read: \
             re-save the adapter with safe_serialization=True"
        } else {
            "missing from the adapter directory"
        };
        return Err(ModelError::format(&wpath, msg));
    }
    let tensors = candle_core::safetensors::load(&wpath, &Device::Cpu)
        .map_err(|e| ModelError::format(&wpath, format!("not a readable safetensors file: {e}")))?;
    Ok(PeftAdapter {
        dir: dir.to_path_buf(),
        config,
        base_model_name_or_path: base,
        tensors: tensors.into_iter().collect(),
    })
}

fn parse_adapter_config(v: &Value, path: &Path) -> Result<(LoraConfig, Option<String>)> {
    let obj = v
        .as_object()
        .ok_or_else(|| ModelError::format(path, "expected a JSON object"))?;
    let bad = |field: &str, msg: String| ModelError::format(path, format!("`{field}`: {msg}"));
    let get = |k: &str| obj.get(k).filter(|x| !x.is_null());
    if let Some(p) = get("peft_type") {
        if p.as_str() != Some("LORA") {
            return Err(bad(
                "peft_type",
                format!("{p} is not supported (only LORA)"),
            ));
        }
    }
    if let Some(t) = get("task_type") {
        if t.as_str() != Some("CAUSAL_LM") {
            return Err(bad(
                "task_type",
                format!("{t} is not supported (only CAUSAL_LM adapters)"),
            ));
        }
    }
    // Options that must be off: (field, what counts as off).
    let off = |k: &str| -> bool {
        match get(k) {
            None => true,
            Some(Value::Bool(b)) => !b,
            Some(Value::String(s)) => s == "none",
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        }
    };
    for k in [
        "fan_in_fan_out",
        "bias",
        "use_dora",
        "lora_bias",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "modules_to_save",
        "exclude_modules",
        "target_parameters",
        "layer_replication",
        "trainable_token_indices",
    ] {
        if !off(k) {
            return Err(bad(
                k,
                format!(
                    "{} is not supported here",
                    get(k).map(|x| x.to_string()).unwrap_or_default()
                ),
            ));
        }
    }
    let r = match get("r") {
        None => 8,
        Some(x) => x
            .as_u64()
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("r", format!("expected a positive integer, got {x}")))?
            as usize,
    };
    let alpha = match get("lora_alpha") {
        None => 8.0,
        Some(x) => x
            .as_f64()
            .ok_or_else(|| bad("lora_alpha", format!("expected a number, got {x}")))?,
    };
    let dropout = match get("lora_dropout") {
        None => 0.0,
        Some(x) => x
            .as_f64()
            .ok_or_else(|| bad("lora_dropout", format!("expected a number, got {x}")))?,
    };
    let use_rslora = match get("use_rslora") {
        None => false,
        Some(x) => x
            .as_bool()
            .ok_or_else(|| bad("use_rslora", format!("expected true or false, got {x}")))?,
    };
    let targets = match get("target_modules") {
        None => return Err(bad("target_modules", "missing".into())),
        Some(Value::String(s)) if s == "all-linear" => LoraTarget::ALL.to_vec(),
        Some(Value::String(s)) => {
            return Err(bad(
                "target_modules",
                format!("the pattern {s:?} is not supported (give a list of module names)"),
            ))
        }
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for x in a {
                let name = x
                    .as_str()
                    .ok_or_else(|| bad("target_modules", format!("expected names, got {x}")))?;
                let t = LoraTarget::ALL
                    .into_iter()
                    .find(|t| t.module_name() == name)
                    .ok_or_else(|| {
                        bad(
                            "target_modules",
                            format!(
                                "`{name}` is not a linear layer of this model's decoder (expected \
                                 some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
                            ),
                        )
                    })?;
                out.push(t);
            }
            out.sort();
            out.dedup();
            if out.is_empty() {
                return Err(bad("target_modules", "empty".into()));
            }
            out
        }
        Some(x) => {
            return Err(bad(
                "target_modules",
                format!("expected a list of module names, got {x}"),
            ))
        }
    };
    let base = get("base_model_name_or_path")
        .and_then(|x| x.as_str())
        .map(str::to_string);
    let config = LoraConfig {
        r,
        alpha,
        dropout,
        targets,
        use_rslora,
    };
    config
        .validate()
        .map_err(|e| ModelError::format(path, e.to_string()))?;
    Ok((config, base))
}
