#!/usr/bin/env python3
"""LoRA adapter fixtures in both directions between this project and Python's PEFT.

1. Rust -> PEFT. `fixtures/peft/tiny-llama-rust-adapter/` is an adapter saved by this project (made by
   `cargo test -p tempering-model --test lora -- --ignored write_rust_adapter_fixture`: r 4, alpha 8,
   dropout 0.05, all seven projections of fixtures/models/tiny-llama, B set non-zero). This script loads
   it with `PeftModel.from_pretrained` onto the base, checks that every tensor of the file was loaded
   into the model unchanged, and records PEFT's logits in `fixtures/peft/tiny-llama-rust-adapter.json`.

2. PEFT -> Rust. It creates an adapter with PEFT (`get_peft_model`: r 8, lora_alpha 16, rsLoRA, dropout
   0.1, on q_proj, v_proj, gate_proj and down_proj; `init_lora_weights=False` so B is non-zero, then B
   scaled by 0.3), saves it to `fixtures/peft/tiny-llama-peft-adapter/` (the base path in its config
   rewritten as the repository-relative `fixtures/models/tiny-llama`), reloads it from disk onto a fresh
   base, and records the logits in `fixtures/peft/tiny-llama-peft-adapter.json`.

Each JSON holds `base_dir`, `adapter_dir` (repository-relative), `made_by`, `input_ids` (2 x 9),
`shape`, `logits` ([2][9][256], float32 as shortest round-tripping decimals) and
`max_abs_change_from_base` (how much the adapter moves the logits: it must matter). Logits are computed
in float32 with eager attention, in eval mode (dropout off). The Rust side is
`crates/tempering-model/tests/lora.rs`.

Usage: python scripts/reference/peft_fixtures.py   (a few seconds; deterministic)
"""

import json
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[2]
BASE = "fixtures/models/tiny-llama"
RUST_ADAPTER = "fixtures/peft/tiny-llama-rust-adapter"
PEFT_ADAPTER = "fixtures/peft/tiny-llama-peft-adapter"
SEED = 20240917
INPUT_IDS = [
    [1, 33, 7, 140, 250, 3, 64, 99, 18],
    [1, 200, 5, 5, 77, 128, 0, 255, 42],
]


def f32_list(t: torch.Tensor):
    """Nested lists of floats, each the shortest decimal that round-trips the float32 value."""
    if t.dim() == 1:
        return [float(str(x)) for x in t.numpy()]
    return [f32_list(x) for x in t]


def load_base():
    m = AutoModelForCausalLM.from_pretrained(
        ROOT / BASE, attn_implementation="eager", dtype=torch.float32
    )
    m.eval()
    return m


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model(input_ids=torch.tensor(INPUT_IDS, dtype=torch.long)).logits.float()


@torch.no_grad()
def load_adapter_checked(adapter_dir: Path):
    """The base with the adapter loaded by PEFT; asserts every file tensor landed in the model."""
    model = PeftModel.from_pretrained(load_base(), adapter_dir)
    model.eval()
    state = model.state_dict()
    file = load_file(adapter_dir / "adapter_model.safetensors")
    assert file, "empty adapter"
    for name, t in file.items():
        key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        assert key in state, f"{name}: not in the PEFT model ({key})"
        assert torch.equal(state[key], t.to(state[key].dtype)), f"{name}: loaded value differs"
    n_lora = sum(1 for k in state if ".lora_" in k)
    assert n_lora == len(file), f"model has {n_lora} LoRA tensors, the file {len(file)}"
    return model


def write(adapter_rel: str, made_by: str, out: torch.Tensor, base: torch.Tensor) -> None:
    change = float((out - base).abs().max())
    assert change > 0.05, f"{adapter_rel}: the adapter barely changes the logits ({change})"
    doc = {
        "base_dir": BASE,
        "adapter_dir": adapter_rel,
        "made_by": made_by,
        "input_ids": INPUT_IDS,
        "shape": list(out.shape),
        "max_abs_change_from_base": change,
        "logits": f32_list(out),
    }
    (ROOT / f"{adapter_rel}.json").write_text(json.dumps(doc) + "\n")
    print(f"{adapter_rel}.json: max |change| from base {change:.4f}")


def rust_to_peft(base_logits: torch.Tensor) -> None:
    model = load_adapter_checked(ROOT / RUST_ADAPTER)
    write(
        RUST_ADAPTER,
        "saved by tempering (save_peft), loaded by PEFT PeftModel.from_pretrained",
        logits(model),
        base_logits,
    )


def peft_to_rust(base_logits: torch.Tensor) -> None:
    torch.manual_seed(SEED)
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(load_base(), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.mul_(0.3)
    out = ROOT / PEFT_ADAPTER
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    cfg_path = out / "adapter_config.json"
    saved = json.loads(cfg_path.read_text())
    saved["base_model_name_or_path"] = BASE
    saved["target_modules"] = sorted(saved["target_modules"])  # a set in PEFT: fix the order
    cfg_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    readme = out / "README.md"
    if readme.exists():
        readme.unlink()
    write(
        PEFT_ADAPTER,
        "created and saved by PEFT (get_peft_model, save_pretrained), reloaded from disk by PEFT",
        logits(load_adapter_checked(out)),
        base_logits,
    )


def main() -> None:
    torch.set_num_threads(1)
    import peft
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    base_logits = logits(load_base())
    rust_to_peft(base_logits)
    peft_to_rust(base_logits)


if __name__ == "__main__":
    main()
