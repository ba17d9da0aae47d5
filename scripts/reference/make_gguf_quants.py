#!/usr/bin/env python3
"""Tiny random Llama GGUFs in every quantisation the loader supports, and their reference logits.

For each type in F32, F16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K this writes, under the repository root:
  fixtures/gguf/<type>.gguf  a llama GGUF (no tokenizer) whose 2-D weights are stored in <type>
  fixtures/gguf/<type>.json  the float32 logits HF transformers computes for fixed input ids after
                             loading that same GGUF, plus every tensor's stored type and shape

How the files are made, step by step:
 1. A LlamaForCausalLM with random weights (drawn as in make_tiny_models.py, O(1) logits, untied
    lm_head) is built by transformers.
 2. It is written as an all-float32 GGUF with gguf-py's GGUFWriter the way llama.cpp's
    convert_hf_to_gguf.py writes a llama model: llama.cpp tensor names (token_embd, blk.N.attn_q, ...,
    output_norm, output), q_proj/k_proj rows permuted with convert_hf_to_gguf's `LlamaModel.permute`
    (k with the KV head count), `llama.*` metadata keys, general.file_type 0.
 3. llama.cpp (llama-cpp-python's `llama_model_quantize`, `pure=True` so that every 2-D tensor takes
    the requested type, token_embd and output included) converts that file to each type. llama.cpp
    keeps 1-D tensors (the RMSNorm weights) in F32; the JSON records each tensor's actual type.
 4. transformers loads each GGUF back (`from_pretrained(dir, gguf_file=name, dtype=float32)`: gguf-py
    dequantises, transformers undoes the q/k permutation) and computes float32 logits with eager
    attention for two fixed sequences of 9 ids. The script asserts that the F32 file's logits equal the
    original model's and that every weight read back equals the original exactly (F32) or within 20%
    relative error (quantised), so the writer, the permutation and the quantiser are right: a wrong
    permutation or a swapped tensor would give an error of about 1.4.

Two base models, to keep the committed files small:
  "small"   hidden 64, intermediate 128, head_dim 16 (as fixtures/models/tiny-llama): F32, F16, Q8_0,
            Q4_0, Q4_1, whose blocks are 32 values wide.
  "k256"    hidden 256, intermediate 256, head_dim 64: Q4_K, Q5_K, Q6_K, whose super-blocks are 256
            values wide, so every row (input dimension) must be a multiple of 256.
Both: vocab 256, 2 layers, 4 heads, 2 KV heads, rms_norm_eps 1e-5, rope_theta 1e4, context 128.

<type>.json:
  {"type": "Q4_K", "gguf": "fixtures/gguf/q4_k.gguf", "gguf_sha256": ..., "base": "k256",
   "config": {...HF config fields...}, "tensors": [{"gguf_name", "hf_name", "type", "shape"}, ...],
   "reference": "...how the logits were computed...", "input_ids": [[9 ids] x 2],
   "shape": [2, 9, 256], "logits": [[[256 floats] x 9] x 2]}
"shape" in "tensors" is the HF (PyTorch) shape, [out, in]. Floats are the shortest decimals that
round-trip the float32 values.

Usage: python scripts/reference/make_gguf_quants.py     (about 20 s on 2 cores)
"""

import ctypes
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_models import INPUT_IDS, f32_list, randomize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "gguf"

SEED = 20240607
BASES = {
    "small": dict(hidden_size=64, intermediate_size=128, head_dim=16),
    "k256": dict(hidden_size=256, intermediate_size=256, head_dim=64),
}
COMMON = dict(
    vocab_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    max_position_embeddings=128,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=1,
    eos_token_id=2,
)
# (type name, llama_ftype, base model)
TYPES = [
    ("F32", 0, "small"),  # written directly, not quantised
    ("F16", 1, "small"),  # LLAMA_FTYPE_MOSTLY_F16
    ("Q8_0", 7, "small"),  # LLAMA_FTYPE_MOSTLY_Q8_0
    ("Q4_0", 2, "small"),  # LLAMA_FTYPE_MOSTLY_Q4_0
    ("Q4_1", 3, "small"),  # LLAMA_FTYPE_MOSTLY_Q4_1
    ("Q4_K", 15, "k256"),  # LLAMA_FTYPE_MOSTLY_Q4_K_M (pure: every 2-D tensor Q4_K)
    ("Q5_K", 17, "k256"),  # LLAMA_FTYPE_MOSTLY_Q5_K_M (pure: every 2-D tensor Q5_K)
    ("Q6_K", 18, "k256"),  # LLAMA_FTYPE_MOSTLY_Q6_K
]

HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_PARTS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    part, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_PARTS[part]}.{kind}"


def hf_name(gguf_name_: str) -> str:
    """The inverse of `gguf_name`."""
    for hf, g in HF_TO_GGUF.items():
        if g == gguf_name_:
            return hf
    _, layer, rest = gguf_name_.split(".", 2)
    part, kind = rest.rsplit(".", 1)
    hf_part = {v: k for k, v in LAYER_PARTS.items()}[part]
    return f"model.layers.{layer}.{hf_part}.{kind}"


def permute(w: np.ndarray, n_head: int, n_head_kv) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: interleaves the two RoPE halves of each head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def build_model(base: str) -> LlamaForCausalLM:
    cfg = LlamaConfig(**COMMON, **BASES[base])
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(cfg)
    randomize(model, SEED)
    return model.eval()


def write_f32_gguf(model: LlamaForCausalLM, path: Path) -> None:
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("model")
    w.add_name("tiny-llama-gguf")
    w.add_vocab_size(c.vocab_size)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_rope_dimension_count(c.head_dim)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_file_type(0)  # LLAMA_FTYPE_ALL_F32
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, t in model.state_dict().items():
        data = t.detach().float().numpy().copy()
        if name.endswith("q_proj.weight"):
            data = permute(data, c.num_attention_heads, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = permute(data, c.num_attention_heads, c.num_key_value_heads)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _silent(level, text, user_data):
    pass


def quantize(src: Path, dst: Path, ftype: int) -> None:
    import llama_cpp

    # llama.cpp logs every tensor it converts; keep the callback alive in a global while it is set.
    global _LOG_CALLBACK
    _LOG_CALLBACK = llama_cpp.llama_log_callback(_silent)
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 1
    params.pure = True  # every 2-D tensor in `ftype`'s type, token_embd and output included
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, ftype {ftype}) returned {rc}")


def tensor_table(path: Path):
    reader = gguf.GGUFReader(str(path))
    rows = []
    for t in reader.tensors:
        rows.append(
            {
                "gguf_name": t.name,
                "hf_name": hf_name(t.name),
                "type": t.tensor_type.name,
                # GGUF lists dimensions innermost first; HF's shape is the reverse.
                "shape": [int(x) for x in reversed(t.shape.tolist())],
            }
        )
    return sorted(rows, key=lambda r: r["gguf_name"])


@torch.no_grad()
def load_gguf(path: Path):
    """(logits for INPUT_IDS, state dict) of transformers' model loaded from the GGUF."""
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return model(input_ids=torch.tensor(INPUT_IDS)).logits.float(), model.state_dict()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        originals = {}
        for base in BASES:
            model = build_model(base)
            write_f32_gguf(model, tmp / f"{base}-f32.gguf")
            model.config._attn_implementation = "eager"
            with torch.no_grad():
                originals[base] = (model, model(input_ids=torch.tensor(INPUT_IDS)).logits)

        for type_name, ftype, base in TYPES:
            dst = OUT / f"{type_name.lower()}.gguf"
            if type_name == "F32":
                shutil.copyfile(tmp / f"{base}-f32.gguf", dst)
            else:
                quantize(tmp / f"{base}-f32.gguf", dst, ftype)
            tensors = tensor_table(dst)
            two_d = {r["type"] for r in tensors if len(r["shape"]) == 2}
            one_d = {r["type"] for r in tensors if len(r["shape"]) == 1}
            assert two_d == {type_name}, f"{dst.name}: 2-D tensors stored as {two_d}"
            assert one_d == {"F32"}, f"{dst.name}: 1-D tensors stored as {one_d}"

            logits, state = load_gguf(dst)
            model, original = originals[base]
            config = model.config
            # Each weight read back against the original: exact for F32, quantisation noise otherwise
            # (a wrong q/k permutation or a swapped tensor would give a relative error of ~1.4).
            worst = 0.0
            for name, w in model.state_dict().items():
                err = ((state[name] - w).norm() / w.norm()).item()
                worst = max(worst, err)
                limit = 0.0 if type_name == "F32" else 0.2
                assert err <= limit, f"{dst.name}: {name} read back with relative error {err}"
            scale = original.abs().amax(dim=-1, keepdim=True)
            rel = ((logits - original).abs() / scale).max().item()
            if type_name == "F32":
                assert rel < 1e-5, f"F32 GGUF does not reproduce the model: {rel}"
            print(
                f"{dst.name}: {dst.stat().st_size / 1024:.0f} KiB, worst weight error {worst:.3f}, "
                f"max |logits - original| / row max = {rel:.2e}"
            )

            doc = {
                "type": type_name,
                "gguf": f"fixtures/gguf/{dst.name}",
                "gguf_sha256": sha256(dst),
                "base": base,
                "config": {
                    k: getattr(config, k)
                    for k in [
                        "vocab_size",
                        "hidden_size",
                        "intermediate_size",
                        "num_hidden_layers",
                        "num_attention_heads",
                        "num_key_value_heads",
                        "head_dim",
                        "rms_norm_eps",
                        "max_position_embeddings",
                        "tie_word_embeddings",
                    ]
                },
                "quantized_by": "F32: written by gguf-py GGUFWriter"
                if type_name == "F32"
                else f"llama.cpp llama_model_quantize(ftype={ftype}, pure=True) from the F32 file",
                "tensors": tensors,
                "reference": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., "
                "dtype=float32): gguf-py dequantises every tensor to float32, transformers undoes the "
                "q/k permutation; eager attention, float32 forward",
                "max_weight_rel_error": float(f"{worst:.3e}"),
                "max_rel_logit_diff_to_unquantised": float(f"{rel:.3e}"),
                "input_ids": INPUT_IDS,
                "shape": list(logits.shape),
                "logits": f32_list(logits),
            }
            (OUT / f"{type_name.lower()}.json").write_text(json.dumps(doc) + "\n")


if __name__ == "__main__":
    main()
