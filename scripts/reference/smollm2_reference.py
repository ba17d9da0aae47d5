#!/usr/bin/env python3
"""Reference logits and greedy continuations of SmolLM2-135M-Instruct (Q4_1 GGUF), by HF transformers.

Prompt token ids come from llama.cpp's own tokenizer (llama-cpp-python, vocab only), so the fixtures test
the model path independently of our tokenizer. transformers loads the GGUF with
`from_pretrained(dir, gguf_file=name, dtype=torch.float32)`, which dequantises Q4_1 to float32 and undoes
llama.cpp's q/k row permutation; the forward pass runs in float32 with eager attention.

Writes:
  fixtures/logits/smollm2.json          per prompt: ids, top-20 (id, logit) at the last position,
                                        argmax id and top-1 minus top-2 margin at every position
  fixtures/generate/smollm2_greedy.json for 3 prompts: 32 greedy new token ids (EOS ignored) and the
                                        top-1 minus top-2 margin of each step

Usage: python scripts/reference/smollm2_reference.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
       (default: models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf in the repository root)
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GGUF = ROOT / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

PROMPTS = [
    ("chat_2_plus_3", "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"),
    ("capital_of_france", "The capital of France is"),
    ("fibonacci", "def fibonacci(n):"),
    ("addition", "12 + 35 ="),
    ("once_upon", "Once upon a time, there was a little"),
]
GREEDY_PROMPTS = ["chat_2_plus_3", "capital_of_france", "fibonacci"]
TOP_K = 20
NEW_TOKENS = 32


def f32(x) -> float:
    """The shortest decimal that round-trips a float32 value."""
    return float(str(torch.tensor(x, dtype=torch.float32).numpy()))


def margins(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit per row of a [T, V] tensor."""
    top2 = torch.topk(logits, 2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


def dump(doc: dict, list_key: str) -> str:
    """JSON with one line per top-level field and one line per entry of `doc[list_key]` (diffable)."""
    lines = ["{"]
    for k, v in doc.items():
        if k != list_key:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    lines.append(f"  {json.dumps(list_key)}: [")
    lines.append(",\n".join("    " + json.dumps(e, ensure_ascii=False) for e in doc[list_key]))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenize_with_llama_cpp(gguf: Path):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    return {name: llm.tokenize(text.encode(), add_bos=False, special=True) for name, text in PROMPTS}


@torch.no_grad()
def main() -> None:
    gguf = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_GGUF
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ids_by_name = tokenize_with_llama_cpp(gguf)

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())

    source = {
        "gguf_file": gguf.name,
        "gguf_sha256": sha256(gguf),
        "gguf_size": gguf.stat().st_size,
        "tokenizer": "llama.cpp (llama-cpp-python, vocab_only): tokenize(text, add_bos=False, special=True)",
        "model": "transformers AutoModelForCausalLM.from_pretrained(gguf_file=..., dtype=float32): Q4_1 "
        "dequantised to float32, q/k permutation undone; eager attention, float32 forward",
    }

    prompts = []
    for name, text in PROMPTS:
        ids = ids_by_name[name]
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # [T, V]
        top = torch.topk(logits[-1], TOP_K)
        prompts.append(
            {
                "name": name,
                "text": text,
                "ids": ids,
                "top_ids": top.indices.tolist(),
                "top_logits": [f32(v) for v in top.values.tolist()],
                "argmax": logits.argmax(dim=-1).tolist(),
                # top-1 minus top-2 logit at every position: where it is tiny, a correct float32
                # implementation may legitimately pick the other id.
                "argmax_margin": [f32(v) for v in margins(logits).tolist()],
            }
        )
        print(f"{name}: {len(ids)} ids, last-position argmax {prompts[-1]['argmax'][-1]}")

    out = ROOT / "fixtures" / "logits" / "smollm2.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(source, vocab_size=int(model.config.vocab_size), top_k=TOP_K, prompts=prompts)
    out.write_text(dump(doc, "prompts"))

    # Pure greedy decoding: eos_token_id=None so EOS is neither a stop nor masked; every new token is the
    # argmax of the float32 logits given everything before it.
    gen_cfg = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=0,
        eos_token_id=None,
        pad_token_id=0,
        repetition_penalty=1.0,
        temperature=None,
        top_k=None,
        top_p=None,
    )
    # generate() fills unset fields from the model's own generation config, EOS included: clear it there.
    model.generation_config.eos_token_id = None
    greedy = []
    for name in GREEDY_PROMPTS:
        ids = ids_by_name[name]
        seq = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            generation_config=gen_cfg,
        )[0].tolist()
        new = seq[len(ids):]
        assert len(new) == NEW_TOKENS, (name, len(new))
        # Cross-check against a plain loop of full forward passes (no KV cache, no logits processors).
        seq_check = list(ids)
        step_margins = []
        for _ in range(NEW_TOKENS):
            last = model(input_ids=torch.tensor([seq_check])).logits[0, -1:].float()
            step_margins.append(f32(margins(last)[0].item()))
            seq_check.append(int(last[0].argmax()))
        assert seq_check[len(ids):] == new, (name, seq_check[len(ids):], new)
        greedy.append({"name": name, "prompt_ids": ids, "new_ids": new, "margins": step_margins})
        print(f"{name}: greedy {new}")
    out = ROOT / "fixtures" / "generate" / "smollm2_greedy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(
        source,
        decoding=f"greedy (do_sample=False, num_beams=1), {NEW_TOKENS} new tokens, eos_token_id=None: "
        "EOS neither stops nor is masked, no repetition penalty",
        prompts=greedy,
    )
    out.write_text(dump(doc, "prompts"))


if __name__ == "__main__":
    main()
