#!/usr/bin/env python3
"""Checks that transformers loads a reward model or process reward model written by `temper rm` /
`temper prm` and computes the scores `temper score` wrote (not a fixture: a one-off check of the
saved format, like check_convert.py).

Usage: python scripts/reference/check_classifier.py MODEL_DIR SCORED.jsonl [N]
  SCORED.jsonl: the output of `temper score MODEL_DIR --data ... --output SCORED.jsonl`.
"""

import json
import sys

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification
from transformers import PreTrainedTokenizerFast


@torch.no_grad()
def main():
    model_dir, scored = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    cfg = AutoConfig.from_pretrained(model_dir)
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json")
    token = cfg.architectures[0].endswith("TokenClassification")
    cls = AutoModelForTokenClassification if token else AutoModelForSequenceClassification
    model = cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    sep = getattr(cfg, "step_separator", "\n")
    worst = 0.0
    rows = [json.loads(l) for l in open(scored)][:n]
    for r in rows:
        if token:
            steps = r.get("completions") or [s for s in r["completion"].split(sep) if s.strip()]
            ids = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            ends = []
            for s in steps:
                ids += tok(s + sep, add_special_tokens=False)["input_ids"]
                ends.append(len(ids) - 1)
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            got = torch.softmax(logits[ends], -1)[:, 1].tolist()
            want = r["step_scores"]
        else:
            text = r["prompt"] + (r.get("completion") or "\n".join(r["completions"]))
            ids = tok(text, add_special_tokens=False)["input_ids"] + [cfg.eos_token_id]
            got = [model(input_ids=torch.tensor([ids])).logits[0, 0].item()]
            want = [r["score"]]
        worst = max(worst, max(abs(a - b) for a, b in zip(got, want)))
    print(f"{model_dir}: {len(rows)} rows, max |transformers - temper| = {worst:.2e}")
    assert worst < 1e-4, worst


if __name__ == "__main__":
    main()
