//! Fuzz smoke tests of the model layer's parsers (see `fuzz_common`): safetensors weights, GGUF
//! files (header, metadata, tensor table, offsets, the tokenizer in the metadata), `tokenizer.json`
//! and `config.json`, each byte-mutated from committed valid files. Each must give `Ok` or an
//! error, never a panic. `scripts/fuzz.sh PARSER [SECONDS]` runs one of them for longer. The inputs
//! of the crashes found are replayed from `fixtures/bad/`.

mod fuzz_common;

use candle_core::{DType, Device};
use fuzz_common::{fixture, fuzz, read_fixture, write};
use tempering_model::loader::{read_gguf, ModelFiles, ModelInfo};
use tempering_model::{load_peft, ModelConfig, Tokenizer};

/// Opens a model path both ways (headers only, then the full load) and uses what loads.
fn open_model(path: &std::path::Path) {
    let _ = ModelInfo::read(path);
    if let Ok(files) = ModelFiles::open(path, DType::F32, &Device::Cpu) {
        let _ = files.transformer();
        if let Some(tok) = &files.tokenizer {
            use_tokenizer(tok);
        }
    }
}

fn use_tokenizer(tok: &Tokenizer) {
    if let Ok(ids) = tok.encode("Compute: 3+4\n<s> héllo 😀", true) {
        let _ = tok.decode(&ids, false);
    }
    let _ = tok.decode(&[0, 1, 2, 3, 1000, u32::MAX], true);
    let _ = (tok.bos_token(), tok.eos_token(), tok.special_tokens());
}

#[test]
fn safetensors_weights() {
    let dir = tempfile::tempdir().unwrap();
    let seed = read_fixture("models/tiny-llama/model.safetensors");
    std::fs::copy(
        fixture("models/tiny-llama/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    fuzz("safetensors", &[seed], 48, |bytes| {
        write(dir.path(), "model.safetensors", bytes);
        open_model(dir.path());
    });
}

#[test]
fn gguf_model_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = [
        read_fixture("gguf/q4_0.gguf"),
        read_fixture("gguf/q8_0.gguf"),
        read_fixture("tokenizer/tiny_spm.gguf"),
    ];
    fuzz("gguf", &seeds, 96, |bytes| {
        let path = write(dir.path(), "model.gguf", bytes);
        if let Ok(content) = read_gguf(&path) {
            if let Ok(tok) = Tokenizer::from_gguf(&content, &path) {
                use_tokenizer(&tok);
            }
        }
        open_model(&path);
    });
}

#[test]
fn tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    // A WordLevel tokenizer as committed, and a SentencePiece-style BPE one converted from GGUF.
    let spm = fixture("tokenizer/tiny_spm.gguf");
    let converted = Tokenizer::from_gguf(&read_gguf(&spm).unwrap(), &spm).unwrap();
    converted.save_hf(dir.path()).unwrap();
    let seeds = [
        read_fixture("models/tiny-arith-sft/tokenizer.json"),
        std::fs::read(dir.path().join("tokenizer.json")).unwrap(),
    ];
    fuzz("tokenizer_json", &seeds, 96, |bytes| {
        let path = write(dir.path(), "tokenizer.json", bytes);
        if let Ok(tok) = Tokenizer::from_file(&path) {
            use_tokenizer(&tok);
        }
    });
}

#[test]
fn config_json() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = [
        read_fixture("models/tiny-llama/config.json"),
        read_fixture("models/tiny-qwen2/config.json"),
        read_fixture("models/tiny-mistral/config.json"),
    ];
    fuzz("config_json", &seeds, 128, |bytes| {
        let path = write(dir.path(), "config.json", bytes);
        if let Ok(cfg) = ModelConfig::from_hf_file(&path) {
            let _ = (cfg.num_parameters(), cfg.rope_inv_freq());
        }
    });
}

/// A PEFT adapter directory's `adapter_config.json` (the committed PEFT-made adapter's, and the
/// same cut to the keys this project reads), loaded beside its committed weights and put onto the
/// tiny base model, then merged.
#[test]
fn adapter_config_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("peft/tiny-llama-peft-adapter/adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let base = ModelFiles::open(&fixture("models/tiny-llama"), DType::F32, &Device::Cpu)
        .unwrap()
        .transformer()
        .unwrap();
    let full = read_fixture("peft/tiny-llama-peft-adapter/adapter_config.json");
    let v: serde_json::Value = serde_json::from_slice(&full).unwrap();
    let keys = [
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "use_rslora",
        "peft_type",
    ];
    let short: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|k| (k.to_string(), v[*k].clone()))
        .collect();
    let seeds = [full, serde_json::to_vec(&short).unwrap()];
    fuzz("adapter_config", &seeds, 128, |bytes| {
        write(dir.path(), "adapter_config.json", bytes);
        if let Ok(adapter) = load_peft(dir.path()) {
            let mut model = base.clone();
            if model.apply_adapter(&adapter).is_ok() {
                let _ = model.merge_lora();
            }
        }
    });
}

/// Every input under `fixtures/bad/model/` (the crashes the fuzzers found, and hostile
/// headers written by hand) gives an error naming the file, not a panic.
#[test]
fn bad_inputs_give_errors() {
    let dir = fixture("bad/model");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = e.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let err = if name.ends_with(".gguf") {
            ModelFiles::open(&path, DType::F32, &Device::Cpu).err()
        } else if name.ends_with(".safetensors") {
            let d = tempfile::tempdir().unwrap();
            std::fs::copy(
                fixture("models/tiny-llama/config.json"),
                d.path().join("config.json"),
            )
            .unwrap();
            std::fs::copy(&path, d.path().join("model.safetensors")).unwrap();
            ModelFiles::open(d.path(), DType::F32, &Device::Cpu).err()
        } else if name.ends_with("tokenizer.json") {
            Tokenizer::from_file(&path).err()
        } else {
            continue;
        };
        let err = err.unwrap_or_else(|| panic!("{name} loaded"));
        let msg = err.to_string();
        assert!(
            msg.contains("model.safetensors") || msg.contains(&name),
            "{name}: {msg}"
        );
        n += 1;
    }
    assert!(n > 0, "no bad inputs in {}", dir.display());
}
