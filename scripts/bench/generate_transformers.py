#!/usr/bin/env python3
"""transformers.generate on SmolLM2 (GGUF dequantised to float32), the baseline of generate.sh.

Greedy, EOS ignored (min_new_tokens = max_new_tokens), left padding, on the first BATCH prompts of the
prompt file; prints one JSON line with new tokens/s, time to first token (a 1-new-token generate on the
same batch) and peak resident memory of the process.

Usage: generate_transformers.py GGUF PROMPTS BATCH NEW_TOKENS
"""

import json
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@torch.inference_mode()
def main() -> None:
    gguf, prompts, batch, new = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(torch.get_num_threads())
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    texts = [l.replace("\\n", "\n") for l in Path(prompts).read_text().splitlines()][:batch]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = dict(do_sample=False, pad_token_id=tok.pad_token_id)
    model.generate(**enc, max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
    t0 = time.perf_counter()
    model.generate(**enc, max_new_tokens=1, min_new_tokens=1, **kw)
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, **kw)
    total = time.perf_counter() - t0
    n = (out.shape[1] - enc["input_ids"].shape[1]) * batch
    print(json.dumps({
        "engine": "transformers",
        "batch": batch,
        "new_tokens": n,
        "seconds": total,
        "tokens_per_s": n / total,
        "decode_tokens_per_s": (n - batch) / max(total - ttft, 1e-9),
        "ttft_s": ttft,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "first_tokens": out[0, enc["input_ids"].shape[1]:][:8].tolist(),
    }))


if __name__ == "__main__":
    main()
