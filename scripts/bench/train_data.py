"""Writes the benchmark's JSONL: texts long enough to fill 128 SmolLM2 tokens each (seeded)."""
import json
import random
import sys

random.seed(0)
words = "the of and to in is was for on that with as by at from model train loss token reason step proof number answer".split()
with open(sys.argv[1], "w") as f:
    for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 16):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(200))}) + "\n")
