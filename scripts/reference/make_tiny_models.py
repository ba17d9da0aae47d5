#!/usr/bin/env python3
"""Tiny random decoder models and their reference logits, made by HF transformers.

Writes, under the repository root:
  fixtures/models/<name>/     an HF model directory (config.json, safetensors, generation_config.json)
  fixtures/logits/<name>.json the float32 logits transformers computes for a fixed batch of input ids

Models (all: vocab 256, hidden 64, 2 layers, 4 heads, 2 KV heads (GQA), head_dim 16, intermediate 128,
rms_norm_eps 1e-5, SiLU MLP):
  tiny-llama        LlamaForCausalLM, rope_theta 1e4, untied lm_head, float32, one safetensors file
  tiny-llama3-bf16  LlamaForCausalLM, llama3 RoPE scaling (factor 8, low 1, high 4, original max 64),
                    max_position_embeddings 512, rope_theta 5e5, tied embeddings, saved in bfloat16
  tiny-qwen2        Qwen2ForCausalLM (q/k/v bias), tied embeddings, float32, sharded (index + shards)
  tiny-mistral      MistralForCausalLM with sliding_window 4, untied, float32

Weights are drawn with a fixed seed at a scale that gives O(1) activations and logits (transformers'
default init, std 0.02, gives near-uniform logits that would hide mistakes). Norm weights are drawn
around 1 and biases are non-zero so that every tensor matters.

Config files are written in the layout of configs on the Hub (`rope_theta` and `rope_scaling` at the
top level, `torch_dtype`), which transformers 5 still reads; the logits are computed by reloading each
saved directory with `from_pretrained(..., attn_implementation="eager", dtype=torch.float32)`, so the
fixture checks the files as written. bf16 weights are upcast to float32 before computing.

Usage: python scripts/reference/make_tiny_models.py
"""

import json
import shutil
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "fixtures" / "models"
LOGITS = ROOT / "fixtures" / "logits"

SEED = 20240601
COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
)
# Two sequences of 9 ids, no padding; fixed so that every fixture uses the same inputs.
INPUT_IDS = [
    [1, 17, 200, 45, 3, 99, 128, 255, 64],
    [1, 250, 7, 7, 180, 33, 12, 90, 141],
]


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Re-draws every parameter at a scale that keeps activations and logits O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight") or "layernorm" in name:
                values = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            elif name.endswith(".bias"):
                values = 0.1 * torch.randn(p.shape, generator=gen)
            elif "embed_tokens" in name:
                values = torch.randn(p.shape, generator=gen)
            else:  # linear weight [out, in]
                values = torch.randn(p.shape, generator=gen) / (p.shape[1] ** 0.5)
            p.copy_(values.to(p.dtype))


def hub_layout_config(model_dir: Path) -> None:
    """Rewrites transformers-5 `rope_parameters` / `dtype` into the Hub's classic keys."""
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters", None)
    if rope is not None:
        rope = dict(rope)
        cfg["rope_theta"] = rope.pop("rope_theta")
        cfg["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg["dtype"]
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def f32_list(t: torch.Tensor):
    """Nested lists of floats, each the shortest decimal that round-trips the float32 value."""
    if t.dim() == 1:
        return [float(str(x)) for x in t.numpy()]
    return [f32_list(x) for x in t]


@torch.no_grad()
def logits_of(model_dir: Path, config_overrides=None) -> torch.Tensor:
    kwargs = dict(attn_implementation="eager", dtype=torch.float32)
    if config_overrides:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model_dir)
        for k, v in config_overrides.items():
            setattr(cfg, k, v)
        kwargs["config"] = cfg
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = torch.tensor(INPUT_IDS, dtype=torch.long)
    return model(input_ids=ids).logits.float()


def build(name: str, cls, config, *, save_dtype, max_shard_size=None) -> Path:
    torch.manual_seed(SEED)
    model = cls(config)
    randomize(model, SEED)
    model.eval()
    out = MODELS / name
    if out.exists():
        shutil.rmtree(out)
    model = model.to(save_dtype)
    kwargs = {"safe_serialization": True}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out, **kwargs)
    hub_layout_config(out)
    return out


def write_logits(name: str, logits: torch.Tensor, dtype_note: str) -> None:
    LOGITS.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": name,
        "model_dir": f"fixtures/models/{name}",
        "input_ids": INPUT_IDS,
        "shape": list(logits.shape),
        "dtype_note": dtype_note,
        "logits": f32_list(logits),
    }
    (LOGITS / f"{name}.json").write_text(json.dumps(doc) + "\n")


def main() -> None:
    torch.set_num_threads(1)
    MODELS.mkdir(parents=True, exist_ok=True)
    f32_note = (
        "float32 weights; logits computed by transformers in float32 with attn_implementation='eager'"
    )

    # (a) Llama, float32, untied.
    cfg = LlamaConfig(
        **COMMON,
        max_position_embeddings=128,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    d = build("tiny-llama", LlamaForCausalLM, cfg, save_dtype=torch.float32)
    write_logits("tiny-llama", logits_of(d), f32_note)

    # (b) Llama 3 RoPE scaling, tied embeddings, bfloat16 on disk.
    cfg = LlamaConfig(
        **COMMON,
        max_position_embeddings=512,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
        tie_word_embeddings=True,
    )
    d = build("tiny-llama3-bf16", LlamaForCausalLM, cfg, save_dtype=torch.bfloat16)
    logits = logits_of(d)
    unscaled = logits_of(d, {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}})
    diff = (logits - unscaled).abs().max().item()
    assert diff > 1e-3, f"llama3 RoPE scaling has no visible effect ({diff})"
    print(f"tiny-llama3-bf16: max |logits(llama3 rope) - logits(plain rope)| = {diff:.4f}")
    write_logits(
        "tiny-llama3-bf16",
        logits,
        "weights stored in bfloat16; loaded and upcast to float32, logits computed by transformers in "
        "float32 with attn_implementation='eager'",
    )

    # (c) Qwen2: q/k/v bias, tied embeddings, sharded float32.
    cfg = Qwen2Config(
        **COMMON,
        max_position_embeddings=128,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
    )
    d = build("tiny-qwen2", Qwen2ForCausalLM, cfg, save_dtype=torch.float32, max_shard_size="100KB")
    assert (d / "model.safetensors.index.json").exists(), "tiny-qwen2 was not sharded"
    write_logits("tiny-qwen2", logits_of(d), f32_note)

    # (d) Mistral with a sliding window of 4 (eager attention honours it).
    cfg = MistralConfig(
        **COMMON,
        max_position_embeddings=128,
        rope_theta=10000.0,
        sliding_window=4,
        tie_word_embeddings=False,
    )
    d = build("tiny-mistral", MistralForCausalLM, cfg, save_dtype=torch.float32)
    logits = logits_of(d)
    full = logits_of(d, {"sliding_window": None})
    diff_early = (logits[:, :4] - full[:, :4]).abs().max().item()
    diff_late = (logits[:, 4:] - full[:, 4:]).abs().max().item()
    assert diff_early < 1e-5 and diff_late > 1e-3, (diff_early, diff_late)
    print(f"tiny-mistral: window changes positions >= 4 by up to {diff_late:.4f}, earlier ones by {diff_early:.1e}")
    write_logits(
        "tiny-mistral",
        logits,
        f32_note + "; sliding_window=4: each position attends to itself and the 3 before it",
    )

    for p in sorted(MODELS.iterdir()):
        size = sum(f.stat().st_size for f in p.iterdir())
        print(f"{p.name}: {size / 1024:.0f} KiB: {sorted(f.name for f in p.iterdir())}")


if __name__ == "__main__":
    main()
