"""Writes the DPO benchmark's preference pairs (seeded): prompts and completions of random words, long
enough that every prompt + completion fills --max-length tokens of SmolLM2's tokenizer after truncation."""
import json
import random
import sys

random.seed(0)
words = "the of and to in is was for on that with as by at from model train loss token reason step proof number answer".split()


def text(n):
    return " ".join(random.choice(words) for _ in range(n))


with open(sys.argv[1], "w") as f:
    for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 16):
        f.write(json.dumps({"prompt": text(80) + "\n", "chosen": text(70), "rejected": text(70)}) + "\n")
