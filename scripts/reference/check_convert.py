#!/usr/bin/env python3
"""Checks that `temper convert` turns the SmolLM2 GGUF into an HF directory that transformers loads and
that behaves like the GGUF, and records the outcome in fixtures/convert/smollm2_check.json.

Steps:
 1. `temper convert <gguf> <tmp>/hf` (the binary's path is the first argument).
 2. transformers loads the result: `AutoModelForCausalLM.from_pretrained(dir)` and
    `AutoTokenizer.from_pretrained(dir)`, with no other help (no gguf_file, no trust_remote_code).
 3. Tokenizer: the converted tokenizer's ids equal llama.cpp's (llama-cpp-python, vocab_only) for a set of
    strings, both without special tokens (`add_special_tokens=False` vs `add_bos=False`) and with the
    model's own rules (`add_special_tokens=True` vs `add_bos=True`, which follow the GGUF's
    tokenizer.ggml.add_bos_token); special tokens written in the text are parsed on both sides.
 4. Chat template: `tokenizer_config.json` carries the GGUF's `tokenizer.chat_template` unchanged, and the
    converted tokenizer's `apply_chat_template` renders the same text as the GGUF's template rendered by
    transformers' own chat-template renderer (`apply_chat_template(chat_template=<GGUF template>)` with
    the GGUF's special tokens), for several conversations, with and without the generation prompt.
 5. Logits: for every prompt of fixtures/logits/smollm2.json (ids from llama.cpp, logits from transformers
    loading the GGUF itself), the converted model's last-position top-k ids equal the fixture's (where
    consecutive logits are more than 1e-3 apart), its logits are within 1e-3 of the fixture's, and its
    argmax at every position equals the fixture's wherever the top-1/top-2 margin exceeds 1e-3.

Exit status 0 when every check passes, 1 otherwise (the JSON is written either way).

Usage: python scripts/reference/check_convert.py target/debug/temper [path/to/SmolLM2 GGUF]
"""

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GGUF = ROOT / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "fixtures" / "convert" / "smollm2_check.json"
LOGITS_FIXTURE = ROOT / "fixtures" / "logits" / "smollm2.json"

STRINGS = [
    "Hello world",
    "The capital of France is",
    "  leading spaces and\ttabs\n\nnewlines  ",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "12 + 35 = 47; 3.14159 * 1000000 = 3141590",
    "Ünïcödé façade, naïve café, 東京, emoji 🙂🚀",
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after a special token<|im_end|>",
    "I'm sure they'll say it's what we've done",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another one?"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ],
]
LOGIT_TOL = 1e-3
MARGIN = 1e-3


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_string(reader: gguf.GGUFReader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def check_tokenizer(gguf_path: Path, tok) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    cases = []
    for text in STRINGS:
        for special in (False, True):
            want = llm.tokenize(text.encode(), add_bos=special, special=True)
            got = tok(text, add_special_tokens=special)["input_ids"]
            cases.append(
                {"text": text, "add_special_tokens": special, "ok": got == want}
                | ({} if got == want else {"llama_cpp": want, "converted": got})
            )
    return {"ok": all(c["ok"] for c in cases), "cases": cases}


def check_chat_template(gguf_path: Path, out_dir: Path, tok) -> dict:
    reader = gguf.GGUFReader(str(gguf_path))
    template = gguf_string(reader, "tokenizer.chat_template")
    tc = json.loads((out_dir / "tokenizer_config.json").read_text())
    same_source = tc.get("chat_template") == template
    # The GGUF's template, rendered by transformers with the GGUF's own special tokens: a tokenizer
    # transformers builds from the GGUF file itself.
    gguf_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    cases = []
    for conv in CONVERSATIONS:
        for gen in (True, False):
            want = gguf_tok.apply_chat_template(
                conv, chat_template=template, tokenize=False, add_generation_prompt=gen
            )
            got = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            case = {"messages": len(conv), "add_generation_prompt": gen, "ok": got == want}
            if got != want:
                case |= {"gguf_template": want, "converted": got}
            cases.append(case)
    return {
        "ok": same_source and all(c["ok"] for c in cases),
        "tokenizer_config_has_gguf_template": same_source,
        "cases": cases,
    }


@torch.no_grad()
def check_logits(model) -> dict:
    fx = json.loads(LOGITS_FIXTURE.read_text())
    prompts = []
    for p in fx["prompts"]:
        logits = model(input_ids=torch.tensor([p["ids"]])).logits[0].float()  # [T, V]
        k = len(p["top_ids"])
        top = torch.topk(logits[-1], k)
        want_ids, want_vals = p["top_ids"], p["top_logits"]
        # Ranks whose fixture logits are within MARGIN of a neighbour may legitimately swap.
        firm = [
            i
            for i in range(k)
            if (i == 0 or want_vals[i - 1] - want_vals[i] > MARGIN)
            and (i == k - 1 or want_vals[i] - want_vals[i + 1] > MARGIN)
        ]
        ids_ok = all(top.indices[i].item() == want_ids[i] for i in firm)
        max_diff = max(abs(logits[-1, i].item() - v) for i, v in zip(want_ids, want_vals))
        argmax = logits.argmax(dim=-1).tolist()
        argmax_bad = [
            t
            for t, (a, w, m) in enumerate(zip(argmax, p["argmax"], p["argmax_margin"]))
            if a != w and m > MARGIN
        ]
        prompts.append(
            {
                "name": p["name"],
                "top_ids_ok": ids_ok,
                "converted_top5": top.indices[:5].tolist(),
                "fixture_top5": want_ids[:5],
                "max_abs_logit_diff_top_k": float(f"{max_diff:.3e}"),
                "argmax_mismatches_with_margin": argmax_bad,
                "ok": ids_ok and max_diff < LOGIT_TOL and not argmax_bad,
            }
        )
    return {"ok": all(p["ok"] for p in prompts), "tolerance": LOGIT_TOL, "prompts": prompts}


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    temper = Path(sys.argv[1]).resolve()
    gguf_path = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else DEFAULT_GGUF
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "hf"
        run = subprocess.run(
            [str(temper), "convert", str(gguf_path), str(out_dir)], capture_output=True, text=True
        )
        if run.returncode != 0:
            print(run.stdout, run.stderr, sep="\n")
            raise SystemExit(f"temper convert failed with status {run.returncode}")
        files = sorted(p.name for p in out_dir.iterdir())
        model = AutoModelForCausalLM.from_pretrained(
            out_dir, dtype=torch.float32, attn_implementation="eager"
        )
        model.eval()
        tok = AutoTokenizer.from_pretrained(out_dir)
        checks = {
            "tokenizer": check_tokenizer(gguf_path, tok),
            "chat_template": check_chat_template(gguf_path, out_dir, tok),
            "logits": check_logits(model),
        }
        doc = {
            "gguf_file": gguf_path.name,
            "gguf_sha256": sha256(gguf_path),
            "converted_files": files,
            "loaded_as": {
                "model": type(model).__name__,
                "tokenizer": type(tok).__name__,
                "transformers": transformers.__version__,
            },
            "ok": all(c["ok"] for c in checks.values()),
            **checks,
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    for name, c in checks.items():
        print(f"{name}: {'ok' if c['ok'] else 'FAILED'}")
    print(f"wrote {OUT.relative_to(ROOT)}: {'all checks pass' if doc['ok'] else 'SOME CHECKS FAIL'}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
