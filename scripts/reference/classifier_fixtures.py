#!/usr/bin/env python3
"""Tiny random Llama classifiers and their scores, made by HF transformers: the format a reward model
(LlamaForSequenceClassification, one label) and a process reward model (LlamaForTokenClassification,
two labels, with a bias) are stored in, and what transformers computes with them.

Writes, under the repository root:
  fixtures/models/tiny-llama-rm/   LlamaForSequenceClassification, num_labels 1, pad_token_id 0
  fixtures/models/tiny-llama-prm/  LlamaForTokenClassification, num_labels 2, score bias
  fixtures/logits/tiny-llama-rm.json   pooled scores of a right-padded batch (HF reads each row at its
                                       rightmost non-pad token)
  fixtures/logits/tiny-llama-prm.json  token logits [B, T, 2] of the same batch

Sizes as make_tiny_models.py (vocab 256, hidden 64, 2 layers, 4 heads, 2 KV heads), weights re-drawn by
its `randomize` so that scores are O(1). Scores are computed by reloading each saved directory with
`from_pretrained(..., attn_implementation="eager", dtype=torch.float32)`.

Usage: python scripts/reference/classifier_fixtures.py
"""

import json
import shutil

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
)

from make_tiny_models import COMMON, LOGITS, MODELS, SEED, f32_list, hub_layout_config, randomize

PAD = 0
# Right-padded with PAD: lengths 9, 6 and 3.
INPUT_IDS = [
    [1, 17, 200, 45, 3, 99, 128, 255, 64],
    [1, 250, 7, 7, 180, 33, PAD, PAD, PAD],
    [1, 90, 141, PAD, PAD, PAD, PAD, PAD, PAD],
]
LENGTHS = [9, 6, 3]


def build(name, cls, num_labels):
    cfg = LlamaConfig(
        **COMMON,
        max_position_embeddings=128,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        num_labels=num_labels,
        pad_token_id=PAD,
    )
    torch.manual_seed(SEED)
    model = cls(cfg)
    randomize(model, SEED + num_labels)
    out = MODELS / name
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    hub_layout_config(out)
    return out


@torch.no_grad()
def main():
    torch.set_num_threads(1)
    ids = torch.tensor(INPUT_IDS, dtype=torch.long)
    mask = (ids != PAD).long()
    kwargs = dict(attn_implementation="eager", dtype=torch.float32)

    d = build("tiny-llama-rm", LlamaForSequenceClassification, 1)
    rm = AutoModelForSequenceClassification.from_pretrained(d, **kwargs).eval()
    scores = rm(input_ids=ids, attention_mask=mask).logits.float()
    doc = {"model_dir": "fixtures/models/tiny-llama-rm", "input_ids": INPUT_IDS, "lengths": LENGTHS,
           "pad": PAD, "scores": f32_list(scores[:, 0])}
    (LOGITS / "tiny-llama-rm.json").write_text(json.dumps(doc) + "\n")

    d = build("tiny-llama-prm", LlamaForTokenClassification, 2)
    prm = AutoModelForTokenClassification.from_pretrained(d, **kwargs).eval()
    logits = prm(input_ids=ids, attention_mask=mask).logits.float()
    doc = {"model_dir": "fixtures/models/tiny-llama-prm", "input_ids": INPUT_IDS, "lengths": LENGTHS,
           "pad": PAD, "logits": f32_list(logits)}
    (LOGITS / "tiny-llama-prm.json").write_text(json.dumps(doc) + "\n")
    print("wrote tiny-llama-rm and tiny-llama-prm")


if __name__ == "__main__":
    main()
